"""Accuracy rule shared by the kernel tests of the C++ extension (test_cpp_ext.py) and its CUDA emulation."""

from __future__ import annotations

import torch

# (dtype, atol): a kernel's error against the float64 oracle may be at most twice the torch path's error in the
# same dtype plus atol * scale (flash-attention's rule).
TOLERANCES = [(torch.float32, 1e-6), (torch.bfloat16, 2e-3), (torch.float16, 5e-4)]


def check_low_precision(out: torch.Tensor, torch_out: torch.Tensor, oracle: torch.Tensor, atol: float) -> None:
    """``out`` (the kernel's) within twice the error of ``torch_out`` (the torch path's) against ``oracle``."""
    scale = oracle.abs().max().item()
    err = (out.double() - oracle).abs().max().item()
    err_torch = (torch_out.double() - oracle).abs().max().item()
    assert err <= 2 * err_torch + atol * scale, (tuple(out.shape), err, err_torch, scale)
