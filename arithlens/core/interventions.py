"""Interventions: side-effect-free, composable edits of heads and FFN neurons.

An intervention describes *what* to change (a head's output, some FFN neurons'
coefficient scores); `LensModel.intervened` turns it into forward hooks that exist
only inside a `with` block and are removed on exit, also when the body raised. No
parameter is ever written, so after any analysis the model is bit-identical.

* [`ZeroHead`][arithlens.core.interventions.ZeroHead] — the paper's head intervention: the head's output `z` is zero,
  which equals zeroing that head's columns of `W_O` (its parameters, §3.2). Query-head
  granularity: on GQA models one query head is ablated, not its shared KV group.
* [`MeanHead`][arithlens.core.interventions.MeanHead] — the head's output replaced by its mean over reference data
  (Zhang et al.'s mean ablation).
* [`ZeroNeurons`][arithlens.core.interventions.ZeroNeurons], [`KeepNeurons`][arithlens.core.interventions.KeepNeurons], [`ScaleNeurons`][arithlens.core.interventions.ScaleNeurons] — FFN neurons'
  coefficient scores `m_k` (`blocks.L.mlp.hook_post`) zeroed, all others of some
  layers zeroed, or scaled.
* [`CaseNeurons`][arithlens.core.interventions.CaseNeurons] — a different neuron set per case (the per-case top-K sets of
  Table 5), zeroed or kept.

Interventions combine with `+` and apply to every position by default
(`position="last"` for the final position only).

Example:
    ```python
    from arithlens import load_model
    from arithlens.core.interventions import ZeroHead, ZeroNeurons

    model = load_model()
    with model.intervened(ZeroHead(17, 2) + ZeroNeurons(25, [7, 164])):
        run = model.cache(["3+5="], memo=False)
    ```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

import torch
from jaxtyping import Bool, Float, Int

from arithlens.core import names, validate
from arithlens.core.dataset import as_dataset
from arithlens.core.names import Hook




def _check_position(position: str) -> str:
    return names.check_position(position)


def position_view(act: torch.Tensor, position: str) -> torch.Tensor:
    """The view of `act` ([batch, pos, ...]) an intervention writes to."""
    return act if position == "all" else act[:, -1:]


class Intervention:
    """Base class: subclasses return their hooks for a model.

    `rows` are the dataset rows of the batch the hooks will see (given by
    [`LensModel.cache`][arithlens.core.model.LensModel.cache] for each batch); only
    per-case interventions ([`CaseNeurons`][arithlens.core.interventions.CaseNeurons]) read them.
    """

    position: str = "all"

    def hooks(self, model: "LensModel", rows: Int[torch.Tensor, "batch"] | None = None) -> list["Hook"]:
        raise NotImplementedError

    def __add__(self, other: Any) -> "Interventions":
        return Interventions([self]) + other

    def describe(self) -> str:
        return repr(self)


class Interventions(Intervention):
    """Several interventions applied together."""

    def __init__(self, items: Iterable[Intervention]):
        self.items = list(items)

    def __add__(self, other: Any) -> "Interventions":
        more = other.items if isinstance(other, Interventions) else [other]
        return Interventions(self.items + list(more))

    def hooks(self, model: "LensModel", rows: Int[torch.Tensor, "batch"] | None = None) -> list["Hook"]:
        return [h for item in self.items for h in item.hooks(model, rows)]

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return " + ".join(repr(i) for i in self.items) or "Interventions([])"


def as_intervention(value: Any) -> Intervention:
    """An [`Intervention`][arithlens.core.interventions.Intervention] as given, or a head
    (`(layer, head)`, `"L.H"`, a [`Component`][arithlens.core.names.Component]) as `ZeroHead`
    — the paper's intervention, the head zeroed."""
    if isinstance(value, Intervention):
        return value
    if isinstance(value, (str, tuple, list, names.Component)):
        head = names.parse_head(value, "intervention")
        return ZeroHead(head.layer, head.head)
    raise ValueError(f"intervention={value!r} is neither an intervention (arithlens.core.interventions) nor a head such as '17.2'")


def as_hooks(model: "LensModel", interventions: Iterable[Any], rows: Int[torch.Tensor, "batch"] | None = None) -> list["Hook"]:
    """Flatten interventions (nested sequences allowed) into validated hooks for a batch of `rows`."""
    hooks: list[Hook] = []
    for item in interventions:
        if item is None:
            continue
        if isinstance(item, Intervention):
            hooks.extend(item.hooks(model, rows))
        elif isinstance(item, (list, tuple)):
            hooks.extend(as_hooks(model, item, rows))
        else:
            raise ValueError(f"{item!r} is not an intervention (see arithlens.core.interventions)")
    return hooks


# ---------------------------------------------------------------------------- heads
def _init_head(item: Any) -> None:
    """Validate `(layer, head)` of a head intervention; `"L.H"` alone is accepted too."""
    if item.head is None:
        if not isinstance(item.layer, (str, tuple, list, names.Component)):
            raise ValueError(f"{type(item).__name__} needs a head: {type(item).__name__}(layer, head) or {type(item).__name__}('L.H')")
        head = names.parse_head(item.layer, type(item).__name__)
        object.__setattr__(item, "layer", head.layer)
        object.__setattr__(item, "head", head.head)
    object.__setattr__(item, "layer", validate.non_negative_int(item.layer, "layer"))
    object.__setattr__(item, "head", validate.non_negative_int(item.head, "head"))
    names.check_position(item.position)


@dataclass(frozen=True)
class ZeroHead(Intervention):
    """Zero the output `z` of query head `head` in `layer` (`ZeroHead(17, 2)` or `ZeroHead("17.2")`)."""

    layer: int
    head: int | None = None
    position: str = "all"

    def __post_init__(self) -> None:
        _init_head(self)

    def hooks(self, model: "LensModel", rows: Int[torch.Tensor, "batch"] | None = None) -> list["Hook"]:
        model.check_head(self.layer, self.head)
        position, head = _check_position(self.position), self.head

        def fn(z: Float[torch.Tensor, "batch pos head d_head"], hook: Any) -> torch.Tensor:
            position_view(z, position)[:, :, head] = 0.0
            return z

        return [(names.z(self.layer), fn)]

    def __repr__(self) -> str:
        return f"ZeroHead({self.layer}.{self.head})"


@dataclass
class ActivationMeans:
    """Mean of one layer's activation at a hook over reference cases.

    `by_length[n]` is the per-position mean over the reference cases of length `n`
    (`[pos, ...]`: prompts of one template align position by position); `last` is
    the mean at the last position over all of them. Subclasses name the hook.
    """

    layer: int
    by_length: dict[int, torch.Tensor]
    last: torch.Tensor

    @staticmethod
    def hook_name(layer: int) -> str:  # pragma: no cover - subclasses define it
        """The hook whose activation is averaged."""
        raise NotImplementedError

    @classmethod
    def compute(cls, model: "LensModel", reference: Any, layers: Sequence[int]) -> dict[int, Any]:
        """Means of every layer in `layers` over `reference` (a dataset or prompts), in one pass."""
        got = compute_means(model, reference, [(cls, int(L)) for L in layers])
        return {int(L): got[(cls, int(L))] for L in layers}

    def for_length(self, n: int, position: str) -> torch.Tensor:
        """Replacement for a `[batch, n, ...]` activation's chosen positions."""
        if n in self.by_length:
            mean = self.by_length[n]
            return mean if position == "all" else mean[-1:]
        if position == "last":
            return self.last[None]
        raise ValueError(
            f"mean ablation at all positions needs reference prompts of the same length as "
            f"the prompt ({n} tokens); the reference has lengths {sorted(self.by_length)}. "
            "Use position='last' or a reference built from the same templates."
        )


@dataclass
class HeadMeans(ActivationMeans):
    """Mean head outputs `z` of one layer: `[pos, head, d_head]` per length, `[head, d_head]` last."""

    by_length: dict[int, Float[torch.Tensor, "pos head d_head"]]
    last: Float[torch.Tensor, "head d_head"]

    @staticmethod
    def hook_name(layer: int) -> str:
        """`blocks.L.attn.hook_z`."""
        return names.z(layer)


@torch.no_grad()
def compute_means(
    model: "LensModel", reference: Any, specs: Sequence[tuple[type[ActivationMeans], int]]
) -> dict[tuple[type[ActivationMeans], int], ActivationMeans]:
    """Means of several (kind, layer) activations over `reference`, in one forward pass.

    `specs` pairs an [`ActivationMeans`][arithlens.core.interventions.ActivationMeans] subclass
    (which names the hook) with a layer. The pass stops after the deepest layer asked for;
    only per-length sums are kept, so memory does not grow with the reference set.
    """

    if not specs:
        raise ValueError("compute_means needs at least one (kind, layer)")
    ids = [c.input_ids for c in as_dataset(reference, model.tokenizer)]
    hook_of = {spec: spec[0].hook_name(model.check_layer(spec[1])) for spec in specs}
    wanted = sorted(set(hook_of.values()))
    deepest = max(names.layer_of(h) for h in wanted)
    sums: dict[str, dict[int, torch.Tensor]] = {h: {} for h in wanted}
    counts: dict[int, int] = {}
    for _, tokens in model.batches(ids):
        _, acts = model.bridge.run_with_cache(
            tokens, names_filter=wanted, stop_at_layer=deepest + 1, return_cache_object=False
        )
        n = tokens.shape[1]
        counts[n] = counts.get(n, 0) + tokens.shape[0]
        for h in wanted:
            sums[h][n] = sums[h].get(n, 0) + acts[h].detach().float().sum(0).cpu()
    total = sum(counts.values())
    out = {}
    for spec, h in hook_of.items():
        by_length = {n: v / counts[n] for n, v in sums[h].items()}
        last = sum(v[-1] for v in sums[h].values()) / total
        out[spec] = spec[0](spec[1], by_length, last)
    return out


class MeanAblation:
    """Shared by mean-ablation interventions: means of `reference` data, or given means."""

    means_class: type[ActivationMeans] = ActivationMeans

    def means(self, model: "LensModel") -> Any:
        """The [`ActivationMeans`][arithlens.core.interventions.ActivationMeans] of this layer on `model`.

        Computed from `reference` data each time it is asked for;
        [`resolve_means`][arithlens.core.interventions.resolve_means] computes them once
        before a pass (as [`LensModel.cache`][arithlens.core.model.LensModel.cache] does).
        """
        if isinstance(self.reference, ActivationMeans):
            return self.reference
        return self.means_class.compute(model, self.reference, [self.layer])[self.layer]


@dataclass(frozen=True)
class MeanHead(MeanAblation, Intervention):
    """Replace head `head`'s output by its mean over `reference` data.

    `reference` is a dataset / list of prompts (means are computed on first use) or a
    [`HeadMeans`][arithlens.core.interventions.HeadMeans] of that layer.
    """

    layer: int
    head: int
    reference: Any = field(repr=False)
    position: str = "all"

    means_class = HeadMeans

    def __post_init__(self) -> None:
        _init_head(self)
        if self.reference is None:
            raise ValueError("MeanHead needs reference data (prompts or a dataset) or a HeadMeans")

    def hooks(self, model: "LensModel", rows: Int[torch.Tensor, "batch"] | None = None) -> list["Hook"]:
        model.check_head(self.layer, self.head)
        position, head, means = _check_position(self.position), self.head, self.means(model)

        def fn(z: Float[torch.Tensor, "batch pos head d_head"], hook: Any) -> torch.Tensor:
            mean = means.for_length(z.shape[1], position)[:, head].to(z)
            position_view(z, position)[:, :, head] = mean
            return z

        return [(names.z(self.layer), fn)]

    def __repr__(self) -> str:
        return f"MeanHead({self.layer}.{self.head})"


# ---------------------------------------------------------------------------- neurons
def _neurons_by_layer(model: "LensModel", layers: Any, neurons: Any) -> dict[int, torch.Tensor]:
    """Normalise the ways of naming neurons into `{layer: index tensor}`."""
    if isinstance(neurons, dict):
        return {model.check_layer(L): model.check_neurons(L, idx) for L, idx in neurons.items()}
    layer_list = [model.check_layer(L, "layers item") for L in validate.int_sequence(layers, "layers")]
    if isinstance(neurons, (str, bytes)) or neurons is None:
        raise ValueError(f"neurons={neurons!r} must be indices, (layer, neuron) pairs or a {{layer: indices}} dict")
    items = list(neurons.reshape(-1).tolist() if isinstance(neurons, torch.Tensor) and neurons.ndim < 2 else neurons)
    if items and isinstance(items[0], (tuple, list)) or (isinstance(neurons, torch.Tensor) and neurons.ndim == 2):
        grouped: dict[int, list[int]] = {L: [] for L in layer_list}
        for pair in items:
            if len(pair) != 2:
                raise ValueError(f"neuron pair {pair!r} must be (layer, neuron)")
            L = model.check_layer(pair[0], "neuron pair layer")
            if L not in grouped:
                raise ValueError(
                    f"neuron pair {tuple(pair)!r} is in layer {L}, which is not among layers={layer_list}; "
                    "add the layer or drop the pair"
                )
            grouped[L].append(validate.integer(pair[1], "neuron", low=0, high=model.d_mlp - 1))
        return {L: model.check_neurons(L, idx) for L, idx in grouped.items()}
    return {L: model.check_neurons(L, items) for L in layer_list}


@dataclass(frozen=True)
class ScaleNeurons(Intervention):
    """Multiply the coefficient scores of `neurons` in `layer` by `factor`."""

    layer: int
    neurons: Any
    factor: float = 0.0
    position: str = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer", validate.non_negative_int(self.layer, "layer"))
        validate.int_sequence(self.neurons, "neurons", low=0, allow_empty=True)
        object.__setattr__(self, "factor", validate.number(self.factor, "factor"))
        names.check_position(self.position)

    def hooks(self, model: "LensModel", rows: Int[torch.Tensor, "batch"] | None = None) -> list["Hook"]:
        idx = model.check_neurons(self.layer, self.neurons).to(model.device)
        position, factor = _check_position(self.position), float(self.factor)

        def fn(post: Float[torch.Tensor, "batch pos d_mlp"], hook: Any) -> torch.Tensor:
            view = position_view(post, position)
            view[..., idx] = view[..., idx] * factor
            return post

        return [(names.post(self.layer), fn)]


@dataclass(frozen=True)
class ZeroNeurons(ScaleNeurons):
    """Zero the coefficient scores of `neurons` in `layer` (the paper's "mask")."""

    factor: float = 0.0

    def __repr__(self) -> str:
        n = torch.as_tensor(self.neurons).numel()
        return f"ZeroNeurons(layer {self.layer}, {n} neurons)"


@dataclass(frozen=True)
class KeepNeurons(Intervention):
    """Zero every neuron of `layers` except `neurons` (the paper's "keep").

    `neurons`: indices kept in every layer, `(layer, neuron)` pairs, or a
    `{layer: indices}` dict.
    """

    layers: Any
    neurons: Any
    position: str = "all"

    def hooks(self, model: "LensModel", rows: Int[torch.Tensor, "batch"] | None = None) -> list["Hook"]:
        position = _check_position(self.position)
        hooks = []
        for layer, idx in _neurons_by_layer(model, self.layers, self.neurons).items():
            keep = torch.zeros(model.d_mlp, device=model.device)
            keep[idx.to(model.device)] = 1.0

            def fn(post: torch.Tensor, hook: Any, keep: torch.Tensor = keep) -> torch.Tensor:
                view = position_view(post, position)
                view.mul_(keep.to(post.dtype))
                return post

            hooks.append((names.post(layer), fn))
        return hooks

    def __repr__(self) -> str:
        return f"KeepNeurons(layers {self.layers})"


@dataclass(frozen=True)
class CaseNeurons(Intervention):
    """A different neuron set per case: `mask[case, layer, neuron]` is True for the set.

    `mode="zero"` zeroes each case's set; `mode="keep"` zeroes every other neuron of
    `layers`. Each batch's rows pick their cases' sets, so the intervention is applied
    through [`LensModel.cache`][arithlens.core.model.LensModel.cache] on the dataset the
    mask was built for.
    """

    mask: Bool[torch.Tensor, "case layer d_mlp"] = field(repr=False)
    layers: Sequence[int] | None = None
    mode: Literal["zero", "keep"] = "zero"
    position: str = "all"

    def hooks(self, model: "LensModel", rows: Int[torch.Tensor, "batch"] | None = None) -> list["Hook"]:
        if self.mode not in ("zero", "keep"):
            raise ValueError(f"mode {self.mode!r} is not 'zero' or 'keep'")
        if self.mask.ndim != 3 or tuple(self.mask.shape[1:]) != (model.n_layers, model.d_mlp):
            raise ValueError(
                f"mask shape {tuple(self.mask.shape)} must be [cases, {model.n_layers}, {model.d_mlp}]"
            )
        position = _check_position(self.position)
        if self.layers is not None:
            layers = [model.check_layer(int(L)) for L in self.layers]
        else:
            layers = [L for L in range(model.n_layers) if bool(self.mask[:, L].any())]
        if rows is None:
            raise ValueError(
                "CaseNeurons sets neurons per case: apply it with model.cache(data, interventions=[...]) "
                "on the dataset its mask was built for, not in a context over arbitrary inputs"
            )
        mask, keep = self.mask, self.mode == "keep"

        def make(layer: int):
            def fn(post: Float[torch.Tensor, "batch pos d_mlp"], hook: Any) -> torch.Tensor:
                chosen = mask[rows.to(mask.device), layer].to(post.device)
                factor = (chosen if keep else ~chosen).to(post.dtype)[:, None, :]
                view = position_view(post, position)
                view.mul_(factor)
                return post

            return fn

        return [(names.post(L), make(L)) for L in layers]


def resolve_means(model: "LensModel", interventions: Iterable[Any]) -> list[Any]:
    """`interventions` with every mean ablation's reference data replaced by its means on
    `model`, computed once (a pass over batches then never recomputes them)."""
    out: list[Any] = []
    for item in interventions:
        if isinstance(item, Interventions):
            item = Interventions(resolve_means(model, item.items))
        elif isinstance(item, (list, tuple)):
            item = resolve_means(model, item)
        elif isinstance(item, MeanAblation) and not isinstance(item.reference, ActivationMeans):
            item = dataclasses.replace(item, reference=item.means(model))
        out.append(item)
    return out
