"""Every op of torch.ops.lowrank_ops, defined once: its schema, its fake kernel (shapes and dtypes for
torch.compile and meta tensors), its autograd formula (the differentiable ops) and its kernels per dispatch
key (docs/DESIGN.md §4):

  CPU                         the C++ kernel (lowrank_ops._C.cpu), registered when the extension is built
  CUDA                        the CUDA setting's implementation (lowrank_ops.backends: Triton or C++ CUDA)
  CompositeExplicitAutograd   the pure-torch kernel (lowrank_ops.pure_torch): every other device, and CPU
                              tensors when the extension is not built

Before any kernel runs, every op enforces the rules of lowrank_ops/_guard.py, read from its schema: one
device for all tensor arguments, and torch's in-place rules (no autograd, no overlap, a version bump) for
the arguments it writes (`Tensor(a!)`).

Every schema ends in `str? backend=None`: a named backend ("cpu", "cuda", "triton", "reference") overrides
the kernel's own choice, which is how the public functions' `backend=` keyword reaches the kernels (one
dispatch path; a graph compiled with it keeps it as a constant). Conventions: `seed` is a uint64 passed
through int64 (two's complement); `kind` is "rademacher" or "gaussian"; `side` is "left" or "right".
"""

import torch

from . import backends
from ._guard import Rules
from ._kernels import COMPOSITE, IMPLEMENTATIONS
from .spec import compute_dtype

LIB = torch.library.Library("lowrank_ops", "DEF")
DEFAULTS = {}  # op -> the default of each schema argument (None where it has none)
RULES = {}  # op -> its lowrank_ops._guard.Rules


def _full_args(op: str, args: tuple) -> tuple:
    """The dispatcher drops trailing arguments that equal their defaults: put them back."""
    return (*args, *DEFAULTS[op][len(args):])


def _device(first) -> torch.device:
    """The device an op runs on: that of its first argument, a tensor or (multi-tensor ops) a non-empty list
    of tensors."""
    return first[0].device if isinstance(first, (list, tuple)) else first.device


def _kernel(op: str, default):
    """The kernel of `op` for one dispatch key: the implementation its `backend` argument names (checked,
    for torch.ops callers that did not go through lowrank_ops.ops), else the one `default(op)` names."""
    table = IMPLEMENTATIONS[op]

    def kernel(*args):
        *inputs, backend = _full_args(op, args)
        RULES[op].check_and_bump(inputs)
        chosen = default(op) if backend is None else backends.check(op, backend, _device(inputs[0]))
        with torch.no_grad():  # a kernel records no autograd history: an op's gradient is its registered formula
            return table[chosen](*inputs)

    kernel.__name__ = f"{op}_kernel"
    return kernel


def _composite_kernel(op: str):
    """A composite op's one kernel: its implementation, with the backend for the ops it is built on."""
    implementation = COMPOSITE[op][0]

    def kernel(*args):
        *inputs, backend = _full_args(op, args)
        RULES[op].check_and_bump(inputs)
        with torch.no_grad():
            return implementation(*inputs, backends.check(op, backend, _device(inputs[0])))

    kernel.__name__ = f"{op}_kernel"
    return kernel


def _checked_fake(op: str, fake):
    """The fake kernel behind the device rule: it also runs for real meta tensors, and for a meta tensor
    beside a CPU one (the dispatcher picks the Meta kernel), which would otherwise silently do nothing."""

    def checked(*args, **kwargs):
        RULES[op].check_devices(args)
        return fake(*args, **kwargs)

    return checked


def _define(op: str, schema: str, fake) -> None:
    """Defines lowrank_ops::<op> with `schema` (arguments and returns), its fake kernel and its kernels."""
    LIB.define(op + schema)
    parsed = getattr(torch.ops.lowrank_ops, op).default._schema
    DEFAULTS[op] = tuple(a.default_value if a.has_default_value() else None for a in parsed.arguments)
    RULES[op] = Rules(op, parsed)
    torch.library.register_fake(f"lowrank_ops::{op}", _checked_fake(op, fake), lib=LIB)
    if op in COMPOSITE:
        LIB.impl(op, _composite_kernel(op), "CompositeExplicitAutograd")
        return
    LIB.impl(op, _kernel(op, lambda op: "reference"), "CompositeExplicitAutograd")
    if "cpu" in IMPLEMENTATIONS[op]:
        LIB.impl(op, _kernel(op, lambda op: "cpu"), "CPU")
    LIB.impl(op, _kernel(op, backends.default_cuda), "CUDA")


# --------------------------------------------------------------------------------------------------------
# sketch family (spec v1, docs/DESIGN.md §3)
# --------------------------------------------------------------------------------------------------------

# Philox4x32 output words for int64 counters [..., 4] of uint32 values.
_define("philox4x32", "(Tensor counters, int seed, int rounds=10, str? backend=None) -> Tensor",
        lambda counters, seed, rounds=10, backend=None: torch.empty_like(counters))

# Fills `out` (r x d) with the sketch of spec v1.
_define("sketch_fill_", "(Tensor(a!) out, int seed, str kind, str? backend=None) -> ()",
        lambda out, seed, kind, backend=None: None)


def _fake_project(G, seed, rank, kind, side, out_dtype=None, backend=None):
    shape = (rank, G.shape[1]) if side == "left" else (G.shape[0], rank)
    return G.new_empty(shape, dtype=out_dtype or G.dtype)


def _fake_unproject(R, seed, dim, kind, side, out_dtype=None, backend=None):
    shape = (dim, R.shape[1]) if side == "left" else (R.shape[0], dim)
    return R.new_empty(shape, dtype=out_dtype or R.dtype)


# P G (left) or G P^T (right) without materializing P.
_define("sketch_project", "(Tensor G, int seed, int rank, str kind, str side, ScalarType? out_dtype=None, "
                          "str? backend=None) -> Tensor", _fake_project)
# P^T R (left) or R P (right) without materializing P.
_define("sketch_unproject", "(Tensor R, int seed, int dim, str kind, str side, ScalarType? out_dtype=None, "
                            "str? backend=None) -> Tensor", _fake_unproject)


def _setup_linear(ctx, inputs, output):
    # project: X = G, the size saved is G's projected dimension (unproject's dim); unproject: X = R, the
    # size saved is R's rank dimension (project's rank)
    X, seed, _, kind, side, _, backend = inputs  # setup_context gets every argument, defaults included
    ctx.args = (seed, X.shape[0] if side == "left" else X.shape[1], kind, side, X.dtype, backend)


# d/dG <dY, P G> = P^T dY and d/dR <dY, P^T R> = P dY (left; right likewise): the backward of each op is the
# other op, on the same backend, applied to the incoming gradient (so double backward works too).
torch.library.register_autograd(
    "lowrank_ops::sketch_project", lambda ctx, grad: (torch.ops.lowrank_ops.sketch_unproject(grad, *ctx.args),
                                                      *[None] * 6),
    setup_context=_setup_linear, lib=LIB)
torch.library.register_autograd(
    "lowrank_ops::sketch_unproject", lambda ctx, grad: (torch.ops.lowrank_ops.sketch_project(grad, *ctx.args),
                                                        *[None] * 6),
    setup_context=_setup_linear, lib=LIB)

# --------------------------------------------------------------------------------------------------------
# dct family (docs/DESIGN.md §3)
# --------------------------------------------------------------------------------------------------------

# Norms ("l1" | "l2") of the rows of D G (left) or columns of G D^T (right); float32 (float64 for float64 G).
# method: "auto" | "gemm" | "fft", how the CPU kernel computes them (CUDA and Triton take "auto" | "gemm").
_define("dct_scores", '(Tensor G, str side, str norm="l1", str method="auto", str? backend=None) -> Tensor',
        lambda G, side, norm="l1", method="auto", backend=None: G.new_empty(
            (G.shape[0] if side == "left" else G.shape[1], ), dtype=compute_dtype(G.dtype)))
# The `rank` best basis rows by score: int32, ascending, ties to the lower index.
_define("dct_topk", '(Tensor G, int rank, str side, str norm="l1", str method="auto", str? backend=None) -> Tensor',
        lambda G, rank, side, norm="l1", method="auto", backend=None: G.new_empty((rank, ), dtype=torch.int32))
# Rows indices[i] of the dim x dim basis, in `dtype`.
_define("dct_basis", "(Tensor indices, int dim, ScalarType dtype, str? backend=None) -> Tensor",
        lambda indices, dim, dtype, backend=None: indices.new_empty((indices.shape[0], dim), dtype=dtype))


def _fake_dct_project(G, indices, side, signs=None, out_dtype=None, method="auto", backend=None):
    r = indices.shape[0]
    return G.new_empty((r, G.shape[1]) if side == "left" else (G.shape[0], r), dtype=out_dtype or G.dtype)


def _fake_dct_unproject(R, indices, dim, side, signs=None, out_dtype=None, method="auto", backend=None):
    return R.new_empty((dim, R.shape[1]) if side == "left" else (R.shape[0], dim), dtype=out_dtype or R.dtype)


# P G (left) or G P^T (right) for P[i, t] = signs[t] D[indices[i], t] (signs None: 1); method "auto" |
# "gemm" | "fft", how the CPU kernel computes it (the other kernels have one way).
_define("dct_project", '(Tensor G, Tensor indices, str side, Tensor? signs=None, ScalarType? out_dtype=None, '
                       'str method="auto", str? backend=None) -> Tensor', _fake_dct_project)
# P^T R (left) or R P (right) for the same P (dim x n or m x dim).
_define("dct_unproject", '(Tensor R, Tensor indices, int dim, str side, Tensor? signs=None, '
                         'ScalarType? out_dtype=None, str method="auto", str? backend=None) -> Tensor',
        _fake_dct_unproject)


def _setup_dct_project(ctx, inputs, output):
    G, indices, side, signs, _, method, backend = inputs
    ctx.save_for_backward(indices, signs)
    ctx.args = (G.shape[0] if side == "left" else G.shape[1], side, G.dtype, method, backend)


def _setup_dct_unproject(ctx, inputs, output):
    R, indices, _, side, signs, _, method, backend = inputs
    ctx.save_for_backward(indices, signs)
    ctx.args = (side, R.dtype, method, backend)


def _backward_dct_project(ctx, grad):
    """d/dG <dY, P G> = P^T dY (left; right likewise): the adjoint op, which gives double backward too. The
    indices and signs get no gradient."""
    indices, signs = ctx.saved_tensors
    dim, side, dtype, method, backend = ctx.args
    return (torch.ops.lowrank_ops.dct_unproject(grad, indices, dim, side, signs, dtype, method, backend),
            *[None] * 6)


def _backward_dct_unproject(ctx, grad):
    indices, signs = ctx.saved_tensors
    side, dtype, method, backend = ctx.args
    return torch.ops.lowrank_ops.dct_project(grad, indices, side, signs, dtype, method, backend), *[None] * 7


torch.library.register_autograd("lowrank_ops::dct_project", _backward_dct_project,
                                setup_context=_setup_dct_project, lib=LIB)
torch.library.register_autograd("lowrank_ops::dct_unproject", _backward_dct_unproject,
                                setup_context=_setup_dct_unproject, lib=LIB)

# --------------------------------------------------------------------------------------------------------
# lowrank_adam family: the fused project -> Adam -> unproject step (lowrank_ops/ops/lowrank_adam.py)
# --------------------------------------------------------------------------------------------------------

# R = L G R^T with each side "none" | "rademacher" | "gaussian" (seeded) | "matrix" (explicit rank x d, in
# the side's matrix slot) | "dct" (basis rows; the index vector in the matrix slot) | "sr_dct" (basis rows signed
# by the side's seed, docs/DESIGN.md §3; the index vector in the matrix slot); moments on R (fp32, or 8-bit:
# exp_avg / exp_avg_sq uint8 codes with their float32 absmax per state_block_size elements of a row, §3);
# W <- W - lr wd W - lr scale L^T N R ("full") or the adapter form with `delta`. In place; an optimizer step
# is not differentiated (no autograd).
_define("lowrank_adamw_step_",
        "(Tensor(a!) W, Tensor G, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor(d!)? delta, str left_kind, "
        "int left_seed, int left_rank, Tensor? left_matrix, str right_kind, int right_seed, int right_rank, "
        "Tensor? right_matrix, float lr, float beta1, float beta2, float eps, float weight_decay, int step, "
        "float scale, str wd_mode, Tensor(e!)? exp_avg_absmax=None, Tensor(f!)? exp_avg_sq_absmax=None, "
        "int state_block_size=256, str? backend=None) -> ()",
        lambda *args, **kwargs: None)

# APOLLO / APOLLO-Mini (lowrank_ops/ops/apollo.py): R = proj_scale P G (left) or G P^T (right), side kind
# "rademacher" | "gaussian" (seeded) | "matrix" (explicit rank x d); moments on R; W scaled per kept channel
# ("channel") or as a whole ("tensor") with the norm-growth limiter. In place; not differentiated.
_define("lowrank_apollo_step_",
        "(Tensor(a!) W, Tensor G, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor(d!) limiter_norm, str side, "
        "str kind, int seed, int rank, Tensor? matrix, float proj_scale, float lr, float beta1, float beta2, "
        "float eps, float weight_decay, int step, float scale, str scale_type, bool limiter, bool correct_bias, "
        "str? backend=None) -> ()",
        lambda *args, **kwargs: None)

# The APOLLO step for a list of matrices in one call (lowrank_ops/ops/apollo_multi.py): entry i of every list is
# matrix i's argument of lowrank_apollo_step_, hyperparameters included.
_define("lowrank_apollo_multi_step_",
        "(Tensor(a!)[] W, Tensor[] G, Tensor(b!)[] exp_avg, Tensor(c!)[] exp_avg_sq, Tensor(d!)[] limiter_norm, "
        "str[] side, str[] kind, int[] seed, int[] rank, Tensor?[] matrix, float[] proj_scale, float[] lr, "
        "float[] beta1, float[] beta2, float[] eps, float[] weight_decay, int[] step, float[] scale, "
        "str[] scale_type, bool[] limiter, bool[] correct_bias, str? backend=None) -> ()",
        lambda *args, **kwargs: None)

# The same step for a list of matrices in one call (lowrank_ops/ops/lowrank_adam_multi.py): entry i of every
# list is matrix i's argument of lowrank_adamw_step_, hyperparameters included (so one call serves several
# parameter groups and per-matrix step counts). `delta` holds the adapters of the matrices whose wd_mode is
# "adapter", in order (a list of optional mutable tensors does not functionalize in torch.compile). 8-bit
# moments: `state_block_size` is empty (float moments only) or one per matrix, 0 where matrix i has float
# moments and its block length where exp_avg[i], exp_avg_sq[i] are 8-bit codes; `exp_avg_absmax` and
# `exp_avg_sq_absmax` hold the absmax of the 8-bit matrices, in order (as `delta`; None: no 8-bit matrix).
_define("lowrank_adamw_multi_step_",
        "(Tensor(a!)[] W, Tensor[] G, Tensor(b!)[] exp_avg, Tensor(c!)[] exp_avg_sq, Tensor(d!)[] delta, "
        "str[] left_kind, int[] left_seed, int[] left_rank, Tensor?[] left_matrix, str[] right_kind, "
        "int[] right_seed, int[] right_rank, Tensor?[] right_matrix, float[] lr, float[] beta1, float[] beta2, "
        "float[] eps, float[] weight_decay, int[] step, float[] scale, str[] wd_mode, "
        "Tensor(e!)[]? exp_avg_absmax=None, Tensor(f!)[]? exp_avg_sq_absmax=None, int[] state_block_size=[], "
        "str? backend=None) -> ()",
        lambda *args, **kwargs: None)

# --------------------------------------------------------------------------------------------------------
# quant family: INT8 / NF4 weights and the dequant-matmul (docs/DESIGN.md §3)
# --------------------------------------------------------------------------------------------------------


def _fake_quantize(W, format, group_size, backend=None):
    rows, cols = W.shape
    if format == "int8":
        return (W.new_empty((rows, cols), dtype=torch.int8),
                W.new_empty((rows, -(-cols // group_size)), dtype=torch.float32))
    numel = rows * cols
    return (W.new_empty((-(-numel // 2), ), dtype=torch.uint8),
            W.new_empty((-(-numel // group_size), ), dtype=torch.float32))


# W [rows, cols] -> (codes, scales): int8 codes [rows, cols] + float32 scales [rows, ceil(cols / g)], or nf4
# codes uint8 [ceil(rows cols / 2)] + float32 absmax [ceil(rows cols / g)] (bitsandbytes' layout).
_define("quantize_weight", "(Tensor W, str format, int group_size, str? backend=None) -> (Tensor, Tensor)",
        _fake_quantize)
_define("dequantize_weight", "(Tensor codes, Tensor scales, str format, int group_size, int rows, int cols, "
                             "ScalarType dtype, str? backend=None) -> Tensor",
        lambda codes, scales, format, group_size, rows, cols, dtype, backend=None: codes.new_empty(
            (rows, cols), dtype=dtype))
# Y = X deq(W)^T (+ bias), X [tokens, cols], without materializing deq(W) in full.
_define("dequant_matmul", "(Tensor X, Tensor codes, Tensor scales, str format, int group_size, int rows, int cols, "
                          "Tensor? bias=None, str? backend=None) -> Tensor",
        lambda X, codes, scales, format, group_size, rows, cols, bias=None, backend=None: X.new_empty(
            (X.shape[0], rows)))
# dX = dY deq(W), dY [tokens, rows]: the input gradient of dequant_matmul.
_define("dequant_matmul_t", "(Tensor dY, Tensor codes, Tensor scales, str format, int group_size, int rows, "
                            "int cols, str? backend=None) -> Tensor",
        lambda dY, codes, scales, format, group_size, rows, cols, backend=None: dY.new_empty((dY.shape[0], cols)))


def _setup_matmul(ctx, inputs, output):
    _, *weight, bias, backend = inputs
    ctx.weight, ctx.backend, ctx.has_bias = tuple(weight), backend, bias is not None


def _backward_matmul(ctx, grad):
    """Y = X deq(W)^T + b is linear in X and b: dX = dY deq(W), db = sum_t dY. Codes, scales: no gradient."""
    dX = torch.ops.lowrank_ops.dequant_matmul_t(grad, *ctx.weight, ctx.backend) if ctx.needs_input_grad[0] else None
    db = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[7] else None
    return dX, *[None] * 6, db, None


def _setup_matmul_t(ctx, inputs, output):
    _, *weight, backend = inputs
    ctx.weight, ctx.backend = tuple(weight), backend


def _backward_matmul_t(ctx, grad):
    """matmul_t is linear in dY with adjoint matmul, which gives double backward."""
    return torch.ops.lowrank_ops.dequant_matmul(grad, *ctx.weight, None, ctx.backend), *[None] * 7


torch.library.register_autograd("lowrank_ops::dequant_matmul", _backward_matmul, setup_context=_setup_matmul,
                                lib=LIB)
torch.library.register_autograd("lowrank_ops::dequant_matmul_t", _backward_matmul_t,
                                setup_context=_setup_matmul_t, lib=LIB)

# --------------------------------------------------------------------------------------------------------
# range_finder family (composite: its sketch GEMM is sketch_project on the given backend)
# --------------------------------------------------------------------------------------------------------


def _fake_range_finder(G, rank, oversample, power_iters, seed, side, backend=None):
    compute = compute_dtype(G.dtype)
    d = G.shape[0] if side == "left" else G.shape[1]
    return (G.new_empty((d, rank), dtype=compute), G.new_empty((rank, ), dtype=compute),
            G.new_empty((), dtype=torch.float64), G.new_empty((), dtype=torch.int64))


# (Q, S, ||G||_F^2, fallbacks): range_finder's basis (d x rank) and singular values, ||G||_F^2 (float64,
# 0-dim) and how many orthonormalizations fell back from CholeskyQR2 to Householder QR (int64, 0-dim).
_define("range_finder", "(Tensor G, int rank, int oversample, int power_iters, int seed, str side, "
                        "str? backend=None) -> (Tensor, Tensor, Tensor, Tensor)", _fake_range_finder)

OPS = tuple(DEFAULTS)
