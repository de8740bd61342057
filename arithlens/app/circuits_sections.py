"""The Zhang et al. (ICML 2024) sections of the `arithlens run` report.

On 2-digit addition with template 3 ("n1 plus n2 is", numerals): the path-patching
heatmap (Algorithm 1), the mean-ablation knockout of the key nodes, END attention of the
top heads and the MLP unembedding probe; precise SFT (small, CPU-sized) outside quick
mode. `ctx.sizes.circuits_pairs` pairs are used.

Every reading is a pure function of its result (`patching_reading`, `knockout_reading`,
`attention_reading`, `probe_reading`, `sft_reading`): a claim — a node matters, the key
set carries the task, the late MLPs write the answer — is stated only when its 95 %
interval establishes it; otherwise the reading says the cases are too few, with the count.

Example:
    ```python
    from arithlens.app.pipeline import run_pipeline
    run_pipeline(quick=True, out="results/demo")     # includes these sections
    ```
"""

from __future__ import annotations

from typing import Any

from arithlens.app.report import Section, join_words, plural
from arithlens.core.stats import CONFIDENCE, bonferroni, difference_interval, mean_interval, num, paired_difference, pct, proportion, t_quantile
from arithlens import data
from arithlens.circuits.counterfactual import counterfactual_pairs
from arithlens.circuits.end_attention import EndAttention
from arithlens.circuits.mean_ablation import Knockout
from arithlens.circuits.mlp_probe import MLPProbe
from arithlens.circuits.path_patching import PathPatching
from arithlens.circuits.precise_sft import PreciseSFTSettings, precise_sft


def _node_name(row: Any) -> str:
    node = str(row["node"])
    return f"MLP {int(row['layer'])}" if node == "mlp" else f"{int(row['layer'])}.{node}"


# ----------------------------------------------------------------------------- readings
def patching_reading(patching: Any, n_pairs: int | None = None) -> str:
    """Algorithm 1's reading: the strongest nodes and how many nodes have an effect the pairs establish.

    Args:
        patching: A [`PathPatchingResult`][arithlens.circuits.path_patching.PathPatchingResult]
            (uses `df`: `layer, node, effect, effect_sem, n`).
        n_pairs: Counterfactual pairs (default `df["n"]`).
    """
    df = patching.df
    n = int(n_pairs if n_pairs is not None else (df["n"].iloc[0] if "n" in df and len(df) else 0))
    ranked = df.reindex(df["effect"].abs().sort_values(ascending=False, kind="stable").index)
    lines = [
        f"Effect (logit_p − logit_o) / logit_o of swapping each head's / MLP's END output for its output on the counterfactual "
        f"prompt ('n1 nothing n2 is'), others frozen, over {plural(n, 'pair')} of 2-digit addition; red cells raise the answer's "
        "logit, blue cells lower it."
    ]
    strongest = [f"{_node_name(r)} ({num(r['effect'], 3, sign=True)} ± {num(r['effect_sem'], 3)} SEM)" for _, r in ranked.head(3).iterrows()]
    lines.append(f"Largest |effect|: {join_words(strongest)}.")
    sem = df["effect_sem"].astype(float)
    if n < 2 or not sem.notna().any():
        lines.append(f"With {plural(n, 'pair')} there is no standard error, so no node's effect can be told from zero.")
        return "\n".join(lines)
    # The effect is a mean of n pairs and its SEM an estimate: Student's t with n − 1 df, not a normal z.
    t = t_quantile(0.5 + bonferroni(CONFIDENCE, len(df)) / 2, n - 1)
    clear = df[(df["effect"].abs() > t * sem) & sem.notna()]
    names = [_node_name(r) for _, r in clear.reindex(clear["effect"].abs().sort_values(ascending=False).index).iterrows()]
    adjusted = f"{round(100 * CONFIDENCE)}% intervals adjusted for the {len(df)} nodes"
    top_abs = float(df["effect"].abs().max())
    large = df[df["effect"].abs() >= 0.1 * top_abs] if top_abs > 0 else df.iloc[:0]
    if top_abs > 0:
        lines.append(f"{len(large)} of {len(df)} nodes have |effect| at least a tenth of the largest ({num(top_abs, 3)}); the figure's other cells are near zero by comparison.")
    if clear.empty:
        lines.append(f"No node's effect is distinguishable from zero on {plural(n, 'pair')} ({adjusted}).")
    else:
        lines.append(
            f"{len(clear)} of {len(df)} nodes have an effect distinguishable from zero ({adjusted}): "
            f"{join_words(names[:8])}{' …' if len(names) > 8 else ''}; the other {len(df) - len(clear)} are not."
        )
    return "\n".join(lines)


def knockout_reading(knockout: Any) -> str:
    """The knockout's reading: whether mean-ablating the key nodes lowers accuracy, more than
    random nodes do, and what ablating all the others does — each with a paired interval.

    Args:
        knockout: A [`KnockoutResult`][arithlens.circuits.mean_ablation.KnockoutResult]
            (uses `df` rows of op `all` and `correct`, the per-case outcomes by condition).
    """
    df = knockout.df[knockout.df["op"] == "all"].set_index("condition")
    correct = {k: [bool(x) for x in v.tolist()] for k, v in (getattr(knockout, "correct", {}) or {}).items()}
    n = int(df.loc["baseline", "n"])
    base = proportion(round(df.loc["baseline", "accuracy"] * n), n)
    n_key = int(df.loc["key", "n_ablated"]) if "key" in df.index else 0
    lines = [f"Accuracy unablated: {base.percent()} on {plural(n, 'pair')}."]
    if base.value == 0:
        lines.append("The model answers none of these prompts, so no ablation can lower its accuracy: the knockout cannot validate the key nodes here.")
        return "\n".join(lines)

    def drop(condition: str) -> Any:
        if condition in correct and "baseline" in correct:
            return paired_difference(correct["baseline"], correct[condition])
        return difference_interval(df.loc["baseline", "accuracy"] * n, n, df.loc[condition, "accuracy"] * n, n)

    parts, key = [], None
    if "key" in df.index:
        key = drop("key")
        parts.append(f"the {n_key} key nodes: {pct(df.loc['key', 'accuracy'])}, {key.change()}")
    if "random" in df.index:
        parts.append(f"{n_key} random other nodes: {pct(df.loc['random', 'accuracy'])}, {drop('random').change()}")
    if "rest" in df.index:
        parts.append(f"all {int(df.loc['rest', 'n_ablated'])} other nodes: {pct(df.loc['rest', 'accuracy'])}, {drop('rest').change()}")
    lines.append("Mean-ablating " + "; ".join(parts) + ".")
    if key is None:
        return "\n".join(lines)
    beyond = None
    if "random" in df.index:
        beyond = (
            paired_difference(correct["random"], correct["key"])
            if "random" in correct and "key" in correct
            else difference_interval(df.loc["random", "accuracy"] * n, n, df.loc["key", "accuracy"] * n, n)
        )
    if key.above_zero and beyond is not None and beyond.above_zero:
        lines.append(f"The key nodes matter: their ablation lowers accuracy, by {beyond.points()} more than random nodes' — the knockout validates them, as in the paper.")
    elif key.above_zero and beyond is not None:
        lines.append(f"Ablating the key nodes lowers accuracy, but not measurably more than ablating random nodes ({beyond.points()}): the knockout does not single them out on {plural(n, 'pair')}.")
    elif key.above_zero:
        lines.append("Ablating the key nodes lowers accuracy (no random control was run).")
    elif key.below_zero:
        lines.append("Ablating the key nodes raises accuracy: the knockout does not validate them as carrying the task.")
    else:
        lines.append(f"On {plural(n, 'pair')} the key nodes' drop is not distinguishable from zero: these cases cannot validate the key nodes.")
    if "rest" in df.index:
        rest = drop("rest")
        if rest.above_zero:
            lines.append("Ablating every other node also lowers accuracy: the key set alone does not carry the task (the paper found the others can be removed).")
        elif not rest.known:
            lines.append("Ablating every other node changes accuracy by no measurable amount, consistent with the paper's finding that the others do not matter.")
    return "\n".join(lines)


def attention_reading(attention: Any) -> str:
    """END attention's reading: where each key head looks, and how many look at the operands.

    Args:
        attention: An [`EndAttentionResult`][arithlens.circuits.end_attention.EndAttentionResult]
            (uses `df`: `head_label, role, attention, n`).
    """
    df = attention.df
    if df.empty:
        return "No head was read."
    best = df.loc[df.groupby("head_label", sort=False)["attention"].idxmax()]
    n = int(df["n"].iloc[0]) if "n" in df else 0
    roles = ", ".join(f"{r.head_label} → {r.role} ({r.attention:.2f})" for r in best.itertuples())
    operands = best[best["role"].isin(["A", "B"])]
    lines = [
        f"Share of the END token's attention going to operand A, operand B, the operator and other tokens, mean over {plural(n, 'prompt')}; "
        f"largest per head: {roles}."
    ]
    if len(operands) == len(best):
        lines.append("Every one of these heads attends mostly to an operand: they move the numbers to the last position, as in the paper.")
    elif len(operands):
        lines.append(f"{len(operands)} of {len(best)} heads attend mostly to an operand ({join_words(list(operands['head_label']))}); the others look elsewhere.")
    else:
        lines.append("None of these heads attends mostly to an operand: on this model they do not look like the paper's operand-moving heads.")
    return "\n".join(lines)


def probe_reading(probe: Any) -> str:
    """The MLP probe's reading: where MLP outputs align most with the answer C, and whether the
    late MLPs align more with C than with the operands (a paired interval over prompts).

    Args:
        probe: An [`MLPProbeResult`][arithlens.circuits.mlp_probe.MLPProbeResult]
            (uses `df`: `layer, quantity, token, cosine[, in_top_k]`, and `per_case`).
    """
    df = probe.df
    c_out = df[(df["quantity"] == "mlp_out") & (df["token"] == "C")]
    if c_out.empty:
        return "No MLP output was probed."
    out = df[df["quantity"] == "mlp_out"].pivot_table(index="layer", columns="token", values="cosine")
    gap = out["C"] - (out["A"] + out["B"]) / 2
    best = int(gap.idxmax())
    peak = c_out[c_out["layer"] == best].iloc[0]
    lines = [
        "Cosine of each layer's MLP input, output and output − input at END with the unembedding W_U of A, B and the answer C. "
        f"The MLP output favours C over the operands most at layer {best} (cos {num(out.loc[best, 'C'], 3)} with C vs "
        f"{num((out.loc[best, 'A'] + out.loc[best, 'B']) / 2, 3)} with A and B on average)"
        + (f"; C is among that output's top tokens in {pct(peak['in_top_k'])} of prompts" if "in_top_k" in peak else "")
        + "."
    ]
    layers = sorted(set(df["layer"]))
    late = layers[len(layers) * 2 // 3 :]
    per_case = getattr(probe, "per_case", None)
    if per_case is not None and len(late):
        idx = [layers.index(L) for L in late]
        out = per_case[:, idx, 1, :]  # [case, late layer, token] for mlp_out
        gap = (out[..., 2] - (out[..., 0] + out[..., 1]) / 2).mean(1)
        e = mean_interval(gap.tolist())
        span = f"layers {late[0]}-{late[-1]}"
        if e.above_zero:
            size = "slightly " if e.value < 0.05 else ""
            lines.append(
                f"In the last third ({span}) MLP outputs align {size}more with C than with the operands (by {num(e.value, 3)} in cosine "
                f"[{e.ci(scale=1, digits=3)}], {plural(e.n, 'prompt')}): the late MLPs write toward the answer, the direction the paper reports."
            )
        elif e.below_zero:
            lines.append(f"In the last third ({span}) MLP outputs align less with C than with the operands ({num(e.value, 3)} [{e.ci(scale=1, digits=3)}]): these MLPs do not write the answer.")
        else:
            lines.append(f"In the last third ({span}) the alignment with C and with the operands is not distinguishable on {plural(e.n, 'prompt')} ({num(e.value, 3)} [{e.ci(scale=1, digits=3)}]).")
    return "\n".join(lines)


def sft_reading(sft: Any, n_test: int) -> str:
    """Precise SFT's reading: each variant's test accuracy against the original's, and the perplexity cost.

    Args:
        sft: An [`PreciseSFTResult`][arithlens.circuits.precise_sft.PreciseSFTResult] (uses `df`:
            `variant, accuracy, perplexity, steps`).
        n_test: Test cases the accuracies are over.
    """
    r = sft.df.set_index("variant")
    if "original" not in r.index:
        return "No original model row to compare with."
    o = r.loc["original"]
    steps = int(r["steps"].max()) if "steps" in r else 0
    lines = [f"After {steps} steps, on {plural(n_test, 'test case')}: original {pct(o['accuracy'])}, perplexity {o['perplexity']:.1f}."]
    for v in [x for x in r.index if x != "original"]:
        d = difference_interval(r.loc[v, "accuracy"] * n_test, n_test, o["accuracy"] * n_test, n_test)
        verdict = "higher than" if d.above_zero else "lower than" if d.below_zero else "not distinguishable from"
        lines.append(
            f"{v}: {pct(r.loc[v, 'accuracy'])} ({d.points()} vs original: {verdict} it), perplexity {r.loc[v, 'perplexity']:.1f} "
            f"({num(r.loc[v, 'perplexity'] - o['perplexity'], 1, sign=True)})."
        )
    if {"precise", "full"} <= set(r.index):
        pp, pf = r.loc["precise", "perplexity"] - o["perplexity"], r.loc["full", "perplexity"] - o["perplexity"]
        lines.append(
            "Precise SFT changes general-text perplexity less than full fine-tuning, as the paper reports."
            if abs(pp) < abs(pf)
            else "Precise SFT does not change perplexity less than full fine-tuning on this run."
        )
    lines.append("Precise SFT trains only the key nodes' parameters; use `arithlens sft` for longer runs.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- sections
def compute(ctx: Any, saved: Any) -> None:
    """Run Zhang et al.'s analyses of the `arithlens run` report and save them in `saved`."""

    model, out, sizes = ctx.model, ctx.out, ctx.sizes
    facts = saved.facts["circuits"] = {}
    with ctx.timed("circuits: path patching"):
        cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3], forms=["numeral"], n_per_op=sizes.circuits_pairs)
        pairs = counterfactual_pairs(model, cases)
        patching = saved.keep("circuits_patching", PathPatching(progress=True).run(model, pairs))
        patching.to_csv(str(out / "circuits_patching.csv"))
    facts["n_pairs"] = len(pairs)

    with ctx.timed("circuits: knockout"):
        knockout = Knockout(k=8, individual=sizes.knockout_individual, n_random=sizes.knockout_random, progress=True).run(model, pairs, patching=patching)
        saved.keep("circuits_knockout", knockout)
        knockout.to_csv(str(out / "circuits_knockout.csv"))

    with ctx.timed("circuits: END attention and MLP probe"):
        saved.keep("circuits_attention", EndAttention(k=4).run(model, pairs, patching=patching))
        saved.keep("circuits_probe", MLPProbe().run(model, cases))

    if sizes.sft:
        n_test, steps = 80, 60
        facts["n_test"] = n_test
        # The random control needs as many non-key nodes as key ones.
        k = max(1, min(8, len(patching.df) // 3))
        with ctx.timed("circuits: precise SFT"):
            try:
                settings = PreciseSFTSettings(k=k, steps=steps, batch_size=8, n_train=400, n_test=n_test, progress=True)
                sft = saved.keep("circuits_sft", precise_sft(model, settings, patching=patching))
                sft.to_csv(str(out / "circuits_sft.csv"))
            except ValueError as err:
                facts["sft_error"] = str(err)


def render(saved: Any) -> list[Any]:
    """Zhang et al.'s sections of the `arithlens run` report, from the saved results."""
    facts = saved.facts["circuits"]
    patching = saved["circuits_patching"]
    top = patching.df.reindex(patching.df["effect"].abs().sort_values(ascending=False).index).head(8)
    out_sections = [
        Section(
            "Key components by path patching (Zhang et al. Algorithm 1)",
            patching_reading(patching, facts["n_pairs"]),
            figure=patching.plot(),
            table=top[[c for c in ("layer", "node", "effect", "effect_sem", "logit_change") if c in top]],
            csv="circuits_patching.csv",
        )
    ]
    knockout = saved["circuits_knockout"]
    out_sections.append(
        Section(
            "Mean-ablation knockout of the key nodes",
            knockout_reading(knockout),
            figure=knockout.plot(),
            table=knockout.df[knockout.df["op"] == "all"],
            csv="circuits_knockout.csv",
        )
    )
    attention, probe = saved["circuits_attention"], saved["circuits_probe"]
    out_sections.append(Section("END attention of the key heads", attention_reading(attention), figure=attention.plot()))
    out_sections.append(Section("MLP unembedding probe", probe_reading(probe), figure=probe.plot()))
    if "sft_error" in facts:
        out_sections.append(Section("Precise SFT (small CPU run)", f"Not computed: {facts['sft_error']}."))
    elif "circuits_sft" in saved:
        sft = saved["circuits_sft"]
        out_sections.append(
            Section(
                "Precise SFT (small CPU run)",
                sft_reading(sft, facts["n_test"]),
                figure=sft.plot(),
                table=sft.df.drop(columns=[c for c in ("nodes",) if c in sft.df]),
                csv="circuits_sft.csv",
            )
        )
    return out_sections
