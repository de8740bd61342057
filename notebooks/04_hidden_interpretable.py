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
# # 04 · Hidden-interpretable neurons (Tables 7–8)
#
# Yu & Ananiadou §4.4: many *shallow* FFN neurons look like noise when their value
# vector is read through the unembedding, but read as clear number concepts once an
# attention layer has moved them to the last position — they are
# **hidden-interpretable**. The transform of a vector `v` by attention layer `a` is its
# image through the layer's value-output circuit, all heads summed:
# `T_a(v) = Σ_h v W_V^h W_O^h`. Table 7 compares direct and transformed top tokens;
# Table 8 zeroes the neurons whose transformed top-50 tokens hold more than `M` number
# concepts and measures the accuracy decrease, against random sets of the same size.

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
# ## The zero-shot scan
#
# The paper scans every neuron of the lower half through every attention layer of the
# lower half. To stay within a CPU budget this tutorial scans the FFN neurons of layers
# 10–14 through attention layer 15 only (1/24 of the default scan; `VOTransform()`
# scans everything, seconds on a GPU). `direct=True` also counts the number tokens
# of each neuron's untransformed value vector (`direct_concepts`), so the neurons
# that are *hidden* — no number token directly, many after the transform — can be
# told apart.

# %%
from arithlens.cna import VOTransform

vo = VOTransform(neuron_layers=range(10, 15), attn_layers=[15], progress=False)
scan = vo.scan(model, direct=True)
scan.top(10)

# %%
scan.plot()

# %% [markdown]
# ## Table 7: direct vs transformed top tokens
#
# The three neurons with the most number tokens after the transform, and the word
# embeddings of `"3"` and `"5"`, through attention layer 15 (`layer=`; the options of an
# analysis are frozen, so `dataclasses.replace` makes the variant).

# %%
import dataclasses

top = scan.top(3)
neurons = [(int(L), int(n)) for L, n in zip(top["layer"], top["neuron"])]
table7 = dataclasses.replace(vo, layer=15, top_tokens=10).run(model, neurons + ["3", "5"])
table7.table()

# %%
table7.plot()

# %% [markdown]
# ## Table 8: ablate the hidden-interpretable sets
#
# Every `"n1+n2="` and `"n1-n2="` prompt the model answers correctly
# (`correct_only=True`): the original accuracy is then 100 % and the decrease is the
# share of correct answers an ablation destroys.

# %%
from arithlens.cna import HiddenInterpretable

plus_minus = data.arithmetic(model.tokenizer, ops="+-", templates=[4], forms=["numeral"])
table8 = HiddenInterpretable(transform=vo, correct_only=True, progress=False).run(model, plus_minus, scan=scan)
table8.table()

# %%
table8.plot()

# %% [markdown]
# ## Reading
#
# The sentences below are computed from the results above, so they stay true when the
# model, the data or the code change: a claim is stated only when the numbers show it.
# Intervals are 95 %: Wilson's for an accuracy, Newcombe's for a difference of two
# accuracies (paired when both are measured on the same cases), Student's t for a mean
# over cases (`arithlens.core.stats`).

# %%
from arithlens.core.stats import difference_interval, proportion

d = scan.df
hidden = d[(d["direct_concepts"] == 0) & (d["n_concepts"] > 3)]
best = scan.top(1).iloc[0]
print(f"Of the {len(d):,} neurons scanned (layers {min(scan.neuron_layers)}–{max(scan.neuron_layers)} through "
      f"attention {', '.join(map(str, scan.attn_layers))}), {len(hidden):,} have no number token among their "
      f"direct top {scan.k} but more than 3 among their transformed top {scan.k}: "
      + ("hidden-interpretable neurons exist here. " if len(hidden) else "none is hidden-interpretable here. ")
      + f"The most number tokens after the transform: {int(best.layer)}_{int(best.neuron)}, "
      f"{int(best.n_concepts)} of {scan.k} (directly: {int(best.direct_concepts)}).")

t7 = table7.table()
moves = [(item, int(a), int(b)) for item, a, b in zip(t7["item"], t7["origin concepts"], t7["transform concepts"])]
print(f"Table 7, number tokens among the top {table7.k} directly -> transformed: "
      + ", ".join(f"{item} {a} -> {b}" for item, a, b in moves) + ".")
gained = sum(b > a for _, a, b in moves[:len(neurons)])
words = moves[len(neurons):]
print(f"The transform adds number tokens to {gained} of the {len(neurons)} neurons; the digit embeddings "
      + ("keep theirs." if all(b >= a for _, a, b in words) else "lose theirs: attention 15's value-output "
         "circuit does not carry raw digit embeddings." if all(b < a for _, a, b in words) else "differ."))

n8 = int(table8.df["n_cases"].iloc[0])
holds = []
for m in sorted(set(table8.df["M"])):
    rows = table8.df[table8.df["M"] == m].set_index("neuron_set")
    lost = {s: round(n8 * (rows.loc[s, "baseline_accuracy"] - rows.loc[s, "accuracy"])) for s in rows.index}
    gap = difference_interval(lost["hidden"], n8, lost["random"], n8)
    if gap.above_zero:
        holds.append(f"M = {m}")
    print(f"M = {m}: zeroing the {int(rows.loc['hidden', 'n_neurons']):,} hidden-interpretable neurons costs "
          f"{proportion(lost['hidden'], n8).percent()} of the {n8} correct answers, a random set of the same "
          f"size {proportion(lost['random'], n8).percent()}: "
          + ("the hidden set hurts more." if gap.above_zero else "the random set hurts more." if gap.below_zero
             else "not distinguishable."))
print(f"Table 8's finding — the hidden-interpretable set costs far more than a random one — "
      + (f"holds at {', '.join(holds)}" if holds else "is not reproduced at any M")
      + f" on these {n8} cases, with only layers {min(scan.neuron_layers)}–{max(scan.neuron_layers)} scanned; "
      "the full scan (`VOTransform()`) is the paper's test.")
