"""The fused low-rank AdamW step on blockwise 8-bit moments in torch ops (docs/DESIGN.md §3 "8-bit optimizer
moments"): decode the stored moments (pure_torch/blockwise8.py), the float step of pure_torch/lowrank_adam.py
on them, encode the updated moments back into the codes and absmax in place. The kernels do the same per block
inside their moment epilogue; this is the pure-torch kernel of the 8-bit form of the op."""

from . import blockwise8
from .lowrank_adam import lowrank_adamw_step_ as float_step

SIGNED = (True, False)  # exp_avg: signed code, exp_avg_sq: unsigned


def lowrank_adamw_step8_(W, G, exp_avg, exp_avg_sq, exp_avg_absmax, exp_avg_sq_absmax, block, delta, *args) -> None:
    """In place on W, the codes exp_avg / exp_avg_sq (uint8, projected shape), their float32 absmax
    [rows, ceil(cols / block)] (and delta); `args` are the float step's from left_kind on."""
    codes, absmax = (exp_avg, exp_avg_sq), (exp_avg_absmax, exp_avg_sq_absmax)
    m, v = (blockwise8.decode(c, a, signed, block) for c, a, signed in zip(codes, absmax, SIGNED))
    float_step(W, G, m, v, delta, *args)
    for value, c, a, signed in zip((m, v), codes, absmax, SIGNED):
        new_codes, new_absmax = blockwise8.encode(value, signed, block)
        c.copy_(new_codes)
        a.copy_(new_absmax)
