"""Table 5 (mask / keep / coef): interventions match a literal per-case loop; bad input errors."""

import dataclasses

import numpy as np
import pytest
import torch

from arithlens.core import validate
from arithlens.cna import ComparativeNeuronScores, MaskKeep
from arithlens.cna.mask_keep import coef_decrease
from arithlens.core.interventions import KeepNeurons, ZeroHead, ZeroNeurons
from conftest import assert_untouched, params_snapshot

PROMPTS = ["3+5=", "2+2=", "12+3=", "7*8=", "9-4=", "6/3="]


def test_mask_keep_matches_per_case_loop(tiny):
    ks = (12, 4)
    res = MaskKeep(intervention=ZeroHead(1, 2), k=ks, keep_layers=[1, 2]).run(tiny, PROMPTS)
    cna = ComparativeNeuronScores(intervention=ZeroHead(1, 2)).run(tiny, PROMPTS)
    pred = tiny.cache(PROMPTS).predictions
    for k in ks:
        top = cna.top_mask(k)
        masked_ok, kept_ok, coef = 0, 0, []
        for i, p in enumerate(PROMPTS):
            neurons = {L: top[i, L].nonzero()[:, 0] for L in range(tiny.n_layers)}
            zero = [ZeroNeurons(L, idx) for L, idx in neurons.items() if len(idx)]
            masked_ok += int(tiny.cache([p], interventions=zero, memo=False).predictions[0] == pred[i])
            keep = KeepNeurons([1, 2], {L: neurons[L] for L in (1, 2)})
            kept_ok += int(tiny.cache([p], interventions=[keep], memo=False).predictions[0] == pred[i])
            m, m2 = cna.coef[i][top[i]], cna.coef_other[i][top[i]]
            coef.append(100 * float((torch.sign(m) * (m - m2)).sum() / m.abs().sum()))
        table = res.df.set_index(["k", "measure"])["decrease"]
        n = len(PROMPTS)  # prompts have no answer: "correct" = the original prediction, all cases
        assert table[(k, "mask")] == pytest.approx(100 * (n - masked_ok) / n)
        assert table[(k, "keep")] == pytest.approx(100 * (n - kept_ok) / n)
        assert table[(k, "coef")] == pytest.approx(sum(coef) / n, abs=1e-3)
    t = res.table()
    assert list(t.index) == ["mask", "keep", "coef"] and list(t.columns) == ["top12", "top4"]
    assert res.n_cases == len(PROMPTS) and res.intervention == "ZeroHead(1.2)"
    fig = res.plot()
    assert [tr.name for tr in fig.data] == ["mask", "keep", "coef"]
    assert list(fig.data[0].x) == ["top12", "top4"]
    assert list(fig.data[2].y) == [table[(k, "coef")] for k in ks]
    assert fig.layout.yaxis.title.text == "decrease (%)" and "top-K" in fig.layout.xaxis.title.text


def test_head_shorthand_cna_reuse_and_cache_give_the_same_table(tiny):
    """`head=` builds ZeroHead; `cna=` and `cache=` reuse work without changing a number."""
    alone = MaskKeep(intervention="1.2", k=(8, 3), keep_layers=[2]).run(tiny, PROMPTS[:4])
    mk = MaskKeep(intervention=ZeroHead(1, 2), k=(8, 3), keep_layers=[2])
    cache = tiny.cache(PROMPTS[:4], names=[mk], memo=False)
    cna = ComparativeNeuronScores(intervention=ZeroHead(1, 2)).run(tiny, PROMPTS[:4], cache=cache)
    reused = mk.run(tiny, PROMPTS[:4], cache=cache, cna=cna)
    assert alone.df.equals(reused.df)
    assert reused.cna is cna and alone.rows == reused.rows == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="holds 4 cases"):
        mk.run(tiny, PROMPTS[:3], cna=cna)
    nan = dataclasses.replace(cna, importance=torch.full_like(cna.importance, float("nan")))
    with pytest.raises(validate.NonFiniteError):
        mk.run(tiny, PROMPTS[:4], cna=nan)
    with pytest.raises(ValueError, match="other cases"):
        mk.run(tiny, PROMPTS[1:5], cache=cache)


def test_coef_decrease_positive_case_is_plain_relative_decrease():
    coef = torch.tensor([[[2.0, 1.0, 5.0]]])
    other = torch.tensor([[[1.0, 0.5, 0.0]]])
    mask = torch.tensor([[[True, True, False]]])
    assert float(coef_decrease(coef, other, mask)[0]) == pytest.approx(100 * (3 - 1.5) / 3)
    # Negative coefficients shrinking towards zero also count as a decrease.
    assert float(coef_decrease(-coef, -other, mask)[0]) == pytest.approx(50.0)


def test_correct_only_filters_through_the_cache(tiny):
    from arithlens import data
    from arithlens.data import ArithmeticDataset

    cases = data.arithmetic(tiny.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(5)
    # The random tiny model answers none correctly.
    with pytest.raises(ValueError, match="answers none"):
        MaskKeep(intervention=(1, 2), k=(5,), correct_only=True).run(tiny, cases)
    res = MaskKeep(intervention=(1, 2), k=(5,)).run(tiny, cases)  # the default: every case, as the paper
    assert res.baseline_accuracy == 0.0 and res.n_cases == 5
    # Make two cases correct (target = the model's prediction): only those are evaluated.
    pred = tiny.cache(cases).predictions.tolist()
    fixed = [dataclasses.replace(c, target_id=pred[i]) if i in (1, 3) else c for i, c in enumerate(cases)]
    res = MaskKeep(intervention=(1, 2), k=(5,), correct_only=True).run(tiny, ArithmeticDataset(fixed))
    assert res.rows == [1, 3] and res.n_cases == 2 and res.baseline_accuracy == 1.0
    assert res.cna.n_cases == 5  # CNA covers the data; the evaluated rows are picked from it


def test_bad_input_raises_before_any_work(tiny):
    with pytest.raises(ValueError, match="give the intervention"):
        MaskKeep()
    with pytest.raises(ValueError, match="k item=0"):
        MaskKeep(intervention=(1, 2), k=(10, 0))
    with pytest.raises(ValueError, match="k is empty"):
        MaskKeep(intervention=(1, 2), k=())
    with pytest.raises(ValueError, match="k='99'"):  # a string is not split into '9', '9'
        MaskKeep(intervention=(1, 2), k="99")
    with pytest.raises(ValueError, match="bool"):
        MaskKeep(intervention=(1, 2), k=(True,))
    assert MaskKeep(intervention=(np.int64(1), np.int64(2)), k=np.int64(5)).k == (5,)
    with pytest.raises(ValueError, match="correct_only"):
        MaskKeep(intervention=(1, 2), correct_only="yes")
    with pytest.raises(TypeError, match="config"):  # options are fields: an unknown one is Python's TypeError
        MaskKeep(intervention=(1, 2), config={"mode": "fast"})
    with pytest.raises(ValueError, match="batch_size=-1"):
        MaskKeep(intervention=(1, 2), batch_size=-1)
    with pytest.raises(ValueError, match="LAYER.HEAD"):
        MaskKeep(intervention="1-2", k=(5,))
    with pytest.raises(ValueError, match="MLP"):
        MaskKeep(intervention="MLP 1", k=(5,))
    with pytest.raises(ValueError, match="out of range"):
        MaskKeep(intervention=(1, 9), k=(5,)).run(tiny, PROMPTS)
    with pytest.raises(ValueError, match="empty dataset"):
        MaskKeep(intervention=(1, 2), k=(5,)).run(tiny, [])
    with pytest.raises(ValueError, match="data=None"):
        MaskKeep(intervention=(1, 2), k=(5,)).run(tiny, None)


def test_mask_keep_leaves_model_untouched(tiny):
    snap, hooks = params_snapshot(tiny), tiny.torch_hook_count()
    MaskKeep(intervention="1.2", k=(5,)).run(tiny, PROMPTS[:3])
    with pytest.raises(ValueError):
        MaskKeep(intervention=(1, 2), k=(5,), keep_layers=[9]).run(tiny, PROMPTS[:3])
    assert_untouched(tiny, snap, hooks)


@pytest.mark.smollm2
def test_smollm2_mask_keep_runs_on_correct_cases(smollm2):
    from arithlens import data

    cases = data.arithmetic(smollm2.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(4, seed=1)
    res = MaskKeep(intervention=(3, 0), k=(50,), mode="fast", correct_only=True).run(smollm2, cases)
    t = res.table()
    assert res.baseline_accuracy == 1.0 and 1 <= res.n_cases <= 4
    assert 0 <= t.loc["mask", "top50"] <= 100 and 0 <= t.loc["keep", "top50"] <= 100
