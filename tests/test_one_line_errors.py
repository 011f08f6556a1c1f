"""Issue 22's tracebacks: every bad input, out-of-memory and stopped pipe ends in one line and an exit code (CLI), or
a ValueError naming the field (API). Oracles: the exit codes of ligo_fast.apps.errors, the field names."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from _models import CLI_LARGE, build, configs, write_cli_inputs

import ligo_fast
from ligo_fast.apps import cli, commands, errors

LARGE = CLI_LARGE


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("oneline")
    write_cli_inputs(d, "text.txt")
    return d


def _argv(files, out, large="large.json", *extra) -> list[str]:
    return [
        "grow", "--small", str(files / "small"), "--large-config", str(files / large), "--data",
        str(files / "text.txt"), "--out", str(out), "--steps", "2", "--batch-size", "2", "--seq-len", "8",
        "--no-progress", "--device", "cpu", *extra,
    ]  # fmt: skip


def _one_line(capsys, code: int, rc: int, *expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert len(err.splitlines()) == 1 and err.startswith("ligo-fast grow: "), err
    for e in expected:
        assert e in err, err
    return err


BAD_CONFIGS = {
    "deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "act": (json.dumps({**LARGE, "hidden_act": "nonexistent"}), "hidden_act 'nonexistent' is not an activation"),
    "huge": (json.dumps({**LARGE, "hidden_size": 10**30}), "hidden_size must be a positive integer of at most"),
    "nan": ('{"hidden_size": 24, "rms_norm_eps": NaN}', "rms_norm_eps must be a finite number, got nan"),
    "rope": (
        json.dumps({**LARGE, "rope_parameters": {"rope_type": "default", "rope_thta": 1e4}}),
        "rope_parameters: unknown key 'rope_thta' (did you mean 'rope_theta'?)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_large_configs_are_one_line_user_errors(files, tmp_path, capsys, case):
    """RecursionError, KeyError, OverflowError tracebacks before; NaN trained into 'diverged' (exit 3); a nested
    typo was accepted and changed nothing."""
    text, expected = BAD_CONFIGS[case]
    (tmp_path / "cfg.json").write_text(text)
    argv = _argv(files, tmp_path / "out")
    argv[argv.index("--large-config") + 1] = str(tmp_path / "cfg.json")
    _one_line(capsys, errors.EXIT_USAGE, cli.main(argv), expected)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("hidden_act", "nonexistent", "hidden_act 'nonexistent' is not an activation transformers has"),
        ("hidden_act", "gleu", "did you mean 'gelu'?"),
        ("num_hidden_layers", 10**30, "num_hidden_layers must be a positive integer of at most"),
        ("layer_norm_eps", float("nan"), "layer_norm_eps must be a finite number"),
        ("layer_norm_eps", float("inf"), "layer_norm_eps must be a finite number"),
    ],
)
def test_bad_large_configs_are_value_errors_of_the_api(field, value, expected):
    small_cfg, large_cfg = configs("BertForMaskedLM")
    setattr(large_cfg, field, value)
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace("?", r"\?")):
        ligo_fast.grow(build("BertForMaskedLM", small_cfg), large_cfg)


def test_rope_typos_are_refused_per_attention_type_too():
    from ligo_fast.config import check_model_config

    small_cfg, large_cfg = configs("LlamaForCausalLM")
    large_cfg.rope_parameters = {"full_attention": {"rope_type": "default", "rope_theta": 1e4, "factr": 2.0}}
    with pytest.raises(ValueError, match=r"rope_parameters.full_attention: unknown key 'factr' \(did you mean"):
        check_model_config(large_cfg)
    large_cfg.rope_parameters = {"rope_type": "default", "rope_theta": 1e4}
    check_model_config(large_cfg)  # the valid form passes


def test_out_of_memory_is_one_line(files, tmp_path, capsys, monkeypatch):
    """N11: torch's CPU allocator failing was a traceback; the early refusal of a growth that cannot fit the budget
    was a 20-line MemoryError."""
    monkeypatch.setenv("LIGO_FAST_MEMORY_BUDGET", "64KiB")
    rc = cli.main(_argv(files, tmp_path / "a"))
    _one_line(capsys, errors.EXIT_FAILED, rc, "error: out of memory: growing LlamaForCausalLM to 3 layers does not fit")
    monkeypatch.undo()

    def alloc_fails(*a, **k):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to "
            "allocate 1099511627776 bytes.\nframe #0: c10::something + 0x5\nframe #1: more"
        )

    monkeypatch.setattr(ligo_fast, "grow", alloc_fails)
    rc = cli.main(_argv(files, tmp_path / "b"))
    err = _one_line(capsys, errors.EXIT_FAILED, rc, "out of memory", "you tried to allocate 1099511627776 bytes")
    assert "frame #" not in err

    def cuda_oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ligo_fast, "grow", cuda_oom)
    _one_line(capsys, errors.EXIT_FAILED, cli.main(_argv(files, tmp_path / "c")), "out of memory: CUDA out of memory")


def test_an_unexpected_error_is_one_line_unless_verbose(files, tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        raise KeyError("surprise")

    monkeypatch.setattr(ligo_fast, "grow", broken)
    rc = cli.main(_argv(files, tmp_path / "a"))
    _one_line(capsys, errors.EXIT_FAILED, rc, "KeyError: 'surprise' (--verbose shows where)")
    with pytest.raises(KeyError, match="surprise"):
        cli.main(["-v", *_argv(files, tmp_path / "b")])


def test_more_ctrl_c_while_exiting_is_ignored(files, tmp_path, capsys, monkeypatch):
    """Six Ctrl-C in a row: the second arrived while the first was being reported and escaped as a traceback."""

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "cmd_grow", interrupted)
    real_print = print

    def print_and_press_again(*a, **k):  # Ctrl-C again while the first one is reported
        os.kill(os.getpid(), signal.SIGINT)
        real_print(*a, **k)

    monkeypatch.setattr("builtins.print", print_and_press_again)
    # Python's own handler, as a terminal leaves it (a job started in the background inherits SIGINT ignored)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rc = cli.main(_argv(files, tmp_path / "a"))
        monkeypatch.undo()
        assert rc == errors.EXIT_INTERRUPTED and "ligo-fast grow: interrupted" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored for the caller
    finally:
        signal.signal(signal.SIGINT, outer)


def test_a_closed_stdout_stops_quietly(files, tmp_path):
    """`ligo-fast grow ... | head -1` printed a BrokenPipeError and hundreds of lines of logging errors."""
    argv = _argv(files, tmp_path / "out", "large.json")
    argv[argv.index("--steps") + 1] = "40"
    p = subprocess.Popen(
        [sys.executable, "-m", "ligo_fast.apps.cli", *argv, "--log-every", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert p.stdout.readline().startswith(b"growing LlamaForCausalLM")
    p.stdout.close()  # what head -1 does after its line
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 128 + signal.SIGPIPE, err
    # stderr keeps only the start-up's own warnings (this small config grows by 1.5x: "not function-preserving")
    lines = [x for x in err.splitlines() if not x.startswith("ligo_fast.model: this growth's start is not")]
    assert lines == [], err


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_the_file_size_limit_is_one_line(files, tmp_path, capsys):
    """RLIMIT_FSIZE (ulimit -f): safetensors' SafetensorError 'os error 27' was a traceback."""
    import resource

    small = build("LlamaForCausalLM", configs("LlamaForCausalLM")[0])
    model = ligo_fast.grow(small, configs("LlamaForCausalLM")[1])
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, old[1]))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        with pytest.raises(OSError, match=r"file too large writing .*operator.safetensors: the file-size limit") as e:
            model.save_operator(tmp_path / "op")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
    assert e.value.errno == errno.EFBIG
    assert not [p.name for p in (tmp_path / "op").iterdir() if p.name.endswith(".tmp")]


def test_a_named_backend_that_cannot_load_fails_at_start_up(files, tmp_path, capsys, monkeypatch):
    """LIGO_FAST_BACKEND=triton on a machine where Triton cannot run was a 48-line traceback at the first forward."""
    from ligo_fast import backends

    def no_triton():
        raise RuntimeError("Triton is installed but there is no CUDA device")

    backends.clear_cache()
    monkeypatch.setitem(backends.LOADERS, "triton", no_triton)
    monkeypatch.setenv("LIGO_FAST_BACKEND", "triton")
    try:
        rc = cli.main(_argv(files, tmp_path / "a"))
    finally:
        backends.clear_cache()
    _one_line(capsys, errors.EXIT_USAGE, rc, "LIGO_FAST_BACKEND=triton: backend 'triton' is unavailable", "no CUDA")
    assert not (tmp_path / "a").exists()  # refused before anything was written
