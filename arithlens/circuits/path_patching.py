"""Key-component identification by path patching — Zhang et al. (ICML 2024) §4.1, Algorithm 1.

Nodes are every attention head (query-head granularity: on GQA models one query head,
not its shared KV group) and every MLP layer. For each reference / counterfactual pair
(:mod:`~arithlens.circuits.counterfactual`) and each node ``n`` the node's output at the
END position (the last prompt token) is replaced by its output on the counterfactual
``X_c`` and the ground-truth token's logit is read:

    s_n = (logit_p - logit_o) / logit_o,    effect_n = mean over pairs of s_n

``logit_o`` is the reference logit of the ground-truth token ``C`` (the case's target;
the model's prediction where a prompt has none) and ``logit_p`` the patched one.

Two definitions of "patched" (``method``):

* ``"path"`` (default; Algorithm 1 literally: ``A'_r(n) <- A_c(n)``, ``A'_r(k) <-
  A_r(k)`` for every other node ``k``): every other node's output is *frozen* at its
  reference value, so the change reaches the logits only along the direct path from
  the patched node through the residual stream; the final norm is recomputed. This
  equals adding ``(out_c(n) - out_r(n))`` to the reference's final residual at END
  (``out`` = ``z_h @ W_O[h]`` for a head, ``hook_mlp_out`` for an MLP), which is how it
  is computed: two forwards per batch of pairs, then one vectorised norm + unembedding
  of the target column for all nodes. Patching every position instead of END gives
  the same number here (later nodes are frozen), so ``position`` does not matter.
* ``"activation"``: plain activation patching: downstream nodes recompute from the
  patched residual (total effect through every path). The forward restarts at the
  patched layer from the cached reference residual (``start_at_layer``), with all
  heads and the MLP of a layer patched in one forward over replicas stacked
  node-by-pair. ``position="all"`` patches the node's output at every position
  (the pairs align token by token), ``"end"`` at END only.

Logits are the bridge's (compatibility mode centres the unembedding, so a logit is the
HF logit minus its mean over the vocabulary; the paper's ratio is taken on these).
``logit_change`` (``logit_p - logit_o``, no division) is also reported, and with
``logprobs=True`` ``logprob_change`` (the target's log-probability; for ``"path"`` this
costs a full-vocabulary unembedding per node and pair): the ratio is unstable when
``logit_o`` is near zero.

TransformerLens's :mod:`transformer_lens.patching` (``generic_activation_patch``)
implements the ``"activation"`` definition with one forward per patched index; here the
nodes of a layer share one batched forward instead (the tests check both definitions
against a literal per-node, per-pair loop of hooks).

Example::

    import arithlens
    from arithlens import data
    from arithlens.circuits import PathPatching

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3],
                            forms=["numeral"], n_per_op=10)
    result = PathPatching().run(model, cases)    # builds the counterfactual pairs
    result.top(5)                                 # strongest nodes by |effect|
    result.plot()                                 # layers x (heads + MLP) heatmap
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from arithlens.circuits.counterfactual import CounterfactualPairs, as_pairs
from arithlens.results import Result

MLP = "mlp"
Node = tuple[int, Any]  # (layer, head index) or (layer, "mlp")
METHODS = ("path", "activation")
POSITIONS = ("end", "all")


def node_label(node: Node) -> str:
    """``'L.H'`` for a head, ``'L.mlp'`` for an MLP."""
    return f"{node[0]}.{node[1]}"


def check_nodes(model: Any, nodes: Sequence[Node] | None) -> list[Node]:
    """Validate nodes; default every head and every MLP, in layer order (heads, then MLP)."""
    if nodes is None:
        return [(L, h) for L in range(model.n_layers) for h in [*range(model.n_heads), MLP]]
    out = []
    for node in nodes:
        if not isinstance(node, (tuple, list)) or len(node) != 2:
            raise ValueError(f"node {node!r} is not (layer, head) or (layer, 'mlp')")
        L, h = node
        if h == MLP:
            out.append((model.check_layer(int(L)), MLP))
        elif isinstance(h, int) or (hasattr(h, "__index__") and not isinstance(h, str)):
            out.append(model.check_head(int(L), int(h)))
        else:
            raise ValueError(f"node {node!r}: the second entry must be a head index or 'mlp'")
    if not out:
        raise ValueError("no nodes to patch: nodes is empty")
    return out


def target_logits(
    model: Any, resid: Float[torch.Tensor, "... d_model"], target: Int[torch.Tensor, "..."]
) -> Float[torch.Tensor, "..."]:
    """The model's logit of ``target`` for each residual vector: final norm, then one W_U column."""
    normed = model.bridge.ln_final(resid)
    w = model.bridge.W_U[:, target.to(model.device)]  # [d_model, ...]
    w = einops.rearrange(w, "d ... -> ... d")
    logit = (normed * w).sum(-1)
    b_u = getattr(model.bridge, "b_U", None)
    return logit + b_u[target.to(model.device)] if b_u is not None else logit


@dataclass
class PathPatchingResult(Result):
    """Causal effect of every node.

    Attributes:
        df: One row per node: ``layer, node`` (head index as text, or ``"mlp"``),
            ``kind`` (head / mlp), ``head`` (-1 for an MLP), ``effect`` (mean ``s_n``),
            ``effect_sem``, ``logit_change``, ``logprob_change``, ``n`` (pairs).
        nodes: The nodes, in ``df`` order.
        effects: ``s_n`` per node and pair, ``[node, pair]``.
        logit_o: Reference logit of the ground-truth token per pair.
        logit_p: Patched logit per node and pair.
        pairs: The counterfactual pairs used.
    """

    nodes: list[Node] = field(default_factory=list)
    effects: torch.Tensor = field(default=None, repr=False)
    logit_o: torch.Tensor = field(default=None, repr=False)
    logit_p: torch.Tensor = field(default=None, repr=False)
    logprob_o: torch.Tensor = field(default=None, repr=False)
    logprob_p: torch.Tensor = field(default=None, repr=False)
    pairs: CounterfactualPairs = field(default=None, repr=False)
    method: str = "path"
    position: str = "end"
    n_layers: int = 0
    n_heads: int = 0

    def top(self, n: int = 10, kind: str | None = None, by: str = "effect") -> list[Node]:
        """The ``n`` nodes with the largest ``|by|`` (optionally only heads or only MLPs)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if kind not in (None, "head", MLP):
            raise ValueError(f"kind {kind!r} is not None, 'head' or 'mlp'")
        df = self.df if kind is None else self.df[self.df["kind"] == kind]
        order = df[by].abs().sort_values(ascending=False, kind="stable").index[:n]
        return [self.nodes[i] for i in order]

    def by(self, column: str = "op") -> pd.DataFrame:
        """Mean effect per node and value of a pair label (e.g. ``op``)."""
        labels = self.pairs.df[column].astype(str).to_numpy() if self.pairs is not None else []
        frames = []
        for value in dict.fromkeys(labels):
            idx = torch.tensor((labels == value).nonzero()[0].tolist())
            frame = self.df[["layer", "node", "kind", "head"]].copy()
            frame[column] = value
            frame["effect"] = self.effects[:, idx].mean(1).numpy()
            frame["n"] = len(idx)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def plot(self, value: str = "effect", **kwargs: Any) -> Any:
        """Heatmap over layers x (heads, MLP) of ``value``."""
        import plotly.graph_objects as go

        cols = [str(h) for h in range(self.n_heads)] + [MLP]
        grid = self.df.pivot_table(index="layer", columns="node", values=value).reindex(columns=cols)
        vmax = float(self.df[value].abs().max()) or 1.0
        fig = go.Figure(
            go.Heatmap(
                z=grid.values,
                x=[f"head {c}" if c != MLP else "MLP" for c in grid.columns],
                y=list(grid.index),
                zmin=-vmax,
                zmax=vmax,
                colorscale="RdBu_r",
                colorbar={"title": value},
                hovertemplate="layer %{y} %{x}<br>" + value + " %{z:.4f}<extra></extra>",
            )
        )
        fig.update_yaxes(title_text="layer", autorange="reversed")
        fig.update_layout(
            title=f"{'Path' if self.method == 'path' else 'Activation'} patching: {value.replace('_', ' ')} "
            f"(n={len(self.pairs) if self.pairs is not None else '?'} pairs)",
            height=max(350, 18 * self.n_layers + 120),
            **kwargs,
        )
        return fig


class PathPatching:
    """Algorithm 1: the causal effect of every head and MLP on the ground-truth logit.

    Args:
        method: ``"path"`` (others frozen at the reference: direct path to the logits,
            Algorithm 1) or ``"activation"`` (downstream nodes recompute).
        position: ``"end"`` (the paper) or ``"all"`` positions (activation patching only
            differs; for ``"path"`` the two coincide).
        nodes: ``(layer, head)`` / ``(layer, "mlp")`` nodes to patch (default all).
        batch_size: Pairs per forward.
        max_rows: Most (replica x pair) rows in one activation-patching forward.
        logprobs: Also report ``logprob_change`` (always cheap for ``"activation"``).
        progress: Show a progress bar.
    """

    def __init__(
        self,
        method: Literal["path", "activation"] = "path",
        position: Literal["end", "all"] = "end",
        nodes: Sequence[Node] | None = None,
        batch_size: int = 32,
        max_rows: int = 256,
        logprobs: bool = False,
        progress: bool = True,
    ):
        if method not in METHODS:
            raise ValueError(f"method {method!r} is not one of {METHODS}")
        if position not in POSITIONS:
            raise ValueError(f"position {position!r} is not one of {POSITIONS}")
        if batch_size < 1 or max_rows < 1:
            raise ValueError(f"batch_size and max_rows must be positive, got {batch_size}, {max_rows}")
        self.method, self.position, self.nodes = method, position, nodes
        self.batch_size, self.max_rows, self.progress = batch_size, max_rows, progress
        self.logprobs = logprobs or method == "activation"

    @torch.no_grad()
    def run(self, model: Any, data: Any) -> PathPatchingResult:
        """Patch every node for every pair of ``data`` (pairs, a dataset or prompts)."""
        from arithlens.models import load_model

        model = load_model(model)
        nodes = check_nodes(model, self.nodes)
        pairs = as_pairs(model, data)
        n_pairs = len(pairs)
        index = {nd: i for i, nd in enumerate(nodes)}
        logit_o = torch.zeros(n_pairs)
        logprob_o = torch.zeros(n_pairs)
        logit_p = torch.zeros(len(nodes), n_pairs)
        logprob_p = torch.zeros(len(nodes), n_pairs)
        layers = sorted({L for L, _ in nodes})
        batches = list(model.batches(pairs.reference_ids, self.batch_size))
        bar = tqdm(total=len(batches) * (1 if self.method == "path" else len(layers)), desc=f"{self.method} patching", disable=not self.progress)
        try:
            for rows, ref in batches:
                cf = torch.tensor([list(pairs.counterfactual_ids[i]) for i in rows.tolist()], device=model.device)
                refc = _capture(model, ref, layers, full=True)
                target = pairs.target_ids[rows].clone()
                missing = target < 0
                target[missing] = refc["logits"].argmax(-1).cpu()[missing]
                lp_all = refc["logits"].float().log_softmax(-1)
                logit_o[rows] = refc["logits"].float().gather(-1, target[:, None].to(model.device))[:, 0].cpu()
                logprob_o[rows] = lp_all.gather(-1, target[:, None].to(model.device))[:, 0].cpu()
                cfc = _capture(model, cf, layers, full=self.method == "activation" and self.position == "all")
                if self.method == "path":
                    lo, lp = self._path(model, refc, cfc, nodes, target)
                    logit_p[:, rows], logprob_p[:, rows] = lo, lp
                    bar.update(1)
                else:
                    for L in layers:
                        here = [nd for nd in nodes if nd[0] == L]
                        lo, lp = self._activation(model, refc, cfc, L, here, target)
                        for j, nd in enumerate(here):
                            logit_p[index[nd], rows], logprob_p[index[nd], rows] = lo[j], lp[j]
                        bar.update(1)
        finally:
            bar.close()
        effects = (logit_p - logit_o[None]) / logit_o[None]
        df = pd.DataFrame(
            {
                "layer": [L for L, _ in nodes],
                "node": [str(h) for _, h in nodes],
                "kind": ["mlp" if h == MLP else "head" for _, h in nodes],
                "head": [-1 if h == MLP else int(h) for _, h in nodes],
                "effect": effects.mean(1).numpy(),
                "effect_sem": (effects.std(1) / max(n_pairs, 1) ** 0.5).nan_to_num(0.0).numpy(),
                "logit_change": (logit_p - logit_o[None]).mean(1).numpy(),
                "logprob_change": (logprob_p - logprob_o[None]).mean(1).numpy(),
                "n": n_pairs,
            }
        )
        if not self.logprobs:
            df = df.drop(columns=["logprob_change"])
            logprob_p = None
        return PathPatchingResult(
            df=df,
            nodes=nodes,
            effects=effects,
            logit_o=logit_o,
            logit_p=logit_p,
            logprob_o=logprob_o,
            logprob_p=logprob_p,
            pairs=pairs,
            method=self.method,
            position=self.position,
            n_layers=model.n_layers,
            n_heads=model.n_heads,
        )

    def _path(self, model: Any, refc: dict, cfc: dict, nodes: list[Node], target: torch.Tensor):
        """Direct-path logits: the reference final residual plus one node's output change."""
        W_O = model.bridge.W_O  # [layer, head, d_head, d_model]
        deltas = []
        for L, h in nodes:
            if h == MLP:
                deltas.append(cfc["mlp"][L][:, -1] - refc["mlp"][L][:, -1])
            else:
                dz = cfc["z"][L][:, -1, h] - refc["z"][L][:, -1, h]
                deltas.append(dz @ W_O[L, h])
        resid = refc["final"][None, :, -1] + torch.stack(deltas)  # [node, b, d_model]
        tgt = einops.repeat(target, "b -> node b", node=len(nodes))
        logits = target_logits(model, resid, tgt).float()
        if not self.logprobs:
            return logits.cpu(), torch.zeros_like(logits).cpu()
        # log-prob needs the full softmax normaliser; chunk nodes to bound memory.
        logprob = torch.empty_like(logits)
        chunk = max(1, 512 // max(resid.shape[1], 1))  # <= 512 rows x vocab at once
        for s in range(0, len(nodes), chunk):
            full = model.final_logits(resid[s : s + chunk]).float()
            logprob[s : s + chunk] = full.gather(-1, tgt[s : s + chunk, :, None].to(full.device))[..., 0] - full.logsumexp(-1)
        return logits.cpu(), logprob.cpu()

    def _activation(self, model: Any, refc: dict, cfc: dict, layer: int, here: list[Node], target: torch.Tensor):
        """Patch each node of ``layer`` in its own replica; downstream recomputes."""
        b = refc["resid"][layer].shape[0]
        pos = slice(None) if self.position == "all" else slice(-1, None)
        out_logit, out_lp = [], []
        per = max(1, self.max_rows // b)
        for s in range(0, len(here), per):
            chunk = here[s : s + per]
            x = einops.repeat(refc["resid"][layer], "b p d -> (r b) p d", r=len(chunk))
            heads = [(j, h) for j, (_, h) in enumerate(chunk) if h != MLP]
            mlps = [j for j, (_, h) in enumerate(chunk) if h == MLP]
            z_c = cfc["z"][layer]
            m_c = cfc["mlp"][layer]

            # Replica j owns rows j*b:(j+1)*b (the "(r b)" stacking above).
            def patch_z(z: Float[torch.Tensor, "rows pos head d_head"], hook: Any) -> torch.Tensor:
                for j, h in heads:
                    z[j * b : (j + 1) * b, pos, h] = z_c[:, pos, h].to(z)
                return z

            def patch_mlp(out: Float[torch.Tensor, "rows pos d_model"], hook: Any) -> torch.Tensor:
                for j in mlps:
                    out[j * b : (j + 1) * b, pos] = m_c[:, pos].to(out)
                return out

            hooks = []
            if heads:
                hooks.append((f"blocks.{layer}.attn.hook_z", patch_z))
            if mlps:
                hooks.append((f"blocks.{layer}.hook_mlp_out", patch_mlp))
            with model.hooked(hooks):
                logits = model.last_logits(x, start_at_layer=layer).float()
            logits = einops.rearrange(logits, "(r b) v -> r b v", r=len(chunk))
            tgt = einops.repeat(target.to(logits.device), "b -> r b 1", r=len(chunk))
            out_logit.append(logits.gather(-1, tgt)[..., 0].cpu())
            out_lp.append(logits.log_softmax(-1).gather(-1, tgt)[..., 0].cpu())
        return torch.cat(out_logit), torch.cat(out_lp)


def _capture(model: Any, tokens: Int[torch.Tensor, "b pos"], layers: Sequence[int], full: bool) -> dict:
    """One forward: head outputs ``z``, MLP outputs, residual entering each layer, final residual.

    ``full`` keeps every position of ``z`` / MLP outputs (else the last only).
    """
    store: dict[str, dict[int, torch.Tensor]] = {"z": {}, "mlp": {}, "resid": {}}
    final: dict[str, torch.Tensor] = {}

    def grab(kind: str, layer: int, keep_all: bool):
        def fn(act: torch.Tensor, hook: Any) -> None:
            store[kind][layer] = (act if keep_all else act[:, -1:]).detach().clone()

        return fn

    def grab_final(act: torch.Tensor, hook: Any) -> None:
        final["final"] = act.detach().clone()

    hooks = [("ln_final.hook_in", grab_final)]
    for L in layers:
        hooks += [
            (f"blocks.{L}.attn.hook_z", grab("z", L, full)),
            (f"blocks.{L}.hook_mlp_out", grab("mlp", L, full)),
            (f"blocks.{L}.hook_resid_pre", grab("resid", L, True)),
        ]
    with model.hooked(hooks):
        logits = model.last_logits(tokens)
    return {**store, "final": final["final"], "logits": logits}
