"""Oracle of the fused APOLLO step (APOLLO / APOLLO-Mini, Zhu et al. 2024; apollo-torch 1.0.3's
APOLLOAdamW), from the update's definition, all arithmetic in float64 (states and W rounded once when
stored in their own dtypes):

  R   = c P G (side "left", channels = columns of W) or c G P^T (side "right", channels = rows)
  m'  = b1 m + (1 - b1) R,   v' = b2 v + (1 - b2) R * R,   N = m' / (sqrt(v') + eps)
  S   = diag(s) acting on the kept channels, s_j = ||N_j|| / (||R_j|| + 1e-8) ("channel"), or
        s_j = ||N||_F / (||R||_F + 1e-8) for every j ("tensor")
  U   = S G (the scaled raw gradient, formed explicitly here), g = ||U||_F
  lam = 1 at step 1, else max(g / (prev + 1e-8), 1.01) / 1.01 (Fira's norm-growth limiter; 1 when off);
        the limiter norm becomes g / lam
  W'  = (W - lr sqrt(scale) bc U / lam) (1 - lr wd),  bc = sqrt(1 - b2^t) / (1 - b1^t) (1 without
        correct_bias)."""

import math

import torch

from .sketch import sketch


def side_operator(projection, dim: int) -> tuple[str, torch.Tensor]:
    """(side, P) of a one-sided lowrank_ops.ops.Projection, P its rank x dim operator in float64."""
    side, op = ("left", projection.left) if projection.left is not None else ("right", projection.right)
    if op.kind == "matrix":
        return side, op.matrix.to(torch.float64)
    return side, sketch(op.rank, dim, op.seed % 2**64, op.kind, torch.float64)


def lowrank_apollo_step_(W, G, exp_avg, exp_avg_sq, limiter_norm, projection, *, lr, beta1, beta2, eps,
                         weight_decay, step, scale=1.0, scale_type="channel", limiter=True, correct_bias=True,
                         proj_scale=1.0):
    """One step in place on W, exp_avg, exp_avg_sq and limiter_norm."""
    m, n = W.shape
    side, P = side_operator(projection, m if projection.left is not None else n)
    G64 = G.to(torch.float64)
    R = proj_scale * (P @ G64 if side == "left" else G64 @ P.T)
    exp_avg.copy_(beta1 * exp_avg.to(torch.float64) + (1 - beta1) * R)
    exp_avg_sq.copy_(beta2 * exp_avg_sq.to(torch.float64) + (1 - beta2) * R * R)
    N = exp_avg.to(torch.float64) / (exp_avg_sq.to(torch.float64).sqrt() + eps)
    if scale_type == "tensor":
        S = torch.linalg.norm(N) / (torch.linalg.norm(R) + 1e-8)
    else:
        axis = 0 if side == "left" else 1
        s = torch.linalg.vector_norm(N, dim=axis) / (torch.linalg.vector_norm(R, dim=axis) + 1e-8)
        S = s.reshape(1, n) if side == "left" else s.reshape(m, 1)
    U = S * G64
    g = torch.linalg.norm(U)
    lam = torch.tensor(1.0, dtype=torch.float64)
    if limiter:
        if step > 1:
            lam = max(g / (limiter_norm.to(torch.float64) + 1e-8), torch.tensor(1.01, dtype=torch.float64)) / 1.01
        limiter_norm.copy_(g / lam)
    bc = math.sqrt(1 - beta2**step) / (1 - beta1**step) if correct_bias else 1.0
    W.copy_((W.to(torch.float64) - lr * math.sqrt(scale) * bc * U / lam) * (1 - lr * weight_decay))
