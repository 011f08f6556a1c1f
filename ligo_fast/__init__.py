"""ligo_fast: fast LiGO (Learning to Grow Pretrained Models) growth operators for PyTorch and Hugging Face.

The public names below are imported on first use (PEP 562), so ``import ligo_fast`` (and the ``ligo-fast``
command line's ``--help``) does not import torch; ``from ligo_fast import grow`` imports what ``grow`` needs.
Submodules (``ligo_fast.ops``, ``ligo_fast.backends``, ...) are reachable as attributes too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_PUBLIC = {
    "LiGOConfig": "config",
    "large_config": "config",
    "LiGOModel": "model",
    "grow": "api",
    "materialize": "api",
    "load_operator": "checkpoint",
    "register_architecture": "arch",
    "supported_classes": "arch",
}

__all__ = [
    "LiGOConfig",
    "large_config",
    "LiGOModel",
    "grow",
    "materialize",
    "load_operator",
    "register_architecture",
    "supported_classes",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from .api import grow, materialize
    from .arch import register_architecture, supported_classes
    from .checkpoint import load_operator
    from .config import LiGOConfig, large_config
    from .model import LiGOModel


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):
        try:  # a submodule: ligo_fast.ops, ligo_fast.backends, ...
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
