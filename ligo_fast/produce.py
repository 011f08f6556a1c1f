"""Production: the large model's weights from the operator's tensors, slot by slot, through the ops.

Every weight matrix of one module kind (all large layers) is one :func:`ligo_fast.ops.ligo_expand` problem, every
vector (biases, norm weights) one :func:`ligo_fast.ops.ligo_expand_vec` problem; all of them go into one
:func:`ligo_fast.ops.ligo_expand_many` call (a few launches for all on the Triton backend, else one call per matrix
problem and one :func:`ligo_fast.ops.ligo_expand_vec_multi` call for the vectors).
Fused parts (GPT-2's ``c_attn``) are produced part by part and concatenated. A norm with an ``offset`` (Gemma's
``1 + w``) is expanded as its effective scale ``offset + w`` and stored back minus the offset.

``get(name)`` returns an operator tensor by its internal name (:class:`ligo_fast.plan.OpTensor`), or None for
None: :class:`ligo_fast.model.LiGOModel` passes its own tensors, :mod:`ligo_fast.compat` a view of its modules'.
To produce some large layers only (memory-lean mode), pass ``layers`` and a ``get`` that returns those layers'
rows ``(len(layers), ...)`` of every per-layer tensor (rule ``split``): the caller slices once per forward
(``unbind``), because slicing a parameter per chunk of layers would make every chunk's backward write a zero
gradient of the whole tensor.
For materialising and saving (:meth:`ligo_fast.LiGOModel.materialize`, ``save_materialized``), :func:`parts`
splits the production into one part holding every vector and one part per module kind with a weight matrix
(all its large layers): the same op calls, with the same inputs, as :func:`produce` of every slot at once, so the
values are bit for bit those of the forward, while at most one module kind's weights are alive at a time;
:func:`produce_parts` goes further (a per-layer kind's part in chunks of layers, a vocabulary matrix's in blocks of
rows, each the same call over fewer layers or rows): the one production of ``LiGOModel``'s ``materialize`` and
``save_materialized`` and of :func:`ligo_fast.compat.materialize_compat`.
Imports: ``ops``, ``plan``, ``reference`` (the accumulation dtype), ``lean`` (its chunks of layers) and ``rows``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from . import ops
from .arch import NORM
from .lean import chunk_layers, default_chunk
from .plan import Plan, Rule, Slot, view2d
from .reference import compute_dtype
from .rows import RowGetter, resolve

Getter = Callable[[str | None], Tensor | None]


def produce(
    slots: Iterable[Slot],
    get: Getter,
    *,
    layers: range | None = None,
    backend: str = "auto",
    skip_weights: frozenset[str] = frozenset(),
    aliases: Mapping[str, Iterable[str]] | None = None,
    vectors: bool = True,
    matrices: bool = True,
) -> dict[str, Tensor]:
    """Produced large-model tensors by parameter name (views into one tensor per module kind).

    Args:
        slots: the module kinds to produce.
        get: operator tensor by internal name (with ``layers``: per-layer tensors already sliced to those layers).
        layers: only these large layers of the block modules (memory-lean mode); global modules in full.
        backend: the ops' backend.
        skip_weights: slots (by :attr:`ligo_fast.plan.Slot.name`) whose weight is not produced (factored mode).
        aliases: produced name -> other names tied to it (filled with the same tensor).
        vectors, matrices: produce the vectors (norm weights, biases) / the weight matrices (see :func:`parts`).
    """
    slots = list(slots)
    out: dict[str, Tensor] = {}
    if not slots:
        return out
    vec_problems: list[tuple[Tensor, Tensor, Tensor | None, Tensor | None]] = []
    mat_problems: list[tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]] = []
    mat_targets: list[tuple[Slot, int, Tensor | None, tuple[str, ...]]] = []  # (slot, parts, residual, names)
    # (names, number of parts to concatenate, offset, the dtype to store)
    vec_targets: list[tuple[tuple[str, ...], int, float, torch.dtype]] = []

    def add_vec(v, depth, es, res, names: tuple[str, ...], offset: float = 0.0) -> None:
        n = len(es)
        vparts = v.chunk(n, dim=-1) if n > 1 else (v,)
        rparts = res.chunk(n, dim=-1) if (res is not None and n > 1) else (res,) * n
        for vp, e, rp in zip(vparts, es, rparts, strict=True):
            # the offset in the accumulation dtype: 1 + w in bfloat16 would round a small w away
            vec_problems.append((vp.to(compute_dtype(vp.dtype)) + offset if offset else vp, depth, get(e), rp))
        vec_targets.append((names, n, offset, v.dtype))

    one = torch.ones(1, 1, device=get(slots[0].w).device, dtype=torch.float32)  # the depth of a global module
    for s in slots:
        L = s.layered
        W = get(s.w)
        depth = get(s.depth_w) if L else (get(s.scale_w) if s.scale_w else one)
        res = _lift(get(s.res_w), L)
        targets_w = s.targets_w if (layers is None or not L) else s.targets_w[layers.start : layers.stop]
        Wl = W if L else W[None]
        kind = weight_kind(s)
        if kind is None or s.name in skip_weights or not (vectors if kind == "vector" else matrices):
            pass
        elif s.mod.kind == NORM:
            add_vec(Wl, depth, s.e_rows, res, targets_w, s.mod.offset)
        else:
            W2 = Wl.reshape(Wl.shape[0], *s.view_w)
            n = max(len(s.e_rows), len(s.e_cols))
            Wparts = W2.chunk(n, dim=1 if s.split_rows else 2) if n > 1 else (W2,)
            for i, Wp in enumerate(Wparts):
                e_out, e_in = get(s.e_rows[i if s.split_rows else 0]), get(s.e_cols[0 if s.split_rows else i])
                mat_problems.append((Wp, depth, e_out, e_in, _residual_2d(s, res) if n == 1 else None))
            mat_targets.append((s, n, res, targets_w))
        if s.b is not None and vectors:
            depth_b = get(s.depth_b) if L else (get(s.scale_b) if s.scale_b else one)
            bl = get(s.b) if L else get(s.b)[None]
            targets_b = s.targets_b if (layers is None or not L) else s.targets_b[layers.start : layers.stop]
            add_vec(bl, depth_b, s.bias_widths, _lift(get(s.res_b), L), targets_b)
    mats, vecs = ops.ligo_expand_many(mat_problems, vec_problems, backend=backend)
    big_parts = iter(mats)
    for s, n, res, targets_w in mat_targets:
        dim = 1 if s.split_rows else 2
        big = next(big_parts) if n == 1 else torch.cat([next(big_parts) for _ in range(n)], dim=dim)
        if n > 1 and res is not None:
            big = big + res.reshape(big.shape).to(big.dtype)
        for name, t in zip(targets_w, big.unbind(0), strict=True):
            out[name] = t.reshape(s.shape_w)
    results = iter(vecs)
    for names, n, offset, dtype in vec_targets:
        t = next(results) if n == 1 else torch.cat([next(results) for _ in range(n)], dim=-1)
        t = (t - offset).to(dtype) if offset else t
        for name, row in zip(names, t.unbind(0), strict=True):
            out[name] = row
    for name, others in (aliases or {}).items():
        if name in out:
            for o in others:
                out[o] = out[name]
    return out


def chunk_producer(
    plan: Plan,
    get: Getter,
    *,
    skip_weights: frozenset[str] = frozenset(),
    backend: str = "auto",
    rows: RowGetter | None = None,
) -> Callable[[range], dict[str, Tensor]]:
    """Memory-lean mode's production: ``f(layers)`` -> the per-layer slots' tensors of those large layers.

    The per-layer operator tensors are sliced once here, for the whole forward (one ``unbind``, whose backward
    stacks the layers' gradients once, where slicing per chunk would write a zero gradient of the whole tensor per
    chunk); each call stacks its chunk's rows, once per tensor. ``rows``: the tensors held one parameter per large
    layer (:mod:`ligo_fast.rows`), whose rows are read when a chunk is produced."""
    layered = [s for s in plan.slots if s.layered]
    split = [t.name for t in plan.tensors if t.rule == Rule.SPLIT]
    held = {name: rows(name) for name in split} if rows is not None else {}
    per_layer = {name: held[name] if held.get(name) is not None else get(name).unbind(0) for name in split}

    def chunk(layers: range) -> dict[str, Tensor]:
        # each per-layer tensor stacked once per chunk: the op calls save their inputs for backward, so a copy per
        # module kind that reads it (q/k/v, gate/up/down share width matrices) stayed alive per chunk
        stacked: dict[str, Tensor] = {}

        def rows_of(name: str | None) -> Tensor | None:
            if name not in per_layer:
                return get(name)
            if name not in stacked:
                stacked[name] = torch.stack([resolve(r) for r in per_layer[name][layers.start : layers.stop]])
            return stacked[name]

        return produce(layered, rows_of, layers=layers, skip_weights=skip_weights, backend=backend)

    return chunk


def _residual_2d(s: Slot, res: Tensor | None) -> Tensor | None:
    """A residual (L, *large shape) as the op's (L, rows, cols) view."""
    if res is None:
        return None
    return res.reshape(res.shape[0], *view2d(s.mod, s.shape_w))


def _lift(t: Tensor | None, layered: bool) -> Tensor | None:
    return t if (t is None or layered) else t[None]


def weight_kind(s: Slot) -> str | None:
    """How slot ``s``'s weight is produced: ``"vector"`` (a norm's), ``"matrix"``, or None (a tied head's alias)."""
    if s.tied_weight:
        return None
    return "vector" if s.mod.kind == NORM else "matrix"


@dataclass(frozen=True)
class Part:
    """A share of the production: every vector of every slot (``vectors``), or one slot's weight matrix.

    ``names``: the large-model names it produces (aliases of tied weights included), in production order.
    """

    slots: tuple[Slot, ...]
    vectors: bool
    names: tuple[str, ...]


def parts(slots: Iterable[Slot], aliases: Mapping[str, Iterable[str]] | None = None) -> list[Part]:
    """The production split into the vectors (first, one multi-vector call as in :func:`produce`) and one part per
    module kind with a weight matrix (one expand call each, over all large layers)."""
    slots = tuple(slots)
    aliases = aliases or {}

    def with_aliases(names: Iterable[str]) -> tuple[str, ...]:
        return tuple(n for name in names for n in (name, *aliases.get(name, ())))

    vec_names = []
    for s in slots:
        if weight_kind(s) == "vector":
            vec_names += s.targets_w
        if s.b is not None:
            vec_names += s.targets_b
    out = [Part(slots, True, with_aliases(vec_names))] if vec_names else []
    out += [Part((s,), False, with_aliases(s.targets_w)) for s in slots if weight_kind(s) == "matrix"]
    return out


def produce_part(part: Part, get: Getter, *, backend: str = "auto", aliases=None) -> dict[str, Tensor]:
    """The tensors of one :class:`Part` by large-model name (``part.names``)."""
    return produce(part.slots, get, backend=backend, aliases=aliases, vectors=part.vectors, matrices=not part.vectors)


ROW_BLOCK_MIN = 256
"""Fewest rows of a block of a global matrix in the streamed save: a matrix of fewer rows than two blocks is produced
in one call, because a call over a few rows may take another kernel path than the whole matrix's (a one-row call
is a matrix-vector product on the C++ backend) and round differently, and the save must equal ``materialize()``
bit for bit (BERT's 2-row token-type table differed in the last bit)."""


@dataclass(frozen=True)
class Piece:
    """One production call of :func:`produce_parts`: ``part`` for the large ``layers`` (a per-layer kind's chunk;
    the vectors of a rank's share; None: every layer), or a global matrix's block of ``rows`` (None: all rows)."""

    part: Part
    layers: range | None = None
    rows: range | None = None

    def elements(self, L2: int) -> int:
        """Elements this call produces (a tied alias once), of a plan of ``L2`` large layers."""
        return sum(n * count for n, count in self._tensors(L2))

    def largest_tensor(self, L2: int) -> int:
        """Elements of the largest single tensor this call yields (one layer's weight, one block of rows)."""
        return max((n for n, _ in self._tensors(L2)), default=0)

    def _tensors(self, L2: int) -> Iterator[tuple[int, int]]:
        """(elements of one tensor, how many) per kind of tensor this call yields."""
        layers = L2 if self.layers is None else len(self.layers)
        for s in self.part.slots:
            count = layers if s.layered else 1
            if not self.part.vectors:
                rows = s.shape_w[0] if self.rows is None else len(self.rows)
                yield rows * math.prod(s.shape_w[1:]), count
                continue
            if weight_kind(s) == "vector":
                yield math.prod(s.shape_w), count
            if s.b is not None:
                yield s.bias_size, count


def pieces(
    plan: Plan, *, row_blocks: bool = False, share: range | None = None, mine=None, ranks: int = 1
) -> Iterator[Piece]:
    """The calls of :func:`produce_parts` (same arguments), in order, without producing anything: what its memory
    depends on (:mod:`ligo_fast.memory` sizes the materialisation and the streamed save by the largest)."""
    single = share is None
    share = range(plan.L2) if single else share
    # a rank's share: calls 1/ranks the size of one process's (its share of the memory as of the work)
    chunks = chunk_layers(plan.L2, -(-default_chunk(plan.L2) // ranks))
    blocks = len(chunk_layers(plan.L2, default_chunk(plan.L2))) * ranks
    for part in parts(plan.slots, plan.aliases):
        slot = part.slots[0]
        if part.vectors:
            yield Piece(part, None if single else share)
        elif slot.layered:
            for layers in chunks:
                layers = range(max(layers.start, share.start), min(layers.stop, share.stop))
                if len(layers):
                    yield Piece(part, layers)
        elif mine is not None and not mine(part):
            continue
        elif row_blocks and _rows_separable(slot) and slot.shape_w[0] >= 2 * ROW_BLOCK_MIN:
            n = slot.shape_w[0]
            for block in chunk_layers(n, max(ROW_BLOCK_MIN, -(-n // blocks))):
                yield Piece(part, rows=block)
        else:
            yield Piece(part)


def produce_parts(
    plan: Plan, get: Getter, *, row_blocks: bool = False, share: range | None = None, mine=None, ranks: int = 1
) -> Iterator[dict[str, Tensor]]:
    """The produced large-model tensors of ``plan`` by name, in parts (one per :func:`pieces` call): the vectors,
    then each module kind with a weight matrix (:func:`parts`), a per-layer kind in chunks of
    :func:`ligo_fast.lean.default_chunk` layers, as lean mode chunks them, so about a square root of the layers'
    share of it is alive at a time. The same op calls as :func:`produce` of every slot, over fewer layers: each
    layer's values are the forward's bit for bit.

    ``row_blocks`` (the streamed save, whose writer takes a tensor in consecutive row blocks): a global matrix
    whose rows the operator does not widen (a vocabulary embedding or head) comes as many blocks of rows as a
    per-layer kind has chunks (at least :data:`ROW_BLOCK_MIN` rows each), each the same op call over fewer rows.

    One rank's share of a sharded save (:func:`ligo_fast.distributed.save_materialized_distributed`): the large
    layers ``share`` of every per-layer kind and of the vectors, ``get`` giving the operator's tensors (the
    per-layer ones as the rows of those layers), and the global matrices whose part ``mine(part)`` holds; with
    ``ranks`` sharing the work, each call covers 1/ranks of one process's layers or rows.
    """
    start = 0 if share is None else share.start
    split = {t.name for t in plan.tensors if t.rule == Rule.SPLIT}
    for piece in pieces(plan, row_blocks=row_blocks, share=share, mine=mine, ranks=ranks):
        part = piece.part
        slot = part.slots[0]
        if part.vectors:
            yield produce(part.slots, get, layers=piece.layers, aliases=plan.aliases, matrices=False)
        elif slot.layered:
            local = range(piece.layers.start - start, piece.layers.stop - start)
            yield produce(part.slots, _sliced(get, split, local), layers=piece.layers, aliases=plan.aliases,
                          vectors=False)  # fmt: skip
        elif piece.rows is not None:
            yield produce([_row_block(slot, piece.rows)], _sliced(get, {slot.w}, piece.rows), aliases=plan.aliases,
                          vectors=False)  # fmt: skip
        else:
            yield produce_part(part, get, aliases=plan.aliases)


def _sliced(get: Getter, names: set[str], span: range) -> Getter:
    """``get`` with the tensors ``names`` cut to ``span`` on their first dim: the per-layer operator tensors to a
    chunk of layers, or a global small weight to a block of rows."""

    def sliced(name: str | None) -> Tensor | None:
        t = get(name)
        return t[span.start : span.stop] if name in names else t

    return sliced


def _rows_separable(s: Slot) -> bool:
    """Whether global slot ``s``'s weight is produced row by row: its rows are not widened (no ``E_out``), it is
    not fused from parts, has no residual, and its 2-D view's rows are the tensor's first dim."""
    return (
        not s.layered and s.e_rows == (None,) and len(s.e_cols) == 1 and s.res_w is None and not s.split_rows
        and len(s.shape_w) == 2 and s.view_w[0] == s.shape_w[0]
    )  # fmt: skip


def _row_block(s: Slot, block: range) -> Slot:
    """Slot ``s`` restricted to the rows ``block`` of its weight (:func:`_rows_separable` slots)."""
    n = len(block)
    return dataclasses.replace(s, shape_w=(n, *s.shape_w[1:]), view_w=(n, *s.view_w[1:]))
