"""The implementations of every op of lowrank_ops/_ops.py, per backend, all with the op's schema arguments
(without the trailing `backend`):

  "reference"  lowrank_ops.pure_torch.<family>   torch ops; any device
  "cpu"        lowrank_ops._C.cpu.<op>            C++ (csrc/cpu), when the extension is built
  "cuda"       lowrank_ops._C.cuda.<op>           CUDA (csrc/cuda + kernels/*.cu), in a build with CUDA sources
  "triton"     lowrank_ops.triton.<family>        Triton launchers, imported on first call (triton is optional)

lowrank_ops/_ops.py registers them as the ops' kernels per dispatch key and lowrank_ops.backends says which
of them can run where. A composite op (COMPOSITE) has one implementation for every backend: the backend it is
given picks the kernels of the op it is built on."""

import importlib

from . import _checks, _extension
from .pure_torch import apollo, dct, lowrank_adam, lowrank_adam8, philox, quant, range_finder, sketch

UINT64 = 2**64


def _triton(family: str):
    return importlib.import_module(f"lowrank_ops.triton.{family}")


# --- Triton launchers with the schema's arguments (seeds: the schema's int64, the launchers take uint64) --


def _triton_sketch_fill_(out, seed, kind):
    _triton("sketch").sketch_fill(out, seed % UINT64, kind)


def _triton_sketch_project(G, seed, rank, kind, side, out_dtype=None):
    return _triton("sketch").sketch_project(G, seed % UINT64, rank, kind, side, out_dtype)


def _triton_sketch_unproject(R, seed, dim, kind, side, out_dtype=None):
    return _triton("sketch").sketch_unproject(R, seed % UINT64, dim, kind, side, out_dtype)


def _triton_dct_scores(G, side, norm="l1", method="auto"):
    if method == "fft":  # one GEMM generates the basis inside its K-loop; there is no FFT path
        raise _checks.error("dct_scores", "method", "'auto' or 'gemm' on the Triton backend", repr(method))
    return _triton("dct").dct_scores(G, side, norm)


def _triton_dct_topk(G, rank, side, norm="l1", method="auto"):
    return dct.select_top(_triton_dct_scores(G, side, norm, method), rank)


def _triton_dct_basis(indices, dim, dtype):
    _checks.index_range("dct_basis", indices, dim)
    return _triton("dct").dct_basis(indices, dim, dtype)


def _triton_lowrank_adamw_step_(*args):
    _triton("lowrank_adam").lowrank_adamw_step_(*args)


def _triton_lowrank_adamw_step8_(*args):
    _triton("lowrank_adam").lowrank_adamw_step8_(*args)


def _triton_lowrank_apollo_step_(W, G, exp_avg, exp_avg_sq, limiter_norm, side, kind, seed, *args):
    _triton("apollo").lowrank_apollo_step_(W, G, exp_avg, exp_avg_sq, limiter_norm, side, kind, seed % UINT64, *args)


def _triton_lowrank_apollo_multi_step_(*lists):
    for args in zip(*lists):  # one launch pair per matrix: no grouped Triton kernel yet
        _triton_lowrank_apollo_step_(*args)


def _triton_lowrank_adamw_multi_step_(*args):
    _triton("lowrank_adam_multi").lowrank_adamw_multi_step_(*args)


def _triton_quantize_weight(W, format, group_size):
    return _triton("quant").quantize(W, format, group_size)


def _triton_dequantize_weight(codes, scales, format, group_size, rows, cols, dtype):
    return _triton("quant").dequantize(codes, scales, format, group_size, rows, cols, dtype)


def _triton_dequant_matmul(X, codes, scales, format, group_size, rows, cols, bias=None):
    return _triton("quant").dequant_matmul(X, codes, scales, format, group_size, rows, cols, bias)


def _triton_dequant_matmul_t(dY, codes, scales, format, group_size, rows, cols):
    return _triton("quant").dequant_matmul_t(dY, codes, scales, format, group_size, rows, cols)


# --- the table ------------------------------------------------------------------------------------------

PURE_TORCH = {
    "philox4x32": philox.philox4x32,
    "sketch_fill_": sketch.sketch_fill_,
    "sketch_project": sketch.sketch_project,
    "sketch_unproject": sketch.sketch_unproject,
    "dct_scores": dct.dct_scores,
    "dct_topk": dct.dct_topk,
    "dct_basis": dct.dct_basis,
    "dct_project": dct.dct_project,
    "dct_unproject": dct.dct_unproject,
    "lowrank_adamw_step_": lowrank_adam.lowrank_adamw_step_,
    "lowrank_apollo_step_": apollo.lowrank_apollo_step_,
    "lowrank_apollo_multi_step_": apollo.lowrank_apollo_multi_step_,
    "lowrank_adamw_multi_step_": lowrank_adam.lowrank_adamw_multi_step_,
    "quantize_weight": quant.quantize_weight,
    "dequantize_weight": quant.dequantize_weight,
    "dequant_matmul": quant.dequant_matmul,
    "dequant_matmul_t": quant.dequant_matmul_t,
}

TRITON = {
    "sketch_fill_": _triton_sketch_fill_,
    "sketch_project": _triton_sketch_project,
    "sketch_unproject": _triton_sketch_unproject,
    "dct_scores": _triton_dct_scores,
    "dct_topk": _triton_dct_topk,
    "dct_basis": _triton_dct_basis,
    "lowrank_adamw_step_": _triton_lowrank_adamw_step_,
    "lowrank_apollo_step_": _triton_lowrank_apollo_step_,
    "lowrank_apollo_multi_step_": _triton_lowrank_apollo_multi_step_,
    "lowrank_adamw_multi_step_": _triton_lowrank_adamw_multi_step_,
    "quantize_weight": _triton_quantize_weight,
    "dequantize_weight": _triton_dequantize_weight,
    "dequant_matmul": _triton_dequant_matmul,
    "dequant_matmul_t": _triton_dequant_matmul_t,
}  # philox4x32 has none (the Triton kernels draw their words with tl.randint4x), nor have dct_project and
# dct_unproject yet (CUDA tensors take their pure-torch kernel)

# op -> (its one implementation, the op whose backends it runs on)
COMPOSITE = {"range_finder": (range_finder.range_finder, "sketch_project")}


def _adamw_step(float_step, step8=None):
    """lowrank_adamw_step_'s implementation on a backend from its kernel on float moments (the schema's
    arguments up to wd_mode) and, where the backend has one, its kernel on 8-bit moments (`step8`: the same
    arguments, then exp_avg_absmax, exp_avg_sq_absmax, state_block_size: the C++ CPU and CUDA kernels, the
    Triton one). A backend without one (the pure-torch kernel; a build of the extension without
    lowrank_adamw_step8_) decodes the 8-bit moments, runs its float kernel and encodes them
    (pure_torch/lowrank_adam8.py)."""

    def run(*args):
        *schema, exp_avg_absmax, exp_avg_sq_absmax, block = args
        if exp_avg_absmax is None:
            return float_step(*schema)
        if step8 is not None:
            return step8(*schema, exp_avg_absmax, exp_avg_sq_absmax, block)
        return lowrank_adam8.step_around(float_step, *schema, exp_avg_absmax, exp_avg_sq_absmax, block)

    return run


def _adamw_multi_step(multi_step, step, multi8=None):
    """lowrank_adamw_multi_step_'s implementation on a backend: `multi8`, its kernel with the 8-bit lists (the C++
    CPU one), where the backend has one; else the matrices with float moments through the backend's float kernel
    `multi_step` (the schema's arguments up to wd_mode) and each 8-bit one through `step`, lowrank_adamw_step_'s
    implementation on the backend (pure_torch/lowrank_adam8.py's multi_step_around)."""

    def run(*args):
        *schema, exp_avg_absmax, exp_avg_sq_absmax, blocks = args
        lists = (*schema, exp_avg_absmax or [], exp_avg_sq_absmax or [], blocks)  # None: no 8-bit matrix
        if multi8 is not None:
            return multi8(*lists)
        return lowrank_adam8.multi_step_around(multi_step, step, *lists)

    return run


def _implementations(op: str) -> dict:
    table = {"reference": PURE_TORCH[op]}
    for device_type in ("cpu", "cuda"):
        module = _extension.compiled(device_type)
        if module is not None and hasattr(module, op):
            table[device_type] = getattr(module, op)
    if op in TRITON:
        table["triton"] = TRITON[op]
    if op == "lowrank_adamw_step_":  # 8-bit moments: the kernels that take them (their epilogues decode/encode)
        step8 = {device_type: getattr(_extension.compiled(device_type), "lowrank_adamw_step8_", None)
                 for device_type in ("cpu", "cuda")} | {"triton": _triton_lowrank_adamw_step8_}
        table = {name: _adamw_step(f, step8.get(name)) for name, f in table.items()}
    if op == "lowrank_adamw_multi_step_":  # 8-bit moments: the C++ CPU kernel takes them (blocked path's epilogue)
        cpu8 = getattr(_extension.compiled("cpu"), "lowrank_adamw_multi_step8_", None)
        single = _implementations("lowrank_adamw_step_")
        table = {name: _adamw_multi_step(f, single[name], cpu8 if name == "cpu" else None) for name, f in table.items()}
    return table


# op -> backend -> function, for every op with per-backend implementations
IMPLEMENTATIONS = {op: _implementations(op) for op in PURE_TORCH}
