"""One execution plan per batch: how a grown model's forward runs, decided by one pure function, applied by one binder.

Decide: :func:`plan_execution` maps (the growth plan and what is fixed for a model on a device: :class:`Target`; the
batch's shape: :class:`BatchShape`; the execution options: :class:`ligo_fast.config.ExecutionOptions`) to an
:class:`ExecutionPlan`: the form of every grown linear (factored, one side produced, or produced;
:mod:`ligo_fast.factored`), memory-lean mode on or off and its chunk of layers (:mod:`ligo_fast.lean`), the backend,
whether the production runs under activation checkpointing, and the memory estimate of the step in those forms
(:mod:`ligo_fast.memory`: a factored weight is not produced). The steps:

1. the forms the cost model picks for the eager path (none under ``torch.compile``; none with reentrant activation
   checkpointing, whose recompute cannot see a factored forward: ``linear_mode="materialize"`` then);
2. lean mode: as the options say, else on while gradients are recorded and the eager step in those forms would not
   fit in the budget;
3. lean: the forms again without the one-side forms (they would hold a partly produced weight of every layer), and
   the chunk of about ``sqrt(L2)`` layers halved until the lean step fits.

A model keeps its plans per batch shape (:func:`decide`): a run decides once per shape, as a function of the
memory budget read once, so it does not switch paths as the machine's free memory changes.

Bind: :func:`bind` installs, for the duration of a call, what each module needs (:class:`ligo_fast.binding.Binding`):
the factored forwards, the produced weights (all of them before the call, or the global ones and then the blocks'
chunk by chunk in lean mode). :class:`ligo_fast.LiGOModel` and the official API's wrapped model
(:mod:`ligo_fast.compat`) both run a batch as "decide, bind, run".

Imports: ``backends``, ``binding``, ``config``, ``factored``, ``lean``, ``memory``, ``plan``, ``produce``, ``rows``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import backends, factored
from .binding import Binding
from .config import ExecutionOptions
from .factored import Form
from .lean import chunk_layers, default_chunk, lean_layers
from .memory import MemoryPlan, estimate, memory_budget
from .plan import Plan, Slot
from .produce import Getter, chunk_producer, produce
from .rows import RowGetter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What an execution plan is for, fixed for a model on a device.

    Attributes:
        growth: the growth plan (slots, operator tensors, ties).
        config: the large HF config (the activations' estimate reads its sizes).
        device: where the step runs; ``elem``: bytes per element of the operator's tensors.
        budget: ``(bytes, source)``: the memory the step plans with (:func:`ligo_fast.memory.memory_budget`).
        leftover_bytes: the large model's own tensors (not produced).
        factorable: names of the slots whose modules accept a factored forward (:func:`ligo_fast.factored.module_ok`).
        checkpointed: whether the backend's production saves intermediates for backward (the pure-PyTorch one), so
            that lean mode runs it under activation checkpointing.
    """

    growth: Plan
    config: object
    device: torch.device
    elem: int
    budget: tuple[int, str]
    leftover_bytes: int = 0
    factorable: frozenset[str] = frozenset()
    checkpointed: bool = False

    @classmethod
    def of(
        cls, growth: Plan, config, like: Tensor, budget: tuple[int, str], options: ExecutionOptions,
        ok: Callable[[Slot], bool], leftover_bytes: int = 0,
    ) -> Target:  # fmt: skip
        """The target of a model whose operator tensors are like ``like`` (device, dtype), whose candidate slots'
        modules ``ok`` accepts factored, and whose production runs on ``options.backend`` (loaded here, to ask it
        whether its ops save intermediates: :attr:`ligo_fast.backends.Backend.saves_intermediates`)."""
        slots = growth.slots
        factorable = frozenset(slots[i].name for i in factored.candidates(slots) if ok(slots[i]))
        checkpointed = backends.resolve(options.backend, like.device).saves_intermediates
        return cls(growth, config, like.device, like.element_size(), budget, leftover_bytes, factorable, checkpointed)


@dataclass(frozen=True)
class BatchShape:
    """What of a batch and of the call's context the plan depends on: tokens, sequence length, whether gradients
    are recorded, reentrant activation checkpointing, tracing by ``torch.compile``."""

    tokens: int
    seq_len: int
    grad: bool = True
    reentrant: bool = False
    compiling: bool = False


@dataclass(frozen=True)
class ExecutionPlan:
    """How one batch shape runs (see the module docstring).

    Attributes:
        forms: ``{slot index: form}`` of the grown linears that run factored (:class:`ligo_fast.factored.Form`);
            the other slots are produced.
        lean: memory-lean mode; ``chunk``: its layers per chunk.
        backend: the ops' backend (as requested: ``auto`` lets each op choose); ``checkpointed``: lean mode runs
            the production under activation checkpointing.
        memory: the step's memory estimate in these forms (eager or lean as chosen).
        tokens, seq_len: the batch shape it was decided for.
        skip: the slots (by name) whose weight is not produced (those of ``forms``).
    """

    forms: Mapping[int, Form]
    lean: bool
    chunk: int
    backend: str
    checkpointed: bool
    memory: MemoryPlan
    tokens: int
    seq_len: int
    skip: frozenset[str] = frozenset()


def plan_execution(target: Target, batch: BatchShape, options: ExecutionOptions) -> ExecutionPlan:
    """The execution plan of ``batch`` on ``target`` under ``options``: a pure function of its arguments (the
    module docstring lists its steps)."""
    g = target.growth
    mode = "materialize" if batch.reentrant else options.linear_mode

    def forms(half: bool) -> dict[int, Form]:
        if batch.compiling:  # a factored forward replaces a module's forward for one call: no graph holds that
            return {}

        def ok(slot) -> bool:
            return slot.name in target.factorable

        args = (g.slots, g.L1, batch.tokens, target.elem, target.device, g.aliases)
        return factored.choose(mode, *args, ok=ok, half=half)

    def memory(chosen: Mapping[int, Form], chunk: int) -> MemoryPlan:
        available, source = target.budget
        return estimate(
            g, target.config, tokens=batch.tokens, seq_len=batch.seq_len, elem=target.elem,
            leftover_bytes=target.leftover_bytes, device=target.device, chunk=chunk, available=available,
            source=source, forms=chosen,
        )  # fmt: skip

    chosen = forms(half=True)
    mp = memory(chosen, default_chunk(g.L2))
    lean = options.lean if options.lean is not None else (batch.grad and mp.use_lean)
    if lean:
        chosen = forms(half=False)
        mp = memory(chosen, default_chunk(g.L2))
        while not mp.fits and mp.chunk > 1:  # smaller chunks until the lean step fits
            mp = dataclasses.replace(mp, chunk=mp.chunk // 2)
    return ExecutionPlan(
        forms=chosen, lean=bool(lean), chunk=mp.chunk, backend=options.backend,
        checkpointed=bool(lean) and target.checkpointed, memory=mp, tokens=batch.tokens, seq_len=batch.seq_len,
        skip=frozenset(g.slots[i].name for i in chosen),
    )  # fmt: skip


def budget_for(budgets: dict, device: torch.device, explicit: int | None) -> tuple[int, str]:
    """``budgets``' memory budget for ``device`` (``(bytes, source)``), read once
    (:func:`ligo_fast.memory.memory_budget`: ``explicit``, else the environment variable, else the free memory)."""
    if explicit is not None:  # the options' number, not a reading: whatever options are set later
        return memory_budget(device, explicit)
    if str(device) not in budgets:
        budgets[str(device)] = memory_budget(device, explicit)
        logger.info("memory budget on %s: %d bytes (%s)", device, *budgets[str(device)])
    return budgets[str(device)]


def decide(
    plans: dict, batch: BatchShape, options: ExecutionOptions, like: Tensor, target: Callable[[], Target]
) -> tuple:
    """The key in ``plans`` of the plan for (batch, options, the device and dtype of the operator's tensor ``like``),
    computed there once by :func:`plan_execution` (``target()`` is called only then). The key is a tuple of plain
    values: under ``torch.compile`` a constant of the trace (the caller decides outside the graph), and
    ``plans[key]`` a guarded lookup."""
    key = (str(like.device), str(like.dtype), *dataclasses.astuple(batch), *dataclasses.astuple(options))
    if key not in plans:
        plans[key] = plan = plan_execution(target(), batch, options)
        if plan.lean and options.lean is None:
            logger.info("memory-lean mode on: %s", plan.memory)
    return key


# ------------------------------------------------------------------------------------------------ bind
def batch_shape(args, kwargs, config) -> tuple[int, int]:
    """(tokens, sequence length) of a forward's arguments: what the plan depends on."""
    tokens = count_tokens(args, kwargs, config)
    ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], Tensor) else None)
    if ids is not None and ids.dim() >= 1:
        return tokens, ids.shape[-1]
    emb = kwargs.get("inputs_embeds")
    if emb is not None and emb.dim() >= 2:
        return tokens, emb.shape[-2]
    return tokens, tokens


def count_tokens(args, kwargs, config) -> int:
    """Tokens in this batch, from input_ids / inputs_embeds / pixel_values (1 when none is found)."""
    for key in ("input_ids", "inputs_embeds", "pixel_values"):
        t = kwargs.get(key)
        if t is None and args and key == "input_ids" and isinstance(args[0], Tensor):
            t = args[0]
        if t is None:
            continue
        if key == "input_ids":
            return t.numel()
        if key == "inputs_embeds":
            return t.numel() // t.shape[-1]
        patches = (getattr(config, "image_size", 1) // max(getattr(config, "patch_size", 1), 1)) ** 2 + 1
        return t.shape[0] * patches
    return 1


@contextmanager
def bind(
    large: nn.Module,
    growth: Plan,
    get: Getter,
    plan: ExecutionPlan,
    blocks: Sequence[nn.Module],
    rows: RowGetter | None = None,
) -> Iterator[None]:
    """Context: ``large``'s modules run ``plan`` with the operator tensors ``get`` returns: the factored forwards
    (:func:`ligo_fast.factored.forwards`) and the produced weights (all of them, or in lean mode the global ones,
    the blocks' chunk by chunk: :func:`ligo_fast.produce.chunk_producer`) are installed, and removed on exit.

    ``blocks``: the large model's transformer blocks in order (lean mode's chunks hook them). ``rows``: the
    per-layer tensors held one parameter per large layer (:mod:`ligo_fast.rows`; memory-lean mode only), read by
    each layer when it runs.
    """
    if rows is not None and not plan.lean:
        raise ValueError("operator tensors held per layer (distributed.shard(per_block=True)) need memory-lean mode")
    forwards = factored.forwards(
        large, growth.slots, get, growth.aliases, plan.forms, plan.backend, plan.lean, rows=rows
    )
    chunk = chunk_producer(growth, get, skip_weights=plan.skip, backend=plan.backend, rows=rows) if plan.lean else None
    produced = [s for s in growth.slots if not (plan.lean and s.layered)]
    weights = produce(produced, get, skip_weights=plan.skip, aliases=growth.aliases, backend=plan.backend)
    with ExitStack() as stack:
        binding = stack.enter_context(Binding())
        if chunk is not None:
            chunks = chunk_layers(growth.L2, plan.chunk)
            stack.enter_context(lean_layers(large, blocks, chunks, chunk, plan.checkpointed, binding))
        binding.install_named(large, {**forwards, **weights})
        yield
