"""The options every CNA-based analysis shares: [`CNAAnalysis`][arithlens.cna.base.CNAAnalysis].

[`NeuronImportance`][arithlens.cna.importance.NeuronImportance],
[`ComparativeNeuronScores`][arithlens.cna.comparative.ComparativeNeuronScores],
[`MaskKeep`][arithlens.cna.mask_keep.MaskKeep], the
[`PredictionEnhancingDAG`][arithlens.cna.pe_dag.PredictionEnhancingDAG] and the
[`LogicChain`][arithlens.cna.logic_chain.LogicChain] are `CNAAnalysis` subclasses: the §4.1
options below are fields of each, given by keyword.

Example:
    ```python
    from arithlens.cna import ComparativeNeuronScores
    from arithlens.core.interventions import ZeroHead

    ComparativeNeuronScores(intervention=ZeroHead(17, 2), mode="fast", rescore=500, scale="original")
    ```
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from arithlens.analysis.base import Analysis
from arithlens.core.dataset import as_dataset
from arithlens.core.interventions import as_hooks
from arithlens.core.loading import load_model
from arithlens.core import validate

Target = Literal["prediction", "answer"]
TARGETS: tuple[str, ...] = ("prediction", "answer")
MODES: tuple[str, ...] = ("exact", "fast")
SCALES: tuple[str, ...] = ("original", "own")
PROJECTION_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
PAPER_N_LAYERS = 32
"""The depth of Llama-7B, the model the CNA paper's layer numbers refer to."""


def paper_layer(layer: int, n_layers: int) -> int:
    """The paper's layer `layer` (of 32) scaled to a model of `n_layers`: `round(layer · n_layers / 32)`."""
    return round(layer * validate.positive_int(n_layers, "n_layers") / PAPER_N_LAYERS)


def deep_layers(n_layers: int) -> list[int]:
    """The paper's deep layers (17–31 of 32: Table 5's "keep", Table 11's pruning) scaled to `n_layers`."""
    return list(range(paper_layer(17, n_layers), validate.positive_int(n_layers, "n_layers")))


@dataclass(frozen=True, kw_only=True)
class CNAAnalysis(Analysis):
    """The §4.1 options shared by every CNA-based analysis (how importance scores are computed).

    Attributes:
        target: The scored token `w`: `"prediction"` (the paper: the original model's top
            token) or `"answer"` (the case's correct token).
        mode: `"exact"` scores every neuron exactly; `"fast"` scores every neuron to first
            order and re-scores the top `rescore` candidates of each case exactly.
        rescore: Candidates per case re-scored exactly in fast mode.
        memory_budget: Bytes the analysis's working set may take (the per-case scores it
            returns and the activation cache aside): vocabulary projections, logits and
            log-sum-exp buffers are chunked to fit.
        batch_size: Cases per forward pass (default the model's).
        progress: Show progress bars.
        scale: Which final-norm scale the other side is read with. `"original"` — the
            original run's scale for both sides, as the paper's reference code does
            (`get_log_increase(model1, …, final_var, …)` reuses the clean run's
            `final_var`), so Table 4's numbers are reproduced; for two inputs (§6.2) case
            `i` of the other data is read with the scale of case `i` of the data.
            `"own"` — each side frozen at its own run's scale. The scored side of
            [`NeuronImportance`][arithlens.cna.importance.NeuronImportance] is always
            read with its own scale (it is the original side).
        tolerance: Largest error (nats) the exact kernel's series evaluation may add to
            an importance score. The log-sum-exp over the vocabulary is then evaluated
            as a truncated Taylor series in the neuron's coefficient whose remainder is
            bounded per score (see [`arithlens.cna.scores`][arithlens.cna.scores]); scores
            whose bound would exceed `tolerance` are computed by the direct log-sum-exp.
            `0` always uses the direct log-sum-exp.
        keep_projections: Keep the vocabulary projections `W_out[l] @ W_U` (model
            constants) on the model between calls, so later analyses of the same model
            skip that matmul; see [`ProjectionCache`][arithlens.cna.projections.ProjectionCache].
        projection_dtype: Storage dtype of kept projections: `"float32"`, or `"bfloat16"`
            / `"float16"` (half the memory; the log-sum-exp stays in float32 and rounding
            is counted in the bound, scores over `tolerance` recomputed in float32). With
            few (case, side) pairs most scores need that recomputation, so a reduced dtype
            saves time only from about 8 pairs up (SmolLM2, one prompt: bfloat16 kept ≈ a
            cold call; float32 kept ≈ 4× faster than cold).
        projection_bytes: Most bytes the kept projections of one model may take (least
            recently used first out).
    """

    target: Target = "prediction"
    mode: Literal["exact", "fast"] = "exact"
    rescore: int = 200
    memory_budget: float = 1e9
    batch_size: int | None = None
    progress: bool = False
    scale: Literal["original", "own"] = "original"
    tolerance: float = 1e-7
    keep_projections: bool = False
    projection_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    projection_bytes: float = 4e9

    def __post_init__(self) -> None:
        validate.choice(self.target, "target", TARGETS)
        validate.choice(self.mode, "mode", MODES)
        object.__setattr__(self, "rescore", validate.positive_int(self.rescore, "rescore"))
        object.__setattr__(self, "memory_budget", validate.number(self.memory_budget, "memory_budget", low=1e4))
        object.__setattr__(self, "batch_size", validate.optional_positive_int(self.batch_size, "batch_size"))
        object.__setattr__(self, "progress", validate.boolean(self.progress, "progress"))
        validate.choice(self.scale, "scale", SCALES)
        object.__setattr__(self, "tolerance", validate.number(self.tolerance, "tolerance", low=0.0, high=1e-2))
        object.__setattr__(self, "keep_projections", validate.boolean(self.keep_projections, "keep_projections"))
        validate.choice(self.projection_dtype, "projection_dtype", PROJECTION_DTYPES)
        if self.projection_dtype != "float32" and self.tolerance == 0:
            raise ValueError(
                f"projection_dtype={self.projection_dtype!r} needs tolerance > 0: reduced-precision projections "
                "are read through the bounded series (tolerance=0 asks for the direct float32 log-sum-exp)"
            )
        object.__setattr__(self, "projection_bytes", validate.positive_number(self.projection_bytes, "projection_bytes"))

    @classmethod
    def paper(cls, **changes: Any) -> Any:
        """The paper's setup (§4.1 as the reference code computes it): exact scores of the model's
        own prediction, the other side read with the original run's final-norm scale; `changes`
        override fields (an analysis that compares needs its `intervention`, e.g. `ZeroHead(17, 22)`)."""
        return cls(**{"target": "prediction", "mode": "exact", "scale": "original", **changes})

    def pass_batch(self, model: Any) -> int:
        """Cases per forward pass: `batch_size`, else the model's, capped so a batch's
        last-position logits (and their log-softmax) fit in `memory_budget`."""
        if self.batch_size is not None:
            return self.batch_size
        return int(max(1, min(model.batch_size, self.memory_budget // (32 * model.d_vocab))))

    def start(self, model: Any, data: Any) -> tuple[Any, Any]:
        """The model and `data` as a dataset, after checking that the analysis's
        `intervention` (when it has one) fits the model — before any forward pass."""
        model = load_model(model)
        dataset = as_dataset(data, model.tokenizer)
        intervention = getattr(self, "intervention", None)
        if intervention is not None:
            as_hooks(model, [intervention])  # e.g. a head out of range
        return model, dataset


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(CNAAnalysis))
"""The option names every CNA-based analysis shares."""


def cna_options(analysis: CNAAnalysis) -> dict[str, Any]:
    """The shared CNA options of `analysis`, to build another CNA analysis with the same ones."""
    return {name: getattr(analysis, name) for name in FIELDS}

