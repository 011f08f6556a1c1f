"""Operator I/O in one place: what an operator directory holds and how a grown model's tensors go in and out of it.

* ``ligo_config.json``: :func:`operator_meta` writes its fields, :func:`config_from_meta` reads them back checked
  field by field (:func:`infer_config` for an official checkpoint that has none);
* the official layout of a model's tensors (:func:`official_state`: the state-dict hook's; :func:`state_views`:
  views, no copies) -- the keys of ``operator.safetensors``;
* :func:`save`: the operator streamed to ``operator.safetensors`` one tensor at a time (no copy of the operator);
* :func:`load_into`: a file read into a freshly built model's tensors one tensor at a time, each read from disk
  straight into its place where dtype and layout allow (no second copy of the operator beside the model's), with
  every check: names and shapes, dtypes, the digest, finite values.

The model is passed in (a :class:`ligo_fast.LiGOModel`, duck-typed: ``plan``, ``L2``, ``op``, ``large``,
``ligo_config``, ``hf_class``, ``config``), so this sits below ``model`` (whose ``save_operator``,
``operator_meta`` and state-dict hook call it); building a model from a file is
:func:`ligo_fast.checkpoint.load_operator`'s (above the model). The bytes (safetensors, digests, crash-safe writes)
are :mod:`ligo_fast.serialization`'s. Imports: config, layout, plan, serialization.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import LiGOConfig, model_config_from_dict
from .layout import check_state_fits, official_views, to_official
from .plan import Role, Rule
from .serialization import FORMATS, OperatorReader, write_operator

META_KEYS = ("format", "ligo_config", "small_class", "large_config")


# ---------------------------------------------------------------------------------------------- ligo_config.json
def operator_meta(model: nn.Module) -> dict:
    """What ``ligo_config.json`` records: the options, the small model's class, the large config."""
    return {
        "ligo_config": model.ligo_config.to_dict(),
        "small_class": model.hf_class.__name__,
        "large_config": model.config.to_dict(),
    }


def infer_config(keys) -> LiGOConfig:
    """Options of an official checkpoint that has no JSON: tying and residual are visible in its keys."""
    keys = list(keys)
    tie = not any(".fuse_width_in." in k or ".fuse_width_out." in k for k in keys)
    residual = any(k.endswith(".residual_weight") for k in keys)
    return LiGOConfig.official(tie=tie, residual=residual)


def config_from_meta(meta: dict, where: Path, small_model: nn.Module, large_config):
    """(LiGOConfig, large config) from a ``ligo_config.json`` (checked field by field; ``large_config`` given
    replaces the file's)."""
    extra = sorted(set(meta) - set(META_KEYS))
    if extra:
        raise ValueError(f"{where}: unknown field(s) {extra}; expected {list(META_KEYS)}")
    fmt = meta.get("format")
    if isinstance(fmt, bool) or fmt not in FORMATS:
        raise ValueError(f"{where}: format {fmt!r} is not one this ligo_fast reads ({', '.join(map(str, FORMATS))})")
    small_class = meta.get("small_class")
    if small_class is not None and small_class != type(small_model).__name__:
        raise ValueError(f"{where}: this operator grows a {small_class}, not the given {type(small_model).__name__}")
    for key in ("ligo_config", "large_config"):
        if key not in meta:
            raise ValueError(f"{where}: no {key} field")
    try:
        cfg = LiGOConfig.from_dict(meta["ligo_config"])
    except ValueError as e:
        raise ValueError(f"{where}: ligo_config: {e}") from e
    given = meta["large_config"]
    if not isinstance(given, dict):
        raise ValueError(f"{where}: large_config must be a JSON object, got {type(given).__name__}")
    mt, small_mt = given.get("model_type"), getattr(small_model.config, "model_type", None)
    if mt is not None and mt != small_mt:
        raise ValueError(f"{where}: large_config is a {mt!r} config, the small model a {small_mt!r} one")
    try:
        read = model_config_from_dict(type(small_model.config), given)
    except ValueError as e:
        raise ValueError(f"{where}: large_config: {e}") from e
    return cfg, read if large_config is None else large_config


# ---------------------------------------------------------------------------------------------- the layout
def official_state(model: nn.Module, internal: Mapping[str, Tensor], prefix: str = "") -> OrderedDict:
    """The official layout of ``internal``: ``model``'s entries as ``nn.Module.state_dict`` collects them
    (``<prefix>op.*``, ``<prefix>large.*``); FSDP2 DTensors along a layer axis are gathered (collective)."""
    op_pre, large_pre = prefix + "op.", prefix + "large."
    ops = {k[len(op_pre) :]: v for k, v in internal.items() if k.startswith(op_pre)}
    new = OrderedDict((prefix + k, v) for k, v in to_official(model.plan.rules, ops).items())
    for k, v in internal.items():
        if k.startswith(large_pre):
            new[prefix + k[len(large_pre) :]] = v
        elif not k.startswith(op_pre):
            new[k] = v
    return new


def state_views(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()``'s keys, each a view of the model's own tensor (no copies; stacked tensors are not
    contiguous): what :func:`save` writes and :func:`load_into` fills."""
    if getattr(model, "held_per_layer", False):
        raise RuntimeError(
            "the operator is held per layer (distributed.shard(per_block=True)): save it with "
            "distributed.save_operator_distributed, load it before sharding"
        )
    op = {**model.op._parameters, **model.op._buffers}
    views = official_views(model.plan.rules, op)
    views.update(model.large.state_dict(keep_vars=True))
    return views


# ---------------------------------------------------------------------------------------------- save, load
def save(model: nn.Module, path) -> None:
    """``model``'s operator into directory ``path`` (``operator.safetensors`` in the official layout and
    ``ligo_config.json``), streamed: one tensor at a time is made contiguous and written, crash-safely."""
    write_operator(path, state_views(model), operator_meta(model))


@torch.no_grad()
def load_into(model: nn.Module, reader: OperatorReader, small_model: nn.Module) -> str | None:
    """Fill ``model`` (just built from ``small_model``) with ``reader``'s operator and leftover tensors, one at a time.

    Every tensor of the model's state is overwritten (the file must hold them all: strict), so the model may be
    built without its initial draws (``LiGOModel(..., draw=False)``, as :func:`ligo_fast.load_operator` does).

    Before anything is read: the file's names and shapes fit the model's state (missing, unexpected, wrong shape)
    and no integer tensor stands where the model has a floating one. Each tensor is read straight into its place
    when that is a contiguous CPU tensor of the file's dtype, else through one temporary (cast as
    ``load_state_dict`` casts). After: the digest, then every value finite. Returns the first key of the file's copy
    of the small weights that differs from ``small_model``'s weights, or None.
    """
    where = reader.path
    dest = state_views(model)
    entries = {k: reader.entry(k) for k in reader.keys()}
    check_state_fits(
        {k: tuple(v.shape) for k, v in dest.items()},
        {k: torch.empty(e.shape, dtype=e.dtype, device="meta") for k, e in entries.items()},
        strict=True,
    )
    for k, e in entries.items():
        if dest[k].is_floating_point() and not e.dtype.is_floating_point:
            raise ValueError(f"{where}: operator tensor {k} is {e.dtype}, expected floating point")
    given = _small_in_official_layout(model, small_model.state_dict())
    differs = bad = None
    for k in sorted(entries, key=lambda k: k not in given):  # the small copies first: the warning names the first
        e, d = entries[k], dest[k]
        direct = d.dtype == e.dtype and d.device.type == "cpu" and d.is_contiguous()
        t = reader.read(k, d.data if direct else None)
        # a sum first: one pass without the temporaries of isfinite (each the tensor's size); an overflowing sum of
        # finite values is told apart by the full check
        if bad is None and t.is_floating_point() and not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
            bad = (k, "NaN" if torch.isnan(t).any() else "Inf")
        if not direct:
            d.copy_(t)
        t = None
        if differs is None and k in given:
            ref = given[k]()
            differs = None if torch.equal(d.detach().to(ref.device, ref.dtype), ref) else k
    reader.verify()
    if bad is not None:
        raise ValueError(f"{where}: operator tensor {bad[0]} contains {bad[1]}")
    return differs


def _small_in_official_layout(model: nn.Module, small_sd: Mapping[str, Tensor]) -> dict:
    """Official key -> a function giving the small model's weights as the operator file stores its copy of them
    (a stacked key's stack is built when asked for, one at a time)."""
    out = {}
    rules = {name: (official, rule) for name, official, rule in model.plan.rules}
    for t in model.plan.tensors:
        if t.role != Role.SMALL or t.name not in rules:
            continue
        official, rule = rules[t.name]
        if rule == Rule.STACK:
            out[official] = lambda s=t.sources: torch.stack([small_sd[k].detach() for k in s]).movedim(0, -1)
        elif rule == Rule.PLAIN:
            out[official] = lambda s=t.sources[0]: small_sd[s].detach()
    return out
