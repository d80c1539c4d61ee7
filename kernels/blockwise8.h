// Blockwise 8-bit storage of the low-rank Adam moments (docs/DESIGN.md §3 "8-bit optimizer moments"), the
// per-element math shared by the CPU backend and the CUDA kernels; the float64 oracle is
// lowrank_ops/reference/blockwise8.py, the pure-torch twin lowrank_ops/pure_torch/blockwise8.py.
//
// The code is the dynamic tree code of Dettmers et al., "8-bit Optimizers via Block-wise Quantization"
// (ICLR 2022): after an optional sign bit, a run of e zero bits gives the decimal exponent, the first 1 bit
// ends the run, and the f bits after it are a linear fraction k in [0, 2^f):
//     |value| = 10^-e * (0.1 + 0.9 (k + 1) / 2^f)
// so each decade (10^-(e+1), 10^-e] holds 2^f evenly spaced values whose largest is 10^-e (1.0 itself for
// e = 0), and the all-zero pattern is 0.
//   unsigned (exp_avg_sq, values in [0, 1]): 8 bits, e = 0..7, f = 7 - e.
//   signed (exp_avg, values in [-1, 1]):     a sign bit and 7 bits, e = 0..6, f = 6 - e.
// A stored byte q is the index of its value in the ascending code table (256 entries):
//   unsigned: q itself is the tree pattern (the leading zeros of q are e): for q >= 1, with p = floor(log2 q)
//             (so e = 7 - p, f = p) and k = q - 2^p, value(q) = (2^p + 9 (k + 1)) / (2^p 10^(8 - p)).
//   signed:   q >= 128 is +magnitude(q - 128), q <= 127 is -magnitude(127 - q), where magnitude(j) of the
//             7-bit pattern j is (2^p + 9 (k + 1)) / (2^p 10^(7 - p)) with p = floor(log2 j), k = j - 2^p.
//             Bytes 127 and 128 both decode to +0 (the sign bit's spare pattern).
// Each value is one float64 division of the two exact integers, rounded once to float32.
//
// Storage of a moment of projected shape [rows, cols] with block size B: codes uint8 [rows, cols]; absmax
// float32 [rows, ceil(cols / B)], block b of row i being columns [b B, min((b + 1) B, cols)) (blocks never
// straddle a row; a row's last block may be shorter).
//   absmax = max |v| over the block (float32; NaN when the block holds a NaN)
//   x      = v / absmax (float32 division, IEEE rounded; x = 0 when absmax = 0)
//   q      = the number of midpoints mid_i < x, mid_i = (code_i + code_{i+1}) / 2 computed in float64 and
//            rounded once to float32 (i = 0..254): the nearest code, ties to the lower index (x = NaN: 0)
//   v'     = code_q * absmax (float32 product)
#pragma once
#include "common.h"

#if !defined(__CUDACC_RTC__)
#include <cstring>
#include <stdexcept>
#endif

namespace lro {

constexpr int kQ8Codes = 256;
constexpr int64_t kQ8DefaultBlock = 256;  // lowrank_ops/spec.py STATE_BLOCK_SIZE

// Exact value of code q as (numerator / denominator) in double, both exact integers below 2^53.
LRO_HD double q8_code_value64(bool is_signed, int q) {
  int j = q;
  double sign = 1.0;
  int decades = 8;  // 10^(decades - p) is the decade's denominator (8 for 8 magnitude bits, 7 for 7)
  if (is_signed) {
    decades = 7;
    if (q >= 128) {
      j = q - 128;
    } else {
      j = 127 - q;
      sign = -1.0;
    }
  }
  if (j == 0) return 0.0;
  int p = 7;
  while (((j >> p) & 1) == 0) --p;
  const double two_p = static_cast<double>(1 << p);
  const double k = static_cast<double>(j - (1 << p));
  double ten = 1.0;
  for (int i = 0; i < decades - p; ++i) ten *= 10.0;
  return sign * ((two_p + 9.0 * (k + 1.0)) / (two_p * ten));
}

// Code value q in float32 (one rounding of the exact value).
LRO_HD float q8_code(bool is_signed, int q) { return static_cast<float>(q8_code_value64(is_signed, q)); }

// Midpoint i of a float32 code table: the exact midpoint of code[i] and code[i + 1] (their sum is exact in
// double), rounded once.
LRO_HD float q8_mid(const float* code, int i) {
  return static_cast<float>((static_cast<double>(code[i]) + static_cast<double>(code[i + 1])) * 0.5);
}

// q = #{ i : mid[i] < x }, by binary search (8 comparisons): the nearest code, ties to the lower index; NaN
// compares false everywhere and gives 0. The CUDA kernels' encode; the CPU uses q8_encode_bucket (below).
LRO_HD uint8_t q8_encode(float x, const float* mid) {
  int lo = 0, hi = kQ8Codes - 1;
  while (lo < hi) {
    const int m = (lo + hi) >> 1;
    if (mid[m] < x) {
      lo = m + 1;
    } else {
      hi = m;
    }
  }
  return static_cast<uint8_t>(lo);
}

// x = v / absmax, 0 for a zero absmax.
LRO_HD float q8_normalize(float v, float absmax) { return absmax == 0.0f ? 0.0f : v / absmax; }

LRO_HD float q8_decode(uint8_t q, float absmax, const float* code) { return code[q] * absmax; }

#if !defined(__CUDACC_RTC__)
// ---- CPU (host-only) form: the same bytes as q8_encode in O(1) per element, and branch-free block loops. ----
//
// Bucket encode. The top 16 bits of x's float32 pattern (sign, exponent, first 7 mantissa bits) split the
// float32 line into 65536 buckets, each an interval [lo, hi] of x (a negative bucket's lo is the pattern with
// the low 16 bits set); bucket[key] holds t = q(lo) = #{ i : mid[i] < lo }.
// Exactness: the midpoints are ascending, so the t midpoints below lo are mid[0 .. t) and mid[t] is the
// smallest one >= lo. If at most one midpoint lies in [lo, hi] (checked for every bucket when the table is
// built: q8_fill_table throws otherwise), then for every x of the bucket
//     #{ i : mid[i] < x } = t + (mid[t] < x)
// since no midpoint above hi is below x. mid[255] = +inf pads t = 255. The exponent-255 buckets hold +-inf
// (their lo and hi are taken as +-inf) and NaNs, which the rule would give 0 or 255: NaN is set to 0
// explicitly. Denormals, +-0 and |x| > 1 are ordinary buckets.
// With 7 mantissa bits a bucket is at most 2^-7 of its binade's lower end wide, narrower than the gap between
// neighbouring codes near the top of each decade (0.9 10^-e / 2^f, f <= 7); 6 bits leave two midpoints in
// some unsigned buckets. A table is 64 KiB, of which a block touches the few lines of its x's exponents
// (x = v / absmax lies in [-1, 1], most of it in a few binades below 1).
constexpr int kQ8BucketShift = 16;  // 32 - 1 sign bit - 8 exponent bits - 7 mantissa bits
constexpr uint32_t kQ8Buckets = 1u << (32 - kQ8BucketShift);

// The code values (ascending), the 255 midpoints between neighbours in float32 padded with +inf, and the
// bucket table of q8_encode_bucket.
struct Q8Table {
  float code[kQ8Codes];
  float mid[kQ8Codes];
  uint8_t bucket[kQ8Buckets];
};

inline uint32_t q8_float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

inline float q8_bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// q8_encode(x, table.mid) in O(1) (the rule above).
inline uint8_t q8_encode_bucket(float x, const Q8Table& table) {
  const uint32_t t = table.bucket[q8_float_bits(x) >> kQ8BucketShift];
  const uint32_t q = t + (table.mid[t] < x ? 1u : 0u);
  return static_cast<uint8_t>(x == x ? q : 0u);
}

// Fills the table (once per process on the CPU backend: 64 Ki buckets, each an 8-step binary search);
// throws std::logic_error if a bucket holds more than one midpoint (the rule would not be exact there).
inline void q8_fill_table(bool is_signed, Q8Table* table) {
  for (int q = 0; q < kQ8Codes; ++q) table->code[q] = q8_code(is_signed, q);
  for (int i = 0; i + 1 < kQ8Codes; ++i) table->mid[i] = q8_mid(table->code, i);
  table->mid[kQ8Codes - 1] = HUGE_VALF;
  for (uint32_t key = 0; key < kQ8Buckets; ++key) {
    const uint32_t first = key << kQ8BucketShift, last = first | ((1u << kQ8BucketShift) - 1);
    const bool negative = (key >> 15) != 0;
    float lo = q8_bits_float(negative ? last : first), hi = q8_bits_float(negative ? first : last);
    if (((key >> 7) & 0xffu) == 0xffu) lo = hi = negative ? -HUGE_VALF : HUGE_VALF;  // +-inf and NaNs
    const int t = q8_encode(lo, table->mid);
    int inside = 0;  // midpoints in [lo, hi]
    for (int i = t; i + 1 < kQ8Codes && table->mid[i] <= hi; ++i) ++inside;
    if (inside > 1) {
      throw std::logic_error("lowrank_ops: kernels/blockwise8.h q8_fill_table: a bucket of the 8-bit encode "
                             "holds more than one midpoint");
    }
    table->bucket[key] = static_cast<uint8_t>(t);
  }
}

// The absmax of a block, propagating NaN (the block's scale is then NaN and it decodes to NaN), as a running
// integer maximum: bits(|v|) as an int32 orders non-negative floats as their values and puts every NaN above
// +inf, so max over the block of q8_absmax_bits is bits(absmax) (a NaN block's absmax is one of its NaNs).
// Branch-free: the reduction vectorizes, and a loop that computes the values can carry it.
inline int32_t q8_absmax_bits(int32_t running, float v) {
  const int32_t a = static_cast<int32_t>(q8_float_bits(v) & 0x7fffffffu);
  return a > running ? a : running;
}

// The absmax of v[0 : n].
inline float q8_absmax(const float* __restrict__ v, int64_t n) {
  int32_t m = 0;
  for (int64_t i = 0; i < n; ++i) m = q8_absmax_bits(m, v[i]);
  return q8_bits_float(static_cast<uint32_t>(m));
}

// Codes of v[0 : n] for the block's absmax (q8_absmax of v). v is overwritten with v / absmax (the x that are
// encoded), so that the divisions run as one vector loop.
inline void q8_encode_scaled(float* __restrict__ v, int64_t n, float absmax, const Q8Table& table,
                             uint8_t* __restrict__ codes) {
  if (absmax == 0.0f) {
    for (int64_t i = 0; i < n; ++i) v[i] = 0.0f;
  } else {
    for (int64_t i = 0; i < n; ++i) v[i] = v[i] / absmax;
  }
  for (int64_t i = 0; i < n; ++i) codes[i] = q8_encode_bucket(v[i], table);
}

// One block: codes of v[0 : n] and its absmax (returned); v is overwritten (q8_encode_scaled).
inline float q8_encode_block(float* __restrict__ v, int64_t n, const Q8Table& table, uint8_t* __restrict__ codes) {
  const float absmax = q8_absmax(v, n);
  q8_encode_scaled(v, n, absmax, table, codes);
  return absmax;
}

// Rows [0, rows) of a moment with `cols` columns (row-major, contiguous), blocks of `block` columns:
// codes [rows, cols] and absmax [rows, ceil(cols / block)] of v. `scratch` holds min(block, cols) floats.
inline void q8_encode_rows(const float* v, int64_t rows, int64_t cols, int64_t block, const Q8Table& table,
                           uint8_t* codes, float* absmax, float* scratch) {
  const int64_t blocks = (cols + block - 1) / block;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * block, n = cols - c0 < block ? cols - c0 : block;
      std::memcpy(scratch, v + i * cols + c0, n * sizeof(float));
      absmax[i * blocks + b] = q8_encode_block(scratch, n, table, codes + i * cols + c0);
    }
  }
}

// The inverse of q8_encode_rows: v [rows, cols] from codes and absmax.
inline void q8_decode_rows(const uint8_t* codes, const float* absmax, int64_t rows, int64_t cols, int64_t block,
                           const float* code, float* v) {
  const int64_t blocks = (cols + block - 1) / block;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * block, n = cols - c0 < block ? cols - c0 : block;
      const float a = absmax[i * blocks + b];
      const uint8_t* q = codes + i * cols + c0;
      float* out = v + i * cols + c0;
      for (int64_t j = 0; j < n; ++j) out[j] = q8_decode(q[j], a, code);
    }
  }
}
#endif  // !defined(__CUDACC_RTC__)

}  // namespace lro
