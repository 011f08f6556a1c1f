"""Operator files on disk: ``operator.safetensors`` (the official state-dict layout) and ``ligo_config.json``.

The bytes only: writing a state dict and its metadata, reading tensors from our files or an official
``pytorch_model.bin``. Building a model from them is :mod:`ligo_fast.checkpoint`'s job (it sits above the model).
Imports: torch and safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

WEIGHTS = "operator.safetensors"
META = "ligo_config.json"
OFFICIAL = "pytorch_model.bin"
FORMAT = 1


def write_operator(path, state: dict[str, Tensor], meta: dict) -> None:
    """Write ``state`` into ``path/operator.safetensors`` and ``meta`` (with ``"format"``) into ``ligo_config.json``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().clone().cpu() for k, v in state.items()}
    save_file(sd, str(path / WEIGHTS), metadata={"format": f"ligo_fast-operator-{FORMAT}"})
    (path / META).write_text(json.dumps({"format": FORMAT, **meta}, indent=1))


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Tensors of a directory (ours or official), a ``.safetensors`` file or a ``pytorch_model.bin``."""
    if path.is_dir():
        for name in (WEIGHTS, OFFICIAL):
            if (path / name).exists():
                return read_tensors(path / name)
        raise FileNotFoundError(f"{path} holds neither {WEIGHTS} nor {OFFICIAL}")
    if not path.exists():
        raise FileNotFoundError(f"no operator checkpoint at {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def read_meta(path: Path) -> dict | None:
    """The ``ligo_config.json`` next to (or in) ``path``, or None when there is none."""
    meta_file = (path if path.is_dir() else path.parent) / META
    return json.loads(meta_file.read_text()) if meta_file.exists() else None
