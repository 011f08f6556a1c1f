"""The C++/CUDA extension (csrc/, ligo_fast/extension.py): what is particular to its ops.

Numbers for every case and dtype are in tests/test_ops.py; here: the multi-tensor vector op's bookkeeping, opcheck
(every case, size-1 shapes included), the ops' own error messages, the CUDA sources' compile check, and the GPU.
The extension is built once per session (prebuilt ``ligo_fast._C`` or a JIT build, ~30 s the first time).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _checks import (
    MATRIX_CASES,
    VEC_CASES,
    assert_close_to_oracle,
    check_op,
    expand_inputs,
    oracle_expand,
    oracle_expand_vec,
    problem_dtype,
    vec_inputs,
)

from ligo_fast import backends, ops
from ligo_fast import extension as ext

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
LIB = torch.ops.ligo_fast


@pytest.fixture(scope="module", autouse=True)
def _built():
    ext.load_library()


def _expand_args(case, dtype=torch.float64, device="cpu"):
    return expand_inputs(case, dtype, device=device)


def _vec_args(case, dtype=torch.float64, device="cpu"):
    return vec_inputs(case, dtype, device=device)


def _leaves(args, dtype=None):
    return [None if t is None else (t if dtype is None else t.to(dtype)).detach().requires_grad_(True) for t in args]


def _ragged_problems(dtype=torch.float64, device="cpu"):
    return [_leaves(_vec_args(c, device=device), dtype) for c in VEC_CASES.values()]


def test_multi_partial_use_and_mixed_problem_dtypes():
    """Only some outputs reach the loss; problems of different dtypes in one call; a problem with mixed dtypes."""
    p0 = _leaves(_vec_args((2, 3, 6, 9, "layer", True)), torch.float32)
    p1 = _leaves(_vec_args((3, 2, 5, 8, "shared", False)), torch.bfloat16)
    b, d, E, r = _vec_args((2, 4, 7, 10, "layer", True))
    p2 = _leaves([b.bfloat16(), d.float(), E.float(), r.float()])
    problems = [p0, p1, p2]
    outs = ops.ligo_expand_vec_multi([tuple(p) for p in problems], backend="cpp")
    assert [o.dtype for o in outs] == [torch.float32, torch.bfloat16, torch.bfloat16]
    ref_problems = [_leaves(p, torch.float64) for p in problems]
    expected = [oracle_expand_vec(*p) for p in ref_problems]
    for o, e, p in zip(outs, expected, problems, strict=True):
        assert_close_to_oracle(o.detach(), e.detach(), problem_dtype(p))
    ins = [(t, problem_dtype(p)) for p in problems for t in p if t is not None]
    grads = torch.autograd.grad([outs[0].sum(), outs[2].float().sum()], [t for t, _ in ins], allow_unused=True)
    ref_ins = [t for p in ref_problems for t in p if t is not None]
    ref_grads = torch.autograd.grad([expected[0].sum(), expected[2].sum()], ref_ins, allow_unused=True)
    for (t, dtype), g, g_ref in zip(ins, grads, ref_grads, strict=True):
        if g_ref is None:  # problem 1 does not reach the loss
            assert g is None or not g.any()
            continue
        assert g.dtype == t.dtype
        assert_close_to_oracle(g, g_ref, dtype)


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


@pytest.mark.cpu_only  # opcheck / nvcc: nothing a GPU adds; gpu_check.sh deselects it
@pytest.mark.parametrize("case", list(MATRIX_CASES), ids=list(MATRIX_CASES))
def test_opcheck_expand(case):  # every case: size-1 dims are where real and fake strides can disagree
    args = _leaves(_expand_args(MATRIX_CASES[case]), torch.float32)
    _opcheck(LIB.expand_cpp.default, tuple(args))
    W, depth, E_out, E_in, _ = (None if a is None else a.detach() for a in args)
    _, _, _, _, o2, i2, _, _ = MATRIX_CASES[case]
    _opcheck(LIB.expand_cpp_backward.default, (torch.randn(depth.shape[0], o2, i2), W, depth, E_out, E_in))


@pytest.mark.cpu_only  # opcheck / nvcc: nothing a GPU adds; gpu_check.sh deselects it
@pytest.mark.parametrize("case", list(VEC_CASES), ids=list(VEC_CASES))
def test_opcheck_vec_single(case):
    b, d, E, r = _leaves(_vec_args(VEC_CASES[case]), torch.float32)
    _opcheck(LIB.expand_vec_cpp.default, (b, d, E, r))
    grad = torch.randn(VEC_CASES[case][1], VEC_CASES[case][3])
    _opcheck(LIB.expand_vec_cpp_backward.default, (grad, b.detach(), d.detach(), None if E is None else E.detach()))


@pytest.mark.cpu_only  # opcheck / nvcc: nothing a GPU adds; gpu_check.sh deselects it
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
    W, depth, E_out, E_in, _ = _expand_args((2, 3, 4, 5, 6, 7, "layer", False))
    with pytest.raises(RuntimeError, match=r"E_out has dtype Float but W has dtype Double"):
        LIB.expand_cpp(W, depth, E_out.float(), E_in, None)
    b, d, E, r = _vec_args((2, 3, 4, 6, "layer", True))
    with pytest.raises(RuntimeError, match=r"depth\[1\] has dtype Half but b\[1\] has dtype Double"):
        LIB.multi_expand_vec([b, b], [d, d.half()], [], [], [-1, -1], [-1, -1])
    with pytest.raises(RuntimeError, match=r"E_out\[1\] has dtype Float but b\[1\] has dtype Double"):
        LIB.multi_expand_vec([b, b], [d, d], [E.float()], [], [-1, 0], [-1, -1])
    with pytest.raises(RuntimeError, match=r"unsupported dtype"):
        LIB.expand_vec_cpp(b.long(), d.long(), None, None)


def test_error_devices():
    """A second device faked with 'meta': the ops and the public entry points name the tensors and devices."""
    W, depth, E_out, E_in, _ = _expand_args((2, 3, 4, 5, 6, 7, "layer", False))
    with pytest.raises(RuntimeError, match=r"one device.*E_in on meta"):
        LIB.expand_cpp(W, depth, E_out, E_in.to("meta"), None)
    b, d, E, r = _vec_args((2, 3, 4, 6, "layer", True))
    with pytest.raises(RuntimeError, match=r"one device"):
        LIB.multi_expand_vec([b, b], [d, d.to("meta")], [], [], [-1, -1], [-1, -1])
    with pytest.raises(ValueError, match=r"one device"):
        ops.ligo_expand_vec(b, d, E.to("meta"), backend="cpp")


def test_error_shapes():
    W, depth, E_out, E_in, res = _expand_args((2, 3, 4, 5, 6, 7, "layer", True))
    with pytest.raises(RuntimeError, match=r"E_in has 4 columns but the small size is 5"):
        LIB.expand_cpp(W, depth, E_out, E_in[..., :4], None)
    with pytest.raises(RuntimeError, match=r"residual must be \(3, 6, 7\)"):
        LIB.expand_cpp(W, depth, E_out, E_in, res[:, :5])
    with pytest.raises(RuntimeError, match=r"depth must be \(L2, L1=2\)"):
        LIB.expand_cpp(W, depth[:, :1], E_out, E_in, None)
    b, d, E, r = _vec_args((2, 3, 4, 6, "layer", True))
    with pytest.raises(RuntimeError, match=r"E_out\[0\] has 2 layers but depth has L2=3"):
        LIB.multi_expand_vec([b], [d], [E[:2]], [], [0], [-1])
    with pytest.raises(RuntimeError, match=r"E_out_index\[0\]=1 is out of range"):
        LIB.multi_expand_vec([b], [d], [E], [], [1], [-1])
    with pytest.raises(RuntimeError, match=r"got 2 b tensors but 1 depth"):
        LIB.multi_expand_vec([b, b], [d], [], [], [-1, -1], [-1, -1])


@pytest.mark.cpu_only  # opcheck / nvcc: nothing a GPU adds; gpu_check.sh deselects it
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


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gpu_multi_vec(dtype):
    assert ext.has_cuda_kernels(), "extension built without CUDA kernels"
    big = [(6, 12, 2048, 3072, "layer", True), (6, 12, 512, 768, "shared", False), (3, 2, 1500, 1501, "layer", True)]
    problems = [_vec_args(c, dtype, device="cuda") for c in [*VEC_CASES.values(), *big]]
    sizes = [len(p) for p in problems]

    def split(flat_args):
        it = iter(flat_args)
        return [tuple(next(it) for _ in range(n)) for n in sizes]

    def multi(*flat_args):
        outs = ops.ligo_expand_vec_multi(split(flat_args), backend="cpp")
        assert all(o.device.type == "cuda" and o.dtype == dtype for o in outs)
        return torch.cat([o.flatten() for o in outs])

    def oracle(*flat_args):
        return torch.cat([oracle_expand_vec(*p).flatten() for p in split(flat_args)])

    check_op(multi, oracle, [t for p in problems for t in p], dtype)


@pytest.mark.gpu
def test_gpu_expand_and_errors():
    check_op(
        lambda W, d, Eo, Ei, R: ops.ligo_expand(W, d, Eo, Ei, residual=R, backend="cpp"),
        oracle_expand,
        _expand_args((3, 5, 64, 96, 100, 130, "layer", True), device="cuda"),
    )
    b, d, E, r = _vec_args((2, 3, 4, 6, "layer", True), device="cuda")
    with pytest.raises(RuntimeError, match=r"depth\[0\] is on cpu but b\[0\] is on cuda"):
        LIB.multi_expand_vec([b], [d.cpu()], [E], [r], [0], [0])
    with pytest.raises(RuntimeError, match=r"dtype"):
        LIB.multi_expand_vec([b], [d.float()], [E], [r], [0], [0])
