"""Operator I/O (issue 20): ``save_operator`` streams (no copy of the operator), ``load_operator`` reads each tensor
into the built model (no second copy beside it), both keep the format; the streamed safetensors reader refuses
damaged headers. Memory is the kernel's resident high-water mark (reset before the call): bytes, not time."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import struct

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

import ligo_fast
from ligo_fast import produce as produce_module
from ligo_fast import serialization, spec


def _llama(h: int, layers: int, vocab: int = 12001) -> T.LlamaConfig:
    return T.LlamaConfig(
        hidden_size=h, intermediate_size=2 * h + 8, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=32, tie_word_embeddings=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def big():
    """A small Llama with a large vocabulary: its operator (about 25 MB, mostly the small embeddings and head, which
    the operator keeps) dwarfs the noise of the process's other allocations."""
    torch.manual_seed(0)
    small = T.LlamaForCausalLM(_llama(256, 2)).eval()
    return small, ligo_fast.grow(small, _llama(320, 3), seed=0)


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _peak_increase(fn) -> tuple[int, object]:
    """(how far ``fn`` raises the resident set above where it started, its result)."""
    gc.collect()
    try:  # freed memory the allocator kept would be reused unseen: give it back first (glibc)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pytest.skip("not glibc: freed memory cannot be handed back, so the high-water mark would hide allocations")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the high-water mark (VmHWM) to the resident set
    except OSError:
        pytest.skip("no /proc/self/clear_refs: the resident high-water mark cannot be reset here")
    start = _status("VmRSS")
    out = fn()
    return _status("VmHWM") - start, out


def _operator_bytes(model) -> int:
    return sum(v.numel() * v.element_size() for v in model.state_dict().values())


def test_save_operator_holds_no_copy_of_the_operator(big, tmp_path):
    small, model = big
    op = _operator_bytes(model)
    assert op > 20e6
    grown, _ = _peak_increase(lambda: model.save_operator(tmp_path))
    assert grown < 0.5 * op, (grown / op, op)  # was 1.2-2x: the state dict, a clone of it, safetensors' bytes
    # the file is what it was: safetensors' own loader reads it, each tensor once, the aliases and digest checked
    stored = load_file(str(tmp_path / serialization.WEIGHTS))
    back = serialization.read_tensors(tmp_path)
    state = model.state_dict()
    assert back.keys() == state.keys() and set(stored) <= set(state)
    for k, v in state.items():
        assert torch.equal(back[k], v) and (k not in stored or torch.equal(stored[k], v)), k


def test_load_operator_reads_into_the_model_without_a_second_copy(big, tmp_path):
    small, model = big
    model.save_operator(tmp_path)
    op = _operator_bytes(model)
    grown, loaded = _peak_increase(lambda: ligo_fast.load_operator(tmp_path, small))
    # the loaded model's own tensors are one operator; the file's copy beside them (plus the state dict the load
    # went through) made it about 2x
    assert grown < 1.6 * op, (grown / op, op)  # was 2.6x
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_file_of_another_dtype_loads_as_load_state_dict_casts_it(dtype, tmp_path):
    """A float32 operator file into a model built from a float64 / bfloat16 small model: each tensor goes through
    a temporary and is cast as ``load_state_dict`` casts (the oracle)."""
    torch.manual_seed(1)
    small, large = _llama(24, 2, vocab=67), _llama(40, 3, vocab=67)
    src = T.LlamaForCausalLM(small)
    model = ligo_fast.grow(src, large, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # trained: differs from its start
    model.save_operator(tmp_path)
    other = T.LlamaForCausalLM(small).to(dtype)
    other.load_state_dict(src.state_dict())
    loaded = ligo_fast.load_operator(tmp_path, other)
    oracle = ligo_fast.LiGOModel(other, large, model.ligo_config)
    oracle.load_state_dict(serialization.read_tensors(tmp_path))
    got, want = loaded.state_dict(), oracle.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    ids = torch.randint(0, 67, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, oracle(input_ids=ids).logits)


def _header_file(path, head: dict, data: bytes) -> None:
    raw = json.dumps(head).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    "head, data, why",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "bytes for"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "does not follow"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "8 bytes for 12"),
        ({"a": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "entry 'a'"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "entry 'a'"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "does not follow",
        ),
        ([1, 2], b"", "not a safetensors header"),
        ({"__metadata__": {"x": 1}}, b"", "not a safetensors header"),
    ],
)
def test_damaged_headers_are_refused_naming_the_file(tmp_path, head, data, why):
    p = tmp_path / "w.safetensors"
    _header_file(p, head, data)
    with pytest.raises(ValueError, match="truncated or damaged") as e:
        serialization.SafetensorsReader(p)
    assert str(p) in str(e.value) and why in str(e.value)


def test_a_header_length_past_the_end_is_refused(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ValueError, match="past the end"):
        serialization.SafetensorsReader(p)


def test_the_reader_reads_what_safetensors_wrote(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(4)
    sd = {
        "b": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "a": torch.randn(7, generator=g, dtype=torch.float64),
        "i": torch.randint(-9, 9, (2, 3), generator=g),
        "z": torch.empty(0, 4),
        "s": torch.tensor(2.5),
    }
    save_file(sd, str(tmp_path / "w.safetensors"), metadata={"k": "v"})
    with serialization.SafetensorsReader(tmp_path / "w.safetensors") as r:
        assert r.metadata == {"k": "v"} and set(r.entries) == set(sd)
        for k, v in sd.items():
            got = r.read(k)
            assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), k
        out = torch.empty(3, 5, dtype=torch.bfloat16)
        assert r.read("b", out) is out and torch.equal(out, sd["b"])
        with pytest.raises(ValueError, match="cannot read it into"):
            r.read("b", torch.empty(3, 5))
    assert os.path.getsize(tmp_path / "w.safetensors") > 0


# ---------------------------------------------------------------------------------------------- the streamed save
def test_the_shard_writer_takes_a_tensor_in_row_blocks(tmp_path):
    from ligo_fast import shards

    g = torch.Generator().manual_seed(5)
    a, b, c = torch.randn(7, 3, generator=g), torch.randn(5, generator=g), torch.tensor(1.5)
    entries = [shards.Entry(n, tuple(t.shape), torch.float32) for n, t in (("a", a), ("b", b), ("c", c))]
    chunks = [{"a": a[:2]}, {"a": a[2:6]}, {"a": a[6:], "b": b, "c": c}]
    shards.write_checkpoint(tmp_path / "blocks", entries, chunks)
    shards.write_checkpoint(tmp_path / "whole", entries, [{"a": a, "b": b, "c": c}])
    assert (tmp_path / "blocks" / shards.WEIGHTS).read_bytes() == (tmp_path / "whole" / shards.WEIGHTS).read_bytes()
    for bad in ([{"a": a[:2]}, {"a": a[2:], "b": b[:4], "c": c}], [{"a": a[:5]}, {"a": a[3:], "b": b, "c": c}]):
        with pytest.raises(RuntimeError, match="announced|no value for 'b'"):  # short, or rows past the end
            shards.write_checkpoint(tmp_path / "bad", entries, bad)


def test_the_streamed_save_produces_the_vocabulary_matrices_in_row_blocks(tmp_path, monkeypatch):
    """Embedding and head of a Llama come in row blocks (as many as the per-layer kinds' chunks) and the result is
    ``materialize()``'s, bit for bit."""
    torch.manual_seed(2)
    small, large = _llama(24, 2, vocab=517), _llama(40, 5, vocab=517)
    model = ligo_fast.grow(T.LlamaForCausalLM(small), large, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    rows = []
    real = produce_module.produce

    def spy(slots, *args, **kwargs):
        if kwargs.get("vectors") is False:  # a weight matrix's call (the vectors' call holds every slot)
            rows.extend(s.shape_w[0] for s in slots if not s.layered)
        return real(slots, *args, **kwargs)

    monkeypatch.setattr(produce_module, "produce", spy)
    model.save_materialized(tmp_path, max_shard_size="100KB")
    assert sorted(rows) == [258, 258, 259, 259]  # 517 rows in 2 blocks (5 layers: 2 chunks, of 3 and 2), twice
    monkeypatch.undo()
    want = model.materialize().state_dict()
    got = T.LlamaForCausalLM.from_pretrained(tmp_path).state_dict()
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(got[k], v), k


def test_identical_operators_are_identical_files(tmp_path):
    """Issue 22, soak finding D: safetensors' own writer ordered the metadata keys at random, so two saves of one
    operator differed in bytes (and in the manifest's sha256). The streamed writer orders them as given: the same
    operator gives the same bytes, a rebuilt one included."""
    torch.manual_seed(4)
    small = T.LlamaForCausalLM(_llama(24, 2, vocab=67))
    a, b = (
        ligo_fast.grow(small, _llama(40, 3, vocab=67), seed=5),
        ligo_fast.grow(small, _llama(40, 3, vocab=67), seed=5),
    )
    a.save_operator(tmp_path / "a")
    a.save_operator(tmp_path / "a2")
    b.save_operator(tmp_path / "b")
    files = [p.name for p in (tmp_path / "a").iterdir()]
    assert "operator.safetensors" in files
    for name in files:
        first = (tmp_path / "a" / name).read_bytes()
        assert (tmp_path / "a2" / name).read_bytes() == first == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loading_runs_no_init_scheme_and_equals_the_drawn_start_filled(dtype, tmp_path, monkeypatch):
    """Issue 20: ``load_operator`` builds the operator's tensors uninitialised (``draw=False``) and fills them all
    from the file; the result equals a model built with its initial draws and then loaded (the way before), every
    operator tensor (read from the model's own modules, not the state dict), dtype and value, and its forward."""
    torch.manual_seed(6)
    small, large = _llama(24, 2, vocab=67), _llama(40, 3, vocab=67)
    src = T.LlamaForCausalLM(small).to(dtype)
    model = ligo_fast.grow(src, large, seed=7, depth_init="stackbert_noisy", width_init="rand", residual=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # trained: differs from any start
    model.save_operator(tmp_path)
    oracle = ligo_fast.LiGOModel(src, large, model.ligo_config)  # the way before: drawn, then overwritten
    oracle.load_state_dict(serialization.read_tensors(tmp_path))

    def refuse(*args, **kwargs):
        raise AssertionError("an initial draw while loading")

    for name in ("depth_init", "width_init", "_initial", "initial_tensors"):
        monkeypatch.setattr(spec, name, refuse)
    rng = torch.get_rng_state()
    loaded = ligo_fast.load_operator(tmp_path, src)
    assert torch.equal(torch.get_rng_state(), rng)  # no draw from the global generator either

    def own(m):
        return {**m.op._parameters, **m.op._buffers, **m.large.state_dict()}

    got, want = own(loaded), own(oracle)
    assert got.keys() == want.keys() and len(got) > 20
    for k, v in want.items():
        g = got[k]
        assert (g.dtype, g.shape, g.stride(), g.requires_grad) == (v.dtype, v.shape, v.stride(), v.requires_grad), k
        assert torch.equal(g, v), k
    ids = torch.randint(0, 67, (2, 5), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, oracle(input_ids=ids).logits)


def test_empty_tensors_have_the_initial_tensors_shapes_dtypes_and_layout():
    """The uninitialised operator of a load (``spec.empty_tensors``) is laid out as the drawn one."""
    torch.manual_seed(9)
    small = T.LlamaForCausalLM(_llama(24, 2, vocab=67)).to(torch.bfloat16)
    for cfg in (ligo_fast.LiGOConfig(seed=1), ligo_fast.LiGOConfig.official(residual=True, tie=False, seed=1)):
        drawn = spec.GrowthSpec.prepare(small, _llama(40, 3, vocab=67), cfg).initial
        empty = spec.GrowthSpec.prepare(small, _llama(40, 3, vocab=67), cfg, draw=False).initial
        assert list(empty) == list(drawn)
        for k, v in drawn.items():
            e = empty[k]
            assert (e.dtype, e.shape, e.stride(), e.device) == (v.dtype, v.shape, v.stride(), v.device), k


def test_a_matrix_of_few_rows_is_saved_in_one_call_and_equals_materialize(tmp_path):
    """A global matrix under two blocks of ``ROW_BLOCK_MIN`` rows (BERT's 2-row token-type table) is produced in one
    call: in one-row blocks the C++ backend's matrix-vector path rounded differently, and the save differed from
    ``materialize()`` in the last bit. Every tensor equal, on every backend available here."""
    torch.manual_seed(0)
    s = T.BertConfig(vocab_size=101, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=40,
                     max_position_embeddings=33, type_vocab_size=2)  # fmt: skip
    large = ligo_fast.large_config(s, hidden_size=40, num_attention_heads=5, intermediate_size=72, num_hidden_layers=3)
    model = ligo_fast.grow(T.BertForMaskedLM(s), large, depth_init="rand", width_init="rand", seed=1)
    model.save_materialized(tmp_path, max_shard_size="20KB")
    got = T.BertForMaskedLM.from_pretrained(tmp_path).state_dict()
    for k, v in model.materialize().state_dict().items():
        assert torch.equal(got[k], v), k
