"""Operator files on disk: ``operator.safetensors`` (the official state-dict layout) and ``ligo_config.json``.

The bytes only: writing a state dict and its metadata, reading tensors from our files or an official
``pytorch_model.bin``. Building a model from them is :mod:`ligo_fast.checkpoint`'s job (it sits above the model).

Format 2 (format 1 files, without aliases and digest, still load) stores each tensor once: a tensor whose
values equal another's (a tied embedding copied twice, say) is written once and named in the ``aliases`` table of
the safetensors header, restored on load as the same tensor object. The header also holds ``sha256``, a digest of
every name, dtype, shape and byte (:func:`state_digest`), checked on load, so a truncated, bit-flipped or mixed file
is refused rather than loaded.

Streamed both ways, so no copy of the operator is ever made: :func:`write_operator` writes the safetensors header
first and then each tensor, made contiguous one at a time (its values may be views of a model's tensors), and
:class:`OperatorReader` (over :class:`SafetensorsReader`: plain reads, no map of the file) reads each tensor into
the caller's (:mod:`ligo_fast.operator_io` reads them into a model's own tensors). The header primitives
(:class:`Entry`, :func:`safetensors_header`, :func:`tensor_bytes`) also serve the large model's shards
(:mod:`ligo_fast.shards`).

Every file is written crash-safely (:func:`atomic_write`: a temporary in the same directory, fsync, rename, fsync of
the directory), so a reader sees the old file or the new one, never a part; a full disk is a
:class:`DiskFullError` naming the path and the free space, and leaves no temporary behind.

Imports: torch only (the files are safetensors files: ``safetensors``' own loaders read them).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
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


# ---------------------------------------------------------------------------------------------- safetensors, streamed
_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}  # fmt: skip
_BY_NAME = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file: its name, shape and dtype (as written)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


def safetensors_header(entries: list[Entry], metadata: dict[str, str] | None = None) -> bytes:
    """The head of a safetensors file whose data are ``entries``' values in this order: the 8-byte length and the
    JSON (``metadata`` as its ``__metadata__``, ``{"format": "pt"}`` by default), padded to 8 bytes."""
    head: dict = {"__metadata__": {"format": "pt"} if metadata is None else metadata}
    offset = 0
    for e in entries:
        if e.dtype not in _DTYPES:
            raise ValueError(f"{e.name}: safetensors has no dtype {e.dtype}")
        head[e.name] = {"dtype": _DTYPES[e.dtype], "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return len(raw).to_bytes(8, "little") + raw


def tensor_bytes(t: Tensor):
    """The bytes of ``t`` (C order, little-endian) without a copy where it is contiguous on the CPU."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy() if t.numel() else b""


def write_safetensors(path, entries: list[Entry], get: Callable[[str], Tensor], metadata: dict[str, str]) -> None:
    """Write the safetensors file ``path``: the header of ``entries``, then each value ``get(name)``, asked for and
    written one at a time (cast to the entry's dtype), so no more than one tensor is held besides the caller's."""
    with open(path, "wb") as f:
        f.write(safetensors_header(entries, metadata))
        for e in entries:
            t = get(e.name)
            if tuple(t.shape) != e.shape:
                raise RuntimeError(f"{path}: {e.name} has shape {tuple(t.shape)}, announced {e.shape}")
            f.write(tensor_bytes(t.to(e.dtype)))
            t = None  # noqa: F841 - the cast or contiguous copy can go before the next is made


class SafetensorsReader:
    """A safetensors file read one tensor at a time by plain reads into the caller's tensors: nothing is mapped, so
    only what the caller keeps is resident. The header is checked on opening (its JSON, every entry's dtype, shape
    and offsets, data that cover the file exactly); a file that fails raises ``ValueError`` naming it."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close() / the context manager
        try:
            self.metadata, self.entries, self._data = self._parse()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def damaged(self, why: str) -> ValueError:
        return ValueError(f"{self.path}: not a readable safetensors file, truncated or damaged ({why})")

    def _parse(self) -> tuple[dict[str, str], dict[str, tuple[Entry, int]], int]:
        size = os.fstat(self._file.fileno()).st_size
        raw = self._file.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 0 < n <= min(size - 8, _MAX_HEADER):
            raise self.damaged("no header" if n < 0 else f"header length {n} past the end")
        try:
            head = json.loads(self._file.read(n))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise self.damaged("its header is not JSON") from e
        meta = head.pop("__metadata__", None) if isinstance(head, dict) else None
        meta = {} if meta is None else meta
        if (
            not isinstance(head, dict)
            or not isinstance(meta, dict)
            or not all(isinstance(v, str) for v in meta.values())
        ):
            raise self.damaged("its header is not a safetensors header")
        entries: dict[str, tuple[Entry, int]] = {}
        for name, d in head.items():
            try:
                shape, (start, end) = d["shape"], d["data_offsets"]
                if not all(isinstance(x, int) and x >= 0 for x in (*shape, start, end)):
                    raise TypeError
                e = Entry(name, tuple(shape), _BY_NAME[d["dtype"]])
            except (KeyError, TypeError, ValueError) as exc:
                raise self.damaged(f"entry {name!r}") from exc
            if end - start != e.nbytes:
                raise self.damaged(f"entry {name!r}: {end - start} bytes for {e.nbytes}")
            entries[name] = (e, start)
        pos = 0
        for e, start in sorted(entries.values(), key=lambda x: x[1]):
            if start != pos:
                raise self.damaged(f"entry {e.name!r} does not follow the one before it")
            pos = start + e.nbytes
        if 8 + n + pos != size:
            raise self.damaged(f"{size} bytes for {8 + n + pos}")
        return meta, entries, 8 + n

    def entry(self, name: str) -> Entry:
        return self.entries[name][0]

    def read(self, name: str, out: Tensor | None = None) -> Tensor:
        """Tensor ``name``: read into ``out`` (contiguous, on the CPU, of the entry's shape and dtype) or a new one."""
        e, start = self.entries[name]
        if out is None:
            out = torch.empty(e.shape, dtype=e.dtype)
        elif tuple(out.shape) != e.shape or out.dtype != e.dtype or not out.is_contiguous() or out.device.type != "cpu":
            raise ValueError(f"{self.path}: {name} is {e.dtype} {e.shape}; cannot read it into {out.dtype} {out.shape}")
        if e.nbytes:
            self._file.seek(self._data + start)
            if self._file.readinto(memoryview(out.reshape(-1).view(torch.uint8).numpy())) != e.nbytes:
                raise self.damaged(f"{name} is cut short")
        return out


# ---------------------------------------------------------------------------------------------- operator files
def write_operator(path, state: Mapping[str, Tensor], meta: dict) -> None:
    """Write ``state`` into ``path/operator.safetensors`` (each distinct tensor once, with its aliases and digest in
    the header) and ``meta`` (with ``"format"``) into ``path/ligo_config.json``, each crash-safely.

    Streamed: ``state``'s values may be views (non-contiguous, e.g. :func:`ligo_fast.layout.official_views`); each
    is made contiguous on the CPU one at a time, once for its digest and once to be written, so the peak is one
    tensor besides the caller's, never a copy of the whole state.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    digests = {k: tensor_digest(state[k]) for k in keys}
    first: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for k in keys:
        v = state[k]
        key = (v.dtype, tuple(v.shape), digests[k])
        if key in first and torch.equal(state[first[key]].detach().cpu(), v.detach().cpu()):
            aliases[k] = first[key]
        else:
            first.setdefault(key, k)
    header = {"format": f"{_TAG}{FORMAT}", "sha256": state_digest(state, digests), "aliases": json.dumps(aliases)}
    entries = [Entry(k, tuple(state[k].shape), state[k].dtype) for k in keys if k not in aliases]
    nbytes = sum(e.nbytes for e in entries)
    atomic_write(path / WEIGHTS, lambda p: write_safetensors(p, entries, state.__getitem__, header), nbytes=nbytes)
    write_json(path / META, {"format": FORMAT, **meta})


class OperatorReader:
    """The tensors of an operator file, read one at a time: ours (``.safetensors``: the format tag and the alias table
    checked on opening, the digest by :meth:`verify` once the tensors were read) or an official ``pytorch_model.bin``
    (loaded whole with ``weights_only=True``: no code runs). Open it with :func:`open_operator`."""

    def __init__(self, path: Path, require_digest: bool = False, tensors: dict[str, Tensor] | None = None) -> None:
        self.path = path
        self._tensors = tensors
        self._file = None if tensors is not None else SafetensorsReader(path)
        self.aliases: dict[str, str] = {}
        self._sha256: str | None = None
        self._digests: dict[str, str] = {}
        if self._file is not None:
            try:
                self._check_header(require_digest)
            except BaseException:
                self._file.close()
                raise

    def _check_header(self, require_digest: bool) -> None:
        header = self._file.metadata
        tag = header.get("format", "")
        if tag.startswith(_TAG):
            version = tag[len(_TAG) :]
            if version not in {str(v) for v in FORMATS}:
                raise ValueError(f"{self.path}: operator format {version!r}, this ligo_fast reads {list(FORMATS)}")
        if "aliases" in header:
            try:
                aliases = json.loads(header["aliases"])
                if not isinstance(aliases, dict) or not all(
                    isinstance(a, str) and t in self._file.entries and a not in self._file.entries
                    for a, t in aliases.items()
                ):
                    raise TypeError
            except (TypeError, ValueError, RecursionError) as e:
                raise ValueError(f"{self.path}: damaged alias table in its header") from e
            self.aliases = aliases
        if (require_digest or tag == f"{_TAG}{FORMAT}") and "sha256" not in header:  # format 2 always writes one
            raise ValueError(
                f"{self.path}: format-{FORMAT} operator file without its digest (edited or damaged); refusing it"
            )
        self._sha256 = header.get("sha256")

    def __enter__(self) -> OperatorReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def keys(self) -> list[str]:
        """Every name, aliases included, sorted."""
        stored = self._tensors if self._file is None else self._file.entries
        return sorted([*stored, *self.aliases])

    def entry(self, name: str) -> Entry:
        """Name, shape and dtype of tensor ``name`` (an alias's are its target's), without reading it."""
        if self._file is None:
            t = self._tensors[name]
            return Entry(name, tuple(t.shape), t.dtype)
        return self._file.entry(self.aliases.get(name, name))

    def read(self, name: str, out: Tensor | None = None) -> Tensor:
        """Tensor ``name``, into ``out`` (contiguous, on the CPU, of its shape and dtype) or a new tensor (for a
        ``.bin``: the loaded one)."""
        if self._file is None:
            t = self._tensors[name]
            return t if out is None else out.copy_(t)
        stored = self.aliases.get(name, name)
        t = self._file.read(stored, out)
        if self._sha256 is not None and stored not in self._digests:
            self._digests[stored] = tensor_digest(t)
        return t

    def verify(self) -> None:
        """Check the digest in the header against every tensor (those not read yet are read, one at a time)."""
        if self._sha256 is None:
            return
        for k in self._file.entries:
            if k not in self._digests:
                self.read(k)
        state = {k: self.entry(k) for k in self.keys()}
        if state_digest(state, {k: self._digests[self.aliases.get(k, k)] for k in state}) != self._sha256:
            raise ValueError(f"{self.path}: contents do not match the digest in its header (damaged or partly written)")


def open_operator(path, *, require_digest: bool = False) -> OperatorReader:
    """An :class:`OperatorReader` of a directory (ours or official), a ``.safetensors`` file or a ``pytorch_model.bin``.

    A format-2 file, or any safetensors file when ``require_digest`` (its ``ligo_config.json`` says format 2), must
    carry its digest. An unreadable file raises ``ValueError`` naming it, a missing one ``FileNotFoundError``.
    """
    path = Path(path)
    if path.is_dir():
        for name in (WEIGHTS, OFFICIAL):
            if (path / name).exists():
                return open_operator(path / name, require_digest=require_digest)
        raise FileNotFoundError(f"{path} holds neither {WEIGHTS} nor {OFFICIAL}")
    if not path.exists():
        raise FileNotFoundError(f"no operator checkpoint at {path}")
    if path.suffix == ".safetensors":
        return OperatorReader(path, require_digest)
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: pickle errors, zip errors, refused globals
        raise ValueError(f"{path}: not a readable torch checkpoint ({_first_line(e)})") from e
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise ValueError(f"{path}: expected a state dict (names -> tensors)")
    return OperatorReader(path, tensors=sd)


def read_tensors(path, *, require_digest: bool = False) -> dict[str, Tensor]:
    """Every tensor of an operator file (:func:`open_operator`) by name, checked; an alias is the same tensor object
    as its target."""
    with open_operator(path, require_digest=require_digest) as r:
        stored = {k: r.read(k) for k in r.keys() if k not in r.aliases}
        sd = {k: stored[r.aliases.get(k, k)] for k in r.keys()}
        r.verify()
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
