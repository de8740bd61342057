"""PE-DAG (§4.3, Table 6) and the logic chain (Fig. 1): brute force, plots, bad input."""

import numpy as np
import pytest
import torch

from arithlens.core import names
from arithlens.cna import ComparativeNeuronScores, LogicChain, PredictionEnhancingDAG
from arithlens.cna.drive import position_activations, root_key, shallow_scores, transformed_vector
from arithlens.cna.logic_chain import STAGES
from arithlens.cna.pe_dag import edge_scores
from arithlens.core.interventions import ZeroHead, ZeroNeurons
from conftest import assert_untouched, params_snapshot

PROMPTS = ["3+5=", "2+2=", "12+3="]


def dag_cache(model, prompts, positions="last"):
    """A clean cache holding what the DAG's edges read (resid_mid, ln2 scale, coefficients)."""
    hooks = [f(L) for L in range(model.n_layers) for f in (names.resid_mid, names.ln2_scale, names.post)]
    return model.cache(prompts, names=hooks, positions=positions, memo=False)


@pytest.fixture(scope="module")
def gpt2():
    from arithlens.testing import tiny_gpt2

    return tiny_gpt2()


def test_swiglu_key_reproduces_coefficients(tiny):
    """Compatibility mode folds ln2's weight into W_gate/W_in: m = silu(x̂·gate)·(x̂·up)."""
    cache = dag_cache(tiny, PROMPTS)
    b = tiny.bridge
    for L in range(tiny.n_layers):
        x_hat = cache.last(names.resid_mid(L)) / cache.last(names.ln2_scale(L))
        m = torch.nn.functional.silu(x_hat @ b.W_gate[L].cpu()) * (x_hat @ b.W_in[L].cpu())
        torch.testing.assert_close(m, cache.last(names.post(L)), atol=1e-5, rtol=1e-4)


def test_gelu_key_reproduces_coefficients(gpt2):
    """GPT-2 style: ln2 centres and scales, then m = gelu_new(x̂·W_in + b_in)."""
    cache = dag_cache(gpt2, PROMPTS)
    b = gpt2.bridge
    for L in range(gpt2.n_layers):
        x = cache.last(names.resid_mid(L))
        x_hat = (x - x.mean(-1, keepdim=True)) / cache.last(names.ln2_scale(L))
        m = torch.nn.functional.gelu(x_hat @ b.W_in[L] + b.b_in[L], approximate="tanh")
        torch.testing.assert_close(m, cache.last(names.post(L)), atol=1e-5, rtol=1e-4)


def _finite_difference_drive(model, cache, e, m_of):
    x = cache.last(names.resid_mid(e.dst_layer))[0].double()
    fc2 = model.bridge.W_out[e.src_layer, e.src_neuron].double()
    sub = float(cache.last(names.post(e.src_layer))[0, e.src_neuron]) * fc2
    eps = 1e-4
    return float((m_of(x + eps * sub) - m_of(x - eps * sub)) / (2 * eps))


def test_edge_drive_is_first_order_change_of_upper_coefficient(tiny):
    cache = dag_cache(tiny, ["3+5="])
    b = tiny.bridge
    pairs = edge_scores(tiny, cache, 0, [(0, 5), (2, 7), (1, 3)])
    assert len(pairs) == 3 and (pairs["src_layer"] < pairs["dst_layer"]).all()
    for e in pairs.itertuples():
        sigma = float(cache.last(names.ln2_scale(e.dst_layer))[0])
        gate, up = b.W_gate[e.dst_layer, :, e.dst_neuron].double(), b.W_in[e.dst_layer, :, e.dst_neuron].double()
        fc2 = b.W_out[e.src_layer, e.src_neuron]
        assert e.gate_ip == pytest.approx(float(fc2 @ b.W_gate[e.dst_layer, :, e.dst_neuron]), rel=1e-4, abs=1e-7)

        def m(v):
            return torch.nn.functional.silu(v / sigma @ gate) * (v / sigma @ up)

        assert e.drive == pytest.approx(_finite_difference_drive(tiny, cache, e, m), rel=1e-3, abs=1e-9)
        m_b = float(cache.last(names.post(e.dst_layer))[0, e.dst_neuron])
        assert e.relative_drive == pytest.approx(e.drive * (1 if m_b >= 0 else -1) / abs(m_b), rel=1e-6)


def test_edge_drive_on_a_plain_gelu_mlp(gpt2):
    """No gate: drive = m_a · gelu'(u_b) · (centred fc2_a · W_in[:, b]) / σ_b, checked by finite differences."""
    cache = dag_cache(gpt2, ["3+5="])
    b = gpt2.bridge
    pairs = edge_scores(gpt2, cache, 0, [(0, 5), (1, 7), (1, 30), (0, 11)])
    assert len(pairs) == 4 and pairs["gate_ip"].isna().all()
    for e in pairs.itertuples():
        sigma = float(cache.last(names.ln2_scale(e.dst_layer))[0])
        up, bias = b.W_in[e.dst_layer, :, e.dst_neuron].double(), float(b.b_in[e.dst_layer, e.dst_neuron])

        def m(v):
            return torch.nn.functional.gelu((v - v.mean()) / sigma @ up + bias, approximate="tanh")

        assert e.drive == pytest.approx(_finite_difference_drive(gpt2, cache, e, m), rel=1e-3, abs=1e-8)


def test_dag_edges_roots_and_table6_loop(tiny):
    dag = PredictionEnhancingDAG(intervention=ZeroHead(1, 2), k=6, k_table=(10, 4), threshold=0.0).run(tiny, PROMPTS)
    assert (dag.df["relative_drive"] >= 0).all()
    assert (dag.df["src_layer"] < dag.df["dst_layer"]).all()
    nodes0 = dag.nodes[dag.nodes["case"] == 0]
    assert len(nodes0) == 6
    for r in dag.roots(0).itertuples():
        edges0 = dag.df[dag.df["case"] == 0]
        assert ((edges0["src_layer"] == r.layer) & (edges0["src_neuron"] == r.neuron)).any()
        assert not ((edges0["dst_layer"] == r.layer) & (edges0["dst_neuron"] == r.neuron)).any()
    # Table 6 by a literal loop: zero the lowest top-K neuron, other top-K coefficients' decrease.
    change = ComparativeNeuronScores(intervention=ZeroHead(1, 2)).run(tiny, PROMPTS).importance_change
    posts = [names.post(L) for L in range(tiny.n_layers)]
    clean = tiny.cache(PROMPTS, names=posts, memo=False)
    for k in (10, 4):
        decs = []
        for i, p in enumerate(PROMPTS):
            flat = change[i].reshape(-1)
            top = [(int(j) // tiny.d_mlp, int(j) % tiny.d_mlp) for j in flat.topk(k).indices]
            low = min(L for L, _ in top)
            lowest = max((n for n in top if n[0] == low), key=lambda n: float(change[i][n]))
            after = tiny.cache([p], names=posts, interventions=[ZeroNeurons(lowest[0], [lowest[1]])])
            others = [n for n in top if n != lowest]
            m = torch.stack([clean.last(names.post(L))[i, n] for L, n in others])
            m2 = torch.stack([after.last(names.post(L))[0, n] for L, n in others])
            decs.append(100 * float((torch.sign(m) * (m - m2)).sum() / m.abs().sum()))
        got = float(dag.table6.set_index("k").loc[k, "coef_decrease"])
        assert got == pytest.approx(sum(decs) / len(decs), abs=1e-3)
    assert list(dag.table().columns) == ["top10", "top4"]
    assert list(dag.top(3)["relative_drive"]) == sorted(dag.df["relative_drive"], reverse=True)[:3]
    # The plot shows case 0's nodes, labelled, ranked by score, and one arrow per edge.
    fig = dag.plot(0)
    (trace,) = fig.data
    ranked = nodes0.sort_values("score", ascending=False)
    assert list(trace.text) == [f"{L}_{n}" for L, n in zip(ranked["layer"], ranked["neuron"])]
    assert list(trace.x) == list(ranked["layer"]) and list(trace.y) == list(range(1, 7))
    assert len(fig.layout.annotations) == int((dag.df["case"] == 0).sum())
    assert fig.layout.xaxis.title.text == "layer" and "rank" in fig.layout.yaxis.title.text
    assert fig.layout.xaxis.range[1] > ranked["layer"].max() and trace.textposition == "top center"  # labels above, clear of the colour bar
    with pytest.raises(ValueError, match="case=3"):
        dag.plot(3)


def test_dag_reuses_cna_and_cache(tiny):
    dag = PredictionEnhancingDAG(intervention=(1, 2), k=5, k_table=(6,))
    alone = dag.run(tiny, PROMPTS[:2])
    cache = tiny.cache(PROMPTS[:2], names=[dag], memo=False)
    cna = ComparativeNeuronScores(intervention=ZeroHead(1, 2)).run(tiny, PROMPTS[:2], cache=cache)
    reused = dag.run(tiny, PROMPTS[:2], cache=cache, cna=cna)
    for a, b in ((alone.df, reused.df), (alone.pairs, reused.pairs), (alone.nodes, reused.nodes), (alone.table6, reused.table6)):
        assert a.equals(b)
    torch.testing.assert_close(dag.ranking(tiny, PROMPTS[:2], cache=cache), cna.importance_change)


def test_dag_without_intervention_and_bad_input(tiny):
    dag = PredictionEnhancingDAG(k=4, k_table=(5,)).run(tiny, PROMPTS[:1])
    assert len(dag.nodes) == 4
    with pytest.raises(ValueError, match="k=0"):
        PredictionEnhancingDAG(k=0)
    with pytest.raises(ValueError, match="k_table item=-1"):
        PredictionEnhancingDAG(k_table=(5, -1))
    with pytest.raises(ValueError, match="k_table='5'"):
        PredictionEnhancingDAG(k_table="5")
    assert PredictionEnhancingDAG(k=np.int64(3), k_table=()).k_table == ()
    with pytest.raises(ValueError, match="threshold"):
        PredictionEnhancingDAG(threshold="0.1")
    with pytest.raises(ValueError, match="top_tokens"):
        PredictionEnhancingDAG(top_tokens=-1)
    with pytest.raises(ValueError, match="out of range"):
        PredictionEnhancingDAG(intervention=(5, 0)).run(tiny, PROMPTS)
    cna = ComparativeNeuronScores(intervention=ZeroHead(1, 2)).run(tiny, PROMPTS[:2])
    with pytest.raises(ValueError, match="holds 2 cases"):
        PredictionEnhancingDAG(intervention=(1, 2)).run(tiny, PROMPTS, cna=cna)
    with pytest.raises(ValueError, match="needs intervention="):
        PredictionEnhancingDAG().run(tiny, PROMPTS[:2], cna=cna)
    with pytest.raises(ValueError, match="empty dataset"):
        PredictionEnhancingDAG(intervention=(1, 2)).run(tiny, [])


def test_shallow_scores_match_literal_transform(tiny):
    cache = dag_cache(tiny, ["3+5="], positions="all")
    extra = [f(L) for L in range(tiny.n_layers) for f in (names.pattern, lambda L: f"blocks.{L}.ln1.hook_scale")]
    cache = tiny.cache(["3+5="], names=sorted(cache.names | set(extra)), positions="all", memo=False)
    pos = position_activations(tiny, cache)
    n_pos = len(tiny.encode("3+5="))
    assert pos["post"].shape == (tiny.n_layers, n_pos, tiny.d_mlp) and pos["attn"].shape == (tiny.n_layers, tiny.n_heads, n_pos)
    root = (2, 7)
    key = root_key(tiny, cache, root)
    sc = shallow_scores(tiny, pos, key, root[0], [0, 1])
    for li, L in enumerate([0, 1]):
        for p in range(n_pos - 1):
            for n in (0, 13, 40):
                vec = transformed_vector(tiny, pos, L, n, p, root[0])
                assert float(sc[li, p, n]) == pytest.approx(float(vec.cpu() @ key), rel=1e-4, abs=1e-8)


def test_logic_chain_stages_plot_and_errors(tiny):
    snap, hooks = params_snapshot(tiny), tiny.torch_hook_count()
    chain = LogicChain(intervention=(2, 1), k=5, k_shallow=4).run(tiny, "3+5=")
    assert set(chain.df["stage"]) >= {STAGES[0], STAGES[1], STAGES[2]}
    assert len(chain.stage("feature enhancing")) == 4
    fp = chain.stage("feature predicting")
    assert fp.iloc[0]["head"] == 1 and len(fp) == 6
    table = chain.table(2)
    assert list(table["stage"]) == list(STAGES)
    # Four panels, one per stage, whatever was found; stage 1's labels are its rows by score.
    fig = chain.plot()
    titles = [a.text for a in fig.layout.annotations if a.text and a.text[0].isdigit()]
    assert [t.split(" — ")[0] for t in titles] == [f"{i + 1}. {s}" for i, s in enumerate(STAGES)]
    assert "four stages" in fig.layout.title.text
    fe = chain.stage("feature enhancing").sort_values("score", ascending=False)
    labels = [f"{int(r.layer)}_{int(r.neuron)}@{r.token!r}" for r in fe.itertuples()]
    assert list(fig.data[0].text) == labels
    assert fig.layout.xaxis4.title.text == "layer" and fig.layout.yaxis2.title.text == "Δ log p (nats)"
    with pytest.raises(ValueError, match="one prompt"):
        LogicChain(intervention=(2, 1)).run(tiny, ["3+5=", "1+1="])
    with pytest.raises(ValueError, match="give the intervention"):
        LogicChain()
    with pytest.raises(ValueError, match="one head"):
        LogicChain(intervention=ZeroNeurons(1, [3]))
    with pytest.raises(ValueError, match="k_shallow=0"):
        LogicChain(intervention=(2, 1), k_shallow=0)
    with pytest.raises(ValueError, match="stage"):
        chain.stage("nope")
    with pytest.raises(ValueError, match="out of range"):
        LogicChain(intervention=(2, 7)).run(tiny, "3+5=")
    assert_untouched(tiny, snap, hooks)


def test_logic_chain_says_why_a_stage_is_empty(tiny):
    # A head in layer 0 leaves no FFN layer below it to search for feature-enhancing neurons.
    chain = LogicChain(intervention=(0, 1), k=4, k_shallow=3).run(tiny, "3+5=")
    assert chain.stage("feature enhancing").empty
    assert "no FFN layer" in chain.empty["feature enhancing"]
    assert "none (no FFN layer" in chain.table().iloc[0]["components"]
    texts = [a.text for a in chain.plot().layout.annotations]
    assert "1. feature enhancing — none found" in texts
    assert any(t.startswith("no FFN layer to search") for t in texts)


def test_chain_top_tokens_are_the_models_readout_when_b_U_is_nonzero(gpt2):
    """GPT-2 style: stage 1's and the DAG's top tokens rank ln_final(v) @ W_U + b_U."""
    chain = LogicChain(intervention=(1, 0), k=4, k_shallow=3, shallow_layers=[0], top_tokens=5, threshold=-1e9).run(gpt2, "13+5=")
    cache = gpt2.cache("13+5=", names=[LogicChain(intervention=(1, 0))], positions="all")
    pos = position_activations(gpt2, cache)

    def top5(v):
        v = v.double()
        c = v - v.mean()
        normed = c / torch.sqrt((c * c).mean() + float(gpt2.cfg.eps))
        ids = torch.argsort(normed @ gpt2.bridge.W_U.double() + gpt2.bridge.b_U.double(), descending=True)[:5]
        return "[" + ", ".join(repr(t) for t in gpt2.token_strs(ids.tolist())) + "]"

    fe = chain.stage("feature enhancing")
    assert len(fe) == 3
    for r in fe.itertuples():
        assert r.top_tokens == top5(transformed_vector(gpt2, pos, int(r.layer), int(r.neuron), int(r.position), chain.root[0]))
    for r in chain.dag.nodes.itertuples():
        assert r.top_tokens == top5(gpt2.bridge.W_out[r.layer, r.neuron])


@pytest.mark.smollm2
def test_smollm2_chain_one_prompt(smollm2):
    chain = LogicChain(intervention=(3, 0), k=5, k_shallow=3, mode="fast").run(smollm2, "3+5=")
    assert chain.prediction == smollm2.predict(["3+5="])[0]
    assert len(chain.stage("feature enhancing")) == 3
