"""The multi-tensor fused low-rank AdamW step: lowrank_adamw_step_ for every low-rank matrix of an optimizer in
one call (issue 15; the math per matrix is lowrank_ops/ops/lowrank_adam.py's, docs/DESIGN.md §3).

Hyperparameters are per matrix (a number is broadcast to every matrix), so that ONE call serves an optimizer
whose parameter groups differ in lr, betas, weight decay, scale or wd_mode, whose matrices have their own step
counts (a parameter added later, a step skipped on a NaN gradient), and GaLoreAdamW, whose folded eps' and
scale' depend on each matrix's step. The kernels group the matrices of one (shape, projection kinds, ranks,
dtypes) and run each group as batched work where the backend has a batched form:
  cpu     one parallel region for the whole call: each thread takes whole matrices (largest first) and runs
          its own single-threaded BLAS GEMMs on a materialized P, block by block of the other dimension, with
          the moment update right after the projection GEMM of a block and the weight update in the
          unprojection GEMM (C = beta C + alpha A B for a float32 W with a unit stride, rank <= 256, blocks
          of >= 32 columns/rows; otherwise through a per-thread buffer); matrices too
          large to balance that way, and the forms the blocked path does not take (two-sided projections,
          non-contiguous states), run lowrank_adamw_step_'s own kernel (csrc/cpu/lowrank_adam_multi.cpp).
  triton  one launch per group and GEMM, persistent over the group's problems
          (lowrank_ops/triton/lowrank_adam_multi.py).
  cuda    the GEMMs per matrix, on tiles of P with cuBLAS through ATen as lowrank_adamw_step_ runs them, with
          one moment kernel over each group of matrices of one shape, kinds and step scalars (the driver's
          grouped form, run_adam_steps_grouped: csrc/lowrank_adam_impl.h, csrc/cuda/lowrank_adam.cpp).
8-bit moments (docs/DESIGN.md §3 "8-bit optimizer moments"): on cpu the blocked path decodes, updates and
encodes them in its moment epilogue (a left side's column blocks hold whole moment blocks), and the other
matrices run lowrank_adamw_step_'s 8-bit kernel; on triton and cuda the float matrices run as above and each
8-bit one runs lowrank_adamw_step_ on that backend; the reference kernel loops over lowrank_adamw_step_'s
pure-torch 8-bit kernel (lowrank_ops/_kernels.py, pure_torch/lowrank_adam8.py).
Results equal lowrank_adamw_step_'s within the tolerance rule of docs/DESIGN.md §5 (the summation orders of
the GEMMs differ), and bit for bit where a matrix runs lowrank_adamw_step_'s kernel.
"""

from collections.abc import Sequence

import torch

from .. import _checks, backends
from ..spec import STATE_BLOCK_SIZE
from .lowrank_adam import OP as SINGLE_OP
from .lowrank_adam import _check, _flatten_side
from .projection import Projection

OP = "lowrank_adamw_multi_step_"


def _per_matrix(name: str, value, count: int, what: str) -> list:
    """`value` for each of `count` matrices: one value broadcast, or a list/tuple of `count` (each entry is then
    checked as lowrank_adamw_step_ checks that argument)."""
    if not isinstance(value, (list, tuple)):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"lowrank_ops.{OP}: argument '{name}' must be {what} or a sequence of {count} (one per "
                         f"matrix), got a sequence of length {len(value)}")
    return list(value)


def _tensor_lists(lists: dict) -> int:
    """The common length of the argument lists; raises when they differ or one is not a list or tuple."""
    count = None
    for name, value in lists.items():
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"lowrank_ops.{OP}: argument '{name}' must be a list of one entry per matrix, got "
                            f"{type(value).__name__}")
        if count is None:
            count = len(value)
        elif len(value) != count:
            raise ValueError(f"lowrank_ops.{OP}: argument '{name}' must have one entry per matrix ({count}, as "
                             f"'W'), got {len(value)}")
    return count


def lowrank_adamw_multi_step_(W: Sequence[torch.Tensor], G: Sequence[torch.Tensor], exp_avg: Sequence[torch.Tensor],
                              exp_avg_sq: Sequence[torch.Tensor], projections: Sequence[Projection], *, lr, beta1,
                              beta2, eps, weight_decay, step, scale=1.0, wd_mode="full", delta=None,
                              exp_avg_absmax=None, exp_avg_sq_absmax=None, state_block_size=STATE_BLOCK_SIZE,
                              backend=None) -> None:
    """lowrank_ops.ops.lowrank_adamw_step_(W[i], G[i], exp_avg[i], exp_avg_sq[i], projections[i], ...) for every
    i, in one call, in place. Each hyperparameter (lr, beta1, beta2, eps, weight_decay, step, scale, wd_mode)
    is one value for every matrix or a sequence with one per matrix; `delta` is None or a sequence with matrix
    i's adapter (a tensor where wd_mode[i] is "adapter", else None). 8-bit moments (docs/DESIGN.md §3 "8-bit
    optimizer moments"): `exp_avg_absmax` and `exp_avg_sq_absmax` are None (every matrix has float moments)
    or sequences with matrix i's absmax (tensors where exp_avg[i], exp_avg_sq[i] are uint8 codes, else None),
    `state_block_size` an int or one per matrix (read for the 8-bit ones). Every matrix is checked as
    lowrank_adamw_step_ checks it (the message says which matrix); all must be on one device, and the tensors
    written in place must not share memory."""
    count = _tensor_lists({"W": W, "G": G, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "projections": projections})
    optional = {"delta": delta, "exp_avg_absmax": exp_avg_absmax, "exp_avg_sq_absmax": exp_avg_sq_absmax}
    for name, value in optional.items():
        if value is not None:
            _tensor_lists({"W": W, name: value})
    deltas, absmax, absmax_sq = ([None] * count if value is None else value for value in optional.values())
    given = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay, "scale": scale}
    hyper = {name: _per_matrix(name, value, count, "a number") for name, value in given.items()}
    steps = _per_matrix("step", step, count, "an int")
    modes = _per_matrix("wd_mode", wd_mode, count, "a str")
    blocks = _per_matrix("state_block_size", state_block_size, count, "an int")
    if count == 0:
        return
    left, right = [], []
    for i in range(count):
        try:  # the single-matrix op's checks, with its message renamed to this op and matrix
            _check(W[i], G[i], exp_avg[i], exp_avg_sq[i], projections[i], steps[i], modes[i], deltas[i], absmax[i],
                   absmax_sq[i], blocks[i], **{name: values[i] for name, values in hyper.items()})
            if W[i].device != W[0].device:
                raise _checks.error(SINGLE_OP, "W", f"on the device of W[0] ({W[0].device})", W[i].device)
            left.append(_flatten_side(projections[i].left))
            right.append(_flatten_side(projections[i].right))
        except (ValueError, TypeError) as error:
            message = str(error).removeprefix(f"lowrank_ops.{SINGLE_OP}: ")
            raise type(error)(f"lowrank_ops.{OP}: matrix {i}: {message}") from None
    backend = backends.check(OP, backend, W[0].device)
    adapters = [deltas[i] for i in range(count) if modes[i] == "adapter"]
    quantized = [i for i in range(count) if absmax[i] is not None]  # _check: both absmax or neither
    block_list = [int(blocks[i]) if absmax[i] is not None else 0 for i in range(count)] if quantized else []
    torch.ops.lowrank_ops.lowrank_adamw_multi_step_(
        list(W), list(G), list(exp_avg), list(exp_avg_sq), adapters, *(list(column) for column in zip(*left)),
        *(list(column) for column in zip(*right)),
        *([float(x) for x in hyper[name]] for name in ("lr", "beta1", "beta2", "eps", "weight_decay")),
        [int(s) for s in steps], [float(x) for x in hyper["scale"]], modes,
        [absmax[i] for i in quantized] if quantized else None, [absmax_sq[i] for i in quantized] if quantized else None,
        block_list, backend)
