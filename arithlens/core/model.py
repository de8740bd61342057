"""The model every analysis takes: [`LensModel`][arithlens.core.model.LensModel].

A [`LensModel`][arithlens.core.model.LensModel] (made by [`load_model`][arithlens.load_model]) holds the bridge (in
compatibility mode, so hook names, weight accessors and numerics are HookedTransformer's)
and the model's own tokenizer, and runs datasets in batches of equal-length prompts: no
padding ever enters a forward pass, so a batched prediction is the prediction of that
prompt alone.

[`LensModel.cache`][arithlens.core.model.LensModel.cache] runs a dataset once and keeps what
analyses read (see [`arithlens.core.cache`][arithlens.core.cache]); analyses given that cache run no
clean forward pass of their own.

Example:
    ```python
    import arithlens
    model = arithlens.load_model()            # SmolLM2-135M-Instruct, offline
    cache = model.cache(["3+5=", "2+2="])
    [model.decode([t]) for t in cache.predictions.tolist()]
    ```
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float, Int

from arithlens.core import names as names_mod
from arithlens.core.blocks import BlockWrites, block_writes, layer_norms_folded
from arithlens.core.dataset import as_dataset
from arithlens.core.placement import default_device
from arithlens.core.forward import logits_from
from arithlens.core.interventions import as_hooks, resolve_means
from arithlens.core.names import Hook
from arithlens.core import validate
from arithlens.core.cache import DatasetCache, Memo, build_cache, hook_names_of, positions_of, weights_fingerprint




def _keep_last(resid: torch.Tensor, hook: Any, positions: int = 1) -> torch.Tensor:
    return resid[:, -positions:]


def equal_length_chunks(input_ids: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """Row indices of `input_ids` grouped by length (shortest first), at most `size` per group."""
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(input_ids):
        by_len.setdefault(len(ids), []).append(i)
    return [rows[s : s + size] for _, rows in sorted(by_len.items()) for s in range(0, len(rows), size)]


class LensModel:
    """A TransformerBridge plus its tokenizer: the model every arithlens analysis takes.

    Attributes:
        bridge: The `TransformerBridge` in compatibility mode.
        tokenizer: The model's own tokenizer; prompts are encoded with `tokenizer.encode`.
        name: A display name.
        revision: The weights' revision (the hub commit loaded, or the `revision` asked
            for), `None` when unknown (a local file); saved results record it.
    """

    def __init__(
        self,
        bridge: Any,
        tokenizer: Any,
        name: str = "model",
        batch_size: int = 64,
        memo_entries: int = 8,
        memo_bytes: float = 2e9,
        revision: str | None = None,
    ):
        self.bridge = bridge
        self.tokenizer = tokenizer
        self.name = name
        self.revision = revision
        self.batch_size = validate.positive_int(batch_size, "batch_size")
        # Clean caches, least recently used first out; clear with clear_cache().
        self._memo = Memo(memo_entries, memo_bytes)
        # One forward at a time per model: hooks are per model, so a pass in another thread
        # would see this thread's interventions. Re-entrant: a pass inside `intervened` is fine.
        self._lock = threading.RLock()
        self._trim_ok: bool | None = None
        # Indices (into the dataset being run) of the rows of the current batch, so
        # per-case interventions can pick their rows (see interventions.PerCase).

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_hf(
        cls,
        hf_model: Any,
        tokenizer: Any,
        name: str = "model",
        bridge_name: str | None = None,
        device: str | None = None,
    ) -> "LensModel":
        """Wrap a Hugging Face causal LM with `TransformerBridge.boot_transformers`."""
        from transformer_lens.model_bridge import TransformerBridge

        hf_model = hf_model.eval()
        device = device or default_device()
        bridge = TransformerBridge.boot_transformers(
            bridge_name or name, hf_model=hf_model, tokenizer=tokenizer, device=device
        )
        return cls.from_bridge(bridge, tokenizer, name=name, revision=getattr(hf_model.config, "_commit_hash", None))

    @classmethod
    def from_bridge(cls, bridge: Any, tokenizer: Any = None, name: str = "model", revision: str | None = None) -> "LensModel":
        """Wrap a `TransformerBridge`, switching it to compatibility mode (in place) if it is
        not; one already in compatibility mode must have its LayerNorms folded (the
        readouts assume it, `arithlens.core.blocks`), else `ValueError`."""
        if getattr(bridge, "compatibility_mode", False) and not layer_norms_folded(bridge):
            raise ValueError(
                "the bridge is in compatibility mode with its LayerNorms unfolded (no_processing=True), "
                "which arithlens's readouts do not support: pass a bridge before enable_compatibility_mode() "
                "(arithlens enables it) or the Hugging Face model itself"
            )
        if not getattr(bridge, "compatibility_mode", False):
            cls.enable_compatibility(bridge)
        bridge.eval()
        for p in bridge.parameters():
            p.requires_grad_(False)
        # The bridge attaches some torch hooks of its own on its first forward and its first
        # run_with_cache; doing both now makes "no hooks left behind" checks meaningful.
        with torch.no_grad():
            probe = torch.zeros(1, 1, dtype=torch.long, device=bridge.W_U.device)
            bridge(probe)
            bridge.run_with_cache(probe, names_filter=["blocks.0.hook_resid_pre"], return_cache_object=False)
        model = cls(bridge, tokenizer if tokenizer is not None else bridge.tokenizer, name=name, revision=revision)
        model.last_position_trim()  # its one-off probe forward belongs to loading, not to the first analysis
        return model

    @staticmethod
    def enable_compatibility(bridge: Any) -> None:
        """Put `bridge` in TransformerLens's compatibility mode the way arithlens reads it."""
        # HookedTransformer's hook names. RMSNorm models keep their weights as they are (the
        # norms' gains are read where an analysis needs them, arithlens.core.blocks): folding
        # them costs a transient of several times the weights' memory. LayerNorm models are
        # folded (centring and biases) but W_U is left uncentred (the model's own logits), and value
        # biases are left where the model has them —
        # folded into b_O, a head's hook_z would lack its b_V term.
        rms = str(getattr(bridge.cfg, "normalization_type", "")).startswith("RMS")
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=rms, center_unembed=False, fold_value_biases=False)

    # ------------------------------------------------------------------ shape facts
    @property
    def cfg(self) -> Any:
        return self.bridge.cfg

    @functools.cached_property
    def writes(self) -> BlockWrites:
        """How this model's blocks write to the residual stream ([`arithlens.core.blocks`][arithlens.core.blocks])."""
        return block_writes(self)

    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.cfg.n_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.cfg, "n_key_value_heads", None) or self.cfg.n_heads)

    @property
    def d_model(self) -> int:
        return int(self.cfg.d_model)

    @property
    def d_head(self) -> int:
        return int(self.cfg.d_head)

    @property
    def d_mlp(self) -> int:
        return int(self.cfg.d_mlp)

    @property
    def d_vocab(self) -> int:
        return int(self.bridge.W_U.shape[-1])

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (on a model split across devices, the first)."""
        cfg_device = getattr(self.cfg, "device", None)
        return torch.device(cfg_device) if cfg_device is not None else self.bridge.W_U.device

    def check_layer(self, layer: Any, name: str = "layer") -> int:
        """`layer` as an int, or `ValueError` unless it is one of this model's layers."""
        return validate.integer(layer, name, low=0, high=self.n_layers - 1)

    def check_head(self, layer: Any, head: Any) -> tuple[int, int]:
        """`(layer, head)` as ints, or `ValueError` unless the head exists (query-head index)."""
        return self.check_layer(layer), validate.integer(head, "head", low=0, high=self.n_heads - 1)

    def check_neurons(self, layer: Any, neurons: Any) -> torch.Tensor:
        """Neuron indices of `layer` as a long tensor, or `ValueError` (non-integers are not truncated)."""
        self.check_layer(layer)
        idx = validate.int_sequence(neurons, "neurons", low=0, high=self.d_mlp - 1, allow_empty=True)
        return torch.tensor(idx, dtype=torch.long)

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> list[int]:
        """Token ids exactly as the tokenizer encodes `text` (no BOS added on top)."""
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Sequence[int] | int) -> str:
        if isinstance(ids, int):
            ids = [ids]
        return self.tokenizer.decode(list(ids))

    def token_strs(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids]

    # ------------------------------------------------------------------ forward passes
    def ids_and_targets(self, data: Any) -> tuple[list[tuple[int, ...]], list[int]]:
        """Input and target ids of `data` (see [`as_dataset`][arithlens.data.as_dataset]), checked against the model."""

        ds = as_dataset(data, self.tokenizer)
        ids = [tuple(c.input_ids) for c in ds]
        targets = [int(c.target_id) for c in ds]
        n_ctx = getattr(self.cfg, "n_ctx", None)
        longest = max(len(i) for i in ids)
        if n_ctx and longest > int(n_ctx):
            raise ValueError(f"a prompt has {longest} tokens, more than the model's context of {int(n_ctx)} tokens")
        top = max(max(max(i) for i in ids), max(targets))
        if top >= self.d_vocab:
            raise ValueError(f"token id {top} is out of range: this model's vocabulary has ids 0..{self.d_vocab - 1}")
        return ids, targets

    def batches(
        self, input_ids: Sequence[Sequence[int]], batch_size: int | None = None
    ) -> Iterator[tuple[torch.Tensor, Int[torch.Tensor, "batch pos"]]]:
        """Yield `(rows, tokens)`: equal-length prompts stacked, never padded."""
        batch_size = validate.optional_positive_int(batch_size, "batch_size") or self.batch_size
        for chunk in equal_length_chunks(input_ids, batch_size):
            tokens = torch.tensor([list(input_ids[i]) for i in chunk], device=self.device)
            yield torch.tensor(chunk), tokens

    def last_position_trim(self, positions: int = 1) -> list[Hook]:
        """A hook trimming the sequence to its last `positions` before the final norm, where safe.

        Reading only the last positions' logits, trimming avoids a `[batch, pos, vocab]`
        tensor. Some architectures reshape after the final norm (GPT-2), so whether it is
        safe is tried once on a one-token input and remembered; where it is not, no hook is
        returned and the logits keep every position.
        """
        if self._trim_ok is None:
            probe = torch.zeros(1, 2, dtype=torch.long, device=self.device)
            try:
                with torch.no_grad(), self.hooked([("ln_final.hook_in", _keep_last)]):
                    self.bridge(probe)
                self._trim_ok = True
            except RuntimeError:
                self._trim_ok = False
        return [("ln_final.hook_in", functools.partial(_keep_last, positions=positions))] if self._trim_ok else []

    @contextlib.contextmanager
    def hooked(self, hooks: Sequence[Hook]) -> Iterator["LensModel"]:
        """Apply forward hooks for the duration of the context; always removed. Other threads'
        passes on this model wait until the context ends."""
        with self._lock, self.bridge.hooks(fwd_hooks=list(hooks), reset_hooks_end=True):
            yield self

    @contextlib.contextmanager
    def intervened(self, *interventions: Any) -> Iterator["LensModel"]:
        """Apply interventions (see [`arithlens.core.interventions`][arithlens.core.interventions]) inside the context."""

        with self.hooked(as_hooks(self, interventions)):
            yield self

    def final_logits(self, resid: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... vocab"]:
        """The model's own final norm and unembedding applied to residual vectors."""
        return self.bridge.unembed(self.bridge.ln_final(resid))

    @torch.no_grad()
    def last_logits(
        self, tokens: Int[torch.Tensor, "batch pos"] | Float[torch.Tensor, "batch pos d_model"],
        start_at_layer: int | None = None,
    ) -> Float[torch.Tensor, "batch vocab"]:
        """Logits at the last position only.

        The final norm and unembedding see just the last position (a hook trims the
        sequence before `ln_final`), so no `[batch, pos, vocab]` tensor is built. With
        `start_at_layer` the input is the residual stream entering that block and only
        blocks `start_at_layer…` run (see [`arithlens.core.forward`][arithlens.core.forward]; hooks
        on those blocks fire, blocks before never run).
        """
        if start_at_layer is not None:

            return logits_from(self, tokens, start_at_layer)
        with self.hooked(self.last_position_trim()):
            logits = self.bridge(tokens)
        return logits[:, -1, :]

    def cache(
        self,
        data: Any,
        names: Any = (),
        positions: str | None = None,
        interventions: Sequence[Any] = (),
        batch_size: int | None = None,
        memo: bool = True,
        offload: str | None = None,
    ) -> DatasetCache:
        """One forward pass over `data`, kept as an [`DatasetCache`][arithlens.core.cache.DatasetCache].

        Args:
            data: A prompt, prompts, token ids or a dataset ([`as_dataset`][arithlens.data.as_dataset]).
            names: Hook names and/or analyses (their `hook_names(model)`) to keep activations of.
            positions: `"last"` (each case's final position) or `"all"`. Default: `"all"`
                when an analysis in `names` restarts from whole sequences (its
                `cache_positions(model)` says so, e.g. an exact `HeadAblation`), else `"last"`.
            interventions: Applied during this pass only; the result is then not memoized.
            batch_size: Cases per forward pass (default the model's).
            memo: Serve and store clean caches in the model's bounded memo.
            offload: `None` keeps the activations on the model's device in the model's dtype
                (no host copy per batch); `"cpu"` moves them to host memory as they are
                computed, for sweeps whose activations do not fit beside the model.

        A clean pass — no intervention passed and no hook attached to the model (so not
        inside `with model.intervened(...)`) — is memoized per cases; a memoized cache that
        holds the requested hooks and positions is returned without a forward pass.
        """
        ids, targets = self.ids_and_targets(data)
        wanted = hook_names_of(self, names)
        unknown = sorted(n for n in wanted if n not in self.bridge.hook_dict)
        if unknown:
            raise ValueError(
                f"names: {', '.join(map(repr, unknown[:3]))} {'is not a hook' if len(unknown) == 1 else 'are not hooks'} "
                f"of this model (hook names look like {names_mod.resid_mid(0)!r}; see arithlens.core.names)"
            )
        positions = positions_of(self, names, positions)
        batch_size = validate.optional_positive_int(batch_size, "batch_size")
        items = list(interventions) if isinstance(interventions, (list, tuple)) else [interventions]
        if offload not in (None, "cpu"):
            raise ValueError(f"offload={offload!r} must be None (keep activations on the model's device) or 'cpu'")
        # One step for other threads: whether hooks are attached, the memo, and the pass itself.
        with self._lock:
            attached = self.has_hooks()
            clean = not any(i is not None for i in items) and not attached
            key = (tuple(ids), tuple(targets), weights_fingerprint(self))  # edited weights: another entry
            if clean and memo:
                hit = self._memo.get(key)
                if hit is not None and hit.has(wanted, positions):
                    return hit
                if hit is not None:  # widen the memoized entry instead of keeping two
                    wanted |= hit.names
                    positions = "all" if hit.positions == "all" else positions
            described = " + ".join(repr(i) for i in items if i is not None) or ("hooks attached" if attached else "")
            result = build_cache(self, ids, targets, wanted, positions, items, batch_size, described, clean, offload)
            if clean and memo:
                self._memo.put(key, result)
            return result

    @torch.no_grad()
    def generate_greedy(
        self, data: Any, max_new_tokens: int, interventions: Sequence[Any] = (), batch_size: int | None = None
    ) -> list[list[int]]:
        """Greedy continuation ids of every case (no KV cache: answers are a few tokens)."""
        ids, _ = self.ids_and_targets(data)
        validate.positive_int(max_new_tokens, "max_new_tokens")
        out: list[list[int]] = [[] for _ in ids]
        interventions = resolve_means(self, interventions)
        as_hooks(self, interventions, torch.zeros(0, dtype=torch.long))  # a bad intervention fails before any pass
        for rows, tokens in self.batches(ids, batch_size):
            with self.hooked(as_hooks(self, interventions, rows)):
                for _ in range(max_new_tokens):
                    nxt = self.last_logits(tokens).argmax(-1)
                    tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            for r, row in zip(rows.tolist(), tokens[:, -max_new_tokens:].tolist()):
                out[r] = row
        return out

    def predict(self, prompts: Sequence[str] | str) -> list[str]:
        """The next token the model predicts for each prompt, as text."""
        return [self.decode([int(t)]) for t in self.cache(prompts, memo=False).predictions]

    def has_hooks(self) -> bool:
        """Whether any TransformerLens hook is attached to any hook point of the model."""
        return any(
            getattr(m, "fwd_hooks", None) or getattr(m, "bwd_hooks", None) for m in self.bridge.modules()
        )

    def torch_hook_count(self) -> int:
        """Number of raw torch hooks on all modules (the bridge keeps some of its own)."""
        return sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            for m in self.bridge.modules()
        )

    def clear_cache(self) -> None:
        """Forget every memoized clean cache (frees their memory)."""
        self._memo.clear()

    def __repr__(self) -> str:
        return (
            f"LensModel({self.name!r}: {self.n_layers} layers, {self.n_heads} heads "
            f"({self.n_kv_heads} KV), d_mlp {self.d_mlp}, on {self.device})"
        )

