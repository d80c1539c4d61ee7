"""The contract every implementation of lowrank_ops follows (docs/DESIGN.md §3): constants and rules that
the production code (lowrank_ops.pure_torch, lowrank_ops.triton, the C++/CUDA kernels through kernels/*.h)
and the test oracle (lowrank_ops.reference) must share. Only facts of the formats live here, no
computation beyond the rules themselves: each side implements the formulas on its own, so a parity test
compares two independent implementations of one specification.

The C++/CUDA kernels carry the same numbers in kernels/philox.h, kernels/sketch.h and kernels/quant.h."""

import torch

# --- precision rule -------------------------------------------------------------------------------------


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision an op computes and accumulates in: float64 for float64 data, float32 for float32,
    bfloat16 and float16. It is also the dtype of the DCT scores and of range_finder's results."""
    return torch.float64 if dtype == torch.float64 else torch.float32


FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Index vectors (DCT basis rows, a "dct" side of a projection) may be any of these; kernels widen them.
INDEX_DTYPES = (torch.int16, torch.int32, torch.int64)
SIDES = ("left", "right")

# --- Philox4x32 (Salmon et al., SC'11; Random123) -------------------------------------------------------

PHILOX_M0 = 0xD2511F53  # multiplier of counter word 0
PHILOX_M1 = 0xCD9E8D57  # multiplier of counter word 2
PHILOX_W0 = 0x9E3779B9  # key bump of key word 0 (golden ratio)
PHILOX_W1 = 0xBB67AE85  # key bump of key word 1 (sqrt(3) - 1)
PHILOX_ROUNDS = 10
PHILOX_MAX_ROUNDS = 16

# --- sketch spec v1 -------------------------------------------------------------------------------------
# P is r x d. Entry (i, j) comes from the Philox4x32-10 words of counter (g, i, 0, 0) under key
# (seed & 0xffffffff, seed >> 32), with g = j // GROUP of the kind:
#   Rademacher: bit (j % 32) of word (j % 128) // 32, value (bit ? +1 : -1) / sqrt(d);
#   Gaussian:   the (j % 4)-th of the Box-Muller pairs of (w0, w1), (w2, w3), divided by sqrt(d), where a
#               word w becomes the float32 uniform u = (w as int32, bitwise-inverted when negative) * 2^-31,
#               z = sqrt(-2 log max(u_even, BOX_MULLER_MIN_U)) * (cos, sin)(TWO_PI * u_odd), all float32.
# 1/sqrt(d) is rounded to the compute precision once (float32; float64 for float64 data).
SKETCH_KINDS = ("rademacher", "gaussian")
RADEMACHER_GROUP = 128  # columns served by one Philox call
GAUSSIAN_GROUP = 4
UNIFORM_SCALE = 4.6566127342e-10  # 2^-31 as the kernels' float32 constant
TWO_PI = 6.283185307179586  # rounded to float32 where it is used
BOX_MULLER_MIN_U = 1.0e-7

# --- DCT ------------------------------------------------------------------------------------------------
# D[k, t] = c_k cos(pi k (2t + 1) / (2d)), c_0 = sqrt(1/d), c_k = sqrt(2/d): the orthonormal DCT-II basis.
# Scores of basis row k are l1 or l2 norms; top-k takes the `rank` largest scores, ties to the lower index,
# returned ascending as int32.
DCT_NORMS = ("l1", "l2")
DCT_MAX_DIM = 2**31 - 1  # the largest d (kernels/dct.h kDctMaxDim: angles are formed from 32-bit products)
DCT_METHODS = ("auto", "gemm", "fft")  # how the CPU kernel computes the scores (other backends: one way)

# --- subsampled randomized DCT ("sr_dct" projections) --------------------------------------------------
# P = S C D (r x d) from one uint64 seed s: C the orthonormal DCT-II basis above, D = diag(sign_t), S the
# rows pi(k r), ..., pi(k r + r - 1) of the seed's random order pi of [0, d) (row block (k, K); k = 0 alone).
#   sign_t = +1 if bit (t % 32) of word (t % 128) // 32 of philox((t // 128, SRDCT_SIGN_ROW, 0, 0); s) is set,
#            else -1: the sign of entry (0, t) of the Rademacher sketch of s (spec v1), so the kernels draw it
#            with their Rademacher generator;
#   key_t  = w0 * 2^32 + w1 (unsigned 64-bit) of (w0, w1, w2, w3) = philox((t, SRDCT_KEY_ROW, 0, 0); s);
#   pi     = [0, d) sorted by (key_t, t) ascending: the smallest keys first, equal keys to the lower index.
# The sign and key counters differ in word 1, so the two draws never share a Philox block.
SRDCT_SIGN_ROW = 0
SRDCT_KEY_ROW = 1

# --- quantized weights ----------------------------------------------------------------------------------
# int8: symmetric absmax per group of `group_size` consecutive elements of a row of W [out, in];
#       scale = absmax / INT8_MAX (float32), code = clamp(round_half_even(w / scale), -INT8_MAX, INT8_MAX);
#       codes int8 [out, in], scales float32 [out, ceil(in / group_size)].
# nf4:  absmax per block of `group_size` (even) consecutive elements of the flattened W; x = w / absmax
#       (absmax clamped to NF4_MIN_ABSMAX), code = number of NF4 codebook midpoints below x; element 2i in
#       the high nibble of byte i; codes uint8 [ceil(numel / 2)], absmax float32 [ceil(numel / group_size)].
# double quantization stores the float32 scales as their mean plus int8 codes of one row with groups of
# DOUBLE_QUANT_GROUP.
QUANT_FORMATS = ("int8", "nf4")
DEFAULT_GROUP_SIZE = {"int8": 256, "nf4": 64}
DOUBLE_QUANT_GROUP = 256
INT8_MAX = 127
NF4_MIN_ABSMAX = 1e-38
# QLoRA's NormalFloat4 codebook as bitsandbytes 0.50 stores it (float32 values).
NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0)

# --- 8-bit optimizer moments (docs/DESIGN.md §3 "8-bit optimizer moments"; kernels/blockwise8.h) ----------
# Dynamic tree code of Dettmers et al., "8-bit Optimizers via Block-wise Quantization": after an optional
# sign bit, a run of e zero bits (the decimal exponent), a 1 bit, then f fraction bits k:
# |value| = 10^-e (0.1 + 0.9 (k + 1) / 2^f); the all-zero pattern is 0. exp_avg takes the signed code (7
# magnitude bits), exp_avg_sq the unsigned one (8 bits). A byte is the index of its value in the ascending
# 256-entry table. Blocks of STATE_BLOCK_SIZE consecutive elements of a row of the projected moment share
# one float32 absmax; q = number of float32 midpoints of neighbouring codes strictly below v / absmax.
STATE_BITS = (32, 8)  # LowRankAdamW's `state_bits`: float32 moments (default) or blockwise 8-bit
STATE_BLOCK_SIZE = 256  # default `state_block_size`
Q8_MOMENT_SIGNED = {"exp_avg": True, "exp_avg_sq": False}

# --- fused low-rank AdamW step --------------------------------------------------------------------------
SEEDED_KINDS = SKETCH_KINDS
# Sides given by an index vector of DCT-II basis rows, generated inside the kernels: "dct" (P = D[indices, :])
# and "sr_dct" (P[i, t] = sign_t D[indices[i], t], sign_t the sr_dct sign rule above for the side's seed).
BASIS_KINDS = ("dct", "sr_dct")
SIDE_KINDS = SEEDED_KINDS + ("matrix", ) + BASIS_KINDS
WD_MODES = ("full", "adapter")
