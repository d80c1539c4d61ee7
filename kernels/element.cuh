// Element conversions of the CUDA kernels: an input element widened to its compute type (double stays
// double; float, __half and __nv_bfloat16 become float) and a result narrowed to a stored element type with
// one round-to-nearest-even.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace lro {

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename W>
__device__ __forceinline__ W narrow_to(float v);
template <>
__device__ __forceinline__ float narrow_to<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow_to<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename W>
__device__ __forceinline__ W narrow_to(double v) { return v; }

}  // namespace lro
