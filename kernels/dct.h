// The orthonormal DCT-II basis (docs/DESIGN.md §3, as scipy.fft.dct(norm="ortho")): the N x N matrix
//   D[k, t] = c_k cos(pi k (2t + 1) / (2N)),   c_0 = sqrt(1/N),  c_k = sqrt(2/N) for k >= 1,
// whose rows are the basis vectors. Shared by the CPU backend, the CUDA kernels and the host unit tests,
// so that every backend evaluates the same formula and the fused kernels can regenerate selected rows
// from their indices (dct_fill_segment, the counterpart of sketch_fill_segment).
//
// Accuracy for large N: the angle pi k (2t + 1) / (2N) is never formed from k (2t + 1) in floating point
// (for N = 4096 that product reaches 3.4e7, beyond float's 2^24 exact integers). The integer
// p = k (2t + 1) is reduced exactly modulo 4N (one period), folded by the symmetries of cos into
// [0, N/2] (an angle in [0, pi/4]), and only then converted: the argument of cos/sin is within an ulp
// or two of the exact one, so entries carry the error of one cos/sin evaluation, independent of N.
#pragma once
#include "common.h"

namespace lro {

// N must satisfy (N - 1)(2N - 1) < 2^63 for k (2t + 1) to be exact in int64, and indices are int32.
constexpr int64_t kDctMaxDim = 2147483647;

LRO_HD float dct_cos(float x) { return cosf(x); }
LRO_HD double dct_cos(double x) { return cos(x); }
LRO_HD float dct_sin(float x) { return sinf(x); }
LRO_HD double dct_sin(double x) { return sin(x); }
LRO_HD float dct_sqrt(float x) { return sqrtf(x); }
LRO_HD double dct_sqrt(double x) { return sqrt(x); }

// cos(pi q / (2n)) for an integer q already reduced to [0, 4n):
//   q in (2n, 4n):  cos(2 pi - x) = cos x           -> q' = 4n - q in (0, 2n)
//   q in (n, 2n]:   cos(pi - x) = -cos x            -> q' = 2n - q in [0, n)
//   q in (n/2, n]:  cos x = sin(pi/2 - x)           -> sin(pi (n - q) / (2n)), argument in [0, pi/4)
// so cos/sin only ever see arguments in [0, pi/4]. cos(pi/2) comes out as an exact 0 (sin(0)).
template <typename T>
LRO_HD T dct_cos_reduced(int64_t q, int64_t n) {
  if (q > 2 * n) q = 4 * n - q;
  T sign = T(1);
  if (q > n) {
    q = 2 * n - q;
    sign = T(-1);
  }
  const T step = T(3.14159265358979323846) / static_cast<T>(2 * n);  // pi / (2n)
  if (2 * q > n) return sign * dct_sin(static_cast<T>(n - q) * step);
  return sign * dct_cos(static_cast<T>(q) * step);
}

// cos(pi p / (2n)) for any integer p (negative included), by exact reduction modulo 4n.
template <typename T>
LRO_HD T cos_pi_over_2n(int64_t p, int64_t n) {
  int64_t q = p % (4 * n);
  if (q < 0) q += 4 * n;
  return dct_cos_reduced<T>(q, n);
}

// sin(pi p / (2n)) = cos(pi (p - n) / (2n)).
template <typename T>
LRO_HD T sin_pi_over_2n(int64_t p, int64_t n) {
  return cos_pi_over_2n<T>(p - n, n);
}

// c_k: sqrt(1/n) for k = 0, sqrt(2/n) otherwise (each a correctly rounded division and square root).
template <typename T>
LRO_HD T dct_row_scale(int64_t k, int64_t n) {
  return dct_sqrt(static_cast<T>(k == 0 ? 1 : 2) / static_cast<T>(n));
}

// D[k, t] for 0 <= k, t < n.
template <typename T>
LRO_HD T dct_entry(int64_t k, int64_t t, int64_t n) {
  return dct_row_scale<T>(k, n) * cos_pi_over_2n<T>(k * (2 * t + 1), n);
}

// out[i] = D[k, t0 + i] for i in [0, len): a contiguous run of basis row k, for 0 <= k < n and
// 0 <= t0 <= t0 + len <= n. Along a row, p = k (2t + 1) grows by 2k per column; it is kept reduced
// modulo 4n with one compare per step, so a run costs one cos or sin per entry and no division.
template <typename T>
LRO_HD void dct_fill_segment(int64_t n, int64_t k, int64_t t0, int64_t len, T* out) {
  const int64_t period = 4 * n;
  const int64_t step = (2 * k) % period;
  int64_t q = (k * (2 * t0 + 1)) % period;
  const T scale = dct_row_scale<T>(k, n);
  for (int64_t i = 0; i < len; ++i) {
    out[i] = scale * dct_cos_reduced<T>(q, n);
    q += step;
    if (q >= period) q -= period;
  }
}

}  // namespace lro
