"""Training the LiGO operator on several processes: DDP and FSDP2 helpers, gathering on rank 0.

Every rank produces the large weights locally from the operator's tensors in each forward; only the operator's
gradients cross ranks (all-reduced by DDP, reduce-scattered by FSDP2). What needs care, checked with torch 2.13
and gloo on CPU (``tests/test_distributed.py``):

* **Buffers (DDP).** With ``train_small=False`` (the default) the small model's weights are buffers of the
  LiGOModel, as large as the small model. DDP broadcasts all buffers at the start of *every* forward by default;
  they never change, so :func:`ddp` keeps only the broadcast at construction (which also makes the ranks agree
  when ``LiGOConfig.seed`` is None or the small weights differ).
* **Unused parameters (DDP).** With ``train_small=True`` some small tensors produce nothing (the small LM head
  when it is tied to the embeddings, BERT's ``cls.predictions.bias`` tied to the decoder's): they never get a
  gradient and plain DDP fails at the second step. :func:`ddp` finds them once (:func:`unused_parameters`) and
  turns on ``find_unused_parameters`` only then.
* **No overlap (DDP).** Production is the first thing forward does, so every operator gradient is ready only at
  the end of backward and DDP cannot overlap its all-reduce with backward. The all-reduce is the operator's size:
  for BERT 6L/512H -> 12L/768H (tied widths) 30.1M trainable values against the large model's 109.5M, mostly
  the per-layer FFN width matrices.
* **FSDP2 sharding.** ``fully_shard`` shards every parameter on dim 0: the operator's depth (L2, L1), width and
  residual tensors and, with ``train_small=True``, the small weights (so they are sharded too). Buffers (the small
  weights by default) stay replicated. ``fully_shard`` does not broadcast: each rank keeps its own rows, and
  ranks that built different operators silently end up with a mix; :func:`shard` broadcasts from rank 0 first.
* **State dicts (FSDP2).** The official layout splits tensors along the layer axis, which FSDP2 shards: the
  layout hook gathers those (``DTensor.full_tensor()``, a collective: call ``state_dict()`` on every rank), and
  :func:`gather_state_dict` gathers tensor by tensor, then applies the layout. Load checkpoints
  (``load_operator``) before sharding.
* **Memory (FSDP2).** The produced large weights are full tensors on every rank: FSDP2 shards the operator and
  its optimizer state, not the produced weights or the activations. A rank needs the weights its execution plan
  produces (none for the linears that run factored, one chunk of layers' with memory-lean mode), the small
  weights (buffers, replicated), the operator gathered for the step (one unit by default) and its activations, as
  without FSDP; measured per-rank peaks: ``benchmarks/results/bench_fsdp_growth_2026-12-06.md``.
* **Per-block units (FSDP2, ``shard(per_block=True)``; memory-lean mode only).** The default's one unit (the root,
  which FSDP2 does not reshard between forward and backward) keeps the whole operator gathered for the step, and
  its full gradients at the end of backward. With ``per_block`` the per-layer operator matrices (width matrices,
  residuals) are moved into one parameter per large layer (:meth:`LiGOModel.hold_per_layer`), held by one
  :class:`ligo_fast.rows.LayerRows` per block (per chunk of ``block_layers`` blocks), and
  ``fully_shard([holder, *the chunk's blocks])`` makes each chunk a unit: gathered when its first block starts
  (the holder runs then, from a pre-hook on that block), resharded after its last block, gathered again when the
  gradient reaches that block's output, its gradients reduce-scattered when the gradient reaches the first block's
  input. Each reader takes a layer's rows when the layer runs (the factored linears, lean mode's chunk
  production: :func:`ligo_fast.rows.resolve`), and lean mode's chunks are the units' (whatever chunk the memory
  estimate picked: one layer by default, which holds least); HF's activation checkpointing recomputes a block
  inside its unit's backward. The rest (depth rows, small weights, shared width matrices) is the root unit, as
  before. State dicts, :func:`gather_state_dict`, :func:`save_operator_distributed`,
  :func:`materialize_distributed` (every unit gathered) and :func:`save_materialized_distributed` (each layer's
  rows gathered in turn, a rank keeps its own layers') give the stacked layout and values; ``load_state_dict``
  and the plain ``save_operator`` refuse (load before sharding; save with :func:`save_operator_distributed`).

Typical use (every rank)::

    model = ligo_fast.grow(small, large_config, seed=0)
    model = ligo_fast.distributed.ddp(model)             # or ligo_fast.distributed.shard(model)
    ... train ...
    save_operator_distributed(model, "op/")               # collective; rank 0 writes
    hf = materialize_distributed(model)                   # collective; the HF model on rank 0, None elsewhere
    save_materialized_distributed(model, "hf/")           # collective; each rank writes its own shards

* **Sharded save (FSDP2).** :func:`save_materialized_distributed` writes the large model without gathering it
  anywhere: rank ``r`` produces rows ``r`` of every per-layer module kind (the large layers FSDP2's dim-0 split of
  the per-layer operator tensors gives it, so those are read from its own shard) and its share of the global
  weight matrices (embeddings, head: whole, balanced by bytes), writes them into safetensors shards of its own,
  and rank 0 writes the index naming every rank's shards, last. Only the operator's tensors that are not per
  layer (the small weights, shared width matrices) are gathered, once.
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .lean import chunk_layers
from .model import LiGOModel
from .plan import Rule
from .produce import parts
from .serialization import write_operator
from .shards import DEFAULT_SHARD_SIZE, write_checkpoint

logger = logging.getLogger(__name__)

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule, fully_shard
except ImportError:  # pragma: no cover - older torch
    try:
        from torch.distributed._composable.fsdp import FSDPModule, fully_shard
    except ImportError:
        FSDPModule = fully_shard = None

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - older torch
    DTensor = None

__all__ = [
    "broadcast_module_states",
    "ddp",
    "gather_state_dict",
    "is_sharded",
    "materialize_distributed",
    "rank",
    "save_materialized_distributed",
    "save_operator_distributed",
    "shard",
    "unused_parameters",
    "unwrap",
]


def rank() -> int:
    """This process's rank, 0 without an initialised process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def unwrap(model: nn.Module) -> LiGOModel:
    """The LiGOModel inside a DDP wrapper (FSDP2 modifies the model in place, so it is the model itself)."""
    m = model.module if isinstance(model, DistributedDataParallel) else model
    if not isinstance(m, LiGOModel):
        raise TypeError(f"expected a LiGOModel (optionally wrapped in DDP), got {type(model).__name__}")
    return m


def _is_dtensor(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was passed to FSDP2's ``fully_shard``."""
    return FSDPModule is not None and isinstance(unwrap(model), FSDPModule)


@torch.no_grad()
def broadcast_module_states(model: nn.Module, src: int = 0, group=None) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank, one tensor at a time, into the tensor itself.

    Call it before sharding: it refuses DTensor parameters. A contiguous tensor is received in place, so nothing
    beside the model is allocated (one flat copy of every tensor per dtype, as before, held the whole operator and
    small weights twice while ``shard`` ran); a non-contiguous one goes through a contiguous copy of itself.
    """
    tensors = list(unwrap(model).parameters()) + list(unwrap(model).buffers())
    if any(_is_dtensor(t) for t in tensors):
        raise RuntimeError("broadcast_module_states: the model is sharded already; call it before fully_shard")
    for t in tensors:
        t = t.detach()
        buf = t if t.is_contiguous() else t.contiguous()
        dist.broadcast(buf, src, group=group)
        if buf is not t:
            t.copy_(buf)


def unused_parameters(model: nn.Module) -> list[str]:
    """Names of trainable parameters that production never reads (so they never get a gradient).

    Runs one :meth:`LiGOModel.produce` and one ``autograd.grad`` over the produced tensors (the memory of one
    step's large weights). Typically the small tensors of tied heads when ``train_small=True``.
    """
    m = unwrap(model)
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    if not named:
        return []
    with torch.enable_grad():
        produced = [t for t in m.produce().values() if t.requires_grad]
        if not produced:
            return [n for n, _ in named]
        total = sum(t.sum() for t in produced)
        grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    return [n for (n, _), g in zip(named, grads, strict=True) if g is None]


def ddp(model: LiGOModel, **kwargs) -> DistributedDataParallel:
    """``DistributedDataParallel(model)`` with the settings a LiGOModel needs (see the module docstring).

    Defaults (each can be overridden through ``kwargs``): buffers broadcast once at construction, not at every
    forward; ``find_unused_parameters`` only when :func:`unused_parameters` finds some; ``device_ids`` set for a
    model on one CUDA device.
    """
    m = unwrap(model)
    if "find_unused_parameters" not in kwargs:
        unused = unused_parameters(m)
        if unused:
            logger.info(
                "ddp: %d trainable tensors produce nothing (%s...): find_unused_parameters=True", len(unused), unused[0]
            )
        kwargs["find_unused_parameters"] = bool(unused)
    if m.device.type == "cuda":
        kwargs.setdefault("device_ids", [m.device.index if m.device.index is not None else torch.cuda.current_device()])
    if "broadcast_buffers" not in kwargs and "forward_sync_buffers" not in kwargs:
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
            kwargs["forward_sync_buffers"] = False  # torch >= 2.13: buffers still broadcast at construction
        else:
            # broadcast_buffers=False would also skip the broadcast at construction: do that one ourselves
            if dist.is_initialized():
                broadcast_module_states(m, group=kwargs.get("process_group"))
            kwargs["broadcast_buffers"] = False
    return DistributedDataParallel(m, **kwargs)


def shard(
    model: LiGOModel, mesh=None, *, sync: bool = True, per_block: bool = False, block_layers: int = 1, **kwargs
) -> LiGOModel:
    """FSDP2 ``fully_shard(model, mesh=mesh, **kwargs)`` after broadcasting rank 0's tensors (``sync=True``).

    Default: one FSDP group for the whole model, gathered from the start of forward to the end of backward.
    ``per_block=True`` (memory-lean mode only: ``ExecutionOptions(lean=True)``): the per-layer operator matrices
    are split into one parameter per large layer (:meth:`LiGOModel.hold_per_layer`), and each block (each chunk of
    ``block_layers`` consecutive blocks) is a unit of its own, its rows with its blocks, gathered while its blocks
    run forward and again for their backward, its gradients reduce-scattered after; lean mode then produces in
    chunks of ``block_layers`` layers. The rest (depth rows, small weights, shared width matrices) is the root
    unit. Returns the same object (now also an ``FSDPModule``).
    """
    if fully_shard is None:  # pragma: no cover - older torch
        raise RuntimeError(f"FSDP2 (fully_shard) is not available in torch {torch.__version__}")
    m = unwrap(model)
    if per_block and m.execution_options.lean is not True:
        raise ValueError(
            "shard(per_block=True) runs only in memory-lean mode: set model.execution_options = "
            "ExecutionOptions(lean=True) first"
        )
    if per_block and (not isinstance(block_layers, int) or block_layers < 1):
        raise ValueError(f"shard: block_layers must be a positive int, got {block_layers!r}")
    if sync:
        broadcast_module_states(m)
    if per_block:
        blocks = [m.large.get_submodule(m.arch.layer_path(l)) for l in range(m.L2)]
        chunks = chunk_layers(m.L2, block_layers)
        for holder, c in zip(m.hold_per_layer(chunks), chunks, strict=True):
            fully_shard([holder, *blocks[c.start : c.stop]], mesh=mesh, **kwargs)
            # after fully_shard's own pre-hook on the block (which registers the unit's post-backward on the block's
            # input): the holder runs once per forward, so the unit reshards when its last block has run
            blocks[c.start].register_forward_pre_hook(partial(_run_holder, holder))
    fully_shard(m, mesh=mesh, **kwargs)
    return m


def _run_holder(holder: nn.Module, module: nn.Module, args) -> None:
    holder()


def _internal_state(m: LiGOModel) -> OrderedDict:
    """What ``nn.Module.state_dict`` collects before hooks (internal names), DTensors gathered to full tensors.

    Collective when the model is sharded: every rank must call it (same order on every rank).
    """
    sd: OrderedDict[str, Tensor] = OrderedDict()
    for prefix, mod in m.named_modules(remove_duplicate=False):
        pre = prefix + "." if prefix else ""
        for n, p in mod._parameters.items():
            if p is not None:
                sd[pre + n] = (p.full_tensor() if _is_dtensor(p) else p).detach()
        for n, b in mod._buffers.items():
            if b is not None and n not in mod._non_persistent_buffers_set:
                sd[pre + n] = (b.full_tensor() if _is_dtensor(b) else b).detach()
    return sd


def gather_state_dict(model: nn.Module, rank0_only: bool = True) -> dict[str, Tensor] | None:
    """The operator's full state dict (official layout, as ``LiGOModel.state_dict()``) on CPU.

    Works for a plain, DDP-wrapped or FSDP2-sharded LiGOModel. Collective for a sharded model (call it on every
    rank). Returns None on ranks other than 0 when ``rank0_only``.
    """
    m = unwrap(model)
    if is_sharded(m):
        sd = _internal_state(m)
        if rank0_only and rank() != 0:
            return None
        sd = m.official_state(sd)
    else:
        if rank0_only and rank() != 0:
            return None
        sd = m.state_dict()
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def save_operator_distributed(model: nn.Module, path) -> None:
    """``save_operator`` for a plain, DDP or FSDP2 model: gathers (collective), rank 0 writes ``path``."""
    sd = gather_state_dict(model, rank0_only=True)
    if sd is not None:
        write_operator(Path(path), sd, unwrap(model).operator_meta())
    if dist.is_initialized():
        dist.barrier()  # the files exist on return, on every rank


def materialize_distributed(model: nn.Module, rank0_only: bool = True) -> nn.Module | None:
    """The plain HF model (as :func:`ligo_fast.materialize`) from a plain, DDP or FSDP2 LiGOModel.

    A sharded model is all-gathered (``unshard``, collective: call it on every rank), materialised, and sharded
    again. The HF model lies on the model's device; returns None on ranks other than 0 when ``rank0_only``.
    """
    m = unwrap(model)
    mine = not rank0_only or rank() == 0
    if not is_sharded(m):
        return m.materialize() if mine else None
    units = [u for u in m.modules() if isinstance(u, FSDPModule)]  # the root, and the blocks' with per_block
    for u in units:
        u.unshard()
    try:
        return m.materialize() if mine else None
    finally:
        for u in units:
            u.reshard()


@torch.no_grad()
def save_materialized_distributed(
    model: nn.Module, save_directory, dtype: torch.dtype | None = None, max_shard_size: int | str = DEFAULT_SHARD_SIZE
) -> list[str]:
    """``LiGOModel.save_materialized`` by every rank at once, each writing its own shards (collective).

    Rank ``r`` produces the large layers of its FSDP2 share (``ceil(L2 / world)`` consecutive layers, as FSDP2
    splits dim 0: the per-layer operator tensors are read from the rank's own shard) of every per-layer module
    kind, and whole global weight matrices (embeddings, head) assigned to ranks by bytes; the large model is never
    gathered. The files are those of ``save_materialized`` (safetensors shards and ``model.safetensors.index.json``,
    written by rank 0 after every shard is in place; always sharded), and the tensors equal its bit for bit. A
    plain, DDP-wrapped or FSDP2-sharded model; without a process group it is ``save_materialized``.

    Returns:
        The names of the files this rank wrote.
    """
    m = unwrap(model)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return m.save_materialized(save_directory, dtype, max_shard_size)
    me, L2 = rank(), m.L2
    size = -(-L2 // world)
    layers = [range(min(q * size, L2), min((q + 1) * size, L2)) for q in range(world)]
    if not all(layers):
        raise ValueError(f"save_materialized_distributed: {L2} large layers leave a rank of {world} without any")
    mine = layers[me]
    split = {t.name for t in m.plan.tensors if t.rule == Rule.SPLIT}
    full: dict[str, Tensor] = {}
    held: dict[str, Tensor] = {}  # shard(per_block=True): each layer's row sharded on its own: this rank's gathered
    for t in m.plan.tensors:  # the same order on every rank: full_tensor is a collective
        per_layer = m.rows(t.name)
        if per_layer is not None:
            kept = []
            for l, row in enumerate(per_layer):
                v = row()
                v = v.full_tensor() if _is_dtensor(v) else v
                if l in mine:
                    kept.append(v)
            held[t.name] = torch.stack(kept)
            continue
        v = m.tensor(t.name)
        if t.name not in split:
            full[t.name] = v.full_tensor() if _is_dtensor(v) else v
    leftovers = OrderedDict(
        (k, v.full_tensor() if _is_dtensor(v) else v) for k, v in m.large.state_dict(keep_vars=True).items()
    )  # fmt: skip

    def rows(name: str | None) -> Tensor | None:
        if name is None or name not in split:
            return None if name is None else full[name]
        if name in held:
            return held[name]
        v = m.tensor(name)
        local = v.to_local() if _is_dtensor(v) else v[mine.start : mine.stop]
        if local.shape[0] != len(mine):
            raise RuntimeError(f"save_materialized_distributed: {name} holds {local.shape[0]} layers on rank {me}, "
                               f"expected {len(mine)} (a dim-0 split over {world} ranks)")  # fmt: skip
        return local.detach()

    entries, extra, total = m._checkpoint_layout(dtype)
    owner = {n: 0 for n in leftovers}
    load = [0] * world
    for part in parts(m.plan.slots, m.plan.aliases):
        slot = part.slots[0]
        if part.vectors or slot.layered:
            for s in part.slots:
                for names in (s.targets_w, s.targets_b or ()):
                    for l, n in enumerate(names):
                        for alias in (n, *m.plan.aliases.get(n, ())):
                            owner[alias] = min(l // size, world - 1) if s.layered else 0
        else:
            q = min(range(world), key=lambda q: load[q])
            load[q] += sum(e.nbytes for e in entries if e.name in part.names)
            for n in part.names:
                owner[n] = q
    ranks = [[e for e in entries if owner.get(e.name, 0) == q] for q in range(world)]

    chunks = m._state_parts(
        row_blocks=True, share=mine, get=rows, mine=lambda part: all(owner[n] == me for n in part.names),
        leftovers=leftovers if me == 0 else None, ranks=world,
    )  # fmt: skip
    return write_checkpoint(
        save_directory, entries, chunks, max_shard_size=max_shard_size, extra=extra, total_parameters=total,
        ranks=ranks, rank=me, barrier=dist.barrier,
    )  # fmt: skip
