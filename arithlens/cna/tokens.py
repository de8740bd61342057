"""Top vocabulary tokens of FFN neurons (Table 4's last column), through the one readout.

A neuron's top tokens are those its FFN value `fc2_k = W_out[l, k]` promotes: the vector
goes through the model's final norm, `W_U` and `b_U` — TransformerLens's `logit_readout`,
via [`readout.top_token_ids`][arithlens.core.readout.top_token_ids] — so on a model with
`b_U ≠ 0` (GPT-2 style, LayerNorm with bias folded) the ranking is the model's own, not
raw `fc2_k @ W_U`.

Example:
    ```python
    import arithlens
    from arithlens.cna.tokens import top_token_strings

    model = arithlens.load_model()
    top_token_strings(model, [(28, 1085), (29, 545)], k=10)
    ```
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from jaxtyping import Float, Int

from arithlens.core import readout, validate
from arithlens.cna.scores import layer_w_out
from arithlens.cna.vocabulary import top_token_lists


def neuron_vectors(model: Any, neurons: Sequence[tuple[int, int]]) -> Float[torch.Tensor, "n d_model"]:
    """`W_out[layer, neuron]` of each `(layer, neuron)` pair (validated)."""
    pairs = [(model.check_layer(L), validate.integer(n, "neuron", low=0, high=model.d_mlp - 1)) for L, n in neurons]
    if not pairs:
        return torch.empty(0, model.d_model)

    return torch.stack([layer_w_out(model, L)[n] for L, n in pairs])


@torch.no_grad()
def neuron_top_token_ids(model: Any, neurons: Sequence[tuple[int, int]], k: int = 10) -> Int[torch.Tensor, "n k"]:
    """Ids of each neuron's top-`k` tokens (final norm, `W_U`, `b_U`)."""
    k = validate.integer(k, "k", low=1, high=model.d_vocab)
    vectors = neuron_vectors(model, neurons)
    if vectors.shape[0] == 0:
        return torch.empty(0, k, dtype=torch.long)
    return readout.top_token_ids(model, vectors, k)[1]


def top_token_strings(model: Any, neurons: Sequence[tuple[int, int]], k: int = 10) -> list[str]:
    """Each neuron's top-`k` tokens as one printable list string (the `top_tokens` column)."""

    k = validate.integer(k, "k", low=1, high=model.d_vocab)
    return top_token_lists(model, neuron_vectors(model, neurons), k)


def labelled_tokens(model: Any, neurons: Sequence[tuple[int, int]], k: int) -> dict[tuple[int, int], str]:
    """`{(layer, neuron): top tokens}` for distinct neurons (none when `k` is 0)."""
    uniq = sorted({(int(L), int(n)) for L, n in neurons})
    if not k or not uniq:
        return {}
    return dict(zip(uniq, top_token_strings(model, uniq, k)))
