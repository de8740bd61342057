"""Scale: wrapping a 1B-shaped model, and one prompt's CNA and head sweep on it.

A Llama-3.2-1B-shaped model (16 layers, d_model 2048, 32 query / 8 KV heads, d_mlp 8192,
vocabulary 128,256; about 1.5 B parameters as built, untied) is built with random weights in process (no hub),
saved with `save_pretrained`, and loaded with `arithlens.load_model(dir)` as a user would.
Reported, each stage in a fresh process so peaks do not mix:

* **wrap** — `load_model(dir)` wall time and the process's peak RSS against the weights'
  bytes (the issue's bar: ≤ 1.5×), and steady RSS after loading;
* **CNA** — exact `NeuronImportance` of one prompt on `--exact-layers` layers (all layers on
  a GPU; the full exact pass is d_mlp · n_layers · vocabulary projections) and fast mode on
  all layers, with the matmul FLOP/s of the exact kernel as a fraction of the peak measured
  in the same process;
* **heads** — a one-layer exact head sweep of one prompt.

Usage: `python benchmarks/scale.py [--size 1b|tiny] [--dtype float32|bfloat16] [--device cpu|cuda]`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=2048),
    "tiny": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=32000, max_position_embeddings=512),
}  # fmt: skip


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(size: str, directory: str) -> dict:
    """A random model of `size`'s shape, saved with a tokenizer of the right vocabulary."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    shape = SHAPES[size]
    cfg = AutoConfig.for_model("llama", tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, **shape)
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(cfg)
    hf = hf.to_empty(device="cpu")
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.02)
    hf.save_pretrained(directory)
    n_params = sum(p.numel() for p in hf.parameters())
    vocab = {chr(ord(" ") + i) if i < 95 else f"<t{i}>": i for i in range(shape["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<t95>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<t95>", bos_token="<t0>", eos_token="<t1>").save_pretrained(directory)
    return {"n_params": n_params, "weight_bytes": n_params * 4}


def stage(name: str, directory: str, dtype: str, device: str, exact_layers: int) -> dict:
    """One stage in this process (the parent runs each in a fresh one)."""
    import torch

    import arithlens
    from arithlens.cna import HeadAblation, NeuronImportance

    base = _rss_bytes()
    t0 = time.perf_counter()
    model = arithlens.load_model(directory, dtype=dtype, device=device)
    out = {"load_s": time.perf_counter() - t0, "peak_rss": _peak_bytes(), "base_rss": base, "steady_rss": _rss_bytes()}
    out["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.bridge.original_model.parameters())
    if name == "wrap":
        return out
    prompt = ["12+34="]
    if name == "cna":
        sys.path.insert(0, str(pathlib.Path(__file__).parent))
        from _peak import peak_flops  # same process: the fraction is honest

        layers = list(range(model.n_layers))[-exact_layers:]
        t0 = time.perf_counter()
        NeuronImportance(mode="exact", layers=layers, top_tokens=0).run(model, prompt)
        out["exact_s"] = time.perf_counter() - t0
        flops = 2 * len(layers) * model.d_mlp * model.d_model * model.d_vocab
        out["exact_layers"] = len(layers)
        out["exact_flops_per_s"] = flops / out["exact_s"]
        out["matmul_peak_flops_per_s"] = peak_flops(device, torch.float32)
        t0 = time.perf_counter()
        NeuronImportance(mode="fast", top_tokens=0).run(model, prompt)
        out["fast_s"] = time.perf_counter() - t0
    if name == "heads":
        t0 = time.perf_counter()
        HeadAblation(layers=[model.n_layers // 2], progress=False).run(model, prompt)
        out["head_sweep_s"] = time.perf_counter() - t0
    out["peak_rss_after"] = _peak_bytes()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1b", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--exact-layers", type=int, default=1, help="layers scored by the exact CNA kernel (GPU: all)")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.dir, args.dtype, args.device, args.exact_layers)))
        return
    root = pathlib.Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        info = build(args.size, tmp)
        print(f"{args.size}-shaped model: {info['n_params'] / 1e9:.2f} B parameters, built and saved in {time.perf_counter() - t0:.0f} s")
        for name in ("wrap", "cna", "heads"):
            cmd = [sys.executable, __file__, "--stage", name, "--dir", tmp, "--dtype", args.dtype, "--device", args.device,
                   "--exact-layers", str(args.exact_layers)]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
            if res.returncode:
                print(f"{name}: failed\n{res.stderr[-2000:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            w = r["weight_bytes"]
            line = (f"{name}: load {r['load_s']:.1f} s, peak RSS {r['peak_rss'] / 2**30:.2f} GiB = "
                    f"{(r['peak_rss'] - r['base_rss']) / w:.2f}x the weights above the interpreter "
                    f"({w / 2**30:.2f} GiB {args.dtype}), steady {(r['steady_rss'] - r['base_rss']) / w:.2f}x")  # fmt: skip
            if name == "cna":
                frac = r["exact_flops_per_s"] / r["matmul_peak_flops_per_s"]
                line += (f"; exact CNA of one prompt on {r['exact_layers']} layer(s) {r['exact_s']:.1f} s "
                         f"({r['exact_flops_per_s'] / 1e9:.1f} GFLOP/s, {frac:.0%} of the measured matmul peak), "
                         f"fast mode on every layer {r['fast_s']:.1f} s")  # fmt: skip
            if name == "heads":
                line += f"; exact head sweep of one layer, one prompt {r['head_sweep_s']:.1f} s"
            print(line)


if __name__ == "__main__":
    main()
