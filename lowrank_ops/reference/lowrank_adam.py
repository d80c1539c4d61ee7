"""Reference of the fused low-rank AdamW step: the eager chain of torch ops, float64-capable.

With R = L G R^T the projected gradient (lowrank_ops.ops.projection), t = step >= 1:
  m <- b1 m + (1 - b1) R;  v <- b2 v + (1 - b2) R^2                       (state in the projected shape)
  N  = (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)                  (torch.optim.AdamW's arithmetic)
  wd_mode "full":    W <- W - lr wd W - lr scale L^T N R
  wd_mode "adapter": W <- W - lr scale L^T (N + wd D) R;  D <- D - lr (N + wd D)
where D (`delta`, projected shape) is the low-rank adapter A accumulated since the last refresh, so that
W = W_refresh + scale L^T D R and weight decay acts on the adapter only (duality paper, App. B).
Math runs in float32 (float64 when W is float64); W is rounded once on store.
"""

import math

import torch

from .dct import dct_basis
from .sketch import compute_dtype, sketch


def side_matrix(op, dim: int, dtype, device) -> torch.Tensor:
    """The side operator as a dense rank x dim matrix (the reference may materialize it)."""
    if op.kind == "matrix":
        return op.matrix.to(device=device, dtype=dtype)
    if op.kind == "dct":
        return dct_basis(dim, op.indices.to(device), dtype, device)
    return sketch(op.rank, dim, op.seed, op.kind, dtype, device)


def project(projection, G: torch.Tensor, dtype) -> torch.Tensor:
    R = G.to(dtype)
    if projection.left is not None:
        R = side_matrix(projection.left, G.shape[0], dtype, G.device) @ R
    if projection.right is not None:
        R = R @ side_matrix(projection.right, G.shape[1], dtype, G.device).T
    return R


def unproject(projection, N: torch.Tensor, shape, dtype) -> torch.Tensor:
    U = N.to(dtype)
    if projection.left is not None:
        U = side_matrix(projection.left, shape[0], dtype, N.device).T @ U
    if projection.right is not None:
        U = U @ side_matrix(projection.right, shape[1], dtype, N.device)
    return U


def lowrank_adamw_step_(W, G, exp_avg, exp_avg_sq, projection, *, lr, beta1, beta2, eps, weight_decay,
                        step, scale=1.0, wd_mode="full", delta=None):
    compute = compute_dtype(W.dtype)
    R = project(projection, G, compute)
    exp_avg.mul_(beta1).add_(R.to(exp_avg.dtype), alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(R.to(exp_avg_sq.dtype), R.to(exp_avg_sq.dtype), value=1 - beta2)
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    N = (exp_avg.to(compute) / bias1) / (exp_avg_sq.to(compute).sqrt() / math.sqrt(bias2) + eps)
    W32 = W.to(compute)
    if wd_mode == "full":
        W32 = W32 - lr * weight_decay * W32 - lr * scale * unproject(projection, N, W.shape, compute)
    else:
        direction = N + weight_decay * delta.to(compute)
        W32 = W32 - lr * scale * unproject(projection, direction, W.shape, compute)
        delta.sub_((lr * direction).to(delta.dtype))
    W.copy_(W32)
