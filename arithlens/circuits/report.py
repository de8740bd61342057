"""The Zhang et al. (ICML 2024) sections of the ``arithlens run`` report.

On 2-digit addition with template 3 ("n1 plus n2 is", numerals): path-patching heatmap
(Algorithm 1), mean-ablation validation of the key nodes, END attention of the top
heads and the MLP unembedding probe; precise SFT (small, CPU-sized) outside quick mode.
Quick mode uses a handful of pairs and stays well under two minutes on 2 CPU cores.

Example::

    from arithlens.pipeline import run_pipeline
    run_pipeline(quick=True, out="results/demo")     # includes these sections
"""

from __future__ import annotations

import time
from typing import Any


def sections(ctx: Any) -> list[Any]:
    from arithlens import data
    from arithlens.circuits.counterfactual import Counterfactual
    from arithlens.circuits.end_attention import EndAttention
    from arithlens.circuits.mean_ablation import Knockout
    from arithlens.circuits.mlp_probe import MLPProbe
    from arithlens.circuits.path_patching import PathPatching
    from arithlens.report import Section

    model, quick, out = ctx.model, ctx.quick, ctx.out
    t0 = time.perf_counter()
    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3], forms=["numeral"], n_per_op=8 if quick else 40)
    pairs = Counterfactual().run(model, cases)
    patching = PathPatching(progress=False).run(model, pairs)
    patching.to_csv(str(out / "circuits_patching.csv"))
    ctx.timings["circuits: path patching (s)"] = time.perf_counter() - t0
    top = patching.df.reindex(patching.df["effect"].abs().sort_values(ascending=False).index).head(8)
    labels = ", ".join(f"{r.layer}.{r.node}" for r in top.head(3).itertuples())
    out_sections = [
        Section(
            "Key components by path patching (Zhang et al. Algorithm 1)",
            f"Effect (logit_p - logit_o)/logit_o of swapping each head's / MLP's END output for its output on "
            f"'n1 nothing n2 is' ({len(pairs)} pairs of 2-digit addition), others frozen; strongest: {labels}.\n"
            "Red/blue cells are nodes whose counterfactual output raises/lowers the answer's logit; most are near zero.",
            figure=patching.plot(),
            table=top[["layer", "node", "effect", "effect_sem", "logit_change"]],
            csv="circuits_patching.csv",
        )
    ]

    t0 = time.perf_counter()
    knockout = Knockout(top_n=8, individual=not quick, n_random=1 if quick else 3, progress=False).run(model, pairs, patching)
    knockout.to_csv(str(out / "circuits_knockout.csv"))
    ctx.timings["circuits: knockout (s)"] = time.perf_counter() - t0
    acc = knockout.df[knockout.df["op"] == "all"].set_index("condition")["accuracy"]
    out_sections.append(
        Section(
            "Mean-ablation knockout of the key nodes",
            f"Accuracy {acc.get('baseline', float('nan')):.0%} unablated; {acc.get('key', float('nan')):.0%} with the 8 key nodes "
            f"mean-ablated, {acc.get('random', float('nan')):.0%} with 8 random others, {acc.get('rest', float('nan')):.0%} with all the rest.\n"
            "A large drop for the key set and a small one for random nodes confirms the identified components carry the task.",
            figure=knockout.plot(),
            table=knockout.df[knockout.df["op"] == "all"],
            csv="circuits_knockout.csv",
        )
    )

    t0 = time.perf_counter()
    attention = EndAttention(top_n=4).run(model, pairs, patching)
    probe = MLPProbe().run(model, cases)
    ctx.timings["circuits: attention + probe (s)"] = time.perf_counter() - t0
    best = attention.df.loc[attention.df.groupby("head_label")["attention"].idxmax()]
    roles = ", ".join(f"{r.head_label}->{r.role} ({r.attention:.2f})" for r in best.itertuples())
    out_sections.append(
        Section(
            "END attention of the key heads",
            f"Share of the END token's attention going to operand A, operand B, the operator word and other tokens; "
            f"largest per head: {roles}.\nHeads attending to the operands move the numbers to the last position.",
            figure=attention.plot(),
        )
    )
    c_out = probe.df[(probe.df["quantity"] == "mlp_out") & (probe.df["token"] == "C")]
    peak = c_out.loc[c_out["cosine"].idxmax()]
    out_sections.append(
        Section(
            "MLP unembedding probe",
            f"Cosine of each layer's MLP input, output and (output - input) at END with W_U of A, B and the answer C; "
            f"MLP outputs align most with the answer at layer {int(peak['layer'])} (cos {peak['cosine']:.3f}).\n"
            "A rise of the C curve in late layers means those MLPs write the answer token into the residual stream.",
            figure=probe.plot(),
        )
    )

    if not quick:
        from arithlens.circuits.precise_sft import PreciseSFT

        t0 = time.perf_counter()
        sft = PreciseSFT(top_n=8, steps=60, batch_size=8, n_train=400, n_test=80, progress=False).run(model, patching=patching)
        sft.to_csv(str(out / "circuits_sft.csv"))
        ctx.timings["circuits: precise SFT (s)"] = time.perf_counter() - t0
        r = sft.df.set_index("variant")
        out_sections.append(
            Section(
                "Precise SFT (small CPU run)",
                f"Test accuracy after 60 steps: original {r.loc['original', 'accuracy']:.0%}, precise "
                f"{r.loc['precise', 'accuracy']:.0%}, full {r.loc['full', 'accuracy']:.0%}, random {r.loc['random', 'accuracy']:.0%}; "
                "general-text perplexity beside it.\nPrecise SFT trains only the key nodes' parameters; use `arithlens sft` for longer runs.",
                figure=sft.plot(),
                table=sft.df.drop(columns=["nodes"]),
                csv="circuits_sft.csv",
            )
        )
    return out_sections
