"""Prediction-enhancing DAG among deep FFN neurons — Yu & Ananiadou §4.3, Table 6.

Among a case's top-K neurons (CNA's ``importance_change`` when ``head`` is given, else
the §4.1 importance), a lower neuron ``a`` (layer ``l_a``) *enhances* an upper neuron
``b`` (layer ``l_b > l_a``) when its FFN value ``fc2_a = W_out[l_a, a]`` lies along
``b``'s FFN key. A SwiGLU neuron has two key rows, the gate row ``W_gate[l_b][:, b]`` and
the up row ``W_in[l_b][:, b]`` (compatibility mode has folded the pre-MLP RMSNorm weight
into both: ``m_b = silu(x̂·W_gate[:, b]) · (x̂·W_in[:, b])`` with ``x̂ = resid_mid /
σ_b``, ``σ_b`` the ``ln2`` scale — checked by the tests). The edge score combines both
inner products exactly as they enter ``m_b``: the first-order change of ``b``'s
coefficient caused by adding ``a``'s subvalue ``m_a fc2_a`` to the residual stream::

    gate_ip = fc2_a · W_gate[:, b]        up_ip = fc2_a · W_in[:, b]
    drive   = (m_a / σ_b) · (silu'(g_b) · u_b · gate_ip + silu(g_b) · up_ip)
    relative_drive = drive · sign(m_b) / |m_b|

(``g_b``, ``u_b``: ``b``'s gate and up pre-activations at the last position).
**"Large" is** ``relative_drive ≥ threshold`` (default 0.05): to first order, neuron
``a`` alone grows ``b``'s coefficient magnitude by at least 5 %. Edges always point
from a lower to a higher layer, so the graph is acyclic. Roots are nodes with outgoing
but no incoming edges.

Table 6: for each K, the lowest neuron among the top-K (the most important one in the
lowest layer) is zeroed in the original model, and the decrease (%) of the *other* top-K
neurons' coefficient scores is ``100 · Σ s_k (m_k − m'_k) / Σ |m_k|`` (``s_k =
sign(m_k)``, as in :mod:`arithlens.cna.mask_keep`), averaged over cases.

Example::

    import arithlens
    from arithlens.cna import PredictionEnhancingDAG

    model = arithlens.load_model()
    dag = PredictionEnhancingDAG(head=(17, 2), k=10).run(model, ["3+5="])
    dag.df            # edges: src_layer, src_neuron, dst_layer, dst_neuron, drive, ...
    dag.table()       # Table 6
    dag.plot()        # the DAG, nodes by layer
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Bool, Float

from arithlens.cna.comparative import ComparativeNeuronScores, top_token_strings
from arithlens.cna.importance import Activations, NeuronImportance, check_head_arg, check_k, check_ks, collect
from arithlens.cna.mask_keep import coef_decrease
from arithlens.interventions import CaseNeurons, ZeroHead
from arithlens.results import Result

_EDGE_COLUMNS = ["case", "src_layer", "src_neuron", "dst_layer", "dst_neuron", "gate_ip", "up_ip", "drive", "relative_drive"]


@torch.no_grad()
def edge_scores(
    model: Any, acts: Activations, case: int, nodes: Sequence[tuple[int, int]]
) -> pd.DataFrame:
    """Every lower→upper pair among ``nodes`` with its inner products and drive (see module doc)."""
    W_out = model.bridge.W_out.detach().float()
    W_gate = model.bridge.W_gate.detach().float()
    W_in = model.bridge.W_in.detach().float()
    rows = []
    for la, a in nodes:
        for lb, b in nodes:
            if la >= lb:
                continue
            fc2 = W_out[la, a]
            gate_ip = float(fc2 @ W_gate[lb, :, b])
            up_ip = float(fc2 @ W_in[lb, :, b])
            sigma = acts.ln2_scale[case, lb].to(fc2)
            x_hat = acts.resid_mid[case, lb].to(fc2) / sigma
            g, u = x_hat @ W_gate[lb, :, b], x_hat @ W_in[lb, :, b]
            sig = torch.sigmoid(g)
            dsilu = sig * (1 + g * (1 - sig))  # d/dg [g·sigmoid(g)]
            m_a, m_b = float(acts.post[case, la, a]), float(acts.post[case, lb, b])
            drive = m_a / float(sigma) * float(dsilu * u * gate_ip + g * sig * up_ip)
            rel = drive * (1.0 if m_b >= 0 else -1.0) / max(abs(m_b), 1e-12)
            rows.append((case, la, a, lb, b, gate_ip, up_ip, drive, rel))
    return pd.DataFrame(rows, columns=_EDGE_COLUMNS)


@dataclass
class DAGResult(Result):
    """PE-DAGs of each case and Table 6.

    Attributes:
        df: Edges ``case, src_layer, src_neuron, dst_layer, dst_neuron, gate_ip, up_ip,
            drive, relative_drive`` with ``relative_drive ≥ threshold``.
        pairs: Every lower→upper pair scored (edges and non-edges).
        nodes: ``case, layer, neuron, score, coef, is_root, top_tokens`` — each case's top-K.
        table6: ``k, lowest_layer, lowest_neuron`` (of case 0), ``coef_decrease`` (mean %).
        threshold: The edge threshold on ``relative_drive``.
    """

    pairs: pd.DataFrame = field(repr=False, default=None)
    nodes: pd.DataFrame = field(repr=False, default=None)
    table6: pd.DataFrame = field(repr=False, default=None)
    threshold: float = 0.05
    coef_per_case: dict[int, torch.Tensor] = field(repr=False, default_factory=dict)

    def roots(self, case: int = 0) -> pd.DataFrame:
        n = self.nodes[self.nodes["case"] == case]
        return n[n["is_root"]].sort_values("score", ascending=False)

    def root(self, case: int = 0) -> tuple[int, int]:
        """The most important root; with no edges, the most important neuron of the lowest layer."""
        r = self.roots(case)
        if len(r):
            return int(r.iloc[0]["layer"]), int(r.iloc[0]["neuron"])
        n = self.nodes[self.nodes["case"] == case]
        low = n[n["layer"] == n["layer"].min()].sort_values("score", ascending=False)
        return int(low.iloc[0]["layer"]), int(low.iloc[0]["neuron"])

    def table(self) -> pd.DataFrame:
        """Table 6: one row ``coef``, columns ``top{K}`` (decrease %, mean over cases)."""
        row = {f"top{int(k)}": round(float(v), 1) for k, v in zip(self.table6["k"], self.table6["coef_decrease"])}
        return pd.DataFrame([row], index=["coef"])

    def plot(self, case: int = 0, **kwargs: Any) -> Any:
        """The DAG of one case: nodes at their layer, edges as arrows lower → upper."""
        import plotly.graph_objects as go

        nodes = self.nodes[self.nodes["case"] == case].reset_index(drop=True)
        edges = self.df[self.df["case"] == case]
        # Spread nodes of one layer horizontally so labels don't overlap.
        xs: dict[tuple[int, int], float] = {}
        for layer, part in nodes.groupby("layer"):
            for j, r in enumerate(part.itertuples()):
                xs[(r.layer, r.neuron)] = j - (len(part) - 1) / 2
        fig = go.Figure()
        for e in edges.itertuples():
            a, b = (e.src_layer, e.src_neuron), (e.dst_layer, e.dst_neuron)
            fig.add_annotation(
                x=xs[b], y=b[0], ax=xs[a], ay=a[0], xref="x", yref="y", axref="x", ayref="y",
                showarrow=True, arrowhead=2, arrowsize=1.2, arrowwidth=1 + 2 * min(1.0, e.relative_drive),
                arrowcolor="#888", opacity=0.8,
            )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=[xs[(r.layer, r.neuron)] for r in nodes.itertuples()],
                y=nodes["layer"],
                mode="markers+text",
                text=[f"{r.layer}_{r.neuron}" for r in nodes.itertuples()],
                textposition="middle right",
                marker={"size": 14, "color": nodes["score"], "colorscale": "Reds", "line": {"width": 2, "color": ["black" if r else "white" for r in nodes["is_root"]]}},
                hovertext=nodes.get("top_tokens", None),
                hovertemplate="%{text}<br>score %{marker.color:.3f}<br>%{hovertext}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"Prediction-enhancing DAG (case {case}; edge: relative drive ≥ {self.threshold})",
            xaxis={"visible": False}, yaxis_title="layer", showlegend=False, **kwargs,
        )  # fmt: skip
        return fig


class PredictionEnhancingDAG:
    """§4.3: edges among each case's top-K neurons, and Table 6.

    Args:
        head: Arithmetic head ``(layer, head)``: rank neurons by CNA ``importance_change``
            under its ablation (the paper). ``None``: rank by the §4.1 importance.
        k: Nodes per case in the DAG.
        ks: Table 6's K values (``()`` to skip Table 6).
        threshold: Edge iff ``relative_drive ≥ threshold`` (see module doc).
        target, mode, memory_budget, batch_size, progress: as for CNA.
    """

    def __init__(
        self,
        head: Any = None,
        k: int = 10,
        ks: Sequence[int] = (99, 50, 30, 20, 10),
        threshold: float = 0.05,
        target: Literal["prediction", "answer"] = "prediction",
        mode: Literal["exact", "fast"] = "exact",
        memory_budget: float = 1e9,
        top_tokens: int = 10,
        batch_size: int | None = None,
        progress: bool = False,
    ):
        self.head = head
        self.k = check_k(k)
        self.ks = check_ks(ks) if len(tuple(ks)) else ()
        self.threshold = float(threshold)
        self.args = dict(target=target, mode=mode, memory_budget=memory_budget, batch_size=batch_size, progress=progress)
        self.top_tokens = int(top_tokens)
        self.batch_size = batch_size

    def ranking(self, model: Any, data: Any) -> tuple[Float[torch.Tensor, "case layer d_mlp"], Activations]:
        """Per-case neuron scores used to pick the top-K, and the clean activations."""
        acts = collect(model, data, (), self.batch_size)
        if self.head is None:
            sc = NeuronImportance(top_tokens=0, **self.args).run(model, data)
            return sc.importance, acts
        head = check_head_arg(model, self.head)
        cna = ComparativeNeuronScores(intervention=ZeroHead(*head), top_tokens=0, **self.args).run(model, data)
        return cna.importance_change, acts

    @torch.no_grad()
    def run(self, model: Any, data: Any, scores: torch.Tensor | None = None) -> DAGResult:
        """Build each case's DAG and Table 6 (``scores``: a precomputed ``[case, layer, d_mlp]`` ranking)."""
        from arithlens.models import load_model

        model = load_model(model)
        if scores is None:
            scores, acts = self.ranking(model, data)
        else:
            acts = collect(model, data, (), self.batch_size)
            if tuple(scores.shape) != (len(acts), model.n_layers, model.d_mlp):
                raise ValueError(f"scores shape {tuple(scores.shape)} must be [{len(acts)}, {model.n_layers}, {model.d_mlp}]")
        flat = einops.rearrange(scores, "c l n -> c (l n)")
        n_cases = flat.shape[0]
        node_rows, pair_frames = [], []
        for i in range(n_cases):
            idx = flat[i].topk(min(self.k, flat.shape[1])).indices
            nodes = [(int(j) // model.d_mlp, int(j) % model.d_mlp) for j in idx]
            pairs = edge_scores(model, acts, i, nodes)
            pair_frames.append(pairs)
            edges = pairs[pairs["relative_drive"] >= self.threshold]
            has_in = set(zip(edges["dst_layer"], edges["dst_neuron"]))
            has_out = set(zip(edges["src_layer"], edges["src_neuron"]))
            for L, n in nodes:
                node_rows.append({
                    "case": i, "layer": L, "neuron": n, "score": float(scores[i, L, n]),
                    "coef": float(acts.post[i, L, n]), "is_root": (L, n) in has_out and (L, n) not in has_in,
                })  # fmt: skip
        nodes_df = pd.DataFrame(node_rows)
        if self.top_tokens:
            uniq = list(dict.fromkeys(zip(nodes_df["layer"], nodes_df["neuron"])))
            toks = dict(zip(uniq, top_token_strings(model, uniq, self.top_tokens)))
            nodes_df["top_tokens"] = [toks[(L, n)] for L, n in zip(nodes_df["layer"], nodes_df["neuron"])]
        pairs_df = pd.concat(pair_frames, ignore_index=True) if pair_frames else pd.DataFrame(columns=_EDGE_COLUMNS)
        edges_df = pairs_df[pairs_df["relative_drive"] >= self.threshold].reset_index(drop=True)
        table6, per_case = self._table6(model, data, flat, acts)
        return DAGResult(
            df=edges_df, pairs=pairs_df, nodes=nodes_df, table6=table6, threshold=self.threshold, coef_per_case=per_case
        )

    def _table6(self, model: Any, data: Any, flat: torch.Tensor, acts: Activations) -> tuple[pd.DataFrame, dict]:
        rows, per_case = [], {}
        ids, _ = model._cases(data)
        for k in self.ks:
            top = flat.topk(min(k, flat.shape[1]), dim=-1).indices  # [case, k]
            layer_of, score = top // model.d_mlp, flat.gather(1, top)
            # Lowest layer first, then the largest score within it.
            low_layer = layer_of.min(1, keepdim=True).values
            masked = torch.where(layer_of == low_layer, score, torch.full_like(score, -float("inf")))
            lowest = top.gather(1, masked.argmax(1, keepdim=True))[:, 0]
            zero = torch.zeros_like(flat, dtype=torch.bool)
            zero[torch.arange(len(lowest)), lowest] = True
            others = torch.zeros_like(flat, dtype=torch.bool)
            others.scatter_(1, top, True)
            others &= ~zero
            shape = dict(l=model.n_layers)
            inter = CaseNeurons(einops.rearrange(zero, "c (l n) -> c l n", **shape), mode="zero")
            after = collect(model, ids, [inter], self.batch_size)
            dec = coef_decrease(acts.post, after.post, einops.rearrange(others, "c (l n) -> c l n", **shape))
            per_case[k] = dec
            rows.append({
                "k": k, "lowest_layer": int(lowest[0]) // model.d_mlp, "lowest_neuron": int(lowest[0]) % model.d_mlp,
                "coef_decrease": float(dec.mean()), "n": len(dec),
            })  # fmt: skip
        return pd.DataFrame(rows, columns=["k", "lowest_layer", "lowest_neuron", "coef_decrease", "n"]), per_case
