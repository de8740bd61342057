"""The real restart (arithlens.core.forward): blocks before the restart never run, the result equals a full forward."""

import pytest
import torch
from conftest import assert_untouched, model_state

from arithlens.core import forward, names

PROMPTS = ["12+7=", "33+4=", "9-2=5"]


@pytest.fixture(scope="module")
def tokens(tiny):
    ids = [tiny.encode(p) for p in PROMPTS]
    n = min(len(i) for i in ids)
    return torch.tensor([i[:n] for i in ids])


def _clean_resid(model, tokens):
    """The residual entering every block, from a plain full forward."""
    resid = {}

    def keep(x, hook):
        resid[names.layer_of(hook.name)] = x.detach().clone()

    with model.hooked([(names.resid_pre(L), keep) for L in range(model.n_layers)]), torch.no_grad():
        model.bridge(tokens)
    return resid


class BlockCounter:
    """Counts completed forward calls of every block (torch forward hooks, removed on exit)."""

    def __init__(self, model):
        self.blocks = model.bridge.blocks
        self.calls = [0] * len(self.blocks)

    def __enter__(self):
        self.handles = [
            b.register_forward_hook(lambda mod, args, out, i=i: self.calls.__setitem__(i, self.calls[i] + 1))
            for i, b in enumerate(self.blocks)
        ]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _layers(model):
    return [0, model.n_layers // 2, model.n_layers - 1]


def test_blocks_before_the_restart_never_run(tiny, tokens):
    resid = _clean_resid(tiny, tokens)
    for L in _layers(tiny):
        with BlockCounter(tiny) as counter:
            forward.logits_from(tiny, resid[L], L)
        assert counter.calls == [0] * L + [1] * (tiny.n_layers - L), L
        with BlockCounter(tiny) as counter:
            tiny.last_logits(resid[L], start_at_layer=L)
        assert counter.calls == [0] * L + [1] * (tiny.n_layers - L), L


def test_the_bridges_own_start_at_layer_runs_every_block(tiny, tokens):
    """Why arithlens.core.forward exists: TL 4.3's start_at_layer computes (and discards) blocks < L."""
    resid = _clean_resid(tiny, tokens)
    L = tiny.n_layers - 1
    with BlockCounter(tiny) as counter, torch.no_grad():
        tiny.bridge(resid[L], start_at_layer=L)
    assert counter.calls == [1] * tiny.n_layers


def _hooks(model, L):
    """An ablation at block L and a scaling of a later MLP: hooks the restart must fire."""

    def zero_head(z, hook):
        z[:, :, 1] = 0.0
        return z

    def scale(post, hook):
        return post * 1.5

    hooks = [(names.z(L), zero_head)]
    if L + 1 < model.n_layers:
        hooks.append((names.post(L + 1), scale))
    return hooks


def test_restart_equals_full_forward_with_the_same_hooks(tiny, tokens):
    snap, n_hooks = model_state(tiny)
    resid = _clean_resid(tiny, tokens)
    for L in _layers(tiny):
        with tiny.hooked(_hooks(tiny, L)), torch.no_grad():
            full = tiny.bridge(tokens)
            restarted = forward.logits_from(tiny, resid[L], L)
            restarted_all = forward.logits_from(tiny, resid[L], L, last_only=False)
            via_model = tiny.last_logits(resid[L], start_at_layer=L)
        torch.testing.assert_close(restarted, full[:, -1], atol=1e-5, rtol=0)
        torch.testing.assert_close(restarted_all, full, atol=1e-5, rtol=0)
        torch.testing.assert_close(via_model, full[:, -1], atol=1e-5, rtol=0)
        assert not torch.allclose(restarted, forward.logits_from(tiny, resid[L], L), atol=1e-4)  # the hooks did act
    assert_untouched(tiny, snap, n_hooks)


def test_hooks_on_restarted_blocks_fire_and_see_the_full_forwards_values(tiny, tokens):
    resid = _clean_resid(tiny, tokens)
    L = tiny.n_layers // 2
    seen = {}

    def grab(x, hook):
        seen[hook.name] = x.detach().clone()

    wanted = [names.resid_pre(L), names.resid_mid(L), names.post(tiny.n_layers - 1), names.resid_pre(0)]
    with tiny.hooked([(n, grab) for n in wanted]), torch.no_grad():
        tiny.bridge(tokens)
        full = dict(seen)
        seen.clear()
        forward.logits_from(tiny, resid[L], L)
    assert set(seen) == set(full) - {"blocks.0.hook_in"}  # block 0 is before the restart
    for name, value in seen.items():
        torch.testing.assert_close(value, full[name], atol=1e-5, rtol=0)


def test_run_blocks_stops_where_asked(tiny, tokens):
    resid = _clean_resid(tiny, tokens)
    with BlockCounter(tiny) as counter, torch.no_grad():
        out = forward.run_blocks(tiny, resid[0], 0, stop=2)
    assert counter.calls == [1, 1] + [0] * (tiny.n_layers - 2)
    torch.testing.assert_close(out, resid[2], atol=1e-5, rtol=0)


def test_capture_equals_run_with_cache(tiny, tokens):
    hooks = [names.resid_pre(1), names.z(1)]
    got = forward.capture(tiny, tokens, hooks, stop_at_layer=2)
    _, ref = tiny.bridge.run_with_cache(tokens, names_filter=hooks, return_cache_object=False)
    for h in hooks:
        torch.testing.assert_close(got[h], ref[h])


def test_gradients_match_a_finite_difference(tiny, tokens):
    snap, n_hooks = model_state(tiny)
    target = torch.tensor([5, 9, 13])

    def score(logits):
        return logits.float().log_softmax(-1).gather(-1, target[:, None])[:, 0]

    acts, grads, clean = forward.gradients(tiny, tokens, [names.z(L) for L in range(tiny.n_layers)], score)
    assert all(p.grad is None for p in tiny.bridge.parameters())
    assert_untouched(tiny, snap, n_hooks)
    eps = 1e-3
    for L in range(tiny.n_layers):
        for H in (0, 3):

            def bump(z, hook, H=H):
                z[:, :, H] *= 1 + eps
                return z

            with tiny.hooked([(names.z(L), bump)]), torch.no_grad():
                moved = score(tiny.last_logits(tokens))
            predicted = eps * (grads[names.z(L)][:, :, H] * acts[names.z(L)][:, :, H]).sum((-1, -2))
            torch.testing.assert_close(moved - clean, predicted, atol=2e-5, rtol=0.05)


def test_bad_start_layer_is_a_clear_error(tiny, tokens):
    resid = _clean_resid(tiny, tokens)
    with pytest.raises(ValueError, match=f"start_at_layer={tiny.n_layers} is out of range"):
        forward.logits_from(tiny, resid[0], tiny.n_layers)
    with pytest.raises(ValueError, match="start_at_layer=True must be an integer"):
        forward.logits_from(tiny, resid[0], True)
