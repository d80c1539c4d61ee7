"""The fused APOLLO step: project -> Adam moments -> channel (APOLLO) or tensor (APOLLO-Mini) scaling of
the raw gradient -> norm-growth limiter -> weight update, in place.

Math: lowrank_ops/pure_torch/apollo.py (the chain of torch ops, backend "reference"); the float64 oracle
is lowrank_ops/reference/apollo.py. The compiled kernel (csrc/cpu/apollo.cpp, per-element math in
kernels/apollo.h) forms R = c P G from generated sketch tiles and the per-channel norms of G in one read
of G, and updates W in a second read of G: no m x n temporary (R, the moments and the channel scales are
r x n / m x r / length-n or -m).
"""

import torch

from .. import _checks, backends
from ..spec import SEEDED_KINDS
from .projection import Projection

OP = "lowrank_apollo_step_"
SCALE_TYPES = ("channel", "tensor")
SIDE_KINDS = (*SEEDED_KINDS, "matrix")


def _one_side(W, projection) -> tuple[str, object, int]:
    """(side, its SideOperator, d) of a one-sided projection with a seeded or explicit operator."""
    if not isinstance(projection, Projection):
        raise TypeError(f"lowrank_ops.{OP}: argument 'projection' must be a lowrank_ops.ops.Projection, "
                        f"got {type(projection).__name__}")
    if projection.left is not None and projection.right is not None:
        raise _checks.error(OP, "projection", "one-sided (APOLLO projects one side)", "a two-sided projection")
    side, op = ("left", projection.left) if projection.left is not None else ("right", projection.right)
    if op.kind not in SIDE_KINDS:
        raise _checks.error(OP, "projection", f"a side of kind {' or '.join(map(repr, SIDE_KINDS))}", repr(op.kind))
    return side, op, W.shape[0] if side == "left" else W.shape[1]


def _check(W, G, exp_avg, exp_avg_sq, limiter_norm, projection, step, scale_type, limiter, correct_bias,
           proj_scale, **hyperparameters):
    """Every argument of lowrank_apollo_step_, before any kernel runs (the same checks for every backend).
    NaN/Inf in G are not checked (a reduction per step): as in apollo-torch they reach the moments and W."""
    _checks.weight_and_gradient(OP, W, G)
    side, op, dim = _one_side(W, projection)
    _checks.positive_int(OP, "projection.rank", op.rank)
    if op.kind == "matrix":
        _checks.float_matrix(OP, "projection.matrix", op.matrix)
        if op.matrix.shape[1] != dim:
            raise _checks.error(OP, "projection.matrix", f"of shape [{op.rank}, {dim}]", list(op.matrix.shape))
        _checks.on_device(OP, "projection.matrix", op.matrix, W.device, "W")
    else:
        _checks.seed_to_int64(OP, op.seed, "projection.seed")
    if W.numel() == 0:
        raise _checks.error(OP, "W", "a non-empty matrix", list(W.shape))
    shape = projection.projected_shape(W.shape)
    state_dtypes = (torch.float32, torch.float64) if W.dtype == torch.float64 else (torch.float32, )
    for name, state, want in (("exp_avg", exp_avg, shape), ("exp_avg_sq", exp_avg_sq, shape),
                              ("limiter_norm", limiter_norm, ())):
        _checks.tensor(OP, name, state)
        if tuple(state.shape) != tuple(want) or state.dtype not in state_dtypes:
            what = f"of the projected shape {list(want)}" if want else "0-dim (a scalar tensor)"
            raise _checks.error(OP, name, f"a float32 tensor {what}", (list(state.shape), state.dtype))
        _checks.on_device(OP, name, state, W.device, "W")
    _checks.adam_step_and_hyperparameters(OP, step, hyperparameters)
    _checks.real(OP, "proj_scale", proj_scale, "> 0", lambda x: x > 0)
    _checks.choice(OP, "scale_type", scale_type, SCALE_TYPES)
    for name, flag in (("limiter", limiter), ("correct_bias", correct_bias)):
        if not isinstance(flag, bool):
            raise _checks.type_error(OP, name, "a bool", flag)
    return side, op


def lowrank_apollo_step_(W: torch.Tensor, G: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                         limiter_norm: torch.Tensor, projection: Projection, *, lr: float, beta1: float,
                         beta2: float, eps: float, weight_decay: float, step: int, scale: float = 1.0,
                         scale_type: str = "channel", limiter: bool = True, correct_bias: bool = True,
                         proj_scale: float = 1.0, backend=None) -> None:
    """One APOLLO (scale_type "channel") or APOLLO-Mini ("tensor") step of W, in place on W, exp_avg,
    exp_avg_sq and limiter_norm (the norm-growth limiter's previous update norm, a 0-dim tensor; written at
    step 1, read after). `projection`: one-sided, a seeded sketch ("rademacher", "gaussian") or an explicit
    P ("matrix", e.g. an SVD basis); R = proj_scale P G (left: W's columns are the scaled channels) or
    proj_scale G P^T (right: W's rows). W fp32/bf16 (fp32 math, one rounding on store) or fp64; G any float
    dtype; moments and limiter_norm fp32 (fp64 allowed for fp64 W); `step` is the count after increment."""
    side, op = _check(W, G, exp_avg, exp_avg_sq, limiter_norm, projection, step, scale_type, limiter, correct_bias,
                      proj_scale, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, scale=scale)
    backend = backends.check(OP, backend, W.device)
    seed = 0 if op.kind == "matrix" else _checks.seed_to_int64(OP, op.seed)
    torch.ops.lowrank_ops.lowrank_apollo_step_(
        W, G, exp_avg, exp_avg_sq, limiter_norm, side, op.kind, seed, op.rank, op.matrix, float(proj_scale),
        float(lr), float(beta1), float(beta2), float(eps), float(weight_decay), int(step), float(scale), scale_type,
        limiter, correct_bias, backend)
