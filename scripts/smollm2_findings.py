"""Recompute the numbers of docs/findings.md ("What arithlens finds in SmolLM2").

Each part is one paper experiment on the embedded default model, with the configuration
the findings page states; it prints the table the page quotes and writes its tidy
DataFrame to ``--out``::

    .venv/bin/python scripts/smollm2_findings.py                 # every part
    .venv/bin/python scripts/smollm2_findings.py heads table5    # some of them

Times on 2 CPU cores: heads 2 min (270 heads x 100 cases), table5 45 s, table8 2 min,
zhang 10 s, sft 5 min; lora_lr 8 min, lora 20 min (7 LoRA models; their adapters are saved
under ``--out``/lora and re-used by later runs, which then take 9 min), lora_rank 15 min
(after lora), prune 10 min, bias 5 min (one CPU thread each). On a GPU pass ``--device cuda``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

import arithlens
from arithlens import data

PARTS = ("heads", "table5", "table8", "zhang", "sft", "lora_lr", "lora", "lora_rank", "prune", "bias")


def correct_cases(model, ds):
    """The cases of `ds` the model answers correctly (first token)."""
    return ds.correct_under(model.cache(ds))


def heads(model, out: Path) -> None:
    """Tables 1/24: zero each head on 1-digit '+' with "n1+n2=" (all 100 problems)."""
    from arithlens.cna.heads import HeadAblation

    ds = data.arithmetic(model.tokenizer, ops="+", templates=[4], forms=["numeral"])
    res = HeadAblation(progress=False).run(model, ds)
    res.df.to_csv(out / "heads.csv", index=False)
    plus = res.df[res.df.op == "+"]
    cols = ["layer", "head", "baseline_accuracy", "accuracy", "accuracy_drop", "accuracy_decrease", "logprob_drop"]
    print(plus.sort_values("accuracy_drop", ascending=False)[cols].head(5).to_string(index=False))
    print("median head's accuracy drop:", plus.accuracy_drop.median(), "| top / median:", res.median_ratio("+"))
    print("log-prob drop, top / median:", plus.logprob_drop.max() / plus.logprob_drop.median())
    by_type = res.by("op", "case_type").query("op != 'all'")
    print(by_type.sort_values("accuracy_drop", ascending=False).head(6).to_string(index=False))


def table5(model, out: Path, head=(0, 8), n: int = 40) -> None:
    """Tables 5 and 6 on correctly answered 1-digit + and - cases, all four templates."""
    from arithlens.cna import MaskKeep, PredictionEnhancingDAG
    from arithlens.core.interventions import ZeroHead

    ds = data.arithmetic(model.tokenizer, ops="+-", templates=[1, 2, 3, 4], forms=["numeral"])
    sub = correct_cases(model, ds).sample(n, seed=0)
    # Fast CNA (first order, the top 200 per case re-scored exactly): its top-99 and top-10
    # equalled exact CNA's on every case checked (NeuronImportance.fast_agreement), at a
    # fraction of the cost of scoring all 46,080 neurons exactly.
    mk = MaskKeep(intervention=ZeroHead(*head), mode="fast").run(model, sub)
    mk.df.to_csv(out / "table5.csv", index=False)
    print(mk.table().to_string())
    # The DAG runs on the cases MaskKeep scored (its rows), as the report does.
    rows = data.ArithmeticDataset([sub[i] for i in mk.rows], name="table5-rows")
    dag = PredictionEnhancingDAG(intervention=ZeroHead(*head)).run(model, rows, cna=mk.cna if len(rows) == len(sub) else None)
    dag.df.to_csv(out / "table6.csv", index=False)
    print(dag.table().to_string())


def table8(model, out: Path) -> None:
    """Table 8: ablate the hidden-interpretable sets (and random sets of the same size)."""
    from arithlens.cna import HiddenInterpretable

    ds = data.arithmetic(model.tokenizer, ops="+-", templates=[1, 2, 3, 4], forms=["numeral"])
    res = HiddenInterpretable(ms=(0, 1, 2, 3, 5, 8), correct_only=True, progress=False).run(model, ds)
    res.df.to_csv(out / "table8.csv", index=False)
    print(res.table().to_string())


def zhang(model, out: Path, n: int = 40) -> None:
    """Zhang et al. §4.1-4.2 on 2-digit addition, "n1 plus n2 is"."""
    from arithlens.circuits import counterfactual_pairs, EndAttention, Knockout, MLPProbe, PathPatching

    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3], forms=["numeral"], n_per_op=n, seed=0)
    pairs = counterfactual_pairs(model, cases)
    patching = PathPatching(progress=False).run(model, pairs)
    patching.df.to_csv(out / "patching.csv", index=False)
    strongest = patching.df.reindex(patching.df.effect.abs().sort_values(ascending=False).index)
    print(strongest.head(10)[["layer", "node", "effect"]].to_string(index=False))
    ko = Knockout(k=10, progress=False).run(model, pairs, patching=patching)
    ko.df.to_csv(out / "knockout.csv", index=False)
    print(ko.df.to_string(index=False))
    att = EndAttention(k=5).run(model, pairs, patching=patching)
    att.df.to_csv(out / "end_attention.csv", index=False)
    print(att.df.pivot_table(index="head_label", columns="role", values="attention", sort=False).round(2).to_string())
    probe = MLPProbe().run(model, cases)
    probe.df.to_csv(out / "mlp_probe.csv", index=False)
    print(probe.df.groupby(["quantity", "token"]).cosine.agg(["mean", "min", "max"]).to_string())


def sft(model, out: Path) -> None:
    """Zhang et al. §4.3: precise SFT of the key nodes vs full and random-node tuning."""
    from arithlens.circuits import PreciseSFTSettings, precise_sft

    res = precise_sft(model, PreciseSFTSettings(steps=120, batch_size=8, n_train=960, n_test=200, lr=1e-4, progress=False))
    res.df.to_csv(out / "sft.csv", index=False)
    print(res.df.to_string(index=False))
    print("key nodes:", res.nodes, "| random nodes:", res.random_nodes)


# ---------------------------------------------------------------------------- CNA §5, §6.1, §6.2
LORA_LAYERS = (2, 5, 8, 11, 14, 19, 25)  # spread over the paper's ranges, scaled to 30 layers: 1-8, 9-15, 16-28


def _sweep(out: Path, layers=LORA_LAYERS, lrs=(1e-3,)):
    """The CPU-sized LoRA setting of every §5/§6.1 part: 80 steps of 8 on 1,000 §5 cases."""
    from arithlens.cna.lora import LoRASettings

    return LoRASettings(layers=layers, lrs=lrs, steps=80, n_train=1000, n_val=100, n_test=200,
                        out_dir=out / ("lora" if len(lrs) == 1 else "lora_lr"), progress=False)  # fmt: skip


def _se(p: float, n: int) -> float:
    """Binomial standard error of an accuracy `p` on `n` cases."""
    return (p * (1 - p) / n) ** 0.5


def lora_lr(model, out: Path) -> None:
    """CNA §5: the paper's three learning rates on one shallow layer (8), chosen on held-out loss."""
    from arithlens.cna.lora import PAPER_LRS, lora_layer_sweep

    res = lora_layer_sweep(model, _sweep(out, layers=(8,), lrs=PAPER_LRS))
    res.lr_search.to_csv(out / "lora_lr.csv", index=False)
    print(res.lr_search.to_string(index=False))
    best = res.lr_search.loc[res.lr_search.val_loss.idxmin()]
    print(f"held-out answer loss picks lr {best.lr:g} ({best.val_loss:.3f}); the others: "
          + ", ".join(f"{r.lr:g} {r.val_loss:.3f}" for r in res.lr_search.itertuples() if r.lr != best.lr))


def lora(model, out: Path) -> None:
    """CNA §5: Figure 2 and Tables 9, 10 (ranked on the original model, the correct answer token)."""
    from arithlens.cna.lora import lora_layer_sweep
    from arithlens.cna.lora_coefficients import LoRACoefficients

    sweep = lora_layer_sweep(model, _sweep(out))
    sweep.df.to_csv(out / "lora.csv", index=False)
    print(sweep.df[["model", "lora_layer", "group", "lr", "val_loss", "accuracy"]].to_string(index=False))
    base, tuned = float(sweep.df.accuracy.iloc[0]), sweep.df.iloc[1:]
    better = int((tuned.accuracy > base).sum())
    print(f"Figure 2: {better} of {len(tuned)} LoRA models beat the original's {base:.1%} on 200 test problems "
          f"(standard error about {_se(base, 200):.1%}); by range: "
          + ", ".join(f"{g} {a:.1%}" for g, a in tuned.groupby("group", sort=False).accuracy.mean().items())
          + f"; best layer {int(tuned.loc[tuned.accuracy.idxmax(), 'lora_layer'])} ({tuned.accuracy.max():.1%}).")
    cases = data.arithmetic(model.tokenizer, ops="+-*/", templates=[1, 2, 3, 4], forms=["numeral"]).sample(64, seed=0)
    coef = LoRACoefficients(progress=False).run(model, cases, loras=sweep)
    coef.df.to_csv(out / "lora_coef.csv", index=False)
    t9, t10 = coef.table9(), coef.table10()
    print(t9.round(3).to_string())
    print(t10.round(1).to_string())
    raised = [n for n in t9.index if (t9.loc[n].drop("original") > t9.loc[n, "original"]).all()]
    print(f"Table 9 (\"3+5=\"): {len(raised)} of {len(t9)} top neurons have a higher coefficient in every LoRA model"
          + (f" ({', '.join(raised)})." if raised else "."))
    cells, mean = t10.to_numpy(), float(coef.df.coef_increase.mean())
    positive = int((cells > 0).sum())
    verdict = "Yes" if positive == cells.size else ("Mostly" if positive > cells.size / 2 else "No")
    print(f"Does LoRA raise the coefficient scores of the important neurons? {verdict}: {positive} of {cells.size} "
          f"(range, top-K) cells of Table 10 are increases; the mean over all LoRA models, K and cases is {mean:+.1f} %.")
    by_range = t10.mean(axis=1)
    ordered = all(a > b for a, b in zip(by_range, by_range.iloc[1:]))
    print(f"More for shallow LoRA layers? {'Yes' if ordered else 'No'}: mean over K "
          + ", ".join(f"{g} {v:+.1f} %" for g, v in by_range.items())
          + (" — decreasing with depth, as in the paper." if ordered else " — not decreasing with depth."))
    share = coef.df.groupby("group", sort=False).share_downstream.mean()
    print("share of the top neurons at or above the LoRA layer (the only ones it can change): "
          + ", ".join(f"{g} {v:.0%}" for g, v in share.items()))


def lora_rank(model, out: Path) -> None:
    """CNA §5, Table 10 with the other reading of "most important": ranked in each LoRA model (run `lora` first)."""
    from arithlens.cna.lora_coefficients import LoRACoefficients

    adapters = {L: out / "lora" / f"lora_L{L}" for L in LORA_LAYERS}
    cases = data.arithmetic(model.tokenizer, ops="+-*/", templates=[1, 2, 3, 4], forms=["numeral"]).sample(64, seed=0)
    coef = LoRACoefficients(rank_on="lora", progress=False).run(model, cases, loras=adapters)
    coef.df.to_csv(out / "lora_coef_rank_lora.csv", index=False)
    t10 = coef.table10()
    print(t10.round(1).to_string())
    by_range = t10.mean(axis=1)
    positive = int((t10.to_numpy() > 0).sum())
    print(f"Ranked on each LoRA model: {positive} of {t10.size} cells are increases; mean over K "
          + ", ".join(f"{g} {v:+.1f} %" for g, v in by_range.items())
          + (" — decreasing with depth." if all(a > b for a, b in zip(by_range, by_range.iloc[1:])) else " — not decreasing with depth."))


def prune(model, out: Path) -> None:
    """CNA §6.1, Table 11: CNA between the original and LoRA on layer 8 on 48 1-digit cases."""
    from arithlens.cna.pruning import PruningSettings, cna_pruning

    res = cna_pruning(model, PruningSettings(n_cases=48, lora=_sweep(out), out_dir=out / "lora", progress=False))
    res.df.to_csv(out / "prune.csv", index=False)
    print(res.df.to_string(index=False))
    print(res.table().to_string())
    d, L = res.df.set_index("model"), res.lora_layer
    kept, total = int(d.loc["cna-pruned", "deep_neurons"]), int(d.loc["original", "deep_neurons"])
    p0, p1 = d.loc["original", "n_params"], d.loc["cna-pruned", "n_params"]
    t0, t1 = d.loc["original", "forward_ms"], d.loc["cna-pruned", "forward_ms"]
    print(f"kept {kept} of {total} FFN neurons ({kept / total:.1%}) in layers {res.deep_layers[0]}-{res.deep_layers[-1]}; "
          f"parameters {p0 / 1e6:.1f} M -> {p1 / 1e6:.1f} M ({1 - p1 / p0:.1%} fewer); one forward pass of 32 test "
          f"prompts {t0:.0f} ms -> {t1:.0f} ms ({t1 / t0:.2f}x).")
    acc = d["accuracy"]
    gap = acc[f"lora{L}-p"] - acc[f"lora{L}-r"]
    se = (_se(acc[f"lora{L}-p"], 200) ** 2 + _se(acc[f"lora{L}-r"], 200) ** 2) ** 0.5
    verdict = "Yes" if gap > 2 * se else ("No" if gap < -2 * se else "Not clearly")
    print(f"Does CNA pruning beat random pruning after LoRA? {verdict}: LoRA{L}-p {acc[f'lora{L}-p']:.1%} vs "
          f"LoRA{L}-r {acc[f'lora{L}-r']:.1%}, a gap of {gap:+.1%} ({gap / se:+.1f} standard errors on 200 problems); "
          f"original {acc['original']:.1%}, LoRA{L} {acc[f'lora{L}']:.1%}; before LoRA the CNA-pruned model scores "
          f"{acc['cna-pruned']:.1%} and the randomly pruned one {acc['random-pruned']:.1%}.")


def bias(model, out: Path) -> None:
    """CNA §6.2, Tables 12, 13 and Appendix D: 18 neurons found on the first prompt, zeroed."""
    from arithlens.cna.bias import GenderBiasSettings, discover_professions, gender_bias, paper_bias_data

    disc = discover_professions(model, top_k=100)
    disc.df.to_csv(out / "bias_discovery.csv", index=False)
    cand = disc.candidates()
    table23 = paper_bias_data().professions
    found = {g: [p for p in table23[g] if p.split()[0] in set(cand[cand.gender == g].token)] for g in table23}
    print(f"Appendix D on SmolLM2: {sum(map(len, found.values()))} of 32 Table 23 professions (first word) are among the "
          f"top-100 next tokens of one gender only, for that gender, in at least one prompt: "
          + "; ".join(f"{g}: {', '.join(v) or 'none'}" for g, v in found.items()))
    res = gender_bias(model, GenderBiasSettings(n_neurons=18, progress=False))
    res.df.to_csv(out / "bias.csv", index=False)
    t13 = res.table13()
    print(t13.round(3).to_string())
    print(res.table12("nurse").to_string(index=False))
    print(res.table12("driver").to_string(index=False))
    print("edited neurons:", ", ".join(f"{L}_{n}" for L, n in res.neurons))
    o, e = t13.loc["original"], t13.loc["edited"]
    change = {c: e[c] / o[c] - 1 for c in ("total bias", "woman bias", "man bias")}
    verb = "reduces" if change["total bias"] < 0 else "does not reduce"
    print(f"Editing the top-18 neurons {verb} the bias: total {o['total bias']:.3f} -> {e['total bias']:.3f} "
          f"({change['total bias']:+.1%}), woman-biased {o['woman bias']:.3f} -> {e['woman bias']:.3f} "
          f"({change['woman bias']:+.1%}), man-biased {o['man bias']:.3f} -> {e['man bias']:.3f} ({change['man bias']:+.1%}); "
          f"paper (Llama-2-7B): 1.26 -> 0.81 (-35.7 %).")
    print(f"Its cost: general-text perplexity {o['perplexity']:.2f} -> {e['perplexity']:.2f} "
          f"({e['perplexity'] / o['perplexity'] - 1:+.1%}); 1-digit arithmetic accuracy {o['arithmetic_accuracy']:.1%} -> "
          f"{e['arithmetic_accuracy']:.1%} on 200 cases.")


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
