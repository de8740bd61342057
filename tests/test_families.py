"""arithlens's numbers on ten transformer families against a brute force on the Hugging Face modules.

Each family is a tiny random model (2 layers, d_model 64, 4 heads — 2 KV heads where the
family has GQA — d_mlp 128, the character tokenizer of `arithlens.testing`) saved with
`save_pretrained` and loaded with `arithlens.load_model(dir)`, as a user would. The brute
force never touches arithlens or TransformerLens: it hooks the `transformers` modules of a
second copy of the model loaded from the same directory and does the arithmetic itself.

Checks, per family:

* **forward** — the last position's log-probabilities (`LensModel.last_logits`) and the
  target log-probs and predictions of `LensModel.cache` equal the HF model's.
* **zero_head** — `ZeroHead(L, h)` equals zeroing head `h`'s slice of the input of the HF
  attention's output projection (`o_proj` / `c_proj` / `dense`) at every position.
* **readout** — `ImportanceResult.logprob`, the §4.1 scores' readout of the final residual at
  its own frozen scale, is the model's `log p(w)`.
* **neurons** — `NeuronImportance` (CNA §4.1) equals
  `log p(w | x + c_k) − log p(w | x)` where `c_k` is what neuron `k` truly adds to the
  residual stream at the last position and `x` the residual it is added to (see
  `BruteForce.neuron_importance`); read out through the model's final norm with its scale
  frozen at the value of the forward pass, `lm_head`, and the final logit soft-cap where
  the family has one.
* **heads** — `ImportanceResult.head_importance`, the same score for each head's output
  (`BruteForce.head_importance`).

Every neuron and head of both layers is compared on every prompt, to `ATOL` nats.

Every other analysis, per family (docs/concepts.md, "Model families"): it matches a brute force
on the HF modules, or it refuses with a one-line `ValueError` naming the family (its
transformers architecture) exactly where the docs say it does:

* **cna** — `ComparativeNeuronScores(intervention="1.1")`: both sides' importance and coefficient
  scores; the other side is the HF model with head 1.1 zeroed, read with the original run's
  final-norm scale.
* **fast** — `NeuronImportance(mode="fast")`: the re-scored neurons' scores.
* **mask_keep** — `MaskKeep`: mask and keep accuracies with each case's top CNA neurons zeroed
  (or every other neuron of the keep layer) in the HF forward.
* **vo** — `VOTransform.transform`: the direction of a vector through one attention layer's
  value-output path (pre-norm gain, HF attention on one position, post-attention norm gain).
* **patch_activation**, **patch_logits**, **patch_path** — `PathPatching`: patched log-probs
  (activation patching on every family; the direct path, refused on post-norm families) and the
  documented logit convention.
* **end_attention**, **mlp_probe** — `EndAttention` (HF attention weights by token role) and
  `MLPProbe` (cosines with the direction raising each token's logit).
* **pe_dag**, **logic_chain** — refused on parallel and post-norm families; on plain ones the
  PE-DAG's edge drives are the HF MLP's coefficient gradients, and the logic chain runs.
* **prune**, **edit** — the pruned / edited model's logits equal the HF model's with those neurons
  zeroed on families with a gated MLP; refused elsewhere.
* **lora** — refused on fused attention projections (GPT-2, GPT-NeoX, Phi-3).
* **head_ablation** — `HeadAblation`: each head's ablated target log-prob and `logprob_drop`.

Known differences are strict xfails (see `XFAIL`, with their sizes): when a fix lands the mark must go.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

FAMILIES: dict[str, dict] = {
    "llama": dict(num_key_value_heads=2),
    "qwen2": dict(num_key_value_heads=2),
    "qwen3": dict(num_key_value_heads=2, head_dim=16),
    "mistral": dict(num_key_value_heads=2),
    "phi3": dict(num_key_value_heads=2),
    "gpt2": dict(),
    "gpt_neox": dict(use_parallel_residual=True, rotary_pct=0.25),
    "gemma2": dict(
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
    ),  # fmt: skip
    "gemma3_text": dict(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=4),
    "olmo2": dict(num_key_value_heads=2),
}
"""Config arguments on top of the common shape (`_config`)."""

POST_NORM = {"gemma2", "gemma3_text", "olmo2"}
"""Families whose sublayer outputs pass through a norm before the residual addition
(`post_attention_layernorm`, `post_feedforward_layernorm`)."""

PROMPTS = ["3+5=", "12+7=", "9-2=", "4*6+1="]
ANSWERS = ["8", "19", "7", "25"]
ATOL = 1e-4  # nats; float32 everywhere

RMS_NORM = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text", "olmo2")
"""Families with RMSNorm, which arithlens wraps unprocessed (no norm folded, no unembedding centred)."""

XFAIL: dict[tuple[str, str], tuple[type[BaseException], str]] = {}
"""(family, check) → (the exception the check raises, why): strict xfails for a known difference,
with its size. When a fix lands the test XPASSes, which fails the run: the mark must then go."""


def _params(check: str) -> list:
    out = []
    for f in FAMILIES:
        if (f, check) in XFAIL:
            raises, reason = XFAIL[(f, check)]
            out.append(pytest.param(f, marks=pytest.mark.xfail(strict=True, raises=raises, reason=reason)))
        else:
            out.append(f)
    return out


# ---------------------------------------------------------------------------- building the models
def _config(family: str):
    from transformers import AutoConfig

    from arithlens.testing import char_tokenizer

    tok = char_tokenizer()
    if family == "gpt2":
        shape = dict(n_embd=64, n_inner=128, n_layer=2, n_head=4, n_positions=128)
    else:
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return AutoConfig.for_model(family, vocab_size=len(tok), tie_word_embeddings=False, **ids, **shape, **FAMILIES[family]), tok


def _save(family: str, path) -> None:
    """Build the family's random model (seeded) and save it with its tokenizer in `path`."""
    from transformers import AutoModelForCausalLM

    cfg, tok = _config(family)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        # Random init gives near-uniform logits; a larger unembedding makes them decisive
        # (and puts them where Gemma-2's soft-cap bends them).
        hf.get_output_embeddings().weight.mul_(40.0)
        for module in hf.modules():
            # Non-trivial norm weights and biases, and projection biases (HF initialises them to
            # 0): folding norms and value biases then changes numbers if it is done wrong.
            if "norm" in type(module).__name__.lower():
                if getattr(module, "weight", None) is not None:
                    module.weight.add_(torch.randn_like(module.weight) * 0.2)
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_(0.0, 0.2)
            elif getattr(module, "bias", None) is not None and module is not hf.get_output_embeddings():
                module.bias.normal_(0.0, 0.05)
    hf.save_pretrained(path)
    tok.save_pretrained(path)


class Family:
    """One family's saved model: arithlens's `LensModel` and an independent HF copy for the brute force."""

    def __init__(self, name: str, path: str):
        import arithlens
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name, self.path = name, path
        self.model = arithlens.load_model(path, device="cpu")
        self.hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(path)  # the brute force's own copy
        self.bf = BruteForce(self.hf, name)
        self._importance = self._cna = self._patching = None  # computed once, shared by several checks


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread while this module runs (restored after): the models are tiny, and on a busy
    machine a second thread's spin-waiting makes each forward pass tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    built: dict[str, Family] = {}

    def get(name: str) -> Family:
        if name not in built:
            path = tmp_path_factory.mktemp(f"family-{name}")
            _save(name, path)
            built[name] = Family(name, str(path))
        return built[name]

    return get


# ---------------------------------------------------------------------------- the brute force
def _frozen_norm(norm: torch.nn.Module, v: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """`norm` applied to `v` with its scale frozen at the value it has on `whole` (float64).

    RMSNorm: `w · v / sqrt(mean(whole²) + eps)` (Gemma's norms multiply by `1 + w`);
    LayerNorm: `w · (v − mean v) / sqrt(var(whole) + eps) + b`.
    """
    whole = whole.double()
    v = v.double()
    if isinstance(norm, torch.nn.LayerNorm):
        sigma = torch.sqrt(whole.var(-1, unbiased=False, keepdim=True) + norm.eps)
        return (v - v.mean(-1, keepdim=True)) / sigma * norm.weight.double() + norm.bias.double()
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps")
    sigma = torch.sqrt(whole.pow(2).mean(-1, keepdim=True) + eps)
    weight = norm.weight.double()
    if type(norm).__name__.startswith("Gemma"):
        weight = 1.0 + weight
    return v / sigma * weight


def _rows(proj: torch.nn.Module) -> torch.Tensor:
    """A projection's weight as `[d_in, d_out]` (`nn.Linear` stores it transposed, GPT-2's `Conv1D` not)."""
    return proj.weight.T if isinstance(proj, torch.nn.Linear) else proj.weight


class BruteForce:
    """The four checks' numbers, from hooks on the HF modules and plain arithmetic."""

    def __init__(self, hf, family: str):
        self.hf, self.family, self.cfg = hf, family, hf.config
        base = hf.base_model
        self.layers = base.layers if hasattr(base, "layers") else base.h
        self.final_norm = next(getattr(base, n) for n in ("norm", "ln_f", "final_layer_norm") if hasattr(base, n))
        self.lm_head = hf.get_output_embeddings()
        self.n_heads = int(self.cfg.num_attention_heads)

    def attn_out_proj(self, L: int) -> torch.nn.Module:
        layer = self.layers[L]
        if hasattr(layer, "self_attn"):
            return layer.self_attn.o_proj
        if hasattr(layer, "attention"):
            return layer.attention.dense
        return layer.attn.c_proj

    def mlp_down_proj(self, L: int) -> torch.nn.Module:
        mlp = self.layers[L].mlp
        for n in ("down_proj", "dense_4h_to_h", "c_proj"):
            if hasattr(mlp, n):
                return getattr(mlp, n)
        raise AssertionError(f"no down projection in {type(mlp).__name__}")

    @contextlib.contextmanager
    def edited(self, zero_head: tuple[int, int] | None = None, zero_neurons: dict | None = None):
        """Hooks, for the duration of the block, that zero one head's slice of the input of its layer's
        attention output projection (`zero_head=(L, h)`) and/or FFN neurons — the input of the layer's
        down projection at the given indices (`zero_neurons={L: indices}`) — at every position."""
        handles = []

        def zero_slice(index):
            def fn(module, args):
                z = args[0].clone()
                z[..., index] = 0.0
                return (z,) + tuple(args[1:])

            return fn

        if zero_head is not None:
            L, h = zero_head
            proj = self.attn_out_proj(L)
            d_head = _rows(proj).shape[0] // self.n_heads
            handles.append(proj.register_forward_pre_hook(zero_slice(slice(h * d_head, (h + 1) * d_head))))
        for L, index in (zero_neurons or {}).items():
            index = torch.as_tensor(index)
            index = index.nonzero()[:, 0] if index.dtype == torch.bool else index.long()
            handles.append(self.mlp_down_proj(L).register_forward_pre_hook(zero_slice(index)))
        try:
            yield
        finally:
            for hd in handles:
                hd.remove()

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor, zero_head: tuple[int, int] | None = None, zero_neurons: dict | None = None) -> torch.Tensor:
        """Last-position logits, optionally under `edited(zero_head, zero_neurons)`."""
        with self.edited(zero_head, zero_neurons):
            return self.hf(tokens).logits[0, -1].double()

    def log_probs(self, tokens: torch.Tensor, zero_head: tuple[int, int] | None = None, zero_neurons: dict | None = None) -> torch.Tensor:
        """Last-position log-probabilities, optionally with one head's output (or some neurons) zeroed at every position."""
        return self.logits(tokens, zero_head, zero_neurons).log_softmax(-1)

    @torch.no_grad()
    def record(self, tokens: torch.Tensor, zero_head: tuple[int, int] | None = None) -> dict:
        """Last-position inputs and outputs of every layer, its projections and the final norm
        (optionally with one head zeroed at every position, as in `edited`)."""
        rec: dict = {}
        handles = []

        def keep_in(key):
            def fn(module, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                rec[key] = x[0, -1].detach().clone()

            return fn

        def keep_out(key):
            def fn(module, args, out):
                rec[key] = (out[0] if isinstance(out, tuple) else out)[0, -1].detach().clone()

            return fn

        for L, layer in enumerate(self.layers):
            handles.append(layer.register_forward_pre_hook(keep_in(("x", L)), with_kwargs=True))
            handles.append(layer.register_forward_hook(keep_out(("out", L))))
            for key, mod in (("z", self.attn_out_proj(L)), ("m", self.mlp_down_proj(L))):
                handles.append(mod.register_forward_pre_hook(keep_in((key, L)), with_kwargs=True))
                handles.append(mod.register_forward_hook(keep_out((key + "_out", L))))
            if self.family in POST_NORM:
                for key, mod in (("attn_normed", layer.post_attention_layernorm), ("mlp_normed", layer.post_feedforward_layernorm)):
                    handles.append(mod.register_forward_hook(keep_out((key, L))))
        handles.append(self.final_norm.register_forward_pre_hook(keep_in("final"), with_kwargs=True))
        try:
            with self.edited(zero_head):
                rec["logits"] = self.hf(tokens).logits[0, -1].detach().clone()
        finally:
            for hd in handles:
                hd.remove()
        return rec

    def readout(self, rec: dict, v: torch.Tensor) -> torch.Tensor:
        """Log-probs of residual vectors `v` (`[..., d_model]`): final norm at the pass's frozen scale, `lm_head`, soft-cap."""
        h = _frozen_norm(self.final_norm, v, rec["final"])
        logits = h @ self.lm_head.weight.double().T
        if getattr(self.lm_head, "bias", None) is not None:
            logits = logits + self.lm_head.bias.double()
        cap = getattr(self.cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits.log_softmax(-1)

    def sublayer(self, rec: dict, L: int, kind: str, v: torch.Tensor) -> torch.Tensor:
        """What a part `v` of layer `L`'s attention (`kind="attn"`) or MLP output adds to the residual.

        Post-norm families: the post-sublayer norm with its scale frozen at the value it has
        on the whole sublayer output at this position; other families: `v` itself.
        """
        if self.family not in POST_NORM:
            return v.double()
        layer = self.layers[L]
        norm, whole = (
            (layer.post_attention_layernorm, rec[("z_out", L)]) if kind == "attn" else (layer.post_feedforward_layernorm, rec[("m_out", L)])
        )
        return _frozen_norm(norm, v, whole)

    @torch.no_grad()
    def check_record(self, rec: dict) -> None:
        """The brute force's own sanity: its pieces rebuild the HF model's residual stream and logits."""
        tol = dict(atol=1e-4, rtol=1e-4)
        for L in range(len(self.layers)):
            attn, mlp = self.sublayer(rec, L, "attn", rec[("z_out", L)]), self.sublayer(rec, L, "mlp", rec[("m_out", L)])
            if self.family in POST_NORM:
                torch.testing.assert_close(attn, rec[("attn_normed", L)].double(), **tol)
                torch.testing.assert_close(mlp, rec[("mlp_normed", L)].double(), **tol)
            torch.testing.assert_close(rec[("x", L)].double() + attn + mlp, rec[("out", L)].double(), **tol)
        torch.testing.assert_close(self.readout(rec, rec["final"]), rec["logits"].double().log_softmax(-1), **tol)

    def neuron_base(self, rec: dict, L: int) -> torch.Tensor:
        """The residual stream a neuron of layer `L` is added to: the block's input plus its attention's
        contribution. In a parallel block (GPT-NeoX: `x + attn(ln1 x) + mlp(ln2 x)`) the MLP read `x`
        alone, but the residual its output is added to is still `x + attn`."""
        return rec[("x", L)].double() + self.sublayer(rec, L, "attn", rec[("z_out", L)])

    @torch.no_grad()
    def neuron_importance(self, rec: dict, L: int, w: int) -> torch.Tensor:
        """`[d_mlp]`: `log p(w | x + c_k) − log p(w | x)`, `c_k` = post-norm(m_k · W_down[k]) with the
        norm's scale frozen (identity where the family has no post-norm), `x` = `neuron_base`."""
        x = self.neuron_base(rec, L)
        W = _rows(self.mlp_down_proj(L)).double()  # [d_mlp, d_model]
        c = self.sublayer(rec, L, "mlp", rec[("m", L)].double()[:, None] * W)
        return self.readout(rec, x + c)[:, w] - self.readout(rec, x)[w]

    @torch.no_grad()
    def head_importance(self, rec: dict, L: int, w: int) -> torch.Tensor:
        """`[head]`: `log p(w | x + c_h) − log p(w | x)`, `c_h` = post-norm(z_h · W_O[h]) (frozen scale,
        no output bias), `x` = the block's input."""
        W = _rows(self.attn_out_proj(L)).double()  # [n_heads · d_head, d_model]
        d_head = W.shape[0] // self.n_heads
        z = rec[("z", L)].double()
        vecs = torch.stack([z[h * d_head : (h + 1) * d_head] @ W[h * d_head : (h + 1) * d_head] for h in range(self.n_heads)])
        x = rec[("x", L)].double()
        return self.readout(rec, x + self.sublayer(rec, L, "attn", vecs))[:, w] - self.readout(rec, x)[w]


    def neuron_importance_other(self, rec: dict, rec_other: dict, L: int, w: int) -> torch.Tensor:
        """`neuron_importance` of the run `rec_other` (e.g. a head zeroed) read with the final norm's
        scale of the original run `rec` (CNA's default `scale="original"`); everything else —
        the residual, the coefficient scores, the post-norms' scales — is the other run's own."""
        return self.neuron_importance({**rec_other, "final": rec["final"]}, L, w)

    # ------------------------------------------------------------ one attention layer on one position
    def _pre_attn_norm(self, L: int) -> torch.nn.Module | None:
        layer = self.layers[L]
        return next((getattr(layer, n) for n in ("input_layernorm", "ln_1") if hasattr(layer, n)), None)  # OLMo 2: none

    def _attention(self, L: int) -> torch.nn.Module:
        layer = self.layers[L]
        return next(getattr(layer, n) for n in ("self_attn", "attention", "attn") if hasattr(layer, n))

    @torch.no_grad()
    def _attention_on(self, L: int, x: torch.Tensor) -> torch.Tensor:
        """`[n, d_model]`: layer `L`'s HF attention module run on `n` one-position sequences whose
        attention input (after the pre-attention norm) is `x[i]` — the model runs on dummy tokens and a
        hook swaps the module's input. On one position every head attends to it with weight 1."""
        mod, out = self._attention(L), {}

        def swap(module, args, kwargs):
            if args:
                return (x[:, None, :].to(args[0].dtype),) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x[:, None, :].to(kwargs["hidden_states"].dtype)}

        def keep(module, args, o):
            out["o"] = (o[0] if isinstance(o, tuple) else o)[:, 0].detach().clone()

        handles = [mod.register_forward_pre_hook(swap, with_kwargs=True), mod.register_forward_hook(keep)]
        try:
            self.hf(torch.zeros(x.shape[0], 1, dtype=torch.long))
        finally:
            for hd in handles:
                hd.remove()
        return out["o"].double()

    @torch.no_grad()
    def vo_transform(self, L: int, v: torch.Tensor) -> torch.Tensor:
        """`[n, d_model]`: each vector `v[i]`, as the only position's residual, through attention layer
        `L`'s value-output path, up to a positive factor per vector: the HF pre-attention norm (its
        `1/rms` or `1/σ` is that factor; a LayerNorm's bias, constant, dropped), the HF attention with
        its biases' part (its output on a zero input) subtracted, and on post-norm families the HF
        post-attention norm (its `1/rms` again a positive factor)."""
        v = v.float()
        norm = self._pre_attn_norm(L)
        x = v if norm is None else norm(v) - (norm.bias if getattr(norm, "bias", None) is not None else 0.0)
        y = self._attention_on(L, x) - self._attention_on(L, torch.zeros_like(x))
        if self.family in POST_NORM:
            y = self.layers[L].post_attention_layernorm(y.float()).double()
        return y

    @torch.no_grad()
    def logit_directions(self, rec: dict, ids: list[int]) -> torch.Tensor:
        """`[len(ids), d_model]`: the direction of a residual vector (at the final position) that raises each
        token's logit, `∂ logit_t / ∂x`, with the final norm's scale frozen at `rec`'s value (a positive
        factor); before any soft-cap."""
        W = self.lm_head.weight.double()
        rows = []
        for t in ids:
            x = torch.zeros(W.shape[1], dtype=torch.float64, requires_grad=True)
            with torch.enable_grad():
                (_frozen_norm(self.final_norm, x, rec["final"]) @ W[t]).backward()
            rows.append(x.grad)
        return torch.stack(rows)

    def readable(self, v: torch.Tensor) -> torch.Tensor:
        """`v` with what the final norm ignores removed: centred before a LayerNorm, unchanged before an RMSNorm."""
        v = v.double()
        return v - v.mean(-1, keepdim=True) if isinstance(self.final_norm, torch.nn.LayerNorm) else v

    @torch.no_grad()
    def end_outputs(self, tokens: torch.Tensor) -> dict:
        """Every node's output at the last position: `("z", L)` the input of layer `L`'s attention output
        projection (all heads' `z`), `("mlp", L)` the output of its MLP module (before any post-norm)."""
        out, handles = {}, []

        def keep_in(key):
            return lambda module, args: out.__setitem__(key, args[0][0, -1].detach().clone())

        def keep_out(key):
            return lambda module, args, o: out.__setitem__(key, (o[0] if isinstance(o, tuple) else o)[0, -1].detach().clone())

        for L, layer in enumerate(self.layers):
            handles.append(self.attn_out_proj(L).register_forward_pre_hook(keep_in(("z", L))))
            handles.append(layer.mlp.register_forward_hook(keep_out(("mlp", L))))
        try:
            self.hf(tokens)
        finally:
            for hd in handles:
                hd.remove()
        return out

    @torch.no_grad()
    def activation_patched(self, tokens: torch.Tensor, cf: dict, node: tuple[int, int | None]) -> torch.Tensor:
        """Last-position logits of `tokens` with one node's output at the last position replaced by the
        counterfactual's (`cf` = `end_outputs` of the counterfactual): head `(L, h)` — its slice of the
        attention output projection's input; MLP `(L, None)` — the MLP module's output. Every later
        component recomputes (plain activation patching)."""
        L, h = node
        if h is not None:
            proj = self.attn_out_proj(L)
            d_head = _rows(proj).shape[0] // self.n_heads
            sl = slice(h * d_head, (h + 1) * d_head)

            def fn(module, args):
                z = args[0].clone()
                z[0, -1, sl] = cf[("z", L)][sl]
                return (z,) + tuple(args[1:])

            handle = proj.register_forward_pre_hook(fn)
        else:

            def fn(module, args, o):
                o = o.clone()
                o[0, -1] = cf[("mlp", L)]
                return o

            handle = self.layers[L].mlp.register_forward_hook(fn)
        try:
            return self.hf(tokens).logits[0, -1].double()
        finally:
            handle.remove()

    @torch.no_grad()
    def path_patched(self, rec: dict, rec_cf: dict, node: tuple[int, int | None]) -> torch.Tensor:
        """Last-position logits when only the direct path of one node is patched (Algorithm 1): the node's
        output at the last position changes from the reference's to the counterfactual's (`record`s of
        the two prompts) and that change is added to the final residual, which the final norm (recomputed,
        not frozen), `lm_head` and any soft-cap read. Head `(L, h)`: `z_h · W_O[h]`; MLP `(L, None)`: the
        down projection's output."""
        L, h = node
        if h is None:
            delta = rec_cf[("m_out", L)].double() - rec[("m_out", L)].double()
        else:
            W = _rows(self.attn_out_proj(L)).double()
            sl = slice(h * (W.shape[0] // self.n_heads), (h + 1) * (W.shape[0] // self.n_heads))
            delta = (rec_cf[("z", L)].double()[sl] - rec[("z", L)].double()[sl]) @ W[sl]
        logits = self.lm_head(self.final_norm((rec["final"].double() + delta).float())).double()
        cap = getattr(self.cfg, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def coef_gradient(self, rec: dict, L: int, k: int) -> torch.Tensor:
        """`[d_model]`: `∂ m_k / ∂ x` of neuron `k` of layer `L` at the last position with respect to the
        residual `x` its MLP reads (the block's input plus its attention's output; sequential pre-norm
        blocks only), with the pre-MLP norm's scale frozen at its value in `rec`: the HF MLP module run on
        the frozen norm of `x`, `m_k` read at its down projection's input."""
        assert self.family not in POST_NORM and self.family != "gpt_neox", "sequential pre-norm blocks only"
        layer = self.layers[L]
        norm = layer.ln_2 if hasattr(layer, "ln_2") else layer.post_attention_layernorm
        base = self.neuron_base(rec, L)
        x = base.clone().requires_grad_(True)
        seen = {}
        handle = self.mlp_down_proj(L).register_forward_pre_hook(lambda module, args: seen.__setitem__("m", args[0]))
        try:
            with torch.enable_grad():
                layer.mlp(_frozen_norm(norm, x, base).float()[None, None])
                seen["m"][0, 0, k].backward()
        finally:
            handle.remove()
        return x.grad

    @torch.no_grad()
    def end_attention(self, tokens: torch.Tensor, L: int, h: int) -> torch.Tensor:
        """`[pos]`: head `h` of layer `L`'s attention weights from the last position (HF eager attention)."""
        return self.hf(tokens, output_attentions=True).attentions[L][0, h, -1].double()


# ---------------------------------------------------------------------------- the checks
def _dataset(fam: Family):
    """arithlens's cases of PROMPTS → ANSWERS, and the brute force's own `[1, pos]` tokens and target id of each."""
    from arithlens.data import prompts

    ds = prompts(fam.model.tokenizer, PROMPTS, ANSWERS)
    tokens = [torch.tensor([fam.tok.encode(p)]) for p in PROMPTS]
    targets = torch.tensor([fam.tok.encode(a)[0] for a in ANSWERS])  # the prompts end in "=": the answer's first character
    assert [tuple(c.input_ids) for c in ds] == [tuple(t[0].tolist()) for t in tokens]
    assert [c.target_id for c in ds] == targets.tolist()
    return ds, tokens, targets


def _close(got: torch.Tensor, ref: torch.Tensor, what: str, unit: str = "nats") -> None:
    diff = (got.double() - ref.double()).abs()
    worst = float(diff.max())
    assert worst < ATOL, f"{what}: max |Δ| {worst:.3g} {unit} at {tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])} (max |ref| {float(ref.abs().max()):.3g})"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_brute_force_rebuilds_the_model(families, family):
    """The brute force's own pieces (block input + sublayer contributions, frozen final norm, lm_head,
    soft-cap) rebuild every block's output and the logits of the HF model: its definitions are the model's."""
    fam = families(family)
    for prompt in PROMPTS:
        fam.bf.check_record(fam.bf.record(torch.tensor([fam.tok.encode(prompt)])))


@pytest.mark.parametrize("family", _params("forward"))
def test_forward(families, family):
    """Last-position log-probs (`last_logits`), and `cache`'s target log-probs and predictions."""
    fam = families(family)
    ds, tokens, targets = _dataset(fam)
    cache = fam.model.cache(ds, memo=False)
    ref = torch.stack([fam.bf.log_probs(t) for t in tokens])
    got = torch.stack([fam.model.last_logits(t)[0] for t in tokens]).double().log_softmax(-1)
    _close(got, ref, "log-probs")
    _close(cache.target_logprob, ref.gather(-1, targets[:, None])[:, 0], "target log-probs")
    assert cache.predictions.tolist() == ref.argmax(-1).tolist()


@pytest.mark.parametrize("family", _params("forward"))
def test_evaluate_full_answers(families, family):
    """`evaluate`'s whole-answer outcomes (one teacher-forced pass, only the answer's positions
    unembedded) = greedy decoding by hand on the HF model; its first tokens = the HF argmax."""
    from arithlens.analysis.evaluation import evaluate

    fam = families(family)
    ds, tokens, _ = _dataset(fam)
    greedy = []
    with torch.no_grad():
        for t in tokens:
            seq = t
            for _ in range(3):
                seq = torch.cat([seq, fam.hf(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
            greedy.append(tuple(seq[0, -3:].tolist()))
    V = fam.model.d_vocab
    right = [dataclasses.replace(c, answer_ids=g, target_id=g[0]) for c, g in zip(ds, greedy)]
    wrong = [dataclasses.replace(c, answer_ids=(g[0], (g[1] + 1) % V, g[2]), target_id=g[0]) for c, g in zip(ds, greedy)]
    ev = evaluate(fam.model, right + wrong)
    assert ev.cases["full_correct"].tolist() == [True] * len(right) + [False] * len(wrong)
    assert ev.cases["predicted_token"].tolist() == [g[0] for g in greedy] * 2


@pytest.mark.parametrize("family", _params("zero_head"))
def test_zero_head(families, family):
    """`ZeroHead(L, h)` = head h's slice of the HF output projection's input zeroed at every position."""
    from arithlens.core.interventions import ZeroHead

    fam = families(family)
    ds, tokens, targets = _dataset(fam)
    for L, h in [(0, 1), (1, 3)]:
        cache = fam.model.cache(ds, interventions=[ZeroHead(L, h)])
        ref = torch.stack([fam.bf.log_probs(t, zero_head=(L, h)) for t in tokens])
        _close(cache.target_logprob, ref.gather(-1, targets[:, None])[:, 0], f"ZeroHead({L}, {h}) target log-probs")
        assert cache.predictions.tolist() == ref.argmax(-1).tolist()


def _importance(fam: Family):
    """arithlens's §4.1 result on PROMPTS, and the brute force's neuron scores `[case, layer, d_mlp]`,
    head scores `[case, layer, head]` and `log p(w)` `[case]` (computed once per family)."""
    if fam._importance is None:
        from arithlens.cna import NeuronImportance

        res = NeuronImportance(top_tokens=0).run(fam.model, PROMPTS)
        neurons, heads, logprob = [], [], []
        for i, prompt in enumerate(PROMPTS):
            rec = fam.bf.record(torch.tensor([fam.tok.encode(prompt)]))
            w = int(rec["logits"].argmax())
            assert int(res.w[i]) == w  # the scored token: the model's own top prediction
            n_layers = len(fam.bf.layers)
            neurons.append(torch.stack([fam.bf.neuron_importance(rec, L, w) for L in range(n_layers)]))
            heads.append(torch.stack([fam.bf.head_importance(rec, L, w) for L in range(n_layers)]))
            logprob.append(rec["logits"].double().log_softmax(-1)[w])
        fam._importance = (res, torch.stack(neurons), torch.stack(heads), torch.stack(logprob))
    return fam._importance


@pytest.mark.parametrize("family", _params("readout"))
def test_importance_readout(families, family):
    """`ImportanceResult.logprob` (the frozen-scale readout of the final residual at its own scale) is the model's `log p(w)`."""
    res, _, _, logprob = _importance(families(family))
    _close(res.logprob, logprob, "log p(w)")


@pytest.mark.parametrize("family", _params("neurons"))
def test_neuron_importance(families, family):
    """Every neuron of every layer, on every prompt."""
    res, ref, _, _ = _importance(families(family))
    assert float(ref.abs().max()) > 0.05  # the scores are not all ~0: the check has teeth
    _close(res.importance, ref, "neuron importance [case, layer, neuron]")


@pytest.mark.parametrize("family", _params("heads"))
def test_head_importance(families, family):
    """Every head of every layer, on every prompt."""
    res, _, ref, _ = _importance(families(family))
    assert float(ref.abs().max()) > 0.05
    _close(res.head_importance, ref, "head importance [case, layer, head]")


def test_cli_cna_in_bfloat16_on_gemma2_matches_the_brute_force(families, tmp_path):
    """`arithlens cna --model DIR --dtype bfloat16 --prompt "3+5=" --ablate-head 1.1` on a saved
    Gemma 2 (post-norms, soft-capping): its `importance` column is the brute force's, to bf16 precision."""
    import pandas as pd

    from arithlens.app.cli import main

    fam = families("gemma2")
    out = tmp_path / "cna.csv"
    argv = ["cna", "--model", fam.path, "--dtype", "bfloat16", "--prompt", "3+5=", "--target", "8", "--ablate-head", "1.1",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    df = pd.read_csv(out)
    tokens = torch.tensor([fam.tok.encode("3+5=")])
    rec = fam.bf.record(tokens)
    w = fam.tok.encode("8")[0]
    for L in range(fam.model.n_layers):
        ref = fam.bf.neuron_importance(rec, L, w)
        got = df[df["layer"] == L].sort_values("neuron")["importance"].to_numpy()
        assert float((torch.tensor(got) - ref).abs().max()) < 0.05, L  # bf16 weights and activations
    assert float(ref.abs().max()) > 0.05


# ---------------------------------------------------------------------------- every other analysis
GATED = {"llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "olmo2"}
"""Families whose MLP is gated with separate `gate_proj`, `up_proj`, `down_proj` (Phi-3 fuses
`gate_up_proj`; GPT-2 and GPT-NeoX are not gated): pruning and bias editing slice these."""

FUSED_ATTENTION = {"gpt2", "gpt_neox", "phi3"}
"""Families without separate `q_proj`…`o_proj` (`c_attn`, `query_key_value`, `qkv_proj`): LoRA refuses them."""

PARALLEL = {"gpt_neox"}

HEAD = (1, 1)
"""The head CNA and the analyses built on it compare against (`intervention="1.1"`)."""

PAIRS = ["12+34=", "31+25="]
"""Reference prompts of the circuits analyses (two-digit operands around one operator)."""


def _refuses(fam: Family, run, what: str) -> None:
    """`run()` raises a one-line `ValueError` naming the family (its transformers architecture)."""
    with pytest.raises(ValueError) as err:
        run()
    msg, arch = str(err.value), fam.hf.config.architectures[0]
    assert "\n" not in msg, f"{what}: the ValueError is not one line: {msg!r}"
    assert arch in msg, f"{what}: the ValueError does not name the family {arch}: {msg!r}"


def _cna(fam: Family):
    """arithlens's CNA of PROMPTS against head 1.1 zeroed (exact; computed once per family, reused by
    MaskKeep and the PE-DAG as `cna=`)."""
    if fam._cna is None:
        from arithlens.cna import ComparativeNeuronScores

        fam._cna = ComparativeNeuronScores(intervention="1.1", mode="exact", top_tokens=0, progress=False).run(fam.model, PROMPTS)
    return fam._cna


@pytest.mark.parametrize("family", _params("cna"))
def test_comparative_neuron_scores(families, family):
    """`ComparativeNeuronScores(intervention="1.1")`: on the original side `importance` is the neuron
    brute force and `coef` the down projection's input; on the other side `importance_other` is the
    brute force on the HF model with head 1.1 zeroed at every position, read with the ORIGINAL
    run's final-norm scale (`scale="original"`) for the original run's top token, and `coef_other`
    the down projection's input of that run. Every neuron of both layers, every prompt."""
    fam = families(family)
    res = _cna(fam)
    imp, coef, imp_o, coef_o = [], [], [], []
    for i, prompt in enumerate(PROMPTS):
        tokens = torch.tensor([fam.tok.encode(prompt)])
        rec, rec_o = fam.bf.record(tokens), fam.bf.record(tokens, zero_head=HEAD)
        w = int(rec["logits"].argmax())
        assert int(res.w[i]) == w  # fixed from the original side
        layers = range(len(fam.bf.layers))
        imp.append(torch.stack([fam.bf.neuron_importance(rec, L, w) for L in layers]))
        imp_o.append(torch.stack([fam.bf.neuron_importance_other(rec, rec_o, L, w) for L in layers]))
        coef.append(torch.stack([rec[("m", L)] for L in layers]))
        coef_o.append(torch.stack([rec_o[("m", L)] for L in layers]))
    imp, imp_o, coef, coef_o = map(torch.stack, (imp, imp_o, coef, coef_o))
    assert float((imp_o - imp)[:, 1].abs().max()) > 0.05  # zeroing the head changes layer 1's scores: the check has teeth
    _close(res.importance, imp, "CNA importance [case, layer, neuron]")
    _close(res.importance_other, imp_o, "CNA importance_other (head 1.1 zeroed) [case, layer, neuron]")
    _close(res.coef, coef, "CNA coef", "")
    _close(res.coef_other, coef_o, "CNA coef_other", "")


@pytest.mark.parametrize("family", _params("fast"))
def test_neuron_importance_fast_rescored(families, family):
    """`NeuronImportance(mode="fast", rescore=20)`: `exact` marks 20 re-scored neurons per case and
    their scores are the brute force's."""
    from arithlens.cna import NeuronImportance

    fam = families(family)
    _, ref, _, _ = _importance(fam)
    res = NeuronImportance(mode="fast", rescore=20, top_tokens=0, progress=False).run(fam.model, PROMPTS)
    assert res.exact is not None and res.exact.shape == ref.shape
    assert res.exact.flatten(1).sum(1).tolist() == [20] * len(PROMPTS)
    _close(res.importance[res.exact], ref[res.exact], "fast mode's re-scored importance")


@pytest.mark.parametrize("family", _params("mask_keep"))
def test_mask_keep(families, family):
    """`MaskKeep(intervention="1.1", k=(5,), correct_only=False)` on prompts without answers (the
    reference is the original prediction): its mask and keep accuracies are the brute force's —
    each case's top-5 CNA neurons zeroed at every position (mask), or every other neuron of the
    keep layers (keep)."""
    from arithlens.cna import MaskKeep

    fam = families(family)
    cna = _cna(fam)
    res = MaskKeep(intervention="1.1", k=(5,), correct_only=False, mode="exact", progress=False).run(fam.model, PROMPTS, cna=cna)
    top = cna.top_mask(5)
    assert res.baseline_accuracy == 1.0 and res.keep_layers == [1]
    hits = {"mask": [], "keep": []}
    for i, prompt in enumerate(PROMPTS):
        tokens = torch.tensor([fam.tok.encode(prompt)])
        pred = int(fam.bf.logits(tokens).argmax())
        masked = fam.bf.logits(tokens, zero_neurons={L: top[i, L] for L in range(top.shape[1])})
        kept = fam.bf.logits(tokens, zero_neurons={1: ~top[i, 1]})
        hits["mask"].append(int(masked.argmax()) == pred)
        hits["keep"].append(int(kept.argmax()) == pred)
    for measure, ok in hits.items():
        got = float(res.df.query("measure == @measure")["accuracy"].iloc[0])
        assert got == pytest.approx(sum(ok) / len(ok)), measure


@pytest.mark.parametrize("family", _params("vo"))
def test_vo_transform(families, family):
    """`VOTransform.transform(model, v, 1)` points where the brute force's `vo_transform` does (the
    module drops the norms' scales by design: directions are compared). On LayerNorm families both
    are centred first: arithlens's writing weights are centred by compatibility mode and the final
    LayerNorm removes the mean anyway."""
    from arithlens.cna import VOTransform

    fam = families(family)
    v = torch.randn(4, fam.model.d_model, generator=torch.Generator().manual_seed(1))
    got = VOTransform(upto_layer=1, k=10, progress=False).transform(fam.model, v, 1).double()
    ref = fam.bf.vo_transform(1, v)
    if isinstance(fam.bf.final_norm, torch.nn.LayerNorm):
        got, ref = got - got.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert float(cos.min()) > 0.9999, f"cosine of T(v) with the brute force: {cos.tolist()}"


def _activation_patching(fam: Family):
    """arithlens's `PathPatching(method="activation", logprobs=True)` on PAIRS, and the brute force's
    reference log-prob `[pair]`, patched log-probs `[node, pair]`, and the same as logits — the HF
    logits on every family (arithlens never centres the unembedding) — computed once per family."""
    if fam._patching is None:
        from arithlens.circuits import PathPatching, counterfactual_pairs

        pairs = counterfactual_pairs(fam.model, PAIRS)
        res = PathPatching(method="activation", logprobs=True, progress=False).run(fam.model, pairs)
        n = (len(res.nodes), len(PAIRS))
        lp_o, lg_o = (torch.zeros(n[1:], dtype=torch.float64) for _ in range(2))
        lp_p, lg_p = (torch.zeros(n, dtype=torch.float64) for _ in range(2))
        for i, (prompt, cf) in enumerate(zip(PAIRS, pairs.to_frame()["counterfactual"])):
            tokens = torch.tensor([fam.tok.encode(prompt)])
            clean = fam.bf.logits(tokens)
            w = int(clean.argmax())  # the prompts have no answers: the target is the prediction
            lp_o[i], lg_o[i] = clean.log_softmax(-1)[w], clean[w]
            outs = fam.bf.end_outputs(torch.tensor([fam.tok.encode(cf)]))
            for j, node in enumerate(res.nodes):
                patched = fam.bf.activation_patched(tokens, outs, (node.layer, node.head))
                lp_p[j, i], lg_p[j, i] = patched.log_softmax(-1)[w], patched[w]
        assert float((lp_p - lp_o[None]).abs().max()) > 0.01  # some node matters: the check has teeth
        fam._patching = (res, lp_o, lp_p, lg_o, lg_p)
    return fam._patching


@pytest.mark.parametrize("family", _params("patch_activation"))
def test_path_patching_activation(families, family):
    """`PathPatching(method="activation")`: the reference and patched target log-probs are the HF
    model's with each node's output at the last position replaced by the counterfactual's (a head's
    `z` slice, an MLP module's output) and every later component recomputed; every node, both pairs."""
    fam = families(family)
    if family == "gemma2":  # soft-capped logits: the paper's ratio is not defined on them
        from arithlens.circuits import PathPatching, counterfactual_pairs

        _refuses(fam, lambda: PathPatching(method="activation", progress=False).run(fam.model, counterfactual_pairs(fam.model, PAIRS)), "PathPatching")
        return
    res, lp_o, lp_p, _, _ = _activation_patching(fam)
    _close(res.logprob_p, lp_p, "activation patching: patched log-probs [node, pair]")
    _close(res.logprob_o, lp_o, "activation patching: reference log-prob")


@pytest.mark.parametrize("family", _params("patch_logits"))
def test_path_patching_logits(families, family):
    """`PathPatching`'s logits (`logit_o`, `logit_p`, whose ratio is `effect`) are, as its docstring says,
    the HF model's own (uncentred) logits on every family (Gemma 2, which soft-caps, is refused: see
    `test_path_patching_activation`)."""
    if family == "gemma2":
        return
    res, _, _, lg_o, lg_p = _activation_patching(families(family))
    _close(res.logit_o, lg_o, "activation patching: reference logit (HF)", "logit")
    _close(res.logit_p, lg_p, "activation patching: patched logits (HF)", "logit")


@pytest.mark.parametrize("family", _params("patch_path"))
def test_path_patching_path(families, family):
    """`PathPatching(method="path")`: `ValueError` on post-norm families; elsewhere each node's patched
    log-prob is the brute force's direct path (`BruteForce.path_patched`), every node, both pairs."""
    from arithlens.circuits import PathPatching, counterfactual_pairs

    fam = families(family)
    pairs = counterfactual_pairs(fam.model, PAIRS)
    run = lambda: PathPatching(method="path", logprobs=True, progress=False).run(fam.model, pairs)  # noqa: E731
    if family in POST_NORM:
        _refuses(fam, run, "PathPatching(method='path')")
        return
    res = run()
    ref = torch.zeros(len(res.nodes), len(PAIRS), dtype=torch.float64)
    for i, (prompt, cf) in enumerate(zip(PAIRS, pairs.to_frame()["counterfactual"])):
        rec, rec_cf = fam.bf.record(torch.tensor([fam.tok.encode(prompt)])), fam.bf.record(torch.tensor([fam.tok.encode(cf)]))
        w = int(rec["logits"].argmax())
        for j, node in enumerate(res.nodes):
            ref[j, i] = fam.bf.path_patched(rec, rec_cf, (node.layer, node.head)).log_softmax(-1)[w]
    assert float((ref - res.logprob_o[None].double()).abs().max()) > 0.01
    _close(res.logprob_p, ref, "path patching: patched log-probs [node, pair]")


@pytest.mark.parametrize("family", _params("end_attention"))
def test_end_attention(families, family):
    """`EndAttention(heads=["1.0"])`: each role's attention is the HF eager attention of head 1.0 from
    the last position summed over that role's positions (operand A: the digits before the operator,
    B: the digits after it, the operator, the rest), averaged over the prompts."""
    from arithlens.circuits import EndAttention

    fam = families(family)
    res = EndAttention(heads=["1.0"]).run(fam.model, PAIRS)
    ref = {"A": 0.0, "B": 0.0, "operator": 0.0, "other": 0.0}
    for prompt in PAIRS:
        ids = fam.tok.encode(prompt)
        chars = fam.tok.convert_ids_to_tokens(ids)
        row = fam.bf.end_attention(torch.tensor([ids]), 1, 0)
        op = chars.index("+")
        for j, c in enumerate(chars):
            role = "operator" if j == op else ("A" if j < op else "B") if c.isdigit() else "other"
            ref[role] += float(row[j]) / len(PAIRS)
    got = res.df.query("layer == 1 and head == 0").set_index("role")["attention"]
    for role, value in ref.items():
        assert float(got[role]) == pytest.approx(value, abs=1e-5), role


@pytest.mark.parametrize("family", _params("mlp_probe"))
def test_mlp_probe(families, family):
    """`MLPProbe(layers=[0, 1])`: each cosine is, as its docstring defines it, between `MLP_in` (the
    residual the MLP's output is added to), `MLP_out` (what the MLP adds) or their difference at the
    last position and the direction that raises the token's logit (`BruteForce.logit_directions`; the
    unembedding is never centred); vectors as the final norm reads them (`BruteForce.readable`)."""
    from arithlens.circuits import MLPProbe

    fam = families(family)
    res = MLPProbe(layers=[0, 1]).run(fam.model, PAIRS)
    ref = torch.zeros(res.per_case.shape, dtype=torch.float64)
    for i, prompt in enumerate(PAIRS):
        rec = fam.bf.record(torch.tensor([fam.tok.encode(prompt)]))
        assert int(res.token_ids[i, 2]) == int(rec["logits"].argmax())  # C: the prediction (no answers given)
        dirs = fam.bf.logit_directions(rec, res.token_ids[i].tolist())
        for j, L in enumerate((0, 1)):
            mlp_in, mlp_out = fam.bf.neuron_base(rec, L), fam.bf.sublayer(rec, L, "mlp", rec[("m_out", L)])
            for q, v in enumerate((mlp_in, mlp_out, mlp_out - mlp_in)):
                ref[i, j, q] = torch.nn.functional.cosine_similarity(fam.bf.readable(v)[None], dirs, dim=-1)
    _close(res.per_case, ref, "MLPProbe cosines [case, layer, quantity, token]", "cosine")


@pytest.mark.parametrize("family", _params("pe_dag"))
def test_pe_dag(families, family):
    """`PredictionEnhancingDAG`: `ValueError` on parallel and post-norm families; on plain ones every
    scored pair's `drive` is `m_a · fc2_a · ∂m_b/∂x` from the HF modules (`BruteForce.coef_gradient`:
    the pre-MLP norm's scale frozen) and `relative_drive` is `drive · sign(m_b) / |m_b|`."""
    from arithlens.cna import PredictionEnhancingDAG

    fam = families(family)
    dag = PredictionEnhancingDAG(intervention="1.1", k=5, k_table=(), mode="exact", progress=False)
    if family in POST_NORM | PARALLEL:
        _refuses(fam, lambda: dag.run(fam.model, PROMPTS), "PredictionEnhancingDAG")
        return
    assert len(dag.run(fam.model, PROMPTS, cna=_cna(fam)).nodes) > 0
    # Zeroing head 1.1 leaves layer 0's scores as they are, so that DAG's nodes all lie in layer 1 and
    # it has no pair to score: the drive is checked on the DAG against head 0.1.
    res = PredictionEnhancingDAG(intervention="0.1", k=10, k_table=(), mode="exact", progress=False).run(fam.model, PROMPTS)
    assert len(res.pairs) > 0
    for r in res.pairs.itertuples():
        rec = fam.bf.record(torch.tensor([fam.tok.encode(PROMPTS[r.case])]))
        fc2 = _rows(fam.bf.mlp_down_proj(r.src_layer)).detach().double()[r.src_neuron]
        drive = float(rec[("m", r.src_layer)][r.src_neuron]) * float(fc2 @ fam.bf.coef_gradient(rec, r.dst_layer, r.dst_neuron))
        m_b = float(rec[("m", r.dst_layer)][r.dst_neuron])
        assert r.drive == pytest.approx(drive, rel=1e-3, abs=1e-8), r
        assert r.relative_drive == pytest.approx(drive * (1 if m_b >= 0 else -1) / abs(m_b), rel=1e-3, abs=1e-6), r


@pytest.mark.parametrize("family", _params("logic_chain"))
def test_logic_chain(families, family):
    """`LogicChain`: runs on plain families (its head, its scored token — the HF model's prediction —
    and some rows), `ValueError` on parallel and post-norm ones."""
    from arithlens.cna import LogicChain

    fam = families(family)
    chain = LogicChain(intervention="1.1", k=3, k_shallow=3, mode="exact", progress=False)
    if family in POST_NORM | PARALLEL:
        _refuses(fam, lambda: chain.run(fam.model, PROMPTS[0]), "LogicChain")
        return
    res = chain.run(fam.model, PROMPTS[0])
    w = int(fam.bf.logits(torch.tensor([fam.tok.encode(PROMPTS[0])])).argmax())
    assert res.head == HEAD and res.prediction == fam.tok.convert_ids_to_tokens(w) and len(res.df) > 0


@pytest.mark.parametrize("family", _params("prune"))
def test_prune(families, family):
    """`prune(model, {1: [0, 1, 2]})`: on gated families the pruned model's logits are the HF model's
    with every other neuron of layer 1 zeroed; `ValueError` on the others."""
    from arithlens.cna import prune

    fam = families(family)
    if family not in GATED:
        _refuses(fam, lambda: prune(fam.model, {1: [0, 1, 2]}), "prune")
        return
    pruned = prune(fam.model, {1: [0, 1, 2]})
    others = [k for k in range(fam.model.d_mlp) if k not in (0, 1, 2)]
    for prompt in PROMPTS:
        tokens = torch.tensor([fam.tok.encode(prompt)])
        ref = fam.bf.logits(tokens, zero_neurons={1: others})
        _close(pruned.last_logits(tokens)[0], ref, f"pruned model's logits on {prompt!r}", "logit")


@pytest.mark.parametrize("family", _params("edit"))
def test_bias_edit(families, family):
    """`edit(model, {1: [0, 1, 2]})` (§6.2's editing): on gated families the edited model's logits are
    the HF model's with those neurons zeroed; `ValueError` on the others."""
    from arithlens.cna import edit

    fam = families(family)
    if family not in GATED:
        _refuses(fam, lambda: edit(fam.model, {1: [0, 1, 2]}), "edit")
        return
    edited = edit(fam.model, {1: [0, 1, 2]})
    for prompt in PROMPTS:
        tokens = torch.tensor([fam.tok.encode(prompt)])
        ref = fam.bf.logits(tokens, zero_neurons={1: [0, 1, 2]})
        _close(edited.last_logits(tokens)[0], ref, f"edited model's logits on {prompt!r}", "logit")


@pytest.mark.parametrize("family", _params("lora"))
def test_lora_refuses_fused_attention(families, family):
    """LoRA (§5): `lora_layer_sweep` refuses families with fused attention projections before any work;
    the check passes on the others (training itself is not run here)."""
    from arithlens.cna import lora_layer_sweep
    from arithlens.cna.lora import check_attention_projections

    fam = families(family)
    if family in FUSED_ATTENTION:
        _refuses(fam, lambda: lora_layer_sweep(fam.model), "lora_layer_sweep")
    else:
        check_attention_projections(fam.model)


@pytest.mark.parametrize("family", _params("head_ablation"))
def test_head_ablation(families, family):
    """`HeadAblation(layers=[1])`: each head's target log-prob under ablation is the HF model's with the
    head zeroed at every position, and its `logprob_drop` the mean drop from the clean log-prob."""
    from arithlens.cna import HeadAblation

    fam = families(family)
    ds, tokens, targets = _dataset(fam)
    res = HeadAblation(layers=[1], progress=False).run(fam.model, ds)
    assert res.heads == [(1, h) for h in range(fam.model.n_heads)]
    clean = torch.stack([fam.bf.log_probs(t)[w] for t, w in zip(tokens, targets)])
    ablated = torch.stack(
        [torch.stack([fam.bf.log_probs(t, zero_head=(1, h))[w] for t, w in zip(tokens, targets)]) for h in range(fam.model.n_heads)]
    )
    assert float((clean[None] - ablated).abs().max()) > 0.05
    _close(res.logprob, ablated, "HeadAblation log-probs [head, case]")
    for h in range(fam.model.n_heads):
        row = res.df.query("layer == 1 and head == @h")
        assert len(row) == 1
        assert float(row["logprob_drop"].iloc[0]) == pytest.approx(float((clean - ablated[h]).mean()), abs=ATOL), h
