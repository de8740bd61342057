"""The internal logic chain of one case — Yu & Ananiadou §4.5, Fig. 1.

Four stages from input to prediction, each located on one prompt (e.g. "3+5=" → "8"):

1. **feature enhancing** (§4.4) — shallow FFN neurons (layers below the arithmetic head)
   on the earlier positions, ranked by the inner product of their *attention-transformed*
   subvalue with the PE-DAG root's key. The transform is the attention layers'
   value-output circuit carrying position ``p`` to the last position::

       T(l, k, p) = m_k(p) · Σ_{l < l' ≤ l_root} Σ_h A^{l'h}[last, p] / σ1^{l'}(p) · fc2_k W_V^{l'h} W_O^{l'h}
       score      = T(l, k, p) · ∇_x m_root

   (``A``: attention pattern, ``σ1``: the ``ln1`` scale at ``p`` — compatibility mode
   folds the norm weight into ``W_V``; ``∇_x m_root = (silu'(g) u W_gate[:, r] + silu(g)
   W_in[:, r]) / σ2`` is the root's SwiGLU key at its activation — the same first-order
   "drive" as the PE-DAG edges). ``top_tokens`` are those of ``T`` projected by ``W_U``.
2. **feature transferring** — for every layer up to the head's, the attention weight
   from the last position to each earlier position (mean over heads), and the §4.1
   importance of the layer's whole attention output at the last position.
3. **feature predicting** (§4.2) — the arithmetic head (score: the drop of ``log p(w)``
   when it is zeroed) and the deep neurons with the largest CNA importance change under
   that ablation.
4. **prediction enhancing** (§4.3) — the PE-DAG among those neurons.

Example::

    import arithlens
    from arithlens.cna import LogicChain

    model = arithlens.load_model()
    chain = LogicChain(head=(17, 2)).run(model, "3+5=")
    chain.df          # stage, layer, position, token, neuron, head, score, measure, top_tokens
    chain.plot()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import einops
import pandas as pd
import torch
from jaxtyping import Float

from arithlens.cna.comparative import ComparativeNeuronScores, ComparativeResult
from arithlens.cna.importance import check_head_arg, check_k, collect, layer_scores, token_lists
from arithlens.cna.pe_dag import DAGResult, PredictionEnhancingDAG
from arithlens.cna.vo_transform import head_ov
from arithlens.interventions import ZeroHead
from arithlens.results import Result

STAGES = ("feature enhancing", "feature transferring", "feature predicting", "prediction enhancing")
_COLUMNS = ["stage", "layer", "position", "token", "neuron", "head", "score", "measure", "top_tokens"]


@torch.no_grad()
def _positions(model: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every-position activations of one prompt: coefficients, ln1 scales, last-query attention."""
    L = model.n_layers
    pos = tokens.shape[1]
    out = {
        "post": torch.empty(L, pos, model.d_mlp),
        "ln1": torch.empty(L, pos),
        "attn": torch.empty(L, model.n_heads, pos),
    }

    def grab(kind: str, layer: int):
        def fn(act: torch.Tensor, hook: Any) -> None:
            if kind == "post":
                out[kind][layer] = act[0].detach().float().cpu()
            elif kind == "ln1":
                out[kind][layer] = act[0, :, 0].detach().float().cpu()
            else:  # pattern [batch, head, query, key]: the last query's row
                out[kind][layer] = act[0, :, -1, :].detach().float().cpu()

        return fn

    hooks = []
    for layer in range(L):
        hooks += [
            (f"blocks.{layer}.mlp.hook_post", grab("post", layer)),
            (f"blocks.{layer}.ln1.hook_scale", grab("ln1", layer)),
            (f"blocks.{layer}.attn.hook_pattern", grab("attn", layer)),
        ]
    with model.hooked(hooks):
        model.last_logits(tokens)
    return out


def root_key(model: Any, acts: Any, root: tuple[int, int]) -> Float[torch.Tensor, "d_model"]:
    """``∇_x m_root`` at the root's activation (last position of case 0)."""
    lr, r = root
    W_gate = model.bridge.W_gate[lr, :, r].detach().float().cpu()
    W_in = model.bridge.W_in[lr, :, r].detach().float().cpu()
    sigma = acts.ln2_scale[0, lr]
    x_hat = acts.resid_mid[0, lr] / sigma
    g, u = x_hat @ W_gate, x_hat @ W_in
    sig = torch.sigmoid(g)
    return (sig * (1 + g * (1 - sig)) * u * W_gate + g * sig * W_in) / sigma


@torch.no_grad()
def shallow_scores(
    model: Any, pos_acts: dict[str, torch.Tensor], key: torch.Tensor, root_layer: int, layers: list[int]
) -> Float[torch.Tensor, "layer pos d_mlp"]:
    """Feature-enhancing score of every shallow neuron at every earlier position (module doc)."""
    dev = model.device
    W_out = model.bridge.W_out.detach().float()
    n_pos = pos_acts["post"].shape[1] - 1  # earlier positions only
    key = key.to(dev)
    # E[l'][p] = Σ_h A[l',h,last,p]/σ1[l',p] · W_V W_O key: each attention layer's carried direction.
    E = torch.zeros(model.n_layers, n_pos, model.d_model, device=dev)
    for lp in range(root_layer + 1):
        W_V, W_O = head_ov(model, lp)
        e = einops.einsum(W_V, W_O, key, "head m dh, head dh n, n -> head m")
        weight = pos_acts["attn"][lp, :, :n_pos].to(dev) / pos_acts["ln1"][lp, :n_pos].to(dev)  # [head, pos]
        E[lp] = torch.einsum("hp,hm->pm", weight, e)
    out = torch.zeros(len(layers), n_pos, model.d_mlp)
    for i, layer in enumerate(layers):
        carried = E[layer + 1 : root_layer + 1].sum(0)  # attention layers after this FFN
        out[i] = (pos_acts["post"][layer, :n_pos].to(dev) * (carried @ W_out[layer].T)).cpu()
    return out


@torch.no_grad()
def transformed_vector(
    model: Any, pos_acts: dict[str, torch.Tensor], layer: int, neuron: int, position: int, root_layer: int
) -> Float[torch.Tensor, "d_model"]:
    """``T(l, k, p)``: the neuron's subvalue carried to the last position by attention layers ``l+1 … l_root``."""
    fc2 = model.bridge.blocks[layer].mlp.W_out[neuron].detach().float()
    total = torch.zeros(model.d_model, device=fc2.device)
    for lp in range(layer + 1, root_layer + 1):
        W_V, W_O = head_ov(model, lp)
        heads = einops.einsum(fc2, W_V, W_O, "m, head m dh, head dh n -> head n")
        weight = pos_acts["attn"][lp, :, position].to(fc2) / pos_acts["ln1"][lp, position].to(fc2)
        total += torch.einsum("h,hn->n", weight, heads)
    return total * float(pos_acts["post"][layer, position, neuron])


@dataclass
class LogicChainResult(Result):
    """The four stages of one case.

    Attributes:
        df: ``stage, layer, position, token, neuron, head, score, measure, top_tokens``;
            ``measure`` says what ``score`` is (``root_drive``, ``attention_weight``,
            ``attn_importance``, ``logprob_drop``, ``importance_change``, ``relative_drive``).
        cna, dag: The comparative scores and PE-DAG behind stages 3 and 4.
    """

    prompt: str = ""
    prediction: str = ""
    head: tuple[int, int] = (0, 0)
    root: tuple[int, int] = (0, 0)
    cna: ComparativeResult | None = field(repr=False, default=None)
    dag: DAGResult | None = field(repr=False, default=None)

    def stage(self, name: str) -> pd.DataFrame:
        if name not in STAGES:
            raise ValueError(f"stage {name!r} is not one of {STAGES}")
        return self.df[self.df["stage"] == name].reset_index(drop=True)

    def plot(self, **kwargs: Any) -> Any:
        """One figure: stages as rows, layers along x; markers sized by score, DAG edges drawn."""
        import plotly.graph_objects as go

        fig = go.Figure()
        colors = dict(zip(STAGES, ("#2ca02c", "#1f77b4", "#d62728", "#9467bd")))
        y_of = {s: i for i, s in enumerate(STAGES)}
        fe = self.stage("feature enhancing")
        ft = self.stage("feature transferring")
        ft = ft[ft["measure"] == "attn_importance"]
        fp = self.stage("feature predicting")
        pe = self.dag.nodes if self.dag is not None else pd.DataFrame(columns=["layer", "neuron", "score"])

        def add(df: pd.DataFrame, stage: str, labels: list[str], jitter: bool = True) -> dict:
            if df.empty:
                return {}
            ys, seen = [], {}
            for L in df["layer"]:
                seen[L] = seen.get(L, -1) + 1
                ys.append(y_of[stage] + (0.12 * seen[L] if jitter else 0))
            size = 8 + 22 * (df["score"].abs() / max(1e-9, float(df["score"].abs().max())))
            fig.add_trace(go.Scatter(
                x=list(df["layer"]), y=ys, mode="markers+text", text=labels, textposition="top center",
                marker={"size": list(size), "color": colors[stage]}, name=stage,
                hovertext=[f"{m}: {s:.3f}" for m, s in zip(df.get("measure", ["score"] * len(df)), df["score"])],
            ))  # fmt: skip
            neurons = df["neuron"] if "neuron" in df else [None] * len(df)
            return {(int(L), int(n)): (int(L), y) for L, n, y in zip(df["layer"], neurons, ys) if pd.notna(n)}

        add(fe, STAGES[0], [f"{int(r.layer)}_{int(r.neuron)}@{r.token!r}" for r in fe.itertuples()])
        add(ft, STAGES[1], [f"attn {int(r.layer)}" for r in ft.itertuples()], jitter=False)
        add(fp, STAGES[2], [f"{int(r.layer)}.{int(r.head)}" if pd.notna(r.head) else f"{int(r.layer)}_{int(r.neuron)}" for r in fp.itertuples()])
        pos = add(pe, STAGES[3], [f"{int(r.layer)}_{int(r.neuron)}" for r in pe.itertuples()])
        if self.dag is not None:
            for e in self.dag.df.itertuples():
                a, b = pos.get((e.src_layer, e.src_neuron)), pos.get((e.dst_layer, e.dst_neuron))
                if a and b:
                    fig.add_annotation(x=b[0], y=b[1], ax=a[0], ay=a[1], xref="x", yref="y", axref="x", ayref="y",
                                       showarrow=True, arrowhead=2, arrowcolor="#9467bd", opacity=0.6)  # fmt: skip
        fig.update_layout(
            title=f"Logic chain of {self.prompt!r} → {self.prediction!r} (head {self.head[0]}.{self.head[1]}, root {self.root[0]}_{self.root[1]})",
            xaxis_title="layer",
            yaxis={"tickvals": list(range(4)), "ticktext": list(STAGES)},
            showlegend=False,
            height=520,
            **kwargs,
        )
        return fig


class LogicChain:
    """Fig. 1 for one prompt.

    Args:
        head: The arithmetic head ``(layer, head)`` or ``"L.H"``.
        k: Deep neurons in the feature-predicting stage (and PE-DAG nodes).
        n_shallow: Shallow neurons in the feature-enhancing stage.
        shallow_layers: Layers searched for feature-enhancing neurons (default: below the
            head's layer).
        threshold: PE-DAG edge threshold (see :mod:`arithlens.cna.pe_dag`).
        target: ``"prediction"`` or ``"answer"``.
        top_tokens: Top tokens shown per neuron.
    """

    def __init__(
        self,
        head: Any = None,
        k: int = 10,
        n_shallow: int = 10,
        shallow_layers: list[int] | None = None,
        threshold: float = 0.05,
        target: Literal["prediction", "answer"] = "prediction",
        mode: Literal["exact", "fast"] = "exact",
        top_tokens: int = 10,
        memory_budget: float = 1e9,
        progress: bool = False,
    ):
        if head is None:
            raise ValueError("LogicChain needs head=(layer, head): the arithmetic head of the feature-predicting stage")
        self.head = head
        self.k = check_k(k)
        self.n_shallow = check_k(n_shallow, "n_shallow")
        self.shallow_layers = shallow_layers
        self.threshold = float(threshold)
        self.target = target
        self.mode = mode
        self.top_tokens = int(top_tokens)
        self.memory_budget = memory_budget
        self.progress = progress

    @torch.no_grad()
    def run(self, model: Any, prompt: Any, cna: ComparativeResult | None = None) -> LogicChainResult:
        """Locate the four stages for ``prompt`` (``cna``: a precomputed comparison of it to reuse)."""
        from arithlens.models import load_model

        model = load_model(model)
        head = check_head_arg(model, self.head)
        ids, _ = model._cases(prompt)
        if len(ids) != 1:
            raise ValueError(f"LogicChain explains one prompt; got {len(ids)}")
        data = [prompt] if isinstance(prompt, str) else list(prompt)
        tokens = torch.tensor([list(ids[0])], device=model.device)
        strs = model.token_strs(ids[0])

        cna = cna if cna is not None else ComparativeNeuronScores(
            intervention=ZeroHead(*head), target=self.target, mode=self.mode, top_tokens=self.top_tokens,
            top_k=self.k, memory_budget=self.memory_budget, progress=self.progress,
        ).run(model, data)  # fmt: skip
        dag = PredictionEnhancingDAG(k=self.k, ks=(), threshold=self.threshold, top_tokens=self.top_tokens).run(
            model, data, scores=cna.importance_change
        )
        root = dag.root(0)
        acts = collect(model, data)
        rows: list[dict] = []

        # 1. feature enhancing
        pos_acts = _positions(model, tokens)
        layers = (
            [L for L in range(min(head[0], root[0]))] if self.shallow_layers is None
            else [model.check_layer(int(L)) for L in self.shallow_layers if int(L) < root[0]]
        )  # fmt: skip
        if layers and tokens.shape[1] > 1:
            key = root_key(model, acts, root)
            sc = shallow_scores(model, pos_acts, key, root[0], layers)  # [layer, pos, d_mlp]
            flat = einops.rearrange(sc, "l p n -> (l p n)")
            top = flat.topk(min(self.n_shallow, flat.numel())).indices
            n_pos = sc.shape[1]
            for j in top.tolist():
                li, rest = divmod(j, n_pos * model.d_mlp)
                p, n = divmod(rest, model.d_mlp)
                vec = transformed_vector(model, pos_acts, layers[li], n, p, root[0])
                toks = ""
                if self.top_tokens:
                    toks = token_lists(model, (vec @ model.bridge.W_U.float()).topk(self.top_tokens).indices[None].cpu())[0]
                rows.append(dict(stage=STAGES[0], layer=layers[li], position=p, token=strs[p], neuron=n, head=None,
                                 score=float(flat[j]), measure="root_drive", top_tokens=toks))  # fmt: skip

        # 2. feature transferring
        w = cna.w
        attn_imp, _ = layer_scores(model, acts, w)
        last = tokens.shape[1] - 1
        for L in range(head[0] + 1):
            for p in range(last):
                rows.append(dict(stage=STAGES[1], layer=L, position=p, token=strs[p], neuron=None, head=None,
                                 score=float(pos_acts["attn"][L, :, p].mean()), measure="attention_weight", top_tokens=""))  # fmt: skip
            rows.append(dict(stage=STAGES[1], layer=L, position=last, token=strs[last], neuron=None, head=None,
                             score=float(attn_imp[0, L]), measure="attn_importance", top_tokens=""))  # fmt: skip

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
                             head=None, score=e.relative_drive, measure=f"relative_drive from {e.src_layer}_{e.src_neuron}",
                             top_tokens=""))  # fmt: skip
        df = pd.DataFrame(rows, columns=_COLUMNS)
        df["neuron"] = df["neuron"].astype("Int64")
        df["head"] = df["head"].astype("Int64")
        return LogicChainResult(
            df=df, prompt=model.decode(list(ids[0])), prediction=cna.w_str[0], head=head, root=root, cna=cna, dag=dag
        )
