"""A cache of JIT-built native modules that loads only what this user built.

Loading a shared library runs its code, so a cache directory is a place from which code runs. This module checks
what :mod:`ligo_fast.extension` loads from ``$LIGO_FAST_CACHE``:

- the directory (and the cache root above it) must belong to the current user and not be writable by group or
  others (:func:`trusted_dir`), else :class:`UntrustedCache` says which directory and how to fix it;
- every built file has a record next to it (``<name>.json``: the sha256 of the file and the key of the sources it
  was built from), written when it was built; :func:`verified` accepts a file only when both match;
- one build at a time per artefact (:func:`build_lock`): an exclusive ``flock`` on ``<name>.lock``, which the
  kernel releases when its holder dies, so a killed build never leaves a lock behind; a lock file still naming a
  process is reported when taken over; waiting for a live builder gives up after a timeout with a one-line error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised (each builds in its own directory and installs atomically)
    fcntl = None

logger = logging.getLogger(__name__)

POLL_S = 0.5  # how often a waiting process retries the build lock


class UntrustedCache(RuntimeError):
    """The cache directory could be written by someone else: nothing is loaded from it."""


def _unsafe(st: os.stat_result) -> str | None:
    """Why a file or directory with this status is not safe to load code from, or None."""
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def trusted_dir(path: Path, root: Path) -> Path:
    """Create ``path`` (mode 0700, with ``root`` above it) if missing; raise :class:`UntrustedCache` unless both
    belong to the current user and are writable by nobody else. Returns ``path``."""
    for d in dict.fromkeys((root, path)):  # the root first: nothing is created inside an unsafe one
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        why = _unsafe(d.stat())
        if why is not None:
            raise UntrustedCache(
                f"refusing to load compiled code from {d}: it is {why}; fix: chmod go-w {d} if it is yours, or set "
                f"LIGO_FAST_CACHE to a directory of your own"
            )
    return path


def source_key(files: list[Path], *settings: object) -> str:
    """A sha256 over the files' contents and the build settings: what a built artefact was made from."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(repr(settings).encode())
    return h.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record_path(artefact: Path) -> Path:
    return artefact.with_name(artefact.name.split(".")[0] + ".json")


def verified(artefact: Path, key: str) -> bool:
    """Whether ``artefact`` is the file this user built from sources with ``key`` (its record says so and its
    sha256 matches). A file whose record does not match is reported and refused."""
    record = record_path(artefact)
    if not artefact.exists():
        return False
    try:
        for f in (artefact, record):
            why = _unsafe(f.stat())
            if why is not None:
                logger.warning("refusing %s: it is %s; rebuilding", f, why)
                return False
        meta = json.loads(record.read_text())
    except (OSError, ValueError) as e:
        logger.warning("refusing %s: no valid build record (%s); rebuilding", artefact, e)
        return False
    if meta.get("source_key") != key:
        logger.info("%s was built from other sources or settings; rebuilding", artefact)
        return False
    digest = sha256(artefact)
    if digest != meta.get("sha256"):
        logger.warning(
            "refusing %s: its sha256 %s... is not the %s... recorded when it was built (%s); rebuilding",
            artefact,
            digest[:12],
            str(meta.get("sha256"))[:12],
            record,
        )
        return False
    return True


def install(built: Path, artefact: Path, key: str) -> None:
    """Copy a freshly built file to ``artefact`` and record its sha256 and source key (both replaced atomically)."""
    digest = sha256(built)
    tmp = artefact.with_name(f".{artefact.name}.{os.getpid()}.tmp")
    tmp.write_bytes(built.read_bytes())
    os.chmod(tmp, 0o700)
    os.replace(tmp, artefact)
    record = record_path(artefact)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": digest, "source_key": key, "built": time.strftime("%Y-%m-%d %H:%M:%S")}))
    os.chmod(tmp, 0o600)
    os.replace(tmp, record)


def _owner_line() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors="replace").strip()


@contextlib.contextmanager
def build_lock(path: Path, wait_s: float) -> Iterator[None]:
    """Hold the exclusive build lock ``path`` for the ``with`` block.

    Waits at most ``wait_s`` seconds for another process's build, then raises RuntimeError naming that process. The
    file names its holder while held and is emptied on release; a name still in it when the lock is free was left by
    a build that did not finish (its process died), and the take-over is logged.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read(fd) or "another process"
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"gave up after {wait_s:.0f} s waiting for {holder} to finish building (lock {path}); "
                        f"if that process is stuck, stop it and retry"
                    ) from None
                if not waited:
                    logger.warning("waiting up to %.0f s for %s to finish building (lock %s)", wait_s, holder, path)
                    waited = True
                time.sleep(POLL_S)
        left = _read(fd)
        if left:
            logger.warning("taking over the build lock %s: %s did not finish (no longer running)", path, left)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, _owner_line().encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a clean release leaves the file empty
    finally:
        os.close(fd)  # releases the flock
