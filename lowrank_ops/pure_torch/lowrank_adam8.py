"""The fused low-rank AdamW step on blockwise 8-bit moments in torch ops (docs/DESIGN.md §3 "8-bit optimizer
moments"): decode the stored moments (pure_torch/blockwise8.py), a float step on them, encode the updated
moments back into the codes and absmax in place. With the pure-torch float step it is the op's pure-torch
kernel on 8-bit moments; around another backend's float kernel (Triton, C++ CUDA) it is how those run 8-bit
moments until their kernels decode and encode in their epilogues (the C++ CPU kernel does). multi_step_around is how the multi-tensor op runs 8-bit moments
on a backend whose multi-tensor kernel takes float moments only."""

from . import blockwise8
from .lowrank_adam import lowrank_adamw_step_ as float_step

MULTI_OP = "lowrank_adamw_multi_step_"

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


def _check_multi_lists(count: int, exp_avg_absmax, exp_avg_sq_absmax, blocks) -> list:
    """The block length of each of `count` matrices (0: float moments), with the 8-bit lists checked as the C++
    kernel checks them (for torch.ops callers on a backend without it)."""
    if len(blocks) not in (0, count):
        raise ValueError(f"lowrank_ops.{MULTI_OP}: argument 'state_block_size' must be empty or have one entry per "
                         f"matrix ({count}, as 'W'), got {len(blocks)}")
    blocks = list(blocks) or [0] * count
    quantized = sum(block != 0 for block in blocks)
    for name, absmax in (("exp_avg_absmax", exp_avg_absmax), ("exp_avg_sq_absmax", exp_avg_sq_absmax)):
        if len(absmax) != quantized:
            raise ValueError(f"lowrank_ops.{MULTI_OP}: argument '{name}' must hold one absmax per matrix with 8-bit "
                             f"moments (state_block_size != 0: {quantized}), got {len(absmax)}")
    return blocks


def multi_step_around(multi_step, step, *args) -> None:
    """lowrank_adamw_multi_step_ (its schema's arguments, without backend) on a backend whose multi-tensor kernel
    takes float moments only: the matrices with float moments through `multi_step` (that kernel: the arguments
    up to wd_mode) in one call, and each matrix with 8-bit moments through `step` (lowrank_adamw_step_'s
    implementation on the backend: the schema's arguments, then exp_avg_absmax, exp_avg_sq_absmax, block)."""
    *lists, exp_avg_absmax, exp_avg_sq_absmax, blocks = args
    W, wd_mode = lists[0], lists[-1]
    blocks = _check_multi_lists(len(W), exp_avg_absmax, exp_avg_sq_absmax, blocks)
    adapters = iter(lists[4])
    deltas = [next(adapters) if mode == "adapter" else None for mode in wd_mode]
    absmax = iter(zip(exp_avg_absmax, exp_avg_sq_absmax))
    floats = [i for i, block in enumerate(blocks) if block == 0]
    for i, block in enumerate(blocks):
        if block != 0:
            step(*(column[i] for column in lists[:4]), deltas[i], *(column[i] for column in lists[5:]), *next(absmax),
                 block)
    if len(floats) == len(W):
        multi_step(*lists)
    elif floats:
        multi_step(*([column[i] for i in floats] for column in lists[:4]),
                   [deltas[i] for i in floats if deltas[i] is not None],
                   *([column[i] for i in floats] for column in lists[5:]))
