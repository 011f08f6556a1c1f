"""The outcomes of a ``ligo-fast`` command that are not success: the exceptions the commands raise for them and the
exit codes they map to. Standard library only (the command line imports it before torch).

Exit codes: 0 done; 1 the command failed for a reason outside the user's input (a full disk, an I/O error, out of
memory: :func:`out_of_memory`), one line on stderr; 2 a user error (bad arguments or input files, an output
directory in use or holding another run's files), one line; 3 operator training diverged (a non-finite loss,
gradient or state; the last finite checkpoint is kept); 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM (128 +
the signal number, as shells report it); 141 stdout's reader went away (SIGPIPE's code; the command stops quietly).
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class CommandError(Exception):
    """A command failed: reported as one line (``ligo-fast COMMAND: error: <message>``), exit code ``exit_code``."""

    exit_code = EXIT_FAILED


class UserError(CommandError):
    """A mistake in the command line or its inputs."""

    exit_code = EXIT_USAGE


class Diverged(CommandError):
    """Operator training produced a non-finite loss, gradient or state."""

    exit_code = EXIT_DIVERGED


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT or SIGTERM) asked the command to stop; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum


def exit_code_for(signum: int | None) -> int:
    """What a shell reports for a process stopped by ``signum`` (SIGINT when unknown)."""
    return 128 + int(signum if signum is not None else signal.SIGINT)


_OOM_TEXT = ("DefaultCPUAllocator", "out of memory", "Cannot allocate memory", "can't allocate memory")


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says the process ran out of memory: ``MemoryError`` (also ligo_fast's refusal of a growth that
    cannot fit), ``torch.OutOfMemoryError`` (CUDA), or the ``RuntimeError`` of torch's CPU allocator."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and any(s in str(e) for s in _OOM_TEXT)


def one_line(e: BaseException, limit: int = 1000) -> str:
    """An exception's message as one line (its lines joined; torch's C++ frames dropped), at most ``limit`` chars."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    lines = [x for x in lines if not x.startswith(("frame #", "Exception raised from"))]
    text = " ".join(lines) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
