"""The official LiGO module's API (VITA-Group/LiGO ``ligo.py``), computed by ligo_fast's ops.

Scripts written against the official code keep working: ``create_ligo_from_model`` wraps a large
``BertForMaskedLM`` / ``RobertaForMaskedLM`` in place, module by module, with ``Fused*`` modules whose
``state_dict()`` is exactly the official checkpoint layout, and ``initialize_model_with_ligo`` writes the
weights of a trained official operator (``pytorch_model.bin``) into a plain large model.

Differences from the official code, all deliberate:
  * every produced tensor goes through :func:`ligo_fast.ops.ligo_expand` / ``ligo_expand_vec`` (one large
    layer: depth = this module's coefficient row as (1, L1); modules outside the blocks: L1 = 1, depth = [[1.]]),
    never the official elementwise-product-then-sum over a (out, in, L1) tensor;
  * LayerNorm and embedding residual tensors start uniform (-residual_noise, residual_noise) like the others;
    the official code leaves them uninitialised;
  * bad options fail early with a ValueError that names the valid choices.

For new code prefer :func:`ligo_fast.grow`: it produces all large layers of a module kind in one call.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from .. import factored
from ..arch import EMBEDDING, LINEAR, NORM, Arch, Module, supported_classes
from ..arch.bert import BERT_MLM, ROBERTA_MLM
from ..checkpoint import load_operator
from ..config import ExecutionOptions, LiGOConfig
from ..execution import BatchShape, Target, batch_shape, bind, budget_for, decide
from ..hf import materialized, storage_keys
from ..init import check_depth_reach
from ..layout import from_official
from ..plan import SM, Plan, Role, Rule, build_plan
from ..produce import produce_parts
from ..serialization import OFFICIAL
from .modules import (
    FUSED,
    FusedDepthParams,
    FusedEmbedding,
    FusedLayeredNorm,
    FusedLinear,
    FusedWidthParams,
    check_depth_scheme,
    check_width_scheme,
)

__all__ = [
    "FusedDepthParams",
    "FusedWidthParams",
    "FusedLinear",
    "FusedLayeredNorm",
    "FusedEmbedding",
    "create_ligo_from_model",
    "initialize_model_with_ligo",
    "materialize_compat",
    "ligo_args",
    "config_from_args",
    "set_execution_options",
    "SUPPORTED_CLASSES",
]

logger = logging.getLogger(__name__)

# The official code covers these two classes only; ligo_fast.grow covers more.
_ARCHS: dict[str, Arch] = {"BertForMaskedLM": BERT_MLM, "RobertaForMaskedLM": ROBERTA_MLM}
SUPPORTED_CLASSES = tuple(sorted(_ARCHS))

# official argument name -> LiGOConfig field
_ARG_FIELDS = {
    "fuse_init_scheme_depth": "depth_init",
    "fuse_init_scheme_width": "width_init",
    "fuse_init_noise_depth": "depth_noise",
    "fuse_init_noise_width": "width_noise",
    "tune_depth": "train_depth",
    "tune_width": "train_width",
    "tune_small_model": "train_small",
    "tune_residual": "residual",
    "tune_residual_noise": "residual_noise",
    "fuse_tie_param": "tie",
}
_ARG_PATHS = {"source_model_path": None, "pretrained_ligo_path": None, "cache_dir": None}


# ---------------------------------------------------------------------- arguments
def ligo_args(**overrides) -> argparse.Namespace:
    """The official script's LiGO arguments with the official defaults (:meth:`LiGOConfig.official`), some replaced.

    Unknown names raise TypeError (a typo would otherwise silently keep a default).
    """
    defaults = LiGOConfig.official()
    values = {arg: getattr(defaults, field) for arg, field in _ARG_FIELDS.items()}
    values.update(_ARG_PATHS)
    bad = sorted(set(overrides) - set(values))
    if bad:
        raise TypeError(f"unknown LiGO argument(s) {bad}; valid: {sorted(values)}")
    values.update(overrides)
    return argparse.Namespace(**values)


def config_from_args(args) -> LiGOConfig:
    """The :class:`LiGOConfig` an official ``args`` namespace asks for (missing attributes keep the official
    defaults, :meth:`LiGOConfig.official`)."""
    fields = {field: getattr(args, arg) for arg, field in _ARG_FIELDS.items() if hasattr(args, arg)}
    cfg = LiGOConfig.official(**fields)
    check_depth_scheme(cfg.depth_init, "the official API")
    check_width_scheme(cfg.width_init, "the official API")
    return cfg


# ---------------------------------------------------------------------- building
# on the wrapped model's __dict__: the growth plan; the execution options, memory budget per device and plans per
# batch shape (ligo_fast.execution); the binding of the forward that is running
_PLAN, _OPTIONS, _BUDGETS, _PLANS, _BOUND = (
    "_ligo_plan",
    "_ligo_options",
    "_ligo_budgets",
    "_ligo_plans",
    "_ligo_binding",
)


def _arch_of(model: nn.Module, what: str) -> Arch:
    name = type(model).__name__
    if name not in _ARCHS:
        raise ValueError(
            f"{what}: {name} is not supported by the official LiGO API; supported classes: "
            f"{', '.join(SUPPORTED_CLASSES)} (ligo_fast.grow supports {', '.join(supported_classes())})"
        )
    return _ARCHS[name]


def _source_path(args) -> str:
    path = getattr(args, "source_model_path", None)
    if isinstance(path, (list, tuple)):
        path = path[0] if path else None
    if not path:
        raise ValueError("args.source_model_path must name the small model (a list with one path)")
    return os.fspath(path)


def _load_small(model_large: nn.Module, args) -> nn.Module:
    path = _source_path(args)
    logger.info("loading the small model from %s", path)
    return type(model_large).from_pretrained(path, cache_dir=getattr(args, "cache_dir", None))


def _register_small(model_large: nn.Module, plan: Plan, small_sd: dict[str, Tensor], trainable: bool) -> None:
    """Every small tensor as ``__sm_*`` on the large model; block tensors stacked along a new last dim.

    A block tensor is stored layer-major (what the ops read) and registered as its official ``(..., L1)`` view.
    """
    device = next(model_large.parameters()).device
    for t in plan.tensors:
        if t.role != Role.SMALL:
            continue
        if t.rule == Rule.STACK:
            v = torch.stack([small_sd[k].detach() for k in t.sources]).to(device).movedim(0, -1)
        else:
            v = small_sd[t.sources[0]].detach().clone().to(device)
        if trainable:
            model_large.register_parameter(t.official, nn.Parameter(v))
        else:
            model_large.register_buffer(t.official, v)


def _bind_pre_hook(model: nn.Module, args, kwargs) -> None:
    """Decide and bind, as :class:`ligo_fast.LiGOModel`'s forward does (:mod:`ligo_fast.execution`): the batch's
    execution plan (the forms the cost model picks, memory-lean mode when memory is short), then every module's
    produced tensors (one expand call per module kind, or chunk by chunk in lean mode) and the factored forwards
    installed on the Fused modules for the forward; :func:`_bind_post_hook` removes them."""
    plan: Plan = model.__dict__[_PLAN]
    get = _getter(model, plan)
    ref = get(plan.slots[0].w)
    options: ExecutionOptions = model.__dict__[_OPTIONS]
    tokens, seq_len = batch_shape(args, kwargs, model.config)
    batch = BatchShape(tokens, seq_len, torch.is_grad_enabled(), compiling=torch.compiler.is_compiling())
    plans = model.__dict__.setdefault(_PLANS, {})
    xplan = plans[decide(plans, batch, options, ref, lambda: _target(model, plan, ref, options))]
    arch = _ARCHS[type(model).__name__]
    blocks = [model.get_submodule(arch.layer_path(l)) for l in range(plan.L2)] if xplan.lean else []
    binding = bind(model, plan, get, xplan, blocks)
    binding.__enter__()
    model.__dict__[_BOUND] = binding


def _bind_post_hook(model: nn.Module, args, kwargs, output) -> None:
    binding = model.__dict__.pop(_BOUND, None)
    if binding is not None:
        binding.__exit__(None, None, None)


def _target(model: nn.Module, plan: Plan, ref: Tensor, options: ExecutionOptions) -> Target:
    """What the wrapped model's execution plans are computed from (:class:`ligo_fast.execution.Target`; the
    model's own tensors that the operator does not produce are not counted)."""
    budget = budget_for(model.__dict__.setdefault(_BUDGETS, {}), ref.device, options.memory_budget)
    return Target.of(plan, model.config, ref, budget, options, _factorable(model))


def set_execution_options(model: nn.Module, options: ExecutionOptions) -> None:
    """How the forwards of a model that :func:`create_ligo_from_model` wrapped run (default: ``ExecutionOptions()``:
    the cost model's forms, memory-lean mode when the eager step would not fit)."""
    if _PLAN not in model.__dict__:
        raise ValueError(f"set_execution_options: {type(model).__name__} is not wrapped by create_ligo_from_model")
    model.__dict__[_OPTIONS] = options


def _factorable(model: nn.Module):
    def ok(slot) -> bool:
        for path in factored.paths(slot):
            m = model.get_submodule(path)
            if isinstance(m, FusedEmbedding) and not factored.plain_lookup(m):
                return False
        return True

    return ok


def _getter(model: nn.Module, plan: Plan):
    named = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    internal = from_official(plan.rules, named, plan.L2)
    return lambda name: None if name is None else internal[name]


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def create_ligo_from_model(model_large: nn.Module, args, source_model: nn.Module | None = None) -> nn.Module:
    """Turn ``model_large`` (in place) into the official LiGO operator-wrapped model, and return it.

    Args:
        model_large: a ``BertForMaskedLM`` / ``RobertaForMaskedLM`` of the large config (its weights are dropped).
        args: the official options (see :func:`ligo_args`); ``source_model_path[0]`` is read when
            ``source_model`` is None.
        source_model: the small pretrained model of the same class; never modified (its tensors are copied).

    Returns:
        ``model_large``, whose Linear/LayerNorm/Embedding modules of the embeddings, blocks and MLM head are now
        :class:`FusedLinear` / :class:`FusedLayeredNorm` / :class:`FusedEmbedding`; ``state_dict()`` has the
        official checkpoint layout, the trainable parameters are the operator's coefficients (plus the small
        weights when ``args.tune_small_model``).
    """
    arch = _arch_of(model_large, "create_ligo_from_model")
    if any(isinstance(m, FUSED) for m in model_large.modules()):
        raise ValueError("create_ligo_from_model: the model is already wrapped by LiGO")
    cfg = config_from_args(args)
    source_model = _small_of(model_large, args, source_model)
    small_sd = source_model.state_dict()
    plan = _plan(arch, source_model.config, small_sd, model_large, cfg)
    device = next(model_large.parameters()).device
    _register_small(model_large, plan, small_sd, cfg.train_small)
    tie = _tied_widths(model_large, arch, plan, cfg, device)
    for mod, l, path in _fused_paths(arch, plan.L2):
        _set(model_large, path, _fused(model_large, mod, l, path, tie, cfg).to(device))
    model_large.__dict__[_PLAN] = plan
    model_large.__dict__[_OPTIONS] = ExecutionOptions()
    model_large.register_forward_pre_hook(_bind_pre_hook, with_kwargs=True)
    model_large.register_forward_hook(_bind_post_hook, with_kwargs=True, always_call=True)
    logger.info("LiGO (official API): %s grown %d -> %d layers, %s", type(model_large).__name__, plan.L1, plan.L2, cfg)
    return model_large


def _small_of(model_large: nn.Module, args, source_model: nn.Module | None) -> nn.Module:
    """The small model: ``source_model``, else loaded from ``args.source_model_path``; of the large one's class."""
    if source_model is None:
        source_model = _load_small(model_large, args)
    if type(source_model) is not type(model_large):
        raise ValueError(
            f"the small model is a {type(source_model).__name__} but the large one a {type(model_large).__name__}; "
            "grow within one class"
        )
    return source_model


def _plan(arch: Arch, small_config, small_sd: dict[str, Tensor], model_large: nn.Module, cfg: LiGOConfig) -> Plan:
    """The growth plan of the official API: every module grown separately, tied ones too (as the official code)."""
    if arch.check_config is not None:
        arch.check_config(small_config, model_large.config)
    L1, L2 = arch.num_layers(small_config), arch.num_layers(model_large.config)
    check_depth_reach(cfg.depth_init, L1, L2)
    plan = build_plan(
        arch,
        {k: tuple(v.shape) for k, v in small_sd.items()},
        {k: tuple(v.shape) for k, v in model_large.state_dict().items()},
        [],  # the official code grows every module separately, tied ones too
        L1,
        L2,
        cfg,
    )
    if getattr(model_large.config, "tie_word_embeddings", False):
        logger.warning(
            "tie_word_embeddings=True: like the official code, the decoder and the word embeddings are grown "
            "separately, so the materialized model cannot keep them tied; ligo_fast.grow handles tied weights"
        )
    return plan


def _tied_widths(
    model_large: nn.Module, arch: Arch, plan: Plan, cfg: LiGOConfig, device: torch.device
) -> Callable[[str | None, int], FusedWidthParams | None]:
    """With ``cfg.tie`` (``fuse_tie_param``): one width module per width (per large layer where the width is per
    layer), set on the model at its official path. Returns ``tie(width, layer)``: the module a Fused module of that
    width and layer shares, or None (untied: the module owns its width matrices)."""
    width_opts = dict(learnable=cfg.train_width, init_scheme=cfg.width_init, init_noise=cfg.width_noise)
    tied: dict[str, list[FusedWidthParams]] = {}
    if cfg.tie:
        for name, spec in arch.widths.items():
            if name not in plan.widths:
                continue
            count = plan.L2 if spec.per_layer else 1
            tied[name] = [FusedWidthParams(*plan.widths[name], **width_opts).to(device) for _ in range(count)]
            for l, w in enumerate(tied[name]):
                _set(model_large, spec.key.format(l=l), w)

    def tie(width: str | None, l: int) -> FusedWidthParams | None:
        if width is None or width not in tied:
            return None
        return tied[width][l] if arch.widths[width].per_layer else tied[width][0]

    return tie


def _fused_paths(arch: Arch, L2: int) -> list[tuple[Module, int, str]]:
    """(module description, large layer or -1 outside the blocks, path) of every module a Fused module replaces."""
    todo = [(m, l, f"{arch.layer_path(l)}.{m.path}") for l in range(L2) for m in arch.layer_modules]
    return todo + [(m, -1, m.path) for m in arch.modules]


def _fused(model_large: nn.Module, mod: Module, l: int, path: str, tie, cfg: LiGOConfig) -> nn.Module:
    """The Fused module that replaces ``model_large``'s module at ``path`` (description ``mod``, large layer ``l``)."""
    old = model_large.get_submodule(path)
    common = dict(
        init_scheme_width=cfg.width_init,
        init_noise_width=cfg.width_noise,
        learn_width=cfg.train_width,
        residual=cfg.residual,
        residual_noise=cfg.residual_noise,
    )
    depth = dict(init_scheme_depth=cfg.depth_init, init_noise_depth=cfg.depth_noise, learn_depth=cfg.train_depth)
    if mod.kind == LINEAR:
        _expect(old, nn.Linear, path)
        new = FusedLinear(
            model_large, mod.path, old.in_features, old.out_features, layer_index=l,
            width_in_tie=tie(mod.inp, l), width_out_tie=tie(mod.out, l), **depth, **common,
        )  # fmt: skip
    elif mod.kind == NORM:
        _expect(old, nn.LayerNorm, path)
        new = FusedLayeredNorm(
            model_large, mod.path, old.normalized_shape, layer_index=l, eps=old.eps,
            width_out_tie=tie(mod.out, l), **depth, **common,
        )  # fmt: skip
    elif mod.kind == EMBEDDING:
        _expect(old, nn.Embedding, path)
        new = FusedEmbedding(
            model_large, mod.path, old.num_embeddings, old.embedding_dim, padding_idx=old.padding_idx,
            max_norm=old.max_norm, norm_type=old.norm_type, scale_grad_by_freq=old.scale_grad_by_freq,
            sparse=old.sparse, width_out_tie=tie(mod.out, l), **common,
        )  # fmt: skip
    else:
        raise ValueError(f"{path}: module kind {mod.kind!r} has no official Fused module")
    new.path = path
    return new


def _expect(module: nn.Module, cls: type, path: str) -> None:
    if not isinstance(module, cls):
        raise ValueError(f"{path} is a {type(module).__name__}, expected an {cls.__name__}")


# ---------------------------------------------------------------------- materialising
def _produced(model: nn.Module) -> dict[str, Tensor]:
    """Every produced tensor of a compat-wrapped model by HF parameter name."""
    return {k: v for part in _produced_parts(model) for k, v in part.items()}


def _produced_parts(model: nn.Module) -> Iterable[dict[str, Tensor]]:
    """The produced tensors of a compat-wrapped model by HF parameter name, in parts: through the plan as
    :class:`ligo_fast.LiGOModel` produces them (:func:`ligo_fast.produce.produce_parts`, lazily), else (a wrapped
    model without a plan) module by module in one part."""
    plan = model.__dict__.get(_PLAN)
    if plan is not None:
        return produce_parts(plan, _getter(model, plan))
    out: dict[str, Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, FusedEmbedding):
            out[f"{name}.weight"] = m.get_params()
        elif isinstance(m, (FusedLinear, FusedLayeredNorm)):
            w, b = m.get_params()
            out[f"{name}.weight"] = w
            if b is not None:
                out[f"{name}.bias"] = b
    return [out] if out else []


@torch.no_grad()
def materialize_compat(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A fresh plain model of ``model``'s class and config holding the produced weights (copies).

    Built as :meth:`ligo_fast.LiGOModel.materialize` builds its result, by the same production
    (:func:`ligo_fast.produce.produce_parts`: a per-layer kind in chunks of layers) and :func:`ligo_fast.hf.fill`
    (parameters on meta, each part assigned as produced), with the same values as producing them all at once.

    Args:
        model: what :func:`create_ligo_from_model` returned.
        dtype: the result's floating dtype (None: the operator's).

    Returns:
        A model without Fused modules or ``__sm_`` tensors, on ``model``'s device, in its train/eval mode.
        Parameters the operator does not produce (e.g. BERT's unused ``cls.predictions.bias``) are copied.
    """
    plan = model.__dict__.get(_PLAN)
    produced = _produced_parts(model)
    if plan is not None:
        ref = _getter(model, plan)(plan.slots[0].w)
    elif produced:
        ref = next(iter(produced[0].values()))
    else:
        raise ValueError(
            f"materialize: {type(model).__name__} holds no LiGO operator; pass a ligo_fast.LiGOModel or what "
            "ligo_fast.compat.create_ligo_from_model returned"
        )
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(SM)}
    # the produced parts first; then the model's own tensors fill what the operator does not produce
    return materialized(type(model), model.config, produced, rest=own, device=ref.device, dtype=dtype or ref.dtype,
                        avoid=storage_keys(own.values()), training=model.training)  # fmt: skip


@torch.no_grad()
def initialize_model_with_ligo(model_large: nn.Module, args) -> nn.Module:
    """Write the weights a trained official operator produces into ``model_large`` (in place) and return it.

    Reads ``<args.pretrained_ligo_path>/pytorch_model.bin`` (an official or compat operator state dict) and the
    small model at ``args.source_model_path[0]``; tying and residual mode are read off the checkpoint's keys.
    Every Linear and LayerNorm weight/bias and every Embedding weight the operator covers is overwritten.
    """
    _arch_of(model_large, "initialize_model_with_ligo")
    path = os.path.join(os.fspath(args.pretrained_ligo_path), OFFICIAL)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no LiGO operator checkpoint at {path}")
    small = _load_small(model_large, args)
    operator = load_operator(path, small, model_large.config)
    params = dict(model_large.named_parameters(remove_duplicate=False))
    for name, t in operator.produce().items():
        if name not in params:
            raise ValueError(f"the operator produces {name!r}, which {type(model_large).__name__} does not have")
        params[name].copy_(t)
    return model_large
