"""The internal logic chain of one case — Yu & Ananiadou §4.5, Fig. 1.

Four stages from input to prediction, each located on one prompt (e.g. "3+5=" → "8"):

1. **feature enhancing** (§4.4) — shallow FFN neurons (layers below the arithmetic head
   and the PE-DAG root) on the earlier positions, ranked by the inner product of their
   *attention-transformed* subvalue `T(l, k, p)` with the PE-DAG root's key — the
   attention layers' value-output circuit carrying position `p` to the last position, and
   the same first-order "drive" as the PE-DAG edges
   ([`drive`][arithlens.cna.drive] has the formulas). `top_tokens` are those of `T` read
   through the final norm and unembedding
   ([`readout.top_token_ids`][arithlens.core.readout.top_token_ids]).
2. **feature transferring** — for every layer up to the head's, the attention weight
   from the last position to each earlier position (mean over heads), and the §4.1
   importance of the layer's whole attention output at the last position (frozen-scale
   readout, [`arithlens.core.readout`][arithlens.core.readout]).
3. **feature predicting** (§4.2) — the arithmetic head (score: the drop of `log p(w)`
   when the intervention is applied) and the deep neurons with the largest CNA
   importance change under it.
4. **prediction enhancing** (§4.3) — the PE-DAG among those neurons.

Every stage reads one clean `positions="all"`
[`DatasetCache`][arithlens.core.cache.DatasetCache] (given, or built in one pass) and the
CNA result (given as `cna=`, or computed — one pass under the intervention).

Example:
    ```python
    import arithlens
    from arithlens.cna import LogicChain
    from arithlens.core.interventions import ZeroHead

    model = arithlens.load_model()
    chain = LogicChain(intervention=ZeroHead(17, 2)).run(model, "3+5=")
    chain.table()     # one row per stage: its strongest components
    chain.df          # stage, layer, position, token, neuron, head, score, measure, top_tokens
    chain.plot()      # the four stages, layers along x
    ```
"""

from __future__ import annotations

import numbers
import textwrap
from dataclasses import dataclass, field
from typing import Any, Sequence

import einops
import pandas as pd
import torch

from arithlens.core import names, readout, validate
from arithlens.core.cache import DatasetCache
from arithlens.cna.base import CNAAnalysis, cna_options
from arithlens.cna.vocabulary import top_token_lists
from arithlens.cna.comparative import ComparativeNeuronScores, ComparativeNeuronScoresResult, check_cna, required_intervention
from arithlens.cna.drive import position_activations, position_hooks, root_key, shallow_scores, transformed_vector
from arithlens.cna.inputs import neuron_label
from arithlens.cna.pe_dag import PredictionEnhancingDAG, PredictionEnhancingDAGResult, check_family, dag_hooks
from arithlens.analysis.results import Result

STAGES = ("feature enhancing", "feature transferring", "feature predicting", "prediction enhancing")
COLUMNS = ["stage", "layer", "position", "token", "neuron", "head", "score", "measure", "top_tokens"]


def _chain_hooks(model: Any) -> set[str]:
    """Every-position hooks of stages 1 and 2, and the last-position ones of stage 2."""
    return position_hooks(model) | {h for L in range(model.n_layers) for h in (names.resid_pre(L), names.attn_out(L))}


# ---------------------------------------------------------------------------- result
def _label(row: Any) -> str:
    """The plot's and table's name of one stage row."""
    if row.stage == STAGES[0]:
        return f"{neuron_label(row.layer, row.neuron)}@{row.token!r}"
    if row.stage == STAGES[1]:
        return f"attn {int(row.layer)}"
    if pd.notna(row.head):
        return f"head {int(row.layer)}.{int(row.head)}"
    if row.stage == STAGES[3]:
        return f"{row.measure.split()[-1]} → {neuron_label(row.layer, row.neuron)}"
    return neuron_label(row.layer, row.neuron)


@dataclass
class LogicChainResult(Result):
    """The four stages of one case.

    Attributes:
        df: `stage, layer, position, token, neuron, head, score, measure, top_tokens`;
            `measure` says what `score` is (`root_drive`, `attention_weight`,
            `attn_importance`, `logprob_drop`, `importance_change`, `relative_drive from …`).
        prompt: The prompt's text.
        prediction: The scored token `w` (the model's prediction, or the answer).
        head: The arithmetic head `(layer, head)`.
        root: The PE-DAG root `(layer, neuron)` that stage 1 is scored against.
        empty: Per stage with no row, why (e.g. no FFN layer below the root).
        n_layers: The model's layer count (the plot's layer axis).
        cna: The comparative scores behind stage 3.
        dag: The PE-DAG behind stage 4.
    """

    prompt: str = ""
    prediction: str = ""
    head: tuple[int, int] = (0, 0)
    root: tuple[int, int] = (0, 0)
    empty: dict[str, str] = field(default_factory=dict)
    n_layers: int = 0
    cna: "ComparativeNeuronScoresResult | None" = field(repr=False, default=None)
    dag: PredictionEnhancingDAGResult | None = field(repr=False, default=None)

    def stage(self, name: str) -> pd.DataFrame:
        """The rows of one stage."""
        validate.choice(name, "stage", STAGES)
        return self.df[self.df["stage"] == name].reset_index(drop=True)

    def top(self, k: int = 5) -> pd.DataFrame:
        """The `k` highest-scoring rows of each stage (stage 2: its attention importances)."""
        k = validate.positive_int(k, "k")
        parts = []
        for s in STAGES:
            part = self.stage(s)
            if s == STAGES[1]:
                part = part[part["measure"] == "attn_importance"]
            parts.append(part.sort_values("score", ascending=False, kind="stable").head(k))
        return pd.concat(parts, ignore_index=True)

    def table(self, k: int = 3) -> pd.DataFrame:
        """Fig. 1 as a table: one row per stage with its `k` strongest components and what scores them."""
        top = self.top(k)
        rows = []
        for s in STAGES:
            part = top[top["stage"] == s]
            rows.append({
                "stage": s,
                "components": ", ".join(_label(r) for r in part.itertuples()) if len(part) else f"none ({self.empty.get(s, 'no row')})",
                "measure": ", ".join(dict.fromkeys(m.split(" from ")[0] for m in part["measure"])),
            })  # fmt: skip
        return pd.DataFrame(rows)

    def plot(self, **kwargs: Any) -> Any:
        """The four stages as stacked panels sharing the layer axis.

        Stages 1, 3 and 4 place each component at its layer (x) and rank within the stage
        (y), labelled; stage 2 is the attention output's importance per layer (bars); the
        PE-DAG's edges are arrows in stage 4. A stage with nothing found says so.
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        ranked = {
            STAGES[0]: self.stage(STAGES[0]).sort_values("score", ascending=False),
            STAGES[2]: self.stage(STAGES[2]),
        }
        # Without an edge stage 4 found nothing: its panel holds the reason, not the bare nodes.
        dag_nodes = (
            self.dag.nodes[self.dag.nodes["case"] == 0].sort_values("score", ascending=False)
            if self.dag is not None and len(self.dag.nodes) and len(self.stage(STAGES[3]))
            else pd.DataFrame(columns=["layer", "neuron", "score"])
        )
        transfer = self.stage(STAGES[1])
        transfer = transfer[transfer["measure"] == "attn_importance"]
        sizes = [len(ranked[STAGES[0]]), 4, len(ranked[STAGES[2]]), len(dag_nodes)]
        found = [len(self.stage(s)) for s in STAGES]
        titles = [f"{i + 1}. {s}" + ("" if n else " — none found") for i, (s, n) in enumerate(zip(STAGES, found))]
        fig = make_subplots(
            rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.07, subplot_titles=titles,
            row_heights=[max(n, 2) for n in sizes],
        )  # fmt: skip
        colors = dict(zip(STAGES, ("#2ca02c", "#1f77b4", "#d62728", "#9467bd")))

        def ranks(row: int, df: pd.DataFrame, labels: list[str], stage: str, hover: list[str]) -> None:
            if df.empty:
                return
            size = 8 + 14 * (df["score"].abs() / max(1e-9, float(df["score"].abs().max())))
            fig.add_trace(
                go.Scatter(
                    x=list(df["layer"]), y=list(range(1, len(df) + 1)), mode="markers+text", text=labels,
                    textposition="middle right", cliponaxis=False, name=stage, hovertext=hover, hoverinfo="text",
                    marker={"size": list(size), "color": colors[stage]},
                ),
                row=row, col=1,
            )  # fmt: skip
            fig.update_yaxes(autorange="reversed", showticklabels=False, title_text="rank", row=row, col=1)

        fe = ranked[STAGES[0]]
        ranks(1, fe, [_label(r) for r in fe.itertuples()], STAGES[0],
              [f"{_label(r)}<br>{r.measure} {r.score:.3f}<br>{r.top_tokens}" for r in fe.itertuples()])  # fmt: skip
        if len(transfer):
            fig.add_trace(
                go.Bar(x=list(transfer["layer"]), y=list(transfer["score"]), name=STAGES[1], marker_color=colors[STAGES[1]],
                       hovertemplate="attention of layer %{x}<br>importance %{y:.3f} nats<extra></extra>"),
                row=2, col=1,
            )  # fmt: skip
        fig.update_yaxes(title_text="Δ log p (nats)", row=2, col=1)
        fp = ranked[STAGES[2]]
        ranks(3, fp, [_label(r) for r in fp.itertuples()], STAGES[2],
              [f"{_label(r)}<br>{r.measure} {r.score:.3f}" for r in fp.itertuples()])  # fmt: skip
        dag_labels = [neuron_label(L, n) for L, n in zip(dag_nodes["layer"], dag_nodes["neuron"])]
        ranks(4, dag_nodes, dag_labels, STAGES[3], [f"{lab}<br>score {s:.3f}" for lab, s in zip(dag_labels, dag_nodes["score"])])
        if self.dag is not None and len(dag_nodes):
            where = {(int(L), int(n)): (int(L), i + 1) for i, (L, n) in enumerate(zip(dag_nodes["layer"], dag_nodes["neuron"]))}
            for e in self.dag.df[self.dag.df["case"] == 0].itertuples():
                (xa, ya), (xb, yb) = where[(e.src_layer, e.src_neuron)], where[(e.dst_layer, e.dst_neuron)]
                fig.add_annotation(x=xb, y=yb, ax=xa, ay=ya, xref="x4", yref="y4", axref="x4", ayref="y4", text="",
                                   showarrow=True, arrowhead=2, arrowcolor=colors[STAGES[3]], opacity=0.6, standoff=6)  # fmt: skip
        for i, (s, n) in enumerate(zip(STAGES, found)):
            if not n:  # say why, inside the empty panel
                why = "<br>".join(textwrap.wrap(self.empty.get(s, "no component"), 60))
                low, high = fig.layout[f"yaxis{i + 1 if i else ''}"].domain
                fig.add_annotation(text=why, xref="paper", yref="paper", x=0.5, y=(low + high) / 2,
                                   showarrow=False, font={"size": 12, "color": "#555"})  # fmt: skip
        fig.update_xaxes(range=[-0.7, self.n_layers + 1.0], dtick=1 if self.n_layers <= 16 else 2, showticklabels=True)
        fig.update_xaxes(title_text="layer", row=4, col=1)
        fig.update_layout(
            title={"text": f"Logic chain of {self.prompt!r} → {self.prediction!r}: four stages<br><sup>head "
                   f"{self.head[0]}.{self.head[1]} · PE-DAG root {neuron_label(*self.root)} · size: score</sup>"},
            showlegend=False,
            height=260 + 26 * sum(max(n, 2) for n in sizes),
        )
        fig.update_layout(**kwargs)
        return fig


# ---------------------------------------------------------------------------- the analysis
@dataclass(frozen=True, kw_only=True)
class LogicChain(CNAAnalysis):
    """Fig. 1 for one prompt.

    Args:
        intervention: The arithmetic head's ablation, `ZeroHead(layer, head)` or the head
            itself (`"17.2"`); any intervention with a `layer` and a `head`, e.g. `MeanHead`.
        k: Deep neurons in the feature-predicting stage (and PE-DAG nodes).
        k_shallow: Shallow neurons in the feature-enhancing stage.
        shallow_layers: Layers searched for feature-enhancing neurons (default: below the
            head's layer and the root's).
        threshold: PE-DAG edge threshold (see [`pe_dag`][arithlens.cna.pe_dag]).
        top_tokens: Top tokens shown per neuron (0: none).
        target, mode, rescore, …: how CNA scores neurons (the shared options of
            [`CNAAnalysis`][arithlens.cna.base.CNAAnalysis]).
    """

    intervention: Any = None
    k: int = 10
    k_shallow: int = 10
    shallow_layers: Sequence[int] | None = None
    threshold: float = 0.05
    top_tokens: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "intervention", required_intervention(self.intervention))
        if not all(isinstance(getattr(self.intervention, a, None), numbers.Integral) for a in ("layer", "head")):
            raise ValueError(
                f"intervention={self.intervention!r} must ablate one head (have a layer and a head), e.g. ZeroHead(17, 2)"
            )
        object.__setattr__(self, "k", validate.positive_int(self.k, "k"))
        object.__setattr__(self, "k_shallow", validate.positive_int(self.k_shallow, "k_shallow"))
        if self.shallow_layers is not None:
            object.__setattr__(self, "shallow_layers", tuple(validate.int_sequence(self.shallow_layers, "shallow_layers", low=0)))
        object.__setattr__(self, "threshold", validate.number(self.threshold, "threshold"))
        object.__setattr__(self, "top_tokens", validate.non_negative_int(self.top_tokens, "top_tokens"))

    def _dag(self) -> PredictionEnhancingDAG:
        return PredictionEnhancingDAG(
            intervention=self.intervention, k=self.k, k_table=(), threshold=self.threshold, top_tokens=self.top_tokens,
            **cna_options(self))

    def _comparative(self, top_tokens: int = 0) -> ComparativeNeuronScores:
        return ComparativeNeuronScores(intervention=self.intervention, top_tokens=top_tokens, **cna_options(self))

    def hook_names(self, model: Any) -> set[str]:
        """The clean hooks read (at every position): stages 1–2, the PE-DAG's and CNA's."""
        check_family(model, "LogicChain")
        return _chain_hooks(model) | dag_hooks(model) | self._comparative().hook_names(model)

    def cache_positions(self, model: Any) -> str:
        """`"all"`: every stage reads activations at every position."""
        return "all"

    @torch.no_grad()
    def run(
        self, model: Any, data: Any, *, cache: DatasetCache | None = None, cna: "ComparativeNeuronScoresResult | None" = None
    ) -> LogicChainResult:
        """Locate the four stages for one prompt.

        Args:
            model: The model.
            data: One prompt (or a one-case list or dataset).
            cache: Its clean pass at every position holding this analysis's hooks
                (`model.cache(prompt, names=[chain], positions="all")`); built when not given.
            cna: CNA of the prompt under the same intervention, to reuse.
        """
        model, ds = self.start(model, data)
        check_family(model, "LogicChain")
        if len(ds) != 1:
            raise ValueError(f"LogicChain explains one prompt; got {len(ds)}")
        head = (int(self.intervention.layer), int(self.intervention.head))
        hooks = _chain_hooks(model) | dag_hooks(model)
        if cna is None:
            hooks |= self._comparative().hook_names(model)
        cache = self.prepare(model, ds, cache, names=hooks, positions="all").cache
        if cna is None:
            cna = self._comparative(self.top_tokens).run(model, ds, cache=cache)
        cna = check_cna(cna, 1, model)
        dag = self._dag().run(model, ds, cache=cache, cna=cna)
        root = dag.root(0)
        ids = list(ds[0].input_ids)
        strs = model.token_strs(ids)
        last = len(ids) - 1
        pos_acts = position_activations(model, cache)
        rows: list[dict] = []
        empty: dict[str, str] = {}

        # 1. feature enhancing
        layers = (
            list(range(min(head[0], root[0]))) if self.shallow_layers is None
            else [model.check_layer(L, "shallow_layers item") for L in self.shallow_layers if L < root[0]]
        )  # fmt: skip
        if not layers:
            empty[STAGES[0]] = f"no FFN layer to search below the root {neuron_label(*root)} and head {head[0]}.{head[1]}"
        elif last == 0:
            empty[STAGES[0]] = "a one-token prompt has no earlier position"
        else:
            sc = shallow_scores(model, pos_acts, root_key(model, cache, root), root[0], layers)  # [layer, pos, d_mlp]
            flat = einops.rearrange(sc, "l p n -> (l p n)")
            top = flat.topk(min(self.k_shallow, flat.numel())).indices.tolist()
            n_pos = sc.shape[1]
            found = []
            for j in top:
                li, rest = divmod(j, n_pos * model.d_mlp)
                p, n = divmod(rest, model.d_mlp)
                found.append((layers[li], n, p, float(flat[j])))
            toks = [""] * len(found)
            if self.top_tokens and found:
                vecs = torch.stack([transformed_vector(model, pos_acts, L, n, p, root[0]) for L, n, p, _ in found])
                toks = top_token_lists(model, vecs, self.top_tokens)
            for (L, n, p, s), t in zip(found, toks):
                rows.append(dict(stage=STAGES[0], layer=L, position=p, token=strs[p], neuron=n, head=None,
                                 score=s, measure="root_drive", top_tokens=t))  # fmt: skip

        # 2. feature transferring
        ro = readout.Readout(model)
        w = cna.w[:1].to(ro.device)
        scale = cache.final_scale[:1]
        pre = cache.stack(names.resid_pre, range(model.n_layers))[0].float()
        attn_out = cache.stack(names.attn_out, range(model.n_layers))[0].float()
        for L in range(head[0] + 1):
            for p in range(last):
                rows.append(dict(stage=STAGES[1], layer=L, position=p, token=strs[p], neuron=None, head=None,
                                 score=float(pos_acts["attn"][L, :, p].mean()), measure="attention_weight", top_tokens=""))  # fmt: skip
            gain = ro.logprob(pre[L][None] + attn_out[L][None], scale, w) - ro.logprob(pre[L][None], scale, w)
            rows.append(dict(stage=STAGES[1], layer=L, position=last, token=strs[last], neuron=None, head=None,
                             score=float(gain[0]), measure="attn_importance", top_tokens=""))  # fmt: skip

        # 3. feature predicting
        drop = float(cna.logprob[0] - cna.logprob_other[0])
        rows.append(dict(stage=STAGES[2], layer=head[0], position=last, token=strs[last], neuron=None, head=head[1],
                         score=drop, measure="logprob_drop", top_tokens=""))  # fmt: skip
        for r in cna.case_frame(0).head(self.k).itertuples():
            rows.append(dict(stage=STAGES[2], layer=r.layer, position=last, token=strs[last], neuron=r.neuron, head=None,
                             score=r.importance_change, measure="importance_change", top_tokens=getattr(r, "top_tokens", "")))  # fmt: skip

        # 4. prediction enhancing
        for e in dag.df.itertuples():
            rows.append(dict(stage=STAGES[3], layer=e.dst_layer, position=last, token=strs[last], neuron=e.dst_neuron,
                             head=None, score=e.relative_drive, measure=f"relative_drive from {neuron_label(e.src_layer, e.src_neuron)}",
                             top_tokens=""))  # fmt: skip
        if dag.df.empty:
            empty[STAGES[3]] = f"no edge among the top {self.k} neurons reaches relative drive {self.threshold}"
        df = pd.DataFrame(rows, columns=COLUMNS).astype({"neuron": "Int64", "head": "Int64"})
        return LogicChainResult(
            df=df, prompt=ds[0].prompt, prediction=cna.w_str[0], head=head, root=root, empty=empty,
            n_layers=model.n_layers, cna=cna, dag=dag,
        )
