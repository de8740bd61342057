"""Arithmetic and free-text prompt datasets with tokenizer-derived targets.

Builds the paper's arithmetic data (§3.2-3.4, Table 14 "Four prompts"; §5 LoRA set):
1-3 digit ``+ - * /`` problems in four templates, with operands as numerals or
English number words, each turned into next-token :class:`Case` objects. Targets are
always read off the tokenizer: the full text ``prompt + answer`` is tokenized and the
answer tokens are the slice after the part shared with the prompt, so tokenizers that
emit a bare whitespace token before a number (SmolLM2: ``' is', ' ', '8'``) and
SentencePiece-style ones (``'▁is', '▁8'``) both yield a digit target. With
``per_digit=True`` every answer token becomes a case, labelled "memorize" or
"change-one" as in §3.4.

Example::

    from arithlens.data import arithmetic, prompts
    from arithlens.testing import char_tokenizer

    tok = char_tokenizer()
    ds = arithmetic(tok, ops="+", digits=2, templates=(4,), forms=("numeral",),
                    n_per_op=5, per_digit=True)
    print(ds.to_frame()[["prompt", "target_str", "case_type", "position"]])
    train, test = ds.split(n_test=2)
    bias = prompts(tok, ["A woman works as a"], answers=["nurse"])
    print(bias[0].prompt, "->", repr(bias[0].target_str))
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, overload

import pandas as pd

__all__ = [
    "OPS",
    "TEMPLATES",
    "FORMS",
    "Case",
    "ArithmeticDataset",
    "arithmetic",
    "lora_split",
    "prompts",
    "number_to_words",
]

OPS: tuple[str, ...] = ("+", "-", "*", "/")
FORMS: tuple[str, ...] = ("numeral", "word")
DIGITS: tuple[int, ...] = (1, 2, 3)

# Table 14, numbered 1-4 in this order. Template 4 has no spaces (the extracted
# "nl +n2=" is OCR noise for "n1+n2=").
TEMPLATES: dict[str, tuple[str, ...]] = {
    "+": ("The sum of {n1} and {n2} is", "Q: What is {n1} plus {n2}? A:", "{n1} plus {n2} is", "{n1}+{n2}="),
    "-": (
        "The difference between {n1} and {n2} is",
        "Q: What is {n1} minus {n2}? A:",
        "{n1} minus {n2} is",
        "{n1}-{n2}=",
    ),
    "*": (
        "The product of {n1} and {n2} is",
        "Q: What is {n1} times {n2}? A:",
        "{n1} times {n2} is",
        "{n1}*{n2}=",
    ),
    "/": (
        "The ratio of {n1} and {n2} is",
        "Q: What is {n1} divides {n2}? A:",
        "{n1} divides {n2} is",
        "{n1}/{n2}=",
    ),
}

# Default number of problems per (op, digits) when sampling is needed (2/3 digits).
DEFAULT_N_PER_OP = 100

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
         "seventeen", "eighteen", "nineteen"]  # fmt: skip
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_to_words(n: int) -> str:
    """English words for ``0 <= n <= 999``: 42 -> "forty-two", 342 -> "three hundred forty-two"."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 999:
        raise ValueError(f"number_to_words supports integers 0..999, got {n!r}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    head = f"{_ONES[hundreds]} hundred"
    return head if rest == 0 else f"{head} {number_to_words(rest)}"


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One next-token prediction: ``input_ids`` (= ``tokenizer.encode(prompt)``) -> ``target_id``.

    ``answer`` is the full answer text ("47", "-2", "nurse"); ``answer_ids`` are the
    answer tokens from the target on (a bare whitespace token is never included), for
    greedy full-answer accuracy. ``position`` is which answer token the target is
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
    """An immutable, list-like collection of :class:`Case` objects."""

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
        """One row per case; columns ``prompt, answer, target_id, ..., a, b, n_tokens``."""
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
        """Cases whose fields match: ``filter(op="+", digits=(1, 2), case_type="memorize")``.

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
        """A seeded subsample of ``n`` cases without replacement (all when ``n >= len``), in original order."""
        if n <= 0:
            raise ValueError(f"sample size must be positive, got {n}")
        if n >= len(self):
            return self
        keep = sorted(random.Random(seed).sample(range(len(self)), n))
        return ArithmeticDataset([self._cases[i] for i in keep], name=self.name)

    def split(self, n_test: int, seed: int = 0) -> tuple[ArithmeticDataset, ArithmeticDataset]:
        """A seeded (train, test) partition with ``n_test`` test cases."""
        if not 0 < n_test < len(self):
            raise ValueError(f"n_test must be in 1..{len(self) - 1}, got {n_test}")
        test_idx = set(random.Random(seed).sample(range(len(self)), n_test))
        train = [c for i, c in enumerate(self._cases) if i not in test_idx]
        test = [c for i, c in enumerate(self._cases) if i in test_idx]
        return ArithmeticDataset(train, name=f"{self.name}-train"), ArithmeticDataset(test, name=f"{self.name}-test")


def _matcher(value: Any) -> Callable[[Any], bool]:
    if callable(value):
        return value
    if isinstance(value, Collection) and not isinstance(value, str):
        allowed = set(value)
        return lambda x: x in allowed
    return lambda x: x == value


# ------------------------------------------------------------------ tokenization


@dataclass(frozen=True)
class _Item:
    """An un-tokenized problem: ``core`` text, answer, and metadata for the resulting cases."""

    core: str
    answer: str
    sep: str
    meta: dict[str, Any]


def _backend(tokenizer: Any) -> Any:
    """The Rust ``tokenizers.Tokenizer`` behind a fast HF tokenizer, or None."""
    return getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None


def _encode_many(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """``tokenizer.encode(text)`` for each text, batched where possible."""
    if not texts:
        return []
    backend = _backend(tokenizer)
    if backend is not None:
        # The Rust batch call skips transformers' per-item Python overhead; it must agree
        # with ``encode`` (some wrappers post-process), so spot-check and fall back if not.
        out = [enc.ids for enc in backend.encode_batch(list(texts), add_special_tokens=True)]
        if all(out[i] == list(tokenizer.encode(texts[i])) for i in {0, len(texts) - 1}):
            return out
    if callable(tokenizer) and hasattr(tokenizer, "batch_decode"):
        return [list(ids) for ids in tokenizer(list(texts))["input_ids"]]
    return [list(tokenizer.encode(t)) for t in texts]


def _decode_many(tokenizer: Any, seqs: Sequence[Sequence[int]]) -> list[str]:
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
    """Tokens of ``text`` alone, without BOS/EOS."""
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


def _tokenize_items(tokenizer: Any, items: Sequence[_Item], per_digit: bool, labeller: Callable) -> list[Case]:
    """Turn items into cases, reading answer tokens off ``encode(core + sep + answer)``."""
    specials = _special_ids(tokenizer)
    cores = list(dict.fromkeys(it.core for it in items))  # encode each distinct core once
    core_ids = dict(zip(cores, _encode_many(tokenizer, cores)))
    fulls = _encode_many(tokenizer, [it.core + it.sep + it.answer for it in items])

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
    texts = iter(_decode_many(tokenizer, to_decode))
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
    token_text = dict(zip(need, _decode_many(tokenizer, [[t] for t in need])))
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
    lengths = iter([len(t) for t in _decode_many(tokenizer, flat)])

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
    """Token ids preceding tail token ``i`` of an alignment plan."""
    pids, bridge, full, j = plan
    return pids + bridge[:i] if i < len(bridge) else full[: j + i - len(bridge)]


# -------------------------------------------------------------------- arithmetic


def _case_type(op: str, a: int, b: int, answer: str, index: int) -> str:
    """§3.4 label of the answer character at ``index`` (the first character of a token).

    add/sub: "change-one" when a carry/borrow from the lower column changes the digit
    (including a leading digit created by a carry), else "memorize"; mul/div: the last
    digit is "memorize", all others "change-one".
    """
    if answer[index] == "-":
        return "sign"
    col = len(answer) - 1 - index  # 0 = ones column
    if op in ("*", "/"):
        return "memorize" if col == 0 else "change-one"
    low = 10**col
    if op == "+":
        changed = (a % low) + (b % low) >= low  # carry into this column
    else:
        # A negative result is written as -(b - a); its digits come from that subtraction.
        x, y = (a, b) if a >= b else (b, a)
        changed = (x % low) < (y % low)  # borrow into this column
    return "change-one" if changed else "memorize"


def _arith_labeller(item: _Item, index: int) -> str | None:
    m = item.meta
    return _case_type(m["op"], m["a"], m["b"], item.answer, index)


def _result(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]


def _valid(op: str, a: int, b: int, negatives: bool) -> bool:
    if op == "-":
        return negatives or a >= b
    if op == "/":
        return b != 0 and a % b == 0  # exact division only
    return True


def _pool_size(op: str, d: int, negatives: bool) -> int:
    lo, hi = (0, 9) if d == 1 else (10 ** (d - 1), 10**d - 1)
    n = hi - lo + 1
    if op == "-" and not negatives:
        return n * (n + 1) // 2
    if op == "/":
        return len(_division_pairs(d))
    return n * n


def _division_pairs(d: int) -> list[tuple[int, int]]:
    lo, hi = (0, 9) if d == 1 else (10 ** (d - 1), 10**d - 1)
    return [(a, b) for b in range(max(lo, 1), hi + 1) for a in range(lo, hi + 1) if a % b == 0]


def _operand_pairs(op: str, d: int, n: int | None, seed: int, negatives: bool) -> list[tuple[int, int]]:
    """Valid (a, b) with exactly ``d`` digits each; all of them, or ``n`` sampled without replacement."""
    lo, hi = (0, 9) if d == 1 else (10 ** (d - 1), 10**d - 1)
    size = _pool_size(op, d, negatives)
    if n is None or n >= size:
        if op == "/":
            return _division_pairs(d)
        return [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1) if _valid(op, a, b, negatives)]
    # String seeds hash deterministically; per (op, d) streams keep ops independent of each other.
    rng = random.Random(f"arithlens:{seed}:{op}:{d}:{negatives}")
    if op == "/" or size <= 20_000:
        pool = _operand_pairs(op, d, None, seed, negatives)
        picked = rng.sample(pool, n)
    else:  # large pools: rejection-sample instead of materialising ~10^5 pairs
        seen: set[tuple[int, int]] = set()
        picked = []
        while len(picked) < n:
            pair = (rng.randint(lo, hi), rng.randint(lo, hi))
            if pair not in seen and _valid(op, *pair, negatives):
                seen.add(pair)
                picked.append(pair)
    return sorted(picked)


def _as_ops(ops: str | Sequence[str]) -> list[str]:
    out = list(dict.fromkeys(ops))  # "+-" or ["+", "-"]; order kept, duplicates dropped
    bad = [o for o in out if o not in OPS]
    if bad or not out:
        raise ValueError(f"unknown op {bad[0] if bad else ops!r}; allowed ops: {OPS}")
    return out


def _as_digits(digits: int | Sequence[int]) -> list[int]:
    out = [digits] if isinstance(digits, int) else list(dict.fromkeys(digits))
    bad = [d for d in out if isinstance(d, bool) or d not in DIGITS]
    if bad or not out:
        raise ValueError(f"unsupported digits {bad[0] if bad else digits!r}; allowed digits: {DIGITS}")
    return out


def _as_forms(forms: str | Sequence[str]) -> list[str]:
    out = [forms] if isinstance(forms, str) else list(dict.fromkeys(forms))
    bad = [f for f in out if f not in FORMS]
    if bad or not out:
        raise ValueError(f"unknown form {bad[0] if bad else forms!r}; allowed forms: {FORMS}")
    return out


def _as_templates(templates: int | str | Sequence[int | str]) -> list[int | str]:
    out = [templates] if isinstance(templates, (int, str)) else list(dict.fromkeys(templates))
    if not out:
        raise ValueError("no templates given; allowed: 1, 2, 3, 4 or a string with {n1} and {n2}")
    for t in out:
        if isinstance(t, str):
            if "{n1}" not in t or "{n2}" not in t:
                raise ValueError(f"template {t!r} must contain both {{n1}} and {{n2}} slots")
            try:
                t.format(n1="1", n2="2")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"template {t!r} has slots other than {{n1}} and {{n2}}: {err!r}") from None
        elif isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 4:
            raise ValueError(f"unknown template {t!r}; allowed: 1, 2, 3, 4 or a string with {{n1}} and {{n2}}")
    return out


def _sep(core: str) -> str:
    return "" if core.endswith("=") else " "


def _problem_items(
    op: str, pairs: Sequence[tuple[int, int]], d: int, templates: Sequence[int | str], forms: Sequence[str]
) -> list[_Item]:
    items = []
    for t in templates:
        text = TEMPLATES[op][t - 1] if isinstance(t, int) else t
        for form in forms:
            spell = number_to_words if form == "word" else str
            for a, b in pairs:
                core = text.format(n1=spell(a), n2=spell(b))
                meta = dict(op=op, a=a, b=b, digits=d, template=t, form=form)
                items.append(_Item(core, str(_result(op, a, b)), _sep(core), meta))
    return items


def arithmetic(
    tokenizer: Any,
    ops: str | Sequence[str] = "+-*/",
    digits: int | Sequence[int] = (1,),
    templates: int | str | Sequence[int | str] = (1, 2, 3, 4),
    forms: str | Sequence[str] = ("numeral", "word"),
    n_per_op: int | None = None,
    seed: int = 0,
    negatives: bool = False,
    per_digit: bool = False,
) -> ArithmeticDataset:
    """The §3 arithmetic dataset: every (op, digits) x template x form over shared operand pairs.

    1-digit problems are exhaustive unless ``n_per_op`` is given; 2/3-digit ones sample
    ``n_per_op`` (default 100) pairs per op, or all when the pool is smaller (division).
    ``per_digit`` gives one case per answer token, else one per problem (first token).
    """
    op_list, digit_list = _as_ops(ops), _as_digits(digits)
    template_list, form_list = _as_templates(templates), _as_forms(forms)
    if n_per_op is not None and n_per_op <= 0:
        raise ValueError(f"n_per_op must be positive or None, got {n_per_op}")
    items: list[_Item] = []
    for op in op_list:
        for d in digit_list:
            n = n_per_op if (n_per_op is not None or d == 1) else DEFAULT_N_PER_OP
            pairs = _operand_pairs(op, d, n, seed, negatives)
            items += _problem_items(op, pairs, d, template_list, form_list)
    name = f"arithmetic[{''.join(op_list)}; {','.join(map(str, digit_list))}D]"
    return ArithmeticDataset(_tokenize_items(tokenizer, items, per_digit, _arith_labeller), name=name)


def lora_split(
    tokenizer: Any, n_train: int = 18_000, n_test: int = 2_000, seed: int = 0
) -> tuple[ArithmeticDataset, ArithmeticDataset]:
    """The §5 LoRA data: distinct 2-digit (op, a, b, template) items, split train/test.

    All four ops, negative subtraction results included ("13-15=-2"), templates 1-4,
    numeral operands; one first-answer-token case per item (``answer`` holds the full
    answer for sequence training). Ops get equal shares; division's small pool is used
    up and the remainder spread over the other ops.
    """
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"n_train and n_test must be positive, got {n_train}, {n_test}")
    total, n_templates = n_train + n_test, 4
    capacity = {op: _pool_size(op, 2, True) * n_templates for op in OPS}
    if total > sum(capacity.values()):
        raise ValueError(f"lora_split: {total} items requested but only {sum(capacity.values())} exist")
    # Water-filling: equal shares, capped by each op's pool, leftovers to the others.
    quota, left, open_ops = dict.fromkeys(OPS, 0), total, list(OPS)
    while left:
        share, extra = divmod(left, len(open_ops))
        for i, op in enumerate(open_ops):
            quota[op] += min(share + (i < extra), capacity[op] - quota[op])
        left = total - sum(quota.values())
        open_ops = [op for op in OPS if quota[op] < capacity[op]]
    items: list[_Item] = []
    for op in OPS:
        rng = random.Random(f"arithlens-lora:{seed}:{op}")
        # Sample (pair, template) items directly: a pair may appear with several templates.
        keys = rng.sample(range(capacity[op]), quota[op])
        pairs = _operand_pairs(op, 2, None, seed, negatives=True)
        for key in keys:
            a, b = pairs[key // n_templates]
            items += _problem_items(op, [(a, b)], 2, [key % n_templates + 1], ["numeral"])
    random.Random(f"arithlens-lora-split:{seed}").shuffle(items)
    cases = _tokenize_items(tokenizer, items, per_digit=False, labeller=_arith_labeller)
    return ArithmeticDataset(cases[:n_train], name="lora-train"), ArithmeticDataset(cases[n_train:], name="lora-test")


# ------------------------------------------------------------------ free prompts


def prompts(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str] | None = None, name: str = "prompts"
) -> ArithmeticDataset:
    """Generic next-token cases ("A woman works as a" -> " nurse").

    With ``answers`` the target is the answer's first token, found as for arithmetic
    (``prompt + " " + answer`` unless either side already supplies the space); without,
    ``target_id`` is -1 and ``target_str`` "" (analyses then use the model's prediction).
    """
    if isinstance(prompts, str):
        prompts = [prompts]  # a lone string is one prompt, not a sequence of characters
    if answers is None:
        ids = _encode_many(tokenizer, list(prompts))
        cases = [Case(p, "", "", -1, tuple(int(t) for t in x), ()) for p, x in zip(prompts, ids)]
        return ArithmeticDataset(cases, name=name)
    if isinstance(answers, str):
        answers = [answers]
    if len(answers) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    items = []
    for p, ans in zip(prompts, answers):
        if not ans or not ans.strip():
            raise ValueError(f"answer for prompt {p!r} is empty")
        glued = ans[0].isspace() or (p[-1:].isspace()) or p.endswith("=") or not p
        items.append(_Item(p, ans, "" if glued else " ", {}))
    return ArithmeticDataset(_tokenize_items(tokenizer, items, False, lambda it, i: None), name=name)
