"""The multi-tensor APOLLO step: lowrank_apollo_step_ for every APOLLO matrix of an optimizer in one call (the math
per matrix is lowrank_ops/ops/apollo.py's, docs/DESIGN.md §3).

Hyperparameters are per matrix (a number is broadcast to every matrix), so that ONE call serves an optimizer whose
parameter groups differ in lr, betas, weight decay, scale, scale type or the limiter, and whose matrices have their
own step counts. Kernels:
  cpu        one parallel region for the whole call: each thread takes whole matrices, largest first, and runs
             lowrank_apollo_step_'s kernel on each (its own parallel loops then run inline on that thread), so
             no Python runs per matrix (csrc/cpu/apollo.cpp)
  cuda       lowrank_apollo_step_'s kernels per matrix on the current stream, from C++ (csrc/cuda/apollo.cpp)
  triton     lowrank_apollo_step_'s two launches per matrix (no grouped kernel yet)
  reference  a loop over lowrank_apollo_step_'s pure-torch kernel
Every backend runs the single op's arithmetic for every matrix, so results equal lowrank_apollo_step_'s bit for bit
on the same backend; on the CPU with one intra-op thread. With more, the single op splits its projection GEMM's rows
over threads (a BLAS summation order that depends on the split) while the multi-tensor kernel runs each matrix
whole: the two then agree within the tolerance rule (docs/DESIGN.md §5), and the multi-tensor result does not
depend on the thread count.
"""

from collections.abc import Sequence

import torch

from .. import _checks, backends
from .apollo import OP as SINGLE_OP
from .apollo import _check
from .projection import Projection

OP = "lowrank_apollo_multi_step_"


def lowrank_apollo_multi_step_(W: Sequence[torch.Tensor], G: Sequence[torch.Tensor], exp_avg: Sequence[torch.Tensor],
                               exp_avg_sq: Sequence[torch.Tensor], limiter_norm: Sequence[torch.Tensor],
                               projections: Sequence[Projection], *, lr, beta1, beta2, eps, weight_decay, step,
                               scale=1.0, scale_type="channel", limiter=True, correct_bias=True, proj_scale=1.0,
                               backend=None) -> None:
    """lowrank_ops.ops.lowrank_apollo_step_(W[i], G[i], exp_avg[i], exp_avg_sq[i], limiter_norm[i], projections[i],
    ...) for every i, in one call, in place. Each hyperparameter (lr, beta1, beta2, eps, weight_decay, step, scale,
    scale_type, limiter, correct_bias, proj_scale) is one value for every matrix or a sequence with one per
    matrix. Every matrix is checked as lowrank_apollo_step_ checks it (the message says which matrix); all must
    be on one device, and the tensors written in place must not share memory."""
    count = _checks.matrix_lists(OP, {"W": W, "G": G, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
                               "limiter_norm": limiter_norm, "projections": projections})
    given = {"lr": (lr, "a number"), "beta1": (beta1, "a number"), "beta2": (beta2, "a number"),
             "eps": (eps, "a number"), "weight_decay": (weight_decay, "a number"), "step": (step, "an int"),
             "scale": (scale, "a number"), "scale_type": (scale_type, "a str"), "limiter": (limiter, "a bool"),
             "correct_bias": (correct_bias, "a bool"), "proj_scale": (proj_scale, "a number")}
    hyper = {name: _checks.per_matrix(OP, name, value, count, what) for name, (value, what) in given.items()}
    if count == 0:
        return
    sides = []
    for i in range(count):
        try:  # the single-matrix op's checks, with its message renamed to this op and matrix
            h = {name: values[i] for name, values in hyper.items()}
            side, op = _check(W[i], G[i], exp_avg[i], exp_avg_sq[i], limiter_norm[i], projections[i], h.pop("step"),
                              h.pop("scale_type"), h.pop("limiter"), h.pop("correct_bias"), h.pop("proj_scale"), **h)
            if W[i].device != W[0].device:
                raise _checks.error(SINGLE_OP, "W", f"on the device of W[0] ({W[0].device})", W[i].device)
            seed = 0 if op.kind == "matrix" else _checks.seed_to_int64(SINGLE_OP, op.seed)
            sides.append((side, op.kind, seed, op.rank, op.matrix))
        except (ValueError, TypeError) as error:
            message = str(error).removeprefix(f"lowrank_ops.{SINGLE_OP}: ")
            raise type(error)(f"lowrank_ops.{OP}: matrix {i}: {message}") from None
    backend = backends.check(OP, backend, W[0].device)
    floats = [[float(x) for x in hyper[name]] for name in ("lr", "beta1", "beta2", "eps", "weight_decay")]
    torch.ops.lowrank_ops.lowrank_apollo_multi_step_(
        list(W), list(G), list(exp_avg), list(exp_avg_sq), list(limiter_norm), *(list(column) for column in zip(*sides)),
        [float(x) for x in hyper["proj_scale"]], *floats, [int(s) for s in hyper["step"]],
        [float(x) for x in hyper["scale"]], list(hyper["scale_type"]), list(hyper["limiter"]),
        list(hyper["correct_bias"]), backend)
