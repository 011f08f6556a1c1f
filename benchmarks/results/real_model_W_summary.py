"""Real-model plan addendum 9 (issue 21): the held-out curves of the depth-only starts (P: the default's exact start,
G: G_stack's) from ``real_model_check_W_{P,G}_sS.json``, their gap per evaluation, and where straight lines fitted
to each arm's last 50 steps of evaluations (least squares) would cross. The crossing decides nothing (the plan).
Usage: ``python real_model_W_summary.py [DIR]`` (default: this file's folder)."""

import json
import sys
from pathlib import Path

import numpy as np

D = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent


def arm(path: Path) -> tuple[float, list[list[float]]]:
    """The arm's small-model loss and its curve ``[[step, held-out], ...]`` (one lr per file)."""
    d = json.loads(path.read_text())
    (r,) = next(v for k, v in d.items() if k.startswith("plain")).values()
    return d["small_loss"], r["curve"]


def fit(curve: list[list[float]], last: int = 50) -> tuple[float, float]:
    """Slope and intercept of the least-squares line through the evaluations of the last ``last`` steps."""
    pts = np.array([p for p in curve if p[0] >= curve[-1][0] - last])
    slope, intercept = np.polyfit(pts[:, 0], pts[:, 1], 1)
    return float(slope), float(intercept)


for seed in (0, 1):
    p_path, g_path = D / f"real_model_check_W_P_s{seed}.json", D / f"real_model_check_W_G_s{seed}.json"
    if not (p_path.exists() and g_path.exists()):
        print(f"seed {seed}: not both arms")
        continue
    small, p = arm(p_path)
    _, g = arm(g_path)
    print(f"seed {seed} (small model {small:.4f}):")
    print("| step | P | G | G - P |\n|---:|---:|---:|---:|")
    for (s, pv), (_, gv) in zip(p, g, strict=True):
        print(f"| {s} | {pv:.4f} ({100 * (pv / small - 1):+.1f}%) | {gv:.4f} ({100 * (gv / small - 1):+.1f}%) "
              f"| {gv - pv:+.4f} |")  # fmt: skip
    (sp, ip), (sg, ig) = fit(p), fit(g)
    cross = (ip - ig) / (sg - sp) if sg != sp else float("inf")
    print(f"last-50-step slopes per step: P {sp:+.5f}, G {sg:+.5f}; the lines cross at step "
          f"{cross:.0f}" + (" (behind: they diverge)" if cross < p[-1][0] else "") + "\n")  # fmt: skip
