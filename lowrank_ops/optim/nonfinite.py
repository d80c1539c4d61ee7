"""The optimizers' opt-in guard against non-finite gradients (param-group key `skip_nonfinite`): which
gradients of a step hold a NaN or an Inf.

The check is max |g| (torch.linalg.vector_norm(g, inf)), one reduction per gradient, and it is sound:
- exact in every floating dtype: a maximum rounds nothing and cannot overflow, so a finite gradient is never
  reported non-finite (a sum or a 2-norm can overflow to Inf on finite entries, e.g. 100 entries of 3e38
  in float32: a false skip);
- NaN propagates through torch's max reductions (an Inf entry gives Inf), so a non-finite entry anywhere
  is never missed (a sum misses nothing either, but only because of that overflow it can also report
  entries that are not there).
It reads the gradient once and writes nothing the size of it (isfinite(g).all() writes an m x n bool
tensor first). The results are gathered with one host sync per device and dtype for plain tensors (the
step branches on them in Python); a tensor subclass (e.g. DTensor) reduces and syncs through its own
dispatch, so all ranks of a sharded gradient get the same answer.
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
        norms[i] = torch.linalg.vector_norm(t, math.inf)  # max |t|: NaN if any entry is NaN
        if type(norms[i]) is torch.Tensor:
            batches.setdefault((norms[i].device, norms[i].dtype), []).append(i)
        else:  # a subclass's own reduction (a DTensor: over all shards)
            flags[i] = bool(torch.isfinite(norms[i]))
    for indices in batches.values():
        finite = torch.isfinite(torch.stack([norms[i] for i in indices])).tolist()
        for i, ok in zip(indices, finite):
            flags[i] = ok
    return flags
