"""The report's statistics and readings: every sentence follows from the numbers it describes.

Each reading is fed a synthetic result where its claim fails (the text must not assert
it) and one where it holds (the text must say so, with the numbers). No model runs here.
"""

import math
import random
import types

import numpy as np
import pandas as pd
import pytest
import torch

from arithlens.app.circuits_sections import attention_reading, knockout_reading, patching_reading, probe_reading, sft_reading
from arithlens.app.cna_sections import chain_reading, chain_table, table4_reading, table5_reading, table6_reading
from arithlens.app.cna_sections import table7_reading, table8_reading
from arithlens.app.pipeline import _case_type_table, accuracy_reading, case_type_reading, heads_reading, top_head
from arithlens.app.report import Report, Section
from arithlens.core.stats import (
    Estimate,
    difference_interval,
    mean_interval,
    paired_difference,
    proportion,
    proportion_interval,
    t_quantile,
)


# ----------------------------------------------------------------------------- statistics
def test_wilson_interval_known_values():
    low, high = proportion_interval(47, 100)
    assert (round(low, 4), round(high, 4)) == (0.3751, 0.5671)
    low, high = proportion_interval(0, 8)
    assert low == 0.0 and high == pytest.approx(0.3244, abs=1e-4)
    assert proportion_interval(8, 8)[1] == 1.0 and proportion_interval(8, 8)[0] == pytest.approx(0.6756, abs=1e-4)
    assert proportion_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="k=9"):
        proportion_interval(9, 8)


@pytest.mark.parametrize("p, n", [(0.2, 25), (0.5, 30), (0.9, 60)])
def test_wilson_interval_covers_at_its_level(p, n):
    rng = random.Random(0)
    hits = 0
    for _ in range(2000):
        k = sum(rng.random() < p for _ in range(n))
        low, high = proportion_interval(k, n)
        hits += low <= p <= high
    assert hits / 2000 >= 0.92


def test_paired_difference_covers_and_beats_the_unpaired_interval():
    """Ablation-like data: the second outcome is the first with some cases flipped to wrong."""
    rng = random.Random(1)
    n, p, flip = 40, 0.6, 0.15
    true = p * flip
    hits, narrower = 0, 0
    for _ in range(1500):
        before = [rng.random() < p for _ in range(n)]
        after = [b and rng.random() >= flip for b in before]
        e = paired_difference(before, after)
        hits += e.low <= true <= e.high
        u = difference_interval(sum(before), n, sum(after), n)
        narrower += (e.high - e.low) <= (u.high - u.low) + 1e-12
    assert hits / 1500 >= 0.92
    assert narrower / 1500 >= 0.95  # pairing uses the correlation: never wider, in practice


def test_paired_difference_signs():
    no_change = paired_difference([True] * 10 + [False] * 10, [True] * 10 + [False] * 10)
    assert no_change.value == 0 and not no_change.known
    drop = paired_difference([True] * 30 + [False] * 10, [True] * 10 + [False] * 30)
    assert drop.value == pytest.approx(0.5) and drop.above_zero and not drop.below_zero
    rise = paired_difference([False] * 20, [True] * 20)
    assert rise.below_zero
    with pytest.raises(ValueError, match="one value per case"):
        paired_difference([True], [True, False])


def test_t_quantile_and_mean_interval():
    for df, t in [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042)]:
        assert t_quantile(0.975, df) == pytest.approx(t, abs=2e-3)
    # Bonferroni levels, from printed tables: exact, where a series expansion is ~9 % low at df = 3
    # and a normal z (3.76 at 300 nodes) ~10 % low at df = 39.
    assert t_quantile(0.9995, 3) == pytest.approx(12.924, abs=2e-3)
    assert t_quantile(0.995, 3) == pytest.approx(5.841, abs=2e-3)
    assert t_quantile(1 - 0.05 / 600, 39) == pytest.approx(4.17, abs=1e-2)
    with pytest.raises(ValueError, match="df=0"):
        t_quantile(0.9, 0)
    e = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert e.value == 2.5 and e.low == pytest.approx(2.5 - 3.182 * math.sqrt(5 / 3) / 2, abs=1e-2)
    single = mean_interval([3.0])
    assert single.value == 3.0 and not single.known and "too few" in single.ci()


def test_estimate_text_keeps_the_ends_apart():
    e = proportion(0, 2296)
    assert e.percent() == "0.0% [95% CI 0.0% to 0.2%]"
    assert Estimate(0.01, -0.02, 0.05, 10).points() == "1 point [95% CI −2 to 5]"


def test_report_html_is_self_contained_with_readable_figures(tmp_path):
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    fig.update_layout(title="A very long title " * 10, width=400)
    report = Report("t", meta={"model": "m"}, sections=[Section("One", "first line\nsecond line", figure=fig)], timings={"stage": 1.5})
    text = report.to_html()
    assert "<script src=" not in text and "plotly.js v" in text  # plotly.js embedded, nothing fetched
    assert "<br>" in text  # the long title is wrapped, not clipped
    assert '"width":400' not in text.replace(" ", "")  # the figure fills the page width
    assert "<p>first line</p><p>second line</p>" in text
    assert '<h2 id="timings">' in text and "1.5" in text
    path = report.write(tmp_path / "sub" / "r.html")
    assert open(path, encoding="utf-8").read() == text


# ----------------------------------------------------------------------------- accuracy
def _cases(groups):
    rows = []
    for (op, form), (k, n) in groups.items():
        rows += [{"op": op, "form": form, "correct": i < k} for i in range(n)]
    return pd.DataFrame(rows)


def test_accuracy_reading_asserts_only_established_differences():
    clear = accuracy_reading(_cases({("+", "numeral"): (90, 100), ("+", "word"): (10, 100), ("-", "numeral"): (50, 100), ("-", "word"): (50, 100)}))
    assert "answered more often than as words" in clear
    assert "'+' is answered more often than '-'" not in clear  # 50% vs 50% overall per op
    close = accuracy_reading(_cases({("+", "numeral"): (50, 100), ("+", "word"): (48, 100)}))
    assert "not distinguishable" in close and "more often" not in close
    assert "First-token accuracy over 200 cases is 49%" in close


# ----------------------------------------------------------------------------- heads
def _sweep(drops, n=100, base=60, n_layers=4, n_heads=10, case_type=None):
    """A head sweep where head (L, H) turns `drops[(L, H)]` of the `base` correct cases wrong."""
    heads = [(L, H) for L in range(n_layers) for H in range(n_heads)]
    baseline = torch.tensor([i < base for i in range(n)])
    correct = baseline.repeat(len(heads), 1)
    for k, h in enumerate(heads):
        correct[k, : drops.get(h, 0)] = False
    ops = np.array(["+"] * (n // 2) + ["-"] * (n - n // 2))
    cases = pd.DataFrame({"op": ops, "correct": baseline.numpy()})
    if case_type is not None:
        cases["case_type"] = case_type
    rows = []
    for k, (L, H) in enumerate(heads):
        for op in ("all", "+", "-"):
            m = np.ones(n, bool) if op == "all" else ops == op
            acc = float(correct[k].numpy()[m].mean())
            b = float(baseline.numpy()[m].mean())
            rows.append({"layer": L, "head": H, "op": op, "n": int(m.sum()), "accuracy": acc, "baseline_accuracy": b,
                         "accuracy_drop": b - acc, "logprob_drop": b - acc})  # fmt: skip
    return types.SimpleNamespace(
        df=pd.DataFrame(rows), cases=cases, heads=heads, correct=correct, exact=torch.ones(len(heads), dtype=torch.bool),
        group_by=("op",), n_layers=n_layers, n_heads=n_heads,
    )  # fmt: skip


def test_heads_reading_no_effect_asserts_nothing():
    text = heads_reading(_sweep({}), (0, 0))
    assert "carry the arithmetic, as in the paper" not in text
    assert "No head's ablation lowers accuracy" in text and "cannot say" in text


def test_heads_reading_one_strong_head_is_a_few_heads():
    sweep = _sweep({(2, 7): 40})
    assert top_head(sweep, "+") == (2, 7)
    text = heads_reading(sweep, (2, 7))
    assert "Zero-ablating head 2.7 lowers accuracy most: 60% → 20%, a drop of 40 points" in text
    assert "A few heads carry the arithmetic, as in the paper" in text and "layer 2 of 0-3" in text


def test_heads_reading_small_drop_on_few_cases_is_not_claimed():
    text = heads_reading(_sweep({(1, 1): 2}, n=10, base=6), (1, 1))
    assert "not distinguishable from no change on 10 cases" in text
    assert "A few heads carry" not in text


def test_heads_reading_many_heads_is_spread():
    text = heads_reading(_sweep({(L, H): 30 for L in range(4) for H in range(10)}), (0, 0))
    assert "spread over many heads" in text and "A few heads" not in text


def test_heads_reading_one_measurable_head_with_a_small_drop_is_not_the_papers_picture():
    """1 head of 40 measurable, losing ~a quarter of the correct answers at best: no "as in the paper"."""
    text = heads_reading(_sweep({(2, 7): 14}), (2, 7))
    assert "1 of 40 heads lowers accuracy measurably" in text and "2.7 (14 points)" in text
    assert "as in the paper" not in text and "not the paper's picture" in text


def test_case_type_reading_counts_equal_its_table():
    """The reading's baseline counts per case type are the table's n and baseline accuracy."""
    types_ = np.array(["memorize", "change-one"] * 50)
    sweep = _sweep({(0, 1): 10}, base=7, case_type=types_)
    sweep.cases["target_str"] = np.where(types_ == "change-one", "1", "7")
    text = case_type_reading(sweep, (0, 1))
    table = _case_type_table(sweep, (0, 1))
    for r in table.itertuples():
        assert f"{r.case_type} {round(r.baseline_accuracy * r.n)} of {r.n}" in text
        assert f"{r.case_type}: " in text and f"on {r.n} cases" in text
    assert "memorize 4 of 50" in text and "change-one 3 of 50" in text
    assert "Every change-one case's scored token is '1'" in text and "carry or borrow" in text


def test_case_type_reading():
    types_ = np.array(["memorize", "change-one"] * 50)
    same = case_type_reading(_sweep({(0, 1): 40}, case_type=types_), (0, 1))
    assert "matters for both kinds" in same
    none = case_type_reading(_sweep({}, case_type=types_), (0, 1))
    assert "On neither kind is the drop distinguishable" in none and "matters" not in none


# ----------------------------------------------------------------------------- CNA
def _cna(changes):
    frame = pd.DataFrame({
        "layer": [29, 20, 3], "neuron": [545, 7, 1], "importance": [1.0, 0.5, 0.1],
        "importance_other": [1.0 - c for c in changes], "importance_change": changes,
        "coef": [0.3, 0.2, 0.1], "coef_other": [0.1, 0.1, 0.1],
    }).sort_values("importance_change", ascending=False)  # fmt: skip
    return types.SimpleNamespace(
        case_frame=lambda case: frame, w_str=["8"], logprob=[-0.2], logprob_other=[-1.5], other="ZeroHead(0.8)", layers=list(range(30))
    )


def test_table4_reading():
    held = table4_reading(_cna([0.9, 0.4, 0.05]), other_prediction="1")
    assert "largest fall is neuron 29_545" in held and "predicts '1' instead" in held
    assert "29_545) is neuron N of the FFN of layer L" in held or "L_N (e.g. 29_545)" in held
    assert "positive: a drop" in held
    failed = table4_reading(_cna([0.0, -0.1, -0.2]))
    assert "No neuron's importance falls" in failed and "largest fall" not in failed


def _mask_keep(mask_acc, keep_acc, n, coef):
    df = pd.DataFrame([
        {"k": 99, "measure": "mask", "decrease": 100 * (1 - mask_acc), "accuracy": mask_acc, "n": n},
        {"k": 99, "measure": "keep", "decrease": 100 * (1 - keep_acc), "accuracy": keep_acc, "n": n},
        {"k": 99, "measure": "coef", "decrease": float(np.mean(coef)), "accuracy": float("nan"), "n": n},
    ])  # fmt: skip
    return types.SimpleNamespace(df=df, baseline_accuracy=1.0, n_cases=n, keep_layers=list(range(15, 30)),
                                 coef_per_case={99: torch.tensor(coef)}, intervention="ZeroHead(0.8)")  # fmt: skip


def test_table5_reading():
    held = table5_reading(_mask_keep(0.0, 0.95, 40, [30.0 + i for i in range(40)]))
    assert "masking hurts more than keeping" in held and "lowers their coefficient scores" in held
    failed = table5_reading(_mask_keep(0.5, 0.5, 8, [5.0, -5.0, 3.0, -3.0, 1.0, -1.0, 2.0, -2.0]))
    assert "not distinguishable on 8 cases" in failed
    assert "hurts more" not in failed and "carry the answer, as in the paper" not in failed
    assert "is not distinguishable from zero" in failed


def _dag(values, edges):
    t6 = pd.DataFrame({"k": [10], "lowest_layer": [15], "lowest_neuron": [3], "coef_decrease": [float(np.mean(values))], "n": [len(values)]})
    nodes = pd.DataFrame({"case": [0] * 3, "layer": [15, 20, 29], "neuron": [3, 4, 5], "score": [1, 2, 3], "is_root": [True, False, False]})
    e = pd.DataFrame({"case": [0] * edges, "src_layer": [15] * edges, "src_neuron": [3] * edges, "dst_layer": [20] * edges,
                      "dst_neuron": [4] * edges, "relative_drive": [0.2] * edges})  # fmt: skip
    return types.SimpleNamespace(table6=t6, coef_per_case={10: torch.tensor(values)}, df=e, nodes=nodes, threshold=0.05, root=lambda case: (15, 3))


def test_table6_reading():
    held = table6_reading(_dag([10.0 + i for i in range(20)], edges=1))
    assert "established for every K" in held and "root 15_3" in held
    failed = table6_reading(_dag([2.0, -2.0, 1.0, -1.5], edges=0))
    assert "do not establish prediction enhancing" in failed and "as in the paper" not in failed
    assert "no edge above the threshold" in failed


def test_table6_reading_names_every_root_the_figure_rings():
    from arithlens.cna import PredictionEnhancingDAGResult

    nodes = pd.DataFrame({"case": 0, "layer": [29, 25, 20, 18, 15, 10], "neuron": [1, 2, 3, 4, 5, 6],
                          "score": [6.0, 5, 4, 3, 2, 1], "coef": 0.1, "is_root": [False, False, True, True, True, True], "top_tokens": ""})  # fmt: skip
    edges = pd.DataFrame({"case": 0, "src_layer": [20, 18, 15, 10], "src_neuron": [3, 4, 5, 6], "dst_layer": [29, 29, 25, 25],
                          "dst_neuron": [1, 1, 2, 2], "gate_ip": 0.1, "up_ip": 0.1, "drive": 0.1, "relative_drive": 0.2})  # fmt: skip
    t6 = pd.DataFrame({"k": [6], "lowest_layer": [10], "lowest_neuron": [6], "coef_decrease": [10.0], "n": [1]})
    dag = PredictionEnhancingDAGResult(df=edges, nodes=nodes, pairs=edges, table6=t6, threshold=0.05)
    text = table6_reading(dag)
    ringed = [lab for lab, c in zip(dag.plot().data[0].text, dag.plot().data[0].marker.line.color) if c == "black"]
    assert "4 edges among its 6 top neurons" in text and f"{len(ringed)} roots (ringed)" in text
    assert "most important first: 20_3, 18_4, 15_5 and 10_6" in text and sorted(ringed) == sorted(["20_3", "18_4", "15_5", "10_6"])


def test_chain_reading_edges_equal_its_table():
    """The logic chain's reading counts 4 PE-DAG edges; the report's table lists all 4 (it listed the top 3)."""
    from arithlens.cna import LogicChainResult

    rows = [{"stage": "feature predicting", "layer": 0, "position": 3, "token": "=", "neuron": None, "head": 8, "score": 1.2, "measure": "logprob_drop", "top_tokens": ""}]
    for i, (src, dst) in enumerate([("10_517", (23, 1092)), ("15_3", (20, 4)), ("15_3", (29, 5)), ("20_4", (29, 5))]):
        rows.append({"stage": "prediction enhancing", "layer": dst[0], "position": 3, "token": "=", "neuron": dst[1], "head": None,
                     "score": 0.4 - 0.1 * i, "measure": f"relative_drive from {src}", "top_tokens": ""})  # fmt: skip
    df = pd.DataFrame(rows).astype({"neuron": "Int64", "head": "Int64"})
    chain = LogicChainResult(df=df, prompt="3+5=", prediction="8", head=(0, 8), root=(10, 517), n_layers=30)
    text = chain_reading(chain)
    n = int(text.split(" PE-DAG edge")[0].rsplit(" ", 1)[1])
    listed = chain_table(chain).set_index("stage").loc["prediction enhancing", "components"].split(", ")
    assert n == 4 == len(listed) and "10_517 → 23_1092" in listed


def test_chain_reading_counts_the_stages_it_shows():
    df = pd.DataFrame([
        {"stage": "feature transferring", "layer": 0, "position": 3, "token": "=", "neuron": None, "head": None, "score": 0.3, "measure": "attn_importance"},
        {"stage": "feature predicting", "layer": 0, "position": 3, "token": "=", "neuron": None, "head": 8, "score": 1.2, "measure": "logprob_drop"},
        {"stage": "feature predicting", "layer": 29, "position": 3, "token": "=", "neuron": 545, "head": None, "score": 0.9, "measure": "importance_change"},
    ])  # fmt: skip
    chain = types.SimpleNamespace(df=df, prompt="3+5=", prediction="8", head=(0, 8), root=(29, 545), empty={"feature enhancing": "no FFN layer to search"})
    text = chain_reading(chain)
    assert text.startswith("2 of the paper's 4 stages are located")
    assert "Not located: feature enhancing (no FFN layer to search); prediction enhancing" in text
    assert "four stages" not in text


def _table8(hidden_acc, random_acc, n):
    rows = []
    for m in (1, 2):
        rows.append({"M": m, "neuron_set": "hidden", "n_neurons": 100, "accuracy": hidden_acc, "baseline_accuracy": 1.0, "n_cases": n})
        rows.append({"M": m, "neuron_set": "random", "n_neurons": 100, "accuracy": random_acc, "baseline_accuracy": 1.0, "n_cases": n})
    return types.SimpleNamespace(df=pd.DataFrame(rows))


def test_table8_reading():
    held = table8_reading(_table8(0.1, 0.9, 48), n_scanned=23040)
    assert "hurts more than a random set of equal size for M=1 and M=2, as in the paper" in held
    failed = table8_reading(_table8(0.75, 0.875, 8), n_scanned=23040)
    assert "not distinguishable on 8 cases" in failed and "as in the paper" not in failed


def test_table7_reading():
    t7 = pd.DataFrame({"item": ["12_4", "word '3'"], "origin concepts": [0, 9], "transform concepts": [4, 9]})
    text = table7_reading(t7)
    assert "1 of 2 gain number/operation tokens" in text and "already read as numbers directly" in text


# ----------------------------------------------------------------------------- circuits
def test_patching_reading():
    df = pd.DataFrame({"layer": [0, 0, 1], "node": ["0", "mlp", "1"], "effect": [-0.5, 0.01, 0.02], "effect_sem": [0.05, 0.02, 0.03], "n": [40] * 3})
    held = patching_reading(types.SimpleNamespace(df=df))
    assert "1 of 3 nodes have an effect distinguishable from zero" in held and "0.0 (" in held
    df["effect"] = [0.03, 0.01, -0.02]
    failed = patching_reading(types.SimpleNamespace(df=df))
    assert "No node's effect is distinguishable from zero on 40 pairs" in failed
    # |effect| / SEM = 2.45: past the Bonferroni normal z (2.39 for 3 nodes) but not t_39 (2.50).
    df["effect"] = [0.245, 0.01, -0.02]
    df["effect_sem"] = [0.1, 0.02, 0.03]
    assert "No node's effect is distinguishable" in patching_reading(types.SimpleNamespace(df=df))
    df["n"] = 4000  # many pairs: t approaches z and the node is clear
    assert "1 of 3 nodes have an effect distinguishable" in patching_reading(types.SimpleNamespace(df=df))


def _knockout(n, base, key, random_, rest):
    def outcome(k):
        return torch.tensor([i < k for i in range(n)])

    correct = {"baseline": outcome(base), "key": outcome(key), "random": outcome(random_), "rest": outcome(rest)}
    df = pd.DataFrame([{"condition": c, "op": "all", "n": n, "n_ablated": {"baseline": 0, "key": 8, "random": 8, "rest": 292}[c],
                        "accuracy": float(v.float().mean())} for c, v in correct.items()])  # fmt: skip
    return types.SimpleNamespace(df=df, correct=correct)


def test_knockout_reading_all_equal_on_8_cases_confirms_nothing():
    """The report's former text: 38% everywhere on 8 cases, yet 'A large drop … confirms'."""
    text = knockout_reading(_knockout(8, 3, 3, 3, 3))
    assert "confirms" not in text and "validates them" not in text and "A large drop" not in text
    assert "cannot validate the key nodes" in text and "8 pairs" in text


def test_knockout_reading_validates_a_real_drop():
    text = knockout_reading(_knockout(60, 40, 5, 39, 42))
    assert "the knockout validates them, as in the paper" in text
    assert "a drop of 58 points" in text and "a rise of 3 points" in text
    assert "consistent with the paper's finding that the others do not matter" in text


def test_knockout_reading_key_no_worse_than_random():
    text = knockout_reading(_knockout(60, 40, 20, 22, 40))
    assert "not measurably more than ablating random nodes" in text and "validates them" not in text


def test_attention_and_probe_readings():
    df = pd.DataFrame([{"head_label": "20.8", "role": r, "attention": a, "n": 40} for r, a in [("A", 0.6), ("B", 0.2), ("operator", 0.1), ("other", 0.1)]])
    assert "attends mostly to an operand" in attention_reading(types.SimpleNamespace(df=df))
    df["attention"] = [0.1, 0.1, 0.1, 0.7]
    text = attention_reading(types.SimpleNamespace(df=df))
    assert "None of these heads attends mostly to an operand" in text
    layers = list(range(6))
    rows = [{"layer": L, "quantity": q, "token": t, "cosine": 0.1} for L in layers for q in ("mlp_in", "mlp_out", "mlp_diff") for t in "ABC"]
    g = torch.Generator().manual_seed(0)
    late = torch.zeros(30, 6, 3, 3)
    late[:, 4:, 1, 2] = 0.3 + 0.01 * torch.randn(30, 2, generator=g)
    frame = pd.DataFrame(rows)
    frame.loc[(frame["layer"] == 4) & (frame["quantity"] == "mlp_out") & (frame["token"] == "C"), "cosine"] = 0.4
    held = probe_reading(types.SimpleNamespace(df=frame, per_case=late))
    assert "favours C over the operands most at layer 4 (cos 0.400 with C vs 0.100" in held
    assert "the late MLPs write toward the answer" in held and "slightly" not in held
    flat = 0.01 * torch.randn(30, 6, 3, 3, generator=g)
    failed = probe_reading(types.SimpleNamespace(df=pd.DataFrame(rows), per_case=flat))
    assert "not distinguishable" in failed and "write the answer" not in failed


def test_sft_reading():
    df = pd.DataFrame({"variant": ["original", "precise", "full"], "accuracy": [0.3, 0.55, 0.4], "perplexity": [37.0, 37.5, 160.0], "steps": [0, 60, 60]})
    text = sft_reading(types.SimpleNamespace(df=df), n_test=200)
    assert "precise: 55% (25 points" in text and "higher than it" in text
    assert "changes general-text perplexity less than full fine-tuning" in text
    small = sft_reading(types.SimpleNamespace(df=df), n_test=10)
    assert "not distinguishable from it" in small


def test_an_interrupted_run_leaves_no_report_that_looks_complete(monkeypatch, tmp_path):
    import arithlens.app.pipeline as pipeline

    (tmp_path / "report.html").write_text("<html>an earlier run</html>")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "load_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(out=str(tmp_path), quick=True)
    assert not (tmp_path / "report.html").exists()
    assert (tmp_path / pipeline.INCOMPLETE).exists()


def test_reports_are_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "r.html"
    target.write_text("old")
    report = Report("t")

    def broken(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Report, "to_html", broken)
    with pytest.raises(OSError):
        report.write(target)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_hovers_show_formatted_numbers():
    """plotly express writes bare `%{y}`: a hover would read accuracy_drop=0.29999998211860657."""
    import plotly.express as px

    from arithlens.analysis.figures import format_hovers
    from arithlens.app.report import prepare_figure

    df = pd.DataFrame({"M": ["M=0", "M=1"], "accuracy_drop": np.array([0.29999998211860657, 0.1], dtype=np.float32), "n": [3, 4]})
    fig = px.bar(df, x="M", y="accuracy_drop", text="n", custom_data=["accuracy_drop", "M"], hover_data=["n"])
    fig.data[0].hovertemplate += "<br>again %{customdata[0]} of %{customdata[1]}"
    assert "accuracy_drop=%{y}" in fig.data[0].hovertemplate
    for out in (format_hovers(go_copy(fig)), prepare_figure(fig)):
        template = out.data[0].hovertemplate
        assert "accuracy_drop=%{y:.4~g}" in template and "again %{customdata[0]:.4~g} of %{customdata[1]}" in template
        assert "M=%{x}<" in template  # categories stay as they are


def go_copy(fig):
    import plotly.graph_objects as go

    return go.Figure(fig)
