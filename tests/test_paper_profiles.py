"""The paper profiles (`X.paper(...)`, `data.paper`) equal the setups the papers state, on a
32-layer (Llama-7B-shaped) configuration — one check per table. No model runs here."""

import collections

import pytest

from arithlens import data
from arithlens.circuits import PathPatching, PreciseSFTSettings
from arithlens.cna import (
    ComparativeNeuronScores,
    GenderBiasSettings,
    HeadAblation,
    HiddenInterpretable,
    LoRACoefficients,
    LoRASettings,
    LogicChain,
    MaskKeep,
    PredictionEnhancingDAG,
    PruningSettings,
    VOTransform,
    paper_bias_data,
)
from arithlens.cna.lora import layer_groups
from arithlens.core.interventions import ZeroHead
from arithlens.testing import char_tokenizer

N = 32  # Llama-7B's layers, which the paper's layer numbers refer to


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def tiny32():
    """A 32-layer random Llama (d_model 16): the paper's depth, at no cost."""
    from arithlens.testing import tiny_llama

    return tiny_llama(n_layers=32, d_model=16, n_heads=2, n_kv_heads=1, d_mlp=16)


def _count(ds, *columns):
    return collections.Counter(tuple(row) for row in ds.to_frame()[list(columns)].itertuples(index=False))


def test_table_1_two_digit_four_templates_1600_sentences(tok):
    ds = data.paper(tok, 1)
    assert len(ds) == 1_600  # §3.2: "The evaluation dataset has 1,600 sentences"
    frame = ds.to_frame()
    assert set(frame["digits"]) == {2} and set(frame["op"]) == set("+-*/")
    assert set(frame["template"]) == {1, 2, 3, 4} and set(frame["form"]) == {"numeral", "word"}
    assert set(_count(ds, "op", "template").values()) == {100}
    sweep = HeadAblation.paper()
    assert (sweep.method, sweep.position, sweep.estimate, tuple(sweep.group_by)) == ("zero", "all", "exact", ("op",))
    assert sweep.layers is None and sweep.heads is None  # every one of the 32 × 32 heads


def test_table_2_and_24_27_last_template_by_op_and_digits(tok):
    ds = data.paper(tok, 2)
    frame = ds.to_frame()
    assert set(frame["template"]) == {4} and set(frame["form"]) == {"numeral"}
    assert set(frame["digits"]) == {1, 2, 3} and set(frame["op"]) == set("+-*/")
    assert all(p.endswith("=") for p in frame["prompt"])
    assert len(data.paper(tok, "24-27")) == len(ds)
    assert tuple(HeadAblation.paper(group_by=("op", "digits")).group_by) == ("op", "digits")


def test_table_3_per_answer_token(tok):
    ds = data.paper(tok, 3)
    assert set(ds.to_frame()["case_type"]) == {"memorize", "change-one"}
    assert len(ds) > len(data.paper(tok, 1))  # one case per answer token


def test_table_4_and_figure_1_exact_cna_of_the_prediction():
    for cls in (ComparativeNeuronScores, PredictionEnhancingDAG, LogicChain):
        cfg = cls.paper(intervention=ZeroHead(17, 22))
        assert (cfg.mode, cfg.target, cfg.scale) == ("exact", "prediction", "original")


def test_table_5_keeps_layers_17_to_31_on_all_1d_plus_minus_cases(tok):
    mk = MaskKeep.paper(N, intervention=ZeroHead(17, 22))
    assert mk.keep_layers == tuple(range(17, 32))
    assert mk.k == (99, 50, 30, 20, 10) and mk.correct_only is False and mk.mode == "exact"
    frame = data.paper(tok, 5).to_frame()
    assert set(frame["op"]) == {"+", "-"} and set(frame["digits"]) == {1}
    assert (frame["op"] == "+").sum() == 100  # every 1-digit addition
    assert MaskKeep(intervention=ZeroHead(1, 0)).correct_only is False  # the default follows the paper too


def test_tables_7_8_scan_neurons_0_15_through_attention_0_16(tiny32):
    vo = VOTransform.paper()
    assert vo.layers(tiny32) == (list(range(16)), list(range(17)))
    assert vo.k == 50 and vo.reach == "all"
    hi = HiddenInterpretable.paper()
    assert hi.ms == (0, 1, 2, 3) and hi.rule == "gt" and hi.transform.reach == "all" and hi.correct_only is False


def test_figure_2_lora_on_every_layer_18000_2000_four_epochs():
    lora = LoRASettings.paper(N)
    assert lora.layers == tuple(range(32))
    assert (lora.n_train, lora.n_test, lora.epochs) == (18_000, 2_000, 4)
    assert lora.lrs == (1e-3, 5e-4, 1e-4)
    assert lora.steps * lora.batch_size >= lora.epochs * lora.n_train  # epochs, not steps, stop training
    assert lora.full_answer and lora.rank == 32
    # §6.1: "only 0.015% LoRA parameters": q, k, v, o of one layer of Llama-7B (d = 4096, 6.74e9 parameters).
    assert 4 * lora.rank * (4096 + 4096) / 6.74e9 == pytest.approx(0.00015, rel=0.05)


def test_tables_9_10_cna_between_original_and_lora():
    coef = LoRACoefficients.paper()
    assert coef.rank_on == "change" and coef.mode == "exact" and coef.ks == (50, 30, 20, 10)
    assert (coef.case, coef.case_answer) == ("3+5=", "8")
    assert layer_groups(N) == {"1–9": list(range(1, 10)), "10–16": list(range(10, 17)), "17–30": list(range(17, 31))}


def test_table_11_prunes_17_31_keeps_top_500_lora_on_layer_9(tok):
    pr = PruningSettings.paper(N)
    assert pr.lora_layer == 9 and pr.deep_layers == tuple(range(17, 32))
    assert pr.mode == "exact" and pr.n_cases is None and pr.target == "prediction" and pr.random_control
    assert pr.lora.layers == (9,) and pr.lora.n_train == 18_000 and pr.lora.full_answer
    from arithlens.cna.pruning import PAPER_TOP_FRACTION

    assert round(PAPER_TOP_FRACTION * 32 * 11_008) == 500  # each case's top 500 on Llama-7B
    frame = data.paper(tok, 11).to_frame()
    assert set(frame["op"]) == set("+-*/") and set(frame["digits"]) == {1}


def test_tables_12_13_top_18_neurons_first_prompt():
    bias = GenderBiasSettings.paper()
    assert bias.n_neurons == 18 and bias.cna_prompts == (0,) and bias.mode == "exact"
    assert len(bias.data.prompts) == 8 and bias.data == paper_bias_data()
    assert bias.data.prompts[0] == "A <gend> works as a"


def test_zhang_algorithm_1_and_sft_profiles():
    pp = PathPatching.paper()
    assert (pp.method, pp.position, pp.estimate, pp.nodes) == ("path", "last", "exact", None)
    sft = PreciseSFTSettings.paper()
    assert sft.n_train == 18_000 and sft.n_test == 2_000


def test_profiles_take_overrides_and_refuse_bad_ones():
    assert MaskKeep.paper(30, intervention="1.2").keep_layers == tuple(range(16, 30))
    assert LoRASettings.paper(N, layers=(4,)).layers == (4,)
    with pytest.raises(ValueError, match="n_layers"):
        LoRASettings.paper(0)
    with pytest.raises(ValueError, match="table="):
        data.paper(char_tokenizer(), 99)
