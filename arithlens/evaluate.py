"""Evaluation: first-token and greedy full-answer accuracy of a model on a dataset.

:func:`evaluate` runs every case once (batched, equal-length prompts together, never
padded) and reports, per case, the token the model predicts next, whether it is the
target token, the target's log-probability and, optionally, whether greedy decoding
reproduces the whole answer. :class:`Evaluation` aggregates by op / digits / template /
form / case type.

Example::

    import arithlens
    from arithlens import data
    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+-", digits=1)
    ev = arithlens.evaluate(model, cases)
    ev.df            # accuracy per op, digits, template, form
    ev.plot()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from arithlens.results import Result, case_frame

GROUP_COLUMNS = ("op", "digits", "template", "form")


@dataclass
class Evaluation(Result):
    """Per-group accuracy (``df``) and per-case outcomes (``cases``)."""

    cases: pd.DataFrame
    group_by: tuple[str, ...]

    @property
    def accuracy(self) -> float:
        return float(self.cases["correct"].mean())

    def summary(self, by: Sequence[str] | str = GROUP_COLUMNS) -> pd.DataFrame:
        """Accuracy grouped by other columns, e.g. ``summary("case_type")``."""
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
    agg = {"n": ("correct", "size"), "accuracy": ("correct", "mean"), "target_logprob": ("target_logprob", "mean")}
    if "full_correct" in cases:
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
) -> Evaluation:
    """Evaluate ``model`` on ``data`` (a dataset from :mod:`arithlens.data` or prompts).

    Args:
        full_answer: Also decode greedily for as many tokens as each answer has and
            record whether the whole answer is reproduced.
        interventions: Applied during the evaluation only.
        group_by: Columns of ``df``.
    """
    from arithlens.models import load_model

    model = load_model(model)
    run = model.run(data, interventions=interventions, batch_size=batch_size, cache=not interventions)
    cases = case_frame(data, model)
    cases["input_ids"] = [" ".join(str(t) for t in ids) for ids in run.input_ids]
    cases["target_token"] = run.target_ids.tolist()
    cases["predicted_token"] = run.predictions.tolist()
    cases["predicted_str"] = model.token_strs(run.predictions.tolist())
    cases["correct"] = run.correct.tolist()
    cases["target_logprob"] = run.target_logprob.tolist()
    answers = [tuple(getattr(c, "answer_ids", ()) or ()) for c in data] if hasattr(data, "to_frame") else []
    if full_answer and answers and all(answers):
        longest = max(len(a) for a in answers)
        generated = model.generate_greedy(data, longest, interventions=interventions, batch_size=batch_size)
        cases["full_correct"] = [tuple(g[: len(a)]) == a for g, a in zip(generated, answers)]
    return Evaluation(df=_aggregate(cases, tuple(group_by)), cases=cases, group_by=tuple(group_by))
