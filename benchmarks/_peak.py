"""Shared benchmark helpers: the machine's measured matmul peak, timers, FLOP counts, report lines.

Every benchmark states the limit it runs against: `peak_flops` times a large matmul in
the same process, on the same device and in the same dtype as the model, and
`fraction` says what share of that peak a method achieved, from the FLOPs its forward
passes must do (`forward_flops`: the linear layers, the attention products and the
unembedding rows actually computed). A method far below the peak is overhead-bound (Python,
hooks, small matmuls); one near it can only get faster by doing less work.

Example:
    ```python
    import torch
    from _peak import describe_device, peak_flops

    print(describe_device("cpu"), f"{peak_flops('cpu', torch.float32) / 1e9:.0f} GFLOP/s")
    ```
"""

from __future__ import annotations

import resource
import time
from typing import Any, Callable

import torch


def describe_device(device: str | torch.device) -> str:
    """A one-line description of the device, saying so when no GPU is available."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    gpu = "no GPU available" if not torch.cuda.is_available() else "a GPU is available but not used"
    return f"cpu, {torch.get_num_threads()} threads ({gpu})"


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work (timings must include it)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: str | torch.device) -> tuple[Any, float]:
    """`(fn(), seconds)` with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def peak_flops(device: str | torch.device, dtype: torch.dtype, size: int | None = None, repeat: int = 10) -> float:
    """Best FLOP/s of `repeat` square matmuls of `size` (default 2048 on CPU, 8192 on GPU) in `dtype`."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm up (allocations, kernel selection)
    best = float("inf")
    for _ in range(repeat):
        _, seconds = timed(lambda: a @ b, device)
        best = min(best, seconds)
    return 2.0 * size**3 / best


def block_flops_per_token(model: Any, context: float) -> float:
    """FLOPs of one transformer block for one token attending to `context` positions."""
    cfg = model.cfg
    d, d_head = model.d_model, model.d_head
    q_o = 2 * d * model.n_heads * d_head
    k_v = 2 * d * model.n_kv_heads * d_head
    gated = bool(getattr(cfg, "gated_mlp", False)) or "gate" in getattr(cfg, "act_fn", "") or hasattr(model.bridge, "W_gate")
    mlp = (3 if gated else 2) * d * model.d_mlp
    attention = 2 * model.n_heads * d_head * context  # QK^T and pattern @ V
    return 2.0 * (q_o + k_v + mlp) + 2.0 * attention


def forward_flops(model: Any, n_seqs: int, seq_len: int, start_layer: int = 0, logits_rows: int | None = None) -> float:
    """FLOPs of a forward over `n_seqs` sequences of `seq_len` tokens from block `start_layer`.

    `logits_rows` unembedding rows are counted (default: one per sequence, the last
    position only; pass `n_seqs * seq_len` for a forward that unembeds every position).
    """
    context = (seq_len + 1) / 2  # causal attention: on average half the prefix
    blocks = (model.n_layers - start_layer) * n_seqs * seq_len * block_flops_per_token(model, context)
    rows = n_seqs if logits_rows is None else logits_rows
    return blocks + 2.0 * rows * model.d_model * model.d_vocab


def weight_bytes(model: Any) -> int:
    """Bytes of the model's own weights (the Hugging Face module the bridge wraps)."""
    return sum(p.numel() * p.element_size() for p in model.bridge.original_model.parameters())


def memory_line(model: Any, device: str | torch.device, note: str = "") -> str:
    """`'peak memory X GiB = Y× the weights (Z GiB)'`: the device's peak allocation on CUDA, the
    process's peak RSS on CPU (interpreter and libraries included)."""
    device = torch.device(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    w = weight_bytes(model)
    what = "peak CUDA allocation" if device.type == "cuda" else "peak RSS"
    return f"{what} {peak / 2**30:.2f} GiB = {peak / w:.1f}x the weights ({w / 2**30:.2f} GiB){note}"


def fraction(flops: float, seconds: float, peak: float) -> str:
    """`'x GFLOP/s = y % of peak'`."""
    rate = flops / seconds
    return f"{rate / 1e9:8.1f} GFLOP/s = {100 * rate / peak:5.1f} % of peak"


def line(label: str, seconds: float, *, flops: float | None = None, peak: float | None = None, baseline: float | None = None, note: str = "") -> str:
    """One report line: absolute time, speed-up over `baseline` seconds, achieved FLOP/s and share of peak."""
    parts = [f"{label:<58} {seconds:9.3f} s"]
    if baseline is not None:
        parts.append(f"{baseline / seconds:7.1f}x")
    if flops is not None and peak is not None:
        parts.append(fraction(flops, seconds, peak))
    if note:
        parts.append(note)
    return "  ".join(parts)
