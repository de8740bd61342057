"""The head-ablation sweep's inner loops (internal): see [`heads`][arithlens.heads].

A `HeadSweep` holds what every pass over the cases shares (the model, the cases' token
ids, each case's scored token, the per-layer means of a mean ablation, the cached
residual streams) and runs the exact ablated forwards (restarting at each swept layer,
the heads of a layer stacked in one forward) and the attribution estimate; `tabulate`
turns the per-case outcomes into the per-group table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from arithlens import attribution, forward, names, validate
from arithlens.interventions import HeadMeans

if TYPE_CHECKING:
    from arithlens.heads import HeadAblation


class HeadSweep:
    """One sweep's shared inputs; `exact` and `attribute` score any list of `(layer, head)`.

    Args:
        config: The [`HeadAblation`][arithlens.heads.HeadAblation] (position, batch sizes, progress).
        model: The model.
        ids: Token ids of each case.
        scoring: The scored token of each case, on the logits' device.
        means: Per-layer head means (`method="mean"`), else `None` (zero ablation).
        resid_cache: A `positions="all"` cache holding the residual streams, or `None`.
    """

    def __init__(
        self,
        config: HeadAblation,
        model: Any,
        ids: list[tuple[int, ...]],
        scoring: torch.Tensor,
        means: dict[int, HeadMeans] | None,
        resid_cache: Any = None,
    ):
        self.config, self.model, self.ids, self.scoring, self.means, self.resid_cache = config, model, ids, scoring, means, resid_cache

    # ------------------------------------------------------------------ exact sweep
    def exact(self, pairs: list[tuple[int, int]]) -> tuple[Bool[torch.Tensor, "head case"], Float[torch.Tensor, "head case"]]:
        """Each head of `pairs` ablated on every case: restart at its layer, heads of a layer stacked."""
        model, scoring, config = self.model, self.scoring, self.config
        device = scoring.device
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for row, (L, H) in enumerate(pairs):
            by_layer.setdefault(L, []).append((row, H))
        layers = sorted(by_layer)
        correct = torch.zeros(len(pairs), len(self.ids), dtype=torch.bool, device=device)
        logprob = torch.zeros(len(pairs), len(self.ids), device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)
        batches = list(model.batches(self.ids, config.batch_size))
        bar = tqdm(total=len(batches) * len(layers), desc="head ablation (exact)", unit="layer-batch", disable=not config.progress)
        try:
            for rows, tokens in batches:
                resid = self._resid(rows, tokens, layers)
                rows_d = rows.to(device)
                target = scoring[rows_d]
                chunk = max(1, config.max_rows // len(rows))
                for L in layers:
                    entries = by_layer[L]
                    for start in range(0, len(entries), chunk):
                        part = entries[start : start + chunk]
                        logits = self._ablated(resid[L], L, [H for _, H in part], self.means[L] if self.means else None)
                        logits = einops.rearrange(logits.float(), "(h b) v -> h b v", h=len(part))
                        lse = logits.logsumexp(-1)
                        finite &= torch.isfinite(lse).all()
                        hit = logits.gather(-1, einops.repeat(target, "b -> h b 1", h=len(part)))[..., 0]
                        idx = torch.tensor([r for r, _ in part], device=device)[:, None]
                        logprob[idx, rows_d[None]] = hit - lse
                        correct[idx, rows_d[None]] = logits.argmax(-1) == target[None]
                    bar.update(1)
        finally:
            bar.close()
        if not bool(finite):
            raise validate.NonFiniteError(
                "the ablated model's logits contain NaN or infinite values; an intervention attached to the "
                "model or its numerics broke the forward pass, and ranking heads on them would be meaningless"
            )
        return correct.cpu(), logprob.cpu()

    def _resid(self, rows: torch.Tensor, tokens: torch.Tensor, layers: list[int]) -> dict[int, Float[torch.Tensor, "batch pos d_model"]]:
        """The clean residual stream entering each layer, on the model's device."""
        model, resid_cache = self.model, self.resid_cache
        hooks = [names.resid_pre(L) for L in layers]
        if resid_cache is None:
            acts = forward.capture(model, tokens, hooks, stop_at_layer=max(layers) + 1)
            return {L: acts[h] for L, h in zip(layers, hooks)}
        dtype = model.bridge.W_U.dtype
        return {
            L: torch.stack([resid_cache.per_position(h)[r] for r in rows.tolist()]).to(model.device, dtype)
            for L, h in zip(layers, hooks)
        }

    def _ablated(
        self,
        resid: Float[torch.Tensor, "batch pos d_model"],
        layer: int,
        heads: list[int],
        means: HeadMeans | None,
    ) -> Float[torch.Tensor, "rows vocab"]:
        """Last-position logits with each of `heads` ablated, stacked head-major."""
        model = self.model
        x = einops.repeat(resid, "b p d -> (h b) p d", h=len(heads))
        # keep[j, n] is 0 where replica j ablates head n.
        keep = torch.ones(len(heads), model.n_heads, device=resid.device, dtype=resid.dtype)
        keep[torch.arange(len(heads), device=resid.device), torch.tensor(heads, device=resid.device)] = 0.0
        position = self.config.position

        def ablate(z: Float[torch.Tensor, "rows pos head d_head"], hook: Any) -> torch.Tensor:
            view = z if position == "all" else z[:, -1:]
            zh = einops.rearrange(view, "(h b) p n d -> h b p n d", h=len(heads))
            k = keep.to(z.dtype)[:, None, None, :, None]
            if means is None:
                new = zh * k
            else:
                mean = means.for_length(z.shape[1], position).to(z)  # [p, n, d]
                new = zh * k + (1 - k) * mean[None, None]
            view.copy_(einops.rearrange(new, "h b p n d -> (h b) p n d"))
            return z

        with model.hooked([(names.z(layer), ablate)]):
            return forward.logits_from(model, x, layer)

    # ------------------------------------------------------------------ attribution
    def attribute(self, pairs: list[tuple[int, int]]) -> Float[torch.Tensor, "head case"]:
        """First-order estimate of each head's ablation effect on the target log-prob."""
        model, scoring, means, position = self.model, self.scoring, self.means, self.config.position
        device = scoring.device
        layers = sorted({L for L, _ in pairs})
        layer_of = {names.z(L): L for L in layers}
        rows_of = {L: torch.tensor([i for i, (L2, _) in enumerate(pairs) if L2 == L], device=device) for L in layers}
        heads_of = {L: torch.tensor([H for L2, H in pairs if L2 == L], device=device) for L in layers}
        delta = torch.zeros(len(pairs), len(self.ids), device=device)
        batches = list(model.batches(self.ids, self.config.batch_size))
        bar = tqdm(total=len(batches), desc="head attribution", unit="batch", disable=not self.config.progress)
        try:
            for rows, tokens in batches:
                rows_d = rows.to(device)
                target = scoring[rows_d]

                def score(logits: torch.Tensor) -> torch.Tensor:
                    return logits.float().log_softmax(-1).gather(-1, target[:, None])[:, 0]

                def ablated(name: str, z: torch.Tensor) -> torch.Tensor:
                    if means is None:
                        return torch.zeros_like(z)
                    return means[layer_of[name]].for_length(tokens.shape[1], position)[None]

                found, _ = attribution.effects(model, tokens, list(layer_of), score, ablated, position, layers[0])
                for name, L in layer_of.items():
                    delta[rows_of[L][:, None], rows_d[None]] = found[name].to(device).T[heads_of[L]]
                bar.update(1)
        finally:
            bar.close()
        return validate.check_finite(delta, "the attribution estimates").cpu()


def tabulate(
    cases: pd.DataFrame,
    heads: list[tuple[int, int]],
    correct: torch.Tensor,
    logprob: torch.Tensor,
    group_by: tuple[str, ...],
    exact: torch.Tensor | None = None,
    estimated: torch.Tensor | None = None,
) -> pd.DataFrame:
    """The per-(head, group value) table of [`HeadAblationResult.df`][arithlens.heads.HeadAblationResult] from per-case outcomes."""
    base_correct = torch.tensor(cases["correct"].to_numpy(), dtype=torch.float32)
    base_lp = torch.tensor(cases["target_logprob"].to_numpy(), dtype=torch.float32)
    exact = torch.ones(len(heads), dtype=torch.bool) if exact is None else exact
    groups: list[tuple[dict, torch.Tensor]] = [({c: "all" for c in group_by}, torch.arange(len(cases)))]
    if group_by:
        for values, part in cases.groupby(list(group_by), sort=False, dropna=False):
            values = values if isinstance(values, tuple) else (values,)
            groups.append((dict(zip(group_by, values)), torch.tensor(part.index.to_list(), dtype=torch.long)))
    layer = np.array([h[0] for h in heads])
    head = np.array([h[1] for h in heads])
    nan = torch.tensor(float("nan"))
    frames = []
    for label, idx in groups:
        acc = torch.where(exact, correct[:, idx].float().mean(1), nan).numpy()
        base = float(base_correct[idx].mean())
        frame = pd.DataFrame({"layer": layer, "head": head})
        for c, v in label.items():
            frame[c] = v
        frame["n"] = len(idx)
        frame["accuracy"] = acc
        frame["baseline_accuracy"] = base
        frame["accuracy_drop"] = base - acc
        frame["relative_drop"] = (base - acc) / base if base > 0 else float("nan")
        frame["logprob_drop"] = (base_lp[idx][None, :] - logprob[:, idx]).mean(1).numpy()
        frame["estimated"] = (~exact).numpy()
        if estimated is not None:
            frame["logprob_drop_estimate"] = (base_lp[idx][None, :] - estimated[:, idx]).mean(1).numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
