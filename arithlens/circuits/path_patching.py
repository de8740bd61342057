"""Key-component identification by path patching — Zhang et al. (ICML 2024) §4.1, Algorithm 1.

Nodes are every attention head (query-head granularity: on GQA models one query head,
not its shared KV group) and every MLP layer, as [`Component`][arithlens.core.names.Component]s. For each
reference / counterfactual pair ([`counterfactual`][arithlens.circuits.counterfactual])
and each node `n` the node's output at the END position (the last prompt token) is
replaced by its output on the counterfactual `X_c` and the ground-truth token's logit is
read:

    s_n = (logit_p - logit_o) / logit_o,    effect_n = mean over pairs of s_n

`logit_o` is the reference logit of the ground-truth token `C` (the case's target; the
model's prediction where a prompt has none) and `logit_p` the patched one.

Two definitions of "patched" (`method`):

* `"path"` (default; Algorithm 1 literally: `A'_r(n) <- A_c(n)`, `A'_r(k) <- A_r(k)` for
  every other node `k`): every other node's output is *frozen* at its reference value, so
  the change reaches the logits only along the direct path from the patched node through
  the residual stream; the final norm is recomputed. This equals adding
  `(out_c(n) - out_r(n))` to the reference's final residual at END (`out` = `z_h @ W_O[h]`
  for a head, `hook_mlp_out` for an MLP), which is how it is computed: two forwards per
  batch of pairs, then one vectorised norm + unembedding of the target column for all
  nodes. Patching every position instead of END gives the same number here (later nodes
  are frozen), so `position` does not matter.
* `"activation"`: plain activation patching: downstream nodes recompute from the patched
  residual (total effect through every path). The forward restarts at the patched layer
  from the reference residual and runs only the blocks from there on
  ([`arithlens.core.forward`][arithlens.core.forward]), with all heads and the MLP of a layer
  patched in one forward over replicas stacked node-by-pair. `position="all"` patches the
  node's output at every position (the pairs align token by token), `"last"` at END only.

`estimate="attribution"` (attribution patching; Nanda 2023, Kramár et al. 2024) estimates
every node's `logit_p - logit_o` to first order from the gradient of the target logit
(through the final norm for `"path"`; one forward and one backward pass per batch for
`"activation"`) times the node's change `out_c - out_r`, then re-scores the top `rescore`
nodes by `|effect|` exactly. Rows still estimated are marked `estimated`. It pays off
for `"activation"` (one forward per layer of nodes saved); exact `"path"` patching already
costs two forwards per batch, so there the estimate only adds work (it is offered for
symmetry and for the agreement measurement).

Logits are the model's own (the HF logits) on every family: RMSNorm models are wrapped
unprocessed, and on LayerNorm models (GPT-2, GPT-NeoX) arithlens folds the norms but leaves
the unembedding uncentred — centring would shift both `logit_p` and `logit_o` by the mean
over the vocabulary, change the ratio and possibly the node ranking.
Models that soft-cap their logits (Gemma 2) are refused: the ratio of capped logits is not
the paper's quantity.
`logit_change` (`logit_p - logit_o`, no division) is also reported, and with
`logprobs=True` `logprob_change` (for `"path"` this costs a full-vocabulary unembedding
per node and pair): the ratio is unstable when `logit_o` is near zero.

Example:
    ```python
    import arithlens
    from arithlens import data
    from arithlens.circuits import PathPatching

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3],
                            forms=["numeral"], n_per_op=10)
    result = PathPatching().run(model, cases)    # builds the counterfactual pairs
    result.top(5)                                 # strongest nodes by |effect| (a DataFrame)
    result.top_components(5)                           # the same as a list of Component
    result.plot()                                 # layers x (heads + MLP) heatmap
    ```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence
import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool
from tqdm.auto import tqdm
from arithlens.analysis import attribution
from arithlens.core import distributed, validate
from arithlens.analysis.attribution import ESTIMATES, Agreement
from arithlens.core.names import all_components, parse_components
from arithlens.circuits.counterfactual import as_pairs
from arithlens.core.names import Component
from arithlens.core.readout import Readout
from arithlens.analysis.base import Analysis
from arithlens.analysis.results import Result
from typing import Any
import einops
from jaxtyping import Float
from arithlens.core import forward, names
from arithlens.circuits.counterfactual import CounterfactualPairs
from arithlens.core.loading import load_model

MLP = "mlp"
METHODS = ("path", "activation")


def check_nodes(model: Any, nodes: Any | None) -> list[Component]:
    """Nodes checked against `model`; default every head and every MLP, in layer order (heads, then MLP).

    A node is a [`Component`][arithlens.core.names.Component], `"L.H"`, `"MLP L"`, `(layer, head)` or `(layer, "mlp")`.
    """
    if nodes is None:
        return all_components(model)
    return [n.check(model) for n in parse_components(nodes, "nodes")]


@dataclass
class PathPatchingResult(Result):
    """Causal effect of every node.

    Attributes:
        df: One row per node: `layer, node` (head index as text, or `"mlp"`), `name`
            (`"L.H"` / `"MLP L"`), `kind` (head / mlp), `head` (-1 for an MLP), `effect`
            (mean `s_n`), `effect_sem`, `logit_change`, `logprob_change` (with
            `logprobs=True`), `n` (pairs), `estimated` (an attribution estimate, not
            re-scored); in attribution mode `effect_estimate` holds every node's estimate.
        nodes: The nodes, in `df` order.
        effects: `s_n` per node and pair, `[node, pair]`.
        logit_o: Reference logit of the ground-truth token per pair.
        logit_p: Patched logit per node and pair (estimated where not exact).
        logprob_o: Reference log-prob of the ground-truth token per pair.
        logprob_p: Patched log-prob per node and pair (`None` without `logprobs`; `NaN` where estimated).
        exact: `[node]` whether the node was computed exactly.
        estimated_effects: `[node, pair]` the attribution estimate of `s_n` (`None` when exact).
        pairs: The counterfactual pairs used.
        method: `"path"` or `"activation"`.
        position: `"last"` or `"all"`.
        estimate: `"exact"` or `"attribution"`.
        n_layers: Layers of the model.
        n_heads: Query heads per layer of the model.
    """

    nodes: list[Component] = field(default_factory=list)
    effects: Float[torch.Tensor, "node pair"] = field(default=None, repr=False)
    logit_o: Float[torch.Tensor, "pair"] = field(default=None, repr=False)
    logit_p: Float[torch.Tensor, "node pair"] = field(default=None, repr=False)
    logprob_o: Float[torch.Tensor, "pair"] = field(default=None, repr=False)
    logprob_p: Float[torch.Tensor, "node pair"] | None = field(default=None, repr=False)
    exact: Bool[torch.Tensor, "node"] = field(default=None, repr=False)
    estimated_effects: Float[torch.Tensor, "node pair"] | None = field(default=None, repr=False)
    pairs: CounterfactualPairs = field(default=None, repr=False)
    method: str = "path"
    position: str = "last"
    estimate: str = "exact"
    n_layers: int = 0
    n_heads: int = 0

    def _ranked(self, k: int, kind: str | None, by: str) -> pd.DataFrame:
        k = validate.positive_int(k, "k")
        kind = validate.choice(kind, "kind", (None, "head", MLP))
        numeric = [c for c in ("effect", "logit_change", "logprob_change", "effect_estimate") if c in self.df]
        by = validate.choice(by, "by", numeric)
        df = self.df if kind is None else self.df[self.df["kind"] == kind]
        # Exact rows first (an attribution sweep's re-scored nodes), each part by |by|.
        order = df.assign(_key=df[by].abs()).sort_values(["estimated", "_key"], ascending=[True, False], kind="stable")
        return order.drop(columns="_key").head(k)

    def top(self, k: int = 10, kind: str | None = None, by: str = "effect") -> pd.DataFrame:
        """The `k` rows of `df` with the largest `|by|` (optionally only `"head"` or `"mlp"` nodes).

        In attribution mode the exactly re-scored nodes rank before the estimated ones.
        """
        return self._ranked(k, kind, by)

    def top_components(self, k: int = 10, kind: str | None = None, by: str = "effect") -> list[Component]:
        """The nodes of [`top`][arithlens.circuits.path_patching.PathPatchingResult.top], as [`Component`][arithlens.core.names.Component]s."""
        return [self.nodes[i] for i in self._ranked(k, kind, by).index]

    def by(self, column: str = "op") -> pd.DataFrame:
        """Mean effect per node and value of a pair label (e.g. `op`)."""
        if self.pairs is None or column not in self.pairs.to_frame():
            raise ValueError(f"column={column!r} is not a label of the pairs; choose from {list(self.pairs.to_frame().columns) if self.pairs is not None else []}")
        labels = self.pairs.to_frame()[column].astype(str).to_numpy()
        frames = []
        for value in dict.fromkeys(labels):
            idx = torch.tensor((labels == value).nonzero()[0].tolist())
            frame = self.df[["layer", "node", "name", "kind", "head"]].copy()
            frame[column] = value
            frame["effect"] = self.effects[:, idx].mean(1).numpy()
            frame["n"] = len(idx)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def agreement(self, exact_result: "PathPatchingResult", k: int = 10) -> Agreement:
        """Rank agreement (by `|effect|`) of this attribution result with `exact_result`, the exact run on the same pairs and nodes."""
        if self.estimated_effects is None:
            raise ValueError("agreement compares an attribution result (estimate='attribution') with an exact one; this result is exact")
        if not isinstance(exact_result, PathPatchingResult) or exact_result.estimated_effects is not None:
            raise ValueError("exact_result must be the PathPatchingResult of an exact run (estimate='exact')")
        if set(exact_result.nodes) != set(self.nodes) or exact_result.effects.shape != self.effects.shape:
            raise ValueError("exact_result must patch the same nodes over the same pairs as this result")
        where = {n: i for i, n in enumerate(exact_result.nodes)}
        true = exact_result.effects[torch.tensor([where[n] for n in self.nodes])]
        mean = lambda e: e.mean(1).nan_to_num(0.0).numpy()  # noqa: E731
        return attribution.agreement(mean(self.estimated_effects), mean(true), mean(self.effects), k, rank_by=np.abs)

    def plot(self, value: str = "effect", **kwargs: Any) -> Any:
        """Heatmap over layers x (heads, MLP) of `value`."""
        import plotly.graph_objects as go

        numeric = [c for c in ("effect", "effect_sem", "logit_change", "logprob_change", "effect_estimate") if c in self.df]
        value = validate.choice(value, "value", numeric)
        cols = [str(h) for h in range(self.n_heads)] + [MLP]
        grid = self.df.pivot_table(index="layer", columns="node", values=value, dropna=False).reindex(columns=cols)
        vmax = float(self.df[value].abs().max())
        vmax = vmax if vmax == vmax and vmax > 0 else 1.0
        label = value.replace("_", " ")
        fig = go.Figure(
            go.Heatmap(
                z=grid.values,
                x=[f"head {c}" if c != MLP else "MLP" for c in grid.columns],
                y=list(grid.index),
                zmin=-vmax,
                zmax=vmax,
                colorscale="RdBu_r",
                colorbar={"title": label},
                hovertemplate="layer %{y} %{x}<br>" + label + " %{z:.4f}<extra></extra>",
            )
        )
        fig.update_xaxes(title_text="node (head or MLP)")
        fig.update_yaxes(title_text="layer", autorange="reversed")
        kind = "Path" if self.method == "path" else "Activation"
        fig.update_layout(
            title=f"{kind} patching: {label} (n={len(self.pairs) if self.pairs is not None else '?'} pairs"
            + (", attribution estimate with top nodes re-scored" if self.estimate != "exact" else "") + ")",
            height=max(350, 18 * self.n_layers + 120),
            **kwargs,
        )
        return fig


@dataclass(frozen=True, kw_only=True)
class PathPatching(Analysis):
    """Algorithm 1: the causal effect of every head and MLP on the ground-truth logit.

    Args:
        method: `"path"` (others frozen at the reference: direct path to the logits,
            Algorithm 1) or `"activation"` (downstream nodes recompute).
        position: `"last"` (END, the paper) or `"all"` positions (only activation patching
            differs; for `"path"` the two coincide).
        nodes: Nodes to patch (default all): [`Component`][arithlens.core.names.Component]s, `"L.H"`,
            `"MLP L"`, `(layer, head)` or `(layer, "mlp")`.
        batch_size: Pairs per forward.
        max_rows: Most (replica x pair) rows in one activation-patching forward.
        logprobs: Also report `logprob_change` (always cheap for `"activation"`).
        estimate: `"exact"` (default) or `"attribution"` (every node estimated from
            gradients, the top `rescore` by `|effect|` re-scored exactly).
        rescore: Nodes re-scored exactly in attribution mode (0: estimates only).
        progress: Show a progress bar.
    """

    method: Literal["path", "activation"] = "path"
    position: names.Position = "last"
    nodes: Sequence[Any] | None = None
    batch_size: int = 32
    max_rows: int = 256
    logprobs: bool = False
    estimate: Literal["exact", "attribution"] = "exact"
    rescore: int = 20
    progress: bool = True

    @classmethod
    def paper(cls, **changes: Any) -> "PathPatching":
        """Algorithm 1 as written: every head and MLP, its END output replaced by the counterfactual's,
        every other node frozen at the reference, exact; the data are
        [`data.zhang`][arithlens.data.zhang]'s pairs."""
        return cls(**{"method": "path", "position": "last", "nodes": None, "estimate": "exact", **changes})

    def __post_init__(self) -> None:
        validate.choice(self.method, "method", METHODS)
        object.__setattr__(self, "position", names.check_position(self.position))
        if self.nodes is not None:
            object.__setattr__(self, "nodes", tuple(parse_components(self.nodes, "nodes")))
        object.__setattr__(self, "batch_size", validate.positive_int(self.batch_size, "batch_size"))
        object.__setattr__(self, "max_rows", validate.positive_int(self.max_rows, "max_rows"))
        object.__setattr__(self, "logprobs", validate.boolean(self.logprobs, "logprobs") or self.method == "activation")
        validate.choice(self.estimate, "estimate", ESTIMATES)
        object.__setattr__(self, "rescore", validate.non_negative_int(self.rescore, "rescore"))
        object.__setattr__(self, "progress", validate.boolean(self.progress, "progress"))

    def hook_names(self, model: Any) -> set[str]:
        """What the reference run must hold: node outputs at END and the final residual (`"path"`), or the residual entering each node layer (`"activation"`, every position)."""
        layers = sorted({n.layer for n in check_nodes(model, self.nodes)})
        final = {names.resid_post(model.n_layers - 1)}
        if self.method == "path":
            return final | {names.z(L) for L in layers} | {names.mlp_out(L) for L in layers}
        return final | {names.resid_pre(L) for L in layers}

    def cache_positions(self, model: Any) -> str:
        """`"all"` for activation patching (it restarts from whole sequences), else `"last"`."""
        return "all" if self.method == "activation" else "last"

    @torch.no_grad()
    def run(self, model: Any, data: Any, *, cache: Any = None) -> PathPatchingResult:
        """Patch every node for every pair of `data` (pairs, a dataset or prompts).

        `cache`: an [`DatasetCache`][arithlens.core.cache.DatasetCache] of the reference
        prompts holding [`hook_names`][arithlens.circuits.path_patching.PathPatching.hook_names]
        (`positions="all"` for `"activation"`); the reference forward is then skipped. The
        counterfactual prompts always run.
        """

        model = load_model(model)
        model.writes.refuse(
            "PathPatching", "its effect is a ratio of final logits, which this model soft-caps", parallel=False, post_norm=False,
        )
        if self.method == "path":
            model.writes.refuse(
                "PathPatching(method='path')", "the direct path freezes a head's output z·W_O on its way to the logits, "
                "which a post-attention norm rescales per position; use method='activation'", parallel=False, softcap=False,
            )
        nodes = check_nodes(model, self.nodes)
        pairs = as_pairs(model, data)
        if cache is not None:  # checked like every analysis's; without one, each batch runs its own reference pass
            self.prepare(model, pairs, cache)
        readout = Readout(model)
        n = len(pairs)
        logit_o, logprob_o = torch.zeros(n), torch.zeros(n)
        logit_p, logprob_p = torch.zeros(len(nodes), n), torch.full((len(nodes), n), float("nan"))
        exact = torch.zeros(len(nodes), dtype=torch.bool)
        estimated = None
        batches = [(rows, Batch(model, pairs, rows, ref, nodes, self, cache)) for rows, ref in model.batches(pairs.reference_ids, self.batch_size)]
        if self.estimate == "attribution":
            est, logit_o, logprob_o = self._attribute(batches, readout, len(nodes), n)
            estimated = est / logit_o[None]
            logit_p = logit_o[None] + est
            todo = attribution.candidates(estimated.mean(1).abs().nan_to_num(0.0), self.rescore).tolist()
        else:
            todo = list(range(len(nodes)))
        if todo:
            lo, lp, logit_o, logprob_o = self._exact(batches, readout, nodes, todo, n)
            logit_p[torch.tensor(todo)], logprob_p[torch.tensor(todo)] = lo, lp
            exact[todo] = True
        validate.check_finite(logit_p[exact], "the patched logits")
        effects = (logit_p - logit_o[None]) / logit_o[None]
        df = pd.DataFrame(
            {
                "layer": [nd.layer for nd in nodes],
                "node": [MLP if nd.is_mlp else str(nd.head) for nd in nodes],
                "name": [nd.name for nd in nodes],
                "kind": [nd.kind for nd in nodes],
                "head": [-1 if nd.is_mlp else nd.head for nd in nodes],
                "effect": effects.mean(1).numpy(),
                "effect_sem": (effects.std(1) / n**0.5).nan_to_num(0.0).numpy() if n > 1 else 0.0,
                "logit_change": (logit_p - logit_o[None]).mean(1).numpy(),
                "logprob_change": (logprob_p - logprob_o[None]).mean(1).numpy(),
                "n": n,
                "estimated": (~exact).numpy(),
            }
        )
        if estimated is not None:
            df["effect_estimate"] = estimated.mean(1).numpy()
        if not self.logprobs:
            df = df.drop(columns=["logprob_change"])
            logprob_p = None
        return PathPatchingResult(
            df=df, nodes=nodes, effects=effects, logit_o=logit_o, logit_p=logit_p, logprob_o=logprob_o,
            logprob_p=logprob_p, exact=exact, estimated_effects=estimated, pairs=pairs, method=self.method,
            position=self.position, estimate=self.estimate, n_layers=model.n_layers, n_heads=model.n_heads,
        )  # fmt: skip


    def _attribute(self, batches: list, readout: Readout, n_nodes: int, n: int) -> tuple[torch.Tensor, ...]:
        """Estimated logit changes `[node, pair]` and the reference logit / log-prob `[pair]`.

        Under `torchrun` each rank takes whole batches (as one process batches them, so the
        numbers are identical) and every rank gets all pairs back.
        """
        rows_done, est, logit_o, logprob_o = [], [], [], []
        for rows, batch in tqdm(distributed.shard(batches), desc=f"{self.method} attribution", unit="batch", disable=not self.progress):
            est.append(batch.attribute(readout).T.cpu())
            logit_o.append(batch.logit_o.cpu())
            logprob_o.append(batch.logprob_o.cpu())
            rows_done.append(rows)
            batch.release()
        parts = _cat(rows_done, (0,)).long(), (_cat(est, (0, n_nodes)), _cat(logit_o, (0,)), _cat(logprob_o, (0,)))
        est_all, lo, lp = distributed.gather_rows(*parts, n=n)
        return est_all.T, lo, lp

    def _exact(self, batches: list, readout: Readout, nodes: list[Component], todo: list[int], n: int) -> tuple[torch.Tensor, ...]:
        """Patched logit and log-prob `[len(todo), pair]`, and the reference logit / log-prob `[pair]`.

        Under `torchrun`, path patching splits whole batches of pairs across ranks and
        activation patching whole layers (each rank then runs every batch's reference and
        counterfactual forwards): either way a node is computed exactly as in one process.
        """
        by_batch = self.method == "path"
        if by_batch:
            mine, my_todo = distributed.shard(batches), todo
        else:
            my_layers = set(distributed.shard(sorted({nodes[i].layer for i in todo})))
            mine, my_todo = batches, [i for i in todo if nodes[i].layer in my_layers]
        lo, lp = torch.zeros(len(my_todo), n), torch.full((len(my_todo), n), float("nan"))
        logit_o, logprob_o = torch.zeros(n), torch.zeros(n)
        steps = len(mine) * (1 if by_batch else len({nodes[i].layer for i in my_todo}))
        unit = "batch" if by_batch else "layer-batch"
        with tqdm(total=steps, desc=f"{self.method} patching (exact)", unit=unit, disable=not self.progress) as bar:
            for rows, batch in mine:
                if my_todo:
                    lo[:, rows], lp[:, rows] = batch.exact(readout, my_todo, bar)
                else:  # a rank without layers still reads the reference logits
                    batch.refc()
                logit_o[rows], logprob_o[rows] = batch.logit_o.cpu(), batch.logprob_o.cpu()
                batch.release()
        if by_batch:
            done = _cat([r for r, _ in mine], (0,)).long()
            lo_t, lp_t, logit_o, logprob_o = distributed.gather_rows(done, (lo[:, done].T, lp[:, done].T, logit_o[done], logprob_o[done]), n=n)
            return lo_t.T, lp_t.T, logit_o, logprob_o
        slot = {i: j for j, i in enumerate(todo)}
        where = torch.tensor([slot[i] for i in my_todo], dtype=torch.long)
        lo, lp = distributed.gather_rows(where, (lo, lp), n=len(todo))
        return lo, lp, logit_o, logprob_o


def _cat(parts: list[torch.Tensor], empty: tuple[int, ...]) -> torch.Tensor:
    """`torch.cat` that gives an empty `empty`-shaped tensor for a rank with no batches."""
    return torch.cat(parts) if parts else torch.empty(empty)


class Batch:
    """One batch of pairs: reference and counterfactual activations on the device, and the patched logits."""

    def __init__(self, model: Any, pairs: CounterfactualPairs, rows: torch.Tensor, ref: torch.Tensor, nodes: list[Component], config: PathPatching, cache: Any):
        self.model, self.rows, self.ref, self.nodes, self.config, self.cache = model, rows, ref, nodes, config, cache
        self.cf = torch.tensor([list(pairs.counterfactual_ids[i]) for i in rows.tolist()], device=model.device)
        self.layers = sorted({nd.layer for nd in nodes})
        self.target_given = pairs.target_ids[rows].clone()
        self.wanted = sorted(config.hook_names(model))
        self._refc: dict[str, torch.Tensor] | None = None
        self._cfc: dict[str, torch.Tensor] | None = None

    def release(self) -> None:
        """Drop the captured activations (memory stays bounded by one batch)."""
        self._refc = self._cfc = None

    # -------------------------------------------------------------- captures
    def refc(self) -> dict[str, torch.Tensor]:
        """Reference activations (all positions, or the last for cached `"path"` runs) and the target."""
        if self._refc is None:
            model, final, wanted = self.model, names.resid_post(self.model.n_layers - 1), self.wanted
            if self.cache is not None:
                pick = self.rows.tolist()
                get = (lambda h: torch.stack([self.cache.per_position(h)[r] for r in pick])) if self.cache.positions == "all" else (lambda h: self.cache.last(h)[self.rows][:, None])
                found = {h: get(h).to(model.device, model.bridge.W_U.dtype) for h in wanted}
            else:
                found = forward.capture(model, self.ref, wanted)
            logits = model.final_logits(found[final][:, -1]).float()
            target = self.target_given.to(logits.device)  # where the logits are (sharded models too)
            target = torch.where(target >= 0, target, logits.argmax(-1))
            self.target = target
            self.logit_o = logits.gather(-1, target[:, None])[:, 0]
            self.logprob_o = self.logit_o - logits.logsumexp(-1)
            self._refc = found
        return self._refc

    def cfc(self) -> dict[str, torch.Tensor]:
        """Counterfactual node outputs (every position)."""
        if self._cfc is None:
            hooks = [f(L) for L in self.layers for f in (names.z, names.mlp_out)]
            self._cfc = forward.capture(self.model, self.cf, hooks, stop_at_layer=max(self.layers) + 1)
        return self._cfc

    def deltas(self, which: list[int]) -> Float[torch.Tensor, "node batch d_model"]:
        """`out_c(n) - out_r(n)` at END, through `W_O` for heads."""
        refc, cfc, W_O = self.refc(), self.cfc(), self.model.bridge.W_O
        device = refc[names.resid_post(self.model.n_layers - 1)].device
        out = []
        for i in which:
            nd = self.nodes[i]
            if nd.is_mlp:
                h = names.mlp_out(nd.layer)
                out.append((cfc[h][:, -1] - refc[h][:, -1]).to(device))
            else:
                h = names.z(nd.layer)
                dz = cfc[h][:, -1, nd.head] - refc[h][:, -1, nd.head]
                out.append((dz @ W_O[nd.layer, nd.head].to(dz.device)).to(device))
        return torch.stack(out)

    # -------------------------------------------------------------- exact
    def exact(self, readout: Readout, which: list[int], bar: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Patched target logit and log-prob `[len(which), batch]` of the nodes `which`."""
        if self.config.method == "path":
            out = self._path(readout, which)
            bar.update(1)
            return out
        self.refc()
        device = self.target.device
        lo, lp = torch.zeros(len(which), len(self.rows), device=device), torch.zeros(len(which), len(self.rows), device=device)
        for L in sorted({self.nodes[i].layer for i in which}):
            here = [j for j, i in enumerate(which) if self.nodes[i].layer == L]
            idx = torch.tensor(here, device=device)
            lo[idx], lp[idx] = self._activation(L, [self.nodes[which[j]] for j in here])
            bar.update(1)
        return lo.cpu(), lp.cpu()

    def _path(self, readout: Readout, which: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        final = self.refc()[names.resid_post(self.model.n_layers - 1)][:, -1]
        resid = final[None] + self.deltas(which)  # [node, b, d_model]
        tgt = einops.repeat(self.target, "b -> node b", node=len(which))
        # The model's own final norm (its gain included), then the raw unembedding: Readout's
        # W_U carries an unfolded final norm's gain, which ln_final has applied already.
        normed = self.model.bridge.ln_final(resid).float()
        W_U, b_U = self.model.bridge.W_U.detach().float(), self.model.bridge.b_U.detach().float()
        w = einops.rearrange(W_U[:, tgt], "d node b -> node b d")
        logits = (normed * w).sum(-1) + b_U[tgt]
        if not self.config.logprobs:
            return logits.cpu(), torch.full_like(logits, float("nan")).cpu()
        logprob = torch.empty_like(logits)
        chunk = max(1, 512 // max(resid.shape[1], 1))  # <= 512 rows x vocab at once
        for s in range(0, len(which), chunk):
            full = self.model.final_logits(resid[s : s + chunk]).float()
            logprob[s : s + chunk] = full.gather(-1, tgt[s : s + chunk, :, None])[..., 0] - full.logsumexp(-1)
        return logits.cpu(), logprob.cpu()

    def _activation(self, layer: int, here: list[Component]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch each node of `layer` in its own replica; downstream recomputes."""
        resid, cfc, b = self.refc()[names.resid_pre(layer)], self.cfc(), len(self.rows)
        pos = slice(None) if self.config.position == "all" else slice(-1, None)
        out_logit, out_lp = [], []
        per = max(1, self.config.max_rows // b)
        for s in range(0, len(here), per):
            chunk = here[s : s + per]
            x = einops.repeat(resid, "b p d -> (r b) p d", r=len(chunk))
            heads = [(j, nd.head) for j, nd in enumerate(chunk) if not nd.is_mlp]
            mlps = [j for j, nd in enumerate(chunk) if nd.is_mlp]
            z_c, m_c = cfc[names.z(layer)], cfc[names.mlp_out(layer)]

            # Replica j owns rows j*b:(j+1)*b (the "(r b)" stacking above).
            def patch_z(z: Float[torch.Tensor, "rows pos head d_head"], hook: Any) -> torch.Tensor:
                for j, h in heads:
                    z[j * b : (j + 1) * b, pos, h] = z_c[:, pos, h].to(z)
                return z

            def patch_mlp(out: Float[torch.Tensor, "rows pos d_model"], hook: Any) -> torch.Tensor:
                for j in mlps:
                    out[j * b : (j + 1) * b, pos] = m_c[:, pos].to(out)
                return out

            hooks = ([(names.z(layer), patch_z)] if heads else []) + ([(names.mlp_out(layer), patch_mlp)] if mlps else [])
            with self.model.hooked(hooks):
                logits = forward.logits_from(self.model, x, layer).float()
            logits = einops.rearrange(logits, "(r b) v -> r b v", r=len(chunk))
            tgt = einops.repeat(self.target, "b -> r b 1", r=len(chunk))
            hit = logits.gather(-1, tgt)[..., 0]
            out_logit.append(hit)
            out_lp.append(hit - logits.logsumexp(-1))
        return torch.cat(out_logit), torch.cat(out_lp)

    # -------------------------------------------------------------- attribution
    def attribute(self, readout: Readout) -> Float[torch.Tensor, "node batch"]:
        """First-order estimate of `logit_p - logit_o` for every node."""
        everything = list(range(len(self.nodes)))
        if self.config.method == "path":
            final = self.refc()[names.resid_post(self.model.n_layers - 1)][:, -1].float()
            with torch.enable_grad():
                v = final.detach().requires_grad_(True)
                normed = self.model.bridge.ln_final(v.to(self.model.bridge.W_U.dtype)).float()
                W_U, b_U = self.model.bridge.W_U.detach().float(), self.model.bridge.b_U.detach().float()
                logit = (normed * W_U[:, self.target].T).sum(-1) + b_U[self.target]
                (grad,) = torch.autograd.grad(logit.sum(), [v])
            return einops.einsum(self.deltas(everything).float(), grad, "node b d, b d -> node b").cpu()
        self.refc()
        cfc, target, position = self.cfc(), self.target, self.config.position

        def score(logits: torch.Tensor) -> torch.Tensor:
            return logits.float().gather(-1, target[:, None])[:, 0]

        def patched(name: str, act: torch.Tensor) -> torch.Tensor:
            return cfc[name] if position == "all" else cfc[name][:, -1:]

        hooks = [f(L) for L in self.layers for f in (names.z, names.mlp_out)]
        found, _ = attribution.effects(self.model, self.ref, hooks, score, patched, position, self.layers[0])
        return torch.stack(
            [(found[names.mlp_out(nd.layer)] if nd.is_mlp else found[names.z(nd.layer)][:, nd.head]).to(target.device) for nd in self.nodes]
        ).cpu()
