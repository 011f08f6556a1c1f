"""Every backend through the public ops, against the float64 oracle: one case list x backends x dtypes, one rule.

Forward and every gradient (tests/_checks.py). Triton runs under its interpreter on CPU (tests/conftest.py sets
TRITON_INTERPRET=1) in float32 and float16 only: the interpreter mishandles bfloat16 dots, and float64 goes to the
PyTorch reference. The C++ extension is built once per session (prebuilt ``ligo_fast._C`` or a JIT build).
"""

from __future__ import annotations

import pytest
import torch
from _checks import (
    DEV,
    MATRIX_CASES,
    VEC_CASES,
    check_op,
    expand_inputs,
    oracle_expand,
    oracle_expand_vec,
    vec_inputs,
)

from ligo_fast import backends, extension, ops

LOW = (torch.float16, torch.bfloat16)
ALL = (torch.float64, torch.float32, *LOW)


def _combos(dtypes=ALL) -> list:
    """(backend, dtype) pairs that run here; backends that do not load are skipped with the reason."""
    out = []
    for name in backends.BACKENDS:
        for dt in dtypes:
            if name == "triton" and (dt == torch.float64 or (dt == torch.bfloat16 and DEV == "cpu")):
                continue  # float64 is the reference's; the interpreter's bf16 dots are unreliable
            out.append(pytest.param(name, dt, id=f"{name}-{str(dt).removeprefix('torch.')}"))
    return out


def _require(name: str, vectors: bool = False) -> None:
    try:
        backends.load(name)
    except backends.BackendUnavailable as e:
        pytest.skip(str(e))
    if vectors and name == "cpp" and DEV == "cuda" and not extension.has_cuda_kernels():
        pytest.skip("the extension was built without its CUDA vector kernels")


def _expand(name):
    return lambda W, d, Eo, Ei, R: ops.ligo_expand(W, d, Eo, Ei, residual=R, backend=name)


def _expand_vec(name):
    return lambda b, d, Eo, R: ops.ligo_expand_vec(b, d, Eo, residual=R, backend=name)


@pytest.mark.parametrize(("name", "dtype"), _combos())
@pytest.mark.parametrize("case", list(MATRIX_CASES), ids=list(MATRIX_CASES))
def test_expand(case, name, dtype, poison_empty):
    _require(name)
    check_op(_expand(name), oracle_expand, expand_inputs(MATRIX_CASES[case], dtype))


@pytest.mark.parametrize(("name", "dtype"), _combos())
@pytest.mark.parametrize("case", list(VEC_CASES), ids=list(VEC_CASES))
def test_expand_vec(case, name, dtype, poison_empty):
    _require(name, vectors=True)
    check_op(_expand_vec(name), oracle_expand_vec, vec_inputs(VEC_CASES[case], dtype))


@pytest.mark.parametrize(("name", "dtype"), _combos())
def test_expand_vec_multi(name, dtype, poison_empty):
    """Every vector case in one ragged list: the cpp backend's one-call kernel, the others' loop."""
    _require(name, vectors=True)
    problems = [vec_inputs(c, dtype) for c in VEC_CASES.values()]
    sizes = [len(p) for p in problems]
    flat = [t for p in problems for t in p]

    def split(flat_args):
        it = iter(flat_args)
        return [tuple(next(it) for _ in range(n)) for n in sizes]

    def multi(*flat_args):
        return torch.cat([o.flatten() for o in ops.ligo_expand_vec_multi(split(flat_args), backend=name)])

    def oracle(*flat_args):
        return torch.cat([oracle_expand_vec(*p).flatten() for p in split(flat_args)])

    check_op(multi, oracle, flat, dtype)


@pytest.mark.parametrize(("name", "dtype"), _combos(LOW))
def test_mixed_dtypes(name, dtype, poison_empty):
    """16-bit weights with float32 coefficients and residual: output in the weights' dtype, each gradient in its
    input's dtype, accuracy as for the 16-bit problem."""
    _require(name, vectors=True)
    case = MATRIX_CASES["odd-perlayer-res"]
    check_op(_expand(name), oracle_expand, expand_inputs(case, dtype, coef_dtype=torch.float32))
    vcase = VEC_CASES["perlayer-res"]
    check_op(_expand_vec(name), oracle_expand_vec, vec_inputs(vcase, dtype, coef_dtype=torch.float32))


# ---------------------------------------------------------------------------------------- fp32 accumulation
# Inputs for which a 16-bit problem computed in float32 (one rounding at the end) and one that accumulates or keeps
# intermediates in its own dtype differ by far more than the rule allows. A large common offset C in the operands is
# cancelled by coefficients summing to zero, so each rounding of an intermediate costs about u * C while the result
# is of order 1. PyTorch's CPU GEMMs accumulate fp16/bf16 products in fp32 themselves: what a compute dtype equal to
# the input's shows there is the rounding of the coefficients and of the intermediates (depth mix before the width
# product).

C = 256.0


def _zero_sum_rows(rows: int, n: int, scale: float) -> torch.Tensor:
    """(rows, n) float64, each row +-pairs of random values in random order: sums to exactly 0 in any precision."""
    half = torch.randn(rows, n // 2, dtype=torch.float64) * scale
    x = torch.cat([half, -half], 1)
    return torch.gather(x, 1, torch.argsort(torch.rand(rows, n), 1))


def _long_mix(dtype):
    """64 small layers, depth rows summing to 0, W = C + noise: the depth mix (a reduction over L1) cancels C."""
    L1, L2, o1, i1, o2, i2 = 64, 3, 5, 7, 9, 11
    W = C + torch.randn(L1, o1, i1, dtype=torch.float64)
    depth = _zero_sum_rows(L2, L1, L1**-0.5)
    E_out, E_in = torch.randn(L2, o2 - o1, o1) / o1**0.5, torch.randn(L2, i2 - i1, i1) / i1**0.5
    R = torch.randn(L2, o2, i2)
    return "matrix", [t.to(dtype) for t in (W, depth, E_out, E_in, R)]


def _long_inner(dtype):
    """Depth selects layers (the mix is exact); E_in rows sum to 0 over i1 = 200 columns of W = C + noise: the width
    product (a reduction over i1) cancels C."""
    L1, L2, o1, i1, o2, i2 = 2, 3, 6, 150, 9, 155
    W = C + torch.randn(L1, o1, i1, dtype=torch.float64)
    depth = torch.zeros(L2, L1)
    depth[torch.arange(L2), torch.arange(L2) % L1] = 1
    E_in = _zero_sum_rows(i2 - i1, i1, 2.0)
    E_out = torch.randn(L2, o2 - o1, o1) / o1**0.5
    return "matrix", [t.to(dtype) for t in (W, depth, E_out, E_in)] + [None]


def _coefficients_fp32(dtype):
    """16-bit W = C + noise, float32 depth rows summing to ~0 (not representable in 16 bits): rounding the
    coefficients to W's dtype before the mix breaks the cancellation."""
    L1, L2, o1, i1, o2, i2 = 48, 3, 7, 5, 11, 9
    W = (C + torch.randn(L1, o1, i1, dtype=torch.float64)).to(dtype)
    x = torch.randn(L2, L1, dtype=torch.float64) * L1**-0.5
    depth = (x - x.mean(1, keepdim=True)).float()
    E_out, E_in = torch.randn(L2, o2 - o1, o1) / o1**0.5, torch.randn(i2 - i1, i1) / i1**0.5
    return "matrix", [W, depth, E_out, E_in, torch.randn(L2, o2, i2)]


def _residual(dtype):
    """Depth selects layers and E_in is absent (the products are exact); large E_out rows, whose products the
    residual cancels down to noise: adding the residual to an already rounded product costs u * |product|."""
    L1, L2, o1, i1, o2 = 2, 3, 40, 7, 49
    W = torch.randn(L1, o1, i1).to(dtype)
    depth = torch.zeros(L2, L1)
    depth[torch.arange(L2), torch.arange(L2) % L1] = 1
    E_out = (torch.randn(L2, o2 - o1, o1) * 16).to(dtype)
    product = E_out.double() @ W.double()[torch.arange(L2) % L1]
    R = torch.cat([torch.randn(L2, o1, i1, dtype=torch.float64), torch.randn_like(product) - product], 1)
    return "matrix", [W, depth.to(dtype), E_out, None, R.to(dtype)]


def _vector(dtype):
    """b = C + noise over 64 layers, depth rows summing to ~1: the mixed vector keeps the offset, which E's rows
    (summing to 0 over o1 = 200) cancel."""
    L1, L2, o1, o2 = 16, 3, 64, 73
    b = C + torch.randn(L1, o1, dtype=torch.float64)
    depth = 1.0 / L1 + _zero_sum_rows(L2, L1, L1**-0.5)
    E = _zero_sum_rows(L2 * (o2 - o1), o1, 4.0).reshape(L2, o2 - o1, o1)
    return "vector", [t.to(dtype) for t in (b, depth, E, torch.randn(L2, o2))]


ACCUMULATION = {
    "long-mix": _long_mix,
    "long-inner": _long_inner,
    "fp32-coef": _coefficients_fp32,
    "residual": _residual,
    "vector": _vector,
}


@pytest.mark.parametrize(("name", "dtype"), _combos(LOW))
@pytest.mark.parametrize("design", list(ACCUMULATION), ids=list(ACCUMULATION))
def test_accumulates_in_fp32(design, name, dtype):
    """Forward and gradients of the cancelling 16-bit problems above, by the same rule: passes only when the backend
    accumulates in float32."""
    _require(name, vectors=True)
    kind, args = ACCUMULATION[design](dtype)
    args = [None if t is None else t.to(DEV) for t in args]
    if kind == "matrix":
        check_op(_expand(name), oracle_expand, args, dtype)
    else:
        check_op(_expand_vec(name), oracle_expand_vec, args, dtype)
        check_op(lambda *a: ops.ligo_expand_vec_multi([tuple(a)], backend=name)[0], oracle_expand_vec, args, dtype)
