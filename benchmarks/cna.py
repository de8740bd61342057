"""Benchmark: exact CNA against the vectorized baseline a competent user would write.

The comparison of issue 12: every FFN neuron's §4.1 importance on both sides of
`ZeroHead(L, H)` (original and head-ablated, the other side read with the original run's
final-norm scale, as the paper's code), for 1 and for 32 prompts.

* **baseline** — one matmul per layer per side per case, vectorized over the layer's neurons:
  `log_softmax(((x_mid + m[:, None] * W_out[l]) / σ) @ W_U + b_U)[:, w]` minus the same at
  `x_mid`. It recomputes the `[d_mlp, vocab]` logits for every case and side.
* **arithlens** — [`exact_neuron_scores`][arithlens.cna.scores.exact_neuron_scores] (what
  `ComparativeNeuronScores(mode="exact")` runs): the projections `W_out[l] @ W_U` once per
  call for every case and both sides, then a log-sum-exp per (case, side, neuron) — direct
  for few pairs, by the bounded series for many. Also timed *warm*: with the projections
  kept from an earlier call (`CNAAnalysis(keep_projections=True)`).

Both are timed on the same activations (the forward passes are not timed) over the last
`--layers` layers (every layer has the same shape, so per-layer times extrapolate); the
baseline over `--baseline-cases` cases, extrapolated linearly to the case count (it is a
per-case loop). The best of `--repeat` alternating runs is kept (the machine may be shared).
Numbers are checked equal (max |difference| ≤ 1e-4) on the cases the baseline computed.

Each line also gives the achieved matmul FLOP/s — the FLOPs of the matrix products each
method runs, over its wall time — as a fraction of the peak measured in the same process
(a large float32 matmul, [`_peak.peak_flops`]).

Run: `python benchmarks/cna.py [--cases 1,32] [--layers 2] [--baseline-cases 2] [--repeat 2] [--device cpu]`
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))


def _peak(device: str) -> float:
    try:
        from _peak import peak_flops
    except ImportError:  # pragma: no cover - the shared helper is missing: measure here
        a = torch.randn(2048, 2048, device=device)
        best = min(_timed(lambda: a @ a, device)[1] for _ in range(5))
        return 2.0 * 2048**3 / best
    return peak_flops(device, torch.float32)


def _timed(fn, device: str):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


@torch.no_grad()
def baseline(model, sides, layers, n_cases):
    """The vectorized baseline: one `[d_mlp, vocab]` logits matmul per layer, side and case."""
    from arithlens.cna.scores import layer_w_out

    from arithlens.core.readout import Readout

    ro = Readout(model)  # W_U with the final norm's gain folded in, as the paper's readout
    W_U, b_U = ro.W_U.float(), ro.b_U.float()
    out = []
    for side in sides:
        imp = torch.empty(n_cases, len(layers), model.d_mlp)
        for li, L in enumerate(layers):
            W_out = layer_w_out(model, L).float()
            x_all, m_all = side.at("resid_mid", L).to(W_U.device), side.at("post", L).to(W_U.device)
            for i in range(n_cases):
                x, m, s, w = x_all[i], m_all[i], float(side.scale[i]), int(side.w[i])
                lp = (((x + m[:, None] * W_out) / s) @ W_U + b_U).log_softmax(-1)[:, w]
                imp[i, li] = (lp - ((x / s) @ W_U + b_U).log_softmax(-1)[w]).cpu()
        out.append(imp)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="1,32", help="case counts, comma-separated (default 1,32)")
    p.add_argument("--layers", type=int, default=2, help="last layers timed (default 2)")
    p.add_argument("--baseline-cases", type=int, default=2, help="cases the baseline computes (extrapolated; default 2)")
    p.add_argument("--repeat", type=int, default=2, help="alternating runs; the best is kept (default 2)")
    p.add_argument("--head", default="3.0", help="head zeroed on the other side, L.H (default 3.0)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import arithlens
    from arithlens.cna.inputs import Activations, neuron_hooks
    from arithlens.cna.projections import ProjectionCache
    from arithlens.cna.scores import exact_neuron_scores
    from arithlens.core.interventions import ZeroHead

    model = arithlens.load_model(device=args.device)
    L_h, H = map(int, args.head.split("."))
    layers = list(range(model.n_layers - args.layers, model.n_layers))
    peak = _peak(args.device)
    d, V, N = model.d_model, model.d_vocab, model.d_mlp
    print(f"{model!r}; torch threads {torch.get_num_threads()}; head {L_h}.{H} zeroed; layers timed {layers} "
          f"of {model.n_layers}; measured float32 matmul peak {peak / 1e9:.0f} GFLOP/s")  # fmt: skip
    prompts = [f"{a}+{b}=" for a in range(1, 10) for b in range(1, 10)]
    for n in [int(x) for x in args.cases.split(",")]:
        cases = prompts[:n]
        hooks = neuron_hooks(layers)
        clean = model.cache(cases, names=hooks, memo=False)
        ablated = model.cache(cases, names=hooks, interventions=[ZeroHead(L_h, H)])
        sides = [Activations(clean), Activations(ablated, clean.scoring_ids, clean.final_scale)]
        nb = min(n, args.baseline_cases)
        stats: dict = {}
        t_base, t_ours, t_warm = float("inf"), float("inf"), float("inf")
        kept = ProjectionCache(max_bytes=64e9)
        exact_neuron_scores(model, sides, layers[:1], projections=kept)  # warm-up, and fills layer 0's projections
        for _ in range(args.repeat):
            ref, t = _timed(lambda: baseline(model, sides, layers, nb), args.device)
            t_base = min(t_base, t * n / nb)
            stats.clear()
            ours, t = _timed(lambda: exact_neuron_scores(model, sides, layers, stats=stats), args.device)
            t_ours, flops = min(t_ours, t), stats["matmul_flops"]
            exact_neuron_scores(model, sides, layers, projections=kept)  # make sure every timed layer is kept
            warm_stats: dict = {}
            warm, t = _timed(lambda: exact_neuron_scores(model, sides, layers, projections=kept, stats=warm_stats), args.device)
            t_warm = min(t_warm, t)
        err = max(float((r - o.importance[:nb]).abs().max()) for r, o in zip(ref, ours))
        err_warm = max(float((a.importance - b.importance).abs().max()) for a, b in zip(ours, warm))
        assert err <= 1e-4 and err_warm <= 1e-4, f"arithlens and the baseline disagree by {err:.2e} / {err_warm:.2e}"
        base_flops = n * 2 * len(layers) * (2 * N * d * V + 2 * d * V)
        bound = max(o.bound for o in ours)
        per = f"per layer, {n} case{'s' * (n != 1)} x 2 sides"
        print(f"\n{n} prompt{'s' * (n != 1)}: max |arithlens - baseline| {err:.1e} nats (series bound {bound:.0e}); times {per}:")
        rows = [
            ("baseline (vectorized per layer)", t_base, base_flops),
            ("arithlens exact, cold", t_ours, flops),
            ("arithlens exact, projections kept", t_warm, warm_stats.get("matmul_flops", 0.0)),
        ]
        for name, t, f in rows:
            t_layer = t / len(layers)
            print(f"  {name:36s} {t_layer:8.3f} s  ({t_layer / n:7.3f} s per case)  x{t_base / t:6.1f}  "
                  f"{f / t / 1e9:6.1f} GFLOP/s = {f / t / peak:5.1%} of peak")  # fmt: skip
        print(f"  all {model.n_layers} layers, cold: baseline ~{t_base / len(layers) * model.n_layers:.0f} s, "
              f"arithlens ~{t_ours / len(layers) * model.n_layers:.0f} s (extrapolated)")  # fmt: skip


if __name__ == "__main__":
    main()
