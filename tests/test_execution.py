"""The execution plan as a pure function (ligo_fast.execution.plan_execution), tabulated: from the batch shape, the
options and the memory budget to the forms of the grown linears, memory-lean mode and its chunk; its cache; the
binder that applies it (ligo_fast.binding)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _models import build, configs
from torch import nn

import ligo_fast
from ligo_fast import factored
from ligo_fast.binding import Binding, installed
from ligo_fast.config import ExecutionOptions
from ligo_fast.execution import BatchShape, Target, decide, plan_execution
from ligo_fast.factored import Form
from ligo_fast.memory import MemoryPlan

NAME, L2 = "LlamaForCausalLM", 9  # chunks of 3 layers by default
PLENTY = 10**15


@pytest.fixture(scope="module")
def growth():
    small_cfg, large_cfg = configs(NAME)
    large_cfg.num_hidden_layers = L2
    return ligo_fast.grow(build(NAME, small_cfg), large_cfg).plan, large_cfg


def _target(growth, budget: int = PLENTY, factorable: bool = True) -> Target:
    plan, cfg = growth
    ok = frozenset(plan.slots[i].name for i in factored.candidates(plan.slots)) if factorable else frozenset()
    return Target(plan, cfg, torch.device("cpu"), 4, (budget, "test"), factorable=ok)


def _eager(growth, tokens: int, mode: str) -> MemoryPlan:
    """The eager step's estimate of ``tokens`` tokens in ``mode`` (with plenty of memory)."""
    return plan_execution(_target(growth), BatchShape(tokens, 7), ExecutionOptions(lean=False, linear_mode=mode)).memory


# (id, options, batch, budget: "plenty" or a function of the eager estimates, factorable, expected)
# expected: forms (set of Form values, "all": every candidate factored), lean, chunk
CASES = [
    ("materialize", dict(linear_mode="materialize"), BatchShape(14, 7), "plenty", True, (set(), False, 3)),
    ("factored: every candidate", dict(linear_mode="factored"), BatchShape(14, 7), "plenty", True, ("all", False, 3)),
    ("factored: no module can", dict(linear_mode="factored"), BatchShape(14, 7), "plenty", False, (set(), False, 3)),
    ("compiling: no forms", dict(linear_mode="factored"), BatchShape(14, 7, compiling=True), "plenty", True,
     (set(), False, 3)),
    ("reentrant checkpointing: no forms", dict(), BatchShape(14, 7, reentrant=True), "plenty", True,
     (set(), False, 3)),
    ("auto, few tokens: factored", dict(), BatchShape(14, 7), "plenty", True, ({Form.FACTORED}, False, 3)),
    ("auto, 200 tokens eager: one-side forms too", dict(), BatchShape(200, 7), "plenty", True,
     ({Form.FACTORED, Form.OUT, Form.IN}, False, 3)),
    ("auto, 200 tokens lean: no one-side form", dict(lean=True), BatchShape(200, 7), "plenty", True,
     ({Form.FACTORED}, True, 3)),
    ("lean forced off", dict(lean=False), BatchShape(200, 7), "tight", True, (None, False, 3)),
    ("auto lean: the eager step does not fit", dict(), BatchShape(200, 7), "tight", True, ({Form.FACTORED}, True, 3)),
    ("auto lean: no gradients, nothing kept", dict(), BatchShape(200, 7, grad=False), "tight", True,
     ({Form.FACTORED, Form.OUT, Form.IN}, False, 3)),
    ("auto lean: smaller chunks until it fits", dict(), BatchShape(200, 7), "lean-2", True, ({Form.FACTORED}, True, 1)),
    ("factored weights are not produced: eager fits", dict(linear_mode="factored"), BatchShape(14, 7), "between",
     True, ("all", False, 3)),
    ("materialized weights are: lean", dict(linear_mode="materialize"), BatchShape(14, 7), "between", True,
     (set(), True, 3)),
]  # fmt: skip


def _budget(growth, rule: str, batch: BatchShape) -> int:
    if rule == "plenty":
        return PLENTY
    if rule == "tight":  # below the eager step in the auto forms, above its lean step
        m = _eager(growth, batch.tokens, "auto")
        return int((m.eager - 1) / 0.9)
    if rule == "lean-2":  # the lean step with chunks of 3 layers does not fit, with 1 it does
        m = dataclasses.replace(_eager(growth, batch.tokens, "auto"), chunk=1)
        return int((m.lean + 1) / 0.9)
    # between the eager step with every candidate factored and the eager step with every weight produced
    lo, hi = _eager(growth, batch.tokens, "factored").eager, _eager(growth, batch.tokens, "materialize").eager
    assert lo < hi
    return int((lo + hi) / 2 / 0.9)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_plan_execution_table(growth, case):
    _, options, batch, rule, factorable, (forms, lean, chunk) = case
    target = _target(growth, _budget(growth, rule, batch), factorable)
    plan = plan_execution(target, batch, ExecutionOptions(**options))
    slots = growth[0].slots
    if forms == "all":
        assert plan.forms == dict.fromkeys(factored.candidates(slots), Form.FACTORED)
    elif forms is not None:
        assert set(plan.forms.values()) == forms
    assert (plan.lean, plan.chunk) == (lean, chunk)
    if rule == "lean-2":
        assert plan.memory.fits and not dataclasses.replace(plan.memory, chunk=3).fits
    assert plan.skip == frozenset(slots[i].name for i in plan.forms)
    assert plan.memory.chunk == plan.chunk and plan.memory.tokens == batch.tokens
    # the estimate is of the step in these forms: the weights they leave unproduced are not counted
    assert plan.memory.step_produced <= plan.memory.produced
    assert (plan.memory.step_produced < plan.memory.produced) == any(f == Form.FACTORED for f in plan.forms.values())
    assert plan_execution(target, batch, ExecutionOptions(**options)) == plan  # a function of its arguments


def test_the_memory_estimate_counts_the_forms_weights(growth):
    """A factored linear produces its small-width depth mix only, a one-side form one side (per layer)."""
    slots = growth[0].slots
    full, fact = _eager(growth, 14, "materialize"), _eager(growth, 14, "factored")
    saved = {True: 0, False: 0}  # in the blocks, outside them
    for i in factored.candidates(slots):
        s = slots[i]
        (o1, i1), (o2, i2) = s.view_w, s.shape_w
        saved[s.layered] += (o2 * i2 - o1 * i1) * 4 * (L2 if s.layered else 1)
    assert full.step_produced == full.produced and full.produced - fact.step_produced == sum(saved.values())
    # here the blocks' weights and gradients are the peak either way (more than the global weights twice)
    for m in (full, fact):
        assert 2 * m._step[0] < m.layers * m._step[1]
    assert full.eager - fact.eager == 2 * saved[True]


def test_the_eager_estimate_peaks_at_the_blocks_end_or_at_the_head():
    """Backward holds every block weight and its gradient at the blocks' end (the global weights are freed by
    then), or the block weights and a global weight with its gradient at the head: the larger of the two."""
    base = dict(device="cpu", available=2**40, resident=7, optimizer=11, produced=0, produced_global=0,
                produced_layer=0, activations=13, tokens=1, layers=4)  # fmt: skip
    blocks_peak = MemoryPlan(**base, step_global=5, step_layer=3)  # blocks 12, globals 5: 2 * 12 > 12 + 2 * 5
    head_peak = MemoryPlan(**base, step_global=9, step_layer=2)  # blocks 8, globals 9: 8 + 2 * 9 > 2 * 8
    assert blocks_peak.eager == 7 + 11 + 13 + 2 * 12 and head_peak.eager == 7 + 11 + 13 + 8 + 2 * 9
    # lean: one chunk's weights, its gradients and the next chunk, or the globals with theirs; and the stacked rows
    lean = dataclasses.replace(blocks_peak, chunk=1, stacked=17)
    assert lean.lean == 7 + 11 + 13 + 17 + max(2 * 5, 3 * 3)


def test_decide_computes_each_plan_once(growth):
    plans, calls = {}, []

    def target():
        calls.append(1)
        return _target(growth)

    a = decide(plans, BatchShape(14, 7), ExecutionOptions(), torch.ones(1), target)
    assert decide(plans, BatchShape(14, 7), ExecutionOptions(), torch.ones(1), target) == a
    assert len(calls) == 1 and isinstance(a, tuple)
    b = decide(plans, BatchShape(14, 7), ExecutionOptions(linear_mode="materialize"), torch.ones(1), target)
    c = decide(plans, BatchShape(14, 7, grad=False), ExecutionOptions(), torch.ones(1), target)
    d = decide(plans, BatchShape(14, 7), ExecutionOptions(), torch.ones(1, dtype=torch.float64), target)
    assert len({a, b, c, d}) == 4 and len(calls) == 4 and not plans[b].forms and plans[a].forms


def test_the_model_views_are_the_plans(growth):
    small_cfg, large_cfg = configs(NAME)
    model = ligo_fast.grow(build(NAME, small_cfg), large_cfg, lean=True)
    x = {"input_ids": torch.randint(0, 50, (2, 7))}
    plan = model.execution_plan((), x)
    assert (plan.tokens, plan.seq_len, plan.lean) == (14, 7, True)
    assert model.factored_plan((), x) == dict(plan.forms) and model.lean_now((), x) is True
    assert model.lean_chunk((), x) == plan.chunk and model.memory_plan(**x) is plan.memory
    assert model.execution_options == ExecutionOptions(lean=True)
    assert plan.memory.elem == 4 and model.double().memory_plan(**x).elem == 8  # a plan per dtype too
    model.execution_options = ExecutionOptions(linear_mode="materialize")  # e.g. on a loaded operator
    assert not model.lean_now((), x) and not model.factored_plan((), x)
    model.execution_options = ExecutionOptions(memory_budget=12345)
    assert model.memory_budget == 12345 and model.lean_now((), x)  # the eager step does not fit in 12 kB
    with pytest.raises(TypeError, match="ExecutionOptions"):
        model.execution_options = {"lean": True}


def test_a_binding_installs_and_restores():
    root = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    del root[0]._parameters["weight"]
    w, w2 = torch.randn(2, 3), torch.randn(2, 3)
    with Binding() as b:
        b.install_named(root, {"0.weight": w})
        b.install(root[1], "forward", lambda x: x)
        assert root[0].weight is w and root[1](torch.ones(2)).tolist() == [1.0, 1.0]
        assert {(leaf, id(v)) for _, leaf, v in installed(root)} >= {("weight", id(w))}
        with Binding() as inner:  # over what is there: restored on exit
            inner.install(root[0], "weight", w2)
            assert root[0].weight is w2
        assert root[0].weight is w and installed(root[0]) == [(root[0], "weight", w)]
        b.remove_named(root, ["0.weight"])
        assert "weight" not in root[0].__dict__
    assert installed(root) == [] and "forward" not in root[1].__dict__
    assert root[1](torch.ones(2)).shape == (2,)
