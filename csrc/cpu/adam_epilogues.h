// The elementwise parts of the fused low-rank AdamW step on the CPU, shared by the single-matrix kernel
// (csrc/cpu/lowrank_adam.cpp) and the multi-tensor one (csrc/cpu/lowrank_adam_multi.cpp): the moment update
// of a run of projected elements and the weight update of a block of W. The per-element math is
// kernels/adam.h; these add only the loops, on the calling thread.
#pragma once
#include <cstdint>

#include "../../kernels/adam.h"

namespace lowrank_ops {
namespace cpu {

// For i < n: the moments of r[i] (and the adapter's direction when delta is not null) in place; r[i] becomes
// the direction to unproject.
template <typename T>
void adam_moments_run(T* __restrict__ r, T* __restrict__ m, T* __restrict__ v, T* __restrict__ delta, int64_t n,
                      const lro::AdamStep<T>& s) {
  if (delta != nullptr) {
    for (int64_t i = 0; i < n; ++i)
      r[i] = lro::adam_adapter_direction(lro::adam_moments(r[i], m + i, v + i, s), delta + i, s);
  } else {
    for (int64_t i = 0; i < n; ++i) r[i] = lro::adam_moments(r[i], m + i, v + i, s);
  }
}

// w[i * s0 + j * s1] <- adam_weight_update(w, u[i * cols + j]) for a rows x cols block; one rounding to W_t.
template <typename W_t, typename T>
void update_rows(W_t* w, int64_t s0, int64_t s1, int64_t rows, int64_t cols, const T* __restrict__ u,
                 const lro::AdamStep<T>& s) {
  for (int64_t i = 0; i < rows; ++i) {
    W_t* __restrict__ wr = w + i * s0;
    const T* __restrict__ ur = u + i * cols;
    if (s1 == 1) {
      for (int64_t j = 0; j < cols; ++j)
        wr[j] = static_cast<W_t>(lro::adam_weight_update(static_cast<T>(wr[j]), ur[j], s));
    } else {
      for (int64_t j = 0; j < cols; ++j)
        wr[j * s1] = static_cast<W_t>(lro::adam_weight_update(static_cast<T>(wr[j * s1]), ur[j], s));
    }
  }
}

}  // namespace cpu
}  // namespace lowrank_ops
