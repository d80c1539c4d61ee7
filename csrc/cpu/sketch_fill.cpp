// Rows of the seeded sketch (spec v1, docs/DESIGN.md §3) on the CPU: kernels/sketch.h's sketch_fill_segment
// computes one column group at a time (the CUDA kernels' per-element code), with loop-carried bit shifts for
// Rademacher and the C library's scalar logf and sincosf for Gaussian; here the same entries come from loops
// the compiler vectorizes, so that generating P costs little next to the GEMMs that consume it (issue 15: a
// Gaussian step at most 1.15x a Rademacher one).
//
// Rademacher: the Philox words of the row's column groups, then each word's 32 columns as a select on one bit
// of the word (a constant per lane: no variable shift, so even the baseline SSE2 build vectorizes it). The
// values are bit-identical to kernels/sketch.h's.
//
// Gaussian (float32 sketches; float64 ones keep kernels/sketch.h's code): many column groups at once: the Philox words of a batch of groups, then Box-Muller on all their
// pairs. Box-Muller of one pair of words (a, b), as spec v1 defines it in float32:
//   u1 = max(1e-7, U(a)),  theta = 6.283185307179586f * U(b)     (float32, exactly as the spec rounds them)
//   z = (rho cos theta, rho sin theta),  rho = sqrt(-2 ln u1)
// ln, sqrt, cos and sin are evaluated here in float64 and z rounded once to float32, as the oracle
// (lowrank_ops/reference/sketch.py) does: the float64 errors below (< 1e-10 relative) leave z correctly rounded
// except within 1e-10 of a float32 rounding boundary (about one entry in a thousand is then one ulp off), far
// inside the spec's 4-ulp entry bound.
//   ln u1 = e ln 2 + ln m with u1 = m 2^e, m in [sqrt(1/2), sqrt(2)); ln m = 2 atanh(s) =
//           2 (s + s^3/3 + ... + s^11/11), s = (m - 1) / (m + 1), |s| <= 0.1716 (omitted terms < 6e-11 s).
//   cos, sin: k = nearest integer to theta / (pi/2) (theta in [0, 2 pi], k <= 4), x = theta - k pi/2 in two
//           steps (Cody-Waite with fdlibm's 33-bit pi/2 head: k * head is exact), |x| <= pi/4 (+ 1e-16);
//           Taylor series of sin through x^11 (omitted terms < 1e-11 |sin x|) and of cos through x^12
//           (< 5e-13), then the quadrant k mod 4 swaps and negates them.
//   rho = sqrt(-2 ln u1) by Newton's iteration (sqrt_nonnegative), to float64 rounding.
// Every operation is an IEEE add, multiply, divide or conversion, and the file is compiled
// without floating-point contraction, so each instruction-set clone below returns the same bits.
#pragma GCC optimize("fp-contract=off")

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../../kernels/philox.h"
#include "../../kernels/sketch.h"
#include "sketch_impl.h"

namespace lowrank_ops {
namespace {

constexpr int kLanes = 64;  // column groups per batch: 256 entries, 1 KiB of words

template <typename To, typename From>
inline To bits_as(From x) {
  static_assert(sizeof(To) == sizeof(From), "same width");
  To y;
  std::memcpy(&y, &x, sizeof(y));
  return y;
}

// U(x) of the spec: x read as int32, bitwise-inverted when negative (x ^ (x >> 31)), times 2^-31 as a float.
inline float uniform(uint32_t x) {
  const int32_t i = static_cast<int32_t>(x);
  return static_cast<float>(i ^ (i >> 31)) * 4.6566127342e-10f;
}

// sqrt(y) for y >= 0 (or -0) without the C library: written when a loop that called sqrt was not vectorized
// (sqrt could set errno; the extension is now built with -fno-math-errno, and this form is kept so that the
// Gaussian entries keep their bits). Newton's iteration for 1/sqrt(y),
// r <- r (3/2 - (y/2) r^2), from r0 = the bit-pattern estimate (relative error < 0.035; a step maps the error
// e to about 1.5 e^2: 2e-3, 5e-6, 3e-11, then float64 rounding), four steps; sqrt(y) = y r. y = 0 gives 0 (the
// products never form r^2 alone, so no infinity meets a zero).
inline double sqrt_nonnegative(double y) {
  double r = bits_as<double>(0x5FE6EB50C7B537A9ull - (bits_as<uint64_t>(y) >> 1));
  const double half_y = 0.5 * y;
  r = r * (1.5 - (half_y * r) * r);
  r = r * (1.5 - (half_y * r) * r);
  r = r * (1.5 - (half_y * r) * r);
  r = r * (1.5 - (half_y * r) * r);
  return y * r;
}

// z[4 l + q], l < n (n <= kLanes): the unscaled entries of column group g0 + l of `row`. Pair l comes from words
// (w0, w1) of group g0 + l (z0, z1), pair n + l from (w2, w3) (z2, z3). Loops of one lane width each (the
// compiler vectorizes a loop at one width best): the Philox words (uint32), the spec's float32 inputs, the
// float64 math, the interleave into column order.
__attribute__((target_clones("avx512f", "avx2", "default"))) void gaussian_batch(uint64_t seed, uint32_t row,
                                                                                  uint32_t g0, int n, float* z) {
  // Philox4x32-10 of the n counters (g0 + l, row, 0, 0), lane by lane (kernels/philox.h has the same round).
  uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
  for (int l = 0; l < n; ++l) {
    c0[l] = g0 + static_cast<uint32_t>(l);
    c1[l] = row;
    c2[l] = 0;
    c3[l] = 0;
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < lro::kPhiloxRounds; ++round) {
    for (int l = 0; l < n; ++l) {
      const uint64_t p0 = static_cast<uint64_t>(lro::kPhiloxM0) * c0[l];
      const uint64_t p1 = static_cast<uint64_t>(lro::kPhiloxM1) * c2[l];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
      c1[l] = static_cast<uint32_t>(p1);
      c3[l] = static_cast<uint32_t>(p0);
      c0[l] = n0;
      c2[l] = n2;
    }
    k0 += lro::kPhiloxW0;
    k1 += lro::kPhiloxW1;
  }
  // float32: u1 = max(1e-7, U(a)) = m 2^e with m in [sqrt(1/2), sqrt(2)) (exact: a float mantissa, halved when
  // above sqrt(2), and a small integer e), theta = 2 pi U(b). m is chosen on the mantissa bits (0x3504f3: those
  // of the largest float below sqrt(2)) by integer arithmetic: the compiler does not vectorize float operations
  // behind a branch (they might trap).
  uint32_t a[2 * kLanes], b[2 * kLanes];
  for (int l = 0; l < n; ++l) {
    a[l] = c0[l];
    b[l] = c1[l];
    a[n + l] = c2[l];
    b[n + l] = c3[l];
  }
  float mf[2 * kLanes], ef[2 * kLanes], theta[2 * kLanes];
  for (int p = 0; p < 2 * n; ++p) {
    // max(1e-7, U) on the bit patterns (U >= 0, and non-negative floats order as their bits): a float compare
    // here would keep the loop from vectorizing. u1 >= 1e-7 is a normal float.
    const uint32_t ub = std::max(bits_as<uint32_t>(uniform(a[p])), bits_as<uint32_t>(1.0e-7f));
    const uint32_t mantissa = ub & 0x007fffffu;
    const uint32_t high = (0x003504f3u - mantissa) >> 31;  // 1 when the mantissa is above sqrt(2)'s
    mf[p] = bits_as<float>((mantissa | 0x3f800000u) - (high << 23));
    ef[p] = static_cast<float>(static_cast<int32_t>((ub >> 23) + high) - 127);
    theta[p] = 6.283185307179586f * uniform(b[p]);
  }
  // float64: ln u1 = e ln 2 + 2 atanh(s), s = (m - 1) / (m + 1); rho = sqrt(-2 ln u1); cos and sin of theta by
  // quadrant and Taylor series; z rounded once to float32.
  float zc[2 * kLanes], zs[2 * kLanes];
  for (int p = 0; p < 2 * n; ++p) {
    const double m = mf[p];
    const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
    const double atanh_tail = s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 * (1.0 / 11)))));
    const double ln_u = static_cast<double>(ef[p]) * 0.6931471805599453 + 2.0 * (s + s * atanh_tail);
    const double rho = sqrt_nonnegative(-2.0 * ln_u);
    // x = theta - k pi/2, k = nearest integer (adding and subtracting 1.5 2^52 rounds to an integer)
    const double t = static_cast<double>(theta[p]);
    const double shifted = t * 0.6366197723675814 + 6755399441055744.0;
    const double k = shifted - 6755399441055744.0;
    const uint64_t quadrant = bits_as<uint64_t>(shifted) & 3u;
    const double x = (t - k * 1.5707963267341256) - k * 6.077100506506192e-11;
    const double x2 = x * x;
    // Taylor coefficients (-1)^i / (2i + 1)! and (-1)^i / (2i)!, in Horner form
    const double sin_x =
        x + x * x2 * (-1.0 / 6 + x2 * (1.0 / 120 + x2 * (-1.0 / 5040 + x2 * (1.0 / 362880 + x2 * (-1.0 / 39916800)))));
    const double cos_x =
        1.0 + x2 * (-0.5 + x2 * (1.0 / 24 + x2 * (-1.0 / 720 + x2 * (1.0 / 40320 + x2 * (-1.0 / 3628800 +
                                                                                        x2 * (1.0 / 479001600))))));
    // quadrant q: (cos, sin) theta = (c, s), (-s, c), (-c, -s), (s, -c) for q = 0, 1, 2, 3: swap on odd q, and
    // flip the sign bits (bit 63) of cos for q = 1, 2 and of sin for q = 2, 3 (branch-free, so it vectorizes)
    const uint64_t odd = 0u - (quadrant & 1u);  // all ones on odd quadrants
    const uint64_t cb = bits_as<uint64_t>(cos_x), sb = bits_as<uint64_t>(sin_x);
    const double cos_t = bits_as<double>(((sb & odd) | (cb & ~odd)) ^ (((quadrant + 1u) & 2u) << 62));
    const double sin_t = bits_as<double>(((cb & odd) | (sb & ~odd)) ^ ((quadrant & 2u) << 62));
    zc[p] = static_cast<float>(rho * cos_t);
    zs[p] = static_cast<float>(rho * sin_t);
  }
  for (int l = 0; l < n; ++l) {
    z[4 * l] = zc[l];
    z[4 * l + 1] = zs[l];
    z[4 * l + 2] = zc[n + l];
    z[4 * l + 3] = zs[n + l];
  }
}

template <typename T>
void gaussian_fill_segment(uint64_t seed, uint32_t row, int64_t j0, int64_t len, T scale, T* out) {
  float z[4 * kLanes];
  int64_t j = j0;
  const int64_t end = j0 + len;
  while (j < end) {
    const int64_t g0 = j / lro::kGaussianGroup;
    const int64_t g_end = (end + lro::kGaussianGroup - 1) / lro::kGaussianGroup;
    const int n = static_cast<int>(g_end - g0 < kLanes ? g_end - g0 : kLanes);
    gaussian_batch(seed, row, static_cast<uint32_t>(g0), n, z);
    const int64_t batch_end = std::min<int64_t>(end, (g0 + n) * lro::kGaussianGroup);
    const int64_t z0 = g0 * lro::kGaussianGroup;  // the column of z[0]
    for (; j < batch_end; ++j) out[j - j0] = static_cast<T>(z[j - z0]) * scale;
  }
}

// Bit t of a word, per lane of the 32 columns it serves.
constexpr uint32_t kBit[32] = {1u << 0,  1u << 1,  1u << 2,  1u << 3,  1u << 4,  1u << 5,  1u << 6,  1u << 7,
                               1u << 8,  1u << 9,  1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15,
                               1u << 16, 1u << 17, 1u << 18, 1u << 19, 1u << 20, 1u << 21, 1u << 22, 1u << 23,
                               1u << 24, 1u << 25, 1u << 26, 1u << 27, 1u << 28, 1u << 29, 1u << 30, 1u << 31};

template <typename T>
void rademacher_fill_segment(uint64_t seed, uint32_t row, int64_t j0, int64_t len, T scale, T* out) {
  const int64_t end = j0 + len;
  for (int64_t g = j0 / lro::kRademacherGroup; g * lro::kRademacherGroup < end; ++g) {
    const lro::PhiloxWords w = lro::sketch_words(seed, row, static_cast<uint32_t>(g));
    for (int q = 0; q < 4; ++q) {  // word q holds columns c0 .. c0 + 31
      const int64_t c0 = g * lro::kRademacherGroup + 32 * q;
      const uint32_t word = w.w[q];
      if (c0 >= j0 && c0 + 32 <= end) {
        T* o = out + (c0 - j0);
        for (int t = 0; t < 32; ++t) o[t] = (word & kBit[t]) != 0 ? scale : -scale;
      } else {
        for (int64_t j = std::max(c0, j0); j < std::min(c0 + 32, end); ++j)
          out[j - j0] = (word & kBit[j - c0]) != 0 ? scale : -scale;
      }
    }
  }
}

}  // namespace

template <typename T>
void fill_sketch_segment(int kind, uint64_t seed, uint32_t row, int64_t j0, int64_t len, T scale, T* out) {
  if (kind == lro::kGaussian && std::is_same<T, double>::value) {
    // float64 (the testing precision): kernels/sketch.h's code, whose Gaussian entries carry float64 precision
    // as the CUDA kernels' do; the batch above rounds z to float32, which a float64 sketch must not
    lro::sketch_fill_segment<T>(kind, seed, row, j0, len, scale, out);
  } else if (kind == lro::kGaussian) {
    gaussian_fill_segment(seed, row, j0, len, scale, out);
  } else {
    rademacher_fill_segment(seed, row, j0, len, scale, out);
  }
}

template void fill_sketch_segment<float>(int, uint64_t, uint32_t, int64_t, int64_t, float, float*);
template void fill_sketch_segment<double>(int, uint64_t, uint32_t, int64_t, int64_t, double, double*);

}  // namespace lowrank_ops
