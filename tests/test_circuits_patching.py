"""counterfactual pairs and path / activation patching (Zhang et al. §4.1, Algorithm 1)."""

import math

import pytest
import torch
from conftest import assert_untouched, model_state

from arithlens import data
from arithlens.circuits import counterfactual_pairs, PathPatching
from arithlens.circuits.operands import locate, token_roles
from arithlens.circuits.path_patching import MLP
from arithlens.core.names import Component


@pytest.fixture(scope="module")
def cases(tiny):
    return data.arithmetic(tiny.tokenizer, ops="+-", digits=(1, 2), templates=(1, 3, 4), forms=("numeral",), n_per_op=1)


@pytest.fixture(scope="module")
def pairs(tiny, cases):
    return counterfactual_pairs(tiny, cases)


# ----------------------------------------------------------------------------- pairs
def test_pairs_replace_the_operator_word_and_keep_length(tiny, cases, pairs):
    assert len(pairs) == len(cases)
    for row, ref, cf in zip(pairs.to_frame().itertuples(), pairs.reference_ids, pairs.counterfactual_ids):
        assert len(ref) == len(cf)
        assert row.word in row.prompt and row.replacement in row.counterfactual
        assert row.prompt.replace(row.word, row.replacement, 1) == row.counterfactual
    words = dict(zip(pairs.to_frame()["template"], pairs.to_frame()["word"]))
    assert words[1] in ("sum", "difference") and words[3] in ("plus", "minus") and words[4] in ("+", "-")
    assert (pairs.target_ids == torch.tensor([c.target_id for c in cases])).all()


def test_pairs_of_bare_prompts(tiny):
    pairs = counterfactual_pairs(tiny, ["12+34=", "7 times 8 is"])
    assert pairs.to_frame()["word"].tolist() == ["+", "times"]
    assert [len(x) for x in pairs.counterfactual_ids] == [len(x) for x in pairs.reference_ids]


def test_length_mismatch_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"'3 plus 5 is' \(11 tokens\).*has 15 tokens"):
        counterfactual_pairs(tiny, ["3 plus 5 is"], replacement="nowhere!")
    with pytest.raises(ValueError, match="no operator word"):
        counterfactual_pairs(tiny, ["hello world"])
    with pytest.raises(ValueError, match="candidate kinds"):
        counterfactual_pairs(tiny, ["3+5="], candidates={"verbs": ["x"]})


def test_locate_and_token_roles(tiny):
    case = data.arithmetic(tiny.tokenizer, ops="+", digits=2, templates=[1], forms=["word"], n_per_op=1)[0]
    spans = locate(case)
    assert case.prompt[slice(*spans.op)] == "sum"
    roles = token_roles(tiny.tokenizer, case.input_ids, spans)
    text = "".join(tiny.decode([t]) for t in case.input_ids)
    a_text = "".join(ch for ch, r in zip(text, roles) if r == "A")
    assert a_text == case.prompt[slice(*spans.a)].replace(" ", "")
    # the space before an operand is "other" (SmolLM2's bare ' ' token)
    assert roles[spans.a[0] - 1] == "other"


# ------------------------------------------------------------------- naive references
def _capture(model, tokens):
    acts = {}

    def grab(name):
        def fn(x, hook):
            acts[name] = x.detach().clone()

        return fn

    hooks = []
    for L in range(model.n_layers):
        hooks += [(f"blocks.{L}.attn.hook_z", grab(("z", L))), (f"blocks.{L}.hook_mlp_out", grab(("mlp", L)))]
    with model.hooked(hooks), torch.no_grad():
        model.bridge(tokens)
    return acts


def _naive_path_logit(model, ref, cf, target, node, r=None, c=None):
    """Algorithm 1 literally: every node's output set to its reference value, node n's END output to X_c's."""
    r, c = r or _capture(model, ref), c or _capture(model, cf)

    def set_z(L):
        def fn(z, hook):
            z[:] = r[("z", L)]
            if node.layer == L and not node.is_mlp:
                z[:, -1, node.head] = c[("z", L)][:, -1, node.head]
            return z

        return fn

    def set_mlp(L):
        def fn(x, hook):
            x[:] = r[("mlp", L)]
            if node == Component(L):
                x[:, -1] = c[("mlp", L)][:, -1]
            return x

        return fn

    hooks = [(f"blocks.{L}.attn.hook_z", set_z(L)) for L in range(model.n_layers)]
    hooks += [(f"blocks.{L}.hook_mlp_out", set_mlp(L)) for L in range(model.n_layers)]
    with model.hooked(hooks), torch.no_grad():
        return float(model.bridge(ref)[0, -1, target])


def _naive_activation_logit(model, ref, cf, target, node, all_positions, r=None, c=None):
    c = c or _capture(model, cf)
    pos = slice(None) if all_positions else slice(-1, None)
    L, h = node.layer, node.head
    if node.is_mlp:
        name = f"blocks.{L}.hook_mlp_out"

        def fn(x, hook):
            x[:, pos] = c[("mlp", L)][:, pos]
            return x

    else:
        name = f"blocks.{L}.attn.hook_z"

        def fn(z, hook):
            z[:, pos, h] = c[("z", L)][:, pos, h]
            return z

    with model.hooked([(name, fn)]), torch.no_grad():
        return float(model.bridge(ref)[0, -1, target])


def _check_against(model, pairs, result, naive, n_pairs=3):
    for i in range(n_pairs):
        ref = torch.tensor([pairs.reference_ids[i]])
        cf = torch.tensor([pairs.counterfactual_ids[i]])
        target = int(pairs.target_ids[i])
        with torch.no_grad():
            logit_o = float(model.bridge(ref)[0, -1, target])
        assert math.isclose(float(result.logit_o[i]), logit_o, rel_tol=1e-4, abs_tol=1e-4)
        r, c = _capture(model, ref), _capture(model, cf)
        for k, node in enumerate(result.nodes):
            logit_p = naive(model, ref, cf, target, node, r=r, c=c)
            assert math.isclose(float(result.logit_p[k, i]), logit_p, rel_tol=1e-4, abs_tol=1e-4), node
            assert math.isclose(float(result.effects[k, i]), (logit_p - logit_o) / logit_o, rel_tol=1e-3, abs_tol=1e-4)


# --------------------------------------------------------------------------- patching
def test_path_patching_equals_literal_algorithm_1(tiny, pairs):
    snap, n_hooks = model_state(tiny)
    result = PathPatching(progress=False, batch_size=4).run(tiny, pairs)
    assert_untouched(tiny, snap, n_hooks)
    assert len(result.df) == tiny.n_layers * (tiny.n_heads + 1)
    assert set(result.df.columns) >= {"layer", "node", "effect", "kind", "head", "logit_change"}
    assert set(result.df["node"]) == {*map(str, range(tiny.n_heads)), "mlp"}
    _check_against(tiny, pairs, result, _naive_path_logit)
    assert torch.allclose(torch.tensor(result.df["effect"].to_numpy()).float(), result.effects.mean(1), atol=1e-6)


@pytest.mark.parametrize("position", ["last", "all"])
def test_activation_patching_equals_naive_loop(tiny, cases, position):
    pairs = counterfactual_pairs(tiny, [c for c in cases if c.template == 3])
    snap, n_hooks = model_state(tiny)
    result = PathPatching(method="activation", position=position, progress=False, max_rows=7).run(tiny, pairs)
    assert_untouched(tiny, snap, n_hooks)
    naive = lambda m, ref, cf, t, n, **kw: _naive_activation_logit(m, ref, cf, t, n, position == "all", **kw)  # noqa: E731
    _check_against(tiny, pairs, result, naive, n_pairs=2)


def test_last_mlp_has_the_same_effect_under_both_definitions(tiny, pairs):
    last = (tiny.n_layers - 1, MLP)
    path = PathPatching(nodes=[last], logprobs=True, progress=False).run(tiny, pairs)
    act = PathPatching(nodes=[last], method="activation", progress=False).run(tiny, pairs)
    assert torch.allclose(path.effects, act.effects, atol=1e-4)
    assert torch.allclose(path.logprob_p, act.logprob_p, atol=1e-4)
    assert "logprob_change" in path.df and "logprob_change" not in PathPatching(nodes=[last], progress=False).run(tiny, pairs).df


def test_top_plot_and_by(tiny, pairs):
    result = PathPatching(progress=False).run(tiny, pairs)
    top = result.top(3)
    mags = result.df["effect"].abs().sort_values(ascending=False).to_numpy()
    assert list(top["effect"].abs()) == pytest.approx(mags[:3])
    nodes = result.top_components(3)
    assert [n.name for n in nodes] == list(top["name"])
    got = [abs(result.df.loc[result.nodes.index(n), "effect"]) for n in nodes]
    assert got == pytest.approx(mags[:3])
    assert all(n.is_mlp for n in result.top_components(2, kind="mlp"))
    assert set(result.top(2, kind="head")["kind"]) == {"head"}
    assert set(result.by("op")["op"]) == {"+", "-"}
    fig = result.plot()
    assert fig.data[0].z.shape == (tiny.n_layers, tiny.n_heads + 1)


def test_patching_bad_input(tiny, pairs):
    with pytest.raises(ValueError, match="method='direct'"):
        PathPatching(method="direct")
    with pytest.raises(ValueError, match="position='end' is not one of"):
        PathPatching(position="end")
    with pytest.raises(ValueError, match="layer=9 is out of range"):
        PathPatching(nodes=[(9, 0)]).run(tiny, pairs)
    with pytest.raises(ValueError, match="head=7 is out of range"):
        PathPatching(nodes=[(0, 7)]).run(tiny, pairs)
    with pytest.raises(ValueError, match="head='attn' must be an integer"):
        PathPatching(nodes=[(0, "attn")])


@pytest.mark.smollm2
def test_smollm2_patching_few_pairs(smollm2):
    cases = data.arithmetic(smollm2.tokenizer, ops="+", digits=2, templates=[3], forms=["numeral"], n_per_op=3)
    pairs = counterfactual_pairs(smollm2, cases)
    assert set(pairs.to_frame()["replacement"]) == {"nothing"}
    snap, n_hooks = model_state(smollm2)
    result = PathPatching(progress=False).run(smollm2, pairs)
    assert_untouched(smollm2, snap, n_hooks)
    assert len(result.df) == 30 * 10 and result.df["effect"].notna().all()
    # one literal Algorithm-1 check on a late head and the last MLP (no downstream nodes)
    ref, cf = torch.tensor([pairs.reference_ids[0]]), torch.tensor([pairs.counterfactual_ids[0]])
    target = int(pairs.target_ids[0])
    for node in [Component(29), Component(28, 3)]:
        k = result.nodes.index(node)
        assert math.isclose(float(result.logit_p[k, 0]), _naive_path_logit(smollm2, ref, cf, target, node), rel_tol=1e-3, abs_tol=1e-3)


# ------------------------------------------------------- Algorithm 1 on the HF model's logits
def _hf_path_logits(hf, ref, cf, target, n_layers, n_heads):
    """Algorithm 1 on a Hugging Face GPT-2, hooks on its own modules: `[node, ]` patched logits of `target`
    (nodes in layer order, heads then MLP) and the reference logit. Every block's attention input to
    `c_proj` (the heads' `z`, merged) and MLP output are frozen at their reference values; node n's END
    slice comes from the counterfactual. The final LayerNorm and `lm_head` run as the model runs them."""
    rec = {}

    def grab(key):
        def pre(module, args):
            rec[key] = args[0].detach().clone()

        def post(module, args, out):
            rec[key] = out.detach().clone()

        return pre, post

    def run(tokens, patch=None):
        handles, found = [], {}
        for L, block in enumerate(hf.transformer.h):
            for key, module, kind in ((("z", L), block.attn.c_proj, "pre"), (("mlp", L), block.mlp, "post")):
                if patch is None:
                    pre, post = grab(key)
                    handles.append(module.register_forward_pre_hook(pre) if kind == "pre" else module.register_forward_hook(post))
                else:
                    value = patch(key)
                    if kind == "pre":
                        handles.append(module.register_forward_pre_hook(lambda m, a, v=value: (v,)))
                    else:
                        handles.append(module.register_forward_hook(lambda m, a, o, v=value: v))
        try:
            with torch.no_grad():
                logits = hf(tokens).logits[0, -1]
        finally:
            for h in handles:
                h.remove()
        found.update(rec)
        rec.clear()
        return logits, found

    logit_o, r = run(ref)
    _, c = run(cf)
    d_head = r[("z", 0)].shape[-1] // n_heads
    out = []
    for L in range(n_layers):
        for node in [*range(n_heads), "mlp"]:
            def patch(key, L=L, node=node):
                v = r[key].clone()
                if key == ("mlp", L) and node == "mlp":
                    v[:, -1] = c[key][:, -1]
                if key == ("z", L) and node != "mlp":
                    cols = slice(node * d_head, (node + 1) * d_head)
                    v[:, -1, cols] = c[key][:, -1, cols]
                return v

            out.append(float(run(ref, patch)[0][target]))
    return torch.tensor(out, dtype=torch.float64), float(logit_o[target]), logit_o


def test_path_patching_effect_is_on_the_hf_logits():
    """Algorithm 1's ratio `(logit_p − logit_o) / logit_o` on a LayerNorm model (GPT-2) is taken on the
    model's own, uncentred logits: a brute force on the HF modules (hooks on `c_proj` and the MLP). The
    unembedding is given a large common row so that centring (subtracting the mean logit) would change
    every ratio: the check has teeth."""
    import copy

    from arithlens.core.model import LensModel
    from arithlens.testing import tiny_gpt2_hf

    hf, tok = tiny_gpt2_hf(n_layers=2, seed=3)
    with torch.no_grad():  # a shared row shifts every logit by the same amount: predictions unchanged
        hf.lm_head.weight += 4.0 * torch.randn(hf.config.n_embd, generator=torch.Generator().manual_seed(0))
    plain = copy.deepcopy(hf)  # wrapping folds the norms into hf's weights in place
    model = LensModel.from_hf(hf, tok, name="tiny-gpt2", device="cpu")
    pairs = counterfactual_pairs(model, ["12+34=", "7 plus 8 is"])
    result = PathPatching(progress=False).run(model, pairs)
    for i in range(len(pairs)):
        ref, cf = torch.tensor([pairs.reference_ids[i]]), torch.tensor([pairs.counterfactual_ids[i]])
        with torch.no_grad():
            target = int(plain(ref).logits[0, -1].argmax())  # bare prompts: the target is the prediction
        lp, lo, logits = _hf_path_logits(plain, ref, cf, target, model.n_layers, model.n_heads)
        assert abs(float(logits.mean())) > 0.5 * abs(lo)  # centring would move the ratio a lot
        assert float(result.logit_o[i]) == pytest.approx(lo, rel=1e-4, abs=1e-4)
        torch.testing.assert_close(result.logit_p[:, i].double(), lp, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(result.effects[:, i].double(), (lp - lo) / lo, rtol=1e-3, atol=1e-4)
