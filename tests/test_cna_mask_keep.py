"""Table 5 (mask / keep / coef): interventions match a literal per-case loop; bad input errors."""

import pytest
import torch

from arithlens.cna import ComparativeNeuronScores, MaskKeep
from arithlens.cna.mask_keep import coef_decrease
from arithlens.interventions import KeepNeurons, ZeroHead, ZeroNeurons
from conftest import assert_untouched, params_snapshot

PROMPTS = ["3+5=", "2+2=", "12+3=", "7*8=", "9-4=", "6/3="]


def test_mask_keep_matches_per_case_loop(tiny):
    ks = (12, 4)
    res = MaskKeep(head=(1, 2), ks=ks, keep_layers=[1, 2]).run(tiny, PROMPTS)
    cna = ComparativeNeuronScores(intervention=ZeroHead(1, 2)).run(tiny, PROMPTS)
    pred = tiny.run(PROMPTS).predictions
    for k in ks:
        top = cna.top_mask(k)
        masked_ok, kept_ok, coef = 0, 0, []
        for i, p in enumerate(PROMPTS):
            neurons = {L: top[i, L].nonzero()[:, 0] for L in range(tiny.n_layers)}
            zero = [ZeroNeurons(L, idx) for L, idx in neurons.items() if len(idx)]
            masked_ok += int(tiny.run([p], interventions=zero, cache=False).predictions[0] == pred[i])
            keep = KeepNeurons([1, 2], {L: neurons[L] for L in (1, 2)})
            kept_ok += int(tiny.run([p], interventions=[keep], cache=False).predictions[0] == pred[i])
            m, m2 = cna.coef[i][top[i]], cna.coef_other[i][top[i]]
            coef.append(100 * float((torch.sign(m) * (m - m2)).sum() / m.abs().sum()))
        table = res.df.set_index(["k", "measure"])["value"]
        n = len(PROMPTS)  # prompts have no answer: "correct" = the original prediction, all cases
        assert table[(k, "mask")] == pytest.approx(100 * (n - masked_ok) / n)
        assert table[(k, "keep")] == pytest.approx(100 * (n - kept_ok) / n)
        assert table[(k, "coef")] == pytest.approx(sum(coef) / n, abs=1e-3)
    t = res.table()
    assert list(t.index) == ["mask", "keep", "coef"] and list(t.columns) == ["top12", "top4"]
    assert res.plot() is not None and res.n_cases == len(PROMPTS)


def test_coef_decrease_positive_case_is_plain_relative_decrease():
    coef = torch.tensor([[[2.0, 1.0, 5.0]]])
    other = torch.tensor([[[1.0, 0.5, 0.0]]])
    mask = torch.tensor([[[True, True, False]]])
    assert float(coef_decrease(coef, other, mask)[0]) == pytest.approx(100 * (3 - 1.5) / 3)
    # Negative coefficients shrinking towards zero also count as a decrease.
    assert float(coef_decrease(-coef, -other, mask)[0]) == pytest.approx(50.0)


def test_correct_only_filters_and_errors(tiny):
    from arithlens import data

    cases = data.arithmetic(tiny.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(5)
    # The random tiny model answers none correctly.
    with pytest.raises(ValueError, match="none of the cases"):
        MaskKeep(head=(1, 2), ks=(5,)).run(tiny, cases)
    res = MaskKeep(head=(1, 2), ks=(5,), correct_only=False).run(tiny, cases)
    assert res.baseline_accuracy == 0.0 and res.n_cases == 5
    with pytest.raises(ValueError, match="head="):
        MaskKeep()
    with pytest.raises(ValueError, match="K"):
        MaskKeep(head=(1, 2), ks=(10, 0))
    with pytest.raises(ValueError, match="ks is empty"):
        MaskKeep(head=(1, 2), ks=())
    with pytest.raises(ValueError, match="out of range"):
        MaskKeep(head=(1, 9), ks=(5,)).run(tiny, PROMPTS)
    with pytest.raises(ValueError, match="LAYER.HEAD"):
        MaskKeep(head="1-2", ks=(5,)).run(tiny, PROMPTS)
    with pytest.raises(ValueError, match="empty dataset"):
        MaskKeep(head=(1, 2), ks=(5,)).run(tiny, [])


def test_mask_keep_leaves_model_untouched(tiny):
    snap, hooks = params_snapshot(tiny), tiny.torch_hook_count()
    MaskKeep(head="1.2", ks=(5,)).run(tiny, PROMPTS[:3])
    with pytest.raises(ValueError):
        MaskKeep(head=(1, 2), ks=(5,), keep_layers=[9]).run(tiny, PROMPTS[:3])
    assert_untouched(tiny, snap, hooks)


@pytest.mark.smollm2
def test_smollm2_mask_keep_runs_on_correct_cases(smollm2):
    from arithlens import data

    cases = data.arithmetic(smollm2.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(4, seed=1)
    res = MaskKeep(head=(3, 0), ks=(50,), mode="fast").run(smollm2, cases)
    t = res.table()
    assert res.baseline_accuracy == 1.0 and 1 <= res.n_cases <= 4
    assert 0 <= t.loc["mask", "top50"] <= 100 and 0 <= t.loc["keep", "top50"] <= 100
