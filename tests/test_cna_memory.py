"""`memory_budget` bounds the whole of `NeuronImportance`: its peak memory is flat from 16 to 256 cases.

Measured honestly: torch's CPU allocations are invisible to `tracemalloc`, so each size runs in
a fresh Python subprocess whose peak resident set size (`VmHWM`) is reset just before the
analysis (`/proc/self/clear_refs`) and read after it. The model is a tiny Llama with a wide
(40,000-token) vocabulary, so anything held per case × layer × vocabulary — what
`layer_scores` and the exact kernel held before they streamed — would add ~2.5 MB per case,
~600 MB between the two sizes; the budget is 20 MB.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

BUDGET = 2e7
VOCAB = 40_000
LAYERS = 4
MiB = 2**20

SCRIPT = r"""
import json, sys, torch
torch.set_num_threads(1)
n, budget, vocab, layers = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
from transformers import LlamaConfig, LlamaForCausalLM
from arithlens.cna import CNAAnalysis, NeuronImportance
from arithlens.core.model import LensModel
from arithlens.testing import char_tokenizer

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

tok = char_tokenizer()
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=False, attn_implementation="eager")
hf = LlamaForCausalLM(cfg).eval()
with torch.no_grad():
    hf.lm_head.weight.mul_(8.0)
    hf.lm_head.weight[len(tok):] = 0.0  # predictions stay within the tokenizer's own tokens
model = LensModel.from_hf(hf, tok, name="wide-vocab", device="cpu")
prompts = [f"{a}+{b}=" for a in range(16) for b in range(16)][:n]
job = NeuronImportance(top_tokens=0, memory_budget=budget)
job.run(model, prompts[:2])  # code paths and allocator warmed up
model.clear_cache()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
base = kib("VmRSS")
result = job.run(model, prompts)
peak = kib("VmHWM")
held = sum(t.numel() * t.element_size() for t in (result.importance, result.coef, result.head_importance,
           result.attn_importance, result.mlp_importance))
held += int(result.df.memory_usage(deep=True).sum())
print(json.dumps({"rise": (peak - base) * 1024, "result": held, "cases": len(result.w)}))
"""


def _measure(n: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n), str(BUDGET), str(VOCAB), str(LAYERS)],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")
def test_peak_memory_is_flat_from_16_to_256_cases():
    # Peak RSS picks up one-off noise (allocator arenas, lazy imports) only upwards: the
    # lower of two runs per size is the better estimate of what the analysis itself needs.
    small, large = (min((_measure(n) for _ in range(2)), key=lambda m: m["rise"]) for n in (16, 256))
    assert (small["cases"], large["cases"]) == (16, 256)
    grown = large["rise"] - small["rise"]
    results = large["result"] - small["result"]
    per_case_vocab = (large["cases"] - small["cases"]) * LAYERS * VOCAB * 4  # one float per case, layer and token
    assert grown <= results + BUDGET, (
        f"peak memory grew by {grown / MiB:.1f} MiB from 16 to 256 cases, more than the results' "
        f"{results / MiB:.1f} MiB plus the {BUDGET / MiB:.0f} MiB budget"
    )
    assert grown < per_case_vocab / 4  # far from anything held per case x layer x vocabulary
    assert large["rise"] <= 2 * BUDGET + 64 * MiB, f"the 256-case run rose {large['rise'] / MiB:.1f} MiB over a {BUDGET / MiB:.0f} MiB budget"
