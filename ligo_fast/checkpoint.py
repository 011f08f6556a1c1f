"""Saving and loading the operator: safetensors in the official layout plus a small JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import LiGOConfig

WEIGHTS = "operator.safetensors"
META = "ligo_config.json"
OFFICIAL = "pytorch_model.bin"


def save_operator(model, path) -> None:
    """Write ``operator.safetensors`` (the official state-dict layout) and ``ligo_config.json`` into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
    save_file(sd, str(path / WEIGHTS), metadata={"format": "ligo_fast-operator-1"})
    meta = {
        "format": 1,
        "ligo_config": model.ligo_config.to_dict(),
        "small_class": model._hf_class.__name__,
        "large_config": model.config.to_dict(),
    }
    (path / META).write_text(json.dumps(meta, indent=1))


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        for name in (WEIGHTS, OFFICIAL):
            if (path / name).exists():
                return _read_tensors(path / name)
        raise FileNotFoundError(f"{path} holds neither {WEIGHTS} nor {OFFICIAL}")
    if not path.exists():
        raise FileNotFoundError(f"no operator checkpoint at {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _infer_config(sd: dict) -> LiGOConfig:
    """Options of an official checkpoint that has no JSON: tying and residual are visible in its keys."""
    tie = not any(".fuse_width_in." in k or ".fuse_width_out." in k for k in sd)
    residual = any(k.endswith(".residual_weight") for k in sd)
    return LiGOConfig(tie=tie, residual=residual)


def load_operator(path, small_model, large_config=None):
    """Rebuild a LiGOModel from a saved operator (``save_operator``) or an official ``pytorch_model.bin``.

    Args:
        path: a directory written by ``save_operator``, a ``.safetensors`` file, or an official
            ``pytorch_model.bin`` (or a directory holding one).
        small_model: the small HF model the operator grows.
        large_config: the large HF config; optional when ``path`` has our JSON.
    """
    from .api import grow

    path = Path(os.fspath(path))
    sd = _read_tensors(path)
    meta_file = (path if path.is_dir() else path.parent) / META
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        cfg = LiGOConfig.from_dict(meta["ligo_config"])
        if large_config is None:
            large_config = type(small_model.config).from_dict(meta["large_config"])
    else:
        cfg = _infer_config(sd)
        if large_config is None:
            raise ValueError(f"{path} has no {META}: pass large_config")
    model = grow(small_model, large_config, cfg)
    model.load_state_dict(sd, strict=True)
    return model
