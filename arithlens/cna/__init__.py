"""Comparative Neuron Analysis — Yu & Ananiadou (EMNLP 2024), §4.

``from arithlens import cna``, then one class per paper idea:

* :class:`NeuronImportance` — the §4.1 importance score of every FFN neuron.
* :class:`ComparativeNeuronScores` — the same neurons compared across two models,
  an intervention, or two inputs.
* :class:`LogitLens` and :class:`NumberConceptTagger` — Table 4's vocabulary projections.
* :class:`MaskKeep` — Table 5.
* :class:`PredictionEnhancingDAG` — §4.3, Table 6.
* :class:`VOTransform` — §4.4, Tables 7 and 8.
* :class:`LogicChain` — Fig. 1, the four stages of one case.
"""

from importlib import import_module

_EXPORTS = {
    "NeuronImportance": "importance",
    "ImportanceResult": "importance",
    "importance_scores": "importance",
    "ComparativeNeuronScores": "comparative",
    "ComparativeResult": "comparative",
    "LogitLens": "logit_lens",
    "NumberConceptTagger": "logit_lens",
    "MaskKeep": "mask_keep",
    "MaskKeepResult": "mask_keep",
    "PredictionEnhancingDAG": "pe_dag",
    "DAGResult": "pe_dag",
    "VOTransform": "vo_transform",
    "HiddenInterpretable": "vo_transform",
    "LogicChain": "logic_chain",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: importing arithlens.cna stays cheap, and each idea lives in its own module.
    if name in _EXPORTS:
        return getattr(import_module(f"arithlens.cna.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'arithlens.cna' has no attribute {name!r}")
