"""Recompute the numbers of docs/findings.md ("What arithlens finds in SmolLM2").

Each part is one paper experiment on the embedded default model, with the configuration
the findings page states; it prints the table the page quotes and writes its tidy
DataFrame to ``--out``::

    .venv/bin/python scripts/smollm2_findings.py                 # every part
    .venv/bin/python scripts/smollm2_findings.py heads table5    # some of them

Times on 2 CPU cores: heads 2 min (270 heads x 100 cases), table5 45 s, table8 2 min,
zhang 10 s, sft 5 min. On a GPU pass ``--device cuda``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

import arithlens
from arithlens import data

PARTS = ("heads", "table5", "table8", "zhang", "sft")


def correct_cases(model, ds):
    """The cases of ``ds`` the model answers correctly (first token)."""
    run = model.run(ds)
    return data.ArithmeticDataset([c for c, ok in zip(ds, run.correct.tolist()) if ok])


def heads(model, out: Path) -> None:
    """Tables 1/24: zero each head on 1-digit '+' with "n1+n2=" (all 100 problems)."""
    from arithlens.heads import HeadAblation

    ds = data.arithmetic(model.tokenizer, ops="+", templates=[4], forms=["numeral"])
    res = HeadAblation(progress=False).run(model, ds)
    res.df.to_csv(out / "heads.csv", index=False)
    plus = res.df[res.df.op == "+"]
    cols = ["layer", "head", "baseline_accuracy", "accuracy", "accuracy_drop", "relative_drop", "logprob_drop"]
    print(plus.sort_values("accuracy_drop", ascending=False)[cols].head(5).to_string(index=False))
    print("median head's accuracy drop:", plus.accuracy_drop.median(), "| top / median:", res.median_ratio("+"))
    print("log-prob drop, top / median:", plus.logprob_drop.max() / plus.logprob_drop.median())
    by_type = res.by("op", "case_type").query("op != 'all'")
    print(by_type.sort_values("accuracy_drop", ascending=False).head(6).to_string(index=False))


def table5(model, out: Path, head=(0, 8), n: int = 40) -> None:
    """Tables 5 and 6 on correctly answered 1-digit + and - cases, all four templates."""
    from arithlens.cna import MaskKeep, PredictionEnhancingDAG

    ds = data.arithmetic(model.tokenizer, ops="+-", templates=[1, 2, 3, 4], forms=["numeral"])
    sub = correct_cases(model, ds).sample(n, seed=0)
    # Fast CNA (first order, the top 200 per case re-scored exactly): its top-99 and top-10
    # equalled exact CNA's on every case checked (NeuronImportance.fast_agreement), at a
    # fraction of the cost of scoring all 46,080 neurons exactly.
    mk = MaskKeep(head=head, mode="fast").run(model, sub)
    mk.df.to_csv(out / "table5.csv", index=False)
    print(mk.table().to_string())
    # The DAG runs on the cases MaskKeep scored (its rows), as the report does.
    dag = PredictionEnhancingDAG(head=head).run(model, [sub[i] for i in mk.rows], scores=mk.cna.importance_change)
    dag.df.to_csv(out / "table6.csv", index=False)
    print(dag.table().to_string())


def table8(model, out: Path) -> None:
    """Table 8: ablate the hidden-interpretable sets (and random sets of the same size)."""
    from arithlens.cna import HiddenInterpretable

    ds = data.arithmetic(model.tokenizer, ops="+-", templates=[1, 2, 3, 4], forms=["numeral"])
    res = HiddenInterpretable(ms=(0, 1, 2, 3, 5, 8), progress=False).run(model, ds, only_correct=True)
    res.df.to_csv(out / "table8.csv", index=False)
    print(res.table().to_string())


def zhang(model, out: Path, n: int = 40) -> None:
    """Zhang et al. §4.1-4.2 on 2-digit addition, "n1 plus n2 is"."""
    from arithlens.circuits import Counterfactual, EndAttention, Knockout, MLPProbe, PathPatching

    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3], forms=["numeral"], n_per_op=n, seed=0)
    pairs = Counterfactual().run(model, cases)
    patching = PathPatching(progress=False).run(model, pairs)
    patching.df.to_csv(out / "patching.csv", index=False)
    strongest = patching.df.reindex(patching.df.effect.abs().sort_values(ascending=False).index)
    print(strongest.head(10)[["layer", "node", "effect"]].to_string(index=False))
    ko = Knockout(top_n=10, progress=False).run(model, pairs, patching)
    ko.df.to_csv(out / "knockout.csv", index=False)
    print(ko.df.to_string(index=False))
    att = EndAttention(top_n=5).run(model, pairs, patching)
    att.df.to_csv(out / "end_attention.csv", index=False)
    print(att.df.pivot_table(index="head_label", columns="role", values="attention", sort=False).round(2).to_string())
    probe = MLPProbe().run(model, cases)
    probe.df.to_csv(out / "mlp_probe.csv", index=False)
    print(probe.df.groupby(["quantity", "token"]).cosine.agg(["mean", "min", "max"]).to_string())


def sft(model, out: Path) -> None:
    """Zhang et al. §4.3: precise SFT of the key nodes vs full and random-node tuning."""
    from arithlens.circuits import PreciseSFT

    res = PreciseSFT(steps=120, batch_size=8, n_train=960, n_test=200, lr=1e-4, progress=False).run(model)
    res.df.to_csv(out / "sft.csv", index=False)
    print(res.df.to_string(index=False))
    print("key nodes:", res.nodes, "| random nodes:", res.random_nodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="part", help=f"any of {PARTS} (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results/findings"))
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}: choose from {PARTS}")
    args.out.mkdir(parents=True, exist_ok=True)
    model = arithlens.load_model(device=args.device)
    for part in args.parts or PARTS:
        print(f"\n## {part}")
        torch.manual_seed(0)
        t0 = time.perf_counter()
        globals()[part](model, args.out)
        print(f"({part}: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
