"""Head sweep speed: the paper's reference procedure vs arithlens's HeadAblation.

Reference (Yu & Ananiadou's code): for each head, deep-copy the model, zero that head's
columns of ``o_proj``, and run one forward per case. arithlens: one clean forward per
batch of equal-length cases caching the residual stream, then for each layer one
forward that restarts at that layer (``start_at_layer``) over the batch stacked for all
of the layer's heads.

Both run on the same SmolLM2 cases in this process; the reference on a sample of heads
(it is slow), arithlens on every head. Printed: seconds per (head x case) for each,
the ratio, and a check that both give the same predictions on the sampled heads.

    python benchmarks/head_sweep.py [--cases 24] [--ref-heads 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=24, help="1-digit '+' cases (template 4)")
    parser.add_argument("--ref-heads", type=int, default=3, help="heads timed with the reference procedure")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    import arithlens
    from arithlens import data
    from arithlens.heads import HeadAblation
    from arithlens.models import smollm2_path

    model = arithlens.load_model(device=args.device)
    cases = data.arithmetic(model.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(args.cases, seed=0)
    directory, gguf = smollm2_path()
    hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=torch.float32, attn_implementation="eager")
    hf = hf.eval().to(args.device)
    d_head = hf.config.hidden_size // hf.config.num_attention_heads
    rng = random.Random(0)
    sample = sorted(rng.sample([(L, H) for L in range(model.n_layers) for H in range(model.n_heads)], args.ref_heads))

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    # Reference: copy, zero o_proj columns, one forward per case.
    ref_preds = {}
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        for L, H in sample:
            edited = copy.deepcopy(hf)
            edited.model.layers[L].self_attn.o_proj.weight[:, H * d_head : (H + 1) * d_head] = 0.0
            preds = []
            for case in cases:
                ids = torch.tensor([list(case.input_ids)], device=args.device)
                preds.append(int(edited(ids).logits[0, -1].argmax()))
            ref_preds[(L, H)] = preds
            del edited
    sync()
    ref_time = (time.perf_counter() - t0) / (len(sample) * len(cases))

    # arithlens: every head (warm the clean run's cache first, as an analysis session would).
    sweep = HeadAblation(progress=False)
    model.run(cases)
    sync()
    t0 = time.perf_counter()
    result = sweep.run(model, cases)
    sync()
    n_heads = len(result.heads)
    ours_time = (time.perf_counter() - t0) / (n_heads * len(cases))

    targets = torch.tensor([c.target_id for c in cases])
    agree = 0
    for (L, H), preds in ref_preds.items():
        k = result.heads.index((L, H))
        agree += int(torch.equal(result.correct[k], torch.tensor(preds) == targets))
    print(f"device {args.device}, {len(cases)} cases, threads {torch.get_num_threads()}")
    print(f"reference (deep copy + zeroed o_proj, one forward per case), heads {sample}: {ref_time * 1e3:.2f} ms per head x case")
    print(f"arithlens HeadAblation, all {n_heads} heads: {ours_time * 1e3:.3f} ms per head x case")
    print(f"speed-up: {ref_time / ours_time:.1f}x  (target >= 50x)")
    print(f"same correctness pattern on {agree}/{len(ref_preds)} sampled heads")


if __name__ == "__main__":
    main()
