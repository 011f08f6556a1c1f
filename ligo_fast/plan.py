"""The growth plan: which operator tensors exist and which small tensors feed which large ones.

:func:`build_plan` is a pure function of an architecture description, the shapes of the small and the large
model's state dicts, the large model's tied parameters and the :class:`LiGOConfig`. Everything that grows a model
reads the plan: :class:`ligo_fast.model.LiGOModel` creates its tensors from ``plan.tensors`` and produces weights
slot by slot (:mod:`ligo_fast.produce`); :mod:`ligo_fast.compat` validates the official API's modules against it
and produces through it; :mod:`ligo_fast.layout` translates its internal names to the official checkpoint keys.

Vocabulary:
  * an *operator tensor* (:class:`OpTensor`) is one tensor the operator owns, by internal name: a small weight
    (block weights stacked layer-major, ``(L1, ...)``), depth coefficients ``(L2, L1)``, a width matrix ``E``
    (``(L2, new, small)`` per large layer or ``(new, small)`` shared), a residual, or a fixed scale (its
    :class:`Role`), laid out by a :class:`Rule`;
  * a *slot* (:class:`Slot`) is one module kind: a block module over all large layers (one expand call), or one
    global module; it names the operator tensors it reads and the large-model parameters it produces, and is
    identified by its ``name``.

The planner runs in named steps (:func:`build_plan` lists them), each a small pure function of
:class:`PlanInputs` and the earlier steps' values (:class:`Present`, :class:`WidthSize`, :class:`FixedScale`).

Imports: ``arch``, ``config`` and ``init`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from .arch import EMBEDDING, LINEAR, NORM, Arch, Module
from .config import LiGOConfig
from .init import is_lossless, lossless_layers

SM = "__sm_"  # the official prefix of the small model's tensors

Shape = tuple[int, ...]


def sm_key(key: str) -> str:
    """The official name of a small-model tensor: ``__sm_`` + the key with dots replaced."""
    return SM + key.replace(".", "_")


class Rule(StrEnum):
    """How an operator tensor is laid out here and in the official checkpoint (:mod:`ligo_fast.layout`)."""

    PLAIN = "plain"  # stored as is
    STACK = "stack"  # small block tensors: (L1, ...) here, (..., L1) in the official layout
    SPLIT = "split"  # per large layer: (L2, ...) here, one key per layer officially


class Role(StrEnum):
    """What an operator tensor is."""

    SMALL = "small"  # a small-model tensor
    DEPTH = "depth"  # depth coefficients (L2, L1)
    WIDTH = "width"  # a width matrix E
    RESIDUAL = "residual"  # a learned full-size addition to a produced tensor
    SCALE = "scale"  # a fixed (1, 1) factor (function-preserving growth)


@dataclass(frozen=True)
class OpTensor:
    """One tensor of the operator.

    Attributes:
        name: internal name (an attribute of ``LiGOModel.op``).
        official: its official checkpoint key; ``{l}`` stands for the large layer index when ``rule`` is
            :attr:`Rule.SPLIT`.
        rule: its layout (:class:`Rule`).
        role: what it is (:class:`Role`).
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
    rule: Rule
    role: Role
    trainable: bool
    shape: Shape
    sources: tuple[str, ...] = ()
    width: str | None = None
    block_output: bool = False
    scale: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Slot:
    """One module kind: a block module over all large layers, or one global module.

    Operator tensors are named by internal name (:class:`OpTensor`); None where the slot has no such tensor.

    Attributes:
        name: the slot's identity: its module's official path with dots as ``__`` (``attention__self__query``);
            its operator tensors are named after it (``depth__<name>__weight``).
        mod: the module's description; ``layered``: a block module (one per large layer), else a global one.
        w, b: the small weight (stacked ``(L1, ...)`` if layered, else as in the small model) and bias.
        depth_w, depth_b: depth coefficients ``(L2, L1)``, layered only.
        e_rows, e_cols: width matrices of the 2-D weight view's rows (the op's ``E_out``) and columns (``E_in``),
            one per fused part.
        res_w, res_b: residuals (``LiGOConfig.residual``).
        scale_w, scale_b: global modules: a fixed ``(1, 1)`` depth (function-preserving growth), else None.
        tied_weight: the weight is an alias of another slot's (a tied head): only the bias is produced here.
        targets_w, targets_b: large-model parameter names, one per large layer (or one).
        shape_w: the large tensor shape of one weight target; ``view_w``: its 2-D (rows, cols) view in the small
            model.
    """

    name: str
    mod: Module
    layered: bool
    w: str
    b: str | None = None
    depth_w: str | None = None
    depth_b: str | None = None
    e_rows: tuple[str | None, ...] = (None,)
    e_cols: tuple[str | None, ...] = (None,)
    res_w: str | None = None
    res_b: str | None = None
    scale_w: str | None = None
    scale_b: str | None = None
    tied_weight: bool = False
    targets_w: tuple[str, ...]
    targets_b: tuple[str, ...] = ()
    shape_w: Shape
    view_w: tuple[int, int]

    @property
    def split_rows(self) -> bool:
        """The fused parts lie along the rows (else along the columns)."""
        return len(self.e_rows) > 1

    @property
    def bias_size(self) -> int:
        """Elements of one bias target (the weight's output side; 0 without a bias)."""
        if self.b is None:
            return 0
        return self.shape_w[-1] if self.mod.transposed else self.shape_w[0]

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
    def rules(self) -> list[tuple[str, str, Rule]]:
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


# ---------------------------------------------------------------------------------------------- what configs say
# config fields that shape the function and do not grow: a function-preserving start needs them unchanged
SAME_FUNCTION_FIELDS = (
    "hidden_act", "hidden_activation", "activation_function", "layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps",
    "position_embedding_type", "rope_parameters", "rope_theta", "sliding_window", "query_pre_attn_scalar",
    "attn_logit_softcapping", "final_logit_softcapping",
)  # fmt: skip


@dataclass(frozen=True)
class ConfigFacts:
    """What a model's config says about its function that its state-dict shapes do not.

    Attributes:
        head_size: features per head (``config.head_dim``, else ``hidden_size / num_attention_heads``).
        layer_types: per-layer attention kinds (``config.layer_types``: ``sliding_attention`` / ``full_attention``).
        settings: ``(field, value)`` of the :data:`SAME_FUNCTION_FIELDS` the config has.
    """

    head_size: int | None = None
    layer_types: tuple[str, ...] | None = None
    settings: tuple[tuple[str, object], ...] = ()

    @classmethod
    def of(cls, config) -> ConfigFacts:
        head = getattr(config, "head_dim", None)
        heads = getattr(config, "num_attention_heads", None)
        if not head and heads:
            head = config.hidden_size // heads
        types = getattr(config, "layer_types", None)
        settings = tuple((f, getattr(config, f)) for f in SAME_FUNCTION_FIELDS if hasattr(config, f))
        return cls(head, tuple(types) if types is not None else None, settings)


def config_notes(arch: Arch, facts: tuple[ConfigFacts, ConfigFacts], L1: int, L2: int, cfg: LiGOConfig) -> list[str]:
    """Why a function-preserving start is not exact, where the configs (not the shapes) show it."""
    small, large = facts
    notes = []
    if is_lossless(cfg.width_init) or is_lossless(cfg.depth_init):
        theirs = dict(large.settings)
        for name, value in small.settings:
            if name in theirs and theirs[name] != value:
                notes.append(f"the large config's {name} is {theirs[name]!r}, the small one's {value!r}")
    if is_lossless(cfg.width_init) and small.head_size and large.head_size and small.head_size != large.head_size:
        rope = " and the rotary frequencies of each dimension change with the head size" if arch.rotary else ""
        notes.append(
            f"the head size changes ({small.head_size} -> {large.head_size}): LiGO's B = [I; E] keeps the small "
            "model's features in place, so the large heads do not line up with the small ones (a large head attends "
            f"with several small heads' summed scores, or a small head is split){rope}; attention is not the small "
            "model's. Keep the head size and grow the head count (head_dim unchanged) for an exact start"
        )
    if is_lossless(cfg.depth_init) and L2 > L1 and not arch.pre_norm:
        notes.append(
            "an added block of a post-norm model applies its copied LayerNorms to h even with zeroed outputs "
            "(LN(LN(h)), not h): depth growth is close, not exact"
        )
    if is_lossless(cfg.depth_init) and small.layer_types is not None and large.layer_types is not None:
        src, added = lossless_layers(L2, L1)
        for l in range(L2):
            j = int(src[l])
            if not added[l] and large.layer_types[l] != small.layer_types[j]:
                notes.append(
                    f"large layer {l} copies small layer {j} but its attention kind is {large.layer_types[l]!r}, "
                    f"not {small.layer_types[j]!r}: set the large config's layer_types to follow the copies "
                    "(ligo_fast.init.grown_layer_types)"
                )
    return notes


# ---------------------------------------------------------------------------------------------- the planner
@dataclass(frozen=True)
class WidthSize:
    """A width's size in the small and the large model, and where it was first seen (for error messages)."""

    small: int
    large: int
    where: str

    @property
    def grows(self) -> bool:
        return self.small != self.large

    @property
    def factor(self) -> float:
        return self.large / self.small


@dataclass(frozen=True)
class Present:
    """A module the pair of models has: ``key`` is its weight's state-dict key (layer 0's for a block module);
    ``tied_to``: the index (into the present modules) of the module whose produced weight this one's is tied to."""

    mod: Module
    layered: bool
    key: str
    tied_to: int | None = None

    @property
    def tied_weight(self) -> bool:
        return self.tied_to is not None


@dataclass(frozen=True)
class FixedScale:
    """A global module's fixed ``(1, 1)`` depth (function-preserving growth); ``bias``: it scales the bias too."""

    value: float
    bias: bool = False


@dataclass(frozen=True)
class PlanInputs:
    """What every step reads: the pair of models and the options."""

    arch: Arch
    small: Mapping[str, Shape]
    large: Mapping[str, Shape]
    L1: int
    L2: int
    cfg: LiGOConfig

    @property
    def layer0(self) -> str:
        return self.arch.layer_path(0)


def build_plan(
    arch: Arch,
    small_shapes: Mapping[str, Shape],
    large_shapes: Mapping[str, Shape],
    tied_groups: Sequence[Sequence[str]],
    L1: int,
    L2: int,
    cfg: LiGOConfig,
    facts: tuple[ConfigFacts, ConfigFacts] = (ConfigFacts(), ConfigFacts()),
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
        facts: what the small and the large config say that the shapes do not (:class:`ConfigFacts`): where a
            function-preserving start cannot be exact for such a reason, ``notes`` say so.

    Raises ValueError (nothing is built) when a width shrinks, two sides of one width disagree, an axis that
    never grows differs, a bias exists in only one model, or the layer count shrinks.

    The steps, in order (the order of ``tensors`` is the order of the initial draws): :func:`small_tensors`,
    :func:`present_modules`, :func:`width_sizes`, the notes, :func:`tied_width_tensors`, :func:`lossless_scales`,
    :func:`plan_slot` per present module (its own width matrices, depth, residual and scale tensors), and
    :func:`aliases_of`.
    """
    if L2 < L1:
        raise ValueError(f"the layer count shrinks: the small model has {L1} layers, the large config {L2}")
    pair = PlanInputs(arch, small_shapes, large_shapes, L1, L2, cfg)
    tensors = small_tensors(pair)
    modules = present_modules(pair, tied_groups)
    sizes = width_sizes(pair, modules)
    notes = width_notes(sizes) if is_lossless(cfg.width_init) else []
    notes += config_notes(arch, facts, L1, L2, cfg)
    widths = WidthMatrices(pair, sizes, tied_width_tensors(pair, sizes))
    tensors += widths.tied.values()
    scales, scale_notes = lossless_scales(modules, sizes) if is_lossless(cfg.width_init) else ({}, [])
    notes += scale_notes
    slots = []
    for index, present in enumerate(modules):
        planned = plan_slot(pair, present, widths, scales.get(index), sizes)
        if planned is not None:
            slots.append(planned[0])
            tensors += planned[1]
    aliases, removed = aliases_of(slots, tied_groups)
    return Plan(
        arch=arch,
        L1=L1,
        L2=L2,
        widths={w: (v.small, v.large) for w, v in sizes.items()},
        tensors=tuple(tensors),
        slots=tuple(slots),
        aliases=aliases,
        removed=removed,
        notes=tuple(notes),
    )


def small_tensors(pair: PlanInputs) -> list[OpTensor]:
    """Step 1: the small model's tensors, all of them (the official layout keeps even unused ones): global ones
    as they are, block ones stacked layer-major."""
    arch, small, L1, train = pair.arch, pair.small, pair.L1, pair.cfg.train_small
    in_layers = tuple(arch.layer_path(j) + "." for j in range(L1))
    out = [
        OpTensor(sm_key(k), sm_key(k), Rule.PLAIN, Role.SMALL, train, tuple(shape), (k,))
        for k, shape in small.items()
        if not k.startswith(in_layers)
    ]
    layer0 = pair.layer0
    for k in sorted({k[len(layer0) + 1 :] for k in small if k.startswith(layer0 + ".")}):
        keys = tuple(f"{arch.layer_path(j)}.{k}" for j in range(L1))
        for key in keys:
            if key not in small:
                raise ValueError(f"the small model has {k!r} in layer 0 but not {key!r}")
        out.append(OpTensor(sm_key(k), sm_key(k), Rule.STACK, Role.SMALL, train, (L1, *small[keys[0]]), keys))
    return out


def present_modules(pair: PlanInputs, tied_groups: Sequence[Sequence[str]]) -> list[Present]:
    """Step 2: which of the description's modules this model has (block modules first). A module whose large
    weight is tied to one produced earlier (lm_head and the token embedding) keeps only its bias: its weight is an
    alias of the produced tensor."""
    group_of = {name: i for i, g in enumerate(tied_groups) for name in g}
    first_of_group: dict[int, int] = {}  # tie group -> index of the module that produces its weight
    out: list[Present] = []
    for mod, layered in [(m, True) for m in pair.arch.layer_modules] + [(m, False) for m in pair.arch.modules]:
        key = f"{pair.layer0}.{mod.key(mod.weight)}" if layered else mod.key(mod.weight)
        if key not in pair.small and key not in pair.large and not layered:
            continue  # an optional global module (a pooler) this model does not have
        for where, sd in (("small model", pair.small), ("large model", pair.large)):
            if key not in sd:
                raise ValueError(f"the {where} has no tensor {key!r}, which the {pair.arch.family} description names")
        g = group_of.get(key)
        tied_to = first_of_group.get(g) if g is not None else None
        if g is not None and tied_to is None:
            first_of_group[g] = len(out)
        out.append(Present(mod, layered, key, tied_to))
    return out


def width_sizes(pair: PlanInputs, modules: Sequence[Present]) -> dict[str, WidthSize]:
    """Step 3: the size of every width any module uses; every side that uses a width must agree on it."""
    sizes: dict[str, WidthSize] = {}
    for m in modules:
        s, b = view2d(m.mod, pair.small[m.key]), view2d(m.mod, pair.large[m.key])
        rows, cols = row_col_widths(m.mod)
        _side(sizes, rows, s[0], b[0], f"{m.key} rows")
        _side(sizes, cols, s[1], b[1], f"{m.key} columns")
    return sizes


def _side(sizes: dict[str, WidthSize], width, small: int, big: int, where: str) -> None:
    """Record (and check) the widths of one side of a module's 2-D view: ``small`` and ``big`` are its sizes."""
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
        seen = sizes.get(w)
        if seen is not None and (seen.small, seen.large) != (small, big):
            raise ValueError(f"width {w!r} is {(seen.small, seen.large)} at {seen.where} but {(small, big)} at {where}")
        sizes.setdefault(w, WidthSize(small, big, where))


def _grows(sizes: Mapping[str, WidthSize], w: str | None) -> bool:
    return w is not None and w in sizes and sizes[w].grows


def _factor(sizes: Mapping[str, WidthSize], w: str | None) -> float:
    return sizes[w].factor if _grows(sizes, w) else 1.0


def width_notes(sizes: Mapping[str, WidthSize]) -> list[str]:
    """Where a function-preserving width growth is not exact by the shapes alone: a non-integer growth factor."""
    return [
        f"width {w!r} grows {s.small} -> {s.large}, not by an integer factor: neurons are copied unevenly, "
        "so norms and the input split are not exact"
        for w, s in sizes.items()
        if s.large % s.small
    ]


def _width_tensor(pair: PlanInputs, size: WidthSize, name: str, official: str, width: str, per_layer: bool) -> OpTensor:
    shape = (size.large - size.small, size.small)
    rule = Rule.SPLIT if per_layer else Rule.PLAIN
    shape = (pair.L2, *shape) if per_layer else shape
    return OpTensor(name, official, rule, Role.WIDTH, pair.cfg.train_width, shape, width=width)


def tied_width_tensors(pair: PlanInputs, sizes: Mapping[str, WidthSize]) -> dict[str, OpTensor]:
    """Step 4 (``LiGOConfig.tie``): one width matrix per growing width, shared by every module that uses it:
    ``{width: tensor}``. Without tying each module owns its matrices (:class:`WidthMatrices`)."""
    if not pair.cfg.tie:
        return {}
    return {
        w: _width_tensor(pair, sizes[w], "width__" + w, spec.key + ".coeffs_weight", w, spec.per_layer)
        for w, spec in pair.arch.widths.items()
        if _grows(sizes, w)
    }


class WidthMatrices:
    """The width matrix of each side of each module: the tied one, or (untied) one per module and side, created
    on first use in the order of the slots."""

    def __init__(self, pair: PlanInputs, sizes: Mapping[str, WidthSize], tied: dict[str, OpTensor]):
        self.pair, self.sizes, self.tied = pair, sizes, tied
        self.own: set[str] = set()

    def of(self, mod: Module, layered: bool, width: str | None, suffix: str, new: list[OpTensor]) -> str | None:
        """The internal name of the width matrix of ``width`` on the ``suffix`` side of ``mod`` (None: it does not
        grow); an untied matrix seen for the first time is appended to ``new``."""
        if not _grows(self.sizes, width):
            return None
        if self.pair.cfg.tie:
            return self.tied[width].name
        name = f"width__{_san(ident(mod))}__{suffix}"
        if name not in self.own:
            self.own.add(name)
            key = f"{official_path(self.pair.arch, mod, layered)}.fuse_width_{suffix}.coeffs_weight"
            new.append(_width_tensor(self.pair, self.sizes[width], name, key, width, layered))
        return name


def lossless_scales(
    modules: Sequence[Present], sizes: Mapping[str, WidthSize]
) -> tuple[dict[int, FixedScale], list[str]]:
    """Step 5 (function-preserving width growth): the fixed scales of global modules beyond ``1 / k_in`` of a
    linear, ``{index into modules: scale}``, and notes where no such scale can be placed.

    An embedding the model multiplies by ``output_scale(width)`` (Gemma: sqrt(hidden)) gets the inverse of that
    factor's change. A tied head reads the embedding's columns, ``B_emb^T`` (not ``B_emb^T / k``), times that
    embedding's fixed scale: the inverse is folded into the norm before the head (weight and bias)."""
    emb: dict[int, float] = {}
    for i, m in enumerate(modules):
        if (
            m.mod.kind == EMBEDDING
            and m.mod.output_scale is not None
            and _grows(sizes, m.mod.out)
            and not m.tied_weight
        ):
            size = sizes[m.mod.out]
            emb[i] = m.mod.output_scale(size.small) / m.mod.output_scale(size.large)
    out = {i: FixedScale(v) for i, v in emb.items()}
    notes = []
    for h, head in enumerate(modules):
        k = _factor(sizes, head.mod.inp) * emb.get(head.tied_to if head.tied_to is not None else -1, 1.0)
        if not head.tied_weight or k == 1.0:
            continue
        norms = [
            i for i, m in enumerate(modules[:h]) if not m.layered and m.mod.kind == NORM and m.mod.out == head.mod.inp
        ]
        if norms:
            out[norms[-1]] = FixedScale(1.0 / k, bias=True)
        else:
            notes.append(f"{head.mod.path} is tied to an embedding and no norm precedes it: outputs scaled by {k}")
    return out, notes


def _bias_key(pair: PlanInputs, m: Present) -> str | None:
    """The module's bias key (relative to the block for block modules) if the models have one; both or neither
    must."""
    bias_key = m.mod.key(m.mod.bias) if m.mod.bias else None
    if not bias_key:
        return None
    probe = f"{pair.layer0}.{bias_key}" if m.layered else bias_key
    if (probe in pair.small) != (probe in pair.large):
        has, lacks = ("small", "large") if probe in pair.small else ("large", "small")
        raise ValueError(f"{probe} exists in the {has} model but not in the {lacks} one (bias settings differ)")
    return bias_key if probe in pair.small else None


def plan_slot(
    pair: PlanInputs, m: Present, widths: WidthMatrices, scale: FixedScale | None, sizes: Mapping[str, WidthSize]
) -> tuple[Slot, list[OpTensor]] | None:
    """Step 6: the slot of one present module and the operator tensors it adds (in creation order: its own width
    matrices, depth, residual, fixed scale); None when nothing is produced (a tied weight without a bias)."""
    mod, layered, arch = m.mod, m.layered, pair.arch
    bias_key = _bias_key(pair, m)
    if m.tied_weight and not bias_key:
        return None  # nothing to produce: the weight is an alias
    name, full = _san(ident(mod)), official_path(arch, mod, layered)
    new: list[OpTensor] = []
    e_rows, e_cols = _slot_widths(m, widths, new)
    lossless = is_lossless(pair.cfg.width_init)
    k_in = _factor(sizes, mod.inp) if (lossless and mod.kind == LINEAR) else 1.0
    depth_w, depth_b = _depths(pair, m, name, full, bool(bias_key), 1.0 / k_in, new) if layered else (None, None)
    layer_names = [arch.layer_path(l) + "." for l in range(pair.L2)] if layered else [""]
    targets_w = tuple(p + mod.key(mod.weight) for p in layer_names)
    targets_b = tuple(p + bias_key for p in layer_names) if bias_key else ()
    res_w, res_b = _residuals(pair, m, name, full, targets_w, targets_b, new)
    if scale is None and not layered and k_in != 1.0:
        scale = FixedScale(1.0 / k_in)
    scale_w, scale_b = _scales(name, full, bool(bias_key), scale, new) if scale is not None else (None, None)
    slot = Slot(
        name=name,
        mod=mod,
        layered=layered,
        w=sm_key(mod.key(mod.weight)),
        b=sm_key(bias_key) if bias_key else None,
        depth_w=depth_w,
        depth_b=depth_b,
        e_rows=e_rows,
        e_cols=e_cols,
        res_w=res_w,
        res_b=res_b,
        scale_w=scale_w,
        scale_b=scale_b,
        tied_weight=m.tied_weight,
        targets_w=targets_w,
        targets_b=targets_b,
        shape_w=tuple(pair.large[targets_w[0]]),
        view_w=view2d(mod, pair.small[m.key]),
    )
    return slot, new


def _slot_widths(
    m: Present, widths: WidthMatrices, new: list[OpTensor]
) -> tuple[tuple[str | None, ...], tuple[str | None, ...]]:
    """The width matrices of a slot's rows and columns, one per fused part (all None for a tied weight)."""
    rows, cols = row_col_widths(m.mod)
    rows, cols = parts(rows) or (None,), parts(cols) or (None,)
    if m.tied_weight:  # nothing of the weight is produced here
        return (None,) * len(rows), (None,) * len(cols)
    # the official code calls the feature side of embeddings and norms "out", of linears out/in by role
    rsuffix, csuffix = ("in", "out") if m.mod.transposed else ("out", "in")
    if m.mod.kind == EMBEDDING:
        csuffix = "out"
    e_rows = tuple(widths.of(m.mod, m.layered, w, rsuffix, new) for w in rows)
    e_cols = tuple(widths.of(m.mod, m.layered, w, csuffix, new) for w in cols)
    return e_rows, e_cols


def _depths(
    pair: PlanInputs, m: Present, name: str, full: str, has_bias: bool, scale: float, new: list[OpTensor]
) -> tuple[str, str | None]:
    """A block module's depth coefficients ``(L2, L1)`` of the weight (times ``scale``: 1 / the input width's
    growth factor in function-preserving growth) and the bias."""
    writers = pair.arch.residual_writers
    block_output = (
        m.mod.path in writers if writers else (m.mod.kind == LINEAR and m.mod.out == residual_width(pair.arch))
    )
    depth_w, depth_b = f"depth__{name}__weight", (f"depth__{name}__bias" if has_bias else None)
    for t, what, s in ((depth_w, "weight", scale), (depth_b, "bias", 1.0)):
        if t is not None:
            official, shape = f"{full}.fuse_depth_coeffs.coeffs_{what}", (pair.L2, pair.L1)
            train = pair.cfg.train_depth
            new.append(OpTensor(t, official, Rule.SPLIT, Role.DEPTH, train, shape, block_output=block_output, scale=s))
    return depth_w, depth_b


def _scales(
    name: str, full: str, has_bias: bool, scale: FixedScale, new: list[OpTensor]
) -> tuple[str | None, str | None]:
    """A global module's fixed ``(1, 1)`` depth of the weight (and of the bias where ``scale.bias``); none at 1."""
    if scale.value == 1.0:
        return None, None
    scale_w = f"scale__{name}__weight"
    scale_b = f"scale__{name}__bias" if (has_bias and scale.bias) else None
    for t, what in ((scale_w, "weight"), (scale_b, "bias")):
        if t is not None:
            official = f"{full}.fuse_scale.coeffs_{what}"
            new.append(OpTensor(t, official, Rule.PLAIN, Role.SCALE, False, (1, 1), scale=scale.value))
    return scale_w, scale_b


def _residuals(
    pair: PlanInputs, m: Present, name: str, full: str, targets_w: Shape, targets_b: Shape, new: list[OpTensor]
) -> tuple[str | None, str | None]:
    """``LiGOConfig.residual``: the learned full-size additions to the weight (unless tied) and the bias."""
    if not pair.cfg.residual:
        return None, None
    res_w = None if m.tied_weight else f"residual__{name}__weight"
    res_b = f"residual__{name}__bias" if targets_b else None
    for t, targets, what in ((res_w, targets_w, "weight"), (res_b, targets_b, "bias")):
        if t is not None:
            shape = tuple(pair.large[targets[0]])
            shape = (pair.L2, *shape) if m.layered else shape
            rule = Rule.SPLIT if m.layered else Rule.PLAIN
            new.append(OpTensor(t, f"{full}.residual_{what}", rule, Role.RESIDUAL, True, shape))
    return res_w, res_b


def aliases_of(
    slots: Sequence[Slot], tied_groups: Sequence[Sequence[str]]
) -> tuple[dict[str, tuple[str, ...]], frozenset[str]]:
    """Step 7: the large model keeps only what the operator does not produce. Returns ``aliases`` (produced name ->
    the other names tied to it) and ``removed`` (every produced large-model parameter, with its aliases)."""
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
    return aliases, frozenset(removed)
