"""The sharded save (issue 20 item 4): under FSDP2 (and a plain model in a process group) each of 2 gloo processes
writes its own shards of the large model, rank 0 the index; the result equals one process's ``save_materialized``
bit for bit in the same dtype and loads with ``from_pretrained``. One spawn runs every case (start-up dominates)."""

from __future__ import annotations

import datetime
import json

import pytest
import torch
import torch.distributed as dist
import transformers as T
from _models import build, configs
from _spawn import TIMEOUT_S, run_spawned
from safetensors import safe_open

import ligo_fast
from ligo_fast import distributed as D
from ligo_fast import shards

WORLD = 2
NAME = "LlamaForCausalLM"
# (id, wrapper, train_small, tie, output dtype, max_shard_size): 3 large layers over 2 ranks (2 + 1), several
# shards per rank where the size is small
CASES = [
    ("fsdp-buffers-bf16", "fsdp", False, False, torch.bfloat16, "20KB"),
    ("fsdp-train_small-tied-fp32", "fsdp", True, True, torch.float32, "5GB"),
    ("plain-fp32", "plain", False, False, torch.float32, "30KB"),
    # FSDP2 units per block (shard(per_block=True)): each layer's rows sharded on their own
    ("fsdp_block-buffers-bf16", "fsdp_block", False, False, torch.bfloat16, "20KB"),
]


def _grown(train_small: bool, tie: bool):
    """The same trained-looking operator in every process: grown with a drawn start, then moved off it."""
    torch.manual_seed(0)  # HF's init draws from the global generator
    small_cfg, large_cfg = configs(NAME, tie=tie)
    small = build(NAME, small_cfg, seed=3)
    model = ligo_fast.grow(small, large_cfg, seed=1, train_small=train_small, depth_init="rand", width_init="rand")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return model


def _worker(rank: int, init: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=TIMEOUT_S)
    )
    try:
        from torch.distributed.device_mesh import init_device_mesh

        written = {}
        for case_id, kind, train_small, tie, dtype, size in CASES:
            model = _grown(train_small, tie)
            if kind.startswith("fsdp"):
                if kind == "fsdp_block":  # per-block units run only in memory-lean mode
                    model.execution_options = ligo_fast.ExecutionOptions(lean=True)
                model = D.shard(model, mesh=init_device_mesh("cpu", (WORLD,)), per_block=kind == "fsdp_block")
                assert D.is_sharded(model) and model.held_per_layer == (kind == "fsdp_block")
            written[case_id] = D.save_materialized_distributed(model, f"{out_dir}/{case_id}", dtype, size)
        torch.save(written, f"{out_dir}/written-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("dsave")
    run_spawned(_worker, (f"file://{out}/store", str(out)), WORLD)
    return out, [torch.load(out / f"written-{r}.pt", weights_only=True) for r in range(WORLD)]


def _tensors(d) -> dict[str, torch.Tensor]:
    files = sorted(p.name for p in d.iterdir() if p.suffix == ".safetensors")
    out = {}
    for f in files:
        with safe_open(str(d / f), "pt") as s:
            for k in s.keys():  # noqa: SIM118 - safe_open has keys(), no __iter__
                assert k not in out, k  # each tensor in one shard only
                out[k] = s.get_tensor(k)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_rank_writes_its_shards_and_the_result_equals_one_process(saved, case, tmp_path):
    out, written = saved
    case_id, kind, train_small, tie, dtype, size = case
    d = out / case_id
    ref = tmp_path / "one"
    _grown(train_small, tie).save_materialized(ref, dtype, size)
    got, want = _tensors(d), _tensors(ref)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype == dtype and torch.equal(got[k], v), k
    index = json.loads((d / shards.INDEX).read_text())
    by_rank = [[f for f in w[case_id] if shards._SHARD_RE.fullmatch(f)] for w in written]
    assert all(by_rank), by_rank  # both ranks wrote shards of their own
    assert not set(by_rank[0]) & set(by_rank[1])
    assert set(index["weight_map"].values()) == set(by_rank[0]) | set(by_rank[1])
    assert written[0][case_id][-1] == shards.INDEX and shards.INDEX not in written[1][case_id]
    assert index["weight_map"].keys() == got.keys()
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in got.values())
    assert not any(p.name.endswith(".tmp") for p in d.iterdir())
    assert json.loads((d / "config.json").read_text()) == json.loads((ref / "config.json").read_text())
    loaded = T.AutoModelForCausalLM.from_pretrained(d)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, want.get(k, v)), k


def test_without_a_process_group_it_is_save_materialized(tmp_path):
    model = _grown(False, False)
    assert D.save_materialized_distributed(model, tmp_path / "a") == model.save_materialized(tmp_path / "b")
    a, b = _tensors(tmp_path / "a"), _tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
