"""materialize() built on meta module kind by module kind, and the streamed save (save_materialized).

The oracle is the way materialize() worked before: a fully initialised large HF model into which HF's own
``load_state_dict`` copies ``produce()`` (every weight at once) and the leftovers, cast by ``model.to(dtype)``.
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
from _models import build, configs, inputs, main_output
from safetensors import safe_open

import ligo_fast
from ligo_fast import compat, shards
from ligo_fast import produce as produce_module
from ligo_fast.compat import _produced, create_ligo_from_model, ligo_args, materialize_compat
from ligo_fast.model import LiGOModel
from ligo_fast.serialization import parse_bytes

FAMILIES = [
    ("LlamaForCausalLM", False),
    ("LlamaForCausalLM", True),
    ("BertForMaskedLM", True),
    ("GPT2LMHeadModel", True),
    ("ViTForImageClassification", False),
    ("BertModel", False),
]


def _oracle(model: LiGOModel, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The previous materialize(): a randomly initialised model, loaded with copies of every tensor."""
    produced = model.produce()
    large = model.hf_class(copy.deepcopy(model.config))
    state = {k: v.detach().clone() for k, v in model.large.state_dict().items()}
    state.update({k: v.detach().clone() for k, v in produced.items()})
    large.to(dtype=dtype or next(iter(produced.values())).dtype)
    missing, unexpected = large.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    return large.train(model.training)


def _grown(name: str, tie: bool, **options) -> LiGOModel:
    small_cfg, large_cfg = configs(name, tie=tie)
    torch.manual_seed(0)
    return ligo_fast.grow(build(name, small_cfg, seed=3), large_cfg, **options)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _everything(m: torch.nn.Module) -> dict:
    """Parameters and every buffer (non-persistent ones too: rotary frequencies)."""
    return {**m.state_dict(), **{"buffer:" + k: v for k, v in m.named_buffers()}}


@pytest.mark.parametrize(("name", "tie"), FAMILIES)
def test_materialize_equals_the_copying_path(name, tie):
    model = _grown(name, tie, residual=True)
    with torch.no_grad():  # a trained operator: every tensor off its initial value
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    model.train()
    ours, ref = model.materialize(), _oracle(model)
    _assert_same(_everything(ours), _everything(ref))
    assert ours.training and type(ours) is model.hf_class
    # the same parameters, tied where the reference is tied, and nothing shared with the operator
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert all(p.requires_grad for p in ours.parameters())
    mine = {t.untyped_storage().data_ptr() for t in [*model.state_dict().values(), *model.large.state_dict().values()]}
    assert not any(p.untyped_storage().data_ptr() in mine for p in ours.parameters())
    layers = [p for n, p in ours.named_parameters() if ".0." in n or ".1." in n]
    assert len({p.untyped_storage().data_ptr() for p in layers}) == len(layers)  # one storage per parameter
    if tie and hasattr(ours, "get_output_embeddings") and ours.get_output_embeddings() is not None:
        assert ours.get_output_embeddings().weight is ours.get_input_embeddings().weight
    x = inputs(name)
    with torch.no_grad():
        assert torch.equal(main_output(ours.eval()(**x)), main_output(ref.eval()(**x)))


def test_materialized_llama_generates_as_the_operator():
    model = _grown("LlamaForCausalLM", False).eval()
    ids = inputs("LlamaForCausalLM")["input_ids"]
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    ours = model.materialize().eval().generate(ids, **kw)
    assert torch.equal(ours, _oracle(model).eval().generate(ids, **kw))
    assert torch.equal(ours, model.generate(ids, **kw))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_materialize_dtype(dtype):
    model = _grown("LlamaForCausalLM", True)
    ours = model.materialize(dtype=dtype)
    _assert_same(_everything(ours), _everything(_oracle(model, dtype)))
    assert {p.dtype for p in ours.parameters()} == {dtype}
    assert next(model.parameters()).dtype == torch.float32  # the operator is untouched


def test_compat_materialise_equals_the_copying_path():
    small_cfg, large_cfg = configs("BertForMaskedLM")
    small = build("BertForMaskedLM", small_cfg, seed=5)
    wrapped = create_ligo_from_model(T.BertForMaskedLM(large_cfg), ligo_args(tune_residual=True), source_model=small)
    ref = T.BertForMaskedLM(copy.deepcopy(wrapped.config))
    state = {k: v.detach().clone() for k, v in _produced(wrapped).items()}
    for k, v in wrapped.state_dict().items():
        if k in ref.state_dict() and k not in state and not k.startswith("__sm_"):
            state[k] = v.detach().clone()
    ref.load_state_dict(state, strict=True)
    _assert_same(_everything(materialize_compat(wrapped)), _everything(ref))
    _assert_same(_everything(ligo_fast.materialize(wrapped, torch.bfloat16)), _everything(ref.to(torch.bfloat16)))


def test_compat_produces_as_the_model_does_in_chunks_of_layers():
    """Issue 24: the official API's materialisation runs the model's production (``produce.produce_parts``): a
    per-layer kind comes in chunks of layers, and the parts together are every slot produced in one call, bit for
    bit."""
    small_cfg, large_cfg = configs("BertForMaskedLM")
    small = build("BertForMaskedLM", small_cfg, seed=6)
    wrapped = create_ligo_from_model(T.BertForMaskedLM(large_cfg), ligo_args(tune_residual=True), source_model=small)
    plan = wrapped.__dict__["_ligo_plan"]
    with torch.no_grad():
        for p in wrapped.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # trained: differs from its start
        got = list(compat._produced_parts(wrapped))
        whole = produce_module.produce(plan.slots, compat._getter(wrapped, plan))
    assert plan.L2 == 3 and len(got) > len(produce_module.parts(plan.slots, plan.aliases))  # layers in 2 chunks
    names = [k for part in got for k in part]
    assert len(names) == len(set(names)) and set(names) == set(whole)
    for part in got:
        for k, v in part.items():
            assert torch.equal(v, whole[k]), k


@pytest.mark.parametrize(
    ("name", "tie", "dtype"),
    [("LlamaForCausalLM", True, torch.bfloat16), ("GPT2LMHeadModel", True, None), ("BertForMaskedLM", False, None)],
)
def test_save_materialized_round_trip_sharded(tmp_path, name, tie, dtype):
    model = _grown(name, tie)
    files = model.save_materialized(tmp_path, dtype=dtype, max_shard_size=3000)
    index = json.loads((tmp_path / shards.INDEX).read_text())
    written = sorted(set(index["weight_map"].values()))
    assert len(written) > 2 and files[-1] == shards.INDEX and not (tmp_path / shards.WEIGHTS).exists()
    assert written == [f"model-{i:05d}-of-{len(written):05d}.safetensors" for i in range(1, len(written) + 1)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    ref = model.materialize(dtype=dtype)
    # tied weights once, under the name save_pretrained keeps; every shard at most its size unless one tensor
    assert set(index["weight_map"]) == {n for n, _ in ref.named_parameters()} | {
        n for n, _ in ref.named_buffers() if n in ref.state_dict()
    }
    for f in written:
        with safe_open(str(tmp_path / f), "pt") as g:
            keys = list(g.keys())
            size = sum(g.get_tensor(k).numel() * g.get_tensor(k).element_size() for k in keys)
            assert size <= 3000 or len(keys) == 1
    sd = ref.state_dict()
    assert index["metadata"]["total_size"] == sum(sd[k].numel() * sd[k].element_size() for k in index["weight_map"])
    assert index["metadata"]["total_parameters"] == ref.num_parameters()
    loaded = getattr(T, name).from_pretrained(tmp_path)
    _assert_same(loaded.state_dict(), ref.state_dict())
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == str(ref.dtype).split(".")[1]
    assert (tmp_path / "generation_config.json").exists() == ref.can_generate()


def test_save_materialized_single_file_as_save_pretrained(tmp_path):
    model = _grown("LlamaForCausalLM", True)
    model.save_materialized(tmp_path / "ours")
    model.materialize().save_pretrained(tmp_path / "hf")
    for d in ("ours", "hf"):
        assert not (tmp_path / d / shards.INDEX).exists()
    with (
        safe_open(str(tmp_path / "ours" / shards.WEIGHTS), "pt") as a,
        safe_open(str(tmp_path / "hf" / shards.WEIGHTS), "pt") as b,
    ):
        assert set(a.keys()) == set(b.keys()) and "lm_head.weight" not in a.keys()
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k
        assert a.metadata() == b.metadata() == {"format": "pt"}
    # a smaller save replaces a sharded one: no stale shard or index is left to shadow it
    model.save_materialized(tmp_path / "ours", max_shard_size="2KB")
    model.save_materialized(tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]


def test_save_materialized_failure_leaves_the_previous_save(tmp_path, monkeypatch):
    model = _grown("LlamaForCausalLM", False)
    model.save_materialized(tmp_path, max_shard_size=3000)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    calls = {"n": 0}

    def failing(real):
        def call(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 4:
                raise OSError("disk went away")
            return real(*args, **kwargs)

        return call

    # a part (vectors, a global matrix) or a chunk of a per-layer kind's layers: the fourth fails
    for name in ("produce_part", "produce"):
        monkeypatch.setattr(produce_module, name, failing(getattr(produce_module, name)))
    with pytest.raises(OSError, match="disk went away"):
        model.save_materialized(tmp_path, max_shard_size=3000)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_shard_sizes_and_errors():
    size = functools.partial(parse_bytes, what="max_shard_size")
    assert size("5GB") == 5 * 10**9 and size("2KiB") == 2048 and size(7) == 7
    for bad in ("5 parsecs", "-1", 0, "GB", True):
        with pytest.raises(ValueError, match="max_shard_size"):
            size(bad)
    e = [shards.Entry(str(i), (n,), torch.float32) for i, n in enumerate([3, 3, 10, 1, 1])]
    assert [[x.name for x in s] for s in shards.split(e, 24)] == [["0", "1"], ["2"], ["3", "4"]]


def _call_bytes(calls) -> tuple[int, int]:
    """(the largest call, the largest single tensor) in bytes, measured on the tensors a production yields."""
    largest = tensor = 0
    for out in calls:
        unique = {id(t): t for t in out.values()}.values()  # a tied alias once
        largest = max(largest, sum(t.numel() * t.element_size() for t in unique))
        tensor = max([tensor, *(t.numel() * t.element_size() for t in unique)])
    return largest, tensor


@pytest.mark.parametrize(
    ("name", "tie"), [("LlamaForCausalLM", False), ("GPT2LMHeadModel", False), ("LlamaForCausalLM", True)]
)
def test_memory_estimate_of_materialising_and_saving(name, tie):
    small_cfg, large_cfg = configs(name, tie=tie)
    model = _grown(name, tie)
    mp = model.memory_plan(**inputs(name))
    # every part together, and the largest call of each production, measured on the tensors production returns
    sizes = [
        sum(
            t.numel() * t.element_size()
            for t in {id(t): t for t in produce_module.produce_part(p, model.tensor).values()}.values()
        )
        for p in produce_module.parts(model.plan.slots, model.plan.aliases)
    ]
    largest, _ = _call_bytes(produce_module.produce_parts(model.plan, model.tensor))
    save_largest, save_tensor = _call_bytes(produce_module.produce_parts(model.plan, model.tensor, row_blocks=True))
    assert mp.produced == sum(sizes) and mp.produced_largest == largest and largest < max(sizes)  # chunks of layers
    assert (mp.save_largest, mp.save_tensor) == (save_largest, save_tensor)
    assert mp.materialize() == mp.produced + largest and mp.streamed_save() == 2 * save_largest
    assert mp.materialize(2) == mp.produced // 2 + largest
    assert mp.streamed_save(2) == 2 * save_largest + save_tensor // 2
    # planned from shapes only: the small model on meta
    with torch.device("meta"):
        meta_small = getattr(T, name)(small_cfg)
    planned = ligo_fast.plan_growth(meta_small, large_cfg, tokens=mp.tokens, seq_len=7)
    fields = ("produced", "produced_largest", "save_largest", "save_tensor", "activations")
    assert [getattr(planned, f) for f in fields] == [getattr(mp, f) for f in fields]


def test_the_save_estimate_is_the_largest_call_of_the_chunked_production():
    """Issue 20 item 3: the streamed save produces a per-layer kind in chunks of about sqrt(L2) layers and a
    vocabulary matrix in blocks of rows; its estimate counts the largest such call, not a whole module kind."""
    small_cfg, large_cfg = (
        T.LlamaConfig(num_hidden_layers=L, hidden_size=h, intermediate_size=f, num_attention_heads=heads,
                      num_key_value_heads=kv, vocab_size=1000, max_position_embeddings=32, tie_word_embeddings=False)
        for L, h, f, heads, kv in ((3, 16, 88, 2, 1), (9, 32, 176, 4, 2))
    )  # fmt: skip
    model = ligo_fast.grow(build("LlamaForCausalLM", small_cfg), large_cfg)
    mp = model.memory_plan(input_ids=torch.randint(0, 1000, (1, 5), generator=torch.Generator().manual_seed(3)))
    # by hand: chunks of 3 of the 9 layers (a 176 x 32 MLP weight each); the 1000 x 32 vocabulary matrices in 3
    # blocks (as many as the layers' chunks) of at most 334 rows; fp32
    chunk, block, vocab = 3 * 176 * 32 * 4, 334 * 32 * 4, 1000 * 32 * 4
    assert (mp.save_largest, mp.save_tensor, mp.produced_largest) == (chunk, block, vocab)
    assert mp.streamed_save() == 2 * chunk and mp.streamed_save(2) == 2 * chunk + block // 2
    assert mp.materialize() == mp.produced + vocab
    # and that is what the production yields, call by call
    assert _call_bytes(produce_module.produce_parts(model.plan, model.tensor, row_blocks=True)) == (chunk, block)
    assert _call_bytes(produce_module.produce_parts(model.plan, model.tensor))[0] == vocab


def test_grow_checks_finiteness_with_an_overflowing_sum():
    """grow's finiteness check sums first (issue 20's profile of grow): an overflowing sum of finite weights is not
    mistaken for a NaN/Inf, and NaN/Inf are still refused."""
    small_cfg, large_cfg = configs("LlamaForCausalLM")
    small = build("LlamaForCausalLM", small_cfg)
    with torch.no_grad():
        small.model.norm.weight.fill_(3e38)  # finite, its sum is not
    ligo_fast.grow(small, large_cfg)
    for bad, kind in ((float("nan"), "NaN"), (float("inf"), "Inf")):
        with torch.no_grad():
            small.model.norm.weight[3] = bad
        with pytest.raises(ValueError, match=f"model.norm.weight contains {kind}"):
            ligo_fast.grow(small, large_cfg)


_KILLED_SAVE = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
from test_materialize import _grown
from ligo_fast import produce as produce_module
model = _grown("LlamaForCausalLM", False)
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)
calls = [0]
def dying(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:  # a part or a chunk of a per-layer kind's layers
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
produce_module.produce_part = dying(produce_module.produce_part)
produce_module.produce = dying(produce_module.produce)
model.save_materialized({out!r}, max_shard_size=3000)
"""


def test_save_materialized_killed_leaves_the_previous_save(tmp_path):
    model = _grown("LlamaForCausalLM", False)
    model.save_materialized(tmp_path / "out", max_shard_size=3000)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    code = _KILLED_SAVE.format(tests=str(Path(__file__).parent), out=str(tmp_path / "out"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == -9, res.stderr[-2000:]
    left = {p.name: p for p in (tmp_path / "out").iterdir()}
    stale = [n for n in left if n.startswith(".materialize-")]
    assert len(stale) == 1 and any((left[stale[0]]).iterdir())  # killed while writing its shards
    assert {n: p.read_bytes() for n, p in left.items() if n not in stale} == before
    model.save_materialized(tmp_path / "out", max_shard_size=3000)  # the next save clears what the killed one left
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


@pytest.mark.parametrize("training", [False, True])
def test_materialized_fills_from_parts_then_the_rest(training):
    """hf.materialized (LiGOModel.materialize's and materialize_compat's one route): the parts' tensors, then those of
    ``rest`` the model has names for; the result references nothing in ``avoid`` and is in the asked mode."""
    from ligo_fast.hf import materialized, storage_keys

    cfg = configs("BertForMaskedLM")[0]
    src = build("BertForMaskedLM", cfg)
    state = src.state_dict()
    names = list(state)
    first = {k: state[k] for k in names[: len(names) // 2]}
    rest = {**{k: state[k] for k in names[len(names) // 2 :]}, "not.a.parameter": torch.randn(3)}
    out = materialized(
        type(src), cfg, [first], rest=rest, device=torch.device("cpu"), dtype=None, training=training,
        avoid=storage_keys(rest.values()),
    )  # fmt: skip
    assert out.training is training and type(out) is type(src)
    got = out.state_dict()
    assert got.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(got[k], v), k
    avoided = storage_keys(rest.values())  # copied; the parts' tensors are taken as they are
    assert not any(got[k].untyped_storage().data_ptr() in avoided for k in rest if k in got)
    assert all(got[k].untyped_storage().data_ptr() == first[k].untyped_storage().data_ptr() for k in first)


def test_fill_allocates_every_parameter_before_the_first_part_and_reports_what_it_keeps(monkeypatch):
    """materialize() allocates the large model's storage before producing (the production's freed temporaries then
    lie above it in the heap, not between its tensors), and tells the heap trimmer, after each part, the bytes of
    the parameters kept so far (ligo_fast.heap.Trimmer)."""
    from ligo_fast import hf

    model = _grown("LlamaForCausalLM", False)
    params = len(list(hf.empty_model(model.hf_class, model.config).parameters()))
    empties, kept = [], []
    real_empty = torch.empty
    # the output's dtype (float64) tells the storage apart from the float32 meta model's construction
    monkeypatch.setattr(torch, "empty", lambda *a, **k: empties.append(k.get("dtype")) or real_empty(*a, **k))

    class Spy:
        def kept(self, nbytes: int) -> bool:
            kept.append(nbytes)
            return False

    monkeypatch.setattr(hf.heap, "Trimmer", Spy)
    real_parts = model._state_parts

    def parts(*a, **k):
        assert empties.count(torch.float64) == params  # every parameter's storage, before the first part
        yield from real_parts(*a, **k)

    monkeypatch.setattr(model, "_state_parts", parts)
    ours = model.materialize(dtype=torch.float64)
    assert len(kept) == len(list(real_parts())) and kept == sorted(kept)
    assert kept[-1] == sum(p.nbytes for p in ours.parameters())
    _assert_same(_everything(ours), _everything(_oracle(model, torch.float64)))
