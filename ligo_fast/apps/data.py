"""Text -> one token stream -> batches: the data layer of the ``ligo-fast`` command line and the savings experiment.

- files: :func:`collect_files` (files as given, directories recursively without hidden entries, optionally
  text files only), :func:`split_files` (a seeded, disjoint train/validation split by file), :func:`text_problem`
  (why a file is no text: the command line refuses binary files);
- tokens: :func:`encode_files` (a Hugging Face tokenizer, or the bytes 0..255), each file followed by a
  separator id; :func:`mask_token_id`;
- batches: :func:`random_windows` (seeded random windows of a stream), :func:`make_batch` (the inputs of a causal
  or masked LM; batch ``k`` depends on ``(seed, k)`` alone, so a resumed run sees the same batches),
  :func:`validation_windows` (a fixed, evenly spaced set).

Imports only torch (a tokenizer is passed in). Bad input (unreadable files too) raises :class:`DataError` (a
``ValueError``) or ``FileNotFoundError`` with a one-line message that names no command-line option; callers add
their context.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

NEWLINE = 10  # the byte that ends each file of a byte-level stream unless the caller names another separator
MASK_FRACTION = 0.15
IGNORE_INDEX = -100  # the label Hugging Face losses skip


class DataError(ValueError):
    """Input data that cannot be used (no files, empty files, a tokenizer without a mask token)."""


# ---------------------------------------------------------------------------------------------- files
def is_text(path: Path) -> bool:
    """True when the first 4 KiB of ``path`` hold no NUL byte."""
    with open(path, "rb") as f:
        return b"\0" not in f.read(4096)


TEXT_CHUNK = 1 << 20  # bytes text_problem reads at a time
CONTROL_FRACTION = 0.01  # more control bytes than this (tab, newlines, form feed, escape aside): binary
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\r\f\v\b\x1b") + b"\x7f"


def text_problem(path: Path) -> str | None:
    """None when all of ``path`` looks like text; else why not (a NUL byte, or more than 1% control bytes:
    executables, archives, random bytes). The whole file is read (in chunks), so a text prefix cannot hide a binary
    behind it. Any 8-bit encoding passes; UTF-16 (NUL bytes) does not."""
    size = control = 0
    with open(path, "rb") as f:
        while chunk := f.read(TEXT_CHUNK):
            nul = chunk.find(b"\0")
            if nul >= 0:
                return f"a NUL byte at offset {size + nul}"
            control += len(chunk) - len(chunk.translate(None, _CONTROL))
            size += len(chunk)
    if size and control > CONTROL_FRACTION * size:
        return f"{control / size:.0%} control bytes"
    return None


def collect_files(paths: Sequence[str | os.PathLike], *, text_only: bool = False) -> list[Path]:
    """The files behind ``paths``: a file as given, a directory's files recursively (hidden entries skipped,
    sorted by path; with ``text_only`` also files :func:`is_text` rejects), in the order of ``paths``."""
    out: list[Path] = []
    for s in paths:
        p = Path(s)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file()
                    and not any(part.startswith(".") for part in f.relative_to(p).parts)
                    and (not text_only or is_text(f))
                )
            )
        else:
            raise FileNotFoundError(f"{s}: no such file or directory")
    if not out:
        raise DataError(f"{' '.join(map(str, paths))}: no {'text ' if text_only else ''}files found")
    return out


def split_files(files: Sequence[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic, disjoint (train, validation) split by file.

    The files are sorted, shuffled with ``random.Random(seed)``, and the first ``ceil(val_fraction * n)`` (at
    least 1, at most n - 1) are the validation set. Both returned lists are sorted. One file: ``([f], [f])``
    (the caller splits its tokens instead).
    """
    files = sorted(Path(f) for f in files)
    if len(set(files)) != len(files):
        raise DataError("duplicate corpus files")
    if len(files) == 1:
        return list(files), list(files)
    n_val = min(len(files) - 1, max(1, math.ceil(val_fraction * len(files))))
    order = list(files)
    random.Random(seed).shuffle(order)
    return sorted(order[n_val:]), sorted(order[:n_val])


# ---------------------------------------------------------------------------------------------- tokens
def compact_dtype(n_ids: int) -> torch.dtype:
    """The smallest integer dtype that holds ids ``0 .. n_ids - 1`` and supports what batches do with a stream
    (indexing, ``max``, ``repeat``): uint8, int16 or int32 (torch's uint16 has no ``max``)."""
    if n_ids <= 2**8:
        return torch.uint8
    return torch.int16 if n_ids <= 2**15 else torch.int32


def _file_bytes(f: Path) -> Tensor:
    """The bytes of file ``f`` as a uint8 tensor mapped from the file (private mapping: pages stay in the page
    cache, so concatenating holds one copy of the corpus, not two)."""
    n = f.stat().st_size
    if not n:
        return torch.empty(0, dtype=torch.uint8)
    return torch.from_file(str(f), shared=False, size=n, dtype=torch.uint8)


def encode_files(
    files: Sequence[Path], tokenizer=None, *, separator: int | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """One token stream (n_tokens,) of ``dtype``: the files in order, each non-empty one followed by ``separator``.

    Tokens are the tokenizer's ids (text read as UTF-8, undecodable bytes replaced; no special tokens added) or,
    without a tokenizer, the file's bytes 0..255 (read through a memory map). ``separator`` None: the tokenizer's
    EOS id (else its SEP id, else nothing), or the newline byte for bytes. ``dtype`` must hold every id; None: the
    smallest that holds the vocabulary (:func:`compact_dtype`: bytes as uint8, so a 300 MB text file is a 300 MB
    stream, not 2.4 GB of int64). Batches are int64 whatever the stream's dtype.
    """
    if separator is None:
        if tokenizer is None:
            separator = NEWLINE
        else:
            separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if dtype is None:
        n_ids = 256 if tokenizer is None else len(tokenizer)
        dtype = compact_dtype(max(n_ids, (separator or 0) + 1))
    sep = None if separator is None else torch.tensor([separator], dtype=dtype)
    parts: list[Tensor] = []
    for f in files:
        try:
            if tokenizer is None:
                ids = _file_bytes(Path(f)).to(dtype)
            else:
                text = Path(f).read_text(encoding="utf-8", errors="replace")
                ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=dtype)
        except OSError as e:
            raise DataError(f"{f}: cannot read it ({e.strerror or e})") from e
        if not ids.numel():
            continue
        parts.append(ids)
        if sep is not None:
            parts.append(sep)
    if not parts:
        raise DataError("the files are empty")
    return torch.cat(parts)


def mask_token_id(tokenizer, config) -> int:
    """The id masked positions get: the tokenizer's mask token, else ``config.mask_token_id``, else the last id."""
    if tokenizer is not None:
        if tokenizer.mask_token_id is None:
            raise DataError("the masked LM's tokenizer has no mask token")
        return int(tokenizer.mask_token_id)
    mid = getattr(config, "mask_token_id", None)
    return int(mid) if mid is not None else int(config.vocab_size) - 1


# ---------------------------------------------------------------------------------------------- batches
def step_seed(seed: int, step: int) -> int:
    """The seed of everything random in step ``step`` of a run seeded ``seed`` (batch, masks, dropout)."""
    return seed * 1_000_003 + step


def tiled(stream: Tensor, min_tokens: int) -> Tensor:
    """``stream`` repeated as often as needed to hold at least ``min_tokens`` tokens (itself when it does)."""
    if stream.numel() < min_tokens:
        stream = stream.repeat(math.ceil(min_tokens / stream.numel()))
    return stream


def random_windows(stream: Tensor, batch_size: int, length: int, gen: torch.Generator, *, skip_last: int = 0) -> Tensor:
    """``batch_size`` windows of ``length`` tokens at uniformly drawn starts: int64 (batch_size, length).

    A stream shorter than ``length + 1`` tokens is tiled first. ``skip_last`` leaves out that many of the last
    possible starts (the savings experiment draws its (inputs + 1 target) windows with 1, as it was measured).
    """
    stream = tiled(stream, length + 1)
    starts = torch.randint(0, stream.numel() - length + 1 - skip_last, (batch_size,), generator=gen)
    return stream[starts[:, None] + torch.arange(length)].long()


def mask_tokens(ids: Tensor, mask_id: int, gen: torch.Generator, fraction: float = MASK_FRACTION) -> dict[str, Tensor]:
    """Masked-LM inputs of ``ids`` (B, T): each position masked with probability ``fraction`` (at least one a
    batch), replaced by ``mask_id`` in ``input_ids`` and kept in ``labels`` (:data:`IGNORE_INDEX` elsewhere)."""
    masked = torch.rand(ids.shape, generator=gen) < fraction
    if not masked.any():
        masked[0, int(torch.randint(0, ids.shape[1], (1,), generator=gen))] = True
    labels = torch.where(masked, ids, torch.full_like(ids, IGNORE_INDEX))
    return {"input_ids": torch.where(masked, torch.full_like(ids, mask_id), ids), "labels": labels}


def bos_of(tokenizer) -> int | None:
    """The BOS id a tokenizer puts before every text it encodes (Gemma, Llama), else None (GPT-2, BERT, bytes):
    models trained that way expect it first in every sequence (without it Gemma's loss on the same text is far
    higher), so windows cut out of a stream get it prepended (:func:`with_bos`)."""
    bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    if bos is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if len(ids) and ids[0] == bos else None


def with_bos(windows: Tensor, bos: int | None) -> Tensor:
    """``windows`` (B, T) with ``bos`` as a new first column: (B, T + 1); unchanged when ``bos`` is None."""
    if bos is None:
        return windows
    return torch.cat([torch.full((windows.shape[0], 1), bos, dtype=windows.dtype), windows], 1)


def make_batch(
    stream: Tensor,
    step: int,
    seed: int,
    batch_size: int,
    seq_len: int,
    mask_id: int | None = None,
    bos_id: int | None = None,
) -> dict[str, Tensor]:
    """Batch number ``step`` as Hugging Face model inputs, the same for the same ``(seed, step)`` whatever came
    before: random windows of ``seq_len`` tokens (with ``bos_id``: that token then ``seq_len - 1`` of the stream);
    ``mask_id`` None: causal (``labels = input_ids``, the model shifts them), else masked LM (:func:`mask_tokens`)."""
    g = torch.Generator().manual_seed(step_seed(seed, step))
    ids = with_bos(random_windows(stream, batch_size, seq_len - (bos_id is not None), g), bos_id)
    if mask_id is None:
        return {"input_ids": ids, "labels": ids.clone()}
    return mask_tokens(ids, mask_id, g)


def validation_windows(stream: Tensor, n_windows: int, length: int) -> Tensor:
    """A fixed validation set: ``n_windows`` evenly spaced windows of ``length`` tokens, int64 (n_windows, length).
    A stream shorter than ``length + 1`` tokens is tiled first."""
    stream = tiled(stream, length + 1)
    last = stream.numel() - length
    starts = torch.linspace(0, last, n_windows).long()
    return stream[starts[:, None] + torch.arange(length)].long()


def text_batches(
    stream: Tensor,
    seed: int,
    batch_size: int,
    seq_len: int,
    n_eval: int,
    mask_id: int | None = None,
    bos_id: int | None = None,
) -> tuple[Callable[[int], dict[str, Tensor]], dict[str, Tensor]]:
    """``(batch_at, eval_batch)`` of ``ligo-fast grow``'s training text: ``batch_at(k)`` is :func:`make_batch`'s
    batch ``k``; ``eval_batch`` the fixed evaluation batch, ``n_eval`` :func:`validation_windows` of ``seq_len``
    tokens (with ``bos_id``: that token first), masked with ``seed`` for a masked LM."""

    def batch_at(k: int) -> dict[str, Tensor]:
        return make_batch(stream, k, seed, batch_size, seq_len, mask_id, bos_id)

    windows = with_bos(validation_windows(stream, n_eval, seq_len - (bos_id is not None)), bos_id)
    if mask_id is not None:
        return batch_at, mask_tokens(windows, mask_id, torch.Generator().manual_seed(seed))
    return batch_at, {"input_ids": windows, "labels": windows.clone()}
