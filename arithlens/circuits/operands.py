"""Where the operands and the operator are in a prompt, token by token.

Zhang et al. (ICML 2024) read key heads' END attention to operand A, operand B and the
operator (§4.2) and probe MLPs with the unembedding of A and B; the counterfactual pairs
(§4.1) replace the operator word. All of them need the same thing: the character spans of
A, B and the operator in a prompt ([`locate`][arithlens.circuits.operands.locate]: read
off the case's template where it has one, else searched between two numbers) and the role
of each token ([`token_roles`][arithlens.circuits.operands.token_roles]: the tokenizer's
own tokens, an operand possibly spanning several, a bare whitespace token counted as
"other").

Example:
    ```python
    from arithlens import data
    from arithlens.circuits.operands import locate, token_roles
    from arithlens.testing import char_tokenizer

    tok = char_tokenizer()
    case = data.zhang(tok, n_per_op=1)[0]              # e.g. "52 plus 88 is "
    spans = locate(case)
    case.prompt[slice(*spans.op)]                       # 'plus'
    token_roles(tok, case.input_ids, spans)[:3]         # ['A', 'A', 'other']
    ```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int

from arithlens.analysis.saving import saveable
from arithlens.data import Case
from arithlens.data import TEMPLATES, number_to_words
from arithlens.core.dataset import decode_many

# The words carrying the operation in each op's templates (Table 14), longest first so
# "divided by" wins over "by".
OPERATOR_WORDS: dict[str, tuple[str, ...]] = {
    "+": ("sum", "plus", "added to", "+"),
    "-": ("difference", "minus", "subtract", "-"),
    "*": ("product", "times", "multiplied by", "*"),
    "/": ("ratio", "divided by", "divides", "/"),
}
NOUNS = ("sum", "difference", "product", "ratio")

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


@saveable
@dataclass(frozen=True)
class Spans:
    """Character spans `[start, end)` of operand A, operand B and the operator word.

    Attributes:
        a: Span of operand A.
        b: Span of operand B.
        op: Span of the operator word or symbol.
        word: The operator word or symbol as it appears in the prompt.
    """

    a: Span
    b: Span
    op: Span
    word: str

    def kind(self) -> str:
        """`"symbol"`, `"noun"` (sum, difference, ...) or `"word"` (plus, minus, ...)."""
        if not any(ch.isalpha() for ch in self.word):
            return "symbol"
        return "noun" if self.word.lower() in NOUNS else "word"


def _find_operator(text: str, op: str | None, start: int = 0, end: int | None = None) -> Span | None:
    """First operator word (of `op`, or of any op) in `text[start:end]`."""
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
    """Character span of every token of `ids` in `decode(ids)` (by cumulative decoding)."""

    ids = list(ids)
    # Leading special tokens (a BOS) are not in the prompt's text: empty spans at 0.
    specials = set(getattr(tokenizer, "all_special_ids", ()) or ())
    k = 0
    while k < len(ids) and ids[k] in specials:
        k += 1
    rest = ids[k:]
    ends = [len(t) for t in decode_many(tokenizer, [rest[: i + 1] for i in range(len(rest))])]
    starts = [0] + ends[:-1]
    return [(0, 0)] * k + list(zip(starts, ends))


def token_roles(tokenizer: Any, ids: Sequence[int], spans: Spans) -> list[str]:
    """Role of each token: `"A"`, `"B"`, `"operator"` or `"other"`.

    A token belongs to an operand / the operator when its text overlaps that span and is
    not whitespace only (SmolLM2's bare `' '` before a number counts as other).
    """

    texts = decode_many(tokenizer, [[int(i)] for i in ids])
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




ROLES: tuple[str, ...] = ("A", "B", "operator", "other")


def role_masks(tokenizer: Any, cases: Sequence[Case]) -> list[Float[torch.Tensor, "pos role"]]:
    """One-hot `[pos, role]` mask of each case's tokens (roles in the order of `ROLES`)."""
    masks = []
    for case in cases:
        roles = token_roles(tokenizer, case.input_ids, locate(case))
        mask = torch.zeros(len(case.input_ids), len(ROLES))
        mask[torch.arange(len(roles)), torch.tensor([ROLES.index(r) for r in roles])] = 1.0
        masks.append(mask)
    return masks


def operand_tokens(tokenizer: Any, cases: Sequence[Case]) -> Int[torch.Tensor, "case 2"]:
    """First token of operand A and of operand B in each case's prompt.

    The first token overlapping the operand's span that is not whitespace only (SmolLM2:
    the first digit; its bare `' '` before a number is skipped).
    """
    out = torch.empty(len(cases), 2, dtype=torch.long)
    for i, (case, mask) in enumerate(zip(cases, role_masks(tokenizer, cases))):
        for j, role in enumerate(("A", "B")):
            pos = mask[:, ROLES.index(role)].nonzero()
            if not len(pos):
                raise ValueError(f"operand {role} has no token of its own in {case.prompt!r}")
            out[i, j] = case.input_ids[int(pos[0])]
    return out
