// CPU parts of the DCT family shared by the scores (csrc/cpu/dct.cpp) and the projections
// (csrc/cpu/dct_transform.cpp): basis rows generated into a tile (kernels/dct.h), and the FFT form of the
// DCT-II (Makhoul, IEEE TASSP 28(1), 1980). For a length-d signal x, reorder
//   v = (x[0], x[2], x[4], ..., x[5], x[3], x[1])     (evens ascending, then odds descending),
// take V = rfft(v) (k = 0 .. d/2) and Z_k = exp(-i pi k / (2d)) V_k; then the unnormalized DCT-II
//   X_k = sum_t x_t cos(pi k (2t + 1) / (2d))   is   X_k = Re Z_k (0 <= k <= d/2),  X_{d-k} = -Im Z_k
// (1 <= k <= (d-1)/2), since V_{d-k} = conj(V_k) for real v. Inverting each step gives the inverse
// transform: Z_k = X_k - i X_{d-k} (X_d = 0), V_k = exp(+i pi k / (2d)) Z_k, v = irfft(V) (length d),
// x[order[i]] = v[i]. O(d log d) per signal against a GEMM's O(d r) for r basis rows.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../../kernels/dct.h"

namespace lowrank_ops {
namespace cpu {

// GEMM paths: kGemmTileElems entries per basis tile (1 MiB of float64; kb = 2^17 / d rows, at least one).
constexpr int64_t kGemmTileElems = int64_t{1} << 17;
// FFT paths: about kFftChunkElems entries per rfft batch (chunk = 2^16 / d signals; in an ATen-op prototype
// of the scores' path 2^16 beat 2^18 and 2^20 at d = 64 ... 4096).
constexpr int64_t kFftChunkElems = int64_t{1} << 16;

// rows[i, :] = D[first_row + i, :] (or D[index[i], :] when index is given) for the basis of size `dim`,
// into a float or double tensor with unit column stride.
inline void fill_rows(const at::Tensor& rows, int64_t dim, int64_t first_row, const int64_t* index) {
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "lowrank_ops::dct_fill_rows", [&] {
    scalar_t* base = rows.data_ptr<scalar_t>();
    const int64_t ld = rows.stride(0);
    at::parallel_for(0, rows.size(0), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t k = index != nullptr ? index[i] : first_row + i;
        lro::dct_fill_segment<scalar_t>(dim, k, 0, dim, base + i * ld);
      }
    });
  });
}

namespace dct_fft {

// order[i] = the index t of x that lands at position i of v.
inline std::vector<int64_t> makhoul_order(int64_t d) {
  std::vector<int64_t> order(d);
  const int64_t evens = (d + 1) / 2;
  for (int64_t i = 0; i < d; ++i) order[i] = i < evens ? 2 * i : 2 * (d - 1 - i) + 1;
  return order;
}

// exp(-i pi k / (2d)) for k = 0 .. d/2, from kernels/dct.h's exact reduction of the angle, in T.
template <typename T>
struct Twiddles {
  std::vector<T> re, im;
  explicit Twiddles(int64_t d) : re(d / 2 + 1), im(d / 2 + 1) {
    for (int64_t k = 0; k <= d / 2; ++k) {
      re[k] = lro::cos_pi_over_2n<T>(k, d);
      im[k] = -lro::sin_pi_over_2n<T>(k, d);
    }
  }
};

// v[j * v_j + i * v_i] = sign[order[i]] * (signal j0 + j of X at t = order[i]) for j in [0, w), cast to T,
// where signal j has entry t at X[t * s_t + j * s_j] (elements) and `sign` (length d, or nullptr for all
// +1) multiplies entry t. Reads X in its own dtype (any float dtype). The loop along X's smaller stride is
// innermost: signals of a row of X (s_j < s_t) or entries of one signal (s_t < s_j).
template <typename T>
void gather_reordered(const at::Tensor& X, int64_t s_t, int64_t s_j, int64_t j0, int64_t w,
                      const std::vector<int64_t>& order, const T* sign, T* v, int64_t v_i, int64_t v_j) {
  const int64_t d = static_cast<int64_t>(order.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "lowrank_ops::dct_gather", [&] {
    const scalar_t* src = X.const_data_ptr<scalar_t>() + j0 * s_j;
    const auto put = [&](int64_t i, int64_t j) {
      const int64_t t = order[i];
      v[j * v_j + i * v_i] = (sign != nullptr ? sign[t] : T(1)) * static_cast<T>(src[t * s_t + j * s_j]);
    };
    if (s_j < s_t) {
      for (int64_t i = 0; i < d; ++i)
        for (int64_t j = 0; j < w; ++j) put(i, j);
    } else {
      for (int64_t j = 0; j < w; ++j)
        for (int64_t i = 0; i < d; ++i) put(i, j);
    }
  });
}

}  // namespace dct_fft
}  // namespace cpu
}  // namespace lowrank_ops
