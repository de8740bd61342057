"""Knockout validation by mean ablation — Zhang et al. (ICML 2024) §4.1.

The key nodes found by path patching are validated by *mean ablation* (Wang et al.,
2023): a node's activation is replaced by its average over the counterfactual data
``X_c`` — which removes the task information while keeping the activation's typical
magnitude — and the first-token accuracy on the reference prompts is compared with the
unablated model's, per op. The conditions reported:

* ``baseline`` — nothing ablated;
* ``key`` — all key nodes ablated together;
* ``key L.H`` / ``key L.mlp`` — each key node alone;
* ``random`` — as many random non-key nodes as there are key nodes (same numbers of
  heads and MLPs), averaged over ``n_random`` seeded draws: the control;
* ``rest`` — every node *except* the key ones (the paper's check that the others do
  not matter).

Node outputs: a head's ``z`` (``blocks.L.attn.hook_z``, query-head granularity —
:class:`~arithlens.interventions.MeanHead` semantics), an MLP's output
(``blocks.L.hook_mlp_out``, :class:`MeanMLP`). Means are per position over the
counterfactual prompts of each length (pairs align token by token), or the
last-position mean with ``position="last"``.

Example::

    import arithlens
    from arithlens import data
    from arithlens.circuits import Counterfactual, PathPatching, Knockout

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3],
                            forms=["numeral"], n_per_op=20)
    pairs = Counterfactual().run(model, cases)
    patching = PathPatching().run(model, pairs)
    result = Knockout(top_n=8).run(model, pairs, patching)
    result.df; result.plot()
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Float

from arithlens.circuits.counterfactual import CounterfactualPairs, as_pairs
from arithlens.circuits.path_patching import MLP, Node, PathPatching, PathPatchingResult, check_nodes, node_label
from arithlens.interventions import ActivationMeans, HeadMeans, Intervention, _check_position, _UsesMeans, _where, z_hook
from arithlens.results import Result

if TYPE_CHECKING:
    from arithlens.models import Hook, LensModel


def mlp_out_hook(layer: int) -> str:
    """Hook name of layer ``layer``'s MLP output."""
    return f"blocks.{layer}.hook_mlp_out"


@dataclass
class MLPMeans(ActivationMeans):
    """Mean MLP outputs of one layer over reference cases (the MLP twin of :class:`HeadMeans`).

    ``by_length[n]``: per-position mean over the reference prompts of ``n`` tokens,
    ``[pos, d_model]``; ``last``: last-position mean over all of them, ``[d_model]``.
    """

    by_length: dict[int, Float[torch.Tensor, "pos d_model"]]
    last: Float[torch.Tensor, "d_model"]

    @staticmethod
    def hook_name(layer: int) -> str:
        """``blocks.L.hook_mlp_out``."""
        return mlp_out_hook(layer)


@dataclass(frozen=True)
class MeanMLP(_UsesMeans, Intervention):
    """Replace layer ``layer``'s MLP output by its mean over ``reference`` data."""

    layer: int
    reference: Any = field(repr=False)
    position: str = "all"

    means_class = MLPMeans

    def hooks(self, model: "LensModel") -> list["Hook"]:
        model.check_layer(self.layer)
        position, means = _check_position(self.position), self.means(model)

        def fn(out: Float[torch.Tensor, "batch pos d_model"], hook: Any) -> torch.Tensor:
            _where(out, position)[:] = means.for_length(out.shape[1], position).to(out)
            return out

        return [(mlp_out_hook(self.layer), fn)]

    def __repr__(self) -> str:
        return f"MeanMLP({self.layer})"


@dataclass(frozen=True)
class MeanNodes(Intervention):
    """Mean-ablate many nodes at once: one hook per layer (heads by mask, MLP whole).

    ``head_means`` / ``mlp_means``: per-layer :class:`HeadMeans` / :class:`MLPMeans`
    (of the counterfactual data) covering every layer of ``nodes``.
    """

    nodes: tuple[Node, ...]
    head_means: dict[int, HeadMeans] = field(repr=False, default_factory=dict)
    mlp_means: dict[int, MLPMeans] = field(repr=False, default_factory=dict)
    position: str = "all"

    def hooks(self, model: "LensModel") -> list["Hook"]:
        nodes = check_nodes(model, list(self.nodes)) if self.nodes else []
        position = _check_position(self.position)
        hooks = []
        heads: dict[int, list[int]] = {}
        for L, h in nodes:
            if h == MLP:
                if L not in self.mlp_means:
                    raise ValueError(f"no MLP means for layer {L}")
                hooks.append(MeanMLP(L, self.mlp_means[L], position).hooks(model)[0])
            else:
                heads.setdefault(L, []).append(int(h))
        for L, hs in heads.items():
            if L not in self.head_means:
                raise ValueError(f"no head means for layer {L}")
            idx, means = torch.tensor(hs), self.head_means[L]

            def fn(z: Float[torch.Tensor, "batch pos head d_head"], hook: Any, idx=idx, means=means) -> torch.Tensor:
                mean = means.for_length(z.shape[1], position)[:, idx].to(z)  # [pos, k, d_head]
                _where(z, position)[:, :, idx.to(z.device)] = mean
                return z

            hooks.append((z_hook(L), fn))
        return hooks

    def __repr__(self) -> str:
        return f"MeanNodes({len(self.nodes)} nodes)"


@dataclass
class KnockoutResult(Result):
    """Accuracy per op under each ablation condition.

    Attributes:
        df: One row per (condition, op): ``condition, op, n, n_ablated, accuracy,
            baseline_accuracy, accuracy_drop`` (op ``"all"`` aggregates).
        key_nodes: The key nodes (top-n by |effect|).
        correct: ``{condition: [case] bool}`` (random: the first draw).
    """

    key_nodes: list[Node] = field(default_factory=list)
    correct: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def plot(self, **kwargs: Any) -> Any:
        import plotly.express as px

        fig = px.bar(
            self.df,
            x="condition",
            y="accuracy",
            color="op",
            barmode="group",
            range_y=[0, 1],
            hover_data=["n", "n_ablated", "accuracy_drop"],
            title="Mean-ablation knockout: accuracy with key nodes, random nodes or the rest ablated",
            **kwargs,
        )
        return fig


class Knockout:
    """Validate key nodes by mean ablation (means over the counterfactual prompts).

    Args:
        top_n: Number of key nodes (largest |effect|) taken from the patching result.
        nodes: Explicit key nodes instead (overrides ``top_n``).
        position: ``"all"`` positions (per-position means) or ``"last"``.
        individual: Also ablate each key node alone.
        n_random: Random non-key draws for the control (0: none).
        rest: Also ablate every non-key node.
        seed: Seed of the random draws.
    """

    def __init__(
        self,
        top_n: int = 10,
        nodes: Sequence[Node] | None = None,
        position: Literal["all", "last"] = "all",
        individual: bool = True,
        n_random: int = 3,
        rest: bool = True,
        seed: int = 0,
        progress: bool = True,
    ):
        if top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {top_n}")
        if n_random < 0:
            raise ValueError(f"n_random must be >= 0, got {n_random}")
        _check_position(position)
        self.top_n, self.nodes, self.position = top_n, nodes, position
        self.individual, self.n_random, self.rest, self.seed = individual, n_random, rest, seed
        self.progress = progress

    @torch.no_grad()
    def run(self, model: Any, data: Any, patching: PathPatchingResult | None = None) -> KnockoutResult:
        """Accuracy of the reference prompts of ``data`` under each condition."""
        from arithlens.models import load_model

        model = load_model(model)
        pairs: CounterfactualPairs = as_pairs(model, data)
        if self.nodes is not None:
            key = check_nodes(model, self.nodes)
        else:
            if patching is None:
                patching = PathPatching(progress=self.progress).run(model, pairs)
            key = patching.top(self.top_n)
        everything = check_nodes(model, None)
        others = [nd for nd in everything if nd not in key]
        layers = list(range(model.n_layers))
        head_means = HeadMeans.compute(model, pairs.counterfactual_ids, layers)
        mlp_means = MLPMeans.compute(model, pairs.counterfactual_ids, layers)

        def ablate(nodes: Sequence[Node]) -> MeanNodes:
            return MeanNodes(tuple(nodes), head_means, mlp_means, self.position)

        conditions: list[tuple[str, list[MeanNodes], int]] = [("baseline", [], 0), ("key", [ablate(key)], len(key))]
        if self.individual:
            conditions += [(f"key {node_label(nd)}", [ablate([nd])], 1) for nd in key]
        rng = random.Random(self.seed)
        n_heads = sum(1 for _, h in key if h != MLP)
        other_heads = [nd for nd in others if nd[1] != MLP]
        other_mlps = [nd for nd in others if nd[1] == MLP]
        draws = []
        for _ in range(self.n_random):
            if n_heads > len(other_heads) or len(key) - n_heads > len(other_mlps):
                break
            draws.append(rng.sample(other_heads, n_heads) + rng.sample(other_mlps, len(key) - n_heads))
        if draws:
            conditions.append(("random", [ablate(d) for d in draws], len(key)))
        if self.rest:
            conditions.append(("rest", [ablate(others)], len(others)))

        cases = [*pairs.cases]
        ops = pd.Series(pairs.ops)
        targets = pairs.target_ids
        data_ids = pairs.reference_ids
        base = model.run(data_ids, cache=False)
        scoring = torch.where(targets >= 0, targets, base.predictions)
        rows, correct = [], {}
        for name, variants, n_ablated in conditions:
            accs = []
            for k, iv in enumerate(variants or [None]):
                run = base if iv is None else model.run(data_ids, interventions=[iv], cache=False)
                ok = run.predictions == scoring
                accs.append(ok.float())
                if k == 0:
                    correct[name] = ok
            acc = torch.stack(accs).mean(0)  # per case, averaged over random draws
            for op in ["all", *dict.fromkeys(ops)]:
                mask = torch.ones(len(cases), dtype=torch.bool) if op == "all" else torch.tensor((ops == op).tolist())
                rows.append({"condition": name, "op": op, "n": int(mask.sum()), "n_ablated": n_ablated, "accuracy": float(acc[mask].mean())})
        df = pd.DataFrame(rows)
        base_acc = df[df["condition"] == "baseline"].set_index("op")["accuracy"]
        df["baseline_accuracy"] = df["op"].map(base_acc)
        df["accuracy_drop"] = df["baseline_accuracy"] - df["accuracy"]
        return KnockoutResult(df=df, key_nodes=key, correct=correct)
