"""A real restart: run blocks `L…` of the bridge from the residual stream entering block `L`.

TransformerLens 4.3's `bridge(resid, start_at_layer=L)` feeds `resid` to the Hugging Face
model as `inputs_embeds` and swaps it in at block `L`, but blocks `0..L-1` still execute
(their output is discarded), so a restart costs a full forward. This module skips them:

1. [`block_kwargs`][arithlens.core.forward.block_kwargs] asks the Hugging Face model for the
   keyword arguments it gives its blocks for a batch of this shape — rotary
   `position_embeddings`, the causal `attention_mask`, `position_ids` — by starting its
   forward on `inputs_embeds` and stopping it as block 0 is entered (no block runs, no
   embedding is computed; only the position / mask prologue);
2. [`run_blocks`][arithlens.core.forward.run_blocks] calls the bridge's blocks `L…` itself with
   those arguments. The blocks are the bridge's own `BlockBridge` modules, so every hook
   point of a block `>= L` fires as in a full forward (ablation hooks, caches), and no
   block `< L` runs;
3. [`logits_from`][arithlens.core.forward.logits_from] adds the final norm and unembedding
   (the bridge's `ln_final` and `unembed`, which are the modules the full forward calls),
   at the last position only by default.

The result equals a full forward with the same hooks to float precision (tests check
`<= 1e-5` on a GQA Llama for the first, a middle and the last layer, and that blocks
`< L` are never called). Gradients flow when called under `torch.enable_grad()`.

Models whose blocks take different arguments per layer (alternating sliding-window and
global attention: `config.layer_types` with more than one value, e.g. Gemma 2/3) fall
back to the bridge's own `start_at_layer`, which is correct but runs every block;
[`restarts_for_real`][arithlens.core.forward.restarts_for_real] says which path a model takes.

Two more per-batch passes that sweeps share, both on the model's device:
[`capture`][arithlens.core.forward.capture] (activations of one clean forward, stopped after the
last block needed) and [`gradients`][arithlens.core.forward.gradients] (one forward and one
backward pass: the activations and the gradient of a score with respect to them, for
attribution patching, [`arithlens.analysis.attribution`][arithlens.analysis.attribution]).

Example:
    ```python
    import torch
    from arithlens.core import forward, names
    from arithlens.testing import tiny_llama

    model = tiny_llama()
    tokens = torch.tensor([model.encode("12+7=")])
    acts = forward.capture(model, tokens, [names.resid_pre(2)], stop_at_layer=2)
    logits = forward.logits_from(model, acts[names.resid_pre(2)], 2)   # runs blocks 2.. only
    ```
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float, Int

from arithlens.core import validate
from arithlens.core import names



class _Entered(Exception):
    """Raised by the block-0 pre-hook once the block's inputs are known."""

    def __init__(self, kwargs: dict[str, Any]):
        super().__init__("block inputs captured")
        self.kwargs = kwargs


def restarts_for_real(model: "LensModel") -> bool:
    """Whether [`run_blocks`][arithlens.core.forward.run_blocks] skips the blocks before the restart.

    False for models whose layers take different attention masks (more than one
    `config.layer_types` value): those restart through the bridge's `start_at_layer`.
    """
    hf = getattr(model.bridge, "original_model", None)
    config = getattr(hf, "config", None)
    types = getattr(config, "layer_types", None)
    uniform = not types or len(set(types)) <= 1
    return uniform and hasattr(model.bridge, "blocks") and hf is not None


def block_kwargs(model: "LensModel", resid: Float[torch.Tensor, "batch pos d_model"]) -> dict[str, Any]:
    """The keyword arguments the Hugging Face model passes to its blocks for `resid`'s shape.

    Runs the model's forward on `inputs_embeds=resid` up to the entry of block 0 and stops
    there: the rotary embeddings, causal mask and position ids are the model's own for this
    batch size, length, dtype and device. No KV cache is created (`use_cache=False`).
    """
    bridge = model.bridge

    def enter(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        raise _Entered(dict(kwargs))

    handle = bridge.blocks[0].register_forward_pre_hook(enter, with_kwargs=True)
    try:
        with torch.no_grad():
            bridge(resid.detach(), use_cache=False)
    except _Entered as entered:
        found = entered.kwargs
    else:  # pragma: no cover - a bridge whose blocks are not called by its forward
        raise RuntimeError("the model's forward never entered block 0; cannot restart at a layer")
    finally:
        handle.remove()
    found["use_cache"] = False
    if "past_key_values" in found:
        found["past_key_values"] = None
    return found


def run_blocks(
    model: "LensModel",
    resid: Float[torch.Tensor, "batch pos d_model"],
    start: int,
    stop: int | None = None,
) -> Float[torch.Tensor, "batch pos d_model"]:
    """The residual stream leaving block `stop - 1`, running blocks `start..stop-1` only.

    Args:
        model: The model.
        resid: The residual stream entering block `start` (`blocks.{start}.hook_resid_pre`).
        start: First block to run.
        stop: One past the last block to run (default: every block to the end).

    Hooks attached to the model on blocks `start..stop-1` fire; blocks outside never run.
    """
    n = model.n_layers
    start = validate.integer(start, "start_at_layer", low=0, high=n - 1)
    stop = n if stop is None else validate.integer(stop, "stop", low=start + 1, high=n)
    kwargs = block_kwargs(model, resid)
    x = resid
    for block in model.bridge.blocks[start:stop]:
        out = block(x, **kwargs)
        x = out[0] if isinstance(out, tuple) else out
    return x


def capture(
    model: "LensModel",
    tokens: Int[torch.Tensor, "batch pos"],
    hook_names: Sequence[str],
    stop_at_layer: int | None = None,
) -> dict[str, torch.Tensor]:
    """Activations at `hook_names` (every position, on the model's device) from one clean forward.

    The forward stops before block `stop_at_layer` when that is below the number of
    layers (the bridge's own `stop_at_layer`), so blocks after the last hook never run;
    otherwise it runs to the logits of the last position only. The per-batch, on-device
    twin of [`LensModel.cache`][arithlens.core.model.LensModel.cache], for sweeps whose inner
    loops must not leave the device.
    """
    found: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Callable:
        def keep(x: torch.Tensor, hook: Any) -> None:
            found[name] = x.detach()

        return keep

    stop = stop_at_layer if stop_at_layer is not None and stop_at_layer < model.n_layers else None
    hooks = [(n, keeper(n)) for n in dict.fromkeys(hook_names)]
    with torch.no_grad(), model.hooked(hooks + (model.last_position_trim() if stop is None else [])):
        model.bridge(tokens, stop_at_layer=stop)
    return found


def gradients(
    model: "LensModel",
    tokens: Int[torch.Tensor, "batch pos"],
    hook_names: Sequence[str],
    score: Callable[[Float[torch.Tensor, "batch vocab"]], Float[torch.Tensor, "batch"]],
    first_layer: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Float[torch.Tensor, "batch"]]:
    """Activations at `hook_names` and the gradient of `score` with respect to them.

    One forward and one backward pass over `tokens` (the attribution-patching pass:
    Nanda; Kramár et al. 2024). `score` maps the last-position logits `[batch, vocab]`
    to one number per case (e.g. the target's log-probability); cases are independent
    sequences, so the gradient of the summed score is each case's own gradient.

    Gradients start at the residual stream entering block `first_layer` (every hook of
    blocks `>= first_layer` is downstream of it); the model's parameters are never
    differentiated (`torch.autograd.grad` with only the activations as inputs), so no
    `.grad` is written and the model is left untouched.

    Returns:
        `(activations, gradients, scores)`: detached tensors per hook name, and the
        `[batch]` scores of the clean pass.
    """

    saved: dict[str, torch.Tensor] = {}

    def start(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x.detach().requires_grad_(True)

    def keeper(name: str) -> Callable:
        def keep(x: torch.Tensor, hook: Any) -> torch.Tensor:
            saved[name] = x
            return x

        return keep

    wanted = list(dict.fromkeys(hook_names))
    hooks = [(names.resid_pre(first_layer), start)] + [(n, keeper(n)) for n in wanted] + model.last_position_trim()
    with torch.enable_grad(), model.hooked(hooks):
        logits = model.bridge(tokens)[:, -1]
        scores = score(logits)
        missing = [n for n in wanted if n not in saved or not saved[n].requires_grad]
        if missing:
            raise ValueError(f"no gradient reaches {missing[:3]}: hooks must be on blocks >= first_layer={first_layer}")
        grads = torch.autograd.grad(scores.sum(), [saved[n] for n in wanted])
    acts = {n: saved[n].detach() for n in wanted}
    return acts, dict(zip(wanted, (g.detach() for g in grads))), scores.detach()


_warned_fallback: set[int] = set()


def logits_from(
    model: "LensModel",
    resid: Float[torch.Tensor, "batch pos d_model"],
    start_at_layer: int,
    last_only: bool = True,
) -> Float[torch.Tensor, "batch ... vocab"]:
    """Logits from the residual stream entering block `start_at_layer`.

    Runs blocks `start_at_layer…` (see [`run_blocks`][arithlens.core.forward.run_blocks]), then
    the model's final norm and unembedding. With `last_only` (default) only the last
    position is normed and unembedded and the result is `[batch, vocab]`; otherwise
    `[batch, pos, vocab]`.
    """
    bridge = model.bridge
    start_at_layer = validate.integer(start_at_layer, "start_at_layer", low=0, high=model.n_layers - 1)
    if not restarts_for_real(model):
        if id(bridge) not in _warned_fallback:
            _warned_fallback.add(id(bridge))
            warnings.warn(
                "this model's layers take different attention masks (config.layer_types); restarting "
                "through the bridge's start_at_layer, which runs every block",
                stacklevel=2,
            )

        def keep_last(x: torch.Tensor, hook: Any) -> torch.Tensor:
            return x[:, -1:] if last_only else x

        with model.hooked([("ln_final.hook_in", keep_last)]):
            logits = bridge(resid, start_at_layer=start_at_layer)
        return logits[:, -1] if last_only else logits
    x = run_blocks(model, resid, start_at_layer)
    if last_only:
        x = x[:, -1:]
    logits = bridge.unembed(bridge.ln_final(x))
    return logits[:, -1] if last_only else logits
