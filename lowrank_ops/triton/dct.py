"""Triton backend of the DCT family (docs/DESIGN.md §3): basis tiles generated inside the kernels.

D is the d x d orthonormal DCT-II matrix, D[k, t] = c_k cos(pi k (2t + 1) / (2d)) (c_0 = sqrt(1/d),
c_k = sqrt(2/d)). The scores are a GEMM whose D operand never touches memory, with the norm reduction in
its epilogue:
  left  (d = G.shape[0]):  C = D G      [d, n];  s_k = || C[k, :] ||
  right (d = G.shape[1]):  C = G D^T    [m, d];  s_k = || C[:, k] ||
Each program reduces its C tile along the non-basis axis into one row of a partial-sum buffer
[tiles, d]; the launcher adds the rows in a fixed order (no atomics), so the scores are deterministic.

Generating the D tile in the K-loop. Evaluating every entry directly (an int64 modulo and a cosine) would
cost more than the tile's MMAs, so each program uses angle addition along t. For basis rows k of the
program and t = t0 + j (j < BLOCK_K):
    pi k (2t + 1) / (2d) = a_k + b_kj,   a_k = pi k (2 t0 + 1) / (2d),   b_kj = pi k (2j) / (2d)
    D[k, t0 + j] = (c_k cos a_k) cos b_kj - (c_k sin a_k) sin b_kj.
cos b and sin b do not depend on t0: they are computed once per program. Per K-step only the 2 x BLOCK
values c_k cos a_k, c_k sin a_k are new, and each entry costs two FMAs. Every angle goes through
_cos_sin_pi_over_2d: its integer numerator is reduced exactly modulo 4d (k (2t0 + 1) and 2kj in int64),
folded into [0, pi/4] and only then converted, so the accuracy does not degrade with d (kernels/dct.h does
the same on the host). At j = 0 the entry is c_k cos a_k itself (cos b = 1, sin b = 0 exactly), one
rounding from the directly evaluated value; elsewhere two or three float32 roundings.

Launchers take and return torch tensors (CUDA tensors; CPU tensors when TRITON_INTERPRET=1 was set before
this module was imported) and trust lowrank_ops.ops.dct to have validated their arguments.
"""

import math

import torch
import triton
import triton.language as tl

from ._common import INTERPRETED as _INTERPRETED
from ._common import check_device, compute_type, dot_acc, tile_ids

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
PI = tl.constexpr(math.pi)


# --------------------------------------------------------------------------------------------------------
# Device functions
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _div_rn(a, b, COMPUTE: tl.constexpr):
    """a / b correctly rounded (float32 '/' compiles to an approximate division; float64's is exact)."""
    if COMPUTE == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def _sqrt_rn(x, COMPUTE: tl.constexpr):
    """Correctly rounded square root (float64 sqrt always is)."""
    if COMPUTE == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _cos_sin_small(x, COMPUTE: tl.constexpr):
    """cos x and sin x for x in [0, pi/4], by their Taylor series in Horner form,
        sin x = x (1 - x^2/(2*3) (1 - x^2/(4*5) (1 - ...))),   cos x = 1 - x^2/(1*2) (1 - x^2/(3*4) (1 - ...)),
    through x^13 / x^12 in float32 (the first omitted term is < 1e-12) and x^21 / x^20 in float64
    (< 1e-23): below one rounding, in a few FMAs, with no range reduction (the callers reduce exactly
    beforehand), so no libdevice slow path, local memory or extra registers."""
    if COMPUTE == tl.float64:
        TERMS: tl.constexpr = 10
    else:
        TERMS: tl.constexpr = 6
    x2 = x * x
    s = tl.full(x.shape, 1.0, COMPUTE)
    c = tl.full(x.shape, 1.0, COMPUTE)
    for n in tl.static_range(TERMS, 0, -1):
        s = 1.0 - x2 * s * (1.0 / ((2 * n) * (2 * n + 1)))
        c = 1.0 - x2 * c * (1.0 / ((2 * n - 1) * (2 * n)))
    return c, x * s


@triton.jit
def _cos_sin_pi_over_2d(p, d, COMPUTE: tl.constexpr):
    """(cos, sin) of pi p / (2d) for int64 p in [0, 4d). p = quadrant * d + r with r in [0, d); the angle
    in the quadrant, theta = pi r / (2d) in [0, pi/2), is evaluated as cos/sin of pi r / (2d) when
    2r <= d and through the complement pi (d - r) / (2d) otherwise (cos theta = sin of the complement),
    so the series only see arguments in [0, pi/4]; then (cos, sin) of quadrant * pi/2 + theta follow by
    rotation."""
    quadrant = p // d
    r = p - quadrant * d
    flip = 2 * r > d
    step = _div_rn(tl.full((), PI, COMPUTE), 2 * tl.to_tensor(d).to(COMPUTE), COMPUTE)  # pi / (2d)
    arg = tl.where(flip, d - r, r).to(COMPUTE) * step
    c0, s0 = _cos_sin_small(arg, COMPUTE)
    c = tl.where(flip, s0, c0)
    s = tl.where(flip, c0, s0)
    cos = tl.where(quadrant == 0, c, tl.where(quadrant == 1, -s, tl.where(quadrant == 2, -c, s)))
    sin = tl.where(quadrant == 0, s, tl.where(quadrant == 1, c, tl.where(quadrant == 2, -s, -c)))
    return cos, sin


@triton.jit
def _row_scale(k, d, COMPUTE: tl.constexpr):
    """c_k = sqrt(1/d) for k = 0, sqrt(2/d) otherwise (correctly rounded division and square root)."""
    num = tl.where(k == 0, 1.0, 2.0).to(COMPUTE)
    return _sqrt_rn(_div_rn(num, tl.to_tensor(d).to(COMPUTE), COMPUTE), COMPUTE)


@triton.jit
def _step_factors(k, j, d, COMPUTE: tl.constexpr):
    """cos b, sin b with b = pi k (2j) / (2d), for int64 k and j that broadcast to the tile's shape."""
    return _cos_sin_pi_over_2d((2 * k * j) % (4 * d), d, COMPUTE)


@triton.jit
def _origin_factors(k, t0, d, COMPUTE: tl.constexpr):
    """c_k cos a_k, c_k sin a_k with a_k = pi k (2 t0 + 1) / (2d), for an int64 vector k."""
    cos_a, sin_a = _cos_sin_pi_over_2d((k * (2 * t0 + 1)) % (4 * d), d, COMPUTE)
    scale = _row_scale(k, d, COMPUTE)
    return scale * cos_a, scale * sin_a


@triton.jit
def _round_bf16_rne(x):
    """float32 x rounded to the nearest bfloat16 value (ties to even), kept in float32. Only for the
    interpreter, whose float32 -> bfloat16 cast truncates (compiled Triton rounds to nearest even, which
    this reproduces bit for bit; NaN does not occur in a basis tile)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _basis_operand(tile, DTYPE: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """A generated basis tile (float32/float64) as a tl.dot operand: cast to the data's dtype, or, under
    UPCAST_DOT, rounded to bfloat16 values but kept in float32 (see _round_bf16_rne)."""
    if UPCAST_DOT:
        return _round_bf16_rne(tile)
    else:
        return tile.to(DTYPE)


# --------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _dct_basis_kernel(idx_ptr, out_ptr, R, d, stride_o, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):
    """out[i, t] = D[idx[i], t] for i < R, t < d (idx int64), in out's dtype, computed in float32 (float64
    for a float64 out) by the same angle-addition tiles as the GEMM."""
    DTYPE: tl.constexpr = out_ptr.dtype.element_ty
    COMPUTE: tl.constexpr = compute_type(DTYPE)
    pid = tl.program_id(0)
    num_t = tl.cdiv(d, BLOCK_T)
    rows = (pid // num_t) * BLOCK_R + tl.arange(0, BLOCK_R)
    t0 = (pid % num_t) * BLOCK_T
    k = tl.load(idx_ptr + rows, mask=rows < R, other=0)
    j = tl.arange(0, BLOCK_T).to(tl.int64)
    cos_b, sin_b = _step_factors(k[:, None], j[None, :], d, COMPUTE)
    ca, sa = _origin_factors(k, t0.to(tl.int64), d, COMPUTE)
    tile = ca[:, None] * cos_b - sa[:, None] * sin_b
    t = t0 + j
    ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_o + t[None, :]
    tl.store(ptrs, tile.to(DTYPE), mask=(rows < R)[:, None] & (t < d)[None, :])


@triton.jit
def _dct_scores_kernel(x_ptr, part_ptr, M, N, K, stride_x0, stride_x1, stride_p, DCT_IS_A: tl.constexpr,
                       L2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       UPCAST_DOT: tl.constexpr):
    """Partial scores of one tile of C = A B (K = d):
      DCT_IS_A (left):   A = D [M = d, K], B = X [K, N];  part[pid_n, k] = sum_n |C[k, n]| (C^2 if L2)
      else (right):      A = X [M, K], B = D^T [K, N = d]; part[pid_m, k] = sum_m |C[m, k]| (C^2 if L2)
    X (x_ptr, strides stride_x0 / stride_x1) tiles past the matrix load as zeros, so padded entries of C
    are exact zeros and add nothing to the sums; padded basis rows are masked at the store. The D tile is
    generated in X's dtype; products accumulate in float32 (float64 for float64 X). UPCAST_DOT
    (interpreter only, bfloat16 X) multiplies as float32 the same bfloat16 values, the exact same products
    (a bfloat16 product is exact in float32), because the interpreter's tl.dot would multiply raw bfloat16
    bit patterns (triton-lang/triton#11584) and its bfloat16 cast truncates."""
    # The basis-side index runs fastest, so programs that read the same block of X run together.
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, DCT_IS_A)
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    COMPUTE: tl.constexpr = compute_type(DTYPE)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    j = offs_k.to(tl.int64)
    if DCT_IS_A:  # basis rows along M; the D tile is [BLOCK_M, BLOCK_K]
        k_basis = offs_m.to(tl.int64)
        cos_b, sin_b = _step_factors(k_basis[:, None], j[None, :], K, COMPUTE)
        x_cols = (offs_n.to(tl.int64) * stride_x1)[None, :]
        x_col_mask = (offs_n < N)[None, :]
    else:  # basis rows along N; the D^T tile is [BLOCK_K, BLOCK_N]
        k_basis = offs_n.to(tl.int64)
        cos_b, sin_b = _step_factors(k_basis[None, :], j[:, None], K, COMPUTE)
        x_rows = (offs_m.to(tl.int64) * stride_x0)[:, None]
        x_row_mask = (offs_m < M)[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=COMPUTE)
    for t0 in range(0, K, BLOCK_K):
        ks = t0 + offs_k
        ca, sa = _origin_factors(k_basis, tl.to_tensor(t0).to(tl.int64), K, COMPUTE)
        if DCT_IS_A:
            a = _basis_operand(ca[:, None] * cos_b - sa[:, None] * sin_b, DTYPE, UPCAST_DOT)
            b = tl.load(x_ptr + (ks.to(tl.int64) * stride_x0)[:, None] + x_cols,
                        mask=(ks < K)[:, None] & x_col_mask, other=0.0)
        else:
            a = tl.load(x_ptr + x_rows + (ks.to(tl.int64) * stride_x1)[None, :],
                        mask=x_row_mask & (ks < K)[None, :], other=0.0)
            b = _basis_operand(ca[None, :] * cos_b - sa[None, :] * sin_b, DTYPE, UPCAST_DOT)
        acc = dot_acc(a, b, acc, DTYPE, UPCAST_DOT)
    if L2:
        terms = acc * acc
    else:
        terms = tl.abs(acc)
    if DCT_IS_A:
        tl.store(part_ptr + pid_n.to(tl.int64) * stride_p + offs_m, tl.sum(terms, axis=1), mask=offs_m < M)
    else:
        tl.store(part_ptr + pid_m.to(tl.int64) * stride_p + offs_n, tl.sum(terms, axis=0), mask=offs_n < N)


# --------------------------------------------------------------------------------------------------------
# Launch configurations (shared with the ahead-of-time check in aot.py)
# --------------------------------------------------------------------------------------------------------

BASIS_CONFIG = {"BLOCK_R": 16, "BLOCK_T": 128, "num_warps": 4}


def scores_config(dtype: torch.dtype) -> dict:
    """Block sizes of the scores GEMM. 16-bit inputs run on the tensor cores with 128 x 128 tiles;
    float32 and float64 use IEEE FMAs with operands in registers, so 64 x 64. The per-program factor tiles
    cos b, sin b ([basis block, BLOCK_K], float32/float64) stay live through the K-loop, which is what
    bounds BLOCK_K at 32 and sets 8 warps: the AOT check found spills with a 64-deep K step (16-bit, left,
    sm_80) and with 4 warps (float32/float64, right); these settings spill nowhere on sm_80 and sm_90."""
    if dtype in (torch.bfloat16, torch.float16):
        return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 2}


# --------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------

def dct_scores(G: torch.Tensor, side: str, norm: str = "l1") -> torch.Tensor:
    """Scores of the d basis rows against G (left: rows of D G, d = G.shape[0]; right: columns of G D^T,
    d = G.shape[1]); float32, float64 for float64 G. G may have any strides."""
    check_device(G.device, "dct", "G")
    if G.dtype not in DTYPES:
        raise TypeError(f"lowrank_ops.triton.dct: G must be float32, float64, bfloat16 or float16, got {G.dtype}")
    m, n = G.shape
    left = side == "left"
    d = m if left else n
    acc_dtype = torch.float64 if G.dtype == torch.float64 else torch.float32
    cfg = scores_config(G.dtype)
    M, N = (d, n) if left else (m, d)
    num_m, num_n = triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"])
    part = torch.zeros((num_n if left else num_m, d), dtype=acc_dtype, device=G.device)
    if G.numel() > 0:
        _dct_scores_kernel[(num_m * num_n, )](
            G, part, M, N, d, G.stride(0), G.stride(1), part.stride(0), DCT_IS_A=left, L2=norm == "l2",
            UPCAST_DOT=_INTERPRETED and G.dtype == torch.bfloat16, **cfg)
    sums = part.sum(0)
    return sums.sqrt_() if norm == "l2" else sums


def dct_basis(indices: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows indices[i] of the dim x dim basis, [len(indices), dim] in `dtype`."""
    check_device(indices.device, "dct", "indices")
    idx = indices.to(torch.int64).contiguous()
    out = torch.empty((idx.numel(), dim), dtype=dtype, device=indices.device)
    if out.numel() == 0:
        return out
    cfg = BASIS_CONFIG
    grid = (triton.cdiv(idx.numel(), cfg["BLOCK_R"]) * triton.cdiv(dim, cfg["BLOCK_T"]), )
    _dct_basis_kernel[grid](idx, out, idx.numel(), dim, out.stride(0), BLOCK_R=cfg["BLOCK_R"],
                            BLOCK_T=cfg["BLOCK_T"], num_warps=cfg["num_warps"])
    return out


# --------------------------------------------------------------------------------------------------------
# Ahead-of-time compile entries (tier-3 check, lowrank_ops.triton.aot)
# --------------------------------------------------------------------------------------------------------

_TRITON_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


def aot_entries() -> list:
    """Every kernel of this module as its launcher runs it on contiguous, aligned tensors."""
    from .aot import AotEntry

    entries = []
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        ty = _TRITON_TYPES[dtype]
        entries.append(
            AotEntry(f"dct_basis {ty}", _dct_basis_kernel,
                     signature={"idx_ptr": "*i64", "out_ptr": f"*{ty}", "R": "i32", "d": "i32", "stride_o": "i32"},
                     constexprs={"BLOCK_R": BASIS_CONFIG["BLOCK_R"], "BLOCK_T": BASIS_CONFIG["BLOCK_T"]},
                     expects_wgmma=False, num_warps=BASIS_CONFIG["num_warps"],
                     divisible_by_16=("idx_ptr", "out_ptr", "R", "d", "stride_o")))
    for side in ("left", "right"):
        for norm in ("l1", "l2"):
            for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
                ty = _TRITON_TYPES[dtype]
                cfg = scores_config(dtype)
                acc = "fp64" if dtype == torch.float64 else "fp32"
                entries.append(
                    AotEntry(f"dct_scores {side} {norm} {ty}", _dct_scores_kernel,
                             signature={"x_ptr": f"*{ty}", "part_ptr": f"*{acc}", "M": "i32", "N": "i32",
                                        "K": "i32", "stride_x0": "i32", "stride_p": "i32"},
                             constexprs={"stride_x1": 1, "DCT_IS_A": side == "left", "L2": norm == "l2",
                                         "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"],
                                         "BLOCK_K": cfg["BLOCK_K"], "UPCAST_DOT": False},
                             expects_wgmma=dtype in (torch.bfloat16, torch.float16), num_warps=cfg["num_warps"],
                             num_stages=cfg["num_stages"],
                             divisible_by_16=("x_ptr", "part_ptr", "M", "N", "K", "stride_x0", "stride_p")))
    return entries
