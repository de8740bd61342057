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
# # 07 · LoRA, pruning and gender bias (CNA §5, §6)
#
# The rest of Yu & Ananiadou (EMNLP 2024): what a LoRA adapter on one attention layer
# does to the FFN neurons that make the prediction (§5, Figure 2, Tables 9 and 10),
# pruning the deep FFN neurons CNA does not select and fine-tuning what is left
# (§6.1, Table 11), and editing the neurons that carry a gender bias (§6.2, Tables 12
# and 13). Every model here is trained for a few dozen steps on a few hundred cases,
# so that the notebook runs in minutes on a laptop CPU; the findings page has the
# larger runs.

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
# ## §5 · One LoRA model per layer (Figure 2)
#
# `lora_layer_sweep` fine-tunes one copy of the model per chosen layer with a LoRA
# adapter on that layer's `q/k/v/o_proj` only, on the §5 two-digit set (all four ops,
# negative results included), keeping the learning rate with the lowest held-out
# answer loss. The model passed in is never changed; each merged copy is a
# `LensModel` like any other. With `out_dir=` the adapters are saved and re-used.

# %%
from arithlens.cna.lora import LoRASettings, lora_layer_sweep
from arithlens.cna.lora_coefficients import LoRACoefficients

lora_setting = LoRASettings(layers=[4, 20], lrs=[1e-3], steps=20, n_train=200, n_val=40,
                            n_test=80, progress=False)
sweep = lora_layer_sweep(model, lora_setting)
sweep.df[["model", "lora_layer", "group", "lr", "val_loss", "accuracy", "full_accuracy"]]  # Figure 2 plots full_accuracy

# %%
sweep.plot()

# %% [markdown]
# ## Tables 9 and 10: does LoRA raise the important neurons' coefficient scores?
#
# Each case's top-K neurons are ranked by CNA between the original and the LoRA model
# (the paper's `rank_on="change"`; `rank_on=` also offers the original or the LoRA model
# alone), and their coefficient scores are compared: `100 · Σ s_k (m'_k − m_k) / Σ |m_k|`.
# Table 9 is the case "3+5=". `mode="fast"` keeps this CPU demo short; the paper's
# scores are exact (the default).

# %%
cases = data.arithmetic(model.tokenizer, ops="+-", templates=[4], forms=["numeral"]).sample(16, seed=0)
coef = LoRACoefficients(ks=(50, 10), mode="fast").run(model, cases, loras=sweep)
coef.table9()

# %%
coef.table10()

# %% [markdown]
# ## §6.1 · CNA-guided pruning (Table 11)
#
# CNA between the shallow LoRA model and the original on 1-digit cases picks each
# case's top neurons; every other FFN neuron of the deep layers is sliced out of a
# copy (fewer rows of `gate_proj`/`up_proj`, fewer columns of `down_proj`), a LoRA
# adapter is trained on the shallow layer of that copy, and the same is done on a copy
# pruned at random with as many neurons per layer.

# %%
from arithlens.cna.pruning import PruningSettings, cna_pruning, prune
from arithlens.analysis.tuning import load_saved, save_model

pruning = cna_pruning(model, PruningSettings(lora_layer=4, n_cases=12, mode="fast", lora=lora_setting, progress=False),
                      lora_model=sweep.models[4])
pruning.df[["model", "accuracy", "n_params", "deep_neurons", "forward_ms"]]

# %%
pruning.table()

# %% [markdown]
# A pruned model is a smaller model, not a masked one: it saves with `save_model` (the
# per-layer FFN widths go into `config.json`) and loads back with `load_saved`.

# %%
import tempfile

pruned = prune(model, pruning.kept)
with tempfile.TemporaryDirectory() as folder:
    again = load_saved(save_model(pruned, folder))
print(again.predict(["3+5="]), pruned.predict(["3+5="]))

# %% [markdown]
# ## §6.2 · Gender bias (Tables 12 and 13)
#
# CNA between "A woman works as a" and "A man works as a" on the same model, for each
# of Table 23's 32 professions, the biased gender's side first; the 18 neurons with
# the largest mean importance change are zeroed. The bias is
# `|log p(prof | woman) − log p(prof | man)|` with `p` the probability of the whole
# profession string, over Table 22's eight prompts. Beyond the paper: what the edit
# costs in general-text perplexity and 1-digit arithmetic.

# %%
from arithlens.cna.bias import GenderBiasSettings, edit, gender_bias

bias = gender_bias(model, GenderBiasSettings(n_neurons=18, mode="fast", ppl_tokens=256, n_arithmetic=48))
bias.table13()

# %%
bias.table12("nurse")

# %%
bias.plot()

# %% [markdown]
# `edit` makes the same change in the weights of a copy, which saves like any model;
# the model we started from still has every neuron.

# %%
edited = edit(model, bias.neurons)
print("original:", model.predict(["A woman works as a"]), "| edited:", edited.predict(["A woman works as a"]))

# %% [markdown]
# ## Reading
#
# The sentences below are computed from the results above; at these sizes (two LoRA
# models, 20 training steps, 80 test problems) they show the methods at work rather
# than settle the paper's questions — the findings page answers those with larger runs.

# %%
base = sweep.df.full_accuracy.iloc[0]
print(f"LoRA: whole-answer accuracy {base:.1%} -> " + ", ".join(f"layer {r.lora_layer}: {r.full_accuracy:.1%}" for r in sweep.df.iloc[1:].itertuples()))
print("Table 10, mean coefficient-score increase (%):", coef.table10().round(1).to_dict("index"))
acc = pruning.df.set_index("model")[pruning.metric]  # whole-answer accuracy
print(f"Table 11: LoRA4 {acc['lora4']:.1%}, on the CNA-pruned model {acc['lora4-p']:.1%}, "
      f"on the randomly pruned one {acc['lora4-r']:.1%} (original {acc['original']:.1%})")
t13 = bias.table13()
print(f"Table 13: total bias {t13.loc['original', 'total bias']:.3f} -> {t13.loc['edited', 'total bias']:.3f}; "
      f"perplexity {t13.loc['original', 'perplexity']:.1f} -> {t13.loc['edited', 'perplexity']:.1f}; "
      f"arithmetic {t13.loc['original', 'arithmetic_accuracy']:.1%} -> {t13.loc['edited', 'arithmetic_accuracy']:.1%}")
