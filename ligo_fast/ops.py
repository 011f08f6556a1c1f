"""The functional growth ops every part of ligo_fast goes through.

``ligo_expand(W, depth, E_out, E_in, residual=..., backend=...)`` produces the large weights of one
module kind for all large layers at once; ``ligo_expand_vec`` does the same for vectors (biases,
LayerNorm/RMSNorm weights). See :mod:`ligo_fast.reference` for the math. Both are differentiable
with respect to every tensor argument, whatever the backend. ``ligo_expand_many`` does a whole model's problems at
once: in a few launches for all where the backend has a grouped op (Triton).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import backends

__all__ = [
    "ligo_expand",
    "ligo_expand_vec",
    "ligo_expand_vec_multi",
    "ligo_expand_many",
    "check_expand_args",
    "check_expand_vec_args",
]


def _check_float(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_width(name: str, E: Tensor | None, L2: int, small: int) -> int:
    """Validate a width matrix; return the large size it implies."""
    if E is None:
        return small
    _check_float(name, E)
    if E.dim() == 3:
        if E.shape[0] != L2:
            raise ValueError(f"{name} has {E.shape[0]} layers but depth asks for L2={L2}: shape {tuple(E.shape)}")
    elif E.dim() != 2:
        raise ValueError(f"{name} must be (L2, large-small, small) or (large-small, small), got {tuple(E.shape)}")
    if E.shape[-1] != small:
        raise ValueError(f"{name} has {E.shape[-1]} columns but the small size is {small}: shape {tuple(E.shape)}")
    return small + E.shape[-2]


def _check_device(tensors: dict[str, Tensor | None]) -> torch.device:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        desc = ", ".join(f"{k} on {v.device}" for k, v in present.items())
        raise ValueError(f"all tensors must be on one device, got {desc}")
    return next(iter(devices))


def check_expand_args(W, depth, E_out, E_in, residual) -> tuple[int, int, int]:
    """Validate ``ligo_expand`` arguments; return (L2, o2, i2)."""
    _check_float("W", W)
    _check_float("depth", depth)
    if W.dim() != 3:
        raise ValueError(f"W must be (L1, out, in), got shape {tuple(W.shape)}")
    if depth.dim() != 2 or depth.shape[1] != W.shape[0]:
        raise ValueError(f"depth must be (L2, L1={W.shape[0]}), got shape {tuple(depth.shape)}")
    L2 = depth.shape[0]
    o2 = _check_width("E_out", E_out, L2, W.shape[1])
    i2 = _check_width("E_in", E_in, L2, W.shape[2])
    if residual is not None:
        _check_float("residual", residual)
        if tuple(residual.shape) != (L2, o2, i2):
            raise ValueError(f"residual must be {(L2, o2, i2)}, got {tuple(residual.shape)}")
    _check_device(dict(W=W, depth=depth, E_out=E_out, E_in=E_in, residual=residual))
    return L2, o2, i2


def check_expand_vec_args(b, depth, E_out, residual) -> tuple[int, int]:
    """Validate ``ligo_expand_vec`` arguments; return (L2, o2)."""
    _check_float("b", b)
    _check_float("depth", depth)
    if b.dim() != 2:
        raise ValueError(f"b must be (L1, out), got shape {tuple(b.shape)}")
    if depth.dim() != 2 or depth.shape[1] != b.shape[0]:
        raise ValueError(f"depth must be (L2, L1={b.shape[0]}), got shape {tuple(depth.shape)}")
    L2 = depth.shape[0]
    o2 = _check_width("E_out", E_out, L2, b.shape[1])
    if residual is not None:
        _check_float("residual", residual)
        if tuple(residual.shape) != (L2, o2):
            raise ValueError(f"residual must be {(L2, o2)}, got {tuple(residual.shape)}")
    _check_device(dict(b=b, depth=depth, E_out=E_out, residual=residual))
    return L2, o2


def ligo_expand(
    W: Tensor,
    depth: Tensor,
    E_out: Tensor | None = None,
    E_in: Tensor | None = None,
    *,
    residual: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Depth-mix and width-expand one module kind for all large layers.

    Args:
        W: (L1, o1, i1) small weights, layer-major.
        depth: (L2, L1); row l mixes the small layers for large layer l.
        E_out: (L2, o2-o1, o1), or (o2-o1, o1) shared by all layers, or None when o2 == o1.
        E_in: (L2, i2-i1, i1), or (i2-i1, i1), or None when i2 == i1.
        residual: (L2, o2, i2) or None.
        backend: "auto", "torch", "triton" or "cpp".

    Returns:
        (L2, o2, i2) in W's dtype: ``[I; E_out[l]] @ (sum_j depth[l, j] W[j]) @ [I; E_in[l]]^T + residual[l]``,
        accumulated in float32 (float64 for float64 inputs).
    """
    check_expand_args(W, depth, E_out, E_in, residual)
    return backends.resolve(backend, W.device).expand(W, depth, E_out, E_in, residual)


def ligo_expand_vec(
    b: Tensor,
    depth: Tensor,
    E_out: Tensor | None = None,
    *,
    residual: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Vector version of :func:`ligo_expand`: b (L1, o1) -> (L2, o2).

    ``out[l] = [I; E_out[l]] @ (depth[l] @ b) + residual[l]``.
    """
    check_expand_vec_args(b, depth, E_out, residual)
    return backends.resolve(backend, b.device).expand_vec(b, depth, E_out, residual)


def ligo_expand_vec_multi(
    problems: list[tuple[Tensor, Tensor, Tensor | None, Tensor | None]],
    *,
    backend: str = "auto",
) -> list[Tensor]:
    """Many :func:`ligo_expand_vec` problems of different sizes at once.

    Args:
        problems: list of ``(b, depth, E_out, residual)`` tuples, each as in :func:`ligo_expand_vec`.
        backend: as in :func:`ligo_expand`. Backends with a multi-tensor kernel (``cpp``) do the whole list
            in one call; the others loop.

    Returns:
        One (L2, o2) tensor per problem, in order.
    """
    if not problems:
        return []
    for b, depth, E_out, residual in problems:
        check_expand_vec_args(b, depth, E_out, residual)
    device = problems[0][0].device
    impl = backends.resolve(backend, device)
    multi = impl.multi_vec_op(device.type)
    if multi is None and backends.is_auto(backend):
        # auto on CUDA picks Triton, which has no multi-tensor kernel: the extension's does all vectors in one launch
        multi = backends.multi_vec_fallback(device)
    if multi is not None:
        return list(multi(problems))
    return [impl.expand_vec(b, d, e, r) for b, d, e, r in problems]


MatrixProblem = tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]  # (W, depth, E_out, E_in, residual)
VecProblem = tuple[Tensor, Tensor, Tensor | None, Tensor | None]  # (b, depth, E_out, residual)


def ligo_expand_many(
    matrices: Sequence[MatrixProblem], vectors: Sequence[VecProblem] = (), *, backend: str = "auto"
) -> tuple[list[Tensor], list[Tensor]]:
    """Many :func:`ligo_expand` and :func:`ligo_expand_vec` problems (a model's module kinds) at once.

    Args:
        matrices: ``(W, depth, E_out, E_in, residual)`` tuples, each as in :func:`ligo_expand`.
        vectors: ``(b, depth, E_out, residual)`` tuples, each as in :func:`ligo_expand_vec`.
        backend: as in :func:`ligo_expand`. A backend with a grouped op (``triton``, unless
            ``LIGO_FAST_TRITON_GROUPED=0``) does every residual-free problem in one call, each stage of its forward
            and backward one launch for all; the rest, and every problem on other backends, go one call per matrix
            problem and one :func:`ligo_expand_vec_multi` call for the vectors.

    Returns:
        (one (L2, o2, i2) tensor per matrix problem, one (L2, o2) tensor per vector problem), in order.
    """
    matrices, vectors = list(matrices), list(vectors)
    for W, depth, E_out, E_in, residual in matrices:
        check_expand_args(W, depth, E_out, E_in, residual)
    for b, depth, E_out, residual in vectors:
        check_expand_vec_args(b, depth, E_out, residual)
    first = matrices[0][0] if matrices else (vectors[0][0] if vectors else None)
    if first is None:
        return [], []
    group = backends.resolve(backend, first.device).group_op(first.device.type)
    mats: list = [None] * len(matrices)
    vecs: list = [None] * len(vectors)
    if group is not None:
        mi = [i for i, m in enumerate(matrices) if m[4] is None]
        vi = [i for i, v in enumerate(vectors) if v[3] is None]
        problems = [matrices[i][:4] for i in mi] + [(b, d, e, None) for b, d, e, _ in (vectors[i] for i in vi)]
        got = group(problems) if problems else []
        for i, t in zip(mi, got[: len(mi)], strict=True):
            mats[i] = t
        for i, t in zip(vi, got[len(mi) :], strict=True):
            vecs[i] = t
    left_m = [i for i in range(len(matrices)) if mats[i] is None]
    for i in left_m:
        W, depth, E_out, E_in, residual = matrices[i]
        mats[i] = ligo_expand(W, depth, E_out, E_in, residual=residual, backend=backend)
    left_v = [i for i in range(len(vectors)) if vecs[i] is None]
    for i, t in zip(left_v, ligo_expand_vec_multi([vectors[i] for i in left_v], backend=backend), strict=True):
        vecs[i] = t
    return mats, vecs
