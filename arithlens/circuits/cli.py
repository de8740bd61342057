"""`arithlens patch` and `arithlens sft` — Zhang et al. (ICML 2024) from the command line.

* `arithlens patch [dataset flags] [--limit N] [--method path|activation]
  [--position last|all] --out FILE.csv` — Algorithm 1 on counterfactual pairs of the
  dataset (default Zhang et al.'s: 2-digit addition, template 3 "n1 plus n2 is",
  numerals, 50 problems): one row per (layer, node) with `layer, node` (head index or
  `mlp`), `effect`, …
* `arithlens sft [--steps N] [--lr LR] [--batch-size B] [--k K] --out DIR` — precise SFT
  of the top-K path-patching nodes vs full and random-component fine-tuning; writes
  `DIR/sft.csv`, `DIR/losses.csv` and `DIR/sft.html` (self-contained, opens offline).

Example:
    ```bash
    arithlens patch --limit 16 --out results/patch.csv
    arithlens sft --steps 100 --k 10 --out results/sft
    ```
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(subparsers: Any) -> None:
    """Add `arithlens patch` and `arithlens sft`."""
    from arithlens.cli import add_dataset_args, add_model_args

    sub = subparsers.add_parser("patch", help="path patching (Zhang et al. Algorithm 1): one row per (layer, node)")
    add_model_args(sub)
    add_dataset_args(sub, ops="+", digits="2", templates="3", forms="numeral", n_per_op=50)
    sub.add_argument("--limit", default=None, help="use at most N pairs, a seeded sample (default all)")
    sub.add_argument(
        "--method", default="path", choices=["path", "activation"], help="others frozen at the reference (path, the paper; default) or recomputed (activation)"
    )
    sub.add_argument("--position", default="last", choices=["last", "all"], help="patch the last position (the paper's END; default) or every position")
    sub.add_argument("--out", required=True, help="CSV file to write")
    sub.set_defaults(func=_cmd_patch, out_kind="file", check=_check_patch)

    sft = subparsers.add_parser("sft", help="precise SFT of key components vs full and random fine-tuning (Zhang et al. §4.3)")
    add_model_args(sft)
    sft.add_argument("--steps", default="200", help="optimiser steps per variant (default 200)")
    sft.add_argument("--lr", default="1e-4", help="learning rate (default 1e-4)")
    sft.add_argument("--batch-size", default="8", help="sequences per step (default 8)")
    sft.add_argument("--k", "--top-n", dest="k", default="10", help="key nodes fine-tuned: the largest |effect| of path patching (default 10)")
    sft.add_argument("--n-train", default="1000", help="training cases of the 2-digit split (default 1000; the paper, on a GPU: 18000)")
    sft.add_argument("--n-test", default="200", help="test cases (default 200; the paper: 2000)")
    sft.add_argument("--variants", default="precise,full,random", help="any of precise,full,random (default all three)")
    sft.add_argument("--patch-pairs", default="16", help="2-digit addition pairs path patching finds the key nodes on (default 16)")
    sft.add_argument("--ppl-tokens", default="2048", help="general-text tokens scored for perplexity (default 2048)")
    sft.add_argument("--no-full-answer", action="store_true", help="skip greedy whole-answer accuracy (faster)")
    sft.add_argument("--seed", default="0", help="seed of the split, the random control and training (default 0)")
    sft.add_argument("--out", required=True, help="output directory for sft.csv, losses.csv and sft.html")
    sft.set_defaults(func=_cmd_sft, out_kind="dir", check=_check_sft)


def _position(value: str) -> str:
    """The CLI's `last` in the spelling this version of PathPatching takes."""
    from arithlens.circuits import path_patching

    allowed = getattr(path_patching, "POSITIONS", ("last", "all"))
    return "end" if value == "last" and "last" not in allowed and "end" in allowed else value


def _check_patch(args: argparse.Namespace) -> None:
    from arithlens import validate
    from arithlens.circuits.path_patching import PathPatching
    from arithlens.cli import _int_text

    args.limit_n = None if args.limit is None else validate.positive_int(_int_text(args.limit, "--limit"), "--limit")
    args.patching = PathPatching(method=args.method, position=_position(args.position))


def _cmd_patch(args: argparse.Namespace) -> int:
    from arithlens.cli import _write_csv, dataset_from_args, load_model_from_args

    model = load_model_from_args(args)
    cases = dataset_from_args(model, args)
    if args.limit_n is not None and args.limit_n < len(cases):
        cases = cases.sample(args.limit_n, seed=int(args.seed))
    result = args.patching.run(model, cases)
    _write_csv(result.df, args.out)
    top = result.df.reindex(result.df["effect"].abs().sort_values(ascending=False).index).head(10)
    print(top[[c for c in ("layer", "node", "effect", "effect_sem", "logit_change") if c in top]].to_string(index=False))
    return 0


def _check_sft(args: argparse.Namespace) -> None:
    from arithlens import validate
    from arithlens.circuits.precise_sft import PreciseSFT
    from arithlens.cli import _csv_list, _float_text, _int_text

    args.patch_pairs_n = validate.positive_int(_int_text(args.patch_pairs, "--patch-pairs"), "--patch-pairs")
    args.seed_n = _int_text(args.seed, "--seed")
    args.sft = PreciseSFT(
        k=validate.positive_int(_int_text(args.k, "--k"), "--k"),
        variants=_csv_list(args.variants, str, "--variants"),
        steps=validate.positive_int(_int_text(args.steps, "--steps"), "--steps"),
        lr=validate.positive_number(_float_text(args.lr, "--lr"), "--lr"),
        batch_size=validate.positive_int(_int_text(args.batch_size, "--batch-size"), "--batch-size"),
        n_train=validate.positive_int(_int_text(args.n_train, "--n-train"), "--n-train"),
        n_test=validate.positive_int(_int_text(args.n_test, "--n-test"), "--n-test"),
        seed=args.seed_n,
        full_answer=not args.no_full_answer,
        ppl_tokens=validate.positive_int(_int_text(args.ppl_tokens, "--ppl-tokens"), "--ppl-tokens"),
    )


def _cmd_sft(args: argparse.Namespace) -> int:
    import pandas as pd

    from arithlens import data
    from arithlens.circuits.path_patching import PathPatching
    from arithlens.circuits.report import sft_reading
    from arithlens.cli import load_model_from_args
    from arithlens.report import Report, Section

    model = load_model_from_args(args)
    cases = data.zhang(model.tokenizer, n_per_op=args.patch_pairs_n, seed=args.seed_n)
    patching = PathPatching().run(model, cases)
    result = args.sft.run(model, patching=patching)
    os.makedirs(args.out, exist_ok=True)
    result.to_csv(os.path.join(args.out, "sft.csv"))
    losses = pd.DataFrame([{"variant": v, "step": i, "loss": x} for v, c in result.losses.items() for i, x in enumerate(c)])
    losses.to_csv(os.path.join(args.out, "losses.csv"), index=False)
    page = Report(f"Precise SFT: {model.name}", meta={"model": repr(model), "key nodes": ", ".join(str(n) for n in result.nodes)})
    page.add(Section("Precise SFT vs full and random fine-tuning", sft_reading(result, args.sft.n_test), figure=result.plot(), table=result.df, csv="sft.csv"))
    page.write(os.path.join(args.out, "sft.html"))
    print(result.df.drop(columns=[c for c in ("nodes",) if c in result.df]).to_string(index=False))
    print(f"wrote {args.out}/sft.csv, losses.csv, sft.html")
    return 0
