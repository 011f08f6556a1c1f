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
from safetensors.torch import load_file, save_file
from test_cli_guarantees import fx, grow_argv, one_line_error, operator, ref, same, steps_of  # noqa: F401

import ligo_fast
from ligo_fast.apps import cli, outputs, training


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
    original, calls = training.forward_backward, []

    def patched(*args):
        calls.append(None)
        result = original(*args)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)
        return result

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
    rc = cli.main(grow_argv(fx, out, "--keep-checkpoints", steps=6))
    monkeypatch.undo()
    one_line_error(capsys, 1, rc, "no space left on device")
    m = outputs.check_outputs(out)
    assert m is not None and m["step"] == 4
    same(operator(out), operator(ref))
    assert cli.main(grow_argv(fx, out, "--keep-checkpoints", steps=6)) == 0
    assert "already holds 6 finished steps" in capsys.readouterr().out
    assert outputs.check_outputs(out)["step"] == 6
