"""Issue 21 addendum: each current-default run (``*_default.json``) against the plan-code run of the same preset,
seed and budget. Prints scratch's final loss in both (the target is comparable only if they are equal) and a
markdown table of % FLOPs saved per seed (``Result.summary``'s ``flops_saved``): the default beside every method of
the plan-code run. Usage: ``python i21c_compare.py AXIS_DIR [TAG [BASE [PREV]]]``: TAG (default ``_default``) names
the runs to compare, BASE (default: none) the suffix of the runs holding the same cells' baselines; another tag
(addendum 3's ``_sqrt``: the default at the reverted lr rule) adds a column with the PREV run of the same cell
(default ``_default``: the default at the ``/ width`` rule). Addendum 3's 2x runs: ``_sqrt_x2 _default_x2_x2
_default_x2_x2`` (addendum 2's runs, which carry the baselines)."""

import glob
import os
import sys

from ligo_fast.apps.savings.axes import axis_of
from ligo_fast.apps.savings.report import SHORT_LABELS, pct
from ligo_fast.apps.savings.results import Result

W = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/axis"
TAG = sys.argv[2] if len(sys.argv) > 2 else "_default"
BASE = sys.argv[3] if len(sys.argv) > 3 else ""
PREV = sys.argv[4] if len(sys.argv) > 4 else "_default"
BASELINES = ("lossless", "stack", "gstack", "hypercloning", "llama_pro")


def steps(row: dict) -> str:
    """Training steps to the target, ``-`` when it was not reached."""
    return "-" if row["steps"] is None else f"{row['steps']:.0f}"


def default_row(res: Result) -> dict:
    return {r["method"]: r for r in res.summary()}["ligo_lossless"]


checks, rows = [], []
# the first addendum's tag matched its 2x runs too (``_default_x2``); other tags name whole runs
for f in sorted(glob.glob(f"{W}/*_default*.json" if TAG == "_default" else f"{W}/*{TAG}.json")):
    new = Result.read(f)
    old_path = f.replace(TAG, BASE)
    if not os.path.exists(old_path):
        checks.append(f"{os.path.basename(f)}: scratch {new.target!r}; no plan-code run of this cell")
        continue
    old = Result.read(old_path)
    same = new.target == old.target
    checks.append(
        f"{os.path.basename(f)}: scratch {new.target!r}, plan code {old.target!r}: {'EQUAL' if same else 'DIFFER'}"
    )
    if not same:
        continue
    d = default_row(new)
    o = {r["method"]: r for r in old.summary()}
    base = {m: r["flops_saved"] for m, r in o.items() if m in BASELINES}
    best = max(base, key=lambda m: -1 if base[m] is None else base[m])
    others = ", ".join(f"{SHORT_LABELS[m]} {pct(r['flops_saved'])}" for m, r in o.items() if m != "scratch")
    gap = None if d["flops_saved"] is None or base[best] is None else 100 * (d["flops_saved"] - base[best])
    was = ""
    if TAG != "_default":
        prev = f.replace(TAG, PREV)
        was = f"| {pct(default_row(Result.read(prev))['flops_saved']) if os.path.exists(prev) else '-'} "
    rows.append(
        f"| {axis_of(new.preset)} | {new.preset.large_steps / 400:g}x | {new.base_seed} | {pct(d['flops_saved'])} {was}"
        f"| {others} | {SHORT_LABELS[best]} | {'-' if gap is None else f'{gap:+.1f}'} | {d['operator_steps']} "
        f"({100 * d['operator_share']:.1f}%) | {d['val_loss_grown']:.4f} -> {d['val_loss_start']:.4f} "
        f"| {steps(d)} / {steps(o[best])} |"
    )
print("```\n" + "\n".join(checks) + "\n```\n")
WAS = "" if TAG == "_default" else " default at / width: % saved |"
print(
    f"| axis | budget | seed | default: % saved |{WAS} plan-code rows: % saved | best baseline | default - best "
    "(points) | default's operator steps (FLOPs share) | default's loss: grown -> after operator "
    "| train steps to target: default / best |\n"
    f"|---|---|---|---|{'' if TAG == '_default' else '---|'}---|---|---|---|---|---|"
)
print("\n".join(rows))
