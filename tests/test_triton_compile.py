"""The Triton kernels compiled for Hopper (sm_90) without a GPU, and the autotuning space built on what that shows.

The interpreter tests (test_triton_ops.py) check the kernels' numbers; these check that every variant the
launchers produce lowers to sm_90 code (PTX + cubin through Triton's own ptxas), that 16-bit and tf32 dots run on
wgmma, that the GEMM's dots sit in one software-pipelined loop (no drain between layers or M tiles), and that no
variant asks for more shared memory than a Hopper block may have.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

from ligo_fast.kernels import tuning

ROOT = Path(__file__).resolve().parent.parent


def _rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| kernel,")
    ]


def test_compile_every_launch_variant_for_sm90(tmp_path):
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        get_ptxas(90).path  # noqa: B018 - raises when the NVIDIA backend has no ptxas
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Triton's NVIDIA backend is not usable here: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compile for real, not from an earlier run's cache
    out = tmp_path / "table.md"
    script = ROOT / "benchmarks" / "triton_compile_check.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--jobs", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _rows(out.read_text())
    groups = {"group_mix", "group_gemm", "group_layer_grad", "group_depth_sum"}  # kernels/group.py
    assert {r[0].split()[0] for r in rows} == {"mix", "gemm", "layer_grad", "layer_grad_dot", "vec"} | groups
    for label, _n, units, regs, spill, smem, loop, status in rows:
        assert status == "ok", label
        assert 0 < int(regs) <= 255 and float(smem) <= 227, label
        tensor_cores = "bfloat16" in label or "PRECISION=tf32" in label  # tf32x3 included
        if label.startswith("gemm") and tensor_cores:
            assert units == "wgmma", label  # Hopper's warpgroup MMA
        if label.startswith("gemm"):  # one software-pipelined loop per program over (M tile,) layer and K tile
            # ("no loop": K = 1 specialised to a constant, the one-trip loop folded away)
            assert set(loop.split("; ")) <= {"depth 1, pipelined", "no loop"}, (label, loop)
        if label.startswith("layer_grad_dot") and tensor_cores:
            assert units in ("wgmma", "mma.sync"), label  # 16-row tiles: warp-level MMA
            assert int(spill) == 0, label
        if label.startswith("gemm float32") and "PRECISION=ieee" in label:
            assert units == "fma", label  # exact fp32 stays off the tensor cores
        if label.startswith("group_gemm") and tensor_cores:
            assert units == "wgmma", label
        if label.startswith("group_gemm") and "ALIGNED=1" in label:  # 16-byte vectors: pipelined, no spills
            assert loop == "depth 1, pipelined" and int(spill) == 0, (label, loop, spill)


def _cfg_names(configs) -> set[tuple[int, int, int, int]]:
    return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps) for c in configs}


def test_prune_keeps_spilling_tiles_out():
    big = dict(M=3072, N=4096, K=1024)
    plain16 = _cfg_names(tuning.prune_gemm_configs(tuning.gemm_configs(), big, DOT=2, STRIP=False, REDUCE_L=False))
    strip16 = _cfg_names(tuning.prune_gemm_configs(tuning.gemm_configs(), big, DOT=2, STRIP=True, REDUCE_L=False))
    reduce16 = _cfg_names(tuning.prune_gemm_configs(tuning.gemm_configs(), big, DOT=1, STRIP=False, REDUCE_L=True))
    ieee = _cfg_names(tuning.prune_gemm_configs(tuning.gemm_configs(), big, DOT=0, PRECISION="ieee"))
    tf32 = _cfg_names(tuning.prune_gemm_configs(tuning.gemm_configs(), big, DOT=0, PRECISION="tf32"))
    # the 128-accumulators-per-thread tiles stay for the plain kernel, leave the STRIP / REDUCE_L variants
    assert {(128, 256, 64, 8), (128, 128, 64, 4)} <= plain16
    assert strip16 == reduce16 == plain16 - {(128, 256, 64, 8), (128, 128, 64, 4)}
    assert all(bm * bn <= 64 * 32 * w for bm, bn, _bk, w in strip16)
    assert ieee == {(64, 64, 32, 4)} and tf32 == {(64, 64, 32, 4), (128, 64, 32, 4)}
    # small problems: never everything pruned
    tiny = tuning.prune_gemm_configs(tuning.gemm_configs(), dict(M=8, N=8, K=8), DOT=2, STRIP=True)
    assert len(tiny) >= 1
    assert isinstance(tiny[0], triton.Config)
