"""The C++/CUDA extension: loading, fake and autograd registrations, and the ``cpp`` backend object.

Loading order: the prebuilt module ``ligo_fast._C`` (``pip install . --no-build-isolation``; trusted as installed,
and in a source checkout only when it is newer than the sources), else a JIT build of the package's C++ sources
(:data:`CSRC`: package data, in a checkout a link to the top-level ``csrc/``) with
:func:`torch.utils.cpp_extension.load` (ninja), cached in
``$LIGO_FAST_CACHE`` (default ``~/.cache/ligo_fast``) per torch/Python/CUDA combination and rebuilt when the sources
change. The cache must be the user's own (:mod:`ligo_fast.jit_cache`: a directory others can write is refused, a
cached build is loaded only when its sha256 matches the one recorded when it was built, one build at a time with a
lock that a killed build cannot leave behind). CUDA sources are added to the JIT build when torch has CUDA, nvcc is
found and a GPU is visible (or ``FORCE_CUDA=1``, as for ``setup.py``: a build machine without a GPU;
``TORCH_CUDA_ARCH_LIST`` then names the architectures).

Ops (namespace ``ligo_fast``, defined in ``csrc/ligo_ops.cpp``):

- ``expand_cpp(W, depth, E_out?, E_in?, residual?) -> Tensor`` and ``expand_cpp_backward(grad, W, depth, E_out?,
  E_in?) -> [grad_W, grad_depth, grad_E_out if E_out, grad_E_in if E_in]``
- ``expand_vec_cpp(b, depth, E_out?, residual?) -> Tensor`` and ``expand_vec_cpp_backward(grad, b, depth, E_out?)``
- ``multi_expand_vec(b[], depth[], E_out[], residual[], E_out_index, residual_index) -> Tensor[]``: many vector
  problems of different sizes in one call (one CUDA launch per element type). ``E_out``/``residual`` list only the
  present tensors; ``*_index[i]`` is problem i's position in them or -1 (torch.library autograd does not track the
  elements of ``Tensor?[]`` arguments, so optional lists are passed this way).
  ``multi_expand_vec_backward(grad[], b[], depth[], E_out[], E_out_index)`` returns
  ``[grad_b..., grad_depth..., grad_E_out of the problems that have one, in problem order...]``.

Every tensor of one problem must share device and dtype (the ops raise otherwise); :class:`CppBackend` casts mixed
inputs to the compute dtype first, as :mod:`ligo_fast.reference` does.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from . import jit_cache
from .reference import compute_dtype

logger = logging.getLogger(__name__)

PKG = Path(__file__).resolve().parent
CSRC = PKG / "csrc"  # installed with the package (setup.py's package_data); a link to ../csrc in a checkout
CPU_SOURCES = ("ligo_ops.cpp",)
CUDA_SOURCES = ("cuda/ligo_ops_cuda.cpp", "cuda/multi_vec.cu")
CFLAGS = ["-O3", "-fopenmp"]  # -fopenmp: at::parallel_for is inline OpenMP code, serial without it

BUILD_WAIT_S = 900.0  # how long a process waits for another one's JIT build (a CUDA build can take minutes)

_loaded: dict[str, str] = {}  # "how": set once the ops are loaded (a process cannot unload or re-register them)


def cache_root() -> Path:
    """``$LIGO_FAST_CACHE``, default ``~/.cache/ligo_fast``."""
    return Path(os.environ.get("LIGO_FAST_CACHE") or Path.home() / ".cache" / "ligo_fast")


def cache_dir() -> Path:
    """Where JIT builds go: ``$LIGO_FAST_CACHE/<torch, python, cuda tag>``."""
    cuda = f"cu{torch.version.cuda}" if torch.version.cuda else "cpu"
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", f"torch{torch.__version__}-{py}-{cuda}")
    return cache_root() / tag


def _jit_with_cuda() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    forced = os.environ.get("FORCE_CUDA", "0") == "1"
    return bool(torch.version.cuda) and CUDA_HOME is not None and (forced or torch.cuda.is_available())


def _ensure_ninja() -> None:
    if shutil.which("ninja") is None:
        # A venv's ninja is next to its python even when the venv is not activated.
        venv_bin = Path(sys.executable).parent
        if (venv_bin / "ninja").exists():
            os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
        else:
            raise RuntimeError("cannot JIT-build the extension: ninja is not installed (pip install ninja)")


def _build(name: str, sources: list[Path], with_cuda: bool, build_dir: Path) -> Path:
    """Compile and link ``sources`` into ``build_dir`` and load the result into this process; return its path."""
    from torch.utils.cpp_extension import load

    load(
        name=name,
        sources=[str(s) for s in sources],
        extra_cflags=CFLAGS,
        extra_cuda_cflags=["-O3"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=False,
    )
    return build_dir / f"{name}.so"


def _jit_load(why: str) -> str:
    """Load the JIT-built ops from the cache, building them first when the cache has no verified build (``why``:
    the reason there is no usable prebuilt module, for the build's message).

    Builds run in a fresh directory under the cache lock and are installed with their sha256 (:mod:`jit_cache`);
    only a file whose record matches is ever loaded from the cache.
    """
    missing = [s for s in CPU_SOURCES if not (CSRC / s).is_file()]
    if missing:
        raise RuntimeError(f"cannot JIT-build the extension: sources {missing} not found under {CSRC}")
    with_cuda = _jit_with_cuda()
    name = "ligo_fast_ext_cuda" if with_cuda else "ligo_fast_ext_cpu"
    sources = [CSRC / s for s in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]
    headers = sorted(p for p in CSRC.rglob("*.h") if "emu" not in p.parts)
    key = jit_cache.source_key(
        sources + headers, torch.__version__, sys.version, with_cuda, CFLAGS, os.environ.get("TORCH_CUDA_ARCH_LIST")
    )
    cache = jit_cache.trusted_dir(cache_dir(), cache_root())
    artefact = cache / f"{name}.so"
    kind = "CPU+CUDA" if with_cuda else "CPU only"
    if not jit_cache.verified(artefact, key):
        with jit_cache.build_lock(cache / f"{name}.lock", BUILD_WAIT_S):
            if not jit_cache.verified(artefact, key):  # another process may have built it while this one waited
                _ensure_ninja()
                for stale in cache.glob(f"{name}-build-*"):  # left by builds that did not finish
                    shutil.rmtree(stale, ignore_errors=True)
                # a warning, not info: the first build takes ~30 s (2 CPU cores) and should not look like a hang
                logger.warning("%s; building the C++ extension (%s) once into %s (about 30 s)", why, kind, cache)
                build_dir = Path(tempfile.mkdtemp(prefix=f"{name}-build-", dir=cache))
                try:
                    jit_cache.install(_build(name, sources, with_cuda, build_dir), artefact, key)
                finally:
                    shutil.rmtree(build_dir, ignore_errors=True)
                return f"JIT-built {artefact} ({kind})"
    torch.ops.load_library(str(artefact))
    return f"JIT-built {artefact} ({kind}), from the cache"


def _check_prebuilt_fresh() -> None:
    """Raise ImportError when an in-tree ``_C`` (editable install) is older than the sources next to it."""
    spec = importlib.util.find_spec("ligo_fast._C")
    if spec is None or spec.origin is None:
        raise ImportError("no prebuilt ligo_fast._C")
    if not (PKG.parent / "setup.py").is_file() or not CSRC.is_dir():
        return  # an installed package: its files' times are when pip wrote them, in no particular order
    sources = [p for p in CSRC.rglob("*") if p.suffix in {".cpp", ".cu", ".h"} and "emu" not in p.parts]  # emu: tests
    newest = max((p.stat().st_mtime for p in sources), default=0.0)
    if Path(spec.origin).stat().st_mtime < newest:
        raise ImportError(f"prebuilt {spec.origin} is older than the sources in {CSRC}")


def load_library() -> str:
    """Load the ops (prebuilt, else JIT-built) once per process; return how they were loaded.

    Raises RuntimeError with a one-line reason; a failure is not remembered here (:mod:`ligo_fast.backends`
    remembers it), so a later call tries again.
    """
    if "how" in _loaded:
        return _loaded["how"]
    try:
        try:
            _check_prebuilt_fresh()
            from . import _C  # noqa: F401

            how = f"prebuilt {_C.__file__}"
        except ImportError as e:
            if os.environ.get("LIGO_FAST_NO_JIT") == "1":
                raise RuntimeError(f"no usable prebuilt ligo_fast._C ({e}) and LIGO_FAST_NO_JIT=1") from e
            how = _jit_load(str(e))
        _register_python()
    except Exception as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise RuntimeError(msg if isinstance(e, RuntimeError) else f"{type(e).__name__}: {msg}") from e
    _loaded["how"] = how
    return how


@torch.compiler.assume_constant_result  # a dispatcher query Dynamo cannot trace; fixed once the library is loaded
def has_cuda_kernels() -> bool:
    """True when the loaded extension has the CUDA vector kernels (built with CUDA)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("ligo_fast::multi_expand_vec", "CUDA")


# --------------------------------------------------------------------------------------------------------------
# Fake (meta) and autograd registrations.


def _check_devices(op: str, **tensors: Tensor | None) -> None:
    present = {k: v for k, v in tensors.items() if v is not None}
    if len({v.device for v in present.values()}) > 1:
        desc = ", ".join(f"{k} on {v.device}" for k, v in present.items())
        raise RuntimeError(f"ligo_fast::{op}: all tensors must be on one device, got {desc}")


def _large(small: int, E: Tensor | None) -> int:
    return small if E is None else small + E.shape[-2]


def _fake_expand(W, depth, E_out, E_in, residual):
    _check_devices("expand_cpp", W=W, depth=depth, E_out=E_out, E_in=E_in, residual=residual)
    return W.new_empty((depth.shape[0], _large(W.shape[1], E_out), _large(W.shape[2], E_in)))


def _fake_expand_backward(grad, W, depth, E_out, E_in):
    _check_devices("expand_cpp_backward", grad=grad, W=W, depth=depth, E_out=E_out, E_in=E_in)
    return [torch.empty_like(t) for t in (W, depth, E_out, E_in) if t is not None]


def _fake_expand_vec(b, depth, E_out, residual):
    _check_devices("expand_vec_cpp", b=b, depth=depth, E_out=E_out, residual=residual)
    return b.new_empty((depth.shape[0], _large(b.shape[1], E_out)))


def _fake_expand_vec_backward(grad, b, depth, E_out):
    _check_devices("expand_vec_cpp_backward", grad=grad, b=b, depth=depth, E_out=E_out)
    return [torch.empty_like(t) for t in (b, depth, E_out) if t is not None]


def _pick(dense: list[Tensor], index: list[int]) -> list[Tensor | None]:
    return [None if k < 0 else dense[k] for k in index]


def _fake_multi(bs, depths, E_outs, residuals, E_out_index, residual_index):
    _check_devices("multi_expand_vec", **{f"t{i}": t for i, t in enumerate([*bs, *depths, *E_outs, *residuals])})
    Es = _pick(E_outs, E_out_index)
    return [b.new_empty((d.shape[0], _large(b.shape[1], e))) for b, d, e in zip(bs, depths, Es, strict=True)]


def _fake_multi_backward(grads, bs, depths, E_outs, E_out_index):
    _check_devices("multi_expand_vec_backward", **{f"t{i}": t for i, t in enumerate([*grads, *bs, *depths, *E_outs])})
    return [torch.empty_like(t) for t in [*bs, *depths, *(e for e in _pick(E_outs, E_out_index) if e is not None)]]


def _cast(grad: Tensor | None, like: Tensor | None) -> Tensor | None:
    if grad is None or like is None:
        return None
    return grad.to(like.dtype)


def _setup_expand(ctx, inputs, output):
    W, depth, E_out, E_in, residual = inputs
    ctx.has = (E_out is not None, E_in is not None)
    ctx.res_dtype = None if residual is None else residual.dtype
    ctx.save_for_backward(W, depth, E_out, E_in)


def _backward_expand(ctx, grad):
    W, depth, E_out, E_in = ctx.saved_tensors
    grads = iter(torch.ops.ligo_fast.expand_cpp_backward(grad, W, depth, E_out, E_in))
    gW, gd = next(grads), next(grads)
    gEo = next(grads) if ctx.has[0] else None
    gEi = next(grads) if ctx.has[1] else None
    gres = None if ctx.res_dtype is None else grad.to(ctx.res_dtype)
    return gW, gd, gEo, gEi, gres


def _setup_expand_vec(ctx, inputs, output):
    b, depth, E_out, residual = inputs
    ctx.has_E = E_out is not None
    ctx.res_dtype = None if residual is None else residual.dtype
    ctx.save_for_backward(b, depth, E_out)


def _backward_expand_vec(ctx, grad):
    b, depth, E_out = ctx.saved_tensors
    grads = torch.ops.ligo_fast.expand_vec_cpp_backward(grad, b, depth, E_out)
    gres = None if ctx.res_dtype is None else grad.to(ctx.res_dtype)
    return grads[0], grads[1], grads[2] if ctx.has_E else None, gres


def _setup_multi(ctx, inputs, output):
    bs, depths, E_outs, residuals, E_out_index, residual_index = inputs
    ctx.n, ctx.n_E = len(bs), len(E_outs)
    ctx.E_out_index = list(E_out_index)
    ctx.res_dtypes = [r.dtype for r in residuals]
    ctx.residual_index = list(residual_index)
    ctx.out_shapes = [tuple(o.shape) for o in output]
    ctx.save_for_backward(*bs, *depths, *E_outs)


def _backward_multi(ctx, grads):
    n = ctx.n
    saved = ctx.saved_tensors
    bs, depths, E_outs = list(saved[:n]), list(saved[n : 2 * n]), list(saved[2 * n :])
    grads = [
        torch.zeros(s, dtype=b.dtype, device=b.device) if g is None else g
        for g, s, b in zip(grads, ctx.out_shapes, bs, strict=True)
    ]
    flat = torch.ops.ligo_fast.multi_expand_vec_backward(grads, bs, depths, E_outs, ctx.E_out_index)
    # flat holds the E gradients in problem order; E_outs is in dense order.
    g_E: list[Tensor | None] = [None] * ctx.n_E
    present = [k for k in ctx.E_out_index if k >= 0]
    for k, g in zip(present, flat[2 * n :], strict=True):
        g_E[k] = g
    g_res: list[Tensor | None] = [None] * len(ctx.res_dtypes)
    for i, k in enumerate(ctx.residual_index):
        if k >= 0:
            g_res[k] = grads[i].to(ctx.res_dtypes[k])
    return list(flat[:n]), list(flat[n : 2 * n]), g_E, g_res, None, None


def _register_python() -> None:
    lib = torch.library
    lib.register_fake("ligo_fast::expand_cpp")(_fake_expand)
    lib.register_fake("ligo_fast::expand_cpp_backward")(_fake_expand_backward)
    lib.register_fake("ligo_fast::expand_vec_cpp")(_fake_expand_vec)
    lib.register_fake("ligo_fast::expand_vec_cpp_backward")(_fake_expand_vec_backward)
    lib.register_fake("ligo_fast::multi_expand_vec")(_fake_multi)
    lib.register_fake("ligo_fast::multi_expand_vec_backward")(_fake_multi_backward)
    lib.register_autograd("ligo_fast::expand_cpp", _backward_expand, setup_context=_setup_expand)
    lib.register_autograd("ligo_fast::expand_vec_cpp", _backward_expand_vec, setup_context=_setup_expand_vec)
    lib.register_autograd("ligo_fast::multi_expand_vec", _backward_multi, setup_context=_setup_multi)


# --------------------------------------------------------------------------------------------------------------
# The backend object used by ligo_fast.ops / ligo_fast.backends.


def _same_dtype(lead: Tensor, *rest: Tensor | None) -> tuple[bool, torch.dtype]:
    """(all tensors share lead's dtype, the dtype to cast to when not)."""
    same = all(t is None or t.dtype == lead.dtype for t in rest)
    return same, compute_dtype(lead.dtype)


def _to(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


class CppBackend:
    """The ``cpp`` backend (:class:`ligo_fast.backends.Backend`): the C++ ops on CPU, and on CUDA when built with it.

    ``how``: how the extension was loaded (prebuilt or JIT-built, and where).
    """

    name = "cpp"
    saves_intermediates = False  # its custom op saves only its inputs for backward

    def __init__(self, how: str):
        self.how = how

    @staticmethod
    def _check_vec_device(t: Tensor) -> None:
        if t.device.type == "cuda" and not has_cuda_kernels():
            raise RuntimeError(
                "the cpp backend was built without CUDA kernels (CPU-only torch or no nvcc at build time); "
                "use backend='triton' or 'torch' for CUDA tensors, or rebuild with FORCE_CUDA=1"
            )

    def expand(self, W, depth, E_out, E_in, residual):
        same, ct = _same_dtype(W, depth, E_out, E_in, residual)
        if same:
            return torch.ops.ligo_fast.expand_cpp(W, depth, E_out, E_in, residual)
        args = [_to(t, ct) for t in (W, depth, E_out, E_in, residual)]
        return torch.ops.ligo_fast.expand_cpp(*args).to(W.dtype)

    def expand_vec(self, b, depth, E_out, residual):
        self._check_vec_device(b)
        same, ct = _same_dtype(b, depth, E_out, residual)
        if same:
            return torch.ops.ligo_fast.expand_vec_cpp(b, depth, E_out, residual)
        return torch.ops.ligo_fast.expand_vec_cpp(*(_to(t, ct) for t in (b, depth, E_out, residual))).to(b.dtype)

    def multi_vec_op(self, device_type: str):
        """:meth:`expand_vec_multi` for CPU tensors, and for CUDA tensors when built with the CUDA kernels."""
        if device_type == "cpu" or (device_type == "cuda" and has_cuda_kernels()):
            return self.expand_vec_multi
        return None

    def group_op(self, device_type: str):
        """None: no grouped matrix op here (the vectors have :meth:`expand_vec_multi`)."""
        return None

    def expand_vec_multi(self, problems):
        """problems: list of (b, depth, E_out, residual) -> list of (L2, o2) outputs, in one op call."""
        if not problems:
            return []
        self._check_vec_device(problems[0][0])
        bs, depths, E_outs, residuals, E_index, r_index, back = [], [], [], [], [], [], []
        for b, depth, E_out, residual in problems:
            same, ct = _same_dtype(b, depth, E_out, residual)
            if not same:
                b, depth, E_out, residual = (_to(t, ct) for t in (b, depth, E_out, residual))
            bs.append(b)
            depths.append(depth)
            E_index.append(-1 if E_out is None else len(E_outs))
            r_index.append(-1 if residual is None else len(residuals))
            E_outs += [] if E_out is None else [E_out]
            residuals += [] if residual is None else [residual]
            back.append(None if same else problems[len(back)][0].dtype)
        outs = torch.ops.ligo_fast.multi_expand_vec(bs, depths, E_outs, residuals, E_index, r_index)
        return [o if dt is None else o.to(dt) for o, dt in zip(outs, back, strict=True)]


def load_backend() -> CppBackend:
    """The ``cpp`` backend object for :mod:`ligo_fast.backends` (raises RuntimeError with the reason)."""
    return CppBackend(load_library())
