"""Report sections for Comparative Neuron Analysis (Tables 4–6 and Fig. 1).

`compute(ctx, saved)` is called by [`run_pipeline`][arithlens.app.pipeline.run_pipeline] with the
run's [`RunContext`][arithlens.app.pipeline.RunContext]: it analyses `ctx.top_head` (the head
whose ablation lowers "+" accuracy most) and saves each result; `render(saved)` builds the
sections from the saved results, without a model (so `arithlens report DIR` can rebuild them).
`compute_vo` / `render_vo` do the same for Tables 7 and 8:

* Table 4 — CNA of a "3+5=" style prompt the model answers correctly: the top neurons'
  importance and coefficient on the original vs head-ablated model, with top tokens;
* Tables 5 and 6 — mask / keep / coef and the PE-DAG's lowest-neuron intervention on
  correctly answered 1-digit "+" and "−" cases (`ctx.sizes.mask_keep_cases` and
  `ctx.sizes.dag_cases` of them);
* Fig. 1 — the logic chain of the Table 4 prompt.

Each section's reading is a pure function of its result (`table4_reading`,
`table5_reading`, `table6_reading`, `chain_reading`): it states what the numbers
establish, with 95 % intervals, and says so when the cases are too few.

Example:
    ```python
    from arithlens.app.pipeline import run_pipeline
    run_pipeline(out="results/demo", quick=True)    # includes these sections
    ```
"""

from __future__ import annotations

import math
from typing import Any
from arithlens.app.report import NEURON_LABEL_NOTE, Section, join_words, plural

import pandas as pd

from arithlens.core.stats import difference_interval, mean_interval, num, proportion
from arithlens.cna.comparative import ComparativeNeuronScores
from arithlens.cna.logic_chain import LogicChain
from arithlens.cna.mask_keep import MaskKeep
from arithlens.cna.pe_dag import PredictionEnhancingDAG
from arithlens.core.interventions import ZeroHead
from arithlens.data import ArithmeticDataset
from arithlens.cna.hidden_interpretable import HiddenInterpretable
from arithlens.cna.vo_transform import VOTransform

# ----------------------------------------------------------------------------- readings
def table4_reading(cna: Any, other_prediction: str | None = None, case: int = 0, answer: str | None = None) -> str:
    """Table 4's reading: how the scored token's log-probability and the top neurons change.

    Args:
        cna: A [`ComparativeNeuronScoresResult`][arithlens.cna.comparative.ComparativeNeuronScoresResult] (uses
            `case_frame`, `w_str`, `other`, `logprob`, `logprob_other`, `layers`).
        other_prediction: The other side's top token, when known.
        case: The case described.
        answer: The correct answer, when the model gets it wrong (the reading then says so).
    """
    frame = cna.case_frame(case)
    w = cna.w_str[case]
    lp, lp_o = float(cna.logprob[case]), float(cna.logprob_other[case])
    lines = []
    moved = f"log p({w!r}) goes from {num(lp, 2)} to {num(lp_o, 2)} nats under {cna.other}"
    if other_prediction is None:
        lines.append(f"CNA scores every FFN neuron for the token {w!r}: {moved}.")
    elif other_prediction == w:
        lines.append(f"CNA scores every FFN neuron for the token {w!r}: {moved}, and the model still predicts {w!r}.")
    else:
        lines.append(f"CNA scores every FFN neuron for the token {w!r}: {moved}, and the model then predicts {other_prediction!r} instead.")
    drops = frame[frame["importance_change"] > 0]
    if drops.empty:
        lines.append(f"No neuron's importance falls under {cna.other}: the comparison singles out no neuron for this case.")
    else:
        top = drops.iloc[0]
        lines.append(
            f"The largest fall is neuron {int(top.layer)}_{int(top.neuron)}: importance {num(top.importance, 3)} → "
            f"{num(top.importance_other, 3)} nats (change {num(top.importance_change, 3)}), coefficient {num(top.coef, 3)} → {num(top.coef_other, 3)}; "
            f"{plural(len(drops), 'neuron')} lose importance in all."
        )
        head10 = drops.head(10)
        n_layers = max(int(x) for x in cna.layers) + 1 if len(cna.layers) else int(frame["layer"].max()) + 1
        deep = int((head10["layer"] >= n_layers // 2).sum())
        lines.append(
            f"{deep} of the top {len(head10)} sit in the upper half of the layers ({n_layers // 2}-{n_layers - 1})"
            + (", as the paper finds for LLaMA's arithmetic neurons." if deep > len(head10) / 2 else ", unlike the paper's deep arithmetic neurons.")
        )
    if answer is not None:
        lines.append(f"The model answers this prompt wrongly (the answer is {answer!r}): CNA explains the model's own prediction.")
    lines.append(f"Importance and its change are in nats of log p({w!r}); change = original − {cna.other} (positive: a drop). Labels: {NEURON_LABEL_NOTE}.")
    return "\n".join(lines)


def _accuracy_drop(baseline: float, accuracy: float, n: int) -> Any:
    """The drop from `baseline` to `accuracy` on the same `n` cases, with its interval."""
    if baseline >= 1.0 - 1e-9:
        # Every case was right before: the drop is the share now wrong (a Wilson interval).
        return proportion(round(n * (1 - accuracy)), n)
    return difference_interval(baseline * n, n, accuracy * n, n)


def table5_reading(mk: Any) -> str:
    """Table 5's reading: mask and keep drops with intervals, whether masking hurts more
    than keeping (the paper: 100 % vs 3.9 % for the top 99), and the coefficient change.

    Args:
        mk: A [`MaskKeepResult`][arithlens.cna.mask_keep.MaskKeepResult] (uses `df`,
            `baseline_accuracy`, `n_cases`, `keep_layers`, `coef_per_case`, `intervention`).
    """
    df = mk.df
    n = int(mk.n_cases)
    if n == 0:
        return "No case was evaluated: the model answered none of the sampled cases correctly."
    ks = list(dict.fromkeys(df["k"]))
    acc = {(r.k, r.measure): r.accuracy for r in df.itertuples()}
    base = float(mk.baseline_accuracy)
    layers = list(mk.keep_layers)
    span = f"{layers[0]}-{layers[-1]}" if layers else "none"
    lines = [f"On {plural(n, 'case')} the model answers correctly (baseline {base:.0%}), for each case's top-K CNA neurons:"]
    mask = [f"top-{k}: {_accuracy_drop(base, acc[(k, 'mask')], n).points()}" for k in ks]
    keep = [f"top-{k}: {_accuracy_drop(base, acc[(k, 'keep')], n).points()}" for k in ks]
    lines.append(f"Masking them (zeroed) costs {'; '.join(mask)}.")
    lines.append(f"Keeping only them (every other neuron of layers {span} zeroed) costs {'; '.join(keep)}.")
    k0 = ks[0]
    gap = difference_interval(acc[(k0, "keep")] * n, n, acc[(k0, "mask")] * n, n)
    if gap.above_zero:
        lines.append(f"For the top {k0}, masking hurts more than keeping ({gap.points()} apart): the CNA neurons carry the answer, as in the paper (100% vs 3.9%).")
    elif gap.below_zero:
        lines.append(f"For the top {k0}, keeping hurts more than masking ({gap.negated().points()} apart): unlike the paper, the other deep neurons matter more than the CNA set.")
    else:
        lines.append(
            f"For the top {k0}, masking and keeping are not distinguishable on {plural(n, 'case')} ({gap.points()}): "
            "these cases cannot tell whether the CNA neurons carry the answer."
        )
    per_case = getattr(mk, "coef_per_case", {}) or {}
    if k0 in per_case:
        c = mean_interval(per_case[k0].tolist() if hasattr(per_case[k0], "tolist") else per_case[k0])
        if c.above_zero:
            what = f"{mk.intervention} lowers their coefficient scores by {num(c.value)}% on average [{c.ci(scale=1, unit='%', digits=1)}]"
        elif c.below_zero:
            what = f"{mk.intervention} raises their coefficient scores by {num(-c.value)}% on average [{c.ci(scale=1, unit='%', digits=1)}]"
        else:
            what = f"the change of their coefficient scores under {mk.intervention} ({num(c.value)}% [{c.ci(scale=1, unit='%', digits=1)}]) is not distinguishable from zero"
        lines.append(f"For the top {k0}, {what} — 'coef' in the table.")
    lines.append("Mask and keep are accuracy decreases relative to the baseline (%); intervals are on the absolute drop in points.")
    return "\n".join(lines)


def table6_reading(dag: Any, case: int = 0) -> str:
    """Table 6's reading: whether zeroing the lowest of each case's top-K neurons lowers the
    others' coefficients (the paper's prediction enhancing), and the case's DAG.

    Args:
        dag: A [`PredictionEnhancingDAGResult`][arithlens.cna.pe_dag.PredictionEnhancingDAGResult] (uses `table6`,
            `coef_per_case`, `df`, `nodes`, `threshold`, `root`).
    """
    lines = []
    t6 = dag.table6
    per_case = getattr(dag, "coef_per_case", {}) or {}
    established, parts = [], []
    for r in t6.itertuples():
        k = int(r.k)
        values = per_case.get(k)
        est = mean_interval(values.tolist() if hasattr(values, "tolist") else values) if values is not None else None
        if est is None or not math.isfinite(est.low):
            parts.append(f"top {k}: {num(r.coef_decrease)}% (n={int(r.n)}; too few cases for an interval)")
            continue
        parts.append(f"top {k}: {num(est.value)}% [{est.ci(scale=1, unit='%', digits=1)}, n={est.n}]")
        if est.above_zero:
            established.append(k)
    if parts:
        lines.append("Zeroing only the lowest of each case's top-K neurons lowers the other top-K neurons' coefficients by " + "; ".join(parts) + ".")
        if established and len(established) == len(parts):
            lines.append("The decrease is established for every K: the lowest neuron enhances the ones above it, as in the paper.")
        elif established:
            lines.append(f"The decrease is established for K = {join_words([str(k) for k in established])} only.")
        else:
            lines.append("For no K is the decrease distinguishable from zero on these cases: they do not establish prediction enhancing.")
    nodes = dag.nodes[dag.nodes["case"] == case]
    edges = dag.df[dag.df["case"] == case]
    if len(edges):
        roots = nodes[nodes["is_root"]].sort_values("score", ascending=False) if "is_root" in nodes else nodes.iloc[:0]
        names = [f"{int(r.layer)}_{int(r.neuron)}" for r in roots.itertuples()] or ["{}_{}".format(*dag.root(case))]
        lines.append(
            f"The figure is case {case}'s DAG: {plural(len(edges), 'edge')} among its {len(nodes)} top neurons "
            f"(an edge: the lower neuron raises the upper one's coefficient by ≥{dag.threshold:.0%} to first order); "
            + (f"root {names[0]}" if len(names) == 1 else f"{len(names)} roots (ringed), most important first: {join_words(names)}")
            + "."
        )
    else:
        lines.append(f"Case {case}'s {len(nodes)} top neurons have no edge above the threshold ({dag.threshold:.0%}): the figure shows them unconnected.")
    lines.append(f"Labels: {NEURON_LABEL_NOTE}.")
    return "\n".join(lines)


def chain_reading(chain: Any) -> str:
    """Fig. 1's reading: which of the four stages were located on this prompt, and their strongest component.

    Args:
        chain: A [`LogicChainResult`][arithlens.cna.logic_chain.LogicChainResult] (uses
            `df`, `prompt`, `prediction`, `head`, `root`, `empty`).
    """
    df = chain.df
    stages = ("feature enhancing", "feature transferring", "feature predicting", "prediction enhancing")
    found = [s for s in stages if (df["stage"] == s).any()]
    head = f"{chain.head[0]}.{chain.head[1]}"
    lines = [f"{len(found)} of the paper's 4 stages are located for {chain.prompt!r} → {chain.prediction!r}:"]
    parts = []
    fe = df[df["stage"] == stages[0]].sort_values("score", ascending=False)
    if len(fe):
        r = fe.iloc[0]
        parts.append(
            f"feature enhancing — shallow neuron {int(r.layer)}_{int(r.neuron)} at {r.token!r} drives the root "
            f"{chain.root[0]}_{chain.root[1]} most (score {r.score:.3g})"
        )
    ft = df[(df["stage"] == stages[1]) & (df["measure"] == "attn_importance")].sort_values("score", ascending=False)
    if len(ft):
        r = ft.iloc[0]
        parts.append(
            f"feature transferring — attention layer {int(r.layer)} adds most to log p ({num(r.score, 3)} nats)"
            if r.score > 0
            else f"feature transferring — no attention layer up to the head's raises log p (largest change {num(r.score, 3)} nats)"
        )
    fp = df[df["stage"] == stages[2]]
    drop = fp[fp["measure"] == "logprob_drop"]
    if len(fp):
        if len(drop):
            d = float(drop["score"].iloc[0])
            text = f"feature predicting — zeroing head {head} " + (f"lowers log p by {num(d, 3)} nats" if d > 0 else f"does not lower log p (it rises by {num(-d, 3)} nats)")
        else:
            text = f"feature predicting — head {head}"
        neurons = fp[(fp["measure"] == "importance_change") & (fp["score"] > 0)]
        if len(neurons):
            r = neurons.sort_values("score", ascending=False).iloc[0]
            text += f", and deep neuron {int(r.layer)}_{int(r.neuron)} loses most importance ({num(r.score, 3)} nats)"
        parts.append(text)
    pe = df[df["stage"] == stages[3]]
    if len(pe):
        parts.append(f"prediction enhancing — {plural(len(pe), 'PE-DAG edge')} among those neurons")
    lines.append("; ".join(parts) + "." if parts else "none.")
    missing = [s for s in stages if s not in found]
    if missing:
        why = getattr(chain, "empty", {}) or {}
        lines.append("Not located: " + "; ".join(f"{s} ({why.get(s, 'no component passes its criterion')})" for s in missing) + ".")
    lines.append(f"Labels: {NEURON_LABEL_NOTE}; L.H is head H of layer L.")
    return "\n".join(lines)


def chain_table(chain: Any) -> Any:
    """Fig. 1's table for the report: each stage's strongest components, as many as the
    reading counts PE-DAG edges (at least 3), so the table lists every edge it names."""
    return chain.table(max(3, int((chain.df["stage"] == "prediction enhancing").sum())))


# ----------------------------------------------------------------------------- sections
def _pick_prompt(ctx: Any) -> tuple[Any, bool]:
    """A "3+5=" style '+' case, and whether the model answers it correctly.

    Prefers a correctly answered case (template 4, numerals, 3+5 first); when the model
    answers no '+' case, the first such case anyway — CNA explains the model's own
    prediction, right or wrong.
    """
    cases = ctx.evaluation.cases
    order = []
    for i, c in enumerate(ctx.dataset):
        if c.op != "+":
            continue
        right = bool(cases["correct"].iloc[i])
        order.append(((not right, c.template != 4, c.form != "numeral", (c.a, c.b) != (3, 5)), i, right))
    if not order:
        return None, False
    _, i, right = min(order)
    return ctx.dataset[i], right


def correct_subset(ctx: Any, n: int, ops: tuple[str, ...] = ("+", "-")) -> list[Any]:
    """Up to `n` correctly answered 1-digit cases of `ops`, numeral operands, spread evenly over the ops (seeded)."""
    import random

    cases = ctx.evaluation.cases
    picked: dict[str, list[Any]] = {op: [] for op in ops}
    for i, c in enumerate(ctx.dataset):
        if c.op in picked and c.form == "numeral" and bool(cases["correct"].iloc[i]):
            picked[c.op].append(c)
    rng = random.Random(0)
    for op in picked:
        rng.shuffle(picked[op])
    out: list[Any] = []
    # Round-robin, so an op with few correct cases leaves its share to the others.
    while len(out) < n and any(picked.values()):
        for op in ops:
            if picked[op] and len(out) < n:
                out.append(picked[op].pop())
    return out


def _with_axes(fig: Any, x: str, y: str, hover: str | None = None) -> Any:
    """Axis titles (and a plain hover label) for a figure whose analysis left them out."""
    for ax in fig.select_xaxes():
        if not (ax.title and ax.title.text):
            ax.title = {"text": x}
    for ax in fig.select_yaxes():
        if not (ax.title and ax.title.text):
            ax.title = {"text": y}
    if hover:
        fig.update_traces(hovertemplate=hover, selector={"type": "bar"})
    return fig


def compute(ctx: Any, saved: Any) -> None:
    """Run the CNA analyses of the `arithlens run` report (Tables 4–6, Fig. 1) and save them in `saved`."""

    model, head, sizes = ctx.model, ctx.top_head, ctx.sizes
    options = {"mode": sizes.cna_mode, "rescore": 500, "progress": True}  # the CNA options every section shares
    facts = saved.facts["cna"] = {"head": list(head), "prompt": None}

    case, right = _pick_prompt(ctx)
    if case is None:
        return
    facts.update(prompt=case.prompt, answer=case.answer, right=right)
    with ctx.timed("CNA: Table 4"):
        cna = saved.keep("cna_table4", ComparativeNeuronScores(intervention=ZeroHead(*head), **options, top_tokens=10).run(model, [case]))
        cna.df.head(200).to_csv(ctx.out / "cna_table4.csv", index=False)
        if getattr(cna, "predictions_other", None) is not None:
            facts["other_prediction"] = model.token_strs([int(cna.predictions_other[0])])[0]

    sub = correct_subset(ctx, sizes.mask_keep_cases)
    facts["n_correct"] = len(sub)
    if len(sub) >= 2:
        with ctx.timed("CNA: Table 5 (mask / keep)"):
            mk = saved.keep("cna_table5", MaskKeep(intervention=ZeroHead(*head), **options).run(model, sub))
            mk.df.to_csv(ctx.out / "cna_table5.csv", index=False)
        with ctx.timed("CNA: Table 6 (PE-DAG)"):
            # The cases mask / keep evaluated (all of `sub`: each is answered correctly), at most `dag_cases`.
            rows = list(mk.rows)[: sizes.dag_cases]
            dag_cases = [sub[i] for i in rows]
            # CNA scores are per case: the DAG's cases are read off mask / keep's CNA, not scored again.
            dag = PredictionEnhancingDAG(intervention=ZeroHead(*head), k=10, **options).run(model, dag_cases, cna=mk.cna.subset(rows))
            saved.keep("cna_table6", dag)
            dag.table6.to_csv(ctx.out / "cna_table6.csv", index=False)

    with ctx.timed("CNA: logic chain (Fig. 1)"):
        chain = saved.keep("cna_chain", LogicChain(intervention=ZeroHead(*head), **options).run(model, [case], cna=cna))
        chain.df.to_csv(ctx.out / "cna_chain.csv", index=False)


def render(saved: Any) -> list[Any]:
    """CNA sections of the `arithlens run` report (Tables 4–6, Fig. 1), from the saved results."""
    facts = saved.facts["cna"]
    head = tuple(facts["head"])
    hname = f"{head[0]}.{head[1]}"
    if facts.get("prompt") is None:
        return [Section("CNA (Tables 4-6, Fig. 1)", "The dataset has no '+' case for CNA to explain.")]
    out = []
    cna = saved["cna_table4"]
    fig = _with_axes(
        cna.plot(k=10),
        "neuron (layer_neuron)",
        "score",
        hover="neuron %{x}<br>%{y:.3f}<extra>%{fullData.name}</extra>",
    )
    out.append(
        Section(
            f"CNA: neurons behind {facts['prompt']!r} → {cna.w_str[0]!r} (Table 4, head {hname} zeroed)",
            table4_reading(cna, facts.get("other_prediction"), answer=None if facts["right"] else facts["answer"]),
            figure=fig,
            table=cna.table(3),
            csv="cna_table4.csv",
        )
    )
    if "cna_table5" not in saved:
        n = facts.get("n_correct", 0)
        out.append(Section("Mask / keep the CNA neurons (Table 5)", f"Not computed: the model answers only {n} 1-digit +/− numeral case(s) correctly."))
    else:
        mk, dag = saved["cna_table5"], saved["cna_table6"]
        out.append(
            Section(
                f"Mask / keep the CNA neurons (Table 5, head {hname})",
                table5_reading(mk),
                figure=mk.plot(),
                table=mk.table().reset_index(names="measure"),
                csv="cna_table5.csv",
            )
        )
        out.append(
            Section(
                "Prediction enhancing among deep neurons (Table 6)",
                table6_reading(dag),
                figure=dag.plot(0),
                table=dag.table().reset_index(names="measure"),
                csv="cna_table6.csv",
            )
        )
    chain = saved["cna_chain"]
    out.append(
        Section(
            f"Internal logic chain of {facts['prompt']!r} (Fig. 1)",
            chain_reading(chain),
            figure=chain.plot(),
            table=chain_table(chain),
            csv="cna_chain.csv",
        )
    )
    return out


def _drop(base: float, acc: float, n: int) -> Any:
    if base >= 1.0 - 1e-9:
        return proportion(round(n * (1 - acc)), n)
    return difference_interval(base * n, n, acc * n, n)


def table8_reading(result: Any, n_scanned: int | None = None, scope: str = "") -> str:
    """Table 8's reading: per M, the hidden set's accuracy drop against a random set's.

    Args:
        result: A [`HiddenInterpretableResult`][arithlens.cna.hidden_interpretable.HiddenInterpretableResult]
            (uses `df`: `M, neuron_set, n_neurons, accuracy, baseline_accuracy, n_cases`).
        n_scanned: How many shallow neurons were scanned (for the sets' share).
        scope: What the scan transformed, in words.
    """
    df = result.df
    hidden = df[df["neuron_set"] == "hidden"].set_index("M")
    random = df[df["neuron_set"] == "random"].set_index("M")
    if hidden.empty:
        return "No hidden-interpretable set was ablated."
    n = int(hidden["n_cases"].iloc[0])
    base = float(hidden["baseline_accuracy"].iloc[0])
    lines = [f"Zero-ablating the shallow neurons whose attention-transformed top-50 holds more than M number/operation tokens, on {plural(n, 'case')} (baseline {base:.0%}):"]
    parts, more, less, unclear = [], [], [], []
    for m, h in hidden.iterrows():
        size = int(h["n_neurons"])
        share = f", {size / n_scanned:.0%} of the {n_scanned:,} scanned" if n_scanned else ""
        hd = _drop(base, float(h["accuracy"]), n)
        text = f"M={m}: {size:,} neurons{share}, drop {hd.points()}"
        if m in random.index:
            r = random.loc[m]
            rd = _drop(base, float(r["accuracy"]), n)
            gap = difference_interval(float(r["accuracy"]) * n, n, float(h["accuracy"]) * n, n)
            text += f"; random set of equal size {rd.points()}"
            (more if gap.above_zero else less if gap.below_zero else unclear).append(f"M={m}")
        parts.append(text)
    lines.append("; ".join(parts) + ".")
    if more:
        lines.append(f"The hidden-interpretable set hurts more than a random set of equal size for {join_words(more)}, as in the paper (LLaMA-7B, M=2: 53.9% vs 2.6%).")
    if less:
        lines.append(f"A random set hurts more than the hidden-interpretable one for {join_words(less)}, unlike the paper.")
    if unclear:
        lines.append(f"For {join_words(unclear)} the two are not distinguishable on {plural(n, 'case')}: these cases cannot tell whether the hidden-interpretable neurons matter more.")
    if scope:
        lines.append(f"Scan: {scope}; a set holds the neurons with more than M concept tokens, the reading consistent with the paper's Table 8 counts.")
    return "\n".join(lines)


def table7_reading(table7: pd.DataFrame) -> str:
    """Table 7's reading: how many items gain number/operation tokens through the attention transform.

    Args:
        table7: [`VOTransformResult.table`][arithlens.cna.vo_transform.VOTransformResult.table]
            (`item, origin concepts, attn layer, transform concepts`).
    """
    if table7.empty:
        return "No item was transformed."
    gained = table7[table7["transform concepts"] > table7["origin concepts"]]
    changes = [f"{r['item']}: {int(r['origin concepts'])} → {int(r['transform concepts'])}" for _, r in gained.iterrows()]
    lines = [
        f"Top-10 tokens of {len(table7)} items, directly and after the attention layer that makes them most number-like: "
        f"{len(gained)} of {len(table7)} gain number/operation tokens through the transform"
        + (f" ({join_words(changes)})" if changes else "")
        + "."
    ]
    neurons = table7[~table7["item"].astype(str).str.startswith("word")]
    hidden = neurons[(neurons["origin concepts"] == 0) & (neurons["transform concepts"] > 0)]
    if len(neurons):
        lines.append(
            f"{len(hidden)} of the {len(neurons)} neurons read as no number directly but as numbers after the transform "
            "(hidden-interpretable, like the paper's Table 7)."
        )
    words = table7[table7["item"].astype(str).str.startswith("word")]
    if len(words):
        direct = ", ".join(f"{r['item']}: {int(r['origin concepts'])} of 10" for _, r in words.iterrows())
        if (words["origin concepts"] >= 5).all():
            lines.append(f"The word embeddings already read as numbers directly ({direct}; a model that ties W_E and W_U reads each embedding as its own token), unlike LLaMA-7B's.")
        else:
            lines.append(f"Number tokens among the word embeddings' direct top-10: {direct}.")
    lines.append(f"Labels: {NEURON_LABEL_NOTE}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- sections
def correct_cases(ctx: Any, ops: tuple[str, ...] = ("+", "-"), per_op: int | None = None) -> Any:
    """The 1-digit cases of `ops` with numeral operands the model answers correctly (`None` if none)."""

    frame = ctx.evaluation.cases
    keep = frame.index[frame["op"].isin(ops) & (frame["form"] == "numeral") & frame["correct"].astype(bool)]
    cases = [ctx.dataset[int(i)] for i in keep]
    if not cases:
        return None
    data = ArithmeticDataset(cases, name="1D+- correct")
    return data.sample_per("op", per_op) if per_op is not None else data


def _table7_items(vo: Any, model: Any, scan: Any, n: int = 2) -> list[Any]:
    """The `n` neurons with most transformed concepts and fewest direct ones, plus "3", "5"."""
    import torch

    top = scan.df.nlargest(64, "n_concepts")
    vecs = torch.stack([vo.neuron_vectors(model, int(L), [int(k)])[0] for L, k in zip(top["layer"], top["neuron"])])
    direct = vo.concept_counts(model, vecs)
    top = top.assign(direct=direct.cpu().numpy()).sort_values(["direct", "n_concepts"], ascending=[True, False], kind="stable")
    items: list[Any] = [(int(L), int(k)) for L, k in zip(top["layer"].head(n), top["neuron"].head(n))]
    items += [t for t in ("3", "5") if len(model.encode(t)) == 1]
    return items


def compute_vo(ctx: Any, saved: Any) -> None:
    """Run the VO-transform analyses of the `arithlens run` report (Tables 7 and 8) and save them in `saved`."""

    model, sizes = ctx.model, ctx.sizes
    data = correct_cases(ctx, per_op=sizes.vo_per_op)
    upto = model.n_layers // 2
    vo = VOTransform(attn_layers=[upto] if sizes.vo_quick_scan else None, progress=True)
    facts = saved.facts["vo"] = {
        "scope": (
            f"each neuron of FFN layers 0-{upto - 1} through attention layer {upto} only (quick mode)"
            if sizes.vo_quick_scan
            else f"each neuron of FFN layers 0-{upto - 1} through every attention layer above it up to {upto}"
        )
    }
    with ctx.timed("VO transform: scan"):
        scan = vo.scan(model)
        scan.to_csv(str(ctx.out / "vo_neurons.csv"))
    facts["n_scanned"] = len(scan.neuron_layers) * model.d_mlp
    if data is not None:
        with ctx.timed("VO transform: Table 8 ablations"):
            result = saved.keep("vo_table8", HiddenInterpretable(ms=sizes.vo_ms, transform=vo, progress=True).run(model, data, scan=scan))
            result.to_csv(str(ctx.out / "vo_table8.csv"))
    with ctx.timed("VO transform: Table 7"):
        saved.keep("vo_table7", vo.run(model, _table7_items(vo, model, scan)))


def render_vo(saved: Any) -> list[Any]:
    """Tables 7 and 8 of the `arithlens run` report, from the saved results."""
    facts = saved.facts["vo"]
    out = []
    if "vo_table8" not in saved:
        out.append(Section("Hidden-interpretable shallow neurons (Table 8)", "Not computed: the model answers no 1-digit +/− numeral case correctly."))
    else:
        result = saved["vo_table8"]
        out.append(
            Section(
                "Hidden-interpretable shallow neurons (Table 8)",
                table8_reading(result, facts["n_scanned"], facts["scope"]),
                figure=result.plot(),
                table=result.table(),
                csv="vo_table8.csv",
            )
        )
    t7 = saved["vo_table7"]
    table7 = t7.table()
    out.append(Section("Attention-transformed neurons and embeddings (Table 7)", table7_reading(table7), figure=t7.plot(), table=table7))
    return out
