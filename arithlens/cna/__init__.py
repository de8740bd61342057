"""Comparative Neuron Analysis — Yu & Ananiadou (EMNLP 2024), §4–6.

`from arithlens import cna`, then one class per paper idea (each a lazily imported module):

* [`CNAAnalysis`][arithlens.cna.base.CNAAnalysis] — the options every CNA-based analysis shares.
* [`NeuronImportance`][arithlens.cna.importance.NeuronImportance] — the §4.1 importance score of every FFN neuron.
* [`ComparativeNeuronScores`][arithlens.cna.comparative.ComparativeNeuronScores] — the same neurons
  compared across an intervention, two models, or two inputs (Table 4).
* [`VocabularyProjection`][arithlens.cna.vocabulary.VocabularyProjection] and `NumberConceptTagger` — vocabulary projections.
* [`MaskKeep`][arithlens.cna.mask_keep.MaskKeep] — Table 5.
* [`PredictionEnhancingDAG`][arithlens.cna.pe_dag.PredictionEnhancingDAG] — §4.3, Table 6.
* [`VOTransform`][arithlens.cna.vo_transform.VOTransform] — §4.4, Tables 7 and 8.
* [`LogicChain`][arithlens.cna.logic_chain.LogicChain] — Fig. 1, the four stages of one case.
* LoRA (§5), pruning (§6.1) and gender-bias editing (§6.2).

Example:
    ```python
    from arithlens import cna
    sorted(dir(cna))[:3]
    ```
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what IDEs and Jupyter complete; the runtime imports lazily below
    from arithlens.cna.bias import GenderBiasResult, ProfessionDiscoveryResult, GenderBias, ProfessionDiscovery, edit, paper_bias_data, zero_neurons
    from arithlens.cna.comparative import ComparativeNeuronScores, ComparativeNeuronScoresResult
    from arithlens.cna.concepts import NumberConceptTagger
    from arithlens.cna.base import CNAAnalysis
    from arithlens.cna.hidden_interpretable import HiddenInterpretable, HiddenInterpretableResult
    from arithlens.cna.importance import NeuronImportanceResult, NeuronImportance, importance_scores
    from arithlens.cna.inputs import neuron_label
    from arithlens.cna.logic_chain import LogicChain, LogicChainResult
    from arithlens.cna.vocabulary import NamedVector, VocabularyProjection, VocabularyProjectionResult
    from arithlens.cna.lora import LoRALayerSweep, LoRALayerSweepResult, load_lora
    from arithlens.cna.lora_coefficients import LoRACoefficientsResult, LoRACoefficients
    from arithlens.cna.mask_keep import MaskKeep, MaskKeepResult
    from arithlens.cna.pe_dag import PredictionEnhancingDAGResult, PredictionEnhancingDAG
    from arithlens.cna.projections import ProjectionCache, projection_cache
    from arithlens.cna.pruning import CNAPruning, CNAPruningResult, prune
    from arithlens.analysis.tuning import load_saved, save_model
    from arithlens.cna.scores import NeuronScores
    from arithlens.cna.vo_transform import VOTransformResult, VOScanResult, VOTransform

_EXPORTS = {
    "NeuronImportance": "importance",
    "NeuronImportanceResult": "importance",
    "importance_scores": "importance",
    "ComparativeNeuronScores": "comparative",
    "ComparativeNeuronScoresResult": "comparative",
    "VocabularyProjection": "logit_lens",
    "VocabularyProjectionResult": "logit_lens",
    "NamedVector": "logit_lens",
    "NumberConceptTagger": "concepts",
    "MaskKeep": "mask_keep",
    "MaskKeepResult": "mask_keep",
    "PredictionEnhancingDAG": "pe_dag",
    "PredictionEnhancingDAGResult": "pe_dag",
    "VOTransform": "vo_transform",
    "VOScanResult": "vo_transform",
    "VOTransformResult": "vo_transform",
    "HiddenInterpretable": "hidden_interpretable",
    "HiddenInterpretableResult": "hidden_interpretable",
    "LogicChain": "logic_chain",
    "LogicChainResult": "logic_chain",
    "LoRALayerSweep": "lora",
    "LoRALayerSweepResult": "lora",
    "LoRACoefficients": "lora_coefficients",
    "LoRACoefficientsResult": "lora_coefficients",
    "load_lora": "lora",
    "CNAPruning": "pruning",
    "CNAPruningResult": "pruning",
    "prune": "pruning",
    "save_model": "pruning",
    "load_saved": "pruning",
    "GenderBias": "bias",
    "GenderBiasResult": "bias",
    "ProfessionDiscovery": "bias",
    "ProfessionDiscoveryResult": "bias",
    "edit": "bias",
    "zero_neurons": "bias",
    "paper_bias_data": "bias",
    "CNAAnalysis": "config",
    "ProjectionCache": "projections",
    "projection_cache": "projections",
    "NeuronScores": "scores",
    "neuron_label": "inputs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: importing arithlens.cna stays cheap, and each idea lives in its own module.
    if name in _EXPORTS:
        return getattr(import_module(f"arithlens.cna.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'arithlens.cna' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
