"""Triton kernels for the LiGO growth operator, and their launchers.

Math (see ``ligo_fast.reference``): ``out[l] = B_out[l] @ Wm[l] @ B_in[l]^T (+ residual[l])`` with
``Wm[l] = sum_j depth[l, j] W[j]``, ``B_out = [I; E_out]``, ``B_in = [I; E_in]``. Every launch covers all
L2 layers of a module kind (a grid axis over layers; for a shared-E gradient, runs of layers
per program whose fp32 partials are summed after: split-K over layers, ``tuning.layer_split``).

Forward, in the *canonical orientation* (the side expanded first is the columns; the mirrored case runs
the same kernels on transposed views, so the layout costs nothing):

1. ``_ligo_mix_kernel``: ``out[:, :o1, :i1] = depth @ W`` over the layer axis, fp32 FMAs (memory-bound).
2. ``_ligo_gemm_kernel``: ``out[:, :o1, i1:] = out[:, :o1, :i1] @ E_in^T`` (skipped when E_in is None).
3. ``_ligo_gemm_kernel``: ``out[:, o1:, :] = E_out @ out[:, :o1, :] (+ residual)``; with a residual, each
   program owns a column strip and adds the residual to the strip's top rows after its last read of them,
   so the residual is fused without a race and without a fourth pass.

The output is written once, in place; the only reads of it are stages 2-3 reading the top block.

Backward, ``G = dOut``, in a canonical orientation chosen to make the scratch smallest:

    X  = mix(W)                                    recomputed Wm (scratch, (L2, o1, i1))
    Y  = G[o1:, :i1] + G[o1:, i1:] @ E_in          = G_B B_in (scratch)
    dE_out = Y @ X^T                               (summed over layers when E_out is shared)
    S  = G[:o1, :] + E_out^T @ G[o1:, :]           = B_out^T G (scratch, Y's memory reused)
    dE_in  = S[:, i1:]^T @ X
    dWm    = S[:, :i1] + S[:, i1:] @ E_in          written over X
    dW = depth^T @ dWm, d depth = dWm . W          one pass: ``_ligo_layer_grad_dot_kernel`` (two tl.dot per
                                                   tile) up to 64 layers each side, ``_ligo_layer_grad_kernel`` beyond

Accumulation is fp32 everywhere; dot operands are in W's dtype for 16-bit W (tensor cores), fp32 otherwise: on
the tensor cores as ``tf32x3`` (three TF32 products, near-fp32 accuracy), ``tf32`` when
``torch.backends.cuda.matmul.allow_tf32`` is set (as PyTorch's own matmul); ``tuning.fp32_precision``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import tuning

__all__ = ["expand_fwd", "expand_bwd", "expand_vec_fwd", "expand_vec_bwd", "INTERPRETED"]


# --------------------------------------------------------------------------------------------- kernels


@triton.jit
def _ligo_mix_kernel(
    W, Dp, O, R,
    L1, L2, M, N,
    s_wl, s_wm, s_wn,
    s_d0, s_d1,
    s_ol, s_om, s_on,
    s_rl, s_rm, s_rn,
    HAS_R: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """O[l, m, n] = sum_j Dp[l, j] * W[j, m, n] (+ R[l, m, n]) for a block of layers and a tile of (m, n)."""
    _ligo_mix_tile(
        W, Dp, O, R, L1, L2, M, N, s_wl, s_wm, s_wn, s_d0, s_d1, s_ol, s_om, s_on, s_rl, s_rm, s_rn,
        tl.program_id(0), HAS_R, BLOCK_L, BLOCK_M, BLOCK_N,
    )  # fmt: skip


@triton.jit
def _ligo_mix_tile(
    W, Dp, O, R,
    L1, L2, M, N,
    s_wl, s_wm, s_wn,
    s_d0, s_d1,
    s_ol, s_om, s_on,
    s_rl, s_rm, s_rn,
    pid,
    HAS_R: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The work of ``_ligo_mix_kernel``'s program ``pid`` (also one program of a grouped launch)."""
    num_lb = tl.cdiv(L2, BLOCK_L)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_l = pid % num_lb  # layer blocks of one tile run next to each other: W's tile is reused from cache
    tile = pid // num_lb
    pid_m = tile // num_n
    pid_n = tile % num_n
    rl = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_mn = (rm[:, None] < M) & (rn[None, :] < N)
    lmask = rl < L2
    acc = tl.zeros((BLOCK_L, BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_ptrs = W + rm[:, None] * s_wm + rn[None, :] * s_wn
    d_ptrs = Dp + rl.to(tl.int64) * s_d0
    for _j in range(0, L1):
        w = tl.load(w_ptrs, mask=mask_mn, other=0.0).to(tl.float32)
        d = tl.load(d_ptrs, mask=lmask, other=0.0).to(tl.float32)
        acc += d[:, None, None] * w[None, :, :]
        w_ptrs += s_wl
        d_ptrs += s_d1
    mask = lmask[:, None, None] & mask_mn[None, :, :]
    rl64 = rl.to(tl.int64)[:, None, None]
    if HAS_R:
        r_ptrs = R + rl64 * s_rl + rm[None, :, None] * s_rm + rn[None, None, :] * s_rn
        acc += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    o_ptrs = O + rl64 * s_ol + rm[None, :, None] * s_om + rn[None, None, :] * s_on
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=mask)


@triton.jit
def _ligo_gemm_tile(
    A, B, C, D,
    rm, rn, l_lo, n_l, out_l,
    M, N, K,
    s_al, s_am, s_ak,
    s_bl, s_bk, s_bn,
    s_cl, s_cm, s_cn,
    s_dl, s_dm, s_dn,
    HAS_D: tl.constexpr, REDUCE_L: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """``C[out_l][rm, rn] = sum over layers l_lo .. l_lo + n_l - 1 of A[l][rm, :] @ B[l][:, rn] (+ D[out_l][rm, rn])``.

    One loop over the (layer, K tile) pairs, not a K loop per layer: the software pipeline (``num_stages``) then
    fetches the next layer's first K tiles while this layer's last ones are multiplied, instead of draining and
    refilling at every layer. The dots accumulate in the same order as a K loop nested in a layer loop.
    """
    rk = tl.arange(0, BLOCK_K)
    n_k = tl.cdiv(K, BLOCK_K)
    a_tile = A + rm[:, None] * s_am + rk[None, :] * s_ak
    b_tile = B + rk[:, None] * s_bk + rn[None, :] * s_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in range(0, n_l * n_k):
        if REDUCE_L:
            dl = it // n_k
            k0 = (it - dl * n_k) * BLOCK_K
        else:  # one layer
            dl = 0
            k0 = it * BLOCK_K
        l64 = (l_lo + dl).to(tl.int64)
        k64 = k0.to(tl.int64)
        a = tl.load(a_tile + (l64 * s_al + k64 * s_ak), mask=(rm[:, None] < M) & (rk[None, :] < K - k0), other=0.0)
        b = tl.load(b_tile + (l64 * s_bl + k64 * s_bk), mask=(rk[:, None] < K - k0) & (rn[None, :] < N), other=0.0)
        if DOT == 1:
            a = a.to(tl.float16)
            b = b.to(tl.float16)
        elif DOT == 2:
            a = a.to(tl.bfloat16)
            b = b.to(tl.bfloat16)
        else:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_D:
        d_ptrs = D + out_l * s_dl + rm[:, None] * s_dm + rn[None, :] * s_dn
        acc += tl.load(d_ptrs, mask=mask, other=0.0).to(tl.float32)
    c_ptrs = C + out_l * s_cl + rm[:, None] * s_cm + rn[None, :] * s_cn
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=mask)


@triton.jit
def _ligo_gemm_kernel(
    A, B, C, D, T, R,
    M, N, K, NL, MT, LPER,
    s_al, s_am, s_ak,
    s_bl, s_bk, s_bn,
    s_cl, s_cm, s_cn,
    s_dl, s_dm, s_dn,
    s_tl, s_tm, s_tn,
    s_rl, s_rm, s_rn,
    HAS_D: tl.constexpr, STRIP: tl.constexpr, REDUCE_L: tl.constexpr,
    DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Batched ``C[l] = A[l] @ B[l] (+ D[l])`` over layers l (grid axis 1), fp32 accumulation.

    REDUCE_L: ``C[s] = sum of A[l] @ B[l] over the s-th run of LPER layers`` (a shared-E gradient, split-K over
    layers: grid axis 1 is s; one run of all NL layers when C is the gradient itself, else C holds fp32 partials).
    STRIP: each program owns a column strip of C (all M tiles) and, after them, adds R to the strip of T
    (``T[l][:MT, strip] += R[l][:MT, strip]``): the residual of the rows that B read, fused race-free.
    DOT: operand dtype, 0 fp32, 1 fp16, 2 bf16. Each output tile is one flat (layer, K tile) loop (``_ligo_gemm_tile``);
    STRIP's loop over its M tiles is flattened into it too (``tl.range(flatten=True)``: the compiler fuses the nest
    into one pipelined loop, each tile's epilogue predicated on its last iteration, with the next tile's first loads
    already in flight).
    """
    pid = tl.program_id(0)
    pid_l = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    if REDUCE_L:
        l_lo = pid_l * LPER
        n_l = tl.minimum(NL, l_lo + LPER) - l_lo
    else:
        l_lo = pid_l
        n_l = 1
    out_l = pid_l.to(tl.int64)
    if STRIP:
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        for pm in tl.range(0, num_m, flatten=True):
            rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
            _ligo_gemm_tile(
                A, B, C, D, rm, rn, l_lo, n_l, out_l, M, N, K,
                s_al, s_am, s_ak, s_bl, s_bk, s_bn, s_cl, s_cm, s_cn, s_dl, s_dm, s_dn,
                HAS_D, REDUCE_L, DOT, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
            )  # fmt: skip
        # every read of T's strip by this launch was done above, by this program
        for pm in range(0, tl.cdiv(MT, BLOCK_M)):
            rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
            mask = (rm[:, None] < MT) & (rn[None, :] < N)
            t_ptrs = T + out_l * s_tl + rm[:, None] * s_tm + rn[None, :] * s_tn
            r_ptrs = R + out_l * s_rl + rm[:, None] * s_rm + rn[None, :] * s_rn
            t = tl.load(t_ptrs, mask=mask, other=0.0).to(tl.float32)
            t += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
            tl.store(t_ptrs, t.to(T.dtype.element_ty), mask=mask)
    else:
        # grouped tile order: GROUP_M row tiles share each B column tile while it is in L2 cache
        num_n = tl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_n
        first_m = (pid // group) * GROUP_M
        gsize = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % gsize
        pid_n = (pid % group) // gsize
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        _ligo_gemm_tile(
            A, B, C, D, rm, rn, l_lo, n_l, out_l, M, N, K,
            s_al, s_am, s_ak, s_bl, s_bk, s_bn, s_cl, s_cm, s_cn, s_dl, s_dm, s_dn,
            HAS_D, REDUCE_L, DOT, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip


@triton.jit
def _ligo_layer_grad_kernel(
    G, W, Dp, DW, PD,
    L1, L2, M, N, num_tiles,
    s_gl, s_gm, s_gn,
    s_wl, s_wm, s_wn,
    s_d0, s_d1,
    s_ol, s_om, s_on,
    HAS_DW: tl.constexpr, HAS_PD: tl.constexpr,
    BLOCK_J: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """Gradients through the depth mix, reading dWm (G) and W once.

    DW[j] = sum_l Dp[l, j] G[l]  (one tile of (M, N) flattened to BLOCK_T elements per step),
    PD[program, l, j] = sum over this program's tiles of <G[l], W[j]>  (summed over programs by the caller).
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    rj = tl.arange(0, BLOCK_J)
    jmask = rj < L1
    rl = tl.arange(0, BLOCK_L)
    pd = tl.zeros((BLOCK_L, BLOCK_J), dtype=tl.float32)
    rj64 = rj.to(tl.int64)
    for t in range(pid, num_tiles, nprog):
        offs = t * BLOCK_T + tl.arange(0, BLOCK_T)  # within one layer: int32 is enough
        om = offs // N
        on = offs % N
        tmask = om < M
        mask = jmask[:, None] & tmask[None, :]
        w = tl.load(W + rj64[:, None] * s_wl + (om * s_wm + on * s_wn)[None, :], mask=mask, other=0.0)
        w = w.to(tl.float32)
        dw = tl.zeros((BLOCK_J, BLOCK_T), dtype=tl.float32)
        g_ptrs = G + om * s_gm + on * s_gn
        d_ptrs = Dp + rj * s_d1
        for li in range(0, L2):
            g = tl.load(g_ptrs, mask=tmask, other=0.0).to(tl.float32)
            if HAS_DW:
                d = tl.load(d_ptrs, mask=jmask, other=0.0).to(tl.float32)
                dw += d[:, None] * g[None, :]
            if HAS_PD:
                contrib = tl.sum(w * g[None, :], axis=1)
                pd += tl.where(rl[:, None] == li, contrib[None, :], 0.0)
            g_ptrs += s_gl
            d_ptrs += s_d0
        if HAS_DW:
            o_ptrs = DW + rj64[:, None] * s_ol + (om * s_om + on * s_on)[None, :]
            tl.store(o_ptrs, dw.to(DW.dtype.element_ty), mask=mask)
    if HAS_PD:
        p_ptrs = PD + pid.to(tl.int64) * BLOCK_L * BLOCK_J + rl[:, None] * BLOCK_J + rj[None, :]
        tl.store(p_ptrs, pd)


@triton.jit
def _ligo_layer_grad_dot_kernel(
    G, W, Dp, DW, PD,
    L1, L2, M, N, num_tiles,
    s_gl, s_gm, s_gn,
    s_wl, s_wm, s_wn,
    s_d0, s_d1,
    s_ol, s_om, s_on,
    HAS_DW: tl.constexpr, HAS_PD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_J: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """``_ligo_layer_grad_kernel`` as two matrix products per tile, all L2 layers at once (L1, L2 <= BLOCK_J, BLOCK_L):

    DW[:, tile] = Dp^T @ G[:, tile]  (BLOCK_J x BLOCK_L @ BLOCK_L x BLOCK_T),
    PD[program] += G[:, tile] @ W[:, tile]^T  (BLOCK_L x BLOCK_T @ BLOCK_T x BLOCK_J),
    float32 operands (``PRECISION``: tf32x3 on the tensor cores, ieee when interpreted), float32 accumulation.
    """
    _ligo_layer_grad_dot_part(
        G, W, Dp, DW, PD, L1, L2, M, N, num_tiles, s_gl, s_gm, s_gn, s_wl, s_wm, s_wn, s_d0, s_d1, s_ol, s_om, s_on,
        tl.program_id(0), tl.num_programs(0), HAS_DW, HAS_PD, PRECISION, BLOCK_J, BLOCK_L, BLOCK_T,
    )  # fmt: skip


@triton.jit
def _ligo_layer_grad_dot_part(
    G, W, Dp, DW, PD,
    L1, L2, M, N, num_tiles,
    s_gl, s_gm, s_gn,
    s_wl, s_wm, s_wn,
    s_d0, s_d1,
    s_ol, s_om, s_on,
    pid, nprog,
    HAS_DW: tl.constexpr, HAS_PD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_J: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """Program ``pid`` of ``nprog`` of ``_ligo_layer_grad_dot_kernel`` (also one program of a grouped launch)."""
    rj = tl.arange(0, BLOCK_J)
    jmask = rj < L1
    rl = tl.arange(0, BLOCK_L)
    lmask = rl < L2
    rj64 = rj.to(tl.int64)
    rl64 = rl.to(tl.int64)
    d_t = tl.load(Dp + rl64[None, :] * s_d0 + rj64[:, None] * s_d1, mask=jmask[:, None] & lmask[None, :], other=0.0)
    d_t = d_t.to(tl.float32)  # depth^T, read once
    pd = tl.zeros((BLOCK_L, BLOCK_J), dtype=tl.float32)
    for t in range(pid, num_tiles, nprog):
        offs = t * BLOCK_T + tl.arange(0, BLOCK_T)  # within one layer: int32 is enough
        om = offs // N
        on = offs % N
        tmask = om < M
        g_ptrs = G + rl64[:, None] * s_gl + (om * s_gm + on * s_gn)[None, :]
        g = tl.load(g_ptrs, mask=lmask[:, None] & tmask[None, :], other=0.0).to(tl.float32)
        jt = jmask[:, None] & tmask[None, :]
        if HAS_DW:
            dw = tl.dot(d_t, g, input_precision=PRECISION)
            o_ptrs = DW + rj64[:, None] * s_ol + (om * s_om + on * s_on)[None, :]
            tl.store(o_ptrs, dw.to(DW.dtype.element_ty), mask=jt)
        if HAS_PD:
            w = tl.load(W + rj64[:, None] * s_wl + (om * s_wm + on * s_wn)[None, :], mask=jt, other=0.0)
            pd = tl.dot(g, tl.trans(w.to(tl.float32)), pd, input_precision=PRECISION)
    if HAS_PD:
        p_ptrs = PD + pid.to(tl.int64) * BLOCK_L * BLOCK_J + rl[:, None] * BLOCK_J + rj[None, :]
        tl.store(p_ptrs, pd)


@triton.jit
def _ligo_vec_kernel(
    Bv, Dp, E, O, R,
    L1, o1, o2,
    s_bl, s_bm,
    s_d0, s_d1,
    s_el, s_em, s_ek,
    s_ol, s_om,
    s_rl, s_rm,
    HAS_E: tl.constexpr, HAS_R: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """O[l] = [I; E[l]] @ (sum_j Dp[l, j] Bv[j]) (+ R[l]) for one layer (grid axis 1) and a tile of rows.

    The mixed vector is recomputed per K block (L1 loads of a vector that stays in cache), so the whole
    op is one launch and reads E once.
    """
    pid = tl.program_id(0)
    l = tl.program_id(1).to(tl.int64)
    r0 = pid * BLOCK_R
    rr = r0 + tl.arange(0, BLOCK_R)
    top = tl.zeros((BLOCK_R,), dtype=tl.float32)
    d_ptr = Dp + l * s_d0
    for j in range(0, L1):
        dj = tl.load(d_ptr + j * s_d1).to(tl.float32)
        top += dj * tl.load(Bv + j * s_bl + rr * s_bm, mask=rr < o1, other=0.0).to(tl.float32)
    val = top
    if HAS_E:
        if r0 + BLOCK_R > o1:
            bot = tl.zeros((BLOCK_R,), dtype=tl.float32)
            re = rr - o1
            rk = tl.arange(0, BLOCK_K)
            for k0 in range(0, o1, BLOCK_K):
                ks = k0 + rk
                kmask = ks < o1
                bm = tl.zeros((BLOCK_K,), dtype=tl.float32)
                for j in range(0, L1):
                    dj = tl.load(d_ptr + j * s_d1).to(tl.float32)
                    bm += dj * tl.load(Bv + j * s_bl + ks * s_bm, mask=kmask, other=0.0).to(tl.float32)
                emask = ((re >= 0) & (rr < o2))[:, None] & kmask[None, :]
                e = tl.load(E + l * s_el + re[:, None] * s_em + ks[None, :] * s_ek, mask=emask, other=0.0)
                bot += tl.sum(e.to(tl.float32) * bm[None, :], axis=1)
            val = tl.where(rr < o1, top, bot)
    omask = rr < o2
    if HAS_R:
        val += tl.load(R + l * s_rl + rr * s_rm, mask=omask, other=0.0).to(tl.float32)
    tl.store(O + l * s_ol + rr * s_om, val.to(O.dtype.element_ty), mask=omask)


INTERPRETED = tuning.interpreting(_ligo_gemm_kernel)

_gemm_tuned = None
_gemm_tuned_strip = None


def _tuned_kernels():
    """Autotuned wrappers (Hopper); the strip variant restores T, which it updates in place, between trials."""
    global _gemm_tuned, _gemm_tuned_strip
    if _gemm_tuned is None:
        # the operands' layouts too: a transposed view (the mirrored orientation, E^T) tunes on its own
        key = ["M", "N", "K", "NL", "s_am", "s_ak", "s_bk", "s_bn", "HAS_D", "STRIP", "REDUCE_L", "DOT", "PRECISION"]
        prune = {"early_config_prune": tuning.prune_gemm_configs}
        _gemm_tuned = triton.autotune(tuning.gemm_configs(), key=key, prune_configs_by=prune)(_ligo_gemm_kernel)
        _gemm_tuned_strip = triton.autotune(
            tuning.gemm_configs(), key=key, prune_configs_by=prune, restore_value=["T"]
        )(_ligo_gemm_kernel)
    return _gemm_tuned, _gemm_tuned_strip


# -------------------------------------------------------------------------------------------- launchers

_DOT_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _dot_args(dtype: torch.dtype) -> tuple[int, str]:
    """(DOT code, input precision) for operands feeding an output of ``dtype``."""
    if dtype not in _DOT_CODE:
        raise TypeError(f"Triton LiGO kernels take float16, bfloat16 or float32 weights, got {dtype}")
    code = _DOT_CODE[dtype]
    if code != 0:  # 16-bit operands: Triton's default precision, as in its own fp16 matmul (wgmma on Hopper)
        return code, "tf32"
    return code, tuning.fp32_precision(INTERPRETED)


def _layered(E: Tensor | None, L: int) -> Tensor | None:
    """A 2-D (shared) matrix as (L, r, c) with layer stride 0; 3-D passes through; empty E counts as None."""
    if E is None or E.shape[-2] == 0:
        return None
    return E.unsqueeze(0).expand(L, -1, -1) if E.dim() == 2 else E


def _s3(t: Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if t is None else (t.stride(0), t.stride(1), t.stride(2))


def fwd_flip(Eo: Tensor | None, Ei: Tensor | None, o1: int, i1: int) -> bool:
    """Whether the forward runs on transposed views. Canonical: columns expanded first (stage 2), rows last (stage 3,
    where the residual is fused); a lone E goes to stage 3. Both present: expand the smaller small side last
    (``reference.in_first``)."""
    return (Eo is None) if (Eo is None or Ei is None) else (o1 > i1)


def bwd_flip(Eo: Tensor | None, Ei: Tensor | None, o1: int, i1: int, o2: int, i2: int) -> bool:
    """Whether the backward runs on transposed views. S = B_out^T G is the bigger scratch, so make it the smaller of
    o1*i2 / i1*o2; a lone E goes to the input side, where S is G itself (no scratch but X)."""
    return (Ei is None) if (Eo is None or Ei is None) else (o1 * i2 > i1 * o2)


def bwd_canonical(G: Tensor, X: Tensor, E_out, E_in, Eo, Ei, o1: int, i1: int, need_o: bool, need_i: bool) -> tuple:
    """The backward's views in its canonical orientation (:func:`bwd_flip`): (flip, G, X, E_out, E_in, o1, i1, whether
    the E_out / E_in seen are shared (2-D), whether their gradients are needed); ``Eo``/``Ei``: per-layer views of
    the 2-D or 3-D ``E_out``/``E_in``."""
    shared_o, shared_i = E_out is not None and E_out.dim() == 2, E_in is not None and E_in.dim() == 2
    if bwd_flip(Eo, Ei, o1, i1, G.shape[1], G.shape[2]):
        return True, G.mT, X.mT, Ei, Eo, i1, o1, shared_i, shared_o, need_i, need_o
    return False, G, X, Eo, Ei, o1, i1, shared_o, shared_i, need_o, need_i


def _mix(O: Tensor, W: Tensor, depth: Tensor, R: Tensor | None = None) -> None:
    """O[l] = sum_j depth[l, j] W[j] (+ R[l]); O: (L2, M, N) view, W: (L1, M, N)."""
    L2, M, N = O.shape
    L1 = W.shape[0]
    if O.numel() == 0:
        return
    if INTERPRETED:
        bl, bm, bn, warps = 4, 32, 32, 4
    else:
        bl, bm, bn, warps = min(8, triton.next_power_of_2(L2)), 16, 64, 4
    grid = (triton.cdiv(L2, bl) * triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _ligo_mix_kernel[grid](
        W, depth, O, O if R is None else R,
        L1, L2, M, N,
        *_s3(W), depth.stride(0), depth.stride(1), *_s3(O), *_s3(R),
        HAS_R=R is not None, BLOCK_L=bl, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps,
    )  # fmt: skip


def _gemm(
    C: Tensor,
    A: Tensor,
    B: Tensor,
    *,
    D: Tensor | None = None,
    T: Tensor | None = None,
    R: Tensor | None = None,
    reduce_layers: bool = False,
    dot: tuple[int, str],
) -> None:
    """``C[l] = A[l] @ B[l] (+ D[l])`` for every layer; ``reduce_layers``: ``C[0] = sum_l A[l] @ B[l]``.

    A: (L, M, K), B: (L, K, N), C, D: (L or 1, M, N); any strides (0 for shared). With T and R (L, MT, N):
    ``T += R``, fused after the last read of T (T may alias B).
    """
    L, M, K = A.shape
    N = B.shape[2]
    if C.numel() == 0:
        return
    if K == 0 or L == 0:  # an empty product: only the addend
        C.copy_(D if D is not None else torch.zeros_like(C))
        if T is not None:
            T.add_(R)
        return
    strip = T is not None
    code, precision = dot
    n_layers, per, out = L, 1, C
    if reduce_layers:  # split-K over layers: fp32 partials, summed below, when the output has few tiles
        sms = 2 if INTERPRETED else torch.cuda.get_device_properties(C.device).multi_processor_count
        n_layers = tuning.layer_split(L, M, N, sms)
        per = triton.cdiv(L, n_layers)
        n_layers = triton.cdiv(L, per)
        if n_layers > 1:
            out = torch.empty((n_layers, M, N), dtype=torch.float32, device=C.device)
    args = (
        A, B, out, out if D is None else D, out if T is None else T, out if R is None else R,
        M, N, K, L, 0 if T is None else T.shape[1], per,
        *_s3(A), *_s3(B), *_s3(out), *_s3(D), *_s3(T), *_s3(R),
    )  # fmt: skip
    flags = dict(HAS_D=D is not None, STRIP=strip, REDUCE_L=reduce_layers, DOT=code, PRECISION=precision)
    forced = tuning.forced_config()
    cfg = None if forced is None else tuning.config_kwargs(forced)
    if forced is None and tuning.autotune_enabled(C.device) and not INTERPRETED and tuning.worth_tuning(M, N, K):
        tuned, tuned_strip = _tuned_kernels()
        kernel = tuned_strip if strip else tuned

        def grid(meta):
            tiles_n = triton.cdiv(N, meta["BLOCK_N"])
            return (tiles_n if strip else triton.cdiv(M, meta["BLOCK_M"]) * tiles_n, n_layers)

        kernel[grid](*args, **flags)
    else:
        if forced is None:
            cfg = tuning.gemm_heuristic(M, N, code != 0, INTERPRETED)
        tiles_n = triton.cdiv(N, cfg["BLOCK_N"])
        grid = (tiles_n if strip else triton.cdiv(M, cfg["BLOCK_M"]) * tiles_n, n_layers)
        _ligo_gemm_kernel[grid](*args, **flags, **cfg)
    if out is not C:
        C.copy_(out.sum(0, keepdim=True))


def _layer_grads(
    G: Tensor, W: Tensor, depth: Tensor, need_W: bool, need_depth: bool
) -> tuple[Tensor | None, Tensor | None]:
    """dW = depth^T @ G over layers (W's dtype), d depth[l, j] = <G[l], W[j]> (depth's dtype)."""
    L2, M, N = G.shape
    L1 = W.shape[0]
    dW = torch.empty_like(W, memory_format=torch.contiguous_format) if need_W else None
    if not (need_W or need_depth):
        return None, None
    if M * N == 0 or L1 == 0 or L2 == 0:
        if dW is not None:
            dW.zero_()
        return dW, (torch.zeros_like(depth) if need_depth else None)
    # two matrix products per tile (tensor cores) while every layer fits one block; else one FMA pass per layer
    dot = L1 <= tuning.LAYER_DOT_MAX and L2 <= tuning.LAYER_DOT_MAX
    bj = max(16 if dot else 2, triton.next_power_of_2(L1))
    bl = max(16 if dot else 2, triton.next_power_of_2(L2))
    if INTERPRETED:
        bt, warps, nprog_cap = (64 if dot else 256), 4, 4
    else:
        bt = max(32, min(64, 1024 // bl)) if dot else max(32, min(1024, 4096 // bj))
        warps = 4
        nprog_cap = 4 * torch.cuda.get_device_properties(G.device).multi_processor_count
    num_tiles = triton.cdiv(M * N, bt)
    nprog = min(num_tiles, nprog_cap)
    pd = torch.empty((nprog, bl, bj), dtype=torch.float32, device=G.device) if need_depth else None
    args = (
        G, W, depth, W if dW is None else dW, depth if pd is None else pd,
        L1, L2, M, N, num_tiles,
        *_s3(G), *_s3(W), depth.stride(0), depth.stride(1), *_s3(dW),
    )  # fmt: skip
    flags = dict(HAS_DW=need_W, HAS_PD=need_depth, BLOCK_J=bj, BLOCK_L=bl, BLOCK_T=bt, num_warps=warps)
    if dot:
        _ligo_layer_grad_dot_kernel[(nprog,)](*args, PRECISION=tuning.fp32_precision(INTERPRETED), **flags)
    else:
        _ligo_layer_grad_kernel[(nprog,)](*args, **flags)
    ddepth = None
    if need_depth:  # a fresh (L2, L1) tensor with contiguous strides, also for size-1 dims (the op's fake says so)
        ddepth = torch.empty((L2, L1), dtype=depth.dtype, device=depth.device).copy_(pd.sum(0)[:L2, :L1])
    return dW, ddepth


def expand_fwd(W: Tensor, depth: Tensor, E_out: Tensor | None, E_in: Tensor | None, residual: Tensor | None) -> Tensor:
    """Forward of ``ligo_expand``: (L2, o2, i2) in W's dtype. Shapes as in ``ligo_fast.ops.ligo_expand``."""
    L1, o1, i1 = W.shape
    L2 = depth.shape[0]
    Eo, Ei = _layered(E_out, L2), _layered(E_in, L2)
    o2 = o1 + (0 if Eo is None else Eo.shape[1])
    i2 = i1 + (0 if Ei is None else Ei.shape[1])
    out = torch.empty((L2, o2, i2), dtype=W.dtype, device=W.device)
    if out.numel() == 0:
        return out
    dot = _dot_args(W.dtype)
    if Eo is None and Ei is None:
        _mix(out, W, depth, residual)
        return out
    _mix(out[:, :o1, :i1], W, depth)
    if fwd_flip(Eo, Ei, o1, i1):
        Oc, Eoc, Eic, Rc, o1c, i1c = out.mT, Ei, Eo, (None if residual is None else residual.mT), i1, o1
    else:
        Oc, Eoc, Eic, Rc, o1c, i1c = out, Eo, Ei, residual, o1, i1
    if Eic is not None:
        _gemm(Oc[:, :o1c, i1c:], Oc[:, :o1c, :i1c], Eic.mT, dot=dot)
    if Rc is None:
        _gemm(Oc[:, o1c:, :], Eoc, Oc[:, :o1c, :], dot=dot)
    else:
        _gemm(Oc[:, o1c:, :], Eoc, Oc[:, :o1c, :], D=Rc[:, o1c:, :], T=Oc[:, :o1c, :], R=Rc[:, :o1c, :], dot=dot)
    return out


def expand_bwd(
    grad: Tensor,
    W: Tensor,
    depth: Tensor,
    E_out: Tensor | None,
    E_in: Tensor | None,
    need_W: bool = True,
    need_depth: bool = True,
    need_E_out: bool = True,
    need_E_in: bool = True,
    scratch_dtype: torch.dtype | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``expand_fwd`` w.r.t. (W, depth, E_out, E_in) from grad: (L2, o2, i2); None where not needed.

    Recomputes the depth mix; keeps at most two scratch buffers alive: X (L2, o1, i1) and one of
    Y (L2, o2-o1, i1) / S (L2, o1, i2), in ``scratch_dtype`` (default W's dtype, the dot dtype).
    """
    L1, o1, i1 = W.shape
    L2 = depth.shape[0]
    Eo, Ei = _layered(E_out, L2), _layered(E_in, L2)
    dot = _dot_args(W.dtype)
    sdt = scratch_dtype or W.dtype
    dEo = dEi = None
    need_dWm = need_W or need_depth
    if Eo is None and Ei is None:
        dW, dd = _layer_grads(grad, W, depth, need_W, need_depth)
        return dW, dd, None, None
    X = torch.empty((L2, o1, i1), dtype=sdt, device=W.device)
    _mix(X, W, depth)
    flip, Gc, Xc, Eoc, Eic, o1c, i1c, shared_o, shared_i, need_o, need_i = bwd_canonical(
        grad, X, E_out, E_in, Eo, Ei, o1, i1, need_E_out, need_E_in
    )
    dEoc = dEic = None
    if Eoc is not None and need_o:
        if Eic is not None:
            Y = torch.empty((L2, Eoc.shape[1], i1c), dtype=sdt, device=W.device)
            _gemm(Y, Gc[:, o1c:, i1c:], Eic, D=Gc[:, o1c:, :i1c], dot=dot)
        else:
            Y = Gc[:, o1c:, :]
        edt = (Ei if flip else Eo).dtype
        dEoc = torch.empty((1 if shared_o else L2, Eoc.shape[1], o1c), dtype=edt, device=W.device)
        _gemm(dEoc, Y, Xc.mT, reduce_layers=shared_o, dot=dot)
        del Y
    dWm = None
    if (Eic is not None and need_i) or need_dWm:
        if Eoc is not None:
            S = torch.empty((L2, o1c, Gc.shape[2]), dtype=sdt, device=W.device)
            _gemm(S, Eoc.mT, Gc[:, o1c:, :], D=Gc[:, :o1c, :], dot=dot)
        else:
            S = Gc
        if Eic is not None and need_i:
            edt = (Eo if flip else Ei).dtype
            dEic = torch.empty((1 if shared_i else L2, Eic.shape[1], i1c), dtype=edt, device=W.device)
            _gemm(dEic, S[:, :, i1c:].mT, Xc, reduce_layers=shared_i, dot=dot)
        if need_dWm:
            if Eic is not None:
                _gemm(Xc, S[:, :, i1c:], Eic, D=S[:, :, :i1c], dot=dot)  # X is dead: dWm goes over it
                dWm = X
            else:
                dWm = S.mT if flip else S
        del S
    dW, dd = _layer_grads(dWm, W, depth, need_W, need_depth) if need_dWm else (None, None)
    dEo_c = None if dEoc is None else (dEoc[0] if shared_o else dEoc)
    dEi_c = None if dEic is None else (dEic[0] if shared_i else dEic)
    if flip:
        dEo, dEi = dEi_c, dEo_c
    else:
        dEo, dEi = dEo_c, dEi_c
    return dW, dd, dEo, dEi


def expand_vec_fwd(b: Tensor, depth: Tensor, E_out: Tensor | None, residual: Tensor | None) -> Tensor:
    """Forward of ``ligo_expand_vec``: b (L1, o1) -> (L2, o2) in b's dtype, one launch."""
    L1, o1 = b.shape
    L2 = depth.shape[0]
    Eo = _layered(E_out, L2)
    o2 = o1 + (0 if Eo is None else Eo.shape[1])
    out = torch.empty((L2, o2), dtype=b.dtype, device=b.device)
    if out.numel() == 0:
        return out
    _dot_args(b.dtype)  # dtype check
    br, bk, warps = (32, 32, 4) if INTERPRETED else (64, 128, 4)
    grid = (triton.cdiv(o2, br), L2)
    _ligo_vec_kernel[grid](
        b, depth, b if Eo is None else Eo, out, out if residual is None else residual,
        L1, o1, o2,
        b.stride(0), b.stride(1), depth.stride(0), depth.stride(1), *_s3(Eo), out.stride(0), out.stride(1),
        *((0, 0) if residual is None else residual.stride()),
        HAS_E=Eo is not None, HAS_R=residual is not None, BLOCK_R=br, BLOCK_K=bk, num_warps=warps,
    )  # fmt: skip
    return out


def expand_vec_bwd(
    grad: Tensor,
    b: Tensor,
    depth: Tensor,
    E_out: Tensor | None,
    need_b: bool = True,
    need_depth: bool = True,
    need_E_out: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``expand_vec_fwd`` w.r.t. (b, depth, E_out): the matrix backward with a unit input side.

    Its scratch is (L2, o1, 1): kept in float32, as the forward keeps the mixed vector, so the b and depth gradients
    reduce float32 values (16-bit ones lose the sum when E_out's rows cancel b's common part).
    """
    db, dd, dEo, _ = expand_bwd(
        grad.unsqueeze(-1), b.unsqueeze(-1), depth, E_out, None, need_b, need_depth, need_E_out, False, torch.float32
    )
    return (None if db is None else db.squeeze(-1)), dd, dEo
