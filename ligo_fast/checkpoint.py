"""Loading a saved operator into a model: our directories, a ``.safetensors`` file, or an official checkpoint.

Sits above :mod:`ligo_fast.model` (it builds a :class:`LiGOModel`) and is imported by nothing below it; the file
format itself is :mod:`ligo_fast.serialization`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import LiGOConfig
from .model import LiGOModel
from .serialization import META, read_meta, read_tensors


def _infer_config(sd: dict) -> LiGOConfig:
    """Options of an official checkpoint that has no JSON: tying and residual are visible in its keys."""
    tie = not any(".fuse_width_in." in k or ".fuse_width_out." in k for k in sd)
    residual = any(k.endswith(".residual_weight") for k in sd)
    return LiGOConfig(tie=tie, residual=residual)


def load_operator(path, small_model, large_config=None) -> LiGOModel:
    """Rebuild a LiGOModel from a saved operator (``save_operator``) or an official ``pytorch_model.bin``.

    Args:
        path: a directory written by ``save_operator``, a ``.safetensors`` file, or an official
            ``pytorch_model.bin`` (or a directory holding one).
        small_model: the small HF model the operator grows.
        large_config: the large HF config; optional when ``path`` has our JSON.
    """
    path = Path(os.fspath(path))
    sd = read_tensors(path)
    meta = read_meta(path)
    if meta is not None:
        cfg = LiGOConfig.from_dict(meta["ligo_config"])
        if large_config is None:
            large_config = type(small_model.config).from_dict(meta["large_config"])
    else:
        cfg = _infer_config(sd)
        if large_config is None:
            raise ValueError(f"{path} has no {META}: pass large_config")
    model = LiGOModel(small_model, large_config, cfg)
    model.load_state_dict(sd, strict=True)
    return model
