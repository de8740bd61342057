# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Path patching and precise SFT (Zhang et al.)
#
# Zhang et al. (ICML 2024) *identify, analyse and fine-tune*: path patching with
# counterfactual prompts finds the few heads and MLPs that carry the arithmetic
# (Algorithm 1), mean ablation checks that they suffice (§4.1), their END-position
# attention and the MLPs' unembedding probes say what they do (§4.2), and
# fine-tuning only them improves arithmetic while leaving the rest of the model alone
# (§4.3). Here the whole loop on SmolLM2, on samples small enough for a laptop CPU.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

import plotly.io as pio
import arithlens
from arithlens import data

# Figures are interactive both in JupyterLab (plotly's own mime type) and in the
# rendered HTML of the docs site (the "notebook" HTML output).
pio.renderers.default = "plotly_mimetype+notebook"
model = arithlens.load_model()  # SmolLM2-135M-Instruct, embedded: no hub access needed
model

# %% [markdown]
# ## Reference and counterfactual prompts
#
# Two-digit addition with the paper's template `"n1 plus n2 is"`. The counterfactual
# replaces the operator word by an irrelevant word of the same token length, so a
# node whose output differs between the two carries the operation, not the syntax.

# %%
from arithlens.circuits import counterfactual_pairs, EndAttention, Knockout, MLPProbe, PathPatching

cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3],
                        forms=["numeral"], n_per_op=40, seed=0)
pairs = counterfactual_pairs(model, cases)
pairs.to_frame()[["prompt", "counterfactual", "target_str"]].head()

# %% [markdown]
# ## Algorithm 1: the effect of every head and MLP
#
# Each node's output at the END position is replaced by its counterfactual value
# while every other node keeps its reference value; the effect is the relative change
# of the answer logit, `(logit_p − logit_o) / logit_o`, averaged over pairs.

# %%
patching = PathPatching(progress=False).run(model, pairs)
patching.plot()

# %%
key = patching.top_components(10)      # the 10 nodes with the largest |effect|, as Nodes
patching.top(10)

# %% [markdown]
# ## Validation by mean ablation (§4.1)
#
# The key nodes, random non-key nodes of the same kinds, and every other node are
# replaced by their mean over the counterfactual prompts; the accuracy on the
# reference prompts says whether the key nodes are necessary and sufficient.
#
# Mean ablation, the END attention and the MLP probe all read the reference prompts'
# clean forward pass: `model.cache(pairs, names=[...])` runs it once for the three.

# %%
attention, probe = EndAttention(k=4), MLPProbe()
cache = model.cache(pairs, names=[attention, probe])    # one clean forward pass for all three
knockout = Knockout(k=10, progress=False).run(model, pairs, cache=cache, patching=patching)
knockout.table()

# %% [markdown]
# ## What the key heads attend to, what the MLPs write (§4.2)

# %%
heads_attention = attention.run(model, pairs, cache=cache, patching=patching)
heads_attention.plot()

# %%
probed = probe.run(model, pairs, cache=cache)
probed.plot()

# %% [markdown]
# ## Precise SFT (§4.3)
#
# Fine-tune only the key nodes (`precise`), everything (`full`), or random nodes
# with as many parameters (`random`), each on a deep copy of the model (the original
# is never touched), then compare test accuracy and the perplexity of a general-text
# sample. A CPU-sized run: 30 steps of 8 prompts; `arithlens sft` or
# `PreciseSFTSettings(steps=…, n_train=…)` for the paper's scale on a GPU.

# %%
from arithlens.circuits import PreciseSFTSettings, precise_sft

n_test = 60
settings = PreciseSFTSettings(nodes=key, steps=30, batch_size=8, n_train=240, n_test=n_test,
                              ppl_tokens=512, full_answer=False, progress=False)
sft = precise_sft(model, settings)
sft.df[["variant", "n_params", "final_loss", "accuracy", "accuracy_change", "perplexity", "perplexity_change"]]

# %%
sft.plot()

# %% [markdown]
# ## Reading
#
# The sentences below are computed from the results above, so they stay true when the
# model, the data or the code change: a claim is stated only when the numbers show it.
# Intervals are 95 %: Wilson's for an accuracy, Newcombe's for a difference of two
# accuracies (paired when both are measured on the same cases), Student's t for a mean
# over cases (`arithlens.core.stats`).
#
# Path patching tests every node, so an effect counts as distinguishable from zero
# only when its interval, widened for the number of nodes tested (Bonferroni),
# excludes zero; the same holds for the MLP probe's layers.

# %%
import statistics

from arithlens.core.stats import bonferroni, difference_interval, mean_interval, num, paired_difference, proportion

n_pairs = len(pairs)
strict = bonferroni(0.95, len(patching.nodes))
clear = {nd for i, nd in enumerate(patching.nodes) if mean_interval(patching.effects[i].tolist(), strict).known}
top = patching.top(10)
print(f"Path patching on {n_pairs} pairs: the ten largest effects on the answer logit are "
      + ", ".join(f"{r.name} ({num(100 * r.effect, 1, sign=True)}%)" for r in top.itertuples())
      + f". {len(clear)} of the {len(patching.nodes)} nodes have an effect distinguishable from zero once "
      f"{len(patching.nodes)} tests are accounted for, {sum(nd in clear for nd in key)} of these ten among them.")
head_layers = [nd.layer for nd in key if not nd.is_mlp]
mlp_layers = [nd.layer for nd in key if nd.is_mlp]
if head_layers and mlp_layers:
    m_mlp, m_head = statistics.median(mlp_layers), statistics.median(head_layers)
    below = sum(L <= max(head_layers) for L in mlp_layers)
    print(f"The key set holds {len(head_layers)} heads (layers {min(head_layers)}–{max(head_layers)}) and "
          f"{len(mlp_layers)} MLPs (layers {min(mlp_layers)}–{max(mlp_layers)}): "
          + (f"by median layer the MLPs ({num(m_mlp, 1)}) sit above the heads ({num(m_head, 1)}), the paper's layout"
             if m_mlp > m_head else
             f"by median layer the MLPs ({num(m_mlp, 1)}) do not sit above the heads ({num(m_head, 1)}), unlike the paper's layout")
          + (f"; {below} of the {len(mlp_layers)} MLPs are no higher than the highest head." if below else "; every MLP is above every head."))

ok = knockout.correct["baseline"].numpy()
print(f"Mean ablation: SmolLM2 answers {proportion(ok.sum(), len(ok)).percent()} of the {len(ok)} reference "
      "prompts' first tokens correctly.")
drops = {c: paired_difference(ok, knockout.correct[c].numpy()) for c in ("key", "random", "rest") if c in knockout.correct}
for c, d in drops.items():
    label = {"key": "the key nodes", "random": "random non-key nodes, first draw", "rest": "every other node"}[c]
    after = knockout.correct[c].float().mean()
    print(f"Ablating {label} ({knockout.df.loc[knockout.df['condition'] == c, 'n_ablated'].iloc[0]} nodes): accuracy "
          f"{ok.mean():.0%} -> {after:.0%}, a drop of {d.points()}: "
          + ("measurable." if d.above_zero else "a measurable gain." if d.below_zero else "no measurable change."))
key_d, rand_d = drops["key"], drops.get("random")
if key_d.above_zero and not (rand_d and rand_d.above_zero):
    print("The key nodes are necessary and random ones are not, as the paper's validation requires.")
elif not key_d.above_zero:
    print(f"Ablating the key nodes costs nothing measurable on {len(ok)} prompts, so mean ablation cannot "
          "confirm them here.")
else:
    print("Random nodes cost accuracy too, so the key nodes are not singled out by mean ablation here.")

att = heads_attention.per_case  # [head, case, role]: A, B, operator, other
for i, h in enumerate(heads_attention.heads):
    margin = mean_interval((att[i, :, 0] + att[i, :, 1] - att[i, :, 2] - att[i, :, 3]).tolist())
    a, b, op, other = att[i].mean(0).tolist()
    print(f"Head {h.name} attends from END to A {a:.2f}, B {b:.2f}, the operator {op:.2f}, other tokens "
          f"{other:.2f}: " + ("mostly to the operands." if margin.above_zero else
                              "mostly elsewhere than the operands." if margin.below_zero
                              else "operands and the rest are not distinguishable."))

cos = probed.per_case[:, :, 1]  # [case, layer, token] MLP output cosines with W_U of A, B, C
margins = [mean_interval((cos[:, j, 2] - cos[:, j, :2].max(-1).values).tolist(), bonferroni(0.95, cos.shape[1]))
           for j in range(cos.shape[1])]
answer_layers = [probed.layers[j] for j, m in enumerate(margins) if m.above_zero]
j = max(range(len(margins)), key=lambda j: margins[j].value)
print("MLP probe: " + (f"the MLP outputs point more towards the answer C than towards either operand at layers "
                       f"{', '.join(map(str, answer_layers))}." if answer_layers
                       else f"at no layer do the MLP outputs point measurably more towards the answer C than "
                            f"towards an operand (intervals adjusted for {cos.shape[1]} layers).")
      + f" The largest margin is at layer {probed.layers[j]}: cosine {num(margins[j].value, 3, sign=True)}.")

orig = sft.df.iloc[0]
for r in sft.df.iloc[1:].itertuples():
    d = difference_interval(round(r.accuracy * n_test), n_test, round(orig.accuracy * n_test), n_test)
    print(f"SFT {r.variant}: accuracy {orig.accuracy:.0%} -> {r.accuracy:.0%} ({d.points()}"
          + ("" if d.known else f", within noise on {n_test} test problems")
          + f"); general-text perplexity {orig.perplexity:,.1f} -> {r.perplexity:,.1f} "
          f"(×{r.perplexity / orig.perplexity:,.2f}).")
