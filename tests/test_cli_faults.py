"""Fault injection: ``ligo-fast grow`` SIGKILLed at random points of its save sequences, then rerun.

The child is a fork of this test process (torch and transformers already imported, so a trial costs a grow run,
not an interpreter start). In the child, this test wraps the file-system calls every save goes through
(``os.replace``/``rename``/``fsync``/``unlink``/``rmdir``/``mkdir``, safetensors' ``save_file``, ``torch.save``):
each call counts two events (before and after it), and at the chosen event the child SIGKILLs itself (no cleanup
runs, as in a power-cut-free crash or ``kill -9``). The child also records, through a pipe, every checkpoint whose
save returned. After each kill:

- nothing finished is lost: the newest complete checkpoint holds at least the last step whose save returned
  (unless the run had already written its complete outputs);
- nothing mixed is accepted: the output directory reads as complete (manifest, every file verified, and the
  operator equal to the reference run's at that step), or as incomplete (refused with a clear error);
- rerunning the same command finishes with exactly the uninterrupted run's operator and model, and leaves no
  temporary files.

Scenario ``fresh``: a 6-step run from nothing (the checkpoint windows, the output writing, the checkpoint removal).
Scenario ``rewrite``: a finished 4-step run (kept checkpoint) continued to 6 steps, whose outputs replace the
4-step ones (the window where a directory could hold files of two steps).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys

import pytest
import torch
from _models import write_cli_inputs
from safetensors.torch import load_file

from ligo_fast import serialization
from ligo_fast.apps import checkpoints, cli, outputs, training

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

TRIALS = {"fresh": 18, "rewrite": 12}
# one warm-up for 4 and 6 steps (the default's is the whole budget below 10 steps), so a 4-step run continues to 6
ARGS = ["--batch-size", "2", "--seq-len", "8", "--save-every", "2", "--no-progress", "--device", "cpu",
        "--warmup", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    write_cli_inputs(d, "text.txt")

    def argv(out, steps: int, *extra) -> list[str]:
        return [
            "grow",
            "--small",
            str(d / "small"),
            "--large-config",
            str(d / "large.json"),
            "--data",
            str(d / "text.txt"),
            "--out",
            str(out),
            "--steps",
            str(steps),
            *ARGS,
            *extra,
        ]

    ref = {}
    for steps in (4, 6):  # the uninterrupted runs: operator and model after 4 and after 6 steps
        out = d / f"ref{steps}"
        assert cli.main(argv(out, steps, "--keep-checkpoints")) == 0
        ref[steps] = {"operator": load_file(str(out / "operator.safetensors")), "model": out / "model.safetensors"}
    return d, argv, ref


def _wrap(target, name: str, tick) -> None:
    original = getattr(target, name)

    def wrapped(*args, **kwargs):
        tick()
        result = original(*args, **kwargs)
        tick()
        return result

    setattr(target, name, wrapped)


def _run_child(argv: list[str], kill_at: int | None) -> tuple[bool, list[int], int]:
    """Run ``cli.main(argv)`` in a forked child killed at event ``kill_at`` (None: never). Returns (killed,
    steps whose checkpoint save returned, events counted)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(r)
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
            count = [0]

            def tick() -> None:
                count[0] += 1
                if count[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            for name in ("replace", "rename", "fsync", "unlink", "rmdir", "mkdir"):
                _wrap(os, name, tick)
            _wrap(serialization, "write_safetensors", tick)
            _wrap(torch, "save", tick)
            save = training.save_checkpoint

            def logged_save(out, model, optimizer, step, run, *rest):
                path = save(out, model, optimizer, step, run, *rest)
                os.write(w, f"saved {step}\n".encode())
                return path

            training.save_checkpoint = logged_save
            code = cli.main(argv)
            os.write(w, f"events {count[0]}\n".encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        lines = f.read().splitlines()
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert killed or os.WEXITSTATUS(status) == 0, (status, lines)
    saved = [int(x.split()[1]) for x in lines if x.startswith("saved ")]
    events = [int(x.split()[1]) for x in lines if x.startswith("events ")]
    return killed, saved, events[0] if events else -1


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _check_after_kill(out, saved: list[int], ref: dict, allowed_steps: tuple[int, ...]) -> None:
    """The invariants of a killed run's output directory (see the module doc)."""
    try:
        manifest = outputs.check_outputs(out)
    except outputs.OutputsError as e:
        assert "incomplete outputs" in str(e), e  # refused as incomplete, never as "mixed" by accident
        manifest = None
    else:
        if manifest is None:
            assert not outputs.output_files(out), "output files without a manifest and no sign of interruption"
    if manifest is not None:
        step = manifest["step"]
        assert step in allowed_steps
        _same(load_file(str(out / "operator.safetensors")), ref[step]["operator"])
        assert (out / "model.safetensors").read_bytes() == ref[step]["model"].read_bytes()
    newest = checkpoints.latest_checkpoint(out)
    if saved and not (manifest is not None and manifest["step"] == max(allowed_steps)):
        assert newest is not None and int(newest.name.split("-")[1]) >= saved[-1], (newest, saved)


def _check_finished(out, ref: dict, steps: int, keep: bool) -> None:
    m = outputs.check_outputs(out)
    assert m is not None and m["step"] == steps
    _same(load_file(str(out / "operator.safetensors")), ref[steps]["operator"])
    assert (out / "model.safetensors").read_bytes() == ref[steps]["model"].read_bytes()
    left = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left
    assert (out / "checkpoint").exists() == keep


@pytest.mark.parametrize("scenario", ["fresh", "rewrite"])
def test_random_kills_lose_nothing_and_mix_nothing(setup, tmp_path, scenario):
    d, argv, ref = setup
    rng = random.Random(f"faults-{scenario}")

    def prepare(out):
        if scenario == "rewrite":  # a finished 4-step run with its checkpoint, continued to 6 steps
            shutil.copytree(d / "ref4", out)
        return argv(out, 6, "--keep-checkpoints") if scenario == "rewrite" else argv(out, 6)

    # a dry run counts the events of the whole command
    dry = tmp_path / "dry"
    killed, saved, events = _run_child(prepare(dry), None)
    assert not killed and events > 20 and saved[-1] == 6
    allowed = (4, 6) if scenario == "rewrite" else (6,)
    # kill points: random ones, plus the last few events (the output manifest, the checkpoint removal)
    points = sorted(rng.sample(range(1, events + 1), TRIALS[scenario] - 3) + [events - 2, events - 1, events])
    for i, at in enumerate(points):
        out = tmp_path / f"t{i}"
        a = prepare(out)
        killed, saved, _ = _run_child(a, at)
        assert killed, f"event {at} of {events} was not reached"
        _check_after_kill(out, saved, ref, allowed)
        assert cli.main(a) == 0, f"rerun after a kill at event {at} of {events} failed"
        _check_finished(out, ref, 6, keep=scenario == "rewrite")
