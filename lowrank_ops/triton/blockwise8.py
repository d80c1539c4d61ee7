"""Triton form of the blockwise 8-bit moment format (docs/DESIGN.md §3 "8-bit optimizer moments"; the
arithmetic of kernels/blockwise8.h, bit for bit):

  encode   per block of `block` columns of a row: absmax = max |v| (NaN if the block holds one),
           x = v / absmax by a correctly rounded division (div_rn; 0 where absmax is 0),
           q = #{i : mid_i < x} by an 8-step binary search over the 255 float32 midpoints (ties to the
           lower index; NaN gives 0)
  decode   code[q] * absmax in float32

The device functions `q8_encode` and `q8_absmax`, and the whole 8-bit moment epilogue `q8_adam_epilogue`,
are for the fused steps' projection GEMMs on tiles that hold whole blocks; the kernels here encode / decode a
whole moment and run the epilogue on a whole projected gradient (tests; the optimizers). Code tables are passed as float32 tensors (pure_torch/blockwise8.py builds them).
Launchers take and return torch tensors (CUDA tensors; CPU tensors when TRITON_INTERPRET=1 was set before
this module was imported).
"""

import math

import torch
import triton
import triton.language as tl

from ..pure_torch.blockwise8 import code_table, midpoints, num_blocks
from ..spec import STATE_BLOCK_SIZE
from ._common import check_device

CODES = tl.constexpr(256)
SEARCH_STEPS = tl.constexpr(8)  # log2(256): the binary search's steps


@triton.jit
def q8_encode(x, mid_ptr):
    """Codes (int32) of the normalized values x: the number of midpoints strictly below x."""
    lo = tl.zeros(x.shape, dtype=tl.int32)
    hi = tl.full(x.shape, CODES - 1, dtype=tl.int32)
    for _ in tl.static_range(SEARCH_STEPS):
        active = lo < hi
        m = (lo + hi) >> 1
        below = tl.load(mid_ptr + m, mask=active, other=float("inf")) < x
        lo = tl.where(active & below, m + 1, lo)
        hi = tl.where(active, tl.where(below, hi, m), hi)
    return lo


@triton.jit
def q8_absmax(v, axis: tl.constexpr):
    """max |v| along `axis`, NaN when a NaN is there (tl.max's NaN handling differs between targets)."""
    a = tl.abs(v)
    nan = a != a  # noqa: PLR0124 (the NaN test that compiles and interprets alike)
    has_nan = tl.max(nan.to(tl.int32), axis=axis) > 0
    return tl.where(has_nan, float("nan"), tl.max(tl.where(nan, 0.0, a), axis=axis))


@triton.jit
def q8_normalize(v, absmax):
    """v / absmax (correctly rounded), 0 where absmax is 0; absmax broadcast to v."""
    safe = tl.where(absmax == 0, 1.0, absmax)
    return tl.where(absmax == 0, 0.0, tl.math.div_rn(v, safe))


@triton.jit
def _encode_kernel(v_ptr, codes_ptr, absmax_ptr, mid_ptr, rows, cols, BLOCK: tl.constexpr, WIDTH: tl.constexpr,
                   ROWS: tl.constexpr):
    """ROWS rows x one block of columns per program; v, codes contiguous [rows, cols]; WIDTH >= BLOCK a power of
    two."""
    blocks = (cols + BLOCK - 1) // BLOCK
    b = tl.program_id(1)
    r = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    k = tl.arange(0, WIDTH)[None, :]
    c = b * BLOCK + k
    ok = (r < rows) & (k < BLOCK) & (c < cols)
    v = tl.load(v_ptr + r * cols + c, mask=ok, other=0.0).to(tl.float32)
    absmax = q8_absmax(v, 1)
    q = q8_encode(q8_normalize(v, tl.broadcast_to(absmax[:, None], v.shape)), mid_ptr)
    tl.store(codes_ptr + r * cols + c, q.to(tl.uint8), mask=ok)
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    tl.store(absmax_ptr + row.to(tl.int64) * blocks + b, absmax, mask=row < rows)


@triton.jit
def _decode_kernel(codes_ptr, absmax_ptr, code_ptr, out_ptr, rows, cols, BLOCK: tl.constexpr, ROWS: tl.constexpr,
                   COLS: tl.constexpr):
    """out [rows, cols] (contiguous float32) = code[codes] * absmax of each element's block."""
    blocks = (cols + BLOCK - 1) // BLOCK
    r = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    c = (tl.program_id(1) * COLS + tl.arange(0, COLS))[None, :]
    ok = (r < rows) & (c < cols)
    q = tl.load(codes_ptr + r * cols + c, mask=ok, other=0).to(tl.int32)
    a = tl.load(absmax_ptr + r * blocks + c // BLOCK, mask=ok, other=0.0)
    tl.store(out_ptr + r * cols + c, tl.load(code_ptr + q) * a, mask=ok)


@triton.jit
def q8_adam_epilogue(acc, ok, at, ab, qm_ptr, am_ptr, qv_ptr, av_ptr, delta_ptr, scode_ptr, smid_ptr, ucode_ptr,
                     umid_ptr, beta1_weight, beta2, one_minus_beta2, bias1, bias2_sqrt, eps, lr, adapter_decay,
                     ADAPTER: tl.constexpr):
    """The moment update of the projected tile `acc` [ROWS, WIDTH] (compute dtype) on 8-bit moments, where each
    tile row is one block (its elements at offsets `at`, valid where `ok`; the block's absmax at offsets `ab`
    [ROWS]): decode, kernels/adam.h's update in acc's dtype, encode the updated values rounded to float32.
    Returns the direction N (ADAPTER: N + wd D, with D <- D - lr (N + wd D)), as the float epilogue of
    lowrank_ops/triton/lowrank_adam.py."""
    ACC: tl.constexpr = acc.dtype
    qm = tl.load(qm_ptr + at, mask=ok, other=0).to(tl.int32)
    qv = tl.load(qv_ptr + at, mask=ok, other=0).to(tl.int32)
    am = tl.load(am_ptr + ab, mask=ab >= 0, other=0.0)[:, None]
    av = tl.load(av_ptr + ab, mask=ab >= 0, other=0.0)[:, None]
    m = (tl.load(scode_ptr + qm) * am).to(ACC)
    v = (tl.load(ucode_ptr + qv) * av).to(ACC)
    m = m + tl.to_tensor(beta1_weight).to(ACC) * (acc - m)
    v = v * tl.to_tensor(beta2).to(ACC) + tl.to_tensor(one_minus_beta2).to(ACC) * acc * acc
    denom = tl.div_rn(tl.sqrt_rn(v), tl.to_tensor(bias2_sqrt).to(ACC)) + tl.to_tensor(eps).to(ACC)
    out = tl.div_rn(tl.div_rn(m, tl.to_tensor(bias1).to(ACC)), denom)
    if ADAPTER:
        delta = tl.load(delta_ptr + at, mask=ok, other=0.0).to(ACC)
        out = out + tl.to_tensor(adapter_decay).to(ACC) * delta
        tl.store(delta_ptr + at, (delta - tl.to_tensor(lr).to(ACC) * out).to(delta_ptr.dtype.element_ty), mask=ok)
    _encode_store(m, ok, at, ab, qm_ptr, am_ptr, smid_ptr)
    _encode_store(v, ok, at, ab, qv_ptr, av_ptr, umid_ptr)
    return out


@triton.jit
def _encode_store(value, ok, at, ab, q_ptr, a_ptr, mid_ptr):
    """Encodes the tile `value` (one block per row, rounded to float32) into the codes at `at` and the absmax
    at `ab`."""
    x = tl.where(ok, value.to(tl.float32), 0.0)
    absmax = q8_absmax(x, 1)
    q = q8_encode(q8_normalize(x, tl.broadcast_to(absmax[:, None], x.shape)), mid_ptr)
    tl.store(q_ptr + at, q.to(tl.uint8), mask=ok)
    tl.store(a_ptr + ab, absmax, mask=ab >= 0)


@triton.jit
def _adam_moments_kernel(r_ptr, qm_ptr, am_ptr, qv_ptr, av_ptr, delta_ptr, scode_ptr, smid_ptr, ucode_ptr, umid_ptr,
                         rows, cols, beta1_weight: tl.float64, beta2: tl.float64, one_minus_beta2: tl.float64,
                         bias1: tl.float64, bias2_sqrt: tl.float64, eps: tl.float64, lr: tl.float64,
                         adapter_decay: tl.float64, BLOCK: tl.constexpr, WIDTH: tl.constexpr, ROWS: tl.constexpr,
                         ADAPTER: tl.constexpr):
    """q8_adam_epilogue on a whole projected gradient r [rows, cols] (contiguous; overwritten with the
    direction): ROWS rows x one block of columns per program."""
    blocks = (cols + BLOCK - 1) // BLOCK
    b = tl.program_id(1)
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    r = row.to(tl.int64)[:, None]
    k = tl.arange(0, WIDTH)[None, :]
    c = b * BLOCK + k
    ok = (r < rows) & (k < BLOCK) & (c < cols)
    at = r * cols + c
    ab = tl.where(row < rows, row.to(tl.int64) * blocks + b, -1)
    acc = tl.load(r_ptr + at, mask=ok, other=0.0)
    out = q8_adam_epilogue(acc, ok, at, ab, qm_ptr, am_ptr, qv_ptr, av_ptr, delta_ptr, scode_ptr, smid_ptr,
                           ucode_ptr, umid_ptr, beta1_weight, beta2, one_minus_beta2, bias1, bias2_sqrt, eps, lr,
                           adapter_decay, ADAPTER)
    tl.store(r_ptr + at, out, mask=ok)


ENCODE_ROWS, DECODE_ROWS, DECODE_COLS = 4, 8, 128


def _width(block: int) -> int:
    return triton.next_power_of_2(block)


def encode(values: torch.Tensor, signed: bool, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 [rows, cols], absmax float32 [rows, ceil(cols / block)]) of the 2-D `values` (as float32)."""
    check_device(values.device, "blockwise8", "values")
    v = values.to(torch.float32).contiguous()
    rows, cols = v.shape
    codes = torch.empty(rows, cols, dtype=torch.uint8, device=v.device)
    absmax = torch.empty(rows, num_blocks(cols, block), dtype=torch.float32, device=v.device)
    if v.numel():
        grid = (triton.cdiv(rows, ENCODE_ROWS), num_blocks(cols, block))
        _encode_kernel[grid](v, codes, absmax, midpoints(signed, v.device), rows, cols, BLOCK=block,
                             WIDTH=_width(block), ROWS=ENCODE_ROWS)
    return codes, absmax


def decode(codes: torch.Tensor, absmax: torch.Tensor, signed: bool, block: int) -> torch.Tensor:
    """float32 [rows, cols]: code[codes] * absmax."""
    check_device(codes.device, "blockwise8", "codes")
    rows, cols = codes.shape
    out = torch.empty(rows, cols, dtype=torch.float32, device=codes.device)
    if codes.numel():
        grid = (triton.cdiv(rows, DECODE_ROWS), triton.cdiv(cols, DECODE_COLS))
        _decode_kernel[grid](codes.contiguous(), absmax.contiguous(), code_table(signed, codes.device), out, rows,
                             cols, BLOCK=block, ROWS=DECODE_ROWS, COLS=DECODE_COLS)
    return out


def adam_moments_(r, exp_avg, exp_avg_absmax, exp_avg_sq, exp_avg_sq_absmax, delta, block, lr, beta1, beta2, eps,
                  weight_decay, step, adapter) -> None:
    """q8_adam_epilogue over a whole projected gradient r ([rows, cols], contiguous float32;
    overwritten with the direction), in place on the codes, their absmax (and delta): the Triton twin of the
    C++ epilogue entry _C.cpu.blockwise8_adam_moments_ (same arguments)."""
    check_device(r.device, "blockwise8", "r")
    rows, cols = r.shape
    if not r.numel():
        return
    b1w, b2, omb2 = 1.0 - beta1, beta2, 1.0 - beta2
    bias1, bias2_sqrt = 1.0 - beta1**step, math.sqrt(1.0 - beta2**step)
    grid = (triton.cdiv(rows, ENCODE_ROWS), num_blocks(cols, block))
    _adam_moments_kernel[grid](r, exp_avg, exp_avg_absmax, exp_avg_sq, exp_avg_sq_absmax,
                               delta if adapter else r, code_table(True, r.device), midpoints(True, r.device),
                               code_table(False, r.device), midpoints(False, r.device), rows, cols, b1w, b2, omb2,
                               bias1, bias2_sqrt, eps, lr, weight_decay if adapter else 0.0, BLOCK=block,
                               WIDTH=_width(block), ROWS=ENCODE_ROWS, ADAPTER=adapter)


def aot_entries() -> list:
    """Both kernels with the default block length, on contiguous, aligned tensors."""
    from .aot import AotEntry

    block = STATE_BLOCK_SIZE
    return [
        AotEntry("blockwise8 encode", _encode_kernel,
                 signature={"v_ptr": "*fp32", "codes_ptr": "*u8", "absmax_ptr": "*fp32", "mid_ptr": "*fp32",
                            "rows": "i32", "cols": "i32"},
                 constexprs={"BLOCK": block, "WIDTH": _width(block), "ROWS": ENCODE_ROWS},
                 expects_wgmma=False, num_warps=4, divisible_by_16=("v_ptr", "codes_ptr", "absmax_ptr", "cols")),
        AotEntry("blockwise8 decode", _decode_kernel,
                 signature={"codes_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*fp32", "out_ptr": "*fp32",
                            "rows": "i32", "cols": "i32"},
                 constexprs={"BLOCK": block, "ROWS": DECODE_ROWS, "COLS": DECODE_COLS},
                 expects_wgmma=False, num_warps=4, divisible_by_16=("codes_ptr", "absmax_ptr", "out_ptr", "cols")),
        AotEntry("blockwise8 adam moments", _adam_moments_kernel,
                 signature={"r_ptr": "*fp32", "qm_ptr": "*u8", "am_ptr": "*fp32", "qv_ptr": "*u8", "av_ptr": "*fp32",
                            "delta_ptr": "*fp32", "scode_ptr": "*fp32", "smid_ptr": "*fp32", "ucode_ptr": "*fp32",
                            "umid_ptr": "*fp32", "rows": "i32", "cols": "i32", "beta1_weight": "fp64",
                            "beta2": "fp64", "one_minus_beta2": "fp64", "bias1": "fp64", "bias2_sqrt": "fp64",
                            "eps": "fp64", "lr": "fp64", "adapter_decay": "fp64"},
                 constexprs={"BLOCK": block, "WIDTH": _width(block), "ROWS": ENCODE_ROWS, "ADAPTER": True},
                 expects_wgmma=False, num_warps=4,
                 divisible_by_16=("r_ptr", "qm_ptr", "am_ptr", "qv_ptr", "av_ptr", "delta_ptr", "cols")),
    ]
