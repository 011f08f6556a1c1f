"""Launch configurations for the LiGO Triton kernels.

Three regimes:

* Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors): one small configuration, so that the tests
  stay fast (the interpreter's cost grows with the number of programs and loop trips, not the tile size).
* Hopper (compute capability 9.x) with autotuning on (the default; ``LIGO_FAST_AUTOTUNE=0`` turns it off):
  a short list of tile shapes, pruned by problem size, benchmarked once per problem shape.
* Anything else: a size-based heuristic.

:func:`force_config` overrides all three for the GEMM launches inside it (tests check every candidate against the
oracle: ``tests/test_kernel_configs.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import triton

__all__ = [
    "config_kwargs",
    "force_config",
    "forced_config",
    "fp32_precision",
    "interpreting",
    "LAYER_DOT_MAX",
    "GROUP_MAX_ELEMENTS",
    "layer_split",
    "autotune_enabled",
    "gemm_configs",
    "gemm_heuristic",
    "max_acc_per_thread",
    "prune_gemm_configs",
    "worth_tuning",
]


def interpreting(kernel) -> bool:
    """True when ``kernel`` (a ``@triton.jit`` object) was built for Triton's interpreter."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - very old Triton
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return isinstance(kernel, InterpretedFunction)


def autotune_enabled(device: torch.device) -> bool:
    """Autotune on Hopper unless ``LIGO_FAST_AUTOTUNE=0``."""
    if os.environ.get("LIGO_FAST_AUTOTUNE", "1").strip() in ("0", "false", "no", ""):
        return False
    if device.type != "cuda" or torch.version.hip is not None:
        return False
    return torch.cuda.get_device_capability(device)[0] == 9


def worth_tuning(M: int, N: int, K: int) -> bool:
    """False for a degenerate product (a width-1 side, as in the vector backward): one config is as good as another
    there, and benchmarking five of them per shape would cost more than the product."""
    return min(M, N, K) > 1


def layer_split(L: int, M: int, N: int, sms: int, tile: int = 128, max_bytes: int = 256 * 2**20) -> int:
    """Runs of layers a shared-E gradient ``sum over L layers of (M x N) products`` is split into (split-K over
    layers, fp32 partials summed afterwards): enough programs for about one per SM when the output has fewer
    ``tile x tile`` tiles than SMs (a BERT-size E has 8-32), 1 when it fills the GPU; partials within ``max_bytes``."""
    tiles = -(-M // tile) * -(-N // tile)
    split = max(1, min(L, -(-sms // tiles)))
    while split > 1 and split * M * N * 4 > max_bytes:
        split //= 2
    return split


def fp32_precision(interpreted: bool) -> str:
    """``input_precision`` of float32 dots: ``tf32`` when torch allows TF32 matmuls, else ``tf32x3`` (tensor cores,
    near-fp32 accuracy); ``LIGO_FAST_FP32_DOT=ieee`` keeps them on the FMA units; the interpreter computes ``ieee``."""
    forced = os.environ.get("LIGO_FAST_FP32_DOT", "").strip()
    if interpreted:
        return "ieee"
    if forced in ("ieee", "tf32", "tf32x3"):
        return forced
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


def _cfg(bm, bn, bk, warps, stages, group=8):
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group}, num_warps=warps, num_stages=stages
    )


def gemm_configs() -> list:
    """Hopper candidates. 16-bit operands run on wgmma; 128x256x64 with 3 stages uses 144 KiB of the
    228 KiB shared memory per SM. fp32 ("ieee") operands run on the FMA units, where smaller K tiles win."""
    return [
        _cfg(128, 256, 64, 8, 3),
        _cfg(128, 128, 64, 8, 4),
        _cfg(128, 128, 64, 4, 4),
        _cfg(64, 128, 64, 4, 4),
        _cfg(64, 64, 64, 4, 3),
        _cfg(128, 64, 32, 4, 3),
        _cfg(64, 64, 32, 4, 3),
    ]


def max_acc_per_thread(args: dict) -> int:
    """Most fp32 accumulator elements per thread a GEMM variant may hold without spilling on sm_90.

    From ``benchmarks/triton_compile_check.py`` (every variant compiled for sm_90 with ptxas, no GPU needed;
    benchmarks/results/triton_compile_sm90_triton3.*.md): 16-bit wgmma tiles with 128 accumulators per thread compile
    without spills in the plain kernel (<= 254 registers) but spill 200-300 bytes in the STRIP (residual) and
    REDUCE_L (shared-E gradient) variants, whose extra loop state pushes them past 255 registers; 64 per thread
    never spill. fp32 operands on the FMA units ("ieee") need registers for the operand fragments too: 64 per
    thread spill in every variant, 32 do not (but for a few bytes in REDUCE_L). Measured with the GEMM's nested
    layer and K loops; since they are one loop, REDUCE_L's 128-accumulator tiles compiled without spills in a first
    look (benchmarks/results/triton_compile_sm90_flat_pipeline.md): the limit may be raised there after the full check.
    """
    if args.get("DOT", 1) == 0 and args.get("PRECISION", "ieee") == "ieee":
        return 32
    if args.get("PRECISION") == "tf32x3":  # each operand split in two TF32 halves: more live fragments
        return 64
    return 64 if args.get("STRIP") or args.get("REDUCE_L") else 128


def prune_gemm_configs(configs, named_args, **kwargs):
    """Drop tiles larger than the problem, 64-wide K tiles for fp32 (FMA path) / 32-wide for 16-bit, and tiles
    whose accumulator would spill registers for this kernel variant (:func:`max_acc_per_thread`)."""
    args = {**named_args, **kwargs}
    M, N = args["M"], args["N"]
    sixteen_bit = args.get("DOT", 1) != 0  # DOT: 0 fp32, 1 fp16, 2 bf16
    acc_limit = max_acc_per_thread(args)
    keep = []
    for c in configs:
        bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        if bm > 64 and M <= 64 or bn > 64 and N <= 64 or bn > 128 and N <= 128:
            continue
        if sixteen_bit != (bk == 64):
            continue
        if bm * bn > acc_limit * 32 * c.num_warps:
            continue
        keep.append(c)
    return keep or [configs[-1]]


def gemm_heuristic(M: int, N: int, sixteen_bit: bool, interpreted: bool) -> dict:
    """Block sizes and launch options when not autotuning."""
    if interpreted:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=1)
    if not sixteen_bit:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
    if M >= 128 and N >= 128:
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3)


# up to this many small and large layers the layer gradients run as two matrix products per tile (the block holds
# every layer); LIGO_FAST_LAYER_DOT_MAX=0 selects the one-FMA-pass-per-layer kernel everywhere (an A/B on a GPU)
LAYER_DOT_MAX = int(os.environ.get("LIGO_FAST_LAYER_DOT_MAX", "64"))

# the grouped launches (kernels/group.py) take a problem of at most this many output elements: they exist for the
# launch-bound regime (a whole BERT-size production: ~5 us per launch against microseconds of math per module kind);
# at 2**26 elements writing the output alone takes ~45 us at 3 TB/s (16-bit), so a launch is a few % of a larger
# problem, which keeps the per-kind launchers: autotuned tiles, and scratch alive one module kind at a time in
# backward (the grouped backward holds every grouped problem's float32 scratch at once)
GROUP_MAX_ELEMENTS = int(os.environ.get("LIGO_FAST_GROUP_MAX_ELEMENTS", str(2**26)))

_forced: list = []  # the config force_config set, innermost last


@contextmanager
def force_config(config) -> Iterator[None]:
    """Every GEMM launch inside runs with ``config`` (a ``triton.Config`` of :func:`gemm_configs`): no autotuning,
    no heuristic, no pruning. For tests: each candidate the autotuner may pick must compute the right numbers."""
    _forced.append(config)
    try:
        yield
    finally:
        _forced.pop()


def forced_config():
    """The config :func:`force_config` set, or None."""
    return _forced[-1] if _forced else None


def config_kwargs(config) -> dict:
    """A ``triton.Config`` as launch keyword arguments (block sizes, warps, stages)."""
    return dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
