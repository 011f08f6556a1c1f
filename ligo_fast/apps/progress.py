"""Progress of long loops, and the console output of the command lines.

:class:`Progress` draws a tqdm bar only when stderr is a terminal (off a terminal a bar is one carriage-return
update per refresh, a line per step in a log file); otherwise the loop's milestones (:meth:`Progress.note`, e.g.
an evaluation) become one plain log line each; disabled, it shows nothing. :func:`console_logging` shows the
applications' log records as plain lines while a command runs (through ``tqdm.write``, so a bar stays intact).

Imports only tqdm and the standard library.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def on_terminal() -> bool:
    """True when stderr (where tqdm draws) is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Progress over ``total`` steps: a tqdm bar on a terminal, log lines at milestones otherwise, or nothing.

    Args:
        total: steps in all; ``initial`` of them already done (a resumed run).
        desc: what runs now (the bar's label, the start of each log line); :meth:`set_description` changes it.
        enabled: False shows nothing (``--no-progress``).
        log: the logger of the milestone lines (default this module's).
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        *,
        enabled: bool = True,
        initial: int = 0,
        unit: str = "step",
        log: logging.Logger | None = None,
    ) -> None:
        self.total, self.desc, self.n, self.enabled = total, desc, initial, enabled
        self._log = log or logger
        self.bar = None
        if enabled and on_terminal():
            self.bar = tqdm(total=total, initial=initial, desc=desc or None, unit=unit, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix) -> None:
        """``n`` more steps done; ``postfix`` values (e.g. the loss) are shown on the bar only."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self.bar is not None:
            self.bar.set_description(desc)

    def note(self, **values) -> None:
        """A milestone (an evaluation): the bar's postfix on a terminal, else one log line at INFO."""
        if self.bar is not None:
            self.bar.set_postfix(values)
        elif self.enabled:
            shown = ", ".join(f"{k} {v}" for k, v in values.items())
            self._log.info("%s %d/%d: %s", self.desc or "progress", self.n, self.total, shown)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ConsoleHandler(logging.Handler):
    """Plain messages: below WARNING to stdout, WARNING and above to stderr (the streams of the moment). A closed
    pipe (``| head -1``) raises BrokenPipeError to the caller, which stops the command quietly (a logging error
    report per line was hundreds of lines of tracebacks); a stop signal during a write goes on to the caller too
    (:func:`_stop_behind`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)
        except BrokenPipeError:
            raise
        except Exception as e:  # noqa: BLE001 - logging's own contract: report, never raise
            stop = _stop_behind(e)
            if stop is not None:  # a stop signal inside tqdm's lock, which tqdm replaced by its own error
                raise stop from None
            self.handleError(record)


def _stop_behind(e: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (a stop signal's, :mod:`.errors`) that ``e`` was raised while handling, if any. A signal
    delivered while ``tqdm.write`` takes its lock makes tqdm release a lock it does not hold: its RuntimeError
    replaced the interrupt, which logging then reported as a traceback and swallowed (the run went on and exited 0)."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__context__
    return None


@contextmanager
def console_logging(name: str = "ligo_fast.apps", level: int = logging.INFO) -> Iterator[None]:
    """While inside, the records of logger ``name`` (and its children) at ``level`` and above are printed as plain
    lines (:class:`_ConsoleHandler`) instead of going to the root logger; restored afterwards."""
    log = logging.getLogger(name)
    handler = _ConsoleHandler(level)
    old = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(old[0])
        log.propagate = old[1]
