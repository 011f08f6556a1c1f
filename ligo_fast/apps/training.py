"""The resumable operator-training run of ``ligo-fast grow``: resume, the step loop, Ctrl-C, progress.

:func:`resume` restores the newest checkpoint (:mod:`.checkpoints`) of an output directory; :func:`train_operator`
runs the steps after it: batch ``k`` is ``batch_at(k)`` and dropout is seeded by ``data.step_seed(seed, k)``, so a
resumed run ends exactly where an uninterrupted one does. It checkpoints every ``save_every`` steps and at the end;
Ctrl-C finishes the current step, saves it and returns (a Ctrl-C during an optimizer update keeps the last
periodic checkpoint instead, as that update may be half applied). One step is :func:`forward_backward` then
:func:`update`: module functions the savings experiment shares (``update``) and tests patch to interrupt a run at
a chosen point.

Messages go through ``logging`` (the loss line every ``log_every`` steps at INFO); the bar is
:class:`.progress.Progress`. Imports torch and this package's ``data``, ``checkpoints`` and ``progress``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from .data import step_seed
from .progress import Progress

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a :func:`train_operator` call ended.

    ``status``: ``done`` (all steps finished), ``stopped`` (``stop_at`` came first), ``interrupted`` (Ctrl-C;
    ``checkpoint`` holds ``step``), ``interrupted_in_update`` (Ctrl-C during the update of step ``step + 1``;
    ``checkpoint`` is the last periodic one, or None). ``loss`` is the last step's training loss (NaN when this
    call ran no step).
    """

    status: str
    step: int
    loss: float
    checkpoint: Path | None


class DeferredInterrupt:
    """Defers Ctrl-C to the end of the current step (a second Ctrl-C raises KeyboardInterrupt at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


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


def resume(out: Path, model, optimizer, run: dict, small_model) -> tuple[int, Path | None]:
    """(step, checkpoint) of the newest checkpoint under ``out``, restored into ``model`` and ``optimizer``;
    ``(0, None)`` when there is none. Raises ``checkpoints.RunMismatch`` for another run's checkpoint."""
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return 0, None
    return load_checkpoint(ckpt, model, optimizer, run, small_model), ckpt


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
    progress: bool = True,
) -> Outcome:
    """Train steps ``start + 1 .. min(steps, stop_at)`` of ``model``'s operator and checkpoint into ``out``.

    ``batch_at(k)``: the inputs of step ``k`` (CPU tensors; moved to the model's device here). ``run``: the run
    record stored with each checkpoint. The optimizer updates the parameters of its param groups.
    """
    device = model.device
    params = [p for g in optimizer.param_groups for p in g["params"]]
    step, loss_val = start, float("nan")
    bar = Progress(steps, "operator", enabled=progress, initial=step, log=logger)
    updating = False
    try:
        with DeferredInterrupt() as interrupt:
            while step < stop_at:
                n = step + 1
                batch = {k: v.to(device) for k, v in batch_at(n).items()}
                torch.manual_seed(step_seed(seed, n))  # dropout: the same masks when resumed
                optimizer.zero_grad(set_to_none=True)
                loss = forward_backward(model, batch)
                updating = True
                update(optimizer, params, max_grad_norm)
                updating = False
                step = n
                loss_val = float(loss.detach())
                bar.update(1, loss=f"{loss_val:.4f}")
                if step % log_every == 0 or step == steps:
                    logger.info("step %d/%d  loss %.4f", step, steps, loss_val)
                if step % save_every == 0 and step < stop_at:
                    save_checkpoint(out, model, optimizer, step, run)
                if interrupt.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        if updating:
            return Outcome("interrupted_in_update", step, loss_val, latest_checkpoint(out))
        return Outcome("interrupted", step, loss_val, save_checkpoint(out, model, optimizer, step, run))
    bar.close()
    where = save_checkpoint(out, model, optimizer, step, run)
    return Outcome("done" if step >= steps else "stopped", step, loss_val, where)
