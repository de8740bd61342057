"""CNA importance (§4.1) and comparison: numbers against the literal formula, both scales, the
cache contract, the one readout, validation and no side effects."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

import arithlens
from arithlens import data

from arithlens.core import names, validate
from arithlens.cna import CNAAnalysis, ComparativeNeuronScores, NeuronImportance
from arithlens.cna import scores as kernels
from arithlens.cna.scores import first_order_scores
from arithlens.cna.inputs import Activations, cna_hooks
from arithlens.cna.projections import projection_cache
from arithlens.core.interventions import ScaleNeurons, ZeroHead
from conftest import assert_untouched, forward_counter, params_snapshot

PROMPTS = ["3+5=", "2+2=", "12+3=", "7*8="]


@pytest.fixture(scope="module")
def gpt2():
    from arithlens.testing import tiny_gpt2

    return tiny_gpt2()


def run_with(model, prompt, intervention=None):
    """Every hook of one prompt's forward pass (the literal way: our own hooks, no cache)."""
    store = {}

    def keep(name):
        def fn(act, hook):
            store[name] = act.detach().clone()

        return fn

    wanted = [names.FINAL_SCALE] + [h(L) for L in range(model.n_layers) for h in (names.resid_mid, names.post)]
    toks = torch.tensor([model.encode(prompt)], device=model.device)
    with torch.no_grad(), model.intervened(*([intervention] if intervention else [])), model.hooked([(n, keep(n)) for n in wanted]):
        model.bridge(toks)
    return store


def brute_force(model, prompt, w, layers, intervention=None, neurons=None, scale=None):
    """The formula applied literally, one neuron at a time: x_mid + m_k fc2_k through the model's
    own ln_final with the scale frozen (this run's own, or `scale`), unembed, log_softmax."""
    store = run_with(model, prompt, intervention)
    frozen = store[names.FINAL_SCALE][:, -1:] if scale is None else torch.full((1, 1, 1), float(scale))
    neurons = range(model.d_mlp) if neurons is None else neurons
    out = torch.full((len(layers), model.d_mlp), float("nan"))
    with torch.no_grad(), model.hooked([(names.FINAL_SCALE, lambda s, hook: frozen)]):
        for i, L in enumerate(layers):
            x = store[names.resid_mid(L)][0, -1]

            def lp(v):
                return model.bridge.unembed(model.bridge.ln_final(v[None, None])).log_softmax(-1)[0, 0, w]

            base = lp(x)
            for k in neurons:
                out[i, k] = lp(x + store[names.post(L)][0, -1, k] * model.bridge.W_out[L, k]) - base
    return out


def own_scale(model, prompt, intervention=None):
    return float(run_with(model, prompt, intervention)[names.FINAL_SCALE][0, -1, 0])


# ---------------------------------------------------------------------------- exact scores
def test_exact_matches_brute_force_on_every_path(tiny, monkeypatch):
    direct = NeuronImportance(tolerance=0).run(tiny, PROMPTS)  # direct log-sum-exp only
    for i, p in enumerate(PROMPTS):
        ref = brute_force(tiny, p, int(direct.w[i]), range(tiny.n_layers))
        torch.testing.assert_close(direct.importance[i], ref, atol=1e-4, rtol=0)
    assert direct.w.tolist() == tiny.cache(PROMPTS).predictions.tolist() and direct.bound == 0
    small = NeuronImportance(memory_budget=2e4).run(tiny, PROMPTS)  # many neuron chunks and case blocks
    torch.testing.assert_close(small.importance, direct.importance, atol=1e-5, rtol=0)
    monkeypatch.setattr(kernels, "SERIES_MIN_SIDES", 1)  # the series on every block
    series = NeuronImportance().run(tiny, PROMPTS)
    torch.testing.assert_close(series.importance, direct.importance, atol=1e-5, rtol=0)
    assert 0 < series.bound <= CNAAnalysis().tolerance
    loose = NeuronImportance(tolerance=1e-3).run(tiny, PROMPTS)  # fewer terms, a larger stated bound
    assert series.bound < loose.bound <= 1e-3
    assert float((loose.importance - direct.importance).abs().max()) <= loose.bound + 1e-5


def test_fused_direct_kernel_tiles_and_redone_rows_match_brute_force(tiny, monkeypatch):
    # Tiles that do not divide the neurons or the vocabulary, on both sides of a comparison.
    monkeypatch.setattr(kernels, "D_ROWS", 5)
    monkeypatch.setattr(kernels, "D_VOCAB", 7)
    res = ComparativeNeuronScores(intervention=ZeroHead(0, 1)).run(tiny, PROMPTS[0])
    ref = brute_force(tiny, PROMPTS[0], int(res.w[0]), range(tiny.n_layers))
    torch.testing.assert_close(res.importance[0], ref, atol=1e-4, rtol=0)
    ref_o = brute_force(tiny, PROMPTS[0], int(res.w[0]), range(tiny.n_layers), ZeroHead(0, 1), scale=own_scale(tiny, PROMPTS[0]))
    torch.testing.assert_close(res.importance_other[0], ref_o, atol=1e-4, rtol=0)
    # Every score through the max-shifted redo (what a huge coefficient takes): the same numbers.
    monkeypatch.setattr(kernels, "LSE_REDO", float("inf"))
    redo = ComparativeNeuronScores(intervention=ZeroHead(0, 1)).run(tiny, PROMPTS[0])
    torch.testing.assert_close(redo.importance, res.importance, atol=1e-5, rtol=0)
    torch.testing.assert_close(redo.importance_other, res.importance_other, atol=1e-5, rtol=0)


def test_comparative_subset_is_the_result_of_those_cases(tiny):
    job = ComparativeNeuronScores(intervention=ZeroHead(0, 1))
    whole = job.run(tiny, PROMPTS)
    part, alone = whole.subset([2, 0]), job.run(tiny, [PROMPTS[2], PROMPTS[0]])
    for name in ("importance", "importance_other", "coef", "coef_other", "w", "logprob", "logprob_other", "predictions_other"):
        torch.testing.assert_close(getattr(part, name), getattr(alone, name), atol=1e-5, rtol=0)
    assert part.w_str == alone.w_str and part.cases["prompt"].tolist() == [PROMPTS[2], PROMPTS[0]]
    # The same rows (scores equal to 1e-5; near-ties may sort in another order).
    def rows(r):
        return r.df.drop(columns="top_tokens").sort_values(["case", "layer", "neuron"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(rows(part), rows(alone), atol=1e-5)
    with pytest.raises(ValueError, match="cases"):
        whole.subset([len(PROMPTS)])
    # Fields that are the run's, not per case, come along (the scored-token choice among them).
    cases = data.prompts(tiny.tokenizer, PROMPTS, ["8", "4", "15", "56"])
    answer = ComparativeNeuronScores(intervention=ZeroHead(0, 1), target="answer", top_tokens=0).run(tiny, cases)
    assert answer.subset([1]).target == "answer" and answer.subset([1]).scale == answer.scale


def test_series_bound_and_terms():
    t = torch.tensor([0.0, 0.01, 0.5, 2.0, 3.0, 40.0])
    terms, bound = kernels.series_terms(t, 1e-7)
    assert terms.tolist()[:4] == sorted(terms.tolist()[:4]) and terms[3] <= kernels.MAX_TERMS
    assert (terms[4:] == kernels.MAX_TERMS + 1).all() and torch.isinf(bound[4:]).all()
    assert (bound[:4] <= 1e-7).all()
    # The bound holds where the remainder is largest: p concentrated at |ũ| = 1, so log S = x.
    for x in (0.5, -2.0, 2.0):
        J = int(kernels.series_terms(torch.tensor(abs(x)), 1e-7)[0])
        partial = sum(x**j / math.factorial(j) for j in range(J + 1))
        assert abs(math.log(partial) - x) <= 1e-7


def test_kept_projections_are_reused_and_reduced_dtypes_stay_within_bound(tiny):
    kept = projection_cache(tiny)
    kept.clear()
    fresh = NeuronImportance().run(tiny, PROMPTS)
    job = NeuronImportance(keep_projections=True)
    first = job.run(tiny, PROMPTS)
    held, misses = len(kept), kept.misses
    again = job.run(tiny, PROMPTS[:2])
    assert held > 0 and kept.misses == misses and kept.hits >= held  # no projection recomputed
    torch.testing.assert_close(first.importance, fresh.importance, atol=1e-5, rtol=0)
    torch.testing.assert_close(again.importance, fresh.importance[:2], atol=1e-5, rtol=0)
    for dtype in ("bfloat16", "float16"):
        low = NeuronImportance(keep_projections=True, projection_dtype=dtype).run(tiny, PROMPTS)
        assert low.bound <= 1e-7
        torch.testing.assert_close(low.importance, fresh.importance, atol=1e-5, rtol=0)
    assert kept.nbytes > 0
    kept.clear()
    assert len(kept) == 0 and kept.nbytes == 0
    with pytest.raises(ValueError, match="tolerance"):
        CNAAnalysis(projection_dtype="bfloat16", tolerance=0)


def test_answer_target_and_fixed_w(tiny):
    cases = data.arithmetic(tiny.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(3)
    res = NeuronImportance(target="answer").run(tiny, cases)
    assert res.w.tolist() == [c.target_id for c in cases]
    torch.testing.assert_close(res.importance[0, 1], brute_force(tiny, cases[0].prompt, cases[0].target_id, [1])[0], atol=1e-4, rtol=0)
    fixed = NeuronImportance(top_tokens=0).run(tiny, PROMPTS[:2], w=np.array([5, 6]))
    assert fixed.w.tolist() == [5, 6]
    torch.testing.assert_close(fixed.importance[1, 2], brute_force(tiny, PROMPTS[1], 6, [2])[0], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="target='answer'"):
        NeuronImportance(target="answer").run(tiny, ["3+5="])
    with pytest.raises(ValueError, match="w has 1 tokens"):
        NeuronImportance(top_tokens=0).run(tiny, PROMPTS[:2], w=[1])


def test_heads_and_layers_scores(tiny):
    res = NeuronImportance().run(tiny, PROMPTS[:2])
    cache = tiny.cache(PROMPTS[:2], names=cna_hooks(tiny, range(tiny.n_layers)))
    W_U, b_U = tiny.bridge.W_U.cpu(), tiny.bridge.b_U.cpu()
    for i in range(2):
        w, s = int(res.w[i]), cache.final_scale[i]

        def lp(v):
            return ((v / s) @ W_U + b_U).log_softmax(-1)[w]

        for L in range(tiny.n_layers):
            x = cache.last(names.resid_pre(L))[i]
            for h in range(tiny.n_heads):
                head_out = cache.last(names.z(L))[i, h] @ tiny.bridge.W_O[L, h].cpu()
                assert abs(float(lp(x + head_out) - lp(x)) - float(res.head_importance[i, L, h])) < 1e-4
            mid = cache.last(names.resid_mid(L))[i]
            assert abs(float(lp(mid) - lp(x)) - float(res.attn_importance[i, L])) < 1e-4
            assert abs(float(lp(mid + cache.last(names.mlp_out(L))[i]) - lp(mid)) - float(res.mlp_importance[i, L])) < 1e-4
    torch.testing.assert_close(res.logprob, cache.target_logprob, atol=1e-5, rtol=0)  # the model's own log p(w)
    assert list(res.heads_df().columns) == ["layer", "head", "importance"] and len(res.layers_df()) == 2 * tiny.n_layers


def test_aggregates_frames_and_plot(tiny):
    res = NeuronImportance(top_k=5).run(tiny, PROMPTS)
    df = res.df
    assert list(df.columns) == ["layer", "neuron", "importance", "coef", "n_top", "n_cases", "top_tokens"]
    assert len(df) == tiny.n_layers * tiny.d_mlp and df["importance"].is_monotonic_decreasing
    row = df.iloc[0]
    assert row["importance"] == pytest.approx(float(res.importance[:, row["layer"], row["neuron"]].mean()), abs=1e-6)
    assert df["n_top"].sum() == 5 * len(PROMPTS)
    top = res.top(3, case=1)
    assert isinstance(top, pd.DataFrame) and top["importance"].iloc[0] == pytest.approx(float(res.importance[1].max()), abs=1e-6)
    assert (df["top_tokens"].head(10) != "").all() and len(res.per_case(2)) == 2 * len(PROMPTS)
    fig = res.plot(n_label=3)
    assert len(fig.data[0].y) == len(df) and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    names = [t.name.split(" ")[1] for t in fig.data[1:]]  # "1. L_N (importance)": named in the legend
    assert names == [f"{L}_{n}" for L, n in zip(df["layer"].head(3), df["neuron"].head(3))]
    assert [t.y[0] for t in fig.data[1:]] == pytest.approx(df["importance"].head(3).tolist())
    capped = res.plot(max_points=20).data[0].y
    assert sorted(abs(v) for v in capped) == pytest.approx(sorted(df["importance"].abs().nlargest(20)))


def test_fast_mode_rescores_exactly(tiny):
    exact = NeuronImportance().run(tiny, PROMPTS)
    fast = NeuronImportance(mode="fast", rescore=10).run(tiny, PROMPTS)
    assert int(fast.exact.sum()) == 10 * len(PROMPTS)
    torch.testing.assert_close(fast.importance[fast.exact], exact.importance[fast.exact], atol=1e-5, rtol=0)
    agree = NeuronImportance(mode="fast", rescore=30).fast_agreement(tiny, PROMPTS, k=3)
    assert list(agree.columns) == ["case", "same_topk", "overlap"] and agree.attrs["agreement"] == agree["same_topk"].mean()


def test_first_order_score_is_the_gradient(tiny):
    cache = tiny.cache(PROMPTS[:1], names=cna_hooks(tiny, [1]))
    acts = Activations(cache)
    fo = first_order_scores(tiny, acts, [1])
    x = acts.at("resid_mid", 1)[0].clone().requires_grad_(True)
    lp = ((x / acts.scale[0]) @ tiny.bridge.W_U.cpu() + tiny.bridge.b_U.cpu()).log_softmax(-1)[int(acts.w[0])]
    (g,) = torch.autograd.grad(lp, x)
    torch.testing.assert_close(fo[0, 0], acts.at("post", 1)[0] * (tiny.bridge.W_out[1].cpu() @ g), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------- comparisons and scales
def test_comparative_intervention_both_scales(tiny):
    iv = ZeroHead(1, 2)
    own = ComparativeNeuronScores(intervention=iv, scale="own").run(tiny, PROMPTS[:2])
    orig = ComparativeNeuronScores(intervention=iv).run(tiny, PROMPTS[:2])  # default: the reference code's scale
    assert orig.scale == "original" and own.scale == "own"
    for i, p in enumerate(PROMPTS[:2]):
        w = int(own.w[i])
        torch.testing.assert_close(own.importance_other[i, 2], brute_force(tiny, p, w, [2], intervention=iv)[0], atol=1e-4, rtol=0)
        ref = brute_force(tiny, p, w, [2], intervention=iv, scale=own_scale(tiny, p))
        torch.testing.assert_close(orig.importance_other[i, 2], ref[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(orig.importance[i], own.importance[i], atol=1e-6, rtol=0)  # the original side is the same
    assert float((orig.importance_other - own.importance_other).abs().max()) > 1e-4  # the choice matters here
    cols = ["case", "layer", "neuron", "importance", "importance_other", "importance_change", "coef", "coef_other", "coef_change", "top_tokens"]
    assert list(orig.df.columns) == cols
    first = orig.df[orig.df["case"] == 0]
    assert first["importance_change"].is_monotonic_decreasing
    np.testing.assert_allclose(first["importance_change"], first["importance"] - first["importance_other"], atol=1e-6)
    agg = orig.aggregate(k=5)
    assert agg["n_top"].sum() == 10 and set(agg["n_cases"]) == {2} and agg["importance_change"].is_monotonic_decreasing
    row = agg.iloc[0]
    L = orig.layers.index(int(row["layer"]))
    assert row["coef_change"] == pytest.approx(float(orig.coef_change[:, L, int(row["neuron"])].mean()), abs=1e-6)
    table = orig.table(2)
    assert list(table.columns) == ["neuron_label", "side", "importance", "coef", "top_tokens"]
    top = orig.case_frame(0).head(2)
    assert table["neuron_label"].tolist() == [f"{a}_{b}" for a, b in zip(top["layer"], top["neuron"]) for _ in (0, 1)]
    assert table["side"].tolist() == ["original", orig.other] * 2
    assert table["importance"].tolist()[1::2] == pytest.approx(top["importance_other"].tolist())
    one = ComparativeNeuronScores(intervention=(1, 2)).run(tiny, "3+5=")  # head= is ZeroHead's shorthand
    assert "case" not in one.df.columns and one.other == orig.other
    fig = one.plot(k=4)
    assert list(fig.data[0].x) == [f"{a}_{b}" for a, b in zip(one.df["layer"].head(4), one.df["neuron"].head(4))]
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_comparative_two_inputs_and_two_models(tiny):
    from arithlens.testing import tiny_llama

    own = ComparativeNeuronScores(other_data=["3-5="], scale="own").run(tiny, ["3+5="])
    w = int(own.w[0])
    torch.testing.assert_close(own.importance_other[0], brute_force(tiny, "3-5=", w, range(tiny.n_layers)), atol=1e-4, rtol=0)
    orig = ComparativeNeuronScores(other_data=["3-5="]).run(tiny, ["3+5="])  # read with "3+5="'s scale
    ref = brute_force(tiny, "3-5=", w, range(tiny.n_layers), scale=own_scale(tiny, "3+5="))
    torch.testing.assert_close(orig.importance_other[0], ref, atol=1e-4, rtol=0)
    other = tiny_llama(seed=1)
    res = ComparativeNeuronScores(other_model=other, scale="own").run(tiny, ["3+5="])
    torch.testing.assert_close(res.importance_other[0, :1], brute_force(other, "3+5=", w, [0]), atol=1e-4, rtol=0)
    res = ComparativeNeuronScores(other_model=other).run(tiny, ["3+5="])
    ref = brute_force(other, "3+5=", w, [0], scale=own_scale(tiny, "3+5="))
    torch.testing.assert_close(res.importance_other[0, :1], ref, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="exactly one"):
        ComparativeNeuronScores()
    with pytest.raises(ValueError, match="exactly one"):
        ComparativeNeuronScores(intervention=ZeroHead(0, 0), other_data=["1"])
    with pytest.raises(ValueError, match="other_data has 1 cases"):
        ComparativeNeuronScores(other_data=["3-5="]).run(tiny, ["3+5=", "1+1="])
    with pytest.raises(ValueError, match="head"):
        ComparativeNeuronScores(intervention=ZeroHead(1, 9)).run(tiny, ["3+5="])


# ---------------------------------------------------------------------------- the cache contract
def test_given_caches_run_no_forward_pass(tiny):
    imp = NeuronImportance(layers=[1, 2])
    cna = ComparativeNeuronScores(intervention=ZeroHead(1, 2))
    cache = tiny.cache(PROMPTS, names=[imp, cna], memo=False)
    other = tiny.cache(PROMPTS, names=cna, interventions=[ZeroHead(1, 2)])
    n_batches = len(list(tiny.batches([tuple(tiny.encode(p)) for p in PROMPTS])))
    with forward_counter(tiny) as calls:
        a = imp.run(tiny, PROMPTS, cache=cache)
        b = cna.run(tiny, PROMPTS, cache=cache, other_cache=other)
    assert calls.n == 0
    with forward_counter(tiny) as calls:
        c = cna.run(tiny, PROMPTS, cache=cache)
        cna.run(tiny, PROMPTS, cache=cache)  # the intervened side is never memoized
    assert calls.n == 2 * n_batches
    torch.testing.assert_close(b.importance_other, c.importance_other, atol=0, rtol=0)
    torch.testing.assert_close(a.importance, NeuronImportance(layers=[1, 2]).run(tiny, PROMPTS).importance, atol=0, rtol=0)
    with pytest.raises(ValueError, match="lacks"):
        cna.run(tiny, PROMPTS, cache=tiny.cache(PROMPTS, names=[names.post(0)], memo=False))
    with pytest.raises(ValueError, match="not under ZeroHead"):
        cna.run(tiny, PROMPTS, cache=cache, other_cache=cache)
    with pytest.raises(ValueError, match="other cases"):
        imp.run(tiny, PROMPTS[:2], cache=cache)


def test_gpt2_top_tokens_follow_the_model_readout_and_scores_match(gpt2):
    assert float(gpt2.bridge.b_U.abs().max()) > 0.1  # LayerNorm biases folded into b_U
    res = NeuronImportance(top_tokens=5).run(gpt2, ["3+5=", "2+2="])
    labelled = res.df[res.df["top_tokens"] != ""].head(30)
    differs = 0
    for r in labelled.itertuples():
        m = float(res.coef[:, res.layers.index(r.layer), r.neuron].mean())
        v = gpt2.bridge.W_out[r.layer, r.neuron] * (1.0 if m >= 0 else -1.0)  # the subvalue m · fc2's direction
        model_ids = gpt2.bridge.unembed(gpt2.bridge.ln_final(v[None, None]))[0, 0].topk(5).indices.tolist()
        assert r.top_tokens == "[" + ", ".join(repr(t) for t in gpt2.token_strs(model_ids)) + "]"
        differs += model_ids != (v @ gpt2.bridge.W_U).topk(5).indices.tolist()
    assert differs > 0  # raw v @ W_U would have listed other tokens
    w = int(res.w[0])
    torch.testing.assert_close(res.importance[0], brute_force(gpt2, "3+5=", w, range(gpt2.n_layers)), atol=1e-4, rtol=0)
    cna = ComparativeNeuronScores(intervention=ZeroHead(0, 1), top_tokens=0).run(gpt2, ["3+5="])
    ref = brute_force(gpt2, "3+5=", w, [1], intervention=ZeroHead(0, 1), scale=own_scale(gpt2, "3+5="))
    torch.testing.assert_close(cna.importance_other[0, 1], ref[0], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------- validation, NaN, no side effects
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_k": "3"}, "top_k"), ({"top_k": 0}, "top_k"), ({"top_k": True}, "top_k"), ({"batch_size": -1}, "batch_size"),
        ({"batch_size": "8"}, "batch_size"), ({"mode": "approx"}, "mode"), ({"target": "label"}, "target"),
        ({"rescore": 2.5}, "rescore"), ({"layers": "12"}, "layers"), ({"layers": [1, 1]}, "layers"),
        ({"top_tokens": -1}, "top_tokens"), ({"memory_budget": 0}, "memory_budget"), ({"progress": "yes"}, "progress"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeuronImportance(**kwargs)
    with pytest.raises(ValueError, match=match):
        ComparativeNeuronScores(intervention=ZeroHead(0, 0), **kwargs)


def test_numpy_integers_and_bad_calls(tiny):
    res = NeuronImportance(top_k=np.int64(3), layers=[np.int64(1)], rescore=np.int32(5)).run(tiny, PROMPTS[:2])
    assert res.layers == [1] and res.top_k == 3
    for bad, match in (("2", "k"), (0, "k"), (1.5, "k"), (True, "k")):
        with pytest.raises(ValueError, match=match):
            res.top(bad)
    with pytest.raises(ValueError, match="case"):
        res.top(3, case=9)
    cna = ComparativeNeuronScores(intervention=ZeroHead(np.int64(1), np.int64(2))).run(tiny, PROMPTS[:2])
    with pytest.raises(ValueError, match="k"):
        cna.top(-1)
    with pytest.raises(ValueError, match="case"):
        cna.case_frame(2)
    with pytest.raises(ValueError, match="layers"):
        NeuronImportance(layers=[7]).run(tiny, PROMPTS)
    with pytest.raises(ValueError, match="empty dataset"):
        NeuronImportance().run(tiny, [])
    with pytest.raises(ValueError, match="scale"):
        CNAAnalysis(scale="frozen")


def test_non_finite_scores_raise(tiny):
    blowup = ScaleNeurons(1, list(range(tiny.d_mlp)), 1e30)  # the final norm's scale overflows to inf
    for scale in ("original", "own"):
        with pytest.raises(validate.NonFiniteError):
            ComparativeNeuronScores(intervention=blowup, scale=scale).run(tiny, PROMPTS[:2])
    with pytest.raises(validate.NonFiniteError):
        NeuronImportance(interventions=[blowup]).run(tiny, PROMPTS[:2])
    cache = tiny.cache(PROMPTS[:2], names=cna_hooks(tiny, range(tiny.n_layers)), memo=False)
    cache.activations[names.post(1)] = cache.activations[names.post(1)].clone()
    cache.activations[names.post(1)][0, 5] = float("nan")  # a broken activation: never ranked
    with pytest.raises(validate.NonFiniteError):
        NeuronImportance().run(tiny, PROMPTS[:2], cache=cache)


def test_analyses_leave_model_untouched_even_on_error(tiny):
    snap, hooks = params_snapshot(tiny), tiny.torch_hook_count()
    ComparativeNeuronScores(intervention=ZeroHead(1, 2)).run(tiny, PROMPTS)
    NeuronImportance(mode="fast").run(tiny, PROMPTS)
    assert_untouched(tiny, snap, hooks)
    with pytest.raises(ValueError):
        ComparativeNeuronScores(intervention=ZeroHead(1, 99)).run(tiny, PROMPTS)
    with pytest.raises(ValueError):  # fails after the clean pass
        NeuronImportance(top_tokens=0).run(tiny, PROMPTS, w=[1, 2])
    assert_untouched(tiny, snap, hooks)


def test_cna_options_are_frozen_validated_fields():
    job = NeuronImportance(target="answer", mode="fast", rescore=7, memory_budget=5e6, batch_size=3, progress=False)
    assert (job.target, job.mode, job.rescore, job.batch_size) == ("answer", "fast", 7, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.mode = "exact"
    over = ComparativeNeuronScores(intervention="0.0", mode="exact", scale="own")
    assert over.intervention == ZeroHead(0, 0) and (over.mode, over.scale) == ("exact", "own")
    with pytest.raises(ValueError, match="mode"):
        NeuronImportance(mode="quick")
    with pytest.raises(TypeError, match="config"):
        NeuronImportance(config=None)


@pytest.mark.smollm2
def test_smollm2_exact_matches_brute_force(smollm2):
    """One prompt, the last layer on both sides under both scales; the literal loop checks every 48th neuron."""
    iv, some = ZeroHead(3, 0), range(0, smollm2.d_mlp, 48)
    for scale in ("own", "original"):
        res = ComparativeNeuronScores(intervention=iv, layers=[29], top_tokens=0, scale=scale).run(smollm2, ["3+5="])
        w = int(res.w[0])
        assert w == int(smollm2.cache(["3+5="]).predictions[0])
        torch.testing.assert_close(res.importance[0, 0, some], brute_force(smollm2, "3+5=", w, [29], neurons=some)[0, some], atol=1e-4, rtol=0)
        frozen = None if scale == "own" else own_scale(smollm2, "3+5=")
        ref = brute_force(smollm2, "3+5=", w, [29], intervention=iv, neurons=some, scale=frozen)
        torch.testing.assert_close(res.importance_other[0, 0, some], ref[0, some], atol=1e-4, rtol=0)


@pytest.mark.smollm2
def test_smollm2_in_bfloat16_keeps_the_float32_top_neurons(smollm2):
    """bf16 end to end: the cache stays bf16 on the model's device, and exact CNA in bf16 ranks
    at least 18 of float32's top-20 neurons among its own top 20 on each prompt."""
    half = arithlens.load_model(dtype="bfloat16", device="cpu")
    prompts = ["3+5=", "12+7=", "6*7="]
    cache = half.cache(prompts, names=NeuronImportance(layers=[27, 28, 29]), memo=False)
    post = cache.last(names.post(29))
    assert post.dtype == torch.bfloat16 and post.device == half.device
    for prompt in prompts:
        job = NeuronImportance(layers=[27, 28, 29], top_tokens=0)
        full, low = job.run(smollm2, [prompt]), job.run(half, [prompt])
        top = lambda r: set(kernels.flatten(r.importance)[0].topk(20).indices.tolist())  # noqa: E731
        assert len(top(full) & top(low)) >= 18, prompt


def test_top_tokens_are_the_subvalues_not_the_unsigned_value_vectors(tiny):
    """Table 4's token list is that of the subvalue `m_k · fc2_k` (the reference prints
    `get_bsvalues(coefficient * fc2)`): for a negative coefficient (SwiGLU), the tokens of `−fc2_k`."""
    res = ComparativeNeuronScores(intervention=ZeroHead(1, 2), top_tokens=5).run(tiny, ["3+5="])
    frame = res.case_frame(0)
    labelled = frame[frame["top_tokens"] != ""]
    negative = 0
    for r in labelled.itertuples():
        sub = r.coef * tiny.bridge.W_out[r.layer, r.neuron]
        ids = tiny.bridge.unembed(tiny.bridge.ln_final(sub[None, None]))[0, 0].topk(5).indices.tolist()
        assert r.top_tokens == "[" + ", ".join(repr(t) for t in tiny.token_strs(ids)) + "]"
        negative += r.coef < 0
    assert negative > 0  # some listed neuron has a negative coefficient: the sign is tested


def test_captions_name_the_scored_token_the_other_side_and_the_sign(tiny):
    """`print(result.table(k))` shows every column (scores not elided) under a caption built from the result;
    the result's caption names w, where it came from, the other side and importance_change's sign."""
    cases = data.arithmetic(tiny.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(1)
    res = ComparativeNeuronScores(intervention=(1, 2), target="answer").run(tiny, cases)
    w = res.w_str[0]
    caption = res.caption()
    assert f"w = {w!r}" in caption and "the correct answer's token" in caption and res.other in caption
    assert "importance − importance_other" in caption and "dropped on the other side" in caption
    printed = repr(res.table(2))
    assert printed.startswith("Table 4: the top 2 neurons") and f"w = {w!r}" in printed
    header = printed.splitlines()[1].split()
    assert header == ["neuron_label", "side", "importance", "coef", "top_tokens"]
    assert all(len(line.split()) >= 5 for line in printed.splitlines()[2:])  # every row shows its scores
    html = res._repr_html_()
    assert "importance − importance_other" in html and str(res).splitlines()[0].endswith(caption)
    imp = NeuronImportance(mode="exact").run(tiny, PROMPTS[:2], w=[3, 3])
    assert "w = " + repr(imp.w_str[0]) in imp.caption() and "given by the caller" in imp.caption() and "2 cases" in imp.caption()
