"""Freed heap memory handed back to the system during a long production (glibc's ``malloc_trim``).

glibc serves a block below its mmap threshold from its heap, and raises that threshold (up to 32 MiB) each time a
mapped block is freed, so a production's temporaries of a few MB (an op's intermediates, per chunk of layers) come
from the heap. Small allocations that outlive them (the objects of the tensors kept) land between their freed
blocks, and the heap keeps those pages resident: the resident set of :func:`ligo_fast.hf.fill` grew by up to one
chunk's temporaries per part beyond the tensors it kept, by an amount that varied from run to run with where
earlier work had left the heap (benchmarks/results/bench_scale_2026-12-06.md). ``malloc_trim(0)`` gives the free
pages back, inside the heap too, and changes no setting of the allocator (unlike ``mallopt``, which only an
application may choose: ``ligo-fast`` does). Its price is the next allocations' faulting fresh pages in, so
:class:`Trimmer` trims only when the resident set has outgrown what was kept. With another C library, or without
``/proc``, nothing is done.
Imports: nothing of ligo_fast.
"""

from __future__ import annotations

import ctypes
import functools
import os


@functools.cache
def _malloc_trim():
    try:
        f = ctypes.CDLL(None).malloc_trim  # the C library this process runs on
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return None
    f.argtypes, f.restype = [ctypes.c_size_t], ctypes.c_int
    return f


def trim() -> bool:
    """Give the heap's free pages back to the system (glibc); True when some memory was released."""
    f = _malloc_trim()
    return bool(f(0)) if f is not None else False


def resident() -> int | None:
    """This process's resident set in bytes (Linux's ``/proc``), None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class Trimmer:
    """Trims (:func:`trim`) when the resident set has grown beyond the bytes kept since its creation by more than
    ``slack`` times them: call :meth:`kept` after each part with the bytes kept so far."""

    def __init__(self, slack: float = 1 / 16) -> None:
        self.slack = slack
        self.start = resident() if _malloc_trim() is not None else None

    def kept(self, nbytes: int) -> bool:
        """Trim if the resident set exceeds the start plus ``nbytes`` by more than ``slack * nbytes``; True if so."""
        if self.start is None:
            return False
        now = resident()
        if now is None or now - self.start - nbytes <= self.slack * nbytes:
            return False
        return trim() or True
