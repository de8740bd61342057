"""Free-text next-token cases ("A woman works as a" -> " nurse")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arithlens.data.dataset import ArithmeticDataset, Case
from arithlens.data.tokenize import _encode_many, _Item, _tokenize_items

def prompts(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str] | None = None, name: str = "prompts"
) -> ArithmeticDataset:
    """Generic next-token cases ("A woman works as a" -> " nurse").

    With `answers` the target is the answer's first token, found as for arithmetic
    (`prompt + " " + answer` unless either side already supplies the space); without,
    `target_id` is -1 and `target_str` "" (analyses then use the model's prediction).
    """
    if isinstance(prompts, str):
        prompts = [prompts]  # a lone string is one prompt, not a sequence of characters
    prompts = _strings(prompts, "prompts")
    if answers is None:
        ids = _encode_many(tokenizer, list(prompts))
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
        items.append(_Item(p, ans, "" if glued else " ", {}))
    return ArithmeticDataset(_tokenize_items(tokenizer, items, False, lambda it, i: None), name=name)


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
