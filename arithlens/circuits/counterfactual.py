"""Reference / counterfactual prompt pairs — Zhang et al. (ICML 2024) §3 and §4.1.

For every reference prompt ``X_r`` the counterfactual ``X_c`` replaces the words that
carry the operation by an irrelevant word: "42 plus 34 is" -> "42 nothing 34 is",
"42+34=" -> "42@34=", "The sum of 42 and 34 is" -> "The name of 42 and 34 is". Operands
and sentence structure stay, so a node whose output changes between the two carries the
*arithmetic* information, not syntax.

The operator word is located from the case's template (``Case.op``, ``template``, ``a``,
``b``, ``form``) — or, for bare prompts, by searching for an operator word / symbol
between the two operands. The replacement is the first candidate of
:data:`REPLACEMENTS` (by kind: operator word, operator noun, symbol) for which the
counterfactual prompt tokenizes to exactly as many tokens as the reference with the
model's own tokenizer (and to no unknown token). Pairs must align position by position
(patching at the END position and mean ablation over positions need it); where no
candidate gives the same length a ValueError names the prompt and both token counts.

:func:`locate` also gives the character spans of operand A, operand B and the operator,
which :mod:`~arithlens.circuits.end_attention` and :mod:`~arithlens.circuits.mlp_probe`
use to find their tokens.

Example::

    import arithlens
    from arithlens import data
    from arithlens.circuits import Counterfactual

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3],
                            forms=["numeral"], n_per_op=8)
    pairs = Counterfactual().run(model, cases)
    pairs.df[["prompt", "counterfactual", "word", "replacement"]]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch
from jaxtyping import Int

from arithlens.results import Result

# The words carrying the operation in each op's templates (Table 14), longest first so
# "divided by" wins over "by".
OPERATOR_WORDS: dict[str, tuple[str, ...]] = {
    "+": ("sum", "plus", "added to", "+"),
    "-": ("difference", "minus", "subtract", "-"),
    "*": ("product", "times", "multiplied by", "*"),
    "/": ("ratio", "divided by", "divides", "/"),
}
NOUNS = ("sum", "difference", "product", "ratio")

# Irrelevant replacements, tried in order; the first giving the same token count wins.
# Several lengths so character-level tokenizers find one too.
REPLACEMENTS: dict[str, tuple[str, ...]] = {
    "word": ("nothing", "with", "then", "blue", "green", "apple", "house", "window", "garden",
             "picture", "yellow", "elephant", "something", "background", "cat", "sky", "to"),
    "noun": ("name", "color", "story", "shape", "list", "picture", "weather", "nothing", "background",
             "map", "cat", "house", "window", "elephant"),
    "symbol": ("@", "#", "|", "~", "_", "&", ";", ",", ".", "'", "?"),
}  # fmt: skip

_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
    "eighty ninety hundred"
).split()
_NUMBER = re.compile(
    r"-?\d+|\b(?:%s)(?:[- ](?:%s))*\b" % ("|".join(_NUMBER_WORDS), "|".join(_NUMBER_WORDS)),
    re.IGNORECASE,
)

Span = tuple[int, int]


@dataclass(frozen=True)
class Spans:
    """Character spans ``[start, end)`` of operand A, operand B and the operator word."""

    a: Span
    b: Span
    op: Span
    word: str

    def kind(self) -> str:
        """``"symbol"``, ``"noun"`` (sum, difference, ...) or ``"word"`` (plus, minus, ...)."""
        if not any(ch.isalpha() for ch in self.word):
            return "symbol"
        return "noun" if self.word.lower() in NOUNS else "word"


def _find_operator(text: str, op: str | None, start: int = 0, end: int | None = None) -> Span | None:
    """First operator word (of ``op``, or of any op) in ``text[start:end]``."""
    end = len(text) if end is None else end
    ops = [op] if op in OPERATOR_WORDS else list(OPERATOR_WORDS)
    best: Span | None = None
    for o in ops:
        for word in OPERATOR_WORDS[o]:
            pattern = re.escape(word) if not word[0].isalpha() else r"\b" + re.escape(word) + r"\b"
            m = re.compile(pattern, re.IGNORECASE).search(text, start, end)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), m.end())
    return best


def _from_template(case: Any) -> Spans | None:
    """Spans read off the case's template: exact, no searching in the prompt."""
    from arithlens.data import TEMPLATES, number_to_words

    op, t, a, b = (getattr(case, k, None) for k in ("op", "template", "a", "b"))
    if op not in OPERATOR_WORDS or t is None or a is None or b is None:
        return None
    text = TEMPLATES[op][t - 1] if isinstance(t, int) else str(t)
    if "{n1}" not in text or "{n2}" not in text:
        return None
    spell = number_to_words if getattr(case, "form", "numeral") == "word" else str
    try:
        n1, n2 = spell(a), spell(b)
    except ValueError:
        return None
    i1, i2 = text.index("{n1}"), text.index("{n2}")
    if i1 > i2:
        return None
    a0 = len(text[:i1])
    a_span = (a0, a0 + len(n1))
    b0 = a_span[1] + (i2 - i1 - 4)
    b_span = (b0, b0 + len(n2))
    # The operator sits in the template outside the placeholders: map its offset.
    plain = text.replace("{n1}", "\0" * 4).replace("{n2}", "\0" * 4)
    hit = _find_operator(plain, op)
    if hit is None:
        return None
    shift = lambda i: i if i < i1 else (i - i1 - 4 + a_span[1] if i < i2 else i - i2 - 4 + b_span[1])  # noqa: E731
    op_span = (shift(hit[0]), shift(hit[1] - 1) + 1)
    prompt = case.prompt
    if prompt[a_span[0] : a_span[1]] != n1 or prompt[b_span[0] : b_span[1]] != n2:
        return None
    return Spans(a_span, b_span, op_span, prompt[op_span[0] : op_span[1]])


def locate(case: Any) -> Spans:
    """Character spans of operand A, operand B and the operator in a case or prompt.

    Raises:
        ValueError: The prompt has no two operands with an operator word between them.
    """
    found = None if isinstance(case, str) else _from_template(case)
    if found is not None:
        return found
    prompt = case if isinstance(case, str) else case.prompt
    numbers = list(_NUMBER.finditer(prompt))
    op = None if isinstance(case, str) else getattr(case, "op", None)
    for i in range(len(numbers) - 1):
        x, y = numbers[i], numbers[i + 1]
        # "-3" right after an operator is a negative operand, but "4-3" reads as minus.
        y0 = y.start() + 1 if prompt[y.start()] == "-" and y.start() == x.end() else y.start()
        hit = _find_operator(prompt, op, x.end(), y0 + 1 if y0 > y.start() else y0)
        if hit is not None:
            b_span = (max(y0, hit[1]), y.end())
            return Spans((x.start(), x.end()), b_span, hit, prompt[hit[0] : hit[1]])
    raise ValueError(
        f"no operator word between two operands in {prompt!r}; expected one of "
        f"{sorted({w for ws in OPERATOR_WORDS.values() for w in ws})} between two numbers"
    )


def token_spans(tokenizer: Any, ids: Sequence[int]) -> list[Span]:
    """Character span of every token of ``ids`` in ``decode(ids)`` (by cumulative decoding)."""
    from arithlens.data import _decode_many

    ids = list(ids)
    ends = [len(t) for t in _decode_many(tokenizer, [ids[: i + 1] for i in range(len(ids))])]
    starts = [0] + ends[:-1]
    return list(zip(starts, ends))


def token_roles(tokenizer: Any, ids: Sequence[int], spans: Spans) -> list[str]:
    """Role of each token: ``"A"``, ``"B"``, ``"operator"`` or ``"other"``.

    A token belongs to an operand / the operator when its text overlaps that span and is
    not whitespace only (SmolLM2's bare ``' '`` before a number counts as other).
    """
    from arithlens.data import _decode_many

    texts = _decode_many(tokenizer, [[int(i)] for i in ids])
    roles = []
    for (s, e), text in zip(token_spans(tokenizer, ids), texts):
        role = "other"
        if text.strip():
            for name, (a, b) in (("A", spans.a), ("B", spans.b), ("operator", spans.op)):
                if s < b and a < e:
                    role = name
                    break
        roles.append(role)
    return roles


@dataclass
class CounterfactualPairs(Result):
    """Reference prompts and their same-length counterfactuals.

    Attributes:
        df: One row per pair: ``prompt, counterfactual, word, replacement, n_tokens,
            target_str`` and the case labels (``op, a, b, digits, template, form``).
        cases: The reference cases (dataset items or prompts).
        reference_ids: Token ids of each reference prompt.
        counterfactual_ids: Token ids of each counterfactual prompt (same lengths).
        target_ids: Ground-truth token of each reference (``-1`` where none).
        spans: :class:`Spans` of each reference prompt.
    """

    cases: list[Any] = field(default_factory=list, repr=False)
    reference_ids: list[tuple[int, ...]] = field(default_factory=list, repr=False)
    counterfactual_ids: list[tuple[int, ...]] = field(default_factory=list, repr=False)
    target_ids: Int[torch.Tensor, "pair"] = field(default=None, repr=False)
    spans: list[Spans] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.reference_ids)

    @property
    def ops(self) -> list[str]:
        return [str(getattr(c, "op", None) or "all") for c in self.cases]

    def plot(self, **kwargs: Any) -> Any:
        """Count of pairs per (word, replacement)."""
        import plotly.express as px

        counts = self.df.groupby(["word", "replacement"]).size().rename("n").reset_index()
        counts["swap"] = counts["word"] + " → " + counts["replacement"]
        return px.bar(counts, x="swap", y="n", title="Counterfactual replacements", **kwargs)


class Counterfactual:
    """Build counterfactual pairs (the operator word replaced by an irrelevant one).

    Args:
        replacement: A fixed replacement word for every prompt (its token count must
            match, else ValueError); default: the first matching candidate.
        candidates: Candidate lists per kind (``"word"``, ``"noun"``, ``"symbol"``),
            overriding :data:`REPLACEMENTS`.
    """

    def __init__(self, replacement: str | None = None, candidates: dict[str, Sequence[str]] | None = None):
        if replacement is not None and (not isinstance(replacement, str) or not replacement):
            raise ValueError(f"replacement {replacement!r} must be a non-empty string")
        self.replacement = replacement
        self.candidates = {**REPLACEMENTS, **{k: tuple(v) for k, v in (candidates or {}).items()}}
        unknown = set(self.candidates) - set(REPLACEMENTS)
        if unknown:
            raise ValueError(f"candidate kinds {sorted(unknown)} unknown; allowed: {sorted(REPLACEMENTS)}")

    def run(self, model: Any, data: Any) -> CounterfactualPairs:
        """Pair every case of ``data`` (a dataset, cases or prompt strings) with its counterfactual."""
        tokenizer = getattr(model, "tokenizer", model)
        items = [data] if isinstance(data, str) else list(data)
        if not items:
            raise ValueError("empty dataset: there are no prompts to pair")
        unk = getattr(tokenizer, "unk_token_id", None)
        rows, ref_ids, cf_ids, targets, spans = [], [], [], [], []
        for item in items:
            prompt = item if isinstance(item, str) else item.prompt
            ids = tuple(int(t) for t in (tokenizer.encode(prompt) if isinstance(item, str) else item.input_ids))
            sp = locate(item)
            words = [self.replacement] if self.replacement else list(self.candidates[sp.kind()])
            chosen, last = None, None
            for word in words:
                text = prompt[: sp.op[0]] + word + prompt[sp.op[1] :]
                cand = tuple(int(t) for t in tokenizer.encode(text))
                last = (word, text, len(cand))
                if len(cand) == len(ids) and (unk is None or unk not in cand or unk in ids):
                    chosen = (word, text, cand)
                    break
            if chosen is None:
                word, text, n = last
                raise ValueError(
                    f"counterfactual of {prompt!r} ({len(ids)} tokens) does not tokenize to the same "
                    f"length: {text!r} has {n} tokens (tried {words}); pass "
                    "Counterfactual(replacement=...) or candidates=... with a word of matching length"
                )
            word, text, cand = chosen
            row = {"prompt": prompt, "counterfactual": text, "word": sp.word, "replacement": word, "n_tokens": len(ids)}
            for key in ("target_str", "op", "a", "b", "digits", "template", "form"):
                row[key] = getattr(item, key, None) if not isinstance(item, str) else None
            rows.append(row)
            ref_ids.append(ids)
            cf_ids.append(cand)
            targets.append(-1 if isinstance(item, str) else int(getattr(item, "target_id", -1)))
            spans.append(sp)
        return CounterfactualPairs(
            df=pd.DataFrame(rows),
            cases=items,
            reference_ids=ref_ids,
            counterfactual_ids=cf_ids,
            target_ids=torch.tensor(targets),
            spans=spans,
        )


def as_pairs(model: Any, data: Any) -> CounterfactualPairs:
    """``data`` if it is already pairs, else :class:`Counterfactual` pairs of it."""
    return data if isinstance(data, CounterfactualPairs) else Counterfactual().run(model, data)
