"""ligo_fast: fast LiGO (Learning to Grow Pretrained Models) growth operators for PyTorch and Hugging Face.

The public API: the names in ``__all__`` and the public submodules ``ops`` (the functional ops), ``backends``,
``info``, ``compat`` (the official LiGO API), ``integrations`` (Trainer, accelerate, ``from_pretrained``),
``distributed``, ``budget``, ``baselines`` (the literature's growth baselines as inits), ``serialization``,
``arch`` and ``config``. Every other module (``model``, ``plan``,
``produce``, ``lean``, ``factored``, ``extension``, ``kernels``, ...) is internal: importable by its full name, but
not part of the API and free to change. ``ligo_fast.apps`` holds the applications (the ``ligo-fast`` command line,
the growth-savings experiment), which use the public API only.

Public names and submodules are imported on first use (PEP 562), so ``import ligo_fast`` (and the ``ligo-fast``
command line's ``--help``) does not import torch; ``from ligo_fast import grow`` imports what ``grow`` needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# the public names, each with the module that defines it
_PUBLIC = {
    "LiGOConfig": "config",
    "ExecutionOptions": "config",
    "large_config": "config",
    "LiGOModel": "model",
    "grow": "api",
    "materialize": "api",
    "plan_growth": "spec",
    "load_operator": "checkpoint",
    "memory_budget": "memory",
    "register_architecture": "arch",
    "supported_classes": "arch",
    # what an architecture description (register_architecture's argument) is made of
    "Arch": "arch",
    "Module": "arch",
    "Width": "arch",
    "LINEAR": "arch",
    "NORM": "arch",
    "EMBEDDING": "arch",
    # the valid values of LiGOConfig's options
    "DEPTH_INITS": "init",
    "WIDTH_INITS": "init",
    "LINEAR_MODES": "config",
    # Hugging Face configs read from files: the checks grow and load_operator apply
    "check_model_config": "config",
    "model_config_from_dict": "config",
    "unknown_config_keys": "config",
}

# the keys of _PUBLIC (a test checks), written out for linters and readers
__all__ = [
    "LiGOConfig",
    "ExecutionOptions",
    "large_config",
    "LiGOModel",
    "grow",
    "materialize",
    "plan_growth",
    "load_operator",
    "memory_budget",
    "register_architecture",
    "supported_classes",
    "Arch",
    "Module",
    "Width",
    "LINEAR",
    "NORM",
    "EMBEDDING",
    "DEPTH_INITS",
    "WIDTH_INITS",
    "LINEAR_MODES",
    "check_model_config",
    "model_config_from_dict",
    "unknown_config_keys",
]

# reachable as attributes (``ligo_fast.ops.ligo_expand`` after ``import ligo_fast``), imported on first use
_PUBLIC_MODULES = (
    "ops",
    "backends",
    "info",
    "compat",
    "integrations",
    "distributed",
    "budget",
    "guard",
    "baselines",
    "serialization",
    "arch",
    "config",
)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from . import (  # noqa: F401 - the public submodules
        arch,
        backends,
        baselines,
        budget,
        compat,
        config,
        distributed,
        guard,
        info,
        integrations,
        ops,
        serialization,
    )
    from .api import grow, materialize
    from .arch import EMBEDDING, LINEAR, NORM, Arch, Module, Width, register_architecture, supported_classes
    from .checkpoint import load_operator
    from .config import (
        LINEAR_MODES,
        ExecutionOptions,
        LiGOConfig,
        check_model_config,
        large_config,
        model_config_from_dict,
        unknown_config_keys,
    )
    from .init import DEPTH_INITS, WIDTH_INITS
    from .model import LiGOModel
    from .spec import plan_growth


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _PUBLIC_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:  # the public surface, not this module's helpers (importlib, TYPE_CHECKING, ...)
    return sorted({*__all__, *_PUBLIC_MODULES, *(n for n in globals() if n.startswith("__"))})
