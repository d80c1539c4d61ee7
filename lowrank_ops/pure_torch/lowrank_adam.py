"""The fused low-rank AdamW step in torch ops: the chain project -> Adam moments -> unproject -> update.

With R = L G R^T the projected gradient (lowrank_ops.ops.projection), t = step >= 1:
  m <- b1 m + (1 - b1) R;  v <- b2 v + (1 - b2) R^2                       (state in the projected shape)
  N  = (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)                  (torch.optim.AdamW's arithmetic)
  wd_mode "full":    W <- W - lr wd W - lr scale L^T N R
  wd_mode "adapter": W <- W - lr scale L^T (N + wd D) R;  D <- D - lr (N + wd D)
where D (`delta`, projected shape) is the low-rank adapter A accumulated since the last refresh, so that
W = W_refresh + scale L^T D R and weight decay acts on the adapter only (duality paper, App. B).
Math runs in float32 (float64 when W is float64); W is rounded once on store. Each side operator is
materialized as a dense rank x d matrix (the compiled and Triton kernels generate it tile by tile)."""

import math

import torch

from ..spec import SRDCT_SIGN_ROW, compute_dtype
from .dct import basis_rows, signed_rows
from .sketch import sketch, unscaled_sketch


def srdct_signs(dim: int, seed: int, device) -> torch.Tensor:
    """float64 [dim] of +-1: sign_t of an "sr_dct" side (lowrank_ops/spec.py SRDCT_*), the sign of entry
    (SRDCT_SIGN_ROW, t) of the seed's Rademacher sketch."""
    return unscaled_sketch(SRDCT_SIGN_ROW + 1, dim, seed % 2**64, "rademacher", device)[SRDCT_SIGN_ROW]


def side_matrix(kind: str, seed: int, rank: int, tensor, dim: int, dtype, device) -> torch.Tensor:
    """One side operator of the schema (kind "rademacher" | "gaussian" | "matrix" | "dct" | "sr_dct", its
    seed, rank and matrix or index vector) as a dense rank x dim matrix in `dtype` on `device`: basis rows
    (signed for "sr_dct") from float64, rounded once."""
    if kind == "matrix":
        return tensor.to(device=device, dtype=dtype)
    if kind == "dct":
        return basis_rows(dim, tensor, device).to(dtype)
    if kind == "sr_dct":
        return signed_rows(dim, tensor.to(device), srdct_signs(dim, seed, device), dtype)
    return sketch(rank, dim, seed, kind, dtype, device)


def lowrank_adamw_step_(W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix, right_kind,
                        right_seed, right_rank, right_matrix, lr, beta1, beta2, eps, weight_decay, step, scale,
                        wd_mode) -> None:
    """The op lowrank_ops::lowrank_adamw_step_, in place on W, exp_avg, exp_avg_sq (and delta)."""
    compute = compute_dtype(W.dtype)
    m, n = W.shape
    L = None if left_kind == "none" else side_matrix(left_kind, left_seed, left_rank, left_matrix, m, compute,
                                                     W.device)
    Rt = None if right_kind == "none" else side_matrix(right_kind, right_seed, right_rank, right_matrix, n,
                                                       compute, W.device)
    R = G.to(compute)
    if L is not None:
        R = L @ R
    if Rt is not None:
        R = R @ Rt.T
    exp_avg.mul_(beta1).add_(R.to(exp_avg.dtype), alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(R.to(exp_avg_sq.dtype), R.to(exp_avg_sq.dtype), value=1 - beta2)
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    N = (exp_avg.to(compute) / bias1) / (exp_avg_sq.to(compute).sqrt() / math.sqrt(bias2) + eps)
    if wd_mode == "adapter":
        N = N + weight_decay * delta.to(compute)
        delta.sub_((lr * N).to(delta.dtype))
    U = N
    if L is not None:
        U = L.T @ U
    if Rt is not None:
        U = U @ Rt
    W32 = W.to(compute)
    if wd_mode == "full":
        W32 = W32 - lr * weight_decay * W32
    W.copy_(W32 - lr * scale * U)


def lowrank_adamw_multi_step_(W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix,
                              right_kind, right_seed, right_rank, right_matrix, lr, beta1, beta2, eps, weight_decay,
                              step, scale, wd_mode) -> None:
    """The op lowrank_ops::lowrank_adamw_multi_step_: lowrank_adamw_step_ above for each matrix i, with entry i
    of every list; `delta` holds the adapters of the matrices in wd_mode "adapter", in order."""
    adapters = iter(delta)
    for i in range(len(W)):
        lowrank_adamw_step_(W[i], G[i], exp_avg[i], exp_avg_sq[i], next(adapters) if wd_mode[i] == "adapter" else None,
                            left_kind[i], left_seed[i], left_rank[i], left_matrix[i], right_kind[i], right_seed[i],
                            right_rank[i], right_matrix[i], lr[i], beta1[i], beta2[i], eps[i], weight_decay[i], step[i],
                            scale[i], wd_mode[i])
