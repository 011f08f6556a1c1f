"""The prepared growth: everything :class:`ligo_fast.LiGOModel` needs, computed once, in named steps.

:meth:`GrowthSpec.prepare` runs the steps in order; :func:`plan_growth` runs the first three and estimates:

1. :func:`resolve`: the family resolved for both configs, the model class, the small shapes, the layer counts
   (:class:`GrowthPair`);
2. :func:`large_layout`: the large model's state-dict shapes and tied parameters, from a one-layer model on meta
   with its block repeated (the full model is not built yet: a growth that cannot fit is refused first);
3. :func:`plan_for`: the plan (:func:`ligo_fast.plan.build_plan`), built once;
4. the estimate (:func:`growth_estimate`) and the refusal of a growth that cannot fit
   (:func:`ligo_fast.memory.ensure_fits`), before anything large is allocated;
5. :func:`skeleton`: the large HF model with its parameters on meta and the produced ones deleted;
6. :func:`initial_tensors`: the operator's tensors at their initial values, in plan order (the order of the draws);
   or, for a model that a file fills next (:func:`ligo_fast.load_operator`), :func:`empty_tensors`: the same shapes,
   dtypes and device, uninitialised (no draws, no copies of the small weights);
7. :func:`leftovers`: the large model's other parameters given real storage
   (:func:`ligo_fast.hf.materialize_leftovers`), frozen, on the small model's device and dtype.

``LiGOModel.__init__`` registers what the spec holds (its tensors as parameters or buffers, the skeleton as
``large``); nothing here depends on a batch or on how a forward runs.

Imports: arch, config, hf, init, lean (the default chunk), memory, plan.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from .arch import Arch, arch_for
from .config import LiGOConfig
from .hf import empty_parameters, materialize_leftovers, with_layers
from .init import depth_init, is_lossless, width_init
from .lean import default_chunk
from .memory import MemoryPlan, ensure_fits, estimate, memory_budget
from .plan import ConfigFacts, OpTensor, Plan, Role, Rule, Shape, build_plan, check_family

T = TypeVar("T")


@dataclass(frozen=True)
class GrowthPair:
    """A small model and a large config, resolved: what every later step reads.

    Attributes:
        arch: the family's description for this pair of configs (``Arch.for_configs``).
        hf_class: the small model's class (the large model's too).
        small_config, large_config: the HF configs.
        small_shapes: ``{state-dict key: shape}`` of the small model.
        L1, L2: the layer counts.
    """

    arch: Arch
    hf_class: type
    small_config: object
    large_config: object
    small_shapes: dict[str, Shape]
    L1: int
    L2: int


def resolve(small_model: nn.Module, large_config, small_state: dict[str, Tensor] | None = None) -> GrowthPair:
    """Step 1: the family of ``small_model`` checked against ``large_config`` and resolved for both configs.

    ``small_state``: the small model's state dict when the caller has read it already (no second pass)."""
    arch = arch_for(small_model)
    check_family(arch, large_config)
    arch = arch.for_configs(small_model.config, large_config)
    state = small_model.state_dict() if small_state is None else small_state
    return GrowthPair(
        arch=arch,
        hf_class=type(small_model),
        small_config=small_model.config,
        large_config=large_config,
        small_shapes={k: tuple(v.shape) for k, v in state.items()},
        L1=arch.num_layers(small_model.config),
        L2=arch.num_layers(large_config),
    )


def _per_layer(items: Iterable[tuple[str, T]], arch: Arch, layers: int) -> list[tuple[str, T, int | None]]:
    """``(name, value, layer)`` of a one-block model's named ``items`` with the block's entries repeated for
    ``layers`` blocks, layer-major, where the block stood: the order of the full model's (layer None outside)."""
    items = list(items)
    block = arch.layer_path(0) + "."
    inside = [(k[len(block) :], v) for k, v in items if k.startswith(block)]
    out: list[tuple[str, T, int | None]] = []
    placed = False
    for k, v in items:
        if not k.startswith(block):
            out.append((k, v, None))
        elif not placed:
            placed = True
            out += [(f"{arch.layer_path(l)}.{rest}", w, l) for l in range(layers) for rest, w in inside]
    return out


def large_layout(pair: GrowthPair) -> tuple[dict[str, Shape], list[tuple[str, ...]]]:
    """Step 2: the large model's ``{state-dict key: shape}`` and its parameter names grouped by identity (ties share
    a group), from a one-block model on meta (no memory, whatever ``L2``)."""
    with torch.device("meta"):
        one = pair.hf_class(with_layers(pair.large_config, 1))
    state = ((k, tuple(v.shape)) for k, v in one.state_dict().items())
    shapes = {k: shape for k, shape, _ in _per_layer(state, pair.arch, pair.L2)}
    named = ((n, id(p)) for n, p in one.named_parameters(remove_duplicate=False))
    groups: dict[tuple[int, int | None], list[str]] = {}
    for name, key, l in _per_layer(named, pair.arch, pair.L2):
        groups.setdefault((key, l), []).append(name)
    return shapes, [tuple(g) for g in groups.values()]


def tied_groups(model: nn.Module) -> list[tuple[str, ...]]:
    """``model``'s parameter names grouped by identity (ties share one group), in the order of its parameters."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [tuple(v) for v in by_id.values()]


def plan_for(pair: GrowthPair, config: LiGOConfig, layout: tuple[dict[str, Shape], list] | None = None) -> Plan:
    """Step 3: the growth plan of ``pair`` (``layout``: :func:`large_layout`'s, computed here when None)."""
    shapes, ties = layout if layout is not None else large_layout(pair)
    facts = (ConfigFacts.of(pair.small_config), ConfigFacts.of(pair.large_config))
    return build_plan(pair.arch, pair.small_shapes, shapes, ties, pair.L1, pair.L2, config, facts)


def growth_estimate(
    plan: Plan, large_config, *, elem: int, device: torch.device, chunk: int | None, budget: tuple[int, str],
    tokens: int = 0, seq_len: int = 0,
) -> MemoryPlan:  # fmt: skip
    """Step 4: the memory estimate of growing by ``plan`` (and of a step of ``tokens`` tokens; 0: none), compared
    with ``budget`` (bytes, source); ``chunk``: lean mode's layers per chunk (None: about sqrt(L2))."""
    available, source = budget
    return estimate(
        plan, large_config, tokens=tokens, seq_len=seq_len, elem=elem, leftover_bytes=0, device=device,
        chunk=default_chunk(plan.L2) if chunk is None else chunk, available=available, source=source,
    )  # fmt: skip


def plan_growth(
    small_model: nn.Module,
    large_config,
    config: LiGOConfig | None = None,
    *,
    tokens: int = 0,
    seq_len: int = 0,
    device: torch.device | str = "cpu",
    chunk: int | None = None,
    budget: tuple[int, str] | None = None,
) -> MemoryPlan:
    """The memory estimate of growing ``small_model`` to ``large_config`` without building either model's weights.

    Only shapes are read: ``small_model`` may live on meta (``with torch.device("meta"): cls(small_config)``), and
    the large shapes and ties come from a one-layer model on meta, so an 8B-class growth is planned in well under a
    second. The plan is the one :func:`ligo_fast.grow` would build (the same steps: :class:`GrowthSpec`).

    Args:
        tokens, seq_len: the batch of the operator step (0: no step, the other parts only).
        device: whose memory budget :class:`MemoryPlan` compares with; ``chunk``: lean mode's layers per chunk
            (None: about sqrt(L2)).
        budget: (bytes, source) to compare with; None: :func:`ligo_fast.memory.memory_budget` of ``device`` now
            (``config.memory_budget``, else ``LIGO_FAST_MEMORY_BUDGET``, else the free memory).
    """
    config = config or LiGOConfig()
    pair = resolve(small_model, large_config)
    device = torch.device(device)
    budget = budget if budget is not None else memory_budget(device, config.memory_budget)
    elem = next(small_model.parameters()).element_size()
    return growth_estimate(
        plan_for(pair, config), large_config, elem=elem, device=device, chunk=chunk, budget=budget, tokens=tokens,
        seq_len=seq_len,
    )  # fmt: skip


def initial_tensors(
    plan: Plan, small_state: dict[str, Tensor], config: LiGOConfig, device: torch.device
) -> dict[str, Tensor]:
    """Step 6: every operator tensor's initial value by internal name, in plan order (the order of the draws from
    one generator seeded by ``config.seed``; the global generator when it is None), on ``device``."""
    gen = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
    return {t.name: _initial(t, small_state, config, plan, gen).to(device) for t in plan.tensors}


def empty_tensors(plan: Plan, small_state: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Step 6 for a model whose every operator tensor is filled next (:func:`ligo_fast.operator_io.load_into`,
    which requires the file to hold them all): :func:`initial_tensors`' shapes, dtypes and device, uninitialised.

    The small model's tensors keep its dtype; the others are in the default floating dtype, as the init schemes
    draw them (float32 unless ``torch.set_default_dtype`` changed it)."""
    return {t.name: torch.empty(t.shape, dtype=_dtype(t, small_state), device=device) for t in plan.tensors}


def _dtype(t: OpTensor, small_state: dict[str, Tensor]) -> torch.dtype:
    return small_state[t.sources[0]].dtype if t.role == Role.SMALL else torch.get_default_dtype()


def _initial(t: OpTensor, small_sd: dict[str, Tensor], cfg: LiGOConfig, plan: Plan, gen) -> Tensor:
    """The initial value of operator tensor ``t`` (draws from ``gen`` for the random ones)."""
    if t.role == Role.SMALL:
        if t.rule == Rule.STACK:
            return torch.stack([small_sd[k].detach() for k in t.sources]).contiguous()
        return small_sd[t.sources[0]].detach().clone()
    if t.role == Role.WIDTH:
        n_new, small = t.shape[-2:]
        if t.rule == Rule.SPLIT:  # one layer's draw at a time into the result: no list of draws beside it
            out = None
            for l in range(t.shape[0]):
                draw = width_init(n_new, small, cfg.width_init, cfg.width_noise, gen)
                out = torch.empty((t.shape[0], *draw.shape), dtype=draw.dtype) if out is None else out
                out[l] = draw
            return out
        return width_init(n_new, small, cfg.width_init, cfg.width_noise, gen)
    if t.role == Role.DEPTH:
        d = depth_init(plan.L2, plan.L1, cfg.depth_init, cfg.depth_noise, gen, block_output=t.block_output)
        return d if t.scale == 1.0 else d * t.scale
    if t.role == Role.SCALE:
        return torch.full(t.shape, t.scale)
    if is_lossless(cfg.depth_init) or is_lossless(cfg.width_init):
        return torch.zeros(t.shape)  # a function-preserving start has no residual
    return torch.empty(t.shape).uniform_(-cfg.residual_noise, cfg.residual_noise, generator=gen)


def skeleton(pair: GrowthPair, plan: Plan, layout: tuple[dict[str, Shape], list]) -> nn.Module:
    """Step 5: the large HF model with its parameters on meta (its buffers real) and without the parameters the
    operator produces, checked against the ``layout`` the plan was built from."""
    with empty_parameters():  # parameters on meta: the produced ones are never allocated
        large = pair.hf_class(pair.large_config)
    shapes, ties = layout
    if {k: tuple(v.shape) for k, v in large.state_dict().items()} != shapes or tied_groups(large) != ties:
        raise RuntimeError(
            f"{pair.hf_class.__name__} with {pair.L2} layers is not its one-layer model with the layer repeated "
            "(shapes or tied weights differ per layer); LiGO grows models whose layers are alike"
        )
    for name in plan.removed:
        parent, _, leaf = name.rpartition(".")
        del large.get_submodule(parent)._parameters[leaf]
    return large


def leftovers(large: nn.Module, small_state: dict[str, Tensor], ref: Tensor) -> nn.Module:
    """Step 7: the parameters the operator does not produce get real storage (the small model's values where they
    do not grow, else the model's own init) and are frozen; the model moves to ``ref``'s device and dtype."""
    materialize_leftovers(large, small_state, ref.device)
    large.to(device=ref.device, dtype=ref.dtype)
    for p in large.parameters():
        p.requires_grad_(False)
    return large


def widens(plan: Plan) -> bool:
    """Whether the growth makes any width larger (hidden, heads, FFN): what :func:`ligo_fast.budget.operator_budget`
    reads, beside :func:`preserved_width`."""
    return any(small != big for small, big in plan.widths.values())


def preserved_width(pair: GrowthPair, plan: Plan, config: LiGOConfig) -> int | None:
    """The small model's hidden width when the operator starts from its function (lossless depth or no new layers,
    lossless width or no width growth), else None: what :func:`ligo_fast.budget.operator_budget` reads."""
    preserving = (pair.L1 == pair.L2 or is_lossless(config.depth_init)) and (
        not widens(plan) or is_lossless(config.width_init)
    )
    return getattr(pair.small_config, "hidden_size", None) if preserving else None


def check_finite(state: dict[str, Tensor]) -> None:
    """Refuse a small model with a NaN or Inf weight (ValueError naming it)."""
    for k, v in state.items():
        # a sum is one pass without a mask the size of the tensor; a NaN or Inf always makes it non-finite, and an
        # overflowing sum of finite values is told apart by the full check
        if v.is_floating_point() and not torch.isfinite(v.sum()) and not torch.isfinite(v).all():
            kind = "NaN" if torch.isnan(v).any() else "Inf"
            raise ValueError(f"the small model's {k} contains {kind}; refusing to grow from it")


@dataclass(frozen=True, eq=False)
class GrowthSpec:
    """What a growth needs, prepared once (:meth:`prepare`); :class:`ligo_fast.LiGOModel` registers it.

    Attributes:
        pair: the resolved small model and large config (:class:`GrowthPair`).
        config: the operator options.
        plan: the growth plan, built once.
        initial: every operator tensor's initial value by internal name, in plan order, on the small model's device
            (uninitialised when prepared with ``draw=False``: :func:`empty_tensors`).
        large: the large HF model without the produced parameters (:func:`skeleton`).
        budget: the memory budget of the small model's device (bytes, source), read once.
        preserved_width: the small model's hidden width when the operator starts from the small model's function
            (lossless depth or no new layers, lossless width or no width growth), else None.
    """

    pair: GrowthPair
    config: LiGOConfig
    plan: Plan
    initial: dict[str, Tensor]
    large: nn.Module
    budget: tuple[int, str]
    preserved_width: int | None

    @classmethod
    def prepare(cls, small_model: nn.Module, large_config, config: LiGOConfig, *, draw: bool = True) -> GrowthSpec:
        """Run the steps of this module in order for ``small_model`` (never modified) grown to ``large_config``.

        ``draw=False``: the operator's tensors are left uninitialised (:func:`empty_tensors`), for a caller that
        fills every one of them next (loading a saved operator); no init scheme runs, no draw is taken.

        Raises ValueError for a small model with NaN/Inf, a family mismatch or a plan that cannot be built, and
        MemoryError for a growth whose grown model or operator step cannot fit (before anything large is built).
        """
        small_state = small_model.state_dict()
        pair = resolve(small_model, large_config, small_state)
        check_finite(small_state)
        ref = next(small_model.parameters())  # the large model's leftovers follow the small model's device and dtype
        layout = large_layout(pair)
        plan = plan_for(pair, config, layout)
        # the memory budget, read once per device (the first here): every memory decision is a function of it
        budget = memory_budget(ref.device, config.memory_budget)
        early = growth_estimate(plan, large_config, elem=ref.element_size(), device=ref.device, chunk=1, budget=budget)
        ensure_fits(early, f"growing {pair.hf_class.__name__} to {pair.L2} layers")
        large = skeleton(pair, plan, layout)
        if draw:
            initial = initial_tensors(plan, small_state, config, ref.device)  # drawn before the leftovers' own init
        else:
            initial = empty_tensors(plan, small_state, ref.device)
        leftovers(large, small_state, ref)
        return cls(pair, config, plan, initial, large, budget, preserved_width(pair, plan, config))
