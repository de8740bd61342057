"""Every command's `--help` shows its true defaults, and `--paper` applies the paper profile."""

import argparse
import dataclasses
import re

import pytest

from arithlens.app import cli
from arithlens.circuits import PreciseSFTSettings
from arithlens.cna import GenderBiasSettings, LoRACoefficients, LoRASettings, PruningSettings


def _commands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _help(sub: argparse.ArgumentParser) -> str:
    return " ".join(sub.format_help().split())


@pytest.mark.parametrize("command", sorted(_commands()))
def test_help_states_every_default_as_parsed(command):
    """Each option with a default says `(default X)` with X the value the parser really uses."""
    sub = _commands()[command]
    text = _help(sub)
    for action in sub._actions:
        if not action.option_strings or action.dest in ("help",) or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            continue
        helptext = " ".join((action.help or "").split())
        assert "GPU:" not in helptext, (command, action.dest)
        if action.default is not None and action.default is not argparse.SUPPRESS:
            assert f"(default {action.default})" in helptext, (command, action.option_strings, helptext)
        elif not action.required:
            assert "(default" in helptext, (command, action.option_strings, helptext)
    if command not in ("run", "report"):  # report renders saved results: no model, no profile
        assert "--paper" in text


def _parsed(argv):
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    cli.apply_paper(parser, args, argv)
    return args


def _fields(settings, names):
    return {n: getattr(settings, n) for n in names}


LORA_FIELDS = ("lrs", "rank", "alpha", "epochs", "steps", "batch_size", "n_train", "n_val", "n_test", "seed", "full_answer")


def test_lora_and_prune_defaults_are_the_settings_defaults():
    args = _parsed(["lora", "--out", "x.csv"])
    assert _fields(cli._sweep(args), LORA_FIELDS) == _fields(LoRASettings(), LORA_FIELDS)
    coef = cli.coefficients(args)
    assert _fields(coef, ("rank_on", "ks", "case", "case_answer", "mode")) == _fields(LoRACoefficients(), ("rank_on", "ks", "case", "case_answer", "mode"))
    args = _parsed(["prune", "--out", "x.csv"])
    pr = cli.pruning_settings(args)
    names = ("lora_layer", "top_k", "deep_layers", "n_cases", "target", "mode", "random_control")
    assert _fields(pr, names) == _fields(PruningSettings(), names)
    args = _parsed(["bias", "--out", "x.csv"])
    names = ("n_neurons", "cna_prompts", "mode", "collateral", "ppl_tokens", "n_arithmetic", "seed")
    assert _fields(cli.bias_settings(args), names) == _fields(GenderBiasSettings(), names)
    args = _parsed(["sft", "--out", "d"])
    cli.precheck(args)
    names = ("k", "steps", "lr", "batch_size", "n_train", "n_test", "seed", "full_answer", "ppl_tokens")
    assert _fields(args.sft, names) == _fields(PreciseSFTSettings(), names)


def test_paper_flag_gives_the_paper_profile_and_keeps_explicit_flags():
    n = 32
    args = _parsed(["lora", "--paper", "--out", "x.csv"])
    assert args.layers == "all" and args.cases == "all"
    paper = LoRASettings.paper(n)
    assert _fields(cli._sweep(args), LORA_FIELDS) == _fields(paper, LORA_FIELDS)
    coef = cli.coefficients(args)
    names = ("rank_on", "ks", "case", "case_answer", "mode")
    assert _fields(coef, names) == _fields(LoRACoefficients.paper(), names)
    assert cli.dataset_kwargs(args)["ops"] == "+-" and cli.dataset_kwargs(args)["templates"] == [4]
    args = _parsed(["lora", "--paper", "--rank", "8", "--out", "x.csv"])
    assert cli._sweep(args).rank == 8 and cli._sweep(args).epochs == 4  # the explicit flag wins
    args = _parsed(["prune", "--paper", "--out", "x.csv"])
    pr, ref = cli.pruning_settings(args), PruningSettings.paper(n)
    names = ("top_k", "n_cases", "target", "mode", "random_control")
    assert _fields(pr, names) == _fields(ref, names) and pr.lora_layer is None and pr.deep_layers is None
    assert _fields(pr.lora, LORA_FIELDS) == _fields(ref.lora, LORA_FIELDS)
    args = _parsed(["heads", "--paper", "--out", "x.csv"])
    kw = cli.dataset_kwargs(args)
    assert (kw["digits"], kw["templates"], kw["forms"], kw["n_per_op"]) == ([2], [1, 2, 3, 4], ["numeral", "word"], 50)
    args = _parsed(["sft", "--paper", "--out", "d"])
    cli.precheck(args)
    names = ("k", "steps", "lr", "batch_size", "n_train", "n_test")
    assert _fields(args.sft, names) == _fields(PreciseSFTSettings.paper(), names)
    args = _parsed(["bias", "--paper", "--out", "x.csv"])
    assert _fields(cli.bias_settings(args), ("n_neurons", "cna_prompts", "mode")) == _fields(GenderBiasSettings.paper(), ("n_neurons", "cna_prompts", "mode"))


def test_analysis_flag_defaults_are_the_classes_defaults():
    from arithlens.circuits import PathPatching
    from arithlens.cna import HeadAblation, NeuronImportance

    args = _parsed(["heads", "--out", "x.csv"])
    assert (args.method, args.position, args.estimate, int(args.rescore)) == (
        HeadAblation().method, HeadAblation().position, HeadAblation().estimate, HeadAblation().rescore)
    args = _parsed(["patch", "--out", "x.csv"])
    assert (args.method, args.position) == (PathPatching().method, PathPatching().position)
    args = _parsed(["cna", "--prompt", "3+5=", "--out", "x.csv"])
    ref = NeuronImportance()
    assert (args.mode, int(args.rescore), float(args.memory_budget), args.scale) == (ref.mode, ref.rescore, ref.memory_budget, ref.scale)


def test_run_paper_and_quick_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--paper", "--quick"])
    assert "not allowed with argument" in capsys.readouterr().err
