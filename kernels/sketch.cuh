// CUDA launchers of the sketch family (spec v1, docs/DESIGN.md §3): a plain C++ API (raw pointers, sizes,
// strides, a stream; no torch) implemented in kernels/sketch.cu. Every launcher runs asynchronously on
// `stream` and returns the launch's cudaError_t; cudaErrorInvalidValue means an argument is out of range
// (the comment of each launcher says which ranges it accepts).
//
// P is the rank x dim sketch of spec v1: entry (i, j) = sketch_entry(kind, seed, i, j) / sqrt(dim), with
// 1 / sqrt(dim) rounded to the compute type (float, or double for double inputs).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#if !defined(__CUDACC_RTC__)  // NVRTC (lowrank_ops.cupy) compiles the kernels only: no runtime API, no std
#include <cuda_runtime.h>

#include <cstdint>
#endif

#include "sketch.h"

namespace lro {

#if !defined(__CUDACC_RTC__)  // launchers: host code
// words[t, :] = philox4x32(counters[t, :], key = (seed & 0xffffffff, seed >> 32), rounds) for t < n.
// counters and words are contiguous int64 [n, 4]; counters must hold uint32 values (not checked here),
// words receive uint32 values. rounds in [1, 16].
cudaError_t launch_philox4x32(const int64_t* counters, int64_t* words, int64_t n, uint64_t seed,
                              int rounds, cudaStream_t stream);

// out[i * ld + j] = P[i, j] for the rows x cols sketch (rank = rows, dim = cols). 1 <= rows <= 2^32,
// 1 <= cols <= 2^34 (Philox counters hold the row and the column group as uint32), ld >= cols.
cudaError_t launch_sketch_fill(float* out, int64_t rows, int64_t cols, int64_t ld, SketchKind kind,
                               uint64_t seed, cudaStream_t stream);
cudaError_t launch_sketch_fill(double* out, int64_t rows, int64_t cols, int64_t ld, SketchKind kind,
                               uint64_t seed, cudaStream_t stream);
#endif

// The four products of a dense matrix X with P that the fused GEMM computes (shapes of X -> out).
enum class SketchProduct : int {
  kProjectLeft = 0,     // out[r, n] = P X,    X: [d, n]
  kProjectRight = 1,    // out[m, r] = X P^T,  X: [m, d]
  kUnprojectLeft = 2,   // out[d, n] = P^T X,  X: [r, n]
  kUnprojectRight = 3,  // out[m, d] = X P,    X: [m, r]
};

struct SketchSpec {
  SketchKind kind;
  uint64_t seed;
  int64_t rank;  // rows of P, 1 <= r <= 2^32
  int64_t dim;   // columns of P, 1 <= d <= 2^34
};

// A strided matrix in device memory: element (i, j) at data[i * stride_row + j * stride_col].
template <typename T>
struct StridedMatrix {
  const T* data;
  int64_t rows;
  int64_t cols;
  int64_t stride_row;
  int64_t stride_col;
};

#if !defined(__CUDACC_RTC__)  // launchers: host code
// out = the `product` of P and x (see SketchProduct), P generated tile by tile in shared memory and never
// written to global memory. out is contiguous row-major in the compute type: double for double x, float
// otherwise (half and bfloat16 are widened on load, products accumulate in float). x's extent along
// the sketched side must equal spec.dim (projections) or spec.rank (unprojections); out may have at most
// 2^31 - 1 tiles of 64 x 64. An empty out (x without rows or columns) launches nothing.
cudaError_t launch_sketch_gemm(SketchProduct product, const SketchSpec& spec, const StridedMatrix<float>& x,
                               float* out, cudaStream_t stream);
cudaError_t launch_sketch_gemm(SketchProduct product, const SketchSpec& spec, const StridedMatrix<double>& x,
                               double* out, cudaStream_t stream);
cudaError_t launch_sketch_gemm(SketchProduct product, const SketchSpec& spec, const StridedMatrix<__half>& x,
                               float* out, cudaStream_t stream);
cudaError_t launch_sketch_gemm(SketchProduct product, const SketchSpec& spec,
                               const StridedMatrix<__nv_bfloat16>& x, float* out, cudaStream_t stream);
#endif

}  // namespace lro
