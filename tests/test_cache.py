"""The activation cache: one forward pass, memoized only when clean, bounded, reused by analyses."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_untouched, forward_counter, model_state

from arithlens import data

from arithlens.core import names
from arithlens.core.cache import DatasetCache, ensure_cache
from arithlens.analysis.evaluation import evaluate
from arithlens.core.interventions import MeanHead, ZeroHead

PROMPTS = ["3+5=", "2+4=", "12+3=", "7+1="]
SAME_LENGTH = ["3+5=", "2+4=", "7+1="]  # one batch: one embedding call per pass


def _ablating_head(model, prompts):
    """A head whose zero-ablation changes at least one prediction (so the test can fail)."""
    clean = model.cache(prompts, memo=False).predictions
    for L in range(model.n_layers):
        for H in range(model.n_heads):
            if not torch.equal(model.cache(prompts, interventions=[ZeroHead(L, H)]).predictions, clean):
                return ZeroHead(L, H)
    pytest.skip("no head changes a prediction of the tiny model")


def test_cache_matches_a_plain_forward_pass(tiny):
    cache = tiny.cache(PROMPTS, names=[names.resid_mid(1), names.post(2)], memo=False)
    for i, p in enumerate(PROMPTS):
        tokens = torch.tensor([tiny.encode(p)])
        logp = tiny.bridge(tokens)[0, -1].log_softmax(-1)
        assert int(cache.predictions[i]) == int(logp.argmax())
        assert float(cache.prediction_logprob[i]) == pytest.approx(float(logp.max()), abs=1e-5)
        _, acts = tiny.bridge.run_with_cache(tokens, names_filter=[names.resid_mid(1), names.post(2)])
        assert torch.allclose(cache.last(names.resid_mid(1))[i], acts[names.resid_mid(1)][0, -1], atol=1e-6)
        assert torch.allclose(cache.last(names.post(2))[i], acts[names.post(2)][0, -1], atol=1e-6)


def test_all_positions_agree_with_last(tiny):
    last = tiny.cache(PROMPTS, names=[names.resid_mid(1)], memo=False)
    every = tiny.cache(PROMPTS, names=[names.resid_mid(1)], positions="all", memo=False)
    assert torch.allclose(every.last(names.resid_mid(1)), last.last(names.resid_mid(1)))
    assert [t.shape[0] for t in every.per_position(names.resid_mid(1))] == [len(tiny.encode(p)) for p in PROMPTS]
    assert torch.equal(every.final_scale, last.final_scale)
    with pytest.raises(ValueError, match="positions='all'"):
        last.per_position(names.resid_mid(1))


def test_intervened_evaluate_is_never_the_memoized_clean_run(tiny):
    """Regression: the memo looked only at `interventions=`, not at hooks attached."""
    tiny.clear_cache()
    cases = data.arithmetic(tiny.tokenizer, ops="+", templates=[4], forms=["numeral"], n_per_op=12)
    head = _ablating_head(tiny, cases)
    clean = tiny.cache(cases, memo=False).predictions.tolist()
    ablated = tiny.cache(cases, interventions=[head]).predictions.tolist()
    tiny.clear_cache()
    # Ablated first: the memo must not store the ablated pass as clean.
    with tiny.intervened(head):
        inside = evaluate(tiny, cases, full_answer=False)
    assert inside.cases["predicted_token"].tolist() == ablated
    assert evaluate(tiny, cases, full_answer=False).cases["predicted_token"].tolist() == clean
    # Clean first: the memoized clean pass must not answer inside the block.
    with tiny.intervened(head):
        assert evaluate(tiny, cases, full_answer=False).cases["predicted_token"].tolist() == ablated
    assert evaluate(tiny, cases, full_answer=False).cases["predicted_token"].tolist() == clean


def test_memo_serves_clean_passes_only(tiny):
    tiny.clear_cache()
    with forward_counter(tiny) as calls:
        first = tiny.cache(SAME_LENGTH)
        again = tiny.cache(SAME_LENGTH)
        assert again is first and calls["n"] == 1
        widened = tiny.cache(SAME_LENGTH, names=[names.resid_pre(0)])  # needs a hook it lacks
        assert calls["n"] == 2 and widened.has([names.resid_pre(0)])
        assert tiny.cache(SAME_LENGTH) is widened  # the widened entry replaced the first
        inter = tiny.cache(SAME_LENGTH, interventions=[ZeroHead(0, 0)])
        assert not inter.clean and inter.interventions == "ZeroHead(0.0)"
        assert tiny.cache(SAME_LENGTH) is widened
        assert calls["n"] == 3


def test_memo_is_bounded_and_clearable(tiny):
    tiny.clear_cache()
    old = tiny._memo.max_entries
    tiny._memo.max_entries = 2
    try:
        for p in SAME_LENGTH[:3]:
            tiny.cache([p])
        assert len(tiny._memo) == 2
        with forward_counter(tiny) as calls:
            tiny.cache([SAME_LENGTH[0]])  # evicted first, so it runs again
            assert calls["n"] == 1
        tiny.clear_cache()
        assert len(tiny._memo) == 0
    finally:
        tiny._memo.max_entries = old


def test_an_analysis_given_a_cache_runs_no_clean_pass(tiny):
    cases = data.arithmetic(tiny.tokenizer, ops="+", templates=[4], forms=["numeral"], n_per_op=6)
    cache = tiny.cache(cases, memo=False)
    with forward_counter(tiny) as calls:
        ev = evaluate(tiny, cases, cache=cache, full_answer=False)
    assert calls["n"] == 0
    assert ev.cases["predicted_token"].tolist() == cache.predictions.tolist()


def test_a_cache_for_analyses_keeps_the_positions_they_restart_from(tiny):
    """An exact head sweep restarts from whole sequences: a cache built for it keeps every
    position, so neither it nor CNA runs another clean pass, and the numbers are the uncached ones."""
    from arithlens.cna import NeuronImportance
    from arithlens.cna.heads import HeadAblation

    importance, heads = NeuronImportance(mode="fast"), HeadAblation(layers=[0, 1], progress=False)
    assert tiny.cache(SAME_LENGTH, names=[importance], memo=False).positions == "last"
    assert tiny.cache(SAME_LENGTH, names=[heads], positions="last", memo=False).positions == "last"
    cache = tiny.cache(SAME_LENGTH, names=[importance, heads], memo=False)
    assert cache.positions == "all"
    with forward_counter(tiny) as calls:
        neurons = importance.run(tiny, SAME_LENGTH, cache=cache)
        ablation = heads.run(tiny, SAME_LENGTH, cache=cache)
    assert calls["n"] == 0
    tiny.clear_cache()
    alone = HeadAblation(layers=[0, 1], progress=False).run(tiny, SAME_LENGTH)
    assert ablation.df.equals(alone.df)
    assert neurons.df.equals(NeuronImportance(mode="fast").run(tiny, SAME_LENGTH).df)


def test_ensure_cache_rejects_a_cache_of_other_data_or_missing_hooks(tiny):
    cache = tiny.cache(PROMPTS, names=[names.resid_mid(0)], memo=False)
    with pytest.raises(ValueError, match="other cases"):
        ensure_cache(tiny, PROMPTS[:2], cache)
    with pytest.raises(ValueError, match="lacks 1 hook"):
        ensure_cache(tiny, PROMPTS, cache, names=[names.post(1)])
    with pytest.raises(ValueError, match="positions='all'"):
        ensure_cache(tiny, PROMPTS, cache, names=[names.resid_mid(0)], positions="all")
    ablated = tiny.cache(PROMPTS, interventions=[ZeroHead(0, 0)])
    with pytest.raises(ValueError, match="clean forward pass"):
        ensure_cache(tiny, PROMPTS, ablated)
    with pytest.raises(ValueError, match="not an DatasetCache"):
        ensure_cache(tiny, PROMPTS, {"predictions": 1})
    assert ensure_cache(tiny, PROMPTS, cache, names=[names.resid_mid(0)]) is cache


def test_cache_rows_and_correct_under(tiny):
    cases = data.arithmetic(tiny.tokenizer, ops="+", templates=[4], forms=["numeral"], n_per_op=20)
    cache = tiny.cache(cases, memo=False)
    sub = cache.rows([3, 1])
    assert sub.input_ids == [cache.input_ids[3], cache.input_ids[1]]
    assert torch.equal(sub.predictions, cache.predictions[[3, 1]])
    n_right = int(cache.correct.sum())
    if n_right == 0:
        with pytest.raises(ValueError, match="answers none"):
            cases.correct_under(cache)
    else:
        right = cases.correct_under(cache)
        assert len(right) == n_right
    with pytest.raises(ValueError, match="other cases"):
        cases[:3].correct_under(cache)


def test_mean_ablation_means_are_per_model():
    from arithlens.testing import tiny_llama

    a, b = tiny_llama(seed=0), tiny_llama(seed=1)
    head = MeanHead(1, 0, reference=PROMPTS)
    on_a = head.means(a).last
    on_b = head.means(b).last
    assert not torch.allclose(on_a, on_b)
    _, acts = b.bridge.run_with_cache(torch.tensor([b.encode(p) for p in PROMPTS[:2] + PROMPTS[3:]]), names_filter=[names.z(1)])
    # The reference prompts of length 4 give the per-position mean at that length.
    assert torch.allclose(head.means(b).by_length[4], acts[names.z(1)].mean(0), atol=1e-6)


def test_caching_leaves_the_model_untouched(tiny):
    snapshot, n_hooks = model_state(tiny)
    tiny.cache(PROMPTS, names=[names.z(0), names.pattern(1)], positions="all", interventions=[ZeroHead(1, 1)])
    with pytest.raises(ValueError):
        tiny.cache(PROMPTS, names=["blocks.0.not_a_hook"])
    assert_untouched(tiny, snapshot, n_hooks)


def test_cache_type_and_repr(tiny):
    cache = tiny.cache(PROMPTS[:2], memo=False)
    assert isinstance(cache, DatasetCache) and len(cache) == 2
    assert "2 cases" in repr(cache) and "clean" in repr(cache)


# ----------------------------------------------------------------------------- a cache that cannot lie
def test_a_cache_is_read_only_for_the_model_and_weights_that_built_it(tiny):
    from arithlens import evaluate
    from arithlens.cna import HeadAblation
    from arithlens.testing import tiny_llama

    other, prompts = tiny_llama(seed=1), ["3+5=", "1+2="]
    sweep = HeadAblation(layers=[0], progress=False)
    cache = tiny.cache(prompts, names=[sweep])
    for use in (lambda: sweep.run(other, prompts, cache=cache), lambda: evaluate(other, prompts, cache=cache)):
        with pytest.raises(ValueError, match="built by another model"):
            use()
    edited = tiny_llama(seed=2)
    stale = edited.cache(prompts)
    with torch.no_grad():
        next(edited.bridge.parameters()).data.add_(0.5)  # an in-place edit no version counter sees
    with pytest.raises(ValueError, match="weights changed since this cache was built"):
        evaluate(edited, prompts, cache=stale)
    assert not torch.equal(edited.cache(prompts).target_logprob, stale.target_logprob)  # the memo is not stale either


def test_a_cache_of_other_targets_is_refused(tiny):
    from arithlens import data, evaluate

    cases = data.arithmetic(tiny.tokenizer, ops="+", digits=1, templates=[4], forms=["numeral"], n_per_op=3)
    relabelled = data.prompts(tiny.tokenizer, [c.prompt for c in cases], ["7"] * len(cases))
    with pytest.raises(ValueError, match="other targets"):
        evaluate(tiny, relabelled, cache=tiny.cache(cases))


def test_editing_a_returned_cache_does_not_corrupt_the_memo(tiny):
    prompts = ["2+2=", "4+1="]
    first = tiny.cache(prompts)
    truth = first.target_logprob.clone()
    first.target_logprob[:] = 0
    assert torch.equal(tiny.cache(prompts).target_logprob, truth)


def test_a_top_tokens_larger_than_the_vocabulary_fails_before_any_pass(tiny):
    from arithlens.cna import NeuronImportance

    with forward_counter(tiny) as calls, pytest.raises(ValueError, match="larger than the model's vocabulary"):
        NeuronImportance(top_tokens=10**7).run(tiny, ["9+9="])
    assert calls.n == 0


def test_an_overflowing_residual_is_an_error_not_a_degenerate_result(tiny):
    from arithlens.core.interventions import ScaleNeurons
    from arithlens.core.validate import NonFiniteError

    blowup = ScaleNeurons(0, list(range(tiny.d_mlp)), 1e30)
    with pytest.raises(NonFiniteError):
        tiny.cache(["3+5="], interventions=[blowup], memo=False)


def test_two_threads_on_one_model_do_not_see_each_others_hooks(tiny):
    import threading

    from arithlens.core.interventions import ZeroHead

    prompts = ["3+5=", "12+7="]
    truth = tiny.cache(prompts, memo=False).target_logprob.clone()
    seen, stop = [], threading.Event()

    def intervening():
        while not stop.is_set():
            with tiny.intervened(ZeroHead(0, 1)):
                tiny.cache(prompts, memo=False)

    worker = threading.Thread(target=intervening)
    worker.start()
    try:
        for _ in range(10):
            run = tiny.cache(prompts, memo=False)
            seen.append((bool(torch.equal(run.target_logprob, truth)), run.clean))
    finally:
        stop.set()
        worker.join()
    assert seen == [(True, True)] * 10
    assert not tiny.has_hooks()


# ----------------------------------------------------------------------------- TransformerLens's view
EQUAL = ["3+5=", "2+4=", "7+1="]  # one length under the tiny model's character tokenizer


def _tl_names(model):
    per_layer = ("attn_out", "mlp_out", "resid_pre", "resid_post")
    return ["hook_embed"] + [f"blocks.{L}.hook_{k}" for L in range(model.n_layers) for k in per_layer] + [
        f"blocks.{L}.attn.hook_z" for L in range(model.n_layers)
    ] + ["blocks.1.attn.hook_pattern"]


@pytest.mark.parametrize("positions", ["all", "last"])
def test_tl_indexing_matches_run_with_cache(tiny, positions):
    cache = tiny.cache(EQUAL, names=_tl_names(tiny), positions=positions, memo=False)
    _, ref = tiny.bridge.run_with_cache(torch.tensor([tiny.encode(p) for p in EQUAL]))
    keep = slice(None) if positions == "all" else slice(-1, None)
    for key, name in [("blocks.2.hook_resid_post", "blocks.2.hook_resid_post"), (("resid_post", 2), "blocks.2.hook_resid_post"),
                      (("resid_pre", 1), "blocks.1.hook_resid_pre"), ("z1", "blocks.1.attn.hook_z"), ("embed", "hook_embed"), (("z", 1), "blocks.1.attn.hook_z")]:  # fmt: skip
        assert key in cache
        torch.testing.assert_close(cache[key], ref[name][:, keep], rtol=0, atol=0)
    torch.testing.assert_close(cache["pattern", 1], ref["blocks.1.attn.hook_pattern"][:, :, keep], rtol=0, atol=0)
    assert ("resid_mid", 0) not in cache
    with pytest.raises(KeyError, match="not in this cache"):
        cache["resid_mid", 0]
    with pytest.raises(ValueError, match="non-negative int"):
        cache["resid_post", -1]


@pytest.mark.parametrize("positions", ["all", "last"])
def test_transformer_lens_analyses_run_on_the_cache(tiny, positions):
    """TL's own decompose_resid, accumulated_resid and stack_head_results read the cache and
    agree with a direct computation from the cached sublayer outputs and the weights."""
    from transformer_lens import ActivationCache

    cache = tiny.cache(EQUAL, names=_tl_names(tiny), positions=positions, memo=False)
    tl = cache.to_transformer_lens(tiny)
    assert type(tl) is ActivationCache and tl.model is tiny.bridge
    n = tiny.n_layers
    parts, labels = tl.decompose_resid(layer=None, mode="all", apply_ln=False, return_labels=True)
    assert labels == ["embed"] + [f"{L}_{k}" for L in range(n) for k in ("attn_out", "mlp_out")]
    direct = cache["embed"] + sum(cache["attn_out", L] + cache["mlp_out", L] for L in range(n))
    torch.testing.assert_close(parts.sum(0), direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.sum(0), cache["resid_post", n - 1], rtol=1e-5, atol=1e-5)
    acc = tl.accumulated_resid(layer=None, incl_mid=False)
    for L in range(n):
        torch.testing.assert_close(acc[L], cache["resid_pre", L], rtol=0, atol=0)
    heads = tl.stack_head_results(layer=n, apply_ln=False)  # [layer·head, case, pos, d_model]
    W_O = tiny.bridge.W_O  # [layer, head, d_head, d_model]
    for L in range(n):
        z = cache["z", L]  # [case, pos, head, d_head]
        by_head = torch.stack([z[:, :, h] @ W_O[L, h] for h in range(tiny.n_heads)])
        torch.testing.assert_close(heads[L * tiny.n_heads : (L + 1) * tiny.n_heads], by_head, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(by_head.sum(0), cache["attn_out", L], rtol=1e-4, atol=1e-5)  # the tiny Llama has no b_O


def test_transformer_lens_cache_refuses_ragged_data_and_another_model(tiny):
    ragged = tiny.cache(["3+5=", "12+4="], names=["blocks.0.hook_resid_post", "blocks.0.attn.hook_pattern"], positions="all", memo=False)
    with pytest.raises(ValueError, match="2 lengths.*equal-length batch"):
        ragged.to_transformer_lens(tiny)
    with pytest.raises(ValueError, match="equal-length batch"):
        ragged["resid_post", 0]
    last = tiny.cache(["3+5=", "12+4="], names=["blocks.0.hook_resid_post", "blocks.0.attn.hook_pattern"], memo=False)
    assert last["resid_post", 0].shape == (2, 1, tiny.d_model)  # the last position is one axis for any lengths
    with pytest.raises(ValueError, match="equal-length batch"):
        last["pattern", 0]  # keys of two lengths
    from arithlens.testing import tiny_llama

    with pytest.raises(ValueError, match="another model"):
        last.to_transformer_lens(tiny_llama(seed=1))
    with pytest.raises(ValueError, match="not a LensModel"):
        last.to_transformer_lens(tiny.bridge)


def test_a_bos_dataset_caches_what_a_transformer_lens_notebook_caches(tiny):
    cases = data.arithmetic(tiny.tokenizer, ops="+", templates=[4], forms=["numeral"], n_per_op=3, prepend_bos=True)
    cases = cases.filter(digits=1)
    same = [c for c in cases if len(c.input_ids) == len(cases[0].input_ids)]
    cache = tiny.cache(same, names=["blocks.1.hook_resid_post"], positions="all", memo=False)
    _, notebook = tiny.bridge.run_with_cache(tiny.bridge.to_tokens([c.prompt for c in same]))  # TL's default: BOS first
    torch.testing.assert_close(cache["resid_post", 1], notebook["blocks.1.hook_resid_post"], rtol=0, atol=0)


def test_a_hook_that_never_fires_is_a_clear_error(tiny):
    # Rotary models keep TL's hook_pos_embed point but never call it.
    assert "hook_pos_embed" in tiny.bridge.hook_dict
    with pytest.raises(ValueError, match="'hook_pos_embed' exists on this model but never fires"):
        tiny.cache(["1+2="], names=["hook_pos_embed"], memo=False)
