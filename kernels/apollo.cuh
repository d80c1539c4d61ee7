// CUDA launchers of the fused APOLLO step (lowrank_ops/ops/apollo.py): a plain C++ API (raw pointers, sizes,
// strides, a stream; no torch) implemented in kernels/apollo.cu. They are the device parts of
// csrc/cuda/apollo.cpp, which forms R = c P G / c G P^T with cuBLAS (through ATen) or the sketch GEMM first.
// The per-element math is kernels/apollo.h, shared with the CPU backend (csrc/cpu/apollo.cpp). Every
// launcher runs asynchronously on `stream` and returns the launch's cudaError_t; cudaErrorInvalidValue
// means an argument is out of range.
//
// A "channel" array: channels x len elements, element k of channel c at x[c * cs + k * ks] (strides >= 0).
// The kept channels of APOLLO are W's columns (side "left") or rows ("right"); the same layout names them
// in G, in R and in the moments.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#if !defined(__CUDACC_RTC__)  // NVRTC (tests/test_nvrtc.py) compiles the kernels only: no runtime API, no std
#include <cuda_runtime.h>

#include <cstdint>
#endif

#include "apollo.h"

namespace lro {

// The compute type of W's update: float for float and __nv_bfloat16 W, double for double W.
template <typename W>
struct ApolloCompute {
  using type = float;
};
template <>
struct ApolloCompute<double> {
  using type = double;
};

// The scalars of the scales-and-limiter kernel.
struct ApolloScaling {
  double step_size;  // a (apollo_step_size)
  long long step;    // t >= 1, the count after increment
  bool channel;      // "channel" scaling (APOLLO), else "tensor" (APOLLO-Mini)
  bool limiter;      // Fira's norm-growth limiter on
};

#if !defined(__CUDACC_RTC__)  // launchers: host code
// out[c] = sum_k x[c * cs + k * ks]^2 for c < channels, accumulated in double. X: float, double, __half or
// __nv_bfloat16.
template <typename X>
cudaError_t launch_apollo_sq_norms(const X* x, int64_t channels, int64_t len, int64_t cs, int64_t ks, double* out,
                                   cudaStream_t stream);

// For every element e of the channel arrays r, m, v (one layout): N_e = apollo_moments(r_e, &m_e, &v_e), and
// per channel c, n_sq[c] = sum_k N^2 and r_sq[c] = sum_k r^2 in double. T: float or double.
template <typename T>
cudaError_t launch_apollo_moments(const T* r, T* m, T* v, int64_t channels, int64_t len, int64_t cs, int64_t ks,
                                  const ApolloBetas<T>& betas, double* n_sq, double* r_sq, cudaStream_t stream);

// One block: s_c = apollo_channel_scale(n_sq[c], r_sq[c]) (or one s of the sums, "tensor"), the update norm
// g = sqrt(sum_c s_c^2 g_sq[c]), lam = apollo_limiter(g, *limiter_norm, step) (1 with the limiter off, and
// then *limiter_norm is left alone, else it becomes g / lam), and c_s[c] = a / lam * s_c rounded to T.
// (T, L): (float, float), (double, float) or (double, double).
template <typename T, typename L>
cudaError_t launch_apollo_scales(const double* n_sq, const double* r_sq, const double* g_sq, int64_t channels,
                                 const ApolloScaling& scaling, L* limiter_norm, T* c_s, cudaStream_t stream);

// w[i * ws0 + j * ws1] <- apollo_weight_update(w, g[i * gs0 + j * gs1], c_s[left ? j : i], decay) for
// i < rows, j < cols, in W's compute type and rounded once to W's type. G: float, double, __half or __nv_bfloat16.
template <typename W, typename G>
cudaError_t launch_apollo_weight_update(W* w, int64_t rows, int64_t cols, int64_t ws0, int64_t ws1, const G* g,
                                        int64_t gs0, int64_t gs1, const typename ApolloCompute<W>::type* c_s,
                                        bool left, typename ApolloCompute<W>::type decay, cudaStream_t stream);
#endif

}  // namespace lro
