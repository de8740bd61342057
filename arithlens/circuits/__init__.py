"""Zhang et al. (ICML 2024), "Interpreting and Improving Large Language Models in
Arithmetic Calculation": identify, analyse and fine-tune the key components.

One module per idea of the paper:

* :mod:`~arithlens.circuits.counterfactual` — §3/§4.1 reference / counterfactual pairs
  (the operator word replaced by an irrelevant one): :class:`Counterfactual`.
* :mod:`~arithlens.circuits.path_patching` — §4.1 Algorithm 1, causal effect of every
  head and MLP at the END position (path patching, or activation patching):
  :class:`PathPatching`.
* :mod:`~arithlens.circuits.mean_ablation` — §4.1 knockout validation by mean ablation
  over counterfactual data: :class:`Knockout`, :class:`MeanMLP`, :class:`MeanNodes`.
* :mod:`~arithlens.circuits.end_attention` — §4.2 END-row attention of key heads to
  operands / operator / other tokens: :class:`EndAttention`.
* :mod:`~arithlens.circuits.mlp_probe` — §4.2 MLP inputs / outputs probed with the
  unembedding of A, B and C: :class:`MLPProbe`.
* :mod:`~arithlens.circuits.precise_sft` — §4.3 precise SFT of the key components vs
  full and random-component fine-tuning: :class:`PreciseSFT`.
* :mod:`~arithlens.circuits.cli` (``arithlens patch``, ``arithlens sft``) and
  :mod:`~arithlens.circuits.report` (the ``arithlens run`` section).

Example::

    import arithlens
    from arithlens import data
    from arithlens.circuits import Counterfactual, PathPatching, Knockout, EndAttention, MLPProbe

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3],
                            forms=["numeral"], n_per_op=10)
    pairs = Counterfactual().run(model, cases)
    patching = PathPatching().run(model, pairs)
    Knockout(top_n=8).run(model, pairs, patching).df
    EndAttention(top_n=4).run(model, pairs, patching).plot()
    MLPProbe().run(model, cases).plot()
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Counterfactual": "counterfactual",
    "CounterfactualPairs": "counterfactual",
    "locate": "counterfactual",
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
    "SFTResult": "precise_sft",
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
    return __all__
