"""Oracle of the fused low-rank AdamW step on blockwise 8-bit moments (docs/DESIGN.md §3 "8-bit optimizer
moments"): the stored codes decoded by the format's oracle (reference/blockwise8.py), the step of
reference/lowrank_adam.py in float64 on the decoded values (so N, W and delta see this step's moments
unquantized), and the new moments encoded by the format's oracle (nearest code in float64, ties to the lower
index). Returns what the stored state becomes, and the float64 moments before encoding, which a test compares
the kernel's encoded moments with (the encoding of nearly equal values may pick the neighbouring code near a
midpoint)."""

import torch

from . import blockwise8
from .lowrank_adam import lowrank_adamw_step_ as float_step


def lowrank_adamw_step8(W, G, codes, absmax, block, projection, *, delta=None, **hyper):
    """One step from the 8-bit state (codes = (exp_avg, exp_avg_sq) uint8, absmax = their float32 block
    absmax, `block` the block length) on float64 copies: returns (W', delta', (m', v') float64 before encoding,
    (codes', absmax') of the oracle's encoding)."""
    m, v = (blockwise8.dequantize(c, a, signed, block) for c, a, signed in zip(codes, absmax, (True, False)))
    W64 = W.detach().to(torch.float64).clone()
    delta64 = None if delta is None else delta.detach().to(torch.float64).clone()
    float_step(W64, G.to(torch.float64), m, v, projection, delta=delta64, **hyper)
    encoded = [blockwise8.quantize(x, signed, block) for x, signed in ((m, True), (v, False))]
    return W64, delta64, (m, v), tuple(zip(*encoded))
