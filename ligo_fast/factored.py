"""The factored mode: run a grown linear layer without producing its weight, and the cost model that picks it.

For a block linear with ``W = B_out · Wmix · B_inᵀ`` (``B = [I; E]``, ``Wmix = Σ_j depth[l, j] W_j``):

    y = x Wᵀ + b = ((x B_in) Wmixᵀ) B_outᵀ + b
    x B_in     = x[:, :i1] + x[:, i1:] E_in              (the identity block is a slice)
    v B_outᵀ   = [v, v E_outᵀ]                            (likewise)

Per step, materialising costs the production of W (once) plus ``T·o2·i2`` multiply-adds per token (T tokens);
the factored form costs ``T·(i1(i2-i1) + o1·i1 + o1(o2-o1))`` and no production. With square growth by a factor
a the factored form is always cheaper in FLOPs (2a-1 < a² per d²); with rectangular matrices (FFN in/out) it
can cost more per token, so for large T producing wins. The cost model below counts every form in FLOPs and
bytes against a device's ceilings (roofline time per GEMM, plus a launch cost) and picks the cheapest.

Between the two, a linear whose both sides grow can produce one side only: ``out`` produces ``B_out · Wmix``
(o2 x i1, once per step) and runs ``(x B_in) W'ᵀ``; ``in`` produces ``Wmix · B_inᵀ`` (o1 x i2) and runs
``[v, v E_outᵀ]`` with ``v = x W'ᵀ``. For an FFN's rectangles at a few thousand tokens these cost less than both
the full production and the fully factored form (the wide side's E product per token is the expensive one).

Modules outside the blocks run factored the same way (depth: none, or the fixed scale of a function-preserving
start): a vocabulary embedding ``W_large = W Bᵀ`` looks up its small rows and widens only those
(``[u, u Eᵀ]``), and the LM head tied to it computes ``(x B) Wᵀ``: neither produces the (vocab x d2) table, and
with a frozen small model no (vocab x d) weight gradient is formed either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .arch import EMBEDDING, LINEAR
from .plan import Slot
from .reference import compute_dtype
from .rows import RowGetter, resolve


@dataclass(frozen=True)
class DeviceModel:
    """Ceilings of a device for the cost model: FLOP/s of its 16-bit matrix units (``flops``), bytes/s, seconds per
    kernel launch, and the FLOP/s of float32 matrix products on TF32 tensor cores (``tf32``, used when torch allows
    TF32 matmuls) and on the FMA units (``fp32``); 0 = ``flops`` for every dtype (a CPU model)."""

    flops: float
    bandwidth: float
    launch: float
    tf32: float = 0.0
    fp32: float = 0.0

    def for_itemsize(self, itemsize: int) -> DeviceModel:
        """The model for products of ``itemsize``-byte elements: 16-bit at ``flops``, float32 at ``tf32`` or
        ``fp32`` (``torch.backends.cuda.matmul.allow_tf32``), float64 at half the float32 FMA rate."""
        if itemsize <= 2 or not self.fp32:
            return self
        if itemsize == 4:
            rate = self.tf32 if (self.tf32 and torch.backends.cuda.matmul.allow_tf32) else self.fp32
        else:
            rate = self.fp32 / 2
        return replace(self, flops=rate)


# Leads, not measurements. H200: ~790 TFLOP/s bf16 and ~4.3 TB/s were measured on this workplace's cards (device
# notes), 80% and 90% of its data sheet's 989 TFLOP/s (dense) and 4.8 TB/s. H100 SXM: the same die and clocks, so the
# same rates; its data sheet's 3.35 TB/s HBM3 at the same 90%. float32 from the H100 SXM data sheet at the same 80%:
# TF32 tensor cores 494 TFLOP/s dense (989 with sparsity), FMA units 67 TFLOP/s. (NVIDIA H100 Tensor Core GPU and H200
# data sheets; benchmarks/RESULTS.md, issue 23.) The CPU numbers are a 2-core machine's order of magnitude.
H200 = DeviceModel(flops=7.9e14, bandwidth=4.3e12, launch=4e-6, tf32=3.95e14, fp32=5.4e13)
H100 = DeviceModel(flops=7.9e14, bandwidth=3.0e12, launch=4e-6, tf32=3.95e14, fp32=5.4e13)
GPU = DeviceModel(flops=3e14, bandwidth=2e12, launch=5e-6, tf32=1.5e14, fp32=2e13)
CPU = DeviceModel(flops=1e11, bandwidth=2e10, launch=2e-6)


def device_model(device: torch.device, itemsize: int = 2) -> DeviceModel:
    """The cost model's ceilings for ``device`` (H200, H100 by name; another GPU; the CPU) and ``itemsize``-byte
    operands (:meth:`DeviceModel.for_itemsize`)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        dev = H200 if "H200" in name else H100 if "H100" in name else GPU
    else:
        dev = CPU
    return dev.for_itemsize(itemsize)


def _gemm(m: int, n: int, k: int, nbytes: int, dev: DeviceModel) -> float:
    """Roofline time of an (m x k) @ (k x n) product; 0 for an empty one."""
    if m == 0 or n == 0 or k == 0:
        return 0.0
    return max(2.0 * m * n * k / dev.flops, (m * k + k * n + m * n) * nbytes / dev.bandwidth) + dev.launch


def costs(T: int, o1: int, i1: int, o2: int, i2: int, L1: int, nbytes: int, dev: DeviceModel) -> tuple[float, float]:
    """(materialize, factored) modelled seconds of one forward+backward of one large layer's linear."""
    mix = _gemm(1, o1 * i1, L1, nbytes, dev)
    # production in the cheaper association order, then the layer itself
    prod = mix + min(
        _gemm(o1, i2 - i1, i1, nbytes, dev) + _gemm(o2 - o1, i2, o1, nbytes, dev),
        _gemm(o2 - o1, i1, o1, nbytes, dev) + _gemm(o2, i2 - i1, i1, nbytes, dev),
    )
    mat = 3 * prod + 3 * _gemm(T, o2, i2, nbytes, dev)  # backward ~ twice forward, for both
    fwd = _gemm(T, i1, i2 - i1, nbytes, dev) + _gemm(T, o1, i1, nbytes, dev) + _gemm(T, o2 - o1, o1, nbytes, dev)
    fact = 3 * mix + 3 * fwd
    return mat, fact


class Form(StrEnum):
    """How a module runs in a forward (module docstring); a slot that :func:`choose` leaves out materialises."""

    MATERIALIZE = "materialize"  # its weight is produced
    FACTORED = "factored"  # neither side produced: the depth mix and both E's per token
    OUT = "out"  # the output side produced (B_out · Wmix), the input side's E per token
    IN = "in"  # the input side produced (Wmix · B_in^T), the output side's E per token


FORMS = (Form.FACTORED, Form.OUT, Form.IN)  # the forms of a chosen module


def form_costs(T: int, o1: int, i1: int, o2: int, i2: int, L1: int, nbytes: int, dev: DeviceModel) -> dict[Form, float]:
    """Modelled seconds of one forward+backward of one large layer's linear in each form: ``materialize``,
    ``factored`` and, where both sides grow, ``out`` and ``in`` (one side produced, the other per token)."""
    mat, fact = costs(T, o1, i1, o2, i2, L1, nbytes, dev)
    out = {Form.MATERIALIZE: mat, Form.FACTORED: fact}
    if o2 > o1 and i2 > i1:
        mix = _gemm(1, o1 * i1, L1, nbytes, dev)
        out[Form.OUT] = 3 * (mix + _gemm(o2 - o1, i1, o1, nbytes, dev)) + 3 * (
            _gemm(T, i1, i2 - i1, nbytes, dev) + _gemm(T, o2, i1, nbytes, dev)
        )
        out[Form.IN] = 3 * (mix + _gemm(o1, i2 - i1, i1, nbytes, dev)) + 3 * (
            _gemm(T, o1, i2, nbytes, dev) + _gemm(T, o2 - o1, o1, nbytes, dev)
        )
    return out


def embedding_costs(
    T: int, rows: int, d1: int, d2: int, heads: int, nbytes: int, dev: DeviceModel
) -> tuple[float, float]:
    """(materialize, factored) modelled seconds of an embedding table ``(rows, d1) -> (rows, d2)`` and the ``heads``
    linear layers tied to it (an LM head), one forward+backward: producing the table against widening the looked-up
    rows and running each head as ``(x B) Wᵀ``."""
    mat = 3 * _gemm(rows, d2 - d1, d1, nbytes, dev) + heads * 3 * _gemm(T, rows, d2, nbytes, dev)
    fact = 3 * _gemm(T, d2 - d1, d1, nbytes, dev)
    fact += heads * 3 * (_gemm(T, d1, d2 - d1, nbytes, dev) + _gemm(T, rows, d1, nbytes, dev))
    return mat, fact


def break_even_tokens(o1: int, i1: int, o2: int, i2: int, L1: int, nbytes: int, dev: DeviceModel) -> int | None:
    """Smallest token count above which materialising is cheaper (doubling, then bisection); None if never."""

    def mat_wins(T: int) -> bool:
        m, f = costs(T, o1, i1, o2, i2, L1, nbytes, dev)
        return m < f

    hi = 1
    while not mat_wins(hi):
        hi *= 2
        if hi > 2**34:
            return None
    lo = hi // 2
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if mat_wins(mid) else (mid, hi)
    return hi


class Scratch:
    """Scratch tensors that every layer's :class:`Mix` is formed into, one per (role, shape, dtype, device), made
    on first use and reused by every layer of one forward and its backward: a mix (and its gradient) lives only
    within the op that forms and reads it, so one tensor per shape serves all layers, and the allocator sees no
    per-layer tensors of that size (formed and freed twice per layer and step, they grew glibc's heap under its
    raised mmap threshold). :func:`layer_factors` makes one per call (one per bound forward): it lives as long as
    the graph that reads it."""

    def __init__(self) -> None:
        self._tensors: dict[tuple, Tensor] = {}

    def get(self, role: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """The scratch tensor for ``role`` of this shape, dtype and device (contents undefined)."""
        key = (role, tuple(shape), dtype, device)
        t = self._tensors.get(key)
        if t is None:
            t = self._tensors[key] = torch.empty(shape, dtype=dtype, device=device)
        return t


@dataclass(frozen=True)
class Mix:
    """One large layer's depth-mixed small weight ``Σ_j depth[j] W[j]`` (o, i), not formed yet: a factored linear forms
    it when it runs and again in its backward, into ``scratch`` (one tensor for every layer), so no layer's mix is
    kept between the two (in memory-lean mode; the mixes of every layer and their gradients were the factored
    step's largest tensors). ``W``: the slot's small weights (L1, o, i), or a global weight as (1, o, i); ``depth``:
    the layer's row of depth coefficients (L1,), or a global weight's fixed scale (1,); ``backend``: the ops' (for
    :meth:`form`); ``scratch``: where a layer's mix is formed (None: a fresh tensor per call)."""

    W: Tensor
    depth: Tensor
    backend: str = "auto"
    scratch: Scratch | None = None

    def form(self) -> Tensor:
        """The mixed weight (o, i), by :func:`ligo_fast.ops.ligo_expand` without widths."""
        return ops.ligo_expand(self.W, self.depth[None], backend=self.backend)[0]


def _mix_into(scratch: Scratch, W: Tensor, depth: Tensor, dtype: torch.dtype) -> Tensor:
    """``Σ_j depth[j] W[j]`` (o, i) in ``dtype``, formed in ``scratch`` (contents valid until its next use),
    accumulated as :func:`ligo_fast.ops.ligo_expand` does (float32 for 16-bit weights) and rounded to W's dtype.
    Not differentiable (:class:`_MixedMatmul` is)."""
    L1, o, i = W.shape
    ct = compute_dtype(W.dtype)
    acc = scratch.get("mix", (o, i), ct, W.device)
    if W.dtype == ct and W.is_contiguous():
        torch.mm(depth.to(ct)[None], W.view(L1, o * i), out=acc.view(1, o * i))
    else:  # 16-bit weights: accumulated in place in float32, no float32 copy of W
        acc.zero_()
        for w, d in zip(W.unbind(0), depth.to(ct).unbind(0), strict=True):
            acc.addcmul_(w, d)
    if ct != W.dtype:  # rounded as the weight ops.ligo_expand returns
        acc = scratch.get("mix_w", (o, i), W.dtype, W.device).copy_(acc)
    return acc if acc.dtype == dtype else scratch.get("mix_x", (o, i), dtype, W.device).copy_(acc)


class _MixedMatmul(torch.autograd.Function):
    """``u @ Mixᵀ`` for a layer's depth mix (:class:`Mix`), formed in its scratch in forward and again in backward:
    autograd keeps ``u``, the small weights and the depth row, not the mix; the mix's gradient is formed in the
    same scratch tensor after it, and reduced at once to the depth row's (and, if they train, the small weights')
    gradient."""

    @staticmethod
    def forward(ctx, u: Tensor, W: Tensor, depth: Tensor, scratch: Scratch) -> Tensor:
        ctx.save_for_backward(u, W, depth)
        ctx.scratch = scratch
        return u @ _mix_into(scratch, W, depth, u.dtype).mT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        u, W, depth = ctx.saved_tensors
        scratch: Scratch = ctx.scratch
        L1, o, i = W.shape
        du = dW = ddepth = None
        if ctx.needs_input_grad[0]:
            du = g @ _mix_into(scratch, W, depth, g.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # the mix's gradient, gᵀ u over every token, in the mix's scratch: du has been computed from it
            gm = scratch.get("mix", (o, i), g.dtype, g.device)
            torch.mm(g.reshape(-1, o).mT, u.reshape(-1, i).to(g.dtype), out=gm)
            ct = compute_dtype(W.dtype)
            gmc = gm.to(ct)
            if ctx.needs_input_grad[2]:  # 16-bit weights: a float32 copy here, as ops.ligo_expand's backward
                ddepth = torch.mv(W.reshape(L1, o * i).to(ct), gmc.view(o * i)).to(depth.dtype)
            if ctx.needs_input_grad[1]:
                dW = (depth.to(ct)[:, None, None] * gmc).to(W.dtype)
        return du, dW, ddepth, None


def _times_t(u: Tensor, w: Tensor | Mix) -> Tensor:
    """``u @ wᵀ``; a :class:`Mix` formed in its scratch when the product runs (and again in its backward), or,
    mixing one small layer (a global weight and its scale), not formed at all: the input is scaled instead."""
    if not isinstance(w, Mix):
        return u @ w.to(u.dtype).mT
    if w.W.shape[0] == 1:
        return (u * w.depth.to(u.dtype)) @ w.W[0].to(u.dtype).mT
    scratch = Scratch() if w.scratch is None else w.scratch
    if not torch.is_grad_enabled():
        return u @ _mix_into(scratch, w.W, w.depth, u.dtype).mT
    return _MixedMatmul.apply(u, w.W, w.depth, scratch)


def factored_linear(
    x: Tensor,
    Wmix: Tensor | Mix,
    E_out: Tensor | None,
    E_in: Tensor | None,
    residual: Tensor | None,
    bias: Tensor | None,
    shared: dict | None = None,
) -> Tensor:
    """``x @ ([I; E_out] Wmix [I; E_in]^T + residual)^T + bias`` without forming the large weight.

    x: (..., i2); Wmix: (o1, i1), or a :class:`Mix` formed per call; E_out: (o2-o1, o1) or None; E_in: (i2-i1, i1)
    or None; residual: (o2, i2).
    shared: a dict that layers reading the same ``x`` with the same ``E_in`` (q/k/v, gate/up) share, so that
    ``x @ B_in`` is computed and kept for backward once, not once per layer; it holds the latest x per E_in.
    """
    dt = x.dtype
    i1 = (Wmix.W if isinstance(Wmix, Mix) else Wmix).shape[-1]
    key = None if E_in is None else (E_in.data_ptr(), tuple(E_in.shape), E_in.dtype)
    hit = shared.get(key) if (shared is not None and key is not None) else None
    if hit is not None and hit[0] is x:
        u = hit[1]
    else:
        u = x[..., :i1]
        if E_in is not None:
            u = u + x[..., i1:] @ E_in.to(dt)
        if shared is not None and key is not None:
            shared[key] = (x, u)  # keeps x alive while cached: its id cannot be reused by another tensor
    v = _times_t(u, Wmix)
    y = v if E_out is None else torch.cat([v, v @ E_out.to(dt).mT], dim=-1)
    if residual is not None:
        y = y + x @ residual.to(dt).mT
    if bias is not None:
        y = y + bias.to(dt)
    return y


def factored_embedding(ids: Tensor, W: Tensor, E_in: Tensor | None, padding_idx: int | None = None) -> Tensor:
    """``F.embedding(ids, W @ [I; E_in]^T, padding_idx)`` without forming the widened table.

    ids: integer tensor; W: (rows, d1); E_in: (d2-d1, d1) or None. As with the produced table, the padding row
    passes no gradient, to W nor to E_in.
    """
    u = F.embedding(ids, W, padding_idx)
    if E_in is None:
        return u
    ext = u @ E_in.to(u.dtype).mT
    if padding_idx is not None and ext.requires_grad:
        ext = torch.where((ids == padding_idx).unsqueeze(-1), ext.detach(), ext)
    return torch.cat([u, ext], dim=-1)


# ---------------------------------------------------------------------------------------------- in a model
def candidates(slots: Sequence[Slot]) -> list[int]:
    """Indices of the slots that can run factored: plain 2-D linears with one part (in the blocks or not), and
    embedding tables outside the blocks whose rows do not grow and that have no residual."""
    out = []
    for i, s in enumerate(slots):
        if len(s.shape_w) != 2 or len(s.e_rows) != 1 or len(s.e_cols) != 1 or s.tied_weight:
            continue
        if (s.mod.kind == LINEAR and not s.mod.transposed) or (
            s.mod.kind == EMBEDDING and not s.layered and s.e_rows[0] is None and s.res_w is None
        ):
            out.append(i)
    return out


def paths(slot: Slot, aliases: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Module paths that run a slot's factors: its layers' modules, then the modules tied to it (an LM head)."""
    names = list(slot.targets_w)
    if not slot.layered:
        names += (aliases or {}).get(slot.targets_w[0], ())
    return [n.rpartition(".")[0] for n in names]


def plain_lookup(embedding: nn.Module) -> bool:
    """An embedding (``nn.Embedding`` or compat's ``FusedEmbedding``) without the options a widened lookup cannot
    reproduce (max_norm renormalises the table in place; scale_grad_by_freq and sparse shape its gradient)."""
    return embedding.max_norm is None and not embedding.scale_grad_by_freq and not embedding.sparse


def module_ok(module: nn.Module, scaled: bool = False) -> bool:
    """Whether a module's forward can be replaced by its factored form (a plain nn.Linear / nn.Embedding).

    An embedding whose class overrides ``forward`` qualifies only when its description declares what the override
    does (``scaled``: ``Module.output_scale``, Gemma's ``lookup * sqrt(hidden)``); any other override is unknown.
    """
    if isinstance(module, nn.Embedding):
        return plain_lookup(module) and (scaled or type(module).forward is nn.Embedding.forward)
    return isinstance(module, nn.Linear)


def choose(
    mode: str,
    slots: Sequence[Slot],
    L1: int,
    tokens: int,
    nbytes: int,
    device: torch.device,
    aliases: Mapping[str, Sequence[str]] | None = None,
    ok: Callable[[Slot], bool] | None = None,
    half: bool = True,
) -> dict[int, Form]:
    """The slots that run factored for a batch of ``tokens`` tokens (``LiGOConfig.linear_mode``), each with its form
    (:data:`FORMS`): ``{slot index: form}``; the slots left out materialise.

    ``aliases``: produced name -> tied names (a tied LM head runs with its embedding's factors); ``ok(slot)``:
    whether the modules of a slot (and of its aliases) can run factored (default: all); ``half``: whether the
    one-side forms may be picked (not in memory-lean mode: they hold a partly produced weight for every layer).
    A pure function of its arguments; :func:`ligo_fast.execution.plan_execution` calls it (and picks no form under
    ``torch.compile``).
    """
    if mode == "materialize":
        return {}
    cands = [i for i in candidates(slots) if ok is None or ok(slots[i])]
    if mode == "factored":
        return dict.fromkeys(cands, Form.FACTORED)
    dev = device_model(device, nbytes)
    plan = {}
    for i in cands:
        s = slots[i]
        if s.res_w is not None:  # a residual makes every factored form cost a full GEMM more
            continue
        (o1, i1), (o2, i2) = s.view_w, s.shape_w
        if s.mod.kind == EMBEDDING:
            heads = len((aliases or {}).get(s.targets_w[0], ()))
            mat, fact = embedding_costs(tokens, o1, i1, i2, heads, nbytes, dev)
            c = {Form.MATERIALIZE: mat, Form.FACTORED: fact}
        else:
            c = form_costs(tokens, o1, i1, o2, i2, L1 if s.layered else 1, nbytes, dev)
            if not half:
                c = {k: v for k, v in c.items() if k in (Form.MATERIALIZE, Form.FACTORED)}
        best = min(c, key=c.get)
        if best != Form.MATERIALIZE:
            plan[i] = best
    return plan


FLOP_COUNTER = DeviceModel(flops=1.0, bandwidth=float("inf"), launch=0.0)
"""A device whose modelled seconds are FLOPs: with it the cost functions above count FLOPs, not time."""


def step_flops(
    slots: Sequence[Slot],
    L1: int,
    tokens: int,
    forms: Mapping[int, str],
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> int:
    """FLOPs of one forward+backward of every 2-D grown weight's layers for ``tokens`` tokens, as this module's
    cost model counts them (:func:`form_costs`, :func:`embedding_costs` on :data:`FLOP_COUNTER`): a slot in
    ``forms`` (``{slot index: form}``, what :func:`choose` returns) runs that form, the others produce their
    weight and run it. Per large layer for block slots. Not counted: 1-D weights (norms, biases: O(width)), the
    attention scores and the elementwise work (the caller's)."""
    total = 0.0
    for i, s in enumerate(slots):
        if len(s.shape_w) != 2 or s.tied_weight:  # a tied head is counted with its embedding
            continue
        (o1, i1), (o2, i2) = s.view_w, s.shape_w
        if s.mod.kind == EMBEDDING:
            heads = len((aliases or {}).get(s.targets_w[0], ()))
            mat, fact = embedding_costs(tokens, o1, i1, i2, heads, 1, FLOP_COUNTER)
            total += fact if i in forms else mat
        else:
            c = form_costs(tokens, o1, i1, o2, i2, L1 if s.layered else 1, 1, FLOP_COUNTER)
            total += len(s.targets_w) * c[forms.get(i, "materialize")]
    return round(total)


def _per_layer(t: Tensor | None, n: int) -> Sequence[Tensor | None]:
    """``t``'s rows for each of ``n`` layers: a 3-D per-layer tensor unbound, a shared one repeated, None as None."""
    if t is not None and t.dim() == 3:
        return t.unbind(0)
    return [t] * n


def layer_factors(
    slots: Sequence[Slot],
    get: Callable[[str | None], Tensor | None],
    aliases: Mapping[str, Sequence[str]] | None = None,
    forms: Mapping[str, Form] | None = None,
    backend: str = "auto",
    recompute: bool = False,
    rows: RowGetter | None = None,
) -> dict[str, tuple[Tensor | Mix, Tensor | None, Tensor | None, Tensor | None]]:
    """Per module of ``slots`` (by its path, :func:`paths`): ``(W, E_out, E_in, residual)``, the arguments of
    :func:`factored_linear` after ``x`` (an embedding reads ``W`` and ``E_in``).

    ``forms``: slot (by :attr:`ligo_fast.plan.Slot.name`) -> form (:data:`FORMS`, default ``factored``).
    ``factored``: W is the layer's depth mix (:func:`ligo_fast.ops.ligo_expand` without widths), one call for all
    the slot's layers, or with ``recompute`` a :class:`Mix` per layer, formed when the layer runs and again in its
    backward, in one :class:`Scratch` for all (memory-lean mode: no layer's mix is kept; costs a small product per
    layer more); outside the blocks the small weight itself, or a Mix of it with the fixed scale (which scales the
    input); ``out`` / ``in``: W is the weight produced on that side only, and the factors keep the other side's E.
    ``backend``: the ops' backend.
    """
    out = {}
    scratch = Scratch()  # every layer's Mix is formed in it
    # each per-layer tensor unbound once for every slot that reads it (gate/up/down share the ffn width matrices):
    # an unbind's backward holds its layers' gradients until the last one arrives, so one unbind per slot held a
    # full-size gradient of the tensor per slot; through one, the slots' gradients of a layer are summed at once
    unbound: dict[tuple[str | None, int], Sequence[Tensor | None]] = {}

    def per_layer(name: str | None, n: int) -> Sequence[Tensor | None]:
        if (name, n) not in unbound:
            held = None if (rows is None or name is None) else rows(name)
            unbound[name, n] = held if held is not None else _per_layer(get(name), n)
        return unbound[name, n]

    for s in slots:
        targets = paths(s, aliases)
        form = (forms or {}).get(s.name, Form.FACTORED)
        n = len(s.targets_w)
        Eo, Ei, R = (per_layer(name, n) for name in (s.e_rows[0], s.e_cols[0], s.res_w))
        W = get(s.w) if s.layered else get(s.w)[None]
        depth = get(s.depth_w) if s.layered else get(s.scale_w)
        if form == Form.FACTORED and depth is None:  # a global weight without a scale: the small weight itself
            Wf = W
        elif form == Form.FACTORED and (recompute or not s.layered):  # formed when it runs (a global: never)
            Wf = [Mix(W, row, backend, scratch) for row in depth.unbind(0)]
        else:
            depth = torch.ones(1, 1, device=W.device) if depth is None else depth
            E_out = get(s.e_rows[0]) if form == Form.OUT else None
            E_in = get(s.e_cols[0]) if form == Form.IN else None
            Wf = ops.ligo_expand(W, depth, E_out, E_in, backend=backend)  # (L2, o, i): one side or none widened
        if form == Form.OUT:
            Eo = [None] * n
        elif form == Form.IN:
            Ei = [None] * n
        # one unbind per tensor, not an index per layer: indexing would make each layer's backward write a zero
        # gradient of the whole (L2, ...) tensor
        layers = list(zip(Wf if isinstance(Wf, list) else Wf.unbind(0), Eo, Ei, R, strict=True))
        for k, path in enumerate(targets):
            out[path] = layers[min(k, n - 1)]  # a tied module (after the slot's own) shares the global factors
    return out


def forwards(
    large: nn.Module,
    slots: Sequence[Slot],
    get: Callable[[str | None], Tensor | None],
    aliases: Mapping[str, Sequence[str]] | None,
    forms: Mapping[int, Form],
    backend: str = "auto",
    recompute: bool = False,
    rows: RowGetter | None = None,
) -> dict[str, Callable]:
    """``{"<module path>.forward": factored forward}`` for every module of the slots in ``forms`` (slot index ->
    form) and the modules tied to them: what :class:`ligo_fast.binding.Binding` installs on ``large``'s modules.
    ``recompute``: each layer's depth mix formed in its call and again in backward; ``rows``: the deferred rows of
    tensors held per layer (:func:`layer_factors`)."""
    if not forms:
        return {}
    chosen = [slots[i] for i in forms]
    by_name = {slots[i].name: form for i, form in forms.items()}
    shared: dict = {}  # x @ B_in, shared by the layers that read the same input (q/k/v, gate/up)
    # the factor a scaled embedding's own forward multiplies by (Module.output_scale of the large width)
    gains = {p: s.mod.output_scale(s.shape_w[-1]) for s in chosen if s.mod.output_scale for p in paths(s)}
    out = {}
    factors = layer_factors(
        chosen, get, aliases=aliases, forms=by_name, backend=backend, recompute=recompute, rows=rows
    )
    for path, (w, eo, ei, r) in factors.items():
        mod = large.get_submodule(path)
        if isinstance(mod, nn.Embedding) or hasattr(mod, "num_embeddings"):  # nn.Embedding or compat's FusedEmbedding
            out[f"{path}.forward"] = partial(_embedding_call, w, ei, mod.padding_idx, gains.get(path))
        else:
            out[f"{path}.forward"] = partial(_linear_call, mod, w, eo, ei, r, shared)
    return out


def _embedding_call(w: Tensor | Mix, ei: Tensor | None, pad: int | None, gain: float | None, ids: Tensor) -> Tensor:
    """An embedding's factored forward (``partial`` of all but ``ids``), scaled as the module's own would be. A
    :class:`Mix` (a fixed scale) is formed here: the lookup keeps only the ids for backward."""
    out = factored_embedding(ids, w.form() if isinstance(w, Mix) else w, ei, pad)
    # as HF does: the factor as a float32 scalar, rounded to the table's dtype
    return out if gain is None else out * torch.tensor(gain).to(out.dtype)


def _linear_call(mod: nn.Module, w, eo, ei, r, shared: dict, x: Tensor) -> Tensor:
    """A linear's factored forward (``partial`` of all but ``x``) with the bias the module holds at the call (a
    produced one is installed as its ``bias``) and the rows of tensors held per layer read now."""
    return factored_linear(x, w, resolve(eo), resolve(ei), resolve(r), getattr(mod, "bias", None), shared)
