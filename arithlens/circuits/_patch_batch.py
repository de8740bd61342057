"""Per-batch machinery of path patching (internal): see [`path_patching`][arithlens.circuits.path_patching].

A `Batch` holds one batch of reference / counterfactual pairs: the captured activations
(from the reference forward or an [`ActivationCache`][arithlens.cache.ActivationCache]),
the node deltas `out_c(n) - out_r(n)` at END, the exact patched logits (`"path"`: one
vectorised norm + unembedding; `"activation"`: one restarted forward per layer) and the
attribution estimate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import einops
import torch
from jaxtyping import Float

from arithlens import attribution, forward, names
from arithlens.circuits.counterfactual import CounterfactualPairs
from arithlens.names import Node
from arithlens.readout import Readout

if TYPE_CHECKING:
    from arithlens.circuits.path_patching import PathPatching


def check_cache(model: Any, cache: Any, pairs: CounterfactualPairs, wanted: set[str], positions: str) -> None:
    """Raise unless `cache` is the clean reference pass of `pairs` holding `wanted` (at every position for `"all"`)."""
    from arithlens.cache import ActivationCache

    if not isinstance(cache, ActivationCache):
        raise ValueError(f"cache={type(cache).__name__} is not an ActivationCache (build one with model.cache(reference prompts, ...))")
    cache.check_matches(pairs.reference_ids, "the reference prompts")
    missing = sorted(wanted - cache.names)
    if missing:
        raise ValueError(f"cache lacks {len(missing)} hook(s) path patching reads ({', '.join(missing[:4])}…); build it with model.cache(data, names=[patching], positions={positions!r})")
    if positions == "all" and cache.positions != "all":
        raise ValueError("activation patching restarts from the residual at every position; build the cache with positions='all'")
    if not cache.clean:
        raise ValueError(f"path patching needs the clean reference pass, but the cache was built {cache.interventions or 'with hooks attached'}")


class Batch:
    """One batch of pairs: reference and counterfactual activations on the device, and the patched logits."""

    def __init__(self, model: Any, pairs: CounterfactualPairs, rows: torch.Tensor, ref: torch.Tensor, nodes: list[Node], config: PathPatching, cache: Any):
        self.model, self.rows, self.ref, self.nodes, self.config, self.cache = model, rows, ref, nodes, config, cache
        self.cf = torch.tensor([list(pairs.counterfactual_ids[i]) for i in rows.tolist()], device=model.device)
        self.layers = sorted({nd.layer for nd in nodes})
        self.target_given = pairs.target_ids[rows].clone()
        self.wanted = sorted(config.hook_names(model))
        self._refc: dict[str, torch.Tensor] | None = None
        self._cfc: dict[str, torch.Tensor] | None = None

    def release(self) -> None:
        """Drop the captured activations (memory stays bounded by one batch)."""
        self._refc = self._cfc = None

    # -------------------------------------------------------------- captures
    def refc(self) -> dict[str, torch.Tensor]:
        """Reference activations (all positions, or the last for cached `"path"` runs) and the target."""
        if self._refc is None:
            model, final, wanted = self.model, names.resid_post(self.model.n_layers - 1), self.wanted
            if self.cache is not None:
                pick = self.rows.tolist()
                get = (lambda h: torch.stack([self.cache.per_position(h)[r] for r in pick])) if self.cache.positions == "all" else (lambda h: self.cache.last(h)[self.rows][:, None])
                found = {h: get(h).to(model.device, model.bridge.W_U.dtype) for h in wanted}
            else:
                found = forward.capture(model, self.ref, wanted)
            logits = model.final_logits(found[final][:, -1]).float()
            target = self.target_given.to(logits.device)  # where the logits are (sharded models too)
            target = torch.where(target >= 0, target, logits.argmax(-1))
            self.target = target
            self.logit_o = logits.gather(-1, target[:, None])[:, 0]
            self.logprob_o = self.logit_o - logits.logsumexp(-1)
            self._refc = found
        return self._refc

    def cfc(self) -> dict[str, torch.Tensor]:
        """Counterfactual node outputs (every position)."""
        if self._cfc is None:
            hooks = [f(L) for L in self.layers for f in (names.z, names.mlp_out)]
            self._cfc = forward.capture(self.model, self.cf, hooks, stop_at_layer=max(self.layers) + 1)
        return self._cfc

    def deltas(self, which: list[int]) -> Float[torch.Tensor, "node batch d_model"]:
        """`out_c(n) - out_r(n)` at END, through `W_O` for heads."""
        refc, cfc, W_O = self.refc(), self.cfc(), self.model.bridge.W_O
        device = refc[names.resid_post(self.model.n_layers - 1)].device
        out = []
        for i in which:
            nd = self.nodes[i]
            if nd.is_mlp:
                h = names.mlp_out(nd.layer)
                out.append((cfc[h][:, -1] - refc[h][:, -1]).to(device))
            else:
                h = names.z(nd.layer)
                dz = cfc[h][:, -1, nd.head] - refc[h][:, -1, nd.head]
                out.append((dz @ W_O[nd.layer, nd.head].to(dz.device)).to(device))
        return torch.stack(out)

    # -------------------------------------------------------------- exact
    def exact(self, readout: Readout, which: list[int], bar: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Patched target logit and log-prob `[len(which), batch]` of the nodes `which`."""
        if self.config.method == "path":
            out = self._path(readout, which)
            bar.update(1)
            return out
        self.refc()
        device = self.target.device
        lo, lp = torch.zeros(len(which), len(self.rows), device=device), torch.zeros(len(which), len(self.rows), device=device)
        for L in sorted({self.nodes[i].layer for i in which}):
            here = [j for j, i in enumerate(which) if self.nodes[i].layer == L]
            idx = torch.tensor(here, device=device)
            lo[idx], lp[idx] = self._activation(L, [self.nodes[which[j]] for j in here])
            bar.update(1)
        return lo.cpu(), lp.cpu()

    def _path(self, readout: Readout, which: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        final = self.refc()[names.resid_post(self.model.n_layers - 1)][:, -1]
        resid = final[None] + self.deltas(which)  # [node, b, d_model]
        tgt = einops.repeat(self.target, "b -> node b", node=len(which))
        normed = self.model.bridge.ln_final(resid).float()
        w = einops.rearrange(readout.W_U[:, tgt], "d node b -> node b d")
        logits = (normed * w).sum(-1) + readout.b_U[tgt]
        if not self.config.logprobs:
            return logits.cpu(), torch.full_like(logits, float("nan")).cpu()
        logprob = torch.empty_like(logits)
        chunk = max(1, 512 // max(resid.shape[1], 1))  # <= 512 rows x vocab at once
        for s in range(0, len(which), chunk):
            full = self.model.final_logits(resid[s : s + chunk]).float()
            logprob[s : s + chunk] = full.gather(-1, tgt[s : s + chunk, :, None])[..., 0] - full.logsumexp(-1)
        return logits.cpu(), logprob.cpu()

    def _activation(self, layer: int, here: list[Node]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch each node of `layer` in its own replica; downstream recomputes."""
        resid, cfc, b = self.refc()[names.resid_pre(layer)], self.cfc(), len(self.rows)
        pos = slice(None) if self.config.position == "all" else slice(-1, None)
        out_logit, out_lp = [], []
        per = max(1, self.config.max_rows // b)
        for s in range(0, len(here), per):
            chunk = here[s : s + per]
            x = einops.repeat(resid, "b p d -> (r b) p d", r=len(chunk))
            heads = [(j, nd.head) for j, nd in enumerate(chunk) if not nd.is_mlp]
            mlps = [j for j, nd in enumerate(chunk) if nd.is_mlp]
            z_c, m_c = cfc[names.z(layer)], cfc[names.mlp_out(layer)]

            # Replica j owns rows j*b:(j+1)*b (the "(r b)" stacking above).
            def patch_z(z: Float[torch.Tensor, "rows pos head d_head"], hook: Any) -> torch.Tensor:
                for j, h in heads:
                    z[j * b : (j + 1) * b, pos, h] = z_c[:, pos, h].to(z)
                return z

            def patch_mlp(out: Float[torch.Tensor, "rows pos d_model"], hook: Any) -> torch.Tensor:
                for j in mlps:
                    out[j * b : (j + 1) * b, pos] = m_c[:, pos].to(out)
                return out

            hooks = ([(names.z(layer), patch_z)] if heads else []) + ([(names.mlp_out(layer), patch_mlp)] if mlps else [])
            with self.model.hooked(hooks):
                logits = forward.logits_from(self.model, x, layer).float()
            logits = einops.rearrange(logits, "(r b) v -> r b v", r=len(chunk))
            tgt = einops.repeat(self.target, "b -> r b 1", r=len(chunk))
            hit = logits.gather(-1, tgt)[..., 0]
            out_logit.append(hit)
            out_lp.append(hit - logits.logsumexp(-1))
        return torch.cat(out_logit), torch.cat(out_lp)

    # -------------------------------------------------------------- attribution
    def attribute(self, readout: Readout) -> Float[torch.Tensor, "node batch"]:
        """First-order estimate of `logit_p - logit_o` for every node."""
        everything = list(range(len(self.nodes)))
        if self.config.method == "path":
            final = self.refc()[names.resid_post(self.model.n_layers - 1)][:, -1].float()
            with torch.enable_grad():
                v = final.detach().requires_grad_(True)
                normed = self.model.bridge.ln_final(v.to(self.model.bridge.W_U.dtype)).float()
                logit = (normed * readout.W_U[:, self.target].T).sum(-1) + readout.b_U[self.target]
                (grad,) = torch.autograd.grad(logit.sum(), [v])
            return einops.einsum(self.deltas(everything).float(), grad, "node b d, b d -> node b").cpu()
        self.refc()
        cfc, target, position = self.cfc(), self.target, self.config.position

        def score(logits: torch.Tensor) -> torch.Tensor:
            return logits.float().gather(-1, target[:, None])[:, 0]

        def patched(name: str, act: torch.Tensor) -> torch.Tensor:
            return cfc[name] if position == "all" else cfc[name][:, -1:]

        hooks = [f(L) for L in self.layers for f in (names.z, names.mlp_out)]
        found, _ = attribution.effects(self.model, self.ref, hooks, score, patched, position, self.layers[0])
        return torch.stack(
            [(found[names.mlp_out(nd.layer)] if nd.is_mlp else found[names.z(nd.layer)][:, nd.head]).to(target.device) for nd in self.nodes]
        ).cpu()
