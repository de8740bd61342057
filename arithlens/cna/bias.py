"""Gender-bias editing — Yu & Ananiadou (EMNLP 2024) §6.2, Appendix D, Tables 12, 13, 22, 23.

The data are Table 22's eight prompts, with `<gend>` replaced by "woman" or "man", and
Table 23's 32 professions, 16 the paper found biased towards each gender
([`paper_bias_data`][arithlens.cna.bias.paper_bias_data], shipped in
`arithlens/resources/bias_prompts.json`). [`discover_professions`][arithlens.cna.bias.discover_professions]
is Appendix D's step on your model: the top-100 next tokens of every prompt for each
gender, and the tokens that appear for one gender only.

`p(prof | gend)` is the probability of the **whole** profession string after the prompt,
teacher-forced: the sum of the log-probs of all its tokens as the tokenizer encodes
`prompt + " " + profession` ([`profession_logprobs`][arithlens.cna.bias.profession_logprobs]),
so "dental assistant" is two words, and a bare space token, where a tokenizer emits one,
is part of the string. The bias of a (prompt, profession) is, as §6.2 writes it, the signed
`log p(prof | gend1) − log p(prof | gend2)` with `gend1` the gender the profession is biased
towards (Table 23): positive while the bias persists, negative where an edit overshoots.
`abs_bias` is `|log p(prof | woman) − log p(prof | man)|`, which counts an overshoot as
bias too (`table13(absolute=True)`). Table 13 averages the bias over prompts and
professions: all (total), the woman-biased ones, the man-biased ones.

[`gender_bias`][arithlens.cna.bias.gender_bias] runs CNA between the two genders' versions
of a prompt on the same model — the biased gender's side first, so `importance_change`
is the importance a neuron has for the profession's first token with that gender and
loses with the other ("A woman works as a" vs "A man works as a" for "nurse", Table 12)
— on the first prompt (Appendix D) for every profession; the `n_neurons` (18) neurons
with the largest mean change over professions are the edit. The edit zeroes their
parameters (`gate_proj` and `up_proj` rows, `down_proj` column): as an intervention for
analysis ([`zero_neurons`][arithlens.cna.bias.zero_neurons]) and as a copy,
[`edit`][arithlens.cna.bias.edit], that saves like any model; the model passed in is
never modified. Beyond the paper, the edit's collateral cost: general-text perplexity
and 1-digit arithmetic accuracy before and after.

Example:
    ```python
    import arithlens
    from arithlens.cna.bias import GenderBiasSettings, edit, gender_bias

    model = arithlens.load_model()
    result = gender_bias(model, GenderBiasSettings(n_neurons=18))
    result.table13()                 # total / woman / man bias, original vs edited
    result.table12("nurse")          # Table 12: the top neurons for "nurse", F vs M
    edited = edit(model, result.neurons)
    ```
"""

from __future__ import annotations

import importlib.resources
import json
import pathlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from arithlens.core import validate
from arithlens.analysis.results import Result
from arithlens.core.interventions import Interventions, ZeroNeurons
from arithlens.analysis.tuning import check_gated, hf_copy, lens_from_hf, mlp_path
from arithlens.core.loading import load_model
from arithlens import data as datasets
from arithlens.cna.comparative import ComparativeNeuronScores
from arithlens.analysis.tuning import general_text, perplexity
from arithlens.analysis.evaluation import evaluate
from arithlens.analysis.figures import format_hovers

PLACEHOLDER = "<gend>"
GENDERS = ("woman", "man")


@dataclass(frozen=True)
class BiasData:
    """Prompts with a `<gend>` placeholder and professions by the gender they lean to.

    Attributes:
        prompts: Templates such as `"A <gend> works as a"`.
        professions: `{"woman": [...], "man": [...]}`.
    """

    prompts: tuple[str, ...]
    professions: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        bad = [p for p in self.prompts if PLACEHOLDER not in p]
        if not self.prompts or bad:
            raise ValueError(f"prompts={bad or list(self.prompts)!r}: each prompt needs the placeholder {PLACEHOLDER!r}")
        if set(self.professions) != set(GENDERS) or not all(self.professions[g] for g in GENDERS):
            raise ValueError(f"professions must map each of {GENDERS} to a non-empty list, got keys {sorted(self.professions)}")

    def cases(self) -> pd.DataFrame:
        """One row per profession: `profession, biased_to` (the gender it leans to)."""
        return pd.DataFrame([{"profession": p, "biased_to": g} for g in GENDERS for p in self.professions[g]])


def fill(prompt: str, gender: str) -> str:
    """`prompt` with `<gend>` replaced by `gender`."""
    return prompt.replace(PLACEHOLDER, gender)


def paper_bias_data() -> BiasData:
    """Table 22's eight prompts and Table 23's 32 professions."""
    text = importlib.resources.files("arithlens").joinpath("resources/bias_prompts.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    return BiasData(tuple(raw["prompts"]), {g: tuple(raw["professions"][g]) for g in GENDERS})


def load_professions(path: str | pathlib.Path) -> dict[str, tuple[str, ...]]:
    """Professions from a file: JSON `{"woman": [...], "man": [...]}` (or the shipped
    resource's layout) or text lines `woman: cleaner, nurse`."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise ValueError(f"professions file {str(path)!r} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
        raw = raw.get("professions", raw) if isinstance(raw, dict) else raw
    except json.JSONDecodeError:
        raw = {}
        for line in filter(None, (x.strip() for x in text.splitlines())):
            gender, _, items = line.partition(":")
            raw.setdefault(gender.strip(), []).extend(x.strip() for x in items.split(",") if x.strip())
    if not isinstance(raw, dict) or set(raw) != set(GENDERS):
        raise ValueError(f"professions file {str(path)!r} must give a list for each of {GENDERS} (JSON object or 'woman: a, b' lines)")
    return {g: tuple(str(x) for x in raw[g]) for g in GENDERS}


# ---------------------------------------------------------------------------- p(prof | gend)
def continuation_ids(model: Any, prompt: str, text: str) -> list[int]:
    """The tokens of `text` after `prompt`, as the tokenizer encodes `prompt + " " + text`."""
    sep = "" if prompt.endswith(" ") or text.startswith(" ") else " "
    pids, full = model.encode(prompt), model.encode(prompt + sep + text)
    specials = set(getattr(model.tokenizer, "all_special_ids", ()) or ())
    while full and full[-1] in specials:  # a tokenizer that appends EOS: not part of the string
        full = full[:-1]
    if full[: len(pids)] == pids and len(full) > len(pids):
        return full[len(pids) :]
    # The prompt's last token merges with the text: score the text's own tokens after the prompt.
    return list(model.tokenizer(sep + text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def profession_logprobs(
    model: Any, prompts: Sequence[str], professions: Sequence[str], interventions: Sequence[Any] = ()
) -> Float[torch.Tensor, "prompt profession"]:
    """`log p(profession | prompt)` of every pair: the summed log-probs of all the profession's tokens."""
    seqs = [(model.encode(p) + continuation_ids(model, p, q), len(model.encode(p))) for p in prompts for q in professions]
    out = torch.empty(len(seqs))
    by_len: dict[int, list[int]] = {}
    for i, (ids, _) in enumerate(seqs):
        by_len.setdefault(len(ids), []).append(i)
    with model.intervened(*interventions):
        for rows in by_len.values():
            for s in range(0, len(rows), model.batch_size):
                pick = rows[s : s + model.batch_size]
                tokens = torch.tensor([seqs[i][0] for i in pick], device=model.device)
                logp = model.bridge(tokens[:, :-1]).float().log_softmax(-1)
                token_lp = logp.gather(-1, tokens[:, 1:, None])[..., 0].cpu()  # [batch, pos]: log p(token t+1)
                starts = torch.tensor([seqs[i][1] for i in pick])
                scored = torch.arange(token_lp.shape[1])[None, :] >= starts[:, None] - 1
                out[pick] = (token_lp * scored).sum(-1)
    return einops.rearrange(out, "(p q) -> p q", p=len(prompts))


# ---------------------------------------------------------------------------- editing
def neuron_dict(model: Any, neurons: Any) -> dict[int, list[int]]:
    """`(layer, neuron)` pairs or `{layer: indices}` as a validated `{layer: sorted indices}`."""
    items = neurons.items() if isinstance(neurons, Mapping) else None
    out: dict[int, set[int]] = {}
    if items is None:
        pairs = list(neurons)
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise ValueError(f"neurons={neurons!r} must be (layer, neuron) pairs or a {{layer: indices}} dict")
        items = [(L, [n]) for L, n in pairs]
    for layer, idx in items:
        layer = validate.integer(layer, "neuron layer", low=0, high=model.n_layers - 1)
        out.setdefault(layer, set()).update(validate.int_sequence(idx, f"neurons of layer {layer}", low=0, high=model.d_mlp - 1))
    return {L: sorted(v) for L, v in sorted(out.items())}


def zero_neurons(model: Any, neurons: Any) -> Any:
    """The edit as an intervention: the neurons' coefficient scores zeroed (`ZeroNeurons` per layer)."""

    return Interventions([ZeroNeurons(L, idx) for L, idx in neuron_dict(model, neurons).items()])


def edit(model: Any, neurons: Any, name: str | None = None) -> Any:
    """A copy of `model` whose `neurons` have every parameter zeroed (`gate_proj`/`up_proj` rows,
    `down_proj` column); save it with [`save_model`][arithlens.analysis.tuning.save_model].

    Args:
        model: The model ([`LensModel`][arithlens.core.model.LensModel]); never modified.
        neurons: `(layer, neuron)` pairs (e.g. [`GenderBiasResult.neurons`][arithlens.cna.bias.GenderBiasResult]) or `{layer: indices}`.
        name: The copy's display name.
    """

    chosen = neuron_dict(model, neurons)
    check_gated(model, list(chosen))
    hf = hf_copy(model)
    params = dict(hf.named_parameters())
    with torch.no_grad():
        for layer, idx in chosen.items():
            mlp = hf.get_submodule(mlp_path(params, layer))
            index = torch.tensor(idx, dtype=torch.long, device=model.device)
            for proj in (mlp.gate_proj, mlp.up_proj):
                proj.weight[index] = 0.0
                if proj.bias is not None:
                    proj.bias[index] = 0.0
            mlp.down_proj.weight[:, index] = 0.0
    return lens_from_hf(hf, model, name or f"{model.name}-edited")


# ---------------------------------------------------------------------------- Appendix D
@dataclass
class ProfessionDiscoveryResult(Result):
    """Appendix D: the top next tokens of each prompt per gender.

    Attributes:
        df: One row per (prompt, gender, rank): `prompt, gender, rank, token, prob,
            one_sided` (the token is not among the other gender's top tokens for that prompt).
    """

    def candidates(self, min_prompts: int = 1) -> pd.DataFrame:
        """Tokens one-sided for a gender in at least `min_prompts` prompts: `token, gender, n_prompts, mean_prob`."""
        validate.positive_int(min_prompts, "min_prompts")
        one = self.df[self.df["one_sided"]].assign(token=lambda d: d["token"].str.strip())
        out = one.groupby(["gender", "token"]).agg(n_prompts=("prompt", "nunique"), mean_prob=("prob", "mean")).reset_index()
        out = out[out["n_prompts"] >= min_prompts]
        return out.sort_values(["gender", "n_prompts", "mean_prob"], ascending=[True, False, False]).reset_index(drop=True)

    def plot(self, n: int = 15, **kwargs: Any) -> Any:
        """The `n` most frequent one-sided tokens of each gender, by the number of prompts."""
        import plotly.express as px

        top = self.candidates().groupby("gender").head(n)
        fig = px.bar(top, x="token", y="n_prompts", color="gender", barmode="group",
                     title="Next tokens in one gender's top list only (Appendix D)", **kwargs)  # fmt: skip
        fig.update_layout(xaxis_title="token", yaxis_title="prompts where only this gender has it")
        return format_hovers(fig)


@torch.no_grad()
def discover_professions(
    model: Any,
    *,
    top_k: int = 100,
    data: BiasData | None = None,
) -> ProfessionDiscoveryResult:
    """Appendix D: top-`top_k` next tokens per prompt and gender, and the one-sided ones.

    Args:
        top_k: Next tokens kept per prompt and gender (the paper: 100).
        model: The model.
        data: The prompts (default [`paper_bias_data`][arithlens.cna.bias.paper_bias_data]).
    """
    top_k = validate.positive_int(top_k, "top_k")
    data = data or paper_bias_data()

    model = load_model(model)
    k = min(top_k, model.d_vocab)
    rows = []
    for prompt in data.prompts:
        tops = {}
        for gender in GENDERS:
            tokens = torch.tensor([model.encode(fill(prompt, gender))], device=model.device)
            probs = model.bridge(tokens)[0, -1].float().softmax(-1)
            top = probs.topk(k)
            tops[gender] = list(zip(top.indices.tolist(), top.values.tolist()))
        for gender, other in zip(GENDERS, GENDERS[::-1]):
            theirs = {t for t, _ in tops[other]}
            rows += [{"prompt": prompt, "gender": gender, "rank": r, "token": model.decode([t]), "prob": p,
                      "one_sided": t not in theirs} for r, (t, p) in enumerate(tops[gender])]  # fmt: skip
    return ProfessionDiscoveryResult(df=pd.DataFrame(rows))


# ---------------------------------------------------------------------------- Tables 12, 13
@dataclass
class GenderBiasResult(Result):
    """Tables 12 and 13 and the edit's collateral cost.

    Attributes:
        df: One row per (model, prompt, profession): `model` (`original`/`edited`),
            `prompt, profession, biased_to, logp_woman, logp_man, bias` (signed: log p of the
            biased-to gender minus the other's), `abs_bias` (`|logp_woman − logp_man|`).
        neurons: The edited `(layer, neuron)` pairs, most important first.
        neuron_scores: Per edited neuron: `layer, neuron, importance_change` (mean over professions).
        cases: CNA's cases: `case, prompt, profession, biased_to`.
        per_case: CNA's neurons per case (`case_frame` of each), sorted by importance change.
        collateral: Per model: `perplexity` (general text), `arithmetic_accuracy` (1-digit).
    """

    neurons: list[tuple[int, int]] = field(default_factory=list)
    neuron_scores: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    cases: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    per_case: dict[int, pd.DataFrame] = field(default_factory=dict, repr=False)
    collateral: pd.DataFrame = field(default_factory=pd.DataFrame)

    def table(self) -> pd.DataFrame:
        """Table 13 (see [`table13`][arithlens.cna.bias.GenderBiasResult.table13])."""
        return self.table13()

    def table13(self, absolute: bool = False) -> pd.DataFrame:
        """Table 13: mean bias, total / woman-biased / man-biased professions, plus the collateral columns.

        `absolute=True` averages `abs_bias` instead of the paper's signed `bias`.
        """
        col = "abs_bias" if validate.boolean(absolute, "absolute") else "bias"
        rows = {}
        for name, part in self.df.groupby("model", sort=False):
            rows[name] = {"total bias": part[col].mean(), "woman bias": part.loc[part["biased_to"] == "woman", col].mean(),
                          "man bias": part.loc[part["biased_to"] == "man", col].mean()}  # fmt: skip
        out = pd.DataFrame(rows).T
        if not self.collateral.empty:
            out = out.join(self.collateral.set_index("model"))
        return out

    def table12(self, profession: str, k: int = 2) -> pd.DataFrame:
        """Table 12: the top-`k` neurons for `profession` (first prompt), a row per gender: `FFNv, gend, imp, coef, top_tokens`."""
        match = self.cases.index[self.cases["profession"] == profession]
        if not len(match):
            raise ValueError(f"profession={profession!r} is not one of the analysed {sorted(self.cases['profession'].unique())}")
        case = int(match[0])
        first = "F" if self.cases.loc[case, "biased_to"] == "woman" else "M"
        labels = (first, "M" if first == "F" else "F")
        rows = []
        for r in self.per_case[case].head(validate.positive_int(k, "k")).itertuples():
            for label, imp, coef in ((labels[0], r.importance, r.coef), (labels[1], r.importance_other, r.coef_other)):
                rows.append({"FFNv": f"{r.layer}_{r.neuron}", "gend": label, "imp": imp, "coef": coef, "top_tokens": getattr(r, "top_tokens", "")})
        return pd.DataFrame(rows)

    def plot(self, **kwargs: Any) -> Any:
        """Table 13 as bars: mean bias of the original and the edited model."""
        import plotly.express as px

        long = self.table13()[["total bias", "woman bias", "man bias"]].reset_index(names="model")
        long = long.melt(id_vars="model", var_name="professions", value_name="bias")
        fig = px.bar(long, x="professions", y="bias", color="model", barmode="group",
                     title=f"Gender bias before and after zeroing {len(self.neurons)} neurons (Table 13)", **kwargs)  # fmt: skip
        fig.update_layout(xaxis_title="professions", yaxis_title="mean log p(prof | biased gender) − log p(prof | other)")
        return format_hovers(fig)


@dataclass(frozen=True, kw_only=True)
class GenderBiasSettings:
    """How [`gender_bias`][arithlens.cna.bias.gender_bias] finds and measures the bias neurons (§6.2).

    Attributes:
        n_neurons: Neurons edited (the paper: 18).
        data: Prompts and professions (default Tables 22 and 23).
        cna_prompts: Indices of the prompts CNA runs on (default the first, as Appendix D).
        mode: CNA mode, `"exact"` (default, the paper) or `"fast"`.
        top_tokens: Top vocabulary tokens per neuron in Table 12.
        collateral: Measure perplexity and arithmetic accuracy before and after.
        ppl_tokens: Tokens of the general text scored for perplexity.
        n_arithmetic: 1-digit numeral cases (all ops, templates 1–4) sampled for accuracy.
        seed: Seeds the arithmetic sample.
        progress: Progress bars.
    """

    n_neurons: int = 18
    data: BiasData | None = None
    cna_prompts: Sequence[int] = (0,)
    mode: str = "exact"
    top_tokens: int = 10
    collateral: bool = True
    ppl_tokens: int = 1024
    n_arithmetic: int = 200
    seed: int = 0
    progress: bool = False

    @classmethod
    def paper(cls, **changes: Any) -> "GenderBiasSettings":
        """§6.2 / Appendix D's setup: Tables 22–23's prompts and professions, exact CNA on the first
        prompt, the top 18 neurons zeroed, the signed bias over all eight prompts."""
        base = {"n_neurons": 18, "data": paper_bias_data(), "cna_prompts": (0,), "mode": "exact"}
        return cls(**{**base, **changes})

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_neurons", validate.positive_int(self.n_neurons, "n_neurons"))
        if self.data is not None and not isinstance(self.data, BiasData):
            raise ValueError(f"data={self.data!r} must be a BiasData (see paper_bias_data, load_professions)")
        object.__setattr__(self, "data", self.data or paper_bias_data())
        high = len(self.data.prompts) - 1
        object.__setattr__(self, "cna_prompts", tuple(validate.int_sequence(self.cna_prompts, "cna_prompts", low=0, high=high, unique=True)))
        validate.choice(self.mode, "mode", ("exact", "fast"))
        object.__setattr__(self, "top_tokens", validate.non_negative_int(self.top_tokens, "top_tokens"))
        object.__setattr__(self, "collateral", validate.boolean(self.collateral, "collateral"))
        object.__setattr__(self, "ppl_tokens", validate.positive_int(self.ppl_tokens, "ppl_tokens"))
        object.__setattr__(self, "n_arithmetic", validate.positive_int(self.n_arithmetic, "n_arithmetic"))
        object.__setattr__(self, "seed", validate.integer(self.seed, "seed"))
        object.__setattr__(self, "progress", validate.boolean(self.progress, "progress"))


def gender_bias(model: Any, settings: GenderBiasSettings | None = None) -> GenderBiasResult:
    """§6.2: CNA between genders, the top neurons zeroed, bias and collateral cost measured — a procedure.

    Args:
        model: The model; never modified (the edit is an intervention; [`edit`][arithlens.cna.bias.edit]
            makes an edited copy).
        settings: What to run ([`GenderBiasSettings`][arithlens.cna.bias.GenderBiasSettings]; default ones).
    """
    settings = settings or GenderBiasSettings()
    if not isinstance(settings, GenderBiasSettings):
        raise ValueError(f"settings={settings!r} must be GenderBiasSettings")
    data = settings.data

    model = load_model(model)
    if settings.n_neurons > model.n_layers * model.d_mlp:
        raise ValueError(f"n_neurons={settings.n_neurons} is larger than the model's {model.n_layers * model.d_mlp} FFN neurons")
    profs = data.cases()
    cases = pd.DataFrame([{"prompt": data.prompts[i], **row} for i in settings.cna_prompts for row in profs.to_dict("records")])
    other = {"woman": "man", "man": "woman"}
    mine = datasets.prompts(model.tokenizer, [fill(r.prompt, r.biased_to) for r in cases.itertuples()], list(cases["profession"]))
    theirs = datasets.prompts(model.tokenizer, [fill(r.prompt, other[r.biased_to]) for r in cases.itertuples()], list(cases["profession"]))
    scorer = ComparativeNeuronScores(top_tokens=settings.top_tokens, other_data=theirs, target="answer",
                 mode=settings.mode, progress=settings.progress)  # fmt: skip
    res = scorer.run(model, mine)
    mean = einops.rearrange(res.importance_change.mean(0), "l n -> (l n)")
    top = mean.topk(settings.n_neurons).indices.tolist()
    neurons = [(res.layers[i // model.d_mlp], i % model.d_mlp) for i in top]
    scores = pd.DataFrame([{"layer": L, "neuron": n, "importance_change": float(mean[i])} for (L, n), i in zip(neurons, top)])
    edit_iv = zero_neurons(model, neurons)
    prompts = {g: [fill(p, g) for p in data.prompts] for g in GENDERS}
    rows, costs = [], []
    for name, ivs in tqdm([("original", ()), ("edited", (edit_iv,))], desc="bias", unit="model", disable=not settings.progress):
        lp = {g: profession_logprobs(model, prompts[g], list(profs["profession"]), ivs) for g in GENDERS}
        for i, prompt in enumerate(data.prompts):
            for j, prof in enumerate(profs.itertuples()):
                woman, man = float(lp["woman"][i, j]), float(lp["man"][i, j])
                signed = woman - man if prof.biased_to == "woman" else man - woman
                rows.append({"model": name, "prompt": prompt, "profession": prof.profession, "biased_to": prof.biased_to,
                             "logp_woman": woman, "logp_man": man, "bias": signed, "abs_bias": abs(woman - man)})  # fmt: skip
        if settings.collateral:
            costs.append({"model": name, **_collateral(model, ivs, settings.n_arithmetic, settings.seed, settings.ppl_tokens)})
    return GenderBiasResult(df=pd.DataFrame(rows), neurons=neurons, neuron_scores=scores, cases=cases,
                            per_case={i: res.case_frame(i) for i in range(len(cases))},
                            collateral=pd.DataFrame(costs))  # fmt: skip


def _collateral(model: Any, interventions: Sequence[Any], n_arithmetic: int, seed: int, ppl_tokens: int) -> dict[str, float]:
    """General-text perplexity and 1-digit arithmetic accuracy under `interventions`."""

    arith = datasets.arithmetic(model.tokenizer, ops="+-*/", digits=1, templates=[1, 2, 3, 4], forms=["numeral"])
    if n_arithmetic < len(arith):
        arith = arith.sample(n_arithmetic, seed=seed)
    with model.intervened(*interventions):
        ppl = perplexity(model, general_text(), max_tokens=ppl_tokens)
    accuracy = evaluate(model, arith, full_answer=False, interventions=list(interventions)).accuracy
    return {"perplexity": ppl, "arithmetic_accuracy": accuracy}
