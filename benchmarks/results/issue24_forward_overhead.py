"""Time of a tiny grown Llama's step (the forward's overhead is a large share): issue24_execution_plan.md.

Usage: cd <tree> && PYTHONPATH=<tree> OMP_NUM_THREADS=1 python benchmarks/results/issue24_forward_overhead.py <tree>
"""

import sys
import time

import torch

sys.path.insert(0, sys.argv[1] + "/tests")
from _models import build, configs, inputs  # noqa: E402

import ligo_fast  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    name = "LlamaForCausalLM"
    small_cfg, large_cfg = configs(name)
    model = ligo_fast.grow(build(name, small_cfg), large_cfg)
    x = inputs(name)
    for mode in ("train", "no_grad"):
        for _ in range(5):
            if mode == "train":
                model(**x).logits.sum().backward()
        times = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(20):
                if mode == "train":
                    model(**x).logits.sum().backward()
                else:
                    with torch.no_grad():
                        model(**x)
            times.append((time.perf_counter() - t) / 20)
        print(ligo_fast.__file__, mode, f"median {sorted(times)[3] * 1e3:.2f} ms/step")


if __name__ == "__main__":
    main()
