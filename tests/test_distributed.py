"""Operator training under DDP and FSDP2 on CPU (gloo, 2 processes) against one process on the same global batch.

One spawn runs every case (process start-up dominates the time): each rank grows the operator from a different
random state (``seed=None``), wraps it (``ddp`` / ``shard``, which must make the ranks agree with rank 0), trains
two SGD steps on its half of a global batch, and rank 0 stores what it saw. The reference replays the same steps
on the full batch in this process, starting from rank 0's initial operator.
"""

from __future__ import annotations

import dataclasses
import datetime
from functools import partial

import pytest
import torch
import torch.distributed as dist
from _models import build, configs
from _spawn import TIMEOUT_S, run_spawned

import ligo_fast
from ligo_fast import distributed as D
from ligo_fast.plan import Rule

WORLD = 2
NAME = "LlamaForCausalLM"
LR = 0.5
GLOBAL_BATCH, SEQ = 4, 9
HAS_LEAN = "lean" in {f.name for f in dataclasses.fields(ligo_fast.LiGOConfig)}

# (wrapper, train_small, extra LiGOConfig options); tied heads: with train_small the small lm_head is unused
CASES = [("ddp", False, {}), ("ddp", True, {}), ("fsdp", False, {}), ("fsdp", True, {})]
if HAS_LEAN:
    CASES += [("ddp", False, {"lean": True}), ("fsdp", True, {"lean": True})]
    # FSDP2 units per block (shard(per_block=True)), per 2 blocks (fsdp_block2: block_layers=2), per block under
    # HF's activation checkpointing (fsdp_block_ac): the per-layer width matrices one parameter per layer
    CASES += [("fsdp_block", False, {"lean": True}), ("fsdp_block2", True, {"lean": True})]
    CASES += [("fsdp_block_ac", False, {"lean": True})]


# random inits (the official ones): each rank draws its own operator, which the wrappers must replace by rank 0's
# (grow()'s default start is exact and draws nothing)
DRAWN = {"depth_init": "stackbert_noisy", "width_init": "rand"}


def _case_id(case) -> str:
    kind, ts, extra = case
    return f"{kind}-{'train_small' if ts else 'buffers'}" + "".join(f"-{k}" for k in extra)


def _small():
    small_cfg, large_cfg = configs(NAME, tie=True)
    return build(NAME, small_cfg, seed=3), large_cfg


def _batch() -> torch.Tensor:
    return torch.randint(0, small_vocab(), (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(5))


def small_vocab() -> int:
    return configs(NAME)[0].vocab_size


def _grads(m) -> dict[str, torch.Tensor]:
    """Gradients by parameter name, gathered; those of rows held per layer stacked under the stacked name."""
    out = {}
    for n, p in m.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if D._is_dtensor(p.grad) else p.grad
            out[n] = g.detach().clone()
    for name, places in m.__dict__.get("_row_home", {}).items():
        out[f"op.{name}"] = torch.stack([out.pop(f"op_rows.{i}.{a}") for i, a in places])
    return out


def _row_matrices(m) -> list[str]:
    """The per-layer operator matrices (rule split, a matrix per layer): what shard(per_block=True) holds per layer."""
    return [t.name for t in m.plan.tensors if t.rule == Rule.SPLIT and t.trainable and len(t.shape) >= 3]


def _gathered_rows(m) -> tuple[int, int]:
    """(elements of the per-layer operator matrices held gathered now, elements of them all) on this rank."""
    now = total = 0
    for name in _row_matrices(m):
        rows = m.rows(name)
        for t in [r() for r in rows] if rows is not None else [getattr(m.op, name)]:
            full = t.numel()
            total += full
            if not D._is_dtensor(t) and t.untyped_storage().nbytes() >= full * t.element_size():
                now += full
    return now, total


def _record_gathered(m, into: dict, module, args) -> None:
    """A block's forward pre-hook: what is gathered now, and (a hook on its input) when backward has passed it."""
    into["forward"].append(_gathered_rows(m))
    if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
        args[0].register_hook(lambda g: into["backward"].append(_gathered_rows(m)))


def _worker(rank: int, init: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes on a shared CPU: more threads only spin
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=TIMEOUT_S)
    )
    try:
        from torch.distributed.device_mesh import init_device_mesh

        torch.manual_seed(0)
        small, large_cfg = _small()
        ids = _batch()[rank * GLOBAL_BATCH // WORLD : (rank + 1) * GLOBAL_BATCH // WORLD]
        results = {}
        for case in CASES:
            kind, ts, extra = case
            torch.manual_seed(100 + rank)  # seed=None: every rank draws a different operator
            model = ligo_fast.grow(small, large_cfg, seed=None, train_small=ts, **DRAWN, **extra)
            before = {k: v.clone() for k, v in model.state_dict().items()}
            sums = [None] * WORLD
            dist.all_gather_object(sums, sum(float(p.sum()) for p in model.parameters()))
            if kind == "ddp":
                wrapped = D.ddp(model)
                find_unused = wrapped.find_unused_parameters
            else:
                mesh = init_device_mesh("cpu", (WORLD,))
                per_block = kind.startswith("fsdp_block")
                if kind == "fsdp_block_ac":  # the blocks' recompute in backward runs inside their units' backward
                    model.train().gradient_checkpointing_enable()
                wrapped = D.shard(model, mesh=mesh, per_block=per_block, block_layers=2 if kind == "fsdp_block2" else 1)
                find_unused = None
                blocks = [model.large.get_submodule(model.arch.layer_path(l)) for l in range(model.L2)]
                checkpointed = model.training and all(b.gradient_checkpointing for b in blocks)
                assert checkpointed == (kind == "fsdp_block_ac")
            r = {"init": D.gather_state_dict(wrapped), "before": before, "find_unused": find_unused, "losses": []}
            r["ranks_differed"] = sums[0] != sums[1]
            gathered, hooks = {"forward": [], "backward": []}, []
            if kind != "ddp":  # the per-layer width matrices' elements this rank holds gathered as each block starts
                m = D.unwrap(wrapped)
                record = partial(_record_gathered, m, gathered)
                for l in range(m.L2):
                    hooks.append(m.large.get_submodule(m.arch.layer_path(l)).register_forward_pre_hook(record))
            opt = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=LR)
            for step in range(2):  # a second step: DDP fails there when an unused parameter went unnoticed
                opt.zero_grad(set_to_none=True)
                loss = wrapped(input_ids=ids, labels=ids).loss
                for h in hooks:
                    h.remove()
                hooks = []
                loss.backward()
                if step == 0:
                    r["grads"] = _grads(D.unwrap(wrapped))
                mean = loss.detach().clone()
                dist.all_reduce(mean)
                r["losses"].append(float(mean) / WORLD)
                opt.step()
            r["gathered"] = gathered
            r["final"] = D.gather_state_dict(wrapped)
            hf = D.materialize_distributed(wrapped)
            r["materialized"] = None if hf is None else {k: v.clone() for k, v in hf.state_dict().items()}
            r["other_ranks_none"] = hf is None if rank else None
            D.save_operator_distributed(wrapped, f"{out_dir}/{_case_id(case)}")
            results[_case_id(case)] = r
        if rank == 0:
            torch.save(results, f"{out_dir}/results.pt")
    finally:
        dist.destroy_process_group()


def _run(out_dir) -> dict:
    run_spawned(_worker, (f"file://{out_dir}/store", str(out_dir)), WORLD)
    results = torch.load(out_dir / "results.pt", weights_only=True)
    for r in results.values():
        r["dir"] = out_dir
    return results


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    return _run(tmp_path_factory.mktemp("dist"))


def _reference(case, init: dict):
    """One process, full batch: (grads of step 1, losses, final state dict, materialised state dict)."""
    kind, ts, extra = case
    small, large_cfg = _small()
    model = ligo_fast.grow(small, large_cfg, seed=None, train_small=ts, **DRAWN, **extra)
    model.load_state_dict(init)
    ids = _batch()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    losses = []
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if step == 0:
            grads = _grads(model)
        losses.append(loss.item())
        opt.step()
    return model, grads, losses


def _close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), (what, sorted(set(a) ^ set(b))[:5])
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=lambda m, k=k: f"{what} {k}: {m}")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_single_process(dist_results, case, tmp_path):
    """Same loss and (all-reduced / gathered) operator gradients as one process on the global batch; after two
    steps the same operator, the same materialised model, and the same saved operator."""
    r = dist_results[_case_id(case)]
    model, grads, losses = _reference(case, r["init"])
    assert len(grads) >= 10
    assert r["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6)
    _close(r["grads"], grads, "gradient")
    _close(r["final"], model.state_dict(), "operator after 2 steps")
    _close(r["materialized"], model.materialize().state_dict(), "materialised")
    saved = ligo_fast.load_operator(r["dir"] / _case_id(case), _small()[0])  # save_operator_distributed
    _close(saved.state_dict(), model.state_dict(), "saved operator")
    if case[0] == "ddp":
        assert r["find_unused"] == case[1], "find_unused_parameters only when the small lm_head is trainable"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_wrapping_starts_from_rank0(dist_results, case):
    """Each rank drew its own operator; after ddp()/shard() all hold rank 0's (fully_shard alone would keep each
    rank's own shard rows: a mix of both)."""
    r = dist_results[_case_id(case)]
    assert r["ranks_differed"]
    _close(r["init"], r["before"], "operator after wrapping")


def test_per_block_units_gather_one_block_of_rows_at_a_time(dist_results):
    """shard(per_block=True): as each block starts its forward, a rank holds gathered only its unit's rows of the
    per-layer width matrices (3 large layers: one each; with block_layers=2 units of 2 and 1 layers), where plain
    shard() holds all of them; when backward has passed a block, at most its unit and the one FSDP2 prefetches."""
    whole = dist_results["fsdp-train_small-lean"]["gathered"]
    per_block = dist_results["fsdp_block-buffers-lean"]["gathered"]
    per_two = dist_results["fsdp_block2-train_small-lean"]["gathered"]
    assert len(whole["forward"]) == len(per_block["forward"]) == len(per_two["forward"]) == 3
    total = whole["forward"][0][1]
    assert total > 0 and all(t == total for r in (whole, per_block, per_two) for _, t in r["forward"] + r["backward"])
    assert [n for n, _ in whole["forward"]] == [total] * 3
    assert [n for n, _ in per_block["forward"]] == [total // 3] * 3
    assert [n for n, _ in per_two["forward"]] == [total * 2 // 3] * 2 + [total // 3]
    assert len(whole["backward"]) == len(per_block["backward"]) == 3
    assert [n for n, _ in whole["backward"]] == [total] * 3
    assert 0 < max(n for n, _ in per_block["backward"]) <= total * 2 // 3


def test_per_block_sharding_needs_lean_mode():
    """shard(per_block=True) outside memory-lean mode fails at once, before touching the model."""
    small, large_cfg = _small()
    model = ligo_fast.grow(small, large_cfg, seed=0)
    with pytest.raises(ValueError, match="memory-lean mode"):
        D.shard(model, per_block=True)
    model.execution_options = ligo_fast.ExecutionOptions(lean=True)
    with pytest.raises(ValueError, match="block_layers"):
        D.shard(model, per_block=True, block_layers=0)
    assert not model.held_per_layer and not D.is_sharded(model)


def test_unused_parameters_tied_head():
    small, large_cfg = _small()
    assert D.unused_parameters(ligo_fast.grow(small, large_cfg, seed=0)) == []
    assert D.unused_parameters(ligo_fast.grow(small, large_cfg, seed=0, train_small=True)) == ["op.__sm_lm_head_weight"]


def test_single_process_helpers():
    """Without a process group the helpers act as on rank 0 and wrap nothing."""
    small, large_cfg = _small()
    model = ligo_fast.grow(small, large_cfg, seed=0)
    assert not D.is_sharded(model) and D.rank() == 0
    sd = D.gather_state_dict(model)
    _close(sd, model.state_dict(), "state dict")
    _close(D.materialize_distributed(model).state_dict(), model.materialize().state_dict(), "materialised")
    with pytest.raises(TypeError, match="LiGOModel"):
        D.unwrap(small)


def test_broadcast_receives_into_the_models_own_tensors(monkeypatch):
    """broadcast_module_states allocates nothing beside the model (shard() runs it while the whole operator is
    alive): every contiguous tensor is broadcast in place, a non-contiguous one through its copy, then written back;
    the received values land in the model (here a fake broadcast writes its own)."""
    small, large_cfg = _small()
    model = ligo_fast.grow(small, large_cfg, seed=0)
    with torch.no_grad():
        model.op.register_buffer("strided", torch.randn(5, 4).t())  # a non-contiguous tensor too
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    sent = []

    def fake_broadcast(t, src, group=None):
        sent.append(t)
        t.copy_(torch.arange(t.numel(), dtype=torch.float64).reshape(t.shape).to(t.dtype))

    monkeypatch.setattr(D.dist, "broadcast", fake_broadcast)
    D.broadcast_module_states(model)
    assert len(sent) == len([*model.parameters(), *model.buffers()])
    assert sum(t.untyped_storage().data_ptr() not in own for t in sent) == 1  # only the strided buffer's copy
    for t in [*model.parameters(), *model.buffers()]:
        want = torch.arange(t.numel(), dtype=torch.float64).reshape(t.shape).to(t.dtype)
        assert torch.equal(t.detach(), want)
