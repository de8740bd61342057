"""``arithlens patch`` / ``arithlens sft`` and the report section, on a tiny saved model."""

import types

import pandas as pd
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from arithlens.testing import char_tokenizer

    tok = char_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_patch_command_writes_one_row_per_node(tiny_dir, tmp_path):
    from arithlens.cli import main

    out = tmp_path / "patch.csv"
    code = main(["patch", "--model", tiny_dir, "--device", "cpu", "--ops", "+", "--digits", "1", "--templates", "4", "--limit", "3", "--out", str(out)])
    assert code == 0
    df = pd.read_csv(out)
    assert len(df) == 2 * (4 + 1)
    assert {"layer", "node", "effect"} <= set(df.columns)
    assert set(df["node"].astype(str)) == {"0", "1", "2", "3", "mlp"}


def test_patch_command_bad_limit(tiny_dir, tmp_path, capsys):
    from arithlens.cli import main

    assert main(["patch", "--model", tiny_dir, "--limit", "0", "--out", str(tmp_path / "x.csv")]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err


def test_sft_command(tiny_dir, tmp_path):
    from arithlens.cli import main

    out = tmp_path / "sft"
    args = ["sft", "--model", tiny_dir, "--device", "cpu", "--steps", "2", "--batch-size", "2", "--top-n", "2", "--n-train", "16",
            "--n-test", "4", "--patch-pairs", "1", "--ppl-tokens", "64", "--no-full-answer", "--variants", "precise,random", "--out", str(out)]
    assert main(args) == 0
    df = pd.read_csv(out / "sft.csv")
    assert df["variant"].tolist() == ["original", "precise", "random"]
    assert (out / "losses.csv").exists() and (out / "sft.html").exists()


def test_report_sections_quick(tiny, tmp_path):
    from arithlens.circuits.report import sections
    from arithlens.report import Section

    ctx = types.SimpleNamespace(model=tiny, quick=True, out=tmp_path, timings={})
    got = sections(ctx)
    assert len(got) == 4 and all(isinstance(s, Section) and s.figure is not None and s.reading for s in got)
    assert (tmp_path / "circuits_patching.csv").exists()
    assert any("path patching" in k for k in ctx.timings)
