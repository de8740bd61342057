"""Attribution patching: the agreement statistics, and path patching's estimate, re-scoring and cache."""

import numpy as np
import pytest
import torch
from conftest import assert_untouched, model_state

from arithlens.analysis import attribution

from arithlens import data

from arithlens.core import names
from arithlens.circuits import counterfactual_pairs, PathPatching
from arithlens.core.names import Component


@pytest.fixture(scope="module")
def pairs(tiny):
    cases = data.arithmetic(tiny.tokenizer, ops="+-", digits=(1, 2), templates=(3,), forms=("numeral",), n_per_op=3)
    return counterfactual_pairs(tiny, cases)


# ------------------------------------------------------------------------- statistics
def test_spearman_by_hand():
    # ranks of a: 1, 2, 3, 4; of b: 2, 1, 4, 3 -> d^2 sum 4 -> 1 - 6*4/(4*15) = 0.6
    assert attribution.spearman([1.0, 2.0, 3.0, 4.0], [20.0, 10.0, 40.0, 30.0]) == pytest.approx(0.6)
    assert attribution.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: a = 1, 2.5, 2.5, 4 against b = 1..4
    a, b = np.array([1.0, 2.5, 2.5, 4.0]), np.arange(4.0)
    assert attribution.spearman([0, 5, 5, 9], [0, 1, 2, 3]) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert np.isnan(attribution.spearman([1, 1, 1], [1, 2, 3]))


def test_agreement_and_candidates():
    exact = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    estimate = np.array([1.0, 4.0, 3.0, 2.0, 5.0])  # the true best is ranked last
    reported = np.array([5.0, 4.0, 3.0, 2.0, 0.5])  # re-scoring put it back
    agree = attribution.agreement(estimate, exact, reported, k=2)
    assert (agree.k, agree.n) == (2, 5)
    assert agree.overlap_estimate == 0.5 and agree.overlap_rescored == 1.0
    assert attribution.agreement(estimate, exact, reported, k=np.int64(50)).k == 5
    assert "top-2 overlap 50% (estimate), 100% (after re-scoring)" in str(agree)
    with pytest.raises(ValueError, match="k=0 is out of range"):
        attribution.agreement(estimate, exact, reported, k=0)
    with pytest.raises(ValueError, match="of one length"):
        attribution.agreement(estimate[:3], exact, reported)
    assert attribution.candidates(torch.tensor([0.1, 3.0, -1.0, 2.0]), 2).tolist() == [1, 3]
    assert attribution.candidates(torch.tensor([0.1, 3.0]), 0).tolist() == []


# ---------------------------------------------------------------------- path patching
@pytest.mark.parametrize("method", ["path", "activation"])
def test_patching_rescored_rows_are_exact_and_the_rest_flagged(tiny, pairs, method):
    snap, n_hooks = model_state(tiny)
    exact = PathPatching(method=method, progress=False, logprobs=True).run(tiny, pairs)
    fast = PathPatching(method=method, estimate="attribution", rescore=6, progress=False, logprobs=True).run(tiny, pairs)
    assert_untouched(tiny, snap, n_hooks)
    rows = fast.exact.nonzero()[:, 0]
    assert len(rows) == 6
    torch.testing.assert_close(fast.logit_p[rows], exact.logit_p[rows], atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.logprob_p[rows], exact.logprob_p[rows], atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.logit_o, exact.logit_o, atol=1e-5, rtol=0)
    est = fast.estimated_effects.mean(1).abs()
    assert set(rows.tolist()) == set(est.argsort(descending=True)[:6].tolist())
    assert fast.df["estimated"].sum() == len(fast.nodes) - 6
    assert fast.df.loc[fast.df["estimated"], "logprob_change"].isna().all()
    # exact rows rank first, each part by |effect|
    top = fast.top(8)
    assert not top["estimated"].iloc[:6].any() and top["estimated"].iloc[6:].all()
    agree = fast.agreement(exact, k=6)
    assert agree.overlap_rescored >= agree.overlap_estimate - 1e-9 and agree.n == len(exact.nodes)


def test_path_estimate_is_the_linearised_final_norm(tiny, pairs):
    """For "path" the only non-linearity is the final norm: a small patch is predicted exactly."""
    nodes = [Component(2, 1), Component(2), Component(0, 3)]
    fast = PathPatching(nodes=nodes, estimate="attribution", rescore=0, progress=False).run(tiny, pairs)
    exact = PathPatching(nodes=nodes, progress=False).run(tiny, pairs)
    # first order: agree to within the curvature of the norm, and in sign for sizeable effects
    err = (fast.logit_p - exact.logit_p).abs()
    size = (exact.logit_p - exact.logit_o[None]).abs()
    assert bool((err <= 0.5 * size + 1e-3).float().mean() > 0.8)


def test_activation_estimate_is_the_first_order_change(tiny, pairs):
    """Brute force: patch a node a fraction α of the way to its counterfactual output, finite difference."""
    fast = PathPatching(method="activation", estimate="attribution", rescore=0, progress=False).run(tiny, pairs)
    alpha = 1e-3
    for node in [Component(1, 2), Component(0), Component(2, 0)]:
        k = fast.nodes.index(node)
        for i in range(2):
            ref = torch.tensor([pairs.reference_ids[i]])
            cf = torch.tensor([pairs.counterfactual_ids[i]])
            name = names.mlp_out(node.layer) if node.is_mlp else names.z(node.layer)
            _, acts = tiny.bridge.run_with_cache(cf, names_filter=[name], return_cache_object=False)
            c = acts[name]

            def nudge(x, hook):
                view = x[:, -1:] if node.is_mlp else x[:, -1:, node.head]
                src = c[:, -1:] if node.is_mlp else c[:, -1:, node.head]
                view += alpha * (src - view)
                return x

            with torch.no_grad():
                clean_logits = tiny.bridge(ref)[0, -1]
                with tiny.hooked([(name, nudge)]):
                    moved_logits = tiny.bridge(ref)[0, -1]
            t = int(pairs.target_ids[i]) if int(pairs.target_ids[i]) >= 0 else int(clean_logits.argmax())
            fd = float(moved_logits[t] - clean_logits[t]) / alpha
            est = float(fast.estimated_effects[k, i] * fast.logit_o[i])
            assert est == pytest.approx(fd, rel=0.05, abs=2e-3), node


def test_patching_reads_the_reference_from_a_cache(tiny, pairs):
    for method, positions in [("path", "last"), ("activation", "all")]:
        patching = PathPatching(method=method, progress=False)
        cache = tiny.cache(pairs, names=[patching], positions=positions, memo=False)
        cached = patching.run(tiny, pairs, cache=cache)
        plain = patching.run(tiny, pairs)
        torch.testing.assert_close(cached.logit_p, plain.logit_p, atol=1e-4, rtol=0)
        torch.testing.assert_close(cached.logit_o, plain.logit_o, atol=1e-4, rtol=0)
    last_only = tiny.cache(pairs, names=[PathPatching(method="activation")], positions="last", memo=False)
    with pytest.raises(ValueError, match="positions='all'"):
        PathPatching(method="activation", progress=False).run(tiny, pairs, cache=last_only)
    with pytest.raises(ValueError, match="lacks"):
        PathPatching(progress=False).run(tiny, pairs, cache=tiny.cache(pairs, memo=False))
    with pytest.raises(ValueError, match="other targets"):  # the same prompts without their answers
        PathPatching(progress=False).run(tiny, pairs, cache=tiny.cache(pairs.reference_ids, names=[PathPatching()], memo=False))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"estimate": "quick"}, "estimate='quick' is not one of"),
        ({"rescore": 1.5}, "rescore=1.5 must be an integer"),
        ({"batch_size": 0}, "batch_size=0 is out of range"),
        ({"max_rows": "8"}, "max_rows='8' must be an integer"),
        ({"position": "first"}, "position='first' is not one of"),
        ({"nodes": "17.2"}, "must be a list of components"),
        ({"logprobs": "yes"}, "logprobs='yes' must be True or False"),
    ],
)
def test_patching_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PathPatching(**kwargs)


def test_top_arguments(tiny, pairs):
    result = PathPatching(progress=False).run(tiny, pairs)
    for bad, match in [(0, "k=0 is out of range"), ("3", "k='3' must be an integer")]:
        with pytest.raises(ValueError, match=match):
            result.top(bad)
    with pytest.raises(ValueError, match="kind='attn' is not one of"):
        result.top(3, kind="attn")
    with pytest.raises(ValueError, match="by='size' is not one of"):
        result.top_components(3, by="size")
    assert len(result.top(np.int64(4))) == 4 and all(isinstance(n, Component) for n in result.top_components(4))
