"""Triton backend: what is particular to its custom ops (numbers for every case and dtype: tests/test_ops.py).

Both association orders, strided inputs, gradient subsets, the backward op's unwanted outputs, torch.library's
opcheck (size-1 shapes included), torch.compile, dispatch. On CPU the kernels run through Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1); the ``gpu`` tests repeat the numbers on CUDA at model-like sizes in
bf16/fp16/fp32, by the rule of tests/_checks.py.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from _checks import DEV, check_op, expand_inputs, oracle_expand, oracle_expand_vec, vec_inputs  # noqa: E402

from ligo_fast import backends, ops  # noqa: E402
from ligo_fast import triton_ops as T  # noqa: E402
from ligo_fast.kernels import expand as K  # noqa: E402
from ligo_fast.reference import expand_torch, expand_vec_torch  # noqa: E402


def make_inputs(L1, L2, o1, i1, o2, i2, layout, residual, dtype=torch.float32, device=DEV):
    return expand_inputs((L1, L2, o1, i1, o2, i2, layout, residual), dtype, device=device)


def make_vec_inputs(L1, L2, o1, o2, layout, residual, dtype=torch.float32, device=DEV):
    return vec_inputs((L1, L2, o1, o2, layout, residual), dtype, device=device)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _upcast(args, dt=torch.float64):
    return [None if a is None else a.detach().to(dt) for a in args]


def _fwd_bwd(fn, args, grad):
    leaves = [None if a is None else a.detach().clone().requires_grad_(True) for a in args]
    out = fn(*leaves)
    present = [x for x in leaves if x is not None]
    grads = torch.autograd.grad(out, present, grad.to(out.dtype))
    return out.detach(), grads


# --------------------------------------------------------------------------------------------- matrices


def test_expand_orientations_agree():
    """Both association orders (o1 < i1 and o1 > i1) give the reference; mirrored inputs give mirrored output."""
    W, depth, Eo, Ei, R = make_inputs(2, 3, 13, 29, 30, 47, "layer", True)
    out = T.expand_triton(W, depth, Eo, Ei, R)
    out_t = T.expand_triton(W.mT.contiguous(), depth, Ei, Eo, R.mT.contiguous())
    torch.testing.assert_close(out_t.mT, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expand_torch(W, depth, Eo, Ei, R), atol=1e-5, rtol=1e-5)


def test_expand_non_contiguous():
    """Transposed views for W, E and the incoming gradient: the kernels take strides, no copies needed."""
    W, depth, Eo, Ei, R = make_inputs(2, 3, 17, 23, 30, 35, "layer", True)
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
    args = make_inputs(2, 3, 19, 13, 31, 29, "shared", True)
    leaves = [a.detach().clone().requires_grad_(i == which) for i, a in enumerate(args)]
    out = T.expand_triton(*leaves)
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, leaves[which], g)
    ref_leaves = [a.detach().double().requires_grad_(i == which) for i, a in enumerate(args)]
    (ref,) = torch.autograd.grad(expand_torch(*ref_leaves), ref_leaves[which], g.double())
    assert _rel(got, ref) < 1e-5


def test_expand_backward_op_skips_unwanted():
    W, depth, Eo, Ei, _ = make_inputs(2, 3, 9, 11, 15, 17, "layer", False)
    g = torch.randn(3, 15, 17)
    dW, dd, dEo, dEi = torch.ops.ligo_fast.expand_triton_backward(g, W, depth, Eo, Ei, False, True, False, True)
    assert dW.numel() == 0 and dEo.numel() == 0
    assert dd.shape == depth.shape and dEi.shape == Ei.shape
    ref = [a.double().requires_grad_(True) for a in (W, depth, Eo, Ei)]
    grads = torch.autograd.grad(expand_torch(*ref), ref, g.double())
    assert _rel(dd, grads[1]) < 1e-5 and _rel(dEi, grads[3]) < 1e-5


# ---------------------------------------------------------------------------------------------- vectors


# ------------------------------------------------------------------------------ registration, dispatch


def _req(args):
    return [None if a is None else a.detach().clone().requires_grad_(True) for a in args]


@pytest.mark.cpu_only  # opcheck / nvcc: nothing a GPU adds; gpu_check.sh deselects it
def test_opcheck_expand():
    for layout, res in (("layer", True), ("shared", False)):
        args = _req(make_inputs(2, 3, 9, 11, 15, 17, layout, res))
        torch.library.opcheck(torch.ops.ligo_fast.expand_triton.default, tuple(args))
    args = _req(make_inputs(2, 3, 9, 11, 9, 17, "layer", False, torch.float32))  # E_out None
    torch.library.opcheck(torch.ops.ligo_fast.expand_triton.default, tuple(args))


@pytest.mark.cpu_only  # opcheck / nvcc: nothing a GPU adds; gpu_check.sh deselects it
def test_opcheck_expand_backward():
    W, depth, Eo, Ei, _ = make_inputs(2, 3, 9, 11, 15, 17, "shared", False)
    g = torch.randn(3, 15, 17)
    for need in ((True, True, True, True), (False, True, False, True)):
        torch.library.opcheck(torch.ops.ligo_fast.expand_triton_backward.default, (g, W, depth, Eo, Ei, *need))


@pytest.mark.cpu_only  # opcheck / nvcc: nothing a GPU adds; gpu_check.sh deselects it
def test_opcheck_expand_vec():
    args = _req(make_vec_inputs(2, 3, 9, 15, "layer", True))
    torch.library.opcheck(torch.ops.ligo_fast.expand_vec_triton.default, tuple(args))
    b, depth, E, _ = make_vec_inputs(2, 3, 9, 15, "shared", False)
    g = torch.randn(3, 15)
    torch.library.opcheck(torch.ops.ligo_fast.expand_vec_triton_backward.default, (g, b, depth, E, True, True, True))


# size-1 dims (L1 = 1, L2 = 1, width 1), no growth on one side: where a real output's strides can differ from
# what the op's fake promises (a slice of a padded buffer is not contiguous when a dim has size 1).
EDGE_CASES = [(1, 3, 5, 4, 7, 4), (2, 1, 3, 6, 3, 9), (1, 1, 1, 1, 2, 3), (3, 2, 1, 5, 4, 5)]


@pytest.mark.cpu_only  # opcheck / nvcc: nothing a GPU adds; gpu_check.sh deselects it
@pytest.mark.parametrize("case", EDGE_CASES, ids=lambda c: "-".join(map(str, c)))
def test_opcheck_edge_shapes(case):
    L1, L2, o1, i1, o2, i2 = case
    for layout, res in (("layer", True), ("shared", False)):
        args = _req(make_inputs(*case, layout, res))
        torch.library.opcheck(torch.ops.ligo_fast.expand_triton.default, tuple(args))
        W, depth, Eo, Ei, _ = (None if a is None else a.detach() for a in args)
        g = torch.randn(L2, o2, i2)
        torch.library.opcheck(torch.ops.ligo_fast.expand_triton_backward.default, (g, W, depth, Eo, Ei, *[True] * 4))
        vargs = _req(make_vec_inputs(L1, L2, o1, o2, layout, res))
        torch.library.opcheck(torch.ops.ligo_fast.expand_vec_triton.default, tuple(vargs))
        b, vd, vE, _ = (None if a is None else a.detach() for a in vargs)
        vg = torch.randn(L2, o2)
        torch.library.opcheck(torch.ops.ligo_fast.expand_vec_triton_backward.default, (vg, b, vd, vE, True, True, True))


def test_torch_compile_fullgraph():
    """ligo_expand(backend="triton") inside torch.compile(fullgraph=True), forward and backward."""
    W, depth, Eo, Ei, R = _req(make_inputs(2, 3, 9, 11, 15, 17, "layer", True))
    b, bd, bE, _ = _req(make_vec_inputs(2, 3, 9, 15, "layer", False))

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
    assert isinstance(backends.load("triton"), T.TritonBackend)
    W, depth, Eo, Ei, R = make_inputs(2, 3, 9, 11, 15, 17, "layer", True)
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
    W, depth, *_ = make_inputs(2, 3, 9, 11, 9, 11, "layer", False, device="cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        T.TritonBackend().expand(W, depth, None, None, None)


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
def test_gpu_expand(case, dtype, poison_empty):
    args = expand_inputs(GPU_CASES[case], dtype, coef_dtype=torch.float32 if case == "odd-shared" else None)
    check_op(T.expand_triton, oracle_expand, args)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_gpu_expand_vec(dtype, poison_empty):
    for case in ((6, 12, 512, 768, "layer", True), (3, 5, 300, 1001, "shared", False)):
        check_op(T.expand_vec_triton, oracle_expand_vec, vec_inputs(case, dtype))


@pytest.mark.gpu
def test_gpu_compile_and_dispatch():
    """On CUDA, backend="auto" picks Triton; ligo_expand compiles with fullgraph and matches the reference."""
    backends.load("triton")
    args = _req(make_inputs(2, 4, 64, 96, 128, 160, "layer", True))
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
