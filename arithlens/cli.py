"""The ``arithlens`` command line.

* ``arithlens run [--model M] [--quick] [--out DIR]`` — the main job: evaluate the
  1-digit set, sweep heads, run every analysis section, write ``DIR/report.html``,
  ``DIR/accuracy.csv`` and ``DIR/heads.csv``.
* ``arithlens eval [dataset flags] --out FILE.csv`` — one row per case.
* ``arithlens heads [dataset flags] [--method zero|mean] --out FILE.csv`` — one row per
  (layer, head, op).

Analyses of later modules add their own subcommands (``COMMAND_MODULES``). Bad input is
reported as one line on stderr and a non-zero exit, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Sequence

# Modules that add subcommands through ``register(subparsers)``.
COMMAND_MODULES = ("arithlens.cna.cli", "arithlens.circuits.cli")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="model: omitted for the embedded SmolLM2-135M-Instruct, a .gguf file, a local "
        "Hugging Face directory, or a hub name",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")


def _csv_list(text: str, cast: Any = str) -> list[Any]:
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"could not parse {text!r}: expected a comma-separated list") from err


def add_dataset_args(parser: argparse.ArgumentParser, ops: str = "+-*/", digits: str = "1") -> None:
    parser.add_argument("--ops", default=ops, help=f"operations, e.g. '+-' (default {ops})")
    parser.add_argument("--digits", default=digits, help=f"operand digits, e.g. 1,2,3 (default {digits})")
    parser.add_argument("--templates", default="1,2,3,4", help="Table 14 templates 1-4 (default all)")
    parser.add_argument("--forms", default="numeral,word", help="numeral,word (default both)")
    parser.add_argument("--n-per-op", type=int, default=None, help="problems per op (default: all 1-digit pairs, 100 for 2-3 digits)")
    parser.add_argument("--seed", type=int, default=0)


def dataset_from_args(model: Any, args: argparse.Namespace) -> Any:
    from arithlens import data

    return data.arithmetic(
        model.tokenizer,
        ops=args.ops,
        digits=_csv_list(args.digits, int),
        templates=_csv_list(args.templates, int),
        forms=_csv_list(args.forms),
        n_per_op=args.n_per_op,
        seed=args.seed,
    )


def load_model_from_args(args: argparse.Namespace) -> Any:
    from arithlens.models import load_model

    return load_model(args.model, device=args.device)


def _write_csv(frame: Any, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frame.to_csv(path, index=False)
    print(f"wrote {len(frame)} rows to {path}")


def _cmd_run(args: argparse.Namespace) -> int:
    from arithlens.pipeline import run_pipeline

    path = run_pipeline(model=args.model, out=args.out, quick=args.quick, device=args.device)
    print(f"report: {os.path.abspath(path)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from arithlens.evaluate import evaluate

    model = load_model_from_args(args)
    ev = evaluate(model, dataset_from_args(model, args))
    cols = ["prompt", "input_ids", "answer", "target_token", "target_str", "predicted_token", "predicted_str",
            "correct", "full_correct", "target_logprob", "op", "digits", "template", "form", "case_type", "a", "b"]
    _write_csv(ev.cases[[c for c in cols if c in ev.cases]], args.out)
    print(ev.summary(["op"]).to_string(index=False))
    return 0


def _cmd_heads(args: argparse.Namespace) -> int:
    from arithlens.heads import HeadAblation

    model = load_model_from_args(args)
    result = HeadAblation(method=args.method, position=args.position).run(model, dataset_from_args(model, args))
    _write_csv(result.df, args.out)
    print(result.top(5).to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arithlens", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)

    run = subparsers.add_parser("run", help="the main job: evaluation, head sweep, every analysis, HTML report")
    add_model_args(run)
    run.add_argument("--quick", action="store_true", help="small datasets: ends within ~10 minutes on 2 CPU cores")
    run.add_argument("--out", default="results/run", help="output directory (default results/run)")
    run.set_defaults(func=_cmd_run)

    ev = subparsers.add_parser("eval", help="evaluate a dataset: one row per case")
    add_model_args(ev)
    add_dataset_args(ev)
    ev.add_argument("--out", required=True, help="CSV file to write")
    ev.set_defaults(func=_cmd_eval)

    heads = subparsers.add_parser("heads", help="ablate every head: one row per (layer, head, op)")
    add_model_args(heads)
    add_dataset_args(heads)
    heads.add_argument("--method", default="zero", choices=["zero", "mean"])
    heads.add_argument("--position", default="all", choices=["all", "last"])
    heads.add_argument("--out", required=True, help="CSV file to write")
    heads.set_defaults(func=_cmd_heads)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:
        print(f"arithlens {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
