"""Triton backend of the quant family: INT8 / NF4 weights (docs/DESIGN.md §3; the formulas of kernels/quant.h).

  quantize       per group: absmax, then every element encoded against it
                 int8: scale = absmax / 127, code = clamp(rint(w / scale), -127, 127) (scale 0 -> code 0)
                 nf4:  inv = 1 / max(absmax, 1e-38), code = #{t : w * inv > T_t} (T_t the float32 midpoints)
  dequantize     code value x scale in float32 (float64 for a float64 result), rounded once to the dtype
  dequant_matmul Y = X deq(W)^T (+ b), and its transpose dX = dY deq(W): a GEMM whose W operand is decoded
                 from the codes inside the K-loop, tile by tile; deq(W) never touches memory.

rint is the float32 round-to-nearest-even trick (x + 1.5 * 2^23) - 1.5 * 2^23 (exact for |x| < 2^22) on a
correctly rounded quotient (div_rn), so no multiply is there to be contracted into an FMA and the codes
equal the C++ ones bit for bit. NF4 decoding looks codes up in the 16-value codebook, passed as a float32
tensor (it stays in L1). Group sizes are compile-time constants, so block indices are shifts for the
powers of two in use.

Launchers take and return torch tensors (CUDA tensors; CPU tensors when TRITON_INTERPRET=1 was set before
this module was imported) and trust lowrank_ops.ops.quant to have validated their arguments.
"""

import torch
import triton
import triton.language as tl

from ..pure_torch.quant import nf4_codebook, nf4_thresholds
from ..spec import DEFAULT_GROUP_SIZE
from ._common import INTERPRETED as _INTERPRETED
from ._common import check_device, compute_type, dot_acc

INT8 = 0
NF4 = 1
FORMAT_IDS = {"int8": INT8, "nf4": NF4}
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# 1.5 * 2^23: adding and subtracting it rounds a float32 of magnitude < 2^22 to an integer, ties to even
ROUND_MAGIC = tl.constexpr(12582912.0)

# --------------------------------------------------------------------------------------------------------
# Device functions
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _decode(codes_ptr, scales_ptr, code_ptr, r, c, rows, cols, FORMAT: tl.constexpr, GROUP: tl.constexpr,
            COMPUTE: tl.constexpr):
    """deq(W)[r, c] in COMPUTE for broadcastable index tensors r, c; 0 outside W [rows, cols]."""
    mask = (r < rows) & (c < cols)
    if FORMAT == 0:  # int8: codes [rows, cols], scales [rows, ceil(cols / GROUP)]
        groups = (cols + GROUP - 1) // GROUP
        q = tl.load(codes_ptr + r.to(tl.int64) * cols + c, mask=mask, other=0)
        s = tl.load(scales_ptr + r.to(tl.int64) * groups + c // GROUP, mask=mask, other=0.0)
        return q.to(COMPUTE) * s.to(COMPUTE)
    # nf4: flat element e = r cols + c, nibble e % 2 of byte e // 2 (even: high), absmax of block e // GROUP
    e = r.to(tl.int64) * cols + c
    byte = tl.load(codes_ptr + (e >> 1), mask=mask, other=0).to(tl.int32)
    q = (byte >> ((1 - (e & 1)) * 4).to(tl.int32)) & 15
    v = tl.load(code_ptr + q)
    a = tl.load(scales_ptr + e // GROUP, mask=mask, other=0.0)
    return v.to(COMPUTE) * a.to(COMPUTE)


@triton.jit
def _round_to(x, OUT: tl.constexpr, INTERPRETED: tl.constexpr):
    """x (float32 or float64) rounded to nearest-even in OUT. The interpreter's float32 -> bfloat16 cast
    truncates, so there the bfloat16 rounding is done on the bits: add 0x7fff plus the lowest kept bit,
    drop the low 16 bits (finite inputs)."""
    if INTERPRETED and OUT == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(OUT)


@triton.jit
def _nf4_encode(x, thresholds_ptr):
    """The number of codebook midpoints strictly below x (int32, same shape as x)."""
    q = tl.zeros(x.shape, dtype=tl.int32)
    for t in tl.static_range(15):
        q += (x > tl.load(thresholds_ptr + t)).to(tl.int32)
    return q


# --------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _quantize_int8_kernel(w_ptr, codes_ptr, scales_ptr, rows, cols, stride_w0, stride_w1, GROUP: tl.constexpr,
                          BLOCK_G: tl.constexpr, CHUNK: tl.constexpr):
    """BLOCK_G consecutive groups (flat group index t = row * groups + j) per program; each group in chunks
    of CHUNK elements, one pass for the absmax, one to encode."""
    groups = (cols + GROUP - 1) // GROUP
    t = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    t_ok = t < rows * groups
    r = (t // groups).to(tl.int64)[:, None]
    c0 = ((t % groups) * GROUP)[:, None]
    k = tl.arange(0, CHUNK)[None, :]
    absmax = tl.zeros((BLOCK_G, ), dtype=tl.float32)
    for k0 in tl.range(0, GROUP, CHUNK):
        c = c0 + k0 + k
        m = t_ok[:, None] & (k0 + k < GROUP) & (c < cols)
        w = tl.load(w_ptr + r * stride_w0 + c.to(tl.int64) * stride_w1, mask=m, other=0.0).to(tl.float32)
        absmax = tl.maximum(absmax, tl.max(tl.abs(w), axis=1))
    scale = tl.math.div_rn(absmax, tl.full(absmax.shape, 127.0, tl.float32))
    tl.store(scales_ptr + t, scale, mask=t_ok)
    safe = tl.where(scale > 0, scale, 1.0)[:, None]
    for k0 in tl.range(0, GROUP, CHUNK):
        c = c0 + k0 + k
        m = t_ok[:, None] & (k0 + k < GROUP) & (c < cols)
        w = tl.load(w_ptr + r * stride_w0 + c.to(tl.int64) * stride_w1, mask=m, other=0.0).to(tl.float32)
        q = (tl.math.div_rn(w, tl.broadcast_to(safe, w.shape)) + ROUND_MAGIC) - ROUND_MAGIC
        q = tl.minimum(tl.maximum(q, -127.0), 127.0)
        q = tl.where(scale[:, None] > 0, q, 0.0)
        tl.store(codes_ptr + r * cols + c, q.to(tl.int8), mask=m)


@triton.jit
def _quantize_nf4_kernel(w_ptr, codes_ptr, absmax_ptr, thresholds_ptr, numel, GROUP: tl.constexpr,
                         BLOCK_B: tl.constexpr, CHUNK: tl.constexpr):
    """BLOCK_B consecutive blocks of the flat (contiguous) W per program, each in chunks of CHUNK pairs
    (2i, 2i + 1): one pass for the absmax, one to encode and pack the pairs. An odd numel reads its missing
    last element as 0 (the pad nibble)."""
    blocks = (numel + GROUP - 1) // GROUP
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = (b < blocks)[:, None]
    start = b.to(tl.int64)[:, None] * GROUP
    p = tl.arange(0, CHUNK)[None, :]
    PAIRS: tl.constexpr = GROUP // 2
    absmax = tl.zeros((BLOCK_B, ), dtype=tl.float32)
    for p0 in tl.range(0, PAIRS, CHUNK):
        e = start + 2 * (p0 + p)
        m = b_ok & (p0 + p < PAIRS)
        lo = tl.load(w_ptr + e, mask=m & (e < numel), other=0.0).to(tl.float32)
        hi = tl.load(w_ptr + e + 1, mask=m & (e + 1 < numel), other=0.0).to(tl.float32)
        absmax = tl.maximum(absmax, tl.max(tl.maximum(tl.abs(lo), tl.abs(hi)), axis=1))
    tl.store(absmax_ptr + b, absmax, mask=b < blocks)
    inv = tl.math.div_rn(tl.full(absmax.shape, 1.0, tl.float32), tl.maximum(absmax, 1e-38))[:, None]
    for p0 in tl.range(0, PAIRS, CHUNK):
        e = start + 2 * (p0 + p)
        m = b_ok & (p0 + p < PAIRS)
        even = tl.load(w_ptr + e, mask=m & (e < numel), other=0.0).to(tl.float32)
        odd = tl.load(w_ptr + e + 1, mask=m & (e + 1 < numel), other=0.0).to(tl.float32)
        byte = (_nf4_encode(even * inv, thresholds_ptr) << 4) | _nf4_encode(odd * inv, thresholds_ptr)
        tl.store(codes_ptr + (e >> 1), byte.to(tl.uint8), mask=m & (e < numel))


@triton.jit
def _dequantize_int8_kernel(codes_ptr, scales_ptr, out_ptr, rows, cols, GROUP: tl.constexpr, BLOCK_R: tl.constexpr,
                            BLOCK_C: tl.constexpr, INTERPRETED: tl.constexpr):
    """out [rows, cols] (contiguous) = deq(W) of an int8 W, in out's dtype."""
    pid = tl.program_id(0)
    num_c = tl.cdiv(cols, BLOCK_C)
    r = ((pid // num_c) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None]
    c = ((pid % num_c) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]
    OUT: tl.constexpr = out_ptr.dtype.element_ty
    COMPUTE: tl.constexpr = compute_type(OUT)
    v = _decode(codes_ptr, scales_ptr, scales_ptr, r, c, rows, cols, 0, GROUP, COMPUTE)
    tl.store(out_ptr + r.to(tl.int64) * cols + c, _round_to(v, OUT, INTERPRETED), mask=(r < rows) & (c < cols))


@triton.jit
def _dequantize_nf4_kernel(codes_ptr, absmax_ptr, code_ptr, out_ptr, numel, GROUP: tl.constexpr,
                           BLOCK: tl.constexpr, INTERPRETED: tl.constexpr):
    """out (contiguous, numel elements) = deq(W) of an NF4 W, BLOCK bytes (2 BLOCK elements) per program:
    contiguous byte loads, both nibbles decoded, the pairs interleaved into one contiguous store."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    byte = tl.load(codes_ptr + i, mask=2 * i < numel, other=0).to(tl.int32)
    OUT: tl.constexpr = out_ptr.dtype.element_ty
    COMPUTE: tl.constexpr = compute_type(OUT)
    a = tl.load(absmax_ptr + (2 * i) // GROUP, mask=2 * i < numel, other=0.0).to(COMPUTE)  # GROUP even
    even = tl.load(code_ptr + (byte >> 4)).to(COMPUTE) * a
    odd = tl.load(code_ptr + (byte & 15)).to(COMPUTE) * a
    e = 2 * i[:, None] + tl.arange(0, 2)[None, :]
    values = tl.join(even, odd)  # [BLOCK, 2]: element 2i, then 2i + 1
    tl.store(out_ptr + e, _round_to(values, OUT, INTERPRETED), mask=e < numel)


@triton.jit
def _dequant_matmul_kernel(x_ptr, codes_ptr, scales_ptr, code_ptr, bias_ptr, out_ptr, M, N, K, rows, cols,
                           stride_xm, stride_xk, stride_om, stride_on, FORMAT: tl.constexpr, GROUP: tl.constexpr,
                           TRANS_W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                           INTERPRETED: tl.constexpr):
    """out[M, N] = X[M, K] B[K, N] (+ bias[N]) with B decoded from W [rows, cols] in the K-loop:
      not TRANS_W: B = deq(W)^T, K = cols, N = rows   (Y = X deq(W)^T + b)
      TRANS_W:     B = deq(W),   K = rows, N = cols   (dX = dY deq(W))
    B tiles are decoded in float32 and rounded to X's dtype, the rounding X @ dequantize(qw, X.dtype).T
    makes; products accumulate in float32 (float64 for float64 X). X tiles past K load as zeros and so do
    decoded entries past W. In the interpreter (INTERPRETED) bfloat16 tiles are multiplied as float32: the
    same products, since a bfloat16 product is exact in float32, but its tl.dot would multiply the raw
    bfloat16 bit patterns (triton-lang/triton#11584)."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # GROUP_M rows of output tiles run together, so they share the decoded W tiles in L2
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_m
    pid_n = (pid % width) // group_m
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    ACC: tl.constexpr = compute_type(DTYPE)
    UPCAST: tl.constexpr = INTERPRETED and DTYPE == tl.bfloat16
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = (offs_m.to(tl.int64) * stride_xm)[:, None]
    m_ok = (offs_m < M)[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        a = tl.load(x_ptr + x_rows + (ks.to(tl.int64) * stride_xk)[None, :], mask=m_ok & (ks < K)[None, :],
                    other=0.0)
        if TRANS_W:  # B[k, n] = deq(W)[k, n]
            b = _decode(codes_ptr, scales_ptr, code_ptr, ks[:, None], offs_n[None, :], rows, cols, FORMAT, GROUP,
                        ACC)
        else:  # B[k, n] = deq(W)[n, k]
            b = _decode(codes_ptr, scales_ptr, code_ptr, offs_n[None, :], ks[:, None], rows, cols, FORMAT, GROUP,
                        ACC)
        b = _round_to(b, DTYPE, INTERPRETED)
        acc = dot_acc(a, b, acc, DTYPE, UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(ACC)[None, :]
    o_ptrs = out_ptr + (offs_m.to(tl.int64) * stride_om)[:, None] + (offs_n.to(tl.int64) * stride_on)[None, :]
    tl.store(o_ptrs, _round_to(acc, out_ptr.dtype.element_ty, INTERPRETED), mask=m_ok & (offs_n < N)[None, :])


# --------------------------------------------------------------------------------------------------------
# Launch configurations (shared with the ahead-of-time check in aot.py)
# --------------------------------------------------------------------------------------------------------

QUANTIZE_TILE = 4096  # elements (int8) or pairs (nf4) one quantize program holds at once
QUANTIZE_WARPS = 8  # 4 would leave a full tile (and the NF4 midpoints) near 255 registers per thread
DEQUANTIZE_INT8_CONFIG = {"BLOCK_R": 16, "BLOCK_C": 256, "num_warps": 4}
DEQUANTIZE_NF4_CONFIG = {"BLOCK": 1024, "num_warps": 4}


def quantize_config(group_len: int, count: int) -> tuple:
    """(groups per program, chunk) of a quantize launch over `count` groups of `group_len` elements (int8)
    or pairs (nf4): the chunk covers the group up to QUANTIZE_TILE / 4, and a program takes as many groups
    as fill QUANTIZE_TILE (fewer programs, each with a full tile)."""
    chunk = min(QUANTIZE_TILE // 4, triton.next_power_of_2(group_len))
    per_program = min(QUANTIZE_TILE // chunk, triton.next_power_of_2(count))
    return per_program, chunk


def matmul_config(dtype: torch.dtype) -> dict:
    """16-bit inputs run on the tensor cores with 128 x 128 output tiles; float32 and float64 use IEEE FMAs
    whose operands live in registers, so their tiles are 64 x 64, over 8 warps (with 4, the decode's
    index arithmetic spills on top of the FMA operands)."""
    if dtype in (torch.bfloat16, torch.float16):
        return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 8, "num_stages": 2}


# --------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------

_TABLES = {}


def _tables(device):
    """(codebook [16], midpoints [15]) as float32 tensors on `device`, made once per device."""
    key = str(device)
    if key not in _TABLES:
        _TABLES[key] = (nf4_codebook(device), nf4_thresholds(device))
    return _TABLES[key]


def quantize(W: torch.Tensor, fmt: str, group_size: int):
    """W [rows, cols] -> (codes, scales) in the layout of lowrank_ops.ops.quant (see csrc/quant_args.h)."""
    check_device(W.device, "quant", "W")
    rows, cols = W.shape
    if fmt == "int8":
        groups = -(-cols // group_size)
        codes = torch.empty((rows, cols), dtype=torch.int8, device=W.device)
        scales = torch.empty((rows, groups), dtype=torch.float32, device=W.device)
        per_program, chunk = quantize_config(group_size, rows * groups)
        grid = (triton.cdiv(rows * groups, per_program), )
        _quantize_int8_kernel[grid](W, codes, scales, rows, cols, W.stride(0), W.stride(1), GROUP=group_size,
                                    BLOCK_G=per_program, CHUNK=chunk, num_warps=QUANTIZE_WARPS)
        return codes, scales
    w = W.contiguous()
    numel = rows * cols
    blocks = -(-numel // group_size)
    codes = torch.empty((-(-numel // 2), ), dtype=torch.uint8, device=W.device)
    absmax = torch.empty((blocks, ), dtype=torch.float32, device=W.device)
    per_program, chunk = quantize_config(group_size // 2, blocks)
    grid = (triton.cdiv(blocks, per_program), )
    _quantize_nf4_kernel[grid](w, codes, absmax, _tables(W.device)[1], numel, GROUP=group_size, BLOCK_B=per_program,
                               CHUNK=chunk, num_warps=QUANTIZE_WARPS)
    return codes, absmax


def dequantize(codes, scales, fmt: str, group_size: int, rows: int, cols: int, dtype) -> torch.Tensor:
    check_device(codes.device, "quant", "codes")
    codes, scales = codes.contiguous(), scales.contiguous()  # the kernels index them as dense arrays
    out = torch.empty((rows, cols), dtype=dtype, device=codes.device)
    if fmt == "int8":
        cfg = DEQUANTIZE_INT8_CONFIG
        grid = (triton.cdiv(rows, cfg["BLOCK_R"]) * triton.cdiv(cols, cfg["BLOCK_C"]), )
        _dequantize_int8_kernel[grid](codes, scales, out, rows, cols, GROUP=group_size, BLOCK_R=cfg["BLOCK_R"],
                                      BLOCK_C=cfg["BLOCK_C"], INTERPRETED=_INTERPRETED, num_warps=cfg["num_warps"])
        return out
    cfg = DEQUANTIZE_NF4_CONFIG
    grid = (triton.cdiv(codes.numel(), cfg["BLOCK"]), )
    _dequantize_nf4_kernel[grid](codes, scales, _tables(codes.device)[0], out, rows * cols, GROUP=group_size,
                                 BLOCK=cfg["BLOCK"], INTERPRETED=_INTERPRETED, num_warps=cfg["num_warps"])
    return out


def _matmul(x, codes, scales, fmt, group_size, rows, cols, bias, trans_w):
    check_device(x.device, "quant", "X")
    # codes, scales and bias are indexed as dense arrays (X and the output through their strides)
    codes, scales = codes.contiguous(), scales.contiguous()
    bias = bias.contiguous() if bias is not None else None
    M, K = x.shape
    N = cols if trans_w else rows
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return out
    cfg = matmul_config(x.dtype)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]), )
    _dequant_matmul_kernel[grid](x, codes, scales, _tables(x.device)[0], bias if bias is not None else out, out, M,
                                 N, K, rows, cols, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
                                 FORMAT=FORMAT_IDS[fmt], GROUP=group_size, TRANS_W=trans_w,
                                 HAS_BIAS=bias is not None, INTERPRETED=_INTERPRETED, **cfg)
    return out


def dequant_matmul(X, codes, scales, fmt: str, group_size: int, rows: int, cols: int, bias=None):
    """Y [t, rows] = X [t, cols] deq(W)^T (+ bias), W decoded inside the GEMM's K-loop."""
    return _matmul(X, codes, scales, fmt, group_size, rows, cols, bias, trans_w=False)


def dequant_matmul_t(dY, codes, scales, fmt: str, group_size: int, rows: int, cols: int):
    """dX [t, cols] = dY [t, rows] deq(W), W decoded inside the GEMM's K-loop."""
    return _matmul(dY, codes, scales, fmt, group_size, rows, cols, None, trans_w=True)


# --------------------------------------------------------------------------------------------------------
# Ahead-of-time compile entries (tier-3 check, lowrank_ops.triton.aot)
# --------------------------------------------------------------------------------------------------------

_TRITON_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


def aot_entries() -> list:
    """Every kernel of this module as its launcher runs it on contiguous, aligned tensors, with the default
    group sizes (int8 256, nf4 64)."""
    from .aot import AotEntry

    g8, g4 = DEFAULT_GROUP_SIZE["int8"], DEFAULT_GROUP_SIZE["nf4"]
    entries = []
    many = 1 << 20  # a large weight: programs hold full tiles
    (g8_programs, g8_chunk), (g4_programs, g4_chunk) = quantize_config(g8, many), quantize_config(g4 // 2, many)
    for dtype in (torch.float32, torch.bfloat16):
        ty = _TRITON_TYPES[dtype]
        entries.append(AotEntry(f"quantize int8 {ty}", _quantize_int8_kernel,
                                signature={"w_ptr": f"*{ty}", "codes_ptr": "*i8", "scales_ptr": "*fp32", "rows": "i32",
                                           "cols": "i32", "stride_w0": "i32"},
                                constexprs={"stride_w1": 1, "GROUP": g8, "BLOCK_G": g8_programs, "CHUNK": g8_chunk},
                                expects_wgmma=False, num_warps=QUANTIZE_WARPS,
                                divisible_by_16=("w_ptr", "codes_ptr", "scales_ptr", "cols", "stride_w0")))
        entries.append(AotEntry(f"quantize nf4 {ty}", _quantize_nf4_kernel,
                                signature={"w_ptr": f"*{ty}", "codes_ptr": "*u8", "absmax_ptr": "*fp32",
                                           "thresholds_ptr": "*fp32", "numel": "i32"},
                                constexprs={"GROUP": g4, "BLOCK_B": g4_programs, "CHUNK": g4_chunk},
                                expects_wgmma=False, num_warps=QUANTIZE_WARPS,
                                divisible_by_16=("w_ptr", "codes_ptr", "absmax_ptr", "numel")))
        d8, d4 = DEQUANTIZE_INT8_CONFIG, DEQUANTIZE_NF4_CONFIG
        entries.append(AotEntry(f"dequantize int8 {ty}", _dequantize_int8_kernel,
                                signature={"codes_ptr": "*i8", "scales_ptr": "*fp32", "out_ptr": f"*{ty}",
                                           "rows": "i32", "cols": "i32"},
                                constexprs={"GROUP": g8, "BLOCK_R": d8["BLOCK_R"], "BLOCK_C": d8["BLOCK_C"],
                                            "INTERPRETED": False},
                                expects_wgmma=False, num_warps=d8["num_warps"],
                                divisible_by_16=("codes_ptr", "scales_ptr", "out_ptr", "cols")))
        entries.append(AotEntry(f"dequantize nf4 {ty}", _dequantize_nf4_kernel,
                                signature={"codes_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*fp32",
                                           "out_ptr": f"*{ty}", "numel": "i32"},
                                constexprs={"GROUP": g4, "BLOCK": d4["BLOCK"], "INTERPRETED": False},
                                expects_wgmma=False, num_warps=d4["num_warps"],
                                divisible_by_16=("codes_ptr", "absmax_ptr", "code_ptr", "out_ptr", "numel")))
    for fmt, fmt_id in FORMAT_IDS.items():
        group = DEFAULT_GROUP_SIZE[fmt]
        for trans_w in (False, True):
            for dtype in (torch.bfloat16, torch.float16, torch.float32):
                ty = _TRITON_TYPES[dtype]
                cfg = matmul_config(dtype)
                launch = {k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}
                entries.append(
                    AotEntry(f"dequant_matmul{'_t' if trans_w else ''} {fmt} {ty}", _dequant_matmul_kernel,
                             signature={"x_ptr": f"*{ty}", "codes_ptr": "*i8" if fmt == "int8" else "*u8",
                                        "scales_ptr": "*fp32", "code_ptr": "*fp32", "bias_ptr": f"*{ty}",
                                        "out_ptr": f"*{ty}", "M": "i32", "N": "i32", "K": "i32", "rows": "i32",
                                        "cols": "i32", "stride_xm": "i32", "stride_om": "i32"},
                             constexprs={"stride_xk": 1, "stride_on": 1, "FORMAT": fmt_id, "GROUP": group,
                                         "TRANS_W": trans_w, "HAS_BIAS": not trans_w, "INTERPRETED": False, **launch},
                             expects_wgmma=dtype in (torch.bfloat16, torch.float16), num_warps=cfg["num_warps"],
                             num_stages=cfg["num_stages"],
                             divisible_by_16=("x_ptr", "codes_ptr", "scales_ptr", "code_ptr", "bias_ptr", "out_ptr",
                                              "M", "N", "K", "rows", "cols", "stride_xm", "stride_om")))
    return entries
