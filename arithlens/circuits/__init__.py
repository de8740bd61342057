"""Zhang et al. (ICML 2024), "Interpreting and Improving Large Language Models in
Arithmetic Calculation": identify, analyse and fine-tune the key components.

One module per idea of the paper:

* [`counterfactual`][arithlens.circuits.counterfactual] — §3/§4.1 reference /
  counterfactual pairs (the operator word replaced by an irrelevant one):
  [`counterfactual_pairs`][arithlens.circuits.counterfactual.counterfactual_pairs] returns
  `CounterfactualPairs`, a dataset of the reference cases carrying their counterfactuals.
* [`operands`][arithlens.circuits.operands] — where operand A, operand B and the
  operator are in a prompt, token by token (`locate`, `token_roles`).
* [`path_patching`][arithlens.circuits.path_patching] — §4.1 Algorithm 1, causal effect
  of every head and MLP at the END position: `PathPatching`.
* [`mean_ablation`][arithlens.circuits.mean_ablation] — §4.1 knockout validation by mean
  ablation over counterfactual data: `Knockout`, `MeanMLP`, `MeanComponents`.
* [`end_attention`][arithlens.circuits.end_attention] — §4.2 END-row attention of key
  heads to operands / operator / other tokens: `EndAttention`.
* [`mlp_probe`][arithlens.circuits.mlp_probe] — §4.2 MLP inputs / outputs probed with
  the unembedding of A, B and C: `MLPProbe`.
* [`precise_sft`][arithlens.circuits.precise_sft] — §4.3 precise SFT of the key
  components vs full and random-component fine-tuning, a procedure:
  `precise_sft(model, PreciseSFTSettings(...))` (the components' parameters:
  [`components`][arithlens.circuits.components]).

Components are [`Component`][arithlens.core.names.Component]s everywhere — the paper's
nodes: `Component(layer, head)` for a head, `Component(layer)` for an MLP. Every analysis
reads the clean cache (`run(model, data, *, cache=...)`), so one forward pass serves several;
a patching result to take the key components from is the named argument `patching=`.

Example:
    ```python
    import arithlens
    from arithlens import data
    from arithlens.circuits import EndAttention, Knockout, MLPProbe, PathPatching, counterfactual_pairs

    model = arithlens.load_model()
    pairs = counterfactual_pairs(model, data.zhang(model.tokenizer, n_per_op=10))
    patching = PathPatching().run(model, pairs)
    attention, probe = EndAttention(k=4), MLPProbe()
    cache = model.cache(pairs, names=[attention, probe])      # one clean forward pass
    Knockout(k=8).run(model, pairs, cache=cache, patching=patching).table()
    attention.run(model, pairs, cache=cache, patching=patching).plot()
    probe.run(model, pairs, cache=cache).plot()
    ```
"""

from arithlens.circuits.counterfactual import CounterfactualPairs, CounterfactualPrompt, counterfactual_pairs
from arithlens.circuits.end_attention import EndAttention, EndAttentionResult
from arithlens.circuits.mean_ablation import Knockout, KnockoutResult, MeanComponents, MeanMLP, MLPMeans
from arithlens.circuits.mlp_probe import MLPProbe, MLPProbeResult
from arithlens.circuits.operands import Spans, locate, token_roles
from arithlens.circuits.path_patching import PathPatching, PathPatchingResult
from arithlens.circuits.precise_sft import PreciseSFTResult, PreciseSFTSettings, precise_sft

__all__ = [
    "CounterfactualPairs",
    "CounterfactualPrompt",
    "EndAttention",
    "EndAttentionResult",
    "Knockout",
    "KnockoutResult",
    "MLPMeans",
    "MLPProbe",
    "MLPProbeResult",
    "MeanComponents",
    "MeanMLP",
    "PathPatching",
    "PathPatchingResult",
    "PreciseSFTResult",
    "PreciseSFTSettings",
    "Spans",
    "counterfactual_pairs",
    "locate",
    "precise_sft",
    "token_roles",
]
