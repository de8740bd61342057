"""The one contract every analysis follows: [`Analysis`][arithlens.analysis.base.Analysis].

An analysis is a frozen dataclass of its options, validated on construction. It says which
hooks it reads from a clean forward pass (`hook_names(model)`) and at which positions
(`cache_positions(model)`), so one [`DatasetCache`][arithlens.core.cache.DatasetCache] can
serve several analyses:

    cache = model.cache(data, names=[analysis_a, analysis_b])   # one forward pass
    a = analysis_a.run(model, data, cache=cache)                 # -> an XResult
    b = analysis_b.run(model, data, cache=cache)

`run(model, data, *, cache=None)` never runs a clean pass its cache already holds: it calls
[`prepare`][arithlens.analysis.base.Analysis.prepare], which loads the model (a name or a
[`LensModel`][arithlens.core.model.LensModel]), normalises the data to a dataset, and checks
the given cache (same cases, same targets, the hooks, the positions) or builds one. Inputs
that come from another step (a patching result, a second model, LoRA models) are named
keyword arguments of `run`, never positional variety.

Paper steps that are procedures rather than measurements — training LoRA adapters, pruning,
editing, fine-tuning — are plain functions returning a result
([`lora_layer_sweep`][arithlens.cna.lora.lora_layer_sweep],
[`cna_pruning`][arithlens.cna.pruning.cna_pruning], [`gender_bias`][arithlens.cna.bias.gender_bias],
[`precise_sft`][arithlens.circuits.precise_sft.precise_sft]).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

from arithlens.core.cache import DatasetCache, ensure_cache
from arithlens.core.dataset import ArithmeticDataset, as_dataset
from arithlens.core.loading import load_model
from arithlens.core.model import LensModel


class Inputs(NamedTuple):
    """What [`Analysis.prepare`][arithlens.analysis.base.Analysis.prepare] hands to `run`."""

    model: LensModel
    data: ArithmeticDataset
    cache: DatasetCache


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """Base class of every analysis: options as frozen fields, one `run`.

    Every subclass's `run` records where its result came from in `result.meta`
    ([`describe_run`][arithlens.analysis.base.describe_run]), what `result.save(dir)` writes.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is None:
            return

        @functools.wraps(run)
        def recorded(self: Analysis, model: Any, data: Any, *args: Any, **kw: Any) -> Any:
            result = run(self, model, data, *args, **kw)
            if isinstance(getattr(result, "meta", None), dict) and not result.meta:  # an inner run's record stands
                result.meta.update(describe_run(self, model, data))
            return result

        cls.run = recorded

    def hook_names(self, model: LensModel) -> set[str]:
        """The hooks `run` reads from a clean cache (none: only the final log-probs)."""
        return set()

    def cache_positions(self, model: LensModel) -> str:
        """`"last"` (the END position only) or `"all"` (analyses that restart from whole sequences)."""
        return "last"

    def run(self, model: Any, data: Any, *, cache: DatasetCache | None = None) -> Any:
        """Run the analysis on `data`, reading the clean pass from `cache` when given."""
        raise NotImplementedError

    def pass_batch(self, model: LensModel) -> int | None:
        """Cases per forward pass when `prepare` builds the cache (`None`: the model's)."""
        return None

    def prepare(
        self,
        model: Any,
        data: Any,
        cache: DatasetCache | None,
        *,
        names: Any = None,
        positions: str | None = None,
        clean: bool = True,
        batch_size: int | None = None,
    ) -> Inputs:
        """The model, `data` as a dataset, and the checked (or newly built) clean cache.

        `names` and `positions` default to this analysis's own `hook_names` and
        `cache_positions`; `clean=False` accepts a cache built under interventions.
        """
        model = load_model(model)
        top_tokens = getattr(self, "top_tokens", 0)
        if top_tokens > model.d_vocab:  # known only with the model; checked before any pass
            raise ValueError(f"top_tokens={top_tokens} is larger than the model's vocabulary ({model.d_vocab} tokens)")
        dataset = as_dataset(data, model.tokenizer)
        wanted = self.hook_names(model) if names is None else names
        where = self.cache_positions(model) if positions is None else positions
        batch = batch_size or self.pass_batch(model)
        cache = ensure_cache(model, dataset, cache, wanted, where, clean=clean, batch_size=batch)
        return Inputs(model, dataset, cache)


def describe_run(analysis: Analysis, model: Any, data: Any) -> dict[str, Any]:
    """What produced a result, as JSON-able values: `model` (name, revision), `analysis`
    (class, options), `data` (class, name, number of cases)."""
    if isinstance(model, LensModel):
        described_model = {"name": model.name, "revision": model.revision}
    else:
        described_model = {"name": model if isinstance(model, str) else None, "revision": None}
    options = {f.name: _plain(getattr(analysis, f.name)) for f in dataclasses.fields(analysis)}
    described_data: dict[str, Any] = {"class": type(data).__name__, "name": getattr(data, "name", None)}
    if isinstance(data, str):
        described_data["prompt"] = data
    elif hasattr(data, "__len__"):
        described_data["n_cases"] = len(data)
    return {"model": described_model, "analysis": {"class": type(analysis).__name__, "options": options}, "data": described_data}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return repr(value)
