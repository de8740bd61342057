"""Benchmark: `evaluate` on the 1-digit set against the forward pass's FLOP floor and a competent user's loop.

The set is `arithlens run`'s evaluation set (SmolLM2 by default): 1-digit operands, ops
`+ - * /`, templates 1–4, numeral and word operands. Timed in one process, memoized passes
cleared before every arithlens run:

* **baseline** — what a competent user writes with Hugging Face: equal-length prompts
  batched (no padding), one forward with `logits_to_keep=1` for the first token, and
  `generate(do_sample=False)` (KV cache) for whole answers.
* **arithlens** — `evaluate(model, cases, full_answer=False)` and `full_answer=True`.

The **floor** of each is FLOPs at the float32 matmul peak measured here: the first-token
evaluation needs one forward of every prompt (last-position unembedding); the whole answer
needs one forward of `prompt + answer[:-1]` (unembedding at the answer's positions), of
which the first token is a part. Printed: seconds, ratio to the baseline, the floor as
a fraction of the time (1.0 = at the matmul peak), and the process's peak memory against
the weights' bytes.

Run: `python benchmarks/evaluation.py [--per-op N] [--dtype float32|bfloat16] [--repeat 2] [--batch-size B]`
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections import defaultdict

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from _peak import describe_device, forward_flops, memory_line, peak_flops, timed  # noqa: E402


def by_length(seqs: list[tuple[int, ...]]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(seqs):
        groups[len(s)].append(i)
    return groups


@torch.no_grad()
def baseline(hf, prompts, answers, batch_size: int, full: bool, device: str) -> tuple[list[int], list[bool]]:
    """First-token predictions (and whole-answer greedy matches) the way a user writes them with HF."""
    first, whole = [0] * len(prompts), [False] * len(prompts)
    longest = max(len(a) for a in answers)
    for _, rows in sorted(by_length(prompts).items()):
        for b0 in range(0, len(rows), batch_size):
            idx = rows[b0 : b0 + batch_size]
            tokens = torch.tensor([prompts[i] for i in idx], device=device)
            if full:
                out = hf.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=longest, do_sample=False,
                                  pad_token_id=0, eos_token_id=None)  # fmt: skip
                gen = out[:, tokens.shape[1] :].tolist()
                for i, g in zip(idx, gen):
                    first[i], whole[i] = g[0], tuple(g[: len(answers[i])]) == answers[i]
            else:
                pred = hf(tokens, logits_to_keep=1).logits[:, -1].argmax(-1).tolist()
                for i, p in zip(idx, pred):
                    first[i] = p
    return first, whole


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-op", type=int, default=None, help="problems per op (default: every 1-digit problem)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeat", type=int, default=2, help="alternating runs; the best is kept (default 2)")
    p.add_argument("--batch-size", type=int, default=None, help="cases per forward (default the model's)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import arithlens
    from arithlens import data
    from arithlens.analysis.evaluation import evaluate
    from arithlens.core.loading import smollm2_path
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, args.dtype)
    model = arithlens.load_model(device=args.device, dtype=args.dtype)
    directory, gguf = smollm2_path()
    hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=dtype).eval().to(args.device)
    cases = data.arithmetic(model.tokenizer, ops="+-*/", digits=1, templates=(1, 2, 3, 4), forms=("numeral", "word"))
    if args.per_op is not None:
        cases = cases.sample_per("op", args.per_op * 8, seed=0)
    prompts = [tuple(c.input_ids) for c in cases]
    answers = [tuple(c.answer_ids) for c in cases]
    bs = args.batch_size or model.batch_size
    peak = peak_flops(args.device, dtype)
    print(f"{model!r}; {describe_device(args.device)}, {args.dtype}; batch size {bs}")
    print(f"{len(cases):,} cases, {sum(len(a) > 1 for a in answers):,} with multi-token answers; "
          f"{args.dtype} matmul peak measured here {peak / 1e9:.0f} GFLOP/s\n")  # fmt: skip

    flops_first = sum(forward_flops(model, len(rows), n) for n, rows in by_length(prompts).items())
    full_seqs = [pr + a[:-1] for pr, a in zip(prompts, answers)]
    flops_full = 0.0
    for n, rows in by_length(full_seqs).items():
        flops_full += forward_flops(model, len(rows), n, logits_rows=sum(len(answers[i]) for i in rows))

    for full, flops in ((False, flops_first), (True, flops_full)):
        t_base = t_ours = float("inf")
        for _ in range(args.repeat):
            (b_first, b_whole), t = timed(lambda: baseline(hf, prompts, answers, bs, full, args.device), args.device)
            t_base = min(t_base, t)
            model.clear_cache()
            ev, t = timed(lambda: evaluate(model, cases, full_answer=full, batch_size=args.batch_size), args.device)
            t_ours = min(t_ours, t)
        ours_first = ev.cases["predicted_token"].tolist()
        agree = sum(a == b for a, b in zip(ours_first, b_first)) / len(cases)
        what = "whole answer (teacher-forced)" if full else "first token"
        if full:
            agree_w = sum(a == b for a, b in zip(ev.cases["full_correct"].tolist(), b_whole)) / len(cases)
            what += f"; whole-answer outcomes agree on {agree_w:.1%}"
        floor = flops / peak
        print(f"evaluation, {what}; first tokens agree on {agree:.1%}")
        print(f"  baseline (HF, batched{', generate with KV cache' if full else ', logits_to_keep=1'}) {t_base:8.2f} s"
              f"   floor/time {floor / t_base:5.2f}")  # fmt: skip
        print(f"  arithlens evaluate(full_answer={full})  {' ' * (22 if full else 8)}{t_ours:8.2f} s"
              f"   floor/time {floor / t_ours:5.2f}   x{t_base / t_ours:4.1f} vs baseline   ({flops / 1e12:.2f} TFLOP floor {floor:.2f} s)")  # fmt: skip
    print(memory_line(model, args.device, " (this process: arithlens's model and the baseline's HF copy both loaded)"))


if __name__ == "__main__":
    main()
