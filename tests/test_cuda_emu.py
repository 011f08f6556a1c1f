"""The CUDA vector kernels (csrc/cuda/multi_vec.cu), run on CPU threads, against the float64 oracle.

No GPU is needed: csrc/cuda/emu/ compiles the kernel source as C++ against a small stand-in for the CUDA features
it uses (blocks of real threads, __syncthreads as a barrier, warp shuffles through shared slots) and drives it
with the CUDA registration's host-side plan (tile prefix sums, dtype groups, workspace). What this checks: tile
and index arithmetic, the chunked shared-memory staging, the warp reductions, stride handling, dtype rounding,
forward and backward, over problem lists that cross every tile boundary. What it cannot: timing, memory
ordering and coalescing on a real GPU (benchmarks/gpu_check.sh runs the compiled kernels there).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _checks import assert_close_to_oracle, oracle_expand_vec

from ligo_fast import extension

CSRC = Path(__file__).resolve().parent.parent / "csrc"

# tile sizes of csrc/cuda/multi_vec.h, which the problems below straddle
ID_TILE, ROWS, CHUNK, ELEM_TILE, PAIRS = 256, 32, 1024, 1024, 8


def _load_emu(name: str, build: Path, cflags: list[str], ldflags: list[str]):
    from torch.utils.cpp_extension import load

    build.mkdir(parents=True, exist_ok=True)
    return load(
        name=name,
        sources=[str(CSRC / "cuda" / "emu" / "multi_vec_emu.cpp"), str(CSRC / "ligo_ops.cpp")],
        extra_cflags=[*cflags, "-DLIGO_FAST_NO_REGISTER", "-Wno-unknown-pragmas"],
        extra_ldflags=ldflags,
        extra_include_paths=[str(CSRC / "cuda" / "emu")],
        build_directory=str(build),
    )


@pytest.fixture(scope="module")
def emu():
    return _load_emu("ligo_fast_cuda_emu", extension.cache_dir() / "cuda_emu", ["-O2", "-fopenmp"], ["-fopenmp"])


def _problems(dtype: torch.dtype, seed: int = 0) -> list[dict]:
    """Ragged problems; each dict: b, depth, E (or None), residual (or None), float64 masters of them."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    specs = [
        # L1, L2, o1, o2, E kind, residual
        (3, 5, ID_TILE + 44, ID_TILE + 44 + ROWS + 9, "layer", True),  # 2 identity tiles, 2 E-row tiles, ragged rows
        (2, 3, CHUNK + 6, CHUNK + 11, "shared", False),  # 2 shared-memory chunks, shared E summed over layers
        (1, 1, 1, 1, None, True),  # size 1, no E
        (4, 6, 9, 9, None, False),  # 24 (l, j) pairs: 3 grad-depth tiles; b as a strided view
        (2, 4, 5, 12, "layer_t", True),  # E and residual as non-contiguous views
        (5, 2, 3, 4, "shared", True),
    ]
    out = []
    for L1, L2, o1, o2, kind, res in specs:
        b = rnd(o1, L1).t() if (L1, o1) == (4, 9) else rnd(L1, o1)
        depth = rnd(L2, L1, scale=L1**-0.5)
        E = None
        if kind == "layer":
            E = rnd(L2, o2 - o1, o1, scale=o1**-0.5)
        elif kind == "layer_t":
            E = rnd(L2, o1, o2 - o1, scale=o1**-0.5).mT
        elif kind == "shared":
            E = rnd(o2 - o1, o1, scale=o1**-0.5)
        R = rnd(o2, L2).t() if (res and kind == "layer_t") else (rnd(L2, o2) if res else None)
        grad = rnd(o2, L2).t() if kind == "layer_t" else rnd(L2, o2)
        out.append(dict(b=b, depth=depth, E=E, R=R, grad=grad))
    for p in out:  # the tested dtype, keeping each view's strides
        p["cast"] = {k: None if v is None else _cast_keep_strides(v, dtype) for k, v in p.items()}
    return out


def _cast_keep_strides(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=dtype).copy_(t)


def _call_args(problems, key="cast"):
    ps = [p[key] for p in problems]
    Es = [p["E"] for p in ps if p["E"] is not None]
    Rs = [p["R"] for p in ps if p["R"] is not None]
    e_idx = [-1 if p["E"] is None else sum(q["E"] is not None for q in ps[:i]) for i, p in enumerate(ps)]
    r_idx = [-1 if p["R"] is None else sum(q["R"] is not None for q in ps[:i]) for i, p in enumerate(ps)]
    return ps, Es, Rs, e_idx, r_idx


def _oracle(p):
    """Forward and (grad_b, grad_depth, grad_E) of the float64 oracle (tests/_checks.py)."""
    dtype = torch.float64
    leaves = {k: None if p[k] is None else p[k].to(dtype).detach().requires_grad_() for k in ("b", "depth", "E")}
    R = None if p["R"] is None else p["R"].to(dtype)
    out = oracle_expand_vec(leaves["b"], leaves["depth"], leaves["E"], R)
    present = [leaves[k] for k in ("b", "depth", "E") if leaves[k] is not None]
    grads = torch.autograd.grad(out, present, p["grad"].to(dtype))
    return out.detach(), list(grads)


def _emu_run(emu, problems):
    ps, Es, Rs, e_idx, r_idx = _call_args(problems)
    outs = emu.multi_expand_vec([p["b"] for p in ps], [p["depth"] for p in ps], Es, Rs, e_idx, r_idx)
    flat = emu.multi_expand_vec_backward(
        [p["grad"] for p in ps], [p["b"] for p in ps], [p["depth"] for p in ps], Es, e_idx
    )
    n = len(ps)
    gb, gd, gE = flat[:n], flat[n : 2 * n], iter(flat[2 * n :])
    grads = [[gb[i], gd[i]] + ([next(gE)] if p["E"] is not None else []) for i, p in enumerate(ps)]
    return outs, grads


def test_float64_matches_oracle(emu):
    problems = _problems(torch.float64)
    outs, grads = _emu_run(emu, problems)
    for p, out, g in zip(problems, outs, grads, strict=True):
        ref_out, ref_grads = _oracle(p)
        assert out.dtype == torch.float64 and out.is_contiguous()
        torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
        assert len(g) == len(ref_grads)
        for a, r in zip(g, ref_grads, strict=True):
            assert a.shape == r.shape and a.dtype == torch.float64
            torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_low_precision_against_oracle(emu, dtype):
    """The rule of tests/_checks.py against the float64 oracle of the rounded inputs."""
    problems = _problems(dtype, seed=1)
    outs, grads = _emu_run(emu, problems)
    for p, out, g in zip(problems, outs, grads, strict=True):
        ref_out, ref_grads = _oracle(p["cast"])
        for a, r in zip([out, *g], [ref_out, *ref_grads], strict=True):
            assert a.dtype == dtype
            assert_close_to_oracle(a, r, dtype)


def test_mixed_dtypes_in_one_call(emu):
    """Problems of different dtypes in one list: one launch per dtype group, results back in problem order."""
    a, b = _problems(torch.float32)[:2], _problems(torch.float64, seed=2)[2:4]
    problems = [a[0], b[0], a[1], b[1]]
    outs, grads = _emu_run(emu, problems)
    assert [o.dtype for o in outs] == [torch.float32, torch.float64, torch.float32, torch.float64]
    for p, out, g in zip(problems, outs, grads, strict=True):
        ref_out, ref_grads = _oracle(p)
        tol = 1e-12 if out.dtype == torch.float64 else 1e-4
        torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol)
        for x, r in zip(g, ref_grads, strict=True):
            torch.testing.assert_close(x.double(), r, rtol=tol, atol=tol)


def test_empty_list_and_errors(emu):
    assert emu.multi_expand_vec([], [], [], [], [], []) == []
    b, d = torch.randn(2, 3), torch.randn(4, 2)
    with pytest.raises(RuntimeError, match=r"depth\[0\] must be \(L2, L1=2\)"):
        emu.multi_expand_vec([b], [d.t()], [], [], [-1], [-1])


_TSAN_RUN = """
import sys, torch
sys.path.insert(0, TESTS)
import test_cuda_emu as t
m = t._load_emu("ligo_fast_cuda_emu_tsan", BUILD, ["-O1", "-g", "-fsanitize=thread"], ["-fsanitize=thread"])
problems = t._problems(torch.float32)
outs, grads = t._emu_run(m, problems)
for p, out, g in zip(problems, outs, grads):
    ref_out, ref_grads = t._oracle(p)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-4, atol=1e-4)
print("ran", len(outs))
"""


def test_kernels_have_no_data_races(tmp_path):
    """ThreadSanitizer over the emulated kernels: the shared-memory staging and warp exchanges are fenced.

    A missing ``__syncthreads()`` after the forward's accumulation loop (the next chunk overwrites the staged
    vector while other warps still read it) is reported here as a data race. The build runs without the
    sanitizer preloaded (the compiler would run under it); the instrumented module then only loads in a process
    that starts with libtsan.
    """
    found = subprocess.run(["gcc", "-print-file-name=libtsan.so"], capture_output=True, text=True).stdout.strip()
    libtsan = Path(found)
    if not libtsan.is_absolute() or not libtsan.exists():
        pytest.skip("gcc's ThreadSanitizer runtime (libtsan) is not installed")
    build = extension.cache_dir() / "cuda_emu_tsan"
    consts = f"TESTS = {str(Path(__file__).parent)!r}\nBUILD = __import__('pathlib').Path({str(build)!r})\n"
    code = consts + textwrap.dedent(_TSAN_RUN)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    # 1. build; importing the instrumented module fails without the runtime preloaded, which is expected here
    subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert any(build.glob("*.so")), f"the instrumented emulation did not build in {build}"
    # 2. run under the sanitizer
    env.update(LD_PRELOAD=str(libtsan), TSAN_OPTIONS="halt_on_error=0 exitcode=66 report_signal_unsafe=0")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-6000:]
    assert proc.returncode == 0 and proc.stdout.startswith("ran"), proc.stdout[-2000:] + proc.stderr[-4000:]
