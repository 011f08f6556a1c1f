"""Triton backend: the custom ops against the PyTorch reference.

On CPU these run through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), in float32 and
float16 (the interpreter mishandles bfloat16 dots); the ``gpu`` tests repeat them on CUDA in bf16/fp16/fp32
with flash-attention's rule: the kernel's error against a float64 reference is at most about twice that
of PyTorch doing the same math in that dtype.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from ligo_fast.kernels import expand as K  # noqa: E402

from ligo_fast import backends, ops  # noqa: E402
from ligo_fast import triton_ops as T  # noqa: E402
from ligo_fast.reference import expand_torch, expand_vec_torch, in_first  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"

# (L1, L2, o1, i1, o2, i2, E layout, residual); sizes odd and off every block size (16/32/64/128)
CASES = {
    "odd-perlayer-res": (3, 5, 7, 11, 13, 17, "layer", True),  # o1 < i1: columns first
    "out-first": (2, 3, 37, 23, 45, 50, "layer", True),  # o1 > i1: rows first
    "shared": (2, 3, 21, 19, 45, 38, "shared", False),
    "shared-res": (4, 2, 33, 35, 67, 41, "shared", True),
    "L1=1": (1, 4, 9, 13, 19, 21, "layer", False),
    "L2=1": (3, 1, 15, 9, 29, 23, "layer", True),
    "E_out-only": (2, 3, 20, 9, 37, 9, "layer", True),
    "E_in-only": (2, 3, 9, 20, 9, 37, "shared", True),
    "no-E": (3, 4, 11, 13, 11, 13, "layer", True),
    "no-E-no-res": (3, 2, 11, 13, 11, 13, "layer", False),
    "square-double": (2, 4, 33, 33, 66, 66, "layer", False),
}

VEC_CASES = {
    "perlayer-res": (3, 5, 37, 70, "layer", True),
    "shared": (2, 3, 21, 45, "shared", False),
    "L1=1-L2=1": (1, 1, 9, 19, "layer", True),
    "no-E": (4, 6, 13, 13, "layer", True),
}

# relative-norm bound against the float64 oracle, and elementwise tolerance against the same-dtype torch path
TOL = {torch.float32: (1e-5, 2e-5), torch.float16: (3e-3, 8e-3), torch.bfloat16: (2e-2, 6e-2)}


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _close(a: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert a.shape == ref.shape, what
    assert a.dtype == ref.dtype, what
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    tol = TOL[dtype][1]
    scale = ref.double().abs().max().item()
    torch.testing.assert_close(a.double(), ref.double(), atol=tol * scale, rtol=tol, msg=lambda m: f"{what}: {m}")


def make_inputs(L1, L2, o1, i1, o2, i2, layout, residual, dtype, coef_dtype=None, device=DEV):
    """Fresh random inputs of unit-ish scale (E scaled by 1/sqrt(fan-in)); never zeros."""
    coef_dtype = coef_dtype or dtype

    def E(big, small):
        if big == small:
            return None
        shape = (big - small, small) if layout == "shared" else (L2, big - small, small)
        return (torch.randn(shape, device=device) / small**0.5).to(coef_dtype)

    W = torch.randn(L1, o1, i1, device=device).to(dtype)
    depth = (torch.randn(L2, L1, device=device) / L1**0.5).to(coef_dtype)
    R = torch.randn(L2, o2, i2, device=device).to(coef_dtype) if residual else None
    return W, depth, E(o2, o1), E(i2, i1), R


def _upcast(args, dt=torch.float64):
    return [None if a is None else a.detach().to(dt) for a in args]


def native(W, depth, E_out, E_in, residual):
    """PyTorch doing the math in W's dtype (no upcast): flash-attention's baseline for low precision."""
    dt = W.dtype
    c = [None if t is None else t.to(dt) for t in (depth, E_out, E_in, residual)]
    depth, E_out, E_in, residual = c
    Wm = (depth @ W.reshape(W.shape[0], -1)).reshape(depth.shape[0], *W.shape[1:])
    rows = (lambda X: X) if E_out is None else (lambda X: torch.cat([X, E_out @ X], -2))
    cols = (lambda X: X) if E_in is None else (lambda X: torch.cat([X, X @ E_in.mT], -1))
    o1, i1 = W.shape[1:]
    out = rows(cols(Wm)) if in_first(o1, i1, 0, 0) else cols(rows(Wm))
    return out if residual is None else out + residual


def _fwd_bwd(fn, args, grad):
    leaves = [None if a is None else a.detach().clone().requires_grad_(True) for a in args]
    out = fn(*leaves)
    present = [x for x in leaves if x is not None]
    grads = torch.autograd.grad(out, present, grad.to(out.dtype))
    return out.detach(), grads


def check_against_references(fn, ref_fn, args, dtype, flash_rule: bool):
    """Output and every gradient: against the float64 oracle (relative norm), the same-dtype torch path
    (elementwise), and, with ``flash_rule``, no worse than 2x PyTorch's own error in that dtype."""
    with torch.no_grad():
        shape = fn(*args).shape
    g = torch.randn(shape, device=args[0].device)
    out, grads = _fwd_bwd(fn, args, g)
    out64, grads64 = _fwd_bwd(ref_fn, _upcast(args), g.double())
    same, grads_same = _fwd_bwd(ref_fn, args, g)
    names = ["out"] + [f"grad{i}" for i in range(len(grads))]
    bound = TOL[dtype][0]
    if flash_rule:
        nat, grads_nat = _fwd_bwd(native if ref_fn is expand_torch else native_vec, args, g)
    for i, (a, a64, a_same) in enumerate(zip((out, *grads), (out64, *grads64), (same, *grads_same), strict=True)):
        err = _rel(a, a64)
        if flash_rule:
            base = _rel((nat, *grads_nat)[i], a64)
            assert err <= 2 * base + 1e-6, f"{names[i]}: error {err:.2e} > 2x PyTorch's {base:.2e}"
        assert err <= bound, f"{names[i]}: relative error {err:.2e} > {bound:.1e}"
        _close(a, a_same, dtype, names[i])


def native_vec(b, depth, E_out, residual):
    dt = b.dtype
    bm = depth.to(dt) @ b
    if E_out is not None:
        E = E_out.to(dt)
        bm = torch.cat([bm, (E @ bm.unsqueeze(-1)).squeeze(-1) if E.dim() == 3 else bm @ E.mT], -1)
    return bm if residual is None else bm + residual.to(dt)


def _poison_empty(monkeypatch):
    """Every float allocation starts as NaN: an output element nobody wrote, or scratch read before written,
    shows up as NaN."""

    def poisoned(real):
        def alloc(*a, **k):
            t = real(*a, **k)
            if t.is_floating_point():
                t.fill_(float("nan"))
            return t

        return alloc

    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(torch.empty_like))


# --------------------------------------------------------------------------------------------- matrices


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_expand_matches_reference(case, dtype, monkeypatch):
    _poison_empty(monkeypatch)
    args = make_inputs(*CASES[case], dtype)
    check_against_references(T.expand_triton, expand_torch, args, dtype, flash_rule=dtype != torch.float32)


def test_expand_mixed_dtypes(monkeypatch):
    """fp16 weights with fp32 depth, E and residual: output in fp16, each gradient in its input's dtype."""
    _poison_empty(monkeypatch)
    args = make_inputs(3, 4, 21, 35, 41, 50, "layer", True, torch.float16, coef_dtype=torch.float32)
    out, grads = _fwd_bwd(T.expand_triton, args, torch.randn(4, 41, 50))
    assert out.dtype == torch.float16
    assert [g.dtype for g in grads] == [torch.float16] + [torch.float32] * 4
    check_against_references(T.expand_triton, expand_torch, args, torch.float16, flash_rule=True)


def test_expand_orientations_agree():
    """Both association orders (o1 < i1 and o1 > i1) give the reference; mirrored inputs give mirrored output."""
    W, depth, Eo, Ei, R = make_inputs(2, 3, 13, 29, 30, 47, "layer", True, torch.float32)
    out = T.expand_triton(W, depth, Eo, Ei, R)
    out_t = T.expand_triton(W.mT.contiguous(), depth, Ei, Eo, R.mT.contiguous())
    torch.testing.assert_close(out_t.mT, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expand_torch(W, depth, Eo, Ei, R), atol=1e-5, rtol=1e-5)


def test_expand_non_contiguous():
    """Transposed views for W, E and the incoming gradient: the kernels take strides, no copies needed."""
    W, depth, Eo, Ei, R = make_inputs(2, 3, 17, 23, 30, 35, "layer", True, torch.float32)
    Wv = W.mT.contiguous().mT
    Eov = Eo.mT.contiguous().mT
    args = (Wv, depth.t().contiguous().t(), Eov, Ei, R)
    g = torch.randn(3, 35, 30).mT  # non-contiguous grad
    out, grads = _fwd_bwd(T.expand_triton, args, g)
    ref, grads_ref = _fwd_bwd(expand_torch, _upcast(args), g.double())
    assert _rel(out, ref) < 1e-5
    for a, b in zip(grads, grads_ref, strict=True):
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("which", [0, 1, 2, 3, 4], ids=["W", "depth", "E_out", "E_in", "residual"])
def test_expand_grad_subsets(which):
    """Only one input requires grad: that gradient is right, the backward skips the rest."""
    args = make_inputs(2, 3, 19, 13, 31, 29, "shared", True, torch.float32)
    leaves = [a.detach().clone().requires_grad_(i == which) for i, a in enumerate(args)]
    out = T.expand_triton(*leaves)
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, leaves[which], g)
    ref_leaves = [a.detach().double().requires_grad_(i == which) for i, a in enumerate(args)]
    (ref,) = torch.autograd.grad(expand_torch(*ref_leaves), ref_leaves[which], g.double())
    assert _rel(got, ref) < 1e-5


def test_expand_backward_op_skips_unwanted():
    W, depth, Eo, Ei, _ = make_inputs(2, 3, 9, 11, 15, 17, "layer", False, torch.float32)
    g = torch.randn(3, 15, 17)
    dW, dd, dEo, dEi = torch.ops.ligo_fast.expand_triton_backward(g, W, depth, Eo, Ei, False, True, False, True)
    assert dW.numel() == 0 and dEo.numel() == 0
    assert dd.shape == depth.shape and dEi.shape == Ei.shape
    ref = [a.double().requires_grad_(True) for a in (W, depth, Eo, Ei)]
    grads = torch.autograd.grad(expand_torch(*ref), ref, g.double())
    assert _rel(dd, grads[1]) < 1e-5 and _rel(dEi, grads[3]) < 1e-5


# ---------------------------------------------------------------------------------------------- vectors


def make_vec_inputs(L1, L2, o1, o2, layout, residual, dtype, coef_dtype=None, device=DEV):
    coef_dtype = coef_dtype or dtype
    b = torch.randn(L1, o1, device=device).to(dtype)
    depth = (torch.randn(L2, L1, device=device) / L1**0.5).to(coef_dtype)
    E = None
    if o2 != o1:
        shape = (o2 - o1, o1) if layout == "shared" else (L2, o2 - o1, o1)
        E = (torch.randn(shape, device=device) / o1**0.5).to(coef_dtype)
    R = torch.randn(L2, o2, device=device).to(coef_dtype) if residual else None
    return b, depth, E, R


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", list(VEC_CASES), ids=list(VEC_CASES))
def test_expand_vec_matches_reference(case, dtype, monkeypatch):
    _poison_empty(monkeypatch)
    args = make_vec_inputs(*VEC_CASES[case], dtype)
    check_against_references(T.expand_vec_triton, expand_vec_torch, args, dtype, flash_rule=dtype != torch.float32)


def test_expand_vec_mixed_dtypes():
    args = make_vec_inputs(3, 4, 21, 50, "layer", True, torch.float16, coef_dtype=torch.float32)
    out, grads = _fwd_bwd(T.expand_vec_triton, args, torch.randn(4, 50))
    assert out.dtype == torch.float16
    assert [g.dtype for g in grads] == [torch.float16] + [torch.float32] * 3
    check_against_references(T.expand_vec_triton, expand_vec_torch, args, torch.float16, flash_rule=True)


# ------------------------------------------------------------------------------ registration, dispatch


def _req(args):
    return [None if a is None else a.detach().clone().requires_grad_(True) for a in args]


def test_opcheck_expand():
    for layout, res in (("layer", True), ("shared", False)):
        args = _req(make_inputs(2, 3, 9, 11, 15, 17, layout, res, torch.float32))
        torch.library.opcheck(torch.ops.ligo_fast.expand_triton.default, tuple(args))
    args = _req(make_inputs(2, 3, 9, 11, 9, 17, "layer", False, torch.float32))  # E_out None
    torch.library.opcheck(torch.ops.ligo_fast.expand_triton.default, tuple(args))


def test_opcheck_expand_backward():
    W, depth, Eo, Ei, _ = make_inputs(2, 3, 9, 11, 15, 17, "shared", False, torch.float32)
    g = torch.randn(3, 15, 17)
    for need in ((True, True, True, True), (False, True, False, True)):
        torch.library.opcheck(torch.ops.ligo_fast.expand_triton_backward.default, (g, W, depth, Eo, Ei, *need))


def test_opcheck_expand_vec():
    args = _req(make_vec_inputs(2, 3, 9, 15, "layer", True, torch.float32))
    torch.library.opcheck(torch.ops.ligo_fast.expand_vec_triton.default, tuple(args))
    b, depth, E, _ = make_vec_inputs(2, 3, 9, 15, "shared", False, torch.float32)
    g = torch.randn(3, 15)
    torch.library.opcheck(torch.ops.ligo_fast.expand_vec_triton_backward.default, (g, b, depth, E, True, True, True))


# size-1 dims (L1 = 1, L2 = 1, width 1), no growth on one side: where a real output's strides can differ from
# what the op's fake promises (a slice of a padded buffer is not contiguous when a dim has size 1).
EDGE_CASES = [(1, 3, 5, 4, 7, 4), (2, 1, 3, 6, 3, 9), (1, 1, 1, 1, 2, 3), (3, 2, 1, 5, 4, 5)]


@pytest.mark.parametrize("case", EDGE_CASES, ids=lambda c: "-".join(map(str, c)))
def test_opcheck_edge_shapes(case):
    L1, L2, o1, i1, o2, i2 = case
    for layout, res in (("layer", True), ("shared", False)):
        args = _req(make_inputs(*case, layout, res, torch.float32))
        torch.library.opcheck(torch.ops.ligo_fast.expand_triton.default, tuple(args))
        W, depth, Eo, Ei, _ = (None if a is None else a.detach() for a in args)
        g = torch.randn(L2, o2, i2)
        torch.library.opcheck(torch.ops.ligo_fast.expand_triton_backward.default, (g, W, depth, Eo, Ei, *[True] * 4))
        vargs = _req(make_vec_inputs(L1, L2, o1, o2, layout, res, torch.float32))
        torch.library.opcheck(torch.ops.ligo_fast.expand_vec_triton.default, tuple(vargs))
        b, vd, vE, _ = (None if a is None else a.detach() for a in vargs)
        vg = torch.randn(L2, o2)
        torch.library.opcheck(torch.ops.ligo_fast.expand_vec_triton_backward.default, (vg, b, vd, vE, True, True, True))


def test_torch_compile_fullgraph():
    """ligo_expand(backend="triton") inside torch.compile(fullgraph=True), forward and backward."""
    W, depth, Eo, Ei, R = _req(make_inputs(2, 3, 9, 11, 15, 17, "layer", True, torch.float32))
    b, bd, bE, _ = _req(make_vec_inputs(2, 3, 9, 15, "layer", False, torch.float32))

    def f(W, depth, Eo, Ei, R, b, bE):
        y = ops.ligo_expand(W, depth, Eo, Ei, residual=R, backend="triton")
        v = ops.ligo_expand_vec(b, depth, bE, backend="triton")
        return (y * y).sum() + (v.sin()).sum()

    torch._dynamo.reset()
    backends.load("triton")  # warm cache here; tests/test_compile.py covers a cold one (fresh process)
    compiled = torch.compile(f, fullgraph=True)
    inputs = (W, depth, Eo, Ei, R, b, bE)
    loss = compiled(*inputs)
    grads = torch.autograd.grad(loss, inputs)
    ref_inputs = [a.detach().double().requires_grad_(True) for a in inputs]
    y = expand_torch(*ref_inputs[:5])
    v = expand_vec_torch(ref_inputs[5], ref_inputs[1], ref_inputs[6])
    ref_loss = (y * y).sum() + v.sin().sum()
    ref_grads = torch.autograd.grad(ref_loss, ref_inputs)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())
    for a, r in zip(grads, ref_grads, strict=True):
        assert _rel(a, r) < 1e-5


def test_dispatch_goes_to_triton_op(monkeypatch):
    calls = {"fwd": 0, "vec": 0}
    real_fwd, real_vec = K.expand_fwd, K.expand_vec_fwd

    def fwd(*a):
        calls["fwd"] += 1
        return real_fwd(*a)

    def vec(*a):
        calls["vec"] += 1
        return real_vec(*a)

    monkeypatch.setattr(K, "expand_fwd", fwd)
    monkeypatch.setattr(K, "expand_vec_fwd", vec)
    backends._reset_for_tests()
    assert isinstance(backends.load("triton"), T.TritonBackend)
    W, depth, Eo, Ei, R = make_inputs(2, 3, 9, 11, 15, 17, "layer", True, torch.float32)
    out = ops.ligo_expand(W, depth, Eo, Ei, residual=R, backend="triton")
    v = ops.ligo_expand_vec(W[:, :, 0], depth, Eo, backend="triton")
    assert calls == {"fwd": 1, "vec": 1}
    torch.testing.assert_close(out, expand_torch(W, depth, Eo, Ei, R), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, expand_vec_torch(W[:, :, 0], depth, Eo), atol=1e-5, rtol=1e-5)
    # float64 goes to the reference, not the kernels
    ops.ligo_expand(W.double(), depth.double(), backend="triton")
    assert calls["fwd"] == 1


def test_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setattr(K, "INTERPRETED", False)
    W, depth, *_ = make_inputs(2, 3, 9, 11, 9, 11, "layer", False, torch.float32, device="cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        T.TritonBackend.expand(W, depth, None, None, None)


def test_unsupported_dtype_raises():
    W = torch.randn(2, 5, 5).to(torch.float64)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        K.expand_fwd(W, torch.randn(3, 2, dtype=torch.float64), None, None, None)


# ------------------------------------------------------------------------------------------------- GPU

GPU_CASES = {
    "bert-ish": (3, 6, 96, 160, 144, 240, "layer", True),
    "odd-shared": (5, 7, 130, 77, 197, 150, "shared", False),
    "out-first": (4, 5, 257, 129, 385, 193, "layer", True),
    "E_in-only": (2, 3, 65, 100, 65, 301, "layer", False),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("case", list(GPU_CASES), ids=list(GPU_CASES))
def test_gpu_expand(case, dtype, monkeypatch):
    _poison_empty(monkeypatch)
    args = make_inputs(*GPU_CASES[case], dtype, coef_dtype=torch.float32 if case == "odd-shared" else None)
    check_against_references(T.expand_triton, expand_torch, args, dtype, flash_rule=dtype != torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_gpu_expand_vec(dtype, monkeypatch):
    _poison_empty(monkeypatch)
    for case in ((6, 12, 512, 768, "layer", True), (3, 5, 300, 1001, "shared", False)):
        args = make_vec_inputs(*case, dtype)
        check_against_references(T.expand_vec_triton, expand_vec_torch, args, dtype, flash_rule=dtype != torch.float32)


@pytest.mark.gpu
def test_gpu_compile_and_dispatch():
    """On CUDA, backend="auto" picks Triton; ligo_expand compiles with fullgraph and matches the reference."""
    backends._reset_for_tests()
    backends.load("triton")
    args = _req(make_inputs(2, 4, 64, 96, 128, 160, "layer", True, torch.float32))
    assert isinstance(backends.resolve("auto", args[0].device), T.TritonBackend)
    f = torch.compile(
        lambda *a: ops.ligo_expand(*a[:4], residual=a[4], backend="triton").square().sum(), fullgraph=True
    )
    loss = f(*args)
    grads = torch.autograd.grad(loss, args)
    ref_args = [a.detach().double().requires_grad_(True) for a in args]
    ref_loss = expand_torch(*ref_args).square().sum()
    ref_grads = torch.autograd.grad(ref_loss, ref_args)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())
    for a, r in zip(grads, ref_grads, strict=True):
        assert _rel(a, r) < 1e-5
