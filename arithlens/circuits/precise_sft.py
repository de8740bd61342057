"""Precise SFT: fine-tune only the key components — Zhang et al. (ICML 2024) §4.3.

The key heads and MLPs found by path patching are fine-tuned on arithmetic while every
other parameter stays frozen; the paper compares this with full fine-tuning (better
arithmetic at the same or lower cost to general ability). Three variants:

* ``precise`` — only the key components train;
* ``full`` — every parameter trains;
* ``random`` — random non-key components with the same numbers of heads and MLPs and,
  by rejection sampling, the same trainable-parameter count (the control).

A head's parameters are its slices of ``W_Q`` (its rows of ``q_proj``) and ``W_O`` (its
columns of ``o_proj``) and of ``W_K`` / ``W_V``. On GQA models a query head's K/V slice
is *shared by its KV group*: training a key head trains its group's K/V slice, which
also changes the other query heads of the group (counted once when two key heads share
it). An MLP's parameters are all of ``gate_proj``, ``up_proj``, ``down_proj`` (and
biases). Freezing is by gradient masks (``Tensor.register_hook`` multiplying the
gradient by a 0/1 mask) with AdamW at weight decay 0, so frozen entries stay
bit-identical. Llama-style modules (``q/k/v/o_proj``, ``gate/up/down_proj``) are
required.

The user's model is never touched: each variant trains a deep copy of the bridge
(which holds the Hugging Face model; compatibility mode has already folded the norms,
so the copy trains that equivalent parametrisation). Training data: 2-digit problems
(:func:`arithlens.data.lora_split`, all ops, templates 1–4), sequences ``prompt +
answer tokens`` with the loss (cross-entropy) on the answer tokens only, batches of
equal-length sequences (no padding), seeded. Evaluation: first-token and greedy
full-answer accuracy on the test split, and perplexity on a shipped sample of general
English prose (``arithlens/resources/general_text.txt``) — the paper's check that
general ability survives.

CPU-sized defaults (200 steps, batch 8, 1000 training cases, 200 test cases); on a GPU
use e.g. ``steps=2000, batch_size=32, n_train=18000, n_test=2000``.

Example::

    import arithlens
    from arithlens.circuits import PreciseSFT

    model = arithlens.load_model()
    result = PreciseSFT(top_n=10, steps=100).run(model)   # finds key nodes itself
    result.df          # accuracy / perplexity per variant
    result.models["precise"].predict(["23+45="])
"""

from __future__ import annotations

import copy
import importlib.resources
import random
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import einops
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from arithlens.circuits.path_patching import MLP, Node, PathPatchingResult, check_nodes, node_label
from arithlens.results import Result

VARIANTS = ("precise", "full", "random")
_ATTN = re.compile(r"layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)$")
_MLP = re.compile(r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)$")


def general_text() -> str:
    """The shipped general-English sample used for perplexity."""
    return importlib.resources.files("arithlens").joinpath("resources/general_text.txt").read_text(encoding="utf-8")


def _canonical(name: str) -> str:
    return name.replace("._original_component", "")


def component_masks(model: Any, bridge: torch.nn.Module, nodes: Sequence[Node]) -> dict[str, torch.Tensor]:
    """0/1 gradient masks ``{parameter name: mask}`` selecting the parameters of ``nodes``.

    Raises:
        ValueError: The model has no Llama-style projection modules for a node.
    """
    n_heads, n_kv, d_head = model.n_heads, model.n_kv_heads, model.d_head
    group = n_heads // n_kv
    params = dict(bridge.named_parameters())
    by_layer: dict[int, dict[str, tuple[str, str]]] = {}
    for name in params:
        c = _canonical(name)
        for pattern, kind in ((_ATTN, "attn"), (_MLP, "mlp")):
            m = pattern.search(c)
            if m:
                by_layer.setdefault(int(m.group(1)), {})[f"{kind}.{m.group(2)}.{m.group(3)}"] = (name, m.group(3))
    masks: dict[str, torch.Tensor] = {}

    def mask_of(name: str) -> torch.Tensor:
        if name not in masks:
            masks[name] = torch.zeros_like(params[name], dtype=torch.bool)
        return masks[name]

    for L, h in nodes:
        found = by_layer.get(L, {})
        if h == MLP:
            keys = [k for k in found if k.startswith("mlp.")]
            if not keys:
                raise ValueError(f"layer {L} has no gate/up/down_proj parameters: precise SFT needs a Llama-style MLP")
            for k in keys:
                mask_of(found[k][0])[...] = True
            continue
        g = h // group
        for proj, index in (("q", h), ("k", g), ("v", g), ("o", h)):
            for kind in ("weight", "bias"):
                key = f"attn.{proj}.{kind}"
                if key not in found:
                    if kind == "weight":
                        raise ValueError(f"layer {L} has no {proj}_proj weight: precise SFT needs Llama-style attention")
                    continue
                rows = slice(index * d_head, (index + 1) * d_head)
                mask = mask_of(found[key][0])
                if proj == "o" and kind == "weight":
                    mask[:, rows] = True  # o_proj is [d_model, heads*d_head]: a head owns columns
                elif proj != "o":
                    mask[rows] = True  # q/k/v_proj are [heads*d_head, d_model]: a head owns rows
    return masks


def n_params(masks: dict[str, torch.Tensor]) -> int:
    """Number of trainable entries selected by gradient masks."""
    return int(sum(int(m.sum()) for m in masks.values()))


@torch.no_grad()
def perplexity(model: Any, text: str, window: int = 128, max_tokens: int | None = 2048) -> float:
    """exp(mean next-token NLL) of ``text`` in non-overlapping windows of ``window`` tokens."""
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
        logits = model.bridge(chunk[:, :-1]).float()
        nll = F.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
        total, count = total + float(nll), count + chunk.shape[1] - 1
    return float(torch.exp(torch.tensor(total / count)))


@dataclass
class SFTResult(Result):
    """Precise vs full vs random fine-tuning.

    Attributes:
        df: One row per variant (``original`` first): ``variant, n_params, steps,
            final_loss, accuracy`` (first token), ``full_accuracy`` (greedy whole answer),
            ``perplexity`` (general text), ``accuracy_change``, ``perplexity_change``.
        models: Trained :class:`~arithlens.models.LensModel` per variant (copies).
        losses: Training loss per step per variant.
        nodes: Key nodes (``precise``); random_nodes: the control's nodes.
    """

    models: dict[str, Any] = field(default_factory=dict, repr=False)
    losses: dict[str, list[float]] = field(default_factory=dict, repr=False)
    nodes: list[Node] = field(default_factory=list)
    random_nodes: list[Node] = field(default_factory=list)

    def plot(self, **kwargs: Any) -> Any:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=3, subplot_titles=["test accuracy (first token)", "general-text perplexity", "training loss"])
        fig.add_trace(go.Bar(x=self.df["variant"], y=self.df["accuracy"], name="accuracy", showlegend=False), row=1, col=1)
        fig.add_trace(go.Bar(x=self.df["variant"], y=self.df["perplexity"], name="perplexity", showlegend=False), row=1, col=2)
        for name, loss in self.losses.items():
            fig.add_trace(go.Scatter(y=loss, mode="lines", name=name), row=1, col=3)
        fig.update_xaxes(title_text="step", row=1, col=3)
        fig.update_layout(title="Precise SFT vs full and random-component fine-tuning", **kwargs)
        return fig


class PreciseSFT:
    """Fine-tune key components only; compare with full and random-component tuning.

    Args:
        nodes: Key nodes; default the ``top_n`` of a patching result (computed on
            2-digit addition, template 3, when none is given).
        top_n: Number of key nodes.
        variants: Any of ``"precise"``, ``"full"``, ``"random"``.
        steps, lr, batch_size: Optimisation (AdamW, weight decay 0, constant lr).
        n_train, n_test: Sizes of the :func:`~arithlens.data.lora_split` used by default.
        seed: Seeds data order, the random control and initial RNG state.
        full_answer: Also greedy-decode whole answers on the test split.
        ppl_tokens: Tokens of the general text scored for perplexity.
        progress: Progress bars.
    """

    def __init__(
        self,
        nodes: Sequence[Node] | None = None,
        top_n: int = 10,
        variants: Sequence[str] = VARIANTS,
        steps: int = 200,
        lr: float = 1e-4,
        batch_size: int = 8,
        n_train: int = 1000,
        n_test: int = 200,
        seed: int = 0,
        full_answer: bool = True,
        ppl_tokens: int = 2048,
        progress: bool = True,
    ):
        bad = [v for v in variants if v not in VARIANTS]
        if bad or not variants:
            raise ValueError(f"variants {list(variants)!r}: each must be one of {VARIANTS}")
        for name, value in (("top_n", top_n), ("steps", steps), ("batch_size", batch_size), ("n_train", n_train), ("n_test", n_test), ("ppl_tokens", ppl_tokens)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.nodes, self.top_n, self.variants = nodes, top_n, tuple(variants)
        self.steps, self.lr, self.batch_size = steps, lr, batch_size
        self.n_train, self.n_test, self.seed = n_train, n_test, seed
        self.full_answer, self.ppl_tokens, self.progress = full_answer, ppl_tokens, progress

    def key_nodes(self, model: Any, patching: PathPatchingResult | None = None) -> list[Node]:
        if self.nodes is not None:
            return check_nodes(model, self.nodes)
        if patching is None:
            from arithlens import data
            from arithlens.circuits.path_patching import PathPatching

            cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3], forms=["numeral"], n_per_op=16, seed=self.seed)
            patching = PathPatching(progress=self.progress).run(model, cases)
        return patching.top(self.top_n)

    def run(
        self,
        model: Any,
        train: Any = None,
        test: Any = None,
        patching: PathPatchingResult | None = None,
        text: str | None = None,
    ) -> SFTResult:
        """Train each variant on ``train`` (default: the 2-digit LoRA split) and evaluate."""
        from arithlens import data
        from arithlens.evaluate import evaluate
        from arithlens.models import LensModel, load_model

        model = load_model(model)
        if train is None or test is None:
            tr, te = data.lora_split(model.tokenizer, n_train=self.n_train, n_test=self.n_test, seed=self.seed)
            train, test = train if train is not None else tr, test if test is not None else te
        text = general_text() if text is None else text
        key = self.key_nodes(model, patching)
        key_masks = component_masks(model, model.bridge, key)
        random_nodes = self._random_nodes(model, key, n_params(key_masks)) if "random" in self.variants else []
        sequences = _sequences(train)

        def score(lm: Any) -> dict:
            ev = evaluate(lm, test, full_answer=self.full_answer)
            row = {"accuracy": ev.accuracy, "perplexity": perplexity(lm, text, max_tokens=self.ppl_tokens)}
            row["full_accuracy"] = float(ev.cases["full_correct"].mean()) if "full_correct" in ev.cases else float("nan")
            return row

        rows = [{"variant": "original", "n_params": 0, "steps": 0, "final_loss": float("nan"), **score(model)}]
        models, losses = {}, {}
        for variant in self.variants:
            bridge = copy.deepcopy(model.bridge)
            if variant == "full":
                masks = None
            else:
                masks = component_masks(model, bridge, key if variant == "precise" else random_nodes)
            count = sum(p.numel() for p in bridge.parameters()) if masks is None else n_params(masks)
            loss_curve = self._train(bridge, masks, sequences, desc=f"SFT {variant}")
            lm = LensModel(bridge, model.tokenizer, name=f"{model.name}-sft-{variant}", batch_size=model.batch_size)
            models[variant], losses[variant] = lm, loss_curve
            rows.append({"variant": variant, "n_params": count, "steps": self.steps, "final_loss": float(sum(loss_curve[-10:]) / len(loss_curve[-10:])), **score(lm)})
        df = pd.DataFrame(rows)
        df["accuracy_change"] = df["accuracy"] - df["accuracy"].iloc[0]
        df["perplexity_change"] = df["perplexity"] - df["perplexity"].iloc[0]
        labels = {"precise": ", ".join(map(node_label, key)), "full": "all", "random": ", ".join(map(node_label, random_nodes))}
        df["nodes"] = [""] + [labels[v] for v in self.variants]
        return SFTResult(df=df, models=models, losses=losses, nodes=key, random_nodes=random_nodes)

    def _random_nodes(self, model: Any, key: list[Node], target: int) -> list[Node]:
        """Random non-key nodes, same head / MLP counts, same parameter count if one exists."""
        rng = random.Random(self.seed)
        others = [nd for nd in check_nodes(model, None) if nd not in key]
        heads = [nd for nd in others if nd[1] != MLP]
        mlps = [nd for nd in others if nd[1] == MLP]
        n_h = sum(1 for _, h in key if h != MLP)
        n_m = len(key) - n_h
        if n_h > len(heads) or n_m > len(mlps):
            raise ValueError(f"not enough non-key nodes for a random control of {n_h} heads and {n_m} MLPs")
        best, best_gap = None, None
        for _ in range(500):
            draw = rng.sample(heads, n_h) + rng.sample(mlps, n_m)
            gap = abs(n_params(component_masks(model, model.bridge, draw)) - target)
            if best_gap is None or gap < best_gap:
                best, best_gap = draw, gap
            if gap == 0:
                break
        return sorted(best, key=lambda nd: (nd[0], str(nd[1])))

    def _train(self, bridge: torch.nn.Module, masks: dict[str, torch.Tensor] | None, sequences: list[tuple[list[int], int]], desc: str) -> list[float]:
        """AdamW on the answer-token loss; ``masks`` (None: everything) select trainable entries."""
        torch.manual_seed(self.seed)
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
        opt = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=0.0)
        by_len: dict[int, list[int]] = {}
        for i, (ids, _) in enumerate(sequences):
            by_len.setdefault(len(ids), []).append(i)
        buckets = list(by_len.values())
        weights = [len(b) for b in buckets]
        rng = random.Random(self.seed)
        curve = []
        device = next(bridge.parameters()).device
        try:
            for _ in tqdm(range(self.steps), desc=desc, disable=not self.progress):
                bucket = rng.choices(buckets, weights=weights)[0]
                pick = [bucket[rng.randrange(len(bucket))] for _ in range(self.batch_size)]
                tokens = torch.tensor([sequences[i][0] for i in pick], device=device)
                starts = [sequences[i][1] for i in pick]
                loss = _answer_loss(bridge(tokens[:, :-1]), tokens, starts)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                curve.append(float(loss.detach()))
        finally:
            for h in handles:
                h.remove()
            for p in bridge.parameters():
                p.requires_grad_(False)
        return curve


def _sequences(train: Any) -> list[tuple[list[int], int]]:
    """``(prompt + answer ids, index of the first answer token)`` per training case."""
    out = []
    for case in train:
        answer = list(getattr(case, "answer_ids", ()) or ())
        if not answer:
            raise ValueError(f"training case {getattr(case, 'prompt', case)!r} has no answer tokens")
        prompt = [int(t) for t in case.input_ids]
        out.append((prompt + [int(t) for t in answer], len(prompt)))
    return out


def _answer_loss(
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
