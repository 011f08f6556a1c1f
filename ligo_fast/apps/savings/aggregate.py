"""Several runs of the experiment (seeds x budgets) summed up: :func:`sweep_rows` (mean and sd of the FLOPs saved per
budget and method, with every seed's value), :func:`seed_wins` (per budget and seed: who saves most, and by how
much the LiGO methods lead), :func:`goal` (the issue's goal, checked as stated) and :func:`start_losses` (where each
growth method's large-model training starts, against the small model).

Runs are grouped by their large-model budget (``preset.large_steps``) and identified by their base seed. A method that
does not reach scratch's final loss on a seed has no saving there (None); means are over the seeds that reached it,
and the rows say how many did.

Imports :mod:`.presets` and :mod:`.results`, and the standard library.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .presets import ALL_METHODS, OPERATOR_METHODS
from .results import Result

GOAL_SAVED = 0.45
"""The issue's goal: the better LiGO method saves at least this share of scratch's FLOPs."""
GOAL_START_GAP = 0.01
"""The issue's goal: the lossless start's step-0 loss within this relative distance of the small model's."""


def by_budget(results: Sequence[Result]) -> dict[int, list[Result]]:
    """Runs grouped by large-model steps (ascending), each group sorted by base seed."""
    groups: dict[int, list[Result]] = {}
    for r in results:
        groups.setdefault(r.preset.large_steps, []).append(r)
    return {k: sorted(groups[k], key=lambda r: r.base_seed) for k in sorted(groups)}


def _methods(runs: Sequence[Result]) -> list[str]:
    present = set().union(*(r.methods for r in runs))
    return [m for m in ALL_METHODS if m in present]


def _saved(run: Result) -> dict[str, float | None]:
    return {row["method"]: row["flops_saved"] for row in run.summary()}


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def sweep_rows(results: Sequence[Result], base_steps: int | None = None) -> list[dict]:
    """One row per (budget, method): ``large_steps``, ``budget`` (a multiple of ``base_steps``, by default the first
    run's steps), ``method``, ``per_seed`` {seed: saved or None}, ``n``, ``reached``, ``mean``/``sd`` of the saving
    over the seeds that reached the target, ``operator_steps``, ``operator_share`` (operator FLOPs / scratch's FLOPs,
    mean over seeds), ``final_loss`` (mean)."""
    groups = by_budget(results)
    base = base_steps or results[0].preset.large_steps
    rows = []
    for steps, runs in groups.items():
        saved = [_saved(r) for r in runs]
        for m in _methods(runs):
            per_seed = {r.base_seed: s.get(m) for r, s in zip(runs, saved, strict=True) if m in r.methods}
            reached = [v for v in per_seed.values() if v is not None]
            mean, sd = _mean_sd(reached)
            with_m = [r for r in runs if m in r.methods]
            shares = [next(x for x in r.summary() if x["method"] == m)["operator_share"] for r in with_m]
            rows.append(
                {
                    "large_steps": steps,
                    "budget": steps / base,
                    "method": m,
                    "per_seed": per_seed,
                    "n": len(per_seed),
                    "reached": len(reached),
                    "mean": mean,
                    "sd": sd,
                    "operator_steps": max(r.methods[m].operator_steps for r in with_m),
                    "operator_share": statistics.fmean(shares),
                    "final_loss": statistics.fmean(r.methods[m].final_loss for r in with_m),
                }
            )
    return rows


def seed_wins(results: Sequence[Result]) -> list[dict]:
    """One row per (budget, seed): ``saved`` per growth method, ``winner`` (the growth method saving most; a method
    that never reaches the target ranks last) and, per LiGO method present, its ``lead`` over the best non-LiGO
    growth method (None when the LiGO method did not reach the target; when no other method did, a lower bound,
    ``lead_is_bound``)."""
    rows = []
    for steps, runs in by_budget(results).items():
        for r in runs:
            saved = {m: v for m, v in _saved(r).items() if m != "scratch"}
            if not saved:
                continue
            winner = max(saved, key=lambda m: -1e9 if saved[m] is None else saved[m])
            others = [v for m, v in saved.items() if m not in OPERATOR_METHODS]
            reached = [v for v in others if v is not None]
            # a method that never reached the target within the budget saved less than nothing: when none did, the
            # lead over them is at least the LiGO method's own saving (a lower bound, marked)
            best_other = max(reached) if reached else (0.0 if others else None)
            lead = {
                m: (None if saved[m] is None or best_other is None else saved[m] - best_other)
                for m in OPERATOR_METHODS
                if m in saved
            }
            bound = bool(others) and not reached
            rows.append(
                {"large_steps": steps, "seed": r.base_seed, "saved": saved, "winner": winner, "lead": lead,
                 "lead_is_bound": bound}
            )  # fmt: skip
    return rows


def best_ligo(results: Sequence[Result]) -> str | None:
    """The LiGO method with the higher mean saving over every run (a miss counts as saving nothing), or None."""
    scores: dict[str, list[float]] = {}
    for r in results:
        for m, v in _saved(r).items():
            if m in OPERATOR_METHODS:
                scores.setdefault(m, []).append(0.0 if v is None else v)
    return max(scores, key=lambda m: statistics.fmean(scores[m])) if scores else None


def start_losses(results: Sequence[Result]) -> list[dict]:
    """One row per run and growth method: the small model's loss, the grown model's before any training, the large
    training's step-0 loss, and ``start_gap`` = step-0 loss / small loss - 1."""
    rows = []
    for steps, runs in by_budget(results).items():
        for r in runs:
            for m, res in r.methods.items():
                if m == "scratch":
                    continue
                start = res.train_curve[0].val_loss
                rows.append(
                    {
                        "large_steps": steps,
                        "seed": r.base_seed,
                        "method": m,
                        "small": r.small_loss,
                        "grown": res.notes.get("val_loss_grown"),
                        "start": start,
                        "start_gap": start / r.small_loss - 1.0,
                    }
                )
    return rows


def goal(results: Sequence[Result]) -> dict:
    """The issue's goal, checked as stated, per budget: the better LiGO method (:func:`best_ligo`, one choice for
    all budgets) saves at least :data:`GOAL_SAVED` on average and more than each non-LiGO growth method on every
    seed; and the ``lossless`` start's step-0 loss is within :data:`GOAL_START_GAP` of the small model's on every
    run. Returns ``{'ligo': name, 'budgets': [{large_steps, mean, min, beats_all_seeds, met}], 'start_gap_max',
    'start_ok', 'met'}``."""
    best = best_ligo(results)
    budgets = []
    if best is not None:
        rows = {(r["large_steps"], r["method"]): r for r in sweep_rows(results)}
        wins = seed_wins(results)
        for steps in by_budget(results):
            row = rows.get((steps, best))
            vals = [] if row is None else [v for v in row["per_seed"].values()]
            leads = [w["lead"].get(best) for w in wins if w["large_steps"] == steps]
            all_reached = bool(vals) and None not in vals
            mean = statistics.fmean(vals) if all_reached else None
            beats = bool(leads) and all(lead is not None and lead > 0 for lead in leads)
            budgets.append(
                {
                    "large_steps": steps,
                    "mean": mean,
                    "min": min(vals) if all_reached else None,
                    "beats_all_seeds": beats,
                    "met": mean is not None and mean >= GOAL_SAVED and beats,
                }
            )
    gaps = [abs(x["start_gap"]) for x in start_losses(results) if x["method"] == "lossless"]
    start_ok = bool(gaps) and max(gaps) <= GOAL_START_GAP
    return {
        "ligo": best,
        "budgets": budgets,
        "start_gap_max": max(gaps) if gaps else None,
        "start_ok": start_ok,
        "met": bool(budgets) and all(b["met"] for b in budgets) and start_ok,
    }
