"""Triton backend of the lowrank_adam family: the fused low-rank AdamW step (math and conventions:
lowrank_ops/pure_torch/lowrank_adam.py, lowrank_ops/ops/projection.py).

Two GEMM kernels, each with its epilogue, on a side operator P (r x d) and a data matrix X:
  _project_kernel     C = P X (left) or X P^T (right); EPILOGUE "adam": the moment update of every element
                      of C and the direction (N, or N + wd D in the adapter mode) written out, so the
                      projected gradient never goes to memory. EPILOGUE "adam8": the same on blockwise 8-bit
                      moments (docs/DESIGN.md §3 "8-bit optimizer moments"): a program's tile is BLOCK_M rows
                      of one moment block (its columns past the block are computed and dropped), so the
                      epilogue decodes, updates and encodes whole blocks (blockwise8.q8_adam_epilogue) and no
                      float copy of the moments exists. EPILOGUE "store": C written out (the first GEMM of a
                      two-sided projection).
  _unproject_kernel   C = P^T Y (left) or Y P (right); EPILOGUE "update": W <- W (1 - lr wd) - lr scale C
                      (one rounding to W's dtype) on the W tile the program owns, so no m x n temporary
                      exists. EPILOGUE "store": C written out (the first GEMM of a two-sided unprojection).
A seeded P is generated tile by tile inside the K-loop with the sketch family's tile generator
(lowrank_ops.triton.sketch._sketch_tile); a "dct" P (rows indices[i] of the orthonormal DCT-II basis) is
generated there too, each entry c_k cos(pi k (2t + 1) / (2d)) evaluated from its exactly reduced integer
angle (_dct_tile), and an "sr_dct" P (those rows times sign_t, drawn from the side's seed by the rule of
lowrank_ops/spec.py SRDCT_*: _srdct_signs) as well; an explicit P (kind "matrix") is read from memory.

Precision: accumulation and the elementwise math are float32 (float64 for float64 W). Products run on the
operands' own precision where that loses nothing the result can keep: a 16-bit G is multiplied with P
rounded to G's dtype (tensor cores; as the sketch family does), and for a bfloat16 W the unprojection
multiplies the direction and P rounded to bfloat16 (their relative error, 2^-9 of the update, is far below
the rounding of W itself). float32 and float64 products are IEEE (no TF32). sqrt and division are the
correctly rounded ones (sqrt_rn, div_rn), as on the CPU.

Launchers take torch tensors (CUDA tensors; CPU tensors when TRITON_INTERPRET=1 was set before import) and
trust lowrank_ops.ops.lowrank_adam to have validated their arguments.
"""

import math

import torch
import triton
import triton.language as tl

from ..pure_torch.blockwise8 import code_table, midpoints
from ..pure_torch.lowrank_adam8 import step_around
from ..spec import SRDCT_SIGN_ROW, STATE_BLOCK_SIZE
from ._common import INTERPRETED as _INTERPRETED
from ._common import dot_acc, tile_ids
from .blockwise8 import q8_adam_epilogue
from .dct import PI, _div_rn, _row_scale
from .sketch import _TRITON_TYPES, AOT_RANK, KIND_IDS, _cast, _philox_offset, _sketch_tile, gemm_config

MATRIX = 2  # side kind id of an explicit P, next to the sketch kinds RADEMACHER = 0, GAUSSIAN = 1
DCT = 3  # side kind id of DCT-II basis rows given by an int32 index vector
SR_DCT = 4  # side kind id of DCT-II basis rows (an int32 index vector) times the signs of the side's seed
BASIS = (DCT, SR_DCT)  # the kinds whose tensor is an index vector
SIDE_KIND_IDS = {**KIND_IDS, "matrix": MATRIX, "dct": DCT, "sr_dct": SR_DCT}
SIGN_ROW = tl.constexpr(SRDCT_SIGN_ROW)

STORE, ADAM, UPDATE, ADAM8 = 0, 1, 2, 3  # epilogues
# The longest moment block (state_block_size) the fused 8-bit epilogue takes as one tile row: BLOCK_M (>= 16,
# tl.dot's minimum) x its width live in registers, 16 x 256 without spills (_q8_config). Longer blocks run the
# float kernel on decoded moments (lowrank_adamw_step8_).
MAX_FUSED_BLOCK = 256
# The float64 scalar arguments of _project_kernel's ADAM epilogue, in order (adam_scalars).
PROJECT_SCALARS = ("beta1_weight", "beta2", "one_minus_beta2", "bias1", "bias2_sqrt", "eps", "lr", "adapter_decay")


# --------------------------------------------------------------------------------------------------------
# Device functions
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _dct_tile(idx_ptr, stride_idx, rank, d, row0, col0, ROWS: tl.constexpr, COLS: tl.constexpr, DTYPE: tl.constexpr):
    """D[idx[row0 + i], col0 + j] for i < ROWS, j < COLS (rows past `rank` use basis row 0), in float32
    (float64 for a float64 DTYPE). The integer angle p = k (2t + 1) is reduced exactly (int64) and folded
    by the symmetries of the cosine, as kernels/dct.h does:
        q = p mod 4d;  q > 2d: q <- 4d - q  (cos(2 pi - x) = cos x);  q > d: q <- 2d - q, negate
        (cos(pi - x) = -cos x);  then cos(pi q / (2d)) = sin(x) with x = pi (d - q) / (2d) in [0, pi/2],
    one Taylor series in Horner form, sin x = x (1 - x^2/(2*3) (1 - x^2/(4*5) (1 - ...))), through x^13
    (float32; the first omitted term is < 5e-10 at pi/2) or x^21 (float64; < 1e-18). One series per entry
    (not a cos and a sin): the unprojection kernels hold a whole P tile live beside their accumulator."""
    if DTYPE == tl.float64:
        COMPUTE: tl.constexpr = tl.float64
        TERMS: tl.constexpr = 10
    else:
        COMPUTE: tl.constexpr = tl.float32
        TERMS: tl.constexpr = 6
    rows = row0 + tl.arange(0, ROWS)
    k = tl.load(idx_ptr + rows.to(tl.int64) * stride_idx, mask=rows < rank, other=0).to(tl.int64)
    t = (col0 + tl.arange(0, COLS)).to(tl.int64)
    n = tl.to_tensor(d).to(tl.int64)
    q = (k[:, None] * (2 * t[None, :] + 1)) % (4 * n)
    q = tl.where(q > 2 * n, 4 * n - q, q)
    negative = q > n
    q = tl.where(negative, 2 * n - q, q)
    x = (n - q).to(COMPUTE) * _div_rn(tl.full((), PI, COMPUTE), 2 * n.to(COMPUTE), COMPUTE)
    x2 = x * x
    series = tl.full(x.shape, 1.0, COMPUTE)
    for i in tl.static_range(TERMS, 0, -1):
        series = 1.0 - x2 * series * (1.0 / ((2 * i) * (2 * i + 1)))
    value = x * series
    return _row_scale(k, d, COMPUTE)[:, None] * tl.where(negative, -value, value)


@triton.jit
def _srdct_signs(seed, col0, COLS: tl.constexpr):
    """The signs sign_t of columns t = col0 .. col0 + COLS - 1 of an "sr_dct" side, as a [COLS] bool tensor
    (True: +1): bit (t % 32) of word (t % 128) // 32 of philox((t // 128, SRDCT_SIGN_ROW, 0, 0); seed), the
    Rademacher entry (SRDCT_SIGN_ROW, t) of the seed (lowrank_ops/spec.py). One Philox call per column: a
    tile has ROWS times as many cosines."""
    t = col0 + tl.arange(0, COLS)
    w0, w1, w2, w3 = tl.randint4x(seed, _philox_offset(tl.full((COLS, ), SIGN_ROW, tl.int32), t // 128))
    q = (t % 128) // 32
    word = tl.where(q == 0, w0, tl.where(q == 1, w1, tl.where(q == 2, w2, w3)))
    return ((word >> (t % 32).to(tl.uint32)) & 1) != 0


@triton.jit
def _operator_tile(p_ptr, stride_p0, stride_p1, seed, rank, d, row0, col0, ROWS: tl.constexpr, COLS: tl.constexpr,
                   KIND: tl.constexpr, DTYPE: tl.constexpr, INTERPRETED: tl.constexpr):
    """P[row0 : row0 + ROWS, col0 : col0 + COLS] as DTYPE, rounded to nearest (sketch._cast): generated
    (seeded kinds, DCT; entries past r or d are finite values that the callers cancel with zero-padded data
    tiles) or loaded (MATRIX; zero outside). DCT: p_ptr holds the int32 basis-row indices (stride
    stride_p0); entry (i, t) = c_k cos(pi p / (2d)) with k = indices[i] and the integer p = k (2t + 1)
    reduced modulo 4d in int64 before any rounding (kernels/dct.h's dct_entry), computed in float32
    (float64 for a float64 DTYPE). SR_DCT: the DCT entry times sign_t of `seed` (_srdct_signs; a negation,
    exact before or after the rounding)."""
    if KIND == 4:
        tile = _dct_tile(p_ptr, stride_p0, rank, d, row0, col0, ROWS, COLS, DTYPE)
        tile = tl.where(_srdct_signs(seed, col0, COLS)[None, :], tile, -tile)
        return _cast(tile, DTYPE, INTERPRETED)
    elif KIND == 3:
        return _cast(_dct_tile(p_ptr, stride_p0, rank, d, row0, col0, ROWS, COLS, DTYPE), DTYPE, INTERPRETED)
    elif KIND == 2:
        rows = row0 + tl.arange(0, ROWS)[:, None]
        cols = col0 + tl.arange(0, COLS)[None, :]
        tile = tl.load(p_ptr + rows.to(tl.int64) * stride_p0 + cols.to(tl.int64) * stride_p1,
                       mask=(rows < rank) & (cols < d), other=0.0)
        return _cast(tile, DTYPE, INTERPRETED)
    else:
        return _sketch_tile(seed, row0, col0, d, ROWS, COLS, KIND, DTYPE, INTERPRETED)


@triton.jit
def _operator_view(p_ptr, stride_p0, stride_p1, seed, rank, d, row0, col0, ROWS: tl.constexpr, COLS: tl.constexpr,
                   TRANS: tl.constexpr, KIND: tl.constexpr, DTYPE: tl.constexpr, INTERPRETED: tl.constexpr):
    """The [ROWS, COLS] tile at (row0, col0) of P, or (TRANS) of P^T, which is the transpose of P's
    [COLS, ROWS] tile at (col0, row0); see _operator_tile."""
    if TRANS:
        return tl.trans(_operator_tile(p_ptr, stride_p0, stride_p1, seed, rank, d, col0, row0, COLS, ROWS, KIND, DTYPE,
                                       INTERPRETED))
    else:
        return _operator_tile(p_ptr, stride_p0, stride_p1, seed, rank, d, row0, col0, ROWS, COLS, KIND, DTYPE,
                              INTERPRETED)


@triton.jit
def _operator_gemm(x_ptr, stride_x0, stride_x1, p_ptr, stride_p0, stride_p1, seed, M, N, K, rank, d, m0, n0,
                   KIND: tl.constexpr, P_IS_A: tl.constexpr, P_T: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
                   INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The [m0 : m0 + BLOCK_M, n0 : n0 + BLOCK_N] tile of C = A B (M x N, inner K), accumulated in ACC, where
    one operand is a view of P and the other the data matrix X (strides stride_x0, stride_x1):
      P_IS_A, not P_T:  A = P    (project left)      P_IS_A, P_T:  A = P^T  (unproject left)
      B, P_T:           B = P^T  (project right)     B, not P_T:   B = P    (unproject right)
    Both operands are rounded to DOT before the product. X tiles past the matrix load as zeros. INTERPRETED
    (Triton's interpreter runs the kernel): casts round as on the GPU (sketch._cast), and bfloat16 tiles are
    multiplied as float32, the same products, as a bfloat16 product is exact in float32 (the interpreter's
    tl.dot would multiply raw bfloat16 bits, triton-lang/triton#11584)."""
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    UPCAST: tl.constexpr = INTERPRETED and DOT == tl.bfloat16
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        if P_IS_A:  # A = P or P^T [m-block, k-block]
            a = _operator_view(p_ptr, stride_p0, stride_p1, seed, rank, d, m0, k0, BLOCK_M, BLOCK_K, P_T, KIND, DOT,
                               INTERPRETED)
            b = tl.load(x_ptr + (ks.to(tl.int64) * stride_x0)[:, None] + (offs_n.to(tl.int64) * stride_x1)[None, :],
                        mask=(ks < K)[:, None] & (offs_n < N)[None, :], other=0.0)
            b = _cast(b, DOT, INTERPRETED)
        else:
            a = tl.load(x_ptr + (offs_m.to(tl.int64) * stride_x0)[:, None] + (ks.to(tl.int64) * stride_x1)[None, :],
                        mask=(offs_m < M)[:, None] & (ks < K)[None, :], other=0.0)
            a = _cast(a, DOT, INTERPRETED)
            # B = P or P^T [k-block, n-block]
            b = _operator_view(p_ptr, stride_p0, stride_p1, seed, rank, d, k0, n0, BLOCK_K, BLOCK_N, P_T, KIND, DOT,
                               INTERPRETED)
        acc = dot_acc(a, b, acc, DOT, UPCAST)
    return acc


@triton.jit
def _scalar(x, ACC: tl.constexpr):
    """A float64 scalar argument rounded to ACC (the interpreter hands it over as a Python float)."""
    return tl.to_tensor(x).to(ACC)


@triton.jit
def _program_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, P_IS_A: tl.constexpr):
    """(m0, n0) of this program's C tile. The P-side index runs fastest, so programs that read the same
    block of X run together."""
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, P_IS_A)
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@triton.constexpr_function
def project_dot_type(x_type, acc_type):
    """The operand dtype of a projection GEMM: a 16-bit data matrix multiplies in its own dtype (P rounded to
    it; tensor cores) when the accumulation is float32, else everything is in the accumulation dtype."""
    if acc_type == tl.float32 and (x_type == tl.bfloat16 or x_type == tl.float16):
        return x_type
    return acc_type


@triton.constexpr_function
def project_column_step(epilogue, state_block, block_n):
    """The columns between two programs' tiles of a projection: one moment block for the 8-bit epilogue
    (its tile, BLOCK_N >= state_block wide, computes the block's columns and drops the rest), else BLOCK_N."""
    return state_block if epilogue == 3 else block_n


@triton.constexpr_function
def unproject_dot_type(out_type, acc_type, epilogue):
    """The operand dtype of an unprojection GEMM: bfloat16 when it updates a bfloat16 W, else the
    accumulation dtype (module docstring)."""
    if epilogue == 2 and out_type == tl.bfloat16:
        return tl.bfloat16
    return acc_type


@triton.jit
def _adam_epilogue(acc, idx, mask, exp_avg_ptr, exp_avg_sq_ptr, delta_ptr, beta1_weight, beta2, one_minus_beta2,
                   bias1, bias2_sqrt, eps, lr, adapter_decay, ADAPTER: tl.constexpr):
    """The moment update of the projected tile `acc` (compute dtype ACC) on the states at offsets idx (mask),
    in kernels/adam.h's order: m <- m + (1 - b1)(acc - m); v <- b2 v + (1 - b2) acc^2;
    N = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps); returns N, or (ADAPTER) N + wd D with D <- D - lr (N + wd D).
    The float64 scalars are rounded to ACC here, as the C++ backends round them on the host."""
    ACC: tl.constexpr = acc.dtype
    STATE: tl.constexpr = exp_avg_ptr.dtype.element_ty
    m = tl.load(exp_avg_ptr + idx, mask=mask, other=0.0).to(ACC)
    v = tl.load(exp_avg_sq_ptr + idx, mask=mask, other=0.0).to(ACC)
    m = m + _scalar(beta1_weight, ACC) * (acc - m)
    v = v * _scalar(beta2, ACC) + _scalar(one_minus_beta2, ACC) * acc * acc
    denom = tl.div_rn(tl.sqrt_rn(v), _scalar(bias2_sqrt, ACC)) + _scalar(eps, ACC)
    out = tl.div_rn(tl.div_rn(m, _scalar(bias1, ACC)), denom)
    tl.store(exp_avg_ptr + idx, m.to(STATE), mask=mask)
    tl.store(exp_avg_sq_ptr + idx, v.to(STATE), mask=mask)
    if ADAPTER:
        delta = tl.load(delta_ptr + idx, mask=mask, other=0.0).to(ACC)
        out = out + _scalar(adapter_decay, ACC) * delta
        tl.store(delta_ptr + idx, (delta - _scalar(lr, ACC) * out).to(STATE), mask=mask)
    return out


@triton.jit
def _update_epilogue(acc, ptrs, mask, weight_multiplier, update_scale, INTERPRETED: tl.constexpr):
    """W <- W * (1 - lr wd) - (lr scale) acc on the W tile at ptrs (mask), computed in acc's dtype and rounded
    once to W's dtype (weight_multiplier = 1 in the adapter mode; kernels/adam.h adam_weight_update)."""
    ACC: tl.constexpr = acc.dtype
    w = tl.load(ptrs, mask=mask, other=0.0).to(ACC)
    w = w * _scalar(weight_multiplier, ACC) - _scalar(update_scale, ACC) * acc
    tl.store(ptrs, _cast(w, ptrs.dtype.element_ty, INTERPRETED), mask=mask)


# --------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["seed"])
def _project_kernel(x_ptr, p_ptr, out_ptr, exp_avg_ptr, exp_avg_sq_ptr, delta_ptr, am_ptr, av_ptr, scode_ptr, smid_ptr,
                    ucode_ptr, umid_ptr, seed: tl.uint64, M, N, K, rank, d, stride_x0, stride_x1, stride_p0, stride_p1,
                    beta1_weight: tl.float64, beta2: tl.float64, one_minus_beta2: tl.float64, bias1: tl.float64,
                    bias2_sqrt: tl.float64, eps: tl.float64, lr: tl.float64, adapter_decay: tl.float64,
                    KIND: tl.constexpr, LEFT: tl.constexpr, EPILOGUE: tl.constexpr, ADAPTER: tl.constexpr,
                    INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    STATE_BLOCK: tl.constexpr):
    """C = P X (LEFT; M = r, K = d) or X P^T (M x r, K = d), then the epilogue on the contiguous M x N
    buffers out (the compute dtype: float32, or float64), exp_avg, exp_avg_sq and delta (the state dtype):
      STORE: out = C.
      ADAM:  m <- m + (1 - b1)(C - m); v <- b2 v + (1 - b2) C^2; N = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps);
             out = N, or (ADAPTER) out = N + wd D and D <- D - lr out   (kernels/adam.h, same order).
      ADAM8: ADAM on 8-bit moments: exp_avg / exp_avg_sq are the uint8 codes, am / av their float32 absmax
             [M, cdiv(N, STATE_BLOCK)], scode / smid and ucode / umid the signed and unsigned code tables and
             midpoints (pure_torch/blockwise8.py). The program's tile starts at a block's first column and
             BLOCK_N >= STATE_BLOCK (project_column_step), so each tile row holds one whole block.
    The float64 scalars are rounded to the compute dtype here, as the C++ backends round them on the host."""
    ACC: tl.constexpr = out_ptr.dtype.element_ty
    DOT: tl.constexpr = project_dot_type(x_ptr.dtype.element_ty, ACC)
    STEP_N: tl.constexpr = project_column_step(EPILOGUE, STATE_BLOCK, BLOCK_N)
    m0, n0 = _program_tile(M, N, BLOCK_M, STEP_N, LEFT)
    acc = _operator_gemm(x_ptr, stride_x0, stride_x1, p_ptr, stride_p0, stride_p1, seed, M, N, K, rank, d, m0, n0,
                         KIND, LEFT, not LEFT, DOT, ACC, INTERPRETED, BLOCK_M, BLOCK_N, BLOCK_K)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    idx = (offs_m.to(tl.int64) * N)[:, None] + offs_n[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :] & (offs_n < n0 + STEP_N)[None, :]
    if EPILOGUE == 1:
        out = _adam_epilogue(acc, idx, mask, exp_avg_ptr, exp_avg_sq_ptr, delta_ptr, beta1_weight, beta2,
                             one_minus_beta2, bias1, bias2_sqrt, eps, lr, adapter_decay, ADAPTER)
    elif EPILOGUE == 3:
        blocks = tl.cdiv(N, STATE_BLOCK)
        ab = tl.where(offs_m < M, offs_m.to(tl.int64) * blocks + n0 // STATE_BLOCK, -1)  # the rows' absmax
        out = q8_adam_epilogue(acc, mask, idx, ab, exp_avg_ptr, am_ptr, exp_avg_sq_ptr, av_ptr, delta_ptr, scode_ptr,
                               smid_ptr, ucode_ptr, umid_ptr, beta1_weight, beta2, one_minus_beta2, bias1, bias2_sqrt,
                               eps, lr, adapter_decay, ADAPTER)
    else:
        out = acc
    tl.store(out_ptr + idx, out, mask=mask)


@triton.jit(do_not_specialize=["seed"])
def _unproject_kernel(y_ptr, p_ptr, out_ptr, seed: tl.uint64, M, N, K, rank, d, stride_y0, stride_y1, stride_p0,
                      stride_p1, stride_o0, stride_o1, weight_multiplier: tl.float64, update_scale: tl.float64,
                      KIND: tl.constexpr, LEFT: tl.constexpr, EPILOGUE: tl.constexpr, INTERPRETED: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C = P^T Y (LEFT; M = d, K = r) or Y P (N = d, K = r), Y in the compute dtype, then the epilogue on
    `out` (strides stride_o0, stride_o1):
      STORE:  out = C (the compute dtype).
      UPDATE: out = W <- W * (1 - lr wd) - (lr scale) C, computed in the compute dtype and rounded once to
              W's dtype (weight_multiplier = 1 in the adapter mode; kernels/adam.h adam_weight_update).
    For a bfloat16 W the product runs on Y and P rounded to bfloat16 (module docstring)."""
    ACC: tl.constexpr = y_ptr.dtype.element_ty
    DOT: tl.constexpr = unproject_dot_type(out_ptr.dtype.element_ty, ACC, EPILOGUE)
    m0, n0 = _program_tile(M, N, BLOCK_M, BLOCK_N, LEFT)
    acc = _operator_gemm(y_ptr, stride_y0, stride_y1, p_ptr, stride_p0, stride_p1, seed, M, N, K, rank, d, m0, n0,
                         KIND, LEFT, LEFT, DOT, ACC, INTERPRETED, BLOCK_M, BLOCK_N, BLOCK_K)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    ptrs = out_ptr + (offs_m.to(tl.int64) * stride_o0)[:, None] + (offs_n.to(tl.int64) * stride_o1)[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    if EPILOGUE == 2:
        _update_epilogue(acc, ptrs, mask, weight_multiplier, update_scale, INTERPRETED)
    else:
        tl.store(ptrs, acc, mask=mask)


# --------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------


class _Side:
    """One side operator as the kernels take it: kind id, seed (uint64), rank, d, and the tensor of the
    schema's matrix slot: P (kind "matrix") or the index vector (kinds "dct", "sr_dct", held as int32)."""

    def __init__(self, kind: str, seed: int, rank: int, matrix, dim: int):
        self.kind = SIDE_KIND_IDS[kind]
        self.seed = seed % 2**64
        self.rank = rank
        self.dim = dim
        self.matrix = matrix.to(torch.int32).contiguous() if self.kind in BASIS else matrix

    def pointer_args(self, fallback: torch.Tensor) -> tuple:
        """(p, stride_p0, stride_p1): the matrix, the index vector, or an unused placeholder for a seeded
        side."""
        if self.matrix is None:
            return fallback, 0, 0
        if self.kind in BASIS:
            return self.matrix, 1, 1
        return self.matrix, self.matrix.stride(0), self.matrix.stride(1)


def _grid(cfg: dict, M: int, N: int, column_step: int | None = None) -> tuple:
    """Programs of a GEMM whose tiles start every BLOCK_M rows and every `column_step` (BLOCK_N) columns."""
    return (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, column_step or cfg["BLOCK_N"]), )


def _q8_config(cfg: dict, block: int) -> dict:
    """The projection's config for the 8-bit epilogue: BLOCK_N the block's width rounded up to a power of two
    (>= 16), BLOCK_M = 4096 // BLOCK_N (>= 16, tl.dot's minimum; within the float config's), BLOCK_K at most 32.
    With 32 x 256 tiles, or BLOCK_K 64, the default block's kernel spills on sm_80 and sm_90 for a bfloat16 G
    (python -m lowrank_ops.triton.aot). Tiles under 64 rows do not take Hopper's wgmma: the 8-bit GEMM runs
    mma.sync."""
    width = max(16, triton.next_power_of_2(block))
    return {**cfg, "BLOCK_N": width, "BLOCK_M": max(16, min(cfg["BLOCK_M"], 4096 // width)),
            "BLOCK_K": min(cfg["BLOCK_K"], 32)}


def _config(op: str, left: bool, rank: int, dtype: torch.dtype, kind: int) -> dict:
    """sketch.gemm_config for the operand dtype, with the output tile halved for 16-bit operands: the
    epilogues keep the state tiles (or the W tile) live next to the accumulator, and the plain sketch
    GEMM's 128 x 128 tiles then spill on sm_80 and sm_90. 64 along the rank (project) or along the data
    matrix (unproject) with 8 warps compiles without spills (python -m lowrank_ops.triton.aot reports
    registers and spills). A DCT (or SR_DCT) side's float32/float64 unprojection runs 4 warps: with 8, its int64
    angle reduction spills on sm_80 (8 bytes at the 128-register cap)."""
    cfg = gemm_config(op, "left" if left else "right", rank, dtype)
    if dtype in (torch.bfloat16, torch.float16):
        if op == "project":
            key = "BLOCK_M" if left else "BLOCK_N"
            cfg[key] = min(cfg[key], 64)
        else:
            cfg["BLOCK_N" if left else "BLOCK_M"] = 64
        cfg["num_warps"] = 8
    elif kind in BASIS and op == "unproject":
        cfg["num_warps"] = 4
    return cfg


def _project(x: torch.Tensor, side: _Side, left: bool, out: torch.Tensor, states=None, scalars=None,
             q8=None) -> torch.Tensor:
    """out = P x (left) or x P^T (right); with `states` = (exp_avg, exp_avg_sq, delta or None) and
    `scalars` (adam_scalars), the ADAM epilogue instead (out = the direction); with `q8` = (exp_avg_absmax,
    exp_avg_sq_absmax, block) too, the ADAM8 epilogue on the 8-bit moments (codes in `states`)."""
    M, N = out.shape
    if out.numel() == 0:
        return out
    exp_avg, exp_avg_sq, delta = states if states is not None else (out, out, None)
    coefficients = [scalars[name] for name in PROJECT_SCALARS] if states is not None else [0.0] * len(PROJECT_SCALARS)
    p, sp0, sp1 = side.pointer_args(x)
    cfg = _config("project", left, side.rank, x.dtype, side.kind)
    epilogue = ADAM if states is not None else STORE
    absmax, tables, block = (out, out), (out, ) * 4, 0
    if q8 is not None:
        *absmax, block = q8
        tables = (code_table(True, x.device), midpoints(True, x.device), code_table(False, x.device),
                  midpoints(False, x.device))
        cfg, epilogue = _q8_config(cfg, block), ADAM8
    _project_kernel[_grid(cfg, M, N, block or None)](
        x, p, out, exp_avg, exp_avg_sq, delta if delta is not None else exp_avg, *absmax, *tables, side.seed, M, N,
        side.dim, side.rank, side.dim, x.stride(0), x.stride(1), sp0, sp1, *coefficients, KIND=side.kind, LEFT=left,
        EPILOGUE=epilogue, ADAPTER=delta is not None, INTERPRETED=_INTERPRETED, STATE_BLOCK=block, **cfg)
    return out


def _unproject(y: torch.Tensor, side: _Side, left: bool, out: torch.Tensor, update=None) -> torch.Tensor:
    """out = P^T y (left) or y P (right); with `update` = (weight_multiplier, update_scale), `out` is W and
    gets the UPDATE epilogue instead."""
    M, N = out.shape
    if out.numel() == 0:
        return out
    p, sp0, sp1 = side.pointer_args(y)
    multiplier, scale = update if update is not None else (1.0, 0.0)
    cfg = _config("unproject", left, side.rank, out.dtype if update is not None else y.dtype, side.kind)
    _unproject_kernel[_grid(cfg, M, N)](
        y, p, out, side.seed, M, N, side.rank, side.rank, side.dim, y.stride(0), y.stride(1), sp0, sp1, out.stride(0),
        out.stride(1), multiplier, scale, KIND=side.kind, LEFT=left, EPILOGUE=UPDATE if update is not None else STORE,
        INTERPRETED=_INTERPRETED, **cfg)
    return out


def adam_scalars(lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int, scale: float,
                 adapter: bool) -> dict:
    """The step's scalars in float64 (kernels/adam.h make_adam_step); the kernels round them."""
    return {
        "beta1_weight": 1.0 - beta1, "beta2": beta2, "one_minus_beta2": 1.0 - beta2, "bias1": 1.0 - beta1**step,
        "bias2_sqrt": math.sqrt(1.0 - beta2**step), "eps": eps, "lr": lr,
        "adapter_decay": weight_decay if adapter else 0.0,
        "weight_multiplier": 1.0 if adapter else 1.0 - lr * weight_decay, "update_scale": lr * scale,
    }


def _working(state: torch.Tensor) -> torch.Tensor:
    return state if state.is_contiguous() else state.contiguous()


def lowrank_adamw_step_(W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix, right_kind,
                        right_seed, right_rank, right_matrix, lr, beta1, beta2, eps, weight_decay, step, scale,
                        wd_mode, q8=None) -> None:
    """The fused step with the schema's arguments (lowrank_ops/_ops.py), in place on W, the moments and
    delta. Order of the GEMMs as in csrc/lowrank_adam.cpp: the one on G first and, for two sides, the
    order with fewer flops. `q8` = (exp_avg_absmax, exp_avg_sq_absmax, block): the moments are 8-bit codes
    (lowrank_adamw_step8_)."""
    if W.dtype == torch.float64 and _INTERPRETED:
        raise NotImplementedError(
            "lowrank_ops.triton.lowrank_adam: the Triton interpreter passes float arguments as float32, so a "
            "float64 W needs the compiled kernels (a CUDA device) or another backend")
    m, n = W.shape
    compute = torch.float64 if W.dtype == torch.float64 else torch.float32
    left = _Side(left_kind, left_seed, left_rank, left_matrix, m) if left_kind != "none" else None
    right = _Side(right_kind, right_seed, right_rank, right_matrix, n) if right_kind != "none" else None
    adapter = wd_mode == "adapter"
    scalars = adam_scalars(lr, beta1, beta2, eps, weight_decay, step, scale, adapter)
    r1 = left.rank if left else m
    r2 = right.rank if right else n
    targets = (exp_avg, exp_avg_sq, delta if adapter else None)
    states = tuple(_working(s) if s is not None else None for s in targets)
    work8 = None
    if q8 is not None:
        work8 = (_working(q8[0]), _working(q8[1]), q8[2])
        targets, states = targets + tuple(q8[:2]), states + work8[:2]
    direction = torch.empty((r1, r2), dtype=compute, device=W.device)

    if left and right:
        if m * n * r2 + r1 * m * r2 <= r1 * m * n + r1 * n * r2:
            inner = _project(G, right, False, torch.empty((m, r2), dtype=compute, device=W.device))
            _project(inner, left, True, direction, states[:3], scalars, work8)
        else:
            inner = _project(G, left, True, torch.empty((r1, n), dtype=compute, device=W.device))
            _project(inner, right, False, direction, states[:3], scalars, work8)
    else:
        _project(G, left or right, left is not None, direction, states[:3], scalars, work8)
    for work, state in zip(states, targets):
        if work is not None and work is not state:
            state.copy_(work)

    update = (scalars["weight_multiplier"], scalars["update_scale"])
    if left and right:
        if r1 * r2 * n + m * n * r1 <= m * r1 * r2 + m * n * r2:
            y = _unproject(direction, right, False, torch.empty((r1, n), dtype=compute, device=W.device))
            _unproject(y, left, True, W, update)
        else:
            y = _unproject(direction, left, True, torch.empty((m, r2), dtype=compute, device=W.device))
            _unproject(y, right, False, W, update)
    else:
        _unproject(direction, left or right, left is not None, W, update)


def lowrank_adamw_step8_(W, G, exp_avg, exp_avg_sq, delta, *args) -> None:
    """The fused step on blockwise 8-bit moments (docs/DESIGN.md §3 "8-bit optimizer moments"): the schema's
    arguments up to wd_mode, then exp_avg_absmax, exp_avg_sq_absmax, state_block_size; the codes, absmax (and
    delta) updated in place. The projection's ADAM8 epilogue decodes, updates and encodes whole blocks in its
    tiles. A block wider than MAX_FUSED_BLOCK does not fit a tile row: the float kernel runs on the decoded
    moments then (pure_torch/lowrank_adam8.step_around, the same arithmetic with float temporaries)."""
    *schema, exp_avg_absmax, exp_avg_sq_absmax, block = args
    if block > MAX_FUSED_BLOCK:
        step_around(lowrank_adamw_step_, W, G, exp_avg, exp_avg_sq, delta, *args)
        return
    lowrank_adamw_step_(W, G, exp_avg, exp_avg_sq, delta, *schema, q8=(exp_avg_absmax, exp_avg_sq_absmax, block))


# --------------------------------------------------------------------------------------------------------
# Ahead-of-time compile entries (tier-3 check, lowrank_ops.triton.aot)
# --------------------------------------------------------------------------------------------------------


def _aot_p_type(kind_id: int, placeholder: str) -> str:
    """p_ptr's type: fp32 P (MATRIX), int32 indices (DCT, SR_DCT), or the placeholder's (seeded kinds)."""
    return {MATRIX: "*fp32", DCT: "*i32", SR_DCT: "*i32"}.get(kind_id, f"*{placeholder}")


def _aot_project_entry(label: str, kind_id: int, left: bool, g_dtype: torch.dtype, cfg: dict, epilogue: int):
    """_project_kernel with the ADAM (float32 moments) or ADAM8 (8-bit moments, block STATE_BLOCK_SIZE)
    epilogue, as the launcher runs it; the 8-bit pointers are placeholders for ADAM (never read)."""
    from .aot import AotEntry

    ty = _TRITON_TYPES[g_dtype]
    state = "*u8" if epilogue == ADAM8 else "*fp32"
    q8 = ("am_ptr", "av_ptr", "scode_ptr", "smid_ptr", "ucode_ptr", "umid_ptr")
    return AotEntry(
        label, _project_kernel,
        signature={"x_ptr": f"*{ty}", "p_ptr": _aot_p_type(kind_id, ty), "out_ptr": "*fp32", "exp_avg_ptr": state,
                   "exp_avg_sq_ptr": state, "delta_ptr": "*fp32", **{name: "*fp32" for name in q8}, "seed": "u64",
                   "M": "i32", "N": "i32", "K": "i32", "rank": "i32", "d": "i32", "stride_x0": "i32",
                   "stride_p0": "i32", **{name: "fp64" for name in PROJECT_SCALARS}},
        constexprs={"stride_x1": 1, "stride_p1": 1, "KIND": kind_id, "LEFT": left, "EPILOGUE": epilogue,
                    "ADAPTER": False, "INTERPRETED": False, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"],
                    "BLOCK_K": cfg["BLOCK_K"], "STATE_BLOCK": STATE_BLOCK_SIZE if epilogue == ADAM8 else 0},
        expects_wgmma=g_dtype == torch.bfloat16 and cfg["BLOCK_M"] >= 64, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
        divisible_by_16=("x_ptr", "out_ptr", "exp_avg_ptr", "exp_avg_sq_ptr", "M", "N", "K", "d", "stride_x0"))


def aot_entries() -> list:
    """The kernels as the launcher runs them on contiguous, aligned tensors: the fused projection (ADAM
    epilogue) for bfloat16 and float32 G and the fused unprojection (UPDATE epilogue) for float32 and
    bfloat16 W, each side, each kind. A seeded side's p_ptr is a placeholder the launcher fills with the
    data matrix (it is never read); a DCT or SR_DCT side's is the int32 index vector."""
    from .aot import AotEntry

    entries = []
    for left in (True, False):
        side = "left" if left else "right"
        for kind, kind_id in SIDE_KIND_IDS.items():
            for g_dtype in (torch.bfloat16, torch.float32):
                ty = _TRITON_TYPES[g_dtype]
                cfg = _config("project", left, AOT_RANK, g_dtype, kind_id)
                entries.append(_aot_project_entry(f"lowrank_adam project/{side} {kind} G {ty}", kind_id, left,
                                                  g_dtype, cfg, ADAM))
                if kind_id == KIND_IDS["rademacher"]:  # the 8-bit epilogue (default block) on one kind
                    entries.append(_aot_project_entry(f"lowrank_adam project8/{side} {kind} G {ty}", kind_id, left,
                                                      g_dtype, _q8_config(cfg, STATE_BLOCK_SIZE), ADAM8))
            for w_dtype in (torch.float32, torch.bfloat16):
                ty = _TRITON_TYPES[w_dtype]
                cfg = _config("unproject", left, AOT_RANK, w_dtype, kind_id)
                entries.append(AotEntry(
                    f"lowrank_adam unproject/{side} {kind} W {ty}", _unproject_kernel,
                    signature={"y_ptr": "*fp32", "p_ptr": _aot_p_type(kind_id, "fp32"), "out_ptr": f"*{ty}", "seed": "u64", "M": "i32",
                               "N": "i32", "K": "i32", "rank": "i32", "d": "i32", "stride_y0": "i32",
                               "stride_p0": "i32", "stride_o0": "i32", "weight_multiplier": "fp64",
                               "update_scale": "fp64"},
                    constexprs={"stride_y1": 1, "stride_p1": 1, "stride_o1": 1, "KIND": kind_id, "LEFT": left,
                                "EPILOGUE": UPDATE, "INTERPRETED": False, "BLOCK_M": cfg["BLOCK_M"],
                                "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"]},
                    expects_wgmma=w_dtype == torch.bfloat16, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                    divisible_by_16=("y_ptr", "out_ptr", "M", "N", "K", "d", "stride_y0", "stride_o0")))
    return entries
