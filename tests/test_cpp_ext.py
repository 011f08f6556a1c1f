"""The C++/CUDA extension (csrc/, ligo_fast/extension.py) against the pure-PyTorch path.

The extension is built once per session (prebuilt ``ligo_fast._C`` or a JIT build, ~30 s the first time).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _checks import TOLERANCES, check_low_precision

from ligo_fast import backends, ops, reference
from ligo_fast import extension as ext

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
LIB = torch.ops.ligo_fast


@pytest.fixture(scope="module", autouse=True)
def _built():
    ext.load_library()


def _rand(*shape, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


def _width(L2, small, large, shared, device="cpu"):
    if large == small:
        return None
    return _rand(large - small, small, device=device) if shared else _rand(L2, large - small, small, device=device)


def _expand_args(L1, L2, o1, i1, o2, i2, shared, residual, device="cpu"):
    return [
        _rand(L1, o1, i1, device=device),
        _rand(L2, L1, device=device),
        _width(L2, o1, o2, shared, device),
        _width(L2, i1, i2, shared, device),
        _rand(L2, o2, i2, device=device) if residual else None,
    ]


def _vec_args(L1, L2, o1, o2, shared, residual, device="cpu"):
    return [
        _rand(L1, o1, device=device),
        _rand(L2, L1, device=device),
        _width(L2, o1, o2, shared, device),
        _rand(L2, o2, device=device) if residual else None,
    ]


def _leaves(args, dtype=None):
    out = []
    for t in args:
        if t is None:
            out.append(None)
        else:
            out.append((t if dtype is None else t.to(dtype)).detach().requires_grad_(True))
    return out


def _grads(outs, ins, seed=1):
    """Gradients of sum(out * fixed random weights) w.r.t. the non-None inputs."""
    gen = torch.Generator().manual_seed(seed)
    outs = outs if isinstance(outs, list | tuple) else [outs]
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype) for o in outs]
    present = [t for t in ins if t is not None]
    return torch.autograd.grad(outs, present, weights)


# (L1, L2, o1, i1, o2, i2, shared E, residual): odd sizes, both expansion orders, None sides, L1 = 1, L2 = 1
EXPAND_CASES = [
    (3, 5, 7, 9, 11, 13, False, False),  # o1 < i1: in-dim first
    (2, 4, 9, 5, 12, 8, True, True),  # o1 > i1: out-dim first, shared E
    (1, 3, 6, 6, 10, 9, False, True),  # L1 = 1
    (3, 1, 5, 4, 7, 6, True, False),  # L2 = 1
    (2, 3, 5, 7, 5, 10, False, True),  # E_out None
    (2, 3, 8, 3, 13, 3, True, False),  # E_in None, depth mix written in place
    (2, 2, 4, 4, 4, 4, False, True),  # no width growth
    (1, 1, 1, 1, 2, 3, False, False),  # size-1 everything
]


@pytest.mark.parametrize("case", EXPAND_CASES, ids=lambda c: "-".join(map(str, c)))
def test_expand_matches_reference_float64(case):
    *dims, shared, residual = case
    args = _leaves(_expand_args(*dims, shared, residual))
    ref_args = _leaves(args)
    out = ops.ligo_expand(*args[:4], residual=args[4], backend="cpp")
    expected = reference.expand_torch(*ref_args)
    assert out.dtype == torch.float64 and out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(_grads(out, args), _grads(expected, ref_args), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(("dtype", "atol"), TOLERANCES, ids=lambda v: str(v))
@pytest.mark.parametrize("case", EXPAND_CASES[:3], ids=lambda c: "-".join(map(str, c)))
def test_expand_dtypes(case, dtype, atol):
    *dims, shared, residual = case
    base = _expand_args(*dims, shared, residual)
    cpp_in, torch_in, oracle_in = _leaves(base, dtype), _leaves(base, dtype), _leaves(base)
    cpp_out = ops.ligo_expand(*cpp_in[:4], residual=cpp_in[4], backend="cpp")
    torch_out = ops.ligo_expand(*torch_in[:4], residual=torch_in[4], backend="torch")
    oracle = reference.expand_torch(*oracle_in)
    assert cpp_out.dtype == dtype
    check_low_precision(cpp_out, torch_out, oracle, atol)
    grads = zip(_grads(cpp_out, cpp_in), _grads(torch_out, torch_in), _grads(oracle, oracle_in), strict=True)
    for g_cpp, g_torch, g_oracle in grads:
        assert g_cpp.dtype == dtype
        check_low_precision(g_cpp, g_torch, g_oracle, atol)


def test_expand_mixed_dtypes_follow_reference():
    """bf16 weights with float32 operator parameters: cast like the reference, gradients in each input's dtype."""
    W, depth, E_out, E_in, res = _expand_args(2, 3, 6, 5, 9, 7, False, True)
    args = _leaves([W.bfloat16(), depth.float(), E_out.float(), E_in.float(), res.float()])
    ref_args = _leaves(args)
    out = ops.ligo_expand(*args[:4], residual=args[4], backend="cpp")
    expected = reference.expand_torch(*ref_args)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)
    for a, g, g_ref in zip(args, _grads(out, args), _grads(expected, ref_args), strict=True):
        assert g.dtype == a.dtype
        torch.testing.assert_close(g, g_ref, rtol=2e-2, atol=2e-2)


# (L1, L2, o1, o2, shared E, residual)
VEC_CASES = [
    (3, 5, 7, 11, False, True),
    (2, 4, 9, 12, True, False),
    (1, 1, 1, 1, False, False),
    (4, 2, 5, 5, False, True),
    (2, 3, 3, 4, True, True),
    (1, 6, 1, 3, False, False),
    (5, 1, 130, 197, True, True),
]


@pytest.mark.parametrize("case", VEC_CASES, ids=lambda c: "-".join(map(str, c)))
def test_expand_vec_matches_reference_float64(case):
    args = _leaves(_vec_args(*case))
    ref_args = _leaves(args)
    out = ops.ligo_expand_vec(*args[:3], residual=args[3], backend="cpp")
    expected = reference.expand_vec_torch(*ref_args)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(_grads(out, args), _grads(expected, ref_args), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(("dtype", "atol"), TOLERANCES, ids=lambda v: str(v))
def test_expand_vec_dtypes(dtype, atol):
    base = _vec_args(3, 4, 37, 61, False, True)
    cpp_in, torch_in, oracle_in = _leaves(base, dtype), _leaves(base, dtype), _leaves(base)
    cpp_out = ops.ligo_expand_vec(*cpp_in[:3], residual=cpp_in[3], backend="cpp")
    torch_out = ops.ligo_expand_vec(*torch_in[:3], residual=torch_in[3], backend="torch")
    oracle = reference.expand_vec_torch(*oracle_in)
    check_low_precision(cpp_out, torch_out, oracle, atol)
    grads = zip(_grads(cpp_out, cpp_in), _grads(torch_out, torch_in), _grads(oracle, oracle_in), strict=True)
    for g_cpp, g_torch, g_oracle in grads:
        check_low_precision(g_cpp, g_torch, g_oracle, atol)


def _ragged_problems(dtype=torch.float64, device="cpu"):
    probs = [_vec_args(*c, device=device) for c in VEC_CASES]
    return [_leaves(p, dtype) for p in probs]


def test_multi_ragged_forward_backward_float64():
    problems = _ragged_problems()
    ref_problems = [_leaves(p) for p in problems]
    outs = ops.ligo_expand_vec_multi([tuple(p) for p in problems], backend="cpp")
    expected = [reference.expand_vec_torch(*p) for p in ref_problems]
    assert len(outs) == len(problems)
    for o, e in zip(outs, expected, strict=True):
        torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-12)
    ins = [t for p in problems for t in p]
    ref_ins = [t for p in ref_problems for t in p]
    for g, g_ref in zip(_grads(outs, ins), _grads(expected, ref_ins), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-11, atol=1e-11)


def test_multi_partial_use_and_mixed_problem_dtypes():
    """Only some outputs reach the loss; problems of different dtypes in one call; a problem with mixed dtypes."""
    p0 = _leaves(_vec_args(2, 3, 6, 9, False, True), torch.float32)
    p1 = _leaves(_vec_args(3, 2, 5, 8, True, False), torch.bfloat16)
    b, d, E, r = _vec_args(2, 4, 7, 10, False, True)
    p2 = _leaves([b.bfloat16(), d.float(), E.float(), r.float()])
    problems = [p0, p1, p2]
    outs = ops.ligo_expand_vec_multi([tuple(p) for p in problems], backend="cpp")
    assert [o.dtype for o in outs] == [torch.float32, torch.bfloat16, torch.bfloat16]
    ref_problems = [_leaves(p) for p in problems]
    expected = [reference.expand_vec_torch(*p) for p in ref_problems]
    for o, e in zip(outs, expected, strict=True):
        torch.testing.assert_close(o, e, rtol=2e-2, atol=2e-2)
    used = [outs[0], outs[2]]
    ins = [t for t in p0 + p1 + p2 if t is not None]
    grads = torch.autograd.grad([u.float().sum() for u in used], ins, allow_unused=True)
    ref_ins = [t for p in ref_problems for t in p if t is not None]
    ref_grads = torch.autograd.grad([expected[0].sum(), expected[2].float().sum()], ref_ins, allow_unused=True)
    for t, g, g_ref in zip(ins, grads, ref_grads, strict=True):
        if g_ref is None:  # problem 1 does not reach the loss
            assert g is None or not g.any()
            continue
        assert g.dtype == t.dtype
        torch.testing.assert_close(g.double(), g_ref.double(), rtol=2e-2, atol=2e-2)


def test_multi_empty_and_single_call():
    backend = backends.load("cpp")
    assert backend.expand_vec_multi([]) == []
    assert ops.ligo_expand_vec_multi([], backend="cpp") == []
    # One op call for the whole list (the CUDA impl then does one launch per dtype).
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.append(str(func))
            return func(*args, **(kwargs or {}))

    problems = [tuple(p) for p in _ragged_problems()]
    with Count():
        outs = backend.expand_vec_multi(problems)
    assert len(outs) == len(problems)
    assert calls.count("ligo_fast.multi_expand_vec.default") == 1, calls
    assert not any("expand_vec_cpp" in c for c in calls)


def _opcheck(op, args):
    torch.library.opcheck(
        op,
        args,
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"),
    )


@pytest.mark.parametrize("case", EXPAND_CASES, ids=lambda c: "-".join(map(str, c)))
def test_opcheck_expand(case):  # every case: size-1 dims are where real and fake strides can disagree
    *dims, shared, residual = case
    args = _leaves(_expand_args(*dims, shared, residual), torch.float32)
    _opcheck(LIB.expand_cpp.default, tuple(args))
    W, depth, E_out, E_in, _ = (None if a is None else a.detach() for a in args)
    grad = torch.randn(depth.shape[0], dims[4], dims[5])
    _opcheck(LIB.expand_cpp_backward.default, (grad, W, depth, E_out, E_in))


@pytest.mark.parametrize("case", VEC_CASES, ids=lambda c: "-".join(map(str, c)))
def test_opcheck_vec_single(case):
    b, d, E, r = _leaves(_vec_args(*case), torch.float32)
    _opcheck(LIB.expand_vec_cpp.default, (b, d, E, r))
    grad = torch.randn(case[1], case[3])
    _opcheck(LIB.expand_vec_cpp_backward.default, (grad, b.detach(), d.detach(), None if E is None else E.detach()))


def test_opcheck_vec():
    problems = _ragged_problems(torch.float32)
    bs, ds = [p[0] for p in problems], [p[1] for p in problems]
    Es = [p[2] for p in problems if p[2] is not None]
    rs = [p[3] for p in problems if p[3] is not None]
    e_idx = [-1 if p[2] is None else sum(q[2] is not None for q in problems[:i]) for i, p in enumerate(problems)]
    r_idx = [-1 if p[3] is None else sum(q[3] is not None for q in problems[:i]) for i, p in enumerate(problems)]
    _opcheck(LIB.multi_expand_vec.default, (bs, ds, Es, rs, e_idx, r_idx))
    grads = [torch.randn(d.shape[0], b.shape[1] + (0 if e is None else e.shape[-2])) for b, d, e, _ in problems]
    det = [t.detach() for t in Es]
    _opcheck(
        LIB.multi_expand_vec_backward.default, (grads, [b.detach() for b in bs], [d.detach() for d in ds], det, e_idx)
    )


def test_error_mismatched_dtypes():
    W, depth, E_out, E_in, _ = _expand_args(2, 3, 4, 5, 6, 7, False, False)
    with pytest.raises(RuntimeError, match=r"E_out has dtype Float but W has dtype Double"):
        LIB.expand_cpp(W, depth, E_out.float(), E_in, None)
    b, d, E, r = _vec_args(2, 3, 4, 6, False, True)
    with pytest.raises(RuntimeError, match=r"depth\[1\] has dtype Half but b\[1\] has dtype Double"):
        LIB.multi_expand_vec([b, b], [d, d.half()], [], [], [-1, -1], [-1, -1])
    with pytest.raises(RuntimeError, match=r"E_out\[1\] has dtype Float but b\[1\] has dtype Double"):
        LIB.multi_expand_vec([b, b], [d, d], [E.float()], [], [-1, 0], [-1, -1])
    with pytest.raises(RuntimeError, match=r"unsupported dtype"):
        LIB.expand_vec_cpp(b.long(), d.long(), None, None)


def test_error_devices():
    """A second device faked with 'meta': the ops and the public entry points name the tensors and devices."""
    W, depth, E_out, E_in, _ = _expand_args(2, 3, 4, 5, 6, 7, False, False)
    with pytest.raises(RuntimeError, match=r"one device.*E_in on meta"):
        LIB.expand_cpp(W, depth, E_out, E_in.to("meta"), None)
    b, d, E, r = _vec_args(2, 3, 4, 6, False, True)
    with pytest.raises(RuntimeError, match=r"one device"):
        LIB.multi_expand_vec([b, b], [d, d.to("meta")], [], [], [-1, -1], [-1, -1])
    with pytest.raises(ValueError, match=r"one device"):
        ops.ligo_expand_vec(b, d, E.to("meta"), backend="cpp")


def test_error_shapes():
    W, depth, E_out, E_in, res = _expand_args(2, 3, 4, 5, 6, 7, False, True)
    with pytest.raises(RuntimeError, match=r"E_in has 4 columns but the small size is 5"):
        LIB.expand_cpp(W, depth, E_out, E_in[..., :4], None)
    with pytest.raises(RuntimeError, match=r"residual must be \(3, 6, 7\)"):
        LIB.expand_cpp(W, depth, E_out, E_in, res[:, :5])
    with pytest.raises(RuntimeError, match=r"depth must be \(L2, L1=2\)"):
        LIB.expand_cpp(W, depth[:, :1], E_out, E_in, None)
    b, d, E, r = _vec_args(2, 3, 4, 6, False, True)
    with pytest.raises(RuntimeError, match=r"E_out\[0\] has 2 layers but depth has L2=3"):
        LIB.multi_expand_vec([b], [d], [E[:2]], [], [0], [-1])
    with pytest.raises(RuntimeError, match=r"E_out_index\[0\]=1 is out of range"):
        LIB.multi_expand_vec([b], [d], [E], [], [1], [-1])
    with pytest.raises(RuntimeError, match=r"got 2 b tensors but 1 depth"):
        LIB.multi_expand_vec([b, b], [d], [], [], [-1, -1], [-1, -1])


def test_nvcc_compile_check():
    if shutil.which(os.environ.get("NVCC", "nvcc")) is None:
        pytest.skip("nvcc not installed")
    import sys

    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(ROOT / "csrc" / "check_cuda_compile.sh")], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for cu in (ROOT / "csrc" / "cuda").glob("*.cu"):
        assert f"nvcc ok  {cu.name}" in proc.stdout
    for cpp in (ROOT / "csrc" / "cuda").glob("*.cpp"):
        assert f"g++ syntax ok  {cpp.name}" in proc.stdout


# ---------------------------------------------------------------------------------------------------------------
# GPU: the CUDA kernels against the torch path (skipped without CUDA by conftest.py).

GPU_TOL = [(torch.float64, 0.0), (torch.float32, 1e-6), (torch.bfloat16, 2e-3), (torch.float16, 5e-4)]


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "atol"), GPU_TOL, ids=lambda v: str(v))
def test_gpu_multi_vec(dtype, atol):
    assert ext.has_cuda_kernels(), "extension built without CUDA kernels"
    big = [(6, 12, 2048, 3072, False, True), (6, 12, 512, 768, True, False), (3, 2, 1500, 1501, False, True)]
    cases = VEC_CASES + big
    base = [_vec_args(*c, device="cuda") for c in cases]
    cuda_in = [_leaves(p, dtype) for p in base]
    torch_in = [_leaves(p, dtype) for p in base]
    oracle_in = [_leaves(p) for p in base]
    outs = ops.ligo_expand_vec_multi([tuple(p) for p in cuda_in], backend="cpp")
    t_outs = [reference.expand_vec_torch(*p) for p in torch_in]
    oracle = [reference.expand_vec_torch(*p) for p in oracle_in]
    for o, t, e in zip(outs, t_outs, oracle, strict=True):
        assert o.device.type == "cuda" and o.dtype == dtype
        check_low_precision(o, t, e, atol + 1e-13)
    flat = lambda ps: [x for p in ps for x in p]  # noqa: E731
    for g, t, e in zip(
        _grads(outs, flat(cuda_in)), _grads(t_outs, flat(torch_in)), _grads(oracle, flat(oracle_in)), strict=True
    ):
        check_low_precision(g, t, e, atol + 1e-13)


@pytest.mark.gpu
def test_gpu_expand_and_errors():
    args = _leaves(_expand_args(3, 5, 64, 96, 100, 130, False, True, device="cuda"))
    ref_args = _leaves(args)
    out = ops.ligo_expand(*args[:4], residual=args[4], backend="cpp")
    expected = reference.expand_torch(*ref_args)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(_grads(out, args), _grads(expected, ref_args), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)
    b, d, E, r = _vec_args(2, 3, 4, 6, False, True, device="cuda")
    with pytest.raises(RuntimeError, match=r"depth\[0\] is on cpu but b\[0\] is on cuda"):
        LIB.multi_expand_vec([b], [d.cpu()], [E], [r], [0], [0])
    with pytest.raises(RuntimeError, match=r"dtype"):
        LIB.multi_expand_vec([b], [d.float()], [E], [r], [0], [0])
