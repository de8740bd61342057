"""CNA-guided pruning — Yu & Ananiadou (EMNLP 2024) §6.1, Table 11.

CNA ([`ComparativeNeuronScores`][arithlens.cna.comparative.ComparativeNeuronScores]) compares a
shallow-layer LoRA model (§5; layer 9 of 32 in the paper) with the original on the
1-digit `+ − × ÷` cases. Each case's top-`top_k` neurons by the importance *increase*
from the original to the LoRA model (the neurons the fine-tuned prediction leans on)
are kept where they fall in the deep layers (17–31 of 32), and every other FFN neuron of
those layers is **pruned for real**: [`prune`][arithlens.cna.pruning.prune] slices the
rows of `gate_proj` / `up_proj` and the columns of `down_proj` of a copy, so the
parameter count drops and the layers compute only the kept neurons. A pruned model
computes exactly what the original computes with those neurons' coefficient scores
zeroed (`KeepNeurons`); it saves with [`save_model`][arithlens.analysis.tuning.save_model]
(`save_pretrained` plus each layer's FFN width in the config) and re-loads with
[`load_saved`][arithlens.analysis.tuning.load_saved]. A LoRA adapter on the shallow layer
is then trained on the pruned model, and on a randomly pruned model that keeps the same
number of neurons in every deep layer (the control). Table 11 is the accuracy on the
2-digit test split of the original, LoRA, LoRA on the CNA-pruned and LoRA on the randomly
pruned model, with parameter counts and forward times.

The paper kept each case's top 500 of Llama-2-7B's 352,256 neurons (5 % of the deep
neurons survived the union); the default `top_k` keeps the same fraction of the model's
neurons per case (65 of SmolLM2's 46,080). Pruned models run every forward analysis
(evaluation, interventions, LoRA); neuron-level CNA needs equal FFN widths and so the
unpruned model.

Example:
    ```python
    import arithlens
    from arithlens.cna.lora import LoRASettings
    from arithlens.cna.pruning import PruningSettings, cna_pruning
    from arithlens.analysis.tuning import load_saved

    model = arithlens.load_model()
    settings = PruningSettings(n_cases=32, lora=LoRASettings(lrs=[1e-3], steps=60), out_dir="results/prune")
    result = cna_pruning(model, settings)
    result.table()                                   # Table 11
    pruned = load_saved("results/prune/cna-pruned/model")
    ```
"""

from __future__ import annotations

import pathlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, ClassVar

import pandas as pd
import torch

from arithlens.core import validate
from arithlens.analysis.results import Result
from arithlens import data
from arithlens.cna.comparative import ComparativeNeuronScores
from arithlens.analysis.evaluation import evaluate
from arithlens.core.loading import load_model
from arithlens.analysis.tuning import SIZES_KEY, check_gated, ffn_sizes, hf_copy, layer_widths, lens_from_hf, n_parameters, save_model, set_ffn_width
from arithlens.cna.frames import top_mask
from arithlens.cna.lora import LoRASettings

PAPER_TOP_FRACTION = 500 / (32 * 11008)  # top 500 of Llama-2-7B's 32 × 11,008 FFN neurons


def prune(model: Any, keep: Mapping[int, Sequence[int]], name: str | None = None) -> Any:
    """A copy of `model` whose layers in `keep` have only the kept FFN neurons (sliced, not masked).

    Args:
        model: The model ([`LensModel`][arithlens.core.model.LensModel]); never modified.
        keep: `{layer: neuron indices kept}`; layers not named keep every neuron.
        name: The copy's display name.

    Returns:
        A [`LensModel`][arithlens.core.model.LensModel] with fewer parameters.
    """
    check_gated(model, [validate.integer(L, "keep layer", low=0, high=model.n_layers - 1) for L in keep])  # before any copy
    hf = hf_copy(model)
    sizes = ffn_sizes(hf, model.n_layers)
    for layer, idx in keep.items():
        idx = sorted(set(validate.int_sequence(idx, f"keep[{layer}]", low=0, high=sizes[layer] - 1, allow_empty=True)))
        set_ffn_width(hf, int(layer), len(idx), torch.tensor(idx, dtype=torch.long, device=model.device))
    setattr(hf.config, SIZES_KEY, ffn_sizes(hf, model.n_layers))
    return lens_from_hf(hf, model, name or f"{model.name}-pruned")


@torch.no_grad()
def forward_ms(model: Any, tokens: torch.Tensor, repeats: int = 5) -> float:
    """Median wall time (ms) of one forward pass of `tokens` (after one warm-up pass)."""
    model.bridge(tokens)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.bridge(tokens)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


# ---------------------------------------------------------------------------- §6.1
@dataclass
class CNAPruningResult(Result):
    """Table 11: accuracy after LoRA on the original, CNA-pruned and randomly pruned model.

    Attributes:
        df: One row per model (`original, lora{L}, cna-pruned, lora{L}-p, random-pruned,
            lora{L}-r`): `model, pruning` (`none`/`cna`/`random`), `lora` (bool),
            `accuracy` (2-digit test split, first answer token), `n_params`,
            `deep_ffn_params` (parameters of the deep layers' FFNs), `deep_neurons`
            (FFN neurons left in them), `forward_ms` (median time of one forward pass of
            a test batch; NaN for the LoRA models, which have their base's shapes).
        kept: `{layer: neuron indices}` kept by CNA; random_kept: the control's.
        lora_layer: The shallow LoRA layer; deep_layers: the pruned layers.
        models: The pruned and fine-tuned models by row name (with `keep_models=True`) (not saved by `save`: a loaded result has none).
        saved: Where the pruned models were saved, by row name.
    """

    kept: dict[int, list[int]] = field(default_factory=dict, repr=False)
    random_kept: dict[int, list[int]] = field(default_factory=dict, repr=False)
    lora_layer: int = 0
    deep_layers: list[int] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict, repr=False)

    unsaved_fields: ClassVar[tuple[str, ...]] = ("models",)
    """`save` leaves the live models out (a loaded result has none)."""
    saved: dict[str, str] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """Table 11's layout: accuracy (%) of origin, LoRA, LoRA-p, LoRA-r, plus parameter counts."""
        pick = self.df[self.df["model"].isin(["original"]) | self.df["lora"]].set_index("model")
        out = pd.DataFrame({"acc": 100 * pick["accuracy"], "params (M)": pick["n_params"] / 1e6,
                            "deep FFN params (M)": pick["deep_ffn_params"] / 1e6}).T  # fmt: skip
        L = self.lora_layer
        return out.rename(columns={"original": "origin", f"lora{L}": f"LoRA{L}", f"lora{L}-p": f"LoRA{L}-p", f"lora{L}-r": f"LoRA{L}-r"}).round(1)

    def plot(self, **kwargs: Any) -> Any:
        """Test accuracy of every model, bars coloured by pruning."""
        import plotly.express as px

        fig = px.bar(self.df, x="model", y="accuracy", color="pruning", hover_data=["n_params", "deep_neurons"],
                     title=f"Accuracy on 2-digit arithmetic: LoRA on layer {self.lora_layer}, pruned layers "
                     f"{self.deep_layers[0]}–{self.deep_layers[-1]} (Table 11)", **kwargs)  # fmt: skip
        fig.update_layout(xaxis_title="model", yaxis_title="test accuracy (first answer token)", yaxis_tickformat=".0%")
        return fig


@dataclass(frozen=True, kw_only=True)
class PruningSettings:
    """How [`cna_pruning`][arithlens.cna.pruning.cna_pruning] prunes and fine-tunes (§6.1).

    Attributes:
        lora_layer: The shallow LoRA layer (default the paper's 9 of 32, scaled: `round(9 n / 32)`).
        top_k: Each case's top-K CNA neurons kept (default the paper's fraction, at least 1).
        deep_layers: Layers pruned (default the paper's 17–31 of 32, scaled).
        n_cases: 1-digit cases CNA runs on, sampled (None: all).
        target: CNA's scored token: `"prediction"` (the paper; of the LoRA model) or `"answer"`.
        mode: CNA mode, `"fast"` (default) or `"exact"`.
        random_control: Also prune at random (same count per layer) and fine-tune that.
        lora: The [`LoRASettings`][arithlens.cna.lora.LoRASettings] that train every LoRA
            model and whose split gives the data (default CPU-sized, seeded by `seed`).
        out_dir: Saves adapters (`lora_L{L}`, `cna-pruned/lora_L{L}`, ...) and the pruned
            models (`cna-pruned/model`, `random-pruned/model`).
        keep_models: Keep the models in the result.
        seed: Seeds the case sample and the random control.
        timing_repeats: Forward passes timed per model.
        progress: Progress bars.
    """

    lora_layer: int | None = None
    top_k: int | None = None
    deep_layers: Sequence[int] | None = None
    n_cases: int | None = 64
    target: str = "prediction"
    mode: str = "fast"
    random_control: bool = True
    lora: LoRASettings | None = None
    out_dir: str | pathlib.Path | None = None
    keep_models: bool = False
    seed: int = 0
    timing_repeats: int = 5
    progress: bool = True

    def __post_init__(self) -> None:
        if self.lora_layer is not None:
            object.__setattr__(self, "lora_layer", validate.non_negative_int(self.lora_layer, "lora_layer"))
        if self.top_k is not None:
            object.__setattr__(self, "top_k", validate.positive_int(self.top_k, "top_k"))
        if self.deep_layers is not None:
            object.__setattr__(self, "deep_layers", tuple(validate.int_sequence(self.deep_layers, "deep_layers", low=0, unique=True)))
        object.__setattr__(self, "n_cases", validate.optional_positive_int(self.n_cases, "n_cases"))
        validate.choice(self.target, "target", ("prediction", "answer"))
        validate.choice(self.mode, "mode", ("exact", "fast"))
        object.__setattr__(self, "random_control", validate.boolean(self.random_control, "random_control"))
        object.__setattr__(self, "progress", validate.boolean(self.progress, "progress"))
        object.__setattr__(self, "seed", validate.integer(self.seed, "seed"))
        if self.lora is not None and not isinstance(self.lora, LoRASettings):
            raise ValueError(f"lora={self.lora!r} must be LoRASettings (they train the LoRA models)")
        object.__setattr__(self, "lora", self.lora or LoRASettings(progress=self.progress, seed=self.seed))
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", validate.output_dir(self.out_dir, "out_dir"))
        object.__setattr__(self, "keep_models", validate.boolean(self.keep_models, "keep_models"))
        object.__setattr__(self, "timing_repeats", validate.positive_int(self.timing_repeats, "timing_repeats"))

    def resolve(self, model: Any) -> tuple[int, list[int], int]:
        """`(lora_layer, deep_layers, top_k)` for `model`, validated against its shape (gated MLPs included)."""
        n, total = model.n_layers, model.n_layers * model.d_mlp
        layer = round(9 * n / 32) if self.lora_layer is None else self.lora_layer
        validate.integer(layer, "lora_layer", low=0, high=n - 1)
        deep = list(range(round(17 * n / 32), n)) if self.deep_layers is None else list(self.deep_layers)
        for L in deep:
            validate.integer(L, "deep_layers item", low=0, high=n - 1)
        top_k = max(1, round(PAPER_TOP_FRACTION * total)) if self.top_k is None else self.top_k
        if top_k > total:
            raise ValueError(f"top_k={top_k} is larger than the model's {total} FFN neurons ({n} layers x {model.d_mlp})")
        check_gated(model, deep)
        return layer, deep, top_k


def cna_pruning(
    model: Any,
    settings: PruningSettings | None = None,
    *,
    lora_model: Any = None,
    cases: Any = None,
    train: Any = None,
    test: Any = None,
) -> CNAPruningResult:
    """§6.1, Table 11: prune the deep FFN neurons CNA does not select, then fine-tune LoRA — a procedure.

    Args:
        model: The original model; never modified.
        settings: How to prune and fine-tune ([`PruningSettings`][arithlens.cna.pruning.PruningSettings]; default ones).
        lora_model: A LoRA model on `lora_layer` (default: trained here with `settings.lora`).
        cases: CNA's cases (default: the 1-digit `+ − × ÷` numeral cases, templates 1–4).
        train, test: LoRA data (default: the §5 split of `settings.lora`).
    """
    settings = settings or PruningSettings()
    if not isinstance(settings, PruningSettings):
        raise ValueError(f"settings={settings!r} must be PruningSettings")

    model = load_model(model)
    layer, deep, n_top = settings.resolve(model)
    train, val, test = settings.lora.split(model, train, test)
    where = (lambda *parts: None) if settings.out_dir is None else (lambda *parts: settings.out_dir.joinpath(*parts))
    if lora_model is None:
        lora_model, _ = settings.lora.fit(model, layer, train, val, where(f"lora_L{layer}"))
    if cases is None:
        cases = data.arithmetic(model.tokenizer, ops="+-*/", digits=1, templates=[1, 2, 3, 4], forms=["numeral"])
        cases = cases if settings.n_cases is None or settings.n_cases >= len(cases) else cases.sample(settings.n_cases, seed=settings.seed)
    scorer = ComparativeNeuronScores(top_tokens=0, other_model=model, target=settings.target, mode=settings.mode, progress=settings.progress)
    # The LoRA model is CNA's first side: importance_change = LoRA minus original.
    union = top_mask(scorer.run(lora_model, cases).importance_change, n_top).any(0)
    kept = {L: union[L].nonzero()[:, 0].tolist() for L in deep}
    gen = torch.Generator().manual_seed(settings.seed)
    random_kept = {L: sorted(torch.randperm(model.d_mlp, generator=gen)[: len(idx)].tolist()) for L, idx in kept.items()}
    tokens = _timing_batch(model, test)
    rows, models, saved = [], {}, {}

    def add(name: str, lm: Any, pruning: str, tuned: bool) -> None:
        sizes = layer_widths(lm)
        rows.append({"model": name, "pruning": pruning, "lora": tuned, "accuracy": evaluate(lm, test, full_answer=False).accuracy,
                     "n_params": n_parameters(lm), "deep_ffn_params": sum(3 * lm.d_model * sizes[L] for L in deep),
                     "deep_neurons": sum(sizes[L] for L in deep),
                     "forward_ms": float("nan") if tuned else forward_ms(lm, tokens, settings.timing_repeats)})  # fmt: skip
        if settings.keep_models:
            models[name] = lm

    add("original", model, "none", False)
    add(f"lora{layer}", lora_model, "none", True)
    variants = [("cna", kept, "p")] + ([("random", random_kept, "r")] if settings.random_control else [])
    for pruning, keep, tag in variants:
        pruned = prune(model, keep, name=f"{model.name}-{pruning}-pruned")
        if settings.out_dir is not None:
            saved[f"{pruning}-pruned"] = str(save_model(pruned, where(f"{pruning}-pruned", "model")))
        add(f"{pruning}-pruned", pruned, pruning, False)
        tuned, _ = settings.lora.fit(pruned, layer, train, val, where(f"{pruning}-pruned", f"lora_L{layer}"))
        add(f"lora{layer}-{tag}", tuned, pruning, True)
    return CNAPruningResult(df=pd.DataFrame(rows), kept=kept, random_kept=random_kept, lora_layer=layer,
                            deep_layers=deep, models=models, saved=saved)  # fmt: skip


def _timing_batch(model: Any, test: Any, rows: int = 32) -> torch.Tensor:
    """Up to `rows` test prompts of the most common length, stacked (no padding)."""
    ids = [tuple(int(t) for t in case.input_ids) for case in test]
    by_len: dict[int, list[tuple[int, ...]]] = {}
    for x in ids:
        by_len.setdefault(len(x), []).append(x)
    common = max(by_len.values(), key=len)[:rows]
    return torch.tensor([list(x) for x in common], device=model.device)
