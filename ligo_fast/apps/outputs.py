"""The output directory of a command: its lock, and its final outputs with the manifest that vouches for them.

Lock (:func:`locked`): ``<out>/.ligo-fast.lock`` held with ``flock`` while a command writes into ``out``; a second
command on the same directory is refused (:class:`OutputsError`, naming the holder's pid). The kernel releases the
lock of a process that dies, so a lock left by a killed run is simply taken over (with a warning naming it).

Outputs (:func:`write_outputs`): the files are written into ``<out>/.staging.tmp/`` (fsynced), moved into ``out``
one by one, and ``ligo_fast_outputs.json`` (the manifest: the step or source they belong to, the run record, each
file's size and sha256) is written last, crash-safely. The previous manifest is removed before the first file is
replaced, so at any instant ``out`` holds either a manifest whose files all match it or no manifest: a reader
(:func:`check_outputs`) tells complete outputs from incomplete or mixed ones (files of two runs) and refuses the
latter.

Imports ``ligo_fast.serialization``'s crash-safe write helpers and the standard library.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ligo_fast.serialization import disk_full_error, fsync_dir, fsync_file, write_json

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


class OutputsError(ValueError):
    """An output directory that cannot be used: locked by another run, incomplete, mixed, or another run's."""


# ---------------------------------------------------------------------------------------------- lock
@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the lock of output directory ``out`` (created if needed) while inside; :class:`OutputsError` when
    another live process holds it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise OutputsError(
                f"{out} is in use by another ligo-fast run ({holder}); wait for it to end or use another directory"
            ) from None
        previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
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


# ---------------------------------------------------------------------------------------------- writing
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def clean(out: Path) -> None:
    """Remove a staging directory a killed command left in ``out`` (call it while holding the lock)."""
    staging = Path(out) / STAGING
    if staging.exists() and not staging.is_symlink():
        shutil.rmtree(staging, ignore_errors=True)


def write_outputs(out: Path, write: Callable[[Path], None], record: dict, *, nbytes: int | None = None) -> dict:
    """Write the outputs of a command into ``out``: ``write(staging)`` writes the files into an empty staging
    directory (flat), then they replace their namesakes in ``out`` and the manifest (``record`` plus each file's
    size and digest) is written last. Returns the manifest. A full disk raises ``DiskFullError`` with nothing
    moved; files of a previous manifest that this one lacks are removed."""
    out = Path(out)
    try:
        old = read_manifest(out)
    except OutputsError:
        old = None
    (out / MANIFEST).unlink(missing_ok=True)  # from here until the new manifest, out reads as incomplete
    fsync_dir(out)
    staging = out / STAGING
    clean(out)
    staging.mkdir()
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
        for p in entries:
            os.replace(p, out / p.name)
        fsync_dir(out)
        for name in (old or {}).get("files", {}):
            if name not in files and _plain_name(name):
                (out / name).unlink(missing_ok=True)
        manifest = {"format": MANIFEST_FORMAT, **record, "files": files}
        write_json(out / MANIFEST, manifest)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
        interrupted = (out / STAGING).exists() or (out / "checkpoint").is_dir()
        if interrupted and output_files(out):
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
