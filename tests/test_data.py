"""The shared data layer (ligo_fast.apps.data): file collection, both tokenizations, the split, batches, MLM masks.

Oracles are written independently here: the bytes of the files, the tokenizer's own ids, windows cut by hand.
"""

from __future__ import annotations

import random

import pytest
import torch
import transformers as T

from ligo_fast.apps import data


@pytest.fixture
def tree(tmp_path):
    """a.txt, b/c.txt (nested), an empty file, a hidden file and directory, a binary file."""
    (tmp_path / "a.txt").write_text("alpha beta\ngamma")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "c.txt").write_text("delta  epsilon é")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / ".hidden.txt").write_text("secret")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / "z.bin").write_bytes(b"\x01\x00\x02")
    return tmp_path


def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", mask_token="[MASK]")


# ------------------------------------------------------------------------------------------ files
def test_collect_files_recurses_skips_hidden_and_keeps_order(tree):
    names = [f.relative_to(tree).as_posix() for f in data.collect_files([tree])]
    assert names == ["a.txt", "b/c.txt", "empty.txt", "z.bin"]
    text = [f.relative_to(tree).as_posix() for f in data.collect_files([tree], text_only=True)]
    assert text == ["a.txt", "b/c.txt", "empty.txt"]  # the NUL byte marks z.bin as binary
    # paths in the order given; a file given by name is taken even when hidden or binary
    given = data.collect_files([tree / "z.bin", tree / "b", tree / ".hidden.txt"], text_only=True)
    assert [f.name for f in given] == ["z.bin", "c.txt", ".hidden.txt"]


def test_collect_files_errors(tree):
    with pytest.raises(FileNotFoundError, match="nope: no such file or directory"):
        data.collect_files([tree / "a.txt", tree / "nope"])
    (tree / "void").mkdir()
    with pytest.raises(data.DataError, match="void: no files found"):
        data.collect_files([tree / "void"])
    (tree / "void" / ".x.txt").write_text("hidden")
    (tree / "void" / "y.bin").write_bytes(b"\0")
    with pytest.raises(data.DataError, match="void: no text files found"):
        data.collect_files([tree / "void"], text_only=True)  # a hidden file and a binary one: nothing


def test_split_is_disjoint_deterministic_and_seeded(tmp_path):
    files = [tmp_path / f"f{i:02d}.txt" for i in range(23)]
    train, val = data.split_files(files, 0.2, seed=3)
    assert len(val) == 5 and len(train) == 18  # ceil(0.2 * 23)
    assert not set(train) & set(val) and set(train) | set(val) == set(files)
    assert train == sorted(train) and val == sorted(val)
    shuffled = list(files)
    random.Random(0).shuffle(shuffled)
    assert data.split_files(shuffled, 0.2, seed=3) == (train, val)
    assert data.split_files(files, 0.2, seed=4)[1] != val
    assert data.split_files(files[:2], 0.9, seed=0)[0]  # at least one file stays for training
    assert data.split_files(files[:1], 0.5, seed=0) == (files[:1], files[:1])
    with pytest.raises(data.DataError, match="duplicate"):
        data.split_files([files[0], files[0], files[1]], 0.5, seed=0)


# ------------------------------------------------------------------------------------------ tokens
def test_byte_encoding_is_the_files_bytes_with_separators(tree):
    files = [tree / "a.txt", tree / "empty.txt", tree / "b" / "c.txt"]
    raw = [f.read_bytes() for f in files]
    stream = data.encode_files(files)
    assert stream.dtype == torch.uint8  # one byte a token: a corpus costs its size in memory, not 8x
    assert stream.tolist() == list(raw[0]) + [10] + list(raw[2]) + [10]  # the empty file adds nothing
    small = data.encode_files(files, separator=257, dtype=torch.int16)
    assert small.dtype == torch.int16 and small.tolist() == list(raw[0]) + [257] + list(raw[2]) + [257]
    assert max(raw[2]) > 127  # the UTF-8 bytes of "é" are tokens of their own
    with pytest.raises(data.DataError, match="empty"):
        data.encode_files([tree / "empty.txt"])


def test_tokenizer_encoding_uses_its_ids_and_its_separator(tree):
    tok = _word_tokenizer(["alpha", "beta", "gamma", "delta", "epsilon"])
    files = [tree / "a.txt", tree / "empty.txt", tree / "b" / "c.txt"]
    stream = data.encode_files(files, tok)
    sep = tok.sep_token_id  # no EOS token: SEP ends each file
    expected = [tok.convert_tokens_to_ids(w) for w in ("alpha", "beta", "gamma")] + [sep]
    expected += [tok.convert_tokens_to_ids(w) for w in ("delta", "epsilon")] + [tok.unk_token_id, sep]
    assert stream.tolist() == expected
    assert stream.dtype == torch.uint8  # 8 ids
    assert data.encode_files(files, tok, separator=99).tolist().count(99) == 2


COMPACT = [(2, torch.uint8), (256, torch.uint8), (257, torch.int16), (2**15, torch.int16), (2**15 + 1, torch.int32)]


@pytest.mark.parametrize("n_ids, dtype", [*COMPACT, (151_000, torch.int32)])
def test_streams_are_stored_in_the_smallest_dtype_and_batch_alike(n_ids, dtype):
    """N11: the stream's dtype follows the vocabulary size; batches (int64) are the same as from an int64 stream,
    so a run resumed from a checkpoint of the int64 days sees the same batches."""
    assert data.compact_dtype(n_ids) == dtype
    wide = torch.randint(0, n_ids, (1001,), generator=torch.Generator().manual_seed(n_ids))
    wide[7] = n_ids - 1
    narrow = wide.to(dtype)
    assert torch.equal(narrow.long(), wide) and int(narrow.max()) == n_ids - 1
    for mask_id in (None, n_ids - 1):
        a, b = data.make_batch(wide, 4, 3, 6, 33, mask_id), data.make_batch(narrow, 4, 3, 6, 33, mask_id)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and b[k].dtype == torch.int64 for k in a)
    assert torch.equal(data.validation_windows(wide, 5, 9), data.validation_windows(narrow, 5, 9))


def test_mask_token_id_sources():
    tok = _word_tokenizer(["a"])
    cfg = T.BertConfig(vocab_size=50)
    assert data.mask_token_id(tok, cfg) == tok.mask_token_id == 2
    assert data.mask_token_id(None, cfg) == 49  # BertConfig has no mask_token_id: the last id
    cfg.mask_token_id = 7
    assert data.mask_token_id(None, cfg) == 7
    no_mask = T.PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, unk_token="[UNK]")
    with pytest.raises(data.DataError, match="no mask token"):
        data.mask_token_id(no_mask, cfg)


# ------------------------------------------------------------------------------------------ batches
def test_causal_batches_are_windows_of_the_stream_fixed_by_seed_and_step():
    stream = torch.randint(0, 250, (301,), generator=torch.Generator().manual_seed(5))
    a = data.make_batch(stream, 3, 0, 5, 17)
    ids = a["input_ids"]
    assert ids.shape == (5, 17) and ids.dtype == torch.int64 and torch.equal(a["labels"], ids)
    for row in ids:  # every row is a window of the stream
        starts = [s for s in range(301 - 17 + 1) if torch.equal(stream[s : s + 17], row)]
        assert starts
    assert torch.equal(ids, data.make_batch(stream, 3, 0, 5, 17)["input_ids"])  # same (seed, step): same batch
    data.make_batch(stream, 2, 0, 5, 17)  # whatever came before
    assert torch.equal(ids, data.make_batch(stream, 3, 0, 5, 17)["input_ids"])
    assert not torch.equal(ids, data.make_batch(stream, 4, 0, 5, 17)["input_ids"])
    assert not torch.equal(ids, data.make_batch(stream, 3, 1, 5, 17)["input_ids"])
    # the draw is torch.randint over every start, from a generator seeded by step_seed(seed, step)
    g = torch.Generator().manual_seed(data.step_seed(0, 3))
    starts = torch.randint(0, 301 - 17 + 1, (5,), generator=g)
    assert torch.equal(ids, torch.stack([stream[s : s + 17] for s in starts.tolist()]))


def test_every_start_is_drawn_and_skip_last_leaves_the_end_out():
    stream = torch.arange(12)
    g = torch.Generator().manual_seed(0)
    starts = set(data.random_windows(stream, 4000, 5, g)[:, 0].tolist())
    assert starts == set(range(12 - 5 + 1))
    starts = set(data.random_windows(stream, 4000, 5, g, skip_last=1)[:, 0].tolist())
    assert starts == set(range(12 - 5))


def test_short_streams_are_tiled():
    stream = torch.tensor([4, 5, 6], dtype=torch.int16)
    w = data.random_windows(stream, 8, 7, torch.Generator().manual_seed(1))
    assert w.dtype == torch.int64 and w.shape == (8, 7)
    tiled = torch.tensor([4, 5, 6] * 3)
    for row in w:
        assert any(torch.equal(row, tiled[s : s + 7]) for s in range(3))
    v = data.validation_windows(stream, 3, 7)
    assert v.shape == (3, 7) and torch.equal(v[0], tiled[:7]) and torch.equal(v[-1], tiled[2:9])


def test_validation_windows_are_evenly_spaced_and_cover_the_ends():
    stream = torch.randint(0, 100, (1000,), generator=torch.Generator().manual_seed(2))
    v = data.validation_windows(stream, 4, 10)
    starts = [0, 330, 660, 990]  # linspace(0, 1000 - 10, 4)
    assert torch.equal(v, torch.stack([stream[s : s + 10] for s in starts]))


@pytest.mark.parametrize("batch_size,seq_len", [(1, 3), (3, 2), (64, 11)])
def test_masked_batches(batch_size, seq_len):
    stream = torch.randint(3, 90, (500,), generator=torch.Generator().manual_seed(7))
    for step in range(1, 40):
        b = data.make_batch(stream, step, 4, batch_size, seq_len, mask_id=99)
        causal = data.make_batch(stream, step, 4, batch_size, seq_len)["input_ids"]  # the same windows
        masked = b["labels"] != data.IGNORE_INDEX
        assert masked.any()  # at least one masked position a batch, even for 1 x 3 tokens
        assert (b["input_ids"][masked] == 99).all() and torch.equal(b["labels"][masked], causal[masked])
        assert torch.equal(b["input_ids"][~masked], causal[~masked])
        again = data.make_batch(stream, step, 4, batch_size, seq_len, mask_id=99)
        assert torch.equal(b["input_ids"], again["input_ids"]) and torch.equal(b["labels"], again["labels"])
    big = data.make_batch(stream, 1, 0, 256, 64, mask_id=99)
    frac = (big["labels"] != data.IGNORE_INDEX).float().mean().item()
    assert abs(frac - data.MASK_FRACTION) < 0.01  # 16384 positions: 0.15 +- 3 sigma (0.0084)


class _Tok:
    """A duck-typed tokenizer: ``bos_token_id`` and whether encoding a text puts it first."""

    def __init__(self, bos, adds: bool):
        self.bos_token_id, self.adds = bos, adds

    def __call__(self, text):
        return {"input_ids": ([self.bos_token_id] if self.adds else []) + [7]}


def test_windows_start_with_bos_where_the_tokenizer_puts_one_first():
    assert data.bos_of(_Tok(2, True)) == 2
    assert data.bos_of(_Tok(2, False)) is None and data.bos_of(_Tok(None, False)) is None and data.bos_of(None) is None
    stream = torch.arange(100, 400)
    plain = data.make_batch(stream, 3, 0, 5, 17)["input_ids"]
    b = data.make_batch(stream, 3, 0, 5, 17, bos_id=2)
    assert b["input_ids"].shape == (5, 17) and (b["input_ids"][:, 0] == 2).all()
    assert (b["input_ids"][:, 2:] - b["input_ids"][:, 1:-1] == 1).all()  # then a contiguous window of the stream
    assert torch.equal(b["labels"], b["input_ids"]) and not (plain == 2).any()
    w = data.with_bos(torch.ones(3, 4, dtype=torch.long), 9)
    assert w.shape == (3, 5) and (w[:, 0] == 9).all() and data.with_bos(w, None) is w
