"""Report sections for hidden-interpretable shallow neurons — Tables 7 and 8 (§4.4).

`sections(ctx)` scans the shallow FFN neurons' attention value-output transforms
([`VOTransform`][arithlens.cna.vo_transform.VOTransform]), zero-ablates the
hidden-interpretable set for each M of `ctx.sizes.vo_ms` and a random set of equal size
on the 1-digit "+" and "−" cases (numeral operands, templates 1–4) the model answers
correctly ([`HiddenInterpretable`][arithlens.cna.hidden_interpretable.HiddenInterpretable],
Table 8), and lists two of the most hidden-interpretable neurons and the word embeddings
of "3" and "5", directly and transformed (Table 7).

The readings (`table8_reading`, `table7_reading`) are pure functions of the results: for
each M the hidden set's accuracy drop is compared with the random set's, with a 95 %
interval, and the claim "hidden-interpretable neurons matter more than random ones" is
made only where the cases establish it.

Quick mode transforms every shallow neuron through the last shallow attention layer
only (`attn_layers=[n_layers // 2]`, 1/8 of the full scan on SmolLM2) and uses
`ctx.sizes.vo_per_op` cases per operation; M = 0 (on SmolLM2 most shallow neurons) is
left to the full run.

Example:
    ```python
    from arithlens.pipeline import run_pipeline
    run_pipeline(out="results/demo", quick=True)   # includes these sections
    ```
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from arithlens.report import NEURON_LABEL_NOTE, Section, join_words, plural
from arithlens.stats import difference_interval, proportion


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
        table7: [`DirectVsTransformed.table`][arithlens.cna.vo_transform.DirectVsTransformed.table]
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
    from arithlens.data import ArithmeticDataset

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


def sections(ctx: Any) -> list[Any]:
    """Tables 7 and 8 of the `arithlens run` report."""
    from arithlens.cna.hidden_interpretable import HiddenInterpretable
    from arithlens.cna.vo_transform import VOTransform

    model, sizes = ctx.model, ctx.sizes
    data = correct_cases(ctx, per_op=sizes.vo_per_op)
    upto = model.n_layers // 2
    vo = VOTransform(attn_layers=[upto] if sizes.vo_quick_scan else None, progress=True)
    scope = (
        f"each neuron of FFN layers 0-{upto - 1} through attention layer {upto} only (quick mode)"
        if sizes.vo_quick_scan
        else f"each neuron of FFN layers 0-{upto - 1} through every attention layer above it up to {upto}"
    )
    with ctx.timed("VO transform: scan"):
        scan = vo.scan(model)
        scan.to_csv(str(ctx.out / "vo_neurons.csv"))
    out = []
    if data is None:
        out.append(Section("Hidden-interpretable shallow neurons (Table 8)", "Not computed: the model answers no 1-digit +/− numeral case correctly."))
    else:
        with ctx.timed("VO transform: Table 8 ablations"):
            result = HiddenInterpretable(ms=sizes.vo_ms, transform=vo, progress=True).run(model, data, scan=scan)
            result.to_csv(str(ctx.out / "vo_table8.csv"))
        n_scanned = len(scan.neuron_layers) * model.d_mlp
        out.append(
            Section(
                "Hidden-interpretable shallow neurons (Table 8)",
                table8_reading(result, n_scanned, scope),
                figure=result.plot(),
                table=result.table(),
                csv="vo_table8.csv",
            )
        )
    with ctx.timed("VO transform: Table 7"):
        t7 = vo.run(model, _table7_items(vo, model, scan))
        table7 = t7.table()
    out.append(Section("Attention-transformed neurons and embeddings (Table 7)", table7_reading(table7), figure=t7.plot(), table=table7))
    return out
