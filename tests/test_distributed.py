"""Sweep sharding: `torchrun --nproc_per_node=2` on CPU (gloo) gathers exactly the single-process result.

The same file is the worker: `torchrun ... tests/test_distributed.py OUT` runs `_worker`,
which builds the tiny model (same seed on every rank), computes a sharded per-head
zero-ablation sweep, and rank 0 pickles the gathered results to OUT. The test compares
them with the same functions run in this one process.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pandas as pd
import pytest
import torch

from arithlens.core import distributed

PROMPTS = ["3+5=", "12+7=", "9-2=", "44*2=", "1+1=", "8/4=", "7+70="]


def head_sweep(model) -> pd.DataFrame:
    """Per-head zero-ablation: target log-prob and prediction of every prompt, heads sharded."""
    from arithlens.core.interventions import ZeroHead

    pairs = [(L, H) for L in range(model.n_layers) for H in range(model.n_heads)]
    rows = []
    for L, H in distributed.shard(pairs):
        with model.intervened(ZeroHead(L, H)):
            for case, prompt in enumerate(PROMPTS):
                logp = model.bridge(torch.tensor([model.encode(prompt)]))[0, -1].log_softmax(-1)
                rows.append({"layer": L, "head": H, "case": case, "prediction": int(logp.argmax()), "logprob": float(logp.max())})
    return distributed.gather(pd.DataFrame(rows, columns=["layer", "head", "case", "prediction", "logprob"]))


def layer_sweep(model) -> torch.Tensor:
    """Strided shard of layers: zero each layer's MLP output, last-position log-probs [layer, case, vocab]."""
    tokens = [torch.tensor([model.encode(p)]) for p in PROMPTS]
    out = []
    for L in distributed.shard(range(model.n_layers), strided=True):
        with model.hooked([(f"blocks.{L}.hook_mlp_out", lambda x, hook: x * 0)]):
            out.append(torch.stack([model.bridge(t)[0, -1].log_softmax(-1) for t in tokens]))
    part = torch.stack(out) if out else torch.empty(0, len(PROMPTS), model.d_vocab)
    return distributed.gather(part, strided=True)


def batch_cases(model) -> torch.Tensor:
    """Cases split by whole batches (as the model batches them), reassembled by position."""
    ids = [model.encode(p) for p in PROMPTS]
    mine = distributed.shard(list(model.batches(ids, 2)))
    rows = [r for r, _ in mine]
    logp = [model.bridge(t)[:, -1].log_softmax(-1) for _, t in mine]
    index = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)
    values = torch.cat(logp) if logp else torch.empty(0, model.d_vocab)
    return distributed.gather_rows(index, values, n=len(PROMPTS))


def head_ablation(model) -> pd.DataFrame:
    """arithlens's own head sweep: under torchrun its heads are split across ranks."""
    from arithlens.cna.heads import HeadAblation

    return HeadAblation(progress=False, batch_size=2).run(model, PROMPTS).df


def path_patching(model) -> dict:
    """Path patching (whole batches per rank), activation patching (whole layers) and the attribution pass."""
    from arithlens import data
    from arithlens.circuits import counterfactual_pairs, PathPatching

    cases = data.arithmetic(model.tokenizer, ops="+-", digits=(1, 2), templates=(3, 4), forms=("numeral",), n_per_op=2)
    pairs = counterfactual_pairs(model, cases)
    out = {}
    for key, kwargs in {"path": {}, "activation": {"method": "activation"}, "attribution": {"estimate": "attribution", "rescore": 3}}.items():
        result = PathPatching(progress=False, batch_size=2, **kwargs).run(model, pairs)
        out[key] = (result.df, result.logit_p, result.logit_o)
    return out


def exact_cna(model) -> tuple:
    """Exact CNA over a dataset: layers split across ranks."""
    from arithlens.cna import NeuronImportance

    result = NeuronImportance(mode="exact").run(model, PROMPTS)
    return result.importance, result.df


def lora_sweep(model) -> pd.DataFrame:
    """The LoRA layer sweep: layers strided across ranks, each rank training its own."""
    from arithlens.cna.lora import LoRASettings, lora_layer_sweep

    settings = LoRASettings(layers=[0, 1, 2], lrs=[1e-2], steps=2, n_train=12, n_val=4, n_test=6, progress=False)
    result = lora_layer_sweep(model, settings)
    return result.df.drop(columns="reused"), result.lr_search, result.losses


def compute(model) -> dict:
    return {
        "heads": head_sweep(model),
        "head_ablation": head_ablation(model),
        "path_patching": path_patching(model),
        "exact_cna": exact_cna(model),
        "lora": lora_sweep(model),
        "layers": layer_sweep(model),
        "cases": batch_cases(model),
        "rank_world": distributed.rank_and_world(),
        "uneven": distributed.gather(distributed.shard(list(range(5)))),
        "uneven_strided": distributed.gather(distributed.shard(list(range(5)), strided=True), strided=True),
    }


def _worker(out_path: str) -> None:
    from arithlens.testing import tiny_llama

    torch.set_num_threads(1)
    splits, whole_shard = [], distributed.shard

    def recording_shard(items, *, strided=False):  # which share of each work list this rank took
        items = list(items)
        mine = whole_shard(items, strided=strided)
        splits.append((len(mine), len(items)))
        return mine

    distributed.shard = recording_shard
    with torch.no_grad():
        result = compute(tiny_llama(seed=0))
    result["rank_world"] = distributed.rank_and_world()
    result["splits"] = distributed.gather([splits])
    if distributed.is_main():
        with open(out_path, "wb") as f:
            pickle.dump(result, f)
    distributed.barrier()


@pytest.fixture(scope="module")
def gathered(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "result.pkl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out, "rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="module")
def single(tiny):
    # The workers run one thread each; CPU kernels split some reductions by thread, so
    # bit-for-bit equality needs the same thread count here (results otherwise agree to ~1e-6).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return compute(tiny)
    finally:
        torch.set_num_threads(threads)


def test_two_ranks_ran(gathered):
    assert gathered["rank_world"] == (0, 2)


def test_each_rank_took_a_share_of_every_sharded_sweep(gathered):
    # head sweeps (2), path patching (path, activation, attribution x2), exact CNA, LoRA, batches
    for rank, splits in enumerate(gathered["splits"]):
        partial = [s for s in splits if 0 < s[0] < s[1]]
        assert len(partial) >= 8, f"rank {rank} split only {partial} of {splits}"


def test_head_sweep_gathers_the_single_process_frame_exactly(gathered, single):
    assert len(single["heads"]) == 3 * 4 * len(PROMPTS)
    pd.testing.assert_frame_equal(gathered["heads"], single["heads"], check_exact=True)


def test_head_ablation_under_torchrun_equals_the_single_process_frame(gathered, single):
    assert len(single["head_ablation"]) >= 3 * 4
    pd.testing.assert_frame_equal(gathered["head_ablation"], single["head_ablation"], check_exact=True)


@pytest.mark.parametrize("method", ["path", "activation", "attribution"])
def test_path_patching_under_torchrun_equals_the_single_process_result(gathered, single, method):
    (df_g, lp_g, lo_g), (df_s, lp_s, lo_s) = gathered["path_patching"][method], single["path_patching"][method]
    assert len(df_s) > 4 and lo_s.shape[0] > 2  # several batches and nodes to split
    pd.testing.assert_frame_equal(df_g, df_s, check_exact=True)
    assert torch.equal(lp_g.nan_to_num(123.0), lp_s.nan_to_num(123.0)) and torch.equal(lo_g, lo_s)


def test_exact_cna_over_a_dataset_under_torchrun_equals_one_process(gathered, single):
    (imp_g, df_g), (imp_s, df_s) = gathered["exact_cna"], single["exact_cna"]
    assert imp_s.shape[:2] == (len(PROMPTS), 3)
    assert torch.equal(imp_g, imp_s)
    pd.testing.assert_frame_equal(df_g, df_s, check_exact=True)


def test_lora_sweep_under_torchrun_equals_one_process(gathered, single):
    (df_g, search_g, losses_g), (df_s, search_s, losses_s) = gathered["lora"], single["lora"]
    assert df_s["model"].tolist() == ["original", "lora0", "lora1", "lora2"]
    pd.testing.assert_frame_equal(df_g, df_s, check_exact=True)
    pd.testing.assert_frame_equal(search_g, search_s, check_exact=True)
    assert losses_g == losses_s


def test_alone_makes_a_rank_a_single_process():
    with distributed.alone():
        assert distributed.rank_and_world() == (0, 1)
        assert distributed.shard([1, 2, 3]) == [1, 2, 3]


def test_strided_layer_sweep_equals_single_process(gathered, single):
    assert gathered["layers"].shape == single["layers"].shape == (3, len(PROMPTS), single["layers"].shape[-1])
    assert torch.equal(gathered["layers"], single["layers"])


def test_case_batches_reassemble_in_case_order(gathered, single):
    assert torch.equal(gathered["cases"], single["cases"])


def test_uneven_shards_keep_order(gathered):
    assert gathered["uneven"] == [0, 1, 2, 3, 4]
    assert gathered["uneven_strided"] == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------- one process
def test_single_process_is_identity():
    assert distributed.rank_and_world() == (0, 1)
    assert distributed.is_main()
    items = ["a", "b", "c"]
    assert distributed.shard(items) == items and distributed.shard(items, strided=True) == items
    frame = pd.DataFrame({"x": [1, 2]})
    assert distributed.gather(frame) is frame


@pytest.mark.parametrize("n, world", [(0, 3), (2, 3), (7, 3), (12, 2), (5, 5)])
def test_bounds_cover_every_item_once(n, world):
    bounds = [distributed.shard_bounds(n, rank=r, world=world) for r in range(world)]
    covered = [i for a, b in bounds for i in range(a, b)]
    assert covered == list(range(n))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("strided", [False, True])
def test_merge_of_simulated_ranks_restores_order(strided):
    from arithlens.core.distributed import _merge, shard_bounds

    n, world = 7, 3
    full = pd.DataFrame({"item": range(n), "value": [i * 1.5 for i in range(n)]})
    if strided:
        parts = [full.iloc[r::world].reset_index(drop=True) for r in range(world)]
    else:
        parts = [full.iloc[slice(*shard_bounds(n, rank=r, world=world))].reset_index(drop=True) for r in range(world)]
    pd.testing.assert_frame_equal(_merge(parts, strided=strided), full)
    tensors = [torch.tensor(p["value"].to_numpy()) for p in parts]
    assert torch.equal(_merge(tensors, strided=strided), torch.tensor(full["value"].to_numpy()))
    both = _merge([(t, p) for t, p in zip(tensors, parts)], strided=strided)
    assert torch.equal(both[0], torch.tensor(full["value"].to_numpy()))


def test_merge_errors():
    from arithlens.core.distributed import _merge

    with pytest.raises(ValueError, match="different kinds"):
        _merge([torch.zeros(1), [1]], strided=False)
    with pytest.raises(ValueError, match="strided"):
        _merge([[0, 2, 4, 6], [1]], strided=True)
    with pytest.raises(ValueError, match="cannot join"):
        _merge([{1, 2}, {3}], strided=False)


def test_shard_bounds_arguments():
    with pytest.raises(ValueError, match="rank=2 is out of range"):
        distributed.shard_bounds(4, rank=2, world=2)
    with pytest.raises(ValueError, match="both rank and world"):
        distributed.shard_bounds(4, rank=0)
    with pytest.raises(ValueError, match="n=-1"):
        distributed.shard_bounds(-1, rank=0, world=1)


def test_gather_rows_checks_coverage():
    with pytest.raises(ValueError, match="exactly once"):
        distributed.gather_rows([0, 0], torch.zeros(2), n=2)
    with pytest.raises(ValueError, match="exactly once"):
        distributed.gather_rows([1], torch.zeros(1), n=2)
    with pytest.raises(ValueError, match="positions must lie"):
        distributed.gather_rows([5], torch.zeros(1), n=2)
    with pytest.raises(ValueError, match="2 positions but 1 rows"):
        distributed.gather_rows([0, 1], torch.zeros(1))
    frame = distributed.gather_rows([1, 0], pd.DataFrame({"v": [10, 0]}, index=[7, 8]))
    pd.testing.assert_frame_equal(frame, pd.DataFrame({"v": [0, 10]}))


def test_torchrun_env_without_rendezvous_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        distributed.rank_and_world()


if __name__ == "__main__":
    _worker(sys.argv[1])
