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
# # 05 · The logic chain of one case (Fig. 1)
#
# Yu & Ananiadou §4.5 trace one prediction through four stages: shallow FFN neurons
# **enhance** the operand features (§4.4), attention **transfers** them to the last
# position, the arithmetic head and the deep neurons it activates **predict** the
# answer (§4.2), and those neurons **enhance the prediction** through a DAG (§4.3).
# `LogicChain` locates all four on one prompt.

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
# `head` is the arithmetic head (tutorial 02 finds it; tutorial 03 checks what
# zeroing it costs), and `"1+2="` a case the model should answer correctly — the
# cell prints whether it does. Feature-enhancing neurons are searched in the layers
# below the PE-DAG root; by default only below the head too, which leaves nothing to
# search when the head sits in layer 0, so `shallow_layers` widens the search to
# layers 0–9 explicitly and `k_shallow` keeps the 8 strongest.

# %%
head = (0, 8)      # the arithmetic head: your model's top "+" head from tutorial 02
prompt = "1+2="
print(prompt, "->", model.predict([prompt]))

# %%
from arithlens.cna import LogicChain
from arithlens.core.interventions import ZeroHead

logic = LogicChain(intervention=ZeroHead(*head), k=10, k_shallow=8, shallow_layers=list(range(10)),
                   mode="fast")
chain = logic.run(model, prompt)
chain.plot()

# %% [markdown]
# ## The four stages

# %%
chain.table()

# %%
for stage in dict.fromkeys(chain.df["stage"]):
    print(stage)
    display(chain.stage(stage).head(8))

# %% [markdown]
# ## Reading
#
# The sentences below are computed from the results above, so they stay true when the
# model, the data or the code change: a claim is stated only when the numbers show it.
# Intervals are 95 %: Wilson's for an accuracy, Newcombe's for a difference of two
# accuracies (paired when both are measured on the same cases), Student's t for a mean
# over cases (`arithlens.core.stats`).
#
# A neuron "reads as numbers" here when at least 3 of its top-10 tokens name a number
# or an operation. One case has no interval: what follows illustrates the method on
# this prompt and is no measurement of the model.

# %%
import ast

from arithlens.cna import NumberConceptTagger

tagger = NumberConceptTagger()
reads = lambda tokens: tagger.count(ast.literal_eval(tokens)) >= 3 if tokens else False  # noqa: E731
stages = list(dict.fromkeys(chain.df["stage"]))
print(f"{len(stages)} of the 4 stages are found on {chain.prompt!r} -> {chain.prediction!r}"
      + ("." if not chain.empty else "; " + "; ".join(f"{s}: none ({why})" for s, why in chain.empty.items()) + "."))

fp = chain.stage("feature predicting")
lp = fp[fp["measure"] == "logprob_drop"]["score"].iloc[0]
deep = fp[fp["measure"] == "importance_change"]
numeric = [f"{int(r.layer)}_{int(r.neuron)}" for r in deep.itertuples() if reads(r.top_tokens)]
print(f"Feature predicting: zeroing head {head[0]}.{head[1]} lowers log p({chain.prediction!r}) by {lp:.2f} nats; "
      f"of the {len(deep)} deep neurons whose importance falls most (layers {deep['layer'].min()}–"
      f"{deep['layer'].max()}), {len(numeric)} read as numbers" + (f" ({', '.join(numeric)})." if numeric else "."))

edges = chain.dag.df
if len(edges):
    print(f"Prediction enhancing: {len(edges)} PE-DAG edges run from layers {edges['src_layer'].min()}–"
          f"{edges['src_layer'].max()} to layers {edges['dst_layer'].min()}–{edges['dst_layer'].max()}, with "
          f"relative drives {edges['relative_drive'].min():.0%}–{edges['relative_drive'].max():.0%}.")
else:
    print("Prediction enhancing: no PE-DAG edge reaches the threshold.")

tr = chain.stage("feature transferring")
weights = tr[(tr["measure"] == "attention_weight") & (tr["layer"] == head[0])]
peak = weights.sort_values("score", ascending=False).iloc[0]["token"]
gain = tr[(tr["measure"] == "attn_importance") & (tr["layer"] == head[0])]["score"].iloc[0]
print(f"Feature transferring: attention layer {head[0]} (mean over heads) weights the earlier positions "
      + ", ".join(f"{t!r} {w:.2f}" for t, w in zip(weights["token"], weights["score"]))
      + f"; the most attended, {peak!r}, is " + ("an operand" if peak.strip().isdigit() else "not an operand")
      + f". Its output changes log p({chain.prediction!r}) by {gain:+.2f} nats.")

fe = chain.stage("feature enhancing")
if len(fe):
    on_operands = int(fe["token"].str.strip().str.isdigit().sum())
    numeric = int(sum(reads(t) for t in fe["top_tokens"]))
    print(f"Feature enhancing: {on_operands} of the {len(fe)} shallow neurons that drive the PE-DAG root "
          f"{chain.root[0]}_{chain.root[1]} most sit on operand positions, and {numeric} of them read as "
          "numbers after the attention transform"
          + (": the paper's shallow number features show." if numeric else ": no shallow number feature shows."))
