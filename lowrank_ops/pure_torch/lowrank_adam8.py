"""The fused low-rank AdamW step on blockwise 8-bit moments in torch ops (docs/DESIGN.md §3 "8-bit optimizer
moments"): decode the stored moments (pure_torch/blockwise8.py), a float step on them, encode the updated
moments back into the codes and absmax in place. With the pure-torch float step it is the op's pure-torch
kernel on 8-bit moments; around another backend's float kernel (Triton, C++ CUDA) it is how those run 8-bit
moments until their kernels decode and encode in their epilogues (the C++ CPU kernel does)."""

from . import blockwise8
from .lowrank_adam import lowrank_adamw_step_ as float_step

SIGNED = (True, False)  # exp_avg: signed code, exp_avg_sq: unsigned


def step_around(step, W, G, exp_avg, exp_avg_sq, delta, *args) -> None:
    """`step` (a float kernel with lowrank_adamw_step_'s schema arguments up to wd_mode) on the decoded
    8-bit moments, in place on W, the codes exp_avg / exp_avg_sq (uint8, projected shape), their float32 absmax
    [rows, ceil(cols / block)] (and delta). `args`: the schema's arguments from left_kind to wd_mode, then
    exp_avg_absmax, exp_avg_sq_absmax, block."""
    *schema, exp_avg_absmax, exp_avg_sq_absmax, block = args
    codes, absmax = (exp_avg, exp_avg_sq), (exp_avg_absmax, exp_avg_sq_absmax)
    m, v = (blockwise8.decode(c, a, signed, block) for c, a, signed in zip(codes, absmax, SIGNED))
    step(W, G, m, v, delta, *schema)
    for value, c, a, signed in zip((m, v), codes, absmax, SIGNED):
        new_codes, new_absmax = blockwise8.encode(value, signed, block)
        c.copy_(new_codes)
        a.copy_(new_absmax)


def lowrank_adamw_step_(W, G, exp_avg, exp_avg_sq, delta, *args) -> None:
    """The pure-torch kernel of lowrank_adamw_step_ on 8-bit moments (schema arguments, absmax and block
    last)."""
    step_around(float_step, W, G, exp_avg, exp_avg_sq, delta, *args)
