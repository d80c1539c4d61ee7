// CUDA kernels and launchers of the quant family (API and contracts in quant.cuh). The per-element math is
// kernels/quant.h (int8_scale / int8_encode, nf4_inverse_absmax / nf4_encode / nf4_pack, and
// quant_decode_segment for decoding), tested on the host through the CPU backend; this file adds only the
// indexing, the warp reductions and the launches.
//   quantize:   one warp per group (int8: g elements of a row; nf4: g flat elements), lanes striding over
//               it: absmax by a warp reduction, then each lane encodes its elements (nf4: its pairs).
//   dequantize: each thread decodes a run of kSegment columns of a row of the requested sub-rectangle with
//               the NF4 codebook in shared memory; blockIdx.y strides over the rows.
#if !defined(__CUDACC_RTC__)
#include <cstdint>
#include <type_traits>
#endif

#include "quant.cuh"

namespace lro {

// torch compiles device code without the implicit __half / __nv_bfloat16 conversions, so the one rounding
// of a decoded float to them is spelled out (round to nearest even, like the CPU's c10 conversions).
template <>
LRO_HD __half convert_to<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
LRO_HD __nv_bfloat16 convert_to<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kSegment = 8;            // columns one thread decodes
constexpr int64_t kMaxGridX = 1 << 20;  // grid-stride loops cover the rest
constexpr int64_t kMaxGridY = 65535;

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(double v) { return static_cast<float>(v); }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Group t = row * groups + j of an int8 W: one warp per group (all lanes of a warp share t, so the
// shuffles see the whole warp).
template <typename In>
__global__ void __launch_bounds__(kThreads)
    quantize_int8_kernel(const In* __restrict__ w, int64_t rows, int64_t cols, int64_t g,
                         int8_t* __restrict__ codes, float* __restrict__ scales) {
  const int lane = threadIdx.x % 32;
  const int64_t groups = (cols + g - 1) / g, total = rows * groups;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; t < total;
       t += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t i = t / groups, j0 = (t % groups) * g;
    const int64_t len = cols - j0 < g ? cols - j0 : g;
    const In* src = w + i * cols + j0;
    float absmax = 0.0f;
    for (int64_t k = lane; k < len; k += 32) absmax = fmaxf(absmax, fabsf(widen(src[k])));
    const float scale = int8_scale(warp_max(absmax));
    if (lane == 0) scales[t] = scale;
    int8_t* dst = codes + i * cols + j0;
    for (int64_t k = lane; k < len; k += 32) dst[k] = int8_encode(widen(src[k]), scale);
  }
}

// Block b of an NF4 W (flat elements [b g, b g + g)): one warp per block, lane p encoding the pairs
// (2p, 2p + 1), (2p + 64, 2p + 65), ... of the block. g is even, so pairs never straddle blocks; an odd
// element count pads the last low nibble with the code of 0.
template <typename In>
__global__ void __launch_bounds__(kThreads)
    quantize_nf4_kernel(const In* __restrict__ w, int64_t numel, int64_t g, uint8_t* __restrict__ codes,
                        float* __restrict__ absmax) {
  const int lane = threadIdx.x % 32;
  const int64_t blocks = (numel + g - 1) / g;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; b < blocks;
       b += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t e0 = b * g;
    const int64_t len = numel - e0 < g ? numel - e0 : g;
    const In* src = w + e0;
    float amax = 0.0f;
    for (int64_t k = lane; k < len; k += 32) amax = fmaxf(amax, fabsf(widen(src[k])));
    amax = warp_max(amax);
    if (lane == 0) absmax[b] = amax;
    const float inv = nf4_inverse_absmax(amax);
    for (int64_t k = 2 * lane; k < len; k += 64) {
      const float odd = k + 1 < len ? widen(src[k + 1]) : 0.0f;
      codes[(e0 + k) / 2] = nf4_pack(nf4_encode(widen(src[k]) * inv), nf4_encode(odd * inv));
    }
  }
}

// out[i * ld + j] = deq(W)[r0 + i, c0 + j]: thread x of block (bx, by) decodes columns
// [(bx kThreads + x) kSegment, + kSegment) of rows by, by + gridDim.y, ... The format is a template
// argument, so each kernel holds one decoder (both in one kernel spill on sm_90).
template <int FORMAT, typename C, typename Out>
__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(QuantMatrix w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, Out* __restrict__ out,
                      int64_t ld) {
  __shared__ C table[kNF4Codes];
  if (FORMAT == kQuantNF4) {
    if (threadIdx.x == 0) nf4_table<C>(table);
    __syncthreads();
  }
  for (int64_t j = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * kSegment; j < nc;
       j += static_cast<int64_t>(gridDim.x) * kThreads * kSegment) {
    const int64_t len = nc - j < kSegment ? nc - j : kSegment;
    for (int64_t i = blockIdx.y; i < nr; i += gridDim.y) {
      if (FORMAT == kQuantNF4) {
        nf4_decode_segment<C, Out>(w, r0 + i, c0 + j, len, table, out + i * ld + j);
      } else {
        int8_decode_segment<C, Out>(w, r0 + i, c0 + j, len, out + i * ld + j);
      }
    }
  }
}

#if !defined(__CUDACC_RTC__)  // host launchers: nvcc only (NVRTC, lowrank_ops.cupy, compiles the kernels above)
int64_t grid_for(int64_t work, int64_t per_block, int64_t cap) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return blocks < cap ? blocks : cap;
}

template <typename In>
cudaError_t quantize(const In* w, int format, int64_t rows, int64_t cols, int64_t g, uint8_t* codes,
                     float* scales, cudaStream_t stream) {
  const bool nf4 = format == kQuantNF4;
  if ((format != kQuantInt8 && !nf4) || rows < 1 || cols < 1 || g < 1 || g > INT32_MAX || (nf4 && g % 2)) {
    return cudaErrorInvalidValue;
  }
  if (nf4) {
    const int64_t numel = rows * cols;
    const unsigned grid = static_cast<unsigned>(grid_for((numel + g - 1) / g, kWarps, kMaxGridX));
    LRO_LAUNCH(grid, kThreads, 0, stream, quantize_nf4_kernel<In>)(w, numel, g, codes, scales);
  } else {
    const unsigned grid = static_cast<unsigned>(grid_for(rows * ((cols + g - 1) / g), kWarps, kMaxGridX));
    LRO_LAUNCH(grid, kThreads, 0, stream, quantize_int8_kernel<In>)
    (w, rows, cols, g, reinterpret_cast<int8_t*>(codes), scales);
  }
  return cudaGetLastError();
}

template <typename Out>
cudaError_t dequantize(const QuantMatrix& w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, Out* out,
                       int64_t ld, cudaStream_t stream) {
  const bool nf4 = w.format == kQuantNF4;
  if ((w.format != kQuantInt8 && !nf4) || w.rows < 1 || w.cols < 1 || w.group_size < 1 ||
      (nf4 && w.group_size % 2) || r0 < 0 || c0 < 0 || nr < 1 || nc < 1 || r0 + nr > w.rows ||
      c0 + nc > w.cols || ld < nc) {
    return cudaErrorInvalidValue;
  }
  using C = typename std::conditional<std::is_same<Out, double>::value, double, float>::type;
  const dim3 grid(static_cast<unsigned>(grid_for(nc, int64_t{kThreads} * kSegment, kMaxGridX)),
                  static_cast<unsigned>(nr < kMaxGridY ? nr : kMaxGridY));
  if (nf4) {
    LRO_LAUNCH(grid, kThreads, 0, stream, dequantize_kernel<kQuantNF4, C, Out>)(w, r0, nr, c0, nc, out, ld);
  } else {
    LRO_LAUNCH(grid, kThreads, 0, stream, dequantize_kernel<kQuantInt8, C, Out>)(w, r0, nr, c0, nc, out, ld);
  }
  return cudaGetLastError();
}
#endif  // !__CUDACC_RTC__

}  // namespace

#if !defined(__CUDACC_RTC__)
cudaError_t launch_quantize(const float* w, int format, int64_t rows, int64_t cols, int64_t group_size,
                            uint8_t* codes, float* scales, cudaStream_t stream) {
  return quantize(w, format, rows, cols, group_size, codes, scales, stream);
}
cudaError_t launch_quantize(const double* w, int format, int64_t rows, int64_t cols, int64_t group_size,
                            uint8_t* codes, float* scales, cudaStream_t stream) {
  return quantize(w, format, rows, cols, group_size, codes, scales, stream);
}
cudaError_t launch_quantize(const __half* w, int format, int64_t rows, int64_t cols, int64_t group_size,
                            uint8_t* codes, float* scales, cudaStream_t stream) {
  return quantize(w, format, rows, cols, group_size, codes, scales, stream);
}
cudaError_t launch_quantize(const __nv_bfloat16* w, int format, int64_t rows, int64_t cols, int64_t group_size,
                            uint8_t* codes, float* scales, cudaStream_t stream) {
  return quantize(w, format, rows, cols, group_size, codes, scales, stream);
}

cudaError_t launch_dequantize(const QuantMatrix& w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, float* out,
                              int64_t ld, cudaStream_t stream) {
  return dequantize(w, r0, nr, c0, nc, out, ld, stream);
}
cudaError_t launch_dequantize(const QuantMatrix& w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, double* out,
                              int64_t ld, cudaStream_t stream) {
  return dequantize(w, r0, nr, c0, nc, out, ld, stream);
}
cudaError_t launch_dequantize(const QuantMatrix& w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, __half* out,
                              int64_t ld, cudaStream_t stream) {
  return dequantize(w, r0, nr, c0, nc, out, ld, stream);
}
cudaError_t launch_dequantize(const QuantMatrix& w, int64_t r0, int64_t nr, int64_t c0, int64_t nc,
                              __nv_bfloat16* out, int64_t ld, cudaStream_t stream) {
  return dequantize(w, r0, nr, c0, nc, out, ld, stream);
}
#endif  // !__CUDACC_RTC__

}  // namespace lro
