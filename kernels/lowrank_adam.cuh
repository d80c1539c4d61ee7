// CUDA launchers of the lowrank_adam family (the fused low-rank AdamW step): a plain C++ API (raw pointers,
// sizes, strides, a stream; no torch) implemented in kernels/lowrank_adam.cu. They are the device parts of
// csrc/lowrank_adam_impl.h on CUDA, which runs the GEMMs on tiles with cuBLAS (through ATen) between
// them. The per-element math is kernels/adam.h and kernels/sketch.h, shared with the CPU backend. Every
// launcher runs asynchronously on `stream` and returns the launch's cudaError_t; cudaErrorInvalidValue
// means an argument is out of range.
#pragma once
#include <cuda_bf16.h>
#if !defined(__CUDACC_RTC__)  // NVRTC (lowrank_ops.cupy) compiles the kernels only: no runtime API, no std
#include <cuda_runtime.h>

#include <cstdint>
#endif

#include "adam.h"
#include "sketch.h"
#include "sr_dct.h"

namespace lro {

#if !defined(__CUDACC_RTC__)  // launchers: host code
// out[i * ld + j] = P[i, k0 + j] for i < rank, j < width: a column window of the rank x dim sketch of spec
// v1 (entries scaled by 1 / sqrt(dim) rounded to T). rank in [1, 2^32], 0 <= k0, k0 + width <= dim,
// ld >= width.
cudaError_t launch_sketch_window(float* out, int64_t ld, SketchKind kind, uint64_t seed, int64_t rank, int64_t dim,
                                 int64_t k0, int64_t width, cudaStream_t stream);
cudaError_t launch_sketch_window(double* out, int64_t ld, SketchKind kind, uint64_t seed, int64_t rank, int64_t dim,
                                 int64_t k0, int64_t width, cudaStream_t stream);

// out[i * ld + j] = D[indices[i], k0 + j] for i < rank, j < width: a column window of the rows `indices`
// (device int64, values in [0, dim): not checked here) of the dim x dim orthonormal DCT-II basis, computed
// by dct_fill_segment (kernels/dct.h) in T; with `signs`, times sign_(k0 + j) of `seed` (the "sr_dct" side,
// srdct_fill_segment of kernels/sr_dct.h). rank >= 1, 1 <= dim <= kDctMaxDim, 0 <= k0, k0 + width <= dim,
// ld >= width.
cudaError_t launch_dct_window(float* out, int64_t ld, const int64_t* indices, int64_t rank, int64_t dim, int64_t k0,
                              int64_t width, bool signs, uint64_t seed, cudaStream_t stream);
cudaError_t launch_dct_window(double* out, int64_t ld, const int64_t* indices, int64_t rank, int64_t dim, int64_t k0,
                              int64_t width, bool signs, uint64_t seed, cudaStream_t stream);

// For i < n (contiguous arrays): adam_moments(r[i], &m[i], &v[i]) and, with delta, the adapter direction;
// r[i] is overwritten with the direction. delta may be null (the "full" weight-decay mode).
cudaError_t launch_adam_moments(float* r, float* m, float* v, float* delta, int64_t n, const AdamStep<float>& step,
                                cudaStream_t stream);
cudaError_t launch_adam_moments(double* r, double* m, double* v, double* delta, int64_t n,
                                const AdamStep<double>& step, cudaStream_t stream);

// w[i * s0 + j * s1] <- adam_weight_update(w, u[i * cols + j]) for i < rows, j < cols, computed in the
// compute type of u and rounded once to w's type.
cudaError_t launch_adam_weight_update(float* w, int64_t rows, int64_t cols, int64_t s0, int64_t s1, const float* u,
                                      const AdamStep<float>& step, cudaStream_t stream);
cudaError_t launch_adam_weight_update(__nv_bfloat16* w, int64_t rows, int64_t cols, int64_t s0, int64_t s1,
                                      const float* u, const AdamStep<float>& step, cudaStream_t stream);
cudaError_t launch_adam_weight_update(double* w, int64_t rows, int64_t cols, int64_t s0, int64_t s1, const double* u,
                                      const AdamStep<double>& step, cudaStream_t stream);
#endif

}  // namespace lro
