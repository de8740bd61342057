"""Datasets of next-token cases, and the one place inputs are normalised: [`as_dataset`][arithlens.core.dataset.as_dataset]."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, overload

import pandas as pd
import torch

from arithlens.core import validate

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
    """An immutable, list-like collection of [`Case`][arithlens.core.dataset.Case] objects."""

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

    def with_bos(self, tokenizer: Any, prepend_bos: bool | None = True) -> ArithmeticDataset:
        """The same cases with the BOS token prepended to each prompt's ids (`True`, as
        TransformerLens's `model.to_tokens` does by default), stripped (`False`), or as they
        are (`None`). See [`set_bos`][arithlens.core.dataset.set_bos]."""
        return ArithmeticDataset(bos_cases(self._cases, tokenizer, prepend_bos), name=self.name)

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

        `cache` is what [`LensModel.cache`][arithlens.core.model.LensModel.cache] returned for
        this very dataset: its predictions are compared with each case's target, so no
        forward pass runs here.
        """
        if not hasattr(cache, "correct") or not hasattr(cache, "input_ids"):
            raise ValueError("correct_under needs the DatasetCache of this dataset: model.cache(dataset)")
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

    if len(ids) == 0:
        raise ValueError(f"data item {index} has zero tokens; every case needs at least one")
    clean = tuple(validate.integer(t, f"data item {index} token id", low=0) for t in ids)
    return Case(tokenizer.decode(list(clean)), "", "", -1, clean, ())


def check_prepend_bos(prepend_bos: Any, tokenizer: Any = None) -> bool | None:
    """`prepend_bos` checked: `None`, `True` or `False`; `True` needs a tokenizer with a BOS token."""
    if prepend_bos is not None and not isinstance(prepend_bos, bool):
        raise ValueError(f"prepend_bos={prepend_bos!r} must be None (the tokenizer's own encode), True or False")
    if prepend_bos and tokenizer is not None and getattr(tokenizer, "bos_token_id", None) is None:
        raise ValueError("prepend_bos=True but this tokenizer has no BOS token")
    return prepend_bos


def set_bos(ids: Sequence[int], tokenizer: Any, prepend_bos: bool | None) -> tuple[int, ...]:
    """A prompt's token ids with the BOS token first (`True`: prepended unless already there,
    as TransformerLens's `to_tokens(prepend_bos=True)`), without a leading BOS (`False`), or
    unchanged (`None`: whatever `tokenizer.encode` gives — arithlens's default)."""
    ids = tuple(int(i) for i in ids)
    if prepend_bos is None:
        return ids
    bos = getattr(tokenizer, "bos_token_id", None)
    has = bool(ids) and bos is not None and ids[0] == bos
    if prepend_bos and not has:
        return (int(bos), *ids)
    if not prepend_bos and has:
        return ids[1:]
    return ids


def bos_cases(cases: Sequence[Case], tokenizer: Any, prepend_bos: bool | None) -> list[Case]:
    """`cases` with [`set_bos`][arithlens.core.dataset.set_bos] applied to each prompt's ids
    (the target and answer tokens come after the prompt and do not move)."""
    prepend_bos = check_prepend_bos(prepend_bos, tokenizer)
    if prepend_bos is None:
        return list(cases)
    return [replace(c, input_ids=set_bos(c.input_ids, tokenizer, prepend_bos)) for c in cases]


def as_dataset(x: Any, tokenizer: Any, prepend_bos: bool | None = None) -> ArithmeticDataset:
    """Normalise what a user passes as data into an [`ArithmeticDataset`][arithlens.data.ArithmeticDataset].

    Accepts a dataset (returned as is), a prompt string, a [`Case`][arithlens.data.Case],
    token ids (a 1-D or 2-D integer tensor, or a list of id lists), or a list of prompts or
    cases. Prompts without answers get `target_id = -1` (analyses then score the model's
    own prediction). Anything else is a `ValueError` naming what was given.
    `prepend_bos` (prompts only): `None` keeps `tokenizer.encode`'s ids, `True` puts the BOS
    token first as TransformerLens's `to_tokens` does, `False` drops a leading BOS.
    """
    check_prepend_bos(prepend_bos, tokenizer)
    if prepend_bos is not None and (isinstance(x, str) or (isinstance(x, Sequence) and x and all(isinstance(i, str) for i in x))):
        return prompts(tokenizer, [x] if isinstance(x, str) else list(x), prepend_bos=prepend_bos)

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

        if any(not p for p in items):
            raise ValueError(f"data item {next(i for i, p in enumerate(items) if not p)} is an empty prompt")
        return prompts(tokenizer, items)
    cases = []
    for index, item in enumerate(items):
        if isinstance(item, str):

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


@dataclass(frozen=True)
class Item:
    """An un-tokenized problem: `core` text, answer, and metadata for the resulting cases."""

    core: str
    answer: str
    sep: str
    meta: dict[str, Any]


def _backend(tokenizer: Any) -> Any:
    """The Rust `tokenizers.Tokenizer` behind a fast HF tokenizer, or None."""
    return getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None


def encode_many(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """`tokenizer.encode(text)` for each text, batched where possible."""
    if not texts:
        return []
    backend = _backend(tokenizer)
    if backend is not None:
        # The Rust batch call skips transformers' per-item Python overhead; it must agree
        # with `encode` (some wrappers post-process), so spot-check and fall back if not.
        out = [enc.ids for enc in backend.encode_batch(list(texts), add_special_tokens=True)]
        if all(out[i] == list(tokenizer.encode(texts[i])) for i in {0, len(texts) - 1}):
            return out
    if callable(tokenizer) and hasattr(tokenizer, "batch_decode"):
        return [list(ids) for ids in tokenizer(list(texts))["input_ids"]]
    return [list(tokenizer.encode(t)) for t in texts]


def decode_many(tokenizer: Any, seqs: Sequence[Sequence[int]]) -> list[str]:
    """Raw decoded text of each sequence (special tokens kept, no space clean-up)."""
    if not seqs:
        return []
    seqs = [list(s) for s in seqs]
    backend = _backend(tokenizer)
    # clean_up_tokenization_spaces would shift character counts (" ." -> "."), so keep raw.
    if backend is not None:
        out = backend.decode_batch(seqs, skip_special_tokens=False)
        if out[0] == tokenizer.decode(seqs[0], clean_up_tokenization_spaces=False):
            return list(out)
    try:
        return list(tokenizer.batch_decode(seqs, clean_up_tokenization_spaces=False))
    except (AttributeError, TypeError):
        return [tokenizer.decode(s) for s in seqs]


def _encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Tokens of `text` alone, without BOS/EOS."""
    try:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    except TypeError:
        return list(tokenizer.encode(text))


def _special_ids(tokenizer: Any) -> set[int]:
    return set(getattr(tokenizer, "all_special_ids", ()) or ())


def _common_prefix(x: Sequence[int], y: Sequence[int]) -> int:
    n = min(len(x), len(y))
    i = 0
    while i < n and x[i] == y[i]:
        i += 1
    return i


def tokenize_items(tokenizer: Any, items: Sequence[Item], per_digit: bool, labeller: Callable) -> list[Case]:
    """Turn items into cases, reading answer tokens off `encode(core + sep + answer)`."""
    specials = _special_ids(tokenizer)
    cores = list(dict.fromkeys(it.core for it in items))  # encode each distinct core once
    core_ids = dict(zip(cores, encode_many(tokenizer, cores)))
    fulls = encode_many(tokenizer, [it.core + it.sep + it.answer for it in items])

    # Pass 1: align each item. A plan (pids, bridge, full, j) means: answer-side tokens
    # ("tail") = bridge + full[j:], and tail token i is predicted from _context(plan, i).
    plans: list[tuple[list[int], list[int], list[int], int]] = []
    straddling: list[tuple[int, int]] = []
    for idx, (it, full) in enumerate(zip(items, fulls)):
        pids = core_ids[it.core]
        # Tokenizers that append EOS etc. put it at the end of both; it is not answer.
        n_trail = 0
        while n_trail < len(pids) and pids[-1 - n_trail] in specials:
            n_trail += 1
        if n_trail and full[len(full) - n_trail :] == pids[len(pids) - n_trail :]:
            pids, full = pids[:-n_trail], full[:-n_trail]
        k = _common_prefix(pids, full)
        plans.append((pids, [], full, k))
        if k < len(pids):
            straddling.append((idx, k))

    # A token straddles the boundary (SmolLM2: "3-5=" + "-2" -> '=-', '2'). The model is
    # asked with encode(core), so the target is the answer text inside the straddling
    # token(s), tokenized alone ("bridge"); later tokens keep their natural context.
    bridges: dict[str, list[int]] = {}
    to_decode: list[list[int]] = []
    for idx, k in straddling:
        pids, _, full, _ = plans[idx]
        to_decode += [pids] + [full[:j] for j in range(k + 1, len(full) + 1)]
    texts = iter(decode_many(tokenizer, to_decode))
    for idx, k in straddling:
        pids, _, full, _ = plans[idx]
        core_len = len(next(texts))
        prefixes = [next(texts) for _ in range(k + 1, len(full) + 1)]
        # First token boundary at or past the end of the prompt text: tokens k..j-1 straddle it.
        j = next((k + 1 + n for n, text in enumerate(prefixes) if len(text) >= core_len), len(full))
        head = prefixes[j - k - 1][core_len:]
        if head not in bridges:
            bridges[head] = [t for t in _encode_plain(tokenizer, head) if t not in specials]
        plans[idx] = (pids, bridges[head], full, j)

    # Pass 2: token texts -> leading whitespace count w and the answer positions wanted.
    tails = [bridge + full[j:] for _, bridge, full, j in plans]
    need = sorted({t for tail in tails for t in tail})
    token_text = dict(zip(need, decode_many(tokenizer, [[t] for t in need])))
    spans: list[range] = []
    for it, tail in zip(items, tails):
        # Leading whitespace-only tokens (SmolLM2's bare ' ') belong to the prompt.
        w = 0
        while w < len(tail) and token_text[tail[w]].strip() == "":
            w += 1
        if w == len(tail):
            raise ValueError(f"no answer token found for {it.core + it.sep + it.answer!r}")
        spans.append(range(w, len(tail) if per_digit else w + 1))

    # Pass 3: decode each prompt and target context in one batch; the length difference
    # is where the target starts in sep + answer (robust to '▁' and byte-level tokens).
    flat: list[list[int]] = []
    for plan, span in zip(plans, spans):
        flat.append(plan[0])
        flat.extend(_context(plan, i) for i in span)
    lengths = iter([len(t) for t in decode_many(tokenizer, flat)])

    cases: list[Case] = []
    for it, plan, tail, span in zip(items, plans, tails, spans):
        base_len = next(lengths)
        rem = it.sep + it.answer
        for i in span:
            start = next(lengths) - base_len
            if not 0 <= start <= len(rem):
                raise ValueError(f"could not align answer tokens of {it.core + rem!r} (offset {start})")
            # Character index in the answer where this token's text begins (skip its spaces).
            char = start
            while char < len(rem) and rem[char].isspace():
                char += 1
            cases.append(
                Case(
                    prompt=it.core + rem[:start],
                    answer=it.answer,
                    target_str=token_text[tail[i]],
                    target_id=int(tail[i]),
                    input_ids=tuple(_context(plan, i)),
                    answer_ids=tuple(tail[i:]),
                    position=i - span.start,
                    case_type=labeller(it, char - len(it.sep)),
                    **it.meta,
                )
            )
    return cases


def _context(plan: tuple[list[int], list[int], list[int], int], i: int) -> list[int]:
    """Token ids preceding tail token `i` of an alignment plan."""
    pids, bridge, full, j = plan
    return pids + bridge[:i] if i < len(bridge) else full[: j + i - len(bridge)]


def prompts(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str] | None = None, name: str = "prompts",
    prepend_bos: bool | None = None,
) -> ArithmeticDataset:
    """Generic next-token cases ("A woman works as a" -> " nurse").

    With `answers` the target is the answer's first token, found as for arithmetic
    (`prompt + " " + answer` unless either side already supplies the space); without,
    `target_id` is -1 and `target_str` "" (analyses then use the model's prediction).
    `prepend_bos`: see [`set_bos`][arithlens.core.dataset.set_bos] (default: `tokenizer.encode`'s ids).
    """
    check_prepend_bos(prepend_bos, tokenizer)
    if prepend_bos is not None:
        plain = _prompts_plain(tokenizer, prompts, answers, name)
        return ArithmeticDataset(bos_cases(list(plain), tokenizer, prepend_bos), name=plain.name)
    return _prompts_plain(tokenizer, prompts, answers, name)


def _prompts_plain(tokenizer: Any, prompts: Sequence[str], answers: Sequence[str] | None, name: str) -> ArithmeticDataset:
    if isinstance(prompts, str):
        prompts = [prompts]  # a lone string is one prompt, not a sequence of characters
    prompts = _strings(prompts, "prompts")
    if answers is None:
        ids = encode_many(tokenizer, list(prompts))
        cases = [Case(p, "", "", -1, tuple(int(t) for t in x), ()) for p, x in zip(prompts, ids)]
        return ArithmeticDataset(cases, name=name)
    if isinstance(answers, str):
        answers = [answers]
    answers = _strings(answers, "answers")
    if len(answers) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    items = []
    for p, ans in zip(prompts, answers):
        if not ans or not ans.strip():
            raise ValueError(f"answer for prompt {p!r} is empty")
        glued = ans[0].isspace() or (p[-1:].isspace()) or p.endswith("=") or not p
        items.append(Item(p, ans, "" if glued else " ", {}))
    return ArithmeticDataset(tokenize_items(tokenizer, items, False, lambda it, i: None), name=name)


def _strings(values: Any, name: str) -> list[str]:
    """A non-empty list of strings, or `ValueError` naming the first item that is not one."""
    if values is None or isinstance(values, (bytes, dict)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name}={values!r} must be a list of strings")
    out = list(values)
    if not out:
        raise ValueError(f"{name} is empty: give at least one string")
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise ValueError(f"{name} item {i} is {v!r} ({type(v).__name__}), not a string")
    return out
