"""Backend choice for the functional ops, in one place.

``backend="auto"`` (or ``LIGO_FAST_BACKEND=auto|torch|triton|cpp``) picks, by the tensors' device:
CUDA tensors -> ``triton`` when Triton loads, CPU tensors -> ``cpp`` when the extension loads, else
``torch``. An automatically chosen backend that cannot load falls back to ``torch`` with one warning;
a backend the caller names explicitly raises :class:`BackendUnavailable` with the reason.

Backends register themselves lazily: each entry maps a name to ``module:attribute`` of a loader that
returns an object with ``expand(W, depth, E_out, E_in, residual)`` and
``expand_vec(b, depth, E_out, residual)`` (or raises ImportError/RuntimeError with a reason).
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from typing import Any

import torch

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "triton", "cpp")
ENV_VAR = "LIGO_FAST_BACKEND"

_LOADERS: dict[str, str] = {
    "torch": "ligo_fast.backends:_torch_backend",
    "triton": "ligo_fast.triton_ops:load_backend",
    "cpp": "ligo_fast.extension:load_backend",
}
_cache: dict[str, Any] = {}
_errors: dict[str, str] = {}
_warned: set[str] = set()


class BackendUnavailable(RuntimeError):
    """A backend the caller asked for by name cannot be used here."""


class _TorchBackend:
    name = "torch"

    @staticmethod
    def expand(W, depth, E_out, E_in, residual):
        from .reference import expand_torch

        return expand_torch(W, depth, E_out, E_in, residual)

    @staticmethod
    def expand_vec(b, depth, E_out, residual):
        from .reference import expand_vec_torch

        return expand_vec_torch(b, depth, E_out, residual)


def _torch_backend():
    return _TorchBackend()


def load(name: str) -> Any:
    """Load backend ``name`` or raise :class:`BackendUnavailable` with the reason (remembered)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)} or 'auto'")
    if name in _cache:
        return _cache[name]
    if name in _errors:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {_errors[name]}")
    mod_name, attr = _LOADERS[name].split(":")
    try:
        backend = getattr(importlib.import_module(mod_name), attr)()
    except Exception as e:  # noqa: BLE001 - any failure to load is a reason to report
        _errors[name] = f"{type(e).__name__}: {e}"
        raise BackendUnavailable(f"backend {name!r} is unavailable: {_errors[name]}") from e
    _cache[name] = backend
    return backend


def availability() -> dict[str, str]:
    """``{backend: "available" | reason}`` for every backend (loads each once)."""
    out = {}
    for name in BACKENDS:
        try:
            load(name)
            out[name] = "available"
        except BackendUnavailable:
            out[name] = _errors[name]
    return out


def auto_choice(device: torch.device) -> str:
    """The backend ``auto`` prefers for tensors on ``device`` (before checking it loads)."""
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu":
        return "cpp"
    return "torch"


def resolve(requested: str, device: torch.device) -> Any:
    """The backend object to use for a call with ``backend=requested`` on tensors on ``device``.

    Under ``torch.compile`` the choice is made once, at trace time, by :func:`_resolve_name` (which loads the
    backend outside the traced code: importing a module or building the extension cannot be traced, and
    ``fullgraph=True`` would refuse it); the compiled graph keeps that backend.
    """
    return _cache[_resolve_name(requested, device.type)]


@torch.compiler.assume_constant_result
def _resolve_name(requested: str, device_type: str) -> str:
    """Load the backend for ``backend=requested`` on ``device_type`` tensors; return its name (a constant)."""
    return _resolve(requested, torch.device(device_type)).name


def _resolve(requested: str, device: torch.device) -> Any:
    if requested == "auto":
        requested = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if requested not in BACKENDS + ("auto",):
            raise ValueError(f"{ENV_VAR}={requested!r} is not one of {', '.join(BACKENDS)}, auto")
    if requested != "auto":
        return load(requested)
    choice = auto_choice(device)
    try:
        return load(choice)
    except BackendUnavailable as e:
        if choice not in _warned:
            _warned.add(choice)
            # stacklevel: _resolve <- _resolve_name <- resolve <- ops.ligo_expand* <- the user's call
            warnings.warn(f"{e}; falling back to the torch backend", RuntimeWarning, stacklevel=5)
        return load("torch")


def is_auto(requested: str) -> bool:
    """Whether ``backend=requested`` leaves the choice to ligo_fast (``auto``, not overridden by the variable)."""
    return requested == "auto" and os.environ.get(ENV_VAR, "auto").strip().lower() in ("", "auto")


def multi_vec_fallback(device: torch.device):
    """The ``cpp`` backend's multi-tensor vector op when it loads and has kernels for ``device``, else None."""
    return _cache["cpp"].expand_vec_multi if _has_multi_vec(device.type) else None


@torch.compiler.assume_constant_result
def _has_multi_vec(device_type: str) -> bool:
    """Whether the ``cpp`` backend loads and has multi-tensor vector kernels for ``device_type``."""
    try:
        load("cpp")
    except BackendUnavailable:
        return False
    if device_type == "cuda":
        from .extension import has_cuda_kernels

        return has_cuda_kernels()
    return True


def _reset_for_tests() -> None:
    """Forget loaded backends, remembered errors and warnings (tests only)."""
    _cache.clear()
    _errors.clear()
    _warned.clear()
