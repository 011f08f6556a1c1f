"""What ``ligo-fast`` guarantees a careful user (and withstands from a careless or hostile one), one test per finding
of issue 13 (F1-F16) and the command-line parts of issue 14: every case ends in a correct result or a clear one-line
error with its exit code, and nothing finished is lost, mixed with another run's files, or overwritten by bad
values. The kill windows themselves are covered by ``test_cli_faults.py``. Exit codes are literal here (0 done,
1 failed, 2 user error, 3 diverged, 130 SIGINT, 143 SIGTERM)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import transformers as T
from _models import CLI_LARGE, cli_small_config, write_cli_inputs
from safetensors.torch import load_file, save_file

import ligo_fast
from ligo_fast.apps import cli, training

SMALL = cli_small_config()
VOCAB = SMALL.vocab_size
LARGE = CLI_LARGE
ARGS = ["--batch-size", "2", "--seq-len", "8", "--save-every", "2", "--log-every", "2", "--no-progress"]
ARGS += ["--device", "cpu"]


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    d = tmp_path_factory.mktemp("guarantees")
    write_cli_inputs(d, "corpus/a.txt")
    return d


def grow_argv(fx, out, *extra, small=None, large=None, data=None, steps=4) -> list[str]:
    return [
        "grow",
        "--small",
        str(small or fx / "small"),
        "--large-config",
        str(large or fx / "large.json"),
        "--data",
        str(data or fx / "corpus"),
        "--out",
        str(out),
        "--steps",
        str(steps),
        *ARGS,
        *extra,
    ]


@pytest.fixture(scope="module")
def ref(fx, tmp_path_factory):
    """An uninterrupted 4-step run, its checkpoint kept."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert cli.main(grow_argv(fx, out, "--keep-checkpoints")) == 0
    return out


def one_line_error(capsys, code: int, rc: int, *expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ligo-fast ") and "Traceback" not in err, err
    for e in expected:
        assert e in err, err
    return err


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def operator(out) -> dict:
    return load_file(str(out / "operator.safetensors"))


def steps_of(out) -> list[str]:
    return sorted(p.name for p in (out / "checkpoint").iterdir() if p.name.startswith("step-"))


# ---------------------------------------------------------------------------------------------- F1, F2: windows
def test_f1_a_half_deleted_newest_checkpoint_falls_back_to_the_previous_one(fx, ref, tmp_path, capsys):
    """F1: an older version deleted a step directory in place, so a kill could leave it half removed (a traceback
    on resume). Now a damaged checkpoint is skipped with a warning and the newest complete one is used."""
    out = tmp_path / "out"
    assert cli.main(grow_argv(fx, out, "--max-steps-this-run", "2")) == 0  # checkpoint of step 2
    shutil.copytree(ref / "checkpoint" / "step-00000004", out / "checkpoint" / "step-00000004")
    (out / "checkpoint" / "step-00000004" / "operator.safetensors").unlink()  # half removed
    (out / "checkpoint" / "latest").write_text("step-00000004")  # as when killed while re-saving step 4
    capsys.readouterr()
    assert cli.main(grow_argv(fx, out)) == 0
    text = capsys.readouterr()
    assert "skipping a damaged checkpoint" in text.err and "resuming from step 2 of 4" in text.out
    same(operator(out), operator(ref))


def test_f1_saving_a_step_again_never_removes_the_finished_one_first(fx, ref, tmp_path, monkeypatch):
    """F1: re-saving an existing step removed the old directory before the new one was in place. Now the new one is
    complete under its own name before anything is removed (here the swap is made to fail: the old one stays)."""
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    small = T.LlamaForCausalLM.from_pretrained(fx / "small")
    model = ligo_fast.load_operator(ref / "checkpoint" / "step-00000004", small)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    run = torch.load(ref / "checkpoint" / "step-00000004" / "trainer.pt", weights_only=True)["run"]
    real_replace = os.replace

    def failing_replace(a, b):
        if os.path.isdir(a):  # the swap of the finished temporary directory into place
            raise OSError("injected")
        return real_replace(a, b)

    from ligo_fast.apps import checkpoints

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        checkpoints.save_checkpoint(out, model, opt, 4, run)
    monkeypatch.setattr(os, "replace", real_replace)
    assert steps_of(out) == ["step-00000002", "step-00000004"]  # the finished ones, untouched; no temporary left
    same(load_file(str(out / "checkpoint/step-00000004/operator.safetensors")), operator(ref))
    again = checkpoints.save_checkpoint(out, model, opt, 4, run)  # a real re-save: a new name, then the swap
    assert again.name == "step-00000004-1" and steps_of(out) == ["step-00000002", "step-00000004-1"]


def test_f2_mixed_outputs_are_refused(fx, ref, tmp_path, capsys):
    """F2: outputs of two steps in one directory were both loadable. The manifest written last names the step and
    the digest of every file: materialize refuses a directory whose files do not match it, or that lacks it while
    showing an interrupted write."""
    other = tmp_path / "other"
    assert cli.main(grow_argv(fx, other, steps=2)) == 0
    mixed = tmp_path / "mixed"
    shutil.copytree(ref, mixed)
    shutil.copy(other / "model.safetensors", mixed / "model.safetensors")  # step 2's model next to step 4's operator
    capsys.readouterr()
    mat = ["materialize", "--small", str(fx / "small"), "--out", str(tmp_path / "m"), "--device", "cpu"]
    rc = cli.main([*mat, "--operator", str(mixed)])
    one_line_error(capsys, 2, rc, "model.safetensors does not match the manifest", "of step 4")
    (mixed / "ligo_fast_outputs.json").unlink()  # as if killed before the manifest was written
    rc = cli.main([*mat, "--operator", str(mixed)])
    one_line_error(capsys, 2, rc, "incomplete outputs")
    assert cli.main(grow_argv(fx, mixed, "--keep-checkpoints")) == 0  # the rerun writes them again
    assert "writing the outputs again" in capsys.readouterr().out
    assert cli.main([*mat, "--operator", str(mixed)]) == 0
    same(load_file(str(tmp_path / "m" / "model.safetensors")), load_file(str(ref / "model.safetensors")))


# ---------------------------------------------------------------------------------------------- F3: disk full
def test_f3_disk_full_is_one_line_and_keeps_the_previous_checkpoint(fx, tmp_path, capsys, monkeypatch):
    """F3: torch.save's disk-full error was an ``unexpected pos`` traceback and left a partial ``.tmp``. Here the
    device fills up at the second checkpoint (torch.save fails as it does then, and the free space reads 0): one
    line naming the path and the free space, exit 1, the first checkpoint intact, no temporary left."""
    out = tmp_path / "out"
    real_save, calls = torch.save, []

    def full_disk(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, f, *a, **k)

    real_usage = shutil.disk_usage
    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(
        shutil, "disk_usage", lambda p: real_usage(p)._replace(free=4096) if calls[1:] else real_usage(p)
    )
    rc = cli.main(grow_argv(fx, out))
    err = one_line_error(capsys, 1, rc, "no space left on device writing", "trainer.pt", "4.0 KiB free")
    assert "unexpected pos" not in err
    assert steps_of(out) == ["step-00000002"]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    monkeypatch.undo()
    assert cli.main(grow_argv(fx, out)) == 0
    assert "resuming from step 2 of 4" in capsys.readouterr().out


def _tmpfs_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    p = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, timeout=30
    )
    return p.returncode == 0


@pytest.mark.skipif(not _tmpfs_available(), reason="needs unprivileged user and mount namespaces (unshare -rm)")
def test_f3_a_really_full_disk(fx, tmp_path):
    """F3 on a real full file system: a 160 KiB tmpfs (in a private mount namespace) fills up while grow writes its
    checkpoints or outputs: one line naming the path and the free space, exit 1, nothing partial left."""
    script = (
        f"mount -t tmpfs -o size=160k tmpfs {tmp_path} && cd {os.getcwd()} && "
        f"{sys.executable} -m ligo_fast.apps.cli grow --small {fx / 'small'} --large-config {fx / 'large.json'} "
        f"--data {fx / 'corpus'} --out {tmp_path / 'out'} --steps 4 {' '.join(ARGS)}; rc=$?; "
        f"echo rc=$rc; ls -aR {tmp_path / 'out'}"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "rc=1" in p.stdout, (p.stdout, p.stderr)
    errors = [x for x in p.stderr.splitlines() if "error" in x]
    assert len(errors) == 1 and "no space left on device writing" in errors[0] and "free" in errors[0], p.stderr
    assert "Traceback" not in p.stderr and ".tmp" not in p.stdout.replace(".staging.tmp", ""), p.stdout


# ---------------------------------------------------------------------------------------------- F4: SIGTERM
def signalled_at_step(step: int, signum: int):
    """``training.forward_backward`` that sends ``signum`` to this process after its ``step``-th call."""
    original, calls = training.forward_backward, []

    def patched(*args):
        calls.append(None)
        result = original(*args)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return result

    return patched


def test_f4_sigterm_saves_like_ctrl_c(fx, ref, tmp_path, capsys, monkeypatch):
    """F4: SIGTERM (kill, job schedulers) saved nothing. Now it finishes the step, saves it and exits 143."""
    out = tmp_path / "out"
    patched = signalled_at_step(3, signal.SIGTERM)
    with monkeypatch.context() as m:
        m.setattr(training, "forward_backward", patched)
        rc = cli.main(grow_argv(fx, out))
    assert rc == 143 and "interrupted after step 3 of 4" in capsys.readouterr().err
    assert steps_of(out) == ["step-00000002", "step-00000003"]  # the newest two (--keep-checkpoints' default)
    assert cli.main(grow_argv(fx, out)) == 0
    assert "resuming from step 3 of 4" in capsys.readouterr().out
    same(operator(out), operator(ref))


def test_f4_sigterm_outside_the_loop_exits_143(fx, tmp_path, capsys, monkeypatch):
    from ligo_fast.apps import inputs

    def terminated(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(inputs, "load_tokenizer", terminated)
    rc = cli.main(grow_argv(fx, tmp_path / "out"))
    assert rc == 143 and capsys.readouterr().err.strip() == "ligo-fast grow: terminated"
    assert signal.getsignal(signal.SIGTERM) == before  # restored


# ---------------------------------------------------------------------------------------------- F5: paths
def test_f5_resume_with_the_small_path_spelled_otherwise(fx, ref, tmp_path, capsys, monkeypatch):
    """F5: the run record kept --small as typed (through the large config's ``_name_or_path``), so a resume from
    another folder was refused. Now paths are resolved, and old records with the typed path still resume."""
    out = tmp_path / "out"
    monkeypatch.chdir(fx)
    assert cli.main(grow_argv(fx, out, "--max-steps-this-run", "2", small="small")) == 0  # relative
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(grow_argv(fx, out, small=os.path.relpath(fx / "small"))) == 0  # from another folder
    assert "resuming from step 2 of 4" in capsys.readouterr().out
    same(operator(out), operator(ref))
    # an old checkpoint: its record's large config holds the typed path, and it has no warm-up field
    old = tmp_path / "old"
    (old / "checkpoint").mkdir(parents=True)
    shutil.copytree(ref / "checkpoint" / "step-00000004", old / "checkpoint" / "step-00000004")
    path = old / "checkpoint" / "step-00000004" / "trainer.pt"
    state = torch.load(path, weights_only=True)
    state["run"]["large_config"]["_name_or_path"] = "small"
    del state["run"]["warmup"]  # older runs had a constant learning rate: the same as --warmup 0
    torch.save(state, path)
    assert cli.main([*grow_argv(fx, old), "--warmup", "0"]) == 0
    assert "already holds 4 finished steps" in capsys.readouterr().out
    same(operator(old), operator(ref))


# ---------------------------------------------------------------------------------------------- F6, F7: inputs
def _small_variant(fx, tmp_path, name, *, config=None, weights=None):
    d = tmp_path / name
    shutil.copytree(fx / "small", d)
    if config is not None:
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights is not None:
        weights(d / "model.safetensors")
    return d


def _flip(path, at: int) -> None:
    b = bytearray(path.read_bytes())
    b[at] ^= 0x40
    path.write_bytes(bytes(b))


def _nan_weight(path) -> None:
    sd = load_file(str(path))
    k = sorted(sd)[0]
    sd[k] = sd[k].clone()
    sd[k].view(-1)[0] = float("nan")
    save_file(sd, str(path), metadata={"format": "pt"})


def _small_cases(base):
    return {
        "truncated weights": (dict(weights=lambda p: p.write_bytes(p.read_bytes()[:3000])), "cannot load"),
        "empty weights": (dict(weights=lambda p: p.write_bytes(b"")), "cannot load"),
        "bit-flipped header": (dict(weights=lambda p: _flip(p, 20)), "cannot load"),
        "NaN weight": (dict(weights=_nan_weight), "contains NaN"),
        "config a list": (dict(config=[1, 2]), "expected a JSON object"),
        "string size": (dict(config={**base, "hidden_size": "16"}), "expected int, got str"),
        "sizes not the weights'": (dict(config={**base, "hidden_size": 32, "head_dim": 8}), "do not match config"),
        "hidden size 0": (dict(config={**base, "hidden_size": 0}), "hidden_size must be a positive integer"),
        "heads do not divide": (dict(config={**base, "hidden_size": 15}), "not a multiple"),
        "architectures a string": (dict(config={**base, "architectures": "LlamaForCausalLM"}), "list of class names"),
        "tie a string": (dict(config={**base, "tie_word_embeddings": "false"}), "expected bool, got str"),
    }


SMALL_CASES = list(_small_cases({}))


@pytest.mark.parametrize("case", SMALL_CASES)
def test_f6_f7_a_bad_small_model_is_one_line(fx, tmp_path, capsys, case):
    base = json.loads((fx / "small" / "config.json").read_text())
    kwargs, expected = _small_cases(base)[case]
    small = _small_variant(fx, tmp_path, "small", **kwargs)
    rc = cli.main(grow_argv(fx, tmp_path / "out", small=small))
    one_line_error(capsys, 2, rc, expected)
    assert not (tmp_path / "out" / "model.safetensors").exists()


LARGE_CASES = {
    "string size": ({"hidden_size": "24"}, "expected int, got str"),
    "size 0": ({"hidden_size": 0}, "hidden_size must be a positive integer"),
    "negative layers": ({"num_hidden_layers": -1}, "num_hidden_layers must be a positive integer"),
    "heads do not divide": ({"hidden_size": 25}, "not a multiple"),
    "a list": ([1, 2], "expected a JSON object"),
    "bool as string": ({"tie_word_embeddings": "false", **LARGE}, "expected bool, got str"),
    "F16 misspelt key": ({"hiden_size": 24}, "'hiden_size' is not a LlamaConfig field; did you mean 'hidden_size'?"),
}


@pytest.mark.parametrize("case", list(LARGE_CASES))
def test_f6_f16_a_bad_large_config_is_one_line(fx, tmp_path, capsys, case):
    given, expected = LARGE_CASES[case]
    p = tmp_path / "large.json"
    p.write_text(json.dumps(given))
    rc = cli.main(grow_argv(fx, tmp_path / "out", large=p))
    one_line_error(capsys, 2, rc, "--large-config", expected)


def _operator_variant(ref, tmp_path, *, weights=None, meta=None):
    d = tmp_path / "op"
    d.mkdir()
    shutil.copy(ref / "operator.safetensors", d)
    shutil.copy(ref / "ligo_config.json", d)
    if weights is not None:
        weights(d / "operator.safetensors")
    if meta is not None:
        m = json.loads((d / "ligo_config.json").read_text())
        meta(m)
        (d / "ligo_config.json").write_text(json.dumps(m))
    return d


def _nan_operator(path) -> None:
    """A NaN written as ligo_fast writes (its digest matches): refused for the NaN itself (a file whose digest was
    removed is refused before its values are looked at)."""
    sd = ligo_fast.serialization.read_tensors(path)
    k = sorted(sd)[-1]
    sd[k] = sd[k].clone()
    sd[k].view(-1)[0] = float("nan")
    meta = json.loads((path.parent / ligo_fast.serialization.META).read_text())
    meta.pop("format")
    ligo_fast.serialization.write_operator(path.parent, sd, meta)


OPERATOR_CASES = {
    "truncated": (dict(weights=lambda p: p.write_bytes(p.read_bytes()[:3000])), "truncated or damaged"),
    "empty": (dict(weights=lambda p: p.write_bytes(b"")), "truncated or damaged"),
    "bit flip in the data": (dict(weights=lambda p: _flip(p, p.stat().st_size - 5)), "do not match the digest"),
    "NaN (F7)": (dict(weights=_nan_operator), "contains NaN"),
    "seed a string": (dict(meta=lambda m: m["ligo_config"].update(seed="abc")), "seed must be an integer"),
    "scheme a list": (dict(meta=lambda m: m["ligo_config"].update(depth_init=["x"])), "scheme name"),
    "unknown key": (dict(meta=lambda m: m["ligo_config"].update(tye=True)), "did you mean 'tie'"),
    "tie a string (F7)": (dict(meta=lambda m: m["ligo_config"].update(tie="false")), "tie must be true or false"),
    "format 99 (F7)": (dict(meta=lambda m: m.update(format=99)), "format 99 is not one this ligo_fast reads"),
    "another small class (F7)": (dict(meta=lambda m: m.update(small_class="BertForMaskedLM")), "grows a Bert"),
    "string size": (dict(meta=lambda m: m["large_config"].update(hidden_size="24")), "expected int, got str"),
    "not an object": (dict(meta=lambda m: m.clear()), "format None"),
}


@pytest.mark.parametrize("case", list(OPERATOR_CASES))
def test_f6_f7_a_bad_operator_is_one_line(fx, ref, tmp_path, capsys, case):
    kwargs, expected = OPERATOR_CASES[case]
    op = _operator_variant(ref, tmp_path, **kwargs)
    argv = ["materialize", "--small", str(fx / "small"), "--operator", str(op), "--out", str(tmp_path / "m")]
    rc = cli.main([*argv, "--device", "cpu"])
    one_line_error(capsys, 2, rc, expected)
    assert not (tmp_path / "m" / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------- F8: divergence
def test_f8_divergence_stops_and_keeps_the_last_finite_checkpoint(fx, tmp_path, capsys):
    """F8: with --lr 1e6 the loss was NaN from step 2 on, the run ended with exit 0 and every periodic checkpoint
    held NaN. Now the first non-finite loss or gradient stops the run (exit 3, one line naming the step), and no
    checkpoint ever holds a non-finite value."""
    out = tmp_path / "out"
    rc = cli.main(grow_argv(fx, out, "--lr", "1e6", "--save-every", "1", "--warmup", "0", steps=8))
    err = one_line_error(capsys, 3, rc, "diverged", "of step ")
    assert not (out / "model.safetensors").exists() and not (out / "ligo_fast_outputs.json").exists()
    for d in (out / "checkpoint").glob("step-*"):
        for k, v in load_file(str(d / "operator.safetensors")).items():
            assert torch.isfinite(v).all(), (d, k)
    kept = steps_of(out)
    assert len(kept) == 1 and kept[0] in err


# ---------------------------------------------------------------------------------------------- F12, F13, F14
def test_f12_one_run_at_a_time_per_output_directory(fx, tmp_path, capsys):
    from ligo_fast.apps import outputs

    out = tmp_path / "out"
    with outputs.locked(out):  # another run holds it
        rc = cli.main(grow_argv(fx, out))
        one_line_error(capsys, 2, rc, "is in use by another ligo-fast run", f"pid {os.getpid()}")
    (out / ".ligo-fast.lock").write_text("pid 999999 on elsewhere")  # left by a killed run: taken over
    assert cli.main(grow_argv(fx, out, steps=2)) == 0
    assert "took over the lock left by pid 999999" in capsys.readouterr().err


def test_f13_latest_is_never_followed(fx, ref, tmp_path, capsys):
    """F13: ``checkpoint/latest`` was followed to any path. Now checkpoints are found by listing the directory;
    ``latest`` pointing outside (here at another run's finished checkpoint) changes nothing."""
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "latest").write_text(
        os.path.relpath(ref / "checkpoint" / "step-00000004", out / "checkpoint")
    )
    assert cli.main(grow_argv(fx, out)) == 0
    text = capsys.readouterr().out
    assert "resuming" not in text and "step 2/4" in text


def test_f14_binary_data_is_refused(fx, tmp_path, capsys):
    binary = tmp_path / "ls"
    shutil.copy("/bin/ls" if os.path.exists("/bin/ls") else sys.executable, binary)
    rnd = tmp_path / "random.txt"
    rnd.write_bytes(os.urandom(3000))
    for p in (binary, rnd):
        rc = cli.main(grow_argv(fx, tmp_path / "out", data=p))
        one_line_error(capsys, 2, rc, f"--data {p}: not a text file")
    mixed = tmp_path / "mixed"
    shutil.copytree(fx / "corpus", mixed)
    shutil.copy(binary, mixed / "ls")
    assert cli.main(grow_argv(fx, tmp_path / "out", data=mixed, steps=2)) == 0
    out, err = capsys.readouterr()
    assert "skipped 1 binary file(s)" in err and "from 1 file(s)" in out


# ---------------------------------------------------------------------------------------------- issue 14
def test_14_4_a_mismatch_names_the_fields(fx, ref, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    deeper = tmp_path / "deeper.json"
    deeper.write_text(json.dumps({**LARGE, "num_hidden_layers": 4}))
    rc = cli.main(grow_argv(fx, out, "--lr", "0.002", large=deeper))
    # ref ran with the default operator lr: the rule's continued-training lr, --large-lr 3e-4 / sqrt(16) (wide)
    one_line_error(capsys, 2, rc, "large_config.num_hidden_layers: 3 there, 4 now", "lr: 7.5e-05 there, 0.002 now")


def test_14_6_help_and_argument_errors_do_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from ligo_fast.apps import cli\n"
        "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules, code)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for argv in (["--help"], ["--version"], ["grow", "--steps", "x"]):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=60)
        took = time.perf_counter() - t
        assert p.stdout.strip().splitlines()[-1] == f"False False {0 if argv[0].startswith('--') else 2}", p
        assert took < 3.0, f"{argv} took {took:.1f} s"


def test_14_6_outputs_store_each_tensor_once_and_the_checkpoint_goes(fx, ref, tmp_path, capsys):
    """The tied embedding (two copies in the official layout) is stored once; a finished run removes its resumable
    checkpoint unless --keep-checkpoints."""
    sd = operator(ref)  # what is stored (safetensors' own loader knows nothing of the aliases)
    full = ligo_fast.serialization.read_tensors(ref / "operator.safetensors")  # aliases restored
    assert len(sd) < len(full)
    stored = sum(v.numel() * v.element_size() for v in sd.values())
    assert (ref / "operator.safetensors").stat().st_size < stored + 20_000
    out = tmp_path / "out"
    assert cli.main(grow_argv(fx, out, steps=2)) == 0
    assert not (out / "checkpoint").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".ligo-fast.lock", "config.json", "generation_config.json", "ligo_config.json", "ligo_fast_outputs.json"]
        + ["model.safetensors", "operator.safetensors"]
    )


def test_14_3_warmup_is_linear_then_constant_and_recorded(fx, ref):
    lr = training.warmup_lr(1.0, 4)
    assert [lr(k) for k in range(1, 7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert training.warmup_lr(0.5, 0)(1) == 0.5
    state = torch.load(ref / "checkpoint" / "step-00000004" / "trainer.pt", weights_only=True)
    assert state["run"]["warmup"] == 4  # from the default (function-preserving) start: at least 10, at most all 4
    args = cli.build_parser().parse_args(grow_argv(fx, "x", steps=100))
    from ligo_fast.apps import commands

    assert commands.schedule(args) == commands.Schedule(100, 3e-4, 10)  # ligo_fast.budget: a tenth as warm-up
    # from a function-preserving start (the default inits) the continued-training lr: --large-lr / sqrt(width)
    assert commands.schedule(args, 16) == commands.Schedule(100, 3e-4 / 4, 10)
    short = cli.build_parser().parse_args(grow_argv(fx, "x", steps=4))
    assert commands.schedule(short) == commands.Schedule(4, 3e-4, 0)  # an official init: a tenth, 1 step: none
    assert commands.schedule(short, 16) == commands.Schedule(4, 3e-4 / 4, 4)  # preserved: the whole budget
    args.lr = 0.01  # --lr overrides the rule's lr only
    assert commands.schedule(args, 16) == commands.Schedule(100, 0.01, 10)
    no_steps = grow_argv(fx, "x")
    i = no_steps.index("--steps")
    del no_steps[i : i + 2]
    args = cli.build_parser().parse_args(no_steps + ["--large-steps", "400"])
    assert commands.schedule(args) == commands.Schedule(20, 3e-4, 2)  # the rule: 5% of the large budget
    args = cli.build_parser().parse_args(no_steps + ["--large-steps", "100000"])
    assert commands.schedule(args).steps == 100  # the rule's cap
    assert commands.schedule(cli.build_parser().parse_args(no_steps)).steps == 100  # no large budget given: 100
