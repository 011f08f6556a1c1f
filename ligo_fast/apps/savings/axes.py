"""Runs of the axis-separated presets summed up in one table: per growth axis, budget and method, both metrics of
the field (% FLOPs saved vs scratch, LiGO/LEMON's; speedup = FLOPs_scratch / FLOPs_method - 1, G_stack's), the
wall time beside the FLOPs, and the tokens per parameter of the runs (:func:`axis_rows`, :func:`format_axis_table`).

``python -m ligo_fast.apps.savings.axes RUN.json ...`` prints the table of finished runs' JSON files (the per-run
``growth_savings_*.json`` that :mod:`ligo_fast.apps.demo` writes). Imports :mod:`.presets`, :mod:`.results`,
:mod:`.report` (labels) and the standard library.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence

from .presets import ALL_METHODS, Preset
from .report import SHORT_LABELS, pct
from .results import Result


def axis_of(p: Preset) -> str:
    """What a preset grows, with the factors: ``depth 2x``, ``width 2x``, ``depth 2x + width 2x`` (or ``none``)."""
    parts = [
        f"{axis} {large / small:g}x"
        for axis, small, large in (("depth", p.small.layers, p.large.layers), ("width", p.small.hidden, p.large.hidden))
        if large != small
    ]
    return " + ".join(parts) or "none"


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def axis_rows(results: Sequence[Result], base_steps: int = 400) -> list[dict]:
    """One row per (axis, budget, method) over the runs' seeds: mean % saved and speedup over the seeds where the
    method reached scratch's final loss (``reached`` of ``n``), every seed's % saved, mean FLOPs and wall time to
    the target, and the runs' tokens per parameter."""
    groups: dict[tuple, list[tuple[Result, dict]]] = {}
    for res in results:
        for r in res.summary():
            key = (axis_of(res.preset), res.preset.large_steps, r["method"])
            groups.setdefault(key, []).append((res, r))
    rows = []
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    for (axis, steps, method), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order[kv[0][2]])):
        ok = [r for _, r in items if r["flops"] is not None]
        rows.append(
            {
                "axis": axis,
                "budget": steps / base_steps,
                "large_steps": steps,
                "method": method,
                "n": len(items),
                "reached": len(ok),
                "saved": _mean([r["flops_saved"] for r in ok]),
                "saved_with_small": _mean([r["flops_with_small_saved"] for r in ok]),
                "speedup": _mean([r["speedup"] for r in ok]),
                "flops": _mean([r["flops"] for r in ok]),
                "wall_s": _mean([r["wall_s"] for r in ok if r["wall_s"] is not None]),
                "per_seed": {res.base_seed: r["flops_saved"] for res, r in items},
                "tokens_per_param": _mean([res.tokens_per_param for res, _ in items]),
                "final_loss": _mean([r["final_loss"] for _, r in items]),
            }
        )
    return rows


def format_axis_table(results: Sequence[Result], base_steps: int = 400) -> str:
    """The markdown table of :func:`axis_rows` (scratch's rows show its own cost to its final loss)."""
    out = [
        "| axis | budget (large steps) | tokens/param | method | seeds (reached) | % FLOPs saved (mean) | per seed "
        "| speedup (mean) | % saved incl. small | FLOPs to target | wall to target | final loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in axis_rows(results, base_steps):
        seeds = ", ".join(f"{s}: {pct(v)}" for s, v in sorted(r["per_seed"].items()))
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}"
        flops = "-" if r["flops"] is None else f"{r['flops']:.3g}"
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f} s"
        out.append(
            f"| {r['axis']} | {r['budget']:g}x ({r['large_steps']}) | {r['tokens_per_param']:.2f} "
            f"| {SHORT_LABELS[r['method']]} | {r['n']} ({r['reached']}) | {pct(r['saved'])} | {seeds} | {speed} "
            f"| {pct(r['saved_with_small'])} | {flops} | {wall} | {r['final_loss']:.4f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Print the axis table of the JSON files named on the command line."""
    paths = sys.argv[1:] if argv is None else argv
    print(format_axis_table([Result.read(path) for path in paths]))


if __name__ == "__main__":
    main()
