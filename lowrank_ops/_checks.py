"""Argument checks shared by the public ops (lowrank_ops.ops) and the checks that run inside an op's
pure-torch kernel. Every message names the op, the argument, what was expected and what was given, so that
bad input never reaches a kernel."""

import operator

import torch

from .spec import FLOAT_DTYPES

UINT64_RANGE = 2**64


def error(op: str, arg: str, expected: str, got) -> ValueError:
    return ValueError(f"lowrank_ops.{op}: argument '{arg}' must be {expected}, got {got}")


def seed_to_int64(op: str, seed) -> int:
    """A uint64 seed in [0, 2^64), returned as the int64 with the same bits (the ops' schema type)."""
    try:
        value = operator.index(seed)
    except TypeError:
        raise TypeError(f"lowrank_ops.{op}: argument 'seed' must be an int in [0, 2^64), got {type(seed).__name__}") from None
    if not 0 <= value < UINT64_RANGE:
        raise error(op, "seed", "an int in [0, 2^64)", value)
    return value - UINT64_RANGE if value >= 2**63 else value


def choice(op: str, arg: str, value, options) -> str:
    if value not in options:
        raise error(op, arg, " or ".join(repr(o) for o in options), repr(value))
    return value


def int_at_least(op: str, arg: str, value, minimum: int) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"lowrank_ops.{op}: argument '{arg}' must be an int, got {type(value).__name__}") from None
    if value < minimum:
        raise error(op, arg, f">= {minimum}", value)
    return value


def positive_int(op: str, arg: str, value) -> int:
    return int_at_least(op, arg, value, 1)


def float_matrix(op: str, arg: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"lowrank_ops.{op}: argument '{arg}' must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise error(op, arg, "a 2-D tensor", f"a {t.dim()}-D tensor of shape {list(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise error(op, arg, "float32, float64, float16 or bfloat16", t.dtype)
    return t


def float_dtype(op: str, arg: str, dtype):
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise error(op, arg, "float32, float64, float16, bfloat16 or None", dtype)
    return dtype


def index_range(op: str, indices: torch.Tensor, dim: int) -> None:
    """Every index in [0, dim). Reads the values (a device sync)."""
    if indices.numel() and (indices.min() < 0 or indices.max() >= dim):
        raise error(op, "indices", f"values in [0, {dim})", f"values in [{int(indices.min())}, {int(indices.max())}]")
