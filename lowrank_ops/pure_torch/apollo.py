"""The fused APOLLO step in torch ops (backend "reference"): APOLLO / APOLLO-Mini (Zhu et al., "APOLLO:
SGD-like Memory, AdamW-level Performance", 2024), the arithmetic of apollo-torch 1.0.3's APOLLOAdamW.

One-sided projection, side "left" (R = c P G, r x n; the kept channels are W's columns) or "right"
(R = c G P^T, m x r; the kept channels are W's rows), P the rank x d side operator, c = proj_scale:
  m <- b1 m + (1 - b1) R;  v <- b2 v + (1 - b2) R^2                    (state in R's shape)
  N  = m / (sqrt(v) + eps)                                             (no bias correction here)
  s_j = ||N_j|| / (||R_j|| + 1e-8)     per kept channel j ("channel", APOLLO), or
  s   = ||N||_F / (||R||_F + 1e-8)     ("tensor", APOLLO-Mini)
  g   = ||s (.) G||_F = sqrt(sum_j s_j^2 ||G_j||^2)
  norm-growth limiter (Fira, arXiv:2410.01623), when on: at step 1 lam = 1 and the limiter norm becomes
      g; later lam = max(g / (prev + 1e-8), 1.01) / 1.01 and the limiter norm becomes g / lam
  W <- (W - a / lam * s (.) G) (1 - lr wd),  a = lr sqrt(scale) sqrt(1 - b2^t) / (1 - b1^t)
      (a = lr sqrt(scale) without correct_bias)
Math runs in float32 (float64 when W is float64); W is rounded once on store."""

import math

import torch

from ..spec import compute_dtype
from .sketch import sketch

NORM_EPS = 1e-8  # apollo-torch's guard of the channel norms and of the limiter's ratio
GROWTH = 1.01  # Fira's largest allowed growth of the update norm per step


def side_operator(kind: str, seed: int, rank: int, matrix, dim: int, dtype, device) -> torch.Tensor:
    """The rank x dim side operator: the seeded sketch of spec v1 or the explicit matrix, in `dtype`."""
    if kind == "matrix":
        return matrix.to(device=device, dtype=dtype)
    return sketch(rank, dim, seed, kind, dtype, device)


def lowrank_apollo_step_(W, G, exp_avg, exp_avg_sq, limiter_norm, side, kind, seed, rank, matrix, proj_scale, lr,
                         beta1, beta2, eps, weight_decay, step, scale, scale_type, limiter, correct_bias) -> None:
    """The op lowrank_ops::lowrank_apollo_step_, in place on W, exp_avg, exp_avg_sq and limiter_norm."""
    compute = compute_dtype(W.dtype)
    left = side == "left"
    P = side_operator(kind, seed, rank, matrix, W.shape[0] if left else W.shape[1], compute, W.device)
    G32 = G.to(compute)
    R = proj_scale * (P @ G32 if left else G32 @ P.T)
    exp_avg.mul_(beta1).add_(R.to(exp_avg.dtype), alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(R.to(exp_avg_sq.dtype), R.to(exp_avg_sq.dtype), value=1 - beta2)
    N = exp_avg.to(compute) / (exp_avg_sq.to(compute).sqrt() + eps)
    reduced = 0 if left else 1  # the projected dimension of R
    if scale_type == "channel":
        s = N.norm(dim=reduced) / (R.norm(dim=reduced) + NORM_EPS)
        g = (s * G32.norm(dim=reduced)).norm()
        s = s.view(1, -1) if left else s.view(-1, 1)
    else:
        s = N.norm() / (R.norm() + NORM_EPS)
        g = s * G32.norm()
    lam = torch.ones((), dtype=compute, device=W.device)
    if limiter:
        if step > 1:
            lam = torch.clamp_min(g / (limiter_norm.to(compute) + NORM_EPS), GROWTH) / GROWTH
        limiter_norm.copy_(g / lam)
    a = lr * math.sqrt(scale)
    if correct_bias:
        a *= math.sqrt(1 - beta2**step) / (1 - beta1**step)
    W.copy_((W.to(compute) - (a / lam) * s * G32) * (1 - lr * weight_decay))


def lowrank_apollo_multi_step_(W, G, exp_avg, exp_avg_sq, limiter_norm, *per_matrix) -> None:
    """The op lowrank_ops::lowrank_apollo_multi_step_: lowrank_apollo_step_ for matrix i with entry i of every
    list, in order."""
    for args in zip(W, G, exp_avg, exp_avg_sq, limiter_norm, *per_matrix):
        lowrank_apollo_step_(*args)
