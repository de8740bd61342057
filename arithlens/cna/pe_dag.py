"""Prediction-enhancing DAG among deep FFN neurons — Yu & Ananiadou §4.3, Table 6.

Among a case's top-K neurons (CNA's `importance_change` when an intervention is given,
else the §4.1 importance), a lower neuron `a` (layer `l_a`) *enhances* an upper neuron
`b` (layer `l_b > l_a`) when its FFN value `fc2_a = W_out[l_a, a]` lies along `b`'s FFN
key. The edge score is the first-order change of `b`'s coefficient `m_b` caused by adding
`a`'s subvalue `m_a fc2_a` to the residual stream `b` reads, with `b`'s norm scale `σ_b`
(the `ln2` scale) frozen:

    drive          = m_a · fc2_a · ∇_x m_b
    relative_drive = drive · sign(m_b) / |m_b|

with `∇_x m_b` from [`drive.neuron_keys`][arithlens.cna.drive.neuron_keys]. For a SwiGLU
neuron (the pre-MLP norm's gain scales both key rows — checked by the tests) the edge combines both inner products exactly as they enter `m_b`:

    gate_ip = fc2_a · W_gate[:, b]        up_ip = fc2_a · W_in[:, b]
    drive   = (m_a / σ_b) · (act'(g_b) · u_b · gate_ip + act(g_b) · up_ip)

(`g_b`, `u_b`: `b`'s gate and up pre-activations at the last position); a plain MLP
(GPT-2) has no `gate_ip` and `drive = (m_a / σ_b) · act'(u_b) · up_ip` (LayerNorm: with
`fc2_a` centred). **"Large" is** `relative_drive ≥ threshold` (default 0.05): to first order, neuron `a`
alone grows `b`'s coefficient magnitude by at least 5 %. Edges always point from a lower
to a higher layer, so the graph is acyclic. Roots are nodes with outgoing but no incoming
edges.

Table 6: for each K, the lowest neuron among the top-K (the most important one in the
lowest layer) is zeroed in the original model, and the decrease (%) of the *other* top-K
neurons' coefficient scores is `100 · Σ s_k (m_k − m'_k) / Σ |m_k|` (`s_k = sign(m_k)`,
as in [`mask_keep`][arithlens.cna.mask_keep]), averaged over cases. Each K costs one
forward pass; everything else is read off the clean
[`DatasetCache`][arithlens.core.cache.DatasetCache] and the CNA result.

Example:
    ```python
    import arithlens
    from arithlens.cna import PredictionEnhancingDAG
    from arithlens.core.interventions import ZeroHead

    model = arithlens.load_model()
    dag = PredictionEnhancingDAG(intervention=ZeroHead(17, 2), k=10).run(model, ["3+5="])
    dag.df            # edges: src_layer, src_neuron, dst_layer, dst_neuron, drive, ...
    dag.table()       # Table 6
    dag.plot()        # the DAG of case 0: neurons by layer and rank, arrows lower → upper
    ```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from arithlens.core import names, validate
from arithlens.core.cache import DatasetCache
from arithlens.cna.base import CNAAnalysis, cna_options
from arithlens.cna.comparative import ComparativeNeuronScores, ComparativeNeuronScoresResult, check_cna
from arithlens.cna.drive import neuron_keys
from arithlens.cna.inputs import neuron_label
from arithlens.cna.vocabulary import top_token_lists
from arithlens.cna.mask_keep import TABLE_K, coef_decrease
from arithlens.analysis.results import Result
from arithlens.cna.importance import NeuronImportance
from arithlens.data import as_dataset
from arithlens.core.interventions import CaseNeurons, as_intervention

EDGE_COLUMNS = ["case", "src_layer", "src_neuron", "dst_layer", "dst_neuron", "gate_ip", "up_ip", "drive", "relative_drive"]


def check_family(model: Any, analysis: str) -> None:
    """`ValueError` for families whose blocks the edges' drive does not model ([`arithlens.core.blocks`][arithlens.core.blocks])."""
    model.writes.refuse(
        analysis, "its edges read a neuron's subvalue through the next layers' pre-MLP norm at resid_mid; "
        "this block adds normalised or parallel sublayer outputs, which the drive does not model", softcap=False,
    )


def dag_hooks(model: Any) -> set[str]:
    layers = range(model.n_layers)
    return {names.resid_mid(L) for L in layers} | {names.ln2_scale(L) for L in layers} | {names.post(L) for L in layers}


@torch.no_grad()
def edge_scores(model: Any, cache: DatasetCache, case: int, nodes: Sequence[tuple[int, int]]) -> pd.DataFrame:
    """Every lower→upper pair among `nodes` with its inner products and drive (module docstring).

    `cache` holds the clean last-position `resid_mid`, `ln2` scale and `mlp.hook_post` of
    every layer (any cache built with the DAG among its analyses).
    """
    if not nodes:
        return pd.DataFrame(columns=EDGE_COLUMNS)
    blocks = model.bridge.blocks
    L = model.n_layers
    post = cache.stack(names.post, range(L)).float()[case]
    resid_mid = cache.stack(names.resid_mid, range(L)).float()[case]
    ln2 = cache.stack(names.ln2_scale, range(L)).float()[case].reshape(L, -1)[:, 0]
    keys = {}
    for lb in sorted({lb for lb, _ in nodes}):
        idx = torch.tensor([b for l_, b in nodes if l_ == lb])
        for b, key in zip(idx.tolist(), neuron_keys(model, resid_mid[lb], ln2[lb], lb, idx)):
            keys[(lb, b)] = key
    # Each node's vectors from its own block (the bridge's stacked W_in / W_gate / W_out
    # rebuild every layer per access); all pairs' inner products in three small matmuls.
    dev = post.device  # blocks may sit on several devices: every vector comes here

    def rows_of(vectors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([v.detach().float().to(dev) for v in vectors])

    fc2 = rows_of([blocks[la].mlp.W_out[a] for la, a in nodes])  # [node, d_model]
    w_in = rows_of([blocks[lb].mlp.W_in[:, b] for lb, b in nodes])
    gated = getattr(blocks[0].mlp, "W_gate", None) is not None
    gate_ip = (fc2 @ rows_of([blocks[lb].mlp.W_gate[:, b] for lb, b in nodes]).T).tolist() if gated else None
    up_ip = (fc2 @ w_in.T).tolist()
    m = torch.tensor([float(post[la, a]) for la, a in nodes], device=dev)
    drive = (m[:, None] * (fc2 @ rows_of([keys[n] for n in nodes]).T)).tolist()
    rows = []
    for i, (la, a) in enumerate(nodes):
        for j, (lb, b) in enumerate(nodes):
            if la >= lb:
                continue
            m_b = float(post[lb, b])
            rel = drive[i][j] * (1.0 if m_b >= 0 else -1.0) / max(abs(m_b), 1e-12)
            rows.append((case, la, a, lb, b, gate_ip[i][j] if gated else float("nan"), up_ip[i][j], drive[i][j], rel))
    return pd.DataFrame(rows, columns=EDGE_COLUMNS)


# ---------------------------------------------------------------------------- result
@dataclass
class PredictionEnhancingDAGResult(Result):
    """PE-DAGs of each case and Table 6.

    Attributes:
        df: Edges `case, src_layer, src_neuron, dst_layer, dst_neuron, gate_ip, up_ip,
            drive, relative_drive` with `relative_drive ≥ threshold`.
        pairs: Every lower→upper pair scored (edges and non-edges).
        nodes: `case, layer, neuron, score, coef, is_root, top_tokens` — each case's top-K.
        table6: `k, lowest_layer, lowest_neuron` (of case 0), `coef_decrease` (mean %), `n`.
        threshold: The edge threshold on `relative_drive`.
        coef_per_case: `{k: [case]}` coefficient decreases (%) behind `table6`.
    """

    pairs: pd.DataFrame = field(repr=False, default=None)
    nodes: pd.DataFrame = field(repr=False, default=None)
    table6: pd.DataFrame = field(repr=False, default=None)
    threshold: float = 0.05
    coef_per_case: dict[int, torch.Tensor] = field(repr=False, default_factory=dict)

    def _case(self, case: Any) -> int:
        n = int(self.nodes["case"].max()) + 1 if len(self.nodes) else 0
        return validate.integer(case, "case", low=0, high=max(n - 1, 0))

    def roots(self, case: int = 0) -> pd.DataFrame:
        """The roots of one case's DAG (outgoing edges, no incoming), most important first."""
        n = self.nodes[self.nodes["case"] == self._case(case)]
        return n[n["is_root"]].sort_values("score", ascending=False)

    def root(self, case: int = 0) -> tuple[int, int]:
        """The most important root; with no edges, the most important neuron of the lowest layer."""
        r = self.roots(case)
        if len(r):
            return int(r.iloc[0]["layer"]), int(r.iloc[0]["neuron"])
        n = self.nodes[self.nodes["case"] == self._case(case)]
        low = n[n["layer"] == n["layer"].min()].sort_values("score", ascending=False)
        return int(low.iloc[0]["layer"]), int(low.iloc[0]["neuron"])

    def top(self, k: int = 10) -> pd.DataFrame:
        """The `k` strongest edges (largest `relative_drive`) over all cases."""
        k = validate.positive_int(k, "k")
        return self.df.sort_values("relative_drive", ascending=False, kind="stable").head(k).reset_index(drop=True)

    def table(self) -> pd.DataFrame:
        """Table 6: one row `coef`, columns `top{K}` (decrease %, mean over cases)."""
        row = {f"top{int(k)}": round(float(v), 1) for k, v in zip(self.table6["k"], self.table6["coef_decrease"])}
        return pd.DataFrame([row], index=["coef"])

    def plot(self, case: int = 0, **kwargs: Any) -> Any:
        """The DAG of one case: each node at its layer (x) and score rank (y), arrows lower → upper."""
        import plotly.graph_objects as go

        case = self._case(case)
        nodes = self.nodes[self.nodes["case"] == case].sort_values("score", ascending=False).reset_index(drop=True)
        edges = self.df[self.df["case"] == case]
        where = {(int(r.layer), int(r.neuron)): (int(r.layer), i + 1) for i, r in enumerate(nodes.itertuples())}
        fig = go.Figure()
        for e in edges.itertuples():
            (xa, ya), (xb, yb) = where[(e.src_layer, e.src_neuron)], where[(e.dst_layer, e.dst_neuron)]
            fig.add_annotation(
                x=xb, y=yb, ax=xa, ay=ya, xref="x", yref="y", axref="x", ayref="y", text="",
                showarrow=True, arrowhead=2, arrowsize=1.2, arrowwidth=1 + 2 * min(1.0, e.relative_drive),
                arrowcolor="#888", opacity=0.8, standoff=8,
            )  # fmt: skip
        labels = [neuron_label(r.layer, r.neuron) for r in nodes.itertuples()]
        hover = [f"{lab}<br>score {s:.3f}<br>coef {c:.3f}" + (f"<br>{t}" if t else "")
                 for lab, s, c, t in zip(labels, nodes["score"], nodes["coef"], nodes.get("top_tokens", [""] * len(nodes)))]  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=[where[k][0] for k in where],
                y=[where[k][1] for k in where],
                mode="markers+text",
                text=labels,
                # Above each marker: one node per rank, so a label's row is its own and none reaches
                # the colour bar on the right (a label beside the last layer's node would).
                textposition="top center",
                cliponaxis=False,
                marker={
                    "size": 14, "color": nodes["score"], "colorscale": "Reds", "showscale": True,
                    "colorbar": {"title": "score"},
                    "line": {"width": 2, "color": ["black" if r else "white" for r in nodes["is_root"]]},
                },  # fmt: skip
                hovertext=hover,
                hoverinfo="text",
                name="neurons",
            )
        )
        lo, hi = (int(nodes["layer"].min()), int(nodes["layer"].max())) if len(nodes) else (0, 1)
        fig.update_layout(
            title={"text": f"Prediction-enhancing DAG, case {case}"
                   f"<br><sup>arrow: relative drive ≥ {self.threshold} · black ring: a root · colour: score</sup>"},
            xaxis={"title": "layer", "range": [lo - 0.8, hi + 0.8], "dtick": 1 if hi - lo <= 16 else 2},
            yaxis={"title": "rank by score (1 = most important)", "autorange": "reversed", "dtick": 1},
            showlegend=False,
            height=220 + 32 * max(len(nodes), 1),
        )
        fig.update_layout(**kwargs)
        return fig


# ---------------------------------------------------------------------------- the analysis
@dataclass(frozen=True, kw_only=True)
class PredictionEnhancingDAG(CNAAnalysis):
    """§4.3: edges among each case's top-K neurons, and Table 6.

    Args:
        intervention: Rank neurons by CNA `importance_change` under this intervention
            (the paper: `ZeroHead(layer, head)`, the arithmetic head zeroed; or the head,
            `"17.2"`). `None`: rank by the §4.1 importance.
        k: Nodes per case in the DAG.
        k_table: Table 6's K values (`()` to skip Table 6).
        threshold: Edge iff `relative_drive ≥ threshold` (module docstring).
        top_tokens: Top tokens listed per node (0: none).
        target, mode, rescore, …: how neurons are scored (the shared options of
            [`CNAAnalysis`][arithlens.cna.base.CNAAnalysis]).
    """

    intervention: Any = None
    k: int = 10
    k_table: int | Sequence[int] = TABLE_K
    threshold: float = 0.05
    top_tokens: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.intervention is not None:
            object.__setattr__(self, "intervention", as_intervention(self.intervention))
        object.__setattr__(self, "k", validate.positive_int(self.k, "k"))
        object.__setattr__(self, "k_table", tuple(validate.int_sequence(self.k_table, "k_table", low=1, allow_empty=True)))
        object.__setattr__(self, "threshold", validate.number(self.threshold, "threshold"))
        object.__setattr__(self, "top_tokens", validate.non_negative_int(self.top_tokens, "top_tokens"))

    def _scorer(self) -> Any:
        if self.intervention is not None:
            return ComparativeNeuronScores(intervention=self.intervention, top_tokens=0, **cna_options(self))
        return NeuronImportance(top_tokens=0, **cna_options(self))

    def hook_names(self, model: Any) -> set[str]:
        """The clean hooks read: the edges' activations and the ranking's (CNA or importance)."""
        check_family(model, "PredictionEnhancingDAG")
        return dag_hooks(model) | self._scorer().hook_names(model)

    def ranking(
        self, model: Any, data: Any, *, cache: DatasetCache | None = None, cna: "ComparativeNeuronScoresResult | None" = None
    ) -> Float[torch.Tensor, "case layer d_mlp"]:
        """Per-case neuron scores the top-K come from: CNA's `importance_change`, or the importance."""
        if cna is not None:
            if self.intervention is None:
                raise ValueError("cna= needs intervention=: without one the DAG ranks neurons by their §4.1 importance")

            return check_cna(cna, len(as_dataset(data, model.tokenizer)), model).importance_change
        if self.intervention is None:
            scores = self._scorer().run(model, data, cache=cache).importance
        else:
            scores = self._scorer().run(model, data, cache=cache).importance_change
        return validate.check_finite(scores, "the neuron scores")

    @torch.no_grad()
    def run(
        self, model: Any, data: Any, *, cache: DatasetCache | None = None, cna: "ComparativeNeuronScoresResult | None" = None
    ) -> PredictionEnhancingDAGResult:
        """Build each case's DAG and Table 6.

        Args:
            model: The model.
            data: Prompts or cases ([`as_dataset`][arithlens.data.as_dataset]).
            cache: The clean pass of `data` holding this analysis's hooks
                (`model.cache(data, names=[analysis])`); built when not given.
            cna: CNA of `data` under the same intervention, to reuse.
        """
        model, ds = self.start(model, data)
        check_family(model, "PredictionEnhancingDAG")
        hooks = dag_hooks(model) | (self._scorer().hook_names(model) if cna is None else set())
        cache = self.prepare(model, ds, cache, names=hooks).cache
        scores = self.ranking(model, ds, cache=cache, cna=cna)
        flat = einops.rearrange(scores, "c l n -> c (l n)")
        post = cache.stack(names.post, range(model.n_layers)).float()
        node_rows, pair_frames = [], []
        for i in tqdm(range(flat.shape[0]), desc="PE-DAG edges", unit="case", disable=not self.progress):
            idx = flat[i].topk(min(self.k, flat.shape[1])).indices
            nodes = [(int(j) // model.d_mlp, int(j) % model.d_mlp) for j in idx]
            pairs = edge_scores(model, cache, i, nodes)
            pair_frames.append(pairs)
            edges = pairs[pairs["relative_drive"] >= self.threshold]
            has_in = set(zip(edges["dst_layer"], edges["dst_neuron"]))
            has_out = set(zip(edges["src_layer"], edges["src_neuron"]))
            for L, n in nodes:
                node_rows.append({
                    "case": i, "layer": L, "neuron": n, "score": float(scores[i, L, n]),
                    "coef": float(post[i, L, n]), "is_root": (L, n) in has_out and (L, n) not in has_in,
                })  # fmt: skip
        nodes_df = pd.DataFrame(node_rows)
        if self.top_tokens:
            uniq = list(dict.fromkeys(zip(nodes_df["layer"], nodes_df["neuron"])))
            vecs = torch.stack([model.bridge.blocks[L].mlp.W_out[n].detach() for L, n in uniq])
            toks = dict(zip(uniq, top_token_lists(model, vecs, self.top_tokens)))
            nodes_df = nodes_df.assign(top_tokens=[toks[(L, n)] for L, n in zip(nodes_df["layer"], nodes_df["neuron"])])
        pairs_df = pd.concat(pair_frames, ignore_index=True) if pair_frames else pd.DataFrame(columns=EDGE_COLUMNS)
        edges_df = pairs_df[pairs_df["relative_drive"] >= self.threshold].reset_index(drop=True)
        table6, per_case = self._table6(model, ds, flat, post)
        return PredictionEnhancingDAGResult(
            df=edges_df, pairs=pairs_df, nodes=nodes_df, table6=table6, threshold=self.threshold, coef_per_case=per_case
        )

    def _table6(
        self, model: Any, ds: Any, flat: torch.Tensor, post: Float[torch.Tensor, "case layer d_mlp"]
    ) -> tuple[pd.DataFrame, dict]:

        rows, per_case = [], {}
        shape = dict(l=model.n_layers)
        for k in tqdm(self.k_table, desc="Table 6", unit="K", disable=not self.progress):
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
            inter = CaseNeurons(einops.rearrange(zero, "c (l n) -> c l n", **shape), mode="zero")
            after = model.cache(
                ds, names=[names.post(L) for L in range(model.n_layers)], interventions=[inter],
                batch_size=self.batch_size, memo=False,
            )  # fmt: skip
            dec = coef_decrease(post, after.stack(names.post, range(model.n_layers)).float(), einops.rearrange(others, "c (l n) -> c l n", **shape))
            per_case[k] = dec
            rows.append({
                "k": k, "lowest_layer": int(lowest[0]) // model.d_mlp, "lowest_neuron": int(lowest[0]) % model.d_mlp,
                "coef_decrease": float(dec.mean()), "n": len(dec),
            })  # fmt: skip
        return pd.DataFrame(rows, columns=["k", "lowest_layer", "lowest_neuron", "coef_decrease", "n"]), per_case
