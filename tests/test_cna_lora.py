"""LoRA on one attention layer (§5): what trains, the learning-rate choice, adapter re-use,
Tables 9-10 against a brute-force computation, and the CLI's errors."""

import einops
import pytest
import torch
from conftest import assert_untouched, model_state

from arithlens import data
from arithlens.analysis.tuning import answer_sequences
from arithlens.cna.importance import NeuronImportance
from arithlens.cna.lora import LoRASettings, default_layers, layer_groups, load_lora, lora_layer_sweep
from arithlens.cna.lora_coefficients import LoRACoefficients
from arithlens.analysis.tuning import canonical_state, hf_copy
from arithlens.testing import tiny_llama

SMALL = dict(steps=3, n_train=24, n_val=6, n_test=8, progress=False)


def _snapshot(model):
    """`model_state` after one clean cached pass (the bridge's own first-use torch hooks)."""
    model.cache(["1+1="])
    return model_state(model)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    model = tiny_llama()
    before = _snapshot(model)
    out = tmp_path_factory.mktemp("adapters")
    sweep = LoRASettings(layers=[1], lrs=[1e-2, 1e-4], out_dir=out, **SMALL)
    result = lora_layer_sweep(model, sweep)
    return model, before, sweep, result, out


def test_layer_groups_scale_the_paper_ranges():
    assert layer_groups(32) == {"1–9": list(range(1, 10)), "10–16": list(range(10, 17)), "17–30": list(range(17, 31))}
    assert layer_groups(30) == {"1–8": list(range(1, 9)), "9–15": list(range(9, 16)), "16–28": list(range(16, 29))}
    assert default_layers(32) == [5, 13, 24]


def test_lora_changes_only_the_chosen_layer_attention(swept):
    model, before, _, result, _ = swept
    # Re-wrapping re-centres the unembedding, which moves its last bits: compare at fp32 precision.
    original, tuned = hf_copy(model).state_dict(), hf_copy(result.models[1]).state_dict()
    changed = {k for k in original if not torch.allclose(original[k], tuned[k], atol=1e-6, rtol=0)}
    assert changed == {f"model.layers.1.self_attn.{p}_proj.weight" for p in "qkvo"}
    assert_untouched(model, *before)


def test_learning_rate_is_the_one_with_lowest_held_out_loss(swept):
    model, _, sweep, result, _ = swept
    search = result.lr_search
    assert sorted(search["lr"]) == [1e-4, 1e-2]
    best = search.loc[search["val_loss"].idxmin()]
    assert bool(best["chosen"]) and search["chosen"].sum() == 1
    row = result.df.set_index("model").loc["lora1"]
    assert row["lr"] == best["lr"] and row["steps"] == 3
    # Brute force: the held-out answer loss of the merged model, one case at a time.
    _, val, _ = sweep.split(model)
    lm = result.models[1]
    total, count = 0.0, 0
    for ids, start in answer_sequences(val):
        with torch.no_grad():
            logp = lm.bridge(torch.tensor([ids[:-1]])).float().log_softmax(-1)[0]
        for t in range(start, len(ids)):
            total, count = total - float(logp[t - 1, ids[t]]), count + 1
    assert row["val_loss"] == pytest.approx(total / count, abs=1e-4)


def test_accuracy_and_figure(swept):
    model, _, sweep, result, _ = swept
    _, _, test = sweep.split(model)
    from arithlens.analysis.evaluation import evaluate

    df = result.df.set_index("model")
    assert df.loc["original", "accuracy"] == evaluate(model, test, full_answer=False).accuracy
    assert df.loc["lora1", "accuracy"] == evaluate(result.models[1], test, full_answer=False).accuracy
    fig = result.plot()
    assert fig.layout.xaxis.title.text == "LoRA layer" and "whole answer" in fig.layout.yaxis.title.text


def _greedy_whole_answer(model, cases):
    """Brute force: the share of cases whose answer tokens greedy decoding reproduces, one token at a time."""
    right = 0
    for case in cases:
        ids, ok = list(case.input_ids), True
        for t in case.answer_ids:
            with torch.no_grad():
                nxt = int(model.bridge(torch.tensor([ids]))[0, -1].argmax())
            if nxt != t:
                ok = False
                break
            ids.append(nxt)
        right += ok
    return right / len(cases)


def test_figure_2_scores_the_whole_answer_by_default(swept):
    """§5's split has multi-token answers ("-2"): Figure 2's accuracy is of the whole answer by default."""
    model, _, sweep, result, _ = swept
    _, _, test = sweep.split(model)
    assert LoRASettings().full_answer and result.metric == "full_accuracy"
    assert any(len(c.answer_ids) > 1 for c in test)  # the check has teeth: some answers are several tokens
    df = result.df.set_index("model")
    assert df.loc["original", "full_accuracy"] == pytest.approx(_greedy_whole_answer(model, test))
    assert df.loc["lora1", "full_accuracy"] == pytest.approx(_greedy_whole_answer(result.models[1], test))
    assert result.table().iloc[0].tolist() == pytest.approx([round(100 * df.loc[m, "full_accuracy"], 1) for m in ("original", "lora1")])
    assert LoRASettings(full_answer=False).metric == "accuracy"


def test_saved_adapter_is_reused_not_retrained(swept):
    model, _, sweep, result, out = swept
    again = lora_layer_sweep(model, sweep)
    assert bool(again.df.set_index("model").loc["lora1", "reused"])
    a, b = canonical_state(result.models[1]), canonical_state(again.models[1])
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    loaded = load_lora(model, out / "lora_L1")
    tokens = torch.tensor([model.encode("12+3=")])
    with torch.no_grad():
        torch.testing.assert_close(loaded.bridge(tokens), result.models[1].bridge(tokens), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="use another out_dir"):
        lora_layer_sweep(model, LoRASettings(layers=[1], lrs=[1e-2, 1e-4], out_dir=out, **{**SMALL, "steps": 4}))


def test_coefficient_increase_against_brute_force(tiny):
    before = _snapshot(tiny)
    other = tiny_llama(seed=1)  # any model of the same shape stands in for a LoRA model
    cases = data.arithmetic(tiny.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(4, seed=1)
    for rank_on in ("original", "change"):
        result = LoRACoefficients(rank_on=rank_on, ks=(5, 2), mode="exact", case_k=3, groups={"low": [0, 1], "high": [2]}).run(
            tiny, cases, loras={2: other}
        )
        scorer = NeuronImportance(top_tokens=0, target="answer", mode="exact")
        ours = scorer.run(tiny, cases)
        coef_other = _post(other, cases)
        rank = ours.importance if rank_on == "original" else scorer.run(other, cases, w=ours.w).importance - ours.importance
        for k in (5, 2):
            got = result.df[result.df["k"] == k].sort_values("case")["coef_increase"].tolist()
            for i in range(len(cases)):
                top = flat(rank[i]).topk(k).indices
                m, m2 = flat(ours.coef[i])[top], flat(coef_other[i])[top]
                expected = 100 * float((torch.sign(m) * (m2 - m)).sum() / m.abs().sum())
                assert got[i] == pytest.approx(expected, rel=1e-4, abs=1e-4)
        assert set(result.df["group"]) == {"high"}
        table10 = result.table10()
        assert list(table10.columns) == ["top5", "top2"]
        assert table10.loc["high", "top2"] == pytest.approx(result.df[result.df["k"] == 2]["coef_increase"].mean())
    # Table 9 (ranked by the default, CNA between the original and the LoRA model): the case's top
    # neurons, their coefficient in each model.
    result = LoRACoefficients(ks=(5,), mode="exact", case_k=3).run(tiny, cases, loras={2: other})
    assert result.rank_on == "change"
    case = data.prompts(tiny.tokenizer, ["3+5="], ["8"])
    base = scorer.run(tiny, case)
    imp = flat(scorer.run(other, case, w=base.w).importance[0] - base.importance[0])
    top = imp.topk(3).indices.tolist()
    table9 = result.table9()
    assert list(table9.index) == [f"{j // 64}_{j % 64}" for j in top]
    assert list(table9.columns) == ["original", "lora2"]
    post_other = flat(_post(other, case)[0])
    assert table9["lora2"].tolist() == pytest.approx([float(post_other[j]) for j in top], abs=1e-6)
    assert result.plot().layout.yaxis.title.text
    assert_untouched(tiny, *before)


def flat(scores):
    """`[layer, d_mlp]` scores as one row, layer-major."""
    return einops.rearrange(scores, "l n -> (l n)")


def _post(model, cases):
    """Last-position coefficient scores `[case, layer, d_mlp]` with plain hooks."""
    out = []
    for case in cases:
        grabbed = {}
        hooks = [(f"blocks.{L}.mlp.hook_post", lambda a, hook, L=L: grabbed.__setitem__(L, a[0, -1].clone())) for L in range(model.n_layers)]
        with torch.no_grad(), model.hooked(hooks):
            model.bridge(torch.tensor([list(case.input_ids)]))
        out.append(torch.stack([grabbed[L] for L in range(model.n_layers)]))
    return torch.stack(out)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lrs=[]), "lrs is empty"),
        (dict(lrs=[0.0]), "lrs item=0.0"),
        (dict(rank=0), "rank=0"),
        (dict(steps=1.5), "steps=1.5"),
        (dict(layers=[-1]), "layers item=-1"),
    ],
)
def test_sweep_rejects_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoRASettings(**kwargs)


def test_sweep_rejects_a_layer_the_model_lacks(tiny):
    with pytest.raises(ValueError, match="layers item=3 is out of range"):
        lora_layer_sweep(tiny, LoRASettings(layers=[3], **SMALL))


def test_coefficients_reject_bad_input(tiny):
    with pytest.raises(ValueError, match="rank_on='best'"):
        LoRACoefficients(rank_on="best")
    with pytest.raises(ValueError, match="case_answer"):
        LoRACoefficients(case_answer=None)
    with pytest.raises(ValueError, match="loras"):
        LoRACoefficients().run(tiny, ["1+1="], loras={})


# ---------------------------------------------------------------------------- CLI
def test_lora_cli_rejects_bad_arguments_before_loading(monkeypatch, capsys, tmp_path):
    import arithlens.app.cli
    from arithlens.app.cli import main

    def refuse(args):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(arithlens.app.cli, "load_model_from_args", refuse)
    out = str(tmp_path / "f.csv")
    for argv, message in [
        (["--layers", "1,x"], "--layers='x' is not a comma-separated list of integers"),
        (["--lrs", "0"], "--lrs=0.0 is out of range"),
        (["--steps", "0"], "steps=0"),
        (["--ks", ""], "--ks is empty"),
        (["--coef-out", str(tmp_path)], "is a directory"),
    ]:
        assert main(["lora", *argv, "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_lora_cli_writes_one_row_per_model(monkeypatch, tmp_path, tiny):
    import pandas as pd

    import arithlens.app.cli
    from arithlens.app.cli import main

    monkeypatch.setattr(arithlens.app.cli, "load_model_from_args", lambda args: tiny)
    assert main(["lora", "--layers", "3", "--out", str(tmp_path / "f.csv")]) == 2
    argv = ["lora", "--layers", "0,2", "--lrs", "1e-3", "--steps", "2", "--n-train", "16", "--n-val", "4", "--n-test", "6",
            "--ops", "+", "--cases", "3", "--ks", "4,2", "--out", str(tmp_path / "f.csv"), "--coef-out", str(tmp_path / "c.csv")]  # fmt: skip
    assert main(argv) == 0
    fig2 = pd.read_csv(tmp_path / "f.csv")
    assert list(fig2["model"]) == ["original", "lora0", "lora2"]
    coef = pd.read_csv(tmp_path / "c.csv")
    assert len(coef) == 2 * 2 * 3  # LoRA layers x K x cases
