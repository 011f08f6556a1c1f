"""Issue 21, addendum 2: the runs of session i21d against the earlier runs of the same cells.

Prints (1) the scratch check: each run's scratch final loss against the earlier run(s) of the same preset, seed and
budget (rows compare across runs only if equal), and for a re-run baseline its final loss and % saved against the
plan code's; (2) ablation 4's table: operator trains all (plan-code run) vs the width matrices alone
(``*_train-width``), beside the same run's baselines; (3) the default's 2x/4x cells beside the baselines of its own
run, both metrics and wall time. Usage: ``python i21d_compare.py AXIS_DIR``."""

import glob
import os
import sys

from ligo_fast.apps.savings.axes import axis_of
from ligo_fast.apps.savings.report import SHORT_LABELS, pct
from ligo_fast.apps.savings.results import Result

W = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/axis"
BASELINES = ("lossless", "stack", "gstack", "hypercloning", "llama_pro")


def rows_of(res):
    return {r["method"]: r for r in res.summary()}


def spd(x):
    return "-" if x is None else f"{x:.2f}"


def wall(r):
    return "-" if r["flops"] is None else f"{r['wall_s']:.0f} s"


def earlier(path):
    """The earlier runs of the same preset, seed and budget (plan code; the first addendum's default)."""
    base = os.path.basename(path)
    if "_train-width" in base:
        return [base.replace("_train-width", "")]
    for b in ("x2", "x4"):
        if f"_default_{b}_{b}." in base:
            return [base.replace(f"_default_{b}_{b}.", f"_{b}."), base.replace(f"_default_{b}_{b}.", f"_default_{b}.")]
    return []


mine = sorted(glob.glob(f"{W}/*_train-width.json") + glob.glob(f"{W}/*_default_x[24]_x[24].json"))
checks = []
for f in mine:
    new = Result.read(f)
    olds = [o for o in earlier(f) if os.path.exists(os.path.join(W, o))]
    if not olds:
        checks.append(f"{os.path.basename(f)}: scratch {new.target!r}; no earlier run of this cell")
    for o in olds:
        old = Result.read(os.path.join(W, o))
        same = "EQUAL" if new.target == old.target else "DIFFER"
        checks.append(f"{os.path.basename(f)}: scratch {new.target!r}, {o} {old.target!r}: {same}")
        n, p = rows_of(new), rows_of(old)
        for m in BASELINES:
            if m in n and m in p:
                eq = "EQUAL" if n[m]["final_loss"] == p[m]["final_loss"] else "DIFFER"
                checks.append(
                    f"  {SHORT_LABELS[m]}: final {n[m]['final_loss']!r} vs {p[m]['final_loss']!r} ({eq}), "
                    f"saved {pct(n[m]['flops_saved'])} vs {pct(p[m]['flops_saved'])}"
                )
print("```\n" + "\n".join(checks) + "\n```\n")

print(
    "| axis | seed | LiGO row | % saved: all / width alone | speedup: all / width alone | loss after operator: all / "
    "width alone | train steps to target: all / width alone | baselines of the plan-code run: % saved (speedup) |\n"
    "|---|---|---|---|---|---|---|---|"
)
for f in sorted(glob.glob(f"{W}/*_train-width.json")):
    o = os.path.join(W, earlier(f)[0])
    if not os.path.exists(o):
        continue
    new, old = Result.read(f), Result.read(o)
    if new.target != old.target:
        continue
    n, p = rows_of(new), rows_of(old)
    base = ", ".join(
        f"{SHORT_LABELS[m]} {pct(p[m]['flops_saved'])} ({spd(p[m]['speedup'])})" for m in p if m in BASELINES
    )
    for m in ("ligo", "ligo_lossless"):
        a, w = p[m], n[m]
        print(
            f"| {axis_of(new.preset)} | {new.base_seed} | {SHORT_LABELS[m]} | {pct(a['flops_saved'])} / "
            f"{pct(w['flops_saved'])} | {spd(a['speedup'])} / {spd(w['speedup'])} | {a['val_loss_start']:.4f} / "
            f"{w['val_loss_start']:.4f} | {a['steps']:.0f} / {w['steps']:.0f} | {base} |"
        )

print(
    "\n| axis | budget | seed | default: % saved (speedup, wall to target) | baselines: % saved (speedup, wall) "
    "| best baseline | default - best (points) | default's operator steps (FLOPs share) | default's loss: grown -> "
    "after operator | final loss: scratch / default / best | train steps to target: default / best |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)
for f in sorted(glob.glob(f"{W}/*_default_x[24]_x[24].json")):
    res = Result.read(f)
    r = rows_of(res)
    d = r["ligo_lossless"]
    base = {m: r[m] for m in r if m in BASELINES}
    best = max(base, key=lambda m: -1 if base[m]["flops_saved"] is None else base[m]["flops_saved"])
    b = base[best]
    gap = (
        "-"
        if d["flops_saved"] is None or b["flops_saved"] is None
        else f"{100 * (d['flops_saved'] - b['flops_saved']):+.1f}"
    )
    others = ", ".join(
        f"{SHORT_LABELS[m]} {pct(x['flops_saved'])} ({spd(x['speedup'])}, {wall(x)})" for m, x in base.items()
    )
    steps = "-" if d["flops"] is None else f"{d['steps']:.0f}"
    bsteps = "-" if b["flops"] is None else f"{b['steps']:.0f}"
    print(
        f"| {axis_of(res.preset)} | {res.preset.large_steps / 400:g}x | {res.base_seed} | {pct(d['flops_saved'])} "
        f"({spd(d['speedup'])}, {wall(d)}) | {others} | {SHORT_LABELS[best]} | {gap} | {d['operator_steps']} "
        f"({100 * d['operator_share']:.1f}%) | {d['val_loss_grown']:.4f} -> {d['val_loss_start']:.4f} "
        f"| {res.target:.4f} / {d['final_loss']:.4f} / {b['final_loss']:.4f} | {steps} / {bsteps} |"
    )
