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

Imports: ``backends``, ``binding``, ``config``, ``factored``, ``lean``, ``memory``, ``plan``, ``produce``.
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
from .plan import Plan, Rule, Slot
from .produce import Getter, produce

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
    tokens = factored.count_tokens(args, kwargs, config)
    ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], Tensor) else None)
    if ids is not None and ids.dim() >= 1:
        return tokens, ids.shape[-1]
    emb = kwargs.get("inputs_embeds")
    if emb is not None and emb.dim() >= 2:
        return tokens, emb.shape[-2]
    return tokens, tokens


@contextmanager
def bind(
    large: nn.Module, growth: Plan, get: Getter, plan: ExecutionPlan, blocks: Sequence[nn.Module]
) -> Iterator[None]:
    """Context: ``large``'s modules run ``plan`` with the operator tensors ``get`` returns: the factored forwards
    and the produced weights are installed, and removed on exit.

    ``blocks``: the large model's transformer blocks in order (lean mode's chunks hook them).
    """
    slots, skip = growth.slots, plan.skip
    with ExitStack() as stack:
        binding = stack.enter_context(Binding())
        _bind_factored(binding, large, growth, get, plan.forms)
        if not plan.lean:
            binding.install_named(large, produce(slots, get, skip_weights=skip, aliases=growth.aliases,
                                                 backend=plan.backend))  # fmt: skip
            yield
            return
        glob = [s for s in slots if not s.layered]
        binding.install_named(
            large, produce(glob, get, skip_weights=skip, aliases=growth.aliases, backend=plan.backend)
        )
        layered = [s for s in slots if s.layered]
        # per-layer tensors sliced once for the whole forward (one unbind: its backward stacks the layers' gradients
        # once, where slicing per chunk would write a zero gradient of the whole tensor per chunk)
        rows = {t.name: get(t.name).unbind(0) for t in growth.tensors if t.rule == Rule.SPLIT}

        def chunk(layers: range) -> dict[str, Tensor]:
            # each per-layer tensor stacked once per chunk: the op calls save their inputs for backward, so a copy
            # per module kind that reads it (q/k/v, gate/up/down share width matrices) stayed alive per chunk
            stacked: dict[str, Tensor] = {}

            def rows_of(name: str | None) -> Tensor | None:
                if name not in rows:
                    return get(name)
                if name not in stacked:
                    stacked[name] = torch.stack(rows[name][layers.start : layers.stop])
                return stacked[name]

            return produce(layered, rows_of, layers=layers, skip_weights=skip, backend=plan.backend)

        chunks = chunk_layers(growth.L2, plan.chunk)
        stack.enter_context(lean_layers(large, blocks, chunks, chunk, plan.checkpointed, binding))
        yield


def _bind_factored(binding: Binding, large: nn.Module, growth: Plan, get: Getter, forms: Mapping[int, Form]) -> None:
    """Install the factored forward of every module of the slots in ``forms`` (and of the modules tied to them)."""
    if not forms:
        return
    chosen = [growth.slots[i] for i in forms]
    by_name = {growth.slots[i].name: form for i, form in forms.items()}
    shared: dict = {}  # x @ B_in, shared by the layers that read the same input (q/k/v, gate/up)
    # the factor a scaled embedding's own forward multiplies by (Module.output_scale of the large width)
    gains = {p: s.mod.output_scale(s.shape_w[-1]) for s in chosen if s.mod.output_scale for p in factored.paths(s)}
    for path, (w, eo, ei, r) in factored.layer_factors(chosen, get, aliases=growth.aliases, forms=by_name).items():
        mod = large.get_submodule(path)
        if isinstance(mod, nn.Embedding) or hasattr(mod, "num_embeddings"):  # nn.Embedding or compat's FusedEmbedding
            fwd = _embedding_forward(w, ei, mod.padding_idx, gains.get(path))
        else:
            fwd = _linear_forward(mod, w, eo, ei, r, shared)
        binding.install(mod, "forward", fwd)


def _embedding_forward(w: Tensor, ei: Tensor | None, pad: int | None, gain: float | None) -> Callable:
    def forward(ids: Tensor) -> Tensor:
        out = factored.factored_embedding(ids, w, ei, pad)
        # as HF does: the factor as a float32 scalar, rounded to the table's dtype
        return out if gain is None else out * torch.tensor(gain).to(out.dtype)

    return forward


def _linear_forward(mod: nn.Module, w, eo, ei, r, shared: dict) -> Callable:
    def forward(x: Tensor) -> Tensor:
        # the bias as the module holds it at the call (a produced one is installed as the module's ``bias``)
        return factored.factored_linear(x, w, eo, ei, r, getattr(mod, "bias", None), shared)

    return forward
