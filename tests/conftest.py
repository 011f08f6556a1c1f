"""Shared test set-up.

Triton kernels run on CPU tensors through Triton's interpreter when there is no GPU; the variable must be
set before triton is first imported, hence here.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()

# Every memory decision (eager or memory-lean, hence the factored forms) compares against the run's memory budget:
# the tests pin it, so they decide the same way on an idle machine and on one whose other processes use most of the
# memory (the CLI tests' subprocesses inherit it). Tests of the automatic reading remove it.
TEST_MEMORY_BUDGET = 64 * 2**30
os.environ["LIGO_FAST_MEMORY_BUDGET"] = str(TEST_MEMORY_BUDGET)

# The tests use tiny tensors: one thread is as fast, and on a shared 2-core machine two spinning OpenMP threads
# per process made a tiny expand ~1000x slower (35 us -> 25-60 ms, seen here with other jobs running).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poison_empty(monkeypatch):
    """Every float tensor that torch.empty / empty_like allocate from Python starts as NaN: an output element nobody
    wrote, or scratch read before it is written, shows up as NaN."""

    def poisoned(real):
        def alloc(*a, **k):
            t = real(*a, **k)
            if t.is_floating_point():
                t.fill_(float("nan"))
            return t

        return alloc

    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(torch.empty_like))
