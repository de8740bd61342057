"""The `arithlens` command line: truthful help, every argument checked before the model
loads, one-line errors, and the commands' outputs on a tiny saved model."""

import argparse
import subprocess
import sys

import pandas as pd
import pytest
import torch

from arithlens import load_result
from arithlens.app.cli import build_parser, dataset_kwargs, main


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: errors must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad argument was reported")

    for where in ("arithlens.core.loading", "arithlens.app.cli", "arithlens.app.pipeline"):  # every name it is imported under
        monkeypatch.setattr(f"{where}.load_model", refuse)


def _one_line_error(capsys, code, *fragments):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- errors before work
@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["eval", "--ops", "+%"], ["--ops", "op '%'"]),
        (["eval", "--digits", "4"], ["--digits", "4"]),
        (["eval", "--templates", "9"], ["--templates", "template 9"]),
        (["eval", "--forms", "roman"], ["--forms", "'roman'"]),
        (["eval", "--n-per-op", "0"], ["--n-per-op=0"]),
        (["eval", "--n-per-op", "ten"], ["--n-per-op='ten'", "not an integer"]),
        (["eval", "--seed", "x"], ["--seed"]),
        (["heads", "--rescore", "0"], ["--rescore"]),
        (["patch", "--limit", "0"], ["--limit=0", ">= 1"]),
        (["cna", "--prompt", "3+5=", "--ablate-head", "17.x"], ["--ablate-head='17.x'", "LAYER.HEAD"]),
        (["cna", "--prompt", "3+5=", "--ablate-head", "MLP 3"], ["--ablate-head", "MLP"]),
        (["cna", "--prompt", "3+5=", "--target", ""], ["--target is empty"]),
        (["cna", "--prompt", "3+5=", "--rescore", "-3"], ["--rescore"]),
        (["eval", "--model", "./no/such/dir"], ["--model", "does not exist"]),
        (["eval", "--model", "/no/such/model.gguf"], ["GGUF file", "does not exist"]),
        (["eval", "--device", "tpu"], ["--device='tpu'", "available"]),
    ],
)
def test_bad_argument_is_one_line_before_loading(no_loading, capsys, tmp_path, argv, fragments):
    code = main([*argv, "--out", str(tmp_path / "x.csv")])
    _one_line_error(capsys, code, *fragments)


@pytest.mark.parametrize(
    "argv, out, fragment",
    [
        (["eval"], "/proc/x.csv", "virtual file system"),
        (["heads"], "{file}/x.csv", "is a file, not a directory"),
        (["run"], "/proc/x", "virtual file system"),
        (["run"], "{file}", "exists and is not a directory"),
        (["sft"], "{file}/sub", "is a file, not a directory"),
        (["eval"], "{dir}", "is a directory"),
    ],
)
def test_unwritable_output_is_reported_before_any_work(no_loading, capsys, tmp_path, argv, out, fragment):
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    code = main([*argv, "--out", out.format(file=a_file, dir=tmp_path)])
    _one_line_error(capsys, code, "--out", fragment)


def test_sft_arguments_are_checked_before_loading(no_loading, capsys, tmp_path):
    code = main(["sft", "--steps", "2.5", "--out", str(tmp_path / "sft")])
    _one_line_error(capsys, code, "--steps='2.5'")
    code = main(["sft", "--variants", "precise,fancy", "--out", str(tmp_path / "sft")])
    _one_line_error(capsys, code, "fancy")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_names_the_available_devices(no_loading, capsys, tmp_path):
    code = main(["run", "--device", "cuda", "--quick", "--out", str(tmp_path / "r")])
    _one_line_error(capsys, code, "CUDA is not available", "available devices: cpu")


@pytest.mark.parametrize(
    "error, code, fragment",
    [
        (KeyboardInterrupt(), 130, "interrupted"),
        (OSError(28, "No space left on device", "report.html"), 1, "No space left on device: 'report.html'"),
        (ValueError("the model answers\nnothing"), 2, "the model answers nothing"),
    ],
)
def test_expected_failures_during_work_are_one_line(monkeypatch, capsys, tmp_path, error, code, fragment):
    def fail(**kwargs):
        raise error

    monkeypatch.setattr("arithlens.app.cli.run_pipeline", fail)
    assert main(["run", "--quick", "--out", str(tmp_path / "r")]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and fragment in err


# ----------------------------------------------------------------------------- help and registry
def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    import arithlens

    assert capsys.readouterr().out.strip() == f"arithlens {arithlens.__version__}"


def test_importing_the_cli_loads_neither_transformers_nor_transformer_lens():
    # The package imports eagerly (torch comes with it); the libraries that load models are
    # imported when a model is loaded, so `arithlens --help` stays quick.
    code = "import sys, arithlens.app.cli; print(sorted(m for m in ('transformers', 'transformer_lens', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_command_is_registered_and_every_option_has_help():
    parser = build_parser()
    assert "``" not in parser.description and ":class:" not in parser.description
    commands = _subparsers(parser)
    assert {"run", "eval", "heads", "cna", "patch", "sft", "lora", "prune", "bias"} <= set(commands)
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, sub in commands.items()
        for action in sub._actions
        if action.option_strings and action.help in (None, "") and not isinstance(action, argparse._HelpAction)
    ]
    assert not missing, f"options without help text: {missing}"


def test_patch_help_defaults_are_the_defaults_used(capsys):
    parser = build_parser()
    args = parser.parse_args(["patch", "--out", "x.csv"])
    assert dataset_kwargs(args) == dict(ops="+", digits=[2], templates=[3], forms=["numeral"], n_per_op=50, seed=0)
    assert args.method == "path" and args.position == "last"
    with pytest.raises(SystemExit):
        parser.parse_args(["patch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default +)", "(default 2)", "(default 3)", "(default numeral)", "(default 50)"):
        assert shown in text


def test_run_help_states_the_time_and_the_sizes_used():
    from arithlens.app.pipeline import QUICK

    text = " ".join(_subparsers(build_parser())["run"].format_help().split())
    assert "within 5 minutes on 2 idle CPU cores" in text and "hours on a CPU" in text
    assert QUICK.sweep_ops == "+" and QUICK.sweep_estimate == "exact" and "exact head sweep on the '+' cases" in text
    assert f"CNA on {QUICK.mask_keep_cases} correctly" in text and f"Table 8 on {QUICK.vo_per_op} per op" in text
    assert f"Zhang et al. on {QUICK.circuits_pairs} pairs" in text and not QUICK.sft and not QUICK.full_answer


def test_cna_help_explains_the_columns():
    text = " ".join(_subparsers(build_parser())["cna"].format_help().split())
    assert "original − other, so a positive change is a drop" in text
    assert "--scale {original,own}" in text and "--other-prompt P" in text and "--target TOKEN" in text


def test_dataset_flags_normalise():
    args = argparse.Namespace(ops="+,-", digits="1, 2", templates="4", forms="numeral", n_per_op="5", seed="3")
    assert dataset_kwargs(args) == dict(ops="+-", digits=[1, 2], templates=[4], forms=["numeral"], n_per_op=5, seed=3)


# ----------------------------------------------------------------------------- commands on a tiny model
def test_eval_and_heads_on_a_local_directory(tiny_dir, tmp_path):
    out = tmp_path / "eval.csv"
    assert main(["eval", "--model", tiny_dir, "--ops", "+", "--templates", "4", "--forms", "numeral", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == 100
    for col in ["prompt", "input_ids", "answer", "target_token", "target_str", "predicted_token", "correct", "op", "digits", "template", "form", "case_type"]:
        assert col in frame
    out = tmp_path / "heads.csv"
    assert main(["heads", "--model", tiny_dir, "--ops", "+-", "--templates", "4", "--forms", "numeral", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert {"layer", "head", "op", "accuracy", "baseline_accuracy", "accuracy_drop", "logprob_drop"} <= set(frame)
    assert len(frame) == 3 * 3 * 4  # (all, +, -) x layers x heads
    saved = load_result(tmp_path / "heads.result")  # the whole result beside the CSV
    assert type(saved).__name__ == "HeadAblationResult" and saved.correct.shape == (len(saved.heads), len(saved.cases))
    assert list(saved.df.columns) == list(frame.columns) and saved.df["accuracy_drop"].tolist() == pytest.approx(frame["accuracy_drop"].tolist())
    assert saved.meta["command"].startswith("arithlens heads") and saved.meta["model"]["name"]
    assert type(load_result(tmp_path / "eval.result")).__name__ == "EvaluationResult"


def test_cna_command_columns_match_the_python_result(tiny_dir, tmp_path):
    out = tmp_path / "cna.csv"
    assert main(["cna", "--model", tiny_dir, "--device", "cpu", "--prompt", "3+5=", "--ablate-head", "1.2", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == cli_columns()
    assert (frame["importance_change"] - (frame["importance"] - frame["importance_other"])).abs().max() < 1e-5
    assert frame["importance_change"].is_monotonic_decreasing


def cli_columns():
    from arithlens.app.cli import COLUMNS

    return COLUMNS


def test_cna_command_two_inputs_and_a_target(tiny_dir, tmp_path, capsys):
    out = tmp_path / "two.csv"
    argv = ["cna", "--model", tiny_dir, "--device", "cpu", "--prompt", "3+5=", "--other-prompt", "3-5=", "--target", "8", "--scale", "own", "--out", str(out)]
    assert main(argv) == 0
    frame = pd.read_csv(out)
    assert frame["importance_other"].notna().all()
    assert "-> '8'" in capsys.readouterr().out


def test_saved_result_directory_checked_before_loading(tiny_dir, tmp_path, capsys):
    (tmp_path / "x.result").mkdir()
    (tmp_path / "x.result" / "notes.txt").write_text("mine")
    code = main(["heads", "--model", tiny_dir, "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "non-empty directory that holds no saved result" in err and not (tmp_path / "x.csv").exists()


def test_cna_command_head_out_of_range(tiny_dir, tmp_path, capsys):
    code = main(["cna", "--model", tiny_dir, "--device", "cpu", "--prompt", "3+5=", "--ablate-head", "7.0", "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("arithlens cna: error: --ablate-head='7.0'")  # after the loader's own progress lines


def test_patch_command_writes_one_row_per_node(tiny_dir, tmp_path):
    out = tmp_path / "patch.csv"
    code = main(["patch", "--model", tiny_dir, "--device", "cpu", "--ops", "+", "--digits", "1", "--templates", "4", "--limit", "3", "--out", str(out)])
    assert code == 0
    df = pd.read_csv(out)
    assert len(df) == 3 * (4 + 1)  # the tiny model: 3 layers x (4 heads + MLP)
    assert {"layer", "node", "effect"} <= set(df.columns)
    assert load_result(tmp_path / "patch.result").effects.shape == (3 * 5, 3)


def test_sft_command_writes_an_offline_page(tiny_dir, tmp_path):
    out = tmp_path / "sft"
    args = ["sft", "--model", tiny_dir, "--device", "cpu", "--steps", "2", "--batch-size", "2", "--k", "2", "--n-train", "16",
            "--n-test", "4", "--patch-pairs", "1", "--ppl-tokens", "64", "--no-full-answer", "--variants", "precise,random", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    df = pd.read_csv(out / "sft.csv")
    assert df["variant"].tolist() == ["original", "precise", "random"]
    assert (out / "losses.csv").exists()
    saved = load_result(out / "sft.result")
    assert saved.losses.keys() == {"precise", "random"} and saved.models == {}
    page = (out / "sft.html").read_text(encoding="utf-8")
    assert "<script src=" not in page and "plotly.js v" in page
    assert "After 2 steps, on 4 test cases" in page


def test_package_is_eager_and_complete():
    code = (
        "import arithlens, arithlens.analysis.evaluation; "
        "print(callable(arithlens.evaluate), arithlens.load_model.__name__, arithlens.HeadAblation.__name__, "
        "{'load_model', 'evaluate', 'HeadAblation', 'cna', 'circuits', 'data'} <= set(arithlens.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "load_model", "HeadAblation", "True"]


def test_the_package_ships_py_typed():
    """PEP 561: type checkers read arithlens's annotations only when `py.typed` is in the wheel."""
    import pathlib
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    assert (root / "arithlens" / "py.typed").is_file()
    config = tomllib.loads((root / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["arithlens"]


def _documented_commands() -> list[tuple[str, str]]:
    """`arithlens <command> ...` lines quoted in the README and the docs (code spans and shell blocks)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    found = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        spans = re.findall(r"`(arithlens [a-z]+[^`]*)`", text)
        lines = re.findall(r"^\s*(arithlens [a-z]+.*?)\s*(?:#.*)?$", text, flags=re.M)
        for line in dict.fromkeys(spans + lines):
            line = line.split(" #")[0].strip()
            if line.split()[1] in ("run", "eval", "heads", "cna", "patch", "sft", "lora", "prune", "bias"):
                found.append((page.name, line))
    return found


DOCUMENTED = _documented_commands()


def test_the_docs_quote_commands():
    assert len(DOCUMENTED) >= 10 and {line.split()[1] for _, line in DOCUMENTED} >= {"run", "heads", "cna", "patch", "lora"}


@pytest.mark.parametrize("page, line", DOCUMENTED, ids=[f"{p}:{l[:60]}" for p, l in DOCUMENTED])
def test_every_documented_command_line_parses_and_passes_the_checks(page, line, tmp_path, monkeypatch):
    """Each command the docs show is accepted as written: options exist, values pass validation."""
    import shlex

    from arithlens.app.cli import precheck

    monkeypatch.chdir(tmp_path)  # relative --out paths land here
    argv = shlex.split(line)[1:]
    if "--model" in argv:  # a user's own model path: only its form is shown
        i = argv.index("--model")
        del argv[i : i + 2]
    args = build_parser().parse_args(argv)
    precheck(args)
