"""Precise SFT: fine-tune only the key components — Zhang et al. (ICML 2024) §4.3.

The key heads and MLPs found by path patching are fine-tuned on arithmetic while every
other parameter stays frozen; the paper compares this with full fine-tuning (better
arithmetic at the same or lower cost to general ability). Three variants:

* `precise` — only the key components train;
* `full` — every parameter trains;
* `random` — random non-key components with the same numbers of heads and MLPs and, by
  rejection sampling, the same trainable-parameter count (the control).

A head's parameters are its slices of `W_Q` (its rows of `q_proj`) and `W_O` (its
columns of `o_proj`) and of `W_K` / `W_V`. On GQA models a query head's K/V slice is
*shared by its KV group*: training a key head trains its group's K/V slice, which also
changes the other query heads of the group (counted once when two key heads share it).
An MLP's parameters are all of `gate_proj`, `up_proj`, `down_proj` (and biases).
Freezing is by gradient masks (`Tensor.register_hook` multiplying the gradient by a 0/1
mask) with AdamW at weight decay 0, so frozen entries stay bit-identical. Llama-style
modules (`q/k/v/o_proj`, `gate/up/down_proj`) are required.

The user's model is never touched: each variant trains a deep copy of the bridge (which
holds the Hugging Face model; compatibility mode has already folded the norms, so the
copy trains that equivalent parametrisation). Training data: 2-digit problems
([`lora_split`][arithlens.data.lora_split], all ops, templates 1–4), sequences
`prompt + answer tokens` with the loss (cross-entropy) on the answer tokens only, batches
of equal-length sequences (no padding), seeded. A non-finite training loss (too large a
learning rate) stops with [`NonFiniteError`][arithlens.core.validate.NonFiniteError].
EvaluationResult: first-token and greedy full-answer accuracy on the test split, and perplexity
on a shipped sample of general English prose (`arithlens/resources/general_text.txt`) —
the paper's check that general ability survives.

CPU-sized defaults (200 steps, batch 8, 1000 training cases, 200 test cases); on a GPU
use e.g. `steps=2000, batch_size=32, n_train=18000, n_test=2000`.

Example:
    ```python
    import arithlens
    from arithlens.circuits import PreciseSFTSettings, precise_sft

    model = arithlens.load_model()
    result = precise_sft(model, PreciseSFTSettings(k=10, steps=100))   # finds the key nodes itself
    result.table()                                     # accuracy / perplexity per variant
    result.models["precise"].predict(["23+45="])
    ```
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any, Sequence, ClassVar

import pandas as pd

from arithlens.core import validate
from arithlens.core.names import all_components, parse_components, top_components
from arithlens.circuits.components import component_masks, n_params
from arithlens.core.names import Component
from arithlens.analysis.results import Result, percent
from arithlens import data
from arithlens.circuits.path_patching import PathPatching
from arithlens.analysis.evaluation import evaluate
from arithlens.core.loading import load_model
from arithlens.core.model import LensModel
from arithlens.analysis.tuning import train_on_answers
from arithlens.analysis.tuning import answer_sequences
from arithlens.analysis.tuning import general_text
from arithlens.analysis.tuning import perplexity

VARIANTS = ("precise", "full", "random")


def _node_order(node: Component) -> tuple[int, bool, int]:
    """Layer order, heads before the layer's MLP."""
    return (node.layer, node.is_mlp, node.head or 0)


@dataclass
class PreciseSFTResult(Result):
    """Precise vs full vs random fine-tuning.

    Attributes:
        df: One row per variant (`original` first): `variant, n_params, steps,
            final_loss, accuracy` (first token), `full_accuracy` (greedy whole answer),
            [`perplexity`][arithlens.analysis.tuning.perplexity] (general text), `accuracy_change`, `perplexity_change`, `nodes`.
        models: Trained [`LensModel`][arithlens.core.model.LensModel] per variant (copies) (not saved by `save`: a loaded result has none).
        losses: Training loss per step per variant.
        nodes: Key nodes (`precise`).
        random_nodes: The control's nodes (`random`).
    """

    models: dict[str, Any] = field(default_factory=dict, repr=False)

    unsaved_fields: ClassVar[tuple[str, ...]] = ("models",)
    """`save` leaves the live models out (a loaded result has none)."""
    losses: dict[str, list[float]] = field(default_factory=dict, repr=False)
    nodes: list[Component] = field(default_factory=list)
    random_nodes: list[Component] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """The paper's comparison: one row per variant, accuracies in %, perplexity and their changes."""
        cols = ["variant", "n_params", "accuracy", "full_accuracy", "accuracy_change", "perplexity", "perplexity_change"]
        out = self.df[cols].copy()
        for c in ("accuracy", "full_accuracy", "accuracy_change"):
            out[c] = out[c].map(percent)
        return out.set_index("variant")

    def plot(self, **kwargs: Any) -> Any:
        """Test accuracy and general-text perplexity per variant, and the training loss curves."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=3, subplot_titles=["test accuracy (first token)", "general-text perplexity", "training loss"])
        fig.add_trace(go.Bar(x=self.df["variant"], y=self.df["accuracy"], name="accuracy", showlegend=False), row=1, col=1)
        fig.add_trace(go.Bar(x=self.df["variant"], y=self.df["perplexity"], name="perplexity", showlegend=False), row=1, col=2)
        for name, loss in self.losses.items():
            fig.add_trace(go.Scatter(y=loss, mode="lines", name=name), row=1, col=3)
        fig.update_xaxes(title_text="variant", row=1, col=1)
        fig.update_xaxes(title_text="variant", row=1, col=2)
        fig.update_xaxes(title_text="step", row=1, col=3)
        fig.update_yaxes(title_text="accuracy", range=[0, 1], row=1, col=1)
        fig.update_yaxes(title_text="perplexity", row=1, col=2)
        fig.update_yaxes(title_text="cross-entropy on answer tokens", row=1, col=3)
        fig.update_layout(title="Precise SFT vs full and random-component fine-tuning", **kwargs)
        return fig


@dataclass(frozen=True, kw_only=True)
class PreciseSFTSettings:
    """How [`precise_sft`][arithlens.circuits.precise_sft.precise_sft] fine-tunes (Zhang et al. §4.3).

    Args:
        nodes: Key nodes ([`Component`][arithlens.core.names.Component]s, `"L.H"` / `"MLP L"` strings or
            pairs); default the top `k` of a patching result (computed on Zhang et al.'s
            dataset, [`data.zhang`][arithlens.data.zhang], when none is given).
        k: Number of key nodes taken from the patching result.
        variants: Any of `"precise"`, `"full"`, `"random"`.
        steps: Optimisation steps (AdamW, weight decay 0, constant learning rate).
        lr: Learning rate.
        batch_size: Sequences per step.
        n_train: Training cases of the default [`lora_split`][arithlens.data.lora_split].
        n_test: Test cases of the default split.
        seed: Seeds data order, the random control and initial RNG state.
        full_answer: Also greedy-decode whole answers on the test split.
        ppl_tokens: Tokens of the general text scored for perplexity.
        progress: Progress bars.
    """

    nodes: Sequence[Any] | None = None
    k: int = 10
    variants: Sequence[str] = VARIANTS
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 8
    n_train: int = 1000
    n_test: int = 200
    seed: int = 0
    full_answer: bool = True
    ppl_tokens: int = 2048
    progress: bool = True

    def __post_init__(self) -> None:
        variants = [self.variants] if isinstance(self.variants, str) else self.variants
        if not isinstance(variants, Sequence) or not variants:
            raise ValueError(f"variants={variants!r} must list one or more of {VARIANTS}")
        object.__setattr__(self, "variants", tuple(validate.choice(v, "variants item", VARIANTS) for v in variants))
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants={list(variants)!r} has repeated values")
        if self.nodes is not None:
            object.__setattr__(self, "nodes", tuple(parse_components(self.nodes, "nodes")))
        for name in ("k", "steps", "batch_size", "n_train", "n_test", "ppl_tokens"):
            object.__setattr__(self, name, validate.positive_int(getattr(self, name), name))
        object.__setattr__(self, "lr", validate.positive_number(self.lr, "lr"))
        object.__setattr__(self, "seed", validate.integer(self.seed, "seed"))
        object.__setattr__(self, "full_answer", validate.boolean(self.full_answer, "full_answer"))
        object.__setattr__(self, "progress", validate.boolean(self.progress, "progress"))

    def key_nodes(self, model: Any, patching: Any | None = None) -> list[Component]:
        """`nodes`, or the top `k` of `patching` (path patching on Zhang et al.'s dataset when `None`)."""
        if self.nodes is not None:
            return [nd.check(model) for nd in self.nodes]
        if patching is None:

            cases = data.zhang(model.tokenizer, n_per_op=16, seed=self.seed)
            patching = PathPatching(progress=self.progress).run(model, cases)
        return top_components(patching, self.k)

    def random_nodes(self, model: Any, key: list[Component], target: int) -> list[Component]:
        """Random non-key nodes, same head / MLP counts, same parameter count if one exists."""
        rng = random.Random(self.seed)
        others = [nd for nd in all_components(model) if nd not in key]
        heads = [nd for nd in others if not nd.is_mlp]
        mlps = [nd for nd in others if nd.is_mlp]
        n_h = sum(1 for nd in key if not nd.is_mlp)
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
        return sorted(best, key=_node_order)


def precise_sft(
    model: Any,
    settings: PreciseSFTSettings | None = None,
    *,
    train: Any = None,
    test: Any = None,
    patching: Any | None = None,
    text: str | None = None,
) -> PreciseSFTResult:
    """Zhang et al. §4.3: fine-tune the key components only, against full and random-component
    fine-tuning — a procedure. Each variant trains on `train` (default: the 2-digit LoRA split)
    and is evaluated on `test`.

    Args:
        model: The model (never modified: each variant trains a copy).
        settings: How to train ([`PreciseSFTSettings`][arithlens.circuits.precise_sft.PreciseSFTSettings]; default ones).
        train: Training cases with answers (default the [`lora_split`][arithlens.data.lora_split] train set).
        test: Test cases (default the split's test set).
        patching: A path-patching result to take the key nodes from (when `nodes` is not set).
        text: General text for perplexity (default the shipped sample).
    """
    settings = settings or PreciseSFTSettings()
    if not isinstance(settings, PreciseSFTSettings):
        raise ValueError(f"settings={settings!r} must be PreciseSFTSettings")

    model = load_model(model)
    if train is None or test is None:
        tr, te = data.lora_split(model.tokenizer, n_train=settings.n_train, n_test=settings.n_test, seed=settings.seed)
        train, test = train if train is not None else tr, test if test is not None else te
    train, test = data.as_dataset(train, model.tokenizer), data.as_dataset(test, model.tokenizer)
    sequences = answer_sequences(train)
    text = general_text() if text is None else text
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text={text!r} must be a non-empty string")
    key = settings.key_nodes(model, patching)
    key_masks = component_masks(model, model.bridge, key)
    random_nodes = settings.random_nodes(model, key, n_params(key_masks)) if "random" in settings.variants else []

    def score(lm: Any) -> dict:
        ev = evaluate(lm, test, full_answer=settings.full_answer)
        row = {"accuracy": ev.accuracy, "perplexity": perplexity(lm, text, max_tokens=settings.ppl_tokens)}
        row["full_accuracy"] = float(ev.cases["full_correct"].mean()) if "full_correct" in ev.cases else float("nan")
        return row

    rows = [{"variant": "original", "n_params": 0, "steps": 0, "final_loss": float("nan"), **score(model)}]
    models, losses = {}, {}
    for variant in settings.variants:
        bridge = copy.deepcopy(model.bridge)
        if variant == "full":
            masks = None
        else:
            masks = component_masks(model, bridge, key if variant == "precise" else random_nodes)
        count = sum(p.numel() for p in bridge.parameters()) if masks is None else n_params(masks)
        loss_curve = train_on_answers(bridge, masks, sequences, steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size,
                                      seed=settings.seed, progress=settings.progress, desc=f"SFT {variant}")
        lm = LensModel(bridge, model.tokenizer, name=f"{model.name}-sft-{variant}", batch_size=model.batch_size)
        models[variant], losses[variant] = lm, loss_curve
        rows.append({"variant": variant, "n_params": count, "steps": settings.steps, "final_loss": float(sum(loss_curve[-10:]) / len(loss_curve[-10:])), **score(lm)})
    df = pd.DataFrame(rows)
    df["accuracy_change"] = df["accuracy"] - df["accuracy"].iloc[0]
    df["perplexity_change"] = df["perplexity"] - df["perplexity"].iloc[0]
    labels = {"precise": ", ".join(n.name for n in key), "full": "all", "random": ", ".join(n.name for n in random_nodes)}
    df["nodes"] = [""] + [labels[v] for v in settings.variants]
    return PreciseSFTResult(df=df, models=models, losses=losses, nodes=key, random_nodes=random_nodes)
