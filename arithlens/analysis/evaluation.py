"""EvaluationResult: first-token and greedy full-answer accuracy of a model on a dataset.

[`evaluate`][arithlens.analysis.evaluation.evaluate] runs every case once (batched, equal-length prompts together, never
padded) and reports, per case, the token the model predicts next, whether it is the
target token, the target's log-probability and, optionally, whether greedy decoding
reproduces the whole answer. [`EvaluationResult`][arithlens.analysis.evaluation.EvaluationResult] aggregates by op / digits / template /
form / case type.

Example:
    ```python
    import arithlens
    from arithlens import data
    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+-", digits=1)
    ev = arithlens.analysis.evaluation(model, cases)
    ev.df            # accuracy per op, digits, template, form
    ev.plot()
    ```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd
import torch

from arithlens.core import validate
from arithlens.analysis.results import Result, case_frame
from arithlens.core.cache import ensure_cache, next_token_outcomes
from arithlens.data import as_dataset
from arithlens.core.loading import load_model
from arithlens.data import ArithmeticDataset
from arithlens.core.model import equal_length_chunks

GROUP_COLUMNS = ("op", "digits", "template", "form")


@dataclass
class EvaluationResult(Result):
    """Per-group accuracy (`df`) and per-case outcomes (`cases`)."""

    cases: pd.DataFrame
    group_by: tuple[str, ...]

    @property
    def accuracy(self) -> float:
        """First-token accuracy over the cases that have a target (`NaN` when none has)."""
        scored = self.cases["correct"].dropna()
        return float(scored.astype(float).mean()) if len(scored) else float("nan")

    def summary(self, by: Sequence[str] | str = GROUP_COLUMNS) -> pd.DataFrame:
        """Accuracy grouped by other columns, e.g. `summary("case_type")`."""
        return _aggregate(self.cases, (by,) if isinstance(by, str) else tuple(by))

    def plot(self, **kwargs: Any) -> Any:
        import plotly.express as px

        df = self.summary([c for c in ("op", "template", "form") if c in self.cases])
        if "op" not in df:
            df = df.assign(op="all")
        fig = px.bar(
            df,
            x="op",
            y="accuracy",
            color="form" if "form" in df else None,
            facet_col="template" if "template" in df else None,
            barmode="group",
            range_y=[0, 1],
            hover_data=["n"],
            title="First-token accuracy",
            **kwargs,
        )
        return fig


def _aggregate(cases: pd.DataFrame, by: tuple[str, ...]) -> pd.DataFrame:
    by = tuple(c for c in by if c in cases and cases[c].notna().any())
    # Cases without a target have correct = NA: they count in n but not in accuracy.
    cases = cases.assign(correct=cases["correct"].astype("Float64").astype(float))
    agg = {"n": ("correct", "size"), "n_scored": ("correct", "count"), "accuracy": ("correct", "mean"),
           "target_logprob": ("target_logprob", "mean")}  # fmt: skip
    if "full_correct" in cases:
        cases = cases.assign(full_correct=cases["full_correct"].astype("Float64").astype(float))
        agg["full_accuracy"] = ("full_correct", "mean")
    if not by:
        return cases.assign(group="all").groupby("group").agg(**agg).reset_index()
    return cases.groupby(list(by), dropna=False).agg(**agg).reset_index()


def evaluate(
    model: Any,
    data: Any,
    *,
    full_answer: bool = True,
    interventions: Sequence[Any] = (),
    group_by: Sequence[str] = GROUP_COLUMNS,
    batch_size: int | None = None,
    cache: Any = None,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluate `model` on `data` (a dataset from [`arithlens.data`][arithlens.data] or prompts).

    Args:
        full_answer: Also decode greedily for as many tokens as each answer has and
            record whether the whole answer is reproduced. Without interventions this is
            read off one teacher-forced forward of `prompt + answer[:-1]` (what greedy
            decoding produces, without decoding), which then also gives the first-token
            outcomes when no `cache` is given: one pass in all.
        interventions: Applied during the evaluation only (never memoized).
        group_by: Columns of `df`.
        batch_size: Cases per forward pass (default the model's).
        cache: A clean [`DatasetCache`][arithlens.core.cache.DatasetCache] of `data`
            (from `model.cache(data)`); then no first-token forward pass runs.
        progress: Show a progress bar in cases (with an ETA). The cases are then run in
            chunks of equal-length prompts, each its own pass; the numbers are the same.

    Cases without a target (prompts given without answers) have `correct` NA: they are
    counted in `n` but not in `accuracy`, which is `NaN` when no case has a target.
    Inside `with model.intervened(...)` the evaluation is of the intervened model: its
    forward pass is neither served from nor stored in the clean memo.
    """

    model = load_model(model)
    group_by = (group_by,) if isinstance(group_by, str) else tuple(group_by)
    for g in group_by:
        if not isinstance(g, str):
            raise ValueError(f"group_by item {g!r} must be a column name")
    validate.optional_positive_int(batch_size, "batch_size")
    validate.boolean(full_answer, "full_answer")
    data = as_dataset(data, model.tokenizer)
    if validate.boolean(progress, "progress"):
        return _evaluate_in_chunks(model, data, full_answer, interventions, tuple(group_by), batch_size, cache)
    answers = [tuple(c.answer_ids or ()) for c in data]
    full = bool(full_answer and answers and all(answers))
    # Without interventions greedy decoding is read off one teacher-forced pass; with no
    # cache given, that pass also gives the first-token outcomes (no separate pass).
    forced = full and not interventions and not model.has_hooks()
    if interventions and cache is not None:
        raise ValueError("cache= holds a clean pass; it cannot be combined with interventions=")
    if forced and cache is None:
        ids, target_ids = model.ids_and_targets(data)
        out = _teacher_forced(model, ids, answers, target_ids, range(len(data)), batch_size)
        predictions, target_logprob, full_correct = (list(col) for col in zip(*(out[i] for i in range(len(data)))))
    else:
        if interventions:
            run = model.cache(data, interventions=interventions, batch_size=batch_size)
        elif cache is not None:
            run = ensure_cache(model, data, cache)
        else:
            run = model.cache(data, batch_size=batch_size)
        ids, predictions = run.input_ids, run.predictions.tolist()
        target_ids, target_logprob = run.target_ids.tolist(), run.target_logprob.tolist()
        if forced:  # the first token is in the cache: one more pass for the longer answers only
            longer = [i for i, a in enumerate(answers) if len(a) > 1]
            out = _teacher_forced(model, [tuple(i) for i in ids], answers, target_ids, longer, batch_size)
            full_correct = [out[i][2] if i in out else predictions[i] == a[0] for i, a in enumerate(answers)]
        elif full:  # interventions may act on the last position only or by sequence length: decode as greedy does
            generated = model.generate_greedy(data, max(len(a) for a in answers), interventions=interventions, batch_size=batch_size)
            full_correct = [tuple(g[: len(a)]) == a for g, a in zip(generated, answers)]
    cases = case_frame(data, model)
    cases["input_ids"] = [" ".join(str(t) for t in i) for i in ids]
    cases["target_token"] = list(target_ids)
    cases["predicted_token"] = predictions
    cases["predicted_str"] = model.token_strs(predictions)
    cases["correct"] = pd.array([p == t if t >= 0 else pd.NA for p, t in zip(predictions, target_ids)], dtype="boolean")
    cases["target_logprob"] = target_logprob
    if full:
        cases["full_correct"] = full_correct
    return EvaluationResult(df=_aggregate(cases, tuple(group_by)), cases=cases, group_by=tuple(group_by))


@torch.no_grad()
def _teacher_forced(
    model: Any, prompts: list[tuple[int, ...]], answers: list[tuple[int, ...]], targets: list[int], rows: Sequence[int], batch_size: int | None
) -> dict[int, tuple[int, float, bool]]:
    """Per case of `rows`: the first token's argmax, its target's log-prob (the argmax's where
    there is no target) and whether greedy decoding reproduces the whole answer — from one
    forward of `prompt + answer[:-1]`.

    Greedy decoding reproduces `a` iff at every step `i` the argmax after `prompt + a[:i]` is
    `a[i]`; a causal model's logits at position `len(prompt) − 1 + i` of the one teacher-forced
    sequence are those of that step, so one pass checks every step (no KV cache, no
    recomputed prefixes). Only the answer's positions reach the final norm and unembedding.
    """
    rows = list(rows)
    out: dict[int, tuple[int, float, bool]] = {}
    for part, tokens in model.batches([prompts[i] + answers[i][:-1] for i in rows], batch_size):
        idx = [rows[r] for r in part.tolist()]
        k = max(len(answers[i]) for i in idx)  # positions read: the longest answer of the batch
        with model.hooked(model.last_position_trim(k)):
            logits = model.bridge(tokens)[:, -k:]  # [batch, k, vocab] (every position where trimming is unsafe)
        offs = [k - len(answers[i]) for i in idx]  # where each answer's first step sits in the window
        first = logits[torch.arange(len(idx), device=logits.device), torch.tensor(offs, device=logits.device)]
        _, target_lp, _ = next_token_outcomes(first, torch.tensor([targets[i] for i in idx]))
        top = logits.argmax(-1).tolist()
        for j, (i, off, lp) in enumerate(zip(idx, offs, target_lp.tolist())):
            out[i] = (top[j][off], lp, tuple(top[j][off:]) == answers[i])
    return out


def _evaluate_in_chunks(
    model: Any, data: Any, full_answer: bool, interventions: Sequence[Any], group_by: tuple[str, ...], batch_size: int | None, cache: Any
) -> EvaluationResult:
    """[`evaluate`][arithlens.analysis.evaluation.evaluate] a few batches at a time, with a progress bar in cases."""
    from tqdm.auto import tqdm


    if cache is not None:
        cache = ensure_cache(model, data, cache)
    chunks = equal_length_chunks([c.input_ids for c in data], 4 * (batch_size or model.batch_size))
    frames = []
    with tqdm(total=len(data), desc="evaluation", unit="case") as bar:
        for idx in chunks:
            part = ArithmeticDataset([data[i] for i in idx], name=getattr(data, "name", ""))
            frame = evaluate(
                model, part, full_answer=full_answer, interventions=interventions, group_by=group_by,
                batch_size=batch_size, cache=None if cache is None else cache.rows(idx),
            ).cases  # fmt: skip
            frames.append(frame.set_axis(idx, axis=0))
            bar.update(len(idx))
    cases = pd.concat(frames).sort_index().reset_index(drop=True)  # back in dataset order
    if "full_correct" in cases and cases["full_correct"].isna().any():  # some chunks had no full answers
        cases = cases.drop(columns="full_correct")
    return EvaluationResult(df=_aggregate(cases, group_by), cases=cases, group_by=group_by)

