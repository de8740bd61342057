"""Benchmark: CNA of every FFN neuron of one SmolLM2 case, original vs head-ablated.

Baseline: the reference code's way — for each neuron build the vector ``x_mid + m_k
fc2_k``, apply the final norm (frozen scale), unembed, log-softmax — on a few layers,
extrapolated to all layers (said in the output). arithlens: ``ComparativeNeuronScores``
(exact), all neurons of all layers, both sides. Both give the same numbers on the timed
layers (checked), and the ratio of times is printed.

Run: ``.venv/bin/python benchmarks/cna.py [--layers 2] [--device cpu]``
"""

from __future__ import annotations

import argparse
import time

import torch


def brute_force(model, acts, w, layers):
    """Per neuron: vector, final norm with the frozen scale, unembed, log-softmax (both sides)."""
    out = {}
    W_out = model.bridge.W_out
    for side, a in acts.items():
        imp = torch.empty(len(layers), model.d_mlp)
        s = a.scale[0].to(model.device)
        frozen = s.reshape(1, 1, 1)
        with model.hooked([("ln_final.hook_scale", lambda x, hook: frozen)]):
            for li, layer in enumerate(layers):
                x = a.resid_mid[0, layer].to(model.device)
                base = model.final_logits(x[None, None])[0, 0].log_softmax(-1)[w]
                for k in range(model.d_mlp):
                    v = x + a.post[0, layer, k].to(model.device) * W_out[layer, k]
                    imp[li, k] = model.final_logits(v[None, None])[0, 0].log_softmax(-1)[w] - base
        out[side] = imp
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=2, help="layers the brute force times (extrapolated)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--head", default="3.0", help="head ablated on the other side, L.H")
    p.add_argument("--prompt", default="3+5=")
    args = p.parse_args()

    import arithlens
    from arithlens.cna import ComparativeNeuronScores
    from arithlens.cna.importance import collect
    from arithlens.interventions import ZeroHead

    model = arithlens.load_model(device=args.device)
    L, H = map(int, args.head.split("."))
    print(f"{model!r}; prompt {args.prompt!r}, head {L}.{H} zeroed; torch threads {torch.get_num_threads()}")

    # Warm up both paths (first-call allocations, lazy weight stacking).
    ComparativeNeuronScores(intervention=ZeroHead(L, H), layers=[0], top_tokens=0).run(model, [args.prompt])

    t0 = time.perf_counter()
    res = ComparativeNeuronScores(intervention=ZeroHead(L, H), top_tokens=0).run(model, [args.prompt])
    t_fast = time.perf_counter() - t0

    acts = {"original": collect(model, [args.prompt]), "ablated": collect(model, [args.prompt], [ZeroHead(L, H)])}
    w = int(res.w[0])
    layers = list(range(model.n_layers - args.layers, model.n_layers))
    t0 = time.perf_counter()
    brute = brute_force(model, acts, w, layers)
    t_brute_part = time.perf_counter() - t0
    t_brute = t_brute_part * model.n_layers / len(layers)

    err = max(
        float((brute["original"] - res.importance[0, layers]).abs().max()),
        float((brute["ablated"] - res.importance_other[0, layers]).abs().max()),
    )
    assert err < 1e-4, f"arithlens and the brute force disagree by {err}"
    n = model.n_layers * model.d_mlp
    print(f"max |difference| on layers {layers}: {err:.2e} (same numbers)")
    print(f"brute force: {t_brute_part:.1f} s for {len(layers)} layers x 2 sides; "
          f"extrapolated to all {model.n_layers} layers ({n} neurons): {t_brute:.1f} s")  # fmt: skip
    print(f"arithlens:   {t_fast:.1f} s for all {n} neurons x 2 sides")
    print(f"speed-up:    {t_brute / t_fast:.1f}x")


if __name__ == "__main__":
    main()
