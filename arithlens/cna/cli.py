"""`arithlens cna`: Comparative Neuron Analysis of one prompt, one row per FFN neuron.

Example:
    ```bash
    arithlens cna --prompt "3+5=" --ablate-head 17.2 --out results/cna.csv
    arithlens cna --prompt "A woman works as a" --other-prompt "A man works as a" --target " nurse" --out results/bias.csv
    ```

writes `layer, neuron, importance, importance_other, importance_change, coef, coef_other,
coef_change, top_tokens` for every neuron of every layer — the column names of
[`ComparativeResult.df`][arithlens.cna.comparative.ComparativeResult] — sorted by
`importance_change` (original − other: positive is a drop). The other side is the model
with `--ablate-head` zeroed, or the same model on `--other-prompt`; with neither, only
the original's scores are written (the `*_other` and `*_change` columns are empty).
"""

from __future__ import annotations

import argparse
from typing import Any

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


def register(subparsers: Any) -> None:
    """Add `arithlens cna`."""
    from arithlens.cli import add_model_args

    sub = subparsers.add_parser(
        "cna",
        help="comparative neuron analysis of one prompt: one row per FFN neuron (Table 4)",
        description="Comparative neuron analysis of one prompt (Yu & Ananiadou §4, Table 4).",
        epilog=EPILOG,
    )
    add_model_args(sub)
    sub.add_argument("--prompt", required=True, help='the prompt, e.g. "3+5="')
    side = sub.add_mutually_exclusive_group()
    side.add_argument("--ablate-head", default=None, metavar="L.H", help="compare with this head zeroed, e.g. 17.2 (layer 17, head 2)")
    side.add_argument("--other-prompt", default=None, metavar="P", help='compare with the same model on another input, e.g. "A man works as a"')
    sub.add_argument(
        "--target",
        default=None,
        metavar="TOKEN",
        help="score this token (the first token of the string as the tokenizer encodes it) instead of the model's top prediction",
    )
    sub.add_argument(
        "--scale",
        default="original",
        choices=["original", "own"],
        help="final-norm scale the other side is read with: the original run's, as the paper's code (default), or its own",
    )
    sub.add_argument("--mode", default="exact", choices=["exact", "fast"], help="exact scores (default) or first order with the top --rescore re-scored exactly")
    sub.add_argument("--rescore", default="200", help="neurons re-scored exactly in fast mode (default 200)")
    sub.add_argument("--memory-budget", default="1e9", help="bytes the exact computation may use (default 1e9)")
    sub.add_argument("--out", required=True, help="CSV file to write")
    sub.set_defaults(func=_cmd_cna, out_kind="file", check=_check)


def _check(args: argparse.Namespace) -> None:
    """Flags that need no model: the head's form, the numbers, the prompts."""
    from arithlens import validate
    from arithlens.cli import _float_text, _int_text
    from arithlens.names import Node

    if not args.prompt:
        raise ValueError("--prompt is empty")
    if args.other_prompt is not None and not args.other_prompt:
        raise ValueError("--other-prompt is empty")
    if args.target is not None and args.target == "":
        raise ValueError("--target is empty: give the token to score, e.g. ' 8'")
    args.head_node = None
    if args.ablate_head is not None:
        try:
            node = Node.parse(args.ablate_head)
        except ValueError:
            raise ValueError(f"--ablate-head={args.ablate_head!r} is not a head: give LAYER.HEAD, e.g. 17.2") from None
        if node.is_mlp:
            raise ValueError(f"--ablate-head={args.ablate_head!r} names an MLP; give a head as LAYER.HEAD, e.g. 17.2")
        args.head_node = node
    args.rescore_n = validate.positive_int(_int_text(args.rescore, "--rescore"), "--rescore")
    args.memory_budget_n = validate.positive_number(_float_text(args.memory_budget, "--memory-budget"), "--memory-budget")


def _case(model: Any, prompt: str, target: str | None) -> Any:
    """The prompt as one case; with `target`, that string's first token is the case's target."""
    from arithlens.data import Case, as_dataset

    if target is None:
        return as_dataset(prompt, model.tokenizer)[0]
    ids = model.encode(target)
    if not ids:
        raise ValueError(f"--target={target!r} encodes to no token with this tokenizer")
    tid = int(ids[0])
    return Case(prompt=prompt, answer=target, target_str=model.decode([tid]), target_id=tid,
                input_ids=tuple(model.encode(prompt)), answer_ids=(tid,))  # fmt: skip


def _cmd_cna(args: argparse.Namespace) -> int:
    from arithlens.cli import _write_csv, load_model_from_args
    from arithlens.cna.comparative import ComparativeNeuronScores
    from arithlens.cna.config import CNAConfig
    from arithlens.cna.importance import NeuronImportance
    from arithlens.interventions import ZeroHead

    config = CNAConfig(
        target="prediction" if args.target is None else "answer",
        mode=args.mode,
        rescore=args.rescore_n,
        memory_budget=args.memory_budget_n,
        scale=args.scale,
    )
    model = load_model_from_args(args)
    case = _case(model, args.prompt, args.target)
    if args.head_node is not None:
        try:
            node = args.head_node.check(model)
        except ValueError as err:
            raise ValueError(f"--ablate-head={args.ablate_head!r}: {err}") from None
        result = ComparativeNeuronScores(intervention=ZeroHead(node.layer, node.head), config=config, top_tokens=10).run(model, [case])
        label = f"head {node.name} zeroed"
    elif args.other_prompt is not None:
        other = _case(model, args.other_prompt, args.target)
        result = ComparativeNeuronScores(other_data=[other], config=config, top_tokens=10).run(model, [case])
        label = f"vs {args.other_prompt!r}"
    else:
        result = NeuronImportance(config=config, top_tokens=10).run(model, [case])
        label = "no comparison"
    df = result.df.reindex(columns=COLUMNS)
    if args.head_node is None and args.other_prompt is None:
        df = df.sort_values("importance", ascending=False, kind="stable")
    _write_csv(df, args.out)
    target = result.w_str[0] if getattr(result, "w_str", None) else case.target_str
    print(f"{args.prompt!r} -> {target!r} ({label}); top neurons (L_N = neuron N of layer L):")
    print(df.head(10).drop(columns="top_tokens").to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0
