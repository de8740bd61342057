"""counterfactual pairs as a dataset, mean-ablation knockout, END attention and the MLP probe (Zhang et al. §4.1-4.2)."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import assert_untouched, model_state, forward_counter

from arithlens import data

from arithlens.core import names
from arithlens.circuits import counterfactual_pairs, CounterfactualPairs, EndAttention, Knockout, MeanMLP, MLPProbe, PathPatching
from arithlens.circuits.operands import locate, token_roles
from arithlens.circuits.end_attention import ROLES
from arithlens.circuits.mean_ablation import MeanComponents, MLPMeans
from arithlens.data import as_dataset
from arithlens.core.interventions import HeadMeans
from arithlens.core.names import Component
from arithlens.core.validate import NonFiniteError


@pytest.fixture(scope="module")
def cases(tiny):
    cases = data.arithmetic(tiny.tokenizer, ops="+-", digits=2, templates=(4,), forms=("numeral",), n_per_op=4)
    tiny.cache(cases, memo=False)  # the bridge adds torch hooks of its own on its first run_with_cache
    return cases


@pytest.fixture(scope="module")
def pairs(tiny, cases):
    return counterfactual_pairs(tiny, cases)


@pytest.fixture(scope="module")
def scored_pairs(tiny):
    """Pairs whose targets are the tiny model's own predictions: baseline accuracy 1, ablations lower it."""
    cases = data.arithmetic(tiny.tokenizer, ops="+-", digits=2, templates=(4,), forms=("numeral",), n_per_op=6)
    preds = tiny.cache(cases).predictions
    own = data.ArithmeticDataset([dataclasses.replace(c, target_id=int(p)) for c, p in zip(cases, preds)], name="own")
    return counterfactual_pairs(tiny, own)


def _last_logits_with(model, tokens, name, replace):
    def fn(x, hook):
        return replace(x)

    with model.hooked([(name, fn)]), torch.no_grad():
        return model.bridge(tokens)[:, -1]


# ----------------------------------------------------------------------------- pairs
def test_pairs_are_the_reference_dataset(tiny, cases, pairs):
    assert isinstance(pairs, data.ArithmeticDataset) and as_dataset(pairs, tiny.tokenizer) is pairs
    assert list(pairs) == list(cases)
    assert tiny.cache(pairs).input_ids == [c.input_ids for c in cases]
    frame = pairs.to_frame()
    assert list(frame.columns[:4]) == ["prompt", "counterfactual", "word", "replacement"]
    assert frame["counterfactual"].tolist() == [tiny.decode(ids) for ids in pairs.counterfactual_ids]
    assert pairs.counterfactual.to_frame()["prompt"].tolist() == frame["counterfactual"].tolist()
    assert (pairs.counterfactual.to_frame()["target_id"] == -1).all()
    # subsets keep each case's own counterfactual
    minus = pairs.filter(op="-")
    assert isinstance(minus, CounterfactualPairs) and len(minus) == 4
    lookup = dict(zip(pairs.reference_ids, pairs.counterfactual_ids))
    for part in (minus, pairs[2:5], pairs.sample(3, seed=1), *pairs.split(3), CounterfactualPairs.concat(minus, pairs[:2])):
        assert [lookup[r] for r in part.reference_ids] == part.counterfactual_ids
    with pytest.raises(ValueError, match="pairs must align token by token"):
        CounterfactualPairs(list(pairs)[:1], [dataclasses.replace(pairs.counterfactuals[0], input_ids=(1, 2))])


def test_pairs_of_empty_data_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="empty dataset"):
        counterfactual_pairs(tiny, [])
    with pytest.raises(ValueError, match="replacement"):
        counterfactual_pairs(tiny, ["3+5="], replacement="")
    with pytest.raises(ValueError, match="list of non-empty words"):
        counterfactual_pairs(tiny, ["3+5="], candidates={"word": "nothing"})  # a string is not a list of words


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
    with tiny.intervened(MeanMLP(1, pairs.counterfactual, position="last")), torch.no_grad():
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
    iv = MeanComponents(("0.1", Component(2, 3), Component(2)), HeadMeans.compute(tiny, pairs.counterfactual_ids, layers), MLPMeans.compute(tiny, pairs.counterfactual_ids, layers))
    assert iv.nodes == (Component(0, 1), Component(2, 3), Component(2))
    with tiny.intervened(iv), torch.no_grad():
        got = tiny.bridge(ref)[:, -1]
    assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="no MLP means for layer 1"):
        MeanComponents((Component(1),), {}, {})


def test_knockout_equals_explicit_interventions(tiny, scored_pairs):
    pairs = scored_pairs
    patching = PathPatching(progress=False).run(tiny, pairs)
    cache = tiny.cache(pairs)
    snap, n_hooks = model_state(tiny)
    knockout = Knockout(k=3, n_random=2, progress=False)
    with forward_counter(tiny) as calls:
        result = knockout.run(tiny, pairs, cache=cache, patching=patching)
    assert_untouched(tiny, snap, n_hooks)
    key = result.key_nodes
    assert key == patching.top_components(3) and all(isinstance(n, Component) for n in key)
    conditions = list(dict.fromkeys(result.df["condition"]))
    assert conditions == ["baseline", "key", *(f"key {n.name}" for n in key), "random", "rest"]
    # one pass for the head and MLP means, one per ablated condition (a random draw each), none clean
    assert calls["n"] == 1 + 1 + 3 + 2 + 1
    assert set(result.df["op"]) == {"all", "+", "-"}
    means_h = HeadMeans.compute(tiny, pairs.counterfactual, range(tiny.n_layers))
    means_m = MLPMeans.compute(tiny, pairs.counterfactual, range(tiny.n_layers))
    ops = np.array(pairs.ops)

    def accuracy(nodes):
        run = tiny.cache(pairs, interventions=[MeanComponents(tuple(nodes), means_h, means_m)])
        return (run.predictions == pairs.target_ids).float()

    others = [Component(L, h) for L in range(tiny.n_layers) for h in [*range(tiny.n_heads), None] if Component(L, h) not in key]
    expected = {"baseline": torch.ones(len(pairs)), "key": accuracy(key), "rest": accuracy(others)}
    expected |= {f"key {n.name}": accuracy([n]) for n in key}
    assert len(result.random_nodes) == 2
    for draw in result.random_nodes:
        assert not set(draw) & set(key) and sum(n.is_mlp for n in draw) == sum(n.is_mlp for n in key)
    expected["random"] = torch.stack([accuracy(d) for d in result.random_nodes]).mean(0)
    for name, acc in expected.items():
        for op in ("all", "+", "-"):
            row = result.df[(result.df["condition"] == name) & (result.df["op"] == op)].iloc[0]
            mask = torch.tensor(ops == op) if op != "all" else torch.ones(len(pairs), dtype=torch.bool)
            assert row["accuracy"] == pytest.approx(float(acc[mask].mean()))
    assert 0 < result.df[result.df["condition"] == "rest"]["accuracy_drop"].iloc[0]  # ablations do change predictions
    rest = result.df[result.df["condition"] == "rest"]["n_ablated"].iloc[0]
    assert rest == tiny.n_layers * (tiny.n_heads + 1) - 3
    assert (result.df["accuracy_drop"] == result.df["baseline_accuracy"] - result.df["accuracy"]).all()


def test_knockout_views_show_the_numbers(tiny, scored_pairs):
    result = Knockout(nodes=["2.0", "1.3", "MLP 2"], n_random=1).run(tiny, scored_pairs)
    assert [n.name for n in result.key_nodes] == ["2.0", "1.3", "MLP 2"]
    table = result.table()
    assert list(table.index) == list(dict.fromkeys(result.df["condition"])) and list(table.columns) == ["all", "+", "-"]
    for row in result.df.itertuples():
        assert table.loc[row.condition, row.op] == pytest.approx(round(100 * row.accuracy, 1))
    top = result.top(2)
    alone = result.df[result.df["condition"].str.startswith("key ") & (result.df["op"] == "all")]
    assert top["accuracy_drop"].tolist() == sorted(alone["accuracy_drop"], reverse=True)[:2]
    fig = result.plot()
    assert {t.name for t in fig.data} == {"all", "+", "-"}
    for trace in fig.data:
        rows = result.df[result.df["op"] == trace.name]
        assert list(trace.x) == rows["condition"].tolist() and list(trace.y) == pytest.approx(rows["accuracy"].tolist())
    assert fig.layout.xaxis.title.text == "mean-ablated nodes" and fig.layout.yaxis.title.text == "first-token accuracy"


def test_knockout_bad_input(tiny, pairs):
    with pytest.raises(ValueError, match="k=0 is out of range"):
        Knockout(k=0)
    with pytest.raises(ValueError, match="k=True must be an integer, not a bool"):
        Knockout(k=True)
    with pytest.raises(ValueError, match="n_random=-1 is out of range"):
        Knockout(n_random=-1)
    with pytest.raises(ValueError, match="position='end' is not one of"):
        Knockout(position="end")
    with pytest.raises(ValueError, match="repeated components"):
        Knockout(nodes=["1.2", (1, 2)])
    with pytest.raises(ValueError, match="layer=5 is out of range"):
        Knockout(nodes=[Component(5)]).run(tiny, pairs)
    assert Knockout(k=np.int64(3)).k == 3


def test_knockout_non_finite_logits_raise(tiny, pairs):
    with tiny.hooked([(names.mlp_out(1), lambda x, hook: x * math.nan)]), pytest.raises(NonFiniteError, match="logits"):
        Knockout(nodes=["1.2"], n_random=0, rest=False).run(tiny, pairs)


# ------------------------------------------------------------------------- attention
def test_end_attention_equals_brute_force(tiny, cases):
    heads = [Component(0, 1), Component(2, 3)]
    snap, n_hooks = model_state(tiny)
    result = EndAttention(heads=["0.1", (2, 3)]).run(tiny, cases)
    assert_untouched(tiny, snap, n_hooks)
    assert result.heads == heads
    for k, nd in enumerate(heads):
        totals = dict.fromkeys(ROLES, 0.0)
        for case in cases:
            pattern = []
            with tiny.hooked([(f"blocks.{nd.layer}.attn.hook_pattern", lambda x, hook: pattern.append(x))]), torch.no_grad():
                tiny.bridge(torch.tensor([case.input_ids]))
            roles = token_roles(tiny.tokenizer, case.input_ids, locate(case))
            for j, role in enumerate(roles):
                totals[role] += float(pattern[0][0, nd.head, -1, j]) / len(cases)
        for role in ROLES:
            got = result.df[(result.df["layer"] == nd.layer) & (result.df["head"] == nd.head) & (result.df["role"] == role)]["attention"].iloc[0]
            assert got == pytest.approx(totals[role], abs=1e-5)
            assert result.table().loc[nd.name, role] == got
    sums = result.df.groupby("head_label")["attention"].sum()
    assert sums.to_numpy() == pytest.approx(1.0, abs=1e-5)
    fig = result.plot()
    assert [t.name for t in fig.data] == list(ROLES)
    assert fig.layout.xaxis.title.text == "head (layer.head)"
    for trace in fig.data:
        assert list(trace.x) == ["0.1", "2.3"] and list(trace.y) == pytest.approx(result.table()[trace.name].tolist())


def test_end_attention_prompts_of_several_lengths(tiny):
    prompts = ["3+5=", "12+34=", "7 times 8 is"]
    result = EndAttention(heads=["1.0"]).run(tiny, prompts)
    for i, prompt in enumerate(prompts):
        ids = tiny.encode(prompt)
        pattern = []
        with tiny.hooked([("blocks.1.attn.hook_pattern", lambda x, hook: pattern.append(x))]), torch.no_grad():
            tiny.bridge(torch.tensor([ids]))
        roles = token_roles(tiny.tokenizer, ids, locate(prompt))
        for r, role in enumerate(ROLES):
            expected = sum(float(pattern[0][0, 0, -1, j]) for j, x in enumerate(roles) if x == role)
            assert float(result.per_case[0, i, r]) == pytest.approx(expected, abs=1e-5)


def test_end_attention_takes_the_strongest_heads_of_a_patching_result(tiny, cases):
    class Ranked:  # the path-patching result's interface: nodes ranked by |effect|
        @staticmethod
        def top_components(k, kind=None):
            ranked = [Component(2), Component(1, 3), Component(0), Component(0, 2), Component(2, 1)]
            return [n for n in ranked if kind is None or n.kind == kind][:k]

    result = EndAttention(k=2).run(tiny, cases, patching=Ranked())
    assert result.heads == [Component(1, 3), Component(0, 2)]


def test_end_attention_bad_input(tiny, cases):
    with pytest.raises(ValueError, match="needs heads"):
        EndAttention().run(tiny, cases)
    with pytest.raises(ValueError, match="head=9 is out of range"):
        EndAttention(heads=[(0, 9)]).run(tiny, cases)
    with pytest.raises(ValueError, match="must be attention heads"):
        EndAttention(heads=[Component(1)])
    with pytest.raises(TypeError, match="top_n"):  # an option that does not exist is Python's TypeError
        EndAttention(top_n="3")
    with pytest.raises(ValueError, match="empty dataset"):
        EndAttention(heads=["0.1"]).run(tiny, [])
    with pytest.raises(ValueError, match="blocks.2.attn.hook_pattern"):
        EndAttention(heads=["2.1"]).run(tiny, cases, cache=tiny.cache(cases, names=[names.pattern(0)], memo=False))


# ------------------------------------------------------------------------------ probe
def test_mlp_probe_equals_brute_force(tiny, cases):
    snap, n_hooks = model_state(tiny)
    result = MLPProbe(k=5).run(tiny, cases)
    assert_untouched(tiny, snap, n_hooks)
    W_U = tiny.bridge.W_U
    cos = torch.nn.functional.cosine_similarity
    for L in (0, 2):
        expected, in_top = {}, {}
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
                    with torch.no_grad():
                        top5 = tiny.final_logits(vec[None]).topk(5).indices[0].tolist()
                    in_top[(q, t)] = in_top.get((q, t), 0.0) + (tid in top5) / len(cases)
        for (q, t), value in expected.items():
            row = result.df[(result.df["layer"] == L) & (result.df["quantity"] == q) & (result.df["token"] == t)].iloc[0]
            assert row["cosine"] == pytest.approx(value, abs=1e-5)
            assert row["in_top_k"] == pytest.approx(in_top[(q, t)])
            assert result.table().loc[L, (q, t)] == row["cosine"]
    assert len(result.df) == tiny.n_layers * 9
    fig = result.plot()
    assert {t.name for t in fig.data} == {"A", "B", "C"} and len(fig.data) == 3 * 3
    assert fig.layout.yaxis.title.text == "cosine with W_U[token]"
    # top_tokens counts how often each token is among the top k
    frame = result.top_tokens(1, "mlp_out")
    ids = result.top_ids[:, 1, 1].tolist()
    for row in frame.itertuples():
        assert row.n == sum(row.token_id in r for r in ids) and row.token == tiny.decode([row.token_id])
    assert frame["n"].is_monotonic_decreasing


def test_mlp_probe_top_tokens_are_the_models_own_readout():
    from arithlens.testing import tiny_gpt2

    model = tiny_gpt2()
    assert model.bridge.b_U.abs().max() > 0.1
    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=(4,), forms=("numeral",), n_per_op=4)
    result = MLPProbe(k=5).run(model, cases)
    cache = model.cache(cases, names=[MLPProbe()])
    differs = False
    for L in range(model.n_layers):
        v_in, v_out = cache.last(names.resid_mid(L)), cache.last(names.mlp_out(L))
        for q, vec in enumerate((v_in, v_out, v_out - v_in)):
            with torch.no_grad():
                own = model.final_logits(vec.to(model.device)).topk(5).indices.cpu()
                raw = (vec.to(model.device) @ model.bridge.W_U).topk(5).indices.cpu()
            assert torch.equal(result.top_ids[:, L, q], own)
            differs |= not torch.equal(own, raw)
    assert differs  # b_U and the LayerNorm change the ranking: a raw v @ W_U readout would fail above


def test_analyses_share_one_cache(tiny, cases):
    attention, probe = EndAttention(heads=["0.1", "2.3"]), MLPProbe()
    fresh_attention, fresh_probe = attention.run(tiny, cases), probe.run(tiny, cases)
    cache = tiny.cache(cases, names=[attention, probe], memo=False)
    with forward_counter(tiny) as calls:
        got_attention = attention.run(tiny, cases, cache=cache)
        got_probe = probe.run(tiny, cases, cache=cache)
    assert calls["n"] == 0
    assert got_attention.df.equals(fresh_attention.df) and got_probe.df.equals(fresh_probe.df)


def test_mlp_probe_bad_input(tiny, cases):
    with pytest.raises(ValueError, match="layers item=7 is out of range"):
        MLPProbe(layers=[7]).run(tiny, cases)
    with pytest.raises(ValueError, match="layers='3'"):
        MLPProbe(layers="3")
    with pytest.raises(ValueError, match="k=0 is out of range"):
        MLPProbe(k=0)
    with pytest.raises(ValueError, match="empty dataset"):
        MLPProbe().run(tiny, [])
    with pytest.raises(ValueError, match="no operator word"):
        MLPProbe().run(tiny, ["hello world"])
    probe = MLPProbe(layers=[1])
    cache = tiny.cache(cases, names=[probe], memo=False)
    broken = dataclasses.replace(cache, activations={k: v * math.nan for k, v in cache.activations.items()})
    with pytest.raises(NonFiniteError, match="MLP probe"):
        probe.run(tiny, cases, cache=broken)
