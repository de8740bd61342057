"""The `arithlens` command line: find where a language model does arithmetic.

* `arithlens run [--model M] [--quick] [--out DIR]` — the main job: evaluate the 1-digit
  set, sweep the heads, run every analysis section and write `DIR/report.html` with a
  CSV per section.
* `arithlens eval [dataset flags] --out FILE.csv` — one row per case.
* `arithlens heads [dataset flags] [--method zero|mean] --out FILE.csv` — one row per
  (layer, head, op).
* `arithlens cna`, `patch`, `sft`, `lora`, `prune`, `bias` — the analyses of the
  subcommand modules ([`command_modules`][arithlens.cli.command_modules]).

Every argument — output paths included — is checked before the model loads, and every
expected failure (bad input, an unwritable path, Ctrl-C) is one line on stderr and a
non-zero exit, without a traceback. Importing this module imports neither torch nor
transformers, so `arithlens --help` answers at once.

Example:
    ```bash
    arithlens run --quick --out results/demo
    arithlens eval --ops + --templates 4 --forms numeral --out results/eval.csv
    ```
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence

DESCRIPTION = "Find where a language model does arithmetic: the methods of Yu & Ananiadou (EMNLP 2024) and Zhang et al. (ICML 2024)."

EXIT_BAD_INPUT = 2
EXIT_IO = 1
EXIT_INTERRUPTED = 130

_OPS = ("+", "-", "*", "/")
_DIGITS = (1, 2, 3)
_TEMPLATES = (1, 2, 3, 4)
_FORMS = ("numeral", "word")


# ----------------------------------------------------------------------------- shared flags
def add_model_args(parser: argparse.ArgumentParser) -> None:
    """`--model` and `--device`."""
    parser.add_argument(
        "--model",
        default=None,
        help="model: omitted for the embedded SmolLM2-135M-Instruct, a .gguf file, a local "
        "Hugging Face directory, or a hub name",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)")


def add_dataset_args(
    parser: argparse.ArgumentParser,
    ops: str = "+-*/",
    digits: str = "1",
    templates: str = "1,2,3,4",
    forms: str = "numeral,word",
    n_per_op: int | None = None,
) -> None:
    """The dataset flags; the defaults given here are the ones shown in `--help` and used."""
    parser.add_argument("--ops", default=ops, help=f"operations, any of + - * / (default {ops})")
    parser.add_argument("--digits", default=digits, help=f"operand digits, comma-separated from 1,2,3 (default {digits})")
    parser.add_argument("--templates", default=templates, help=f"Table 14 templates, comma-separated from 1-4 (default {templates})")
    parser.add_argument("--forms", default=forms, help=f"operand forms, numeral and/or word (default {forms})")
    n_help = "all 1-digit pairs, 100 for 2-3 digits" if n_per_op is None else str(n_per_op)
    parser.add_argument("--n-per-op", default=None if n_per_op is None else str(n_per_op), help=f"problems per operation (default {n_help})")
    parser.add_argument("--seed", default="0", help="seed of the problem sample (default 0)")


def _int_text(text: Any, flag: str) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError(f"{flag}={text!r} is not an integer") from None


def _float_text(text: Any, flag: str) -> float:
    try:
        return float(str(text).strip())
    except ValueError:
        raise ValueError(f"{flag}={text!r} is not a number") from None


def _csv_list(text: str, cast: Any = str, flag: str = "list") -> list[Any]:
    """A comma-separated list, each item cast (a ValueError names the flag)."""
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise ValueError(f"{flag}={text!r} is empty: give a comma-separated list")
    if cast is int:
        return [_int_text(x, flag) for x in items]
    return [cast(x) for x in items]


def _check_choices(values: Sequence[Any], allowed: Sequence[Any], message: Callable[[Any], str]) -> None:
    """A ValueError with `message(value)` for the first of `values` not in `allowed`."""
    for value in values:
        if value not in allowed:
            raise ValueError(message(value))


def dataset_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The dataset flags, checked and converted to [`data.arithmetic`][arithlens.data.arithmetic]'s arguments.

    Raises:
        ValueError: A flag names an unknown op, digit count, template or form, or a count is not positive.
    """
    ops = str(args.ops).replace(",", "").replace(" ", "")
    if not ops:
        raise ValueError("--ops is empty: give any of + - * /")
    _check_choices(ops, _OPS, lambda op: f"--ops={args.ops!r}: op {op!r} is not one of + - * /")
    digits = _csv_list(args.digits, int, "--digits")
    _check_choices(digits, _DIGITS, lambda d: f"--digits={args.digits!r}: {d} digits is not one of 1, 2, 3")
    templates = _csv_list(args.templates, int, "--templates")
    _check_choices(templates, _TEMPLATES, lambda t: f"--templates={args.templates!r}: template {t} is not one of 1, 2, 3, 4")
    forms = _csv_list(args.forms, str, "--forms")
    _check_choices(forms, _FORMS, lambda f: f"--forms={args.forms!r}: form {f!r} is not one of numeral, word")
    n_per_op = None if args.n_per_op is None else _int_text(args.n_per_op, "--n-per-op")
    if n_per_op is not None and n_per_op < 1:
        raise ValueError(f"--n-per-op={n_per_op} is out of range: it must be >= 1")
    seed = _int_text(args.seed, "--seed")
    return dict(ops="".join(dict.fromkeys(ops)), digits=digits, templates=templates, forms=forms, n_per_op=n_per_op, seed=seed)


def dataset_from_args(model: Any, args: argparse.Namespace) -> Any:
    """The arithmetic dataset the dataset flags describe, tokenized for `model`."""
    from arithlens import data

    return data.arithmetic(model.tokenizer, **dataset_kwargs(args))


def check_device(device: str | None, flag: str = "--device") -> str | None:
    """`device` if this machine has it; else a ValueError naming the devices it has."""
    if device is None:
        return None
    import torch

    from arithlens.loading import available_devices

    available = ", ".join(available_devices())
    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag}={device!r} is not a device; available on this machine: {available}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{flag}={device!r}: CUDA is not available on this machine; available devices: {available}")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{flag}={device!r}: this machine has {count} CUDA device(s); available devices: {available}")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"{flag}={device!r}: MPS is not available on this machine; available devices: {available}")
    elif dev.type != "cpu":
        raise ValueError(f"{flag}={device!r} is not supported; available devices: {available}")
    return str(device)


def check_model(spec: str | None) -> str | None:
    """Fail at once on a model path that does not exist (before any library loads)."""
    if spec is None:
        return None
    text = str(spec)
    looks_like_path = text.startswith(("/", ".", "~")) or text.endswith((".gguf", ".bin", ".safetensors")) or text.count("/") > 1
    if looks_like_path and not os.path.exists(os.path.expanduser(text)):
        what = "GGUF file" if text.endswith(".gguf") else "model path"
        raise ValueError(f"--model: {what} {text!r} does not exist; pass an existing .gguf file or model directory, a hub name like 'org/name', or omit it for the embedded default")
    return text


def load_model_from_args(args: argparse.Namespace) -> Any:
    """Load `--model` on `--device` (both checked first)."""
    from arithlens.loading import load_model

    check_model(args.model)
    return load_model(args.model, device=check_device(args.device))


def _write_csv(frame: Any, path: str | os.PathLike) -> None:
    """Write `frame` (no index), creating the parent directory, and say so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frame.to_csv(path, index=False)
    print(f"wrote {len(frame)} rows to {path}")


def precheck(args: argparse.Namespace) -> None:
    """Check every common flag present in `args` — model, device, dataset flags, output — before any work."""
    from arithlens import validate

    if hasattr(args, "model"):
        check_model(args.model)
    if hasattr(args, "device"):
        check_device(args.device)
    if hasattr(args, "ops"):
        dataset_kwargs(args)
    kind = getattr(args, "out_kind", None)
    if kind == "file":
        validate.output_path(args.out, "--out")
    elif kind == "dir":
        validate.output_dir(args.out, "--out")
    check = getattr(args, "check", None)
    if check is not None:
        check(args)


# ----------------------------------------------------------------------------- commands
def _cmd_run(args: argparse.Namespace) -> int:
    from arithlens.pipeline import run_pipeline

    path = run_pipeline(model=args.model, out=args.out, quick=args.quick, device=args.device)
    print(f"report: {os.path.abspath(path)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from arithlens.evaluate import evaluate

    model = load_model_from_args(args)
    ev = evaluate(model, dataset_from_args(model, args), full_answer=not args.no_full_answer)
    cols = ["prompt", "input_ids", "answer", "target_token", "target_str", "predicted_token", "predicted_str",
            "correct", "full_correct", "target_logprob", "op", "digits", "template", "form", "case_type", "a", "b"]  # fmt: skip
    _write_csv(ev.cases[[c for c in cols if c in ev.cases]], args.out)
    print(ev.summary(["op"]).to_string(index=False))
    return 0


def _check_heads(args: argparse.Namespace) -> None:
    args.rescore_n = _int_text(args.rescore, "--rescore")
    if args.rescore_n < 1:
        raise ValueError(f"--rescore={args.rescore_n} is out of range: it must be >= 1")


def _cmd_heads(args: argparse.Namespace) -> int:
    from arithlens.heads import HeadAblation

    sweep = HeadAblation(method=args.method, position=args.position, estimate=args.estimate, rescore=args.rescore_n)
    model = load_model_from_args(args)
    result = sweep.run(model, dataset_from_args(model, args))
    _write_csv(result.df, args.out)
    print(result.top(5).to_string(index=False))
    return 0


QUICK_HELP = (
    "small samples (arithlens.pipeline.QUICK): the 1-digit evaluation (first token only), an exact head sweep on "
    "the '+' cases of template 4, CNA on 32 correctly answered +/- cases, Table 8 on 40 per op, Zhang et al. on 60 "
    "pairs, no SFT; within 10 minutes on 2 idle CPU cores, model loading included"
)

RUN_HELP = (
    "the main job: evaluation, head sweep, every analysis, one HTML report. --quick ends within 10 minutes "
    "on 2 idle CPU cores including model loading (each stage's time is in the report's timings table); "
    "without --quick every case is used and the run takes hours on a CPU"
)


def build_parser() -> argparse.ArgumentParser:
    """The `arithlens` argument parser with every subcommand registered."""
    from arithlens import __version__

    parser = argparse.ArgumentParser(prog="arithlens", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"arithlens {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = subparsers.add_parser("run", help=RUN_HELP, description=RUN_HELP)
    add_model_args(run)
    run.add_argument(
        "--quick",
        action="store_true",
        help=QUICK_HELP,
    )
    run.add_argument("--out", default="results/run", help="output directory for report.html and the CSVs (default results/run)")
    run.set_defaults(func=_cmd_run, out_kind="dir")

    ev = subparsers.add_parser("eval", help="evaluate a dataset: one row per case (first-token and whole-answer accuracy)")
    add_model_args(ev)
    add_dataset_args(ev)
    ev.add_argument("--no-full-answer", action="store_true", help="skip greedy whole-answer decoding (faster)")
    ev.add_argument("--out", required=True, help="CSV file to write")
    ev.set_defaults(func=_cmd_eval, out_kind="file")

    heads = subparsers.add_parser("heads", help="ablate every head: one row per (layer, head, op) (Tables 1-3)")
    add_model_args(heads)
    add_dataset_args(heads)
    heads.add_argument("--method", default="zero", choices=["zero", "mean"], help="zero the head's output (the paper) or replace it by its mean (default zero)")
    heads.add_argument("--position", default="all", choices=["all", "last"], help="ablate at every position (the paper) or the last only (default all)")
    heads.add_argument(
        "--estimate",
        default="exact",
        choices=["exact", "attribution"],
        help="ablate every head exactly, or estimate all by attribution and ablate the top --rescore exactly (default exact)",
    )
    heads.add_argument("--rescore", default="20", help="heads ablated exactly after an attribution estimate (default 20)")
    heads.add_argument("--out", required=True, help="CSV file to write")
    heads.set_defaults(func=_cmd_heads, out_kind="file", check=_check_heads)

    for module in command_modules():
        module.register(subparsers)
    return parser


def command_modules() -> tuple[Any, ...]:
    """The modules that add subcommands through `register(subparsers)`.

    Imported explicitly, so a renamed or broken module fails loudly instead of silently
    dropping its commands; imported when the parser is built, not with this module.
    """
    from arithlens.circuits import cli as circuits_cli
    from arithlens.cna import cli as cna_cli
    from arithlens.cna import paper_cli

    return (cna_cli, circuits_cli, paper_cli)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and getattr(err, "filename", None) and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 bad input, 1 I/O error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"arithlens {args.command}"
    try:
        precheck(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ValueError as err:
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_IO


if __name__ == "__main__":
    sys.exit(main())
