"""Zhang et al. (ICML 2024), "Interpreting and Improving Large Language Models in
Arithmetic Calculation": identify, analyse and fine-tune the key components.

One module per idea of the paper:

* [`counterfactual`][arithlens.circuits.counterfactual] — §3/§4.1 reference /
  counterfactual pairs (the operator word replaced by an irrelevant one):
  `Counterfactual`, whose `run` returns `CounterfactualPairs`, a dataset of the
  reference cases carrying their counterfactuals.
* [`operands`][arithlens.circuits.operands] — where operand A, operand B and the
  operator are in a prompt, token by token (`locate`, `token_roles`).
* [`path_patching`][arithlens.circuits.path_patching] — §4.1 Algorithm 1, causal effect
  of every head and MLP at the END position: `PathPatching`.
* [`mean_ablation`][arithlens.circuits.mean_ablation] — §4.1 knockout validation by mean
  ablation over counterfactual data: `Knockout`, `MeanMLP`, `MeanNodes`.
* [`end_attention`][arithlens.circuits.end_attention] — §4.2 END-row attention of key
  heads to operands / operator / other tokens: `EndAttention`.
* [`mlp_probe`][arithlens.circuits.mlp_probe] — §4.2 MLP inputs / outputs probed with
  the unembedding of A, B and C: `MLPProbe`.
* [`precise_sft`][arithlens.circuits.precise_sft] — §4.3 precise SFT of the key
  components vs full and random-component fine-tuning: `PreciseSFT` (the components'
  parameters: [`components`][arithlens.circuits.components]).
* `arithlens.app.cli` (`arithlens patch`, `arithlens sft`) and
  `arithlens.app.circuits_sections` (the `arithlens run` section).

Components are [`Component`][arithlens.core.names.Component]s everywhere: `Component(layer, head)` for a
head, `Component(layer)` for an MLP. Every analysis reads the clean cache
(`run(model, data, *, cache=...)`), so one forward pass serves several.

Example:
    ```python
    import arithlens
    from arithlens import data
    from arithlens.circuits import Counterfactual, EndAttention, Knockout, MLPProbe, PathPatching

    model = arithlens.load_model()
    pairs = Counterfactual().run(model, data.zhang(model.tokenizer, n_per_op=10))
    patching = PathPatching().run(model, pairs)
    attention, probe = EndAttention(k=4), MLPProbe()
    cache = model.cache(pairs, names=[attention, probe])      # one clean forward pass
    Knockout(k=8).run(model, pairs, patching, cache=cache).table()
    attention.run(model, pairs, patching, cache=cache).plot()
    probe.run(model, pairs, cache=cache).plot()
    ```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from arithlens.circuits.counterfactual import Counterfactual, CounterfactualPairs, CounterfactualPrompt
    from arithlens.circuits.end_attention import EndAttention, EndAttentionResult
    from arithlens.circuits.mean_ablation import Knockout, KnockoutResult, MeanMLP, MeanNodes, MLPMeans
    from arithlens.circuits.mlp_probe import MLPProbe, MLPProbeResult
    from arithlens.circuits.operands import Spans, locate, token_roles
    from arithlens.circuits.path_patching import PathPatching, PathPatchingResult
    from arithlens.circuits.precise_sft import PreciseSFT, PreciseSFTResult
    from arithlens.analysis.tuning import general_text, perplexity

_EXPORTS = {
    "Counterfactual": "counterfactual",
    "CounterfactualPairs": "counterfactual",
    "CounterfactualPrompt": "counterfactual",
    "locate": "operands",
    "token_roles": "operands",
    "Spans": "operands",
    "PathPatching": "path_patching",
    "PathPatchingResult": "path_patching",
    "Knockout": "mean_ablation",
    "KnockoutResult": "mean_ablation",
    "MeanMLP": "mean_ablation",
    "MLPMeans": "mean_ablation",
    "MeanNodes": "mean_ablation",
    "EndAttention": "end_attention",
    "EndAttentionResult": "end_attention",
    "MLPProbe": "mlp_probe",
    "MLPProbeResult": "mlp_probe",
    "PreciseSFT": "precise_sft",
    "PreciseSFTResult": "precise_sft",
    "perplexity": "precise_sft",
    "general_text": "precise_sft",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy: importing arithlens.circuits (e.g. for the CLI) does not import every analysis.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"arithlens.circuits.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'arithlens.circuits' has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
