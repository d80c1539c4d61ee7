"""Triton backend of the sketch family: spec v1 (docs/DESIGN.md §3) generated inside the kernels.

P is the r x d sketch. Its entry (i, j) comes from the Philox4x32-10 words of counter (g, i, 0, 0) under
key (seed & 0xffffffff, seed >> 32). That is exactly what Triton's built-in tl.randint4x(seed, offset)
computes for the 64-bit offset (i << 32) | g (it splits the offset into the counter words c0 = g, c1 = i),
and tl.randn4x runs the spec's Box-Muller on those words, so the kernels use the built-ins:
  Rademacher: g = j // 128; sign bit (j % 32) of word (j % 128) // 32; value +scale if set, else -scale.
  Gaussian:   g = j // 4; (z0, z1, z2, z3) = Box-Muller of (w0, w1), (w2, w3); value z_(j % 4) * scale.
scale = 1/sqrt(d) rounded to the compute type (float32; float64 for float64 data), so E[P P^T] = I_r.

The projections are GEMMs whose sketch operand never touches memory: every program regenerates the P tile
it needs inside its K-loop and multiplies it with a tile of the data matrix, read through its strides.
Launchers take and return torch tensors (CUDA tensors; CPU tensors when TRITON_INTERPRET=1 was set before
this module was imported) and trust lowrank_ops.ops.sketch to have validated their arguments.
"""

import torch
import triton
import triton.language as tl

from ._common import INTERPRETED as _INTERPRETED
from ._common import check_device, compute_type, dot_acc, tile_ids

KIND_IDS = {"rademacher": 0, "gaussian": 1}  # the KIND constexpr of the kernels (kernels/sketch.h numbering)

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------------------------------------
# Device functions
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _philox_offset(rows, groups):
    """The 64-bit randint4x offset (i << 32) | g that selects Philox counter (g, i, 0, 0); groups are
    non-negative int32 values (or a Python int), which widen to int64 unchanged."""
    return (rows.to(tl.int64) << 32) | groups


@triton.jit
def _sketch_scale(d, COMPUTE: tl.constexpr):
    """1/sqrt(d) rounded to COMPUTE. In float64, sqrt and division are the correctly rounded sqrt.rn.f64
    and div.rn.f64 (PTX has no approximate float64 forms), so this is the float64 value of the host's
    1.0 / math.sqrt(d), then rounded to nearest float32 when COMPUTE is float32: the two roundings the
    reference does."""
    d64 = tl.to_tensor(d).to(tl.float64)
    return (1.0 / tl.sqrt(d64)).to(COMPUTE)


@triton.jit
def _cast(x, DTYPE: tl.constexpr, INTERPRETED: tl.constexpr):
    """x.to(DTYPE), rounding to nearest even. Triton's interpreter truncates float -> bfloat16 casts (the
    GPU's cvt.rn rounds), so when INTERPRETED a bfloat16 result is rounded in integer arithmetic: add half
    a bfloat16 ulp (0x7fff) plus the lowest kept bit (ties go to even) to the float32 bits, keep the top 16."""
    if INTERPRETED and DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


@triton.jit
def _sketch_tile(seed, row0, col0, d, ROWS: tl.constexpr, COLS: tl.constexpr, KIND: tl.constexpr,
                 DTYPE: tl.constexpr, INTERPRETED: tl.constexpr):
    """P[row0 : row0 + ROWS, col0 : col0 + COLS] of an r x d sketch, as a DTYPE tile computed in float32
    (float64 when DTYPE is float64) and then cast. COLS is a power of two >= 32 and col0 a multiple of it,
    so the tile covers whole 32-column Rademacher words and whole 4-column Gaussian groups. Entries past r
    or d are generated like the others (finite values: +-scale, or |z| <= sqrt(-2 ln 1e-7)); callers drop
    them through masked stores or multiply them with zero-padded operand tiles."""
    COMPUTE: tl.constexpr = compute_type(DTYPE)
    scale = _sketch_scale(d, COMPUTE)
    rows = row0 + tl.arange(0, ROWS)[:, None]
    if KIND == 0:  # Rademacher (KIND_IDS): one Philox call per row and 128-column group
        if COLS >= 128:  # whole groups
            GROUPS: tl.constexpr = COLS // 128
            groups = col0 // 128 + tl.arange(0, GROUPS)[None, :]
            w0, w1, w2, w3 = tl.randint4x(seed, _philox_offset(rows, groups))
            # join(join(w0, w2), join(w1, w3))[.., g, a, b] = w_(2a+b): flattening puts word q of group g
            # at position 4g + q, the word that holds columns 32 (4g + q) .. 32 (4g + q) + 31.
            words = tl.join(tl.join(w0, w2), tl.join(w1, w3)).reshape(ROWS, 4 * GROUPS)
        else:  # 32 or 64 columns: words q0, q0 + 1, .. of the single group col0 // 128
            w0, w1, w2, w3 = tl.randint4x(seed, _philox_offset(rows, col0 // 128))
            q = (col0 % 128) // 32 + tl.arange(0, COLS // 32)[None, :]
            words = tl.where(q == 0, w0, tl.where(q == 1, w1, tl.where(q == 2, w2, w3)))
        # column 32 w + t of the tile is bit t of its word w; +scale and -scale are rounded to DTYPE once
        # each, not per entry
        bits = (words[:, :, None] >> tl.arange(0, 32).to(tl.uint32)[None, None, :]) & 1
        tile = tl.where(bits.reshape(ROWS, COLS) != 0, _cast(scale, DTYPE, INTERPRETED),
                        _cast(-scale, DTYPE, INTERPRETED))
    else:  # Gaussian: one Philox call (four normals) per row and 4-column group
        GROUPS: tl.constexpr = COLS // 4
        groups = col0 // 4 + tl.arange(0, GROUPS)[None, :]
        z0, z1, z2, z3 = tl.randn4x(seed, _philox_offset(rows, groups))
        # the same interleave puts z_q of group g in column 4g + q
        z = tl.join(tl.join(z0, z2), tl.join(z1, z3)).reshape(ROWS, COLS)
        tile = _cast(z.to(COMPUTE) * scale, DTYPE, INTERPRETED)
    return tile


# --------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["seed"])
def _sketch_words_kernel(out_ptr, seed: tl.uint64, rows, groups, BLOCK_R: tl.constexpr,
                         BLOCK_G: tl.constexpr):
    """out[i, g, q] = word q of philox((g, i, 0, 0), seed) as int64, for a contiguous [rows, groups, 4]."""
    pid = tl.program_id(0)
    num_g = tl.cdiv(groups, BLOCK_G)
    i = (pid // num_g) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    g = (pid % num_g) * BLOCK_G + tl.arange(0, BLOCK_G)[None, :]
    w0, w1, w2, w3 = tl.randint4x(seed, _philox_offset(i, g))
    ptrs = out_ptr + (i.to(tl.int64) * groups + g) * 4
    mask = (i < rows) & (g < groups)
    tl.store(ptrs + 0, w0.to(tl.int64), mask=mask)  # uint32 -> int64 zero-extends
    tl.store(ptrs + 1, w1.to(tl.int64), mask=mask)
    tl.store(ptrs + 2, w2.to(tl.int64), mask=mask)
    tl.store(ptrs + 3, w3.to(tl.int64), mask=mask)


@triton.jit(do_not_specialize=["seed"])
def _sketch_fill_kernel(out_ptr, seed: tl.uint64, r, d, stride_r, stride_d, KIND: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRETED: tl.constexpr):
    """out[i, j] = P[i, j] for the r x d sketch P, in out's dtype (INTERPRETED: see _cast)."""
    pid = tl.program_id(0)
    num_d = tl.cdiv(d, BLOCK_D)
    row0 = (pid // num_d) * BLOCK_R
    col0 = (pid % num_d) * BLOCK_D
    tile = _sketch_tile(seed, row0, col0, d, BLOCK_R, BLOCK_D, KIND, out_ptr.dtype.element_ty, INTERPRETED)
    i = row0 + tl.arange(0, BLOCK_R)[:, None]
    j = col0 + tl.arange(0, BLOCK_D)[None, :]
    ptrs = out_ptr + i.to(tl.int64) * stride_r + j.to(tl.int64) * stride_d
    tl.store(ptrs, tile, mask=(i < r) & (j < d))


@triton.jit(do_not_specialize=["seed"])
def _sketch_gemm_kernel(x_ptr, out_ptr, seed: tl.uint64, M, N, K, d, stride_x0, stride_x1, stride_om, stride_on,
                        KIND: tl.constexpr, SKETCH_IS_A: tl.constexpr, SKETCH_T: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        INTERPRETED: tl.constexpr):
    """out[M, N] = A[M, K] B[K, N], one operand a sketch view, the other the data matrix X (x_ptr, strides
    stride_x0 along its rows and stride_x1 along its columns):
      SKETCH_IS_A, not SKETCH_T: A = P      (project left,    P G,   K = d)
      SKETCH_IS_A, SKETCH_T:     A = P^T    (unproject left,  P^T R, K = r)
      B, SKETCH_T:               B = P^T    (project right,   G P^T, K = d)
      B, not SKETCH_T:           B = P      (unproject right, R P,   K = r)
    P is r x d; d is passed for the scale. The P tile is generated in the K-loop in X's dtype, and the
    product accumulates in float32 (float64 for float64 X). X tiles past the matrix load as zeros, which
    cancels the padded sketch entries along K; padded rows/columns of out are masked at the store.
    INTERPRETED (Triton's interpreter runs the kernel) works around its bfloat16 arithmetic: casts round as
    on the GPU (_cast), and bfloat16 tiles are multiplied as float32, which gives the exact same products
    (a bfloat16 product is exact in float32) where the interpreter's tl.dot would multiply the raw bfloat16
    bit patterns (triton-lang/triton#11584)."""
    # The sketch-side index runs fastest, so programs that read the same block of X run together.
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, SKETCH_IS_A)
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    ACC: tl.constexpr = compute_type(DTYPE)
    UPCAST: tl.constexpr = INTERPRETED and DTYPE == tl.bfloat16
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    if SKETCH_IS_A:  # X = B [K, N]: its column offsets are fixed, its row offsets move with k
        x_cols = (offs_n.to(tl.int64) * stride_x1)[None, :]
        x_col_mask = (offs_n < N)[None, :]
    else:  # X = A [M, K]: its row offsets are fixed, its column offsets move with k
        x_rows = (offs_m.to(tl.int64) * stride_x0)[:, None]
        x_row_mask = (offs_m < M)[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        if SKETCH_IS_A:
            if SKETCH_T:  # A = P^T[m-block, k-block] = (P[k-block, m-block])^T
                a = tl.trans(_sketch_tile(seed, k0, m0, d, BLOCK_K, BLOCK_M, KIND, DTYPE, INTERPRETED))
            else:  # A = P[m-block, k-block]
                a = _sketch_tile(seed, m0, k0, d, BLOCK_M, BLOCK_K, KIND, DTYPE, INTERPRETED)
            b = tl.load(x_ptr + (ks.to(tl.int64) * stride_x0)[:, None] + x_cols,
                        mask=(ks < K)[:, None] & x_col_mask, other=0.0)
        else:
            a = tl.load(x_ptr + x_rows + (ks.to(tl.int64) * stride_x1)[None, :],
                        mask=x_row_mask & (ks < K)[None, :], other=0.0)
            if SKETCH_T:  # B = P^T[k-block, n-block] = (P[n-block, k-block])^T
                b = tl.trans(_sketch_tile(seed, n0, k0, d, BLOCK_N, BLOCK_K, KIND, DTYPE, INTERPRETED))
            else:  # B = P[k-block, n-block]
                b = _sketch_tile(seed, k0, n0, d, BLOCK_K, BLOCK_N, KIND, DTYPE, INTERPRETED)
        acc = dot_acc(a, b, acc, DTYPE, UPCAST)
    o_ptrs = out_ptr + (offs_m.to(tl.int64) * stride_om)[:, None] + (offs_n.to(tl.int64) * stride_on)[None, :]
    tl.store(o_ptrs, _cast(acc, out_ptr.dtype.element_ty, INTERPRETED), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


# --------------------------------------------------------------------------------------------------------
# Launch configurations (shared with the ahead-of-time check in aot.py)
# --------------------------------------------------------------------------------------------------------

# GEMM modes: (sketch is operand A, the operand is a transpose of P)
GEMM_MODES = {
    ("project", "left"): (True, False),
    ("project", "right"): (False, True),
    ("unproject", "left"): (True, True),
    ("unproject", "right"): (False, False),
}

WORDS_CONFIG = {"BLOCK_R": 16, "BLOCK_G": 64, "num_warps": 4}
FILL_CONFIG = {"BLOCK_R": 32, "BLOCK_D": 128, "num_warps": 8}


def _pow2_clamp(n: int, lo: int, hi: int) -> int:
    """The smallest power of two >= n, clamped to [lo, hi]."""
    return max(lo, min(hi, triton.next_power_of_2(n)))


# Tile shapes per input dtype. "tile": the data-side and P-column-side tile; "left_data_tile": the data-side
# tile of project-left (N = n), whose sketch tile is operand A; "k_project": K step along P's columns;
# "k_unproject": cap of the K step along P's rows; "rank_cap": cap of the rank-side tile; "warps": None means
# 8 for 128 x 128 output tiles, else 4. 16-bit inputs run on the tensor cores (wgmma on sm_90, mma.sync on
# sm_80). float32 runs on IEEE FMAs, whose operand tiles sit in registers over their whole K extent, and
# float64 on DMMA: both use 64-wide tiles (128 where project-left allows it), short K steps and 8 warps,
# the largest shapes found to compile without spills (`python -m lowrank_ops.triton.aot` reports them).
_GEMM_SHAPES = {
    torch.bfloat16: {"tile": 128, "left_data_tile": 128, "k_project": 64, "k_unproject": 64, "rank_cap": 128,
                     "warps": None, "stages": 3},
    torch.float16: {"tile": 128, "left_data_tile": 128, "k_project": 64, "k_unproject": 64, "rank_cap": 128,
                    "warps": None, "stages": 3},
    torch.float32: {"tile": 64, "left_data_tile": 128, "k_project": 32, "k_unproject": 16, "rank_cap": 64,
                    "warps": 8, "stages": 2},
    torch.float64: {"tile": 64, "left_data_tile": 128, "k_project": 32, "k_unproject": 16, "rank_cap": 64,
                    "warps": 8, "stages": 2},
}


def gemm_config(op: str, side: str, rank: int, dtype: torch.dtype) -> dict:
    """Block sizes, warps and pipeline stages of the sketch GEMM for one call. Tiles along P's columns
    are at least 32 wide (whole Rademacher words). The tile along P's rows (the rank, usually the small
    side) shrinks to the rank, so no sketch rows are generated for nothing; tl.dot needs at least 16."""
    shape = _GEMM_SHAPES[dtype]
    if op == "project":  # K = d runs along P's columns
        rank_tile = _pow2_clamp(rank, 16, shape["rank_cap"])
        if side == "left":
            block_m, block_n = rank_tile, shape["left_data_tile"]
        else:
            block_m, block_n = shape["tile"], rank_tile
        block_k = shape["k_project"]
    else:  # K = r runs along P's rows; M (left) or N (right) along its columns
        block_m = block_n = shape["tile"]
        block_k = _pow2_clamp(rank, 16, shape["k_unproject"])
    return {
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "BLOCK_K": block_k,
        "num_warps": shape["warps"] or (8 if block_m * block_n >= 128 * 128 else 4),
        "num_stages": shape["stages"],
    }


# --------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------

def _check_tensor(t: torch.Tensor, name: str) -> None:
    """What a launch cannot survive: a dtype the kernels do not take, not a matrix, an unreachable device."""
    if t.dtype not in DTYPES:
        raise TypeError(f"lowrank_ops.triton.sketch: {name} must be float32, float64, bfloat16 or float16, "
                        f"got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"lowrank_ops.triton.sketch: {name} must be a matrix, got shape {tuple(t.shape)}")
    check_device(t.device, "sketch", name)


def sketch_words(rows: int, groups: int, seed: int, device) -> torch.Tensor:
    """int64 [rows, groups, 4]: the words of philox((g, i, 0, 0), seed), made by tl.randint4x."""
    check_device(device, "sketch", "the output")
    out = torch.empty((rows, groups, 4), dtype=torch.int64, device=device)
    if out.numel() == 0:
        return out
    cfg = WORDS_CONFIG
    grid = (triton.cdiv(rows, cfg["BLOCK_R"]) * triton.cdiv(groups, cfg["BLOCK_G"]), )
    _sketch_words_kernel[grid](out, int(seed), rows, groups, BLOCK_R=cfg["BLOCK_R"], BLOCK_G=cfg["BLOCK_G"],
                               num_warps=cfg["num_warps"])
    return out


def sketch_fill(out: torch.Tensor, seed: int, kind: str) -> torch.Tensor:
    """Writes the r x d sketch P (r, d = out.shape) into `out` (any strides) and returns it."""
    _check_tensor(out, "out")
    r, d = out.shape
    if out.numel() == 0:
        return out
    cfg = FILL_CONFIG
    grid = (triton.cdiv(r, cfg["BLOCK_R"]) * triton.cdiv(d, cfg["BLOCK_D"]), )
    _sketch_fill_kernel[grid](out, int(seed), r, d, out.stride(0), out.stride(1), KIND=KIND_IDS[kind],
                              BLOCK_R=cfg["BLOCK_R"], BLOCK_D=cfg["BLOCK_D"], INTERPRETED=_INTERPRETED,
                              num_warps=cfg["num_warps"])
    return out


def _sketch_gemm(x: torch.Tensor, seed: int, op: str, side: str, kind: str, M: int, N: int, K: int, d: int,
                 rank: int, out_dtype) -> torch.Tensor:
    """Allocates out [M, N] and launches the sketch GEMM of (op, side) on data matrix x."""
    out = torch.empty((M, N), dtype=out_dtype or x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    if K == 0:
        return out.zero_()
    sketch_is_a, sketch_t = GEMM_MODES[(op, side)]
    cfg = gemm_config(op, side, rank, x.dtype)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]), )
    _sketch_gemm_kernel[grid](x, out, int(seed), M, N, K, d, x.stride(0), x.stride(1), out.stride(0),
                              out.stride(1), KIND=KIND_IDS[kind], SKETCH_IS_A=sketch_is_a, SKETCH_T=sketch_t,
                              INTERPRETED=_INTERPRETED, **cfg)
    return out


def sketch_project(G: torch.Tensor, seed: int, rank: int, kind: str = "rademacher", side: str = "left",
                   out_dtype=None) -> torch.Tensor:
    """Left: R = P G (d = G.shape[0], R is rank x n). Right: R = G P^T (d = G.shape[1], R is m x rank).
    P (rank x d) is generated tile by tile inside the GEMM; G may have any strides."""
    _check_tensor(G, "G")
    m, n = G.shape
    if side == "left":
        return _sketch_gemm(G, seed, "project", side, kind, M=rank, N=n, K=m, d=m, rank=rank, out_dtype=out_dtype)
    return _sketch_gemm(G, seed, "project", side, kind, M=m, N=rank, K=n, d=n, rank=rank, out_dtype=out_dtype)


def sketch_unproject(R: torch.Tensor, seed: int, dim: int, kind: str = "rademacher", side: str = "left",
                     out_dtype=None) -> torch.Tensor:
    """Left: P^T R (R is rank x n, result dim x n). Right: R P (R is m x rank, result m x dim). P is
    rank x dim with rank read off R, generated tile by tile inside the GEMM; R may have any strides."""
    _check_tensor(R, "R")
    a, b = R.shape
    if side == "left":
        return _sketch_gemm(R, seed, "unproject", side, kind, M=dim, N=b, K=a, d=dim, rank=a, out_dtype=out_dtype)
    return _sketch_gemm(R, seed, "unproject", side, kind, M=a, N=dim, K=b, d=dim, rank=b, out_dtype=out_dtype)


# --------------------------------------------------------------------------------------------------------
# Ahead-of-time compile entries (tier-3 check, lowrank_ops.triton.aot)
# --------------------------------------------------------------------------------------------------------

_TRITON_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}
AOT_RANK = 128  # a typical GaLore rank: the rank-side tile at its largest


def aot_entries() -> list:
    """Every kernel of this module as its launcher runs it on contiguous, aligned tensors (unit inner
    strides are specialized to 1 and 16-divisible sizes marked, as Triton's launcher does at run time)."""
    from .aot import AotEntry

    entries = [
        AotEntry("sketch_words", _sketch_words_kernel,
                 signature={"out_ptr": "*i64", "seed": "u64", "rows": "i32", "groups": "i32"},
                 constexprs={"BLOCK_R": WORDS_CONFIG["BLOCK_R"], "BLOCK_G": WORDS_CONFIG["BLOCK_G"]},
                 expects_wgmma=False, num_warps=WORDS_CONFIG["num_warps"], divisible_by_16=("out_ptr", ))
    ]
    for kind, kind_id in KIND_IDS.items():
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            ty = _TRITON_TYPES[dtype]
            entries.append(
                AotEntry(f"sketch_fill {kind} {ty}", _sketch_fill_kernel,
                         signature={"out_ptr": f"*{ty}", "seed": "u64", "r": "i32", "d": "i32", "stride_r": "i32"},
                         constexprs={"stride_d": 1, "KIND": kind_id, "BLOCK_R": FILL_CONFIG["BLOCK_R"],
                                     "BLOCK_D": FILL_CONFIG["BLOCK_D"], "INTERPRETED": False},
                         expects_wgmma=False, num_warps=FILL_CONFIG["num_warps"],
                         divisible_by_16=("out_ptr", "r", "d", "stride_r")))
    for (op, side), (sketch_is_a, sketch_t) in GEMM_MODES.items():
        for kind, kind_id in KIND_IDS.items():
            for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
                ty = _TRITON_TYPES[dtype]
                cfg = gemm_config(op, side, AOT_RANK, dtype)
                entries.append(
                    AotEntry(f"sketch_gemm {op}/{side} {kind} {ty}", _sketch_gemm_kernel,
                             signature={"x_ptr": f"*{ty}", "out_ptr": f"*{ty}", "seed": "u64", "M": "i32",
                                        "N": "i32", "K": "i32", "d": "i32", "stride_x0": "i32", "stride_om": "i32"},
                             constexprs={"stride_x1": 1, "stride_on": 1, "KIND": kind_id, "SKETCH_IS_A": sketch_is_a,
                                         "SKETCH_T": sketch_t, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"],
                                         "BLOCK_K": cfg["BLOCK_K"], "INTERPRETED": False},
                             expects_wgmma=dtype in (torch.bfloat16, torch.float16), num_warps=cfg["num_warps"],
                             num_stages=cfg["num_stages"],
                             divisible_by_16=("x_ptr", "out_ptr", "M", "N", "K", "d", "stride_x0", "stride_om")))
    return entries
