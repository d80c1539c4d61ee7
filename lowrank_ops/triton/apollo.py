"""Triton kernels of the fused APOLLO step (lowrank_ops/ops/apollo.py; the math in
lowrank_ops/pure_torch/apollo.py), in two launches and a few length-C vector ops between them, C the number
of kept channels (W's columns for a left side, its rows for a right one):

  _apollo_project_kernel   one program per block of channels holds R[:, block] = c P G[:, block] for the
                           whole rank (a seeded P generated tile by tile, sketch._sketch_tile; an explicit P
                           loaded), accumulates ||G_j||^2 on the way, then updates the moments of its block,
                           forms N and writes the squared channel norms of N, R and G (3 x C)
  (torch, on the device)   the scales s_j, the update norm g, the limiter's lam and its new norm, a / lam:
                           length-C and scalar ops, no host sync
  _apollo_update_kernel    W <- (W - (a / lam) s_j G) (1 - lr wd), tile by tile, one rounding to W's dtype

A right side runs as the left side of the transposed problem (strides swapped), so both kernels know only
the left layout. No m x n temporary: R and the moments are r x C, the rest length C.
"""

import math

import torch
import triton
import triton.language as tl

from ..pure_torch.apollo import GROWTH, NORM_EPS
from ._common import INTERPRETED as _INTERPRETED
from ._common import check_device, dot_acc
from .sketch import _TRITON_TYPES, AOT_RANK, KIND_IDS, _cast, _sketch_tile

MATRIX = 2  # the KIND of an explicit P (KIND_IDS numbers the seeded kinds)
BLOCK_K, BLOCK_C = 32, 16  # P's columns per step (whole Rademacher words); channels per program
PROJECT_WARPS = 8  # R's rank x BLOCK_C tile and the moments' tiles fit the registers without spills at rank 128
UPDATE_BLOCK = 64


@triton.jit(do_not_specialize=["seed"])
def _apollo_project_kernel(g_ptr, p_ptr, m_ptr, v_ptr, sq_ptr, seed: tl.uint64, rank, d, C, stride_gd, stride_gc,
                           stride_p0, stride_p1, stride_mr, stride_mc, proj_scale, beta1, one_minus_beta1, beta2,
                           one_minus_beta2, eps, KIND: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_R: tl.constexpr,
                           BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, INTERPRETED: tl.constexpr):
    """Channels [pid BLOCK_C, (pid + 1) BLOCK_C): R = c P G (rank x C, G's d-axis stride stride_gd), the
    moments (rank x C, strides stride_mr, stride_mc) in place, and sq[0 | 1 | 2, j] = ||N_j||^2, ||R_j||^2,
    ||G_j||^2 (float32 or float64 rows of length C)."""
    c0 = tl.program_id(0) * BLOCK_C
    rows = tl.arange(0, BLOCK_R)[:, None]
    cols = c0 + tl.arange(0, BLOCK_C)[None, :]
    acc = tl.zeros((BLOCK_R, BLOCK_C), COMPUTE)
    g_sq = tl.zeros((BLOCK_C, ), COMPUTE)
    for k0 in range(0, d, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        if KIND == 2:
            p = tl.load(p_ptr + rows.to(tl.int64) * stride_p0 + ks[None, :].to(tl.int64) * stride_p1,
                        mask=(rows < rank) & (ks[None, :] < d), other=0.0).to(COMPUTE)
        else:  # rows past the rank are generated and dropped at the stores; columns past d meet zero G rows
            p = _sketch_tile(seed, 0, k0, d, BLOCK_R, BLOCK_K, KIND, COMPUTE, INTERPRETED)
        g = tl.load(g_ptr + ks[:, None].to(tl.int64) * stride_gd + cols.to(tl.int64) * stride_gc,
                    mask=(ks[:, None] < d) & (cols < C), other=0.0).to(COMPUTE)
        g_sq += tl.sum(g * g, axis=0)
        acc = dot_acc(p, g, acc, COMPUTE, False)
    r = acc * proj_scale
    mask = (rows < rank) & (cols < C)
    offsets = rows.to(tl.int64) * stride_mr + cols.to(tl.int64) * stride_mc
    m = beta1 * tl.load(m_ptr + offsets, mask=mask, other=0.0).to(COMPUTE) + one_minus_beta1 * r
    v = beta2 * tl.load(v_ptr + offsets, mask=mask, other=0.0).to(COMPUTE) + one_minus_beta2 * r * r
    tl.store(m_ptr + offsets, m.to(m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offsets, v.to(v_ptr.dtype.element_ty), mask=mask)
    n = m / (tl.sqrt(v) + eps)
    channel = c0 + tl.arange(0, BLOCK_C)
    inside = channel < C
    tl.store(sq_ptr + channel, tl.sum(tl.where(mask, n * n, 0.0), axis=0), mask=inside)
    tl.store(sq_ptr + C + channel, tl.sum(tl.where(mask, r * r, 0.0), axis=0), mask=inside)
    tl.store(sq_ptr + 2 * C + channel, g_sq, mask=inside)


@triton.jit
def _apollo_update_kernel(w_ptr, g_ptr, s_ptr, coef_ptr, M, N, stride_w0, stride_w1, stride_g0, stride_g1, decay,
                          CHANNEL_COLS: tl.constexpr, BLOCK: tl.constexpr, INTERPRETED: tl.constexpr):
    """W[tile] <- (W - coef s_j G) decay, j the column (CHANNEL_COLS) or the row; coef = a / lam, a 0-dim
    tensor (float32 or float64: the compute dtype)."""
    COMPUTE: tl.constexpr = coef_ptr.dtype.element_ty
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)[:, None]
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)[None, :]
    mask = (i < M) & (j < N)
    w_at = w_ptr + i.to(tl.int64) * stride_w0 + j.to(tl.int64) * stride_w1
    w = tl.load(w_at, mask=mask, other=0.0).to(COMPUTE)
    g = tl.load(g_ptr + i.to(tl.int64) * stride_g0 + j.to(tl.int64) * stride_g1, mask=mask, other=0.0).to(COMPUTE)
    if CHANNEL_COLS:
        s = tl.load(s_ptr + j, mask=j < N, other=0.0)
    else:
        s = tl.load(s_ptr + i, mask=i < M, other=0.0)
    c_s = tl.load(coef_ptr) * s
    tl.store(w_at, _cast((w - c_s * g) * decay, w_ptr.dtype.element_ty, INTERPRETED), mask=mask)


def _scales(sq, channel: bool, limiter: bool, limiter_norm, step: int):
    """(s per channel, lam) from the squared channel norms (the middle stage; limiter_norm written)."""
    n_sq, r_sq, g_sq = sq
    if channel:
        s = n_sq.sqrt() / (r_sq.sqrt() + NORM_EPS)
        g = (s * s * g_sq).sum().sqrt()
    else:
        s_all = n_sq.sum().sqrt() / (r_sq.sum().sqrt() + NORM_EPS)
        s, g = s_all.expand(n_sq.shape[0]).contiguous(), s_all * g_sq.sum().sqrt()
    lam = torch.ones((), dtype=sq.dtype, device=sq.device)
    if limiter:
        if step > 1:
            lam = torch.clamp_min(g / (limiter_norm.to(sq.dtype) + NORM_EPS), GROWTH) / GROWTH
        limiter_norm.copy_(g / lam)
    return s, lam


def lowrank_apollo_step_(W, G, exp_avg, exp_avg_sq, limiter_norm, side, kind, seed, rank, matrix, proj_scale, lr,
                         beta1, beta2, eps, weight_decay, step, scale, scale_type, limiter, correct_bias) -> None:
    """The op lowrank_ops::lowrank_apollo_step_ with the schema's arguments (seed as uint64)."""
    check_device(W.device, "apollo", "W")
    compute = torch.float64 if W.dtype == torch.float64 else torch.float32
    left = side == "left"
    # the transposed problem for a right side: G's d-axis is its column axis, the channels its rows
    Gd, Gc = (G.stride(0), G.stride(1)) if left else (G.stride(1), G.stride(0))
    # the moments as contiguous tensors of the compute dtype (copies written back when they are not)
    moments = [t if t.dtype == compute and t.is_contiguous() else t.to(compute).contiguous()
               for t in (exp_avg, exp_avg_sq)]
    Mr, Mc = (moments[0].stride(0), moments[0].stride(1)) if left else (moments[0].stride(1), moments[0].stride(0))
    d, C = (W.shape[0], W.shape[1]) if left else (W.shape[1], W.shape[0])
    sq = torch.empty((3, C), dtype=compute, device=W.device)
    P = matrix if kind == "matrix" else G  # a seeded P: a placeholder pointer, never read
    block_r = max(16, triton.next_power_of_2(rank))
    _apollo_project_kernel[(triton.cdiv(C, BLOCK_C), )](
        G, P, moments[0], moments[1], sq, seed, rank, d, C, Gd, Gc, P.stride(0), P.stride(1), Mr, Mc, proj_scale,
        beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, KIND=KIND_IDS.get(kind, MATRIX),
        COMPUTE=tl.float64 if compute == torch.float64 else tl.float32, BLOCK_R=block_r, BLOCK_K=BLOCK_K,
        BLOCK_C=BLOCK_C, INTERPRETED=_INTERPRETED, num_warps=PROJECT_WARPS, num_stages=1)
    for work, state in zip(moments, (exp_avg, exp_avg_sq)):
        if work is not state:
            state.copy_(work)
    s, lam = _scales(sq, scale_type == "channel", limiter, limiter_norm, step)
    a = lr * math.sqrt(scale)
    if correct_bias:
        a *= math.sqrt(1 - beta2**step) / (1 - beta1**step)
    coef = (a / lam).to(compute)
    m, n = W.shape
    _apollo_update_kernel[(triton.cdiv(m, UPDATE_BLOCK), triton.cdiv(n, UPDATE_BLOCK))](
        W, G, s, coef, m, n, W.stride(0), W.stride(1), G.stride(0), G.stride(1), 1.0 - lr * weight_decay,
        CHANNEL_COLS=left, BLOCK=UPDATE_BLOCK, INTERPRETED=_INTERPRETED, num_warps=4, num_stages=1)


def aot_entries() -> list:
    """Both kernels as the launcher runs them on contiguous tensors: the projection for bfloat16 and
    float32 G, each side's strides, seeded and explicit P at rank AOT_RANK; the update for float32 and
    bfloat16 W, each channel axis."""
    from .aot import AotEntry

    entries = []
    for kind, kind_id in (*KIND_IDS.items(), ("matrix", MATRIX)):
        for g_dtype in (torch.bfloat16, torch.float32):
            ty = _TRITON_TYPES[g_dtype]
            entries.append(AotEntry(
                f"apollo project {kind} G {ty}", _apollo_project_kernel,
                signature={"g_ptr": f"*{ty}", "p_ptr": "*fp32" if kind == "matrix" else f"*{ty}", "m_ptr": "*fp32",
                           "v_ptr": "*fp32", "sq_ptr": "*fp32", "seed": "u64", "rank": "i32", "d": "i32", "C": "i32",
                           "stride_gd": "i32", "stride_gc": "i32", "stride_p0": "i32", "stride_p1": "i32",
                           "stride_mr": "i32", "stride_mc": "i32",
                           **{name: "fp64" for name in ("proj_scale", "beta1", "one_minus_beta1", "beta2",
                                                        "one_minus_beta2", "eps")}},
                constexprs={"KIND": kind_id, "COMPUTE": tl.float32, "BLOCK_R": AOT_RANK, "BLOCK_K": BLOCK_K,
                            "BLOCK_C": BLOCK_C, "INTERPRETED": False},
                expects_wgmma=False, num_warps=PROJECT_WARPS, num_stages=1))
    for w_dtype in (torch.float32, torch.bfloat16):
        ty = _TRITON_TYPES[w_dtype]
        for channel_cols in (True, False):
            entries.append(AotEntry(
                f"apollo update W {ty} channels {'cols' if channel_cols else 'rows'}", _apollo_update_kernel,
                signature={"w_ptr": f"*{ty}", "g_ptr": f"*{ty}", "s_ptr": "*fp32", "coef_ptr": "*fp32", "M": "i32",
                           "N": "i32", "stride_w0": "i32", "stride_w1": "i32", "stride_g0": "i32",
                           "stride_g1": "i32", "decay": "fp64"},
                constexprs={"CHANNEL_COLS": channel_cols, "BLOCK": UPDATE_BLOCK, "INTERPRETED": False},
                expects_wgmma=False, num_warps=4, num_stages=1))
    return entries
