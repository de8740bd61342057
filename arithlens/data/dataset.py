"""Datasets of next-token cases, and the one place inputs are normalised: [`as_dataset`][arithlens.data.dataset.as_dataset]."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, overload

import pandas as pd

@dataclass(frozen=True)
class Case:
    """One next-token prediction: `input_ids` (= `tokenizer.encode(prompt)`) -> `target_id`.

    `answer` is the full answer text ("47", "-2", "nurse"); `answer_ids` are the
    answer tokens from the target on (a bare whitespace token is never included), for
    greedy full-answer accuracy. `position` is which answer token the target is
    (0-based, whitespace excluded).
    """

    prompt: str
    answer: str
    target_str: str
    target_id: int
    input_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    op: str | None = None
    a: int | None = None
    b: int | None = None
    digits: int | None = None
    template: int | str | None = None  # 1..4, or the custom template string
    form: str | None = None  # "numeral" | "word"
    case_type: str | None = None  # "memorize" | "change-one" | "sign"
    position: int = 0

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


_FIELDS = tuple(f.name for f in fields(Case))
_FRAME_COLUMNS = ("prompt", "answer", "target_id", "target_str", "op", "digits", "template",
                  "form", "case_type", "position", "a", "b", "n_tokens")  # fmt: skip


class ArithmeticDataset(Sequence[Case]):
    """An immutable, list-like collection of [`Case`][arithlens.data.dataset.Case] objects."""

    def __init__(self, cases: Sequence[Case], name: str = "") -> None:
        self._cases: tuple[Case, ...] = tuple(cases)
        self.name = name
        if not self._cases:
            raise ValueError(f"empty dataset: {name or 'unnamed'!r} has no cases")
        bad = [c for c in self._cases if not isinstance(c, Case)]
        if bad:
            raise TypeError(f"ArithmeticDataset holds Case objects, got {type(bad[0]).__name__}")

    def __len__(self) -> int:
        return len(self._cases)

    @overload
    def __getitem__(self, index: int) -> Case: ...
    @overload
    def __getitem__(self, index: slice) -> ArithmeticDataset: ...
    def __getitem__(self, index: int | slice) -> Case | ArithmeticDataset:
        if isinstance(index, slice):
            return ArithmeticDataset(self._cases[index], name=self.name)
        return self._cases[index]

    def __iter__(self) -> Iterator[Case]:
        return iter(self._cases)

    def __add__(self, other: ArithmeticDataset) -> ArithmeticDataset:
        if not isinstance(other, ArithmeticDataset):
            return NotImplemented
        name = self.name if self.name == other.name else f"{self.name}+{other.name}"
        return ArithmeticDataset(self._cases + other._cases, name=name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArithmeticDataset) and self._cases == other._cases

    __hash__ = None  # type: ignore[assignment]  # mutable-style equality; not used as a key

    def __repr__(self) -> str:
        return f"ArithmeticDataset(name={self.name!r}, n={len(self)})"

    def to_frame(self) -> pd.DataFrame:
        """One row per case; columns `prompt, answer, target_id, ..., a, b, n_tokens`."""
        rows = [{col: getattr(c, col) for col in _FRAME_COLUMNS} for c in self._cases]
        return pd.DataFrame(rows, columns=list(_FRAME_COLUMNS))

    @property
    def groups(self) -> pd.DataFrame:
        """Case counts per (op, digits, template, form, case_type)."""
        keys = ["op", "digits", "template", "form", "case_type"]
        # Templates mix ints and strings; astype(str) keeps groupby sortable.
        frame = self.to_frame()[keys].astype(str)
        return frame.groupby(keys, dropna=False).size().rename("n").reset_index()

    def filter(self, **criteria: Any) -> ArithmeticDataset:
        """Cases whose fields match: `filter(op="+", digits=(1, 2), case_type="memorize")`.

        A value may be a scalar (equality), a non-string collection (membership) or a
        callable (predicate on the field value).
        """
        unknown = [k for k in criteria if k not in _FIELDS and k != "n_tokens"]
        if unknown:
            raise ValueError(f"unknown filter field(s) {unknown}; allowed: {list(_FIELDS) + ['n_tokens']}")
        tests = {k: _matcher(v) for k, v in criteria.items()}
        kept = [c for c in self._cases if all(t(getattr(c, k)) for k, t in tests.items())]
        if not kept:
            raise ValueError(f"empty dataset: no case of {self.name or 'dataset'!r} matches {criteria}")
        return ArithmeticDataset(kept, name=self.name)

    def sample(self, n: int, seed: int = 0) -> ArithmeticDataset:
        """A seeded subsample of `n` cases without replacement (all when `n >= len`), in original order."""
        if n <= 0:
            raise ValueError(f"sample size must be positive, got {n}")
        if n >= len(self):
            return self
        keep = sorted(random.Random(seed).sample(range(len(self)), n))
        return ArithmeticDataset([self._cases[i] for i in keep], name=self.name)

    def split(self, n_test: int, seed: int = 0) -> tuple[ArithmeticDataset, ArithmeticDataset]:
        """A seeded (train, test) partition with `n_test` test cases."""
        if not 0 < n_test < len(self):
            raise ValueError(f"n_test must be in 1..{len(self) - 1}, got {n_test}")
        test_idx = set(random.Random(seed).sample(range(len(self)), n_test))
        train = [c for i, c in enumerate(self._cases) if i not in test_idx]
        test = [c for i, c in enumerate(self._cases) if i in test_idx]
        return ArithmeticDataset(train, name=f"{self.name}-train"), ArithmeticDataset(test, name=f"{self.name}-test")

    @staticmethod
    def concat(*datasets: "ArithmeticDataset", name: str | None = None) -> "ArithmeticDataset":
        """The cases of several datasets, in order."""
        parts = [d for group in datasets for d in (group if isinstance(group, (list, tuple)) else [group])]
        if not parts or not all(isinstance(d, ArithmeticDataset) for d in parts):
            raise ValueError("concat takes one or more ArithmeticDataset objects")
        names = list(dict.fromkeys(d.name for d in parts))
        return ArithmeticDataset([c for d in parts for c in d], name=name if name is not None else "+".join(names))

    def sample_per(self, column: str, n: int, seed: int = 0) -> "ArithmeticDataset":
        """At most `n` seeded cases per value of `column` (e.g. `sample_per("op", 25)`), in original order."""
        from arithlens import validate

        if column not in _FIELDS and column != "n_tokens":
            raise ValueError(f"column={column!r} is not a case field; allowed: {list(_FIELDS) + ['n_tokens']}")
        n = validate.positive_int(n, "n")
        groups: dict[Any, list[int]] = {}
        for i, c in enumerate(self._cases):
            groups.setdefault(getattr(c, column), []).append(i)
        keep: list[int] = []
        for value, idx in groups.items():
            rng = random.Random(f"{seed}:{value}")
            keep += idx if len(idx) <= n else rng.sample(idx, n)
        return ArithmeticDataset([self._cases[i] for i in sorted(keep)], name=self.name)

    def correct_under(self, cache: Any) -> "ArithmeticDataset":
        """The cases a model answers correctly, read off a cache (or run) of this dataset.

        `cache` is what [`LensModel.cache`][arithlens.models.LensModel.cache] returned for
        this very dataset: its predictions are compared with each case's target, so no
        forward pass runs here.
        """
        if not hasattr(cache, "correct") or not hasattr(cache, "input_ids"):
            raise ValueError("correct_under needs the ActivationCache of this dataset: model.cache(dataset)")
        if list(cache.input_ids) != [c.input_ids for c in self._cases]:
            raise ValueError(f"the cache holds {len(cache.input_ids)} other cases than this dataset ({len(self)})")
        if any(c.target_id < 0 for c in self._cases):
            raise ValueError("correct_under needs cases with answers; some cases have no target")
        kept = [c for c, ok in zip(self._cases, cache.correct.tolist()) if ok]
        if not kept:
            raise ValueError(f"empty dataset: the model answers none of the {len(self)} cases of {self.name or 'the dataset'!r} correctly")
        return ArithmeticDataset(kept, name=f"{self.name}-correct")


def _matcher(value: Any) -> Callable[[Any], bool]:
    if callable(value):
        return value
    if isinstance(value, Collection) and not isinstance(value, str):
        allowed = set(value)
        return lambda x: x in allowed
    return lambda x: x == value


def _ids_case(ids: Sequence[int], tokenizer: Any, index: int) -> Case:
    from arithlens import validate

    if len(ids) == 0:
        raise ValueError(f"data item {index} has zero tokens; every case needs at least one")
    clean = tuple(validate.integer(t, f"data item {index} token id", low=0) for t in ids)
    return Case(tokenizer.decode(list(clean)), "", "", -1, clean, ())


def as_dataset(x: Any, tokenizer: Any) -> ArithmeticDataset:
    """Normalise what a user passes as data into an [`ArithmeticDataset`][arithlens.data.ArithmeticDataset].

    Accepts a dataset (returned as is), a prompt string, a [`Case`][arithlens.data.Case],
    token ids (a 1-D or 2-D integer tensor, or a list of id lists), or a list of prompts or
    cases. Prompts without answers get `target_id = -1` (analyses then score the model's
    own prediction). Anything else is a `ValueError` naming what was given.
    """
    import torch

    if isinstance(x, ArithmeticDataset):
        return x
    if x is None:
        raise ValueError("data=None: pass a prompt, a list of prompts, token ids or a dataset from arithlens.data")
    if isinstance(x, str):
        x = [x]
    if isinstance(x, Case):
        return ArithmeticDataset([x])
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.ndim not in (1, 2):
            raise ValueError(f"token-id tensor must be 1-D or 2-D integers, got {x.dtype} of shape {tuple(x.shape)}")
        x = [x.tolist()] if x.ndim == 1 else x.tolist()
    if not isinstance(x, (Sequence, Iterator)) or isinstance(x, (bytes, dict)):
        raise ValueError(
            f"data={type(x).__name__} is not data: pass a prompt, a list of prompts, token ids or a dataset"
        )
    items = list(x)
    if not items:
        raise ValueError("empty dataset: there are no prompts to run")
    if all(isinstance(i, Case) for i in items):
        return ArithmeticDataset(items)
    if all(isinstance(i, str) for i in items):
        from arithlens.data.prompts import prompts

        if any(not p for p in items):
            raise ValueError(f"data item {next(i for i, p in enumerate(items) if not p)} is an empty prompt")
        return prompts(tokenizer, items)
    cases = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            from arithlens.data.prompts import prompts

            cases.append(prompts(tokenizer, [item])[0])
        elif isinstance(item, Case):
            cases.append(item)
        elif isinstance(item, torch.Tensor) and item.ndim == 1 and not item.dtype.is_floating_point:
            cases.append(_ids_case(item.tolist(), tokenizer, index))
        elif isinstance(item, (list, tuple)):
            cases.append(_ids_case(item, tokenizer, index))
        elif isinstance(item, int) and not isinstance(item, bool):
            raise ValueError(
                f"data item {index} is the integer {item!r}: pass prompts as strings, or token ids as a "
                "list of id lists ([[ids...]]) or a tensor"
            )
        else:
            raise ValueError(f"data item {index} is {item!r} ({type(item).__name__}), not a prompt, a Case or token ids")
    return ArithmeticDataset(cases)
