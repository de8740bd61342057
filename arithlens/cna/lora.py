"""What LoRA does — Yu & Ananiadou (EMNLP 2024) §5: Figure 2, the LoRA layer sweep.

[`lora_layer_sweep`][arithlens.cna.lora.lora_layer_sweep] fine-tunes one model per chosen
layer, each with a LoRA adapter (peft; rank `rank`, scale `alpha / rank`) on that
block's attention only — its `q_proj`, `k_proj`, `v_proj` and `o_proj` — on the §5
two-digit split ([`lora_split`][arithlens.data.lora_split]: all four ops, negative
results included). The loss is cross-entropy on the answer tokens; the learning rate is
the one of `lrs` (the paper's {1e-3, 5e-4, 1e-4}) with the lowest answer loss on a
held-out slice of the training split; training stops after `steps` steps or `epochs`
passes over the data, whichever comes first. Figure 2 is the test accuracy of each
model against its LoRA layer, the original model as a line. Each trained adapter is
saved under `out_dir/lora_L{layer}/` and re-used, not retrained, by a later run with the
same configuration. Merged into a copy of the model, it is a
[`LensModel`][arithlens.core.model.LensModel] like any other, so every analysis takes it.

Tables 9 and 10 (does LoRA raise the important neurons' coefficient scores?) compare
these models with the original: [`LoRACoefficients`][arithlens.cna.lora_coefficients.LoRACoefficients].

CPU-sized defaults (three layers, one per range; 150 steps of 8; 1,000 training cases);
on a GPU, e.g. `layers=range(model.n_layers), steps=9000, batch_size=8, n_train=18000,
n_test=2000`.

Example:
    ```python
    import arithlens
    from arithlens import data
    from arithlens.cna.lora import LoRASettings, lora_layer_sweep
    from arithlens.cna.lora_coefficients import LoRACoefficients

    model = arithlens.load_model()
    sweep = lora_layer_sweep(model, LoRASettings(layers=[4, 12], lrs=[1e-3], steps=40, out_dir="results/lora"))
    sweep.plot()                                    # Figure 2
    cases = data.arithmetic(model.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(16)
    coef = LoRACoefficients().run(model, cases, loras=sweep)
    coef.table9(), coef.table10()
    ```
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence, ClassVar

import pandas as pd
import torch
from tqdm.auto import tqdm

from arithlens.core import distributed, validate
from arithlens.analysis.tuning import answer_sequences, train_on_answers
from arithlens.analysis.tuning import fingerprint, hf_copy, lens_from_hf
from arithlens.analysis.results import Result
from arithlens import data
from arithlens.analysis.evaluation import evaluate
from arithlens.core.loading import load_model
from arithlens.analysis.tuning import LogitsOnly
from arithlens.analysis.tuning import answer_nll


PAPER_LRS = (1e-3, 5e-4, 1e-4)
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
# The paper's ranges 1–9, 10–16, 17–30 of Llama-2-7B's 32 layers, as range starts (and the end).
PAPER_GROUP_STARTS = (1, 10, 17, 31)
META = "arithlens_lora.json"
# Tables 9–10 moved to lora_coefficients; these names still import from here.


def check_attention_projections(model: Any) -> None:
    """`ValueError` unless the attention has separate `q_proj`, `k_proj`, `v_proj`, `o_proj`
    (the modules §5's adapters train; GPT-2's `c_attn` and GPT-NeoX's `query_key_value` fuse them)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.bridge.original_model.named_modules()}
    missing = [m for m in ATTENTION if m not in names]
    if missing:
        raise ValueError(
            f"LoRA on {model.writes.family} is not supported: its attention has no separate {', '.join(missing)} "
            f"(§5 trains adapters on {', '.join(ATTENTION)})"
        )


def layer_groups(n_layers: int) -> dict[str, list[int]]:
    """The paper's LoRA-layer ranges scaled to `n_layers`: `{"1–9": [1, ..., 9], ...}` for 32.

    Range `i` spans `[round(s_i · n / 32), round(s_{i+1} · n / 32))` with `s = 1, 10, 17, 31`;
    empty ranges (very shallow models) are dropped.
    """
    n = validate.positive_int(n_layers, "n_layers")
    bounds = [round(s * n / 32) for s in PAPER_GROUP_STARTS]
    return {f"{a}–{b - 1}": list(range(a, b)) for a, b in zip(bounds, bounds[1:]) if b > a}


def group_of(layer: int, groups: Mapping[str, Sequence[int]]) -> str:
    """The label of the range holding `layer` (the layer itself when none does)."""
    return next((label for label, members in groups.items() if layer in members), str(layer))


def default_layers(n_layers: int) -> list[int]:
    """One layer per paper range, its middle: the CPU-sized default of the sweep."""
    return [members[len(members) // 2] for members in layer_groups(n_layers).values()]


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft warns of a transformers-5 deprecation and of a base config it looks up by the
    model's path (a GGUF folder has none); neither affects the adapters."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        warnings.filterwarnings("ignore", message="Could not find a config file")
        yield


@dataclass
class LoRALayerSweepResult(Result):
    """Figure 2: test accuracy of each single-layer LoRA model and of the original.

    Attributes:
        df: One row per model (`original` first): `model, lora_layer` (`<NA>` for the
            original), `group, lr, steps, epochs, val_loss, final_loss, n_lora_params,
            accuracy` (first answer token), `full_accuracy` (greedy whole answer, NaN
            unless asked for), `reused` (adapter loaded from `out_dir`).
        lr_search: One row per (LoRA layer, learning rate): `lora_layer, lr, val_loss, chosen`.
        losses: Training loss per step of each chosen adapter, by LoRA layer.
        models: The merged models ([`LensModel`][arithlens.core.model.LensModel]), by LoRA layer
            (empty with `keep_models=False`) (not saved by `save`: a loaded result has none).
        adapter_dirs: Where each adapter is saved, by LoRA layer (empty without `out_dir`).
    """

    lr_search: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    losses: dict[int, list[float]] = field(default_factory=dict, repr=False)
    models: dict[int, Any] = field(default_factory=dict, repr=False)

    unsaved_fields: ClassVar[tuple[str, ...]] = ("models",)
    """`save` leaves the live models out (a loaded result has none)."""
    adapter_dirs: dict[int, str] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """Figure 2's numbers as a table: accuracy (%) of the original and of each LoRA layer."""
        names = ["original"] + [f"L{int(L)}" for L in self.df["lora_layer"].iloc[1:]]
        return pd.DataFrame([100 * self.df["accuracy"].to_numpy()], index=["accuracy (%)"], columns=names).round(1)

    def plot(self, **kwargs: Any) -> Any:
        """Accuracy against LoRA layer, the original model's accuracy as a dashed line."""
        import plotly.graph_objects as go

        lora = self.df[self.df["model"] != "original"]
        fig = go.Figure(go.Scatter(x=lora["lora_layer"].astype(int), y=lora["accuracy"], mode="lines+markers", name="LoRA model"))
        original = float(self.df.loc[self.df["model"] == "original", "accuracy"].iloc[0])
        fig.add_hline(y=original, line_dash="dash", annotation_text=f"original {original:.1%}")
        fig.update_layout(title="Accuracy with LoRA on one attention layer (Figure 2)", xaxis_title="LoRA layer",
                          yaxis_title="test accuracy (first answer token)", yaxis_tickformat=".0%", **kwargs)  # fmt: skip
        return fig


@dataclass(frozen=True, kw_only=True)
class LoRASettings:
    """How [`lora_layer_sweep`][arithlens.cna.lora.lora_layer_sweep] fine-tunes one LoRA model
    per layer, on that layer's attention only (§5, Figure 2); also what
    [`cna_pruning`][arithlens.cna.pruning.cna_pruning] trains its LoRA models with.

    Args:
        layers: LoRA layers (default [`default_layers`][arithlens.cna.lora.default_layers]:
            one per paper range).
        lrs: Candidate learning rates; the one with the lowest held-out answer loss is kept.
        rank: LoRA rank `r`.
        alpha: LoRA `alpha` (the update is scaled by `alpha / rank`).
        epochs: At most this many passes over the training data.
        steps: At most this many optimiser steps (AdamW, constant learning rate).
        batch_size: Sequences per step (equal lengths, never padded).
        n_train, n_val, n_test: Sizes of the default split: `n_train` training cases,
            `n_val` more held out from the training split for the learning rate.
        seed: Seeds the split, the batches and the adapter initialisation.
        out_dir: Adapters are saved in `out_dir/lora_L{layer}/` and re-used when present.
        keep_models: Keep each merged model in the result (memory: one model copy each;
            under `torchrun`, each rank keeps the layers it trained).
        full_answer: Also greedy-decode whole answers on the test split.
        progress: Progress bars.
    """

    layers: Sequence[int] | None = None
    lrs: Sequence[float] = PAPER_LRS
    rank: int = 8
    alpha: float = 16.0
    epochs: int = 4
    steps: int = 150
    batch_size: int = 8
    n_train: int = 1000
    n_val: int = 100
    n_test: int = 200
    seed: int = 0
    out_dir: str | pathlib.Path | None = None
    keep_models: bool = True
    full_answer: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(validate.int_sequence(self.layers, "layers", low=0, unique=True)))
        lrs = [self.lrs] if isinstance(self.lrs, (str, bytes)) or not hasattr(self.lrs, "__iter__") else self.lrs
        object.__setattr__(self, "lrs", tuple(validate.positive_number(lr, "lrs item") for lr in lrs))
        if not self.lrs:
            raise ValueError("lrs is empty: give at least one learning rate, e.g. (1e-3, 5e-4, 1e-4)")
        for name in ("rank", "epochs", "steps", "batch_size", "n_train", "n_val", "n_test"):
            object.__setattr__(self, name, validate.positive_int(getattr(self, name), name))
        object.__setattr__(self, "alpha", validate.positive_number(self.alpha, "alpha"))
        object.__setattr__(self, "seed", validate.integer(self.seed, "seed"))
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", validate.output_dir(self.out_dir, "out_dir"))
        for name in ("keep_models", "full_answer", "progress"):
            object.__setattr__(self, name, validate.boolean(getattr(self, name), name))

    def config(self) -> dict[str, Any]:
        """What an adapter depends on; a saved adapter is re-used only when this matches."""
        keys = ("lrs", "rank", "alpha", "epochs", "steps", "batch_size", "n_train", "n_val", "seed")
        return {k: list(v) if isinstance(v, tuple) else v for k in keys for v in [getattr(self, k)]}

    def split(self, model: Any, train: Any = None, test: Any = None) -> tuple[Any, Any, Any]:
        """`(train, val, test)`: the held-out `val` is the first `n_val` cases of the training split."""

        if train is None or test is None:
            tr, te = data.lora_split(model.tokenizer, n_train=self.n_train + self.n_val, n_test=self.n_test, seed=self.seed)
            train, test = (tr if train is None else train), (te if test is None else test)
        if len(train) <= self.n_val:
            raise ValueError(f"the training data has {len(train)} cases; n_val={self.n_val} must leave some to train on")
        return train[self.n_val :], train[: self.n_val], test

    def fit(self, model: Any, layer: int, train: Any, val: Any, directory: str | pathlib.Path | None = None) -> tuple[Any, dict]:
        """One LoRA model on `layer`: `(merged LensModel, record)`; loads the adapter in `directory` if saved there."""
        from peft import LoraConfig, get_peft_model

        layer = validate.integer(layer, "layer", low=0, high=model.n_layers - 1)
        check_attention_projections(model)
        base = {"name": model.name, "fingerprint": fingerprint(model), "layer": layer}
        meta_path = None if directory is None else pathlib.Path(directory) / META
        if meta_path is not None and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta["config"] != self.config() or meta["base"] != base:
                raise ValueError(
                    f"{meta_path.parent} holds an adapter trained with {meta['config']} on {meta['base']}, not "
                    f"{self.config()} on {base}: use another out_dir or delete that folder"
                )
            return _merge(model, meta_path.parent, layer), {**meta["record"], "reused": True}
        seqs, val_seqs = answer_sequences(train), answer_sequences(val)
        steps = min(self.steps, self.epochs * math.ceil(len(seqs) / self.batch_size))
        lcfg = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=list(ATTENTION),
                          layers_to_transform=[layer], layers_pattern="layers", bias="none")  # fmt: skip
        best: dict[str, Any] = {}
        search = []
        for lr in self.lrs:
            torch.manual_seed(self.seed)  # the same initial adapter for every learning rate
            with _quiet_peft():
                peft_model = get_peft_model(hf_copy(model), lcfg)
            net = LogitsOnly(peft_model)
            masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters() if "lora_" in n}
            curve = train_on_answers(net, masks, seqs, steps=steps, lr=lr, batch_size=self.batch_size, seed=self.seed,
                                     progress=self.progress, desc=f"LoRA layer {layer}, lr {lr:g} (steps)")  # fmt: skip
            val_loss = answer_nll(net, val_seqs)
            search.append({"lr": lr, "val_loss": val_loss})
            if not best or val_loss < best["val_loss"]:
                n_params = sum(int(m.numel()) for m in masks.values())
                best = {"lr": lr, "val_loss": val_loss, "model": peft_model, "curve": curve, "n_lora_params": n_params}
        record = {
            "lr": best["lr"], "val_loss": best["val_loss"], "steps": steps, "epochs": steps * self.batch_size / len(seqs),
            "final_loss": sum(best["curve"][-10:]) / len(best["curve"][-10:]), "n_lora_params": best["n_lora_params"],
            "lr_search": search, "losses": best["curve"], "reused": False,
        }  # fmt: skip
        if meta_path is not None:
            with _quiet_peft():
                best["model"].save_pretrained(str(meta_path.parent))
            meta_path.write_text(json.dumps({"config": self.config(), "base": base, "record": record}))
        merged = best["model"].merge_and_unload()
        return lens_from_hf(merged, model, f"{model.name}-lora{layer}"), record

    def fit_layers(self, model: Any, layers: list[int], train: Any, val: Any, score: Any, groups: Any, models: dict) -> Iterator[tuple]:
        """`(row, lr_search rows, loss curve, [(layer, adapter dir)])` per layer, trained (or loaded) and scored."""
        for layer in tqdm(layers, desc="LoRA sweep", unit="model", disable=not self.progress):
            directory = None if self.out_dir is None else self.out_dir / f"lora_L{layer}"
            lm, rec = self.fit(model, layer, train, val, directory)
            row = {"model": f"lora{layer}", "lora_layer": layer, "group": group_of(layer, groups),
                   **{k: rec[k] for k in ("lr", "steps", "epochs", "val_loss", "final_loss", "n_lora_params", "reused")},
                   **score(lm)}  # fmt: skip
            found = [{"lora_layer": layer, **s, "chosen": s["lr"] == rec["lr"]} for s in rec["lr_search"]]
            if self.keep_models:
                models[layer] = lm
            yield row, found, rec["losses"], [] if directory is None else [(layer, str(directory))]


def load_lora(model: Any, directory: str | pathlib.Path) -> Any:
    """The merged [`LensModel`][arithlens.core.model.LensModel] of an adapter saved by a sweep on `model`."""
    path = pathlib.Path(directory)
    if not (path / META).exists():
        raise ValueError(f"directory={str(directory)!r} holds no adapter saved by a LoRA sweep ({META} missing)")
    meta = json.loads((path / META).read_text())
    if meta["base"]["fingerprint"] != fingerprint(model):
        raise ValueError(f"the adapter in {str(directory)!r} was trained on {meta['base']['name']!r}, not on this model")
    return _merge(model, path, meta["base"]["layer"])


def _merge(model: Any, path: pathlib.Path, layer: int) -> Any:
    """A copy of `model` with the adapter saved in `path` merged into its weights."""
    from peft import PeftModel

    with _quiet_peft():
        merged = PeftModel.from_pretrained(hf_copy(model), str(path)).merge_and_unload()
    return lens_from_hf(merged, model, f"{model.name}-lora{layer}")


def lora_layer_sweep(
    model: Any, settings: LoRASettings | None = None, *, train: Any = None, test: Any = None
) -> LoRALayerSweepResult:
    """§5: train (or load) one LoRA model per layer and evaluate each on `test` — a procedure.

    Args:
        model: The model ([`LensModel`][arithlens.core.model.LensModel] or what `load_model` takes).
        settings: How to train ([`LoRASettings`][arithlens.cna.lora.LoRASettings]; default ones).
        train: Training cases with answers (default: the §5 split); its first
            `n_val` cases are held out for the learning rate.
        test: Test cases (default: the §5 split's test part).
    """
    settings = settings or LoRASettings()
    if not isinstance(settings, LoRASettings):
        raise ValueError(f"settings={settings!r} must be LoRASettings")

    model = load_model(model)
    check_attention_projections(model)
    layers = default_layers(model.n_layers) if settings.layers is None else settings.layers
    for layer in layers:
        validate.integer(layer, "layers item", low=0, high=model.n_layers - 1)
    train, val, test = settings.split(model, train, test)
    groups = layer_groups(model.n_layers)

    def score(lm: Any) -> dict[str, float]:
        ev = evaluate(lm, test, full_answer=settings.full_answer)
        full = float(ev.cases["full_correct"].mean()) if "full_correct" in ev.cases else float("nan")
        return {"accuracy": ev.accuracy, "full_accuracy": full}

    rows = [{"model": "original", "lora_layer": pd.NA, "group": "", **score(model)}]
    search, losses, models, dirs = [], [], {}, []
    # Under torchrun each rank trains every world-th layer (strided: balanced when later
    # layers cost more) on its own, and the records are gathered in layer order.
    my_layers = distributed.shard(layers, strided=True)
    with distributed.alone():
        mine = list(settings.fit_layers(model, my_layers, train, val, score, groups, models))
    for row, found, curve, where in distributed.gather(mine, strided=True):
        rows.append(row)
        search += found
        losses.append((row["lora_layer"], curve))
        dirs += where
    df = pd.DataFrame(rows).astype({"lora_layer": "Int64"})
    return LoRALayerSweepResult(df=df, lr_search=pd.DataFrame(search), losses=dict(losses), models=models, adapter_dirs=dict(dirs))
