"""A Hugging Face checkpoint written as its tensors arrive: safetensors shards, the index, crash-safely.

The names, shapes and dtypes of every tensor are known before the first value exists (from a model on meta), so
each shard's header is written first and the values are appended in the announced order, one tensor at a time,
without ever holding a shard in memory. The files are those of transformers' ``save_pretrained``: one
``model.safetensors``, or ``model-00001-of-0000N.safetensors`` shards and ``model.safetensors.index.json``
(``{"metadata": {"total_size": ..., "total_parameters": ...}, "weight_map": {name: file}}``); shards are filled
in order and a new one starts when the next tensor would pass ``max_shard_size`` (a larger tensor gets a shard of
its own), as transformers does.

Crash safety: everything is written into a temporary directory inside the target and fsynced; then the other
files (``config.json``, ...) and the shards are renamed into place and the index, or the single weights file, goes
last, so a directory that holds it holds every shard it names; shards of an earlier save that the new index does
not name are removed, and so are the temporary directories of saves that were killed. Imports: ``serialization``'s
crash-safe helpers and its safetensors header and bytes (:class:`Entry`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from torch import Tensor

from .serialization import Entry, fsync_dir, fsync_file, parse_bytes, safetensors_header, tensor_bytes

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARD = "model-{:05d}-of-{:05d}.safetensors"
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
DEFAULT_SHARD_SIZE = "5GB"  # the Hub's customary shard size (transformers 4's default)


def split(entries: Iterable[Entry], max_bytes: int) -> list[list[Entry]]:
    """Consecutive shards of at most ``max_bytes`` each (a larger tensor alone in its shard)."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards if shards[0] else []


def write_checkpoint(
    directory,
    entries: list[Entry],
    chunks: Iterable[Mapping[str, Tensor]],
    *,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    extra: Callable[[Path], None] | None = None,
    total_parameters: int | None = None,
    ranks: list[list[Entry]] | None = None,
    rank: int = 0,
    barrier: Callable[[], None] | None = None,
) -> list[str]:
    """Write a Hugging Face safetensors checkpoint into ``directory`` as ``chunks`` produce its tensors.

    Args:
        directory: the output directory (created if needed).
        entries: every tensor to write, in the order the chunks produce them.
        chunks: mappings name -> tensor, in order; names not in ``entries`` (tied aliases) are skipped. A tensor
            may also come as consecutive blocks of its first dim's rows, one per chunk. A chunk may be dropped by the
            caller once the next is asked for: nothing of it is kept. With ``ranks``: only this
            rank's tensors.
        max_shard_size: bytes per shard (int, or a string such as ``"5GB"``).
        extra: ``extra(tmp_dir)`` writes the other files (``config.json``, ...) next to the weights (rank 0's job).
        total_parameters: recorded in a sharded checkpoint's index, as transformers does.
        ranks: written by several processes: ``ranks[r]`` are the entries rank ``r`` produces and writes (in its
            chunks' order; together ``entries``), each into shards of its own, numbered rank after rank; rank 0
            writes the other files and the index. Every rank calls this with the same ``entries`` and ``ranks``.
        rank: this process's rank; ``barrier``: waits for every rank (``torch.distributed.barrier``).

    Returns:
        The names of the files this rank wrote, the index or single weights file last.
    """
    directory = Path(directory)
    max_bytes = parse_bytes(max_shard_size, "max_shard_size")
    splits = [split(owned, max_bytes) for owned in (ranks if ranks is not None else [entries])]
    count = sum(len(s) for s in splits)
    if not count:
        raise ValueError("write_checkpoint: no tensors to write")
    single = ranks is None and count == 1
    names = [WEIGHTS] if single else [SHARD.format(i + 1, count) for i in range(count)]
    first = sum(len(s) for s in splits[:rank])
    mine, my_names = splits[rank], names[first : first + len(splits[rank])]
    wait = barrier or (lambda: None)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale(directory)
    tmp = directory / f".materialize-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_shards(tmp, mine, my_names, chunks)
        if rank == 0 and extra is not None:
            extra(tmp)
        if rank == 0 and not single:
            shards = [shard for s in splits for shard in s]
            index = {
                "metadata": {"total_size": sum(e.nbytes for e in entries)},
                "weight_map": {e.name: f for f, shard in zip(names, shards, strict=True) for e in shard},
            }
            if total_parameters is not None:
                index["metadata"]["total_parameters"] = total_parameters
            (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        last = WEIGHTS if single else INDEX
        moved = [] if single else my_names  # by every rank, before rank 0 moves the rest, the index (or weights) last
        files = [*moved, *sorted(p.name for p in tmp.iterdir() if p.name not in (last, *moved))]
        files += [last] if (tmp / last).exists() else []
        for f in files:
            fsync_file(tmp / f)
        fsync_dir(tmp)
        wait()  # every rank's shards written: only then does any file of the old checkpoint go
        if rank == 0:
            (directory / (INDEX if single else WEIGHTS)).unlink(missing_ok=True)  # the other layout's entry
        wait()
        for f in moved:
            os.replace(tmp / f, directory / f)
        wait()  # every shard in place before the index names them
        if rank == 0:
            for f in files[len(moved) :]:
                os.replace(tmp / f, directory / f)
            for p in directory.iterdir():  # shards of an earlier, larger save
                if _SHARD_RE.fullmatch(p.name) and p.name not in names and p.is_file():
                    p.unlink()
        fsync_dir(directory)
        wait()
        return files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(directory: Path) -> None:
    """Remove the temporary directories that killed saves (their process is gone) left in ``directory``."""
    for p in directory.glob(".materialize-*.tmp"):
        pid = p.name[len(".materialize-") : -len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass  # alive (another user's process): not ours to remove


def _write_shards(tmp: Path, shards: list[list[Entry]], names: list[str], chunks: Iterable[Mapping[str, Tensor]]):
    """Append each tensor to its shard as its chunk arrives (the entries' order: shard by shard)."""
    order = [(i, e) for i, shard in enumerate(shards) for e in shard]
    pos, current, f, done = 0, -1, None, 0  # done: rows of order[pos] written (it may come in row blocks)
    try:
        for chunk in chunks:
            while pos < len(order) and order[pos][1].name in chunk:
                i, e = order[pos]
                t = chunk[e.name]
                whole = tuple(t.shape) == e.shape and not done
                if not whole and (not e.shape or t.dim() != len(e.shape) or tuple(t.shape[1:]) != e.shape[1:]
                                  or not 0 < done + t.shape[0] <= e.shape[0]):  # fmt: skip
                    raise RuntimeError(f"write_checkpoint: {e.name} has shape {tuple(t.shape)}, announced {e.shape}")
                if i != current:
                    if f is not None:
                        f.close()
                    f = open(tmp / names[i], "wb")  # noqa: SIM115 - closed when its shard is done, or below
                    f.write(safetensors_header(shards[i]))
                    current = i
                f.write(tensor_bytes(t.to(e.dtype)))
                done = 0 if whole else done + t.shape[0]
                if done and done < e.shape[0]:
                    break  # its next rows come with the next chunk
                pos, done = pos + 1, 0
            chunk = t = None  # before the next chunk is produced: this one can go
        if pos != len(order):
            raise RuntimeError(f"write_checkpoint: no value for {order[pos][1].name!r} (or it came out of order)")
    finally:
        if f is not None:
            f.close()
