"""Core: model wrapper, batching, interventions, head ablation, evaluation, CLI errors."""


import dataclasses

import numpy as np

import pandas as pd
import pytest
import torch

from arithlens import data
from arithlens.analysis.evaluation import evaluate
from arithlens.cna.heads import HeadAblation
from arithlens.core.interventions import (
    CaseNeurons,
    KeepNeurons,
    MeanHead,
    ScaleNeurons,
    ZeroHead,
    ZeroNeurons,
)
from arithlens.core.model import LensModel
from arithlens.testing import tiny_llama_hf
from conftest import assert_untouched, params_snapshot

PROMPTS = ["3+5=", "12+7=", "9-2=", "44*2=", "1+1=", "8/4=", "The sum of 3 and 4 is "]


def one_by_one_logprobs(model, prompts, interventions=()):
    """Reference: each prompt alone, full forward, full vocabulary."""
    out = []
    with model.intervened(*interventions):
        for p in prompts:
            logits = model.bridge(torch.tensor([model.encode(p)]))
            out.append(logits[0, -1].log_softmax(-1))
    return torch.stack(out)


def test_batched_equals_one_at_a_time(tiny):
    run = tiny.cache(PROMPTS, memo=False, batch_size=3)
    ref = one_by_one_logprobs(tiny, PROMPTS)
    assert torch.equal(run.predictions, ref.argmax(-1))
    torch.testing.assert_close(run.prediction_logprob, ref.max(-1).values, atol=1e-5, rtol=0)


def test_prompts_encoded_without_extra_bos(tiny):
    run = tiny.cache(["3+5="], memo=False)
    assert list(run.input_ids[0]) == tiny.tokenizer.encode("3+5=")
    assert tiny.tokenizer.bos_token_id not in run.input_ids[0]


def test_run_is_cached_and_interventions_are_not(tiny):
    a = tiny.cache(PROMPTS)
    assert tiny.cache(PROMPTS) is a
    with tiny.intervened(ZeroHead(0, 0)):
        pass
    b = tiny.cache(PROMPTS, interventions=[ZeroHead(1, 1)])
    assert b is not a


def test_zero_head_equals_zeroing_w_o_columns_on_a_copy():
    """The paper's reference code zeroes the head's o_proj columns on a model copy."""
    hf, tok = tiny_llama_hf()
    edited, _ = tiny_llama_hf()
    model = LensModel.from_hf(hf, tok, name="tiny", device="cpu")
    d_head = edited.config.hidden_size // edited.config.num_attention_heads
    for layer, head in [(0, 1), (2, 3)]:
        copy, _ = tiny_llama_hf()
        with torch.no_grad():
            copy.model.layers[layer].self_attn.o_proj.weight[:, head * d_head : (head + 1) * d_head] = 0.0
        ids = torch.tensor([model.encode("12+7=")])
        expected = copy(ids).logits[0].log_softmax(-1)
        with model.intervened(ZeroHead(layer, head)):
            got = model.bridge(ids)[0].log_softmax(-1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_interventions_leave_no_trace_even_on_error(tiny):
    snap, hooks_before = params_snapshot(tiny), tiny.torch_hook_count()
    with pytest.raises(RuntimeError, match="boom"):
        with tiny.intervened(ZeroHead(1, 2) + ZeroNeurons(0, [1, 2])):
            assert tiny.has_hooks()
            raise RuntimeError("boom")
    assert_untouched(tiny, snap, hooks_before)
    # An intervention whose hook fails inside the forward pass: a one-case mask on two cases.
    bad = CaseNeurons(torch.ones(1, tiny.n_layers, tiny.d_mlp, dtype=torch.bool))
    with pytest.raises(IndexError):
        tiny.cache(["1+1=", "2+2="], interventions=[bad], batch_size=2, memo=False)
    assert_untouched(tiny, snap, hooks_before)
    # Outside a pass over its dataset a per-case intervention has no cases to pick from.
    with pytest.raises(ValueError, match="CaseNeurons sets neurons per case"):
        with tiny.intervened(bad):
            pass
    assert_untouched(tiny, snap, hooks_before)


def test_neuron_interventions_match_manual_hooks(tiny):
    def manual(layer, fn):
        def hook(act, hook):
            return fn(act)

        with tiny.hooked([(f"blocks.{layer}.mlp.hook_post", hook)]):
            return tiny.cache(PROMPTS, memo=False).target_logprob

    def zero_some(a):
        a = a.clone()
        a[..., [3, 5]] = 0
        return a

    def keep_some(a):
        keep = torch.zeros(a.shape[-1])
        keep[[3, 5]] = 1
        return a * keep

    got = tiny.cache(PROMPTS, memo=False, interventions=[ZeroNeurons(1, [3, 5])]).target_logprob
    torch.testing.assert_close(got, manual(1, zero_some))
    got = tiny.cache(PROMPTS, memo=False, interventions=[KeepNeurons([1], [3, 5])]).target_logprob
    torch.testing.assert_close(got, manual(1, keep_some))
    got = tiny.cache(PROMPTS, memo=False, interventions=[ScaleNeurons(1, [3, 5], 1.0)]).target_logprob
    torch.testing.assert_close(got, tiny.cache(PROMPTS, memo=False).target_logprob)


def test_case_neurons_apply_each_cases_own_set(tiny):
    mask = torch.zeros(len(PROMPTS), tiny.n_layers, tiny.d_mlp, dtype=torch.bool)
    mask[0, 1, [3, 5]] = True
    mask[2, 2, [0]] = True
    got = tiny.cache(PROMPTS, memo=False, batch_size=2, interventions=[CaseNeurons(mask)]).target_logprob
    for i, p in enumerate(PROMPTS):
        ivs = [ZeroNeurons(L, mask[i, L].nonzero()[:, 0].tolist()) for L in range(tiny.n_layers)]
        alone = tiny.cache([p], memo=False, interventions=ivs).target_logprob
        torch.testing.assert_close(got[i : i + 1], alone, atol=1e-5, rtol=0)


def test_last_position_only(tiny):
    full = tiny.cache(PROMPTS, memo=False, interventions=[ZeroHead(0, 0, position="all")]).target_logprob
    last = tiny.cache(PROMPTS, memo=False, interventions=[ZeroHead(0, 0, position="last")]).target_logprob
    clean = tiny.cache(PROMPTS, memo=False).target_logprob
    assert not torch.allclose(full, last)
    assert not torch.allclose(last, clean)


def test_start_at_layer_equals_full_forward(tiny):
    ids = torch.tensor([tiny.encode("12+7=")])
    resid = {}

    def keep(x, hook):
        resid[int(hook.name.split(".")[1])] = x

    with tiny.hooked([(f"blocks.{L}.hook_resid_pre", keep) for L in range(tiny.n_layers)]):
        full = tiny.last_logits(ids)
    torch.testing.assert_close(full, tiny.bridge(ids)[:, -1], atol=1e-5, rtol=0)
    for L in range(tiny.n_layers):
        torch.testing.assert_close(tiny.last_logits(resid[L], start_at_layer=L), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["zero", "mean"])
@pytest.mark.parametrize("position", ["all", "last"])
def test_head_ablation_equals_full_forward_per_head(tiny, method, position):
    snap, hooks_before = params_snapshot(tiny), tiny.torch_hook_count()
    cases = data.arithmetic(tiny.tokenizer, ops="+-", digits=1, templates=[3, 4], forms=["numeral"]).sample(24, seed=1)
    result = HeadAblation(method=method, position=position, progress=False, batch_size=5, max_rows=7).run(tiny, cases)
    assert_untouched(tiny, snap, hooks_before)
    targets = torch.tensor([c.target_id for c in cases])
    for k, (L, H) in enumerate(result.heads):
        iv = ZeroHead(L, H, position=position) if method == "zero" else MeanHead(L, H, cases, position=position)
        ref = one_by_one_logprobs(tiny, [c.prompt for c in cases], [iv])
        torch.testing.assert_close(result.logprob[k], ref.gather(-1, targets[:, None])[:, 0], atol=1e-5, rtol=0)
        assert torch.equal(result.correct[k], ref.argmax(-1) == targets)
    # The table: drop = baseline - accuracy, per op and over all cases.
    row = result.df[(result.df["layer"] == 1) & (result.df["head"] == 2) & (result.df["op"] == "all")].iloc[0]
    k = result.heads.index((1, 2))
    assert row["accuracy"] == pytest.approx(result.correct[k].float().mean().item())
    assert row["accuracy_drop"] == pytest.approx(row["baseline_accuracy"] - row["accuracy"])
    assert set(result.df["op"]) == {"all", "+", "-"}
    assert len(result.df) == 3 * tiny.n_layers * tiny.n_heads


def test_head_ablation_tables_and_figure(tiny):
    cases = data.arithmetic(tiny.tokenizer, ops="+-", digits=2, n_per_op=10, templates=[4], forms=["numeral"], per_digit=True)
    result = HeadAblation(progress=False, layers=[0, 1]).run(tiny, cases)
    top = result.top(3)
    assert list(top.columns[:2]) == ["op", "ori"] and list(top["op"])[0] == "all"
    every = result.df[result.df["op"] == "all"]
    positive = every[every["accuracy_drop"] > 0]
    assert len(top.columns) == 2 + min(3, len(positive))  # heads with zero drop are never "top"
    by_type = result.by("case_type")
    assert set(by_type["case_type"]) <= {"all", "memorize", "change-one"}
    fig = result.plot()
    assert len(fig.data) == 3  # one heatmap per facet: all, +, -


def test_head_ablation_subset_of_pairs(tiny):
    result = HeadAblation(heads=[(0, 1), (2, 3)], progress=False).run(tiny, PROMPTS)
    assert result.heads == [(0, 1), (2, 3)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "noise"}, "method='noise'"),
        ({"position": "first"}, "position='first'"),
        ({"batch_size": -1}, "batch_size=-1"),
        ({"estimate": "fast"}, "estimate='fast'"),
    ],
)
def test_head_ablation_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeadAblation(**kwargs)


def test_bad_layer_head_and_empty_data(tiny):
    with pytest.raises(ValueError, match="layer.*=7 is out of range"):
        HeadAblation(layers=[7], progress=False).run(tiny, PROMPTS)
    with pytest.raises(ValueError, match="head.*=9 is out of range"):
        HeadAblation(heads=[(0, 9)], progress=False).run(tiny, PROMPTS)
    with pytest.raises(ValueError, match="head=-1 is out of range"):
        ZeroHead(0, -1)
    with pytest.raises(ValueError, match="empty dataset"):
        tiny.cache([])
    with pytest.raises(ValueError, match=f"neurons item={tiny.d_mlp} is out of range"):
        with tiny.intervened(ZeroNeurons(0, [tiny.d_mlp])):
            pass


def test_full_answers_are_right_iff_greedy_decoding_reproduces_them(tiny):
    cases = list(data.arithmetic(tiny.tokenizer, ops="+*", digits=2, templates=[1]))[:24]
    assert max(len(c.answer_ids) for c in cases) > 1  # multi-token answers: the teacher-forced pass is used
    # Answers set to what greedy decoding gives (right) and with the last token changed (wrong).
    gen = tiny.generate_greedy(cases, max(len(c.answer_ids) for c in cases))
    right = [dataclasses.replace(c, answer_ids=tuple(g[: len(c.answer_ids)])) for c, g in zip(cases, gen)]
    wrong = [dataclasses.replace(c, answer_ids=c.answer_ids[:-1] + ((c.answer_ids[-1] + 1) % tiny.d_vocab,)) for c in right]
    for made, expect in ((right, True), (wrong, False)):
        ev = evaluate(tiny, made)
        assert ev.cases["full_correct"].tolist() == [expect] * len(made)
        # The one teacher-forced pass also gives the first-token outcomes of the prompt-only pass.
        first = evaluate(tiny, made, full_answer=False).cases
        assert ev.cases["predicted_token"].tolist() == first["predicted_token"].tolist()
        assert ev.cases["correct"].tolist() == first["correct"].tolist()
        np.testing.assert_allclose(ev.cases["target_logprob"], first["target_logprob"], atol=1e-5)
        cached = evaluate(tiny, made, cache=tiny.cache(made))  # first token from the cache, longer answers forced
        pd.testing.assert_frame_equal(cached.cases.drop(columns="target_logprob"), ev.cases.drop(columns="target_logprob"))
    # Under an intervention the greedy decoding itself runs: the same rule.
    ev = evaluate(tiny, right, interventions=[ZeroHead(0, 0)])
    gen_i = tiny.generate_greedy(right, max(len(c.answer_ids) for c in right), interventions=[ZeroHead(0, 0)])
    assert ev.cases["full_correct"].tolist() == [tuple(g[: len(c.answer_ids)]) == c.answer_ids for c, g in zip(right, gen_i)]


def test_evaluate_groups_and_full_answers(tiny):
    cases = data.arithmetic(tiny.tokenizer, ops="+*", digits=1, templates=[1, 4])
    ev = evaluate(tiny, cases)
    assert {"op", "template", "form", "accuracy", "full_accuracy", "n"} <= set(ev.df.columns)
    assert ev.df["n"].sum() == len(cases)
    # Full-answer accuracy never exceeds first-token accuracy.
    assert (ev.cases["full_correct"] <= ev.cases["correct"]).all()
    assert ev.accuracy == pytest.approx(ev.cases["correct"].mean())
    assert ev.plot().data


def test_evaluate_with_progress_gives_the_same_numbers(tiny, capsys):
    cases = data.arithmetic(tiny.tokenizer, ops="+*", digits=1, templates=[1, 4])
    plain = evaluate(tiny, cases, batch_size=4)
    shown = evaluate(tiny, cases, batch_size=4, progress=True)  # chunks of 16 cases: several bars steps
    pd.testing.assert_frame_equal(shown.cases, plain.cases)
    pd.testing.assert_frame_equal(shown.df, plain.df)
    cached = evaluate(tiny, cases, cache=tiny.cache(cases), full_answer=False, progress=True)
    assert cached.cases["correct"].tolist() == plain.cases["correct"].tolist()
    assert f"{len(cases)}/{len(cases)}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="progress"):
        evaluate(tiny, cases, progress="yes")


# ---------------------------------------------------------------------------- SmolLM2
@pytest.mark.smollm2
def test_smollm2_shape_and_tokenization(smollm2):
    assert (smollm2.n_layers, smollm2.n_heads, smollm2.n_kv_heads, smollm2.d_mlp) == (30, 9, 3, 1536)
    cases = data.arithmetic(smollm2.tokenizer, ops="+", templates=[1], forms=["numeral"]).sample(6)
    for c in cases:
        assert smollm2.decode(c.input_ids[-1:]) == " "  # the bare whitespace token is in the prompt
        assert c.target_str.isdigit()


@pytest.mark.smollm2
def test_smollm2_batched_equals_single_and_zero_head(smollm2):
    prompts = ["3+5=", "7+2=", "The sum of 4 and 4 is ", "9-3="]
    run = smollm2.cache(prompts, memo=False)
    ref = one_by_one_logprobs(smollm2, prompts)
    assert torch.equal(run.predictions, ref.argmax(-1))
    snap, hooks_before = params_snapshot(smollm2), smollm2.torch_hook_count()
    result = HeadAblation(heads=[(3, 4), (20, 8)], progress=False).run(smollm2, prompts)
    for k, (L, H) in enumerate(result.heads):
        ref = one_by_one_logprobs(smollm2, prompts, [ZeroHead(L, H)])
        torch.testing.assert_close(result.logprob[k], ref.gather(-1, run.predictions[:, None])[:, 0], atol=1e-4, rtol=0)
    assert_untouched(smollm2, snap, hooks_before)


@pytest.mark.smollm2
def test_smollm2_default_accuracy_is_in_the_measured_range(smollm2):
    cases = data.arithmetic(smollm2.tokenizer, ops="+", templates=[1], forms=["numeral"])
    acc = smollm2.cache(cases).correct.float().mean().item()
    assert 0.45 <= acc <= 0.7


def test_run_keeps_last_position_activations_by_requested_name(tiny):
    names = ["blocks.0.hook_resid_pre", "blocks.1.mlp.hook_post", "blocks.2.hook_resid_mid"]
    run = tiny.cache(PROMPTS, names=names, memo=False)
    for name in names:
        assert run.last(name).shape[0] == len(PROMPTS)
    _, cache = tiny.bridge.run_with_cache(torch.tensor([tiny.encode(PROMPTS[1])]))
    torch.testing.assert_close(run.last("blocks.1.mlp.hook_post")[1], cache["blocks.1.mlp.hook_post"][0, -1])
