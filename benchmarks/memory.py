"""Peak memory of an analysis over 100 vs 1,000 cases: does it stream?

Issue 12 asks that analyses over large datasets stream: peak memory may grow with the
number of cases only by the per-case results they return. This benchmark measures the
peak resident set size (RSS) of [`NeuronImportance`][arithlens.cna.importance.NeuronImportance]
(exact, every neuron) and [`evaluate`][arithlens.analysis.evaluation.evaluate] (first token and
greedy full answer) on N cases for each N, and prints per analysis:

* `base MiB` — RSS just before the analysis (interpreter, torch, model, dataset);
* `peak MiB` — the highest RSS while it ran;
* `rise MiB` — peak − base, the analysis's own high-water mark;
* `result MiB` — the size of what it returned (tensors' bytes + the DataFrames' deep size);
* `cache MiB` — the clean forward pass's activations it left memoized on the model;
* then, between the smallest and the largest N, the rise per case, the result per case,
  and what is left: memory per case beyond the result and the cache (≈ 0 if it streams).

How it measures, and why this way: each (analysis, N) runs in a fresh Python subprocess,
so allocator caches and memoised forward passes of one measurement cannot leak into the
next. Inside it, after the model and dataset are built, the kernel's peak-RSS counter is
reset (`echo 5 > /proc/self/clear_refs`, Linux ≥ 4.0, which resets `VmHWM` and what
`resource.getrusage` reports as `ru_maxrss`), the analysis runs, and `VmHWM` is read.
RSS counts every page the process touches — torch's CPU allocator, numpy, pandas and
Python objects alike — whereas `tracemalloc` sees only allocations made through Python's
allocator and misses torch tensors entirely, so it would report almost nothing for a
forward pass. Where `clear_refs` cannot be written, the peak is `ru_maxrss` over the
whole process and `base` the RSS before the run, which over-states the rise when loading
peaked higher (flagged in the output).

On a tiny random Llama (default: 4 layers, d_model 64, d_mlp 256; 2-digit "a+b=" prompts,
all of one length) the four measurements, two at a time, take about a minute on 2 idle cores;
`--smollm2` measures SmolLM2-135M instead (slower: exact importance of 46,080 neurons per
case; use `--layers` to restrict it).

    python benchmarks/memory.py [--cases 100,1000] [--analyses importance,evaluate] [--smollm2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

MiB = 2**20


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak RSS to the current RSS; False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _nbytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes held by a result: tensors, arrays and DataFrames found in its attributes."""
    import numpy as np
    import pandas as pd
    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (pd.DataFrame, pd.Series)):
        return int(obj.memory_usage(deep=True).sum()) if isinstance(obj, pd.DataFrame) else int(obj.memory_usage(deep=True))
    if isinstance(obj, dict):
        return sum(_nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(_nbytes(v, seen) for v in vars(obj).values())
    return 0


def _child(analysis: str, n: int, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from arithlens import data

    if args.smollm2:
        import arithlens

        model = arithlens.load_model(device="cpu")
    else:
        from arithlens.testing import tiny_llama

        model = tiny_llama(n_layers=4, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=256)
    # One prompt length ("12+34="): every batch is full at both N, so a difference in peak
    # memory is what the analysis holds per case, not batches filling up (with many lengths
    # and few cases, batches are small and the per-batch logits grow with N until full).
    pool = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=(4,), forms=("numeral",), n_per_op=n)
    if n > len(pool):
        raise SystemExit(f"--cases {n} is more than the {len(pool)} cases of the 2-digit '+' set")
    cases = pool.sample(n, seed=0)
    layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
    if analysis == "importance":
        from arithlens.cna import NeuronImportance

        job = NeuronImportance(layers=layers, top_tokens=0, progress=False, memory_budget=args.budget)

        def work() -> Any:
            return job.run(model, cases)

    elif analysis == "evaluate":
        from arithlens.analysis.evaluation import evaluate

        def work() -> Any:
            return evaluate(model, cases)

    else:
        raise SystemExit(f"unknown analysis {analysis!r}")
    gc.collect()
    base = _status_kib("VmRSS")
    exact = _reset_peak()
    t0 = time.perf_counter()
    with torch.no_grad():
        result = work()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "analysis": analysis,
        "cases": n,
        "base": (base or 0) * 1024,
        "peak": (peak or 0) * 1024,
        "result": _nbytes(result),
        "cache": model._memo.nbytes,  # the clean forward's activations, memoized on the model
        "seconds": seconds,
        "exact_peak": exact,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="100,1000", help="comma-separated case counts (default 100,1000)")
    parser.add_argument("--analyses", default="importance,evaluate", help="importance, evaluate")
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M instead of the tiny model")
    parser.add_argument("--layers", default=None, help="importance: FFN layers to score, e.g. 29 (default all)")
    parser.add_argument("--budget", type=float, default=8e6, help="importance: memory_budget in bytes (default 8e6: on the tiny model a block then holds fewer than 100 cases, so both N run at the bounded working set)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per measurement (default 1)")
    parser.add_argument("--jobs", type=int, default=2, help="measurements run at once, each in its own process (default 2)")
    parser.add_argument("--child", nargs=2, metavar=("ANALYSIS", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print("RESULT " + json.dumps(_child(args.child[0], int(args.child[1]), args)))
        return

    counts = sorted({int(c) for c in args.cases.split(",")})
    analyses = [a.strip() for a in args.analyses.split(",") if a.strip()]
    model_name = "SmolLM2-135M-Instruct" if args.smollm2 else "tiny Llama (4 layers, d_model 64, d_mlp 256)"
    print(f"Peak RSS per analysis, each (analysis, N) in a fresh process; model: {model_name}; {args.threads} thread(s) each; "
          f"2-digit '+' prompts of one length; importance with memory_budget {args.budget / MiB:.0f} MiB")
    flags = (["--smollm2"] if args.smollm2 else []) + (["--layers", args.layers] if args.layers else [])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads)}
    jobs = [(analysis, n) for analysis in analyses for n in counts]
    running: list[tuple[tuple[str, int], subprocess.Popen]] = []
    done: dict[tuple[str, int], dict] = {}
    # Measurements run in separate processes, so running `--jobs` of them at once changes
    # no one's peak RSS (only their timings).
    while jobs or running:
        while jobs and len(running) < args.jobs:
            analysis, n = jobs.pop(0)
            cmd = [sys.executable, os.path.abspath(__file__), "--child", analysis, str(n), "--threads", str(args.threads), "--budget", str(args.budget), *flags]
            running.append(((analysis, n), subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)))
        key, proc = running.pop(0)
        out, err = proc.communicate()
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            for _, other in running:
                other.kill()
            sys.exit(f"measurement {key[0]} N={key[1]} failed:\n{err[-2000:]}")
        done[key] = json.loads(line[len("RESULT "):])
    rows = [done[(analysis, n)] for analysis in analyses for n in counts]
    for r in rows:
        note = "" if r["exact_peak"] else "  (peak since process start: clear_refs unavailable)"
        print(
            f"  {r['analysis']:<10} N={r['cases']:>5}: base {r['base'] / MiB:7.1f} MiB  peak {r['peak'] / MiB:7.1f} MiB  "
            f"rise {(r['peak'] - r['base']) / MiB:7.1f} MiB  result {r['result'] / MiB:6.2f} MiB  cache {r['cache'] / MiB:6.2f} MiB  "
            f"({r['seconds']:.1f} s){note}"
        )
    if len(counts) < 2:
        return
    print(f"\nGrowth from N={counts[0]} to N={counts[-1]} (per added case):")
    for analysis in analyses:
        lo = next(r for r in rows if r["analysis"] == analysis and r["cases"] == counts[0])
        hi = next(r for r in rows if r["analysis"] == analysis and r["cases"] == counts[-1])
        dn = hi["cases"] - lo["cases"]
        rise = ((hi["peak"] - hi["base"]) - (lo["peak"] - lo["base"])) / dn
        result = (hi["result"] - lo["result"]) / dn
        cache = (hi["cache"] - lo["cache"]) / dn
        beyond = rise - result - cache
        # Below 1 KiB per case is measurement noise here.
        if beyond < 1024:
            verdict = "streams: nothing per case beyond its result and the cache"
        else:
            verdict = f"does not stream strictly: {beyond / max(result, 1):.1f}x its per-case result more per case"
        print(
            f"  {analysis:<10} rise {rise / 1024:8.1f} KiB/case   result {result / 1024:6.1f}   cache {cache / 1024:6.1f}   "
            f"beyond both {beyond / 1024:6.1f} KiB/case: {verdict}"
        )


if __name__ == "__main__":
    main()
