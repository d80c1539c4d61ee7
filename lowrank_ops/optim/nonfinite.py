"""The optimizers' opt-in guard against non-finite gradients (param-group key `skip_nonfinite`): which
gradients of a step hold a NaN or an Inf.

The check is max |g| (torch.linalg.vector_norm(g, inf)), one reduction per gradient, and it is sound:
- exact in every floating dtype: a maximum rounds nothing and cannot overflow, so a finite gradient is never
  reported non-finite (a sum or a 2-norm can overflow to Inf on finite entries, e.g. 100 entries of 3e38
  in float32: a false skip);
- NaN propagates through torch's max reductions (ATen's reductions propagate NaN by contract; tested on
  the CPU at every position class, tests/test_optim_reliability.py; no GPU run yet) and an Inf entry gives
  Inf, so a non-finite entry anywhere is never missed (a sum misses none either, but its overflow can
  also report entries that are not there).
It reads the gradient once and writes nothing the size of it (isfinite(g).all() writes an m x n bool
tensor first). The results are gathered with one host sync per device and dtype (the step branches on
them in Python).

A tensor subclass (e.g. a DTensor, sharded over ranks) reduces through its own dispatch, and there max|g|
is not sound: the cross-rank MAX all-reduce of the shards' maxima need not propagate NaN (measured here:
gloo's MAX of [nan] on rank 0 and [1.0] on rank 1 gives nan, with the NaN on rank 1 it gives 1.0). For
those the check counts the finite entries, sum(isfinite(g)) == numel(g): an integer sum, exact across
ranks, at the cost of a bool tensor of g's local size; every rank gets the same answer.
"""

import math

import torch


def finite_flags(tensors) -> list[bool]:
    """For each tensor, whether all its entries are finite (an empty tensor is)."""
    flags: list[bool | None] = [None] * len(tensors)
    norms, batches = {}, {}
    for i, t in enumerate(tensors):
        if t.numel() == 0:
            flags[i] = True
            continue
        if type(t) is torch.Tensor:
            norms[i] = torch.linalg.vector_norm(t, math.inf)  # max |t|: NaN if any entry is NaN
            batches.setdefault((norms[i].device, norms[i].dtype), []).append(i)
        else:  # a subclass's own reduction (a DTensor: over all shards), in integers
            flags[i] = bool(torch.isfinite(t).sum() == t.numel())
    for indices in batches.values():
        finite = torch.isfinite(torch.stack([norms[i] for i in indices])).tolist()
        for i, ok in zip(indices, finite):
            flags[i] = ok
    return flags
