"""VOTransform (Table 7) and HiddenInterpretable (Table 8): brute force, the cache, bad input."""

import dataclasses
import copy

import numpy as np
import pytest
import torch

from arithlens.cna import HiddenInterpretable, VocabularyProjection, NumberConceptTagger, VOTransform
from arithlens.cna.vo_transform import ov_matrix
from arithlens.data import ArithmeticDataset, Case
from arithlens.core.interventions import ZeroNeurons
from conftest import assert_untouched, params_snapshot


def _literal_transform(model, v, layer):
    """Σ_h (v · W_V[kv(h)]) · W_O[h], one head at a time."""
    group = model.n_heads // model.n_kv_heads
    out = torch.zeros(model.d_model, dtype=torch.float64)
    for h in range(model.n_heads):
        z = v.double() @ model.bridge.W_V[layer, h // group].double()
        out += z @ model.bridge.W_O[layer, h].double()
    return out


def _literal_count(model, v, k, tagger):
    """Concept tokens among the top k of ln_final(v) @ W_U + b_U, decoded one by one."""
    v = v.double()
    normed = v / torch.sqrt((v * v).mean() + float(model.cfg.eps))
    logits = normed @ model.bridge.W_U.double() + model.bridge.b_U.double()
    top = torch.argsort(logits, descending=True)[:k]
    return sum(tagger(model.decode([int(t)])) is not None for t in top)


def test_transform_equals_per_head_loop(tiny):
    vo = VOTransform()
    vecs = torch.randn(4, tiny.d_model, generator=torch.Generator().manual_seed(1))
    for layer in range(tiny.n_layers):
        got = vo.transform(tiny, vecs, layer)
        assert got.shape == (4, tiny.d_model)
        for i in range(4):
            torch.testing.assert_close(got[i].double(), _literal_transform(tiny, vecs[i], layer), atol=1e-5, rtol=1e-4)
    stacked = vo.transform(tiny, vecs, [0, 2])
    assert stacked.shape == (2, 4, tiny.d_model)
    torch.testing.assert_close(stacked[1], vo.transform(tiny, vecs, 2))


@pytest.fixture(scope="module")
def tiny_norms():
    """A tiny GQA Llama whose RMSNorm weights are not ones (so folding matters), and its
    original (unfolded) attention weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from arithlens.core.model import LensModel
    from arithlens.testing import char_tokenizer

    tok = char_tokenizer()
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, attn_implementation="eager")  # fmt: skip
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 2.0)
            layer.post_attention_layernorm.weight.uniform_(0.5, 2.0)
        hf.model.norm.weight.uniform_(0.5, 2.0)
    raw = copy.deepcopy({k: v.detach().clone() for k, v in hf.state_dict().items()})
    return LensModel.from_hf(hf, tok, name="tiny-norms"), raw


def test_transform_includes_folded_attention_norm(tiny_norms):
    """T_a(x) / rms(x) is the attention layer's own output on a one-position input, and
    T_a(x) is the HF weights' ln1-weight ⊙ x through v_proj, o_proj."""
    model, raw = tiny_norms
    vo = VOTransform()
    x = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    layer = 1
    store = {}

    def grab(act, hook):
        store["out"] = act[0, 0].detach().clone()

    with torch.no_grad(), model.hooked([(f"blocks.{layer}.hook_attn_out", grab)]):
        model.bridge(x[None, None], start_at_layer=layer, stop_at_layer=layer + 1)
    rms = torch.sqrt((x * x).mean() + float(model.cfg.eps))
    torch.testing.assert_close(vo.transform(model, x, layer)[0] / rms, store["out"], atol=1e-5, rtol=1e-4)

    pre = f"model.layers.{layer}."
    w1 = raw[pre + "input_layernorm.weight"]
    v_proj, o_proj = raw[pre + "self_attn.v_proj.weight"], raw[pre + "self_attn.o_proj.weight"]
    d_head, group = model.d_head, model.n_heads // model.n_kv_heads
    ref = torch.zeros(model.d_model)
    for h in range(model.n_heads):
        kv = h // group
        z = (w1 * x) @ v_proj[kv * d_head : (kv + 1) * d_head].T
        ref += z @ o_proj[:, h * d_head : (h + 1) * d_head].T
    torch.testing.assert_close(vo.transform(model, x, layer)[0], ref, atol=1e-5, rtol=1e-4)


def test_scan_counts_match_literal(tiny):
    tagger = NumberConceptTagger()
    vo = VOTransform(upto_layer=2, k=10, progress=False)
    assert vo.layers(tiny) == ([0, 1], [0, 1, 2])
    scan = vo.scan(tiny, direct=True)
    assert scan.counts.shape == (2, tiny.d_mlp, 3)
    assert len(scan.df) == 2 * tiny.d_mlp
    # Attention layer 0 reads no FFN neuron; layer 1 does not read FFN layer 1.
    assert (scan.counts[:, :, 0] == -1).all() and (scan.counts[1, :, 1] == -1).all()
    for i, L in enumerate([0, 1]):
        for k in range(0, tiny.d_mlp, 7):
            v = tiny.bridge.W_out[L, k]
            per_layer = {a: _literal_count(tiny, _literal_transform(tiny, v, a), 10, tagger) for a in range(L + 1, 3)}
            for j, a in enumerate([0, 1, 2]):
                assert int(scan.counts[i, k, j]) == per_layer.get(a, -1)
            row = scan.df[(scan.df["layer"] == L) & (scan.df["neuron"] == k)].iloc[0]
            assert row["n_concepts"] == max(per_layer.values())
            assert per_layer[row["best_attn_layer"]] == row["n_concepts"]
            assert row["direct_concepts"] == _literal_count(tiny, v, 10, tagger)
    assert list(scan.top(3)["n_concepts"]) == sorted(scan.df["n_concepts"], reverse=True)[:3]
    fig = scan.plot()
    # One bar trace per concept-count bucket present; bars sum to every scanned neuron.
    buckets = {str(min(c, 5)) if c < 5 else "5+" for c in scan.df["n_concepts"]}
    assert {t.name for t in fig.data} == buckets
    assert sum(sum(t.y) for t in fig.data) == len(scan.df)
    assert fig.layout.xaxis.title.text == "FFN layer" and "neurons" in fig.layout.yaxis.title.text


def test_scan_reach_all_is_every_attention_layer(tiny):
    """`reach="all"` (the paper's "0th–16th attention layers" read literally): every neuron goes through
    every attention layer up to `upto_layer`, its own and lower ones included."""
    tagger = NumberConceptTagger()
    scan = VOTransform(upto_layer=2, k=10, reach="all", progress=False).scan(tiny)
    above = VOTransform(upto_layer=2, k=10, progress=False).scan(tiny)
    assert (scan.counts >= 0).all()
    read = above.counts >= 0
    assert torch.equal(scan.counts[read], above.counts[read])
    for i, L in enumerate([0, 1]):
        for k in range(0, tiny.d_mlp, 11):
            v = tiny.bridge.W_out[L, k]
            for a in range(0, L + 1):
                assert int(scan.counts[i, k, a]) == _literal_count(tiny, _literal_transform(tiny, v, a), 10, tagger)
    assert VOTransform.paper().reach == "all" and VOTransform.paper().k == 50
    with pytest.raises(ValueError, match="reach"):
        VOTransform(reach="below")


def test_scan_respects_attn_layers_and_distinct(tiny):
    vo = VOTransform(upto_layer=2, attn_layers=[2], k=10, progress=False)
    scan = vo.scan(tiny)
    assert scan.attn_layers == (2,) and scan.counts.shape == (2, tiny.d_mlp, 1)
    full = VOTransform(upto_layer=2, k=10, progress=False).scan(tiny)
    assert torch.equal(scan.counts[..., 0], full.counts[..., 2])
    distinct = VOTransform(upto_layer=2, attn_layers=[2], k=10, distinct=True, progress=False).scan(tiny)
    assert (distinct.counts <= scan.counts).all()
    # Distinct concepts, literally, for a few neurons.
    tagger = NumberConceptTagger()
    for k in range(0, tiny.d_mlp, 9):
        t = _literal_transform(tiny, tiny.bridge.W_out[0, k], 2)
        normed = t / torch.sqrt((t * t).mean() + float(tiny.cfg.eps))
        top = torch.argsort(normed @ tiny.bridge.W_U.double(), descending=True)[:10]
        assert int(distinct.counts[0, k, 0]) == tagger.count([tiny.decode([int(i)]) for i in top], distinct=True)


def _prediction_cases(model, prompts):
    """Cases whose target is the model's own prediction (baseline accuracy 1)."""
    preds = model.cache(prompts, memo=False).predictions.tolist()
    return ArithmeticDataset(
        [Case(p, model.decode([t]), model.decode([t]), t, tuple(model.encode(p)), (t,)) for p, t in zip(prompts, preds)]
    )


def test_hidden_interpretable_matches_explicit_ablation(tiny):
    prompts = [f"{a}+{b}=" for a in range(10) for b in range(0, 10, 3)] + [f"{a} minus {b} is" for a in range(6) for b in (1, 4)]
    data = _prediction_cases(tiny, prompts)
    # After a first forward: the bridge wires its own capture hooks once, lazily.
    snap, hooks = params_snapshot(tiny), tiny.torch_hook_count()
    vo = VOTransform(upto_layer=2, k=10, progress=False)
    result = HiddenInterpretable(ms=(0, 1, 2, 3), transform=vo, seed=5, progress=False).run(tiny, data)
    df = result.df
    assert list(df.columns) == ["M", "neuron_set", "n_neurons", "accuracy", "baseline_accuracy", "accuracy_decrease", "n_cases"]
    assert len(df) == 8 and (df["baseline_accuracy"] == 1.0).all()
    scan = result.scan
    best = scan.counts.max(-1).values
    for m in (0, 1, 2, 3):
        chosen = {L: (best[i] > m).nonzero()[:, 0].tolist() for i, L in enumerate(scan.neuron_layers)}
        row = df[(df["M"] == m) & (df["neuron_set"] == "hidden")].iloc[0]
        assert row["n_neurons"] == sum(len(v) for v in chosen.values())
        ablations = [ZeroNeurons(L, idx) for L, idx in chosen.items() if idx]
        run = tiny.cache(data, interventions=ablations, memo=False)
        acc = float(run.correct.float().mean())
        assert row["accuracy"] == pytest.approx(acc)
        assert row["accuracy_decrease"] == pytest.approx(100.0 * (1.0 - acc))
        rand = df[(df["M"] == m) & (df["neuron_set"] == "random")].iloc[0]
        assert rand["n_neurons"] == row["n_neurons"]
    # Ablating most shallow neurons changes the model's answers.
    assert df[(df["M"] == 0) & (df["neuron_set"] == "hidden")]["accuracy_decrease"].iloc[0] > 0
    table = result.table()
    assert list(table.columns) == ["", "M=0", "M=1", "M=2", "M=3"]
    fig = result.plot()
    assert [t.name for t in fig.data] == ["hidden", "random"]
    assert list(fig.data[0].y) == list(df[df["neuron_set"] == "hidden"]["accuracy_decrease"])
    assert fig.layout.yaxis.title.text == "accuracy decrease (%)"
    assert_untouched(tiny, snap, hooks)


def test_hidden_interpretable_reads_the_clean_pass_off_a_cache(tiny):
    prompts = [f"{a}+{b}=" for a in range(6) for b in (1, 4)]
    data = _prediction_cases(tiny, prompts)
    vo = VOTransform(upto_layer=2, attn_layers=[2], k=10, progress=False)
    scan = vo.scan(tiny)
    hi = HiddenInterpretable(ms=(1, 2), transform=vo, random_control=False, progress=False)
    alone = hi.run(tiny, data, scan=scan)
    cache = tiny.cache(data, names=[hi], memo=False)
    tiny.clear_cache()
    calls = [0]
    handle = tiny.bridge.embed.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    try:
        given = hi.run(tiny, data, cache=cache, scan=scan)
    finally:
        handle.remove()
    # One pass per non-empty neuron set, none for the clean predictions.
    n_sets = sum(bool(scan.neuron_set(m)) for m in (1, 2))
    assert calls[0] == n_sets
    assert alone.df.equals(given.df)
    # correct_only keeps the cases the cache says are answered correctly.
    wrong = ArithmeticDataset([Case(c.prompt, "x", "x", tiny.encode("x")[0], c.input_ids, (tiny.encode("x")[0],)) for c in data[:3]])
    mixed = ArithmeticDataset.concat(data, wrong)
    res = dataclasses.replace(hi, correct_only=True).run(tiny, mixed, scan=scan)
    assert (res.df["n_cases"] == len(data)).all() and (res.df["baseline_accuracy"] == 1.0).all()
    with pytest.raises(ValueError, match="other cases"):
        hi.run(tiny, mixed, cache=cache, scan=scan)


def test_random_sets_seeded_and_in_layers(tiny):
    vo = VOTransform(upto_layer=2, attn_layers=[2], k=10, progress=False)
    scan = vo.scan(tiny)
    hi = HiddenInterpretable(transform=vo, seed=3)
    a, b = hi.random_sets(tiny, scan, [10, 40]), hi.random_sets(tiny, scan, [10, 40])
    for x, y, n in zip(a, b, [10, 40]):
        assert set(x) <= {0, 1}
        assert sum(len(v) for v in x.values()) == n
        assert all(torch.equal(x[L], y[L]) for L in x)
        assert all(len(set(v.tolist())) == len(v) for v in x.values())
    other = HiddenInterpretable(transform=vo, seed=4).random_sets(tiny, scan, [40])[0]
    assert any(L not in other or not torch.equal(a[1][L], other[L]) for L in a[1])


def test_rule_ge_is_the_literal_wording(tiny):
    scan = VOTransform(upto_layer=2, attn_layers=[2], k=10, progress=False).scan(tiny)
    everyone = scan.neuron_set(0, rule="ge")
    assert sum(len(v) for v in everyone.values()) == 2 * tiny.d_mlp
    gt1 = scan.neuron_set(1, rule="gt")
    ge2 = scan.neuron_set(2, rule="ge")
    assert gt1.keys() == ge2.keys() and all(torch.equal(gt1[L], ge2[L]) for L in gt1)


def test_direct_vs_transformed(tiny):
    vo = VOTransform(upto_layer=2, k=10, progress=False)
    result = dataclasses.replace(vo, layer=2, top_tokens=5).run(tiny, [(0, 3), "3", "1_7"])
    table = result.table()
    assert list(table["item"]) == ["0_3", "word '3'", "1_7"]
    assert (table["attn layer"] == 2).all()
    lens = VocabularyProjection(k=5)
    v = tiny.bridge.W_out[0, 3]
    moved = result.df[(result.df["item"] == "0_3") & (result.df["view"] == "transformed")].sort_values("rank")
    assert list(moved["token"]) == lens.top_tokens(tiny, vo.transform(tiny, v, 2))[0]
    direct = result.df[(result.df["item"] == "0_3") & (result.df["view"] == "direct")].sort_values("rank")
    assert list(direct["token"]) == lens.top_tokens(tiny, v[None])[0]
    # layer=None: each item's most concept-rich readable attention layer.
    best = vo.run(tiny, [(1, 7), "5"]).table()
    assert best.loc[0, "attn layer"] == 2  # FFN layer 1 is only read by attention 2
    counts = [int(vo.concept_counts(tiny, VocabularyProjection.embedding(tiny, "5").vector[None], layer=a)[0]) for a in range(3)]
    assert best.loc[1, "attn layer"] == counts.index(max(counts))
    # A figure, not the table again: concept counts per item, direct and transformed.
    fig = result.plot()
    assert [t.type for t in fig.data] == ["bar", "bar"]
    assert list(fig.data[0].x) == list(table["item"])
    assert list(fig.data[0].y) == list(table["origin concepts"]) and list(fig.data[1].y) == list(table["transform concepts"])
    assert fig.layout.yaxis.title.text == "concept tokens of 5" and fig.layout.xaxis.title.text.startswith("item")


def test_transform_top_tokens_are_the_models_readout_when_b_U_is_nonzero():
    """GPT-2 style (LayerNorm, b_U ≠ 0): Table 7 and the scan rank ln_final(T v) @ W_U + b_U."""
    from arithlens.testing import tiny_gpt2

    gpt2 = tiny_gpt2()
    vo = VOTransform(upto_layer=1, k=10, progress=False)
    result = dataclasses.replace(vo, layer=1, top_tokens=6).run(gpt2, [(0, 4), "7"])
    tagger = NumberConceptTagger()

    def ranking(v):
        v = v.double()
        c = v - v.mean()
        normed = c / torch.sqrt((c * c).mean() + float(gpt2.cfg.eps))
        return torch.argsort(normed @ gpt2.bridge.W_U.double() + gpt2.bridge.b_U.double(), descending=True)

    for item, vec in (("0_4", gpt2.bridge.W_out[0, 4]), ("word '7'", gpt2.bridge.W_E[gpt2.encode("7")[0]])):
        for view, v in (("direct", vec), ("transformed", vo.transform(gpt2, vec, 1)[0])):
            rows = result.df[(result.df["item"] == item) & (result.df["view"] == view)].sort_values("rank")
            assert list(rows["token_id"]) == ranking(v)[:6].tolist()
    scan = vo.scan(gpt2)
    for n in range(0, gpt2.d_mlp, 11):
        t = vo.transform(gpt2, gpt2.bridge.W_out[0, n], 1)[0]
        expected = sum(tagger(gpt2.decode([int(i)])) is not None for i in ranking(t)[:10])
        assert int(scan.counts[0, n, 1]) == expected


def test_bad_input_raises(tiny):
    with pytest.raises(ValueError, match="ms item=-1"):
        HiddenInterpretable(ms=(-1,))
    with pytest.raises(ValueError, match="ms='3'"):
        HiddenInterpretable(ms="3")
    assert HiddenInterpretable(ms=np.int64(2), progress=False).ms == (2,)
    with pytest.raises(ValueError, match="position"):
        HiddenInterpretable(position="end")
    with pytest.raises(ValueError, match="batch_size=-1"):
        HiddenInterpretable(batch_size=-1)
    with pytest.raises(ValueError, match="transform"):
        HiddenInterpretable(transform="vo")
    with pytest.raises(ValueError, match="target"):
        HiddenInterpretable(progress=False).run(tiny, ["3+5="], scan=VOTransform(upto_layer=2, k=10, progress=False).scan(tiny))
    with pytest.raises(ValueError, match="empty dataset"):
        HiddenInterpretable(progress=False).run(tiny, [])
    with pytest.raises(ValueError, match="k='50'"):
        VOTransform(k="50")
    with pytest.raises(ValueError, match="distinct"):
        VOTransform(distinct="no")
    with pytest.raises(ValueError, match="attn_layers='2'"):
        VOTransform(attn_layers="2")
    with pytest.raises(ValueError, match="exceeds k"):
        HiddenInterpretable(ms=(0, 60), transform=VOTransform(k=50))
    with pytest.raises(ValueError, match="rule"):
        HiddenInterpretable(rule="gte")
    with pytest.raises(ValueError, match="layer"):
        VOTransform(upto_layer=tiny.n_layers).layers(tiny)
    with pytest.raises(ValueError, match="upto_layer"):
        VOTransform(upto_layer=1, attn_layers=[2]).layers(tiny)
    with pytest.raises(ValueError, match="attention layer"):
        VOTransform(upto_layer=2, neuron_layers=[2]).layers(tiny)
    with pytest.raises(ValueError, match="k=0"):
        VOTransform(k=0)
    with pytest.raises(ValueError, match="cannot read"):
        dataclasses.replace(VOTransform(), layer=1).run(tiny, [(1, 3)])
    with pytest.raises(ValueError, match="not a"):
        VOTransform().run(tiny, [3.5])
    with pytest.raises(ValueError, match="d_model"):
        VOTransform().transform(tiny, torch.zeros(3, 5), 0)
    with pytest.raises(ValueError, match="layer"):
        ov_matrix(tiny, -1)
    scan = VOTransform(upto_layer=2, attn_layers=[2], k=10, progress=False).scan(tiny)
    with pytest.raises(ValueError, match="M=-2"):
        scan.neuron_set(-2)


@pytest.mark.smollm2
def test_smollm2_transform_is_the_attention_layer(smollm2):
    """On SmolLM2 (GQA 9/3), T_a(x)/rms(x) is attention layer a's own output on one position."""
    vo = VOTransform()
    x = smollm2.bridge.W_out[3, :2].detach()
    store = {}

    def grab(act, hook):
        store["out"] = act[:, 0].detach().clone()

    with torch.no_grad(), smollm2.hooked([("blocks.8.hook_attn_out", grab)]):
        smollm2.bridge(x[:, None], start_at_layer=8, stop_at_layer=9)
    rms = torch.sqrt((x * x).mean(-1, keepdim=True) + float(smollm2.cfg.eps))
    torch.testing.assert_close(vo.transform(smollm2, x, 8) / rms, store["out"], atol=1e-4, rtol=1e-3)
    # Table 7 on a real vocabulary: the transformed view is the lens reading of T_a(W_E["3"]).
    result = dataclasses.replace(vo, layer=smollm2.n_layers // 2).run(smollm2, ["3"])
    moved = result.df[result.df["view"] == "transformed"].sort_values("rank")
    emb = VocabularyProjection.embedding(smollm2, "3").vector
    expected = VocabularyProjection(k=10).top_tokens(smollm2, vo.transform(smollm2, emb, smollm2.n_layers // 2))[0]
    assert list(moved["token"]) == expected
    # SmolLM2 ties W_E and W_U, so the embedding of "3" reads directly as digits.
    assert result.table().loc[0, "origin concepts"] >= 5
