"""HeadAblation: cache reuse, argument checks, top(), attribution estimates and re-scoring."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_untouched, model_state

from arithlens import data

from arithlens.core import names
from arithlens.cna.heads import HeadAblation, HeadAblationResult
from arithlens.core.interventions import ZeroHead

# No targets: the baseline is the model's own prediction (accuracy 100 %), so ablations
# that flip a prediction show a positive drop even on a random tiny model.
PROMPTS = ["3+5=", "12+7=", "9-2=", "44*2=", "1+1=", "8/4=", "The sum of 3 and 4 is "]


@pytest.fixture(scope="module")
def cases(tiny):
    return data.arithmetic(tiny.tokenizer, ops="+-", digits=1, templates=[3, 4], forms=["numeral"]).sample(16, seed=2)


@pytest.fixture(scope="module")
def exact(tiny):
    return HeadAblation(progress=False, batch_size=4).run(tiny, PROMPTS)


class EmbedCounter:
    """Counts calls of the bridge's embedding (restarted forwards never call it)."""

    def __init__(self, model):
        self.module, self.calls = model.bridge.embed, 0

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda *a: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_a_positions_all_cache_means_no_clean_forward(tiny, cases):
    sweep = HeadAblation(progress=False, layers=[1, 2], batch_size=5)
    assert sweep.hook_names(tiny) == {names.resid_pre(1), names.resid_pre(2)}
    cache = tiny.cache(cases, names=[sweep], positions="all", memo=False)
    with EmbedCounter(tiny) as counter:
        cached = sweep.run(tiny, cases, cache=cache)
    assert counter.calls == 0
    with EmbedCounter(tiny) as counter:
        plain = sweep.run(tiny, cases)
    assert counter.calls > 0
    torch.testing.assert_close(cached.logprob, plain.logprob, atol=1e-5, rtol=0)
    assert torch.equal(cached.correct, plain.correct)


def test_a_last_position_cache_serves_predictions(tiny, cases):
    sweep = HeadAblation(progress=False, layers=[0])
    cache = tiny.cache(cases, names=[sweep], memo=False)
    result = sweep.run(tiny, cases, cache=cache)
    assert result.cases["target_logprob"].tolist() == pytest.approx(cache.target_logprob.tolist())
    with pytest.raises(ValueError, match="cache was built on"):
        sweep.run(tiny, PROMPTS, cache=cache)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": -1}, "batch_size=-1 is out of range"),
        ({"batch_size": "8"}, "batch_size='8' must be an integer"),
        ({"max_rows": 0}, "max_rows=0 is out of range"),
        ({"layers": [True]}, "layers item=True must be an integer"),
        ({"layers": "12"}, "layers='12' must be an integer or a sequence"),
        ({"heads": [1.5]}, "heads item=1.5 must be an integer"),
        ({"heads": ["MLP 3"]}, "names an MLP, not a head"),
        ({"group_by": [3]}, "group_by=\\[3\\] must be a case column"),
        ({"method": "noise"}, "method='noise' is not one of"),
        ({"position": "end"}, "position='end' is not one of"),
        ({"estimate": "fast"}, "estimate='fast' is not one of"),
        ({"rescore": -2}, "rescore=-2 is out of range"),
        ({"progress": "no"}, "progress='no' must be True or False"),
    ],
)
def test_bad_arguments_fail_before_any_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeadAblation(**kwargs)


def test_numpy_integers_and_head_strings_are_accepted(tiny):
    a = HeadAblation(layers=np.array([0, 2]), heads=[np.int64(1)], batch_size=np.int64(3), progress=False).run(tiny, PROMPTS)
    b = HeadAblation(heads=["0.1", (2, 1)], progress=False).run(tiny, PROMPTS)
    assert a.heads == b.heads == [(0, 1), (2, 1)]
    torch.testing.assert_close(a.logprob, b.logprob)


def test_top_validates_and_lists_only_heads_that_hurt(exact):
    every = exact.df[exact.df["group"] == "all"] if "group" in exact.df else exact.df
    positive = every[every["accuracy_drop"] > 0].sort_values(["accuracy_drop", "logprob_drop"], ascending=False)
    assert 0 < len(positive) < len(every)  # some heads change predictions, some do not
    table = exact.top(len(every))
    listed = list(table.columns[2:])
    assert listed == [f"{L}.{H}" for L, H in zip(positive["layer"], positive["head"])]
    assert table["ori"].iloc[0] == 100.0
    assert list(exact.top(np.int64(2)).columns[2:]) == listed[:2]
    for bad, match in [(0, "k=0 is out of range"), (-1, "k=-1 is out of range"), (1.5, "k=1.5 must be an integer"), ("2", "k='2' must be an integer")]:
        with pytest.raises(ValueError, match=match):
            exact.top(bad)
    with pytest.raises(ValueError, match=r"group='%' is not a value of .*\['all'\]"):
        exact.top(2, group="%")


def test_top_group_must_exist(tiny, cases):
    result = HeadAblation(progress=False, layers=[2]).run(tiny, cases)
    with pytest.raises(ValueError, match=r"group='\*' is not a value of op: choose one of \['all', '[+-]', '[+-]'\]"):
        result.top(3, group="*")
    assert list(result.top(3, group="+").columns[:2]) == ["op", "ori"]


def test_attribution_rescored_rows_are_the_exact_numbers(tiny, exact):
    snap, n_hooks = model_state(tiny)
    fast = HeadAblation(progress=False, batch_size=4, estimate="attribution", rescore=5).run(tiny, PROMPTS)
    assert_untouched(tiny, snap, n_hooks)
    assert int(fast.exact.sum()) == 5
    rows = fast.exact.nonzero()[:, 0]
    torch.testing.assert_close(fast.logprob[rows], exact.logprob[rows], atol=1e-5, rtol=0)
    assert torch.equal(fast.correct[rows], exact.correct[rows])
    # the re-scored heads are the 5 with the largest |estimated drop|
    base = torch.tensor(fast.cases["target_logprob"].to_numpy())
    est_drop = (base[None] - fast.estimated_logprob).mean(1)
    assert set(rows.tolist()) == set(est_drop.abs().argsort(descending=True)[:5].tolist())
    # estimated rows: no accuracy, flagged, log-prob drop = the estimate
    df = fast.df
    assert df.loc[df["estimated"], "accuracy"].isna().all() and df.loc[~df["estimated"], "accuracy"].notna().all()
    assert (df["estimated"] == ~fast.exact.repeat(len(df) // len(fast.heads)).numpy()).all()
    est_rows = df[df["estimated"]]
    np.testing.assert_allclose(est_rows["logprob_drop"], est_rows["logprob_drop_estimate"], atol=1e-6)
    # top() never lists an estimated head
    assert set(fast.top(30).columns[2:]) <= {f"{L}.{H}" for (L, H), e in zip(fast.heads, fast.exact) if e}


@pytest.mark.parametrize("method, position", [("zero", "all"), ("zero", "last"), ("mean", "all")])
def test_attribution_estimate_is_the_first_order_change(tiny, cases, method, position):
    """Brute force: d/dα of the target log-prob as head h moves toward its ablated value, by finite difference."""
    sweep = HeadAblation(method=method, position=position, estimate="attribution", rescore=0, progress=False)
    fast = sweep.run(tiny, cases)
    base = torch.tensor(fast.cases["target_logprob"].to_numpy())
    delta = fast.estimated_logprob - base[None]
    means = None
    if method == "mean":
        from arithlens.core.interventions import HeadMeans

        means = HeadMeans.compute(tiny, cases, list(range(tiny.n_layers)))
    targets = torch.tensor([c.target_id for c in cases])
    alpha = 1e-3
    for L, H in [(0, 2), (1, 0), (2, 3)]:
        k = fast.heads.index((L, H))
        moved = torch.zeros(len(cases))
        for rows, tokens in tiny.batches([c.input_ids for c in cases]):

            def nudge(z, hook):
                view = z if position == "all" else z[:, -1:]
                target = 0.0 if means is None else means[L].for_length(z.shape[1], position)[:, H].to(z)
                view[:, :, H] += alpha * (target - view[:, :, H])
                return z

            with tiny.hooked([(names.z(L), nudge)]), torch.no_grad():
                lp = tiny.last_logits(tokens).float().log_softmax(-1)
            moved[rows] = lp.gather(-1, targets[rows][:, None])[:, 0]
        torch.testing.assert_close((moved - base) / alpha, delta[k], atol=2e-3, rtol=0.05)


def test_agreement_with_the_exact_sweep(tiny, exact):
    everything = HeadAblation(progress=False, batch_size=4, estimate="attribution", rescore=len(exact.heads)).run(tiny, PROMPTS)
    agree = everything.agreement(exact, k=4)
    assert agree.overlap_rescored == 1.0 and agree.n == len(exact.heads) and agree.k == 4
    assert -1.0 <= agree.spearman <= 1.0
    base = torch.tensor(exact.cases["target_logprob"].to_numpy())
    est = (base[None] - everything.estimated_logprob).mean(1).numpy()
    true = (base[None] - exact.logprob).mean(1).numpy()
    ranks = lambda x: pd.Series(x).rank().to_numpy()  # noqa: E731
    assert agree.spearman == pytest.approx(np.corrcoef(ranks(est), ranks(true))[0, 1])
    with pytest.raises(ValueError, match="this result is exact"):
        exact.agreement(exact)
    with pytest.raises(ValueError, match="same heads over the same cases"):
        everything.agreement(HeadAblation(progress=False, layers=[0]).run(tiny, PROMPTS))


def test_exact_sweep_matches_the_intervention_and_plots(tiny, exact):
    k = exact.heads.index((1, 2))
    with tiny.intervened(ZeroHead(1, 2)):
        run = tiny.cache(PROMPTS, memo=False)
    clean = tiny.cache(PROMPTS)
    logits = []  # no targets: the ablated log-prob of the clean prediction
    with tiny.intervened(ZeroHead(1, 2)), torch.no_grad():
        for p in PROMPTS:
            logits.append(tiny.bridge(torch.tensor([tiny.encode(p)]))[0, -1].log_softmax(-1))
    lp = torch.stack(logits).gather(-1, clean.predictions[:, None])[:, 0]
    torch.testing.assert_close(exact.logprob[k], lp, atol=1e-5, rtol=0)
    assert torch.equal(exact.correct[k], run.predictions == clean.predictions)
    assert isinstance(exact, HeadAblationResult) and exact.df["estimated"].eq(False).all()
    fig = exact.plot()
    assert fig.layout.xaxis.title.text == "head" and fig.layout.yaxis.title.text == "layer"
    assert fig.data[0].z.shape == (tiny.n_layers, tiny.n_heads)
    with pytest.raises(ValueError, match="value='nope' is not a numeric column"):
        exact.plot("nope")


def test_plot_has_one_panel_per_distinct_group(tiny):
    one_op = data.arithmetic(tiny.tokenizer, ops="+", templates=[4], forms=["numeral"], n_per_op=3)
    two_ops = data.arithmetic(tiny.tokenizer, ops="+-", templates=[4], forms=["numeral"], n_per_op=3)
    sweep = HeadAblation(layers=[0], progress=False)
    single = sweep.run(tiny, one_op).plot()
    assert len(single.data) == 1 and [a.text for a in single.layout.annotations] == ["+"]
    double = sweep.run(tiny, two_ops).plot()
    assert [a.text for a in double.layout.annotations] == ["all", "+", "-"]


def test_caption_states_the_sign_and_what_was_ablated(tiny):
    from arithlens.cna import HeadAblation

    res = HeadAblation().run(tiny, ["3+5=", "2+4="])
    caption = res.caption()
    assert "zero-ablation of each head (every head ablated exactly) on 2 cases" in caption
    assert "accuracy_drop = baseline_accuracy − accuracy" in caption and "positive means the head helps" in caption
    assert __import__("html").escape(caption) in res._repr_html_() and str(res).startswith(f"HeadAblationResult: {caption}")
