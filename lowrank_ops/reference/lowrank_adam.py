"""Oracle of the fused low-rank AdamW step, from the update's definition (docs/DESIGN.md §3), with both sides
of the projection always present (an absent side is the identity, which multiplies exactly):

  R  = L G R_op^T                                   the projected gradient
  m' = b1 m + (1 - b1) R,   v' = b2 v + (1 - b2) R * R
  N  = m_hat / (sqrt(v_hat) + eps),  m_hat = m' / (1 - b1^t),  v_hat = v' / (1 - b2^t)
  "full":    W' = (1 - lr wd) W - lr scale L^T N R_op
  "adapter": A = N + wd delta;  W' = W - lr scale L^T A R_op;  delta' = delta - lr A
(AdamW with decoupled weight decay, Loshchilov & Hutter 2019; the adapter form keeps the decay on the
low-rank adapter, duality paper App. B). Arithmetic in float64 for a float64 W, float32 otherwise (the op's
contract); W is rounded once when stored, the states keep their dtypes."""

import torch

from ..spec import compute_dtype
from . import sr_dct
from .dct import dct_basis
from .sketch import sketch


def side_matrix(op, dim: int, dtype, device) -> torch.Tensor:
    """A SideOperator (kind, rank, seed / matrix / indices) as its dense rank x dim matrix ("sr_dct": the
    float64 basis rows times the oracle's signs of op.seed, rounded once)."""
    if op.kind == "matrix":
        return op.matrix.to(device=device, dtype=dtype)
    if op.kind == "dct":
        return dct_basis(dim, op.indices, dtype, device)
    if op.kind == "sr_dct":
        signed = dct_basis(dim, op.indices) * sr_dct.signs(dim, op.seed % 2**64)[None, :]
        return signed.to(dtype=dtype, device=device)
    return sketch(op.rank, dim, op.seed, op.kind, dtype, device)


def _operator(op, dim: int, dtype, device) -> torch.Tensor:
    return torch.eye(dim, dtype=dtype, device=device) if op is None else side_matrix(op, dim, dtype, device)


def lowrank_adamw_step_(W, G, exp_avg, exp_avg_sq, projection, *, lr, beta1, beta2, eps, weight_decay, step,
                        scale=1.0, wd_mode="full", delta=None):
    """One step in place on W, exp_avg, exp_avg_sq (and delta for wd_mode "adapter")."""
    dtype = compute_dtype(W.dtype)
    left = _operator(projection.left, W.shape[0], dtype, W.device)
    right = _operator(projection.right, W.shape[1], dtype, W.device)
    R = torch.einsum("am,mn,bn->ab", left, G.to(dtype), right)
    m = beta1 * exp_avg.to(dtype) + (1 - beta1) * R
    v = beta2 * exp_avg_sq.to(dtype) + (1 - beta2) * R * R
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    m, v = exp_avg.to(dtype), exp_avg_sq.to(dtype)  # as stored
    N = (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + eps)
    if wd_mode == "full":
        W.copy_((1 - lr * weight_decay) * W.to(dtype) - lr * scale * torch.einsum("am,ab,bn->mn", left, N, right))
        return
    A = N + weight_decay * delta.to(dtype)
    W.copy_(W.to(dtype) - lr * scale * torch.einsum("am,ab,bn->mn", left, A, right))
    delta.copy_(delta.to(dtype) - lr * A)
