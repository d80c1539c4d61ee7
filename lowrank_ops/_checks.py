"""Argument checks shared by the public ops (lowrank_ops.ops) and the checks that run inside an op's
pure-torch kernel. Every message names the op, the argument, what was expected and what was given, so that
bad input never reaches a kernel.

Types: an int argument takes a Python int, a NumPy integer or a one-element integer tensor, never a bool
(True is not a rank); a float argument takes a real number (int or float, NumPy scalars, a one-element real
tensor), never a bool or a string, and must be finite and inside the argument's domain. Checks that read a
tensor's values (finiteness, index ranges) skip meta tensors and code being traced by torch.compile: those
have shapes but no values, and the op then returns its fake result (shapes and dtypes only)."""

import math
import operator

import torch

from .spec import FLOAT_DTYPES

UINT64_RANGE = 2**64


def error(op: str, arg: str, expected: str, got) -> ValueError:
    return ValueError(f"lowrank_ops.{op}: argument '{arg}' must be {expected}, got {got}")


def type_error(op: str, arg: str, expected: str, value) -> TypeError:
    return TypeError(f"lowrank_ops.{op}: argument '{arg}' must be {expected}, got {type(value).__name__}")


def _is_bool(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool)


def integer(op: str, arg: str, value, expected: str = "an int") -> int:
    """`value` as a Python int; a bool, a float or a non-number is a TypeError."""
    if _is_bool(value):
        raise type_error(op, arg, f"{expected} (not a bool)", value)
    try:
        return operator.index(value)
    except TypeError:
        raise type_error(op, arg, expected, value) from None


def seed_to_int64(op: str, seed, arg: str = "seed") -> int:
    """A uint64 seed in [0, 2^64), returned as the int64 with the same bits (the ops' schema type)."""
    value = integer(op, arg, seed, "an int in [0, 2^64)")
    if not 0 <= value < UINT64_RANGE:
        raise error(op, arg, "an int in [0, 2^64)", value)
    return value - UINT64_RANGE if value >= 2**63 else value


def choice(op: str, arg: str, value, options) -> str:
    if not isinstance(value, str) or value not in options:
        raise error(op, arg, " or ".join(repr(o) for o in options), repr(value))
    return value


def int_at_least(op: str, arg: str, value, minimum: int) -> int:
    value = integer(op, arg, value)
    if value < minimum:
        raise error(op, arg, f">= {minimum}", value)
    return value


def positive_int(op: str, arg: str, value) -> int:
    return int_at_least(op, arg, value, 1)


def int_in_range(op: str, arg: str, value, low: int, high: int) -> int:
    """An int in [low, high]."""
    value = integer(op, arg, value)
    if not low <= value <= high:
        raise error(op, arg, f"in [{low}, {high}]", value)
    return value


def real(op: str, arg: str, value, domain: str = "finite", inside=lambda x: True) -> float:
    """`value` as a finite Python float for which inside(value) holds (`domain` says which, for the message).
    A bool, a string or a non-number is a TypeError; NaN, Inf or a value outside the domain a ValueError."""
    if _is_bool(value) or isinstance(value, (str, bytes)):
        raise type_error(op, arg, f"a number {domain}", value)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise error(op, arg, f"a number {domain}", f"a tensor of shape {list(value.shape)}, {value.dtype}")
        if value.device.type == "meta":
            raise error(op, arg, f"a number {domain}", "a meta tensor (it has no value)")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise type_error(op, arg, f"a number {domain}", value) from None
    if not math.isfinite(number):
        raise error(op, arg, f"a finite number {domain}", repr(value))
    if not inside(number):
        raise error(op, arg, f"a number {domain}", repr(value))
    return number


def tensor(op: str, arg: str, t) -> torch.Tensor:
    """A dense (strided) torch.Tensor."""
    if not isinstance(t, torch.Tensor):
        raise type_error(op, arg, "a torch.Tensor", t)
    if t.layout != torch.strided:
        raise error(op, arg, "a dense (strided) tensor", f"layout {t.layout}")
    return t


def float_matrix(op: str, arg: str, t) -> torch.Tensor:
    tensor(op, arg, t)
    if t.dim() != 2:
        raise error(op, arg, "a 2-D tensor", f"a {t.dim()}-D tensor of shape {list(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise error(op, arg, "float32, float64, float16 or bfloat16", t.dtype)
    return t


def float_dtype(op: str, arg: str, dtype):
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise error(op, arg, "float32, float64, float16, bfloat16 or None", dtype)
    return dtype


def on_device(op: str, arg: str, t: torch.Tensor, device: torch.device, whose: str) -> None:
    """`t` lives on `device`, the device of argument `whose`."""
    if t.device != device:
        raise error(op, arg, f"on {whose}'s device {device}", t.device)


def device(op: str, arg: str, value):
    """None (torch's default device) or a torch.device (a string like "cpu" or "cuda:0", or an index)."""
    if value is None or isinstance(value, torch.device):
        return value
    if _is_bool(value) or not isinstance(value, (str, int)):
        raise type_error(op, arg, "a torch.device, a device string or None", value)
    try:
        return torch.device(value)
    except (RuntimeError, ValueError) as exc:
        raise error(op, arg, "a torch.device, a device string or None", f"{value!r} ({exc})") from None


def has_values(t: torch.Tensor) -> bool:
    """Whether a check may read t's values: not for meta tensors and not while torch.compile traces (both
    have shapes only; the op's fake kernel gives the result)."""
    return t.device.type != "meta" and not torch.compiler.is_compiling()


def finite(op: str, arg: str, t: torch.Tensor) -> None:
    """No NaN or Inf in t (one reduction; a device sync on CUDA). Skipped where t has no values."""
    if has_values(t) and t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise error(op, arg, "finite", f"a tensor with {bad} NaN/Inf entries")


def index_range(op: str, indices: torch.Tensor, dim: int, what: str = "") -> None:
    """Every index in [0, dim); `what` says where dim comes from, for the message (e.g. " (the projected
    dimension of G)"). Reads the values (a device sync); skipped where they cannot be read."""
    if has_values(indices) and indices.numel() and (indices.min() < 0 or indices.max() >= dim):
        raise error(op, "indices", f"values in [0, {dim}){what}",
                    f"values in [{int(indices.min())}, {int(indices.max())}]")


# The domain of each float hyperparameter of the Adam-style fused steps (lowrank_adamw_step_, its multi-tensor
# form, lowrank_apollo_step_): (what the message says, the test). beta1 = 1 or beta2 = 1 would divide by the
# bias correction 1 - beta^t = 0, and eps = 0 gives 0 / 0 wherever a projected gradient entry has been 0 at
# every step: NaN in W, silently.
ADAM_DOMAINS = {
    "lr": (">= 0", lambda x: x >= 0),
    "beta1": ("in [0, 1)", lambda x: 0 <= x < 1),
    "beta2": ("in [0, 1)", lambda x: 0 <= x < 1),
    "eps": ("> 0", lambda x: x > 0),
    "weight_decay": (">= 0", lambda x: x >= 0),
    "scale": (">= 0", lambda x: x >= 0),
}


def weight_and_gradient(op: str, W, G) -> None:
    """A fused step's W (a float32/bfloat16/float64 matrix) and G (a float matrix of W's shape on W's device)."""
    float_matrix(op, "W", W)
    float_matrix(op, "G", G)
    if W.dtype not in (torch.float32, torch.bfloat16, torch.float64):
        raise error(op, "W", "float32, bfloat16 or float64", W.dtype)
    if G.shape != W.shape:
        raise error(op, "G", f"of W's shape {list(W.shape)}", list(G.shape))
    on_device(op, "G", G, W.device, "W")


def adam_step_and_hyperparameters(op: str, step, hyperparameters: dict) -> None:
    """A fused step's step count (an int >= 1 that stays an int64 after its increment) and the float
    hyperparameters of ADAM_DOMAINS, from `hyperparameters`."""
    if int_at_least(op, "step", step, 1) >= 2**63:
        raise error(op, "step", "< 2^63", step)
    for name, (domain, inside) in ADAM_DOMAINS.items():
        real(op, name, hyperparameters[name], domain, inside)


# --- the multi-tensor ops' argument lists -----------------------------------------------------------------


def matrix_lists(op: str, lists: dict) -> int:
    """The common length of a multi-tensor op's lists of one entry per matrix ({name: list}); raises when one is
    not a list or tuple or their lengths differ."""
    count = None
    for name, value in lists.items():
        if not isinstance(value, (list, tuple)):
            raise type_error(op, name, "a list of one entry per matrix", value)
        if count is None:
            count, first = len(value), name
        elif len(value) != count:
            raise error(op, name, f"one entry per matrix ({count}, as '{first}')", f"{len(value)} entries")
    return count


def per_matrix(op: str, name: str, value, count: int, what: str) -> list:
    """A multi-tensor op's hyperparameter for each of `count` matrices: one value broadcast, or a list/tuple of
    `count` (each entry is then checked as the single-matrix op checks that argument)."""
    if not isinstance(value, (list, tuple)):
        return [value] * count
    if len(value) != count:
        raise error(op, name, f"{what} or a sequence of {count} (one per matrix)", f"a sequence of length {len(value)}")
    return list(value)
