"""The one configuration every CNA-based analysis takes: [`CNAConfig`][arithlens.cna.config.CNAConfig].

Example:
    ```python
    from arithlens.cna import CNAConfig, ComparativeNeuronScores
    config = CNAConfig(mode="fast", rescore=500, scale="original")
    ComparativeNeuronScores(config=config)
    ```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from arithlens import validate

Target = Literal["prediction", "answer"]
TARGETS: tuple[str, ...] = ("prediction", "answer")
MODES: tuple[str, ...] = ("exact", "fast")
SCALES: tuple[str, ...] = ("original", "own")


@dataclass(frozen=True)
class CNAConfig:
    """How importance scores are computed (§4.1), shared by every CNA-based analysis.

    Attributes:
        target: The scored token `w`: `"prediction"` (the paper: the original model's top
            token) or `"answer"` (the case's correct token).
        mode: `"exact"` scores every neuron exactly; `"fast"` scores every neuron to first
            order and re-scores the top `rescore` candidates of each case exactly.
        rescore: Candidates per case re-scored exactly in fast mode.
        memory_budget: Bytes the whole analysis's working set may take (the scores it
            returns aside).
        batch_size: Cases per forward pass (default the model's).
        progress: Show progress bars.
        scale: Which final-norm scale the intervened (other) side is read with:
            `"original"` — the original run's, as the paper's reference code does
            (`get_log_increase(model1, …, final_var, …)` reuses the clean run's
            `final_var`), so Table 4's numbers are reproduced; `"own"` — each side
            frozen at its own run's scale.
    """

    target: Target = "prediction"
    mode: Literal["exact", "fast"] = "exact"
    rescore: int = 200
    memory_budget: float = 1e9
    batch_size: int | None = None
    progress: bool = False
    scale: Literal["original", "own"] = "original"

    def __post_init__(self) -> None:
        validate.choice(self.target, "target", TARGETS)
        validate.choice(self.mode, "mode", MODES)
        object.__setattr__(self, "rescore", validate.positive_int(self.rescore, "rescore"))
        object.__setattr__(self, "memory_budget", validate.positive_number(self.memory_budget, "memory_budget"))
        object.__setattr__(self, "batch_size", validate.optional_positive_int(self.batch_size, "batch_size"))
        object.__setattr__(self, "progress", validate.boolean(self.progress, "progress"))
        validate.choice(self.scale, "scale", SCALES)
