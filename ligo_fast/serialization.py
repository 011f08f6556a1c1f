"""Operator files on disk: ``operator.safetensors`` (the official state-dict layout) and ``ligo_config.json``.

The bytes only: writing a state dict and its metadata, reading tensors from our files or an official
``pytorch_model.bin``. Building a model from them is :mod:`ligo_fast.checkpoint`'s job (it sits above the model).

Format 2 (format 1 files, without aliases and digest, still load) stores each tensor once: a tensor whose
values equal another's (a tied embedding copied twice, say) is written once and named in the ``aliases`` table of
the safetensors header, restored on load as the same tensor object. The header also holds ``sha256``, a digest of
every name, dtype, shape and byte (:func:`state_digest`), checked on load, so a truncated, bit-flipped or mixed file
is refused rather than loaded.

Every file is written crash-safely (:func:`atomic_write`: a temporary in the same directory, fsync, rename, fsync of
the directory), so a reader sees the old file or the new one, never a part; a full disk is a
:class:`DiskFullError` naming the path and the free space, and leaves no temporary behind.

Imports: torch and safetensors only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

try:
    import resource
except ImportError:  # Windows: no file-size limits to report
    resource = None

WEIGHTS = "operator.safetensors"
META = "ligo_config.json"
OFFICIAL = "pytorch_model.bin"
FORMAT = 2
FORMATS = (1, 2)  # the formats this version reads
_TAG = "ligo_fast-operator-"  # the safetensors header's "format" value: _TAG + str(FORMAT)


class DiskFullError(OSError):
    """Writing a file failed because its file system is full (errno ENOSPC); the message names the path and the
    free space."""

    def __str__(self) -> str:
        return str(self.strerror)


# ---------------------------------------------------------------------------------------------- crash-safe writes
def fsync_dir(path) -> None:
    """Make the entries of directory ``path`` (renames, new files) durable (a no-op where directories cannot be
    opened, e.g. Windows)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def fsync_file(path) -> None:
    """Flush the contents of file ``path`` to its device."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6,
          "gb": 10**9, "tb": 10**12}  # fmt: skip


def parse_bytes(size: int | str, what: str) -> int:
    """Bytes of an int or of ``"17179869184"``, ``"16GiB"``, ``"512 MiB"``, ``"5GB"`` (decimal, as Hugging Face's
    ``max_shard_size``), ``"8e9"``; a ValueError naming ``what`` for anything else, zero or negative."""
    if isinstance(size, int) and not isinstance(size, bool):
        n = size
    else:
        m = re.fullmatch(r"\s*([0-9][0-9.eE+]*)\s*([A-Za-z]*)\s*", str(size))
        try:
            number = m.group(1)
            n = (int(number) if number.isdigit() else float(number)) * _UNITS[m.group(2).lower()]
        except (AttributeError, ValueError, KeyError):
            n = 0
    if not 1 <= n <= 2**63:  # also NaN and inf
        raise ValueError(f"{what} must be a number of bytes >= 1 (e.g. 17179869184, 16GiB, 500MB), got {size!r}")
    return int(n)


def disk_full_error(exc: BaseException, path, nbytes: int | None = None) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``exc`` raised while writing ``path`` when the cause is a full disk, else None.

    Writers report a full disk differently (``OSError`` ENOSPC/EDQUOT, safetensors' "No space left" message,
    torch.save's ``unexpected pos`` RuntimeError), so besides the errno and message the free space decides: less
    than ``nbytes`` (the size being written) or than 1 MiB left on the device counts as full.
    """
    if isinstance(exc, DiskFullError):
        return exc
    path = Path(path)
    where = path if path.is_dir() else path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    full = full or any(s in str(exc) for s in ("No space left", "os error 28", "Disk quota exceeded"))
    if free is not None and (free < (1 << 20) or (nbytes is not None and free < nbytes)):
        full = True
    if not full:
        return None
    need = f", {human_bytes(nbytes)} needed" if nbytes else ""
    left = human_bytes(free) if free is not None else "unknown"
    return DiskFullError(errno.ENOSPC, f"no space left on device writing {path} ({left} free{need})")


def file_too_large_error(exc: BaseException, path) -> OSError | None:
    """An ``OSError`` (errno EFBIG) naming ``path`` and the limit when ``exc`` came from the process's file-size limit
    (``ulimit -f``, RLIMIT_FSIZE), else None. Writers report it differently: ``OSError`` EFBIG, safetensors' "os error
    27", torch.save's "unexpected pos" (only counted when a limit is set)."""
    try:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (AttributeError, OSError, ValueError):  # no resource module (Windows)
        limit = None
    limited = limit is not None and limit != getattr(resource, "RLIM_INFINITY", None)
    text = str(exc)
    efbig = isinstance(exc, OSError) and exc.errno == errno.EFBIG
    efbig = efbig or f"os error {errno.EFBIG}" in text or (limited and "unexpected pos" in text)
    if not efbig:
        return None
    where = f": the file-size limit (ulimit -f) is {human_bytes(limit)}" if limited else ""
    return OSError(errno.EFBIG, f"file too large writing {path}{where}")


def atomic_write(path, write: Callable[[Path], None], *, nbytes: int | None = None) -> None:
    """Write file ``path`` crash-safely: ``write(tmp)`` writes a temporary next to it, which is fsynced and renamed
    over ``path`` (then the directory is fsynced). On any failure the temporary is removed and ``path`` is left as
    it was; a full disk raises :class:`DiskFullError` (``nbytes``: the expected size, for the message)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        full = (disk_full_error(e, path, nbytes) or file_too_large_error(e, path)) if isinstance(e, Exception) else None
        if full is not None and full is not e:
            raise full from e
        raise
    fsync_dir(path.parent)


def write_json(path, obj) -> None:
    """``obj`` as indented JSON into ``path``, crash-safely (:func:`atomic_write`)."""
    text = json.dumps(obj, indent=1)
    atomic_write(path, lambda p: p.write_text(text), nbytes=len(text))


# ---------------------------------------------------------------------------------------------- digests
def tensor_digest(t: Tensor) -> str:
    """sha256 of a tensor's bytes (its dtype and shape are hashed by :func:`state_digest`)."""
    b = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(b.numpy().data).hexdigest()


def state_digest(state: dict[str, Tensor], digests: dict[str, str] | None = None) -> str:
    """sha256 over every (name, dtype, shape, bytes) of ``state`` in name order; ``digests`` may hold the
    per-tensor digests already computed (:func:`tensor_digest`)."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        d = digests[k] if digests is not None and k in digests else tensor_digest(v)
        h.update(f"{k}\0{v.dtype}\0{tuple(v.shape)}\0{d}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- operator files
def write_operator(path, state: dict[str, Tensor], meta: dict) -> None:
    """Write ``state`` into ``path/operator.safetensors`` (each distinct tensor once, with its aliases and digest in
    the header) and ``meta`` (with ``"format"``) into ``path/ligo_config.json``, each crash-safely."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    digests = {k: tensor_digest(v) for k, v in sd.items()}
    first: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for k in sorted(sd):
        key = (sd[k].dtype, tuple(sd[k].shape), digests[k])
        if key in first and torch.equal(sd[first[key]], sd[k]):
            aliases[k] = first[key]
        else:
            first.setdefault(key, k)
    stored = {k: v.clone() for k, v in sd.items() if k not in aliases}  # safetensors refuses shared storage
    header = {"format": f"{_TAG}{FORMAT}", "sha256": state_digest(sd, digests), "aliases": json.dumps(aliases)}
    nbytes = sum(v.numel() * v.element_size() for v in stored.values())
    atomic_write(path / WEIGHTS, lambda p: save_file(stored, str(p), metadata=header), nbytes=nbytes)
    write_json(path / META, {"format": FORMAT, **meta})


def read_tensors(path: Path, *, require_digest: bool = False) -> dict[str, Tensor]:
    """Tensors of a directory (ours or official), a ``.safetensors`` file or a ``pytorch_model.bin``.

    Our safetensors files are checked (their digest, aliases restored); a format-2 file, or any safetensors file
    when ``require_digest`` (its ``ligo_config.json`` says format 2), must carry its digest. An unreadable file
    raises ``ValueError`` naming it, a missing one ``FileNotFoundError``. ``.bin`` files load with
    ``weights_only=True`` (no code runs).
    """
    path = Path(path)
    if path.is_dir():
        for name in (WEIGHTS, OFFICIAL):
            if (path / name).exists():
                return read_tensors(path / name, require_digest=require_digest)
        raise FileNotFoundError(f"{path} holds neither {WEIGHTS} nor {OFFICIAL}")
    if not path.exists():
        raise FileNotFoundError(f"no operator checkpoint at {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, require_digest)
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: pickle errors, zip errors, refused globals
        raise ValueError(f"{path}: not a readable torch checkpoint ({_first_line(e)})") from e
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise ValueError(f"{path}: expected a state dict (names -> tensors)")
    return sd


def _read_safetensors(path: Path, require_digest: bool = False) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys(), no __iter__
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable safetensors file, truncated or damaged ({_first_line(e)})") from e
    tag = header.get("format", "")
    if tag.startswith(_TAG):
        version = tag[len(_TAG) :]
        if version not in {str(v) for v in FORMATS}:
            raise ValueError(f"{path}: operator format {version!r}, this ligo_fast reads {list(FORMATS)}")
    if "aliases" in header:
        try:
            aliases = json.loads(header["aliases"])
            if not isinstance(aliases, dict):
                raise TypeError
            for alias, target in aliases.items():
                sd[alias] = sd[target]
        except (TypeError, ValueError, KeyError, RecursionError) as e:
            raise ValueError(f"{path}: damaged alias table in its header") from e
    if (require_digest or tag == f"{_TAG}{FORMAT}") and "sha256" not in header:  # format 2 always writes one
        raise ValueError(f"{path}: format-{FORMAT} operator file without its digest (edited or damaged); refusing it")
    if "sha256" in header and state_digest(sd) != header["sha256"]:
        raise ValueError(f"{path}: contents do not match the digest in its header (damaged or partly written)")
    return sd


def read_meta(path: Path) -> dict | None:
    """The ``ligo_config.json`` next to (or in) ``path`` as a dict, or None when there is none; invalid JSON or a
    JSON that is no object raises ``ValueError`` naming the file (its fields are checked by the loader)."""
    meta_file = (path if path.is_dir() else path.parent) / META
    if not meta_file.exists():
        return None
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_file}: not valid JSON ({_first_line(e)})") from e
    except RecursionError as e:  # arrays or objects nested thousands deep
        raise ValueError(f"{meta_file}: not an operator's config (JSON nested too deeply)") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: expected a JSON object, got {type(meta).__name__}")
    return meta


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[0] if lines else type(e).__name__
