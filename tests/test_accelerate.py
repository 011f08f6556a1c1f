"""Two CPU processes (DDP over gloo): ``examples/accelerate_grow.py`` against one process on the same global batches
and resumed from its mid-operator checkpoint (``accelerator.save_state`` / ``load_state``); and an unmodified HF
``Trainer`` run of a grown model (what ``accelerate launch --cpu --num_processes 2 train.py`` runs), resumed from its
checkpoint.

One spawn runs everything (process start-up dominates): the example's full run (3 operator steps, checkpoint after
step 2, then 2 large-model steps) and a second run that resumes from a copy of that checkpoint; then the Trainer's 3
steps with a checkpoint after step 2, and a second Trainer that resumes from it. The reference replays the example's
steps in this process with plain PyTorch (no accelerate) on the full batches.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _spawn import TIMEOUT_S, run_spawned

import ligo_fast

pytest.importorskip("accelerate")
ROOT = Path(__file__).resolve().parent.parent
WORLD = 2
PER_RANK, SEQ, OP_STEPS, LARGE_STEPS, SAVE_EVERY = 2, 12, 3, 2, 2
OP_LR, LR, WARMUP = 1e-2, 3e-3, 1


def _example():
    spec = importlib.util.spec_from_file_location("accelerate_grow", ROOT / "examples" / "accelerate_grow.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _setup(ex):
    small, large_cfg = ex.default_models(seed=0)
    data = ex.counting_data((OP_STEPS + LARGE_STEPS) * PER_RANK * WORLD, SEQ, small.config.vocab_size, seed=1)
    kw = dict(batch_size=PER_RANK, operator_steps=OP_STEPS, large_steps=LARGE_STEPS, operator_lr=OP_LR, lr=LR)
    return small, large_cfg, data, {**kw, "warmup": WARMUP, "save_every": SAVE_EVERY}


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # two processes on a shared CPU: more threads only spin
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(WORLD), ACCELERATE_USE_CPU="true")  # what `accelerate launch --cpu` sets
    ex = _example()
    small, large_cfg, data, kw = _setup(ex)
    out = Path(out)
    full = ex.grow_and_train(small, large_cfg, data, out=out / "full", **kw)
    if rank == 0:
        shutil.copytree(out / "full" / "operator_checkpoint", out / "resumed" / "operator_checkpoint")
    dist.barrier(timeout=datetime.timedelta(seconds=TIMEOUT_S))
    resumed = ex.grow_and_train(small, large_cfg, data, out=out / "resumed", resume=True, **kw)
    trainer = _trainer_runs(ex, out)
    result = {
        **trainer,
        "world": dist.get_world_size(),
        "losses": full["losses"],
        "resumed_losses": resumed["losses"],
        "final": {k: v.clone() for k, v in full["model"].state_dict().items()},
        "resumed_final": {k: v.clone() for k, v in resumed["model"].state_dict().items()},
    }
    torch.save(result, out / f"rank{rank}.pt")
    dist.barrier(timeout=datetime.timedelta(seconds=TIMEOUT_S))
    dist.destroy_process_group()


def _trainer_runs(ex, out: Path) -> dict:
    """3 Trainer steps of a grown model with a checkpoint after step 2; a second Trainer resumes from it."""
    from transformers import Trainer, TrainingArguments

    small, large_cfg, data, _ = _setup(ex)
    rows = [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x} for (x,) in data]

    def run(name: str, seed: int, resume: bool) -> tuple:
        model = ligo_fast.grow(small, large_cfg, seed=seed)
        args = TrainingArguments(output_dir=str(out / name), per_device_train_batch_size=PER_RANK, max_steps=3,
                                 save_steps=2, logging_steps=1)  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=rows)
        trainer.train(resume_from_checkpoint=resume or None)
        wrapped = type(trainer.model_wrapped).__name__
        return {k: v.clone() for k, v in model.state_dict().items()}, model.materialize().state_dict(), wrapped

    full, full_big, wrapped = run("trainer_full", 0, False)
    if dist.get_rank() == 0:
        shutil.copytree(out / "trainer_full" / "checkpoint-2", out / "trainer_resumed" / "checkpoint-2")
    dist.barrier(timeout=datetime.timedelta(seconds=TIMEOUT_S))
    resumed, resumed_big, _ = run("trainer_resumed", 1, True)
    return {"trainer": full, "trainer_big": full_big, "trainer_resumed": resumed, "trainer_resumed_big": resumed_big,
            "trainer_wrapped": wrapped}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("accelerate")
    run_spawned(_worker, (_free_port(), str(out)), WORLD, "accelerate")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _reference():
    """The same steps in one process without accelerate: plain AdamW on the full (2 x per-rank) batches."""
    import transformers

    small, large_cfg, data, _ = _setup(_example())
    batches = iter(torch.utils.data.DataLoader(data, batch_size=PER_RANK * WORLD))
    ligo = ligo_fast.grow(small, large_cfg, seed=0)
    opt = torch.optim.AdamW([p for p in ligo.parameters() if p.requires_grad], lr=OP_LR, weight_decay=0.0)
    losses = []

    def step(model, opt, sched=None):
        (ids,) = next(batches)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())

    for _ in range(OP_STEPS):
        step(ligo, opt)
    big = ligo.materialize()
    opt = torch.optim.AdamW(big.parameters(), lr=LR)
    sched = transformers.get_linear_schedule_with_warmup(opt, WARMUP, LARGE_STEPS)
    for _ in range(LARGE_STEPS):
        step(big, opt, sched)
    return ligo, big, losses


def _close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), (what, sorted(set(a) ^ set(b))[:5])
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=lambda m, k=k: f"{what} {k}: {m}")


def test_two_processes_match_one_process_on_the_global_batch(runs):
    out, (r0, r1) = runs
    assert r0["world"] == WORLD
    ligo, big, losses = _reference()
    assert r0["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6)
    _close(r0["final"], big.state_dict(), "large model after growth and 2 steps")
    _close(r1["final"], r0["final"], "rank 1 against rank 0")
    saved_op = ligo_fast.load_operator(out / "full" / "operator", _setup(_example())[0])  # save_pretrained
    _close(saved_op.state_dict(), ligo.state_dict(), "saved operator")
    saved = type(big).from_pretrained(out / "full" / "model")
    _close(saved.state_dict(), r0["final"], "saved large model")


def test_resuming_from_the_operator_checkpoint_is_exact(runs):
    _, (r0, _) = runs
    assert len(r0["resumed_losses"]) == OP_STEPS + LARGE_STEPS - SAVE_EVERY
    assert r0["resumed_losses"] == r0["losses"][SAVE_EVERY:]
    for k, v in r0["final"].items():
        assert torch.equal(r0["resumed_final"][k], v), k


def test_trainer_on_two_processes_trains_resumes_and_materialises(runs):
    _, (r0, r1) = runs
    assert r0["trainer_wrapped"] == "DistributedDataParallel"
    before = ligo_fast.grow(*_setup(_example())[:2], seed=0).state_dict()
    assert any(not torch.equal(r0["trainer"][k], before[k]) for k in before), "the Trainer trained the operator"
    for what in ("trainer", "trainer_big"):
        for k, v in r0[what].items():
            assert torch.equal(r1[what][k], v), f"{what}: rank 1 differs at {k}"
            assert torch.equal(r0[what.replace("trainer", "trainer_resumed")][k], v), f"{what} resumed differs at {k}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
