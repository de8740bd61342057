"""PE-DAG (§4.3, Table 6) and the logic chain (Fig. 1)."""

import pytest
import torch

from arithlens.cna import LogicChain, PredictionEnhancingDAG
from arithlens.cna.importance import collect
from arithlens.cna.logic_chain import STAGES, _positions, root_key, shallow_scores, transformed_vector
from arithlens.cna.pe_dag import edge_scores
from arithlens.interventions import ZeroNeurons
from conftest import assert_untouched, params_snapshot

PROMPTS = ["3+5=", "2+2=", "12+3="]


def test_swiglu_key_reproduces_coefficients(tiny):
    """Compatibility mode folds ln2's weight into W_gate/W_in: m = silu(x̂·gate)·(x̂·up)."""
    acts = collect(tiny, PROMPTS)
    b = tiny.bridge
    for L in range(tiny.n_layers):
        x_hat = acts.resid_mid[:, L] / acts.ln2_scale[:, L, None]
        m = torch.nn.functional.silu(x_hat @ b.W_gate[L].cpu()) * (x_hat @ b.W_in[L].cpu())
        torch.testing.assert_close(m, acts.post[:, L], atol=1e-5, rtol=1e-4)


def test_edge_drive_is_first_order_change_of_upper_coefficient(tiny):
    acts = collect(tiny, ["3+5="])
    b = tiny.bridge
    pairs = edge_scores(tiny, acts, 0, [(0, 5), (2, 7), (1, 3)])
    assert len(pairs) == 3 and (pairs["src_layer"] < pairs["dst_layer"]).all()
    for e in pairs.itertuples():
        x = acts.resid_mid[0, e.dst_layer].double()
        sigma = float(acts.ln2_scale[0, e.dst_layer])
        gate, up = b.W_gate[e.dst_layer, :, e.dst_neuron].cpu().double(), b.W_in[e.dst_layer, :, e.dst_neuron].cpu().double()
        fc2 = b.W_out[e.src_layer, e.src_neuron].cpu().double()
        assert e.gate_ip == pytest.approx(float(fc2.float() @ gate.float()), rel=1e-4, abs=1e-7)

        def m(v):
            return torch.nn.functional.silu(v / sigma @ gate) * (v / sigma @ up)

        sub = float(acts.post[0, e.src_layer, e.src_neuron]) * fc2
        eps = 1e-4
        fd = float((m(x + eps * sub) - m(x - eps * sub)) / (2 * eps))
        assert e.drive == pytest.approx(fd, rel=1e-3, abs=1e-9)
        m_b = float(acts.post[0, e.dst_layer, e.dst_neuron])
        assert e.relative_drive == pytest.approx(e.drive * (1 if m_b >= 0 else -1) / abs(m_b), rel=1e-6)


def test_dag_edges_roots_and_table6_loop(tiny):
    dag = PredictionEnhancingDAG(head=(1, 2), k=6, ks=(10, 4), threshold=0.0).run(tiny, PROMPTS)
    assert (dag.df["relative_drive"] >= 0).all()
    assert (dag.df["src_layer"] < dag.df["dst_layer"]).all()
    nodes0 = dag.nodes[dag.nodes["case"] == 0]
    assert len(nodes0) == 6
    for r in dag.roots(0).itertuples():
        edges0 = dag.df[dag.df["case"] == 0]
        assert ((edges0["src_layer"] == r.layer) & (edges0["src_neuron"] == r.neuron)).any()
        assert not ((edges0["dst_layer"] == r.layer) & (edges0["dst_neuron"] == r.neuron)).any()
    # Table 6 by a literal loop: zero the lowest top-K neuron, other top-K coefficients' decrease.
    from arithlens.cna import ComparativeNeuronScores
    from arithlens.interventions import ZeroHead

    change = ComparativeNeuronScores(intervention=ZeroHead(1, 2)).run(tiny, PROMPTS).importance_change
    clean = collect(tiny, PROMPTS)
    for k in (10, 4):
        decs = []
        for i, p in enumerate(PROMPTS):
            flat = change[i].reshape(-1)
            top = [(int(j) // tiny.d_mlp, int(j) % tiny.d_mlp) for j in flat.topk(k).indices]
            low = min(L for L, _ in top)
            lowest = max((n for n in top if n[0] == low), key=lambda n: float(change[i][n]))
            after = collect(tiny, [p], [ZeroNeurons(lowest[0], [lowest[1]])])
            others = [n for n in top if n != lowest]
            m = torch.stack([clean.post[i, L, n] for L, n in others])
            m2 = torch.stack([after.post[0, L, n] for L, n in others])
            decs.append(100 * float((torch.sign(m) * (m - m2)).sum() / m.abs().sum()))
        got = float(dag.table6.set_index("k").loc[k, "coef_decrease"])
        assert got == pytest.approx(sum(decs) / len(decs), abs=1e-3)
    assert list(dag.table().columns) == ["top10", "top4"]
    assert dag.plot(0) is not None


def test_dag_without_head_and_bad_input(tiny):
    dag = PredictionEnhancingDAG(k=4, ks=(5,)).run(tiny, PROMPTS[:1])
    assert len(dag.nodes) == 4
    with pytest.raises(ValueError, match="k="):
        PredictionEnhancingDAG(k=0)
    with pytest.raises(ValueError, match="K"):
        PredictionEnhancingDAG(ks=(5, -1))
    with pytest.raises(ValueError, match="out of range"):
        PredictionEnhancingDAG(head=(5, 0)).run(tiny, PROMPTS)
    with pytest.raises(ValueError, match="scores shape"):
        PredictionEnhancingDAG().run(tiny, PROMPTS, scores=torch.zeros(1, 1, 1))


def test_shallow_scores_match_literal_transform(tiny):
    acts = collect(tiny, ["3+5="])
    tokens = torch.tensor([tiny.encode("3+5=")])
    pos = _positions(tiny, tokens)
    root = (2, 7)
    key = root_key(tiny, acts, root)
    sc = shallow_scores(tiny, pos, key, root[0], [0, 1])
    for li, L in enumerate([0, 1]):
        for p in range(tokens.shape[1] - 1):
            for n in (0, 13, 40):
                vec = transformed_vector(tiny, pos, L, n, p, root[0])
                assert float(sc[li, p, n]) == pytest.approx(float(vec.cpu() @ key), rel=1e-4, abs=1e-8)


def test_logic_chain_stages_and_errors(tiny):
    snap, hooks = params_snapshot(tiny), tiny.torch_hook_count()
    chain = LogicChain(head=(2, 1), k=5, n_shallow=4).run(tiny, "3+5=")
    assert set(chain.df["stage"]) >= {STAGES[0], STAGES[1], STAGES[2]}
    assert len(chain.stage("feature enhancing")) == 4
    fp = chain.stage("feature predicting")
    assert fp.iloc[0]["head"] == 1 and len(fp) == 6
    assert chain.plot() is not None
    with pytest.raises(ValueError, match="one prompt"):
        LogicChain(head=(2, 1)).run(tiny, ["3+5=", "1+1="])
    with pytest.raises(ValueError, match="head="):
        LogicChain()
    with pytest.raises(ValueError, match="stage"):
        chain.stage("nope")
    with pytest.raises(ValueError, match="out of range"):
        LogicChain(head=(2, 7)).run(tiny, "3+5=")
    assert_untouched(tiny, snap, hooks)


@pytest.mark.smollm2
def test_smollm2_chain_one_prompt(smollm2):
    chain = LogicChain(head=(3, 0), k=5, n_shallow=3, mode="fast").run(smollm2, "3+5=")
    assert chain.prediction == smollm2.predict(["3+5="])[0]
    assert len(chain.stage("feature enhancing")) == 3
