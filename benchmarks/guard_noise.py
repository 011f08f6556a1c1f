"""How often the operator-rise guard (ligo_fast.guard.RiseGuard) speaks on batch noise alone, and how often it
catches a real rise, on simulated step losses (one batch each: normal around a mean with a given spread).

    python benchmarks/guard_noise.py [--trials 2000] [--spread 0.1]

Rows: the first step's loss drawn like the others ("random") or low by 1.2 spreads (as in the real Gemma run G of
benchmarks/results/real_model_check.md); columns: the rate at which the guard fires with no rise (false positives)
and with a rise of 15%, 30%, 50% of the mean from step 4 on; "margin only" is the guard without its noise test
(z = -inf: the rule before the noise test).
"""

from __future__ import annotations

import argparse

import torch

from ligo_fast.guard import RISE_WINDOW, RiseGuard

RISES = (0.0, 0.15, 0.3, 0.5)


def fires(losses: list[float], **options) -> bool:
    guard = RiseGuard(**options)
    return any(guard.update(step, loss) for step, loss in enumerate(losses, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--spread", type=float, default=0.1, help="a step loss's spread, as a share of the mean")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    mean = 3.0
    sigma = args.spread * mean
    print(f"| first step | guard | {' | '.join(f'fires at rise {r:.0%}' for r in RISES)} |")
    print(f"|---|---|{'---|' * len(RISES)}")
    for first in ("random", "low"):
        for name, options in (("with noise test", {}), ("margin only", {"z": float("-inf")})):
            counts = dict.fromkeys(RISES, 0)
            for _ in range(args.trials):
                x = (mean + sigma * torch.randn(RISE_WINDOW, generator=gen, dtype=torch.float64)).tolist()
                if first == "low":
                    x[0] = mean - 1.2 * sigma
                for rise in RISES:
                    counts[rise] += fires(x[:3] + [v + rise * mean for v in x[3:]], **options)
            rates = " | ".join(f"{counts[r] / args.trials:.3f}" for r in RISES)
            print(f"| {first} | {name} | {rates} |")


if __name__ == "__main__":
    main()
