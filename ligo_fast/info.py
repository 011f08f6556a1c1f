"""``python -m ligo_fast.info``: which backends load here and why not, with versions and devices."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import warnings

import torch

from . import backends, extension, memory
from .serialization import human_bytes


def report() -> str:
    """A plain-text report: versions, devices, the backend variable, each backend's availability, and how the
    extension loaded."""
    lines = [
        f"ligo_fast {__import__('ligo_fast').__version__}",
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), "
        f"{torch.get_num_threads()} CPU threads, {platform.machine()}",
    ]
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except Exception as e:  # noqa: BLE001 - any import failure is the answer
        lines.append(f"triton: not importable ({type(e).__name__}: {e})")
    nvcc = shutil.which("nvcc")
    lines.append(f"nvcc: {nvcc or 'not found'}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i} {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        lines.append("CUDA devices: none")
    lines.append(_env_line())
    lines.append("backends:")
    avail = backends.availability()
    for name, status in avail.items():
        lines.append(f"  {name:7s} {status}")
    if avail["cpp"] == "available":
        cuda = "with" if extension.has_cuda_kernels() else "without"
        lines.append(f"extension: {extension.load_library()}, {cuda} CUDA kernels")
    else:
        lines.append(f"extension: unavailable ({avail['cpp']})")
    for dev in ("cpu", "cuda"):
        if dev == "cuda" and not torch.cuda.is_available():
            continue
        lines.append(f"backend='auto' on {dev}: {_used(torch.device(dev))}")
    lines.append(_budget_line())
    return "\n".join(lines)


def _budget_line() -> str:
    """The memory budget a model built now on CPU would plan with, and where it comes from."""
    group = memory.cgroup_available()
    limit = f"; cgroup limit leaves {human_bytes(group)}" if group is not None else "; no cgroup limit"
    try:
        n, source = memory.memory_budget(torch.device("cpu"))
    except ValueError as e:  # a bad LIGO_FAST_MEMORY_BUDGET
        return f"memory budget on cpu: INVALID ({e})"
    return f"memory budget on cpu: {human_bytes(n)} ({source}{limit})"


def _used(device: torch.device) -> str:
    """What a ``backend='auto'`` call on tensors on ``device`` runs in this process: the backend
    :func:`backends.resolve` picks (after ``LIGO_FAST_BACKEND`` and the fallback to torch), why when it is not the
    preferred one, and where the vector problems go."""
    try:
        with warnings.catch_warnings():  # the fallback's warning: said here in words
            warnings.simplefilter("ignore", RuntimeWarning)
            used = backends.resolve("auto", device)
    except (ValueError, backends.BackendUnavailable) as e:
        return f"none, every call raises: {e}"
    preferred = backends.auto_choice(device)
    if not backends.is_auto("auto"):
        line = f"{used.name} (named by {backends.ENV_VAR})"
    elif used.name == preferred:
        line = used.name
    else:
        line = f"{used.name} ({preferred}, preferred here, is unavailable)"
    if used.group_op(device.type) is not None:
        line += "; module kinds: one grouped call (residual-free ones)"
    elif used.multi_vec_op(device.type) is None and backends.is_auto("auto") and backends.multi_vec_fallback(device):
        line += "; vectors: the cpp backend's multi-tensor op"
    return line


def _env_line() -> str:
    """The backend variable's value and whether ligo_fast accepts it."""
    raw = os.environ.get(backends.ENV_VAR)
    if raw is None:
        return f"{backends.ENV_VAR}: unset (auto)"
    try:
        backends.check_env()
    except ValueError:
        return f"{backends.ENV_VAR}: {raw!r} (INVALID; valid values: {', '.join(backends.CHOICES)}, or unset)"
    return f"{backends.ENV_VAR}: {raw!r} (valid)"


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
