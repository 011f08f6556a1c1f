"""The LiGO growth operator written as the math, in plain PyTorch.

This is the CPU implementation and the oracle every kernel is tested against. Shapes:

    W:        (L1, o1, i1)   small weights, layer-major
    depth:    (L2, L1)       row l mixes the small layers into large layer l
    E_out:    (L2, o2-o1, o1) per large layer, or (o2-o1, o1) shared, or None (o2 == o1)
    E_in:     (L2, i2-i1, i1) per large layer, or (i2-i1, i1) shared, or None (i2 == i1)
    residual: (L2, o2, i2) or None
    out:      (L2, o2, i2),  out[l] = [I; E_out[l]] @ (sum_j depth[l, j] W[j]) @ [I; E_in[l]]^T (+ residual[l])

The identity blocks are never multiplied: ``[I; E] @ X`` is ``cat([X, E @ X])``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _expand_rows(E: Tensor | None, X: Tensor) -> Tensor:
    """``[I; E] @ X`` for X: (L, r, c) and E: (L, r2-r, r) or (r2-r, r)."""
    if E is None:
        return X
    return torch.cat([X, E @ X], dim=-2)


def _expand_cols(X: Tensor, E: Tensor | None) -> Tensor:
    """``X @ [I; E]^T`` for X: (L, r, c) and E: (L, c2-c, c) or (c2-c, c)."""
    if E is None:
        return X
    return torch.cat([X, X @ E.mT], dim=-1)


def depth_mix(W: Tensor, depth: Tensor) -> Tensor:
    """``sum_j depth[l, j] W[j]`` for every l, as one matrix product over the layer axis.

    W: (L1, *rest), depth: (L2, L1) -> (L2, *rest).
    """
    L1 = W.shape[0]
    return (depth @ W.reshape(L1, -1)).reshape(depth.shape[0], *W.shape[1:])


def in_first(o1: int, i1: int, o2: int, i2: int) -> bool:
    """True when ``[I; E_out] @ (W @ [I; E_in]^T)`` costs fewer FLOPs than ``([I; E_out] @ W) @ [I; E_in]^T``.

    Only the E products cost anything (identity blocks are copies):
      in first:  o1*i1*(i2-i1)  +  (o2-o1)*o1*i2
      out first: (o2-o1)*o1*i1  +  o2*i1*(i2-i1)
    The difference reduces to (o2-o1)*(i2-i1)*(o1 - i1), so expanding the smaller side last wins.
    """
    return o1 <= i1


def expand_torch(
    W: Tensor,
    depth: Tensor,
    E_out: Tensor | None = None,
    E_in: Tensor | None = None,
    residual: Tensor | None = None,
) -> Tensor:
    """Pure-PyTorch ``ligo_expand``; differentiable by autograd. Returns (L2, o2, i2) in W's dtype."""
    ct = compute_dtype(W.dtype)
    Wm = depth_mix(W.to(ct), depth.to(ct))
    Eo = None if E_out is None else E_out.to(ct)
    Ei = None if E_in is None else E_in.to(ct)
    _, o1, i1 = Wm.shape
    o2 = o1 + (0 if Eo is None else Eo.shape[-2])
    i2 = i1 + (0 if Ei is None else Ei.shape[-2])
    if in_first(o1, i1, o2, i2):
        out = _expand_rows(Eo, _expand_cols(Wm, Ei))
    else:
        out = _expand_cols(_expand_rows(Eo, Wm), Ei)
    if residual is not None:
        out = out + residual.to(ct)
    return out.to(W.dtype)


def expand_vec_torch(
    b: Tensor,
    depth: Tensor,
    E_out: Tensor | None = None,
    residual: Tensor | None = None,
) -> Tensor:
    """Pure-PyTorch ``ligo_expand_vec``: b (L1, o1) -> (L2, o2) in b's dtype."""
    ct = compute_dtype(b.dtype)
    bm = depth.to(ct) @ b.to(ct)  # (L2, o1)
    if E_out is not None:
        Eo = E_out.to(ct)
        extra = (Eo @ bm.unsqueeze(-1)).squeeze(-1) if Eo.dim() == 3 else bm @ Eo.mT
        bm = torch.cat([bm, extra], dim=-1)
    if residual is not None:
        bm = bm + residual.to(ct)
    return bm.to(b.dtype)
