"""Loading a saved operator into a model: our directories, a ``.safetensors`` file, or an official checkpoint.

Sits above :mod:`ligo_fast.model` (it builds a :class:`LiGOModel`) and is imported by nothing below it; everything
else about operator files (the JSON's fields, the layout, the streamed reading and its checks) is
:mod:`ligo_fast.operator_io`'s, the bytes :mod:`ligo_fast.serialization`'s. Everything read is checked: the JSON's
fields and types, its format version, the small model's class, the names, shapes and dtypes of the tensors, the
digest and that every tensor is finite; a file that fails raises ``ValueError`` (``FileNotFoundError`` when missing)
naming the file and the problem.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import operator_io
from .model import LiGOModel
from .serialization import FORMAT, META, open_operator, read_meta

logger = logging.getLogger(__name__)


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
    where = (path if path.is_dir() else path.parent) / META
    with open_operator(path, require_digest=meta is not None and meta.get("format") == FORMAT) as reader:
        if meta is not None:
            cfg, large_config = operator_io.config_from_meta(meta, where, small_model, large_config)
        else:
            cfg = operator_io.infer_config(reader.keys())
            if large_config is None:
                raise ValueError(f"{path} has no {META}: pass large_config")
        model = LiGOModel(small_model, large_config, cfg, draw=False)  # no initial draws: load_into fills every tensor
        differs = operator_io.load_into(model, reader, small_model)
    if differs is not None:
        logger.warning(
            "%s: the operator's copy of the small weights differs from the given %s's (first: %s); "
            "using the operator's copy", path, type(small_model).__name__, differs,
        )  # fmt: skip
    return model
