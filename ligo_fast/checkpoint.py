"""Loading a saved operator into a model: our directories, a ``.safetensors`` file, or an official checkpoint.

Sits above :mod:`ligo_fast.model` (it builds a :class:`LiGOModel`) and is imported by nothing below it; the file
format itself is :mod:`ligo_fast.serialization`. Everything read is checked before it is used: the JSON's fields
and types, its format version, the small model's class, and that every tensor is finite; a file that fails raises
``ValueError`` (``FileNotFoundError`` when missing) naming the file and the problem.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .config import LiGOConfig, model_config_from_dict
from .layout import keys_of
from .model import LiGOModel
from .plan import Role
from .serialization import FORMAT, FORMATS, META, read_meta, read_tensors

logger = logging.getLogger(__name__)

_META_KEYS = ("format", "ligo_config", "small_class", "large_config")


def _infer_config(sd: dict) -> LiGOConfig:
    """Options of an official checkpoint that has no JSON: tying and residual are visible in its keys."""
    tie = not any(".fuse_width_in." in k or ".fuse_width_out." in k for k in sd)
    residual = any(k.endswith(".residual_weight") for k in sd)
    return LiGOConfig.official(tie=tie, residual=residual)


def _config_from_meta(meta: dict, where: Path, small_model, large_config):
    """(LiGOConfig, large config) from a ``ligo_config.json`` (checked field by field)."""
    extra = sorted(set(meta) - set(_META_KEYS))
    if extra:
        raise ValueError(f"{where}: unknown field(s) {extra}; expected {list(_META_KEYS)}")
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


def _check_finite(sd: dict, where: Path) -> None:
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            kind = "NaN" if torch.isnan(v).any() else "Inf"
            raise ValueError(f"{where}: operator tensor {k} contains {kind}")


def load_operator(path, small_model, large_config=None) -> LiGOModel:
    """Rebuild a LiGOModel from a saved operator (``save_operator``) or an official ``pytorch_model.bin``.

    Args:
        path: a directory written by ``save_operator``, a ``.safetensors`` file, or an official
            ``pytorch_model.bin`` (or a directory holding one).
        small_model: the small HF model the operator grows. The operator file holds its own copy of the small
            weights, and that copy is used; where it differs from ``small_model``'s weights (another checkpoint of
            the same architecture, or ``train_small``), a warning names the first differing tensor.
        large_config: the large HF config; optional when ``path`` has our JSON.

    Raises:
        FileNotFoundError: no operator at ``path``.
        ValueError: a file that cannot be used (damaged or truncated, a digest that does not match or is missing
            from a format-2 file, an unknown format, fields of the wrong type or unknown, another small model class,
            NaN/Inf values, integer tensors where the operator has floating ones, tensors that do not fit the
            model), with the file and the reason.
    """
    path = Path(os.fspath(path))
    meta = read_meta(path)
    sd = read_tensors(path, require_digest=meta is not None and meta.get("format") == FORMAT)
    where = (path if path.is_dir() else path.parent) / META
    if meta is not None:
        cfg, large_config = _config_from_meta(meta, where, small_model, large_config)
    else:
        cfg = _infer_config(sd)
        if large_config is None:
            raise ValueError(f"{path} has no {META}: pass large_config")
    _check_finite(sd, path)
    model = LiGOModel(small_model, large_config, cfg)
    given = model.state_dict()  # the given small model's weights in the operator's small tensors
    for k, v in sd.items():
        if k in given and given[k].is_floating_point() and not v.is_floating_point():
            raise ValueError(f"{path}: operator tensor {k} is {v.dtype}, expected floating point")
    _warn_if_other_small(model, given, sd, path, type(small_model).__name__)
    model.load_state_dict(sd, strict=True)
    return model


def _warn_if_other_small(model: LiGOModel, given: dict, sd: dict, path: Path, small_name: str) -> None:
    """A warning when the operator file's copy of the small weights differs from the given small model's: the
    file's are used (they are what the operator was trained with, and trained themselves under ``train_small``)."""
    small = {t.name for t in model.plan.tensors if t.role == Role.SMALL}
    for name, official, rule in model.plan.rules:
        if name not in small:
            continue
        for k in keys_of(official, rule, model.L2):
            if k in sd and k in given and not torch.equal(sd[k].to(given[k].dtype), given[k].detach().cpu()):
                logger.warning(
                    "%s: the operator's copy of the small weights differs from the given %s's (first: %s); "
                    "using the operator's copy", path, small_name, k,
                )  # fmt: skip
                return
