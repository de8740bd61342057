"""CNA-guided pruning (§6.1): real slicing, saving, the CNA selection and the CLI's errors."""

import json

import einops
import pytest
import torch
from conftest import assert_untouched, model_state

from arithlens import data
from arithlens.cna.comparative import ComparativeNeuronScores
from arithlens.cna.lora import LoRASettings
from arithlens.cna.pruning import PruningSettings, cna_pruning, prune
from arithlens.analysis.tuning import hf_copy, layer_widths, load_saved, n_parameters, save_model
from arithlens.cna.frames import top_mask
from arithlens.core.interventions import KeepNeurons
from arithlens.testing import tiny_llama

KEEP = {1: [0, 5, 9, 63], 2: [3]}


def _snapshot(model):
    """`model_state` after one clean cached pass: the bridge adds torch hooks of its own on its
    first `run_with_cache`, which is not an analysis leaving hooks behind."""
    model.cache(["1+1="])
    return model_state(model)


def _all_logits(model, prompt="12+34=", interventions=()):
    tokens = torch.tensor([model.encode(prompt)])
    with torch.no_grad(), model.intervened(*interventions):
        return model.bridge(tokens).float().log_softmax(-1)


def test_hf_copy_computes_what_the_lens_model_computes(tiny):
    hf = hf_copy(tiny)
    tokens = torch.tensor([tiny.encode("12+34=")])
    with torch.no_grad():
        ours = hf(input_ids=tokens).logits.log_softmax(-1)
    torch.testing.assert_close(ours, _all_logits(tiny), atol=1e-5, rtol=0)


def test_pruned_model_equals_keep_neurons_intervention(tiny):
    before = _snapshot(tiny)
    pruned = prune(tiny, KEEP)
    torch.testing.assert_close(_all_logits(pruned), _all_logits(tiny, interventions=[KeepNeurons([1, 2], KEEP)]), atol=1e-5, rtol=0)
    # The neurons are gone, not masked: widths and the parameter count drop by 3 * d_model per neuron.
    assert layer_widths(pruned) == [64, 4, 1]
    removed = (64 - 4) + (64 - 1)
    assert n_parameters(tiny) - n_parameters(pruned) == removed * 3 * tiny.d_model
    assert_untouched(tiny, *before)


def test_pruning_a_layer_to_no_neurons_removes_its_ffn(tiny):
    pruned = prune(tiny, {2: []})
    torch.testing.assert_close(_all_logits(pruned), _all_logits(tiny, interventions=[KeepNeurons([2], {2: []})]), atol=1e-5, rtol=0)


def test_pruned_model_saves_and_reloads_with_identical_logits(tiny, tmp_path):
    pruned = prune(tiny, KEEP)
    path = save_model(pruned, tmp_path / "pruned")
    config = json.loads((path / "config.json").read_text())
    assert config["arithlens_intermediate_sizes"] == [64, 4, 1]
    again = load_saved(path, device="cpu")
    assert layer_widths(again) == [64, 4, 1]
    torch.testing.assert_close(_all_logits(again), _all_logits(pruned), atol=1e-6, rtol=0)


def test_top_mask_picks_each_case_top_k():
    scores = torch.tensor([[[0.0, 5.0], [3.0, 1.0]], [[9.0, 8.0], [0.0, 7.0]]])
    mask = top_mask(scores, 2)
    assert mask.tolist() == [[[False, True], [True, False]], [[True, True], [False, False]]]


@pytest.mark.parametrize(
    "keep, message",
    [({3: [0]}, "keep layer=3 is out of range"), ({1: [64]}, "keep[1] item=64 is out of range"), ({-1: [0]}, "keep layer=-1")],
)
def test_prune_rejects_bad_neurons(tiny, keep, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        prune(tiny, keep)


def test_resolve_checks_layers_and_neuron_count(tiny):
    assert PruningSettings().resolve(tiny) == (round(9 * 3 / 32), [2], 1)
    with pytest.raises(ValueError, match="lora_layer=3 is out of range"):
        PruningSettings(lora_layer=3).resolve(tiny)
    with pytest.raises(ValueError, match="deep_layers item=5 is out of range"):
        PruningSettings(deep_layers=[1, 5]).resolve(tiny)
    with pytest.raises(ValueError, match="top_k=193 is larger than the model's 192 FFN neurons"):
        PruningSettings(top_k=193).resolve(tiny)
    with pytest.raises(ValueError, match="top_k=0"):
        PruningSettings(top_k=0)


def test_model_without_gated_mlp_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    from arithlens.core.model import LensModel
    from arithlens.testing import char_tokenizer

    tok = char_tokenizer()
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=64))
    model = LensModel.from_hf(gpt2, tok, name="tiny-gpt2", device="cpu")
    with pytest.raises(ValueError, match="has no gated MLP"):
        PruningSettings().resolve(model)


def test_cna_pruning_keeps_the_union_of_each_case_top_k(tiny, tmp_path):
    before = _snapshot(tiny)
    other = tiny_llama(seed=1)  # stands in for the LoRA model: same shape, other weights
    cases = data.arithmetic(tiny.tokenizer, ops="+-", templates=[4], forms=["numeral"]).sample(6, seed=0)
    lora = LoRASettings(lrs=[1e-3], steps=2, n_train=24, n_val=4, n_test=8, progress=False)
    settings = PruningSettings(lora_layer=0, top_k=7, deep_layers=[1, 2], mode="exact", lora=lora, out_dir=tmp_path,
                               keep_models=True, progress=False)  # fmt: skip
    result = cna_pruning(tiny, settings, lora_model=other, cases=cases)
    # Brute force: CNA with the LoRA model first, each case's top 7, their union in layers 1-2.
    res = ComparativeNeuronScores(top_tokens=0, other_model=tiny, target="prediction", mode="exact").run(other, cases)
    flat = einops.rearrange(res.importance_change, "c l n -> c (l n)")
    expected = {1: set(), 2: set()}
    for row in flat:
        for j in row.topk(7).indices.tolist():
            if j // 64 in expected:
                expected[j // 64].add(j % 64)
    assert {L: set(v) for L, v in result.kept.items()} == expected
    assert {L: len(v) for L, v in result.random_kept.items()} == {L: len(v) for L, v in expected.items()}
    df = result.df.set_index("model")
    assert list(df.index) == ["original", "lora0", "cna-pruned", "lora0-p", "random-pruned", "lora0-r"]
    kept = sum(len(v) for v in expected.values())
    assert df.loc["cna-pruned", "deep_neurons"] == kept == df.loc["random-pruned", "deep_neurons"]
    assert df.loc["original", "n_params"] - df.loc["cna-pruned", "n_params"] == (128 - kept) * 3 * tiny.d_model
    assert df.loc["lora0-p", "n_params"] == df.loc["cna-pruned", "n_params"]
    assert list(result.table().columns) == ["origin", "LoRA0", "LoRA0-p", "LoRA0-r"]
    # Table 11 scores whole answers by default (the 2-digit split has multi-token answers).
    assert result.metric == "full_accuracy" and df["full_accuracy"].notna().all()
    from arithlens.analysis.evaluation import evaluate

    _, _, test = lora.split(tiny)
    full = evaluate(result.models["cna-pruned"], test).cases["full_correct"].mean()
    assert df.loc["cna-pruned", "full_accuracy"] == pytest.approx(float(full))
    assert result.table().loc["acc", "LoRA0-p"] == pytest.approx(round(100 * df.loc["lora0-p", "full_accuracy"], 1))
    again = load_saved(result.saved["cna-pruned"], device="cpu")
    torch.testing.assert_close(_all_logits(again), _all_logits(result.models["cna-pruned"]), atol=1e-6, rtol=0)
    assert result.plot().layout.yaxis.title.text
    assert_untouched(tiny, *before)


# ---------------------------------------------------------------------------- CLI
def _no_load(monkeypatch):
    import arithlens.app.cli

    def refuse(args):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(arithlens.app.cli, "load_model_from_args", refuse)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--top-k", "0"], "top_k=0"),
        (["--top-k", "many"], "--top-k='many' is not an integer"),
        (["--steps", "-3"], "steps=-3"),
        (["--lrs", "1e-3,fast"], "--lrs='fast' is not a comma-separated list of numbers"),
        (["--ops", "+%"], "--ops='+%'"),
        (["--deep-layers", "20-10"], "runs backwards"),
        (["--n-cases", "0"], "--n-cases=0"),
    ],
)
def test_prune_cli_rejects_bad_arguments_before_loading(monkeypatch, capsys, tmp_path, argv, message):
    from arithlens.app.cli import main

    _no_load(monkeypatch)
    assert main(["prune", *argv, "--out", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv, message",
    [(["--lora-layer", "3"], "lora_layer=3 is out of range"), (["--top-k", "500"], "larger than the model's 192 FFN neurons")],
)
def test_prune_cli_rejects_what_the_model_cannot_take(monkeypatch, capsys, tmp_path, tiny, argv, message):
    import arithlens.app.cli
    from arithlens.app.cli import main

    monkeypatch.setattr(arithlens.app.cli, "load_model_from_args", lambda args: tiny)
    assert main(["prune", *argv, "--out", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "t.csv").exists()
