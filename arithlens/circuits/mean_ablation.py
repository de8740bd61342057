"""Knockout validation by mean ablation — Zhang et al. (ICML 2024) §4.1.

The key nodes found by path patching are validated by *mean ablation* (Wang et al.,
2023): a node's activation is replaced by its average over the counterfactual data `X_c`
— which removes the task information while keeping the activation's typical magnitude —
and the first-token accuracy on the reference prompts is compared with the unablated
model's, per op. The conditions reported:

* `baseline` — nothing ablated;
* `key` — all key nodes ablated together;
* `key L.H` / `key MLP L` — each key node alone;
* `random` — as many random non-key nodes as there are key nodes (same numbers of heads
  and MLPs), averaged over `n_random` seeded draws: the control;
* `rest` — every node *except* the key ones (the paper's check that the others do not
  matter).

Component outputs: a head's `z` (`blocks.L.attn.hook_z`, query-head granularity —
[`MeanHead`][arithlens.core.interventions.MeanHead] semantics), an MLP's output
(`blocks.L.hook_mlp_out`, [`MeanMLP`][arithlens.circuits.mean_ablation.MeanMLP]). Means
are per position over the counterfactual prompts of each length (pairs align token by
token), or the last-position mean with `position="last"`; head and MLP means come from
one forward pass over the counterfactual prompts
([`compute_means`][arithlens.core.interventions.compute_means]). Accuracy counts a case as
correct when the prediction is its target (the unablated prediction where a prompt has
no answer); the unablated predictions are read off the reference's clean cache.

Example:
    ```python
    import arithlens
    from arithlens import data
    from arithlens.circuits import counterfactual_pairs, Knockout, PathPatching

    model = arithlens.load_model()
    pairs = counterfactual_pairs(model, data.zhang(model.tokenizer, n_per_op=20))
    patching = PathPatching().run(model, pairs)
    cache = model.cache(pairs)                      # the clean reference pass, reusable
    result = Knockout(k=8).run(model, pairs, patching, cache=cache)
    result.table()                                  # accuracy (%) per condition and op
    result.plot()
    ```
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int

from arithlens.core import names, validate
from arithlens.core.cache import DatasetCache
from arithlens.core.names import all_components, as_component, parse_components, top_components
from arithlens.circuits.counterfactual import as_pairs
from arithlens.core.interventions import ActivationMeans, HeadMeans, Intervention, MeanAblation, position_view, compute_means
from arithlens.core.names import Component, Position
from arithlens.analysis.base import Analysis
from arithlens.analysis.results import Result, percent
from arithlens.circuits.path_patching import PathPatching
from arithlens.core.loading import load_model

if TYPE_CHECKING:
    from arithlens.core.model import Hook, LensModel


@dataclass
class MLPMeans(ActivationMeans):
    """Mean MLP outputs of one layer over reference cases (the MLP twin of [`HeadMeans`][arithlens.core.interventions.HeadMeans]).

    Attributes:
        by_length: `{n: [pos, d_model]}` per-position mean over the reference prompts of `n` tokens.
        last: `[d_model]` last-position mean over all of them.
    """

    by_length: dict[int, Float[torch.Tensor, "pos d_model"]]
    last: Float[torch.Tensor, "d_model"]

    @staticmethod
    def hook_name(layer: int) -> str:
        """`blocks.L.hook_mlp_out`."""
        return names.mlp_out(layer)


@dataclass(frozen=True)
class MeanMLP(MeanAblation, Intervention):
    """Replace layer `layer`'s MLP output by its mean over `reference` data.

    `reference` is a dataset / prompts (means computed on first use, per model) or an
    [`MLPMeans`][arithlens.circuits.mean_ablation.MLPMeans] of that layer.
    """

    layer: int
    reference: Any = field(repr=False)
    position: str = "all"

    means_class = MLPMeans

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer", validate.non_negative_int(self.layer, "layer"))
        if self.reference is None:
            raise ValueError("MeanMLP needs reference data (prompts or a dataset) or an MLPMeans")
        names.check_position(self.position)

    def hooks(self, model: "LensModel", rows: Int[torch.Tensor, "batch"] | None = None) -> list["Hook"]:
        model.check_layer(self.layer)
        position, means = self.position, self.means(model)

        def fn(out: Float[torch.Tensor, "batch pos d_model"], hook: Any) -> torch.Tensor:
            position_view(out, position)[:] = means.for_length(out.shape[1], position).to(out)
            return out

        return [(names.mlp_out(self.layer), fn)]

    def __repr__(self) -> str:
        return f"MeanMLP({self.layer})"


@dataclass(frozen=True)
class MeanComponents(Intervention):
    """Mean-ablate many nodes at once: one hook per layer (heads by index, the MLP whole).

    Attributes:
        nodes: The [`Component`][arithlens.core.names.Component]s to ablate (`"L.H"`, `"MLP L"` and pairs accepted).
        head_means: Per-layer [`HeadMeans`][arithlens.core.interventions.HeadMeans] covering the heads' layers.
        mlp_means: Per-layer [`MLPMeans`][arithlens.circuits.mean_ablation.MLPMeans] covering the MLPs' layers.
        position: `"all"` positions or the `"last"` one.
    """

    nodes: tuple[Component, ...]
    head_means: dict[int, HeadMeans] = field(repr=False, default_factory=dict)
    mlp_means: dict[int, MLPMeans] = field(repr=False, default_factory=dict)
    position: str = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(as_component(n) for n in self.nodes))
        names.check_position(self.position)
        for nd in self.nodes:
            means = self.mlp_means if nd.is_mlp else self.head_means
            if nd.layer not in means:
                raise ValueError(f"no {'MLP' if nd.is_mlp else 'head'} means for layer {nd.layer} (needed by {nd.name})")

    def hooks(self, model: "LensModel", rows: Int[torch.Tensor, "batch"] | None = None) -> list["Hook"]:
        position, hooks = self.position, []
        heads: dict[int, list[int]] = {}
        for nd in self.nodes:
            nd.check(model)
            if nd.is_mlp:
                hooks += MeanMLP(nd.layer, self.mlp_means[nd.layer], position).hooks(model, rows)
            else:
                heads.setdefault(nd.layer, []).append(nd.head)
        for L, hs in heads.items():
            idx, means = torch.tensor(hs), self.head_means[L]

            def fn(z: Float[torch.Tensor, "batch pos head d_head"], hook: Any, idx=idx, means=means) -> torch.Tensor:
                mean = means.for_length(z.shape[1], position)[:, idx].to(z)  # [pos, k, d_head]
                position_view(z, position)[:, :, idx.to(z.device)] = mean
                return z

            hooks.append((names.z(L), fn))
        return hooks

    def __repr__(self) -> str:
        return f"MeanComponents({len(self.nodes)} nodes)"


@dataclass
class KnockoutResult(Result):
    """Accuracy per op under each ablation condition.

    Attributes:
        df: One row per (condition, op): `condition, op, n, n_ablated, accuracy,
            baseline_accuracy, accuracy_drop` (op `"all"` aggregates).
        key_nodes: The key nodes.
        random_nodes: The nodes of each random draw.
        correct: `{condition: [case] bool}` (random: the first draw).
        position: Where the means replaced the activations (`"all"` or `"last"`).
    """

    key_nodes: list[Component] = field(default_factory=list)
    random_nodes: list[list[Component]] = field(default_factory=list)
    correct: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    position: str = "all"

    def table(self) -> pd.DataFrame:
        """Accuracy (%) with one row per condition and one column per op (`all` first)."""
        frame = self.df.assign(accuracy=self.df["accuracy"].map(percent))
        wide = frame.pivot(index="condition", columns="op", values="accuracy")
        return wide.reindex(index=list(dict.fromkeys(self.df["condition"])), columns=list(dict.fromkeys(self.df["op"])))

    def top(self, k: int = 5) -> pd.DataFrame:
        """The `k` key nodes whose ablation alone costs the most accuracy (op `all`)."""
        k = validate.positive_int(k, "k")
        alone = self.df[self.df["condition"].str.startswith("key ") & (self.df["op"] == "all")]
        if alone.empty:
            raise ValueError("no key node was ablated alone: run Knockout(individual=True)")
        return alone.sort_values("accuracy_drop", ascending=False, kind="stable").head(k).reset_index(drop=True)

    def plot(self, **kwargs: Any) -> Any:
        """Grouped bars: accuracy per condition (x) and op (colour)."""
        import plotly.express as px

        return px.bar(
            self.df,
            x="condition",
            y="accuracy",
            color="op",
            barmode="group",
            range_y=[0, 1],
            hover_data=["n", "n_ablated", "accuracy_drop"],
            labels={"condition": "mean-ablated nodes", "accuracy": "first-token accuracy", "op": "operation"},
            title="Mean-ablation knockout: accuracy with key nodes, random nodes or the rest ablated",
            **kwargs,
        )


@dataclass(frozen=True, kw_only=True)
class Knockout(Analysis):
    """Validate key nodes by mean ablation (means over the counterfactual prompts).

    Args:
        k: Number of key nodes (largest |effect|) taken from the patching result.
        nodes: Explicit key nodes instead (overrides `k`): [`Component`][arithlens.core.names.Component]s,
            `"L.H"` / `"MLP L"` strings or `(layer, head)` / `(layer, None)` pairs.
        position: `"all"` positions (per-position means) or `"last"`.
        individual: Also ablate each key node alone.
        n_random: Random non-key draws for the control (0: none).
        rest: Also ablate every non-key node.
        seed: Seed of the random draws.
        progress: Show path patching's progress bar when it runs here.
    """

    k: int = 10
    nodes: Sequence[Any] | None = None
    position: Position = "all"
    individual: bool = True
    n_random: int = 3
    rest: bool = True
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", validate.positive_int(self.k, "k"))
        if self.nodes is not None:
            object.__setattr__(self, "nodes", tuple(parse_components(self.nodes, "nodes")))
        object.__setattr__(self, "position", names.check_position(self.position))
        object.__setattr__(self, "individual", validate.boolean(self.individual, "individual"))
        object.__setattr__(self, "n_random", validate.non_negative_int(self.n_random, "n_random"))
        object.__setattr__(self, "rest", validate.boolean(self.rest, "rest"))
        object.__setattr__(self, "seed", validate.integer(self.seed, "seed"))
        object.__setattr__(self, "progress", validate.boolean(self.progress, "progress"))

    def hook_names(self, model: "LensModel") -> set[str]:
        """No hooks: only the predictions of the reference's clean cache are read (the means come from a pass over the counterfactuals)."""
        return set()

    @torch.no_grad()
    def run(
        self, model: Any, data: Any, *, cache: DatasetCache | None = None, patching: Any | None = None
    ) -> KnockoutResult:
        """Accuracy of the reference prompts of `data` (pairs, a dataset or prompts) under each condition.

        Args:
            model: The model.
            data: [`CounterfactualPairs`][arithlens.circuits.counterfactual.CounterfactualPairs],
                or cases to pair.
            patching: A path-patching result to take the top `k` nodes from (run here when
                neither it nor `nodes` is given).
            cache: The clean cache of the reference cases (`model.cache(pairs)`), if at hand.
        """

        model = load_model(model)
        pairs = as_pairs(model, data)
        if self.nodes is not None:
            key = [nd.check(model) for nd in self.nodes]
        else:
            if patching is None:
                patching = PathPatching(progress=self.progress).run(model, pairs)
            key = top_components(patching, self.k)
        model, pairs, base = self.prepare(model, pairs, cache)
        others = [nd for nd in all_components(model) if nd not in key]
        draws = self._random_draws(key, others)
        groups: list[tuple[str, list[list[Component]], int]] = [("baseline", [], 0), ("key", [key], len(key))]
        if self.individual:
            groups += [(f"key {nd.name}", [[nd]], 1) for nd in key]
        if draws:
            groups.append(("random", draws, len(key)))
        if self.rest:
            groups.append(("rest", [others], len(others)))
        head_means, mlp_means = _means(model, pairs.counterfactual, [nd for _, sets, _ in groups for s in sets for nd in s])

        scoring = base.scoring_ids
        ops = pairs.ops
        labels = ["all", *(o for o in dict.fromkeys(ops) if o is not None)]
        rows, correct = [], {}
        for name, node_sets, n_ablated in groups:
            accs = []
            for j, nodes in enumerate(node_sets or [None]):
                if nodes is None:
                    predictions = base.predictions
                else:
                    iv = MeanComponents(tuple(nodes), head_means, mlp_means, self.position)
                    predictions = model.cache(pairs, interventions=[iv]).predictions
                ok = predictions == scoring
                accs.append(ok.float())
                if j == 0:
                    correct[name] = ok
            acc = torch.stack(accs).mean(0)  # per case, averaged over random draws
            for op in labels:
                mask = torch.tensor([op == "all" or o == op for o in ops])
                rows.append({"condition": name, "op": op, "n": int(mask.sum()), "n_ablated": n_ablated, "accuracy": float(acc[mask].mean())})
        df = pd.DataFrame(rows)
        base_acc = df[df["condition"] == "baseline"].set_index("op")["accuracy"]
        df["baseline_accuracy"] = df["op"].map(base_acc)
        df["accuracy_drop"] = df["baseline_accuracy"] - df["accuracy"]
        return KnockoutResult(df=df, key_nodes=key, random_nodes=draws, correct=correct, position=self.position)

    def _random_draws(self, key: list[Component], others: list[Component]) -> list[list[Component]]:
        """`n_random` seeded draws of non-key nodes with as many heads and MLPs as `key`."""
        rng = random.Random(self.seed)
        n_heads = sum(1 for nd in key if not nd.is_mlp)
        other_heads = [nd for nd in others if not nd.is_mlp]
        other_mlps = [nd for nd in others if nd.is_mlp]
        if n_heads > len(other_heads) or len(key) - n_heads > len(other_mlps):
            return []
        return [rng.sample(other_heads, n_heads) + rng.sample(other_mlps, len(key) - n_heads) for _ in range(self.n_random)]


def _means(model: "LensModel", reference: Any, nodes: Sequence[Component]) -> tuple[dict[int, HeadMeans], dict[int, MLPMeans]]:
    """Head and MLP means of every layer `nodes` need, in one forward pass over `reference`."""
    specs = sorted({(HeadMeans if not nd.is_mlp else MLPMeans, nd.layer) for nd in nodes}, key=lambda s: (s[1], s[0].__name__))
    if not specs:
        return {}, {}
    got = compute_means(model, reference, specs)
    heads = {L: m for (kind, L), m in got.items() if kind is HeadMeans}
    mlps = {L: m for (kind, L), m in got.items() if kind is MLPMeans}
    return heads, mlps
