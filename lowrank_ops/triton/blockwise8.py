"""Triton form of the blockwise 8-bit moment format (docs/DESIGN.md §3 "8-bit optimizer moments"; the
arithmetic of kernels/blockwise8.h, bit for bit):

  encode   per block of `block` columns of a row: absmax = max |v| (NaN if the block holds one),
           x = v / absmax by a correctly rounded division (div_rn; 0 where absmax is 0),
           q = #{i : mid_i < x} by an 8-step binary search over the 255 float32 midpoints (ties to the
           lower index; NaN gives 0)
  decode   code[q] * absmax in float32

The device functions `q8_encode` and `q8_absmax` are what the fused steps' moment epilogues use on a tile
that holds whole blocks; the two kernels here encode / decode a whole moment (tests, and the optimizers'
refresh transforms on CUDA). Code tables are passed as float32 tensors (pure_torch/blockwise8.py builds them).
Launchers take and return torch tensors (CUDA tensors; CPU tensors when TRITON_INTERPRET=1 was set before
this module was imported).
"""

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
    ]
