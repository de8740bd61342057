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

Known differences are strict xfails (see `XFAIL`): when a fix lands the mark must go.
"""

from __future__ import annotations

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

XFAIL: dict[tuple[str, str], tuple[type[BaseException], str]] = {}
"""(family, check) → (the exception arithlens raises, why): strict xfails for a known difference
(none today). A difference found later goes here with its size, and its fix removes the mark."""


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
        self._importance = None


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

    @torch.no_grad()
    def log_probs(self, tokens: torch.Tensor, zero_head: tuple[int, int] | None = None) -> torch.Tensor:
        """Last-position log-probabilities, optionally with one head's output zeroed at every position."""
        handles = []
        if zero_head is not None:
            L, h = zero_head
            proj = self.attn_out_proj(L)
            d_head = _rows(proj).shape[0] // self.n_heads

            def zero(module, args):
                z = args[0].clone()
                z[..., h * d_head : (h + 1) * d_head] = 0.0
                return (z,) + tuple(args[1:])

            handles.append(proj.register_forward_pre_hook(zero))
        try:
            logits = self.hf(tokens).logits[0, -1]
        finally:
            for hd in handles:
                hd.remove()
        return logits.double().log_softmax(-1)

    @torch.no_grad()
    def record(self, tokens: torch.Tensor) -> dict:
        """Last-position inputs and outputs of every layer, its projections and the final norm."""
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


def _close(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    diff = (got.double() - ref.double()).abs()
    worst = float(diff.max())
    assert worst < ATOL, f"{what}: max |Δ| {worst:.3g} nats at {tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])} (max |ref| {float(ref.abs().max()):.3g})"


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
