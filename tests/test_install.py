"""The front door: what the source distribution carries, how a build without torch behaves, and (slow) the sdist
installed into a fresh virtual environment with its compiled extension, and without it (then JIT-built from the
sources inside the installed package).

Builds run on a copy of the files a build reads (symlinks kept, as in a checkout), through setuptools' PEP 517 hooks
(what pip and ``python -m build`` call), so nothing is written into the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from ligo_fast import extension

ROOT = Path(__file__).resolve().parent.parent
BUILD_FILES = (
    "setup.py",
    "pyproject.toml",
    "MANIFEST.in",
    "README.md",
    "requirements.txt",
    "ligo_fast",
    "kernels",
    "csrc",
)
NO_TORCH = "import sys; sys.modules['torch'] = None\n"  # `import torch` raises ImportError, as in an isolated build


def _copy_tree(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    dest.mkdir()
    for name in BUILD_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def _hook(src: Path, hook: str, out: Path, env: dict | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """Run setuptools' PEP 517 hook ``build_sdist`` or ``build_wheel`` in ``src``, writing into ``out``."""
    code = prelude + f"from setuptools import build_meta\nprint(build_meta.{hook}({str(out)!r}))\n"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=src, capture_output=True, text=True, env=env or os.environ.copy(), timeout=300
    )


def _includes(path: Path) -> set[Path]:
    """``path`` and every file it ``#include "..."``s, transitively."""
    seen, todo = set(), [path.resolve()]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo += [(p.parent / m).resolve() for m in re.findall(r'^\s*#include\s+"([^"]+)"', p.read_text(), re.M)]
    return seen


def _needed() -> set[str]:
    """Paths, relative to the package, of every file the extension's CPU and CUDA builds read."""
    csrc = (ROOT / "csrc").resolve()
    files = set().union(*(_includes(csrc / s) for s in extension.CPU_SOURCES + extension.CUDA_SOURCES))
    return {f"csrc/{p.relative_to(csrc).as_posix()}" for p in files}


def test_the_jit_build_reads_the_sources_inside_the_package():
    # in a checkout ligo_fast/csrc links to the top-level csrc/; installed, it is package data (setup.py)
    pkg = Path(extension.__file__).resolve().parent
    assert extension.CSRC == pkg / "csrc"
    assert all((pkg / rel).is_file() for rel in _needed())
    assert (ROOT / "ligo_fast" / "csrc").resolve() == (ROOT / "csrc").resolve()


@pytest.mark.parametrize("checkout", [True, False])
def test_a_stale_prebuilt_is_refused_in_a_checkout_only(tmp_path, monkeypatch, checkout):
    """In a checkout, a ``_C`` older than the sources is rebuilt; an installed package's file times are when pip
    wrote each file, in no particular order, so its ``_C`` is trusted."""
    import importlib.util

    spec = importlib.util.find_spec("ligo_fast._C")
    if spec is None or spec.origin is None:
        pytest.skip("no prebuilt ligo_fast._C here")
    pkg = tmp_path / "site" / "ligo_fast"
    shutil.copytree(ROOT / "csrc", pkg / "csrc")
    later = Path(spec.origin).stat().st_mtime + 60
    os.utime(pkg / "csrc" / "ligo_ops.cpp", (later, later))  # written after the module
    if checkout:
        (pkg.parent / "setup.py").write_text("")
    monkeypatch.setattr(extension, "PKG", pkg)
    monkeypatch.setattr(extension, "CSRC", pkg / "csrc")
    if checkout:
        with pytest.raises(ImportError, match="is older than the sources in"):
            extension._check_prebuilt_fresh()
    else:
        extension._check_prebuilt_fresh()


def test_the_sdist_carries_every_file_the_build_reads(tmp_path):
    src = _copy_tree(tmp_path / "src")
    (src / "ligo_fast" / "_C.fake.so").write_bytes(b"not a build product to ship")
    p = _hook(src, "build_sdist", tmp_path / "dist")
    assert p.returncode == 0, p.stderr[-3000:]
    (sdist,) = (tmp_path / "dist").glob("ligo_fast-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = _needed()
    assert {"csrc/ligo_ops.h", "csrc/cuda/multi_vec.h", "csrc/cuda/multi_vec.cu"} <= needed  # the oracle sees them
    missing = sorted(f"ligo_fast/{rel}" for rel in needed if f"ligo_fast/{rel}" not in names)
    assert not missing, f"the sdist lacks {missing}"
    kernels = {f"ligo_fast/kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")}
    assert kernels and kernels <= names, sorted(kernels - names)
    assert {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md"} <= names
    assert not [n for n in names if n.endswith((".so", ".pyc"))], "build products in the sdist"


def test_a_build_without_torch_stops_with_the_advice_unless_told_to_skip_the_extension(tmp_path):
    """An isolated build (no torch in its environment) must not drop the extension unnoticed: it fails saying how
    to install; LIGO_FAST_SKIP_EXT=1 builds a pure-Python wheel that still carries the sources for the JIT build."""
    src = _copy_tree(tmp_path / "src")
    env = {k: v for k, v in os.environ.items() if k != "LIGO_FAST_SKIP_EXT"}
    p = _hook(src, "build_wheel", tmp_path / "w1", env=env, prelude=NO_TORCH)
    assert p.returncode != 0 and not list((tmp_path / "w1").glob("*.whl"))
    assert "cannot build the C++ extension: torch is not importable in the build environment" in p.stderr, p.stderr
    assert "--no-build-isolation" in p.stderr and "LIGO_FAST_SKIP_EXT=1" in p.stderr
    p = _hook(src, "build_wheel", tmp_path / "w2", env=dict(env, LIGO_FAST_SKIP_EXT="1"), prelude=NO_TORCH)
    assert p.returncode == 0, p.stderr[-3000:]
    (wheel,) = (tmp_path / "w2").glob("ligo_fast-*-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"ligo_fast/{rel}" for rel in _needed()} <= names
    assert "ligo_fast/kernels/expand.py" in names and not [n for n in names if n.endswith(".so")]


# --------------------------------------------------------------------------------------------- a fresh install

_CHECK = r"""
import os, sys, torch
import ligo_fast
from ligo_fast import extension, ops, reference
assert ligo_fast.__file__.startswith(VENV), ligo_fast.__file__
how = extension.load_library()
print("how:", how)
torch.manual_seed(0)
# W: (L1, o1, i1) = (3, 5, 7) grown to (L2, o2, i2) = (4, 11, 10), per-layer E's, a residual
shapes = [(3, 5, 7), (4, 3), (4, 6, 5), (4, 3, 7), (4, 11, 10)]
args = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
out = ops.ligo_expand(*args[:4], residual=args[4], backend="cpp")
ref = reference.expand_torch(*args)
torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
g = torch.randn_like(out)
grads = torch.autograd.grad(out, args, g)
for a, b in zip(grads, torch.autograd.grad(ref, args, g)):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
print("numbers ok")
"""


def _venv(path: Path) -> Path:
    """A fresh venv that sees this interpreter's site-packages (torch, transformers, ...) after its own, through a
    .pth of plain paths (so the .pth files there, e.g. an editable ligo_fast of a checkout, are not run)."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    py = path / "bin" / "python"
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    outer = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "outer_site_packages.pth").write_text("\n".join(outer) + "\n")
    return py


def _run(cmd: list, env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.slow
@pytest.mark.install
def test_the_sdist_installs_into_a_fresh_venv_with_its_extension_or_jit_builds_it(tmp_path):
    """``pip install ligo_fast-*.tar.gz --no-build-isolation`` into a new venv: ``ligo_fast._C`` is compiled and
    loads, the ops match the torch path, ``ligo_fast.info`` names it. Before that, the same sdist installed without
    the extension (LIGO_FAST_SKIP_EXT=1) JIT-builds it from the sources inside the installed package (into the
    default cache, so usually loaded from an earlier build of the same sources)."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler")
    src = _copy_tree(tmp_path / "src")
    p = _hook(src, "build_sdist", tmp_path / "dist")
    assert p.returncode == 0, p.stderr[-3000:]
    (sdist,) = (tmp_path / "dist").glob("ligo_fast-*.tar.gz")
    py = _venv(tmp_path / "venv")
    venv = str((tmp_path / "venv").resolve())
    env = {k: v for k, v in os.environ.items() if k not in ("LIGO_FAST_NO_JIT", "FORCE_CUDA", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # ninja, c++ wrappers
    env.setdefault("MAX_JOBS", "2")
    pip = [py, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--no-index"]
    pip += ["--disable-pip-version-check", str(sdist)]
    check = [py, "-c", f"VENV = {venv!r}\n" + _CHECK]
    cwd = tmp_path  # not the checkout: `import ligo_fast` must find the installed package

    _run(pip, dict(env, LIGO_FAST_SKIP_EXT="1"), cwd)
    pure = _run(check, env, cwd)
    assert "how: JIT-built" in pure.stdout and "numbers ok" in pure.stdout, pure.stdout + pure.stderr[-3000:]

    _run([*pip[:4], "--force-reinstall", *pip[4:]], env, cwd)
    built = _run(check, dict(env, LIGO_FAST_NO_JIT="1"), cwd)
    assert f"how: prebuilt {venv}/" in built.stdout and "numbers ok" in built.stdout, built.stdout + built.stderr
    report = _run([py, "-m", "ligo_fast.info"], dict(env, LIGO_FAST_NO_JIT="1"), cwd).stdout
    assert f"extension: prebuilt {venv}/" in report and "backend='auto' on cpu: cpp" in report, report
