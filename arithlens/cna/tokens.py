"""Top vocabulary tokens of FFN neurons (Table 4's last column), through the one readout.

A neuron's top tokens are those its subvalue `m_k · fc2_k` promotes (`fc2_k = W_out[l, k]`,
`m_k` its coefficient score in the case; the reference code's listing — see
[`labelled_tokens`][arithlens.cna.tokens.labelled_tokens]): the vector goes through the model's final norm, `W_U` and `b_U` — TransformerLens's `logit_readout`,
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


def labelled_tokens(
    model: Any, neurons: Sequence[tuple[int, int]], k: int, layers: Sequence[int] | None = None,
    coef: Float[torch.Tensor, "case layer d_mlp"] | None = None,
) -> dict[tuple[int, int], str]:
    """`{(layer, neuron): top tokens}` for distinct neurons (none when `k` is 0).

    With `coef` (coefficient scores `m_k` over `layers`), a neuron's tokens are those of its
    *subvalue* `m_k · fc2_k`, as the reference code prints them: for a negative coefficient
    (common with SwiGLU) that is `−fc2_k`, what the neuron promotes in that case, not what
    `fc2_k` alone would. The readout is scale-free apart from the sign, so only `sign(m_k)`
    (of the mean over cases) matters.
    """
    uniq = sorted({(int(L), int(n)) for L, n in neurons})
    if not k or not uniq:
        return {}
    k = validate.integer(k, "k", low=1, high=model.d_vocab)
    vectors = neuron_vectors(model, uniq)
    if coef is not None:
        where = {L: i for i, L in enumerate(layers)}
        mean = coef.float().mean(0)
        sign = torch.tensor([-1.0 if float(mean[where[L], n]) < 0 else 1.0 for L, n in uniq], dtype=vectors.dtype)
        vectors = vectors * sign.to(vectors.device)[:, None]
    return dict(zip(uniq, top_token_lists(model, vectors, k)))
