"""Learning-rate schedules of the experiment: one :class:`Schedule` shape (linear warm-up, cosine decay, a floor) and
the schedules of each phase: the small model and scratch (:func:`run_schedule`), the grown models
(:func:`grown_schedule`, one of :data:`GROWN_SCHEDULES`, the same for every growth method) and the operator
(:func:`operator_schedule`, from :class:`ligo_fast.budget.OperatorBudget`).

Grown-model schedules (``--grown-schedule``):

* ``same`` (default): the scratch run's schedule. A grown model gets no schedule of its own, so a saving cannot
  come from a schedule tuned for grown models; the published recipes disagree (below), and this choice adds no knob.
* ``no-rewarm``: no warm-up, the peak from the first step, as the official LiGO command for BERT trains the grown
  model (``--warmup_steps 0``; its RoBERTa command keeps the full warm-up).
* ``lemon``: LEMON's recommendation (Wang et al., ICLR 2024): keep the peak learning rate, decay faster. Here the
  cosine reaches its floor at :data:`LEMON_DECAY` of the run and stays there; the factor is this experiment's
  parameterisation of "faster", not a number from the paper.

Imports :mod:`.presets` and ``ligo_fast.budget``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ligo_fast.budget import OperatorBudget

from .presets import Preset

GROWN_SCHEDULES = ("same", "no-rewarm", "lemon")
LEMON_DECAY = 0.5
"""``lemon``: the share of the run over which the cosine decays to its floor."""


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up from ``peak / warmup`` to ``peak`` over steps ``0 .. warmup - 1`` (``warmup`` 0: the peak from
    step 0), then cosine decay to ``min_frac * peak`` at step ``decay_end``, flat after it."""

    peak: float
    warmup: int
    decay_end: int
    min_frac: float

    def lr(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.decay_end - self.warmup))
        return self.peak * (self.min_frac + (1 - self.min_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def run_schedule(p: Preset, steps: int, peak: float) -> Schedule:
    """The preset's schedule over ``steps`` steps: warm-up ``ceil(warmup_frac * steps)``, cosine to the end."""
    return Schedule(peak, math.ceil(p.warmup_frac * steps), steps, p.min_lr_frac)


def grown_schedule(p: Preset) -> Schedule:
    """The schedule of every grown model's training (``p.grown_schedule``, see the module docstring)."""
    base = run_schedule(p, p.large_steps, p.lr)
    if p.grown_schedule == "same":
        return base
    if p.grown_schedule == "no-rewarm":
        return Schedule(p.lr, 0, p.large_steps, p.min_lr_frac)
    if p.grown_schedule == "lemon":
        return Schedule(p.lr, base.warmup, max(base.warmup + 1, math.ceil(LEMON_DECAY * p.large_steps)), p.min_lr_frac)
    raise ValueError(f"unknown grown schedule {p.grown_schedule!r}; choose from {', '.join(GROWN_SCHEDULES)}")


def operator_schedule(b: OperatorBudget, min_frac: float) -> Schedule:
    """The operator's: ``b.warmup`` warm-up steps at ``b.lr``, cosine to ``min_frac`` over its ``b.steps``."""
    return Schedule(b.lr, b.warmup, b.steps, min_frac)
