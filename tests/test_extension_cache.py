"""The JIT extension cache: only this user's own, verified builds load (F10); a killed build never blocks (F11).

Most tests fake the 30 s compile (``torch.utils.cpp_extension.load``, which builds into a directory and loads what
is there) and the loading (``torch.ops.load_library``): the extension is already loaded in this process. One test
does a real JIT build in a fresh process, into the default cache (once; later sessions load it from there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ligo_fast import backends, extension, jit_cache, ops

ROOT = Path(__file__).resolve().parent.parent
NAME = "ligo_fast_ext_cpu"


# -------------------------------------------------------------------------------------------------- jit_cache


def test_cache_dirs_are_created_private(tmp_path):
    root = tmp_path / "cache"
    d = jit_cache.trusted_dir(root / "tag", root)
    assert d == root / "tag"
    for p in (root, d):
        assert p.is_dir() and (p.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize(("which", "mode"), [("root", 0o777), ("root", 0o1777), ("tag", 0o775), ("tag", 0o702)])
def test_a_dir_others_can_write_is_refused(tmp_path, which, mode):
    root = tmp_path / "cache"
    (root / "tag").mkdir(parents=True)
    bad = root if which == "root" else root / "tag"
    bad.chmod(mode)
    with pytest.raises(jit_cache.UntrustedCache, match=rf"{bad}: it is writable by group or others .*chmod go-w {bad}"):
        jit_cache.trusted_dir(root / "tag", root)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="changing a directory's owner needs root")
def test_a_dir_of_another_user_is_refused(tmp_path):
    root = tmp_path / "cache"
    root.mkdir(mode=0o755)
    os.chown(root, 12345, 12345)
    with pytest.raises(jit_cache.UntrustedCache, match=r"owned by uid 12345, not by you"):
        jit_cache.trusted_dir(root / "tag", root)


def test_only_a_recorded_build_verifies(tmp_path, caplog):
    built, artefact = tmp_path / "built.so", tmp_path / "cache" / f"{NAME}.so"
    artefact.parent.mkdir()
    built.write_bytes(os.urandom(4096))
    assert not jit_cache.verified(artefact, "key")  # nothing there
    artefact.write_bytes(built.read_bytes())
    assert not jit_cache.verified(artefact, "key")  # a file with no record is refused
    assert "no valid build record" in caplog.text
    jit_cache.install(built, artefact, "key")
    record = json.loads(jit_cache.record_path(artefact).read_text())
    assert record["source_key"] == "key" and record["sha256"] == jit_cache.sha256(built)
    assert jit_cache.verified(artefact, "key")
    assert not jit_cache.verified(artefact, "other sources")
    caplog.clear()
    artefact.write_bytes(os.urandom(4096))  # replaced after it was recorded
    assert not jit_cache.verified(artefact, "key")
    assert "refusing" in caplog.text and "is not the" in caplog.text
    jit_cache.install(built, artefact, "key")
    artefact.chmod(0o777)
    assert not jit_cache.verified(artefact, "key")


def _holder(lock: Path, seconds: float) -> subprocess.Popen:
    """A process that takes the build lock, names itself in it (as a builder does), and holds it for a while."""
    code = f"""
        import fcntl, os, socket, time
        fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"pid {{os.getpid()}} on {{socket.gethostname()}}".encode())
        print("held", flush=True)
        time.sleep({seconds})
        os.ftruncate(fd, 0)
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_left_by_a_killed_build_is_taken_over(tmp_path, caplog):
    lock = tmp_path / f"{NAME}.lock"
    lock.write_text("pid 999999 on some-host since 2020-01-01 00:00:00")  # its process is gone: no flock on it
    old = time.time() - 86400
    os.utime(lock, (old, old))
    start = time.monotonic()
    with jit_cache.build_lock(lock, wait_s=60):
        assert lock.read_text().startswith(f"pid {os.getpid()} ")
    assert time.monotonic() - start < 5
    assert "taking over the build lock" in caplog.text and "pid 999999" in caplog.text
    assert lock.read_text() == ""  # released cleanly


def test_a_killed_holder_releases_the_lock(tmp_path, caplog):
    lock = tmp_path / f"{NAME}.lock"
    holder = _holder(lock, 120)
    holder.kill()
    holder.wait()
    with jit_cache.build_lock(lock, wait_s=10):
        pass
    assert f"pid {holder.pid} on" in caplog.text and "did not finish" in caplog.text


def test_waiting_for_a_live_builder_times_out_with_one_line(tmp_path):
    lock = tmp_path / f"{NAME}.lock"
    holder = _holder(lock, 120)
    try:
        start = time.monotonic()
        with pytest.raises(
            RuntimeError, match=rf"gave up after 1 s waiting for pid {holder.pid} on .* \(lock {lock}\)"
        ):
            with jit_cache.build_lock(lock, wait_s=1.0):
                pass
        assert time.monotonic() - start < 10
    finally:
        holder.kill()
        holder.wait()


def test_a_waiter_builds_after_the_builder_finishes(tmp_path, caplog):
    lock = tmp_path / f"{NAME}.lock"
    holder = _holder(lock, 1.0)
    with jit_cache.build_lock(lock, wait_s=60):
        assert holder.poll() is not None or lock.read_text().startswith(f"pid {os.getpid()} ")
    holder.wait()
    assert "waiting up to 60 s" in caplog.text and "taking over" not in caplog.text


# -------------------------------------------------------------------------------- the extension's JIT path


class FakeTorchJit:
    """``torch.utils.cpp_extension.load`` and ``torch.ops.load_library`` without a compiler: like torch, ``load``
    builds ``<build_directory>/<name>.so`` unless one is there already, and loads it; loads are recorded."""

    def __init__(self):
        self.builds: list[Path] = []
        self.loads: list[bytes] = []  # the content of each library loaded, read when it was loaded

    def load(self, name, sources, build_directory, **kwargs):
        so = Path(build_directory) / f"{name}.so"
        if not so.exists():
            so.write_bytes(b"built from " + b",".join(Path(s).name.encode() for s in sources) + os.urandom(64))
            self.builds.append(so)
        self.load_library(str(so))

    def load_library(self, path):
        self.loads.append(Path(path).read_bytes())


@pytest.fixture
def jit(tmp_path, monkeypatch):
    """The JIT path of a process that has not loaded the extension, with LIGO_FAST_CACHE in tmp_path."""
    import torch.utils.cpp_extension as cpp_extension

    fake = FakeTorchJit()
    monkeypatch.setenv("LIGO_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LIGO_FAST_NO_JIT", raising=False)
    monkeypatch.setattr(cpp_extension, "load", fake.load)
    monkeypatch.setattr(torch.ops, "load_library", fake.load_library)

    def no_prebuilt():
        raise ImportError("no prebuilt ligo_fast._C (test)")

    monkeypatch.setattr(extension, "_check_prebuilt_fresh", no_prebuilt)
    monkeypatch.setattr(extension, "_register_python", lambda: None)  # the real ops are registered already
    monkeypatch.setattr(extension, "_loaded", {}, raising=False)
    monkeypatch.setattr(extension, "_state", {}, raising=False)  # what older versions cached the outcome in
    monkeypatch.setattr(extension, "_jit_with_cuda", lambda: False)
    fake.reset = lambda: (extension.__dict__.get("_loaded", {}).clear(), extension.__dict__.get("_state", {}).clear())
    return fake


def test_a_foreign_library_in_the_cache_is_not_loaded(jit, caplog):
    """F10: a .so someone else put where the build goes is never loaded, with or without a record beside it."""
    cache = extension.cache_dir()
    cache.mkdir(parents=True, mode=0o700)
    cache.parent.chmod(0o700)
    artefact = cache / f"{NAME}.so"
    artefact.write_bytes(b"foreign code")
    extension.load_library()
    assert b"foreign code" not in jit.loads
    assert len(jit.builds) == 1 and jit.loads == [artefact.read_bytes()]  # built, loaded, installed
    assert jit_cache.verified(artefact, _key()), "the build was not installed with its record"
    # a later process loads the recorded build from the cache without building
    jit.reset()
    extension.load_library()
    assert len(jit.builds) == 1 and jit.loads[-1] == artefact.read_bytes()
    # the file is replaced after it was recorded: refused, rebuilt
    jit.reset()
    artefact.write_bytes(b"foreign code")
    extension.load_library()
    assert len(jit.builds) == 2 and b"foreign code" not in jit.loads
    assert "refusing" in caplog.text


def _key() -> str:
    """The source key of the CPU build, as extension computes it (read back from its record)."""
    return json.loads((extension.cache_dir() / f"{NAME}.json").read_text())["source_key"]


def test_a_cache_others_can_write_is_refused_and_auto_falls_back(jit, monkeypatch):
    """F10: nothing is built into or loaded from a world-writable cache; auto falls back to torch with one warning."""
    root = Path(os.environ["LIGO_FAST_CACHE"])
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    (extension.cache_dir()).mkdir(mode=0o700)
    (extension.cache_dir() / f"{NAME}.so").write_bytes(b"foreign code")
    with pytest.raises(RuntimeError, match=rf"refusing to load compiled code from {root}: .*chmod go-w {root}"):
        extension.load_library()
    assert jit.loads == [] and jit.builds == []
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    backends.clear_cache()
    try:
        W, depth = torch.randn(2, 3, 4), torch.randn(5, 2)
        with pytest.warns(RuntimeWarning, match=r"backend 'cpp' is unavailable: RuntimeError: refusing .*falling back"):
            out = ops.ligo_expand(W, depth)
        torch.testing.assert_close(out, ops.ligo_expand(W, depth, backend="torch"))
    finally:
        backends.clear_cache()
    assert jit.loads == []


_STALE_LOCKS = """
import logging, os, sys, torch
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from ligo_fast import extension

def no_prebuilt():
    raise ImportError("no prebuilt ligo_fast._C (test)")

def fake_build(name, sources, with_cuda, build_dir):
    so = Path(build_dir) / (name + ".so")
    so.write_bytes(b"fake build")
    return so

extension._check_prebuilt_fresh = no_prebuilt
extension._jit_with_cuda = lambda: False
extension._build = fake_build  # a 30 s compile is not what this test is about
extension._register_python = lambda: None
torch.ops.load_library = lambda path: print("loaded", path)
cache = extension.cache_dir()
cache.mkdir(parents=True, mode=0o700)
(cache / "lock").write_text("")  # torch's own build lock, left by a build killed inside torch
(cache / "ligo_fast_ext_cpu.lock").write_text("pid 999999 on some-host since 2020-01-01 00:00:00")
print("how:", extension.load_library())
"""


def test_stale_locks_of_a_killed_build_do_not_hang(tmp_path):
    """F11: a build killed mid-way left its locks; the next process builds (and says so) instead of waiting forever."""
    env = dict(os.environ, LIGO_FAST_CACHE=str(tmp_path / "cache"))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _STALE_LOCKS], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the JIT path hung on a stale lock")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "how: JIT-built" in proc.stdout, proc.stdout
    assert "taking over the build lock" in proc.stderr and "pid 999999" in proc.stderr, proc.stderr[-3000:]


# ------------------------------------------------------------------------------------------- a real build

_REAL = """
import logging, os, sys, time, torch
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
sys.path.insert(0, TESTS)
from _checks import check_op, expand_inputs, oracle_expand
from ligo_fast import extension, ops

def no_prebuilt():
    raise ImportError("no prebuilt ligo_fast._C (test)")

def refuse(*a):
    raise RuntimeError("no build in this process (test)")

extension._check_prebuilt_fresh = no_prebuilt
if SWAPPED:
    extension._build = refuse
start = time.monotonic()
print("how:", extension.load_library(), f"({time.monotonic() - start:.0f} s)")
args = expand_inputs((2, 3, 5, 7, 9, 11, "layer", True), torch.float32, device="cpu")
check_op(lambda W, d, Eo, Ei, R: ops.ligo_expand(W, d, Eo, Ei, residual=R, backend="cpp"), oracle_expand, args)
print("numbers ok")
if SWAPPED:  # a second cache whose recorded library was swapped for foreign code
    os.environ["LIGO_FAST_CACHE"] = SWAPPED
    extension._loaded.clear()
    try:
        extension.load_library()
    except RuntimeError as e:
        print("swapped:", e)
"""

_FOREIGN_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void ran(void) {
  FILE* f = fopen(getenv("LIGO_FAST_TEST_MARKER"), "w");
  if (f) { fputs("foreign code ran", f); fclose(f); }
}
"""


def _run_real(env: dict, swapped: Path | None = None) -> subprocess.CompletedProcess:
    header = f"TESTS = {str(ROOT / 'tests')!r}\nSWAPPED = {None if swapped is None else str(swapped)!r}\n"
    proc = subprocess.run(
        [sys.executable, "-c", header + _REAL], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_real_jit_build_then_cache_then_a_swapped_library(tmp_path):
    """A real JIT build (or its verified copy from an earlier session) in the default cache; a fresh process loads it
    without building, then refuses, unrun, the library of a copy of that cache swapped for foreign code."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if shutil.which("c++") is None or compiler is None:
        pytest.skip("no C/C++ compiler")
    env = {k: v for k, v in os.environ.items() if k not in ("LIGO_FAST_NO_JIT", "FORCE_CUDA")}
    first = _run_real(env)
    assert "how: JIT-built" in first.stdout and "numbers ok" in first.stdout, first.stdout + first.stderr[-3000:]
    # a private copy of the cache, its library swapped for one whose constructor would leave a marker
    src = extension.cache_dir()
    copy = tmp_path / "cache" / src.name
    copy.mkdir(parents=True)
    (tmp_path / "cache").chmod(0o700)
    shutil.copy2(src / f"{NAME}.json", copy / f"{NAME}.json")
    (tmp_path / "foreign.c").write_text(_FOREIGN_C)
    swapped = copy / f"{NAME}.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(swapped), str(tmp_path / "foreign.c")], check=True)
    marker = tmp_path / "marker"
    second = _run_real(dict(env, LIGO_FAST_TEST_MARKER=str(marker)), swapped=tmp_path / "cache")
    out = second.stdout + second.stderr[-3000:]
    assert "from the cache" in second.stdout and "numbers ok" in second.stdout, out
    assert "refusing" in second.stderr and "swapped: no build in this process (test)" in second.stdout, out
    assert not marker.exists(), "the foreign library's code ran"
