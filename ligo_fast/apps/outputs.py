"""The output directory of a command: its lock, and its final outputs with the manifest that vouches for them.

Lock (:func:`locked`): ``<out>/.ligo-fast.lock`` held with ``flock`` while a command writes into ``out``; a second
command on the same directory is refused (:class:`OutputsError`, naming the holder's pid). The kernel releases the
lock of a process that dies, so a lock left by a killed run is simply taken over (with a warning naming it). The
lock file is never followed: a symbolic link, or anything but a regular file of this user, is refused, and only a
holder line this module wrote is ever shown.

Outputs (:func:`write_outputs`): the files are written into ``<out>/.staging.tmp/`` (fsynced) while the previous
outputs and their manifest stay as they were (a full disk changes nothing). Then, with the stop signals held back
(``errors.DeferredInterrupt``), the previous manifest is removed, the files are moved into ``out`` and
``ligo_fast_outputs.json`` (the manifest: the step or source they belong to, the run record, each file's size and
sha256) is written last, crash-safely; the staging directory goes only after it. The previous manifest's files are
removed before the first new one is moved in, so ``out`` never holds files of two writes at once. At any instant
``out`` holds a manifest whose files all match it, or no manifest and the staging directory, the mark of an
interrupted write (only SIGKILL or a crash can cut those moves short): a reader (:func:`check_outputs`) tells
complete outputs from incomplete or mixed ones and refuses the latter, and the same command run again replaces
them.

Imports ``ligo_fast.serialization``'s crash-safe write helpers, ``.errors`` and the standard library.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ligo_fast.serialization import disk_full_error, fsync_dir, fsync_file, write_json

from .errors import DeferredInterrupt

logger = logging.getLogger(__name__)

MANIFEST = "ligo_fast_outputs.json"
LOCK = ".ligo-fast.lock"
STAGING = ".staging.tmp"
MANIFEST_FORMAT = 1
# files of a grow/materialize output; one of them in a directory without a manifest is another run's (or an
# interrupted one's) output, which a command neither overwrites nor reads as complete
OUTPUT_FILES = (
    "operator.safetensors",
    "ligo_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "config.json",
)
_HOLDER = re.compile(r"pid \d+ on [\w.\-]{1,100}")  # what locked() writes into the lock file, all it ever shows


class OutputsError(ValueError):
    """An output directory that cannot be used: locked by another run, incomplete, mixed, or another run's."""


# ---------------------------------------------------------------------------------------------- lock
@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the lock of output directory ``out`` (created if needed) while inside; :class:`OutputsError` when
    another live process holds it, or when the lock file is a symbolic link or not a regular file of this user."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    try:
        _check_lock_file(path, os.lstat(path))
    except FileNotFoundError:
        pass
    try:  # O_NOFOLLOW: a link planted between the check and the open is refused too
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputsError(f"{path} is a symbolic link; a lock is never followed: remove it") from None
        raise
    try:
        _check_lock_file(path, os.fstat(fd))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = _holder(fd) or "another process"
            raise OutputsError(
                f"{out} is in use by another ligo-fast run ({holder}); wait for it to end or use another directory"
            ) from None
        previous = _holder(fd)
        if previous:
            logger.warning("%s: took over the lock left by %s, which ended without releasing it", out, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the file stays: unlinking a lock file races with processes opening it
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _check_lock_file(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise OutputsError(f"{path} is a symbolic link; a lock is never followed: remove it")
    if not stat.S_ISREG(st.st_mode):
        raise OutputsError(f"{path} is not a regular file; remove it")
    if st.st_uid != os.geteuid():
        raise OutputsError(f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}); remove it")


def _holder(fd: int) -> str:
    """The holder line of an open lock file, when it is one :func:`locked` wrote (nothing else is ever shown)."""
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    return text if _HOLDER.fullmatch(text) else ""


# ---------------------------------------------------------------------------------------------- writing
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def clean(out: Path) -> None:
    """Remove a staging directory a killed command left in ``out`` next to a valid manifest, and temporaries of a
    killed manifest write (call it while holding the lock)."""
    staging = Path(out) / STAGING
    if staging.exists() and not staging.is_symlink():
        shutil.rmtree(staging, ignore_errors=True)
    _remove_manifest_temps(Path(out))


def _remove_manifest_temps(out: Path) -> None:
    """The ``.ligo_fast_outputs.json.<pid>.tmp`` files a kill inside the manifest's crash-safe write leaves."""
    for p in out.glob(f".{MANIFEST}.*.tmp"):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)


def interrupted(out: Path) -> bool:
    """True when ``out`` holds the staging directory: the mark of a write that did not finish (unless a valid
    manifest is there too: then the kill came after it)."""
    return (Path(out) / STAGING).is_dir()


def _empty_staging(out: Path) -> Path:
    """The staging directory of ``out``, empty; an existing one is emptied, not removed (it may mark an interrupted
    write, and a kill must never find that mark gone while the outputs are mixed)."""
    staging = out / STAGING
    if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
        staging.unlink()
    if staging.is_dir():
        for p in staging.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    else:
        staging.mkdir()
    return staging


def write_outputs(out: Path, write: Callable[[Path], None], record: dict, *, nbytes: int | None = None) -> dict:
    """Write the outputs of a command into ``out``: ``write(staging)`` writes the files into an empty staging
    directory (flat), then they replace their namesakes in ``out`` and the manifest (``record`` plus each file's
    size and digest) is written last (see the module doc). Returns the manifest. A full disk raises
    ``DiskFullError`` with nothing moved and the previous outputs and manifest as they were; the previous manifest's
    files are removed before the new ones move in. A stop signal received during the moves is delivered after
    them."""
    out = Path(out)
    try:
        old = read_manifest(out)
    except OutputsError:
        old = None
    _remove_manifest_temps(out)
    staging = _empty_staging(out)
    try:
        try:
            write(staging)
        except Exception as e:
            full = disk_full_error(e, staging, nbytes)
            if full is not None and full is not e:
                raise full from e
            raise
        entries = sorted(staging.iterdir())
        nested = [p.name for p in entries if not p.is_file() or p.is_symlink()]
        if nested:
            raise OutputsError(f"unexpected non-file outputs {nested}")
        files = {}
        for p in entries:
            fsync_file(p)
            files[p.name] = {"size": p.stat().st_size, "sha256": file_sha256(p)}
        fsync_dir(staging)
    except BaseException:
        if old is not None or not output_files(out):  # else the staging directory marks outputs left mixed
            shutil.rmtree(staging, ignore_errors=True)
        else:
            _empty_staging(out)
        raise
    with DeferredInterrupt(strict=True) as stop:  # a signal now would leave the outputs mixed: it waits
        (out / MANIFEST).unlink(missing_ok=True)  # from here until the new manifest, out reads as incomplete
        fsync_dir(out)
        for name in (old or {}).get("files", {}):  # the old files go first: out never holds files of both
            if _plain_name(name):
                (out / name).unlink(missing_ok=True)
        fsync_dir(out)
        for p in entries:
            os.replace(p, out / p.name)
        fsync_dir(out)
        manifest = {"format": MANIFEST_FORMAT, **record, "files": files}
        write_json(out / MANIFEST, manifest)
        shutil.rmtree(staging, ignore_errors=True)
    if stop.requested and stop.signum is not None:
        signal.raise_signal(stop.signum)  # delivered now, to the handler the caller had
    return manifest


def _plain_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


# ---------------------------------------------------------------------------------------------- reading
def read_manifest(out: Path) -> dict | None:
    """The manifest of ``out`` (checked for shape, not against the files), or None when there is none."""
    p = Path(out) / MANIFEST
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OutputsError(f"{p}: not valid JSON ({e})") from e
    ok = (
        isinstance(m, dict)
        and m.get("format") == MANIFEST_FORMAT
        and isinstance(m.get("files"), dict)
        and all(_plain_name(k) and _file_entry(v) for k, v in m["files"].items())
    )
    if not ok:
        raise OutputsError(f"{p}: not a manifest this ligo-fast writes (format {MANIFEST_FORMAT})")
    return m


def _file_entry(v) -> bool:
    return isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)


def output_files(out: Path) -> list[str]:
    """The :data:`OUTPUT_FILES` present in ``out``."""
    return [f for f in OUTPUT_FILES if (Path(out) / f).exists()]


def check_outputs(out: Path, *, interrupted_hint: str = "rerun the command that wrote them") -> dict | None:
    """The manifest of ``out`` once every file it lists is verified (size and sha256); None when ``out`` has no
    manifest and holds no sign of an interrupted command (a plain ``save_operator`` directory, say).
    :class:`OutputsError` for outputs a command did not finish writing, or files that changed since."""
    out = Path(out)
    m = read_manifest(out)
    if m is None:
        if (interrupted(out) or (out / "checkpoint").is_dir()) and output_files(out):
            raise OutputsError(
                f"{out}: incomplete outputs (no {MANIFEST}: a command was interrupted while writing them); "
                f"{interrupted_hint}"
            )
        return None
    of = f" of step {m['step']}" if isinstance(m.get("step"), int) else ""
    for name, info in m["files"].items():
        p = out / name
        if not p.is_file() or p.stat().st_size != info["size"] or file_sha256(p) != info["sha256"]:
            state = "is missing" if not p.is_file() else "does not match the manifest"
            raise OutputsError(f"{out}: {name} {state} (not the outputs{of}: changed, or mixed with another run's)")
    return m
