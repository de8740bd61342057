"""Gender-bias editing (§6.2): the shipped data, whole-string probabilities, the edit as an
intervention and as a saved copy, Tables 12-13 against brute force, and the CLI's errors."""

import json

import einops
import pandas as pd
import pytest
import torch
from conftest import assert_untouched, model_state

import arithlens
from arithlens import data
from arithlens.cna.bias import (
    BiasData,
    GenderBiasSettings,
    discover_professions,
    gender_bias,
    continuation_ids,
    edit,
    fill,
    load_professions,
    paper_bias_data,
    profession_logprobs,
    zero_neurons,
)
from arithlens.cna.comparative import ComparativeNeuronScores
from arithlens.analysis.tuning import save_model

SMALL = BiasData(("A <gend> works as a", "The job of a <gend> is"), {"woman": ("nurse", "maid"), "man": ("guard", "dental assistant")})
NEURONS = [(2, 5), (0, 63), (2, 17)]


def _snapshot(model):
    """`model_state` after one clean cached pass (the bridge's own first-use torch hooks)."""
    model.cache(["1+1="])
    return model_state(model)


def test_paper_data_are_tables_22_and_23():
    bias = paper_bias_data()
    assert len(bias.prompts) == 8 and all("<gend>" in p for p in bias.prompts)
    assert bias.prompts[0] == "A <gend> works as a"
    assert [len(bias.professions[g]) for g in ("woman", "man")] == [16, 16]
    assert "dental assistant" in bias.professions["woman"] and "machine operator" in bias.professions["man"]
    assert fill(bias.prompts[3], "woman") == "A woman's occupation is"


def test_profession_logprob_sums_every_token_of_the_string(tiny):
    # The character tokenizer emits a bare ' ' before the word: it is part of the string.
    assert tiny.decode(continuation_ids(tiny, "A man works as a", "dental assistant")) == " dental assistant"
    got = profession_logprobs(tiny, ["A man works as a", "A woman is"], ["nurse", "dental assistant"])
    for i, prompt in enumerate(["A man works as a", "A woman is"]):
        for j, prof in enumerate(["nurse", "dental assistant"]):
            ids, n = tiny.encode(prompt + " " + prof), len(tiny.encode(prompt))
            total = 0.0
            for t in range(n, len(ids)):  # one forward pass per token: teacher forcing by hand
                with torch.no_grad():
                    total += float(tiny.bridge(torch.tensor([ids[:t]]))[0, -1].float().log_softmax(-1)[ids[t]])
            assert float(got[i, j]) == pytest.approx(total, abs=1e-4)


def test_edit_equals_the_intervention_and_saves(tiny, tmp_path):
    before = _snapshot(tiny)
    edited = edit(tiny, NEURONS)
    tokens = torch.tensor([tiny.encode("A woman works as a nurse")])
    with torch.no_grad():
        ours = edited.bridge(tokens).log_softmax(-1)
        with tiny.intervened(zero_neurons(tiny, NEURONS)):
            expected = tiny.bridge(tokens).log_softmax(-1)
        plain = tiny.bridge(tokens).log_softmax(-1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(ours, plain, atol=1e-4)
    assert float(edited.bridge.W_out[2, 5].abs().sum()) == 0.0 and float(edited.bridge.W_in[0, :, 63].abs().sum()) == 0.0
    again = arithlens.load_model(str(save_model(edited, tmp_path / "edited")), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(again.bridge(tokens).log_softmax(-1), ours, atol=1e-5, rtol=0)
    assert_untouched(tiny, *before)


def test_gender_bias_against_brute_force(tiny):
    before = _snapshot(tiny)
    result = gender_bias(tiny, GenderBiasSettings(n_neurons=3, data=SMALL, mode="exact", top_tokens=3, ppl_tokens=64, n_arithmetic=8))
    # The neurons: CNA with the biased gender first, mean importance change over professions.
    profs = SMALL.cases()
    mine = data.prompts(tiny.tokenizer, [fill(SMALL.prompts[0], g) for g in profs["biased_to"]], list(profs["profession"]))
    other = {"woman": "man", "man": "woman"}
    theirs = data.prompts(tiny.tokenizer, [fill(SMALL.prompts[0], other[g]) for g in profs["biased_to"]], list(profs["profession"]))
    res = ComparativeNeuronScores(top_tokens=0, other_data=theirs, target="answer", mode="exact").run(tiny, mine)
    top = einops.rearrange(res.importance_change.mean(0), "l n -> (l n)").topk(3).indices.tolist()
    assert result.neurons == [(j // 64, j % 64) for j in top]
    # Table 13: §6.2's signed log p(prof | gend1) - log p(prof | gend2), gend1 the biased-to gender,
    # averaged, with and without the edit (and |difference| with absolute=True).
    signs = torch.tensor([1.0 if g == "woman" else -1.0 for g in profs["biased_to"]])
    assert set(profs["biased_to"]) == {"woman", "man"}
    for name, ivs in (("original", ()), ("edited", (zero_neurons(tiny, result.neurons),))):
        w = profession_logprobs(tiny, [fill(p, "woman") for p in SMALL.prompts], list(profs["profession"]), ivs)
        m = profession_logprobs(tiny, [fill(p, "man") for p in SMALL.prompts], list(profs["profession"]), ivs)
        signed = (w - m) * signs[None]
        assert bool((signed < 0).any())  # some sign is negative: signed and absolute differ here
        row = result.table13().loc[name]
        assert row["total bias"] == pytest.approx(float(signed.mean()), abs=1e-5)
        assert row["woman bias"] == pytest.approx(float(signed[:, :2].mean()), abs=1e-5)
        assert row["man bias"] == pytest.approx(float(signed[:, 2:].mean()), abs=1e-5)
        assert result.table13(absolute=True).loc[name, "total bias"] == pytest.approx(float((w - m).abs().mean()), abs=1e-5)
    assert len(result.df) == 2 * 2 * 4  # models x prompts x professions
    assert set(result.table13().columns) >= {"perplexity", "arithmetic_accuracy"}
    # Table 12: two rows per neuron, the biased gender's side first.
    t12 = result.table12("guard", k=2)
    assert list(t12["gend"]) == ["M", "F", "M", "F"]
    frame = res.case_frame(2)
    assert t12["imp"].tolist()[::2] == pytest.approx(frame["importance"].head(2).tolist())
    assert t12["imp"].tolist()[1::2] == pytest.approx(frame["importance_other"].head(2).tolist())
    assert result.plot().layout.yaxis.title.text
    assert_untouched(tiny, *before)


def test_discovery_marks_tokens_of_one_gender_only(tiny):
    result = discover_professions(tiny, top_k=5, data=SMALL)
    assert len(result.df) == 2 * 2 * 5
    for prompt in SMALL.prompts:
        tops = {}
        for gender in ("woman", "man"):
            with torch.no_grad():
                logits = tiny.bridge(torch.tensor([tiny.encode(fill(prompt, gender))]))[0, -1]
            tops[gender] = [tiny.decode([t]) for t in logits.topk(5).indices.tolist()]
        part = result.df[(result.df["prompt"] == prompt) & (result.df["gender"] == "woman")]
        assert list(part["token"]) == tops["woman"]
        assert list(part["one_sided"]) == [t not in tops["man"] for t in tops["woman"]]
    assert set(result.candidates()["gender"]) <= {"woman", "man"}


def test_bad_input_is_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="placeholder"):
        BiasData(("A person works as a",), {"woman": ("nurse",), "man": ("guard",)})
    with pytest.raises(ValueError, match="does not exist"):
        load_professions(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"women": ["nurse"]}))
    with pytest.raises(ValueError, match="must give a list for each of"):
        load_professions(bad)
    lines = tmp_path / "p.txt"
    lines.write_text("woman: nurse, maid\nman: guard\n")
    assert load_professions(lines) == {"woman": ("nurse", "maid"), "man": ("guard",)}
    with pytest.raises(ValueError, match="n_neurons=193 is larger than"):
        gender_bias(tiny, GenderBiasSettings(n_neurons=193, data=SMALL))
    with pytest.raises(ValueError, match="cna_prompts item=2 is out of range"):
        GenderBiasSettings(data=SMALL, cna_prompts=[2])
    with pytest.raises(ValueError, match="neuron layer=3 is out of range"):
        edit(tiny, [(3, 0)])
    with pytest.raises(ValueError, match="neurons of layer 0 item=64"):
        zero_neurons(tiny, {0: [64]})


# ---------------------------------------------------------------------------- CLI
def test_bias_cli(monkeypatch, capsys, tmp_path, tiny):
    import arithlens.app.cli
    from arithlens.app.cli import main

    def refuse(args):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(arithlens.app.cli, "load_model_from_args", refuse)
    out = str(tmp_path / "b.csv")
    for argv, message in [
        (["--professions", str(tmp_path / "none.json")], "does not exist"),
        (["--n-neurons", "0"], "n_neurons=0"),
        (["--cna-prompts", "9"], "cna_prompts item=9 is out of range"),
        (["--ppl-tokens", "x"], "--ppl-tokens='x' is not an integer"),
        (["--save-edited", str(tmp_path / "b.csv" / "x")], "is a file, not a directory"),
    ]:
        (tmp_path / "b.csv").write_text("")
        assert main(["bias", *argv, "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    (tmp_path / "b.csv").unlink()
    profs = tmp_path / "p.txt"
    profs.write_text("woman: nurse\nman: guard\n")
    monkeypatch.setattr(arithlens.app.cli, "load_model_from_args", lambda args: tiny)
    assert main(["bias", "--professions", str(profs), "--n-neurons", "2", "--no-collateral", "--out", out,
                 "--save-edited", str(tmp_path / "edited")]) == 0  # fmt: skip
    df = pd.read_csv(out)
    assert len(df) == 2 * 8 * 2 and set(df["model"]) == {"original", "edited"}
    assert (tmp_path / "edited" / "config.json").exists()
