"""The experiment's text: the Python standard library's own source by default, byte-level tokens.

:func:`load_corpus` reads a corpus (the stdlib's ``*.py`` files, or any text file or directory), splits it into
training and validation files with :func:`ligo_fast.apps.data.split_files` (a single file is split by tokens) and
encodes both as byte tokens, every file ended by :data:`EOS`.

Imports torch and ``ligo_fast.apps.data``.
"""

from __future__ import annotations

import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..data import DataError, collect_files, encode_files, split_files

BYTE_VOCAB = 256
BOS, EOS, PAD = 256, 257, 258
VOCAB_SIZE = 264
"""Byte ids 0..255, then BOS/EOS/PAD; 259..263 are unused (the vocabulary is rounded up to a multiple of 8)."""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The standard library's own ``*.py`` files, sorted by path (``site-packages``/``dist-packages`` excluded)."""
    root = stdlib_root()
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if p.is_file() and not skip.intersection(p.relative_to(root).parts))


def corpus_files(path: str | os.PathLike | None = None) -> list[Path]:
    """The corpus files, sorted. ``None``: :func:`stdlib_files`; a file: itself; a directory: every text file under
    it (hidden entries and files with NUL bytes in their first 4 KiB skipped)."""
    if path is None:
        files = stdlib_files()
        if not files:
            raise DataError(f"no text files found in {stdlib_root()}")
        return files
    return collect_files([path], text_only=True)


@dataclass
class Corpus:
    """Token streams: ``train`` and ``val`` int16 tensors (n_tokens,), and the files behind them."""

    train: Tensor
    val: Tensor
    train_files: list[Path]
    val_files: list[Path]
    source: str

    def describe(self) -> str:
        return (
            f"{self.source}: {len(self.train_files)} train files ({self.train.numel() / 1e6:.2f}M tokens), "
            f"{len(self.val_files)} validation files ({self.val.numel() / 1e6:.2f}M tokens)"
        )


def load_corpus(
    path: str | os.PathLike | None = None, val_fraction: float = 0.05, seed: int = 0, max_files: int | None = None
) -> Corpus:
    """Read (:func:`corpus_files`), split (``data.split_files``) and tokenize a corpus: byte tokens, int16, each file
    ended by :data:`EOS`. A single file is split by bytes: its last ``val_fraction`` (at least two tokens each side)
    is the validation stream."""
    files = corpus_files(path)
    if max_files is not None:
        files = files[:max_files]
    source = str(path) if path is not None else f"Python {platform.python_version()} stdlib *.py ({stdlib_root()})"
    if len(files) == 1:
        tokens = _encode(files)
        if tokens.numel() < 4:
            raise DataError(f"{files[0]} is too short to split")
        cut = min(tokens.numel() - 2, max(2, int(tokens.numel() * (1 - val_fraction))))
        return Corpus(tokens[:cut], tokens[cut:], files, files, source)
    train_files, val_files = split_files(files, val_fraction, seed)
    return Corpus(_encode(train_files), _encode(val_files), train_files, val_files, source)


def _encode(files: list[Path]) -> Tensor:
    return encode_files(files, separator=EOS, dtype=torch.int16)
