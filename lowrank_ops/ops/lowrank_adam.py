"""The fused low-rank AdamW step: project -> Adam moments -> unproject -> weight update, in place.

Math and conventions: lowrank_ops/pure_torch/lowrank_adam.py (the chain of torch ops, backend
"reference") and lowrank_ops/ops/projection.py (the projection argument). The compiled and Triton backends
fuse the moment update into the projection GEMM's epilogue and the weight update into the unprojection
GEMM's epilogue, so no m x n temporary is formed.
"""

import torch

from .. import _checks, backends
from ..spec import BASIS_KINDS, DCT_MAX_DIM, INDEX_DTYPES, SEEDED_KINDS, STATE_BLOCK_SIZE, WD_MODES
from .projection import Projection, SideOperator

OP = "lowrank_adamw_step_"


def _flatten_side(op: SideOperator | None):
    """(kind, seed as int64, rank, tensor) schema arguments of one side; identity is kind "none". The tensor
    slot carries the matrix (kind "matrix") or the index vector (kinds "dct" and "sr_dct"; an "sr_dct" side's
    seed is its sign seed)."""
    if op is None:
        return "none", 0, 0, None
    tensor = op.indices if op.kind in BASIS_KINDS else op.matrix
    return op.kind, _checks.seed_to_int64(OP, op.seed), op.rank, tensor


def _check_dct_indices(name, indices, dim, device):
    """On W's device, values in [0, d). The values are read only for CPU tensors: on CUDA that would cost a
    device sync per step (the projection kind writes indices that dct_topk selected, always in range; an
    out-of-range index gives a row of the periodic extension of the basis, no memory fault)."""
    if indices.device != device:
        raise _checks.error(OP, name, f"on W's device {device}", indices.device)
    if indices.device.type == "cpu" and indices.numel() and not torch.compiler.is_compiling():
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= dim:
            raise _checks.error(OP, name, f"values in [0, {dim}) (basis rows of the projected dimension)",
                                f"values in [{lo}, {hi}]")


def _check_8bit(shape, exp_avg_absmax, exp_avg_sq_absmax, state_block_size, device) -> bool:
    """Whether the moments are 8-bit (absmax given); checks the absmax and the block length then."""
    if exp_avg_absmax is None and exp_avg_sq_absmax is None:
        return False
    block = _checks.int_at_least(OP, "state_block_size", state_block_size, 1)
    expected = (shape[0], -(-shape[1] // block))
    for name, absmax in (("exp_avg_absmax", exp_avg_absmax), ("exp_avg_sq_absmax", exp_avg_sq_absmax)):
        if absmax is None:
            raise _checks.error(OP, name, "a tensor when the other absmax is given (8-bit moments)", None)
        _checks.tensor(OP, name, absmax)
        if absmax.dtype != torch.float32 or tuple(absmax.shape) != expected:
            raise _checks.error(OP, name, f"a float32 tensor of shape {list(expected)} (one absmax per "
                                f"{block} elements of a row of the projected shape)", (list(absmax.shape), absmax.dtype))
        _checks.on_device(OP, name, absmax, device, "W")
    return True


def _check(W, G, exp_avg, exp_avg_sq, projection, step, wd_mode, delta, exp_avg_absmax=None, exp_avg_sq_absmax=None,
           state_block_size=STATE_BLOCK_SIZE, **hyperparameters):
    """Every argument of lowrank_adamw_step_, before any kernel runs (the same checks for every backend).
    NaN/Inf in G are not checked (that would cost a reduction per step): as in torch.optim.AdamW they reach
    the moments and W. The op layer (lowrank_ops/_guard.py) adds the rules of the arguments it writes."""
    _checks.weight_and_gradient(OP, W, G)
    if not isinstance(projection, Projection):
        raise TypeError(f"lowrank_ops.{OP}: argument 'projection' must be a lowrank_ops.ops.Projection, "
                        f"got {type(projection).__name__}")
    shape = projection.projected_shape(W.shape)
    for side, op, dim in (("left", projection.left, W.shape[0]), ("right", projection.right, W.shape[1])):
        if op is None:
            continue
        _checks.integer(OP, f"projection.{side}.rank", op.rank)
        if op.kind in SEEDED_KINDS or op.kind == "sr_dct":
            _checks.seed_to_int64(OP, op.seed, f"projection.{side}.seed")
        if op.kind == "matrix":
            name = f"projection.{side}.matrix"
            _checks.float_matrix(OP, name, op.matrix)
            if op.matrix.shape[1] != dim:
                raise _checks.error(OP, name, f"of shape [{op.rank}, {dim}]", list(op.matrix.shape))
            _checks.on_device(OP, name, op.matrix, W.device, "W")
        if op.kind in BASIS_KINDS:
            name = f"projection.{side}.indices"
            if dim > DCT_MAX_DIM:
                raise _checks.error(OP, "W", f"at most {DCT_MAX_DIM} along a {op.kind!r} side", list(W.shape))
            _checks.tensor(OP, name, op.indices)
            if op.indices.dtype not in INDEX_DTYPES or tuple(op.indices.shape) != (op.rank, ):
                raise _checks.error(OP, name, f"a 1-D int16, int32 or int64 tensor of length {op.rank} (the rank)",
                                    f"{op.indices.dtype} of shape {list(op.indices.shape)}")
            _check_dct_indices(name, op.indices, dim, W.device)
    if W.numel() == 0:
        raise _checks.error(OP, "W", "a non-empty matrix", list(W.shape))
    state_dtypes = (torch.float32, torch.float64) if W.dtype == torch.float64 else (torch.float32,)
    codes = _check_8bit(shape, exp_avg_absmax, exp_avg_sq_absmax, state_block_size, W.device)
    states = [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)] + ([("delta", delta)] if delta is not None else [])
    for name, state in states:
        _checks.tensor(OP, name, state)
        moment_codes = codes and name != "delta"
        dtype_ok = state.dtype == torch.uint8 if moment_codes else state.dtype in state_dtypes
        if tuple(state.shape) != shape or not dtype_ok:
            what = "a uint8 tensor (8-bit codes)" if moment_codes else "a float32 tensor"
            raise _checks.error(OP, name, f"{what} of the projected shape {list(shape)}",
                                (list(state.shape), state.dtype))
        _checks.on_device(OP, name, state, W.device, "W")
    _checks.adam_step_and_hyperparameters(OP, step, hyperparameters)
    _checks.choice(OP, "wd_mode", wd_mode, WD_MODES)
    if wd_mode == "adapter" and delta is None:
        raise _checks.error(OP, "delta", "a tensor when wd_mode='adapter'", None)


def lowrank_adamw_step_(W: torch.Tensor, G: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                        projection: Projection, *, lr: float, beta1: float, beta2: float, eps: float,
                        weight_decay: float, step: int, scale: float = 1.0, wd_mode: str = "full",
                        delta: torch.Tensor | None = None, exp_avg_absmax: torch.Tensor | None = None,
                        exp_avg_sq_absmax: torch.Tensor | None = None, state_block_size: int = STATE_BLOCK_SIZE,
                        backend=None) -> None:
    """One AdamW step of W through the projection, in place on W, exp_avg, exp_avg_sq (and `delta` in
    wd_mode "adapter"). W fp32/bf16 (fp32 math, one rounding on store) or fp64; G any float dtype;
    moments fp32 in the projected shape; `step` is the count after increment (t >= 1).

    Products: the C++ backends (cpu, cuda) multiply in float32 (float64 for float64 W). The Triton backend
    multiplies a 16-bit G with P rounded to G's dtype and, for a bfloat16 W, unprojects in bfloat16
    operands (tensor cores; accumulation and the elementwise math stay float32); see
    lowrank_ops/triton/lowrank_adam.py.

    8-bit moments (docs/DESIGN.md §3 "8-bit optimizer moments"): exp_avg and exp_avg_sq hold uint8 codes of the
    projected shape and `exp_avg_absmax`, `exp_avg_sq_absmax` their float32 absmax per `state_block_size`
    elements of a row, all updated in place; the step decodes, updates and encodes them inside the moment
    epilogue of the C++ CPU, CUDA and Triton kernels (around the float kernel on the pure-torch backend, and on
    Triton for a state_block_size over 256)."""
    _check(W, G, exp_avg, exp_avg_sq, projection, step, wd_mode, delta, exp_avg_absmax, exp_avg_sq_absmax,
           state_block_size, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, scale=scale)
    backend = backends.check(OP, backend, W.device)
    torch.ops.lowrank_ops.lowrank_adamw_step_(
        W, G, exp_avg, exp_avg_sq, delta, *_flatten_side(projection.left), *_flatten_side(projection.right),
        float(lr), float(beta1), float(beta2), float(eps), float(weight_decay), int(step), float(scale), wd_mode,
        exp_avg_absmax, exp_avg_sq_absmax, int(state_block_size), backend)
