"""LiGO growth inside one Hugging Face ``Trainer`` run: the operator trains first, then the plain large model.

A :class:`~ligo_fast.LiGOModel` trains under an unmodified ``Trainer`` by itself (it has the large model's call
signature, ``config``, checkpointing switches, and its ``state_dict`` round-trips through Trainer checkpoints); at
the end ``trainer.model.materialize()`` gives the plain model. To do both phases in one run, wrap it and add the
callback::

    model = GrowingModel(ligo_fast.grow(small, large_config))
    trainer = Trainer(model=model, args=TrainingArguments(output_dir="out", max_steps=10_000), train_dataset=ds)
    trainer.add_callback(GrowthCallback(trainer))        # operator budget: ligo_fast.budget's rule (100 steps here)
    trainer.train()                                      # steps 1-100 the operator, 101-10000 the large model
    trainer.model.model.save_pretrained("grown")         # the plain HF model

The run's ``max_steps`` is the large model's whole budget and the operator's steps come out of it (the paper counts
them against the budget the same way). The operator's steps, learning rate and warm-up follow
:func:`ligo_fast.budget.operator_budget` of ``max_steps`` and the ``TrainingArguments``' learning rate (5% of the
steps within [10, 100], none for a depth-only growth from a function-preserving start, when the callback grows
before the first step; from a function-preserving start, ``grow()``'s default, that learning rate divided by the
square root of the small model's width, else the same; a tenth of its steps as linear warm-up, then constant),
unless overridden. When the operator loss rises above its start in the first steps
(:class:`ligo_fast.guard.RiseGuard`), a one-line warning says so and what to try. At the growth step the callback
materialises the operator, gives the Trainer a fresh optimizer for the large model (``Trainer.create_optimizer``:
the ``TrainingArguments``' optimizer, learning rate and weight decay) and the ``TrainingArguments``' schedule over
the remaining steps (warm-up included).
Checkpoints taken in either phase resume: :class:`GrowingModel` records whether it grew, and the callback rebuilds
the schedule of the phase it resumes in.

Single process only: under DDP/FSDP/DeepSpeed the Trainer's wrapped model cannot be swapped mid-run; there, run the
two phases as two ``Trainer`` runs (``materialize`` between them) or see ``examples/accelerate_grow.py``.

Imports: the model (below) and transformers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import TrainerCallback

from ..budget import OperatorBudget, operator_budget, warmup_factor
from ..guard import RiseGuard
from ..hf_surface import HFSurface, enable_checkpointing
from ..model import LiGOModel

logger = logging.getLogger(__name__)

__all__ = ["GrowingModel", "GrowthCallback", "latest_complete_checkpoint"]

TRAINER_STATE = "trainer_state.json"  # the last file Trainer writes into a checkpoint
WEIGHTS = "model.safetensors"  # where Trainer saves a GrowingModel's state_dict in a checkpoint
FORMAT = 1  # of a GrowingModel's state (its ``ligo_format`` entry; absent in those written before it: 1)
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` directory of a ``Trainer`` output directory that its save finished, for
    ``trainer.train(resume_from_checkpoint=latest_complete_checkpoint(out))``; None when there is none.

    ``Trainer`` writes a checkpoint's files in place, one after the other, and ``trainer_state.json`` last (then it
    rotates older checkpoints out). A run killed while saving leaves ``checkpoint-N`` without it (or with it torn),
    and ``resume_from_checkpoint=True`` picks that directory and fails until it is deleted by hand. Complete here
    means: ``trainer_state.json`` is a JSON object whose ``global_step`` is ``N``. Torn directories are skipped with
    a warning, never deleted. A complete one written by a newer ligo_fast (:func:`check_format`) raises ValueError
    naming its file: skipping it would resume an older one, and Trainer would then rotate the newer one out.
    """
    out = Path(os.fspath(output_dir))
    if not out.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), d) for d in out.iterdir() if (m := _CHECKPOINT.fullmatch(d.name)) and d.is_dir()),
        reverse=True,
    )
    for step, d in found:
        try:
            state = json.loads((d / TRAINER_STATE).read_text())
            complete = isinstance(state, dict) and state.get("global_step") == step
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            complete = False
        if complete:
            check_format(d / WEIGHTS)
            return str(d)
        logger.warning("%s: an incomplete checkpoint (no readable %s of step %d); skipping it", d, TRAINER_STATE, step)
    return None


def check_format(weights: str | os.PathLike) -> None:
    """Raise ValueError (one line naming ``weights``) when that checkpoint file of a :class:`GrowingModel` holds a
    ``ligo_format`` newer than this version's :data:`FORMAT`; a file without it (written before the format number,
    or not a GrowingModel's) or one that cannot be opened passes (loading it reports its own errors)."""
    try:
        with safe_open(os.fspath(weights), framework="pt") as f:
            if "ligo_format" not in f.keys():  # noqa: SIM118 - safe_open has keys(), no __contains__
                return
            fmt = f.get_tensor("ligo_format")
    except (OSError, ValueError, RuntimeError):
        return
    _format_problem(fmt, f"{os.fspath(weights)}: ")


def _format_problem(fmt, where: str) -> None:
    ok = torch.is_tensor(fmt) and fmt.numel() == 1 and not fmt.is_floating_point() and not fmt.is_complex()
    n = int(fmt) if ok else None
    if n is None or n < 1:
        raise ValueError(f"{where}a GrowingModel state whose ligo_format is not a format number")
    if n > FORMAT:
        raise ValueError(
            f"{where}a GrowingModel state of format {n}, written by a newer ligo_fast (this version reads up to "
            f"{FORMAT}); resume it with that version"
        )


class GrowingModel(HFSurface, nn.Module):
    """The model a ``Trainer`` trains through growth: a :class:`LiGOModel` until :meth:`grow`, then the plain large
    HF model it materialises (``.model`` holds the current one). Called like the large model, same signature.

    ``state_dict`` is ``model.*`` of the current model plus ``ligo_grown`` (a flag) and ``ligo_format`` (the format
    number :data:`FORMAT`: a state of a newer one is refused in one line, one without it is read as format 1);
    ``load_state_dict`` of a checkpoint taken after growth grows first. After growth, tied tensors (e.g. a tied LM
    head) are saved once, as HF's own saving does (safetensors refuses shared tensors), and re-tied on load. What
    ``Trainer`` reads (``config``, ``generate``, checkpointing switches, ``save_pretrained``, ...) is the current
    model's (:class:`HFSurface`).
    """

    def __init__(self, model: LiGOModel):
        super().__init__()
        if not isinstance(model, LiGOModel):
            raise TypeError(f"GrowingModel wraps a LiGOModel (ligo_fast.grow), got {type(model).__name__}")
        self.model: nn.Module = model
        self.register_buffer("ligo_grown", torch.tensor(False))
        self.register_buffer("ligo_format", torch.tensor(FORMAT))
        self.checkpointing: dict | None = None  # activation checkpointing arguments, carried across growth
        self.operator_losses: list[float] = []  # losses of the forwards since GrowthCallback last read them
        self._install_signature()
        self.register_state_dict_post_hook(_drop_tied_copies)
        self.register_load_state_dict_pre_hook(_grow_and_retie)

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        loss = getattr(out, "loss", None) if not self.grown and self.training else None
        if loss is not None:  # for the callback's guard: only the operator's steps (at most 100), so the sync is cheap
            self.operator_losses.append(float(loss.detach()))
        return out

    @property
    def grown(self) -> bool:
        return bool(self.ligo_grown)

    @torch.no_grad()
    def grow(self) -> nn.Module:
        """Materialise the operator and train the plain large model from now on (returns it)."""
        if self.grown:
            raise RuntimeError("GrowingModel.grow: the model has grown already")
        big = self.model.materialize()
        if self.checkpointing is not None:
            enable_checkpointing(big, **self.checkpointing)
        self.model = big
        self.ligo_grown.fill_(True)
        return big

    # ----------------------------------------------------------------------- what Trainer reads
    def _surface_model(self) -> nn.Module:
        return self.model

    def _signature_model(self) -> nn.Module:
        return self.model.large if isinstance(self.model, LiGOModel) else self.model

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs) -> None:
        self.checkpointing = {"activation_checkpointing_kwargs": activation_checkpointing_kwargs, **kwargs}
        super().activation_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        self.checkpointing = None
        super().activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.checkpointing is not None

    def tie_weights(self, *args, **kwargs) -> None:
        tie = getattr(self.model, "tie_weights", None)
        if tie is not None:
            tie(*args, **kwargs)


def _tied_copies(module: nn.Module) -> dict[str, str]:
    """``{name: first name}`` of the parameters of ``module`` that are the same tensor as an earlier one."""
    first: dict[int, str] = {}
    copies = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            copies[name] = first[id(p)]
        else:
            first[id(p)] = name
    return copies


def _drop_tied_copies(module: GrowingModel, sd, prefix, local_metadata) -> None:
    if module.grown:
        for name in _tied_copies(module.model):
            sd.pop(f"{prefix}model.{name}", None)


def _grow_and_retie(module: GrowingModel, sd, prefix, *args) -> None:
    key = prefix + "ligo_format"
    if key in sd:
        _format_problem(sd[key], "")
    else:  # written before the format number
        sd[key] = torch.tensor(FORMAT)
    flag = sd.get(prefix + "ligo_grown")
    if flag is not None and bool(flag) and not module.grown:
        module.grow()  # a checkpoint from after growth: become the plain model, then load its weights
    if module.grown:
        for name, first in _tied_copies(module.model).items():
            if f"{prefix}model.{first}" in sd:
                sd.setdefault(f"{prefix}model.{name}", sd[f"{prefix}model.{first}"])


class GrowthCallback(TrainerCallback):
    """Train the operator of a :class:`GrowingModel` for its budget, then the plain large model, in one run.

    Args:
        trainer: the ``Trainer`` (its model must be a :class:`GrowingModel`); the callback replaces its optimizer
            and scheduler at growth. Add it with ``trainer.add_callback(GrowthCallback(trainer))``.
        operator_steps: operator steps (counted in the run's ``max_steps``); None: the rule of
            :func:`ligo_fast.budget.operator_budget` (5% of ``max_steps``, at least 10, at most 100; 0 for a
            depth-only growth from a function-preserving start). 0: grow before the first step.
        operator_lr: the operator's peak learning rate; None: the budget rule's from the ``TrainingArguments``'
            ``learning_rate`` (divided by the square root of the small width from a function-preserving start).
        operator_warmup_steps: linear warm-up of the operator's learning rate, then constant; None: the budget's
            (a tenth of its steps, rounded up).
        operator_weight_decay: the operator's weight decay (default 0: the operator's coefficients are not weights
            to shrink; the official code trains them without decay).
    """

    def __init__(
        self,
        trainer,
        operator_steps: int | None = None,
        operator_lr: float | None = None,
        operator_warmup_steps: int | None = None,
        operator_weight_decay: float | None = None,
    ):
        if not isinstance(trainer.model, GrowingModel):
            raise TypeError(
                f"GrowthCallback needs the Trainer's model to be a GrowingModel, got {type(trainer.model).__name__}; "
                "pass Trainer(model=GrowingModel(ligo_fast.grow(...)), ...)"
            )
        for name, v, least in (
            ("operator_steps", operator_steps, 0),
            ("operator_warmup_steps", operator_warmup_steps, 0),
        ):
            if v is not None and (not isinstance(v, int) or v < least):
                raise ValueError(f"{name} must be an integer >= {least}, got {v!r}")
        for name, v in (("operator_lr", operator_lr), ("operator_weight_decay", operator_weight_decay)):
            if v is not None and not (isinstance(v, (int, float)) and 0 <= v < float("inf")):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.trainer = trainer
        self.steps, self.lr, self.warmup = operator_steps, operator_lr, operator_warmup_steps
        self.weight_decay = float(operator_weight_decay or 0.0)
        self.budget: OperatorBudget | None = None
        self.preserved_width = getattr(trainer.model.model, "preserved_width", None)  # None after growth
        self.widens = getattr(trainer.model.model, "widens", True)
        self.guard: RiseGuard | None = None

    def resolve(self, large_steps: int, large_lr: float) -> OperatorBudget:
        """The operator budget of a run of ``large_steps`` steps at peak learning rate ``large_lr``:
        :func:`ligo_fast.budget.operator_budget` with this callback's overrides."""
        b = operator_budget(
            large_steps, large_lr, steps=self.steps, preserved_width=self.preserved_width, widens=self.widens
        )
        if self.lr is not None:
            b = dataclasses.replace(b, lr=float(self.lr))
        if self.warmup is not None:
            if self.warmup > b.steps:
                raise ValueError(f"operator_warmup_steps={self.warmup} exceeds the {b.steps} operator steps")
            b = dataclasses.replace(b, warmup=self.warmup)
        return b

    # ----------------------------------------------------------------------- events
    def on_train_begin(self, args, state, control, **kwargs):
        tr = self.trainer
        if tr.model_wrapped is not tr.model:
            raise RuntimeError(
                f"GrowthCallback runs in a single process; the Trainer wrapped the model in "
                f"{type(tr.model_wrapped).__name__}. Train the operator and the large model in two Trainer runs."
            )
        self.budget = b = self.resolve(state.max_steps, args.learning_rate)
        if b.steps >= state.max_steps:
            raise ValueError(
                f"the run has max_steps={state.max_steps}, which leaves no step for the large model after "
                f"{b.steps} operator steps"
            )
        grown = tr.model.grown
        if b.steps == 0 and not grown and state.global_step == 0:  # no operator steps: the large model from step 1
            self._grow(state.global_step, state.max_steps)
            return
        if grown != (state.global_step >= b.steps):
            raise RuntimeError(
                f"resuming at step {state.global_step} with operator_steps={b.steps}, but the checkpoint's model "
                f"{'has' if grown else 'has not'} grown: use the operator budget the run started with"
            )
        if state.global_step == 0:  # a fresh run: the operator's learning rate and weight decay
            for g in tr.optimizer.param_groups:
                g["lr"] = g["initial_lr"] = b.lr
                g["weight_decay"] = self.weight_decay
        self._schedule(grown, state.max_steps, resumed=state.global_step > 0)
        tr.model.operator_losses.clear()
        self.guard = RiseGuard(lr=b.lr) if state.global_step == 0 else None  # a resumed run has no start
        if not grown:
            logger.info("GrowthCallback: %s, then %d large-model steps", b.describe(), state.max_steps - b.steps)

    def on_step_end(self, args, state, control, **kwargs):
        tr = self.trainer
        losses = tr.model.operator_losses
        if losses and self.guard is not None:
            msg = self.guard.update(state.global_step, sum(losses) / len(losses))
            if msg:
                logger.warning("GrowthCallback: %s", msg)
        losses.clear()
        if state.global_step != self.budget.steps or tr.model.grown:
            return
        self._grow(state.global_step, state.max_steps)

    # ----------------------------------------------------------------------- helpers
    def _grow(self, step: int, max_steps: int) -> None:
        """Materialise the large model at ``step`` and give the Trainer a fresh optimizer and the large model's
        schedule over the remaining steps."""
        tr = self.trainer
        big = tr.model.grow()
        logger.info("GrowthCallback: grew at step %d into %s", step, type(big).__name__)
        fresh = _fresh_optimizer(tr)
        if hasattr(tr.optimizer, "optimizer"):  # accelerate's wrapper: keep the object (accelerate tracks it)
            type(tr.optimizer).__init__(
                tr.optimizer, fresh, device_placement=tr.optimizer.device_placement, scaler=tr.optimizer.scaler
            )
        else:
            tr.optimizer = fresh
        self._schedule(True, max_steps, resumed=False)

    def _schedule(self, grown: bool, max_steps: int, resumed: bool) -> None:
        """Give the Trainer the schedule of the current phase (continuing a loaded one's position on resume)."""
        tr = self.trainer
        if not resumed:
            tr.lr_scheduler = self._make_schedule(grown, max_steps)
        else:  # the Trainer built its own schedule and loaded the checkpoint's position into it
            lrs = [g["lr"] for g in tr.optimizer.param_groups]  # as the checkpoint's optimizer left them
            loaded = tr.lr_scheduler.state_dict()
            tr.lr_scheduler = self._make_schedule(grown, max_steps)
            tr.lr_scheduler.load_state_dict(loaded)
            for g, lr in zip(tr.optimizer.param_groups, lrs, strict=True):
                g["lr"] = lr
        for attr in ("model", "optimizer", "lr_scheduler"):
            setattr(tr.callback_handler, attr, getattr(tr, attr))

    def _make_schedule(self, grown: bool, max_steps: int):
        """After growth the ``TrainingArguments``' schedule over the remaining steps; before, the operator's."""
        tr, b = self.trainer, self.budget
        if not grown:
            # the command line's warm-up (its first step at 1 / warmup of the lr; the scheduler counts from 0)
            return torch.optim.lr_scheduler.LambdaLR(tr.optimizer, lambda k: warmup_factor(k + 1, b.warmup))
        old = tr.lr_scheduler
        tr.lr_scheduler = None  # create_scheduler builds one only when there is none
        try:
            return tr.create_scheduler(num_training_steps=max_steps - b.steps, optimizer=tr.optimizer)
        finally:
            tr.lr_scheduler = old


def _fresh_optimizer(trainer) -> torch.optim.Optimizer:
    """A new optimizer for the trainer's (grown) model, built by the Trainer's own ``create_optimizer``."""
    old = trainer.optimizer
    trainer.optimizer = None
    try:
        return trainer.create_optimizer()
    finally:
        trainer.optimizer = old
