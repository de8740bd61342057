"""The `arithlens` command line: find where a language model does arithmetic.

* `arithlens run [--model M] [--quick] [--out DIR]` — the main job: evaluate the 1-digit
  set, sweep the heads, run every analysis section and write `DIR/report.html` with a
  CSV per section.
* `arithlens eval [dataset flags] --out FILE.csv` — one row per case.
* `arithlens heads [dataset flags] [--method zero|mean] --out FILE.csv` — one row per
  (layer, head, op).
* `arithlens cna`, `patch`, `sft`, `lora`, `prune`, `bias` — the analyses of the
  paper subpackages (each registered here by `_register_cna`, `_register_circuits`, `_register_paper`).

A command writing `--out FILE.csv` also saves the whole result — per-case tensors and
provenance included — to `FILE.result/` (`sft`: `DIR/sft.result/`); open it in Python with
`arithlens.load_result("FILE.result")`.

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
import dataclasses
import os
import sys
from typing import Any, Callable, Sequence

import pandas as pd

from arithlens import __version__, data
from arithlens.core import validate
from arithlens.core.loading import HubUnavailableError, check_dtype, load_model
from arithlens.core.placement import available_devices, resolve_placement
from arithlens.app.pipeline import render_report, run_pipeline
from arithlens.analysis.evaluation import evaluate
from arithlens.analysis.saving import check_path
from arithlens.cna.heads import HeadAblation
from arithlens.core.names import Component
from arithlens.data import Case, as_dataset
from arithlens.cna.comparative import ComparativeNeuronScores
from arithlens.cna.importance import NeuronImportance
from arithlens.core.interventions import ZeroHead
from arithlens.cna.lora import LoRASettings, lora_layer_sweep
from arithlens.cna.lora_coefficients import LoRACoefficients
from arithlens.cna.pruning import PruningSettings, cna_pruning
from arithlens.cna.bias import BiasData, GenderBiasSettings, gender_bias, load_professions, paper_bias_data
from arithlens.analysis.tuning import save_model
from arithlens.cna.bias import edit
from arithlens.circuits.path_patching import PathPatching
from arithlens.circuits.precise_sft import PreciseSFTSettings, precise_sft
from arithlens.app.circuits_sections import sft_reading
from arithlens.app.report import RESULTS, Report, Section, write_atomically

DESCRIPTION = "Find where a language model does arithmetic: the methods of Yu & Ananiadou (EMNLP 2024) and Zhang et al. (ICML 2024)."

EXIT_BAD_INPUT = 2
EXIT_IO = 1
EXIT_INTERRUPTED = 130

_OPS = ("+", "-", "*", "/")
_DIGITS = (1, 2, 3)
_TEMPLATES = (1, 2, 3, 4)
_FORMS = ("numeral", "word")


# ----------------------------------------------------------------------------- shared flags
def default_text(settings: Any, name: str) -> str:
    """A settings dataclass's default for field `name`, written as its flag takes it (`1e-3,5e-4`, `8`)."""
    value = next(f.default for f in dataclasses.fields(settings) if f.name == name)
    if isinstance(value, (tuple, list)):
        return ",".join(_text_item(v) for v in value)
    return _text_item(value)


def _text_item(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """`--model`, `--device`, `--dtype`, `--device-map`, `--n-devices`."""
    parser.add_argument(
        "--model",
        default=None,
        help="model: a .gguf file, a local Hugging Face directory, or a hub name "
        "(default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="float32", help="weight dtype: float32, bfloat16, float16 or float64 (default float32)")
    parser.add_argument(
        "--device-map", default=None, metavar="STRATEGY",
        help="split the model over GPUs with Accelerate: auto, balanced, balanced_low_0 or sequential (default: not split)",
    )  # fmt: skip
    parser.add_argument("--n-devices", default=None, help="split the model evenly over GPUs 0..N-1 (default: not split)")


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

    return data.arithmetic(model.tokenizer, **dataset_kwargs(args))


def check_device(device: str | None, flag: str = "--device") -> str | None:
    """`device` if this machine has it; else a ValueError naming the devices it has."""
    if device is None:
        return None
    import torch


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


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """`load_model`'s placement and dtype from the flags, checked without loading anything."""
    n_devices = None if args.n_devices is None else _int_text(args.n_devices, "--n-devices")
    options = {"device": check_device(args.device), "dtype": check_dtype(args.dtype),
               "device_map": args.device_map, "n_devices": n_devices}  # fmt: skip
    resolve_placement(options["device"], options["device_map"], n_devices, None)  # conflicts, devices this machine lacks
    return options


def load_model_from_args(args: argparse.Namespace) -> Any:
    """Load `--model` with `--device` / `--dtype` / `--device-map` / `--n-devices` (all checked first)."""

    check_model(args.model)
    try:
        return load_model(args.model, **model_options(args))
    except HubUnavailableError as err:  # say it in the command line's words, not Python's
        raise HubUnavailableError(err.spec, err.reason, local_hint="omit --model") from None


def _write_csv(frame: Any, path: str | os.PathLike, result: Any = None, model: Any = None, args: Any = None) -> None:
    """Write `frame` (no index), creating the parent directory, and say so; with `result`,
    also save the whole result beside it ([`result_dir`][arithlens.app.cli.result_dir])."""
    write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))
    print(f"wrote {len(frame)} rows to {path}")
    if result is not None:
        _save(result, result_dir(path), model, args)


def result_dir(csv_path: str | os.PathLike) -> str:
    """Where a command saves the whole result behind its CSV: `FILE.csv` → `FILE.result/`
    (open it with `arithlens.load_result`)."""
    base = os.fspath(csv_path)
    return (base[: -len(".csv")] if base.lower().endswith(".csv") else base) + ".result"


def _save(result: Any, path: str, model: Any, args: Any) -> None:
    described = {"command": " ".join(["arithlens", *getattr(args, "argv", [])])}
    if model is not None:
        described["model"] = {"name": model.name, "revision": model.revision}
    if not result.meta.get("model"):
        result.meta.update(described)  # procedures record no run of their own
    print(f"saved the result to {result.save(path, meta={'command': described['command']})} (arithlens.load_result)")


def precheck(args: argparse.Namespace) -> None:
    """Check every common flag present in `args` — model, device, dataset flags, output — before any work."""

    if hasattr(args, "model"):
        check_model(args.model)
    if hasattr(args, "device"):
        model_options(args)
    if hasattr(args, "ops"):
        dataset_kwargs(args)
    kind = getattr(args, "out_kind", None)
    if kind == "file":
        validate.output_path(args.out, "--out")
        check_path(result_dir(args.out), "--out's result directory")
    elif kind == "dir":
        validate.output_dir(args.out, "--out")
    check = getattr(args, "check", None)
    if check is not None:
        check(args)


# ----------------------------------------------------------------------------- commands
def _cmd_run(args: argparse.Namespace) -> int:

    try:
        path = run_pipeline(model=args.model, out=args.out, quick=args.quick, **model_options(args))
    except HubUnavailableError as err:
        raise HubUnavailableError(err.spec, err.reason, local_hint="omit --model") from None
    print(f"report: {os.path.abspath(path)}")
    return 0


def _check_report(args: argparse.Namespace) -> None:
    if not os.path.isdir(args.dir):
        raise ValueError(f"DIR={args.dir!r} is not a directory: give the --out directory of an `arithlens run`")
    if not os.path.isfile(os.path.join(args.dir, RESULTS, "run.json")):
        raise ValueError(f"{args.dir} holds no saved run ({RESULTS}/run.json is missing): run `arithlens run --out {args.dir}` first")


def _cmd_report(args: argparse.Namespace) -> int:

    print(f"report: {os.path.abspath(render_report(args.dir))}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:

    model = load_model_from_args(args)
    ev = evaluate(model, dataset_from_args(model, args), full_answer=not args.no_full_answer)
    cols = ["prompt", "input_ids", "answer", "target_token", "target_str", "predicted_token", "predicted_str",
            "correct", "full_correct", "target_logprob", "op", "digits", "template", "form", "case_type", "a", "b"]  # fmt: skip
    _write_csv(ev.cases[[c for c in cols if c in ev.cases]], args.out, ev, model, args)
    print(ev.summary(["op"]).to_string(index=False))
    return 0


def _check_heads(args: argparse.Namespace) -> None:
    args.rescore_n = _int_text(args.rescore, "--rescore")
    if args.rescore_n < 1:
        raise ValueError(f"--rescore={args.rescore_n} is out of range: it must be >= 1")


def _cmd_heads(args: argparse.Namespace) -> int:

    sweep = HeadAblation(method=args.method, position=args.position, estimate=args.estimate, rescore=args.rescore_n)
    model = load_model_from_args(args)
    result = sweep.run(model, dataset_from_args(model, args))
    _write_csv(result.df, args.out, result, model, args)
    print(result.top(5).to_string(index=False))
    return 0


QUICK_HELP = (
    "small samples (arithlens.app.pipeline.QUICK): the 1-digit evaluation (first token only), an exact head sweep on "
    "the '+' cases of template 4, CNA on 32 correctly answered +/- cases, Table 8 on 40 per op, Zhang et al. on 60 "
    "pairs, no SFT; within 5 minutes on 2 idle CPU cores, model loading included (about 4 measured)"
)

RUN_HELP = (
    "the main job: evaluation, head sweep, every analysis, one HTML report. --quick ends within 5 minutes "
    "on 2 idle CPU cores including model loading (each stage's time is in the report's timings table); "
    "without --quick every case is used and the run takes hours on a CPU"
)


def build_parser() -> argparse.ArgumentParser:
    """The `arithlens` argument parser with every subcommand registered."""


    parser = argparse.ArgumentParser(prog="arithlens", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"arithlens {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = subparsers.add_parser("run", help=RUN_HELP, description=RUN_HELP)
    add_model_args(run)
    size = run.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help=QUICK_HELP,
    )
    size.add_argument(
        "--paper", action="store_true",
        help="the full run (the default without --quick: every case, exact CNA); each table's own paper setup is "
        "its command's --paper (docs/reproducing.md)",
    )
    run.add_argument("--out", default="results/run", help="output directory for report.html and the CSVs (default results/run)")
    run.set_defaults(func=_cmd_run, out_kind="dir")

    report = subparsers.add_parser(
        "report",
        help="rebuild report.html from the results an `arithlens run --out DIR` saved (no model is loaded)",
        description="Rebuild DIR/report.html from the results `arithlens run --out DIR` saved under DIR/results/, without loading a model.",
    )
    report.add_argument("dir", metavar="DIR", help="the --out directory of an `arithlens run`")
    report.set_defaults(func=_cmd_report, check=_check_report)

    ev = subparsers.add_parser("eval", help="evaluate a dataset: one row per case (first-token and whole-answer accuracy)")
    add_model_args(ev)
    add_dataset_args(ev)
    ev.add_argument("--no-full-answer", action="store_true", help="skip greedy whole-answer decoding (faster)")
    add_paper_arg(ev)
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
    add_paper_arg(heads)
    heads.add_argument("--out", required=True, help="CSV file to write")
    heads.set_defaults(func=_cmd_heads, out_kind="file", check=_check_heads)

    _register_cna(subparsers)
    _register_circuits(subparsers)
    _register_paper(subparsers)
    for name, sub in subparsers.choices.items():
        if name in PAPER_FLAGS:
            _paper_help(sub, name)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and getattr(err, "filename", None) and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 bad input, 1 I/O error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a saved result records
    prog = f"arithlens {args.command}"
    try:
        apply_paper(parser, args, argv)
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



COLUMNS = [
    "layer", "neuron", "importance", "importance_other", "importance_change",
    "coef", "coef_other", "coef_change", "top_tokens",
]  # fmt: skip

EPILOG = (
    "Columns: importance is the neuron's effect on log p(target) in nats (the paper's §4.1 score), coef its "
    "coefficient score m; *_other are the same on the other side (--ablate-head or --other-prompt) and "
    "*_change = original − other, so a positive change is a drop. Neuron labels L_N elsewhere in arithlens "
    "name neuron N of layer L's FFN."
)


def _register_cna(subparsers: Any) -> None:
    """Add `arithlens cna`."""

    sub = subparsers.add_parser(
        "cna",
        help="comparative neuron analysis of one prompt: one row per FFN neuron (Table 4)",
        description="Comparative neuron analysis of one prompt (Yu & Ananiadou §4, Table 4).",
        epilog=EPILOG,
    )
    add_model_args(sub)
    sub.add_argument("--prompt", required=True, help='the prompt, e.g. "3+5="')
    side = sub.add_mutually_exclusive_group()
    side.add_argument("--ablate-head", default=None, metavar="L.H", help="compare with this head zeroed, e.g. 17.2 (layer 17, head 2) (default: no comparison)")
    side.add_argument("--other-prompt", default=None, metavar="P", help='compare with the same model on another input, e.g. "A man works as a" (default: no comparison)')
    sub.add_argument(
        "--target",
        default=None,
        metavar="TOKEN",
        help="score this token (the first token of the string as the tokenizer encodes it) (default: the model's top prediction, as the paper)",
    )
    sub.add_argument(
        "--scale",
        default="original",
        choices=["original", "own"],
        help="final-norm scale the other side is read with: the original run's, as the paper's code, or its own (default original)",
    )
    sub.add_argument("--mode", default="exact", choices=["exact", "fast"], help="exact scores (the paper) or first order with the top --rescore re-scored exactly (default exact)")
    sub.add_argument("--rescore", default="200", help="neurons re-scored exactly in fast mode (default 200)")
    sub.add_argument("--memory-budget", default="1e9", help="bytes the exact computation may use (default 1e9)")
    add_paper_arg(sub)
    sub.add_argument("--out", required=True, help="CSV file to write")
    sub.set_defaults(func=_cmd_cna, out_kind="file", check=_check)


def _check(args: argparse.Namespace) -> None:
    """Flags that need no model: the head's form, the numbers, the prompts."""

    if not args.prompt:
        raise ValueError("--prompt is empty")
    if args.other_prompt is not None and not args.other_prompt:
        raise ValueError("--other-prompt is empty")
    if args.target is not None and args.target == "":
        raise ValueError("--target is empty: give the token to score, e.g. ' 8'")
    args.head_node = None
    if args.ablate_head is not None:
        try:
            node = Component.parse(args.ablate_head)
        except ValueError:
            raise ValueError(f"--ablate-head={args.ablate_head!r} is not a head: give LAYER.HEAD, e.g. 17.2") from None
        if node.is_mlp:
            raise ValueError(f"--ablate-head={args.ablate_head!r} names an MLP; give a head as LAYER.HEAD, e.g. 17.2")
        args.head_node = node
    args.rescore_n = validate.positive_int(_int_text(args.rescore, "--rescore"), "--rescore")
    args.memory_budget_n = validate.positive_number(_float_text(args.memory_budget, "--memory-budget"), "--memory-budget")


def _case(model: Any, prompt: str, target: str | None) -> Any:
    """The prompt as one case; with `target`, that string's first token is the case's target."""

    if target is None:
        return as_dataset(prompt, model.tokenizer)[0]
    ids = model.encode(target)
    if not ids:
        raise ValueError(f"--target={target!r} encodes to no token with this tokenizer")
    tid = int(ids[0])
    return Case(prompt=prompt, answer=target, target_str=model.decode([tid]), target_id=tid,
                input_ids=tuple(model.encode(prompt)), answer_ids=(tid,))  # fmt: skip


def _cmd_cna(args: argparse.Namespace) -> int:

    options = {  # the shared CNA options (CNAAnalysis fields), checked before the model loads
        "target": "prediction" if args.target is None else "answer",
        "mode": args.mode,
        "rescore": args.rescore_n,
        "memory_budget": args.memory_budget_n,
        "scale": args.scale,
    }
    NeuronImportance(**options)
    model = load_model_from_args(args)
    case = _case(model, args.prompt, args.target)
    if args.head_node is not None:
        try:
            node = args.head_node.check(model)
        except ValueError as err:
            raise ValueError(f"--ablate-head={args.ablate_head!r}: {err}") from None
        result = ComparativeNeuronScores(intervention=ZeroHead(node.layer, node.head), top_tokens=10, **options).run(model, [case])
        label = f"head {node.name} zeroed"
    elif args.other_prompt is not None:
        other = _case(model, args.other_prompt, args.target)
        result = ComparativeNeuronScores(other_data=[other], top_tokens=10, **options).run(model, [case])
        label = f"vs {args.other_prompt!r}"
    else:
        result = NeuronImportance(top_tokens=10, **options).run(model, [case])
        label = "no comparison"
    df = result.df.reindex(columns=COLUMNS)
    if args.head_node is None and args.other_prompt is None:
        df = df.sort_values("importance", ascending=False, kind="stable")
    _write_csv(df, args.out, result, model, args)
    target = result.w_str[0] if getattr(result, "w_str", None) else case.target_str
    print(f"{args.prompt!r} -> {target!r} ({label}); top neurons (L_N = neuron N of layer L):")
    print(df.head(10).drop(columns="top_tokens").to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


def _parse(text: str, flag: str, cast: Callable[[str], Any], what: str) -> Any:
    try:
        return cast(text.strip())
    except ValueError:
        raise ValueError(f"{flag}={text!r} is not {what}") from None


def _int_list(text: str, flag: str) -> list[int]:
    """`"3,5,7"` or ranges `"16-29"` (inclusive) as a list of integers."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, dash, hi = part.partition("-")
        if dash and lo:
            a, b = _parse(lo, flag, int, "an integer range"), _parse(hi, flag, int, "an integer range")
            if b < a:
                raise ValueError(f"{flag}: range {part!r} runs backwards")
            out += range(a, b + 1)
        else:
            out.append(_parse(part, flag, int, "a comma-separated list of integers"))
    return validate.int_sequence(out, flag, low=0, unique=True)


def _number_list(text: str, flag: str) -> list[float]:
    values = [_parse(p, flag, float, "a comma-separated list of numbers") for p in text.split(",") if p.strip()]
    if not values:
        raise ValueError(f"{flag} is empty: give at least one value")
    return [validate.positive_number(v, flag) for v in values]


def _int(text: str | None, flag: str) -> int | None:
    return None if text is None else _parse(text, flag, int, "an integer")


def _float(text: str, flag: str) -> float:
    return _parse(text, flag, float, "a number")


def _add_lora_args(sub: argparse.ArgumentParser) -> None:
    """The [`LoRASettings`][arithlens.cna.lora.LoRASettings] flags, their defaults the dataclass's (CPU-sized)."""
    d = lambda name: default_text(LoRASettings, name)  # noqa: E731
    sub.add_argument("--lrs", default=d("lrs"), help=f"candidate learning rates, the one with the lowest held-out loss kept (default {d('lrs')})")
    sub.add_argument("--rank", default=d("rank"), help=f"LoRA rank (default {d('rank')})")
    sub.add_argument("--alpha", default=d("alpha"), help=f"LoRA alpha; the update is scaled by alpha / rank (default {d('alpha')})")
    sub.add_argument("--epochs", default=d("epochs"), help=f"at most this many passes over the training data (default {d('epochs')})")
    sub.add_argument("--steps", default=d("steps"), help=f"at most this many optimiser steps per model (default {d('steps')})")
    sub.add_argument("--batch-size", default=d("batch_size"), help=f"training cases per optimiser step (default {d('batch_size')})")
    sub.add_argument("--n-train", default=d("n_train"), help=f"training cases of the 2-digit split (default {d('n_train')})")
    sub.add_argument("--n-val", default=d("n_val"), help=f"more training-split cases held out to choose the learning rate (default {d('n_val')})")
    sub.add_argument("--n-test", default=d("n_test"), help=f"test cases (default {d('n_test')})")
    sub.add_argument("--lora-seed", default=d("seed"), help=f"seed of the split, batches and adapters (default {d('seed')})")
    sub.add_argument("--first-token", action="store_true",
                     help="score the first answer token only (default: the whole answer, greedy, as '-2' needs its digit too)")


def _sweep(args: argparse.Namespace, **extra: Any) -> Any:

    return LoRASettings(
        lrs=_number_list(args.lrs, "--lrs"), rank=_int(args.rank, "--rank"), alpha=_float(args.alpha, "--alpha"),
        epochs=_int(args.epochs, "--epochs"), steps=_int(args.steps, "--steps"), batch_size=_int(args.batch_size, "--batch-size"),
        n_train=_int(args.n_train, "--n-train"), n_val=_int(args.n_val, "--n-val"), n_test=_int(args.n_test, "--n-test"),
        seed=_int(args.lora_seed, "--lora-seed"), full_answer=not args.first_token, **extra,
    )  # fmt: skip


def _count_or_all(text: str, flag: str) -> int | None:
    """`"all"` (None) or a positive count."""
    if str(text).strip() == "all":
        return None
    return validate.positive_int(_int(text, flag), flag)


def coefficients(args: argparse.Namespace) -> Any:
    """The [`LoRACoefficients`][arithlens.cna.lora_coefficients.LoRACoefficients] of `arithlens lora`'s flags."""
    return LoRACoefficients(rank_on=args.rank_on, ks=_int_list(args.ks, "--ks"), case=args.case,
                            case_answer=args.case_answer, mode=args.mode)  # fmt: skip


def pruning_settings(args: argparse.Namespace) -> Any:
    """The [`PruningSettings`][arithlens.cna.pruning.PruningSettings] of `arithlens prune`'s flags (no model needed)."""
    deep = None if args.deep_layers is None else _int_list(args.deep_layers, "--deep-layers")
    layer = _int(args.lora_layer, "--lora-layer")
    return PruningSettings(lora_layer=layer, top_k=_int(args.top_k, "--top-k"), deep_layers=deep,
                           n_cases=_count_or_all(args.n_cases, "--n-cases"), target=args.target, mode=args.mode,
                           random_control=not args.no_random, lora=_sweep(args, layers=None if layer is None else (layer,)),
                           seed=_int(args.seed, "--seed"))  # fmt: skip


def bias_settings(args: argparse.Namespace, data: Any = None) -> Any:
    """The [`GenderBiasSettings`][arithlens.cna.bias.GenderBiasSettings] of `arithlens bias`'s flags."""
    return GenderBiasSettings(n_neurons=_int(args.n_neurons, "--n-neurons"), data=data, cna_prompts=_int_list(args.cna_prompts, "--cna-prompts"),
                              mode=args.mode, collateral=not args.no_collateral, ppl_tokens=_int(args.ppl_tokens, "--ppl-tokens"),
                              n_arithmetic=_int(args.n_arithmetic, "--n-arithmetic"), seed=_int(args.seed, "--seed"))  # fmt: skip


# ----------------------------------------------------------------------------- --paper
_TABLE1_DATA = {"ops": "+-*/", "digits": "2", "templates": "1,2,3,4", "forms": "numeral,word", "n_per_op": "50"}
_LORA_PAPER = {"lrs": "0.001,0.0005,0.0001", "rank": "32", "alpha": "64", "epochs": "4", "steps": "9000", "batch_size": "8",
               "n_train": "18000", "n_val": "2000", "n_test": "2000", "first_token": False}  # fmt: skip
PAPER_FLAGS: dict[str, dict[str, Any]] = {
    "eval": dict(_TABLE1_DATA),
    "heads": {**_TABLE1_DATA, "method": "zero", "position": "all", "estimate": "exact"},
    "cna": {"mode": "exact", "scale": "original", "target": None},
    "patch": {"ops": "+", "digits": "2", "templates": "3", "forms": "numeral", "method": "path", "position": "last", "limit": None},
    "sft": {"steps": "2250", "lr": "1e-4", "batch_size": "8", "k": "10", "n_train": "18000", "n_test": "2000", "no_full_answer": False},
    "lora": {**_LORA_PAPER, "layers": "all", "ops": "+-", "digits": "1", "templates": "4", "forms": "numeral", "n_per_op": None,
             "cases": "all", "rank_on": "change", "ks": "50,30,20,10", "case": "3+5=", "case_answer": "8", "mode": "exact"},
    "prune": {**_LORA_PAPER, "ops": "+-*/", "digits": "1", "templates": "4", "forms": "numeral", "n_per_op": None,
              "lora_layer": None, "top_k": None, "deep_layers": None, "n_cases": "all", "target": "prediction",
              "mode": "exact", "no_random": False},
    "bias": {"n_neurons": "18", "cna_prompts": "0", "mode": "exact", "professions": None},
}
"""What `--paper` sets, per command, for every flag not given on the command line: the paper
profile of docs/reproducing.md (`None`: the flag's scaled default, which is the paper's)."""


def _flag_text(sub: argparse.ArgumentParser, dest: str, value: Any) -> str:
    flag = next(a.option_strings[-1] for a in sub._actions if a.dest == dest)
    if isinstance(value, bool):
        return flag if value else ""
    return "" if value is None else f"{flag} {value}"


def add_paper_arg(sub: argparse.ArgumentParser) -> None:
    """`--paper`: the command's paper profile ([`PAPER_FLAGS`][arithlens.app.cli.PAPER_FLAGS]) under any flag given."""
    sub.add_argument("--paper", action="store_true",
                     help="the paper's setup for every flag not given (docs/reproducing.md)")  # completed by _paper_help


def _paper_help(sub: argparse.ArgumentParser, command: str) -> None:
    """Spell out in `--paper`'s help what it sets."""
    action = next(a for a in sub._actions if a.dest == "paper")
    shown = " ".join(t for t in (_flag_text(sub, d, v) for d, v in PAPER_FLAGS[command].items()) if t)
    action.help = f"the paper's setup for every flag not given: {shown or 'the defaults'} (docs/reproducing.md)"


def apply_paper(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    """With `--paper`, set every flag of [`PAPER_FLAGS`][arithlens.app.cli.PAPER_FLAGS] not given in `argv`."""
    if not getattr(args, "paper", False) or args.command not in PAPER_FLAGS:
        return
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    tokens = list(sys.argv[1:] if argv is None else argv)
    given = {a.dest for a in sub._actions for opt in a.option_strings for t in tokens if t == opt or t.startswith(opt + "=")}
    for dest, value in PAPER_FLAGS[args.command].items():
        if dest not in given:
            setattr(args, dest, value)


def _register_paper(subparsers: Any) -> None:

    lora = subparsers.add_parser("lora", help="LoRA on one attention layer per model (CNA §5, Figure 2, Tables 9-10)")
    add_model_args(lora)
    add_dataset_args(lora, ops="+-*/", digits="1", forms="numeral")
    lora.add_argument("--layers", default=None, help="LoRA layers, e.g. 4,12,20, 1-28 or all (default: one per paper range, the middle one)")
    _add_lora_args(lora)
    lora.add_argument("--adapters", default=None, metavar="DIR", help="save adapters here; re-use those already saved (default: not saved)")
    lora.add_argument("--cases", default="64", help="dataset cases sampled for Table 10, or all (default 64)")
    c = lambda name: default_text(LoRACoefficients, name)  # noqa: E731
    lora.add_argument("--rank-on", default=c("rank_on"), choices=["change", "original", "lora"],
                      help=f"what ranks the neurons: CNA between original and LoRA model (the paper), the original, or the LoRA model (default {c('rank_on')})")
    lora.add_argument("--ks", default=c("ks"), help=f"top-K sizes of Table 10 (default {c('ks')})")
    lora.add_argument("--case", default=c("case"), help=f"Table 9's prompt (default {c('case')})")
    lora.add_argument("--case-answer", default=c("case_answer"), help=f"Table 9's answer (default {c('case_answer')})")
    lora.add_argument("--mode", default=c("mode"), choices=["exact", "fast"], help=f"CNA mode: exact (the paper) or fast (default {c('mode')})")
    add_paper_arg(lora)
    lora.add_argument("--coef-out", default=None, metavar="FILE.csv", help="also write Tables 9-10's rows here (default: not written)")
    lora.add_argument("--out", required=True, metavar="FILE.csv", help="Figure 2's rows: one per model")
    lora.set_defaults(func=_cmd_lora)

    prune = subparsers.add_parser("prune", help="CNA-guided pruning, then LoRA (CNA §6.1, Table 11)")
    add_model_args(prune)
    add_dataset_args(prune, ops="+-*/", digits="1", forms="numeral")
    p = lambda name: default_text(PruningSettings, name)  # noqa: E731
    prune.add_argument("--lora-layer", default=None, help="shallow LoRA layer (default: the paper's 9 of 32, scaled: round(9 n / 32))")
    prune.add_argument("--top-k", default=None, help="each case's top-K CNA neurons kept (default: the paper's fraction, 500 of 32 x 11008)")
    prune.add_argument("--deep-layers", default=None, help="pruned layers, e.g. 16-29 (default: the paper's 17-31 of 32, scaled)")
    prune.add_argument("--n-cases", default=p("n_cases"), help=f"1-digit cases CNA runs on, sampled, or all (default {p('n_cases')})")
    prune.add_argument("--target", default=p("target"), choices=["prediction", "answer"], help=f"token CNA scores: the LoRA model's prediction (the paper) or the correct answer (default {p('target')})")
    prune.add_argument("--mode", default=p("mode"), choices=["exact", "fast"], help=f"CNA mode: exact (the paper) or fast (default {p('mode')})")
    prune.add_argument("--no-random", action="store_true", help="skip the randomly pruned control")
    _add_lora_args(prune)
    add_paper_arg(prune)
    prune.add_argument("--save", default=None, metavar="DIR", help="save adapters and the pruned models here (default: not saved)")
    prune.add_argument("--out", required=True, metavar="FILE.csv", help="Table 11's rows: one per model")
    prune.set_defaults(func=_cmd_prune)

    bias = subparsers.add_parser("bias", help="gender-bias neurons by CNA, zeroed (CNA §6.2, Tables 12-13)")
    add_model_args(bias)
    b = lambda name: default_text(GenderBiasSettings, name)  # noqa: E731
    bias.add_argument("--n-neurons", default=b("n_neurons"), help=f"neurons edited (default {b('n_neurons')})")
    bias.add_argument("--professions", default=None, metavar="FILE", help="JSON {woman: [...], man: [...]} or 'woman: a, b' lines (default: Table 23's)")
    bias.add_argument("--cna-prompts", default=b("cna_prompts"), help=f"indices of the Table 22 prompts CNA runs on (default {b('cna_prompts')})")
    bias.add_argument("--mode", default=b("mode"), choices=["exact", "fast"], help=f"CNA mode: exact (the paper) or fast (default {b('mode')})")
    bias.add_argument("--no-collateral", action="store_true", help="skip perplexity and arithmetic accuracy")
    bias.add_argument("--ppl-tokens", default=b("ppl_tokens"), help=f"general-text tokens scored for perplexity (default {b('ppl_tokens')})")
    bias.add_argument("--n-arithmetic", default=b("n_arithmetic"), help=f"1-digit cases for the arithmetic accuracy (default {b('n_arithmetic')})")
    bias.add_argument("--seed", default=b("seed"), help=f"seed of the arithmetic sample scored for collateral accuracy (default {b('seed')})")
    add_paper_arg(bias)
    bias.add_argument("--save-edited", default=None, metavar="DIR", help="save the edited model here (default: not saved)")
    bias.add_argument("--out", required=True, metavar="FILE.csv", help="one row per model, prompt and profession")
    bias.set_defaults(func=_cmd_bias)


def _cmd_lora(args: argparse.Namespace) -> int:

    validate.output_path(args.out, "--out")
    check_path(result_dir(args.out), "--out's result directory")
    dataset = dataset_kwargs(args)
    if args.coef_out is not None:
        validate.output_path(args.coef_out, "--coef-out")
        check_path(result_dir(args.coef_out), "--coef-out's result directory")
    every = args.layers is not None and args.layers.strip() == "all"
    layers = None if args.layers is None or every else _int_list(args.layers, "--layers")
    adapters = None if args.adapters is None else validate.output_dir(args.adapters, "--adapters")
    settings = _sweep(args, layers=layers, out_dir=adapters)
    n_cases = _count_or_all(args.cases, "--cases")
    coef = coefficients(args)
    model = load_model_from_args(args)
    if every:
        settings = dataclasses.replace(settings, layers=tuple(range(model.n_layers)))
    result = lora_layer_sweep(model, settings)
    _write_csv(result.df, args.out, result, model, args)
    print(result.df[["model", "lora_layer", "lr", "accuracy", "full_accuracy"]].to_string(index=False))
    if args.coef_out is not None:
        cases = data.arithmetic(model.tokenizer, **dataset)
        tables = coef.run(model, cases.sample(n_cases, seed=dataset["seed"]) if n_cases is not None and n_cases < len(cases) else cases, loras=result)
        _write_csv(tables.df, args.coef_out, tables, model, args)
        print(tables.table9().round(3).to_string())
        print(tables.table10().round(1).to_string())
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:

    validate.output_path(args.out, "--out")
    check_path(result_dir(args.out), "--out's result directory")
    dataset = dataset_kwargs(args)
    save = None if args.save is None else validate.output_dir(args.save, "--save")
    settings = dataclasses.replace(pruning_settings(args), out_dir=save)
    n_cases = settings.n_cases
    model = load_model_from_args(args)
    settings.resolve(model)  # layer range, K and the gated MLP checked before any training
    cases = data.arithmetic(model.tokenizer, **dataset)
    result = cna_pruning(model, settings, cases=cases.sample(n_cases, seed=dataset["seed"]) if n_cases is not None and n_cases < len(cases) else cases)
    _write_csv(result.df, args.out, result, model, args)
    print(result.table().to_string())
    return 0


def _cmd_bias(args: argparse.Namespace) -> int:

    validate.output_path(args.out, "--out")
    check_path(result_dir(args.out), "--out's result directory")
    save = None if args.save_edited is None else validate.output_dir(args.save_edited, "--save-edited")
    data = paper_bias_data()
    if args.professions is not None:
        data = BiasData(data.prompts, load_professions(args.professions))
    settings = bias_settings(args, data)
    model = load_model_from_args(args)
    result = gender_bias(model, settings)
    _write_csv(result.df, args.out, result, model, args)
    print(result.table13().round(3).to_string())
    print("edited neurons:", ", ".join(f"{L}_{n}" for L, n in result.neurons))
    if save is not None:

        print(f"saved the edited model to {save_model(edit(model, result.neurons), save)}")
    return 0


def _register_circuits(subparsers: Any) -> None:
    """Add `arithlens patch` and `arithlens sft`."""

    sub = subparsers.add_parser("patch", help="path patching (Zhang et al. Algorithm 1): one row per (layer, node)")
    add_model_args(sub)
    add_dataset_args(sub, ops="+", digits="2", templates="3", forms="numeral", n_per_op=50)
    sub.add_argument("--limit", default=None, help="use at most N pairs, a seeded sample (default: all)")
    sub.add_argument(
        "--method", default="path", choices=["path", "activation"], help="others frozen at the reference (path, the paper) or recomputed (activation) (default path)"
    )
    sub.add_argument("--position", default="last", choices=["last", "all"], help="patch the last position (the paper's END) or every position (default last)")
    add_paper_arg(sub)
    sub.add_argument("--out", required=True, help="CSV file to write")
    sub.set_defaults(func=_cmd_patch, out_kind="file", check=_check_patch)

    sft = subparsers.add_parser("sft", help="precise SFT of key components vs full and random fine-tuning (Zhang et al. §4.3)")
    add_model_args(sft)
    f = lambda name: default_text(PreciseSFTSettings, name)  # noqa: E731
    sft.add_argument("--steps", default=f("steps"), help=f"optimiser steps per variant (default {f('steps')})")
    sft.add_argument("--lr", default=f("lr"), help=f"learning rate (default {f('lr')})")
    sft.add_argument("--batch-size", default=f("batch_size"), help=f"sequences per step (default {f('batch_size')})")
    sft.add_argument("--k", dest="k", default=f("k"), help=f"key nodes fine-tuned: the largest |effect| of path patching (default {f('k')})")
    sft.add_argument("--n-train", default=f("n_train"), help=f"training cases of the 2-digit split (default {f('n_train')})")
    sft.add_argument("--n-test", default=f("n_test"), help=f"test cases (default {f('n_test')})")
    sft.add_argument("--variants", default=f("variants"), help=f"any of precise,full,random (default {f('variants')})")
    sft.add_argument("--patch-pairs", default="16", help="2-digit addition pairs path patching finds the key nodes on (default 16)")
    sft.add_argument("--ppl-tokens", default=f("ppl_tokens"), help=f"general-text tokens scored for perplexity (default {f('ppl_tokens')})")
    sft.add_argument("--no-full-answer", action="store_true", help="skip greedy whole-answer accuracy (faster)")
    sft.add_argument("--seed", default="0", help="seed of the split, the random control and training (default 0)")
    add_paper_arg(sft)
    sft.add_argument("--out", required=True, help="output directory for sft.csv, losses.csv and sft.html")
    sft.set_defaults(func=_cmd_sft, out_kind="dir", check=_check_sft)


def _check_patch(args: argparse.Namespace) -> None:

    args.limit_n = None if args.limit is None else validate.positive_int(_int_text(args.limit, "--limit"), "--limit")
    args.patching = PathPatching(method=args.method, position=args.position)


def _cmd_patch(args: argparse.Namespace) -> int:

    model = load_model_from_args(args)
    cases = dataset_from_args(model, args)
    if args.limit_n is not None and args.limit_n < len(cases):
        cases = cases.sample(args.limit_n, seed=int(args.seed))
    result = args.patching.run(model, cases)
    _write_csv(result.df, args.out, result, model, args)
    top = result.df.reindex(result.df["effect"].abs().sort_values(ascending=False).index).head(10)
    print(top[[c for c in ("layer", "node", "effect", "effect_sem", "logit_change") if c in top]].to_string(index=False))
    return 0


def _check_sft(args: argparse.Namespace) -> None:
    check_path(os.path.join(args.out, "sft.result"), "--out's result directory")

    args.patch_pairs_n = validate.positive_int(_int_text(args.patch_pairs, "--patch-pairs"), "--patch-pairs")
    args.seed_n = _int_text(args.seed, "--seed")
    args.sft = PreciseSFTSettings(
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
    model = load_model_from_args(args)
    cases = data.zhang(model.tokenizer, n_per_op=args.patch_pairs_n, seed=args.seed_n)
    patching = PathPatching().run(model, cases)
    result = precise_sft(model, args.sft, patching=patching)
    os.makedirs(args.out, exist_ok=True)
    result.to_csv(os.path.join(args.out, "sft.csv"))
    _save(result, os.path.join(args.out, "sft.result"), model, args)
    losses = pd.DataFrame([{"variant": v, "step": i, "loss": x} for v, c in result.losses.items() for i, x in enumerate(c)])
    losses.to_csv(os.path.join(args.out, "losses.csv"), index=False)
    page = Report(f"Precise SFT: {model.name}", meta={"model": repr(model), "key nodes": ", ".join(str(n) for n in result.nodes)})
    page.add(Section("Precise SFT vs full and random fine-tuning", sft_reading(result, args.sft.n_test), figure=result.plot(), table=result.df, csv="sft.csv"))
    page.write(os.path.join(args.out, "sft.html"))
    print(result.df.drop(columns=[c for c in ("nodes",) if c in result.df]).to_string(index=False))
    print(f"wrote {args.out}/sft.csv, losses.csv, sft.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
