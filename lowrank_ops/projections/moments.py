"""The storage of a low-rank parameter's Adam moments in its optimizer state, float or blockwise 8-bit
(docs/DESIGN.md §3 "8-bit optimizer moments"), for the code that reads or rewrites them outside the fused
step: the optimizers (initial state, resume checks) and the kinds that carry the moments over to a new basis
at a refresh ("adaptive"), which work on the decoded values and encode them again.

Float moments: state["exp_avg"], state["exp_avg_sq"], float32 (float64 for a float64 weight), projected shape.
8-bit moments (state_bits = 8): state["exp_avg"] and state["exp_avg_sq"] hold uint8 codes of the projected
shape [rows, cols] (the signed code for exp_avg, the unsigned one for exp_avg_sq), state["exp_avg_absmax"] and
state["exp_avg_sq_absmax"] the float32 absmax of each block (shape [rows, ceil(cols / B)]), and the int
state["state_block_size"] = B, the block length along a row."""

import torch

from .. import _extension
from ..pure_torch import blockwise8
from ..spec import Q8_MOMENT_SIGNED

MOMENTS = ("exp_avg", "exp_avg_sq")
BLOCK_KEY = "state_block_size"


def _codec(device: torch.device):
    """(encode, decode) of the format for tensors on `device`: the C++ functions of kernels/blockwise8.h on
    the CPU when the extension has them, else pure torch; bit-identical (tests/test_blockwise8.py)."""
    cpu = _extension.compiled("cpu") if device.type == "cpu" else None
    if cpu is not None and hasattr(cpu, "blockwise8_encode"):
        return cpu.blockwise8_encode, cpu.blockwise8_decode
    return blockwise8.encode, blockwise8.decode


def _encode(values: torch.Tensor, name: str, block: int):
    return _codec(values.device)[0](values.to(torch.float32), Q8_MOMENT_SIGNED[name], block)


def absmax_key(name: str) -> str:
    return f"{name}_absmax"


def is_8bit(state: dict) -> bool:
    """Whether `state` keeps its moments in the 8-bit format."""
    return BLOCK_KEY in state


def compute_dtype(like: torch.Tensor) -> torch.dtype:
    """The dtype of float moments (and of the decoded 8-bit ones) for a weight like `like`."""
    return torch.float64 if like.dtype == torch.float64 else torch.float32


def init(state: dict, projected_shape, like: torch.Tensor, block: int | None) -> None:
    """Zero moments of `projected_shape` on like's device: float (block None) or 8-bit with blocks of
    `block` (codes of 0, absmax 0)."""
    if block is None:
        for name in MOMENTS:
            state[name] = torch.zeros(projected_shape, dtype=compute_dtype(like), device=like.device)
        return
    state[BLOCK_KEY] = block
    zeros = torch.zeros(projected_shape, dtype=torch.float32, device=like.device)
    for name in MOMENTS:
        state[name], state[absmax_key(name)] = _encode(zeros, name, block)


def projected_shape(state: dict) -> tuple[int, ...]:
    return tuple(state["exp_avg"].shape)


def read(state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(exp_avg, exp_avg_sq) as float tensors (read_one)."""
    return read_one(state, "exp_avg"), read_one(state, "exp_avg_sq")


def read_one(state: dict, name: str) -> torch.Tensor:
    """Moment `name` as a float tensor: the state's own tensor for float moments (not a copy), the decoded
    float32 values for 8-bit ones."""
    if not is_8bit(state):
        return state[name]
    codes = state[name]
    return _codec(codes.device)[1](codes, state[absmax_key(name)], Q8_MOMENT_SIGNED[name], state[BLOCK_KEY])


def write(state: dict, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> None:
    """Stores the float moments `exp_avg`, `exp_avg_sq` (any projected shape) in the state's format: as they
    are for float moments, encoded for 8-bit ones."""
    if not is_8bit(state):
        state["exp_avg"], state["exp_avg_sq"] = exp_avg, exp_avg_sq
        return
    block = state[BLOCK_KEY]
    for name, value in zip(MOMENTS, (exp_avg, exp_avg_sq)):
        state[name], state[absmax_key(name)] = _encode(value, name, block)


def write_into(state: dict, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> None:
    """`write` of moments of the state's own projected shape, in place into the state's tensors."""
    if not is_8bit(state):
        state["exp_avg"].copy_(exp_avg)
        state["exp_avg_sq"].copy_(exp_avg_sq)
        return
    block = state[BLOCK_KEY]
    for name, value in zip(MOMENTS, (exp_avg, exp_avg_sq)):
        codes, absmax = _encode(value, name, block)
        state[name].copy_(codes)
        state[absmax_key(name)].copy_(absmax)


def zeros_like(state: dict) -> torch.Tensor:
    """A float zero tensor of the moments' projected shape (the adapter `delta`): in the float moments'
    dtype, float32 beside 8-bit moments (which decode to float32 values)."""
    if not is_8bit(state):
        return torch.zeros_like(state["exp_avg"])
    return torch.zeros(projected_shape(state), dtype=torch.float32, device=state["exp_avg"].device)
