"""The one residual → logits readout: the model's own logits at its own scale, `b_U` always
included, and top tokens ranked as the model's final norm and unembedding rank them."""

import pytest
import torch

from arithlens.core import names, readout


@pytest.fixture(scope="module")
def gpt2():
    from arithlens.testing import tiny_gpt2

    return tiny_gpt2()


PROMPTS = ["3+5=", "12+3=", "7*8="]


def _final(model):
    """The final residual of each prompt, its final-norm scale, and the model's own logits."""
    last = model.n_layers - 1
    cache = model.cache(PROMPTS, names=[names.resid_post(last)], memo=False)
    logits = []
    with torch.no_grad():
        for p in PROMPTS:
            logits.append(model.bridge(torch.tensor([model.encode(p)]))[0, -1])
    return cache.last(names.resid_post(last)), cache.final_scale, torch.stack(logits), cache


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_frozen_readout_is_the_models_own_at_its_scale(which, tiny, gpt2):
    model = {"tiny": tiny, "gpt2": gpt2}[which]
    resid, scale, logits, cache = _final(model)
    ours = readout.frozen_logits(model, resid, scale)
    torch.testing.assert_close(ours.log_softmax(-1), logits.log_softmax(-1), atol=2e-5, rtol=0)
    w = cache.predictions
    torch.testing.assert_close(readout.frozen_logprob(model, resid, scale, w), cache.prediction_logprob, atol=2e-5, rtol=0)
    ro = readout.Readout(model)
    torch.testing.assert_close(ro.logprob(resid, scale, w), logits.log_softmax(-1).gather(-1, w[:, None])[:, 0], atol=2e-5, rtol=0)
    if which == "gpt2":  # without b_U the readout would be off: the bias matters on this model
        assert float(gpt2.bridge.b_U.abs().max()) > 0.1
        no_bias = (resid / scale[:, None]) @ gpt2.bridge.W_U
        assert float((no_bias.log_softmax(-1) - logits.log_softmax(-1)).abs().max()) > 1e-2


def test_top_tokens_rank_like_the_final_norm_and_unembedding(gpt2):
    torch.manual_seed(0)
    vectors = torch.randn(24, gpt2.d_model)
    vectors -= vectors.mean(-1, keepdim=True)  # the residual stream is centred in compatibility mode
    values, ids = readout.top_token_ids(gpt2, vectors, k=5, chunk_size=7)
    with torch.no_grad():
        full = gpt2.bridge.unembed(gpt2.bridge.ln_final(vectors[:, None]))[:, 0]
    assert ids.tolist() == full.topk(5).indices.tolist()
    torch.testing.assert_close(values, full.topk(5).values, atol=1e-4, rtol=0)
    raw = (vectors @ gpt2.bridge.W_U).topk(5).indices
    assert (raw != ids).any(dim=-1).sum() > 0  # raw v @ W_U ranks differently here
    _, low = readout.top_token_ids(gpt2, vectors, k=3, largest=False)
    assert low.tolist() == full.topk(3, largest=False).indices.tolist()
    strings = readout.top_tokens(gpt2, vectors[:2], k=4)
    assert strings == [gpt2.token_strs(row) for row in ids[:2, :4].tolist()]


def test_bad_arguments(gpt2):
    v = torch.zeros(2, gpt2.d_model)
    for k in (0, gpt2.d_vocab + 1, "3", True):
        with pytest.raises(ValueError, match="k="):
            readout.top_token_ids(gpt2, v, k=k)
    with pytest.raises(ValueError, match="d_model"):
        readout.top_token_ids(gpt2, torch.zeros(2, gpt2.d_model + 1))
    with pytest.raises(ValueError, match="chunk_size"):
        readout.top_token_ids(gpt2, v, k=2, chunk_size=0)
    empty_vals, empty_ids = readout.top_token_ids(gpt2, torch.zeros(0, gpt2.d_model), k=2)
    assert empty_vals.shape == (0, 2) and empty_ids.shape == (0, 2)
