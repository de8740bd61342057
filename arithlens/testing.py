"""Tiny, offline models for tests and examples.

[`char_tokenizer`][arithlens.testing.char_tokenizer] builds a character-level Hugging Face tokenizer (one token per
character, so "is 8" gives `'i'`, `'s'`, `' '`, `'8'`: the bare-whitespace
behaviour of SmolLM2's tokenizer), and [`tiny_llama`][arithlens.testing.tiny_llama] a randomly initialised Llama
with grouped-query attention wrapped as a [`LensModel`][arithlens.core.model.LensModel]. Both
build in well under a second and never touch the network.

Example:
    ```python
    from arithlens.testing import tiny_llama
    model = tiny_llama(n_layers=2)
    model.predict(["3+5="])
    ```
"""

from __future__ import annotations

import atexit
import shutil
import string
import tempfile
from functools import lru_cache

import torch
from arithlens.core.model import LensModel

_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list(" " + string.digits + "+-*/=?:.,'" + string.ascii_letters)


@lru_cache(maxsize=1)
def _tokenizer_dir() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(_SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    # TransformerBridge re-loads the tokenizer from `name_or_path`; a saved copy gives it one.
    path = tempfile.mkdtemp(prefix="arithlens-chartok-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)  # one per process; leave /tmp clean
    tok.save_pretrained(path)
    return path


def char_tokenizer():
    """A character-level `PreTrainedTokenizerFast` (no BOS added by `encode`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_tokenizer_dir())


def tiny_llama_hf(
    n_layers: int = 3,
    d_model: int = 32,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 64,
    seed: int = 0,
):
    """The Hugging Face model and tokenizer behind [`tiny_llama`][arithlens.testing.tiny_llama]."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    hf = LlamaForCausalLM(cfg).eval()
    # Random init gives near-uniform logits; a larger unembedding makes predictions decisive.
    with torch.no_grad():
        hf.lm_head.weight.mul_(8.0)
    return hf, tok


def tiny_llama(
    n_layers: int = 3,
    d_model: int = 32,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 64,
    seed: int = 0,
    device: str | None = None,
):
    """A random GQA Llama on the character tokenizer, as a `LensModel`."""

    hf, tok = tiny_llama_hf(n_layers, d_model, n_heads, n_kv_heads, d_mlp, seed)
    return LensModel.from_hf(hf, tok, name="tiny-llama", device=device or "cpu")


def tiny_gpt2_hf(n_layers: int = 2, d_model: int = 32, n_heads: int = 4, seed: int = 0):
    """A random GPT-2 (LayerNorm with bias) on the character tokenizer, with its tokenizer.

    LayerNorm biases are set non-zero so that, after compatibility mode folds them, the
    unembedding bias `b_U` is non-zero: raw `v @ W_U` and the model's own readout rank
    tokens differently, which is what readout tests need.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = char_tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for module in hf.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.bias.normal_(0.0, 0.5)
                module.weight.normal_(1.0, 0.2)
        hf.lm_head.weight.mul_(8.0)
    return hf, tok


def tiny_gpt2(n_layers: int = 2, d_model: int = 32, n_heads: int = 4, seed: int = 0, device: str | None = None):
    """A random GPT-2-style model with `b_U ≠ 0` after folding, as a [`LensModel`][arithlens.core.model.LensModel]."""

    hf, tok = tiny_gpt2_hf(n_layers, d_model, n_heads, seed)
    return LensModel.from_hf(hf, tok, name="tiny-gpt2", device=device or "cpu")
