"""The resumable operator-training run of ``ligo-fast grow``: resume, the step loop, signals, divergence, progress.

:func:`resume` restores the newest usable checkpoint (:mod:`.checkpoints`) of an output directory;
:func:`train_operator` runs the steps after it: batch ``k`` is ``batch_at(k)``, its learning rate ``lr_at(k)``
(:func:`warmup_lr`), and dropout is seeded by ``data.step_seed(seed, k)``, so a resumed run ends exactly where an
uninterrupted one does. It checkpoints every ``save_every`` steps and at the end (never twice the same state).
Ctrl-C, SIGTERM, SIGHUP, SIGQUIT or SIGUSR1 (``errors.STOP_SIGNALS``) finishes the current step, saves it and
returns (a signal during an optimizer update keeps the last periodic checkpoint instead, as that update may be half
applied). A non-finite loss or gradient stops the run
before the update (``diverged``), and a state with a non-finite parameter or optimizer value is never saved, so
the last checkpoint stays the last finite one. One step is :func:`forward_backward` then :func:`update`: module
functions the savings experiment shares (``update``) and tests patch to interrupt a run at a chosen point.

Messages go through ``logging`` (the loss line every ``log_every`` steps at INFO); the bar is
:class:`.progress.Progress`. Imports torch and this package's ``data``, ``checkpoints``, ``errors`` and ``progress``.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ligo_fast import budget

from .checkpoints import (
    KEEP,
    CheckpointError,
    NoUsableCheckpoint,
    checkpoints,
    is_finite_state,
    load_checkpoint,
    save_checkpoint,
)
from .data import step_seed
from .errors import DeferredInterrupt
from .progress import Progress

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a :func:`train_operator` call ended.

    ``status``: ``done`` (all steps finished), ``stopped`` (``stop_at`` came first), ``interrupted`` (a signal;
    ``checkpoint`` holds ``step``), ``interrupted_in_update`` (a signal during the update of step ``step + 1``;
    ``checkpoint`` is the last periodic one, or None), ``diverged`` (``reason`` says what was not finite at which
    step; ``checkpoint`` is the last finite one, or None). ``loss`` is the last finished step's training loss (NaN
    when this call finished none); ``signum`` the signal that interrupted the run.
    """

    status: str
    step: int
    loss: float
    checkpoint: Path | None
    signum: int | None = None
    reason: str = ""


def warmup_lr(lr: float, warmup: int) -> Callable[[int], float]:
    """The learning rate of step ``k`` (1-based): ``lr * k / warmup`` for the first ``warmup`` steps (linear
    warm-up), then ``lr`` (constant)."""

    def lr_at(k: int) -> float:
        return lr * budget.warmup_factor(k, warmup)

    return lr_at


def forward_backward(model, batch: dict) -> torch.Tensor:
    """The loss of ``batch`` (HF model inputs with ``labels``), its gradients accumulated; returns the loss."""
    loss = model(**batch).loss
    loss.backward()
    return loss


def update(optimizer: torch.optim.Optimizer, params: list, max_grad_norm: float) -> None:
    """One optimizer update, the gradients of ``params`` clipped to ``max_grad_norm`` first (0: no clipping)."""
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()


def grad_norm(params: list) -> float:
    """The 2-norm of all gradients of ``params`` (inf/NaN when one is not finite)."""
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def resume(out: Path, model, optimizer, run: dict, small_model) -> tuple[int, Path | None]:
    """(step, checkpoint) of the newest usable checkpoint under ``out``, restored into ``model`` and ``optimizer``;
    ``(0, None)`` when there is none. A checkpoint that cannot be used is skipped with a one-line warning (an older
    one is used); when none of them can, ``checkpoints.NoUsableCheckpoint`` (never a silent start from step 0).
    Raises ``checkpoints.RunMismatch`` for another run's checkpoint."""
    found = checkpoints(out)
    problems = []
    for ckpt in found:
        try:
            return load_checkpoint(ckpt, model, optimizer, run, small_model), ckpt
        except CheckpointError as e:
            logger.warning("skipping a damaged checkpoint: %s", e)
            problems.append(str(e))
    if found:
        raise NoUsableCheckpoint(
            f"none of the {len(found)} checkpoint(s) in {found[0].parent} can be used (the newest: {problems[0]})"
        )
    return 0, None


def train_operator(
    model,
    optimizer: torch.optim.Optimizer,
    batch_at: Callable[[int], dict],
    *,
    out: Path,
    run: dict,
    start: int,
    steps: int,
    stop_at: int,
    seed: int,
    max_grad_norm: float,
    log_every: int,
    save_every: int,
    lr_at: Callable[[int], float] | None = None,
    saved: Path | None = None,
    progress: bool = True,
    keep: int = KEEP,
    on_loss: Callable[[int, float], None] | None = None,
) -> Outcome:
    """Train steps ``start + 1 .. min(steps, stop_at)`` of ``model``'s operator and checkpoint into ``out``.

    ``batch_at(k)``: the inputs of step ``k`` (CPU tensors; moved to the model's device here). ``lr_at(k)``: its
    learning rate (None: the optimizer's own). ``run``: the run record stored with each checkpoint. ``saved``: the
    checkpoint that already holds the state at ``start`` (a resumed run), so it is not written again. ``keep``: the
    checkpoints kept (``checkpoints.redundant``). The optimizer updates the parameters of its param groups.
    ``on_loss(k, loss)`` is told each finished step's loss (the guards of :mod:`ligo_fast.guard`).
    """
    device = model.device
    params = [p for g in optimizer.param_groups for p in g["params"]]
    step, loss_val = start, float("nan")
    bar = Progress(steps, "operator", enabled=progress, initial=step, log=logger)
    updating = False
    last = saved  # the checkpoint holding the newest saved state, and its step
    last_step = start if saved is not None else None

    def save() -> Path | None:
        nonlocal last, last_step
        if last_step == step:
            return last
        if not is_finite_state(model, optimizer):
            return None
        last, last_step = save_checkpoint(out, model, optimizer, step, run, keep), step
        return last

    def diverged(what: str) -> Outcome:
        bar.close()
        return Outcome("diverged", step, loss_val, last, reason=what)

    try:
        with DeferredInterrupt() as interrupt:
            while step < stop_at:
                n = step + 1
                batch = {k: v.to(device) for k, v in batch_at(n).items()}
                torch.manual_seed(step_seed(seed, n))  # dropout: the same masks when resumed
                optimizer.zero_grad(set_to_none=True)
                loss = forward_backward(model, batch)
                value = float(loss.detach())
                if not math.isfinite(value):
                    return diverged(f"the loss of step {n} is {value}")
                norm = grad_norm(params)
                if not math.isfinite(norm):
                    return diverged(f"the gradient norm of step {n} is {norm}")
                if lr_at is not None:
                    for g in optimizer.param_groups:
                        g["lr"] = lr_at(n)
                updating = True
                update(optimizer, params, max_grad_norm)
                updating = False
                step, loss_val = n, value
                if on_loss is not None:
                    on_loss(step, loss_val)
                bar.update(1, loss=f"{loss_val:.4f}")
                if step % log_every == 0 or step == steps:
                    logger.info("step %d/%d  loss %.4f", step, steps, loss_val)
                if step % save_every == 0 and step < stop_at:
                    if save() is None:
                        return diverged(f"the operator or optimizer state holds NaN/Inf after step {step}")
                if interrupt.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        signum = interrupt.signum if interrupt.signum is not None else signal.SIGINT
        if updating:
            return Outcome("interrupted_in_update", step, loss_val, last, signum)
        where = save()
        if where is None:
            return Outcome("diverged", step, loss_val, last, signum, f"the state after step {step} holds NaN/Inf")
        return Outcome("interrupted", step, loss_val, where, signum)
    bar.close()
    where = save()
    if where is None:
        return diverged(f"the operator or optimizer state holds NaN/Inf after step {step}")
    return Outcome("done" if step >= steps else "stopped", step, loss_val, where)
