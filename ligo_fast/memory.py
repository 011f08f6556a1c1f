"""How much memory an operator-training step needs, and how much is free: what memory-lean mode decides on.

An estimate, not a measurement, from the growth plan and the large config (all in bytes):

* ``resident``: the operator's tensors (small weights, coefficients) and the large model's own leftovers;
* ``optimizer``: gradients and two AdamW moments of every trainable operator tensor;
* ``produced``: every produced large weight. The eager path keeps them for backward, and backward adds their
  gradients: the peak is at the end of the blocks' backward, every block weight and its gradient alive
  (``2 * L2 * layer``), or earlier at the head's, where the block weights meet a global weight and its gradient
  (``L2 * layer + 2 * global``); the global weights are gone by the blocks' end (an embedding keeps no weight for
  backward, the head's is freed after its backward), so they are not counted twice beside ``2 * L2 * layer``
  (they were until issue 20; measured peaks against this estimate: ``benchmarks/results/bench_scale_*.md``).
  Memory-lean mode keeps one chunk of layers' block weights at a time (``3 * chunk * layer``: the chunk in use, its
  gradient, the next one being produced) or the global ones and their gradients, and every chunk's stacked rows of
  the per-layer operator tensors (``stacked``: the op calls keep their inputs until backward). A step
  whose linears run in the factored forms (``forms``, :mod:`ligo_fast.factored`) produces less: a factored weight
  only its depth mix (small-width), a one-side form one side (``step_global``, ``step_layer``);
* ``activations``: what the large model keeps for backward, per token and layer about
  ``elem * (8 h + 3 f + 2 a s)`` (inputs of the projections, norms and activation functions, and the attention
  scores of an unfused attention; Korthikanti et al. 2022 count 34 h + 5 a s bytes for 16-bit BERT-like layers)
  plus the logits and their gradient.

Beyond the step (what grow builds and what turning the operator into a plain model needs):

* ``growth`` (:func:`ligo_fast.grow`): ``resident``; the large model's produced weights are never allocated;
* ``materialize(out_elem)`` (``LiGOModel.materialize``): the large model in the output dtype plus the largest call
  of its production (``produced_largest``: a chunk of about sqrt(L2) layers of one module kind, a global matrix, or
  the vectors; the calls are :func:`ligo_fast.produce.pieces`, the schedule the production runs) in the operator's
  dtype, produced before it is split into one tensor per layer (:func:`ligo_fast.hf.fill`);
* ``streamed_save(out_elem)`` (``LiGOModel.save_materialized``, ``ligo-fast materialize``): the largest call of the
  save's production (``save_largest``: as materialize's, the vocabulary matrices in blocks of rows) counted twice
  (the expand op's intermediates, the depth-mixed and half-expanded weights, are about as large as its output),
  plus its largest tensor cast to the output dtype (``save_tensor``; the shards are written from the tensors' own
  memory). ``materialize`` needs no such doubling: a call's intermediates are freed before its output is copied into
  the model, and the model is not complete while it runs.

Every term counts live tensors. What a process holds can be more: glibc's allocator raises its mmap threshold after a
large free, so later temporaries of up to 32 MiB come from its heap and often stay resident after they are freed
(``ligo-fast`` fixes the threshold at 1 MiB; ``benchmarks/bench_scale.py --malloc`` measures both).

The memory a run plans with, its budget (:func:`memory_budget`), is read once when the model is built: an explicit
``LiGOConfig.memory_budget``, else the environment variable ``LIGO_FAST_MEMORY_BUDGET``, else the memory free at that
moment (``MemAvailable`` and the cgroup/container limit on CPU). Every later decision is a function of it, so the
same run makes the same choices (and roundings) however busy the machine gets.

Memory-lean mode turns itself on only when the eager step would not fit in ``margin`` of the budget. A growth
whose operator step cannot fit even lean, or whose grown model (what ``materialize`` returns) cannot be held at all,
is refused before anything is allocated (:func:`ensure_fits`): the product of growth is the large model, and training
it needs at least its weights.
Imports: ``plan`` (for shapes and roles), ``produce`` (the schedule of the production's calls) and
``serialization`` (byte sizes) only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .plan import Plan, Role, Rule
from .produce import pieces
from .serialization import parse_bytes

MARGIN = 0.9  # use at most this share of the free memory: the estimate is approximate and others allocate too
GIB = 2**30


BUDGET_ENV = "LIGO_FAST_MEMORY_BUDGET"  # bytes (``16GiB``, ``512MiB`` and ``8e9`` too) that a run may plan with
_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a huge page-rounded number


def available_bytes(device: torch.device) -> int:
    """Memory free for this process on ``device`` now: CUDA free + reserved-but-unused; CPU the smaller of
    ``MemAvailable`` and what the process's cgroup (container) limit leaves (:func:`cgroup_available`)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        free = _meminfo_available()
        group = cgroup_available()
        return free if group is None else min(free, group)
    return sys.maxsize  # a device we cannot ask: no limit


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return sys.maxsize


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def cgroup_available(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> int | None:
    """Bytes this process's cgroups still allow (limit - usage), the smallest over its memory cgroup and the parents
    visible under ``root`` (v2: ``memory.max``/``memory.current``; v1: ``memory/memory.limit_in_bytes``/
    ``memory.usage_in_bytes``); None when none sets a limit. A container's limit is invisible to ``MemAvailable``:
    without this a run planned with the host's memory and was killed by the OOM killer, without a message."""
    try:
        with open(proc) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    places = []  # (directory, limit file, usage file)
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":
            places.append((root, rel, "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):
            places.append((os.path.join(root, "memory"), rel, "memory.limit_in_bytes", "memory.usage_in_bytes"))
    best = None
    for base, rel, limit_file, usage_file in places:
        parts = [p for p in rel.split("/") if p and p != ".."]
        for k in range(len(parts), -1, -1):  # the cgroup, its parents, the root visible in this namespace
            d = os.path.join(base, *parts[:k])
            limit = _read_int(os.path.join(d, limit_file))
            if limit is None or limit >= _NO_LIMIT:
                continue
            left = max(limit - (_read_int(os.path.join(d, usage_file)) or 0), 0)
            best = left if best is None else min(best, left)
    return best


def memory_budget(device: torch.device, explicit: int | None = None) -> tuple[int, str]:
    """``(bytes, source)``: the memory a run on ``device`` plans with, and where that number came from.

    ``explicit`` (``LiGOConfig.memory_budget``) first, then the environment variable :data:`BUDGET_ENV`, then the
    memory free now (:func:`available_bytes`). The caller reads it once and keeps it: every memory decision of the
    run (eager or memory-lean, the chunk size, hence the factored forms) is then a function of the model, the batch
    shape and this number, so it does not change with what other processes use in the meantime.
    """
    if explicit is not None:
        return int(explicit), "LiGOConfig.memory_budget"
    env = os.environ.get(BUDGET_ENV, "").strip()
    if env:
        return parse_bytes(env, BUDGET_ENV), BUDGET_ENV
    return available_bytes(device), f"free memory on {device}, read once"


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate of one operator-training step (bytes) and the choice it implies. ``str()`` is a summary."""

    device: str
    available: int
    resident: int
    optimizer: int
    produced: int
    produced_global: int
    produced_layer: int
    activations: int
    tokens: int
    chunk: int = 1  # layers per chunk of memory-lean mode
    margin: float = MARGIN
    source: str = "free memory now"  # where ``available`` came from (:func:`memory_budget`)
    elem: int = 4  # bytes per element of the operator (and of the produced weights)
    produced_largest: int = 0  # the largest call of materialize's production (produce.pieces)
    save_largest: int = 0  # the largest call of the streamed save's production (row_blocks=True)
    save_tensor: int = 0  # the largest single tensor of such a call (one layer's weight, one block of rows)
    layers: int = 1  # large layers (L2)
    step_global: int | None = None  # what the step produces outside the blocks (None: produced_global)
    step_layer: int | None = None  # and per block (None: produced_layer): less where linears run factored
    stacked: int = 0  # the per-layer operator tensors, which lean mode's chunks stack (kept until backward)

    @property
    def _step(self) -> tuple[int, int]:
        glob = self.produced_global if self.step_global is None else self.step_global
        return glob, self.produced_layer if self.step_layer is None else self.step_layer

    @property
    def step_produced(self) -> int:
        """What the eager step produces: ``produced`` less what the factored forms leave unproduced."""
        if self.step_global is None and self.step_layer is None:
            return self.produced
        glob, layer = self._step
        return glob + self.layers * layer

    @property
    def eager(self) -> int:
        glob = self._step[0]
        blocks = self.step_produced - glob  # every block's weights
        return self.resident + self.optimizer + blocks + max(2 * glob, blocks) + self.activations

    @property
    def lean(self) -> int:
        glob, layer = self._step
        chunks = 3 * self.chunk * layer
        return self.resident + self.optimizer + self.stacked + max(2 * glob, chunks) + self.activations

    @property
    def growth(self) -> int:
        """What :func:`ligo_fast.grow` allocates: the operator's tensors and the large model's leftovers."""
        return self.resident

    def materialize(self, out_elem: int | None = None) -> int:
        """What ``materialize`` allocates besides the operator: the large model in ``out_elem`` bytes per element
        (None: the operator's) plus the largest call of its production."""
        out = self.produced if out_elem is None else self.produced * out_elem // self.elem
        return out + self.produced_largest

    def streamed_save(self, out_elem: int | None = None) -> int:
        """What ``save_materialized`` allocates besides the operator: the largest call of its production (output
        and intermediates), its largest tensor cast to ``out_elem`` bytes per element."""
        cast = 0 if out_elem in (None, self.elem) else self.save_tensor * out_elem // self.elem
        return 2 * self.save_largest + cast

    @property
    def use_lean(self) -> bool:
        """Whether memory-lean mode is needed: the eager step would not fit in ``margin`` of the free memory."""
        return self.eager > self.margin * self.available

    @property
    def fits(self) -> bool:
        """Whether the step fits at all (lean if needed) and the grown model's weights can be held (materialised)."""
        return max(self.lean, self.produced) <= self.margin * self.available

    def __str__(self) -> str:
        def g(x: int) -> str:
            return f"{x / GIB:.2f} GiB"

        limit = self.margin * self.available
        if self.fits:
            verdict = "memory-lean" if self.use_lean else "eager"
        elif self.produced > limit:
            verdict = f"does not fit: the grown model's weights alone take {g(self.produced)}"
        else:
            verdict = "does not fit, even memory-lean"
        return (
            f"operator step on {self.device}, {self.tokens} tokens: eager {g(self.eager)}, lean {g(self.lean)} "
            f"(operator and leftovers {g(self.resident)}, optimizer {g(self.optimizer)}, produced weights "
            f"{g(self.produced)} of which one layer {g(self.produced_layer)}, in this step's forms "
            f"{g(self.step_produced)}, lean chunks of {self.chunk} layers, "
            f"activations {g(self.activations)}); "
            f"budget {g(self.available)} ({self.source}), using at most {self.margin:.0%}: {verdict}"
        )


def estimate(
    plan: Plan,
    config,
    *,
    tokens: int,
    seq_len: int,
    elem: int,
    leftover_bytes: int,
    device: torch.device,
    chunk: int = 1,
    available: int | None = None,
    source: str = "free memory now",
    forms: Mapping[int, str] | None = None,
) -> MemoryPlan:
    """The memory plan of one step of ``tokens`` tokens in sequences of ``seq_len`` (``elem`` bytes per element);
    memory-lean mode in chunks of ``chunk`` layers; ``available``: the budget (bytes, from ``source``; default:
    the memory free now); ``forms``: ``{slot index: form}`` of the linears that run factored in the step (what
    :func:`ligo_fast.factored.choose` returns; None: every weight produced)."""
    resident = leftover_bytes
    optimizer = stacked = 0
    for t in plan.tensors:
        n = _numel(t.shape) * (elem if t.role in (Role.SMALL, Role.RESIDUAL) else 4)
        resident += n
        if t.trainable:
            optimizer += 3 * n
        if t.rule == Rule.SPLIT:
            stacked += n
    produced = produced_global = 0
    per_layer = 0
    step_global = step_layer = 0  # what the step produces, in the forms it runs
    for i, s in enumerate(plan.slots):
        w = 0 if s.tied_weight else _numel(s.shape_w)
        b = s.bias_size
        step = (_step_numel(s, (forms or {}).get(i)) + b) * elem
        if s.layered:
            per_layer += (w + b) * elem
            produced += (w + b) * elem * plan.L2
            step_layer += step
        else:
            produced_global += (w + b) * elem
            step_global += step
    produced += produced_global
    calls = list(pieces(plan)), list(pieces(plan, row_blocks=True))
    largest = [max((p.elements(plan.L2) for p in c), default=0) * elem for c in calls]
    save_tensor = max((p.largest_tensor(plan.L2) for p in calls[1]), default=0) * elem
    return MemoryPlan(
        device=str(device),
        available=available_bytes(device) if available is None else available,
        resident=resident,
        optimizer=optimizer,
        produced=produced,
        produced_global=produced_global,
        produced_layer=per_layer,
        activations=activation_bytes(config, plan, tokens, seq_len, elem),
        tokens=tokens,
        chunk=chunk,
        source=source,
        elem=elem,
        produced_largest=largest[0],
        save_largest=largest[1],
        save_tensor=save_tensor,
        layers=plan.L2,
        step_global=step_global,
        step_layer=step_layer,
        stacked=stacked,
    )


def _step_numel(s, form: str | None) -> int:
    """Elements of slot ``s``'s weight that a step produces per layer in ``form`` (None: produced whole): the
    factored form its small-width depth mix, a one-side form (``out``/``in``) that side (names: ``factored.Form``)."""
    if s.tied_weight:
        return 0
    if form is None or form == "materialize":
        return _numel(s.shape_w)
    (o1, i1), (o2, i2) = s.view_w, s.shape_w
    return {"factored": o1 * i1, "out": o2 * i1, "in": o1 * i2}[form]


def activation_bytes(config, plan: Plan, tokens: int, seq_len: int, elem: int) -> int:
    """What the large model keeps for backward for ``tokens`` tokens (see the module docstring)."""
    if tokens <= 0:
        return 0
    h = plan.widths.get("emb", (0, getattr(config, "hidden_size", 0)))[1]
    f = plan.widths.get("ffn", (0, getattr(config, "intermediate_size", None) or 4 * h))[1]
    a = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 1
    per_token_layer = elem * (8 * h + 3 * f + 2 * a * seq_len)
    vocab = getattr(config, "vocab_size", 0) or 0
    return tokens * (plan.L2 * per_token_layer + 2 * h * elem + 2 * vocab * max(elem, 4))


def ensure_fits(mp: MemoryPlan, what: str) -> None:
    """Raise MemoryError (before anything is allocated) when even memory-lean mode cannot fit ``mp``."""
    if not mp.fits:
        raise MemoryError(f"{what} does not fit: {mp}")
