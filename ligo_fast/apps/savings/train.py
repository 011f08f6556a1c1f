"""The experiment's training loop: AdamW under a :class:`~.schedule.Schedule` on random windows of a token stream,
validation on fixed windows at step 0, every ``eval_every`` steps and at the end, wall time of the steps alone.

Used for the small model, the LiGO operator and the large models alike. Imports torch and ``ligo_fast.apps``'
``data`` (batches), ``progress`` and ``training.update`` (the clipped optimizer step the CLI uses too), and
:mod:`.schedule`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import random_windows
from ..progress import Progress
from ..training import update
from .schedule import Schedule

logger = logging.getLogger(__name__)


@dataclass
class EvalPoint:
    """One validation measurement. ``flops``/``wall_s`` are cumulative for the run, including offsets the
    run was started with (the operator's cost for LiGO); the small model's cost is never included here."""

    phase: str  # 'small', 'operator', 'train'
    step: int
    tokens: int
    flops: float
    wall_s: float
    val_loss: float


def lm_loss(model: nn.Module, windows: Tensor) -> Tensor:
    """Mean next-token cross-entropy (nats) of windows (B, T + 1): inputs ``[:, :-1]``, targets ``[:, 1:]``."""
    logits = model(input_ids=windows[:, :-1]).logits  # (B, T, V)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, val: Tensor, batch_size: int) -> float:
    """Mean validation loss over the fixed windows ``val`` (N, T + 1)."""
    was_training = model.training
    model.eval()
    device = device_of(model)
    total, n = 0.0, 0
    for i in range(0, val.shape[0], batch_size):
        chunk = val[i : i + batch_size].to(device)
        with _autocast(device):
            total += lm_loss(model, chunk).item() * chunk.shape[0]
        n += chunk.shape[0]
    model.train(was_training)
    return total / n


def device_of(model: nn.Module) -> torch.device:
    return next(p for p in model.parameters()).device


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(
    model: nn.Module,
    params: list[nn.Parameter],
    stream: Tensor,
    val: Tensor,
    *,
    steps: int,
    schedule: Schedule,
    weight_decay: float,
    batch_size: int,
    seq_len: int,
    data_seed: int,
    flops_per_step: float,
    eval_every: int,
    phase: str,
    flops_offset: float = 0.0,
    wall_offset: float = 0.0,
    progress: Progress | None = None,
    on_eval: Callable[[EvalPoint], None] | None = None,
) -> list[EvalPoint]:
    """Train ``params`` of ``model`` with AdamW on random windows of ``stream`` for ``steps`` steps, the learning
    rate of step ``k`` being ``schedule.lr(k)``.

    Batches (windows of ``seq_len + 1`` tokens: inputs and next-token targets) come from
    ``torch.Generator().manual_seed(data_seed)``, so runs with one seed see the same batches. Validation (on the
    windows ``val``) at step 0, every ``eval_every`` steps and at the end; wall time counts only the training
    steps. ``progress`` advances by one a step and notes each validation loss. Returns the validation curve.
    """
    device = device_of(model)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=schedule.peak, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(data_seed)
    tokens_per_step = batch_size * seq_len
    curve: list[EvalPoint] = []
    wall = wall_offset

    def record(step: int) -> None:
        point = EvalPoint(
            phase,
            step,
            step * tokens_per_step,
            flops_offset + step * flops_per_step,
            wall,
            evaluate(model, val, batch_size),
        )
        curve.append(point)
        logger.debug("%s step %d: val loss %.4f", phase, step, point.val_loss)
        if progress is not None:
            progress.note(val=f"{point.val_loss:.3f}")
        if on_eval is not None:
            on_eval(point)

    model.train()
    record(0)
    for step in range(steps):
        batch = random_windows(stream, batch_size, seq_len + 1, gen, skip_last=1).to(device, non_blocking=True)
        sync(device)
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = schedule.lr(step)
        with _autocast(device):
            loss = lm_loss(model, batch)
        loss.backward()
        update(opt, params, 1.0)
        opt.zero_grad(set_to_none=True)
        sync(device)
        wall += time.perf_counter() - t0
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{phase}: the training loss became {loss.item()} at step {step}")
        if progress is not None:
            progress.update(1)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            record(step + 1)
    return curve
