"""Precise SFT (Zhang et al. §4.3): only the key components train; the user's model never changes."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_untouched, model_state

from arithlens import data
from arithlens.analysis.tuning import general_text, perplexity
from arithlens.circuits import PreciseSFTSettings, precise_sft
from arithlens.circuits.components import canonical_name, component_masks, n_params
from arithlens.analysis.tuning import answer_loss
from arithlens.core.names import Component
from arithlens.core.validate import NonFiniteError

TEXT = "The river keeps moving in the dark. Tomorrow the fog will return."


def _param(bridge, suffix):
    return next(p for n, p in bridge.named_parameters() if canonical_name(n).endswith(suffix))


def test_component_masks_select_head_slices_and_whole_mlps(tiny):
    d, group = tiny.d_head, tiny.n_heads // tiny.n_kv_heads
    masks = {canonical_name(k): v for k, v in component_masks(tiny, tiny.bridge, [Component(1, 3), Component(2)]).items()}
    q = masks["model.layers.1.self_attn.q_proj.weight"]
    assert q[3 * d : 4 * d].all() and q.sum() == d * tiny.d_model
    g = 3 // group
    for kv in ("k", "v"):
        m = masks[f"model.layers.1.self_attn.{kv}_proj.weight"]
        assert m[g * d : (g + 1) * d].all() and m.sum() == d * tiny.d_model
    o = masks["model.layers.1.self_attn.o_proj.weight"]
    assert o[:, 3 * d : 4 * d].all() and o.sum() == d * tiny.d_model
    for proj in ("gate", "up", "down"):
        assert masks[f"model.layers.2.mlp.{proj}_proj.weight"].all()
    assert not any("layers.0" in k for k in masks)
    # two heads of one KV group share (count once) its K/V slice
    shared = n_params(component_masks(tiny, tiny.bridge, ["1.0", (1, 1)]))
    assert shared == 2 * 2 * d * tiny.d_model + 2 * d * tiny.d_model


def test_answer_loss_counts_answer_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    tokens = torch.randint(0, 11, (2, 6))
    starts = [3, 5]
    terms = []
    for b, s in enumerate(starts):
        for t in range(s, 6):  # answer tokens t, predicted at position t - 1
            terms.append(float(F.cross_entropy(logits[b, t - 1][None], tokens[b, t][None])))
    assert float(answer_loss(logits, tokens, starts)) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_perplexity_equals_brute_force(tiny):
    ids = tiny.encode(TEXT)
    nll = 0.0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, 16):
            chunk = ids[s : s + 17]
            logp = tiny.bridge(torch.tensor([chunk[:-1]]))[0].log_softmax(-1)
            nll -= sum(float(logp[i, chunk[i + 1]]) for i in range(len(chunk) - 1))
    assert perplexity(tiny, TEXT, window=16) == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)
    assert len(general_text().splitlines()) >= 50


def test_precise_sft_trains_only_key_components(tiny):
    train, test = data.lora_split(tiny.tokenizer, n_train=40, n_test=8)
    tiny.cache(test, memo=False)  # the bridge adds torch hooks of its own on its first run_with_cache
    snap, n_hooks = model_state(tiny)
    key = [Component(1, 3), Component(2)]
    sft = PreciseSFTSettings(nodes=key, steps=3, batch_size=4, lr=1e-2, full_answer=False, progress=False)
    result = precise_sft(tiny, sft, train=train, test=test, text=TEXT)
    assert_untouched(tiny, snap, n_hooks)
    assert result.df["variant"].tolist() == ["original", "precise", "full", "random"]
    rows = result.df.set_index("variant")
    masks = component_masks(tiny, tiny.bridge, key)
    assert rows.loc["precise", "n_params"] == n_params(masks)
    assert rows.loc["random", "n_params"] == rows.loc["precise", "n_params"]
    assert rows.loc["full", "n_params"] == sum(p.numel() for p in tiny.bridge.parameters())
    assert not set(result.random_nodes) & set(key)
    assert sum(n.is_mlp for n in result.random_nodes) == 1 and result.nodes == key
    original = dict(tiny.bridge.named_parameters())
    trained = dict(result.models["precise"].bridge.named_parameters())
    changed = 0
    for name, before in original.items():
        after = trained[name]
        mask = masks.get(name)
        if mask is None:
            assert torch.equal(after, before), f"{name} is frozen but changed"
        else:
            assert torch.equal(after[~mask], before[~mask]), f"frozen entries of {name} changed"
            changed += int((after[mask] != before[mask]).sum())
    assert changed > 0.5 * n_params(masks)
    full = dict(result.models["full"].bridge.named_parameters())
    assert sum(not torch.equal(full[n], original[n]) for n in original) > len(original) // 2
    assert all(len(c) == 3 for c in result.losses.values())
    assert result.models["precise"].predict(["1+2="])  # a usable LensModel
    assert not any(p.requires_grad for p in result.models["precise"].bridge.parameters())
    assert rows.loc["precise", "nodes"] == "1.3, MLP 2"
    table = result.table()
    assert list(table.index) == ["original", "precise", "full", "random"]
    assert table.loc["full", "accuracy"] == round(100 * rows.loc["full", "accuracy"], 1)
    assert table.loc["random", "perplexity"] == rows.loc["random", "perplexity"]
    fig = result.plot()
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    assert list(bars["accuracy"].x) == table.index.tolist() and list(bars["perplexity"].y) == pytest.approx(rows["perplexity"].tolist())
    curves = {t.name: list(t.y) for t in fig.data if t.type == "scatter"}
    assert curves == {v: pytest.approx(c) for v, c in result.losses.items()}
    assert fig.layout.xaxis3.title.text == "step" and fig.layout.yaxis.title.text == "accuracy"


def test_precise_sft_bad_input(tiny):
    with pytest.raises(ValueError, match="variants item='lora' is not one of"):
        PreciseSFTSettings(variants=["lora"])
    with pytest.raises(ValueError, match="steps=0 is out of range"):
        PreciseSFTSettings(steps=0)
    with pytest.raises(ValueError, match="steps=2.5 must be an integer"):
        PreciseSFTSettings(steps=2.5)
    with pytest.raises(ValueError, match="steps=True must be an integer, not a bool"):
        PreciseSFTSettings(steps=True)
    with pytest.raises(ValueError, match="batch_size='8' must be an integer"):
        PreciseSFTSettings(batch_size="8")
    with pytest.raises(ValueError, match="lr=0.0 is out of range"):
        PreciseSFTSettings(lr=0)
    with pytest.raises(ValueError, match="full_answer='no' must be True or False"):
        PreciseSFTSettings(full_answer="no")
    with pytest.raises(ValueError, match="component 'attn' is not of the form"):
        PreciseSFTSettings(nodes=["attn"])
    sft = PreciseSFTSettings(k=np.int64(4), steps=np.int64(3), batch_size=torch.tensor(2), variants="full")
    assert (sft.k, sft.steps, sft.batch_size, sft.variants) == (4, 3, 2, ("full",))
    with pytest.raises(ValueError, match="layer=3 is out of range"):
        PreciseSFTSettings(nodes=[Component(3)]).key_nodes(tiny)
    with pytest.raises(ValueError, match="has no answer tokens"):
        precise_sft(tiny, PreciseSFTSettings(nodes=["1.3"], steps=1), train=["1+2="], test=["3+4="], text=TEXT)
    with pytest.raises(ValueError, match="window=0 is out of range"):
        perplexity(tiny, TEXT, window=0)


def test_diverging_training_is_an_error_not_nan_results(tiny):
    train, test = data.lora_split(tiny.tokenizer, n_train=16, n_test=4)
    tiny.cache(test, memo=False)  # the bridge adds torch hooks of its own on its first run_with_cache
    snap, n_hooks = model_state(tiny)
    sft = PreciseSFTSettings(nodes=["1.3"], variants=["full"], steps=4, batch_size=4, lr=1e30, full_answer=False, progress=False)
    with pytest.raises(NonFiniteError, match="SFT full: the training loss is nan"):
        precise_sft(tiny, sft, train=train, test=test, text=TEXT)
    assert_untouched(tiny, snap, n_hooks)
