"""Running a test's worker in several spawned processes, with one deadline for every multi-process test.

The deadline is generous on purpose: the CI machine is shared, and two gloo processes on a busy 2-core machine once
took longer than 240 s (the former per-file deadline) for work that takes seconds when idle; a hang still fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch.multiprocessing as mp

TIMEOUT_S = 900
"""Seconds the processes (and their collectives) may take before the test fails."""


def run_spawned(worker: Callable, args: tuple, nprocs: int, what: str = "gloo") -> None:
    """Run ``worker(rank, *args)`` in ``nprocs`` spawned processes and wait for all of them; fail the test (killing
    them) after :data:`TIMEOUT_S`. A process that raises fails the test with its traceback."""
    ctx = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {nprocs} {what} processes did not finish in {TIMEOUT_S} s")
