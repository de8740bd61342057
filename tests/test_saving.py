"""Saved results: `load_result(result.save(dir))` gives back every result class exactly.

Each result class is built on the tiny random Llama through the public API, saved, loaded,
and compared field by field (tables exactly, tensors bit for bit, everything else equal), and
every method a user calls without arguments (`top()`, `table()`, `plot()`, groupings, …) must
return the same on the loaded result.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

import arithlens
from arithlens import data
from arithlens.analysis.saving import RESULT_JSON, TENSORS, saveable_classes
from arithlens.circuits import (
    EndAttention,
    Knockout,
    MLPProbe,
    PathPatching,
    PreciseSFTSettings,
    counterfactual_pairs,
    precise_sft,
)
from arithlens.cna import (
    BiasData,
    ComparativeNeuronScores,
    GenderBiasSettings,
    HeadAblation,
    HiddenInterpretable,
    LoRACoefficients,
    LoRASettings,
    LogicChain,
    NamedVector,
    MaskKeep,
    NeuronImportance,
    PredictionEnhancingDAG,
    PruningSettings,
    VocabularyProjection,
    VOTransform,
    cna_pruning,
    discover_professions,
    gender_bias,
    lora_layer_sweep,
)
from arithlens.testing import tiny_llama

HEAD = "1.1"
BIAS = BiasData(("A <gend> works as a",), {"woman": ("nurse",), "man": ("guard",)})
TEXT = "The river keeps moving in the dark. Tomorrow the fog will return."


@pytest.fixture(scope="module")
def cases(tiny):
    return data.arithmetic(tiny.tokenizer, ops="+-", templates=[4], forms=["numeral"]).sample(6, seed=0)


@pytest.fixture(scope="module")
def pairs(tiny):
    return counterfactual_pairs(tiny, data.zhang(tiny.tokenizer, n_per_op=2))


def _vo() -> VOTransform:
    return VOTransform(upto_layer=2, k=10, progress=False)


BUILDERS = {
    "EvaluationResult": lambda m, c, p, d: arithlens.evaluate(m, c),
    "HeadAblationResult": lambda m, c, p, d: HeadAblation(layers=[0, 1], progress=False).run(m, c),
    "NeuronImportanceResult": lambda m, c, p, d: NeuronImportance(mode="fast", rescore=4, top_tokens=3, progress=False).run(m, c),
    "ComparativeNeuronScoresResult": lambda m, c, p, d: ComparativeNeuronScores(intervention=HEAD, top_tokens=3, progress=False).run(m, c),
    "MaskKeepResult": lambda m, c, p, d: MaskKeep(intervention=HEAD, k=(2, 5), correct_only=False, progress=False).run(m, c),
    "PredictionEnhancingDAGResult": lambda m, c, p, d: PredictionEnhancingDAG(intervention=HEAD, k=4, k_table=(2,), top_tokens=2, progress=False).run(m, c),
    "LogicChainResult": lambda m, c, p, d: LogicChain(intervention=HEAD, k=4, k_shallow=2, top_tokens=2, progress=False).run(m, c[:1]),
    "VOScanResult": lambda m, c, p, d: _vo().scan(m),
    "VOTransformResult": lambda m, c, p, d: dataclasses.replace(_vo(), layer=2, top_tokens=3).run(m, [(0, 3), "3", "1_7"]),
    "HiddenInterpretableResult": lambda m, c, p, d: HiddenInterpretable(ms=(0, 1), transform=_vo(), progress=False).run(m, c),
    "VocabularyProjectionResult": lambda m, c, p, d: VocabularyProjection(k=3).run(m, [NamedVector("w3", m.bridge.W_E[3]), NamedVector("w5", m.bridge.W_E[5])]),
    "LoRACoefficientsResult": lambda m, c, p, d: LoRACoefficients(ks=(3,), mode="exact", case_k=2).run(m, c[:3], loras={1: tiny_llama(seed=1)}),
    "LoRALayerSweepResult": lambda m, c, p, d: lora_layer_sweep(
        m, LoRASettings(layers=[1], lrs=[1e-2], out_dir=str(d / "lora"), steps=2, n_train=12, n_val=4, n_test=4, progress=False)
    ),
    "CNAPruningResult": lambda m, c, p, d: cna_pruning(
        m,
        PruningSettings(lora_layer=0, top_k=5, deep_layers=[1, 2], mode="exact", out_dir=str(d / "pruned"), keep_models=True, progress=False,
                        lora=LoRASettings(lrs=[1e-3], steps=2, n_train=12, n_val=4, n_test=4, progress=False)),  # fmt: skip
        lora_model=tiny_llama(seed=1),
        cases=c,
    ),
    "ProfessionDiscoveryResult": lambda m, c, p, d: discover_professions(m, top_k=3, data=BIAS),
    "GenderBiasResult": lambda m, c, p, d: gender_bias(m, GenderBiasSettings(n_neurons=2, data=BIAS, mode="exact", top_tokens=2, ppl_tokens=32, n_arithmetic=4)),
    "PathPatchingResult": lambda m, c, p, d: PathPatching(progress=False).run(m, p),
    "KnockoutResult": lambda m, c, p, d: Knockout(k=2, n_random=1, progress=False).run(m, p, patching=PathPatching(progress=False).run(m, p)),
    "EndAttentionResult": lambda m, c, p, d: EndAttention(heads=["0.1", "2.3"]).run(m, p),
    "MLPProbeResult": lambda m, c, p, d: MLPProbe(layers=[0, 1], k=3).run(m, p),
    "PreciseSFTResult": lambda m, c, p, d: precise_sft(
        m, PreciseSFTSettings(nodes=["1.3"], variants=["full"], steps=1, batch_size=4, full_answer=False, progress=False),
        train=c, test=c, text=TEXT,
    ),
}


def test_every_result_class_has_a_builder():
    results = {name for name, cls in saveable_classes().items() if issubclass(cls, arithlens.Result) and cls is not arithlens.Result}
    assert results == set(BUILDERS), "add a builder for each new result class"


def _same(a, b, where: str) -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=where)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, check_exact=True, obj=where)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.cpu(), b) or bool(((a.cpu() == b) | (a.cpu().isnan() & b.isnan())).all()), where
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        for f in dataclasses.fields(a):
            if f.name not in getattr(type(a), "unsaved_fields", ()) and f.name != "meta":
                _same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _outputs(result) -> dict:
    """Every public method callable without arguments, and what it returns (or raises)."""
    out = {}
    for name, member in inspect.getmembers(type(result), callable):
        if (name.startswith("_") and name != "_repr_html_") or name in ("save", "to_csv"):
            continue
        params = list(inspect.signature(member).parameters.values())[1:]
        if any(p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            continue
        try:
            value = getattr(result, name)()
        except Exception as err:  # noqa: BLE001 - the loaded result must fail the same way
            value = ("raised", type(err).__name__, str(err))
        if hasattr(value, "to_plotly_json"):
            value = json.loads(value.to_json())
        out[name] = value
    return out


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_save_load_round_trips(name, tiny, cases, pairs, tmp_path):
    result = BUILDERS[name](tiny, cases, pairs, tmp_path)
    assert type(result).__name__ == name
    path = result.save(tmp_path / "saved")
    assert os.path.isfile(os.path.join(path, RESULT_JSON))
    loaded = arithlens.load_result(path)
    assert type(loaded) is type(result)
    _same(result, loaded, name)
    for field in type(result).unsaved_fields:  # live models are not saved: their defaults come back
        assert getattr(loaded, field) == type(result).__dataclass_fields__[field].default_factory()
    before, after = _outputs(result), _outputs(loaded)
    assert before.keys() == after.keys()
    for method in before:
        _same(before[method], after[method], f"{name}.{method}()")
    meta = loaded.meta
    assert set(meta["versions"]) >= {"arithlens", "torch", "transformers", "transformer_lens"}
    if result.meta:  # an analysis's run records its model, options and data
        assert meta["model"]["name"] == tiny.name and meta["analysis"]["options"]
        assert meta["data"]["class"]
    # saved twice to the same place: replaced, not mixed
    assert arithlens.load_result(loaded.save(path)).df.equals(result.df)


def test_head_ablation_keeps_per_case_tensors_and_regroups(tiny, cases, tmp_path):
    result = HeadAblation(layers=[1], progress=False).run(tiny, cases)
    loaded = arithlens.load_result(result.save(tmp_path / "heads"))
    assert loaded.correct.dtype == torch.bool and torch.equal(loaded.correct, result.correct)
    assert loaded.meta["model"]["name"] == tiny.name
    assert loaded.meta["analysis"] == {"class": "HeadAblation", "options": result.meta["analysis"]["options"]}
    assert loaded.meta["data"]["n_cases"] == len(cases)
    for column in ("op", "digits"):
        _same(result.by(column), loaded.by(column), f"by({column})")
    with open(os.path.join(tmp_path / "heads", RESULT_JSON)) as f:
        doc = json.load(f)
    assert doc["class"] == "HeadAblationResult" and doc["fields"]["correct"] == {"__tensor__": "correct", "device": "cpu"}
    assert os.path.isfile(tmp_path / "heads" / TENSORS) and os.path.isfile(tmp_path / "heads" / "tables" / "df.parquet")


def test_save_and_load_refuse_bad_paths(tiny, cases, tmp_path):
    result = arithlens.evaluate(tiny, cases)
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        result.save(tmp_path / "file")
    with pytest.raises(ValueError, match="non-empty directory"):
        result.save(tmp_path / "full")
    with pytest.raises(ValueError, match="no saved result"):
        arithlens.load_result(tmp_path / "full")
    bad = dataclasses.replace(result, group_by=(object(),))
    with pytest.raises(ValueError, match=r"group_by\.0 holds a builtins\.object"):
        bad.save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before anything is written
