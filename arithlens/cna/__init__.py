"""Comparative Neuron Analysis — Yu & Ananiadou (EMNLP 2024), §3–6.

`from arithlens import cna`, then one name per paper idea.

Analyses (each a [`CNAAnalysis`][arithlens.cna.base.CNAAnalysis] or another
[`Analysis`][arithlens.analysis.base.Analysis]: options as fields, `run(model, data, *, cache=None)`):

* [`HeadAblation`][arithlens.cna.heads.HeadAblation] — §3, Tables 1–3: the arithmetic heads by zero-ablation.
* [`NeuronImportance`][arithlens.cna.importance.NeuronImportance] — §4.1: the importance score of every FFN neuron.
* [`ComparativeNeuronScores`][arithlens.cna.comparative.ComparativeNeuronScores] — §4.2, Table 4:
  the same neurons across an intervention, two models, or two inputs.
* [`VocabularyProjection`][arithlens.cna.vocabulary.VocabularyProjection] — vectors read in vocabulary space.
* [`MaskKeep`][arithlens.cna.mask_keep.MaskKeep] — Table 5.
* [`PredictionEnhancingDAG`][arithlens.cna.pe_dag.PredictionEnhancingDAG] — §4.3, Table 6.
* [`VOTransform`][arithlens.cna.vo_transform.VOTransform] and
  [`HiddenInterpretable`][arithlens.cna.hidden_interpretable.HiddenInterpretable] — §4.4, Tables 7 and 8.
* [`LogicChain`][arithlens.cna.logic_chain.LogicChain] — Fig. 1, the four stages of one case.
* [`LoRACoefficients`][arithlens.cna.lora_coefficients.LoRACoefficients] — §5, Tables 9 and 10.

Procedures (plain functions returning a result; they train, prune or edit):

* [`lora_layer_sweep`][arithlens.cna.lora.lora_layer_sweep] — §5, Figure 2.
* [`cna_pruning`][arithlens.cna.pruning.cna_pruning] and [`prune`][arithlens.cna.pruning.prune] — §6.1, Table 11.
* [`gender_bias`][arithlens.cna.bias.gender_bias], [`discover_professions`][arithlens.cna.bias.discover_professions]
  and [`edit`][arithlens.cna.bias.edit] — §6.2, Tables 12 and 13, Appendix D.

Example:
    ```python
    import arithlens
    from arithlens import cna

    model = arithlens.load_model()
    result = cna.ComparativeNeuronScores(intervention="17.2", mode="fast").run(model, ["3+5="])
    result.top(10)
    ```
"""

from arithlens.cna.base import CNAAnalysis
from arithlens.cna.bias import (
    BiasData,
    GenderBiasResult,
    GenderBiasSettings,
    ProfessionDiscoveryResult,
    discover_professions,
    edit,
    gender_bias,
    load_professions,
    paper_bias_data,
    zero_neurons,
)
from arithlens.cna.comparative import ComparativeNeuronScores, ComparativeNeuronScoresResult
from arithlens.cna.concepts import NumberConceptTagger
from arithlens.cna.heads import HeadAblation, HeadAblationResult
from arithlens.cna.hidden_interpretable import HiddenInterpretable, HiddenInterpretableResult
from arithlens.cna.importance import NeuronImportance, NeuronImportanceResult
from arithlens.cna.inputs import neuron_label
from arithlens.cna.logic_chain import LogicChain, LogicChainResult
from arithlens.cna.lora import LoRALayerSweepResult, LoRASettings, load_lora, lora_layer_sweep
from arithlens.cna.lora_coefficients import LoRACoefficients, LoRACoefficientsResult
from arithlens.cna.mask_keep import MaskKeep, MaskKeepResult
from arithlens.cna.pe_dag import PredictionEnhancingDAG, PredictionEnhancingDAGResult
from arithlens.cna.projections import ProjectionCache, projection_cache
from arithlens.cna.pruning import CNAPruningResult, PruningSettings, cna_pruning, prune
from arithlens.cna.vo_transform import VOScanResult, VOTransform, VOTransformResult
from arithlens.cna.vocabulary import NamedVector, VocabularyProjection, VocabularyProjectionResult

__all__ = [
    "BiasData",
    "CNAAnalysis",
    "CNAPruningResult",
    "ComparativeNeuronScores",
    "ComparativeNeuronScoresResult",
    "GenderBiasResult",
    "GenderBiasSettings",
    "HeadAblation",
    "HeadAblationResult",
    "HiddenInterpretable",
    "HiddenInterpretableResult",
    "LoRACoefficients",
    "LoRACoefficientsResult",
    "LoRALayerSweepResult",
    "LoRASettings",
    "LogicChain",
    "LogicChainResult",
    "MaskKeep",
    "MaskKeepResult",
    "NamedVector",
    "NeuronImportance",
    "NeuronImportanceResult",
    "NumberConceptTagger",
    "PredictionEnhancingDAG",
    "PredictionEnhancingDAGResult",
    "PruningSettings",
    "ProfessionDiscoveryResult",
    "ProjectionCache",
    "VOScanResult",
    "VOTransform",
    "VOTransformResult",
    "VocabularyProjection",
    "VocabularyProjectionResult",
    "cna_pruning",
    "discover_professions",
    "edit",
    "gender_bias",
    "load_lora",
    "load_professions",
    "lora_layer_sweep",
    "neuron_label",
    "paper_bias_data",
    "projection_cache",
    "prune",
    "zero_neurons",
]
