"""Tidy frames of per-neuron scores, shared by the importance and comparative results.

Every frame has one row per FFN neuron, `layer` and `neuron` first; the scores follow as
columns, and `top_tokens` last where a result lists top tokens.

Example:
    ```python
    import torch
    from arithlens.cna.frames import neuron_frame

    neuron_frame([0, 1], {"importance": torch.zeros(2, 4)}, None).shape    # (8, 3)
    ```
"""

from __future__ import annotations

from typing import Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Bool, Float

from arithlens.core import validate
from arithlens.cna.scores import flatten


def neuron_frame(
    layers: Sequence[int], columns: dict[str, Float[torch.Tensor, "layer d_mlp"]], tokens: dict[tuple[int, int], str] | None
) -> pd.DataFrame:
    """One row per neuron of `layers`: `layer, neuron`, the given `[layer, d_mlp]` columns, `top_tokens`.

    `tokens` maps `(layer, neuron)` to its top tokens; neurons not in it get `""`; `None`
    leaves the column out.
    """
    n = next(iter(columns.values())).shape[-1]
    lay = einops.repeat(torch.tensor(list(layers)), "l -> (l n)", n=n).numpy()
    neu = einops.repeat(torch.arange(n), "n -> (l n)", l=len(layers)).numpy()
    df = pd.DataFrame({"layer": lay, "neuron": neu, **{k: einops.rearrange(v, "l n -> (l n)").numpy() for k, v in columns.items()}})
    if tokens is not None:
        df["top_tokens"] = [tokens.get((int(a), int(b)), "") for a, b in zip(lay, neu)]
    return df


def top_mask(scores: Float[torch.Tensor, "case layer d_mlp"], k: int) -> Bool[torch.Tensor, "case layer d_mlp"]:
    """Each case's top-`k` neurons by `scores` (NaN scores raise: they cannot be ranked)."""
    k = validate.positive_int(k, "k")
    validate.check_finite(scores, "the scores to rank")
    flat = flatten(scores)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, flat.topk(min(k, flat.shape[1]), dim=-1).indices, True)
    return einops.rearrange(mask, "c (l n) -> c l n", l=scores.shape[1])


def aggregate_importance(layers: list[int], importance: torch.Tensor, coef: torch.Tensor, top_k: int, tokens: dict | None) -> pd.DataFrame:
    """Per neuron: mean importance and coefficient over cases, and in how many cases it is a top-K."""
    df = neuron_frame(layers, {"importance": importance.mean(0), "coef": coef.mean(0)}, tokens)
    cols = list(df.columns)
    df.insert(cols.index("coef") + 1, "n_top", einops.rearrange(top_mask(importance, top_k).sum(0), "l n -> (l n)").numpy())
    df.insert(cols.index("coef") + 2, "n_cases", importance.shape[0])
    return df.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)


def label_pairs(layers: list[int], ranked: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """`(layer, neuron)` of each case's top-`k` by `ranked` `[case, layer, d_mlp]` and of the mean's top-`k`."""
    d_mlp = ranked.shape[-1]
    flat = flatten(ranked)
    k = min(k, flat.shape[1])
    picked = set(einops.rearrange(flat.topk(k, dim=-1).indices, "c k -> (c k)").tolist()) | set(flat.mean(0).topk(k).indices.tolist())
    return [(layers[j // d_mlp], j % d_mlp) for j in sorted(picked)]
