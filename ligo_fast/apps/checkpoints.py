"""Resumable checkpoints of an operator-training run, under ``<out>/checkpoint/``, crash-consistent.

``step-NNNNNNNN/`` (``step-NNNNNNNN-K/`` when that name is taken) holds the operator (``LiGOModel.save_operator``,
so it is also a directory ``ligo_fast.load_operator`` reads) and ``trainer.pt`` (its format number :data:`FORMAT`,
the step, the optimizer state and the run record: the options that change the numbers).

Writing (:func:`save_checkpoint`): everything goes into ``step-....tmp/`` (each file fsynced), which is renamed to
its final name only when complete (then the directory is fsynced); only then are the checkpoints it makes redundant
removed (an older save of the same step, and older steps beyond the newest ``keep``; never one of a later step,
which this run could not replace), each first renamed to ``*.del.tmp`` (one atomic step) and then deleted. So at
every instant the newest finished checkpoints exist under plain names, and a plain name is always complete: a kill
at any point loses nothing that had been saved, and an older checkpoint stays to fall back on when the newest
cannot be read. Leftover ``*.tmp`` entries of a killed run are removed by :func:`clean` (under the output lock).

``<out>/checkpoint`` itself may be a symbolic link to a directory (scratch storage on a cluster): it is followed
for writing, reading and removing alike; a link to no directory is refused by :func:`root_problem`.

Reading (:func:`checkpoints`): the complete checkpoints are found by listing the directory (names, no symlinks,
``trainer.pt`` present), newest first. ``latest`` (a file naming the newest, for people and scripts) is written
but never followed, so no file can point a resumed run outside its output directory.

A resumed run must repeat the options of the checkpoint's run (:func:`run_differences` names the fields that
differ; :class:`RunMismatch`), except the memory budget (:data:`BUDGET`), which it reuses from the checkpoint
(:func:`recorded_budget`) unless told another one; a checkpoint that cannot be read is a :class:`CheckpointError`
(the caller falls back to an older one). Imports torch and ligo_fast's public ``load_operator`` and
``serialization`` helpers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

import ligo_fast
from ligo_fast.serialization import atomic_write, fsync_dir

logger = logging.getLogger(__name__)

CKPT = "checkpoint"
LATEST = "latest"
TRAINER = "trainer.pt"
_NAME = re.compile(r"^step-(\d{8})(?:-(\d+))?$")
# record fields that say nothing about the numbers (the typed --small path reached the large config through the
# small config's _name_or_path) or that a resumed run may override (the memory budget: :func:`recorded_budget`), and
# the values of fields older records lack
_IGNORED = ("large_config._name_or_path", "large_config.transformers_version", "memory_budget")
_OLD_DEFAULTS = {"warmup": 0}
_PATHS = ("small",)
# content digests that records before them lack: not compared when the older record has none
_OPTIONAL = ("data_sha256", "small_sha256")
KEEP = 2  # checkpoints kept by default: the newest, and one to fall back on when it cannot be read
FORMAT = 1  # of trainer.pt ("format"; absent in those written before it: 1); a newer one is refused, not skipped
BUDGET = "memory_budget"  # the run record's field {"bytes": N, "source": "..."}: the memory the run decides with


class RunMismatch(ValueError):
    """The checkpoint belongs to a run with other options."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (damaged, missing files, another format)."""


class NewerFormat(ValueError):
    """A checkpoint written by a newer version (its ``trainer.pt`` has a higher format): refused, never skipped (an
    older checkpoint would be resumed and its step re-saved over it)."""


class NoUsableCheckpoint(CheckpointError):
    """Checkpoints exist but none can be used: starting over would lose them, so only ``--restart`` does."""


# ---------------------------------------------------------------------------------------------- run records
def run_differences(old: dict, new: dict) -> list[str]:
    """``field: <old> there, <new> now`` for every field where run record ``old`` (a checkpoint's) and ``new``
    differ; nested dicts (the large config) by their own fields, paths equal when they name the same file. Both are
    compared as JSON reads them back (the manifest's copy is JSON: integer keys become strings)."""
    out: list[str] = []
    _diff(_as_json({**_OLD_DEFAULTS, **old}), _as_json(new), "", out)
    return out


def _as_json(v):
    return json.loads(json.dumps(v, default=str))


def _diff(old, new, prefix: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in dict.fromkeys([*old, *new]):
            name = f"{prefix}{k}"
            if name in _IGNORED or (name in _OPTIONAL and k not in old):
                continue
            if k not in old or k not in new:
                there = "absent" if k not in old else _short(old[k])
                now = "absent" if k not in new else _short(new[k])
                out.append(f"{name}: {there} there, {now} now")
            else:
                _diff(old[k], new[k], name + ".", out)
        return
    name = prefix.rstrip(".")
    if name in _PATHS and isinstance(old, str) and isinstance(new, str) and _same_path(old, new):
        return
    if name == "data" and _same_files(old, new):
        return
    if name.startswith(_OPTIONAL) and isinstance(old, str) and isinstance(new, str) and old != new:
        out.append(f"{name}: the content changed (sha256 {old[:12]}... there, {new[:12]}... now)")
        return
    if old != new:
        out.append(f"{name}: {_short(old)} there, {_short(new)} now")


def _same_path(a: str, b: str) -> bool:
    if a == b or Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _same_files(old, new) -> bool:
    """Data lists ``[[path, size], ...]`` naming the same files with the same sizes."""
    try:
        return len(old) == len(new) and all(
            _same_path(str(a[0]), str(b[0])) and a[1] == b[1] for a, b in zip(old, new, strict=True)
        )
    except (TypeError, IndexError, KeyError):
        return False


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


# ---------------------------------------------------------------------------------------------- finding
def _key(d: Path) -> tuple[int, int]:
    m = _NAME.match(d.name)
    assert m is not None
    return int(m.group(1)), int(m.group(2) or 0)


def root_problem(out: Path) -> str | None:
    """Why ``out/checkpoint`` cannot hold checkpoints (a symbolic link to no directory, or not a directory), or
    None (absent, a directory, or a link to one)."""
    root = Path(out) / CKPT
    if root.is_symlink() and not root.is_dir():
        return f"{root} is a symbolic link to {os.readlink(root)}, which is no directory"
    if root.exists() and not root.is_dir():
        return f"{root} exists and is not a directory"
    return None


def checkpoints(out: Path) -> list[Path]:
    """The complete checkpoint directories under ``out/checkpoint`` (followed when a link to a directory), newest
    first (by step, then by generation)."""
    root = Path(out) / CKPT
    if not root.is_dir():
        return []
    found = [
        d
        for d in root.iterdir()
        if _NAME.match(d.name) and d.is_dir() and not d.is_symlink() and (d / TRAINER).is_file()
    ]
    return sorted(found, key=_key, reverse=True)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint directory under ``out/checkpoint``, or None."""
    found = checkpoints(out)
    return found[0] if found else None


def clean(out: Path) -> None:
    """Remove what a killed run left half-written or half-deleted (``*.tmp`` under ``out/checkpoint``). Call it
    only while holding the output directory's lock."""
    root = Path(out) / CKPT
    if root.is_dir():
        for d in root.iterdir():
            if d.name.endswith(".tmp"):
                _delete(d)


def _delete(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _remove(d: Path) -> None:
    """Delete checkpoint ``d`` so that it is never seen half-deleted: rename (atomic), then delete."""
    trash = d.with_name(d.name + ".del.tmp")
    os.replace(d, trash)
    fsync_dir(d.parent)
    _delete(trash)


def remove_checkpoints(out: Path, upto: int | None = None) -> list[Path]:
    """Delete the checkpoints of ``out`` (after a run's outputs are complete), leaving no half-deleted one; with
    ``upto``, only those of steps up to it (a later one, which the run did not replace, stays). The directory goes
    too when empty (a symbolic link ``checkpoint`` stays, its target emptied). Returns those kept."""
    root = Path(out) / CKPT
    if not root.is_dir():
        return []
    kept = []
    for d in checkpoints(out):
        if upto is not None and _key(d)[0] > upto:
            kept.append(d)
        else:
            _remove(d)
    clean(out)
    if not kept:
        (root / LATEST).unlink(missing_ok=True)
        if not root.is_symlink():
            try:
                root.rmdir()
            except OSError:
                pass  # something else lives there; left alone
    return kept


def redundant(found: list[Path], new: Path, keep: int) -> list[Path]:
    """The checkpoints of ``found`` that saving ``new`` makes redundant when ``keep`` are kept: older saves of
    ``new``'s step, and older steps beyond the newest ``keep - 1``. Those of later steps are never listed (the run
    fell back past them: it did not replace them)."""
    step = _key(new)[0]
    older = sorted({_key(d)[0] for d in found if _key(d)[0] < step}, reverse=True)
    kept_steps = set(older[: max(keep - 1, 0)])
    return [d for d in found if d != new and _key(d)[0] <= step and _key(d)[0] not in kept_steps]


# ---------------------------------------------------------------------------------------------- saving, loading
def save_checkpoint(out: Path, model, optimizer, step: int, run: dict, keep: int = KEEP) -> Path:
    """Write the checkpoint of ``step`` (see the module doc for the order of operations) and return its directory;
    once it is complete, the checkpoints it makes redundant (:func:`redundant`: ``keep`` are kept) are removed. A
    full disk raises ``ligo_fast.serialization.DiskFullError`` and leaves the previous checkpoints as they were."""
    root = Path(out) / CKPT
    root.mkdir(parents=True, exist_ok=True)
    base = f"step-{step:08d}"
    name, gen = base, 0
    while (root / name).exists() or (root / f"{name}.tmp").exists():
        gen += 1
        name = f"{base}-{gen}"
    tmp, final = root / f"{name}.tmp", root / name
    state = {"format": FORMAT, "step": step, "optimizer": optimizer.state_dict(), "run": run}
    tensors = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    try:
        model.save_operator(tmp)
        atomic_write(tmp / TRAINER, lambda p: torch.save(state, p), nbytes=nbytes)
        fsync_dir(tmp)
        os.replace(tmp, final)
    except BaseException:
        _delete(tmp)
        raise
    fsync_dir(root)
    atomic_write(root / LATEST, lambda p: p.write_text(name))
    for old in redundant(checkpoints(out), final, keep):
        _remove(old)
    return final


def _trainer_state(d: Path, mmap: bool = False) -> dict:
    try:
        state = torch.load(d / TRAINER, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - damaged, truncated, or refused by weights_only: unusable either way
        raise CheckpointError(f"{d / TRAINER}: unreadable ({_first_line(e)})") from e
    ok = (
        isinstance(state, dict)
        and isinstance(state.get("step"), int)
        and not isinstance(state.get("step"), bool)
        and state["step"] >= 0
        and isinstance(state.get("run"), dict)
        and isinstance(state.get("optimizer"), dict)
    )
    if not ok:
        raise CheckpointError(f"{d / TRAINER}: not a trainer state of this program (step, optimizer, run)")
    fmt = state.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise CheckpointError(f"{d / TRAINER}: format {fmt!r} is no format number")
    if fmt > FORMAT:
        raise NewerFormat(
            f"{d / TRAINER}: written by a newer ligo-fast (checkpoint format {fmt}; this version reads up to "
            f"{FORMAT}); resume it with that version, or --restart to start over"
        )
    return state


def recorded_budget(out: Path) -> tuple[int, Path] | None:
    """``(bytes, checkpoint)``: the memory budget recorded in the run record of the newest checkpoint of ``out``
    whose trainer state can be read (the one a resumed run starts from, unless its operator is damaged); None when
    there is none, or it records no budget (written by an older version). Its tensors are memory-mapped, not read."""
    for d in checkpoints(out):
        try:
            state = _trainer_state(d, mmap=True)
        except CheckpointError:
            continue
        v = state["run"].get(BUDGET)
        n = v.get("bytes") if isinstance(v, dict) else None
        ok = isinstance(n, int) and not isinstance(n, bool) and n >= 1
        return (n, d) if ok else None
    return None


def load_checkpoint(d: Path, model, optimizer, run: dict, small_model) -> int:
    """Restore the operator of ``model`` (grown from ``small_model``) and ``optimizer`` from ``d``; return the
    step it ended. Raises :class:`RunMismatch` when ``d`` was written by a run with another record than ``run``,
    :class:`NewerFormat` when by a newer version, :class:`CheckpointError` when ``d`` cannot be used (nothing is
    changed then)."""
    state = _trainer_state(d)
    diffs = run_differences(state["run"], run)
    if diffs:
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise RunMismatch(
            f"{d.parent.parent} holds a checkpoint of another run ({'; '.join(diffs[:3])}{more}); "
            f"use another output directory, or --restart to start over"
        )
    try:  # through the public loader (checked: digest, finiteness, fit), then copied into the model being trained
        loaded = ligo_fast.load_operator(d, small_model, model.config).state_dict()
    except (ValueError, FileNotFoundError) as e:
        raise CheckpointError(f"{d}: {_first_line(e)}") from e
    for v in state["optimizer"].get("state", {}).values():
        for t in v.values() if isinstance(v, dict) else ():
            if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
                raise CheckpointError(f"{d / TRAINER}: the optimizer state holds NaN/Inf")
    before = optimizer.state_dict()
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        optimizer.load_state_dict(before)
        raise CheckpointError(f"{d / TRAINER}: the optimizer state does not fit ({_first_line(e)})") from e
    model.load_state_dict(loaded)
    return int(state["step"])


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[0] if lines else type(e).__name__


def is_finite_state(model, optimizer) -> bool:
    """True when every trainable parameter and every floating optimizer-state tensor is finite (what a
    checkpoint may hold)."""
    for p in model.parameters():
        if p.requires_grad and not torch.isfinite(p).all():
            return False
    for s in optimizer.state.values():
        for t in s.values():
            if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
                return False
    return True
