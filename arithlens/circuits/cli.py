"""``arithlens patch`` and ``arithlens sft`` — Zhang et al. (ICML 2024) from the command line.

* ``arithlens patch [dataset flags] [--limit N] [--method path|activation]
  [--position end|all] --out FILE.csv`` — Algorithm 1 on counterfactual pairs of the
  dataset (default: 2-digit addition, template 3 "n1 plus n2 is", numerals): one row per
  (layer, node) with ``layer, node`` (head index or ``mlp``), ``effect``, ...
* ``arithlens sft [--steps N] [--lr LR] [--batch-size B] [--top-n K] --out DIR`` —
  precise SFT of the top-K path-patching nodes vs full and random-component
  fine-tuning; writes ``DIR/sft.csv``, ``DIR/losses.csv`` and ``DIR/sft.html``.

Example::

    arithlens patch --limit 16 --out results/patch.csv
    arithlens sft --steps 100 --top-n 10 --out results/sft
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(subparsers: Any) -> None:
    from arithlens.cli import add_dataset_args, add_model_args

    sub = subparsers.add_parser("patch", help="path patching (Zhang et al. Algorithm 1): one row per (layer, node)")
    add_model_args(sub)
    add_dataset_args(sub, ops="+", digits="2")
    sub.set_defaults(templates="3", forms="numeral", n_per_op=50)
    sub.add_argument("--limit", type=int, default=None, help="use at most N cases (seeded sample)")
    sub.add_argument("--method", default="path", choices=["path", "activation"], help="others frozen (path) or recomputed (activation)")
    sub.add_argument("--position", default="end", choices=["end", "all"])
    sub.add_argument("--out", required=True, help="CSV file to write")
    sub.set_defaults(func=_cmd_patch)

    sft = subparsers.add_parser("sft", help="precise SFT of key components vs full and random fine-tuning")
    add_model_args(sft)
    sft.add_argument("--steps", type=int, default=200)
    sft.add_argument("--lr", type=float, default=1e-4)
    sft.add_argument("--batch-size", type=int, default=8)
    sft.add_argument("--top-n", type=int, default=10, help="key nodes fine-tuned (largest |effect|)")
    sft.add_argument("--n-train", type=int, default=1000, help="training cases (GPU: 18000)")
    sft.add_argument("--n-test", type=int, default=200, help="test cases (GPU: 2000)")
    sft.add_argument("--variants", default="precise,full,random", help="any of precise,full,random")
    sft.add_argument("--patch-pairs", type=int, default=16, help="2-digit addition pairs used to find key nodes")
    sft.add_argument("--ppl-tokens", type=int, default=2048, help="general-text tokens scored for perplexity")
    sft.add_argument("--no-full-answer", action="store_true", help="skip greedy whole-answer accuracy")
    sft.add_argument("--seed", type=int, default=0)
    sft.add_argument("--out", required=True, help="output directory")
    sft.set_defaults(func=_cmd_sft)


def _cmd_patch(args: argparse.Namespace) -> int:
    from arithlens.circuits.path_patching import PathPatching
    from arithlens.cli import _write_csv, dataset_from_args, load_model_from_args

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    model = load_model_from_args(args)
    cases = dataset_from_args(model, args)
    if args.limit:
        cases = cases.sample(args.limit, seed=args.seed)
    result = PathPatching(method=args.method, position=args.position).run(model, cases)
    _write_csv(result.df, args.out)
    top = result.df.reindex(result.df["effect"].abs().sort_values(ascending=False).index).head(10)
    print(top[["layer", "node", "effect", "logit_change"]].to_string(index=False))
    return 0


def _cmd_sft(args: argparse.Namespace) -> int:
    from arithlens import data
    from arithlens.circuits.path_patching import PathPatching
    from arithlens.circuits.precise_sft import PreciseSFT
    from arithlens.cli import _csv_list, load_model_from_args

    if args.patch_pairs < 1:
        raise ValueError(f"--patch-pairs must be >= 1, got {args.patch_pairs}")
    sft = PreciseSFT(
        top_n=args.top_n,
        variants=_csv_list(args.variants),
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        full_answer=not args.no_full_answer,
        ppl_tokens=args.ppl_tokens,
    )
    model = load_model_from_args(args)
    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3], forms=["numeral"], n_per_op=args.patch_pairs, seed=args.seed)
    patching = PathPatching().run(model, cases)
    result = sft.run(model, patching=patching)
    os.makedirs(args.out, exist_ok=True)
    result.to_csv(os.path.join(args.out, "sft.csv"))
    import pandas as pd

    pd.DataFrame([{"variant": v, "step": i, "loss": x} for v, c in result.losses.items() for i, x in enumerate(c)]).to_csv(
        os.path.join(args.out, "losses.csv"), index=False
    )
    result.plot().write_html(os.path.join(args.out, "sft.html"), include_plotlyjs="cdn")
    print(result.df.drop(columns=["nodes"]).to_string(index=False))
    print(f"wrote {args.out}/sft.csv, losses.csv, sft.html")
    return 0
