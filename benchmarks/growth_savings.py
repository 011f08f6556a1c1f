"""Growth-savings benchmark: LiGO vs stacking vs training from scratch, FLOPs and wall time to a target loss.

    python benchmarks/growth_savings.py                          # demo preset (= make demo)
    python benchmarks/growth_savings.py --preset gpu-small --device cuda
    python benchmarks/growth_savings.py --corpus my_texts/ --ligo-steps 50 --out-dir /tmp/out

A thin command line around ligo_fast.apps.savings (same options as python -m ligo_fast.apps.demo; --help lists them).
Outputs go to benchmarks/results/growth_savings_<preset>.{png,md,json}.
"""

from ligo_fast.apps.demo import main

if __name__ == "__main__":
    main(prog="python benchmarks/growth_savings.py")
