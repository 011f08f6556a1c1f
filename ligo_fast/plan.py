"""The growth plan: which operator tensors exist and which small tensors feed which large ones.

:func:`build_plan` is a pure function of an architecture description, the shapes of the small and the large
model's state dicts, the large model's tied parameters and the :class:`LiGOConfig`. Everything that grows a model
reads the plan: :class:`ligo_fast.model.LiGOModel` creates its tensors from ``plan.tensors`` and produces weights
slot by slot (:mod:`ligo_fast.produce`); :mod:`ligo_fast.compat` validates the official API's modules against it
and produces through it; :mod:`ligo_fast.layout` translates its internal names to the official checkpoint keys.

Vocabulary:
  * an *operator tensor* (:class:`OpTensor`) is one tensor the operator owns, by internal name: a small weight
    (block weights stacked layer-major, ``(L1, ...)``), depth coefficients ``(L2, L1)``, a width matrix ``E``
    (``(L2, new, small)`` per large layer or ``(new, small)`` shared), a residual, or a fixed scale;
  * a *slot* (:class:`Slot`) is one module kind: a block module over all large layers (one expand call), or one
    global module; it names the operator tensors it reads and the large-model parameters it produces.

Imports: ``arch``, ``config`` and ``init`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from .arch import EMBEDDING, LINEAR, NORM, Arch, Module
from .config import LiGOConfig
from .init import is_lossless, lossless_layers

SM = "__sm_"  # the official prefix of the small model's tensors

Shape = tuple[int, ...]


def sm_key(key: str) -> str:
    """The official name of a small-model tensor: ``__sm_`` + the key with dots replaced."""
    return SM + key.replace(".", "_")


@dataclass(frozen=True)
class OpTensor:
    """One tensor of the operator.

    Attributes:
        name: internal name (an attribute of ``LiGOModel.op``).
        official: its official checkpoint key; ``{l}`` stands for the large layer index when ``rule == "split"``.
        rule: ``plain`` (stored as is), ``stack`` (small block tensors: ``(L1, ...)`` here, ``(..., L1)`` in the
            official layout), ``split`` (per large layer: ``(L2, ...)`` here, one key per layer officially).
        role: ``small``, ``depth``, ``width``, ``residual`` or ``scale``.
        trainable: a parameter (else a buffer).
        shape: its shape here.
        sources: ``small``: the small model's key(s) it is copied from (one per small layer for ``stack``).
        width: ``width``: the width's name.
        block_output: ``depth``: the module writes into the residual stream (function-preserving depth growth
            zeroes its rows for the added layers).
        scale: ``depth``: factor on the drawn coefficients; ``scale``: the fixed value. Function-preserving width
            growth divides by the input width's growth factor here (``W' = B_out W B_in^T / k``).
    """

    name: str
    official: str
    rule: str
    role: str
    trainable: bool
    shape: Shape
    sources: tuple[str, ...] = ()
    width: str | None = None
    block_output: bool = False
    scale: float = 1.0


@dataclass(frozen=True)
class Slot:
    """One module kind: a block module over all large layers, or one global module."""

    mod: Module
    layered: bool
    w: str  # the small weight: stacked (L1, ...) if layered, else as in the small model
    b: str | None
    depth_w: str | None  # (L2, L1), layered only
    depth_b: str | None
    e_rows: tuple[str | None, ...]  # width matrix of the 2-D weight view's rows (op's E_out), one per part
    e_cols: tuple[str | None, ...]  # ... of its columns (op's E_in), one per part
    res_w: str | None
    res_b: str | None
    scale_w: str | None  # global modules: a fixed (1, 1) depth (function-preserving growth), else None
    scale_b: str | None
    tied_weight: bool  # the weight is an alias of another slot's (a tied head): only the bias is produced here
    targets_w: tuple[str, ...]  # large-model parameter names, one per large layer (or one)
    targets_b: tuple[str, ...]
    shape_w: Shape  # large tensor shape of one target
    view_w: tuple[int, int]  # its 2-D (rows, cols) view in the small model

    @property
    def split_rows(self) -> bool:
        """The fused parts lie along the rows (else along the columns)."""
        return len(self.e_rows) > 1

    @property
    def bias_widths(self) -> tuple[str | None, ...]:
        """Width matrices of the bias (the output side: the rows, or the columns of a transposed weight)."""
        if self.mod.kind == EMBEDDING:
            return (None,)
        return self.e_cols if self.mod.transposed else self.e_rows


@dataclass(frozen=True)
class Plan:
    """The result of :func:`build_plan`. ``tensors`` are in creation order (the order of the initial draws)."""

    arch: Arch
    L1: int
    L2: int
    widths: dict[str, tuple[int, int]]  # every width any module uses: (small, large)
    tensors: tuple[OpTensor, ...]
    slots: tuple[Slot, ...]
    aliases: dict[str, tuple[str, ...]]  # produced name -> other large-model names tied to it
    removed: frozenset[str]  # large-model parameters the operator produces (with their aliases)
    notes: tuple[str, ...] = field(default=())  # where a function-preserving init is not exact, and why

    def tensor(self, name: str) -> OpTensor:
        return self.by_name[name]

    @cached_property
    def by_name(self) -> dict[str, OpTensor]:
        return {t.name: t for t in self.tensors}

    @property
    def rules(self) -> list[tuple[str, str, str]]:
        """(internal name, official key, rule) of every operator tensor."""
        return [(t.name, t.official, t.rule) for t in self.tensors]


# ---------------------------------------------------------------------------------------------- helpers
def parts(width) -> tuple[str, ...]:
    if width is None:
        return ()
    return tuple(width) if isinstance(width, tuple) else (width,)


def row_col_widths(mod: Module):
    """Width names (or tuples of part names) of the 2-D weight view's rows and columns."""
    if mod.kind == EMBEDDING:
        return None, mod.out
    if mod.kind == NORM:
        return mod.out, None
    return (mod.inp, mod.out) if mod.transposed else (mod.out, mod.inp)


def ident(mod: Module) -> str:
    """A module's name in the official key layout: its path, or path.tensor for a bare parameter."""
    return mod.path if mod.weight == "weight" else mod.key(mod.weight)


def view2d(mod: Module, shape: Shape) -> tuple[int, int]:
    """The (rows, cols) the op sees: linear weights grow on dim 0 (conv kernels ride along), embeddings on the last."""
    shape = tuple(shape)
    if mod.kind == NORM:
        return (shape[0], 1)
    if mod.kind == EMBEDDING:
        return (_prod(shape[:-1]), shape[-1])
    return (shape[0], _prod(shape[1:]))


def _prod(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _san(path: str) -> str:
    return path.replace(".", "__")


def official_path(arch: Arch, mod: Module, layered: bool) -> str:
    """Official module path; for block modules with ``{l}`` for the large layer index."""
    return f"{arch.layers}.{{l}}.{ident(mod)}" if layered else ident(mod)


def check_family(arch: Arch, large_config) -> None:
    mt = getattr(large_config, "model_type", None)
    if mt not in arch.model_types:
        raise ValueError(
            f"the large config is a {mt!r} config but the small model is a {arch.family} model "
            f"({', '.join(arch.model_types)}); grow within one family"
        )


def residual_width(arch: Arch) -> str:
    """The residual stream's width: what the first global embedding writes (``emb`` in every built-in family)."""
    for m in arch.modules:
        if m.kind == EMBEDDING and isinstance(m.out, str):
            return m.out
    return "emb"


# ---------------------------------------------------------------------------------------------- the planner
def build_plan(
    arch: Arch,
    small_shapes: Mapping[str, Shape],
    large_shapes: Mapping[str, Shape],
    tied_groups: Sequence[Sequence[str]],
    L1: int,
    L2: int,
    cfg: LiGOConfig,
    layer_types: tuple[Sequence[str] | None, Sequence[str] | None] = (None, None),
) -> Plan:
    """Plan the growth of a model with state-dict shapes ``small_shapes`` into one with ``large_shapes``.

    Args:
        arch: the family's description, already resolved for the pair of configs (``Arch.for_configs``).
        small_shapes, large_shapes: ``{state-dict key: shape}`` of the small and the large model.
        tied_groups: the large model's parameter names, grouped by identity (a group of several names is a tie,
            e.g. ``lm_head.weight`` and ``model.embed_tokens.weight``); pass ``[]`` to produce every module
            separately (the official code does).
        L1, L2: layer counts.
        cfg: the operator options (tying, residual, init schemes, what trains).
        layer_types: the small and the large config's per-layer attention kinds (``config.layer_types``: sliding
            window or full), if they have them: a function-preserving start needs each copied layer to keep its kind.

    Raises ValueError (nothing is built) when a width shrinks, two sides of one width disagree, an axis that
    never grows differs, a bias exists in only one model, or the layer count shrinks.
    """
    if L2 < L1:
        raise ValueError(f"the layer count shrinks: the small model has {L1} layers, the large config {L2}")
    layer0 = arch.layer_path(0)
    group_of = {name: i for i, g in enumerate(tied_groups) for name in g}
    tensors: list[OpTensor] = []

    # 1. the small model's tensors, all of them (the official layout keeps even unused ones)
    in_layers = tuple(arch.layer_path(j) + "." for j in range(L1))
    for k, shape in small_shapes.items():
        if not k.startswith(in_layers):
            tensors.append(OpTensor(sm_key(k), sm_key(k), "plain", "small", cfg.train_small, tuple(shape), (k,)))
    for k in sorted({k[len(layer0) + 1 :] for k in small_shapes if k.startswith(layer0 + ".")}):
        keys = tuple(f"{arch.layer_path(j)}.{k}" for j in range(L1))
        for key in keys:
            if key not in small_shapes:
                raise ValueError(f"the small model has {k!r} in layer 0 but not {key!r}")
        shape = (L1, *small_shapes[keys[0]])
        tensors.append(OpTensor(sm_key(k), sm_key(k), "stack", "small", cfg.train_small, shape, keys))

    # 2. which modules this model has; a module whose large weight is tied to one produced earlier (lm_head and the
    #    token embedding) keeps only its bias here: the weight is an alias of the produced tensor
    modules: list[tuple[Module, bool, bool]] = []  # (module, layered, weight tied to an earlier module's)
    first_of_group: dict[int, int] = {}  # tie group -> index into modules of the module that produces its weight
    tied_to: dict[int, int] = {}  # index of a module with a tied weight -> index of the one that produces it
    for mod, layered in [(m, True) for m in arch.layer_modules] + [(m, False) for m in arch.modules]:
        key = f"{layer0}.{mod.key(mod.weight)}" if layered else mod.key(mod.weight)
        if key not in small_shapes and key not in large_shapes and not layered:
            continue  # an optional global module (a pooler) this model does not have
        for where, sd in (("small model", small_shapes), ("large model", large_shapes)):
            if key not in sd:
                raise ValueError(f"the {where} has no tensor {key!r}, which the {arch.family} description names")
        g = group_of.get(key)
        if g is not None and g in first_of_group:
            tied_to[len(modules)] = first_of_group[g]
        elif g is not None:
            first_of_group[g] = len(modules)
        modules.append((mod, layered, len(modules) in tied_to))

    def weight_key(mod: Module, layered: bool) -> str:
        return f"{layer0}.{mod.key(mod.weight)}" if layered else mod.key(mod.weight)

    # 3. width sizes: every side that uses a width must agree on (small, large)
    sizes: dict[str, tuple[int, int, str]] = {}

    def side(width, small: int, big: int, where: str) -> None:
        names = parts(width)
        if not names:
            if small != big:
                raise ValueError(
                    f"{where} has size {small} in the small model and {big} in the large one, but that axis "
                    "does not grow (a vocabulary, position table, label set or patch)"
                )
            return
        if small % len(names) or big % len(names):
            raise ValueError(f"{where}: sizes {small} and {big} do not split into {len(names)} equal parts")
        small, big = small // len(names), big // len(names)
        for w in names:
            if big < small:
                raise ValueError(
                    f"width {w!r} shrinks: {where} has size {small} in the small model but {big} in the large one"
                )
            if w in sizes and sizes[w][:2] != (small, big):
                raise ValueError(f"width {w!r} is {sizes[w][:2]} at {sizes[w][2]} but {(small, big)} at {where}")
            sizes.setdefault(w, (small, big, where))

    for mod, layered, _ in modules:
        key = weight_key(mod, layered)
        s, b = view2d(mod, small_shapes[key]), view2d(mod, large_shapes[key])
        rows, cols = row_col_widths(mod)
        side(rows, s[0], b[0], f"{key} rows")
        side(cols, s[1], b[1], f"{key} columns")

    def grows(w: str | None) -> bool:
        return w is not None and w in sizes and sizes[w][0] != sizes[w][1]

    def factor(w: str | None) -> float:
        return sizes[w][1] / sizes[w][0] if grows(w) else 1.0

    lossless_width = is_lossless(cfg.width_init)
    notes: list[str] = []
    if lossless_width:
        for w, (small, big, _) in sizes.items():
            if big % small:
                notes.append(
                    f"width {w!r} grows {small} -> {big}, not by an integer factor: neurons are copied unevenly, "
                    "so norms and the input split are not exact"
                )
    if is_lossless(cfg.depth_init) and all(t is not None for t in layer_types):
        small_types, large_types = layer_types
        src, added = lossless_layers(L2, L1)
        for l in range(L2):
            if not added[l] and large_types[l] != small_types[src[l]]:
                notes.append(
                    f"large layer {l} copies small layer {int(src[l])} but its attention kind is {large_types[l]!r}, "
                    f"not {small_types[src[l]]!r}: set the large config's layer_types to follow the copies "
                    "(ligo_fast.init.grown_layer_types)"
                )

    # 4. width matrices
    def width_tensor(name: str, official: str, width: str, layers: int | None) -> OpTensor:
        small, big, _ = sizes[width]
        shape = (big - small, small) if layers is None else (layers, big - small, small)
        rule = "plain" if layers is None else "split"
        return OpTensor(name, official, rule, "width", cfg.train_width, shape, width=width)

    tied: dict[str, str] = {}
    if cfg.tie:
        for wname, spec in arch.widths.items():
            if grows(wname):
                tied[wname] = "width__" + wname
                layers = L2 if spec.per_layer else None
                tensors.append(width_tensor(tied[wname], spec.key + ".coeffs_weight", wname, layers))
    own_widths: set[str] = set()

    def width_for(mod: Module, layered: bool, wname: str | None, suffix: str) -> str | None:
        if not grows(wname):
            return None
        if cfg.tie:
            return tied[wname]
        name = f"width__{_san(ident(mod))}__{suffix}"
        if name not in own_widths:
            own_widths.add(name)
            key = f"{official_path(arch, mod, layered)}.fuse_width_{suffix}.coeffs_weight"
            tensors.append(width_tensor(name, key, wname, L2 if layered else None))
        return name

    # 5. one slot per module kind
    stream = residual_width(arch)
    head_norm_scale: dict[int, float] = {}  # index into modules -> fixed scale folded into that norm
    emb_scale: dict[int, float] = {}  # index into modules -> fixed scale of an embedding the model multiplies
    if lossless_width:
        # the model multiplies the rows by output_scale(width) (Gemma: sqrt(hidden)): undo its change in the table
        for i, (m, _, tied_weight) in enumerate(modules):
            if m.kind == EMBEDDING and m.output_scale is not None and grows(m.out) and not tied_weight:
                small, big = sizes[m.out][:2]
                emb_scale[i] = m.output_scale(small) / m.output_scale(big)
        # a tied head reads the embedding's columns, B_emb^T (not B_emb^T / k), times that embedding's fixed scale:
        # fold the inverse into the norm before it
        for h, (head, _, tied_weight) in enumerate(modules):
            k = factor(head.inp) * emb_scale.get(tied_to.get(h, -1), 1.0)
            if not tied_weight or k == 1.0:
                continue
            norms = [i for i, (m, lay, _) in enumerate(modules[:h]) if not lay and m.kind == NORM and m.out == head.inp]
            if norms:
                head_norm_scale[norms[-1]] = 1.0 / k
            else:
                notes.append(f"{head.path} is tied to an embedding and no norm precedes it: outputs scaled by {k}")

    slots: list[Slot] = []
    for index, (mod, layered, tied_weight) in enumerate(modules):
        full = official_path(arch, mod, layered)
        sid = _san(ident(mod))
        key = weight_key(mod, layered)
        bias_key = mod.key(mod.bias) if mod.bias else None
        probe = f"{layer0}.{bias_key}" if (layered and bias_key) else bias_key
        has_bias = bool(bias_key) and probe in small_shapes
        if bias_key and (probe in small_shapes) != (probe in large_shapes):
            has, lacks = ("small", "large") if probe in small_shapes else ("large", "small")
            raise ValueError(f"{probe} exists in the {has} model but not in the {lacks} one (bias settings differ)")
        if tied_weight and not has_bias:
            continue  # nothing to produce: the weight is an alias
        rows, cols = row_col_widths(mod)
        # the official code calls the feature side of embeddings and norms "out", of linears out/in by role
        rsuffix, csuffix = ("in", "out") if mod.transposed else ("out", "in")
        if mod.kind == EMBEDDING:
            csuffix = "out"
        if tied_weight:  # nothing of the weight is produced here
            e_rows, e_cols = (None,) * len(parts(rows) or (None,)), (None,) * len(parts(cols) or (None,))
        else:
            e_rows = tuple(width_for(mod, layered, w, rsuffix) for w in (parts(rows) or (None,)))
            e_cols = tuple(width_for(mod, layered, w, csuffix) for w in (parts(cols) or (None,)))
        k_in = factor(mod.inp) if (lossless_width and mod.kind == LINEAR) else 1.0
        block_output = layered and mod.kind == LINEAR and mod.out == stream
        depth_w = depth_b = None
        if layered:
            depth_w = f"depth__{sid}__weight"
            tensors.append(
                OpTensor(
                    depth_w, f"{full}.fuse_depth_coeffs.coeffs_weight", "split", "depth", cfg.train_depth, (L2, L1),
                    block_output=block_output, scale=1.0 / k_in,
                )
            )  # fmt: skip
            if has_bias:
                depth_b = f"depth__{sid}__bias"
                tensors.append(
                    OpTensor(
                        depth_b, f"{full}.fuse_depth_coeffs.coeffs_bias", "split", "depth", cfg.train_depth, (L2, L1),
                        block_output=block_output,
                    )
                )  # fmt: skip
        layer_names = [arch.layer_path(l) + "." for l in range(L2)] if layered else [""]
        targets_w = tuple(p + mod.key(mod.weight) for p in layer_names)
        targets_b = tuple(p + bias_key for p in layer_names) if has_bias else ()
        res_w = res_b = None
        if cfg.residual:
            res_w, res_b = f"residual__{sid}__weight", (f"residual__{sid}__bias" if has_bias else None)
            res_w = None if tied_weight else res_w
            for name, tgt, what in ((res_w, targets_w, "weight"), (res_b, targets_b, "bias")):
                if name is None:
                    continue
                shape = tuple(large_shapes[tgt[0]])
                shape = (L2, *shape) if layered else shape
                rule = "split" if layered else "plain"
                tensors.append(OpTensor(name, f"{full}.residual_{what}", rule, "residual", True, shape))
        scale_w = scale_b = None
        fixed = head_norm_scale.get(index, emb_scale.get(index, 1.0 / k_in if not layered else 1.0))
        if fixed != 1.0:
            scale_w = f"scale__{sid}__weight"
            tensors.append(OpTensor(scale_w, f"{full}.fuse_scale.coeffs_weight", "plain", "scale", False, (1, 1),
                                    scale=fixed))  # fmt: skip
            if has_bias and index in head_norm_scale:
                scale_b = f"scale__{sid}__bias"
                tensors.append(OpTensor(scale_b, f"{full}.fuse_scale.coeffs_bias", "plain", "scale", False, (1, 1),
                                        scale=fixed))  # fmt: skip
        slots.append(
            Slot(
                mod, layered, sm_key(mod.key(mod.weight)), sm_key(bias_key) if has_bias else None, depth_w, depth_b,
                e_rows, e_cols, res_w, res_b, scale_w, scale_b, tied_weight, targets_w, targets_b,
                tuple(large_shapes[targets_w[0]]), view2d(mod, small_shapes[key]),
            )
        )  # fmt: skip

    # 6. the large model keeps only what the operator does not produce
    produced = {t for s in slots for t in (() if s.tied_weight else s.targets_w) + s.targets_b}
    aliases: dict[str, tuple[str, ...]] = {}
    removed: set[str] = set()
    for names in tied_groups:
        hit = [n for n in names if n in produced]
        if hit:
            removed.update(names)
            if len(names) > 1:
                aliases[hit[0]] = tuple(n for n in names if n != hit[0])
    removed.update(produced)
    return Plan(
        arch=arch,
        L1=L1,
        L2=L2,
        widths={w: v[:2] for w, v in sizes.items()},
        tensors=tuple(tensors),
        slots=tuple(slots),
        aliases=aliases,
        removed=frozenset(removed),
        notes=tuple(notes),
    )
