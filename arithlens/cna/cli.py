"""``arithlens cna``: Comparative Neuron Analysis of one prompt, one row per FFN neuron.

Example::

    arithlens cna --prompt "3+5=" --ablate-head 17.2 --out results/cna.csv

writes ``layer, neuron, importance, importance_intervened, importance_change, coef,
coef_intervened, coef_change, top_tokens`` for every neuron of every layer, sorted by
``importance_change`` (see :mod:`arithlens.cna.comparative`). Without ``--ablate-head``
only the original model's scores are written (the ``*_intervened`` and ``*_change``
columns are empty).
"""

from __future__ import annotations

import argparse
from typing import Any

COLUMNS = [
    "layer", "neuron", "importance", "importance_intervened", "importance_change",
    "coef", "coef_intervened", "coef_change", "top_tokens",
]  # fmt: skip


def register(subparsers: Any) -> None:
    from arithlens.cli import add_model_args

    sub = subparsers.add_parser("cna", help="comparative neuron analysis of one prompt: one row per FFN neuron")
    add_model_args(sub)
    sub.add_argument("--prompt", required=True, help='the prompt, e.g. "3+5="')
    sub.add_argument("--answer", default=None, help="the correct answer (needed with --target answer)")
    sub.add_argument("--ablate-head", default=None, metavar="L.H", help="head zeroed on the other side, e.g. 17.2")
    sub.add_argument("--target", default="prediction", choices=["prediction", "answer"],
                     help="token scored: the model's prediction (the paper) or the answer")  # fmt: skip
    sub.add_argument("--mode", default="exact", choices=["exact", "fast"], help="exact (default) or first-order + rescoring")
    sub.add_argument("--memory-budget", type=float, default=1e9, help="bytes for the exact computation (default 1e9)")
    sub.add_argument("--out", required=True, help="CSV file to write")
    sub.set_defaults(func=_cmd_cna)


def _cmd_cna(args: argparse.Namespace) -> int:
    from arithlens import data
    from arithlens.cli import _write_csv, load_model_from_args
    from arithlens.cna.comparative import ComparativeNeuronScores
    from arithlens.cna.importance import NeuronImportance, check_head_arg
    from arithlens.interventions import ZeroHead

    if args.target == "answer" and not args.answer:
        raise ValueError("--target answer needs --answer (the correct answer of the prompt)")
    model = load_model_from_args(args)
    head = check_head_arg(model, args.ablate_head) if args.ablate_head is not None else None
    cases = data.prompts(model.tokenizer, [args.prompt], [args.answer] if args.answer else None)
    common = dict(target=args.target, mode=args.mode, memory_budget=args.memory_budget, top_tokens=10)
    if head is not None:
        result = ComparativeNeuronScores(intervention=ZeroHead(*head), **common).run(model, cases)
        df = result.df.rename(columns={"importance_other": "importance_intervened", "coef_other": "coef_intervened"})
        label = f"head {head[0]}.{head[1]} zeroed"
    else:
        res = NeuronImportance(**common).run(model, cases)
        df = res.top(len(res.df), case=0)
        for c in ("importance_intervened", "importance_change", "coef_intervened", "coef_change"):
            df[c] = float("nan")
        label = "no intervention"
    df = df.reindex(columns=COLUMNS)
    _write_csv(df, args.out)
    target = model.decode([int(model.run(cases).predictions[0])]) if args.target == "prediction" else args.answer
    print(f"{args.prompt!r} -> {target!r} ({label}); top neurons:")
    print(df.head(10).drop(columns="top_tokens").to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0
