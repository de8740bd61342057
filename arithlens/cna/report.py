"""Report sections for Comparative Neuron Analysis (Tables 4–6 and Fig. 1).

``sections(ctx)`` is called by :func:`arithlens.pipeline.run_pipeline` with the run's
:class:`~arithlens.pipeline.RunContext`; it analyses ``ctx.top_head`` (the head whose
ablation hurts "+" most):

* Table 4 — CNA of a "3+5=" style prompt the model answers correctly: the top neurons'
  importance and coefficient on the original vs head-ablated model, with top tokens;
* Tables 5 and 6 — mask / keep / coef and the PE-DAG's lowest-neuron intervention on the
  correctly answered 1-digit "+" and "−" cases (a small sample in quick mode, where CNA
  runs in ``mode="fast"``);
* Fig. 1 — the logic chain of the Table 4 prompt.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd


def _pick_prompt(ctx: Any) -> Any:
    """A correctly answered "a+b=" case, "3+5=" when possible."""
    cases = ctx.evaluation.cases
    order = []
    for i, c in enumerate(ctx.dataset):
        if c.op != "+" or not bool(cases["correct"].iloc[i]):
            continue
        rank = (c.template != 4, c.form != "numeral", (c.a, c.b) != (3, 5))
        order.append((rank, i))
    if not order:
        return ctx.dataset[0]
    return ctx.dataset[min(order)[1]]


def _subset(ctx: Any, n: int) -> list[Any]:
    """Correctly answered 1-digit + and − cases, at most ``n``, spread over both ops."""
    cases = ctx.evaluation.cases
    picked: dict[str, list[Any]] = {"+": [], "-": []}
    for i, c in enumerate(ctx.dataset):
        if c.op in picked and bool(cases["correct"].iloc[i]):
            picked[c.op].append(c)
    import random

    rng = random.Random(0)
    out = []
    for op in picked:
        rng.shuffle(picked[op])
        out += picked[op][: n // 2]
    return out


def sections(ctx: Any) -> list[Any]:
    from arithlens.cna.comparative import ComparativeNeuronScores
    from arithlens.cna.logic_chain import LogicChain
    from arithlens.cna.mask_keep import MaskKeep
    from arithlens.cna.pe_dag import PredictionEnhancingDAG
    from arithlens.interventions import ZeroHead
    from arithlens.report import Section

    model, head = ctx.model, ctx.top_head
    hname = f"{head[0]}.{head[1]}"
    out = []

    t0 = time.perf_counter()
    case = _pick_prompt(ctx)
    # Exact CNA of all 46k SmolLM2 neurons takes minutes on 2 CPU cores: quick mode uses the
    # first-order scores with the top 500 re-scored exactly (the table's rows are exact).
    mode = "fast" if ctx.quick else "exact"
    cna = ComparativeNeuronScores(intervention=ZeroHead(*head), top_tokens=10, mode=mode, rescore=500).run(model, [case])
    t4 = cna.table4(3)
    ctx.timings["cna table 4 (s)"] = time.perf_counter() - t0
    top = cna.case_frame(0).head(1).iloc[0]
    cna.df.head(200).to_csv(ctx.out / "cna_table4.csv", index=False)
    out.append(
        Section(
            f"CNA: neurons behind {case.prompt!r} → {cna.w_str[0]!r} (Table 4)",
            f"Bars compare each top neuron's importance and coefficient on the original model and with head {hname} zeroed; "
            f"the largest drop is neuron {top.layer}_{top.neuron} ({top.importance:.2f} → {top.importance_other:.2f} nats).",
            figure=cna.plot(k=10),
            table=t4,
            csv="cna_table4.csv",
        )
    )

    t0 = time.perf_counter()
    n = 8 if ctx.quick else 64
    sub = _subset(ctx, n)
    try:
        mk = MaskKeep(head=head, mode=mode).run(model, sub) if sub else None
    except ValueError as err:  # e.g. no correctly answered case to mask
        mk = None
        out.append(Section("Mask / keep the CNA neurons (Table 5)", f"Not computed: {err}."))
    if mk is not None:
        table5 = mk.table()
        mk.df.to_csv(ctx.out / "cna_table5.csv", index=False)
        ctx.timings["cna table 5 (s)"] = time.perf_counter() - t0
        out.append(
            Section(
                f"Mask / keep the CNA neurons (Table 5, head {hname})",
                f"On {mk.n_cases} correctly answered 1-digit +/− cases, zeroing each case's top-99 neurons lowers accuracy by "
                f"{table5.loc['mask'].iloc[0]:.0f}%, keeping only them in layers {mk.keep_layers[0]}–{mk.keep_layers[-1]} lowers it by "
                f"{table5.loc['keep'].iloc[0]:.0f}%; 'coef' is how much the head ablation shrinks those neurons' coefficients.",
                figure=mk.plot(),
                table=table5.reset_index(names="measure"),
                csv="cna_table5.csv",
            )
        )
        t0 = time.perf_counter()
        dag = PredictionEnhancingDAG(head=head, k=10).run(model, [sub[i].input_ids for i in mk.rows], scores=mk.cna.importance_change)
        table6 = dag.table()
        dag.table6.to_csv(ctx.out / "cna_table6.csv", index=False)
        ctx.timings["cna table 6 (s)"] = time.perf_counter() - t0
        out.append(
            Section(
                "Prediction enhancing among deep neurons (Table 6)",
                f"Zeroing only the lowest of each case's top-K neurons shrinks the other top-K neurons' coefficients by "
                f"{table6.iloc[0, 0]:.1f}% (K={dag.table6['k'].iloc[0]}); the figure is the PE-DAG of one case (arrows: lower neuron "
                "raises the upper one's coefficient by ≥5% to first order).",
                figure=dag.plot(0),
                table=table6.reset_index(names="measure"),
                csv="cna_table6.csv",
            )
        )

    t0 = time.perf_counter()
    chain = LogicChain(head=head, mode=mode).run(model, [case], cna=cna)
    chain.df.to_csv(ctx.out / "cna_chain.csv", index=False)
    ctx.timings["cna logic chain (s)"] = time.perf_counter() - t0
    fe = chain.stage("feature enhancing")
    first = f"{fe.iloc[0].layer}_{fe.iloc[0].neuron} on {fe.iloc[0].token!r}" if len(fe) else "none"
    out.append(
        Section(
            f"Internal logic chain of {case.prompt!r} (Fig. 1)",
            f"Rows are the four stages: shallow neurons whose attention-carried value drives the PE-DAG root "
            f"{chain.root[0]}_{chain.root[1]} (top: {first}), attention layers moving features to the last position, "
            f"head {hname} with the deep neurons it activates, and the DAG among them.",
            figure=chain.plot(),
            table=pd.concat([chain.stage(s).head(5) for s in ("feature enhancing", "feature predicting", "prediction enhancing")]),
            csv="cna_chain.csv",
        )
    )
    return out
