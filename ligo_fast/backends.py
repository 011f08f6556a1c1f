"""Backend choice for the functional ops, in one place.

``backend="auto"`` (or ``LIGO_FAST_BACKEND=auto|torch|triton|cpp``) picks, by the tensors' device:
CUDA tensors -> ``triton`` when Triton loads, CPU tensors -> ``cpp`` when the extension loads, else
``torch``. An automatically chosen backend that cannot load falls back to ``torch`` with one warning;
a backend the caller names explicitly raises :class:`BackendUnavailable` with the reason.

Every backend is an object of the :class:`Backend` shape, made by one loader per name (:data:`LOADERS`). A
loader runs once per process: its backend, or the reason it failed, is remembered until :func:`clear_cache`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .reference import expand_torch, expand_vec_torch

ENV_VAR = "LIGO_FAST_BACKEND"

VecProblem = tuple[Tensor, Tensor, Tensor | None, Tensor | None]  # (b, depth, E_out, residual)
MultiVecOp = Callable[[Sequence[VecProblem]], list[Tensor]]
GroupProblem = tuple[Tensor, Tensor, Tensor | None, Tensor | None]  # (W, depth, E_out, E_in); a 2-D W is a vector
GroupOp = Callable[[Sequence[GroupProblem]], list[Tensor]]


@runtime_checkable
class Backend(Protocol):
    """What every backend provides. Arguments are validated by :mod:`ligo_fast.ops` before they get here.

    ``expand(W, depth, E_out, E_in, residual)``: (L2, o2, i2) in W's dtype; ``expand_vec(b, depth, E_out,
    residual)``: (L2, o2) in b's dtype; ``multi_vec_op(device_type)``: an op doing a whole list of vector problems
    in one call on tensors of that device type, or None when the backend has none (callers then loop);
    ``group_op(device_type)``: an op doing a list of residual-free problems, matrices and vectors (2-D W, E_in None),
    in a few launches for all, or None (callers then make one call per problem).
    ``saves_intermediates``: whether its autograd keeps more than the op's inputs for backward (the pure-PyTorch
    composition does; the custom ops save only their inputs): memory-lean mode then checkpoints the production.
    """

    name: str
    saves_intermediates: bool

    def expand(
        self, W: Tensor, depth: Tensor, E_out: Tensor | None, E_in: Tensor | None, residual: Tensor | None
    ) -> Tensor: ...

    def expand_vec(self, b: Tensor, depth: Tensor, E_out: Tensor | None, residual: Tensor | None) -> Tensor: ...

    def multi_vec_op(self, device_type: str) -> MultiVecOp | None: ...

    def group_op(self, device_type: str) -> GroupOp | None: ...


class BackendUnavailable(RuntimeError):
    """A backend the caller asked for by name cannot be used here."""


class TorchBackend:
    """The pure-PyTorch path (:mod:`ligo_fast.reference`): any device, any floating dtype, autograd."""

    name = "torch"
    saves_intermediates = True

    def expand(self, W, depth, E_out, E_in, residual):
        return expand_torch(W, depth, E_out, E_in, residual)

    def expand_vec(self, b, depth, E_out, residual):
        return expand_vec_torch(b, depth, E_out, residual)

    def multi_vec_op(self, device_type: str) -> MultiVecOp | None:
        return None

    def group_op(self, device_type: str) -> GroupOp | None:
        return None


def _load_triton() -> Backend:
    from . import triton_ops  # imports triton: an optional, heavy dependency, loaded on first use

    return triton_ops.load_backend()


def _load_cpp() -> Backend:
    from . import extension  # loads (maybe builds) the C++ extension on first use

    return extension.load_backend()


# name -> loader; a loader returns the backend or raises (ImportError, RuntimeError, ...) with the reason
LOADERS: dict[str, Callable[[], Backend]] = {"torch": TorchBackend, "triton": _load_triton, "cpp": _load_cpp}
BACKENDS = tuple(LOADERS)
CHOICES = ("auto", *BACKENDS)

_loaded: dict[str, Backend | str] = {}  # name -> the backend, or why it cannot load
_warned: set[str] = set()  # auto choices whose fallback to torch was already reported


def load(name: str) -> Backend:
    """Load backend ``name`` (once per process) or raise :class:`BackendUnavailable` with the reason."""
    if name not in LOADERS:
        raise ValueError(f"unknown backend {name!r}; valid: {', '.join(CHOICES)}")
    if name not in _loaded:
        try:
            _loaded[name] = LOADERS[name]()
        except Exception as e:  # noqa: BLE001 - any failure to load is a reason to report
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            _loaded[name] = f"{type(e).__name__}: {reason}"
    got = _loaded[name]
    if isinstance(got, str):
        raise BackendUnavailable(f"backend {name!r} is unavailable: {got}")
    return got


def clear_cache() -> None:
    """Forget which backends loaded or failed (and which fallbacks were warned about): the next use tries again,
    e.g. after installing Triton or fixing the extension's cache directory in a running session."""
    _loaded.clear()
    _warned.clear()


def availability() -> dict[str, str]:
    """``{backend: "available" | reason}`` for every backend (loads each once)."""
    out = {}
    for name in BACKENDS:
        try:
            load(name)
            out[name] = "available"
        except BackendUnavailable:
            out[name] = str(_loaded[name])
    return out


def check_env() -> str:
    """The backend ``LIGO_FAST_BACKEND`` asks for (``"auto"`` when unset or empty).

    Raises ValueError with a one-line message listing the valid values when the variable names no backend; called
    where a user commits to a backend (``grow``, the CLI) so that a typo fails there, not at the first forward.
    """
    raw = os.environ.get(ENV_VAR, "")
    value = raw.strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV_VAR}={raw!r} is not a backend; valid values: {', '.join(CHOICES)} (or unset)")
    return value


def auto_choice(device: torch.device) -> str:
    """The backend ``auto`` prefers for tensors on ``device`` (before checking it loads)."""
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu":
        return "cpp"
    return "torch"


def resolve(requested: str, device: torch.device) -> Backend:
    """The backend to use for a call with ``backend=requested`` on tensors on ``device``.

    Under ``torch.compile`` the choice is made once, at trace time, by :func:`_resolve_name` (which loads the
    backend outside the traced code: importing a module or building the extension cannot be traced, and
    ``fullgraph=True`` would refuse it); the compiled graph keeps that backend.
    """
    return _loaded[_resolve_name(requested, device.type)]


@torch.compiler.assume_constant_result
def _resolve_name(requested: str, device_type: str) -> str:
    """Load the backend for ``backend=requested`` on ``device_type`` tensors; return its name (a constant)."""
    if requested == "auto":
        requested = check_env()
    if requested != "auto":
        return load(requested).name
    choice = auto_choice(torch.device(device_type))
    try:
        return load(choice).name
    except BackendUnavailable as e:
        if choice not in _warned:
            _warned.add(choice)
            # stacklevel: _resolve_name <- resolve <- ops.ligo_expand* <- the user's call
            warnings.warn(f"{e}; falling back to the torch backend", RuntimeWarning, stacklevel=4)
        return load("torch").name


def is_auto(requested: str) -> bool:
    """Whether ``backend=requested`` leaves the choice to ligo_fast (``auto``, not overridden by the variable)."""
    return requested == "auto" and _env_is_auto()


@torch.compiler.assume_constant_result
def _env_is_auto() -> bool:
    return check_env() == "auto"


def multi_vec_fallback(device: torch.device) -> MultiVecOp | None:
    """The ``cpp`` backend's multi-tensor vector op for ``device`` when it loads and has kernels there, else None.

    For ``auto`` calls whose backend has no multi-tensor op (Triton on CUDA): all vectors in one launch beat one
    launch each.
    """
    return _loaded["cpp"].multi_vec_op(device.type) if _cpp_loads() else None


@torch.compiler.assume_constant_result
def _cpp_loads() -> bool:
    """Whether the ``cpp`` backend loads (loading it outside traced code, as :func:`_resolve_name` does)."""
    try:
        load("cpp")
    except BackendUnavailable:
        return False
    return True
