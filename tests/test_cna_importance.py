"""CNA importance (§4.1) and comparison: numbers against the literal formula, no side effects."""

import pandas as pd
import pytest
import torch

from arithlens import data
from arithlens.cna import ComparativeNeuronScores, NeuronImportance, importance_scores
from arithlens.cna.importance import collect
from arithlens.interventions import ZeroHead
from conftest import assert_untouched, params_snapshot

PROMPTS = ["3+5=", "2+2=", "12+3=", "7*8="]


def brute_force(model, prompt, w, layers, intervention=None, neurons=None):
    """The formula applied literally, one neuron at a time: build x_mid + m_k fc2_k, run the
    model's own ln_final with the frozen scale, unembed, log_softmax."""
    cache = {}

    def keep(name):
        def fn(act, hook):
            cache[name] = act.detach().clone()

        return fn

    names = ["ln_final.hook_scale"] + [f"blocks.{L}.hook_resid_mid" for L in layers] + [f"blocks.{L}.mlp.hook_post" for L in layers]
    toks = torch.tensor([model.encode(prompt)], device=model.device)
    with model.intervened(*([intervention] if intervention else [])), model.hooked([(n, keep(n)) for n in names]):
        model.bridge(toks)
    scale = cache["ln_final.hook_scale"][:, -1:]
    neurons = range(model.d_mlp) if neurons is None else neurons
    out = torch.full((len(layers), model.d_mlp), float("nan"))
    with torch.no_grad(), model.hooked([("ln_final.hook_scale", lambda s, hook: scale)]):
        for i, L in enumerate(layers):
            x = cache[f"blocks.{L}.hook_resid_mid"][0, -1]
            base = model.bridge.unembed(model.bridge.ln_final(x[None, None])).log_softmax(-1)[0, 0, w]
            for k in neurons:
                v = x + cache[f"blocks.{L}.mlp.hook_post"][0, -1, k] * model.bridge.W_out[L, k]
                lp = model.bridge.unembed(model.bridge.ln_final(v[None, None])).log_softmax(-1)[0, 0, w]
                out[i, k] = lp - base
    return out


def test_frozen_scale_readout_reproduces_model_logits(tiny):
    acts = collect(tiny, PROMPTS)
    final = acts.resid_mid[:, -1] + acts.mlp_out[:, -1]
    logits = (final / acts.scale[:, None]) @ tiny.bridge.W_U.cpu() + tiny.bridge.b_U.cpu()
    torch.testing.assert_close(logits.log_softmax(-1), acts.final_logprob, atol=1e-5, rtol=0)


def test_exact_matches_brute_force_and_small_chunks(tiny):
    res = NeuronImportance().run(tiny, PROMPTS)
    # A tiny budget forces many neuron and case chunks: same numbers.
    small = NeuronImportance(memory_budget=2e4).run(tiny, PROMPTS)
    torch.testing.assert_close(small.importance, res.importance, atol=1e-6, rtol=0)
    for i, p in enumerate(PROMPTS):
        ref = brute_force(tiny, p, int(res.w[i]), range(tiny.n_layers))
        torch.testing.assert_close(res.importance[i], ref, atol=1e-4, rtol=0)
    assert res.w.tolist() == tiny.run(PROMPTS).predictions.tolist()


def test_answer_target_and_bad_input(tiny):
    cases = data.arithmetic(tiny.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(3)
    res = NeuronImportance(target="answer").run(tiny, cases)
    assert res.w.tolist() == [c.target_id for c in cases]
    ref = brute_force(tiny, cases[0].prompt, cases[0].target_id, [1])
    torch.testing.assert_close(res.importance[0, 1], ref[0], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="target='answer'"):
        NeuronImportance(target="answer").run(tiny, ["3+5="])
    with pytest.raises(ValueError, match="target"):
        NeuronImportance(target="label")
    with pytest.raises(ValueError, match="mode"):
        NeuronImportance(mode="approx")
    with pytest.raises(ValueError, match="top_k"):
        NeuronImportance(top_k=0)
    with pytest.raises(ValueError, match="empty dataset"):
        NeuronImportance().run(tiny, [])
    with pytest.raises(ValueError, match="layer"):
        NeuronImportance(layers=[7]).run(tiny, PROMPTS)


def test_heads_and_layers_scores(tiny):
    res = NeuronImportance().run(tiny, PROMPTS[:2])
    acts = collect(tiny, PROMPTS[:2])
    W_U, b_U = tiny.bridge.W_U.cpu(), tiny.bridge.b_U.cpu()
    for i in range(2):
        w, s = int(res.w[i]), acts.scale[i]

        def lp(v):
            return ((v / s) @ W_U + b_U).log_softmax(-1)[w]

        for L in range(tiny.n_layers):
            x = acts.resid_pre[i, L]
            for h in range(tiny.n_heads):
                head_out = acts.z[i, L, h] @ tiny.bridge.W_O[L, h].cpu()
                assert abs(float(lp(x + head_out) - lp(x)) - float(res.head_importance[i, L, h])) < 1e-4
            assert abs(float(lp(acts.resid_mid[i, L]) - lp(x)) - float(res.attn_importance[i, L])) < 1e-4
            mid = acts.resid_mid[i, L]
            assert abs(float(lp(mid + acts.mlp_out[i, L]) - lp(mid)) - float(res.mlp_importance[i, L])) < 1e-4
    assert set(res.heads_df().columns) == {"layer", "head", "importance"}
    assert len(res.layers_df()) == 2 * tiny.n_layers


def test_aggregates_and_frames(tiny):
    res = NeuronImportance(top_k=5).run(tiny, PROMPTS)
    df = res.df
    assert len(df) == tiny.n_layers * tiny.d_mlp
    assert df["importance"].is_monotonic_decreasing
    row = df.iloc[0]
    assert row["importance"] == pytest.approx(float(res.importance[:, row["layer"], row["neuron"]].mean()), abs=1e-6)
    assert df["n_top"].sum() == 5 * len(PROMPTS)
    top = res.top(3, case=1)
    assert top["importance"].iloc[0] == pytest.approx(float(res.importance[1].max()), abs=1e-6)
    assert isinstance(res.top_tokens[0], str) and len(res.per_case(2)) == 2 * len(PROMPTS)
    assert len(res.plot().data[0].y) == len(df)  # 192 neurons: under the default cap
    capped = res.plot(max_points=20).data[0].y
    largest = df["importance"].abs().nlargest(20)
    assert sorted(abs(v) for v in capped) == pytest.approx(sorted(largest))


def test_fast_mode_rescores_exactly(tiny):
    exact = NeuronImportance().run(tiny, PROMPTS)
    fast = NeuronImportance(mode="fast", rescore=10).run(tiny, PROMPTS)
    assert int(fast.exact.sum()) == 10 * len(PROMPTS)
    torch.testing.assert_close(fast.importance[fast.exact], exact.importance[fast.exact], atol=1e-5, rtol=0)
    agree = NeuronImportance(mode="fast", rescore=30).fast_agreement(tiny, PROMPTS, k=3)
    assert list(agree.columns) == ["case", "same_topk", "overlap"] and 0 <= agree.attrs["agreement"] <= 1


def test_first_order_score_is_the_gradient(tiny):
    from arithlens.cna.importance import first_order_scores

    acts = collect(tiny, PROMPTS[:1])
    w = acts.predictions
    fo = first_order_scores(tiny, acts, w, [1])
    x = acts.resid_mid[0, 1].clone().requires_grad_(True)
    lp = ((x / acts.scale[0]) @ tiny.bridge.W_U.cpu() + tiny.bridge.b_U.cpu()).log_softmax(-1)[int(w[0])]
    (g,) = torch.autograd.grad(lp, x)
    ref = acts.post[0, 1] * (tiny.bridge.W_out[1].cpu() @ g)
    torch.testing.assert_close(fo[0, 0], ref, atol=1e-5, rtol=1e-4)


def test_comparative_intervention_matches_brute_force(tiny):
    res = ComparativeNeuronScores(intervention=ZeroHead(1, 2)).run(tiny, PROMPTS[:2])
    for i, p in enumerate(PROMPTS[:2]):
        w = int(res.w[i])
        ref = brute_force(tiny, p, w, [2], intervention=ZeroHead(1, 2))
        torch.testing.assert_close(res.importance_other[i, 2], ref[0], atol=1e-4, rtol=0)
    cols = ["case", "layer", "neuron", "importance", "importance_other", "importance_change", "coef", "coef_other", "coef_change", "top_tokens"]
    assert list(res.df.columns) == cols
    first = res.df[res.df["case"] == 0]
    assert first["importance_change"].is_monotonic_decreasing
    torch.testing.assert_close(
        torch.tensor(first["importance_change"].to_numpy()),
        torch.tensor((first["importance"] - first["importance_other"]).to_numpy()), atol=1e-6, rtol=0,
    )  # fmt: skip
    agg = res.aggregate(k=5)
    assert agg["n_top"].sum() == 10 and len(res.table4(2)) == 4
    row = agg.iloc[0]  # the mean over cases of each score, per neuron
    L = res.layers.index(int(row["layer"]))
    assert row["coef_change"] == pytest.approx(float(res.coef_change[:, L, int(row["neuron"])].mean()), abs=1e-6)
    assert agg["importance_change"].is_monotonic_decreasing and set(agg["n_cases"]) == {2}
    one = ComparativeNeuronScores(intervention=ZeroHead(1, 2)).run(tiny, "3+5=")
    assert "case" not in one.df.columns
    assert one.plot() is not None


def test_comparative_two_inputs_and_two_models(tiny):
    from arithlens.testing import tiny_llama

    res = ComparativeNeuronScores(other_data=["3-5="]).run(tiny, ["3+5="])
    w = int(res.w[0])
    torch.testing.assert_close(res.importance_other[0], brute_force(tiny, "3-5=", w, range(tiny.n_layers)), atol=1e-4, rtol=0)
    other = tiny_llama(seed=1)
    res = ComparativeNeuronScores(other_model=other).run(tiny, ["3+5="])
    torch.testing.assert_close(res.importance_other[0, :1], brute_force(other, "3+5=", w, [0]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="exactly one"):
        ComparativeNeuronScores()
    with pytest.raises(ValueError, match="exactly one"):
        ComparativeNeuronScores(intervention=ZeroHead(0, 0), other_data=["1"])
    with pytest.raises(ValueError, match="other_data has 1 cases"):
        ComparativeNeuronScores(other_data=["3-5="]).run(tiny, ["3+5=", "1+1="])
    with pytest.raises(ValueError, match="head"):
        ComparativeNeuronScores(intervention=ZeroHead(1, 9)).run(tiny, ["3+5="])


def test_analyses_leave_model_untouched_even_on_error(tiny):
    snap, hooks = params_snapshot(tiny), tiny.torch_hook_count()
    ComparativeNeuronScores(intervention=ZeroHead(1, 2)).run(tiny, PROMPTS)
    NeuronImportance(mode="fast").run(tiny, PROMPTS)
    assert_untouched(tiny, snap, hooks)
    with pytest.raises(ValueError):
        ComparativeNeuronScores(intervention=ZeroHead(1, 99)).run(tiny, PROMPTS)
    with pytest.raises(ValueError):  # fails after the clean pass, inside the hooks
        importance_scores(tiny, PROMPTS, w=[1, 2])
    assert_untouched(tiny, snap, hooks)


def test_cli_writes_one_row_per_neuron(tiny, tmp_path, monkeypatch, capsys):
    import arithlens.cli as cli

    monkeypatch.setattr(cli, "load_model_from_args", lambda args: tiny)
    out = tmp_path / "cna.csv"
    assert cli.main(["cna", "--prompt", "3+5=", "--ablate-head", "1.2", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert len(df) == tiny.n_layers * tiny.d_mlp
    for c in ["layer", "neuron", "importance", "importance_intervened", "importance_change", "coef", "coef_intervened", "coef_change", "top_tokens"]:
        assert c in df.columns
    assert df["importance_change"].is_monotonic_decreasing
    assert cli.main(["cna", "--prompt", "3+5=", "--ablate-head", "1.x", "--out", str(out)]) == 2
    assert "LAYER.HEAD" in capsys.readouterr().err
    assert cli.main(["cna", "--prompt", "3+5=", "--ablate-head", "1.40", "--out", str(out)]) == 2
    assert "out of range" in capsys.readouterr().err
    assert cli.main(["cna", "--prompt", "3+5=", "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == tiny.n_layers * tiny.d_mlp


@pytest.mark.smollm2
def test_smollm2_exact_matches_brute_force(smollm2):
    """One prompt, the last layer scored exactly on both sides; the literal loop checks every 48th neuron."""
    res = ComparativeNeuronScores(intervention=ZeroHead(3, 0), layers=[29], top_tokens=0).run(smollm2, ["3+5="])
    w = int(res.w[0])
    assert w == int(smollm2.run(["3+5="]).predictions[0])
    some = range(0, smollm2.d_mlp, 48)
    ref = brute_force(smollm2, "3+5=", w, [29], neurons=some)
    torch.testing.assert_close(res.importance[0, 0, some], ref[0, some], atol=1e-4, rtol=0)
    ref_other = brute_force(smollm2, "3+5=", w, [29], intervention=ZeroHead(3, 0), neurons=some)
    torch.testing.assert_close(res.importance_other[0, 0, some], ref_other[0, some], atol=1e-4, rtol=0)
