"""Grouped launches of the LiGO kernels: each stage of the forward or backward runs once for several problems.

A *problem* is one ``ligo_expand`` (a vector ``ligo_expand_vec`` is a matrix with one column): W (L1, o1, i1) with
its depth (L2, L1) and width matrices. The per-kind launchers (``expand.py``) make 3 launches per matrix forward and
about 9 per backward, one module kind at a time: a BERT-size model's operator fwd+bwd is ~140 launches whose launch
overhead (a few ms) dwarfs its math (a fraction of a ms). Here every stage is one launch for all problems:

    forward:  mix | stage 2 (columns) | stage 3 (rows)
    backward: mix (X) | Y | dE_out | S | dE_in | dWm | layer gradients | d depth (sum of the partials)

with the per-kind algebra (``expand.py``'s docstring), orientation choice (``fwd_flip``, ``bwd_flip``) and tile
helpers (``_ligo_mix_tile``, ``_ligo_gemm_tile``, ``_ligo_layer_grad_dot_part``). A launch's programs are numbered
across its problems; a program finds its problem in a table of int64 rows (its first program, then addresses, sizes
and strides of that problem's tensors: the addresses are cast to pointers in the kernel). The element types and
which strides are 1 are compile-time constants, so a stage splits into one launch per distinct combination (for the
usual model: one, or two when one kind runs in the other orientation). All tables of one op call are built on the
host first and reach the device in one copy (cached by content: in training the same addresses recur).

Differences from the per-kind path: the scratch (X, Y, S) is float32 (16-bit dots still get their operands rounded
to the weights' dtype, as there); a shared-E gradient is one program per dE tile over all layers (no split-K: the
other problems' tiles fill the GPU); Y and S of every problem are alive at once (the grouped path is meant for
launch-bound, small problems). Problems with an empty side or more layers than ``tuning.LAYER_DOT_MAX`` run on the
per-kind launchers, in the same call.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import tuning
from .expand import (
    INTERPRETED,
    _dot_args,
    _layered,
    _ligo_gemm_tile,
    _ligo_layer_grad_dot_part,
    _ligo_mix_tile,
    bwd_canonical,
    expand_bwd,
    expand_fwd,
    fwd_flip,
)

__all__ = ["expand_group_fwd", "expand_group_bwd", "groupable"]

# --------------------------------------------------------------------------------------------- kernels
# Table rows (int64), field by field; the kernels read them at these offsets.
MIX_FIELDS = 16  # start, W, Dp, O, L1, L2, M, N, s_wl, s_wm, s_wn, s_d0, s_d1, s_ol, s_om, s_on
GEMM_FIELDS = 22  # start, A, B, C, D, M, N, K, NL, LPER, s_al s_am s_ak, s_bl s_bk s_bn, s_cl s_cm s_cn, s_dl s_dm s_dn
GRAD_FIELDS = 23  # start, G, W, Dp, DW, PD, nprog, L1, L2, M, N, num_tiles, s_g(3), s_w(3), s_d(2), s_o(3)
SUM_FIELDS = 8  # start, PD, nprog, L1, L2, DD, s_d0, s_d1


@triton.jit
def _problem(T, P, F: tl.constexpr):
    """(this program's table row, its index among its problem's programs): the last of the P rows whose first field
    (the problem's first program; increasing) is <= the program id, by binary search (log2 P loads)."""
    pid = tl.program_id(0)
    lo = pid * 0
    hi = lo + P - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        after = tl.load(T + mid * F) <= pid
        lo = tl.where(after, mid, lo)
        hi = tl.where(after, hi, mid - 1)
    row = T + lo * F
    return row, (pid - tl.load(row)).to(tl.int32)


# The table fields are read inline, not through small @triton.jit helpers: the interpreter pays ~0.4 ms per call of
# a nested jit function (it re-patches triton.language each time), which made a grouped GEMM program ~1.8x as slow as
# a per-kind one there. Strides within a layer are int32, as the per-kind kernels' int arguments (offsets within one
# layer fit; int64 offsets for every element of a tile cost registers); a stride that is 1 for every problem of the
# launch is the constant 1 (``*_M1``, ``*_K1``, ``*_N1``); ``ALIGNED``: every pointer 16-byte aligned and every
# non-unit stride (and a GEMM's M, N, K) a multiple of 8, so the masks keep whole 16-byte vectors (asynchronous
# copies, hence the software pipeline, need them for 16-bit operands).


@triton.jit
def _ligo_group_mix_kernel(
    T, P,
    W_T: tl.constexpr, O_T: tl.constexpr, D_T: tl.constexpr, W_N1: tl.constexpr, O_N1: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """``_ligo_mix_kernel`` for P problems: O[l] = sum_j Dp[l, j] W[j] (rows of ``MIX_FIELDS``)."""
    row, local = _problem(T, P, 16)
    W = tl.load(row + 1).to(tl.pointer_type(W_T))
    Dp = tl.load(row + 2).to(tl.pointer_type(D_T))
    O = tl.load(row + 3).to(tl.pointer_type(O_T))
    s_wl = tl.load(row + 8)
    s_wm = tl.load(row + 9).to(tl.int32)
    s_wn = tl.load(row + 10).to(tl.int32)
    s_ol = tl.load(row + 13)
    s_om = tl.load(row + 14).to(tl.int32)
    s_on = tl.load(row + 15).to(tl.int32)
    if ALIGNED:
        W = tl.multiple_of(W, 16)
        O = tl.multiple_of(O, 16)
        s_wl = tl.multiple_of(s_wl, 8)
        s_wm = tl.multiple_of(s_wm, 8)
        s_ol = tl.multiple_of(s_ol, 8)
        s_om = tl.multiple_of(s_om, 8)
    if W_N1:
        s_wn = 1
    if O_N1:
        s_on = 1
    _ligo_mix_tile(
        W, Dp, O, O,
        tl.load(row + 4).to(tl.int32), tl.load(row + 5).to(tl.int32), tl.load(row + 6).to(tl.int32),
        tl.load(row + 7).to(tl.int32),
        s_wl, s_wm, s_wn, tl.load(row + 11).to(tl.int32), tl.load(row + 12).to(tl.int32), s_ol, s_om, s_on, 0, 0, 0,
        local, False, BLOCK_L, BLOCK_M, BLOCK_N,
    )  # fmt: skip


@triton.jit
def _ligo_group_gemm_kernel(
    T, P,
    A_T: tl.constexpr, B_T: tl.constexpr, C_T: tl.constexpr, D_T: tl.constexpr,
    A_K1: tl.constexpr, A_M1: tl.constexpr, B_N1: tl.constexpr, B_K1: tl.constexpr,
    C_N1: tl.constexpr, D_N1: tl.constexpr, ALIGNED: tl.constexpr,
    HAS_D: tl.constexpr, REDUCE_L: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """``_ligo_gemm_kernel`` for P problems (rows of ``GEMM_FIELDS``): ``C[o] = sum of A[l] @ B[l] (+ D[o])`` over the
    o-th run of LPER layers (LPER = 1: one layer per output; LPER = NL: a shared-E gradient over all layers; some
    problem of the launch has LPER > 1 only when ``REDUCE_L``)."""
    row, local = _problem(T, P, 22)
    A = tl.load(row + 1).to(tl.pointer_type(A_T))
    B = tl.load(row + 2).to(tl.pointer_type(B_T))
    C = tl.load(row + 3).to(tl.pointer_type(C_T))
    D = tl.load(row + 4).to(tl.pointer_type(D_T))
    M = tl.load(row + 5).to(tl.int32)
    N = tl.load(row + 6).to(tl.int32)
    K = tl.load(row + 7).to(tl.int32)
    NL = tl.load(row + 8).to(tl.int32)
    LPER = tl.load(row + 9).to(tl.int32)
    s_al = tl.load(row + 10)
    s_am = tl.load(row + 11).to(tl.int32)
    s_ak = tl.load(row + 12).to(tl.int32)
    s_bl = tl.load(row + 13)
    s_bk = tl.load(row + 14).to(tl.int32)
    s_bn = tl.load(row + 15).to(tl.int32)
    s_cl = tl.load(row + 16)
    s_cm = tl.load(row + 17).to(tl.int32)
    s_cn = tl.load(row + 18).to(tl.int32)
    s_dl = tl.load(row + 19)
    s_dm = tl.load(row + 20).to(tl.int32)
    s_dn = tl.load(row + 21).to(tl.int32)
    if ALIGNED:
        A = tl.multiple_of(A, 16)
        B = tl.multiple_of(B, 16)
        C = tl.multiple_of(C, 16)
        D = tl.multiple_of(D, 16)
        M = tl.multiple_of(M, 8)
        N = tl.multiple_of(N, 8)
        K = tl.multiple_of(K, 8)
        s_al = tl.multiple_of(s_al, 8)
        s_am = tl.multiple_of(s_am, 8)
        s_ak = tl.multiple_of(s_ak, 8)
        s_bl = tl.multiple_of(s_bl, 8)
        s_bk = tl.multiple_of(s_bk, 8)
        s_bn = tl.multiple_of(s_bn, 8)
        s_cl = tl.multiple_of(s_cl, 8)
        s_cm = tl.multiple_of(s_cm, 8)
        s_cn = tl.multiple_of(s_cn, 8)
        s_dl = tl.multiple_of(s_dl, 8)
        s_dm = tl.multiple_of(s_dm, 8)
        s_dn = tl.multiple_of(s_dn, 8)
    if A_M1:
        s_am = 1
    if A_K1:
        s_ak = 1
    if B_K1:
        s_bk = 1
    if B_N1:
        s_bn = 1
    if C_N1:
        s_cn = 1
    if D_N1:
        s_dn = 1
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_out = num_m * num_n
    o = local // per_out
    t = local - o * per_out
    pid_m = t // num_n
    pid_n = t - pid_m * num_n
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    l_lo = o * LPER
    n_l = tl.minimum(NL, l_lo + LPER) - l_lo
    _ligo_gemm_tile(
        A, B, C, D, rm, rn, l_lo, n_l, o.to(tl.int64), M, N, K,
        s_al, s_am, s_ak, s_bl, s_bk, s_bn, s_cl, s_cm, s_cn, s_dl, s_dm, s_dn,
        HAS_D, REDUCE_L, DOT, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip


@triton.jit
def _ligo_group_layer_grad_kernel(
    T, P,
    G_T: tl.constexpr, W_T: tl.constexpr, D_T: tl.constexpr, DW_T: tl.constexpr,
    G_N1: tl.constexpr, W_N1: tl.constexpr,
    HAS_DW: tl.constexpr, HAS_PD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_J: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """``_ligo_layer_grad_dot_kernel`` for P problems (rows of ``GRAD_FIELDS``): each problem has its own programs
    (``nprog``) and its own block of float32 partials ``PD`` (nprog, BLOCK_L, BLOCK_J)."""
    row, local = _problem(T, P, 23)
    s_gn = tl.load(row + 14).to(tl.int32)
    s_wn = tl.load(row + 17).to(tl.int32)
    if G_N1:
        s_gn = 1
    if W_N1:
        s_wn = 1
    _ligo_layer_grad_dot_part(
        tl.load(row + 1).to(tl.pointer_type(G_T)), tl.load(row + 2).to(tl.pointer_type(W_T)),
        tl.load(row + 3).to(tl.pointer_type(D_T)), tl.load(row + 4).to(tl.pointer_type(DW_T)),
        tl.load(row + 5).to(tl.pointer_type(tl.float32)),
        tl.load(row + 7).to(tl.int32), tl.load(row + 8).to(tl.int32), tl.load(row + 9).to(tl.int32),
        tl.load(row + 10).to(tl.int32), tl.load(row + 11).to(tl.int32),
        tl.load(row + 12), tl.load(row + 13).to(tl.int32), s_gn,
        tl.load(row + 15), tl.load(row + 16).to(tl.int32), s_wn,
        tl.load(row + 18), tl.load(row + 19),
        tl.load(row + 20), tl.load(row + 21).to(tl.int32), tl.load(row + 22).to(tl.int32),
        local, tl.load(row + 6).to(tl.int32), HAS_DW, HAS_PD, PRECISION, BLOCK_J, BLOCK_L, BLOCK_T,
    )  # fmt: skip


@triton.jit
def _ligo_group_depth_sum_kernel(T, P, DD_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_L: tl.constexpr):
    """d depth of P problems, one program each (rows of ``SUM_FIELDS``): DD[l, j] = sum over the problem's
    layer-gradient programs of PD[program, l, j]."""
    row, _ = _problem(T, P, 8)
    PD = tl.load(row + 1).to(tl.pointer_type(tl.float32))
    nprog = tl.load(row + 2).to(tl.int32)
    L1 = tl.load(row + 3).to(tl.int32)
    L2 = tl.load(row + 4).to(tl.int32)
    DD = tl.load(row + 5).to(tl.pointer_type(DD_T))
    rl = tl.arange(0, BLOCK_L)
    rj = tl.arange(0, BLOCK_J)
    tile = rl[:, None] * BLOCK_J + rj[None, :]
    acc = tl.zeros((BLOCK_L, BLOCK_J), dtype=tl.float32)
    for i in range(0, nprog):
        acc += tl.load(PD + i * (BLOCK_L * BLOCK_J) + tile)
    mask = (rl < L2)[:, None] & (rj < L1)[None, :]
    tl.store(DD + rl[:, None] * tl.load(row + 6) + rj[None, :] * tl.load(row + 7), acc.to(DD_T), mask=mask)


# ------------------------------------------------------------------------------------------------ tables

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_TABLES: OrderedDict = OrderedDict()  # (device, row values) -> the table on the device
_TABLES_MAX = 64


def _device_table(values: list[int], device: torch.device) -> Tensor:
    """The int64 table on ``device``. CPU and meta: built in place. CUDA: looked up by content first (the same
    tensors at the same addresses recur every training step), else copied from pinned memory without a sync."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=torch.int64, device=device)
    key = (device, tuple(values))
    t = _TABLES.get(key)
    if t is None:
        t = torch.tensor(values, dtype=torch.int64).pin_memory().to(device, non_blocking=True)
        _TABLES[key] = t
        if len(_TABLES) > _TABLES_MAX:
            _TABLES.popitem(last=False)
    else:
        _TABLES.move_to_end(key)
    return t


class _Batch:
    """The grouped launches of one op call, in order; their tables are built first and reach the device at once."""

    def __init__(self, device: torch.device):
        self.device = device
        self.launches: list = []  # (kernel, rows, programs, constexpr and launch options)
        self.values: list[int] = []  # every row of every launch, in order
        self.alive: list[Tensor] = []  # buffers only the tables point to, kept until the launches are queued

    def add(self, kernel, fields: int, entries: list, options: dict) -> None:
        """entries: (row without its first field, programs); one launch for all of them."""
        start = 0
        for row, nprog in entries:
            assert len(row) + 1 == fields
            self.values.append(start)
            self.values.extend(row)
            start += nprog
        if start:
            self.launches.append((kernel, len(entries) * fields, len(entries), start, options))
        else:
            del self.values[len(self.values) - len(entries) * fields :]

    def run(self) -> None:
        if not self.launches:
            return
        table = _device_table(self.values, self.device)
        offset = 0
        for kernel, size, n_rows, programs, options in self.launches:
            kernel[(programs,)](table[offset:], n_rows, **options)
            offset += size


def _by(entries: list, key) -> dict:
    groups: dict = {}
    for e in entries:
        groups.setdefault(key(e), []).append(e)
    return groups


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # not triton.cdiv: a host-side call of it costs microseconds (constexpr unwrapping)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class _T:
    """What the tables need of a tensor, read once: address, shape, strides, dtype, and whether it is aligned
    (16-byte address, every non-unit stride a multiple of 8 elements)."""

    __slots__ = ("ptr", "shape", "st", "dtype", "aligned")

    def __init__(self, t: Tensor):
        self.ptr = t.data_ptr()
        self.shape = t.shape
        self.st = t.stride()
        self.dtype = t.dtype
        # the interpreter ignores the alignment hints: never claimed there, fewer interpreted ops per program
        self.aligned = not INTERPRETED and self.ptr % 16 == 0 and all(x % 8 == 0 for x in self.st if x != 1)


@functools.lru_cache(maxsize=64)
def _gemm_cfg(M: int, N: int, sixteen_bit: bool) -> tuple:
    return tuple(sorted(tuning.gemm_heuristic(M, N, sixteen_bit, INTERPRETED).items()))


def _add_mix(batch: _Batch, entries: list) -> None:
    """entries: (O, W, depth): O[l] = sum_j depth[l, j] W[j]; O: (L2, M, N), W: (L1, M, N)."""
    groups: dict = {}
    for O, W, depth in entries:
        O, W, depth = _T(O), _T(W), _T(depth)
        bl = 4 if INTERPRETED else min(8, _pow2(O.shape[0]))
        key = (O.dtype, W.dtype, depth.dtype, W.st[2] == 1, O.st[2] == 1, O.aligned and W.aligned, bl)
        groups.setdefault(key, []).append((O, W, depth))
    bm, bn, warps = (32, 32, 4) if INTERPRETED else (16, 64, 4)
    for (o_dt, w_dt, d_dt, w_n1, o_n1, aligned, bl), group in groups.items():
        rows = []
        for O, W, depth in group:
            L2, M, N = O.shape
            nprog = _cdiv(L2, bl) * _cdiv(M, bm) * _cdiv(N, bn)
            rows.append(((W.ptr, depth.ptr, O.ptr, W.shape[0], L2, M, N, *W.st, *depth.st, *O.st), nprog))
        opts = dict(W_T=_TL[w_dt], O_T=_TL[o_dt], D_T=_TL[d_dt], W_N1=w_n1, O_N1=o_n1, ALIGNED=aligned,
                    BLOCK_L=bl, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)  # fmt: skip
        batch.add(_ligo_group_mix_kernel, MIX_FIELDS, rows, opts)


def _add_gemm(batch: _Batch, entries: list, dot: tuple[int, str]) -> None:
    """entries: (C, A, B, D or None, reduce): ``C[l] = A[l] @ B[l] (+ D[l])``, or with reduce ``C[0] = sum over l``.
    A: (L, M, K), B: (L, K, N), C and D: (L or 1, M, N); any strides (0 for shared)."""
    code, precision = dot
    groups: dict = {}
    for C, A, B, D, reduce in entries:
        has_d = D is not None
        C, A, B = _T(C), _T(A), _T(B)
        D = _T(D) if has_d else C
        L, M, K = A.shape
        N = B.shape[2]
        # the tile from the problem's own sizes: its numbers do not depend on what it is grouped with
        cfg = _gemm_cfg(M, N, code != 0)
        units = (A.st[2] == 1, A.st[1] == 1 != A.st[2], B.st[2] == 1, B.st[1] == 1 != B.st[2], C.st[2] == 1,
                 D.st[2] == 1)  # fmt: skip
        aligned = A.aligned and B.aligned and C.aligned and D.aligned and M % 8 == 0 and N % 8 == 0 and K % 8 == 0
        key = (A.dtype, B.dtype, C.dtype, D.dtype, has_d, *units, aligned, reduce and L > 1, cfg)
        groups.setdefault(key, []).append((C, A, B, D, reduce, L, M, N, K))
    for sig, group in groups.items():
        a_dt, b_dt, c_dt, d_dt, has_d, a_k1, a_m1, b_n1, b_k1, c_n1, d_n1, aligned, reduce_l, cfg = sig
        cfg = dict(cfg)
        bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
        rows = []
        for C, A, B, D, reduce, L, M, N, K in group:
            nprog = (1 if reduce else L) * _cdiv(M, bm) * _cdiv(N, bn)
            row = (A.ptr, B.ptr, C.ptr, D.ptr, M, N, K, L, L if reduce else 1, *A.st, *B.st, *C.st, *D.st)
            rows.append((row, nprog))
        opts = dict(A_T=_TL[a_dt], B_T=_TL[b_dt], C_T=_TL[c_dt], D_T=_TL[d_dt], A_K1=a_k1, A_M1=a_m1, B_N1=b_n1,
                    B_K1=b_k1, C_N1=c_n1, D_N1=d_n1, ALIGNED=aligned, HAS_D=has_d, REDUCE_L=reduce_l, DOT=code,
                    PRECISION=precision, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"],
                    num_stages=cfg["num_stages"])  # fmt: skip
        batch.add(_ligo_group_gemm_kernel, GEMM_FIELDS, rows, opts)


def groupable(W: Tensor, depth: Tensor, E_out: Tensor | None, E_in: Tensor | None) -> bool:
    """Whether a problem runs on the grouped launches (else on the per-kind launchers): no empty side, float16,
    bfloat16 or float32, few enough layers for the layer gradients' two-product kernel, and an output of at most
    ``tuning.GROUP_MAX_ELEMENTS`` elements (larger problems are not launch-bound)."""
    L1, L2 = W.shape[0], depth.shape[0]
    o2 = W.shape[1] + (0 if E_out is None else E_out.shape[-2])
    i2 = W.shape[2] + (0 if E_in is None else E_in.shape[-2])
    return (
        all(t.dtype in _TL for t in (W, depth, E_out, E_in) if t is not None)
        and min(W.shape) > 0
        and L2 > 0
        and L1 <= tuning.LAYER_DOT_MAX
        and L2 <= tuning.LAYER_DOT_MAX
        and L2 * o2 * i2 <= tuning.GROUP_MAX_ELEMENTS
    )


# -------------------------------------------------------------------------------------------- launchers


def expand_group_fwd(
    Ws: list[Tensor], depths: list[Tensor], E_outs: list[Tensor | None], E_ins: list[Tensor | None]
) -> list[Tensor]:
    """``expand_fwd`` of every problem (a 2-D W (L1, o1) is a vector: ``expand_vec_fwd`` without residual), in 3
    grouped stages (each one launch per distinct tile, stride and alignment pattern; fewer when no problem widens a
    side). Returns (L2, o2, i2), or (L2, o2) for a vector, per
    problem, in its W's dtype. The grouped problems share one W dtype (:func:`expand_group_bwd` too)."""
    if not Ws:
        return []
    batch = _Batch(Ws[0].device)
    mixes, cols, rows_, outs = [], [], [], []
    dot = None
    for W, depth, E_out, E_in in zip(Ws, depths, E_outs, E_ins, strict=True):
        vec = W.dim() == 2
        W3 = W.unsqueeze(-1) if vec else W
        L1, o1, i1 = W3.shape
        L2 = depth.shape[0]
        Eo, Ei = _layered(E_out, L2), _layered(E_in, L2)
        o2 = o1 + (0 if Eo is None else Eo.shape[1])
        i2 = i1 + (0 if Ei is None else Ei.shape[1])
        if not groupable(W3, depth, E_out, E_in):
            out = expand_fwd(W3, depth, E_out, E_in, None)
            outs.append(out.squeeze(-1) if vec else out)
            continue
        dot = dot or _dot_args(W.dtype)
        out = torch.empty((L2, o2, i2), dtype=W.dtype, device=W.device)
        outs.append(out.squeeze(-1) if vec else out)
        if Eo is None and Ei is None:
            mixes.append((out, W3, depth))
            continue
        mixes.append((out[:, :o1, :i1], W3, depth))
        if fwd_flip(Eo, Ei, o1, i1):
            Oc, Eoc, Eic, o1c, i1c = out.mT, Ei, Eo, i1, o1
        else:
            Oc, Eoc, Eic, o1c, i1c = out, Eo, Ei, o1, i1
        if Eic is not None:
            cols.append((Oc[:, :o1c, i1c:], Oc[:, :o1c, :i1c], Eic.mT, None, False))
        rows_.append((Oc[:, o1c:, :], Eoc, Oc[:, :o1c, :], None, False))
    _add_mix(batch, mixes)
    if dot is not None:
        _add_gemm(batch, cols, dot)
        _add_gemm(batch, rows_, dot)
    batch.run()
    return outs


def expand_group_bwd(
    grads: list[Tensor],
    Ws: list[Tensor],
    depths: list[Tensor],
    E_outs: list[Tensor | None],
    E_ins: list[Tensor | None],
    need_W: list[bool],
    need_depth: list[bool],
    need_E_out: list[bool],
    need_E_in: list[bool],
) -> tuple[list, list, list, list]:
    """Gradients of :func:`expand_group_fwd` per problem: lists (dW, d depth, dE_out, dE_in), None where not needed
    (or where the E is None or has no rows), in 8 grouped stages (as :func:`expand_group_fwd`'s)."""
    P = len(Ws)
    dW, dd, dEo, dEi = [None] * P, [None] * P, [None] * P, [None] * P
    if not P:
        return dW, dd, dEo, dEi
    device = Ws[0].device
    batch = _Batch(device)
    mixes, ys, deos, ss, deis, dwms, grads_ = [], [], [], [], [], [], []
    dot = None
    for p in range(P):
        W, depth, E_out, E_in, grad = Ws[p], depths[p], E_outs[p], E_ins[p], grads[p]
        vec = W.dim() == 2
        W3, G3 = (W.unsqueeze(-1), grad.unsqueeze(-1)) if vec else (W, grad)
        L1, o1, i1 = W3.shape
        L2 = depth.shape[0]
        Eo, Ei = _layered(E_out, L2), _layered(E_in, L2)
        need_o, need_i = need_E_out[p] and Eo is not None, need_E_in[p] and Ei is not None
        need_dWm = need_W[p] or need_depth[p]
        if not (need_dWm or need_o or need_i):
            continue
        if not groupable(W3, depth, E_out, E_in):
            sdt = torch.float32 if vec else None  # the vector backward's float32 scratch (expand_vec_bwd)
            g = expand_bwd(G3, W3, depth, E_out, E_in, need_W[p], need_depth[p], need_o, need_i, sdt)
            dW[p], dd[p], dEo[p], dEi[p] = (g[0].squeeze(-1) if vec and g[0] is not None else g[0]), *g[1:]
            continue
        dot = dot or _dot_args(W.dtype)
        dWm = G3
        if Eo is not None or Ei is not None:
            X = torch.empty((L2, o1, i1), dtype=torch.float32, device=device)
            mixes.append((X, W3, depth))
            flip, Gc, Xc, Eoc, Eic, o1c, i1c, shared_o, shared_i, need_oc, need_ic = bwd_canonical(
                G3, X, E_out, E_in, Eo, Ei, o1, i1, need_o, need_i
            )
            dEoc = dEic = None
            if Eoc is not None and need_oc:
                if Eic is not None:
                    Y = torch.empty((L2, Eoc.shape[1], i1c), dtype=torch.float32, device=device)
                    ys.append((Y, Gc[:, o1c:, i1c:], Eic, Gc[:, o1c:, :i1c], False))
                else:
                    Y = Gc[:, o1c:, :]
                edt = (Ei if flip else Eo).dtype
                dEoc = torch.empty((1 if shared_o else L2, Eoc.shape[1], o1c), dtype=edt, device=device)
                deos.append((dEoc, Y, Xc.mT, None, shared_o))
            if (Eic is not None and need_ic) or need_dWm:
                if Eoc is not None:
                    S = torch.empty((L2, o1c, Gc.shape[2]), dtype=torch.float32, device=device)
                    ss.append((S, Eoc.mT, Gc[:, o1c:, :], Gc[:, :o1c, :], False))
                else:
                    S = Gc
                if Eic is not None and need_ic:
                    edt = (Eo if flip else Ei).dtype
                    dEic = torch.empty((1 if shared_i else L2, Eic.shape[1], i1c), dtype=edt, device=device)
                    deis.append((dEic, S[:, :, i1c:].mT, Xc, None, shared_i))
                if need_dWm:
                    if Eic is not None:
                        dwms.append((Xc, S[:, :, i1c:], Eic, S[:, :, :i1c], False))  # X is dead: dWm goes over it
                        dWm = X
                    else:
                        dWm = S.mT if flip else S
            dEoc = None if dEoc is None else (dEoc[0] if shared_o else dEoc)
            dEic = None if dEic is None else (dEic[0] if shared_i else dEic)
            dEo[p], dEi[p] = (dEic, dEoc) if flip else (dEoc, dEic)
        if need_dWm:
            grads_.append((p, dWm, W3, depth, vec))
    _add_mix(batch, mixes)
    if dot is not None:
        for stage in (ys, deos, ss, deis, dwms):
            _add_gemm(batch, stage, dot)
    _add_layer_grads(batch, grads_, need_W, need_depth, dW, dd)
    batch.run()
    return dW, dd, dEo, dEi


def _add_layer_grads(batch: _Batch, entries: list, need_W: list[bool], need_depth: list[bool], dW: list,
                     dd: list) -> None:  # fmt: skip
    """dW = depth^T @ dWm and d depth[l, j] = <dWm[l], W[j]> of each entry (p, dWm, W, depth, vec): the layer-gradient
    launch(es), then the sum of each problem's partials; fills dW[p] and dd[p]."""
    if not entries:
        return
    device = batch.device
    cap = 4 if INTERPRETED else 4 * torch.cuda.get_device_properties(device).multi_processor_count
    plans = []  # per entry: layer and small-layer blocks, tile, programs (from its own sizes, as in _layer_grads)
    for _, G, W, _, _ in entries:
        bj, bl = max(16, _pow2(W.shape[0])), max(16, _pow2(G.shape[0]))
        bt = 64 if INTERPRETED else max(32, min(64, 1024 // bl))
        plans.append((bj, bl, bt, min(_cdiv(G.shape[1] * G.shape[2], bt), cap)))
    sizes = [n * bl * bj if need_depth[e[0]] else 0 for e, (bj, bl, _, n) in zip(entries, plans, strict=True)]
    pd = torch.empty(max(sum(sizes), 1), dtype=torch.float32, device=device)  # every problem's partials
    batch.alive.append(pd)
    grads, sums, first = [], [], 0
    for (p, G, W, depth, vec), (bj, bl, bt, nprog), size in zip(entries, plans, sizes, strict=True):
        L2, M, N = G.shape
        L1 = W.shape[0]
        out = torch.empty_like(W, memory_format=torch.contiguous_format) if need_W[p] else W
        if need_W[p]:
            dW[p] = out.squeeze(-1) if vec else out
        part = pd[first:]
        first += size
        if need_depth[p]:
            dd[p] = torch.empty((L2, L1), dtype=depth.dtype, device=device)
            sums.append(((part.data_ptr(), nprog, L1, L2, dd[p].data_ptr(), *dd[p].stride()), 1, (dd[p].dtype, bj, bl)))
        row = (G.data_ptr(), W.data_ptr(), depth.data_ptr(), out.data_ptr(), part.data_ptr(), nprog, L1, L2, M, N,
               _cdiv(M * N, bt), *G.stride(), *W.stride(), *depth.stride(), *out.stride())  # fmt: skip
        key = (G.dtype, W.dtype, depth.dtype, out.dtype, G.stride(2) == 1, W.stride(2) == 1, need_W[p], need_depth[p],
               bj, bl, bt)  # fmt: skip
        grads.append((key, row, nprog))
    for key, group in _by(grads, lambda e: e[0]).items():
        g_dt, w_dt, d_dt, o_dt, g_n1, w_n1, has_dw, has_pd, bj, bl, bt = key
        opts = dict(G_T=_TL[g_dt], W_T=_TL[w_dt], D_T=_TL[d_dt], DW_T=_TL[o_dt], G_N1=g_n1, W_N1=w_n1, HAS_DW=has_dw,
                    HAS_PD=has_pd, PRECISION=tuning.fp32_precision(INTERPRETED), BLOCK_J=bj, BLOCK_L=bl, BLOCK_T=bt,
                    num_warps=4)  # fmt: skip
        batch.add(_ligo_group_layer_grad_kernel, GRAD_FIELDS, [(r, n) for _, r, n in group], opts)
    for (dt, bj, bl), group in _by(sums, lambda e: e[2]).items():
        opts = dict(DD_T=_TL[dt], BLOCK_J=bj, BLOCK_L=bl, num_warps=4)
        batch.add(_ligo_group_depth_sum_kernel, SUM_FIELDS, [(r, n) for r, n, _ in group], opts)
