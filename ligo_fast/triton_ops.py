"""The Triton backend: LiGO kernels registered as PyTorch custom ops.

Ops (namespace ``ligo_fast``; the C++ extension owns other names there):

* ``expand_triton(Tensor W, Tensor depth, Tensor? E_out, Tensor? E_in, Tensor? residual) -> Tensor``
* ``expand_triton_backward(Tensor grad, Tensor W, Tensor depth, Tensor? E_out, Tensor? E_in,
  bool need_W, bool need_depth, bool need_E_out, bool need_E_in) -> (Tensor, Tensor, Tensor, Tensor)``
* ``expand_vec_triton(Tensor b, Tensor depth, Tensor? E_out, Tensor? residual) -> Tensor``
* ``expand_vec_triton_backward(Tensor grad, Tensor b, Tensor depth, Tensor? E_out,
  bool need_b, bool need_depth, bool need_E_out) -> (Tensor, Tensor, Tensor)``

* ``expand_group_triton(Tensor[] W, Tensor[] depth, Tensor[] E_out, Tensor[] E_in) -> Tensor[]``: several
  problems at once (a 2-D W is a vector; a 1-D E stands for None: ``Tensor?[]`` elements get no gradient through
  ``register_autograd``), each stage one launch for all (``ligo_fast.kernels.group``)
* ``expand_group_triton_backward(Tensor[] grad, Tensor[] W, Tensor[] depth, Tensor[] E_out, Tensor[] E_in,
  bool[] need_W, bool[] need_depth, bool[] need_E_out, bool[] need_E_in) -> Tensor[]``: the 4 gradients' lists
  concatenated (all dW, then all d depth, all dE_out, all dE_in)

A backward op returns an empty tensor (shape (0,)) for each gradient it was not asked for. Each forward op
has ``register_fake`` and ``register_autograd``; its backward saves only the op's inputs and recomputes the
rest in Triton kernels (``ligo_fast.kernels.expand``). Double backward is not supported.

CPU tensors run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before ``triton`` is imported).
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from .kernels import expand as _k
from .kernels import group as _g
from .reference import expand_torch, expand_vec_torch

logger = logging.getLogger(__name__)

__all__ = ["expand_triton", "expand_vec_triton", "expand_group_triton", "load_backend", "TritonBackend", "GROUPED_ENV"]


def no_e(ref: Tensor) -> Tensor:
    """A 1-D empty tensor: the ops' stand-in for a tensor not given (a missing E in the grouped ops' lists) or a
    gradient not asked for."""
    return ref.new_empty((0,))


def _or_empty(t: Tensor | None, ref: Tensor) -> Tensor:
    return no_e(ref) if t is None else t


def _none_if_empty(t: Tensor, wanted: bool) -> Tensor | None:
    return t if wanted else None


# ------------------------------------------------------------------------------------------- matrices


@torch.library.custom_op("ligo_fast::expand_triton", mutates_args=())
def expand_triton(
    W: Tensor, depth: Tensor, E_out: Tensor | None, E_in: Tensor | None, residual: Tensor | None
) -> Tensor:
    """``ligo_expand`` forward on Triton kernels. W: (L1, o1, i1) -> (L2, o2, i2) in W's dtype."""
    return _k.expand_fwd(W, depth, E_out, E_in, residual)


@expand_triton.register_fake
def _(W, depth, E_out, E_in, residual):
    o2 = W.shape[1] + (0 if E_out is None else E_out.shape[-2])
    i2 = W.shape[2] + (0 if E_in is None else E_in.shape[-2])
    return W.new_empty((depth.shape[0], o2, i2))


@torch.library.custom_op("ligo_fast::expand_triton_backward", mutates_args=())
def expand_triton_backward(
    grad: Tensor,
    W: Tensor,
    depth: Tensor,
    E_out: Tensor | None,
    E_in: Tensor | None,
    need_W: bool,
    need_depth: bool,
    need_E_out: bool,
    need_E_in: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dW, d depth, dE_out, dE_in); an empty tensor for each one not asked for (or whose E is None)."""
    need_E_out = need_E_out and E_out is not None
    need_E_in = need_E_in and E_in is not None
    dW, dd, dEo, dEi = _k.expand_bwd(grad, W, depth, E_out, E_in, need_W, need_depth, need_E_out, need_E_in)
    if need_E_out and dEo is None:  # E_out with no rows
        dEo = torch.zeros_like(E_out)
    if need_E_in and dEi is None:
        dEi = torch.zeros_like(E_in)
    return _or_empty(dW, W), _or_empty(dd, depth), _or_empty(dEo, W), _or_empty(dEi, W)


@expand_triton_backward.register_fake
def _(grad, W, depth, E_out, E_in, need_W, need_depth, need_E_out, need_E_in):
    return (
        torch.empty_like(W) if need_W else no_e(W),
        torch.empty_like(depth) if need_depth else no_e(depth),
        torch.empty_like(E_out) if need_E_out and E_out is not None else no_e(W),
        torch.empty_like(E_in) if need_E_in and E_in is not None else no_e(W),
    )


def _expand_setup(ctx, inputs, output):
    W, depth, E_out, E_in, residual = inputs
    ctx.save_for_backward(W, depth, E_out, E_in)
    ctx.residual_dtype = None if residual is None else residual.dtype


def _expand_backward(ctx, grad):
    W, depth, E_out, E_in = ctx.saved_tensors
    nW, nd, nEo, nEi, nR = ctx.needs_input_grad
    dW = dd = dEo = dEi = None
    if nW or nd or nEo or nEi:
        dW, dd, dEo, dEi = torch.ops.ligo_fast.expand_triton_backward(
            grad, W, depth, E_out, E_in, nW, nd, nEo and E_out is not None, nEi and E_in is not None
        )
    dR = grad.to(ctx.residual_dtype) if nR and ctx.residual_dtype is not None else None
    return (
        _none_if_empty(dW, nW),
        _none_if_empty(dd, nd),
        _none_if_empty(dEo, nEo and E_out is not None),
        _none_if_empty(dEi, nEi and E_in is not None),
        dR,
    )


expand_triton.register_autograd(_expand_backward, setup_context=_expand_setup)


# -------------------------------------------------------------------------------------------- vectors


@torch.library.custom_op("ligo_fast::expand_vec_triton", mutates_args=())
def expand_vec_triton(b: Tensor, depth: Tensor, E_out: Tensor | None, residual: Tensor | None) -> Tensor:
    """``ligo_expand_vec`` forward, one Triton launch. b: (L1, o1) -> (L2, o2) in b's dtype."""
    return _k.expand_vec_fwd(b, depth, E_out, residual)


@expand_vec_triton.register_fake
def _(b, depth, E_out, residual):
    o2 = b.shape[1] + (0 if E_out is None else E_out.shape[-2])
    return b.new_empty((depth.shape[0], o2))


@torch.library.custom_op("ligo_fast::expand_vec_triton_backward", mutates_args=())
def expand_vec_triton_backward(
    grad: Tensor,
    b: Tensor,
    depth: Tensor,
    E_out: Tensor | None,
    need_b: bool,
    need_depth: bool,
    need_E_out: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (db, d depth, dE_out); an empty tensor for each one not asked for."""
    need_E_out = need_E_out and E_out is not None
    db, dd, dEo = _k.expand_vec_bwd(grad, b, depth, E_out, need_b, need_depth, need_E_out)
    if need_E_out and dEo is None:
        dEo = torch.zeros_like(E_out)
    return _or_empty(db, b), _or_empty(dd, depth), _or_empty(dEo, b)


@expand_vec_triton_backward.register_fake
def _(grad, b, depth, E_out, need_b, need_depth, need_E_out):
    return (
        torch.empty_like(b) if need_b else no_e(b),
        torch.empty_like(depth) if need_depth else no_e(depth),
        torch.empty_like(E_out) if need_E_out and E_out is not None else no_e(b),
    )


def _vec_setup(ctx, inputs, output):
    b, depth, E_out, residual = inputs
    ctx.save_for_backward(b, depth, E_out)
    ctx.residual_dtype = None if residual is None else residual.dtype


def _vec_backward(ctx, grad):
    b, depth, E_out = ctx.saved_tensors
    nb, nd, nEo, nR = ctx.needs_input_grad
    db = dd = dEo = None
    if nb or nd or nEo:
        db, dd, dEo = torch.ops.ligo_fast.expand_vec_triton_backward(
            grad, b, depth, E_out, nb, nd, nEo and E_out is not None
        )
    dR = grad.to(ctx.residual_dtype) if nR and ctx.residual_dtype is not None else None
    return _none_if_empty(db, nb), _none_if_empty(dd, nd), _none_if_empty(dEo, nEo and E_out is not None), dR


expand_vec_triton.register_autograd(_vec_backward, setup_context=_vec_setup)


# ---------------------------------------------------------------------------------------- grouped problems


def _grown(W: Tensor, depth: Tensor, E_out: Tensor | None, E_in: Tensor | None) -> tuple[int, ...]:
    """The output shape of one problem: (L2, o2) for a vector (2-D W), (L2, o2, i2) for a matrix."""
    o2 = W.shape[1] + (0 if E_out is None else E_out.shape[-2])
    if W.dim() == 2:
        return (depth.shape[0], o2)
    return (depth.shape[0], o2, W.shape[2] + (0 if E_in is None else E_in.shape[-2]))


def _opt(Es: list[Tensor]) -> list[Tensor | None]:
    """The grouped ops' E lists: a 1-D tensor (:func:`no_e`) stands for None."""
    return [None if e.dim() == 1 else e for e in Es]


@torch.library.custom_op("ligo_fast::expand_group_triton", mutates_args=())
def expand_group_triton(W: list[Tensor], depth: list[Tensor], E_out: list[Tensor], E_in: list[Tensor]) -> list[Tensor]:
    """``ligo_expand`` (3-D W) / ``ligo_expand_vec`` (2-D W, no E_in) of every problem, without residuals, each
    forward stage one Triton launch for all problems. A 1-D E (:func:`no_e`) is None. Returns one output per problem,
    in its W's dtype."""
    return _g.expand_group_fwd(W, depth, _opt(E_out), _opt(E_in))


@expand_group_triton.register_fake
def _(W, depth, E_out, E_in):
    return [w.new_empty(_grown(w, d, eo, ei)) for w, d, eo, ei in zip(W, depth, _opt(E_out), _opt(E_in), strict=True)]


@torch.library.custom_op("ligo_fast::expand_group_triton_backward", mutates_args=())
def expand_group_triton_backward(
    grad: list[Tensor],
    W: list[Tensor],
    depth: list[Tensor],
    E_out: list[Tensor],
    E_in: list[Tensor],
    need_W: list[bool],
    need_depth: list[bool],
    need_E_out: list[bool],
    need_E_in: list[bool],
) -> list[Tensor]:
    """All dW, then all d depth, all dE_out, all dE_in (4 x len(W) tensors); an empty tensor for each one not asked
    for (or whose E is None: 1-D)."""
    E_out, E_in = _opt(E_out), _opt(E_in)
    need_E_out = [n and e is not None for n, e in zip(need_E_out, E_out, strict=True)]
    need_E_in = [n and e is not None for n, e in zip(need_E_in, E_in, strict=True)]
    dW, dd, dEo, dEi = _g.expand_group_bwd(grad, W, depth, E_out, E_in, need_W, need_depth, need_E_out, need_E_in)
    for p in range(len(W)):  # an E with no rows: a zero gradient
        if need_E_out[p] and dEo[p] is None:
            dEo[p] = torch.zeros_like(E_out[p])
        if need_E_in[p] and dEi[p] is None:
            dEi[p] = torch.zeros_like(E_in[p])
    return (
        [_or_empty(t, w) for t, w in zip(dW, W, strict=True)]
        + [_or_empty(t, d) for t, d in zip(dd, depth, strict=True)]
        + [_or_empty(t, w) for t, w in zip(dEo, W, strict=True)]
        + [_or_empty(t, w) for t, w in zip(dEi, W, strict=True)]
    )


@expand_group_triton_backward.register_fake
def _(grad, W, depth, E_out, E_in, need_W, need_depth, need_E_out, need_E_in):
    def like(t, ref, wanted):
        return torch.empty_like(t) if wanted and t.dim() > 1 else no_e(ref)

    return (
        [like(w, w, n) for w, n in zip(W, need_W, strict=True)]
        + [like(d, d, n) for d, n in zip(depth, need_depth, strict=True)]
        + [like(e, w, n) for e, w, n in zip(E_out, W, need_E_out, strict=True)]
        + [like(e, w, n) for e, w, n in zip(E_in, W, need_E_in, strict=True)]
    )


def _group_setup(ctx, inputs, output):
    W, depth, E_out, E_in = inputs
    ctx.save_for_backward(*W, *depth, *E_out, *E_in)
    ctx.n = len(W)


def _group_backward(ctx, grads):
    n = ctx.n
    saved = ctx.saved_tensors
    W, depth, E_out, E_in = (list(saved[i * n : (i + 1) * n]) for i in range(4))
    # per list element; a list none of whose tensors needs a gradient comes as one False
    nW, nd, nEo, nEi = (list(x) if isinstance(x, (list, tuple)) else [bool(x)] * n for x in ctx.needs_input_grad)
    nEo = [f and e.dim() > 1 for f, e in zip(nEo, E_out, strict=True)]
    nEi = [f and e.dim() > 1 for f, e in zip(nEi, E_in, strict=True)]
    if not any(nW + nd + nEo + nEi):
        return [None] * n, [None] * n, [None] * n, [None] * n
    out = torch.ops.ligo_fast.expand_group_triton_backward(list(grads), W, depth, E_out, E_in, nW, nd, nEo, nEi)
    return tuple(
        [_none_if_empty(t, f) for t, f in zip(out[i * n : (i + 1) * n], flags, strict=True)]
        for i, flags in enumerate((nW, nd, nEo, nEi))
    )


expand_group_triton.register_autograd(_group_backward, setup_context=_group_setup)


# -------------------------------------------------------------------------------------------- backend


GROUPED_ENV = "LIGO_FAST_TRITON_GROUPED"


def _check_runnable(t: Tensor) -> None:
    if t.device.type == "cpu" and not _k.INTERPRETED:
        raise RuntimeError(
            "the Triton backend got CPU tensors, which run only under Triton's interpreter: set "
            "TRITON_INTERPRET=1 before triton is first imported, or use backend='torch' or 'cpp'"
        )
    if t.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"the Triton backend runs on CUDA tensors, got {t.device}")


class TritonBackend:
    """The ``triton`` backend (:class:`ligo_fast.backends.Backend`). float64 weights go to the PyTorch reference
    (the kernels cover fp16, bf16 and fp32); every other call goes to the custom ops. No multi-tensor vector op."""

    name = "triton"
    saves_intermediates = False  # its custom op saves only its inputs for backward

    def __init__(self):
        self.grouped = os.environ.get(GROUPED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")

    def expand(self, W, depth, E_out, E_in, residual):
        _check_runnable(W)
        if W.dtype == torch.float64:
            logger.debug("triton backend: float64 weights go to the PyTorch reference")
            return expand_torch(W, depth, E_out, E_in, residual)
        return torch.ops.ligo_fast.expand_triton(W, depth, E_out, E_in, residual)

    def expand_vec(self, b, depth, E_out, residual):
        _check_runnable(b)
        if b.dtype == torch.float64:
            logger.debug("triton backend: float64 vectors go to the PyTorch reference")
            return expand_vec_torch(b, depth, E_out, residual)
        return torch.ops.ligo_fast.expand_vec_triton(b, depth, E_out, residual)

    def multi_vec_op(self, device_type: str):
        return None

    def group_op(self, device_type: str):
        """:meth:`expand_group` unless ``LIGO_FAST_TRITON_GROUPED=0`` (read when the backend loads; then the callers
        make one call per module kind)."""
        return self.expand_group if self.grouped else None

    def expand_group(self, problems):
        """Residual-free (W, depth, E_out, E_in) problems (2-D W: a vector) in one :func:`expand_group_triton` call;
        float64 ones, and any whose W dtype differs from the first's, go one by one as :meth:`expand` sends them."""
        if not problems:
            return []
        _check_runnable(problems[0][0])
        dtype = problems[0][0].dtype
        outs: list = [None] * len(problems)
        for i, (W, depth, E_out, E_in) in enumerate(problems):
            if W.dtype != dtype or dtype == torch.float64:
                outs[i] = (
                    self.expand_vec(W, depth, E_out, None) if W.dim() == 2 else self.expand(W, depth, E_out, E_in, None)
                )
        rest = [i for i in range(len(problems)) if outs[i] is None]
        if rest:
            args = [[problems[i][k] for i in rest] for k in range(2)]  # W, depth
            args += [[no_e(problems[i][0]) if problems[i][k] is None else problems[i][k] for i in rest] for k in (2, 3)]
            got = torch.ops.ligo_fast.expand_group_triton(*args)
            for i, t in zip(rest, got, strict=True):
                outs[i] = t
        return outs


def load_backend() -> TritonBackend:
    """The Triton backend; raises RuntimeError when there is neither a CUDA device nor the interpreter."""
    if not _k.INTERPRETED and not torch.cuda.is_available():
        raise RuntimeError(
            "Triton is installed but there is no CUDA device; CPU tensors need TRITON_INTERPRET=1 set before "
            "triton is imported (slow, for tests)"
        )
    return TritonBackend()
