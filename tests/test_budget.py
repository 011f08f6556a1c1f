"""The operator budget rule (ligo_fast.budget): 5% of the large steps within [10, 100], the large model's learning
rate (divided by the square root of the small width from a function-preserving start), a tenth as warm-up; the
overrides; the errors."""

import math

import pytest

from ligo_fast import budget
from ligo_fast.budget import OperatorBudget, operator_budget


@pytest.mark.parametrize(
    "large_steps, steps",
    [
        (1, 10),  # the floor: a tiny budget still gets Adam's 10-step horizon (share > 5% here)
        (199, 10),  # 9.95 rounds to 10
        (200, 10),
        (210, 11),  # 10.5 rounds half up
        (400, 20),  # the demo preset: 5%
        (1600, 80),
        (2000, 100),
        (2021, 100),  # the cap: the paper's 100 steps
        (400_000, 100),  # the paper's BERT-Base run: 0.025%
    ],
)
def test_default_rule(large_steps, steps):
    b = operator_budget(large_steps, 3e-3)
    assert (b.steps, b.lr, b.large_steps, b.source) == (steps, 3e-3, large_steps, "rule")
    assert b.warmup == -(-steps // 10)  # ceil(steps / 10)
    assert b.share == pytest.approx(steps / large_steps)


def test_the_constants_are_the_documented_ones():
    assert (budget.OPERATOR_FRACTION, budget.MIN_OPERATOR_STEPS, budget.MAX_OPERATOR_STEPS) == (0.05, 10, 100)
    assert (budget.OPERATOR_WARMUP_SHARE, budget.MIN_CONTINUED_WARMUP) == (0.1, 10)


@pytest.mark.parametrize(
    "steps, warmup",
    [(0, 0), (1, 1), (4, 4), (10, 10), (11, 10), (37, 10), (100, 10), (101, 11), (300, 30)],
)
def test_function_preserving_start_warms_up_at_least_10_steps_within_the_budget(steps, warmup):
    b = operator_budget(400, 3e-4, steps=steps, preserved_width=640)
    assert (b.steps, b.warmup, b.lr_rule) == (steps, warmup, "continued")
    assert operator_budget(400, 3e-4, steps=steps).warmup == -(-steps // 10)  # the official inits: a tenth


def test_fraction_override_has_no_floor_and_no_cap():
    assert operator_budget(400, 1e-3, fraction=0.01).steps == 4  # below the floor
    assert operator_budget(400_000, 1e-3, fraction=0.01).steps == 4000  # above the cap
    assert operator_budget(7, 1e-3, fraction=0.001).steps == 1  # at least one step
    b = operator_budget(300, 1e-3, fraction=1.0)
    assert (b.steps, b.warmup, b.source) == (300, 30, "fraction")


def test_steps_override_is_used_as_given():
    b = operator_budget(400, 2e-3, steps=37)
    assert (b.steps, b.warmup, b.source, b.lr) == (37, 4, "steps", 2e-3)
    none = operator_budget(400, 2e-3, steps=0)  # no operator training at all
    assert (none.steps, none.warmup, none.share) == (0, 0, 0.0)
    assert operator_budget(10, 2e-3, steps=500).steps == 500  # longer than the budget: the caller's choice


def test_describe_names_share_and_source():
    assert operator_budget(400, 2e-3).describe() == (
        "20 operator steps (5.0% of 400 large steps; rule), lr 0.002 (large), warm-up 2"
    )
    assert operator_budget(400, 3e-4, preserved_width=576).describe() == (
        "20 operator steps (5.0% of 400 large steps; rule), lr 1.25e-05 (continued), warm-up 10"
    )


@pytest.mark.parametrize("width", [1, 7, 576, 640, 4096])
def test_continued_training_lr_from_a_function_preserving_start(width):
    b = operator_budget(400, 3e-4, preserved_width=width)
    assert b.lr == pytest.approx(3e-4 / math.sqrt(width), rel=1e-12) and b.lr_rule == "continued"
    assert (b.steps, b.warmup, b.source) == (20, 10, "rule")  # the steps do not depend on the start; the warm-up
    # has a floor of 10 steps from a function-preserving start
    assert budget.operator_lr(3e-4, width) == b.lr
    assert budget.operator_lr(3e-4, 640) == pytest.approx(1.1859e-5, rel=1e-4)  # Gemma 3 270M, by hand
    official = operator_budget(400, 3e-4)
    assert (official.lr, official.lr_rule) == (3e-4, "large") and budget.operator_lr(3e-4) == 3e-4


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0, 1e-3), {}, "large_steps"),
        ((2.5, 1e-3), {}, "large_steps"),
        ((True, 1e-3), {}, "large_steps"),
        ((100, 0.0), {}, "large_lr"),
        ((100, float("nan")), {}, "large_lr"),
        ((100, float("inf")), {}, "large_lr"),
        ((100, 1e-3), {"fraction": 0.0}, "fraction"),
        ((100, 1e-3), {"fraction": 1.5}, "at most 1"),
        ((100, 1e-3), {"steps": -1}, "steps"),
        ((100, 1e-3), {"steps": 3.0}, "steps"),
        ((100, 1e-3), {"steps": 5, "fraction": 0.1}, "not both"),
        ((100, 1e-3), {"preserved_width": 0}, "preserved_width"),
        ((100, 1e-3), {"preserved_width": 64.0}, "preserved_width"),
    ],
)
def test_bad_input_is_one_clear_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        operator_budget(*args, **kwargs)


def test_budget_is_a_frozen_value():
    b = operator_budget(400, 2e-3)
    assert b == OperatorBudget(20, 2e-3, 2, 400, "rule")
    with pytest.raises(AttributeError):
        b.steps = 3


def test_depth_only_growth_from_a_function_preserving_start_trains_no_operator():
    """The rule's 0 steps for a growth that keeps every width from a function-preserving start (the evidence:
    benchmarks/results/real_model_plain_vs_operator_plan.md, addendum 8); overrides and other starts unchanged."""
    b = operator_budget(400, 3e-4, preserved_width=640, widens=False)
    assert (b.steps, b.warmup, b.source, b.lr_rule) == (0, 0, "rule: depth only", "continued")
    assert operator_budget(400, 3e-4, preserved_width=640).steps == 20  # width grows: the rule's 5%
    assert operator_budget(400, 3e-4, widens=False).steps == 20  # an official init: the rule's 5%
    b = operator_budget(400, 3e-4, steps=7, preserved_width=640, widens=False)  # an override still trains
    assert (b.steps, b.warmup, b.source) == (7, 7, "steps")
    assert operator_budget(400, 3e-4, fraction=0.1, preserved_width=640, widens=False).steps == 40
