"""Path patching speed: the vectorised Algorithm 1 vs a literal per-node, per-pair loop.

Prints both times and their ratio (same process, same model, same pairs). Default: the
tiny random Llama; ``--smollm2`` uses the embedded SmolLM2 (loads in ~25 s) with a few pairs.

    python benchmarks/path_patching.py [--smollm2] [--pairs N]
"""

from __future__ import annotations

import argparse
import time

import torch

from arithlens import data
from arithlens.circuits import Counterfactual, PathPatching
from arithlens.circuits.path_patching import MLP, check_nodes


def literal(model, pairs, nodes):
    """One forward per node per pair: every node frozen at its reference output, node n from X_c."""
    out = torch.zeros(len(nodes), len(pairs))
    for i in range(len(pairs)):
        ref, cf = torch.tensor([pairs.reference_ids[i]]), torch.tensor([pairs.counterfactual_ids[i]])
        acts = {}
        for key, tokens in (("r", ref), ("c", cf)):
            hooks = []
            for L in range(model.n_layers):
                for name in (f"blocks.{L}.attn.hook_z", f"blocks.{L}.hook_mlp_out"):
                    hooks.append((name, lambda x, hook, k=(key, name): acts.__setitem__(k, x.detach().clone())))
            with model.hooked(hooks), torch.no_grad():
                model.bridge(tokens)
        for k, (L, h) in enumerate(nodes):
            hooks = []
            for L2 in range(model.n_layers):
                zn, mn = f"blocks.{L2}.attn.hook_z", f"blocks.{L2}.hook_mlp_out"

                def fz(z, hook, L2=L2, zn=zn):
                    z[:] = acts[("r", zn)]
                    if L2 == L and h != MLP:
                        z[:, -1, h] = acts[("c", zn)][:, -1, h]
                    return z

                def fm(x, hook, L2=L2, mn=mn):
                    x[:] = acts[("r", mn)]
                    if L2 == L and h == MLP:
                        x[:, -1] = acts[("c", mn)][:, -1]
                    return x

                hooks += [(zn, fz), (mn, fm)]
            with model.hooked(hooks), torch.no_grad():
                out[k, i] = model.bridge(ref)[0, -1, int(pairs.target_ids[i])]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smollm2", action="store_true")
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    if args.smollm2:
        import arithlens

        model = arithlens.load_model(device="cpu")
    else:
        from arithlens.testing import tiny_llama

        model = tiny_llama()
    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[4], forms=["numeral"], n_per_op=args.pairs)
    pairs = Counterfactual().run(model, cases)
    nodes = check_nodes(model, None)
    t0 = time.perf_counter()
    fast = PathPatching(progress=False).run(model, pairs)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = literal(model, pairs, nodes)
    t_slow = time.perf_counter() - t0
    err = float((fast.logit_p - slow).abs().max())
    print(f"{model.name}: {len(pairs)} pairs x {len(nodes)} nodes")
    print(f"vectorised path patching: {t_fast:.2f} s")
    print(f"literal per-node loop:     {t_slow:.2f} s")
    print(f"speed-up: {t_slow / t_fast:.1f}x (max |logit difference| {err:.2e})")


if __name__ == "__main__":
    main()
