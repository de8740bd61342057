"""Fine-tuning pieces shared by LoRA (§5), pruning (§6.1), bias editing (§6.2) and precise SFT.

A [`LensModel`][arithlens.core.model.LensModel] wraps a transformers model whose weights the
bridge processed; these functions copy it back to a plain transformers model
([`hf_copy`][arithlens.analysis.tuning.hf_copy]) and wrap a trained one again
([`lens_from_hf`][arithlens.analysis.tuning.lens_from_hf]), resize a layer's FFN, save and
re-load per-layer FFN widths, count parameters, and compute the answer-token loss the
papers fine-tune on ([`answer_loss`][arithlens.analysis.tuning.answer_loss]) and the
general-text perplexity they report.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import json

import pathlib
from typing import Any, Mapping, Sequence

import math
import random

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from arithlens.core import validate
from arithlens.core.loading import load_model
from arithlens.core.model import LensModel


SIZES_KEY = "arithlens_intermediate_sizes"


# ---------------------------------------------------------------------------- model surgery
def canonical_state(model: Any) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict behind a LensModel, under the plain transformers names."""
    state: dict[str, torch.Tensor] = {}
    for key, value in model.bridge.original_model.state_dict().items():
        state.setdefault(key.replace("._original_component", ""), value)
    return state


def mlp_path(state: Mapping[str, Any], layer: int) -> str | None:
    suffix = f"layers.{layer}.mlp.gate_proj.weight"
    key = next((k for k in state if k == suffix or k.endswith("." + suffix)), None)
    return None if key is None else key[: -len(".gate_proj.weight")]


def check_gated(model: Any, layers: Sequence[int]) -> None:
    """Raise `ValueError` unless each of `layers` has a gated (Llama-style) MLP."""
    state = canonical_state(model)
    for layer in layers:
        if mlp_path(state, layer) is None:
            raise ValueError(f"layer {layer} of {model.name!r} ({model.writes.family}) has no gated MLP "
                             "(gate_proj/up_proj/down_proj): slicing neurons needs a Llama-style FFN")  # fmt: skip


def ffn_sizes(hf: Any, n_layers: int) -> list[int] | None:
    """Each layer's FFN width (rows of `up_proj`) of a transformers model; None without gated MLPs."""
    return _widths(dict(hf.named_parameters()), n_layers)


def layer_widths(model: Any) -> list[int]:
    """Each layer's FFN width of a [`LensModel`][arithlens.core.model.LensModel] (pruned layers are narrower)."""
    return _widths(canonical_state(model), model.n_layers) or [model.d_mlp] * model.n_layers


def _widths(state: Mapping[str, torch.Tensor], n_layers: int) -> list[int] | None:
    paths = [mlp_path(state, L) for L in range(n_layers)]
    return None if None in paths else [int(state[f"{p}.up_proj.weight"].shape[0]) for p in paths]


def set_ffn_width(hf: Any, layer: int, width: int, index: torch.Tensor | None = None) -> None:
    """Give layer `layer`'s gated MLP `width` neurons: the rows/columns `index` of the old weights, or fresh ones."""
    path = mlp_path(dict(hf.named_parameters()), layer)
    if path is None:
        raise ValueError(f"layer {layer} has no gated MLP (gate_proj/up_proj/down_proj) to resize")
    mlp = hf.get_submodule(path)
    for name, rows in (("gate_proj", True), ("up_proj", True), ("down_proj", False)):
        old = getattr(mlp, name)
        shape = (old.in_features, width) if rows else (width, old.out_features)
        new = torch.nn.Linear(*shape, bias=old.bias is not None, dtype=old.weight.dtype, device=old.weight.device)
        if index is not None:
            with torch.no_grad():
                new.weight.copy_(old.weight[index] if rows else old.weight[:, index])
                if old.bias is not None:
                    new.bias.copy_(old.bias[index] if rows else old.bias)
        setattr(mlp, name, new)


def hf_copy(model: Any) -> Any:
    """A plain transformers model computing what `model` computes (a [`LensModel`][arithlens.core.model.LensModel]).

    The bridge folded the norms into the weights in place; the copy holds that equivalent
    parametrisation (norm weights 1, an untied unembedding carrying the final norm's gain) and each layer's own
    FFN width, so it trains, merges and saves like any transformers model.
    """
    from transformers import AutoModelForCausalLM

    state = canonical_state(model)
    config = copy.deepcopy(model.bridge.original_model.config)
    config.tie_word_embeddings = False  # the folded final-norm gain is in the unembedding: it no longer equals the embedding
    dtype = next(v for v in state.values() if v.is_floating_point()).dtype
    fresh = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    for layer in range(model.n_layers):  # pruned layers keep their own width
        path = mlp_path(state, layer)
        if path is not None and state[f"{path}.up_proj.weight"].shape[0] != config.intermediate_size:
            set_ffn_width(fresh, layer, int(state[f"{path}.up_proj.weight"].shape[0]))
    wanted = fresh.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"cannot copy {model.name!r} into a plain transformers model: no weights for {missing[:3]}")
    extra_bias = state.get("lm_head.bias")
    if "lm_head.bias" not in wanted and extra_bias is not None and bool(extra_bias.any()):
        raise ValueError(f"{model.name!r} has an unembedding bias that its transformers class cannot hold")
    fresh.load_state_dict({k: state[k].detach().clone() for k in wanted})
    return fresh.to(model.device).eval()


def lens_from_hf(hf: Any, like: Any, name: str) -> Any:
    """Wrap a transformers model as a [`LensModel`][arithlens.core.model.LensModel] with `like`'s tokenizer and device."""

    bridge_name = getattr(like.cfg, "model_name", None)
    lm = LensModel.from_hf(hf, like.tokenizer, name=name, bridge_name=bridge_name, device=str(like.device))
    lm.batch_size = like.batch_size
    return lm


def fingerprint(model: Any) -> str:
    """A short hash of a model's weights (names, shapes, sums): which base an adapter belongs to."""
    digest = hashlib.sha1()
    for key, value in sorted(canonical_state(model).items()):
        digest.update(f"{key}{tuple(value.shape)}{float(value.double().sum()):.6g}".encode())
    return digest.hexdigest()[:16]


def n_parameters(model: Any) -> int:
    """Number of parameters of a [`LensModel`][arithlens.core.model.LensModel] (shared tensors counted once)."""
    return sum(int(p.numel()) for p in model.bridge.original_model.parameters())




def save_model(model: Any, path: str | pathlib.Path) -> pathlib.Path:
    """Save a (pruned, edited or fine-tuned) model and its tokenizer with `save_pretrained`.

    Models with per-layer FFN widths record them in `config.json`; re-load those with
    [`load_saved`][arithlens.analysis.tuning.load_saved] (the others also with `arithlens.load_model(path)`).
    """
    path = validate.output_dir(path, "path")
    hf = hf_copy(model)
    sizes = ffn_sizes(hf, model.n_layers)
    if sizes and len(set(sizes)) > 1:
        setattr(hf.config, SIZES_KEY, sizes)
    elif hasattr(hf.config, SIZES_KEY):
        delattr(hf.config, SIZES_KEY)
    hf.save_pretrained(str(path))
    model.tokenizer.save_pretrained(str(path))
    return path


def load_saved(path: str | pathlib.Path, device: str | None = None) -> Any:
    """Load a model written by [`save_model`][arithlens.analysis.tuning.save_model] as a [`LensModel`][arithlens.core.model.LensModel]."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


    path = pathlib.Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"path={str(path)!r} holds no saved model (config.json missing)")
    config = AutoConfig.from_pretrained(str(path))
    sizes = getattr(config, SIZES_KEY, None)
    if not sizes:
        return load_model(str(path), device=device)
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    for layer, width in enumerate(sizes):
        set_ffn_width(hf, layer, width)
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(path / f)))
    hf.load_state_dict(state)
    return LensModel.from_hf(hf, AutoTokenizer.from_pretrained(str(path)), name=path.name, device=device)


def general_text() -> str:
    """The shipped general-English sample used for perplexity."""
    return importlib.resources.files("arithlens").joinpath("resources/general_text.txt").read_text(encoding="utf-8")


@torch.no_grad()
def perplexity(model: Any, text: str, window: int = 128, max_tokens: int | None = 2048) -> float:
    """exp(mean next-token NLL) of `text` in non-overlapping windows of `window` tokens."""
    if not isinstance(text, str):
        raise ValueError(f"text={type(text).__name__} must be a string")
    window = validate.positive_int(window, "window")
    max_tokens = validate.optional_positive_int(max_tokens, "max_tokens")
    ids = model.encode(text)
    if max_tokens:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("perplexity needs a text of at least two tokens")
    total, count = 0.0, 0
    for s in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[s : s + window + 1]], device=model.device)
        if chunk.shape[1] < 2:
            break
        logits = validate.check_finite(model.bridge(chunk[:, :-1]).float(), "the model's logits")
        nll = F.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
        total, count = total + float(nll), count + chunk.shape[1] - 1
    return float(torch.exp(torch.tensor(total / count)))


def answer_sequences(train: Any) -> list[tuple[list[int], int]]:
    """`(prompt + answer ids, index of the first answer token)` per training case."""
    out = []
    for case in train:
        answer = list(getattr(case, "answer_ids", ()) or ())
        if not answer:
            raise ValueError(f"training case {getattr(case, 'prompt', case)!r} has no answer tokens")
        prompt = [int(t) for t in case.input_ids]
        out.append((prompt + [int(t) for t in answer], len(prompt)))
    return out


def answer_loss(
    logits: Float[torch.Tensor, "batch pos vocab"], tokens: Int[torch.Tensor, "batch seq"], starts: list[int]
) -> torch.Tensor:
    """Cross-entropy on the answer tokens only (position t predicts token t + 1)."""
    seq = tokens.shape[1]
    pos = torch.arange(seq - 1, device=tokens.device)
    mask = pos[None, :] >= (torch.tensor(starts, device=tokens.device)[:, None] - 1)
    flat = F.cross_entropy(
        einops.rearrange(logits.float(), "b p v -> (b p) v"), einops.rearrange(tokens[:, 1:], "b p -> (b p)"), reduction="none"
    )
    nll = einops.rearrange(flat, "(b p) -> b p", b=tokens.shape[0])
    return (nll * mask).sum() / mask.sum()


class LogitsOnly(torch.nn.Module):
    """A Hugging Face causal LM as `tokens -> logits` (the shape PreciseSFT's loop trains)."""

    def __init__(self, hf: torch.nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=tokens).logits


@torch.no_grad()
def answer_nll(module: torch.nn.Module, sequences: list[tuple[list[int], int]], batch_size: int = 32) -> float:
    """Mean cross-entropy per answer token of `(ids, answer start)` sequences, teacher-forced."""
    device = next(module.parameters()).device
    by_len: dict[int, list[int]] = {}
    for i, (ids, _) in enumerate(sequences):
        by_len.setdefault(len(ids), []).append(i)
    total, count = 0.0, 0
    for rows in by_len.values():
        for s in range(0, len(rows), batch_size):
            pick = rows[s : s + batch_size]
            tokens = torch.tensor([sequences[i][0] for i in pick], device=device)
            starts = [sequences[i][1] for i in pick]
            n_answer = sum(len(sequences[i][0]) - sequences[i][1] for i in pick)
            total += float(answer_loss(module(tokens[:, :-1]), tokens, starts)) * n_answer
            count += n_answer
    return total / max(count, 1)


@torch.enable_grad()  # training works also when called under torch.no_grad()
def train_on_answers(
    bridge: torch.nn.Module,
    masks: dict[str, torch.Tensor] | None,
    sequences: list[tuple[list[int], int]],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool = True,
    desc: str = "fine-tuning (steps)",
) -> list[float]:
    """AdamW on the answer-token loss ([`answer_loss`][arithlens.analysis.tuning.answer_loss]); returns the loss per step.

    `masks` (None: every parameter) select the trainable entries of each parameter; every
    batch holds `batch_size` sequences of one length (never padded), drawn by `seed`.
    """
    torch.manual_seed(seed)
    params = dict(bridge.named_parameters())
    handles = []
    trainable = []
    for name, p in params.items():
        on = masks is None or name in masks
        p.requires_grad_(on)
        if on:
            trainable.append(p)
            if masks is not None:
                keep = masks[name].to(p.dtype)
                handles.append(p.register_hook(lambda g, keep=keep: g * keep))
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    by_len: dict[int, list[int]] = {}
    for i, (ids, _) in enumerate(sequences):
        by_len.setdefault(len(ids), []).append(i)
    buckets = list(by_len.values())
    weights = [len(b) for b in buckets]
    rng = random.Random(seed)
    curve = []
    device = next(bridge.parameters()).device
    try:
        for step in tqdm(range(steps), desc=desc, disable=not progress):
            bucket = rng.choices(buckets, weights=weights)[0]
            pick = [bucket[rng.randrange(len(bucket))] for _ in range(batch_size)]
            tokens = torch.tensor([sequences[i][0] for i in pick], device=device)
            starts = [sequences[i][1] for i in pick]
            loss = answer_loss(bridge(tokens[:, :-1]), tokens, starts)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise validate.NonFiniteError(
                    f"{desc}: the training loss is {value} at step {step}; the run diverged (lower lr, now {lr})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.append(value)
    finally:
        for h in handles:
            h.remove()
        for p in bridge.parameters():
            p.requires_grad_(False)
    return curve
