"""How long to train the growth operator: its steps, learning rate and warm-up, derived from the large model's budget.

The rule (:func:`operator_budget`), for a large model trained ``large_steps`` optimizer steps at peak learning
rate ``large_lr``:

* **steps** = ``clamp(round(OPERATOR_FRACTION * large_steps), MIN_OPERATOR_STEPS, MAX_OPERATOR_STEPS)``, i.e. 5% of
  the large budget, at least 10 and at most 100 steps;
* **lr** = ``large_lr / sqrt(preserved_width)`` when the operator starts from the small model's function (a
  function-preserving init; ``preserved_width`` is the small model's hidden width): continued training of a
  pretrained model; ``large_lr`` (the official code's choice) when it does not (``preserved_width`` None);
* **no operator for depth-only growth from a function-preserving start**: when the growth keeps every width
  (``widens=False``) and starts from the small model's function (``preserved_width`` given), **steps** = 0: the
  function-preserving start (identity blocks, LLaMA-Pro's start) is materialised as it is;
* **warmup** = ``ceil(OPERATOR_WARMUP_SHARE * steps)``: a linear warm-up over the first tenth of the operator's
  steps (the caller decays after it, as it decays the large model); from a function-preserving start at least
  ``min(steps, MIN_CONTINUED_WARMUP)`` steps.

Why (stated before any result of this rule was measured):

* *The paper's regime.* LiGO (Wang et al., ICLR 2023) trains the operator for 100 steps, then BERT-Base for 400k
  steps: the operator costs 0.025% of the run, so small that its step count never had to be traded against the
  budget. The official code trains the operator with the configuration's learning rate, the same 2e-4 as the large
  model (``configs/bert_wiki.txt``; its RoBERTa commands pass ``--learning_rate 2e-4`` to both runs). Copying the
  absolute 100 steps into a budget of a few hundred steps turns a negligible cost into a quarter of the budget;
  copying the 0.03% share gives less than one step. Neither transfers, so the rule keeps what made the paper's
  choice sensible: a cost that stays small next to the saving, and enough steps for the optimizer to move.
* *5% of the budget.* Growth is worth doing for the compute it saves: the published savings against training from
  scratch are 33% to 57% (LiGO 44.7% on BERT-Base; bert2BERT about 45%; LEMON 33.2% on BERT and 56.7% on ViT). An
  operator that costs an order of magnitude less than that, at most about 5%, cannot eat the saving it is meant to
  buy, whatever it learns.
* *At most 100 steps.* The paper's count, enough for its BERT-Base result; past it more operator steps are pure
  cost. With the cap, the rule gives the paper's 100 steps for any budget of 2000 steps or more (0.025% at 400k).
* *At least 10 steps.* Adam's first moment averages the last ``1 / (1 - beta1) = 10`` gradients; fewer steps than
  that are a handful of sign-like updates on single batches rather than training. Below 200 large steps this floor
  makes the share larger than 5%.
* *The large model's learning rate, from the official inits.* The official code's choice (one learning rate for both
  phases): its inits do not preserve the small model's function, so the operator starts far from any good point
  and trains like a model from scratch.
* *Divided by the square root of the small width, from a function-preserving start.* Then the operator starts at
  the pretrained small model's loss, and its job is continued training that must not destroy it
  (continued-pretraining practice: LLaMA-Pro and the re-warming studies keep the learning rate at or below the
  pretraining's). An Adam step moves every coefficient of a width matrix by about ``lr``, and a produced row is
  ``sum_j E[r, j] W[j]`` over the ``d`` small rows: with independent signs the row moves by about
  ``lr * sqrt(d)`` times a row's size, so the division keeps the relative change of a produced weight per
  operator step at about ``large_lr``, what a step of the large model itself would make. (A linear ``/ d`` rule,
  for signs coherent across a row, was the default for one day: its evidence had been taken on a grown Gemma
  whose added layers amplified any step a thousandfold, a defect since fixed; on the fixed start, at equal FLOPs,
  ``/ sqrt(d)`` lowered a real Gemma 3 270M's held-out loss several times more than ``/ d`` on two batch seeds,
  by a protocol stated before the second seed.) The reasons in full, with their sources and the measurements:
  ``benchmarks/results/defaults_rationale.md``.
* *No operator steps on depth-only growth from a function-preserving start* (decided by a rule stated before its
  deciding runs: ``benchmarks/results/real_model_plain_vs_operator_plan.md``, addendum 8). The operator of a
  depth-only growth is its depth coefficients (an ``L2 x L1`` matrix per module kind) over copies of small layers; on
  the toy presets its steps bought nothing at any learning rate or budget tried, and on a real pretrained
  checkpoint plain training of the identity-block start at equal FLOPs lowered the held-out loss several times
  more than the operator's steps, on both seeds run: the steps are better spent training the large model. Width
  growth keeps the operator (there its steps paid on the real checkpoint). The evidence:
  ``benchmarks/results/axis_savings_eval.md`` and ``real_model_check.md``.
* *A tenth as warm-up.* The operator's optimizer starts fresh, and its first Adam steps have the full size of the
  learning rate whatever the gradient's magnitude; a short ramp keeps those steps small while the moment estimates
  settle, as the large model's own warm-up does (its schedule, not the operator's, is the caller's).
* *At least 10 warm-up steps from a function-preserving start* (bounded by the budget): a tenth of a short budget is
  one step, i.e. no warm-up, and an un-warmed first Adam step of full size can destroy the pretrained function the
  start preserves. The variance of Adam's adaptive step stays large until its second moment has averaged many
  gradients (Liu et al., ICLR 2020), and an untuned warm-up of ``2 / (1 - beta2)`` steps is recommended for it (Ma &
  Yarats, AAAI 2021): longer than any operator budget, so the floor is the shortest horizon with a reason, Adam's
  first-moment horizon ``1 / (1 - beta1)`` = 10 steps (as for the step floor). The official inits keep a tenth.

Overrides: ``fraction`` (a share of ``large_steps``, used as given: no floor, no cap) or ``steps`` (an absolute
count; 0 means no operator training); at most one of them. Results measured with this rule, and every variant tried,
are in ``benchmarks/results/`` (``growth_savings_*``), not here.

Pure: imports only the standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OPERATOR_FRACTION = 0.05
"""Default operator steps as a share of the large model's steps."""
MIN_OPERATOR_STEPS = 10
"""Floor of the default rule (Adam's first-moment horizon ``1 / (1 - 0.9)``)."""
MAX_OPERATOR_STEPS = 100
"""Cap of the default rule (the paper's operator steps)."""
OPERATOR_WARMUP_SHARE = 0.1
"""Linear warm-up of the operator, as a share of its steps (rounded up)."""
MIN_CONTINUED_WARMUP = 10
"""Floor of the warm-up from a function-preserving start (Adam's first-moment horizon), at most the steps."""


@dataclass(frozen=True)
class OperatorBudget:
    """The operator's training budget.

    Attributes:
        steps: operator optimizer steps (0: none; the operator stays at its initialisation).
        lr: peak learning rate of the operator.
        warmup: linear warm-up steps of the operator (``<= steps``).
        large_steps: the large model's steps this budget was derived from.
        source: how ``steps`` was set: ``rule`` (the default rule), ``rule: depth only`` (the rule's 0 steps of a
            depth-only growth from a function-preserving start), ``fraction`` or ``steps`` (an override).
        lr_rule: how ``lr`` was set: ``continued`` (a function-preserving start: ``large_lr / sqrt(width)``) or
            ``large`` (the large model's learning rate).
    """

    steps: int
    lr: float
    warmup: int
    large_steps: int
    source: str
    lr_rule: str = "large"

    @property
    def share(self) -> float:
        """Operator steps per large-model step (an operator step costs about one large step, slightly more)."""
        return self.steps / self.large_steps

    def describe(self) -> str:
        """One line, e.g. ``20 operator steps (5.0% of 400 large steps; rule), lr 0.002, warm-up 2``."""
        return (
            f"{self.steps} operator steps ({100 * self.share:.1f}% of {self.large_steps} large steps; {self.source}), "
            f"lr {self.lr:.3g} ({self.lr_rule}), warm-up {self.warmup}"
        )


def _positive_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _finite_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def warmup_factor(step: int, warmup: int) -> float:
    """The share of the operator's peak learning rate at its step ``step`` (1-based): ``step / warmup`` during a
    linear warm-up of ``warmup`` steps, then 1. The command line and ``GrowthCallback`` share it: the first step
    already moves, at ``1 / warmup`` of the peak (transformers' warm-up would give it 0, wasting a step)."""
    return min(1.0, step / warmup) if warmup > 0 else 1.0


def operator_lr(large_lr: float, preserved_width: int | None = None) -> float:
    """The operator's peak learning rate: ``large_lr / sqrt(preserved_width)`` from a function-preserving start of a
    small model ``preserved_width`` wide, ``large_lr`` from the official inits (None); the reasons: the module doc."""
    lr = _finite_positive("large_lr", large_lr)
    if preserved_width is None:
        return lr
    return lr / math.sqrt(_positive_int("preserved_width", preserved_width, 1))


def operator_budget(
    large_steps: int,
    large_lr: float,
    *,
    fraction: float | None = None,
    steps: int | None = None,
    preserved_width: int | None = None,
    widens: bool = True,
) -> OperatorBudget:
    """The operator's steps, learning rate and warm-up for a large model trained ``large_steps`` steps at peak
    learning rate ``large_lr`` (the rule and its reasons: this module's docstring).

    Args:
        large_steps: optimizer steps of the large model's training (>= 1).
        large_lr: its peak learning rate (> 0), from which the operator's follows (:func:`operator_lr`).
        fraction: override: operator steps = ``round(fraction * large_steps)`` (at least 1), ``0 < fraction <= 1``.
        steps: override: this many operator steps (>= 0).
        preserved_width: the small model's hidden width when the operator starts from its function
            (``LiGOModel.preserved_width``); None: an official init.
        widens: whether the growth makes any width larger (``LiGOModel.widens``); with ``False`` and a
            ``preserved_width`` the rule gives 0 steps (depth-only growth: no operator; overrides still apply).

    Raises:
        ValueError: a bad value, or both ``fraction`` and ``steps``.
    """
    large_steps = _positive_int("large_steps", large_steps, 1)
    lr = operator_lr(large_lr, preserved_width)
    if fraction is not None and steps is not None:
        raise ValueError("give the operator budget as fraction or as steps, not both")
    if steps is not None:
        n, source = _positive_int("steps", steps, 0), "steps"
    elif fraction is not None:
        f = _finite_positive("fraction", fraction)
        if f > 1:
            raise ValueError(f"fraction is a share of the large model's steps, at most 1, got {fraction!r}")
        n, source = max(1, math.floor(f * large_steps + 0.5)), "fraction"
    else:
        n = math.floor(OPERATOR_FRACTION * large_steps + 0.5)
        n, source = min(MAX_OPERATOR_STEPS, max(MIN_OPERATOR_STEPS, n)), "rule"
        if preserved_width is not None and not widens:
            n, source = 0, "rule: depth only"
    rule = "large" if preserved_width is None else "continued"
    warmup = math.ceil(OPERATOR_WARMUP_SHARE * n)
    if rule == "continued":
        warmup = max(warmup, min(n, MIN_CONTINUED_WARMUP))
    return OperatorBudget(n, lr, warmup, large_steps, source, rule)
