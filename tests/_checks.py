"""What every op test shares: the case lists, one input generator, the float64 oracle and the one accuracy rule.

The oracle builds ``B = [I; E]`` explicitly and multiplies by it in float64 (``out[l] = B_out[l] Wm[l] B_in[l]^T``),
an independent path from ``ligo_fast.reference`` (which never multiplies by an identity); test_reference.py checks
it against the Kronecker form on tiny shapes.

The rule (flash-attention's, with the best possible result as the baseline): against the float64 oracle, a result's
largest error is at most twice that of the oracle rounded once to the result's dtype, plus ``ATOL[dtype] * scale``
(``scale`` = the oracle's largest magnitude; ``dtype`` = the problem's lowest precision, so an fp32 gradient of an
fp16 problem gets fp16's allowance). The baseline does not depend on any ligo_fast code.
"""

from __future__ import annotations

import torch

DEV = "cuda" if torch.cuda.is_available() else "cpu"

# unit roundoff of each dtype, and the allowance beyond twice the best result's error, per unit of scale
UNIT = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
ATOL = {
    torch.float64: 1e-11,
    torch.float32: 1e-5,
    torch.float16: 3 * UNIT[torch.float16],
    torch.bfloat16: 3 * UNIT[torch.bfloat16],
}

# (L1, L2, o1, i1, o2, i2, E layout, residual): odd sizes off every block size (16/32/64/128), both expansion
# orders, absent sides, size-1 dimensions
MATRIX_CASES = {
    "odd-perlayer-res": (3, 5, 7, 11, 13, 17, "layer", True),  # o1 < i1: columns first
    "out-first": (2, 3, 37, 23, 45, 50, "layer", True),  # o1 > i1: rows first
    "out-first-shared": (2, 4, 9, 5, 12, 8, "shared", True),
    "shared": (2, 3, 21, 19, 45, 38, "shared", False),
    "shared-res": (4, 2, 33, 35, 67, 41, "shared", True),
    "L1=1": (1, 4, 9, 13, 19, 21, "layer", False),
    "L2=1": (3, 1, 15, 9, 29, 23, "layer", True),
    "E_out-only": (2, 3, 20, 9, 37, 9, "layer", True),  # i2 == i1: the C++ op mixes depth straight into the output
    "E_out-only-shared": (2, 3, 8, 3, 13, 3, "shared", False),
    "E_in-only": (2, 3, 9, 20, 9, 37, "shared", True),
    "no-E": (3, 4, 11, 13, 11, 13, "layer", True),
    "no-E-no-res": (3, 2, 11, 13, 11, 13, "layer", False),
    "square-double": (2, 4, 33, 33, 66, 66, "layer", False),
    "size-1": (1, 1, 1, 1, 2, 3, "layer", False),
}

# (L1, L2, o1, o2, E layout, residual)
VEC_CASES = {
    "perlayer-res": (3, 5, 37, 70, "layer", True),
    "shared": (2, 3, 21, 45, "shared", False),
    "shared-res": (2, 3, 3, 4, "shared", True),
    "L1=1-L2=1": (1, 1, 9, 19, "layer", True),
    "no-E": (4, 6, 13, 13, "layer", True),
    "size-1": (1, 1, 1, 1, "layer", False),
    "width-1": (1, 6, 1, 3, "layer", False),
    "wide-shared": (5, 1, 130, 197, "shared", True),
}


def _width(L2: int, small: int, large: int, layout: str, dtype, device) -> torch.Tensor | None:
    if large == small:
        return None
    shape = (large - small, small) if layout == "shared" else (L2, large - small, small)
    return (torch.randn(shape, device=device) / small**0.5).to(dtype)


def expand_inputs(case, dtype, coef_dtype=None, device=DEV) -> list[torch.Tensor | None]:
    """[W, depth, E_out, E_in, residual] for a MATRIX_CASES tuple: fresh random values of unit-ish scale (E scaled by
    1/sqrt(fan-in)); W in ``dtype``, the operator's coefficients and the residual in ``coef_dtype`` (default dtype)."""
    L1, L2, o1, i1, o2, i2, layout, residual = case
    coef = coef_dtype or dtype
    W = torch.randn(L1, o1, i1, device=device).to(dtype)
    depth = (torch.randn(L2, L1, device=device) / L1**0.5).to(coef)
    R = torch.randn(L2, o2, i2, device=device).to(coef) if residual else None
    return [W, depth, _width(L2, o1, o2, layout, coef, device), _width(L2, i1, i2, layout, coef, device), R]


def vec_inputs(case, dtype, coef_dtype=None, device=DEV) -> list[torch.Tensor | None]:
    """[b, depth, E_out, residual] for a VEC_CASES tuple, as :func:`expand_inputs`."""
    L1, L2, o1, o2, layout, residual = case
    coef = coef_dtype or dtype
    b = torch.randn(L1, o1, device=device).to(dtype)
    depth = (torch.randn(L2, L1, device=device) / L1**0.5).to(coef)
    R = torch.randn(L2, o2, device=device).to(coef) if residual else None
    return [b, depth, _width(L2, o1, o2, layout, coef, device), R]


# ------------------------------------------------------------------------------------------------- the oracle


def _B(E: torch.Tensor | None, small: int, L2: int, device) -> torch.Tensor:
    """(L2, large, small) = [I; E] per layer, in float64."""
    eye = torch.eye(small, dtype=torch.float64, device=device).expand(L2, small, small)
    return eye if E is None else torch.cat([eye, E.expand(L2, *E.shape[-2:])], dim=1)


def oracle_expand(W, depth, E_out=None, E_in=None, residual=None) -> torch.Tensor:
    """float64 ``ligo_expand`` written with explicit B matrices (differentiable)."""
    Wm = torch.einsum("lj,jab->lab", depth, W)
    L2, o1, i1 = Wm.shape
    out = _B(E_out, o1, L2, W.device) @ Wm @ _B(E_in, i1, L2, W.device).mT
    return out if residual is None else out + residual


def oracle_expand_vec(b, depth, E_out=None, residual=None) -> torch.Tensor:
    """float64 ``ligo_expand_vec`` written with an explicit B matrix (differentiable)."""
    bm = depth @ b
    out = (_B(E_out, b.shape[1], depth.shape[0], b.device) @ bm.unsqueeze(-1)).squeeze(-1)
    return out if residual is None else out + residual


# --------------------------------------------------------------------------------------------------- the rule


def problem_dtype(tensors) -> torch.dtype:
    """The lowest precision among the tensors (what the accuracy allowance is for)."""
    return max((t.dtype for t in tensors if t is not None), key=lambda d: UNIT[d])


def assert_close_to_oracle(out: torch.Tensor, oracle: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """The one accuracy rule (module docstring): ``out`` against the float64 ``oracle`` for a ``dtype`` problem."""
    assert out.shape == oracle.shape, (what, tuple(out.shape), tuple(oracle.shape))
    assert torch.isfinite(out).all(), f"{what}: non-finite values"
    scale = oracle.abs().max().item()
    err = (out.double() - oracle).abs().max().item()
    best = (oracle.to(out.dtype).double() - oracle).abs().max().item()
    bound = 2 * best + ATOL[dtype] * scale
    assert err <= bound, f"{what}: error {err:.3g} > {bound:.3g} (best {best:.3g}, scale {scale:.3g}, {dtype})"


def check_op(fn, oracle, args, dtype: torch.dtype | None = None, grad_seed: int = 1) -> None:
    """``fn(*args)`` and every gradient against the float64 oracle, by :func:`assert_close_to_oracle`.

    The upstream gradient is fresh random values in the output's dtype; the oracle gets the same values.
    """
    dtype = dtype or problem_dtype(args)
    leaves = [None if a is None else a.detach().clone().requires_grad_(True) for a in args]
    out = fn(*leaves)
    assert out.dtype == args[0].dtype, (out.dtype, args[0].dtype)
    gen = torch.Generator(device=out.device).manual_seed(grad_seed)
    g = torch.randn(out.shape, generator=gen, device=out.device).to(out.dtype)
    present = [x for x in leaves if x is not None]
    grads = torch.autograd.grad(out, present, g)
    leaves64 = [None if a is None else a.detach().double().requires_grad_(True) for a in args]
    out64 = oracle(*leaves64)
    grads64 = torch.autograd.grad(out64, [x for x in leaves64 if x is not None], g.double())
    assert_close_to_oracle(out.detach(), out64.detach(), dtype, "out")
    for i, (a, x, r) in enumerate(zip(grads, present, grads64, strict=True)):
        assert a.dtype == x.dtype, f"grad {i}: {a.dtype} for a {x.dtype} input"
        assert_close_to_oracle(a, r, dtype, f"grad {i}")
