"""Resumable checkpoints of an operator-training run, under ``<out>/checkpoint/``.

``step-NNNNNNNN/`` holds the operator (``LiGOModel.save_operator``, so it is also a directory
``ligo_fast.load_operator`` reads) and ``trainer.pt`` (the step, the optimizer state and the run record: the
options that change the numbers). A checkpoint is written under a temporary name and renamed; ``latest`` names
the newest and is replaced atomically; older ones are removed afterwards. Resuming refuses a checkpoint whose run
record differs (:class:`RunMismatch`).

Imports torch and ligo_fast's public ``load_operator``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

import ligo_fast

CKPT = "checkpoint"
LATEST = "latest"
TRAINER = "trainer.pt"


class RunMismatch(ValueError):
    """The checkpoint belongs to a run with other options."""


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint directory under ``out/checkpoint``, or None."""
    root = out / CKPT
    latest = root / LATEST
    if latest.is_file():
        d = root / latest.read_text().strip()
        if (d / TRAINER).is_file():
            return d
    done = sorted(
        d for d in root.glob("step-*") if d.is_dir() and not d.name.endswith(".tmp") and (d / TRAINER).is_file()
    )
    return done[-1] if done else None


def save_checkpoint(out: Path, model, optimizer, step: int, run: dict) -> Path:
    """Write ``out/checkpoint/step-<step>`` atomically, point ``latest`` at it, drop older ones."""
    root = out / CKPT
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp, final = root / (name + ".tmp"), root / name
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_operator(tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "run": run}, tmp / TRAINER)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    ptr = root / (LATEST + ".tmp")
    ptr.write_text(name)
    os.replace(ptr, root / LATEST)
    for old in root.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(d: Path, model, optimizer, run: dict, small_model) -> int:
    """Restore the operator of ``model`` (grown from ``small_model``) and ``optimizer`` from ``d``; return the
    step it ended. Raises :class:`RunMismatch` when ``d`` was written by a run with another record than ``run``."""
    state = torch.load(d / TRAINER, map_location="cpu", weights_only=True)
    for k in dict.fromkeys([*run, *state["run"]]):
        old, new = state["run"].get(k), run.get(k)
        if old != new:
            raise RunMismatch(
                f"{d.parent.parent} holds a checkpoint of another run ({k}: {_short(old)} there, {_short(new)} now); "
                f"use another output directory or delete {d.parent}"
            )
    # through the public loader (another LiGOModel for a moment), then copied into the model being trained
    model.load_state_dict(ligo_fast.load_operator(d, small_model, model.config).state_dict())
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
