// CUDA kernels and launchers of the lowrank_adam family (API in lowrank_adam.cuh). The per-element math is
// lro::adam_moments / adam_adapter_direction / adam_weight_update (adam.h), lro::sketch_fill_segment
// (sketch.h), lro::dct_fill_segment (dct.h) and lro::srdct_fill_segment (sr_dct.h), all tested on the host; this file adds only indexing and the launches. All kernels are
// grid-stride loops over their elements.
#if !defined(__CUDACC_RTC__)
#include <climits>
#include <cmath>
#endif

#include "lowrank_adam.cuh"

namespace lro {
namespace {

constexpr int kThreads = 256;
constexpr int kSegment = 8;  // columns of one P row that one thread generates per call
#if !defined(__CUDACC_RTC__)
constexpr int64_t kMaxBlocks = 65535;

unsigned blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}
#endif

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename W>
__device__ __forceinline__ W narrow_to(float v);
template <>
__device__ __forceinline__ float narrow_to<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow_to<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename W>
__device__ __forceinline__ W narrow_to(double v) { return v; }

// Thread t generates the run of kSegment columns (t % runs) * kSegment of row t / runs of the window (one
// run per thread: the grid covers them all). KIND is a template argument, as in sketch.cu: the other
// kind's code stays out of the kernel. Minimum one block per SM, as in sketch.cu: with the default
// register budget ptxas spills the Gaussian instance on sm_80.
template <typename T, int KIND>
__global__ void __launch_bounds__(kThreads, 1)
    sketch_window_kernel(T* __restrict__ out, int64_t ld, uint64_t seed, int64_t rank, int64_t k0, int64_t width,
                         T scale) {
  const int64_t runs = (width + kSegment - 1) / kSegment;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= rank * runs) return;
  const int64_t row = t / runs, c = (t % runs) * kSegment;
  const int64_t len = width - c < kSegment ? width - c : kSegment;
  sketch_fill_segment<T>(KIND, seed, static_cast<uint32_t>(row), k0 + c, len, scale, out + row * ld + c);
}

// Thread t generates the run of kSegment columns (t % runs) * kSegment of basis row indices[t / runs] of
// the window (one run per thread, as sketch_window_kernel), signed by `seed` when `signs` ("sr_dct").
template <typename T>
__global__ void __launch_bounds__(kThreads)
    dct_window_kernel(T* __restrict__ out, int64_t ld, const int64_t* __restrict__ indices, int64_t rank,
                      int64_t dim, int64_t k0, int64_t width, bool signs, uint64_t seed) {
  const int64_t runs = (width + kSegment - 1) / kSegment;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= rank * runs) return;
  const int64_t row = t / runs, c = (t % runs) * kSegment;
  const int64_t len = width - c < kSegment ? width - c : kSegment;
  if (signs) {
    srdct_fill_segment<T>(dim, indices[row], seed, k0 + c, len, out + row * ld + c);
  } else {
    dct_fill_segment<T>(dim, indices[row], k0 + c, len, out + row * ld + c);
  }
}

template <typename T, bool kAdapter>
__global__ void __launch_bounds__(kThreads)
    adam_moments_kernel(T* __restrict__ r, T* __restrict__ m, T* __restrict__ v, T* __restrict__ delta, int64_t n,
                        AdamStep<T> step) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const T direction = adam_moments(r[i], m + i, v + i, step);
    r[i] = kAdapter ? adam_adapter_direction(direction, delta + i, step) : direction;
  }
}

template <typename W, typename T>
__global__ void __launch_bounds__(kThreads)
    weight_update_kernel(W* __restrict__ w, int64_t rows, int64_t cols, int64_t s0, int64_t s1,
                         const T* __restrict__ u, AdamStep<T> step) {
  const int64_t total = rows * cols;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * kThreads) {
    W* p = w + (t / cols) * s0 + (t % cols) * s1;
    *p = narrow_to<W>(adam_weight_update(widen(*p), u[t], step));
  }
}

#if !defined(__CUDACC_RTC__)  // host launchers: nvcc only (NVRTC, lowrank_ops.cupy, compiles the kernels above)
template <typename T>
cudaError_t sketch_window(T* out, int64_t ld, SketchKind kind, uint64_t seed, int64_t rank, int64_t dim, int64_t k0,
                          int64_t width, cudaStream_t stream) {
  if ((kind != kRademacher && kind != kGaussian) || rank < 1 || rank > (int64_t{1} << 32) || k0 < 0 || width < 0 ||
      k0 + width > dim || ld < width)
    return cudaErrorInvalidValue;
  if (width == 0) return cudaSuccess;
  if (out == nullptr) return cudaErrorInvalidValue;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(dim)));
  const int64_t blocks = (rank * ((width + kSegment - 1) / kSegment) + kThreads - 1) / kThreads;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  const unsigned grid = static_cast<unsigned>(blocks);
  if (kind == kRademacher) {
    LRO_LAUNCH(grid, kThreads, 0, stream, sketch_window_kernel<T, kRademacher>)
    (out, ld, seed, rank, k0, width, scale);
  } else {
    LRO_LAUNCH(grid, kThreads, 0, stream, sketch_window_kernel<T, kGaussian>)
    (out, ld, seed, rank, k0, width, scale);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t dct_window(T* out, int64_t ld, const int64_t* indices, int64_t rank, int64_t dim, int64_t k0,
                       int64_t width, bool signs, uint64_t seed, cudaStream_t stream) {
  if (rank < 1 || dim < 1 || dim > kDctMaxDim || k0 < 0 || width < 0 || k0 + width > dim || ld < width)
    return cudaErrorInvalidValue;
  if (width == 0) return cudaSuccess;
  if (out == nullptr || indices == nullptr) return cudaErrorInvalidValue;
  const int64_t blocks = (rank * ((width + kSegment - 1) / kSegment) + kThreads - 1) / kThreads;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  LRO_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream, dct_window_kernel<T>)
  (out, ld, indices, rank, dim, k0, width, signs, seed);
  return cudaGetLastError();
}

template <typename T>
cudaError_t adam_moments_launch(T* r, T* m, T* v, T* delta, int64_t n, const AdamStep<T>& step, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (r == nullptr || m == nullptr || v == nullptr) return cudaErrorInvalidValue;
  if (delta != nullptr) {
    LRO_LAUNCH(blocks_for(n), kThreads, 0, stream, adam_moments_kernel<T, true>)(r, m, v, delta, n, step);
  } else {
    LRO_LAUNCH(blocks_for(n), kThreads, 0, stream, adam_moments_kernel<T, false>)(r, m, v, delta, n, step);
  }
  return cudaGetLastError();
}

template <typename W, typename T>
cudaError_t weight_update_launch(W* w, int64_t rows, int64_t cols, int64_t s0, int64_t s1, const T* u,
                                 const AdamStep<T>& step, cudaStream_t stream) {
  if (rows < 0 || cols < 0) return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (w == nullptr || u == nullptr) return cudaErrorInvalidValue;
  LRO_LAUNCH(blocks_for(rows * cols), kThreads, 0, stream, weight_update_kernel<W, T>)
  (w, rows, cols, s0, s1, u, step);
  return cudaGetLastError();
}
#endif  // !__CUDACC_RTC__

}  // namespace

#if !defined(__CUDACC_RTC__)
cudaError_t launch_sketch_window(float* out, int64_t ld, SketchKind kind, uint64_t seed, int64_t rank, int64_t dim,
                                 int64_t k0, int64_t width, cudaStream_t stream) {
  return sketch_window(out, ld, kind, seed, rank, dim, k0, width, stream);
}
cudaError_t launch_sketch_window(double* out, int64_t ld, SketchKind kind, uint64_t seed, int64_t rank, int64_t dim,
                                 int64_t k0, int64_t width, cudaStream_t stream) {
  return sketch_window(out, ld, kind, seed, rank, dim, k0, width, stream);
}

cudaError_t launch_dct_window(float* out, int64_t ld, const int64_t* indices, int64_t rank, int64_t dim, int64_t k0,
                              int64_t width, bool signs, uint64_t seed, cudaStream_t stream) {
  return dct_window(out, ld, indices, rank, dim, k0, width, signs, seed, stream);
}
cudaError_t launch_dct_window(double* out, int64_t ld, const int64_t* indices, int64_t rank, int64_t dim, int64_t k0,
                              int64_t width, bool signs, uint64_t seed, cudaStream_t stream) {
  return dct_window(out, ld, indices, rank, dim, k0, width, signs, seed, stream);
}

cudaError_t launch_adam_moments(float* r, float* m, float* v, float* delta, int64_t n, const AdamStep<float>& step,
                                cudaStream_t stream) {
  return adam_moments_launch(r, m, v, delta, n, step, stream);
}
cudaError_t launch_adam_moments(double* r, double* m, double* v, double* delta, int64_t n,
                                const AdamStep<double>& step, cudaStream_t stream) {
  return adam_moments_launch(r, m, v, delta, n, step, stream);
}

cudaError_t launch_adam_weight_update(float* w, int64_t rows, int64_t cols, int64_t s0, int64_t s1, const float* u,
                                      const AdamStep<float>& step, cudaStream_t stream) {
  return weight_update_launch(w, rows, cols, s0, s1, u, step, stream);
}
cudaError_t launch_adam_weight_update(__nv_bfloat16* w, int64_t rows, int64_t cols, int64_t s0, int64_t s1,
                                      const float* u, const AdamStep<float>& step, cudaStream_t stream) {
  return weight_update_launch(w, rows, cols, s0, s1, u, step, stream);
}
cudaError_t launch_adam_weight_update(double* w, int64_t rows, int64_t cols, int64_t s0, int64_t s1, const double* u,
                                      const AdamStep<double>& step, cudaStream_t stream) {
  return weight_update_launch(w, rows, cols, s0, s1, u, step, stream);
}
#endif  // !__CUDACC_RTC__

}  // namespace lro
