"""A grown model under an unmodified Hugging Face ``Trainer``: train, checkpoint, resume bit-exactly, materialise;
and the one-run growth path (``GrowingModel`` + ``GrowthCallback``) against two plain Trainer runs.

Tiny GPT-2 with a tied LM head (shared tensors after growth) and dropout on (so resuming must restore the RNG too);
``TrainingArguments`` at their defaults except the output directory and the sizes.
"""

from __future__ import annotations

import inspect
import math
import shutil

import pytest
import torch
from _models import VOCAB, build, configs

import ligo_fast
from ligo_fast.integrations import GrowingModel, GrowthCallback

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # Trainer needs it
from transformers import Trainer, TrainingArguments  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
NAME = "GPT2LMHeadModel"
SEQ = 9


def _small(dropout: bool = True):
    small_cfg, large_cfg = configs(NAME, tie=True)
    if not dropout:
        for cfg in (small_cfg, large_cfg):
            cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    return build(NAME, small_cfg, seed=3), large_cfg


def _data(n: int, *, same: bool = False) -> list[dict]:
    """``n`` padded examples (lengths 5..SEQ): input_ids, attention_mask, labels (-100 on padding)."""
    g = torch.Generator().manual_seed(11)
    rows = []
    for i in range(n):
        ids = torch.randint(1, VOCAB, (SEQ,), generator=g)
        length = SEQ if same else 5 + i % (SEQ - 4)
        mask = (torch.arange(SEQ) < length).long()
        ids = ids * mask
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return [rows[0]] * n if same else rows


def _args(out, **kw) -> TrainingArguments:
    return TrainingArguments(output_dir=str(out), per_device_train_batch_size=2, logging_steps=1, **kw)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), (what, sorted(set(a) ^ set(b))[:5])
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"{what}: {len(bad)} tensors differ, e.g. {bad[:3]}"


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _lrs(trainer) -> list[float]:
    return [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]


def test_trainer_sees_the_large_signature_and_keeps_the_columns(tmp_path):
    small, large_cfg = _small()
    model = ligo_fast.grow(small, large_cfg, seed=0)
    large_params = inspect.signature(type(model.large).forward).parameters
    assert list(inspect.signature(model.forward).parameters) == list(large_params)[1:]  # without self
    seen = []
    model.large.register_forward_pre_hook(lambda m, a, kw: seen.append(set(kw)), with_kwargs=True)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=2), train_dataset=_data(8))
    trainer.train()
    assert len(seen) == 2 and all({"input_ids", "attention_mask", "labels"} <= s for s in seen), seen
    assert len(_losses(trainer)) == 2 and all(v == v for v in _losses(trainer))


def test_trainer_checkpoint_resumes_bit_exactly_and_materialises(tmp_path):
    """4 steps with a checkpoint every 2; a second run resumes from step 2 (``resume_from_checkpoint=True``) and
    ends with the same operator, the same losses, and the same materialised model."""
    small, large_cfg = _small()
    data = _data(12)
    first = ligo_fast.grow(small, large_cfg, seed=0)
    a = Trainer(model=first, args=_args(tmp_path / "a", max_steps=4, save_steps=2), train_dataset=data)
    a.train()
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")

    second = ligo_fast.grow(small, large_cfg, seed=1)  # another operator: the checkpoint must replace it all
    b = Trainer(model=second, args=_args(tmp_path / "b", max_steps=4, save_steps=2), train_dataset=data)
    b.train(resume_from_checkpoint=True)
    _equal(_state(second), _state(first), "operator after resuming")
    assert _losses(b) == _losses(a)  # the checkpoint's two logged steps, then this run's two

    big = second.materialize()
    assert type(big) is type(small) and big.lm_head.weight is big.transformer.wte.weight
    _equal(_state(big), _state(first.materialize()), "materialised")
    x = data[0]
    with torch.no_grad():
        ref = second.eval()(input_ids=x["input_ids"][None], attention_mask=x["attention_mask"][None]).logits
        out = big.eval()(input_ids=x["input_ids"][None], attention_mask=x["attention_mask"][None]).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


OP_STEPS, LARGE_STEPS, OP_LR = 2, 3, 1e-2
LARGE = dict(learning_rate=2e-3, weight_decay=0.01, warmup_steps=1)  # not the defaults: a mix-up would show


def test_growth_callback_matches_two_trainer_runs(tmp_path):
    """One run (operator 2 steps, then 3 large steps) against two Trainer runs: the operator alone at its
    learning rate (constant, no weight decay), materialised, then the plain model with the arguments' optimizer and
    schedule over 3 steps. Every batch is the same example, so the data order cannot differ."""
    small, large_cfg = _small(dropout=False)
    data = _data(8, same=True)
    model = GrowingModel(ligo_fast.grow(small, large_cfg, seed=0))
    run = Trainer(
        model=model, args=_args(tmp_path / "one", max_steps=OP_STEPS + LARGE_STEPS, **LARGE), train_dataset=data
    )
    run.add_callback(GrowthCallback(run, operator_steps=OP_STEPS, operator_lr=OP_LR, operator_warmup_steps=0))
    run.train()
    assert model.grown and type(model.model) is type(small)

    ligo = ligo_fast.grow(small, large_cfg, seed=0)
    op_args = _args(tmp_path / "op", max_steps=OP_STEPS, learning_rate=OP_LR, lr_scheduler_type="constant")
    first = Trainer(model=ligo, args=op_args, train_dataset=data)
    first.train()
    big = ligo.materialize()
    second = Trainer(model=big, args=_args(tmp_path / "big", max_steps=LARGE_STEPS, **LARGE), train_dataset=data)
    second.train()

    assert _lrs(run) == pytest.approx(_lrs(first) + _lrs(second), rel=1e-12)
    assert _losses(run) == pytest.approx(_losses(first) + _losses(second), rel=1e-6)
    ours, ref = _state(model.model), _state(big)
    assert ours.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    steps = {int(s["step"]) for s in run.optimizer.state_dict()["state"].values()}
    assert steps == {LARGE_STEPS}, "the large model's optimizer starts fresh at growth"


def test_growth_callback_resumes_in_both_phases(tmp_path):
    """Checkpoints every step; resuming from step 1 (operator phase) and from step 3 (after growth) ends exactly where
    the uninterrupted run does. With activation checkpointing on (``TrainingArguments``), which carries over to the
    grown model."""
    small, large_cfg = _small()
    data = _data(12)
    total = OP_STEPS + 2

    def run(out, resume=None, seed=0):
        model = GrowingModel(ligo_fast.grow(small, large_cfg, seed=seed))
        args = _args(out, max_steps=total, save_steps=1, activation_checkpointing=True, **LARGE)
        tr = Trainer(model=model, args=args, train_dataset=data)
        tr.add_callback(GrowthCallback(tr, operator_steps=OP_STEPS, operator_lr=OP_LR))
        tr.train(resume_from_checkpoint=resume)
        return model, tr

    full, tr = run(tmp_path / "full")
    for step in (1, OP_STEPS + 1):
        ckpt = tmp_path / "full" / f"checkpoint-{step}"
        resumed, tr2 = run(tmp_path / f"from{step}", resume=str(ckpt), seed=step)
        assert resumed.grown and resumed.model.is_activation_checkpointing
        _equal(_state(resumed.model), _state(full.model), f"resumed from step {step}")
        assert _losses(tr2) == _losses(tr) and _lrs(tr2) == _lrs(tr)  # logged history: loaded, then this run's


def test_growth_callback_errors(tmp_path):
    small, large_cfg = _small()
    ligo = ligo_fast.grow(small, large_cfg, seed=0)
    with pytest.raises(TypeError, match="GrowingModel"):
        GrowthCallback(Trainer(model=ligo, args=_args(tmp_path, max_steps=2), train_dataset=_data(4)))
    with pytest.raises(TypeError, match="LiGOModel"):
        GrowingModel(small)
    tr = Trainer(model=GrowingModel(ligo), args=_args(tmp_path, max_steps=2), train_dataset=_data(4))
    with pytest.raises(ValueError, match="operator_steps must be an integer >= 0"):
        GrowthCallback(tr, operator_steps=-1)
    with pytest.raises(ValueError, match="operator_lr must be a finite number"):
        GrowthCallback(tr, operator_lr=float("nan"))
    tr.add_callback(GrowthCallback(tr, operator_steps=2))
    with pytest.raises(ValueError, match="leaves no step for the large model"):
        tr.train()


def _depth_only():
    """The tiny GPT-2 and a large config with more layers and the small widths (depth-only growth)."""
    small, large_cfg = _small(dropout=False)
    large_cfg = small.config.__class__.from_dict({**small.config.to_dict(), "n_layer": large_cfg.n_layer})
    return small, large_cfg


def test_growth_callback_with_no_operator_steps_grows_before_the_first_step(tmp_path):
    """A depth-only growth from grow()'s function-preserving start: the budget rule trains no operator
    (ligo_fast.budget), so the callback grows at the start and every step of the run trains the large model: the
    run equals a plain Trainer run of the materialised start over the same steps with the arguments' schedule."""
    small, large_cfg = _depth_only()
    data = _data(8, same=True)
    start = ligo_fast.grow(small, large_cfg, seed=0)
    assert not start.widens and start.preserved_width == small.config.n_embd
    model = GrowingModel(start)
    run = Trainer(model=model, args=_args(tmp_path / "one", max_steps=LARGE_STEPS, **LARGE), train_dataset=data)
    cb = GrowthCallback(run)
    run.add_callback(cb)
    run.train()
    assert (cb.budget.steps, cb.budget.source) == (0, "rule: depth only")
    assert model.grown and type(model.model) is type(small)

    big = ligo_fast.grow(small, large_cfg, seed=0).materialize()
    plain = Trainer(model=big, args=_args(tmp_path / "big", max_steps=LARGE_STEPS, **LARGE), train_dataset=data)
    plain.train()
    assert _lrs(run) == pytest.approx(_lrs(plain), rel=1e-12)
    assert _losses(run) == pytest.approx(_losses(plain), rel=1e-6)
    ours, ref = _state(model.model), _state(big)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    # an explicit budget still trains the operator first
    tr = Trainer(model=GrowingModel(ligo_fast.grow(small, large_cfg, seed=0)), args=_args(tmp_path, max_steps=2))
    assert GrowthCallback(tr, operator_steps=3).resolve(400, 2e-3).steps == 3


def test_growth_callback_budget_follows_the_rule(tmp_path):
    """Without overrides the operator's budget is ligo_fast.budget's rule of the run's max_steps and learning rate;
    each override replaces one field and nothing else."""
    small, large_cfg = _small()
    official = ligo_fast.grow(small, large_cfg, depth_init="stackbert_noisy", width_init="rand", seed=0)
    b = GrowthCallback(Trainer(model=GrowingModel(official), args=_args(tmp_path, max_steps=2))).resolve(400, 2e-3)
    assert (b.steps, b.lr, b.warmup, b.source, b.lr_rule) == (20, 2e-3, 2, "rule", "large")  # the official init
    tr = Trainer(model=GrowingModel(ligo_fast.grow(small, large_cfg, seed=0)), args=_args(tmp_path, max_steps=2))
    b = GrowthCallback(tr).resolve(400, 2e-3)  # grow()'s default, a function-preserving start: continued training
    width = small.config.hidden_size
    lr = pytest.approx(2e-3 / math.sqrt(width))
    assert (b.steps, b.lr, b.warmup, b.source) == (20, lr, 10, "rule")  # the warm-up floor
    assert GrowthCallback(tr).resolve(10_000, 1e-4).steps == 100  # the cap: the paper's 100 steps
    b = GrowthCallback(tr, operator_steps=7, operator_lr=3e-4).resolve(400, 2e-3)
    assert (b.steps, b.lr, b.warmup, b.source) == (7, 3e-4, 7, "steps")  # the floor, at most the steps
    b = GrowthCallback(tr, operator_warmup_steps=0).resolve(400, 2e-3)
    assert (b.steps, b.lr, b.warmup) == (20, lr, 0)
    with pytest.raises(ValueError, match="exceeds the 20 operator steps"):
        GrowthCallback(tr, operator_warmup_steps=21).resolve(400, 2e-3)


def test_growth_callback_warms_up_as_the_command_line(tmp_path):
    """The operator's lr per step under GrowthCallback is the command line's (ligo_fast.apps.training.warmup_lr):
    a linear warm-up whose first step already moves, at 1 / warmup of the peak, then the peak."""
    from transformers import TrainerCallback

    from ligo_fast.apps import training

    small, large_cfg = _small()
    seen: list[float] = []

    class Spy(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step < 4:
                seen.append(kw["optimizer"].param_groups[0]["lr"])

    tr = Trainer(model=GrowingModel(ligo_fast.grow(small, large_cfg, seed=0)), args=_args(tmp_path, max_steps=6),
                 train_dataset=_data(12))  # fmt: skip
    tr.add_callback(GrowthCallback(tr, operator_steps=4, operator_lr=1e-3, operator_warmup_steps=3))
    tr.add_callback(Spy())
    tr.train()
    cli = training.warmup_lr(1e-3, 3)
    assert seen == pytest.approx([cli(k) for k in range(1, 5)])  # 1/3, 2/3, 1, 1 of the peak


def test_resume_skips_a_checkpoint_torn_by_a_kill(tmp_path):
    """Issue 22 N10: a kill inside Trainer's save leaves checkpoint-N without trainer_state.json (written last);
    ``resume_from_checkpoint=True`` fails on it, ``latest_complete_checkpoint`` resumes from the one before and
    ends where the uninterrupted run ends."""
    from ligo_fast.integrations import latest_complete_checkpoint

    small, large_cfg = _small()
    data = _data(12)
    first = ligo_fast.grow(small, large_cfg, seed=0)
    Trainer(model=first, args=_args(tmp_path / "a", max_steps=4, save_steps=2), train_dataset=data).train()
    for step in (2, 4):
        shutil.copytree(tmp_path / "a" / f"checkpoint-{step}", tmp_path / "b" / f"checkpoint-{step}")
    (tmp_path / "b" / "checkpoint-4" / "trainer_state.json").unlink()  # the save of step 4 was killed
    (tmp_path / "b" / "checkpoint-6").mkdir()  # one killed before any file
    (tmp_path / "b" / "checkpoint-8").mkdir()
    (tmp_path / "b" / "checkpoint-8" / "trainer_state.json").write_text('{"global_step": 8, "log_hist')  # torn
    (tmp_path / "b" / "checkpoint-9").write_text("a file, not a checkpoint")

    def run(resume):
        model = ligo_fast.grow(small, large_cfg, seed=1)
        b = Trainer(model=model, args=_args(tmp_path / "b", max_steps=4, save_steps=2), train_dataset=data)
        b.train(resume_from_checkpoint=resume)
        return model

    with pytest.raises(Exception):  # noqa: B017 - transformers' own error for the torn directory
        run(True)
    assert latest_complete_checkpoint(tmp_path / "b") == str(tmp_path / "b" / "checkpoint-2")
    _equal(_state(run(latest_complete_checkpoint(tmp_path / "b"))), _state(first), "resumed past a torn checkpoint")
    assert latest_complete_checkpoint(tmp_path / "nothing") is None
