// CUDA kernel and launcher of the 8-bit moment epilogue (API in blockwise8.cuh). One warp per block of `block`
// elements of a row (blocks never straddle rows), lanes striding over it, the code tables in shared memory:
//   pass 1: decode, update (kernels/adam.h), and the absmax of the updated moments (rounded to float32) by a
//           NaN-propagating warp reduction;
//   pass 2: the same update again (the same operations on the same inputs give the same values), the
//           direction into r (and delta), the codes of the updated moments against the new absmax.
// Recomputing instead of keeping the block in shared memory takes any block length. Each lane reads and writes
// only its own elements, and every lane reads the block's old absmax before the reduction's shuffles, so the
// in-place writes need no further synchronization.
#if !defined(__CUDACC_RTC__)
#include <cstdint>
#endif

#include "blockwise8.cuh"

namespace lro {
namespace {

constexpr int kQ8Threads = 256;
constexpr int kQ8Warps = kQ8Threads / 32;
constexpr int64_t kQ8MaxGrid = 1 << 20;  // a grid-stride loop covers the rest

// max over the warp, NaN when any lane holds NaN.
__device__ __forceinline__ float q8_warp_absmax(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = (other > v || other != other) ? other : v;
  }
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kQ8Threads)
    q8_adam_moments_kernel(T* __restrict__ r, uint8_t* __restrict__ qm, float* __restrict__ am,
                           uint8_t* __restrict__ qv, float* __restrict__ av, T* __restrict__ delta, int64_t rows,
                           int64_t cols, int64_t block, AdamStep<T> s) {
  __shared__ float signed_code[kQ8Codes], signed_mid[kQ8Codes - 1];
  __shared__ float unsigned_code[kQ8Codes], unsigned_mid[kQ8Codes - 1];
  for (int q = threadIdx.x; q < kQ8Codes; q += blockDim.x) {
    signed_code[q] = q8_code(true, q);
    unsigned_code[q] = q8_code(false, q);
  }
  __syncthreads();
  for (int i = threadIdx.x; i + 1 < kQ8Codes; i += blockDim.x) {
    signed_mid[i] = q8_mid(signed_code, i);
    unsigned_mid[i] = q8_mid(unsigned_code, i);
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t blocks = (cols + block - 1) / block, total = rows * blocks;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kQ8Warps + threadIdx.x / 32; t < total;
       t += static_cast<int64_t>(gridDim.x) * kQ8Warps) {
    const int64_t row = t / blocks, c0 = (t % blocks) * block;
    const int64_t len = cols - c0 < block ? cols - c0 : block, base = row * cols + c0;
    const float old_m = am[t], old_v = av[t];
    float m_max = 0.0f, v_max = 0.0f;
    for (int64_t k = lane; k < len; k += 32) {
      T m = static_cast<T>(q8_decode(qm[base + k], old_m, signed_code));
      T v = static_cast<T>(q8_decode(qv[base + k], old_v, unsigned_code));
      adam_moments(r[base + k], &m, &v, s);
      const float a = fabsf(static_cast<float>(m)), b = fabsf(static_cast<float>(v));
      if (a > m_max || a != a) m_max = a;
      if (b > v_max || b != b) v_max = b;
    }
    m_max = q8_warp_absmax(m_max);
    v_max = q8_warp_absmax(v_max);
    for (int64_t k = lane; k < len; k += 32) {
      T m = static_cast<T>(q8_decode(qm[base + k], old_m, signed_code));
      T v = static_cast<T>(q8_decode(qv[base + k], old_v, unsigned_code));
      T direction = adam_moments(r[base + k], &m, &v, s);
      if (delta != nullptr) direction = adam_adapter_direction(direction, delta + base + k, s);
      r[base + k] = direction;
      qm[base + k] = q8_encode(q8_normalize(static_cast<float>(m), m_max), signed_mid);
      qv[base + k] = q8_encode(q8_normalize(static_cast<float>(v), v_max), unsigned_mid);
    }
    if (lane == 0) {
      am[t] = m_max;
      av[t] = v_max;
    }
  }
}

#if !defined(__CUDACC_RTC__)  // host launchers: nvcc only
template <typename T>
cudaError_t q8_adam_moments(T* r, uint8_t* qm, float* am, uint8_t* qv, float* av, T* delta, int64_t rows,
                            int64_t cols, int64_t block, const AdamStep<T>& s, cudaStream_t stream) {
  if (rows < 1 || cols < 1 || block < 1) return cudaErrorInvalidValue;
  const int64_t warps = rows * ((cols + block - 1) / block);
  const int64_t wanted = (warps + kQ8Warps - 1) / kQ8Warps;
  const unsigned grid = static_cast<unsigned>(wanted < kQ8MaxGrid ? wanted : kQ8MaxGrid);
  LRO_LAUNCH(grid, kQ8Threads, 0, stream, q8_adam_moments_kernel<T>)(r, qm, am, qv, av, delta, rows, cols, block, s);
  return cudaGetLastError();
}
#endif

}  // namespace

#if !defined(__CUDACC_RTC__)
cudaError_t launch_q8_adam_moments(float* r, uint8_t* qm, float* am, uint8_t* qv, float* av, float* delta,
                                   int64_t rows, int64_t cols, int64_t block, const AdamStep<float>& step,
                                   cudaStream_t stream) {
  return q8_adam_moments(r, qm, am, qv, av, delta, rows, cols, block, step, stream);
}
cudaError_t launch_q8_adam_moments(double* r, uint8_t* qm, float* am, uint8_t* qv, float* av, double* delta,
                                   int64_t rows, int64_t cols, int64_t block, const AdamStep<double>& step,
                                   cudaStream_t stream) {
  return q8_adam_moments(r, qm, am, qv, av, delta, rows, cols, block, step, stream);
}
#endif

}  // namespace lro
