"""The column glossary: one name per quantity across Python, the CLI's CSVs and the report.

Every [`Result.df`][arithlens.analysis.results.Result] uses only these names (the test
suite checks every result it builds). Log-probabilities are natural logs (nats);
`*_other` is the same quantity on the other side of a comparison and `*_change` is
original − other; a `*_drop` is clean − ablated (positive: the intervention lowered it);
percentages say so.
"""

from __future__ import annotations

from collections.abc import Iterable

COLUMNS: dict[str, str] = {
    # --- cases and their labels
    "case": "index of the case in the dataset",
    "prompt": "the prompt text",
    "op": "arithmetic operation: + - * /",
    "digits": "operand size in digits (1-3)",
    "template": "prompt template (1-4, Table 14) or the custom template string",
    "form": "operands as 'numeral' or 'word'",
    "position": "which answer token the target is (0-based)",
    "n": "number of cases behind the row",
    "n_cases": "number of cases the analysis ran on",
    "group": "the group a row aggregates (a layer range, 'all', ...)",
    "name": "a name (a model, a component, a quantity)",
    "item": "what a Table 7 row projects: a neuron 'L_N' or a word",
    # --- components
    "layer": "layer index, counted from 0",
    "head": "query-head index within the layer, counted from 0",
    "neuron": "FFN neuron index within the layer, counted from 0",
    "component": "a component's label: 'L.H' for a head, 'MLP L' for an MLP, or a named vector",
    "node": "a path-patching component: 'L.H' for a head, 'MLP L' for an MLP",
    "kind": "what a component is: 'head', 'mlp', 'neuron', 'embedding', 'residual', ...",
    # --- accuracy
    "accuracy": "first-answer-token accuracy, a fraction of cases",
    "full_accuracy": "greedy whole-answer accuracy, a fraction of cases",
    "baseline_accuracy": "accuracy of the unablated model on the same cases",
    "accuracy_drop": "baseline_accuracy - accuracy (a fraction of cases)",
    "accuracy_decrease": "100 * accuracy_drop / baseline_accuracy: the papers' 'accuracy decrease (%)'",
    "decrease": "Table 5/6 decrease in % of the original: accuracy for measure mask/keep, coefficient score for coef",
    "measure": "which quantity a long-format row holds",
    "score": "the ranking score of a row (see the result's docs)",
    "target_logprob": "log p(target) in nats",
    "logprob_drop": "log p(target) clean - ablated, in nats",
    "logprob_drop_estimate": "attribution estimate of logprob_drop (first order)",
    "logprob_change": "log p(answer) patched - original, in nats",
    "logit_change": "logit of the answer patched - original",
    "effect": "path-patching effect: mean relative logit change of the answer (Zhang et al. Eq. 2)",
    "effect_sem": "standard error of the mean of effect over cases",
    "effect_estimate": "attribution-patching estimate of effect",
    "estimated": "whether the row's numbers are first-order estimates (not re-scored exactly)",
    # --- CNA
    "importance": "§4.1 importance of the neuron (or head, layer) for the scored token, in nats",
    "importance_other": "importance on the other side of the comparison",
    "importance_change": "importance - importance_other",
    "coef": "the neuron's coefficient score m (its FFN activation at the last position)",
    "coef_other": "coef on the other side of the comparison",
    "coef_change": "coef - coef_other",
    "coef_increase": "Table 10: increase of the top neurons' coefficient scores under LoRA, in %",
    "share_downstream": "fraction of the top neurons at or above the LoRA layer",
    "n_top": "in how many cases the neuron is among the top-K",
    "n_scored": "cases whose scores the row averages",
    "top_tokens": "the top vocabulary tokens of the vector, comma separated",
    "token": "a vocabulary token, decoded",
    "token_id": "a vocabulary token id",
    "rank": "rank of the token in the vector's projection (0: highest)",
    "logit": "the token's logit in the vector's projection (final norm, W_U, b_U)",
    "direction": "'top' or 'bottom' end of a vocabulary projection",
    "concept": "the number / operation concept a token names ('' for none)",
    "is_number_concept": "whether the token names a number or operation concept",
    "n_concepts": "concept tokens among a transformed vector's top-k",
    "direct_concepts": "concept tokens among the untransformed vector's top-k",
    "best_attn_layer": "the attention layer whose VO transform gives the most concept tokens",
    "attn_layer": "the attention layer of a VO transform (-1: none, the direct view)",
    "view": "'direct' or 'transformed'",
    "M": "Table 8 threshold on concept tokens",
    "neuron_set": "'hidden' (hidden-interpretable) or 'random' (control)",
    "n_neurons": "number of neurons in the set",
    "src_layer": "PE-DAG edge: layer of the source neuron",
    "src_neuron": "PE-DAG edge: source neuron",
    "dst_layer": "PE-DAG edge: layer of the destination neuron",
    "dst_neuron": "PE-DAG edge: destination neuron",
    "drive": "how much the source's subvalue raises the destination's coefficient",
    "relative_drive": "drive relative to the destination's coefficient score",
    "gate_ip": "inner product of the source value vector with the destination's gate row (scaled)",
    "up_ip": "inner product of the source value vector with the destination's up row (scaled)",
    "stage": "the logic-chain stage of the row (Fig. 1)",
    "k": "a top-K size",
    # --- Zhang et al.
    "condition": "Knockout: which nodes are mean-ablated ('baseline', 'key', 'key L.H', 'random', 'rest')",
    "n_ablated": "how many nodes the condition mean-ablates",
    "head_label": "a head as 'L.H'",
    "role": "the token role attended to: A, B, operator or other",
    "attention": "END-row attention weight (a fraction of the row)",
    "quantity": "MLP probe: mlp_in, mlp_out or mlp_diff",
    "cosine": "cosine similarity with the unembedding of the token",
    "in_top_k": "whether the token is among the vector's top-k readout tokens",
    "variant": "precise SFT: original, precise, full or random",
    "perplexity": "perplexity of the general-text sample",
    "accuracy_change": "accuracy - the original model's accuracy (a fraction of cases)",
    "perplexity_change": "perplexity - the original model's perplexity",
    "nodes": "the fine-tuned components, 'L.H' / 'MLP L', comma separated",
    # --- LoRA, pruning, bias
    "model": "which model a row describes ('original', 'lora8', 'cna-pruned', ...)",
    "lora": "whether the model was fine-tuned with LoRA",
    "lora_layer": "the layer whose attention the LoRA adapter trains",
    "lr": "learning rate",
    "val_loss": "held-out answer-token loss",
    "final_loss": "mean training loss of the last 10 steps",
    "steps": "optimiser steps",
    "epochs": "passes over the training data",
    "n_lora_params": "trainable LoRA parameters",
    "reused": "whether a saved adapter was loaded instead of trained",
    "pruning": "'none', 'cna' or 'random'",
    "n_params": "parameters of the model",
    "deep_ffn_params": "FFN parameters in the pruned layers",
    "deep_neurons": "FFN neurons in the pruned layers",
    "forward_ms": "median wall time of one forward pass of the timing batch, in ms",
    "gender": "'woman' or 'man'",
    "profession": "a profession (Table 23)",
    "biased_to": "the gender a profession is biased to",
    "logp_woman": "log p(profession) after the woman prompt, in nats",
    "logp_man": "log p(profession) after the man prompt, in nats",
    "bias": "log p(profession) after the biased-to gender's prompt minus after the other's (§6.2), in nats",
    "abs_bias": "|logp_woman - logp_man|, in nats",
    "prob": "next-token probability",
    "one_sided": "whether the token is in one gender's top list only",
}
"""Column name → what it holds."""


def unknown(names: Iterable[object]) -> list[str]:
    """The names among `names` that the glossary does not define."""
    return [str(n) for n in names if str(n) not in COLUMNS]
