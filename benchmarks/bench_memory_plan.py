"""How fast ``grow`` refuses a growth that cannot fit, and what ``memory_plan`` says: numbers, not tests.

The request: a 2-layer, 64-wide Llama grown to 1000 layers of width 4096 (32 heads, 8 KV heads, SwiGLU 11008),
about 200 GB of fp32 weights. ``grow`` must fail with the estimate before allocating the large model
(``tests/test_lean_factored.py`` checks that nothing is allocated); this script times it, fresh small model each
round, and prints one grown BERT-Base-shape model's memory plan for a 8 x 128 batch.

    python benchmarks/bench_memory_plan.py --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import transformers
from common import append_markdown, bert_shape, run_header

import ligo_fast


def refusal_seconds(rounds: int) -> tuple[list[float], str]:
    small_cfg = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    huge = transformers.LlamaConfig(
        **{**small_cfg.to_dict(), "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 1000,
           "num_attention_heads": 32, "num_key_value_heads": 8},
    )  # fmt: skip
    times, message = [], ""
    for _ in range(rounds):
        small = transformers.LlamaForCausalLM(small_cfg)
        start = time.perf_counter()
        try:
            ligo_fast.grow(small, huge)
        except MemoryError as e:
            times.append(time.perf_counter() - start)
            message = str(e)
        else:
            raise SystemExit("grow did not refuse the 1000-layer request: this machine has > 200 GB free?")
    return times, message


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None, help="append the markdown to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lines = run_header("grow's refusal and memory plan", "cpu", "bench_memory_plan.py", argv)
    times, message = refusal_seconds(args.rounds)
    lines += [
        "",
        f"- 1000-layer 4096-wide Llama from a 2-layer 64-wide one: refused in median {statistics.median(times):.3f} s "
        f"(min {min(times):.3f}, max {max(times):.3f}, {len(times)} rounds); message: `{message}`",
    ]
    shape = bert_shape()
    torch.manual_seed(0)
    model = ligo_fast.grow(shape.model("small"), shape.large, seed=0)
    ids = torch.randint(0, shape.large.vocab_size, (8, 128))
    lines.append(f"- BERT 6L/512H -> 12L/768H, 8 x 128 tokens: `{model.memory_plan(input_ids=ids)}`")
    text = "\n".join(lines) + "\n"
    print(text)
    append_markdown(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
