"""Mean-ablation knockout, END attention and the MLP probe (Zhang et al. §4.1-4.2)."""

import pytest
import torch
from conftest import assert_untouched, model_state

from arithlens import data
from arithlens.circuits import Counterfactual, EndAttention, Knockout, MeanMLP, MLPProbe, PathPatching
from arithlens.circuits.counterfactual import locate, token_roles
from arithlens.circuits.end_attention import ROLES
from arithlens.circuits.mean_ablation import MeanNodes, MLPMeans
from arithlens.circuits.path_patching import MLP
from arithlens.interventions import HeadMeans


@pytest.fixture(scope="module")
def cases(tiny):
    return data.arithmetic(tiny.tokenizer, ops="+-", digits=2, templates=(4,), forms=("numeral",), n_per_op=4)


@pytest.fixture(scope="module")
def pairs(tiny, cases):
    return Counterfactual().run(tiny, cases)


def _last_logits_with(model, tokens, name, replace):
    def fn(x, hook):
        return replace(x)

    with model.hooked([(name, fn)]), torch.no_grad():
        return model.bridge(tokens)[:, -1]


# -------------------------------------------------------------------------- ablation
def test_mean_mlp_equals_explicit_replacement(tiny, pairs):
    cf = torch.tensor(pairs.counterfactual_ids)  # one template: all the same length
    ref = torch.tensor(pairs.reference_ids)
    acts = []
    with tiny.hooked([("blocks.1.hook_mlp_out", lambda x, hook: acts.append(x.detach().clone()))]), torch.no_grad():
        tiny.bridge(cf)
    mean = acts[0].mean(0)  # per position, over the counterfactual prompts
    expected = _last_logits_with(tiny, ref, "blocks.1.hook_mlp_out", lambda x: mean.expand_as(x).clone())
    with tiny.intervened(MeanMLP(1, pairs.counterfactual_ids)), torch.no_grad():
        got = tiny.bridge(ref)[:, -1]
    assert torch.allclose(got, expected, atol=1e-5)
    expected_last = _last_logits_with(tiny, ref, "blocks.1.hook_mlp_out", lambda x: torch.cat([x[:, :-1], mean[-1].expand_as(x[:, -1:])], 1))
    with tiny.intervened(MeanMLP(1, pairs.counterfactual_ids, position="last")), torch.no_grad():
        assert torch.allclose(tiny.bridge(ref)[:, -1], expected_last, atol=1e-5)


def test_mean_nodes_equals_explicit_replacement(tiny, pairs):
    cf, ref = torch.tensor(pairs.counterfactual_ids), torch.tensor(pairs.reference_ids)
    z = {}
    with tiny.hooked([(f"blocks.{L}.attn.hook_z", lambda x, hook, L=L: z.__setitem__(L, x.detach().clone())) for L in (0, 2)]), torch.no_grad():
        tiny.bridge(cf)
    mlp = []
    with tiny.hooked([("blocks.2.hook_mlp_out", lambda x, hook: mlp.append(x.detach().clone()))]), torch.no_grad():
        tiny.bridge(cf)

    def set_head(L, h):
        def fn(x, hook):
            x[:, :, h] = z[L].mean(0)[:, h]
            return x

        return fn

    def set_mlp(x, hook):
        x[:] = mlp[0].mean(0)
        return x

    hooks = [("blocks.0.attn.hook_z", set_head(0, 1)), ("blocks.2.attn.hook_z", set_head(2, 3)), ("blocks.2.hook_mlp_out", set_mlp)]
    with tiny.hooked(hooks), torch.no_grad():
        expected = tiny.bridge(ref)[:, -1]
    layers = range(tiny.n_layers)
    iv = MeanNodes(((0, 1), (2, 3), (2, MLP)), HeadMeans.compute(tiny, pairs.counterfactual_ids, layers), MLPMeans.compute(tiny, pairs.counterfactual_ids, layers))
    with tiny.intervened(iv), torch.no_grad():
        got = tiny.bridge(ref)[:, -1]
    assert torch.allclose(got, expected, atol=1e-5)


def test_knockout_conditions(tiny, pairs):
    patching = PathPatching(progress=False).run(tiny, pairs)
    snap, n_hooks = model_state(tiny)
    result = Knockout(top_n=3, n_random=2, progress=False).run(tiny, pairs, patching)
    assert_untouched(tiny, snap, n_hooks)
    key = patching.top(3)
    assert result.key_nodes == key
    conditions = list(dict.fromkeys(result.df["condition"]))
    assert conditions[:2] == ["baseline", "key"] and conditions[-2:] == ["random", "rest"]
    assert len(conditions) == 2 + 3 + 2
    assert set(result.df["op"]) == {"all", "+", "-"}
    # "key" equals running the explicit intervention
    layers = range(tiny.n_layers)
    iv = MeanNodes(tuple(key), HeadMeans.compute(tiny, pairs.counterfactual_ids, layers), MLPMeans.compute(tiny, pairs.counterfactual_ids, layers))
    run = tiny.run(pairs.reference_ids, interventions=[iv], cache=False)
    acc = float((run.predictions == pairs.target_ids).float().mean())
    row = result.df[(result.df["condition"] == "key") & (result.df["op"] == "all")].iloc[0]
    assert row["accuracy"] == pytest.approx(acc)
    assert row["n_ablated"] == 3
    assert result.df[result.df["condition"] == "rest"]["n_ablated"].iloc[0] == tiny.n_layers * (tiny.n_heads + 1) - 3
    assert (result.df["accuracy_drop"] == result.df["baseline_accuracy"] - result.df["accuracy"]).all()
    result.plot()


def test_knockout_bad_input(tiny, pairs):
    with pytest.raises(ValueError, match="top_n"):
        Knockout(top_n=0)
    with pytest.raises(ValueError, match="position 'end'"):
        Knockout(position="end")
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        Knockout(nodes=[(5, MLP)]).run(tiny, pairs)


# ------------------------------------------------------------------------- attention
def test_end_attention_equals_brute_force(tiny, cases):
    heads = [(0, 1), (2, 3)]
    snap, n_hooks = model_state(tiny)
    result = EndAttention(heads=heads).run(tiny, cases)
    assert_untouched(tiny, snap, n_hooks)
    for k, (L, h) in enumerate(heads):
        totals = dict.fromkeys(ROLES, 0.0)
        for case in cases:
            pattern = []
            with tiny.hooked([(f"blocks.{L}.attn.hook_pattern", lambda x, hook: pattern.append(x))]), torch.no_grad():
                tiny.bridge(torch.tensor([case.input_ids]))
            roles = token_roles(tiny.tokenizer, case.input_ids, locate(case))
            for j, role in enumerate(roles):
                totals[role] += float(pattern[0][0, h, -1, j]) / len(cases)
        for role in ROLES:
            got = result.df[(result.df["layer"] == L) & (result.df["head"] == h) & (result.df["role"] == role)]["attention"].iloc[0]
            assert got == pytest.approx(totals[role], abs=1e-5)
    sums = result.df.groupby("head_label")["attention"].sum()
    assert sums.to_numpy() == pytest.approx(1.0, abs=1e-5)
    result.plot()


def test_end_attention_bad_input(tiny, cases):
    with pytest.raises(ValueError, match="needs heads"):
        EndAttention().run(tiny, cases)
    with pytest.raises(ValueError, match="head 9 is out of range"):
        EndAttention(heads=[(0, 9)]).run(tiny, cases)


# ------------------------------------------------------------------------------ probe
def test_mlp_probe_equals_brute_force(tiny, cases):
    snap, n_hooks = model_state(tiny)
    result = MLPProbe().run(tiny, cases)
    assert_untouched(tiny, snap, n_hooks)
    W_U = tiny.bridge.W_U
    cos = torch.nn.functional.cosine_similarity
    for L in (0, 2):
        expected = {}
        for case in cases:
            acts = {}
            hooks = [(f"blocks.{L}.hook_resid_mid", lambda x, hook: acts.__setitem__("in", x[0, -1])),
                     (f"blocks.{L}.hook_mlp_out", lambda x, hook: acts.__setitem__("out", x[0, -1]))]
            with tiny.hooked(hooks), torch.no_grad():
                tiny.bridge(torch.tensor([case.input_ids]))
            roles = token_roles(tiny.tokenizer, case.input_ids, locate(case))
            tok = {"A": case.input_ids[roles.index("A")], "B": case.input_ids[roles.index("B")], "C": case.target_id}
            diff = acts["out"] - acts["in"]
            for t, tid in tok.items():
                for q, vec in (("mlp_in", acts["in"]), ("mlp_out", acts["out"]), ("mlp_diff", diff / diff.norm())):
                    expected[(q, t)] = expected.get((q, t), 0.0) + float(cos(vec, W_U[:, tid], dim=0)) / len(cases)
        for (q, t), value in expected.items():
            got = result.df[(result.df["layer"] == L) & (result.df["quantity"] == q) & (result.df["token"] == t)]["cosine"].iloc[0]
            assert got == pytest.approx(value, abs=1e-5)
    assert len(result.df) == tiny.n_layers * 9
    result.plot()
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        MLPProbe(layers=[7]).run(tiny, cases)
