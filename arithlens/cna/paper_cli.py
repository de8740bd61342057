"""`arithlens lora`, `arithlens prune`, `arithlens bias` — the CNA paper's §5, §6.1 and §6.2.

* `arithlens lora [--layers 4,12,20] [--lrs 1e-3,5e-4,1e-4] [--steps N] [--adapters DIR]
  --out FILE.csv [--coef-out FILE.csv]` — one LoRA model per layer (Figure 2: one row
  per model) and, with `--coef-out`, the coefficient-score increase of the top neurons
  (Tables 9, 10: one row per LoRA layer, K and case) on the dataset flags' cases.
* `arithlens prune [--lora-layer L] [--top-n N] [--save DIR] --out FILE.csv` — CNA-guided
  pruning and LoRA on the pruned models (Table 11: one row per model).
* `arithlens bias [--n-neurons 18] [--professions FILE] [--save-edited DIR] --out FILE.csv`
  — gender-bias neurons by CNA, zeroed (Table 13: one row per model, prompt and profession).

Every argument is checked before the model loads; bad input is one line on stderr and a
non-zero exit.

Example:
    ```bash
    arithlens lora --layers 4,12 --lrs 1e-3 --steps 60 --adapters results/lora --out results/fig2.csv
    arithlens prune --steps 60 --save results/prune --out results/table11.csv
    arithlens bias --out results/table13.csv
    ```
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from arithlens import validate


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
    sub.add_argument("--lrs", default="1e-3,5e-4,1e-4", help="candidate learning rates (the paper's three)")
    sub.add_argument("--rank", default="8", help="LoRA rank (default 8)")
    sub.add_argument("--alpha", default="16", help="LoRA alpha (default 16)")
    sub.add_argument("--epochs", default="4", help="at most this many passes over the training data")
    sub.add_argument("--steps", default="150", help="at most this many optimiser steps per model (GPU: 9000)")
    sub.add_argument("--batch-size", default="8", help="training cases per optimiser step (default 8)")
    sub.add_argument("--n-train", default="1000", help="training cases of the 2-digit split (GPU: 18000)")
    sub.add_argument("--n-val", default="100", help="held-out training cases that choose the learning rate")
    sub.add_argument("--n-test", default="200", help="test cases (GPU: 2000)")
    sub.add_argument("--lora-seed", default="0", help="seed of the split, batches and adapters")


def _sweep(args: argparse.Namespace, **extra: Any) -> Any:
    from arithlens.cna.lora import LoRALayerSweep

    return LoRALayerSweep(
        lrs=_number_list(args.lrs, "--lrs"), rank=_int(args.rank, "--rank"), alpha=_float(args.alpha, "--alpha"),
        epochs=_int(args.epochs, "--epochs"), steps=_int(args.steps, "--steps"), batch_size=_int(args.batch_size, "--batch-size"),
        n_train=_int(args.n_train, "--n-train"), n_val=_int(args.n_val, "--n-val"), n_test=_int(args.n_test, "--n-test"),
        seed=_int(args.lora_seed, "--lora-seed"), **extra,
    )  # fmt: skip


def register(subparsers: Any) -> None:
    from arithlens.cli import add_dataset_args, add_model_args

    lora = subparsers.add_parser("lora", help="LoRA on one attention layer per model (CNA §5, Figure 2, Tables 9-10)")
    add_model_args(lora)
    add_dataset_args(lora, ops="+-*/", digits="1", forms="numeral")
    lora.add_argument("--layers", default=None, help="LoRA layers, e.g. 4,12,20 or 1-28 (default: one per paper range)")
    _add_lora_args(lora)
    lora.add_argument("--adapters", default=None, metavar="DIR", help="save adapters here; re-use those already saved")
    lora.add_argument("--full-answer", action="store_true", help="also greedy-decode whole answers")
    lora.add_argument("--cases", default="64", help="dataset cases sampled for Table 10 (default 64)")
    lora.add_argument("--rank-on", default="original", choices=["original", "lora", "change"], help="model that ranks the neurons")
    lora.add_argument("--ks", default="50,30,20,10", help="top-K sizes of Table 10")
    lora.add_argument("--case", default="3+5=", help="Table 9's prompt")
    lora.add_argument("--case-answer", default="8", help="Table 9's answer")
    lora.add_argument("--mode", default="fast", choices=["fast", "exact"], help="CNA mode")
    lora.add_argument("--coef-out", default=None, metavar="FILE.csv", help="also write Tables 9-10's rows here")
    lora.add_argument("--out", required=True, metavar="FILE.csv", help="Figure 2's rows: one per model")
    lora.set_defaults(func=_cmd_lora)

    prune = subparsers.add_parser("prune", help="CNA-guided pruning, then LoRA (CNA §6.1, Table 11)")
    add_model_args(prune)
    add_dataset_args(prune, ops="+-*/", digits="1", forms="numeral")
    prune.add_argument("--lora-layer", default=None, help="shallow LoRA layer (default round(9 n / 32))")
    prune.add_argument("--top-n", default=None, help="neurons kept per case (default the paper's fraction)")
    prune.add_argument("--deep-layers", default=None, help="pruned layers, e.g. 16-29 (default the paper's 17-31 of 32, scaled)")
    prune.add_argument("--n-cases", default="64", help="1-digit cases CNA runs on (default 64)")
    prune.add_argument("--target", default="prediction", choices=["prediction", "answer"], help="token CNA scores: the LoRA model's prediction (the paper) or the correct answer")
    prune.add_argument("--mode", default="fast", choices=["fast", "exact"], help="CNA mode")
    prune.add_argument("--no-random", action="store_true", help="skip the randomly pruned control")
    _add_lora_args(prune)
    prune.add_argument("--save", default=None, metavar="DIR", help="save adapters and the pruned models here")
    prune.add_argument("--out", required=True, metavar="FILE.csv", help="Table 11's rows: one per model")
    prune.set_defaults(func=_cmd_prune)

    bias = subparsers.add_parser("bias", help="gender-bias neurons by CNA, zeroed (CNA §6.2, Tables 12-13)")
    add_model_args(bias)
    bias.add_argument("--n-neurons", default="18", help="neurons edited (default 18)")
    bias.add_argument("--professions", default=None, metavar="FILE", help="JSON {woman: [...], man: [...]} or 'woman: a, b' lines")
    bias.add_argument("--cna-prompts", default="0", help="indices of the Table 22 prompts CNA runs on (default 0)")
    bias.add_argument("--mode", default="fast", choices=["fast", "exact"], help="CNA mode")
    bias.add_argument("--no-collateral", action="store_true", help="skip perplexity and arithmetic accuracy")
    bias.add_argument("--ppl-tokens", default="1024", help="general-text tokens scored for perplexity")
    bias.add_argument("--n-arithmetic", default="200", help="1-digit cases for the arithmetic accuracy")
    bias.add_argument("--seed", default="0", help="seed of the arithmetic sample scored for collateral accuracy (default 0)")
    bias.add_argument("--save-edited", default=None, metavar="DIR", help="save the edited model here")
    bias.add_argument("--out", required=True, metavar="FILE.csv", help="one row per model, prompt and profession")
    bias.set_defaults(func=_cmd_bias)


def _cmd_lora(args: argparse.Namespace) -> int:
    from arithlens import data
    from arithlens.cli import _write_csv, dataset_kwargs, load_model_from_args
    from arithlens.cna.lora_coefficients import LoRACoefficients

    validate.output_path(args.out, "--out")
    dataset = dataset_kwargs(args)
    if args.coef_out is not None:
        validate.output_path(args.coef_out, "--coef-out")
    layers = None if args.layers is None else _int_list(args.layers, "--layers")
    adapters = None if args.adapters is None else validate.output_dir(args.adapters, "--adapters")
    sweep = _sweep(args, layers=layers, out_dir=adapters, full_answer=args.full_answer)
    n_cases = validate.positive_int(_int(args.cases, "--cases"), "--cases")
    coef = LoRACoefficients(rank_on=args.rank_on, ks=_int_list(args.ks, "--ks"), case=args.case,
                            case_answer=args.case_answer, mode=args.mode)  # fmt: skip
    model = load_model_from_args(args)
    result = sweep.run(model)
    _write_csv(result.df, args.out)
    print(result.df[["model", "lora_layer", "lr", "accuracy"]].to_string(index=False))
    if args.coef_out is not None:
        cases = data.arithmetic(model.tokenizer, **dataset)
        tables = coef.run(model, result, cases.sample(n_cases, seed=dataset["seed"]) if n_cases < len(cases) else cases)
        _write_csv(tables.df, args.coef_out)
        print(tables.table9().round(3).to_string())
        print(tables.table10().round(1).to_string())
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from arithlens import data
    from arithlens.cli import _write_csv, dataset_kwargs, load_model_from_args
    from arithlens.cna.pruning import CNAPruning

    validate.output_path(args.out, "--out")
    dataset = dataset_kwargs(args)
    save = None if args.save is None else validate.output_dir(args.save, "--save")
    deep = None if args.deep_layers is None else _int_list(args.deep_layers, "--deep-layers")
    n_cases = validate.positive_int(_int(args.n_cases, "--n-cases"), "--n-cases")
    pruning = CNAPruning(lora_layer=_int(args.lora_layer, "--lora-layer"), top_n=_int(args.top_n, "--top-n"), deep_layers=deep,
                         n_cases=n_cases, target=args.target, mode=args.mode, random_control=not args.no_random,
                         sweep=_sweep(args), out_dir=save, seed=dataset["seed"])  # fmt: skip
    model = load_model_from_args(args)
    pruning.resolve(model)  # layer range, N and the gated MLP checked before any training
    cases = data.arithmetic(model.tokenizer, **dataset)
    result = pruning.run(model, cases=cases.sample(n_cases, seed=dataset["seed"]) if n_cases < len(cases) else cases)
    _write_csv(result.df, args.out)
    print(result.table().to_string())
    return 0


def _cmd_bias(args: argparse.Namespace) -> int:
    from arithlens.cli import _write_csv, load_model_from_args
    from arithlens.cna.bias import BiasData, GenderBias, load_professions, paper_bias_data
    from arithlens.cna.pruning import save_model

    validate.output_path(args.out, "--out")
    save = None if args.save_edited is None else validate.output_dir(args.save_edited, "--save-edited")
    data = paper_bias_data()
    if args.professions is not None:
        data = BiasData(data.prompts, load_professions(args.professions))
    bias = GenderBias(n_neurons=_int(args.n_neurons, "--n-neurons"), data=data, cna_prompts=_int_list(args.cna_prompts, "--cna-prompts"),
                      mode=args.mode, collateral=not args.no_collateral, ppl_tokens=_int(args.ppl_tokens, "--ppl-tokens"),
                      n_arithmetic=_int(args.n_arithmetic, "--n-arithmetic"), seed=_int(args.seed, "--seed"))  # fmt: skip
    model = load_model_from_args(args)
    result = bias.run(model)
    _write_csv(result.df, args.out)
    print(result.table13().round(3).to_string())
    print("edited neurons:", ", ".join(f"{L}_{n}" for L, n in result.neurons))
    if save is not None:
        from arithlens.cna.bias import edit

        print(f"saved the edited model to {save_model(edit(model, result.neurons), save)}")
    return 0
