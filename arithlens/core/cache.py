"""One activation store that every analysis composes over.

[`LensModel.cache`][arithlens.core.model.LensModel.cache] runs a dataset once — batches of
equal-length prompts, never padded, through TransformerLens's own
`run_with_cache(names_filter=..., pos_slice=...)` — and returns an
[`DatasetCache`][arithlens.core.cache.DatasetCache]: per-case predictions, target
log-probs, the final norm's scale at the last position and any requested hook
activations, keyed by hook name, at the last position (`positions="last"`) or at every
position (`positions="all"`).

Analyses declare the hooks they read (`Analysis.hook_names(model)`) and take the cache
as `run(model, data, *, cache=...)`: given a cache that holds their hooks they run no
clean forward pass at all; given none they build one. `model.cache(data, names=[a, b, c])`
accepts analyses as well as hook names, so one forward pass serves them all.

Clean caches (no intervention passed, no hook attached to the model) are memoized on the
model, least-recently-used first out, bounded by
[`LensModel.memo_entries`][arithlens.core.model.LensModel] and `memo_bytes`; a run inside
`with model.intervened(...)` or with `interventions=` is never memoized nor served from
the memo. `model.clear_cache()` empties it.

The cache reads like TransformerLens's: `cache["blocks.3.hook_resid_post"]` or
`cache["resid_post", 3]` is `[case, pos, ...]`, and `cache.to_transformer_lens(model)` is a
`transformer_lens.ActivationCache` that TL's own tools (`decompose_resid`, `logit_attrs`,
`stack_head_results`, …) read.

Example:
    ```python
    import arithlens
    from arithlens.cna import NeuronImportance
    from arithlens.cna.heads import HeadAblation

    model = arithlens.load_model()
    prompts = ["3+5=", "2+4="]
    imp, heads = NeuronImportance(), HeadAblation(layers=[0])
    cache = model.cache(prompts, names=[imp, heads])   # one clean forward pass
    imp.run(model, prompts, cache=cache).top(5)
    heads.run(model, prompts, cache=cache).top(3)
    ```
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import einops
import torch
from jaxtyping import Float, Int

from arithlens.core import names as hooks
from arithlens.core import validate
from arithlens.core.dataset import as_dataset
from arithlens.core.interventions import as_hooks, resolve_means

if TYPE_CHECKING:  # transformer_lens loads with a model, so `arithlens --help` stays quick
    from transformer_lens import ActivationCache



@dataclass
class DatasetCache:
    """The forward pass of a dataset: outcomes per case and activations per hook name.

    Attributes:
        input_ids: The token ids of each case, as the model saw them.
        target_ids: `[case]` target token ids (`-1` where a case has none).
        predictions: `[case]` argmax token at the last position.
        target_logprob: `[case]` log-prob of the target (of the prediction where there is no target).
        prediction_logprob: `[case]` log-prob of the predicted token.
        final_scale: `[case]` the final norm's scale at the last position (the
            reference code's `final_var`), `NaN` where the model's final norm has none.
        positions: `"last"` (activations `[case, ...]`) or `"all"` (one `[pos, ...]` tensor per case).
        activations: Hook name → activations as described by `positions`.
        interventions: Description of the interventions active during the pass (`""`: clean).
        clean: Whether the pass ran with no intervention and no hook attached.
        model: The [`weights_fingerprint`][arithlens.core.cache.weights_fingerprint] of the
            model that ran the pass: a cache is only read for that model, with those weights.
    """

    input_ids: list[tuple[int, ...]]
    target_ids: Int[torch.Tensor, "case"]
    predictions: Int[torch.Tensor, "case"]
    target_logprob: Float[torch.Tensor, "case"]
    prediction_logprob: Float[torch.Tensor, "case"]
    final_scale: Float[torch.Tensor, "case"]
    positions: str = "last"
    activations: dict[str, Any] = field(default_factory=dict, repr=False)
    interventions: str = ""
    clean: bool = True
    model: tuple = ()

    # ------------------------------------------------------------------ outcomes
    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def names(self) -> set[str]:
        """The hook names held."""
        return set(self.activations)

    @property
    def correct(self) -> torch.Tensor:
        """`[case]` whether the prediction is the target (False where there is no target)."""
        return self.predictions == self.target_ids

    @property
    def has_targets(self) -> torch.Tensor:
        """`[case]` whether the case has a target token."""
        return self.target_ids >= 0

    @property
    def scoring_ids(self) -> Int[torch.Tensor, "case"]:
        """Target where the case has one, else the model's prediction."""
        return torch.where(self.target_ids >= 0, self.target_ids, self.predictions)

    @property
    def nbytes(self) -> int:
        """Bytes held by the activations and per-case tensors."""
        total = sum(t.numel() * t.element_size() for t in self._tensors())
        return total

    def versions(self) -> tuple[int, ...]:
        """Each tensor's in-place modification counter: equal after an edit never happens."""
        return tuple(t._version for t in self._tensors())

    def _tensors(self) -> Iterable[torch.Tensor]:
        yield from (self.target_ids, self.predictions, self.target_logprob, self.prediction_logprob, self.final_scale)
        for value in self.activations.values():
            yield from (value if isinstance(value, list) else [value])

    # ------------------------------------------------------------------ TransformerLens's view
    def act_name(self, key: Any) -> str:
        """The hook name a TransformerLens key means: a name (`"blocks.3.hook_resid_post"`),
        a shorthand (`"resid_post3"`, `"embed"`) or a tuple (`("resid_post", 3)`,
        `("scale", 2, "ln1")`), read by TransformerLens's own `get_act_name`."""
        from transformer_lens.utilities import get_act_name

        if isinstance(key, str):
            return get_act_name(key)
        if isinstance(key, tuple) and key and isinstance(key[0], str) and len(key) <= 3:
            layer = key[1] if len(key) > 1 else None
            if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
                raise ValueError(
                    f"layer={layer!r} in {key!r} must be a non-negative int (a DatasetCache does not know the "
                    "model's depth; cache.to_transformer_lens(model) takes negative layers)"
                )
            return get_act_name(*key)
        raise ValueError(f"key={key!r} is neither a hook name nor a (name, layer[, layer_type]) tuple")

    def __getitem__(self, key: Any) -> torch.Tensor:
        """Activations as TransformerLens's `run_with_cache` returns them, batch first with a
        position axis: `cache["blocks.3.hook_resid_post"]` or `cache["resid_post", 3]` is
        `[case, pos, d_model]` — `pos` is 1 in a `positions="last"` cache (TL's
        `pos_slice=-1`), the whole prompt in a `positions="all"` one (all cases must then
        have the same length). An attention pattern is `[case, head, query_pos, key_pos]`.

        Raises:
            KeyError: The hook is not held.
            ValueError: The cases' activations differ in shape (prompts of several lengths).
        """
        name = self.act_name(key)
        value = self._get(name)
        if isinstance(value, list):
            shapes = {tuple(v.shape) for v in value}
            if len(shapes) > 1:
                lengths = sorted({len(i) for i in self.input_ids})
                raise ValueError(
                    f"{name!r} has {len(shapes)} shapes over the cases (prompts of {len(lengths)} lengths: "
                    f"{', '.join(map(str, lengths[:5]))}); a TransformerLens cache needs an equal-length batch: "
                    "build it on prompts of one length (e.g. data.filter(...)) or read cache.per_position(name)"
                )
            value = torch.stack(value)
            return value if self.positions == "all" else value.unsqueeze(_pos_dim(name))
        if self.positions == "last":
            return value.unsqueeze(_pos_dim(name))
        return value

    # Not iterable (len counts cases, indexing takes hook names): iterate `cache.names`.
    __iter__ = None

    def __contains__(self, key: Any) -> bool:
        try:
            return self.act_name(key) in self.activations
        except ValueError:
            return False

    def to_transformer_lens(self, model: Any) -> ActivationCache:
        """A TransformerLens `ActivationCache` of every hook held (each as `cache[name]`
        gives it) on `model`'s bridge, so TL's tools — `decompose_resid`,
        `accumulated_resid`, `stack_head_results`, `logit_attrs`, … — read it.

        `model` must be the [`LensModel`][arithlens.core.model.LensModel] that built the
        cache. With `positions="last"` the position axis is 1 long (pass `pos_slice=-1` or
        none to TL's helpers). TL's `apply_ln=True` divides by the cached final-norm scale
        (hold `"ln_final.hook_scale"`) and assumes a folded norm: arithlens folds LayerNorm
        models but keeps RMSNorm gains in the weights (`arithlens.core.blocks`), so on
        RMSNorm models multiply by `model.bridge.ln_final.w` yourself.

        Raises:
            ValueError: `model` did not build this cache, or the cases are of several
                lengths (TL caches are one equal-length batch).
        """
        from transformer_lens import ActivationCache

        bridge = getattr(model, "bridge", None)
        if bridge is None:
            raise ValueError(f"model={type(model).__name__} is not a LensModel: pass the model that built this cache")
        check_model(self, model)
        if self.positions == "all" and len({len(i) for i in self.input_ids}) > 1:
            lengths = sorted({len(i) for i in self.input_ids})
            raise ValueError(
                f"the cases have {len(lengths)} lengths ({', '.join(map(str, lengths[:5]))} tokens); a TransformerLens "
                "cache is one equal-length batch: build the cache on prompts of one length"
            )
        return ActivationCache({name: self[name] for name in sorted(self.activations)}, bridge)

    # ------------------------------------------------------------------ activations
    def has(self, names: Iterable[str], positions: str = "last") -> bool:
        """Whether every hook in `names` is held at (at least) `positions`."""
        return set(names) <= self.names and (positions == "last" or self.positions == "all")

    def _get(self, name: str) -> Any:
        if name not in self.activations:
            held = ", ".join(sorted(self.activations)[:6]) or "none"
            raise KeyError(
                f"hook {name!r} is not in this cache (it holds {len(self.activations)} hooks: {held}…); "
                "build it with model.cache(data, names=[...]) including that hook or the analysis"
            )
        return self.activations[name]

    def last(self, name: str) -> Any:
        """Activations of hook `name` at each case's last position, `[case, ...]`.

        Where the shape varies with the prompt's length (an attention pattern's key axis)
        and the cases have several lengths, a list of per-case tensors instead.
        """
        value = self._get(name)
        if self.positions == "last":
            return value
        axis = -2 if name.endswith(("hook_pattern", "hook_attn_scores")) else 0
        rows = [v.select(axis, -1) for v in value]
        return torch.stack(rows) if len({tuple(r.shape) for r in rows}) == 1 else rows

    def per_position(self, name: str) -> list[torch.Tensor]:
        """Activations of hook `name` at every position, one `[pos, ...]` tensor per case."""
        if self.positions != "all":
            raise ValueError(
                f"this cache holds the last position only; build it with positions='all' to read {name!r} per position"
            )
        return self._get(name)

    def stack(self, name: Callable[[int], str], layers: Iterable[int]) -> torch.Tensor:
        """Last-position activations of one hook kind over `layers`, `[case, layer, ...]`.

        `name` builds the hook name of a layer (e.g. [`names.resid_mid`][arithlens.core.names.resid_mid]).
        """
        parts = [self.last(name(int(L))) for L in layers]
        return einops.rearrange(torch.stack(parts), "layer case ... -> case layer ...")

    def rows(self, index: Sequence[int] | torch.Tensor) -> "DatasetCache":
        """The cache restricted to some cases (in the given order)."""
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        pick = idx.tolist()
        acts = {
            n: ([v[i] for i in pick] if isinstance(v, list) else v[idx]) for n, v in self.activations.items()
        }
        return DatasetCache(
            [self.input_ids[i] for i in pick],
            self.target_ids[idx],
            self.predictions[idx],
            self.target_logprob[idx],
            self.prediction_logprob[idx],
            self.final_scale[idx],
            self.positions,
            acts,
            self.interventions,
            self.clean,
            self.model,
        )

    def check_matches(self, input_ids: Sequence[Sequence[int]], what: str = "data") -> None:
        """Raise `ValueError` unless this cache was built on exactly these cases."""
        if [tuple(i) for i in input_ids] != self.input_ids:
            raise ValueError(
                f"cache was built on {len(self)} other cases than {what} ({len(input_ids)} cases): "
                "build it with model.cache(data, ...) on the same data"
            )

    def __repr__(self) -> str:
        state = "clean" if self.clean else f"under {self.interventions or 'hooks'}"
        return f"DatasetCache({len(self)} cases, {len(self.activations)} hooks, positions={self.positions!r}, {state})"


# ---------------------------------------------------------------------------- building
def _items(names: Any) -> list[Any]:
    """`names` as a list: one hook name or analysis, or a sequence of them."""
    return [names] if isinstance(names, str) or hasattr(names, "hook_names") else list(names or ())


def hook_names_of(model: "LensModel", names: Any) -> set[str]:
    """Hook names from a mix of names and analyses (objects with `hook_names(model)`)."""
    out: set[str] = set()
    for item in _items(names):
        if isinstance(item, str):
            out.add(item)
        elif hasattr(item, "hook_names"):
            out |= set(item.hook_names(model))
        else:
            raise ValueError(f"names item {item!r} is neither a hook name nor an analysis with hook_names(model)")
    return out


def positions_of(model: "LensModel", names: Any, positions: str | None) -> str:
    """The positions a cache keeps: `positions` when given, else `"all"` if an analysis in
    `names` declares `cache_positions(model) == "all"` (it restarts from whole sequences),
    else `"last"`."""
    if positions is not None:
        return hooks.check_position(positions, "positions")
    wants_all = any(hasattr(i, "cache_positions") and i.cache_positions(model) == "all" for i in _items(names))
    return "all" if wants_all else "last"


class Memo:
    """Least-recently-used store of clean caches, bounded by entry count and bytes."""

    def __init__(self, max_entries: int = 8, max_bytes: float = 2e9):
        self.max_entries = validate.positive_int(max_entries, "memo_entries")
        self.max_bytes = validate.positive_number(max_bytes, "memo_bytes")
        self._store: OrderedDict[tuple, DatasetCache] = OrderedDict()

    def get(self, key: tuple) -> DatasetCache | None:
        """The entry for `key`, unless a caller has edited one of its tensors in place since
        it was stored (then it is dropped: the pass is run again)."""
        entry = self._store.get(key)
        if entry is None:
            return None
        cache, versions = entry
        if cache.versions() != versions:
            del self._store[key]
            return None
        self._store.move_to_end(key)
        return cache

    def put(self, key: tuple, cache: DatasetCache) -> None:
        self._store[key] = (cache, cache.versions())
        self._store.move_to_end(key)
        while len(self._store) > self.max_entries or (len(self._store) > 1 and self.nbytes > self.max_bytes):
            self._store.popitem(last=False)
        if cache.nbytes > self.max_bytes:  # too big to keep even alone
            self._store.pop(key, None)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c, _ in self._store.values())

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


def _pos_dim(name: str) -> int:
    """The position axis `run_with_cache(pos_slice=-1)` kept (TransformerLens's convention)."""
    return -2 if name.endswith(("hook_pattern", "hook_attn_scores")) else 1


def next_token_outcomes(
    logits: Float[torch.Tensor, "batch vocab"], targets: Int[torch.Tensor, "batch"]
) -> tuple[Int[torch.Tensor, "batch"], Float[torch.Tensor, "batch"], Float[torch.Tensor, "batch"]]:
    """The argmax of next-token logits, the target's log-prob (the argmax's where the target
    is `-1`) and the argmax's log-prob. The log-softmax runs in float32 on the logits' device."""
    logp = validate.check_finite(logits.float(), "the model's logits").log_softmax(-1)
    top = logp.argmax(-1)
    targets = targets.to(top.device)
    scored = torch.where(targets >= 0, targets, top)
    return top, logp.gather(-1, scored[:, None])[:, 0], logp.gather(-1, top[:, None])[:, 0]


@torch.no_grad()
def build_cache(
    model: "LensModel",
    input_ids: list[tuple[int, ...]],
    targets: list[int],
    names: set[str],
    positions: str,
    interventions: Sequence[Any],
    batch_size: int | None,
    described: str,
    clean: bool,
    offload: str | None = None,
) -> DatasetCache:
    """One forward pass over the cases through `run_with_cache`; see [`DatasetCache`][arithlens.core.cache.DatasetCache]."""
    n = len(input_ids)
    preds = torch.empty(n, dtype=torch.long)
    tlp, plp, scale = torch.empty(n), torch.empty(n), torch.full((n,), float("nan"))
    target_t = torch.tensor(targets, dtype=torch.long)
    wanted = sorted(names)
    has_scale = hooks.FINAL_SCALE in model.bridge.hook_dict
    filt = wanted + ([hooks.FINAL_SCALE] if has_scale and hooks.FINAL_SCALE not in names else [])
    # Last-position activations go straight into one [case, ...] tensor per hook (no second
    # copy of the cache while it is built); a hook whose shape varies with the prompt (e.g.
    # attention over keys) becomes a per-case list instead.
    stacked: dict[str, torch.Tensor] = {}
    ragged: set[str] = set()
    filled: dict[str, list[int]] = {nm: [] for nm in wanted}
    per_case: dict[str, list[Any]] = {nm: [None] * n for nm in wanted}
    # Only the last position's logits are read: trimming before the final norm avoids a
    # [batch, pos, vocab] tensor (unless a final-norm hook was asked for at every position).
    trim = positions == "last" or not any(nm.startswith(("ln_final", "unembed")) for nm in wanted)
    trims = model.last_position_trim() if trim else []
    interventions = resolve_means(model, interventions)
    as_hooks(model, interventions, torch.zeros(0, dtype=torch.long))  # a bad intervention fails before any pass
    with model.hooked(trims):
        for rows, tokens in model.batches(input_ids, batch_size):
            with model.hooked(as_hooks(model, interventions, rows)):
                logits, acts = model.bridge.run_with_cache(
                    tokens,
                    names_filter=filt,
                    pos_slice=-1 if positions == "last" else None,
                    return_cache_object=False,
                )
            top, target_lp, top_lp = next_token_outcomes(logits[:, -1], target_t[rows])
            preds[rows], tlp[rows], plp[rows] = top.cpu(), target_lp.cpu(), top_lp.cpu()
            if has_scale:
                s = acts[hooks.FINAL_SCALE].float()
                s = s if positions == "last" else s[:, -1]
                scale[rows] = validate.check_finite(s.reshape(len(rows), -1)[:, 0], "the final norm's scale (the residual stream overflowed)").cpu()
            silent = [nm for nm in wanted if nm not in acts]
            if silent:  # a hook point the architecture has but never calls (e.g. hook_pos_embed with rotary positions)
                raise ValueError(f"hook {silent[0]!r} exists on this model but never fires in its forward pass; read another hook")
            for nm in wanted:
                # Kept on the model's device in the model's dtype (consumers accumulate in
                # float32 where precision needs it); offload="cpu" moves them to the host.
                act = acts[nm].detach()
                act = act.cpu() if offload == "cpu" else act
                if positions == "last":
                    act = act.squeeze(_pos_dim(nm))
                    if nm not in stacked and nm not in ragged:
                        stacked[nm] = torch.empty((n, *act.shape[1:]), dtype=act.dtype, device=act.device)
                    if nm in stacked and stacked[nm].shape[1:] != act.shape[1:]:
                        done = stacked.pop(nm)  # ragged from here on: the rows so far move to the list
                        ragged.add(nm)
                        for r in filled[nm]:
                            per_case[nm][r] = done[r].clone()
                    if nm in stacked:
                        stacked[nm][rows.to(act.device)] = act
                        filled[nm].extend(rows.tolist())
                        continue
                for j, r in enumerate(rows.tolist()):
                    per_case[nm][r] = act[j]
            del logits, acts
    activations: dict[str, Any] = {nm: stacked.get(nm, per_case[nm]) for nm in wanted}
    return DatasetCache(list(input_ids), target_t, preds, tlp, plp, scale, positions, activations, described, clean,
                        weights_fingerprint(model))  # fmt: skip


def weights_fingerprint(model: "LensModel") -> tuple:
    """Which model, with which weights: its identity and a cheap checksum of every parameter
    (a strided sample of about 1,000 entries each), so an in-place edit of the weights is seen."""
    sums = []
    with torch.no_grad():
        for p in model.bridge.parameters():
            flat = p.detach().reshape(-1)
            sums.append(float(flat[:: max(1, flat.numel() // 1024)].double().sum()))
    return (id(model), hash(tuple(sums)))


def check_model(cache: DatasetCache, model: "LensModel") -> None:
    """`ValueError` unless `cache` was built by `model` with its current weights."""
    now = weights_fingerprint(model)
    if cache.model and cache.model[0] != now[0]:
        raise ValueError(f"cache was built by another model than {model!r}: build it with this model's model.cache(data, ...)")
    if cache.model and cache.model[1] != now[1]:
        raise ValueError("the model's weights changed since this cache was built: build a new one with model.cache(data, ...)")


def ensure_cache(
    model: "LensModel",
    data: Any,
    cache: DatasetCache | None,
    names: Iterable[str] | Any = (),
    positions: str = "last",
    *,
    clean: bool = True,
    batch_size: int | None = None,
) -> DatasetCache:
    """The cache an analysis reads: the one given (checked), or a new one.

    A given cache must hold the same cases as `data` and every hook in `names`; with
    `clean=True` it must also be a clean pass. Otherwise `ValueError` says what is missing
    and how to build a cache that has it.
    """

    wanted = hook_names_of(model, names)
    positions = hooks.check_position(positions, "positions")
    if cache is None:
        return model.cache(data, names=wanted, positions=positions, batch_size=batch_size)
    if not isinstance(cache, DatasetCache):
        raise ValueError(f"cache={type(cache).__name__} is not an DatasetCache (build one with model.cache(data, ...))")
    ds = as_dataset(data, model.tokenizer)
    cache.check_matches([c.input_ids for c in ds])
    check_model(cache, model)
    targets = torch.tensor([c.target_id for c in ds], dtype=torch.long)
    if not torch.equal(targets, cache.target_ids.cpu()):
        differ = int((targets != cache.target_ids.cpu()).sum())
        raise ValueError(
            f"cache was built with other targets than the data ({differ} of {len(ds)} cases differ): "
            "build it with model.cache(data, ...) on this dataset"
        )
    missing = sorted(wanted - cache.names)
    if missing:
        raise ValueError(
            f"cache lacks {len(missing)} hook(s) this analysis reads ({', '.join(missing[:4])}"
            f"{'…' if len(missing) > 4 else ''}); build it with model.cache(data, names=[...]) listing the analysis"
        )
    if positions == "all" and cache.positions != "all":
        raise ValueError("this analysis reads every position; build the cache with positions='all'")
    if clean and not cache.clean:
        raise ValueError(f"this analysis needs the clean forward pass, but the cache was built {cache.interventions or 'with hooks attached'}")
    return cache
