"""Nothing lost, round 2: one test per command-line finding of issue 22 (N1-N7, N18). Every case ends in the last
good state or a clean one-line refusal with its exit code (literal here: 0 done, 1 failed, 2 user error, 128 + the
signal). The fixtures and helpers are those of ``test_cli_guarantees.py``: a tiny Llama grown for a few steps."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from test_cli_guarantees import (  # noqa: F401
    fx,
    grow_argv,
    one_line_error,
    operator,
    ref,
    same,
    signalled_at_step,
    steps_of,
)

import ligo_fast
from ligo_fast import memory
from ligo_fast.apps import cli, inputs, outputs, progress, training
from ligo_fast.apps.errors import Interrupted


@pytest.fixture(scope="module")
def ref6(fx, tmp_path_factory):  # noqa: F811
    """An uninterrupted 6-step run."""
    out = tmp_path_factory.mktemp("ref6") / "out"
    assert cli.main(grow_argv(fx, out, steps=6)) == 0
    return out


def _tear(path) -> None:
    path.write_bytes(path.read_bytes()[:100])  # a torn trainer.pt (a kill of another tool, a bad disk)


def _no_tmp(out) -> None:
    left = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left


# ---------------------------------------------------------------------------------------------- N1
def test_n1_an_unusable_newest_checkpoint_falls_back_to_the_previous_one(fx, ref6, tmp_path, capsys):  # noqa: F811
    """N1: rotation kept one checkpoint, so a torn newest one meant a silent restart from step 0 (exit 0), whose
    first save deleted it. Now the newest two are kept: the older one is used, with a one-line warning, and a later
    checkpoint the run did not replace is never deleted."""
    out = tmp_path / "out"
    assert cli.main(grow_argv(fx, out, "--max-steps-this-run", "4", steps=6)) == 0
    assert steps_of(out) == ["step-00000002", "step-00000004"]
    _tear(out / "checkpoint" / "step-00000004" / "trainer.pt")
    capsys.readouterr()
    assert cli.main(grow_argv(fx, out, "--max-steps-this-run", "1", steps=6)) == 0  # resumes at 2, saves 3
    text = capsys.readouterr()
    assert "skipping a damaged checkpoint" in text.err and "step-00000004" in text.err
    assert len(text.err.strip().splitlines()) == 1 and "resuming from step 2 of 6" in text.out
    assert steps_of(out) == ["step-00000002", "step-00000003", "step-00000004"]  # 4 was not replaced: kept
    assert cli.main(grow_argv(fx, out, steps=6)) == 0  # skips 4 again, resumes at 3
    assert "resuming from step 3 of 6" in capsys.readouterr().out
    same(operator(out), operator(ref6))
    _no_tmp(out)


def test_n1_no_usable_checkpoint_is_refused_and_restart_starts_over(fx, ref6, tmp_path, capsys):  # noqa: F811
    """N1: when no checkpoint can be used, the run no longer starts over silently: exit 2 naming --restart, every
    checkpoint left in place; --restart starts over on purpose and ends as the uninterrupted run."""
    out = tmp_path / "out"
    assert cli.main(grow_argv(fx, out, "--max-steps-this-run", "4", steps=6)) == 0
    for d in ("step-00000002", "step-00000004"):
        _tear(out / "checkpoint" / d / "trainer.pt")
    capsys.readouterr()
    rc = cli.main(grow_argv(fx, out, steps=6))
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the two one-line warnings
    assert rc == 2 and err.startswith("ligo-fast grow: error: none of the 2 checkpoint(s)") and "--restart" in err
    assert steps_of(out) == ["step-00000002", "step-00000004"] and not (out / "model.safetensors").exists()
    assert cli.main(grow_argv(fx, out, "--restart", steps=6)) == 0
    assert "--restart: starting over from step 0 of 6 (2 checkpoint(s) removed)" in capsys.readouterr().out
    same(operator(out), operator(ref6))
    assert not (out / "checkpoint").exists()


def test_n1_keep_checkpoints_sets_how_many(fx, tmp_path):  # noqa: F811
    """``--keep-checkpoints N`` keeps the newest N (and keeps them after the finished run); without N, the default 2."""
    for given, expected in (
        (["--keep-checkpoints", "3"], 3),
        (["--keep-checkpoints"], 2),
        (["--keep-checkpoints", "1"], 1),
    ):
        out = tmp_path / f"out{expected}"
        assert cli.main(grow_argv(fx, out, *given, steps=6)) == 0
        assert steps_of(out) == [f"step-{k:08d}" for k in (2, 4, 6)[3 - expected :]]


# ---------------------------------------------------------------------------------------------- N2
def test_n2_the_lock_is_never_followed_nor_shown(fx, tmp_path, capsys):  # noqa: F811
    """N2: a symbolic link at --out/.ligo-fast.lock was followed (its target truncated, its first 200 bytes
    printed). Now a link or a non-regular lock is refused (exit 2, one line, the target untouched), a file of another
    user too, and a lock file's foreign content is never printed."""
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("secret: hunter2\n")
    (out / ".ligo-fast.lock").symlink_to(victim)
    rc = cli.main(grow_argv(fx, out, steps=2))
    one_line_error(capsys, 2, rc, ".ligo-fast.lock is a symbolic link")
    assert victim.read_text() == "secret: hunter2\n"
    (out / ".ligo-fast.lock").unlink()
    (out / ".ligo-fast.lock").mkdir()
    rc = cli.main(grow_argv(fx, out, steps=2))
    one_line_error(capsys, 2, rc, "is not a regular file")
    (out / ".ligo-fast.lock").rmdir()
    (out / ".ligo-fast.lock").write_text("secret: hunter2")  # not a holder line this program wrote
    if os.geteuid() == 0:  # only root can give a file away
        os.chown(out / ".ligo-fast.lock", 12345, -1)
        rc = cli.main(grow_argv(fx, out, steps=2))
        one_line_error(capsys, 2, rc, "belongs to uid 12345")
        os.chown(out / ".ligo-fast.lock", 0, -1)
    assert cli.main(grow_argv(fx, out, steps=2)) == 0
    text = capsys.readouterr()
    assert "hunter2" not in text.out + text.err


# ---------------------------------------------------------------------------------------------- N3
def test_n3_a_linked_checkpoint_directory_is_followed(fx, ref, tmp_path, capsys):  # noqa: F811
    """N3: a symbolic link --out/checkpoint (scratch storage) was written through but never read: every resume
    restarted at 0. Now it is followed for writing, reading and removing; a link to no directory is refused."""
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir()
    (out / "checkpoint").symlink_to(scratch)
    assert cli.main(grow_argv(fx, out, "--max-steps-this-run", "2")) == 0
    assert sorted(p.name for p in scratch.iterdir()) == ["latest", "step-00000002"]
    capsys.readouterr()
    assert cli.main(grow_argv(fx, out)) == 0
    assert "resuming from step 2 of 4" in capsys.readouterr().out
    same(operator(out), operator(ref))
    assert (out / "checkpoint").is_symlink() and not list(scratch.iterdir())  # emptied; the link is the user's
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    (dangling / "checkpoint").symlink_to(tmp_path / "nowhere")
    rc = cli.main(grow_argv(fx, dangling))
    one_line_error(capsys, 2, rc, "checkpoint is a symbolic link to", "which is no directory")


# ---------------------------------------------------------------------------------------------- N4
def test_n4_changed_inputs_are_refused_by_name(fx, tmp_path, capsys):  # noqa: F811
    """N4: data changed at the same size, or small weights changed at the same path, resumed ("resuming from step
    2", exit 0), and a finished run re-invoked with another small model said "nothing to do". Now the run record
    holds their content digests: a change is refused naming the file (exit 2, --restart named)."""
    data = tmp_path / "corpus"
    shutil.copytree(fx / "corpus", data)
    small = tmp_path / "small"
    shutil.copytree(fx / "small", small)
    out = tmp_path / "out"
    assert cli.main(grow_argv(fx, out, "--max-steps-this-run", "2", data=data, small=small)) == 0
    text = (data / "a.txt").read_text()
    (data / "a.txt").write_text(text.replace("Growing", "Shrink!"))  # same size
    capsys.readouterr()
    rc = cli.main(grow_argv(fx, out, data=data, small=small))
    one_line_error(capsys, 2, rc, "data_sha256", "a.txt: the content changed", "--restart")
    (data / "a.txt").write_text(text)
    assert cli.main(grow_argv(fx, out, "--keep-checkpoints", data=data, small=small)) == 0  # finished, kept
    sd = load_file(str(small / "model.safetensors"))
    k = sorted(sd)[0]
    sd[k] = sd[k] + 0.01 * torch.randn(sd[k].shape, generator=torch.Generator().manual_seed(3))
    save_file(sd, str(small / "model.safetensors"), metadata={"format": "pt"})  # same path, same size
    capsys.readouterr()
    rc = cli.main(grow_argv(fx, out, data=data, small=small))  # a finished run, its checkpoint kept
    one_line_error(capsys, 2, rc, "small_sha256.model.safetensors: the content changed", "--restart")
    shutil.rmtree(out / "checkpoint")
    rc = cli.main(grow_argv(fx, out, data=data, small=small))  # only the outputs' manifest remains
    one_line_error(capsys, 2, rc, "holds the outputs of another run", "small_sha256.model.safetensors")
    assert cli.main(grow_argv(fx, out, "--restart", data=data, small=small)) == 0
    m = outputs.check_outputs(out)
    assert m["run"]["small_sha256"]["model.safetensors"] == outputs.file_sha256(small / "model.safetensors")


# ---------------------------------------------------------------------------------------------- N5
def test_n5_out_and_data_must_not_contain_each_other(fx, tmp_path, capsys):  # noqa: F811
    """N5: --out inside --data made the run's own files part of its data (every rerun refused as another run)."""
    data = tmp_path / "corpus"
    shutil.copytree(fx / "corpus", data)
    rc = cli.main(grow_argv(fx, data / "out", data=data, steps=2))
    one_line_error(capsys, 2, rc, "--out", "is inside --data", "training data")
    assert not (data / "out").exists()
    rc = cli.main(grow_argv(fx, tmp_path, data=data, steps=2))
    one_line_error(capsys, 2, rc, "--data", "is inside --out")


# ---------------------------------------------------------------------------------------------- N6
def test_n6_an_interrupted_materialize_is_never_accepted_and_a_rerun_repairs(fx, ref, tmp_path, capsys, monkeypatch):  # noqa: F811
    """N6: a signal while materialize replaced an earlier output left A's operator with B's ligo_config.json and no
    manifest; materialize --operator accepted that mix and the same command rerun was refused. Now a stop signal
    waits until the moves are done (the outputs are B's, complete); a crash in the moves leaves the mark of an
    interrupted write and never files of both: --operator refuses it, and the same command run again repairs it."""
    other = tmp_path / "other"
    assert cli.main(grow_argv(fx, other, steps=2)) == 0
    m = tmp_path / "m"

    def mat(op, out=m):
        return ["materialize", "--small", str(fx / "small"), "--operator", str(op), "--out", str(out)]

    assert cli.main([*mat(ref), "--device", "cpu"]) == 0  # A
    real_replace, moves = os.replace, []

    def signalling_replace(a, b):
        if Path(b).parent == m:  # a move of a finished file into place
            moves.append(a)
            if len(moves) == 1:
                os.kill(os.getpid(), signal.SIGTERM)
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", signalling_replace)
    rc = cli.main([*mat(other), "--device", "cpu"])  # B, terminated while moving
    monkeypatch.setattr(os, "replace", real_replace)
    assert rc == 143 and len(moves) > 3
    assert outputs.check_outputs(m)["operator"] == str(other.resolve())  # all of B, verified
    same(operator(m), operator(other))
    moves.clear()

    def crashing_replace(a, b):
        if Path(b).parent == m:
            moves.append(a)
            if len(moves) == 3:
                raise OSError("injected crash")  # what SIGKILL would leave: two files of B replaced by A's
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", crashing_replace)
    assert cli.main([*mat(ref), "--device", "cpu"]) == 1
    monkeypatch.setattr(os, "replace", real_replace)
    left = {p.name for p in m.iterdir()} - {".ligo-fast.lock", ".staging.tmp"}
    assert left == {os.path.basename(a) for a in moves[:2]}  # A's first two files, nothing of B: no mix
    capsys.readouterr()
    rc = cli.main([*mat(m, tmp_path / "m2"), "--device", "cpu"])
    one_line_error(capsys, 2, rc, "incomplete outputs")
    assert cli.main([*mat(ref), "--device", "cpu"]) == 0  # the same command again: repaired
    assert outputs.check_outputs(m)["operator"] == str(ref.resolve())
    same(operator(m), operator(ref))
    _no_tmp(m)


# ---------------------------------------------------------------------------------------------- N7
@pytest.mark.parametrize("name", ["SIGHUP", "SIGQUIT", "SIGUSR1"])
def test_n7_hangup_quit_usr1_save_like_sigterm(fx, ref, tmp_path, capsys, monkeypatch, name):  # noqa: F811
    """N7: SIGHUP (a closed terminal, a dropped SSH connection), SIGQUIT and SIGUSR1 killed the run at once (steps
    lost, a .tmp left). Now they finish the step, save it and exit 128 + the signal's number."""
    signum = getattr(signal, name)
    out = tmp_path / "out"
    patched = signalled_at_step(3, signum)

    def unhandled(*a):  # what the default action (killing this test process) would mean
        raise AssertionError(f"{name} reached the default handler")

    before = signal.signal(signum, unhandled)
    try:
        with monkeypatch.context() as mp:
            mp.setattr(training, "forward_backward", patched)
            rc = cli.main(grow_argv(fx, out))
        assert signal.getsignal(signum) is unhandled  # restored
    finally:
        signal.signal(signum, before)
    assert rc == 128 + signum and "interrupted after step 3 of 4" in capsys.readouterr().err
    assert steps_of(out)[-1] == "step-00000003"
    _no_tmp(out)
    assert cli.main(grow_argv(fx, out)) == 0
    assert "resuming from step 3 of 4" in capsys.readouterr().out
    same(operator(out), operator(ref))


# ---------------------------------------------------------------------------------------------- N18
def test_n18_a_full_disk_while_continuing_keeps_the_previous_outputs(fx, ref, tmp_path, capsys, monkeypatch):  # noqa: F811
    """N18: a full disk while a finished run was continued deleted the previous outputs' manifest. Now the new
    files are staged first: the 4-step outputs stay complete and verified until the 6-step ones replace them."""
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    real_save = ligo_fast.serialization.write_safetensors

    def full(path, *a, **k):
        if ".staging.tmp" in str(path):
            raise OSError(28, "No space left on device", str(path))
        return real_save(path, *a, **k)

    monkeypatch.setattr(ligo_fast.serialization, "write_safetensors", full)
    more = ("--keep-checkpoints", "--warmup", "4")  # the 4-step run's warm-up (the default's is the budget's)
    rc = cli.main(grow_argv(fx, out, *more, steps=6))
    monkeypatch.undo()
    one_line_error(capsys, 1, rc, "no space left on device")
    m = outputs.check_outputs(out)
    assert m is not None and m["step"] == 4
    same(operator(out), operator(ref))
    assert cli.main(grow_argv(fx, out, *more, steps=6)) == 0
    assert "already holds 6 finished steps" in capsys.readouterr().out
    assert outputs.check_outputs(out)["step"] == 6


# ---------------------------------------------------------------------------------------------- determinism
BUSY = 265_000  # bytes: for this batch the eager step (in its factored forms) does not fit in 90% of it, the
# memory-lean step does, so a run reading this as its free memory switches to memory-lean mode (the estimate of
# issue 20: eager 249 kB, lean 228 kB)


def test_a_resumed_run_decides_with_its_recorded_memory_budget(fx, ref6, tmp_path, monkeypatch):  # noqa: F811
    """Determinism: a run's memory budget is decided once, recorded in the run record of every checkpoint and of the
    manifest, and a resumed run reuses it instead of reading the free memory again (here the machine got busy
    between the parts: that reading alone would switch the resumed steps to memory-lean mode); ``--memory-budget``
    overrides it on purpose and is recorded from then on."""
    monkeypatch.delenv("LIGO_FAST_MEMORY_BUDGET")
    free = {"now": 64 * 2**30}
    monkeypatch.setattr(memory, "available_bytes", lambda device: free["now"])
    seen, real = [], training.forward_backward

    def spy(model, batch):
        seen.append((model.memory_budget, model.lean_now(kwargs=batch)))
        return real(model, batch)

    monkeypatch.setattr(training, "forward_backward", spy)
    out = tmp_path / "out"
    assert cli.main(grow_argv(fx, out, "--max-steps-this-run", "2", steps=6)) == 0
    run = torch.load(out / "checkpoint" / "step-00000002" / "trainer.pt", weights_only=True)["run"]
    assert run["memory_budget"] == {"bytes": 64 * 2**30, "source": "free memory on cpu, read once"}
    free["now"] = BUSY
    assert cli.main(grow_argv(fx, out, "--max-steps-this-run", "2", steps=6)) == 0
    assert seen == [(64 * 2**30, False)] * 4  # the resumed steps decided with the recorded budget: eager
    run = torch.load(out / "checkpoint" / "step-00000004" / "trainer.pt", weights_only=True)["run"]
    assert run["memory_budget"] == {"bytes": 64 * 2**30, "source": "recorded in step-00000002"}
    assert cli.main(grow_argv(fx, out, "--memory-budget", "1GiB", steps=6)) == 0  # overridden on purpose
    assert seen[4:] == [(2**30, False)] * 2
    assert outputs.check_outputs(out)["run"]["memory_budget"] == {"bytes": 2**30, "source": "--memory-budget"}
    same(operator(out), operator(ref6))
    # the premise: with BUSY as its budget, this growth's training step is memory-lean
    small = transformers.LlamaForCausalLM.from_pretrained(fx / "small")
    busy = ligo_fast.grow(small, ligo_fast.load_operator(out, small).config, memory_budget=BUSY).train()
    assert busy.lean_now(kwargs={"input_ids": torch.ones(2, 8, dtype=torch.long)})


def test_a_bad_memory_budget_is_one_line(fx, tmp_path, capsys):  # noqa: F811
    rc = cli.main(grow_argv(fx, tmp_path / "out", "--memory-budget", "lots"))
    one_line_error(capsys, 2, rc, "--memory-budget must be a number of bytes", "'lots'")


def test_a_checkpoint_of_a_newer_format_is_refused_not_skipped(fx, ref, tmp_path, capsys):  # noqa: F811
    """trainer.pt carries a format number: one written by a newer version is refused in one line naming the file
    (exit 2, nothing removed) instead of being skipped for an older checkpoint whose re-saved steps would replace
    it; one without the number (written before it) resumes as format 1."""
    out = tmp_path / "out"
    assert cli.main(grow_argv(fx, out, "--max-steps-this-run", "2")) == 0
    path = out / "checkpoint" / "step-00000002" / "trainer.pt"
    state = torch.load(path, weights_only=True)
    assert state["format"] == 1
    torch.save({**state, "format": 2}, path)
    capsys.readouterr()
    rc = cli.main(grow_argv(fx, out))
    one_line_error(capsys, 2, rc, str(path), "newer ligo-fast (checkpoint format 2; this version reads up to 1)")
    assert steps_of(out) == ["step-00000002"] and torch.load(path, weights_only=True)["format"] == 2
    torch.save({k: v for k, v in state.items() if k != "format"}, path)  # as written before the format number
    assert cli.main(grow_argv(fx, out)) == 0
    assert "resuming from step 2 of 4" in capsys.readouterr().out
    same(operator(out), operator(ref))


def test_a_stop_signal_inside_a_log_line_is_not_swallowed(fx, tmp_path, capsys, monkeypatch):  # noqa: F811
    """Soak finding (benchmarks/results/soak_2026-12-06.md): a SIGTERM delivered while ``tqdm.write`` (the console
    log handler) took its lock made tqdm release a lock it did not hold; its RuntimeError replaced the interrupt and
    logging printed it as a 'Logging error' traceback and swallowed it: the run went on and exited 0. Now the stop
    goes on: the step is saved, exit 143, one line. The signal is simulated inside the lock's acquire."""

    class Lock:
        signals, held = 1, False

        def acquire(self, *a, **k):
            if Lock.signals:
                Lock.signals -= 1
                raise Interrupted(signal.SIGTERM)  # what the command's SIGTERM handler raises
            Lock.held = True

        def release(self):
            if not Lock.held:
                raise RuntimeError("cannot release un-acquired lock")
            Lock.held = False

    out = tmp_path / "out"
    out.mkdir()
    (out / outputs.LOCK).write_text("pid 1 on elsewhere")  # left by a killed run: "took over the lock" is logged
    monkeypatch.setattr(progress.tqdm, "_lock", Lock(), raising=False)
    rc = cli.main(grow_argv(fx, out))
    one_line_error(capsys, 128 + signal.SIGTERM, rc, "ligo-fast grow: terminated")
    assert not (out / "checkpoint").exists()
    monkeypatch.undo()
    assert cli.main(grow_argv(fx, out)) == 0


def test_a_stop_signal_inside_a_finalizer_is_not_lost(fx, tmp_path, capsys, monkeypatch):  # noqa: F811
    """Soak finding: a signal's handler runs at any point, also inside a finalizer or a weakref callback, where Python
    only prints its KeyboardInterrupt ('Exception ignored in ...') and drops it: a Ctrl-C or SIGTERM was lost and
    the command went on to exit 0. Now it is sent again and stops the command: exit 143, one line."""

    class Finalised:
        def __del__(self):
            raise Interrupted(signal.SIGTERM)  # the command's SIGTERM handler, run while a finalizer ran

    real = inputs.load_tokenizer

    def load(*a, **k):
        Finalised()  # dropped at once: its finalizer runs here
        return real(*a, **k)

    monkeypatch.setattr(inputs, "load_tokenizer", load)
    rc = cli.main(grow_argv(fx, tmp_path / "out"))  # stops where the signal lands again (any later point is fine)
    err = capsys.readouterr().err
    assert rc == 128 + signal.SIGTERM and "Exception ignored" not in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and ("terminated" in err or "interrupted" in err), err
    assert not (tmp_path / "out" / outputs.MANIFEST).exists()


def test_a_stop_turned_into_a_library_error_is_reported_as_a_stop(fx, ref, tmp_path, capsys, monkeypatch):  # noqa: F811
    """Soak finding: a Ctrl-C while ``materialize`` read the operator file came out of safetensors/torch as their own
    error ("could not determine the shape of object type 'torch.storage.UntypedStorage'"), which the loader reported
    as a damaged file: exit 2, "not a readable safetensors file, truncated or damaged", about a good file. Now a
    command whose stop signal's handler ran ends as stopped (exit 130, one line), whatever error that became."""
    real = ligo_fast.load_operator

    def load(*a, **k):
        try:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while reading: the handler raises here...
        except KeyboardInterrupt:
            pass  # ...and the library loses it,
        real(*a, **k)  # (the real read, for the timing)
        raise ValueError(f"{a[0]}/operator.safetensors: not a readable safetensors file, truncated or damaged")

    monkeypatch.setattr(ligo_fast, "load_operator", load)
    out = tmp_path / "m"
    argv = ["materialize", "--small", str(fx / "small"), "--operator", str(ref), "--out", str(out), "--device", "cpu"]
    rc = cli.main(argv)
    one_line_error(capsys, 128 + signal.SIGINT, rc, "ligo-fast materialize: interrupted")
    monkeypatch.undo()
    assert cli.main(argv) == 0  # the file was fine
