"""Growth-savings benchmark: LiGO (two inits) vs lossless expansion vs stacking vs training from scratch, FLOPs and
wall time to scratch's final loss, over seeds and budgets.

    python benchmarks/growth_savings.py                          # demo preset, seed 0 (= make demo)
    python benchmarks/growth_savings.py --seeds 10,11,12 --budgets 0.5,1,2,4 --out-dir benchmarks/results
    python benchmarks/growth_savings.py --aggregate runs/a/*_seed*.json runs/b/*_seed*.json --out-dir benchmarks/results
    python benchmarks/growth_savings.py --preset gpu-small --device cuda

A thin command line around ligo_fast.apps.savings (same options as python -m ligo_fast.apps.demo; --help lists them).
Outputs go to a new runs/<preset>-<date>-<time>/ (untracked) unless --out-dir names another directory.
"""

from ligo_fast.apps.demo import main

if __name__ == "__main__":
    main(prog="python benchmarks/growth_savings.py")
