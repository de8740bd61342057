"""Bad input to the core API is a ValueError naming the argument, raised before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithlens import data

from arithlens.core import names, validate
from arithlens.analysis.evaluation import evaluate
from arithlens.core.interventions import KeepNeurons, MeanHead, ScaleNeurons, ZeroHead, ZeroNeurons


@pytest.mark.parametrize("bad", [-1, 0, "8", 2.5, True])
def test_batch_size_is_checked_everywhere(tiny, bad):
    with pytest.raises(ValueError, match="batch_size"):
        tiny.cache(["3+5="], batch_size=bad)
    with pytest.raises(ValueError, match="batch_size"):
        tiny.cache(["3+5="], batch_size=bad)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(tiny, ["3+5="], batch_size=bad)


@pytest.mark.parametrize(
    "bad, match",
    [
        (None, "data=None"),
        (35, "data=int is not data"),
        ([35], "data item 0 is the integer 35"),
        (["3+5=", None], "data item 1 is None"),
        ([], "empty dataset"),
        ([[1, 2, -1]], "token id=-1 is out of range"),
        ([[1, 2, 10_000]], "token id 10000 is out of range"),
        (torch.ones(2, 3), "token-id tensor must be"),
    ],
)
def test_bad_data_is_named(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny.cache(bad)
    with pytest.raises(ValueError, match=match):
        evaluate(tiny, bad)


def test_prompt_longer_than_the_context_is_an_error(tiny):
    n_ctx = int(tiny.cfg.n_ctx)
    with pytest.raises(ValueError, match=f"more than the model's context of {n_ctx}"):
        tiny.cache(["1" * (n_ctx + 1)])


def test_prompts_builder_names_non_strings(tiny):
    with pytest.raises(ValueError, match="prompts item 0 is 3"):
        data.prompts(tiny.tokenizer, [3], ["8"])
    with pytest.raises(ValueError, match="answers item 0 is 8"):
        data.prompts(tiny.tokenizer, ["3+5="], [8])


def test_evaluate_without_targets_reports_no_accuracy(tiny):
    ev = evaluate(tiny, ["3+5=", "2+2="])
    assert np.isnan(ev.accuracy)
    assert ev.df["n"].iloc[0] == 2 and ev.df["n_scored"].iloc[0] == 0
    assert np.isnan(ev.df["accuracy"].iloc[0])


def test_numpy_and_tensor_integers_are_accepted(tiny):
    row_layer, row_head = np.int64(1), torch.tensor(2)
    inter = ZeroHead(row_layer, row_head)
    assert (inter.layer, inter.head) == (1, 2) and type(inter.layer) is int
    assert tiny.check_neurons(np.int32(0), np.array([1, 2])).tolist() == [1, 2]
    assert ZeroHead("0.3") == ZeroHead(0, 3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ZeroHead(True, 2), "layer=True must be an integer, not a bool"),
        (lambda: ZeroHead(0, 1.5), "head=1.5 must be an integer, not a float"),
        (lambda: ZeroHead("0.8x"), "is not of the form 'LAYER.HEAD'"),
        (lambda: ZeroHead("MLP 3"), "names an MLP, not a head"),
        (lambda: ZeroHead(0), "needs a head"),
        (lambda: ZeroHead(0, 1, position="end"), "position='end' is not one of"),
        (lambda: ZeroNeurons(1, [5.7]), "neurons item=5.7 must be an integer"),
        (lambda: ZeroNeurons(1, "57"), "neurons='57' must be an integer or a sequence"),
        (lambda: ScaleNeurons(1, [5], float("inf")), "factor=inf must be a finite number"),
        (lambda: ScaleNeurons(1, [5], float("nan")), "factor=nan must be a finite number"),
        (lambda: ScaleNeurons(1, [5], None), "factor=None must be a number"),
        (lambda: MeanHead(1, 0, reference=None), "needs reference data"),
    ],
)
def test_intervention_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_interventions_check_against_the_model(tiny):
    with pytest.raises(ValueError, match="head=9 is out of range"):
        tiny.cache(["3+5="], interventions=[ZeroHead(0, 9)])
    with pytest.raises(ValueError, match=r"neuron pair \(2, 5\) is in layer 2, which is not among layers=\[1\]"):
        tiny.cache(["3+5="], interventions=[KeepNeurons(layers=[1], neurons=[(2, 5)])])
    with pytest.raises(ValueError, match="layer=7 is out of range"):
        tiny.cache(["3+5="], interventions=[ZeroNeurons(7, [1])])


def test_non_finite_logits_raise_instead_of_ranking_nans(tiny):
    def poison(act, hook):
        return act * float("nan")

    with tiny.hooked([(names.post(1), poison)]):
        with pytest.raises(validate.NonFiniteError, match="NaN or infinite"):
            tiny.cache(["3+5="])


def test_output_paths_are_checked_before_work(tmp_path):
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        validate.output_path(a_file / "out.csv")
    with pytest.raises(ValueError, match="is a directory"):
        validate.output_path(tmp_path)
    with pytest.raises(ValueError, match="virtual file system|cannot be written"):
        validate.output_path("/proc/x.csv")
    assert validate.output_path(tmp_path / "new" / "out.csv").name == "out.csv"
    with pytest.raises(ValueError, match="exists and is not a directory"):
        validate.output_dir(a_file)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: validate.positive_int("3", "top_n"), "top_n='3' must be an integer, not a str"),
        (lambda: validate.positive_int(0, "k"), "k=0 is out of range: it must be >= 1"),
        (lambda: validate.int_sequence("99", "ks"), "ks='99' must be an integer or a sequence"),
        (lambda: validate.choice("x", "mode", ("a", "b")), r"mode='x' is not one of \('a', 'b'\)"),
        (lambda: validate.number(float("inf"), "lr"), "lr=inf must be a finite number"),
        (lambda: validate.boolean("False", "progress"), "progress='False' must be True or False"),
    ],
)
def test_shared_validators_name_argument_value_and_allowed(call, match):
    with pytest.raises(ValueError, match=match):
        call()
