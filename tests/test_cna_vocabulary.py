"""VocabularyProjection (Table 4) and NumberConceptTagger: brute-force readouts, the cache, bad input."""

import numpy as np
import pytest
import torch

from arithlens.core import names, validate
from arithlens.cna import NamedVector, VocabularyProjection, NumberConceptTagger
from conftest import assert_untouched, params_snapshot


@pytest.fixture(scope="module")
def gpt2():
    from arithlens.testing import tiny_gpt2

    return tiny_gpt2()


def count_embeds(model):
    """A forward hook on the embedding module counting full forward passes (a list of one int)."""
    calls = [0]

    def hook(module, args, out):
        calls[0] += 1

    return calls, model.bridge.embed.register_forward_hook(hook)


# ---------------------------------------------------------------------------- tagger
@pytest.mark.parametrize(
    "token, concept",
    [
        ("8", "8"), (" 8", "8"), ("▁8", "8"), ("Ġ8", "8"), ("12", "12"), ("٨", "8"), ("8th", "8"), ("3rd", "3"),
        ("eight", "8"), ("Eight", "8"), ("▁EIGHT", "8"), ("eighth", "8"), ("twelve", "12"), ("fifth", "5"),
        ("six", "6"), ("sixth", "6"), ("twenty-one", "21"), ("triple", "3"), ("twice", "2"), ("dozen", "12"),
        ("VIII", "8"), ("XV", "15"), ("III", "3"), ("IV", "4"), ("XXXIX", "39"), ("Ⅷ", "8"), ("八", "8"),
        ("huit", "8"), ("acht", "8"), ("otto", "8"), ("ocho", "8"), ("oito", "8"), ("fünf", "5"), ("funf", "5"),
        ("cinq", "5"), ("cinque", "5"), ("vijf", "5"), ("dieciséis", "16"), ("dieciseis", "16"), ("dreißig", "30"),
        ("Fif", "5"), ("fif", "5"),
        ("+", "+"), ("plus", "+"), (" Plus", "+"), ("sum", "+"), ("addition", "+"), ("somme", "+"),
        ("-", "-"), ("−", "-"), ("minus", "-"), ("subtract", "-"), ("difference", "-"), ("moins", "-"),
        ("*", "*"), ("×", "*"), ("times", "*"), ("multiply", "*"), ("product", "*"), ("fois", "*"),
        ("/", "/"), ("÷", "/"), ("divide", "/"), ("divided", "/"), ("quotient", "/"), ("ratio", "/"),
    ],
)  # fmt: skip
def test_tagger_recognises(token, concept):
    tagger = NumberConceptTagger()
    assert tagger(token) == concept
    assert tagger.is_concept(token)


@pytest.mark.parametrize(
    "token",
    ["often", "tent", "sixty-six-ish", "I", "V", "X", "C", "D", "M", "L", "CD", "MD", "MIX", "CV", "iii", "Vi",
     "un", "une", "ein", "due", "elf", "seize", "once", "second", "tre", "8.", "(8", "x", "", " ", "▁", "the",
     "rd", "quarters", "–", "=", "eightfold", "tenth-ish"],
)  # fmt: skip
def test_tagger_rejects(token):
    assert NumberConceptTagger()(token) is None


def test_tagger_options_and_count():
    assert NumberConceptTagger(ambiguous=True)("due") == "2"
    assert NumberConceptTagger(ambiguous=True)("un") == "1"
    assert NumberConceptTagger(roman=False)("VIII") is None
    assert NumberConceptTagger(operations=False)("plus") is None
    assert NumberConceptTagger(operations=False)("+") is None
    assert NumberConceptTagger(stems=False)("Fif") is None
    tagger = NumberConceptTagger()
    tokens = ["8", " eight", "VIII", "huit", "x", "plus", "often"]
    assert tagger.count(tokens) == 5
    assert tagger.count(tokens, distinct=True) == 2
    assert tagger.concepts(["3", "y"]) == ["3", None]
    with pytest.raises(ValueError, match="roman='yes'"):
        NumberConceptTagger(roman="yes")


def test_vocab_concepts_match_tagger(tiny):
    tagger = NumberConceptTagger()
    concepts = tagger.vocab_concepts(tiny.tokenizer)
    assert len(concepts) == len(tiny.tokenizer)
    for i, c in enumerate(concepts):
        assert c == tagger(tiny.decode([i]))
    mask = tagger.vocab_mask(tiny.tokenizer, tiny.d_vocab)
    assert int(mask.sum()) == sum(c is not None for c in concepts[: tiny.d_vocab])
    # The character vocabulary holds the ten digits and + - * /.
    assert int(mask.sum()) == 14


# ---------------------------------------------------------------------------- lens
def _brute_logits(model, v):
    """The paper's projection, literally: final RMSNorm (weight folded into W_U), then E v."""
    v = v.double()
    eps = float(model.cfg.eps)
    normed = v / torch.sqrt((v * v).mean() + eps)
    W_U, b_U = model.bridge.W_U.double(), model.bridge.b_U.double()
    return torch.tensor([sum(float(normed[d] * W_U[d, t]) for d in range(model.d_model)) + float(b_U[t])
                         for t in range(W_U.shape[1])], dtype=torch.float64)  # fmt: skip


def test_top_ids_match_brute_force(tiny):
    lens = VocabularyProjection(k=5)
    vecs = torch.randn(3, tiny.d_model, generator=torch.Generator().manual_seed(0))
    values, ids = lens.top_ids(tiny, vecs)
    low_values, low_ids = lens.top_ids(tiny, vecs, largest=False)
    for i in range(3):
        ref = _brute_logits(tiny, vecs[i])
        order = torch.argsort(ref, descending=True)
        assert ids[i].tolist() == order[:5].tolist()
        assert low_ids[i].tolist() == torch.argsort(ref)[:5].tolist()
        torch.testing.assert_close(values[i].double(), ref[order[:5]], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(low_values[i].double(), torch.sort(ref).values[:5], atol=1e-4, rtol=1e-4)
    assert lens.top_tokens(tiny, vecs) == [tiny.token_strs(r) for r in ids.tolist()]


def test_final_residual_reads_as_prediction(tiny):
    prompt = "3+5="
    comp = VocabularyProjection.residual(tiny, tiny.n_layers - 1, prompt, stage="post")
    assert VocabularyProjection(k=1).top_tokens(tiny, comp.vector[None])[0] == tiny.predict([prompt])


def test_constructors_match_the_forward(tiny):
    prompt = "12+7="
    _, cache = tiny.bridge.run_with_cache(torch.tensor([tiny.encode(prompt)]))
    L = 1
    assert torch.equal(VocabularyProjection.neuron(tiny, L, 5).vector, tiny.bridge.W_out[L, 5])
    m = cache[f"blocks.{L}.mlp.hook_post"][0, -1, 5]
    torch.testing.assert_close(VocabularyProjection.subvalue(tiny, L, 5, prompt).vector, m * tiny.bridge.W_out[L, 5])
    # The heads' outputs sum to the attention output at that position (Llama has no b_O).
    heads = sum(VocabularyProjection.head_output(tiny, L, h, prompt, position=2).vector for h in range(tiny.n_heads))
    torch.testing.assert_close(heads, cache[f"blocks.{L}.hook_attn_out"][0, 2], atol=1e-5, rtol=1e-4)
    for stage in ("pre", "mid", "post"):
        got = VocabularyProjection.residual(tiny, L, prompt, position=-2, stage=stage).vector
        torch.testing.assert_close(got, cache[f"blocks.{L}.hook_resid_{stage}"][0, -2])
    tid = tiny.encode("3")[0]
    assert torch.equal(VocabularyProjection.embedding(tiny, "3").vector, tiny.bridge.W_E[tid])
    assert torch.equal(VocabularyProjection.embedding(tiny, tid).vector, tiny.bridge.W_E[tid])


def test_run_tidy_frame_and_untouched(tiny):
    snap, hooks = params_snapshot(tiny), tiny.torch_hook_count()
    lens = VocabularyProjection(k=4)
    comps = [VocabularyProjection.neuron(tiny, 0, 1), VocabularyProjection.embedding(tiny, "7"), VocabularyProjection.head_output(tiny, 2, 3, "3+5=")]
    result = lens.run(tiny, comps)
    df = result.df
    assert set(["component", "rank", "token", "logit", "direction", "is_number_concept", "concept"]) <= set(df.columns)
    assert len(df) == 3 * 2 * 4
    assert df.groupby(["component", "direction"]).size().eq(4).all()
    tagger = NumberConceptTagger()
    assert (df["is_number_concept"] == df["token"].map(lambda t: tagger(t) is not None)).all()
    top = result.tokens("top")
    assert list(top) == [c.name for c in comps]
    assert top[comps[0].name] == lens.top_tokens(tiny, comps[0].vector[None])[0]
    assert len(result.table()) == 3
    assert result.concept_counts()["n_concepts"].between(0, 4).all()
    assert list(result.top(2)["rank"]) == [1, 2] * 3
    fig = result.plot()
    (grid,) = fig.data  # one column per component, its tokens by rank downwards
    assert list(grid.x) == [c.name for c in comps] and list(grid.y) == [1, 2, 3, 4]
    assert [list(col) for col in zip(*grid.text)] == [[repr(t) for t in top[c.name]] for c in comps]
    assert [list(col) for col in zip(*grid.z)] == [
        [float(tagger(t) is not None) for t in top[c.name]] for c in comps
    ]
    assert fig.layout.yaxis.title.text == "rank"
    # A dict and a bare tensor work too.
    assert len(lens.run(tiny, {"a": comps[0].vector}).df) == 8
    assert set(lens.run(tiny, torch.stack([c.vector for c in comps])).df["component"]) == {"0", "1", "2"}
    assert_untouched(tiny, snap, hooks)


def test_bad_input_raises(tiny):
    with pytest.raises(ValueError, match="k=0"):
        VocabularyProjection(k=0)
    with pytest.raises(ValueError, match="k='3'"):
        VocabularyProjection(k="3")
    with pytest.raises(ValueError, match="bool"):
        VocabularyProjection(k=True)
    assert VocabularyProjection(k=np.int64(3)).k == 3
    with pytest.raises(ValueError, match="k=99"):
        VocabularyProjection().top_ids(tiny, torch.zeros(1, tiny.d_model), k=99)
    with pytest.raises(validate.NonFiniteError):
        VocabularyProjection().run(tiny, torch.full((1, tiny.d_model), float("nan")))
    with pytest.raises(ValueError, match="d_model"):
        VocabularyProjection().top_tokens(tiny, torch.zeros(2, tiny.d_model + 1))
    with pytest.raises(ValueError, match="stage"):
        VocabularyProjection.residual(tiny, 0, "3+5=", stage="end")
    with pytest.raises(ValueError, match="layer"):
        VocabularyProjection.neuron(tiny, tiny.n_layers, 0)
    with pytest.raises(ValueError, match="neuron"):
        VocabularyProjection.neuron(tiny, 0, tiny.d_mlp)
    with pytest.raises(ValueError, match="head"):
        VocabularyProjection.head_output(tiny, 0, tiny.n_heads, "3+5=")
    with pytest.raises(ValueError, match="tokens"):
        VocabularyProjection.embedding(tiny, "35")
    with pytest.raises(ValueError, match="position"):
        VocabularyProjection.residual(tiny, 0, "3+5=", position=10)
    with pytest.raises(ValueError, match="direction"):
        VocabularyProjection(k=2).run(tiny, [NamedVector("a", tiny.bridge.W_E[5])]).tokens("sideways")
    with pytest.raises(ValueError, match="no vectors"):
        VocabularyProjection().run(tiny, [])
    with pytest.raises(ValueError, match="components=str"):
        VocabularyProjection().run(tiny, "3+5=")
    with pytest.raises(ValueError, match="lacks"):
        VocabularyProjection.residual(tiny, 0, "3+5=", cache=tiny.cache("3+5=", positions="all", memo=False))


def test_constructors_read_a_given_cache_without_a_forward(tiny):
    prompt = "12+7="
    hooks = [names.post(1), names.z(2), names.resid_mid(1)]
    cache = tiny.cache(prompt, names=hooks, positions="all", memo=False)
    tiny.clear_cache()
    calls, handle = count_embeds(tiny)
    try:
        sub = VocabularyProjection.subvalue(tiny, 1, 5, prompt, position=2, cache=cache)
        head = VocabularyProjection.head_output(tiny, 2, 3, prompt, cache=cache)
        resid = VocabularyProjection.residual(tiny, 1, prompt, stage="mid", cache=cache)
    finally:
        handle.remove()
    assert calls[0] == 0
    torch.testing.assert_close(sub.vector, VocabularyProjection.subvalue(tiny, 1, 5, prompt, position=2).vector)
    torch.testing.assert_close(head.vector, VocabularyProjection.head_output(tiny, 2, 3, prompt).vector)
    torch.testing.assert_close(resid.vector, VocabularyProjection.residual(tiny, 1, prompt, stage="mid").vector)
    # Token ids work as a prompt too.
    ids = tiny.encode(prompt)
    torch.testing.assert_close(VocabularyProjection.residual(tiny, 1, ids, stage="mid").vector, resid.vector)


def test_top_tokens_are_the_models_own_readout_when_b_U_is_nonzero(gpt2):
    """GPT-2 style (LayerNorm, b_U ≠ 0): the lens ranks ln_final(v) @ W_U + b_U, not v @ W_U."""
    assert float(gpt2.bridge.b_U.abs().max()) > 0.1
    vecs = torch.randn(6, gpt2.d_model, generator=torch.Generator().manual_seed(4)) * 3
    _, ids = VocabularyProjection(k=5).top_ids(gpt2, vecs)
    raw_differs = False
    for i, v in enumerate(vecs.double()):
        centred = v - v.mean()
        normed = centred / torch.sqrt((centred * centred).mean() + float(gpt2.cfg.eps))
        ref = normed @ gpt2.bridge.W_U.double() + gpt2.bridge.b_U.double()
        assert ids[i].tolist() == torch.argsort(ref, descending=True)[:5].tolist()
        raw_differs |= ids[i].tolist() != torch.argsort(v @ gpt2.bridge.W_U.double(), descending=True)[:5].tolist()
    assert raw_differs, "on this model the raw v @ W_U ranking should differ somewhere"
    # The final residual reads as the model's prediction.
    comp = VocabularyProjection.residual(gpt2, gpt2.n_layers - 1, "3+5=", stage="post")
    assert VocabularyProjection(k=1).top_tokens(gpt2, comp.vector[None])[0] == gpt2.predict(["3+5="])


@pytest.mark.smollm2
def test_smollm2_lens_and_vocabulary(smollm2):
    tagger = NumberConceptTagger()
    concepts = tagger.vocab_concepts(smollm2.tokenizer)
    tagged = {smollm2.decode([i]) for i, c in enumerate(concepts) if c == "8"}
    assert {"8", " eight", "eight", "Eight"} <= tagged
    # The last residual read through the lens is the model's prediction.
    comp = VocabularyProjection.residual(smollm2, smollm2.n_layers - 1, "3+5=", stage="post")
    assert VocabularyProjection(k=1).top_tokens(smollm2, comp.vector[None])[0] == smollm2.predict(["3+5="])
