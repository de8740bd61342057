"""Head sweep speed against the limit: the paper's procedure, a competent batched-hooks loop, arithlens.

Zero-ablation of every swept head on 1-digit "n1+n2=" prompts (SmolLM2 by default), in one
process, on one device, for 1 prompt and for 32 prompts:

* **paper** — Yu & Ananiadou's reference procedure: for each head deep-copy the Hugging
  Face model, zero that head's `o_proj` columns, one forward per prompt. Timed on
  `--paper-heads` heads and **extrapolated** linearly to the swept heads (labelled so).
* **batched hooks** — what a competent TransformerLens user writes: all prompts in one
  batch, one full forward per head with a hook zeroing the head's `z`.
* **arithlens exact** — `HeadAblation()`: one clean pass, then per layer one forward that
  restarts at that layer (blocks before it never run) over the batch stacked for all of
  the layer's heads, last-position unembedding only.
* **arithlens attribution** — `HeadAblation(estimate="attribution")`: one forward and one
  backward pass per batch estimate every head, the top `--rescore` are re-scored exactly.

Printed: absolute times, speed-ups over each baseline, achieved FLOP/s and its share of
the matmul peak measured in this process (same device, same dtype), the largest
difference between arithlens's and the batched loop's log-probs, and the attribution
estimate's agreement with the exact sweep (Spearman, top-k overlap).

Defaults sweep every 5th layer (all heads of layers 0, 5, …) so the whole run takes a few
minutes on 2 CPU cores; `--stride 1` sweeps every head (the findings' agreement numbers).

    python benchmarks/head_sweep.py [--cases 1 32] [--stride 5] [--paper-heads 2] [--device cuda] [--tiny]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _peak import describe_device, forward_flops, line, peak_flops, timed  # noqa: E402


def batched_hooks(model, tokens, target, heads):
    """One full forward per head, all prompts batched, a zeroing hook on the head's z."""
    from arithlens.core import names

    out = torch.empty(len(heads), tokens.shape[0], device=tokens.device)
    with torch.no_grad():
        for k, (L, H) in enumerate(heads):

            def zero(z, hook, H=H):
                z[:, :, H] = 0.0
                return z

            logits = model.bridge.run_with_hooks(tokens, fwd_hooks=[(names.z(L), zero)])
            out[k] = logits[:, -1].float().log_softmax(-1).gather(-1, target[:, None])[:, 0]
    return out


def paper_procedure(hf, tokens, target, heads, d_head):
    """Deep copy per head, zero its o_proj columns, one forward per prompt."""
    out = torch.empty(len(heads), tokens.shape[0], device=tokens.device)
    with torch.no_grad():
        for k, (L, H) in enumerate(heads):
            edited = copy.deepcopy(hf)
            edited.model.layers[L].self_attn.o_proj.weight[:, H * d_head : (H + 1) * d_head] = 0.0
            for i in range(tokens.shape[0]):
                logits = edited(tokens[i : i + 1]).logits[0, -1].float()
                out[k, i] = logits.log_softmax(-1)[target[i]]
            del edited
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[1, 32], help="prompt counts to time")
    parser.add_argument("--stride", type=int, default=5, help="sweep every STRIDE-th layer (1: every head)")
    parser.add_argument("--paper-heads", type=int, default=2, help="heads timed with the paper's procedure, then extrapolated")
    parser.add_argument("--rescore", type=int, default=20, help="heads re-scored exactly in attribution mode")
    parser.add_argument("--k", type=int, default=10, help="top-k overlap size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the tiny random Llama (smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    import arithlens
    from arithlens import data
    from arithlens.cna.heads import HeadAblation

    if args.tiny:
        from arithlens.testing import tiny_llama, tiny_llama_hf

        model, (hf, _) = tiny_llama(device=args.device), tiny_llama_hf()
    else:
        from transformers import AutoModelForCausalLM

        from arithlens.core.loading import smollm2_path

        model = arithlens.load_model(device=args.device)
        directory, gguf = smollm2_path()
        hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=torch.float32, attn_implementation="eager")
    hf = hf.eval().to(args.device)
    dtype = model.bridge.W_U.dtype
    peak = peak_flops(args.device, dtype)
    layers = list(range(0, model.n_layers, args.stride))
    heads = [(L, H) for L in layers for H in range(model.n_heads)]
    paper_heads = heads[:: max(1, len(heads) // args.paper_heads)][: args.paper_heads]
    pool = data.arithmetic(model.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(max(args.cases), seed=0)
    print(f"{model.name} on {describe_device(args.device)}, {dtype}; measured matmul peak {peak / 1e9:.1f} GFLOP/s (re-measured per case; the best reading is used)")
    print(f"zero-ablation of {len(heads)} heads (layers {layers[0]}..{layers[-1]} step {args.stride}, all {model.n_heads} heads each)\n")

    for n in args.cases:
        cases = pool[:n]
        tokens = torch.tensor([list(c.input_ids) for c in cases], device=args.device)
        target = torch.tensor([c.target_id for c in cases], device=args.device)
        p = tokens.shape[1]
        sweep = HeadAblation(layers=layers, batch_size=n, progress=False)
        fast_sweep = HeadAblation(layers=layers, batch_size=n, estimate="attribution", rescore=args.rescore, progress=False)
        sweep.run(model, cases[:1])  # warm up (allocations, the clean pass's code paths)

        model.clear_cache()
        exact, t_exact = timed(lambda: sweep.run(model, cases), args.device)
        model.clear_cache()
        fast, t_fast = timed(lambda: fast_sweep.run(model, cases), args.device)
        hooks_lp, t_hooks = timed(lambda: batched_hooks(model, tokens, target, heads), args.device)
        paper_lp, t_paper_part = timed(lambda: paper_procedure(hf, tokens, target, paper_heads, model.d_head), args.device)
        t_paper = t_paper_part * len(heads) / len(paper_heads)
        peak = max(peak, peak_flops(args.device, dtype))  # re-measured: other load on the machine lowers a single reading

        f_clean = forward_flops(model, n, p, logits_rows=n)
        f_exact = f_clean + sum(model.n_heads * forward_flops(model, n, p, start_layer=L) for L in layers)
        f_hooks = len(heads) * forward_flops(model, n, p, logits_rows=n * p)
        f_paper = len(heads) * n * forward_flops(model, 1, p, logits_rows=p)
        rescored = [h for h, e in zip(fast.heads, fast.exact.tolist()) if e]
        f_fast = f_clean + 3 * forward_flops(model, n, p, start_layer=layers[0]) + sum(forward_flops(model, n, p, start_layer=L) for L, _ in rescored)
        diff = float((exact.logprob - hooks_lp.cpu()).abs().max())
        idx = [exact.heads.index(h) for h in paper_heads]
        diff_paper = float((exact.logprob[idx] - paper_lp.cpu()).abs().max())

        print(f"--- {n} prompt(s) of {p} tokens, {len(heads)} heads; peak {peak / 1e9:.1f} GFLOP/s ---")
        print(line(f"paper: deep copy per head (extrapolated from {len(paper_heads)} heads)", t_paper, flops=f_paper, peak=peak))
        print(line("batched hooks: one full forward per head", t_hooks, flops=f_hooks, peak=peak))
        print(line("arithlens exact (restart at the layer)", t_exact, flops=f_exact, peak=peak))
        print(line(f"arithlens attribution (+{len(rescored)} re-scored)", t_fast, flops=f_fast, peak=peak))
        print(f"  exact vs paper {t_paper / t_exact:.1f}x, vs batched hooks {t_hooks / t_exact:.1f}x; "
              f"attribution vs paper {t_paper / t_fast:.1f}x, vs batched hooks {t_hooks / t_fast:.1f}x, vs exact {t_exact / t_fast:.1f}x")
        print(f"  per head x prompt: paper {1e3 * t_paper / (len(heads) * n):.2f} ms, batched hooks "
              f"{1e3 * t_hooks / (len(heads) * n):.2f} ms, exact {1e3 * t_exact / (len(heads) * n):.3f} ms")
        print(f"  same numbers: max |log-prob difference| exact vs batched hooks {diff:.1e}, vs paper {diff_paper:.1e}")
        print(f"  attribution vs exact: {fast.agreement(exact, k=args.k)}")
        print()
    print(f"benchmark wall time {time.perf_counter() - start:.0f} s (model loading included)")


if __name__ == "__main__":
    main()
