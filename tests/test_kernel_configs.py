"""Every autotune candidate of the Triton GEMM, in every variant, forward and backward against the float64 oracle.

``tuning.gemm_configs()`` lists what the autotuner may pick on Hopper; pruning keeps a subset per launch, so a config
that computes wrong numbers (a mask, a tile edge, a register-heavy variant) would surface only on some shape. Each test
forces one config (``tuning.force_config``) on every GEMM launch of a forward and backward that together run all four
variants: plain (the E_in stage), HAS_D (the backward's Y, S and dWm), STRIP (the residual fused into the forward's
last stage) and REDUCE_L (a shared E's gradient); the per-layer case runs per-layer E gradients in the other
orientation, the vector case the degenerate (width-1) GEMMs of the vector backward.

On a GPU (``gpu``): every config x bf16/fp16/fp32, at shapes spanning several tiles. On a CPU, under Triton's
interpreter: the largest and the smallest tile in fp32 and fp16 at small shapes (the interpreter's bf16 dots are
unreliable; tests/test_ops.py), so the forcing and the variants are exercised here too.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from _checks import DEV, check_op, expand_inputs, oracle_expand, oracle_expand_vec, vec_inputs  # noqa: E402

from ligo_fast import triton_ops as T  # noqa: E402
from ligo_fast.kernels import tuning  # noqa: E402

CONFIGS = tuning.gemm_configs()
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
INTERPRETER_SUBSET = {(0, "fp32"), (0, "fp16"), (len(CONFIGS) - 1, "fp32"), (len(CONFIGS) - 1, "fp16")}

if DEV == "cuda":  # (L1, L2, o1, i1, o2, i2, E layout, residual): several tiles of every size, odd edges
    CASES = {
        "shared-res": (3, 4, 130, 77, 261, 150, "shared", True),
        "layer": (2, 3, 197, 100, 300, 229, "layer", False),
    }
    VEC = (3, 5, 130, 300, "layer", True)
else:
    CASES = {"shared-res": (2, 3, 21, 13, 37, 30, "shared", True), "layer": (2, 3, 19, 9, 27, 20, "layer", False)}
    VEC = (2, 3, 9, 20, "layer", True)


def _name(c) -> str:
    k = c.kwargs
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']}-w{c.num_warps}-s{c.num_stages}"


PARAMS = [
    pytest.param(i, dt, id=f"{_name(c)}-{dt}", marks=() if (i, dt) in INTERPRETER_SUBSET else pytest.mark.gpu)
    for i, c in enumerate(CONFIGS)
    for dt in DTYPES
]


@pytest.mark.parametrize(("index", "dt"), PARAMS)
def test_forced_config(index, dt, poison_empty):
    dtype = DTYPES[dt]
    with tuning.force_config(CONFIGS[index]):
        for case in CASES.values():
            check_op(T.expand_triton, oracle_expand, expand_inputs(case, dtype))
        check_op(T.expand_vec_triton, oracle_expand_vec, vec_inputs(VEC, dtype))


def test_force_config_reaches_the_launch(monkeypatch):
    """The forced config is what the GEMM launcher uses (else the tests above would check the default one)."""
    from ligo_fast.kernels import expand as K

    seen = []
    real = K._ligo_gemm_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                seen.append((kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], kw["num_warps"]))
                return real[grid](*args, **kw)

            return launch

    monkeypatch.setattr(K, "_ligo_gemm_kernel", Spy())
    monkeypatch.setattr(K, "INTERPRETED", True)  # the non-autotuned path on a GPU too
    c = CONFIGS[0]
    with tuning.force_config(c):
        T.expand_triton(*expand_inputs(CASES["layer"], torch.float32))
    want = (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps)
    assert seen and all(s == want for s in seen), seen
    assert tuning.forced_config() is None


def test_degenerate_products_are_not_autotuned(monkeypatch):
    """A product with a width-1 side (all of the vector backward's) runs the heuristic config; a matrix product
    reaches the autotuner (the launchers as on a Hopper GPU, the kernels interpreted)."""
    from types import SimpleNamespace

    from ligo_fast.kernels import expand as K

    class Reached(Exception):
        pass

    class Tuned:
        def __getitem__(self, grid):
            raise Reached

    monkeypatch.setattr(K, "INTERPRETED", False)
    monkeypatch.setattr(tuning, "autotune_enabled", lambda device: True)
    monkeypatch.setattr(K, "_tuned_kernels", lambda: (Tuned(), Tuned()))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(multi_processor_count=2))
    monkeypatch.setenv("LIGO_FAST_FP32_DOT", "ieee")  # what the interpreter computes
    assert not tuning.worth_tuning(7, 1, 9) and not tuning.worth_tuning(1, 7, 9) and tuning.worth_tuning(2, 2, 2)
    check_op(T.expand_vec_triton, oracle_expand_vec, vec_inputs(VEC, torch.float32))
    with pytest.raises(Reached):
        T.expand_triton(*expand_inputs(CASES["layer"], torch.float32))
    # the operands' layout is part of the autotuning key (a transposed view tunes on its own)
    monkeypatch.undo()
    assert {"M", "N", "K", "s_am", "s_ak", "s_bk", "s_bn"} <= set(K._tuned_kernels()[0].keys)


def test_fp32_dot_precision(monkeypatch):
    """float32 dots: tf32x3 on the tensor cores by default, tf32 when torch allows it, ieee on request or when
    interpreted."""
    monkeypatch.delenv("LIGO_FAST_FP32_DOT", raising=False)
    assert tuning.fp32_precision(True) == "ieee"
    matmul, tf32 = torch.backends.cuda.matmul, torch.backends.cuda.matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        assert tuning.fp32_precision(False) == "tf32x3"
        matmul.allow_tf32 = True
        assert tuning.fp32_precision(False) == "tf32"
    finally:
        matmul.allow_tf32 = tf32
    monkeypatch.setenv("LIGO_FAST_FP32_DOT", "ieee")
    assert tuning.fp32_precision(False) == "ieee"


def test_layer_split():
    """Split-K over layers for a shared-E gradient: about one program per SM when the output has few tiles."""
    assert tuning.layer_split(12, 256, 512, 132) == 12  # BERT's E_out gradient: 8 tiles, 12 layers -> 12 runs
    assert tuning.layer_split(12, 1024, 2048, 132) == 2  # 128 tiles: two runs fill 132 SMs
    assert tuning.layer_split(32, 4096, 4096, 132) == 1  # 1024 tiles fill the GPU
    assert tuning.layer_split(1, 8, 8, 132) == 1
    assert tuning.layer_split(32, 1024, 1024, 132) == 3  # 64 tiles
    assert tuning.layer_split(32, 256, 512, 132, max_bytes=2**20) == 2  # 17 runs wanted, partials capped at 1 MiB


def test_shared_gradient_split_unevenly(poison_empty):
    """A shared E over 5 layers, split into runs of 2, 2 and 1 (interpreter: 2 'SMs'; GPU: 5 runs of one)."""
    check_op(T.expand_triton, oracle_expand, expand_inputs((2, 5, 19, 13, 30, 27, "shared", True), torch.float32))


@pytest.mark.parametrize("dot_max", [0, 64], ids=["fma-pass", "two-dots"])
def test_layer_gradient_kernels(dot_max, monkeypatch, poison_empty):
    """Both layer-gradient kernels (d W, d depth): two matrix products per tile up to LAYER_DOT_MAX layers, one FMA
    pass per layer beyond."""
    monkeypatch.setattr(tuning, "LAYER_DOT_MAX", dot_max)
    for dtype in (torch.float32, torch.float16):
        check_op(T.expand_triton, oracle_expand, expand_inputs((3, 5, 19, 13, 30, 27, "layer", True), dtype))
        check_op(T.expand_vec_triton, oracle_expand_vec, vec_inputs(VEC, dtype))


# (L1, L2, o1, i1, o2, i2, E layout, residual) for a 16x16x16 tile: the shared-E gradients' K (i1 = 37, o1 = 21) spans
# several K tiles with a ragged last one, over 7 layers in runs of 3, 3 and 1; K below one tile; a single layer;
# per-layer E over many layers (STRIP with several M tiles per strip)
FLAT_CASES = {
    "shared-ragged-K": (2, 7, 21, 37, 34, 50, "shared", True),
    "shared-K<tile": (2, 5, 9, 5, 20, 11, "shared", False),
    "shared-one-layer": (3, 1, 21, 37, 40, 50, "shared", True),
    "layer-many": (2, 9, 37, 21, 50, 34, "layer", True),
}


@pytest.mark.parametrize("split", [1, 3], ids=["one-run", "runs-3-3-1"])
@pytest.mark.parametrize("dt", ["fp32", "fp16"])
def test_flat_layer_k_loop(split, dt, monkeypatch, poison_empty):
    """The GEMM's one loop over (layer, K tile) pairs: the layer and K offsets it derives from the iteration agree with
    the oracle where K is not a multiple of BLOCK_K, K < BLOCK_K, one layer, many layers, and the shared-E gradient's
    runs of layers do not divide the layer count (fp32 partials summed after: tuning.layer_split)."""
    monkeypatch.setattr(tuning, "layer_split", lambda L, M, N, sms: min(L, split))
    small = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}, num_warps=4, num_stages=2)
    with tuning.force_config(small):
        for case in FLAT_CASES.values():
            check_op(T.expand_triton, oracle_expand, expand_inputs(case, DTYPES[dt]))
