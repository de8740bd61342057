"""The papers' arithmetic data: Table 14 templates, §5 LoRA split, Zhang et al.'s set."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from arithlens.core.dataset import ArithmeticDataset
from arithlens.core.dataset import Item, bos_cases, check_prepend_bos, tokenize_items

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
    """English words for `0 <= n <= 999`: 42 -> "forty-two", 342 -> "three hundred forty-two"."""
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


def _case_type(op: str, a: int, b: int, answer: str, index: int) -> str:
    """§3.4 label of the answer character at `index` (the first character of a token).

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


def _arith_labeller(item: Item, index: int) -> str | None:
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
    """Valid (a, b) with exactly `d` digits each; all of them, or `n` sampled without replacement."""
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
) -> list[Item]:
    items = []
    for t in templates:
        text = TEMPLATES[op][t - 1] if isinstance(t, int) else t
        for form in forms:
            spell = number_to_words if form == "word" else str
            for a, b in pairs:
                core = text.format(n1=spell(a), n2=spell(b))
                meta = dict(op=op, a=a, b=b, digits=d, template=t, form=form)
                items.append(Item(core, str(_result(op, a, b)), _sep(core), meta))
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
    prepend_bos: bool | None = None,
) -> ArithmeticDataset:
    """The §3 arithmetic dataset: every (op, digits) x template x form over shared operand pairs.

    1-digit problems are exhaustive unless `n_per_op` is given; 2/3-digit ones sample
    `n_per_op` (default 100) pairs per op, or all when the pool is smaller (division).
    `per_digit` gives one case per answer token, else one per problem (first token).
    `prepend_bos`: `None` (default) keeps the tokenizer's own `encode` (SmolLM2 adds no
    BOS); `True` puts the BOS token first, so positions match TransformerLens's
    `model.to_tokens(prompt)` (which prepends BOS by default); `False` drops a leading BOS.
    """
    check_prepend_bos(prepend_bos, tokenizer)
    op_list, digit_list = _as_ops(ops), _as_digits(digits)
    template_list, form_list = _as_templates(templates), _as_forms(forms)
    if n_per_op is not None and n_per_op <= 0:
        raise ValueError(f"n_per_op must be positive or None, got {n_per_op}")
    items: list[Item] = []
    for op in op_list:
        for d in digit_list:
            n = n_per_op if (n_per_op is not None or d == 1) else DEFAULT_N_PER_OP
            pairs = _operand_pairs(op, d, n, seed, negatives)
            items += _problem_items(op, pairs, d, template_list, form_list)
    name = f"arithmetic[{''.join(op_list)}; {','.join(map(str, digit_list))}D]"
    return ArithmeticDataset(bos_cases(tokenize_items(tokenizer, items, per_digit, _arith_labeller), tokenizer, prepend_bos), name=name)


def lora_split(
    tokenizer: Any, n_train: int = 18_000, n_test: int = 2_000, seed: int = 0
) -> tuple[ArithmeticDataset, ArithmeticDataset]:
    """The §5 LoRA data: distinct 2-digit (op, a, b, template) items, split train/test.

    All four ops, negative subtraction results included ("13-15=-2"), templates 1-4,
    numeral operands; one first-answer-token case per item (`answer` holds the full
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
    items: list[Item] = []
    for op in OPS:
        rng = random.Random(f"arithlens-lora:{seed}:{op}")
        # Sample (pair, template) items directly: a pair may appear with several templates.
        keys = rng.sample(range(capacity[op]), quota[op])
        pairs = _operand_pairs(op, 2, None, seed, negatives=True)
        for key in keys:
            a, b = pairs[key // n_templates]
            items += _problem_items(op, [(a, b)], 2, [key % n_templates + 1], ["numeral"])
    random.Random(f"arithlens-lora-split:{seed}").shuffle(items)
    cases = tokenize_items(tokenizer, items, per_digit=False, labeller=_arith_labeller)
    return ArithmeticDataset(cases[:n_train], name="lora-train"), ArithmeticDataset(cases[n_train:], name="lora-test")


def zhang(
    tokenizer: Any, n_per_op: int = 50, ops: str | Sequence[str] = "+", digits: int = 2, seed: int = 0,
    prepend_bos: bool | None = None,
) -> ArithmeticDataset:
    """Zhang et al.'s dataset: "{n1} plus {n2} is" (template 3), numeral operands, 2-digit by default.

    The set path patching, knockout, END attention, the MLP probe and precise SFT use.
    """
    return arithmetic(tokenizer, ops=ops, digits=digits, templates=[3], forms=["numeral"], n_per_op=n_per_op, seed=seed,
                      prepend_bos=prepend_bos)
