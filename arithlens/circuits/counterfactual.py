"""Reference / counterfactual prompt pairs — Zhang et al. (ICML 2024) §3 and §4.1.

For every reference prompt `X_r` the counterfactual `X_c` replaces the words that carry
the operation by an irrelevant word: "42 plus 34 is" → "42 nothing 34 is", "42+34=" →
"42@34=", "The sum of 42 and 34 is" → "The name of 42 and 34 is". Operands and sentence
structure stay, so a node whose output changes between the two carries the *arithmetic*
information, not syntax.

The operator word is located from the case's template (`Case.op`, `template`, `a`, `b`,
`form`) — or, for bare prompts, by searching for an operator word / symbol between the
two operands. The replacement is the first candidate of `REPLACEMENTS` (by kind:
operator word, operator noun, symbol) for which the counterfactual prompt tokenizes to
exactly as many tokens as the reference with the model's own tokenizer (and to no
unknown token). Pairs must align position by position (patching at the END position and
mean ablation over positions need it); where no candidate gives the same length a
`ValueError` names the prompt and both token counts.

[`CounterfactualPairs`][arithlens.circuits.counterfactual.CounterfactualPairs] is a
dataset: it *is* the reference cases (an
[`ArithmeticDataset`][arithlens.data.ArithmeticDataset], so `model.cache(pairs)`,
`pairs.filter(op="+")` and every analysis taking data accept it) and carries each case's
counterfactual alongside.

The operator word and the operands are found by
[`arithlens.circuits.operands`][arithlens.circuits.operands] (`locate`, `token_roles`,
re-exported here), which END attention and the MLP probe use to find their tokens too.

Example:
    ```python
    import arithlens
    from arithlens import data
    from arithlens.circuits import counterfactual_pairs

    model = arithlens.load_model()
    cases = data.zhang(model.tokenizer, n_per_op=8)
    pairs = counterfactual_pairs(model, cases)
    pairs.to_frame()[["prompt", "counterfactual", "word", "replacement"]]
    model.cache(pairs.counterfactual)        # the counterfactual prompts as a dataset
    ```
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import pandas as pd
import torch
from jaxtyping import Int

from arithlens.analysis.saving import saveable
from arithlens.circuits.operands import Spans, locate
from arithlens.core.dataset import set_bos
from arithlens.data import ArithmeticDataset, Case, as_dataset

# Irrelevant replacements, tried in order; the first giving the same token count wins.
# Several lengths so character-level tokenizers find one too.
REPLACEMENTS: dict[str, tuple[str, ...]] = {
    "word": ("nothing", "with", "then", "blue", "green", "apple", "house", "window", "garden",
             "picture", "yellow", "elephant", "something", "background", "cat", "sky", "to"),
    "noun": ("name", "color", "story", "shape", "list", "picture", "weather", "nothing", "background",
             "map", "cat", "house", "window", "elephant"),
    "symbol": ("@", "#", "|", "~", "_", "&", ";", ",", ".", "'", "?"),
}  # fmt: skip


@saveable
@dataclass(frozen=True)
class CounterfactualPrompt:
    """The counterfactual of one reference case.

    Attributes:
        prompt: The counterfactual prompt text.
        input_ids: Its token ids (as many as the reference's).
        word: The operator word (or symbol) of the reference that was replaced.
        replacement: The irrelevant word put in its place.
        spans: Character spans of operand A, operand B and the operator in the reference.
    """

    prompt: str
    input_ids: tuple[int, ...]
    word: str
    replacement: str
    spans: Spans


_PAIR_COLUMNS = ("counterfactual", "word", "replacement")


@saveable
class CounterfactualPairs(ArithmeticDataset):
    """Reference cases, each carrying its same-length counterfactual.

    A dataset of the *reference* cases: iterating, `len`, `model.cache(pairs)` and every
    analysis taking data see the reference prompts; the counterfactuals travel alongside
    (`counterfactual_ids`, the dataset `counterfactual`). Subsets (`filter`, `sample`,
    `split`, `sample_per`, `correct_under`, slices) keep the pairing.

    Args:
        cases: The reference cases.
        counterfactuals: One [`CounterfactualPrompt`][arithlens.circuits.counterfactual.CounterfactualPrompt]
            per case, in the same order.
        name: The dataset's name.

    Example:
        ```python
        pairs = counterfactual_pairs(model, data.zhang(model.tokenizer, n_per_op=8))
        pairs.to_frame()[["prompt", "counterfactual"]]
        pairs.filter(a=range(10, 50)).counterfactual_ids
        ```
    """

    def __init__(self, cases: Sequence[Case], counterfactuals: Sequence[CounterfactualPrompt], name: str = "") -> None:
        super().__init__(cases, name=name)
        self._pairs: tuple[CounterfactualPrompt, ...] = tuple(counterfactuals)
        if len(self._pairs) != len(self._cases):
            raise ValueError(f"{len(self._cases)} cases but {len(self._pairs)} counterfactuals: give one per case")
        for case, cf in zip(self._cases, self._pairs):
            if not isinstance(cf, CounterfactualPrompt):
                raise ValueError(f"counterfactuals hold CounterfactualPrompt objects, got {type(cf).__name__}")
            if len(cf.input_ids) != len(case.input_ids):
                raise ValueError(
                    f"counterfactual {cf.prompt!r} has {len(cf.input_ids)} tokens but its reference "
                    f"{case.prompt!r} has {len(case.input_ids)}: pairs must align token by token"
                )

    def to_saved(self) -> dict[str, Any]:
        """The cases, their counterfactuals and the name (what a saved result keeps)."""
        return {"cases": list(self._cases), "counterfactuals": list(self._pairs), "name": self.name}

    @classmethod
    def from_saved(cls, state: dict[str, Any]) -> "CounterfactualPairs":
        """The pairs [`to_saved`][arithlens.circuits.counterfactual.CounterfactualPairs.to_saved] described."""
        return cls(state["cases"], state["counterfactuals"], name=state["name"])

    # ------------------------------------------------------------------ the pairs
    @property
    def counterfactuals(self) -> list[CounterfactualPrompt]:
        """The counterfactual of each case."""
        return list(self._pairs)

    @property
    def reference(self) -> ArithmeticDataset:
        """The reference cases as a plain dataset."""
        return ArithmeticDataset(self._cases, name=self.name)

    @property
    def counterfactual(self) -> ArithmeticDataset:
        """The counterfactual prompts as a dataset (case labels kept, no target: `target_id = -1`)."""
        cases = [
            replace(c, prompt=cf.prompt, input_ids=cf.input_ids, answer="", target_str="", target_id=-1, answer_ids=())
            for c, cf in zip(self._cases, self._pairs)
        ]
        return ArithmeticDataset(cases, name=f"{self.name}-counterfactual")

    @property
    def reference_ids(self) -> list[tuple[int, ...]]:
        """Token ids of each reference prompt."""
        return [c.input_ids for c in self._cases]

    @property
    def counterfactual_ids(self) -> list[tuple[int, ...]]:
        """Token ids of each counterfactual prompt (same lengths as the references)."""
        return [cf.input_ids for cf in self._pairs]

    @property
    def target_ids(self) -> Int[torch.Tensor, "pair"]:
        """Ground-truth token of each reference (`-1` where none)."""
        return torch.tensor([int(c.target_id) for c in self._cases], dtype=torch.long)

    @property
    def spans(self) -> list[Spans]:
        """[`Spans`][arithlens.circuits.operands.Spans] of each reference prompt."""
        return [cf.spans for cf in self._pairs]

    @property
    def ops(self) -> list[str | None]:
        """The operation of each case (`None` for bare prompts)."""
        return [c.op for c in self._cases]

    def to_frame(self) -> pd.DataFrame:
        """One row per pair: the reference's columns plus `counterfactual`, `word`, `replacement`."""
        frame = super().to_frame()
        for k, col in enumerate(_PAIR_COLUMNS):
            values = [cf.prompt if col == "counterfactual" else getattr(cf, col) for cf in self._pairs]
            frame.insert(1 + k, col, values)
        return frame

    # ------------------------------------------------------------------ subsets keep the pairing
    def _paired(self, ds: ArithmeticDataset, *sources: "CounterfactualPairs") -> "CounterfactualPairs":
        lookup: dict[Case, CounterfactualPrompt] = {}
        for source in sources or (self,):
            lookup.update(zip(source._cases, source._pairs))
        return CounterfactualPairs(list(ds), [lookup[c] for c in ds], name=ds.name)

    def __getitem__(self, index: Any) -> Any:
        got = super().__getitem__(index)
        return self._paired(got) if isinstance(got, ArithmeticDataset) else got

    def __add__(self, other: ArithmeticDataset) -> ArithmeticDataset:
        both = super().__add__(other)
        if both is NotImplemented or not isinstance(other, CounterfactualPairs):
            return both
        return self._paired(both, self, other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CounterfactualPairs):
            return False
        return self._cases == other._cases and self._pairs == other._pairs

    __hash__ = None  # type: ignore[assignment]

    def filter(self, **criteria: Any) -> "CounterfactualPairs":
        """Pairs whose reference case matches (see [`ArithmeticDataset.filter`][arithlens.data.ArithmeticDataset.filter])."""
        return self._paired(super().filter(**criteria))

    def sample(self, n: int, seed: int = 0) -> "CounterfactualPairs":
        """A seeded subsample of `n` pairs."""
        return self._paired(super().sample(n, seed))

    def split(self, n_test: int, seed: int = 0) -> tuple["CounterfactualPairs", "CounterfactualPairs"]:
        """A seeded (train, test) partition of the pairs."""
        train, test = super().split(n_test, seed)
        return self._paired(train), self._paired(test)

    def sample_per(self, column: str, n: int, seed: int = 0) -> "CounterfactualPairs":
        """At most `n` seeded pairs per value of `column`."""
        return self._paired(super().sample_per(column, n, seed))

    def correct_under(self, cache: Any) -> "CounterfactualPairs":
        """The pairs whose reference the model answers correctly, read off the reference's cache."""
        return self._paired(super().correct_under(cache))

    @staticmethod
    def concat(*datasets: Any, name: str | None = None) -> ArithmeticDataset:
        """Several pair sets in order (plain datasets among them give a plain dataset)."""
        parts = [d for group in datasets for d in (group if isinstance(group, (list, tuple)) else [group])]
        joined = ArithmeticDataset.concat(*parts, name=name)
        if parts and all(isinstance(d, CounterfactualPairs) for d in parts):
            return parts[0]._paired(joined, *parts)
        return joined

    def __repr__(self) -> str:
        return f"CounterfactualPairs(name={self.name!r}, n={len(self)})"


def counterfactual_pairs(
    model: Any, data: Any, *, replacement: str | None = None, candidates: dict[str, Sequence[str]] | None = None
) -> CounterfactualPairs:
    """Pair every case of `data` with its counterfactual: the operator word replaced by an irrelevant one.

    A data step (no forward pass): `model` is a [`LensModel`][arithlens.core.model.LensModel]
    or a tokenizer; only the tokenizer is used.

    Args:
        model: The model, or its tokenizer.
        data: A dataset, cases, prompts or token ids.
        replacement: A fixed replacement word for every prompt (its token count must
            match, else `ValueError`); default: the first matching candidate.
        candidates: Candidate lists per kind (`"word"`, `"noun"`, `"symbol"`),
            overriding `REPLACEMENTS`.

    Example:
        ```python
        pairs = counterfactual_pairs(model, ["12+34=", "7 times 8 is"])
        pairs.to_frame()[["prompt", "counterfactual"]]     # operator -> a word of as many tokens
        ```
    """
    if replacement is not None and (not isinstance(replacement, str) or not replacement):
        raise ValueError(f"replacement={replacement!r} must be a non-empty string")
    if candidates is not None and not isinstance(candidates, dict):
        raise ValueError(f"candidates={candidates!r} must be a dict of kind -> list of words")
    extra: dict[str, tuple[str, ...]] = {}
    for kind, words in (candidates or {}).items():
        if isinstance(words, str) or not all(isinstance(w, str) and w for w in words):
            raise ValueError(f"candidates[{kind!r}]={words!r} must be a list of non-empty words")
        extra[kind] = tuple(words)
    unknown = set(extra) - set(REPLACEMENTS)
    if unknown:
        raise ValueError(f"candidate kinds {sorted(unknown)} unknown; allowed: {sorted(REPLACEMENTS)}")
    pool = {**REPLACEMENTS, **extra}
    tokenizer = getattr(model, "tokenizer", model)
    ds = as_dataset(data, tokenizer)
    unk = getattr(tokenizer, "unk_token_id", None)
    pairs = []
    for case in ds:
        prompt, ids = case.prompt, tuple(int(t) for t in case.input_ids)
        sp = locate(case)
        words = [replacement] if replacement else list(pool[sp.kind()])
        chosen, last = None, None
        for word in words:
            text = prompt[: sp.op[0]] + word + prompt[sp.op[1] :]
            # The counterfactual starts as its reference does: with BOS exactly when it has one.
            cand = set_bos(tokenizer.encode(text), tokenizer, bool(ids) and ids[0] == getattr(tokenizer, "bos_token_id", None))
            last = (word, text, len(cand))
            if len(cand) == len(ids) and (unk is None or unk not in cand or unk in ids):
                chosen = CounterfactualPrompt(text, cand, sp.word, word, sp)
                break
        if chosen is None:
            word, text, n = last
            raise ValueError(
                f"counterfactual of {prompt!r} ({len(ids)} tokens) does not tokenize to the same "
                f"length: {text!r} has {n} tokens (tried {words}); pass "
                "replacement=... or candidates=... with a word of matching length"
            )
        pairs.append(chosen)
    return CounterfactualPairs(list(ds), pairs, name=ds.name)


def as_pairs(model: Any, data: Any) -> CounterfactualPairs:
    """`data` if it is already pairs, else [`counterfactual_pairs`][arithlens.circuits.counterfactual.counterfactual_pairs] of it."""
    return data if isinstance(data, CounterfactualPairs) else counterfactual_pairs(model, data)
