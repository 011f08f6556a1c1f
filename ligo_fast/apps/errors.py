"""The outcomes of a ``ligo-fast`` command that are not success: the exceptions the commands raise for them and the
exit codes they map to. Standard library only (the command line imports it before torch).

Exit codes: 0 done; 1 the command failed for a reason outside the user's input (a full disk, an I/O error, out of
memory: :func:`out_of_memory`), one line on stderr; 2 a user error (bad arguments or input files, an output directory in
use or holding another run's files), one line; 3 operator training diverged (a non-finite loss, gradient or state; the
last finite checkpoint is kept); 128 + the signal number (as shells report it) when stopped by one of
:data:`STOP_SIGNALS`: 130 SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP (the terminal closed, an SSH connection dropped), 131
SIGQUIT, 138 SIGUSR1 (on Linux); 141 stdout's reader went away (SIGPIPE's code; the command stops quietly).
:class:`DeferredInterrupt` holds those signals back until the caller's current unit of work (a training step, the final
moves of the outputs) is done.
"""

from __future__ import annotations

import signal
import threading

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
# the signals that ask a command to stop: each finishes the current step (or the outputs' final moves), saves, and
# exits 128 + its number. SIGHUP: a closed terminal or a dropped SSH connection; SIGQUIT: Ctrl-\; SIGUSR1: what
# some job schedulers send before the time limit. SIGKILL cannot be caught (the checkpoints are kill-safe instead).
STOP_SIGNALS = tuple(
    getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1") if hasattr(signal, n)
)


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
    """A signal (one of :data:`STOP_SIGNALS`) asked the command to stop; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum


def exit_code_for(signum: int | None) -> int:
    """What a shell reports for a process stopped by ``signum`` (SIGINT when unknown)."""
    return 128 + int(signum if signum is not None else signal.SIGINT)


def signal_word(signum: int | None) -> str:
    """``terminated`` for SIGTERM, ``interrupted`` for SIGINT, else ``stopped by SIGHUP`` (the signal's name)."""
    if signum is None or signum == signal.SIGINT:
        return "interrupted"
    if signum == signal.SIGTERM:
        return "terminated"
    return f"stopped by {signal.Signals(signum).name}"


class DeferredInterrupt:
    """Defers the :data:`STOP_SIGNALS` to the end of the current unit of work: inside, the first one only sets
    ``requested`` (``signum`` says which); a second raises KeyboardInterrupt at once, unless ``strict`` (then every
    one waits: for work that must never be cut short, such as the final moves of the outputs). The previous handlers
    are restored on exit. Outside the main thread it does nothing (Python delivers signals to the main thread)."""

    def __init__(self, *, strict: bool = False) -> None:
        self.requested = False
        self.signum: int | None = None
        self.strict = strict
        self._old: dict = {}

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and not self.strict:
            raise Interrupted(self.signum if self.signum is not None else signum)
        if not self.requested:
            self.requested, self.signum = True, signum

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


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
