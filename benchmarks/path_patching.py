"""Path / activation patching speed against the limit: a competent batched-hooks loop vs arithlens.

Zhang et al.'s Algorithm 1 on 2-digit "n1 plus n2 is" pairs (SmolLM2 by default), in one
process, on one device, for 1 pair and for 32 pairs, over the heads and MLPs of every
`--stride`-th layer:

* **batched hooks, path** — Algorithm 1 as a competent TransformerLens user writes it: the
  reference and counterfactual activations captured once, then per node one forward over
  all pairs in which every head's `z` and every MLP's output is set to its reference
  value, except the node's END output, taken from the counterfactual.
* **batched hooks, activation** — per node one forward over all pairs patching only that
  node's END output (TransformerLens's `generic_activation_patch`, batched over pairs).
* **arithlens** — `PathPatching(method=...)` exact, and with `estimate="attribution"`
  (gradient estimate of every node, the top `--rescore` re-scored exactly).

Printed: absolute times, speed-ups, achieved FLOP/s as a share of the matmul peak measured
in this process, the largest logit difference between arithlens and the loop, and the
attribution estimate's agreement with the exact result (Spearman, top-k overlap by |effect|).
"path" costs arithlens two forwards whatever the number of nodes, so its speed-up grows
with the nodes swept (`--stride 1`: all of them).

Defaults time the loop on 12 of the 60 nodes and extrapolate (labelled so), so the run
takes a few minutes on 2 CPU cores; `--loop-nodes 0` times it on every node.

    python benchmarks/path_patching.py [--pairs 1 32] [--stride 5] [--loop-nodes 12] [--device cuda] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _peak import describe_device, forward_flops, line, peak_flops, timed  # noqa: E402


def _capture(model, tokens):
    from arithlens.core import forward, names

    hooks = [f(L) for L in range(model.n_layers) for f in (names.z, names.mlp_out)]
    return forward.capture(model, tokens, hooks)


def batched_loop(model, ref, cf, target, nodes, method):
    """One forward per node over all pairs; returns the patched target logits [node, pair]."""
    from arithlens.core import names

    r, c = _capture(model, ref), _capture(model, cf)
    out = torch.empty(len(nodes), ref.shape[0], device=ref.device)
    with torch.no_grad():
        for k, node in enumerate(nodes):
            hooks = []
            for L in range(model.n_layers) if method == "path" else [node.layer]:
                zn, mn = names.z(L), names.mlp_out(L)

                def set_z(z, hook, zn=zn, L=L):
                    if method == "path":
                        z[:] = r[zn]
                    if L == node.layer and not node.is_mlp:
                        z[:, -1, node.head] = c[zn][:, -1, node.head]
                    return z

                def set_mlp(x, hook, mn=mn, L=L):
                    if method == "path":
                        x[:] = r[mn]
                    if L == node.layer and node.is_mlp:
                        x[:, -1] = c[mn][:, -1]
                    return x

                hooks += [(zn, set_z), (mn, set_mlp)]
            logits = model.bridge.run_with_hooks(ref, fwd_hooks=hooks)
            out[k] = logits[:, -1].float().gather(-1, target[:, None])[:, 0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[1, 32], help="pair counts to time")
    parser.add_argument("--stride", type=int, default=5, help="patch the nodes of every STRIDE-th layer (1: all)")
    parser.add_argument("--loop-nodes", type=int, default=12, help="nodes timed with the batched-hooks loop, then extrapolated (0: all)")
    parser.add_argument("--rescore", type=int, default=20)
    parser.add_argument("--k", type=int, default=10, help="top-k overlap size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the tiny random Llama (smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    import arithlens
    from arithlens import data
    from arithlens.circuits import counterfactual_pairs, PathPatching
    from arithlens.core.names import Component

    if args.tiny:
        from arithlens.testing import tiny_llama

        model = tiny_llama(device=args.device)
    else:
        model = arithlens.load_model(device=args.device)
    dtype = model.bridge.W_U.dtype
    peak = peak_flops(args.device, dtype)
    layers = list(range(0, model.n_layers, args.stride))
    nodes = [Component(L, h) for L in layers for h in [*range(model.n_heads), None]]
    loop_nodes = nodes if not args.loop_nodes or args.loop_nodes >= len(nodes) else nodes[:: -(-len(nodes) // args.loop_nodes)]
    extrapolated = "" if len(loop_nodes) == len(nodes) else f" (extrapolated from {len(loop_nodes)} nodes)"
    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3], forms=["numeral"], n_per_op=max(args.pairs))
    pool = counterfactual_pairs(model, cases)
    print(f"{model.name} on {describe_device(args.device)}, {dtype}; measured matmul peak {peak / 1e9:.1f} GFLOP/s (re-measured per run; the best reading is used)")
    print(f"{len(nodes)} nodes (heads and MLP of layers {layers[0]}..{layers[-1]} step {args.stride})\n")

    for n in args.pairs:
        rows = [i for i in range(len(pool)) if len(pool.reference_ids[i]) == len(pool.reference_ids[0])][:n]
        ref = torch.tensor([list(pool.reference_ids[i]) for i in rows], device=args.device)
        cf = torch.tensor([list(pool.counterfactual_ids[i]) for i in rows], device=args.device)
        pairs = counterfactual_pairs(model, [cases[i] for i in rows])
        target = pairs.target_ids.to(args.device)
        p = ref.shape[1]
        print(f"--- {n} pair(s) of {p} tokens, {len(nodes)} nodes ---")
        for method in ("path", "activation"):
            exact_run = PathPatching(method=method, nodes=nodes, batch_size=n, progress=False)
            fast_run = PathPatching(method=method, nodes=nodes, batch_size=n, estimate="attribution", rescore=args.rescore, progress=False)
            exact_run.run(model, pairs)  # warm up
            exact, t_exact = timed(lambda: exact_run.run(model, pairs), args.device)
            fast, t_fast = timed(lambda: fast_run.run(model, pairs), args.device)
            loop, t_loop = timed(lambda: batched_loop(model, ref, cf, target, loop_nodes, method), args.device)
            t_loop *= len(nodes) / len(loop_nodes)
            diff = float((exact.logit_p[[nodes.index(nd) for nd in loop_nodes]] - loop.cpu()).abs().max())
            peak = max(peak, peak_flops(args.device, dtype))  # re-measured: other load on the machine lowers a single reading

            f_capture = 2 * forward_flops(model, n, p)
            f_loop = f_capture + len(nodes) * forward_flops(model, n, p, logits_rows=n * p)
            if method == "path":
                f_exact = f_capture + len(nodes) * n * 2 * model.d_model * (model.d_head + 1)
                f_fast = f_exact
            else:
                f_exact = f_capture + sum(forward_flops(model, n, p, start_layer=nd.layer) for nd in nodes)
                rescored = [nd for nd, e in zip(fast.nodes, fast.exact.tolist()) if e]
                f_fast = 4 * forward_flops(model, n, p) + sum(forward_flops(model, n, p, start_layer=nd.layer) for nd in rescored)
            print(line(f"{method}: batched hooks, one forward per node{extrapolated}", t_loop, flops=f_loop, peak=peak))
            print(line(f"{method}: arithlens exact", t_exact, flops=f_exact, peak=peak, baseline=t_loop))
            print(line(f"{method}: arithlens attribution (+{int(fast.exact.sum())} re-scored)", t_fast, flops=f_fast, peak=peak, baseline=t_loop))
            print(f"  same numbers: max |logit difference| exact vs loop {diff:.1e}; peak used {peak / 1e9:.1f} GFLOP/s")
            print(f"  attribution vs exact: {fast.agreement(exact, k=args.k)}")
        print()
    print(f"benchmark wall time {time.perf_counter() - start:.0f} s (model loading included)")


if __name__ == "__main__":
    main()
