"""Axis plan addendum 6 (issue 21): the 4x cells where a growth may not reach scratch's final loss. Per run
(``*TAG.json``, default ``_default_x4_x4``), per method: the final validation loss, % FLOPs saved to scratch's final
loss (the plan's metric; ``-`` where not reached) and, for every growth, the same metric carried past the target:
``1 - F_method / F_scratch(L)``, with ``L`` the method's final loss, ``F_method`` all its FLOPs (operator steps
included) and ``F_scratch(L)`` scratch's FLOPs to its first evaluation at or below ``L`` (linear between its
evaluations: the report's ``cost_to_reach``): negative where scratch reaches the method's final loss sooner.
Usage: ``python i21i_compare.py AXIS_DIR [TAG [PATTERN]]`` (PATTERN: a glob of the file names before TAG, default
``*``; addendum 6's runs: ``growth_savings_demo[-_][sw]*``)."""

import glob
import os
import sys

from ligo_fast.apps.savings.axes import axis_of
from ligo_fast.apps.savings.report import SHORT_LABELS, pct
from ligo_fast.apps.savings.results import Result, cost_to_reach

W = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/axis"
TAG = sys.argv[2] if len(sys.argv) > 2 else "_default_x4_x4"
PATTERN = sys.argv[3] if len(sys.argv) > 3 else "*"
FILES = sorted(glob.glob(f"{W}/{PATTERN}{TAG}.json"))


print("| axis | budget | seed | method | final loss | % saved (to scratch's final loss) | carried past the target |")
print("|---|---|---|---|---|---|---|")
for f in FILES:
    res = Result.read(f)
    scratch = res.methods["scratch"].curve
    for row in res.summary():
        m = row["method"]
        carried = "-"
        if m != "scratch":
            fs = cost_to_reach(scratch, row["final_loss"])
            carried = "-" if fs is None else f"{100 * (1 - res.methods[m].curve[-1].flops / fs):+.1f}%"
        print(
            f"| {axis_of(res.preset)} | {res.preset.large_steps / 400:g}x | {res.base_seed} | {SHORT_LABELS[m]} "
            f"| {row['final_loss']:.4f} | {pct(row['flops_saved'])} | {carried} |"
        )
print(f"\n({len(FILES)} runs: {', '.join(os.path.basename(f) for f in FILES)})")
