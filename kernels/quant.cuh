// CUDA launchers of the quant family (INT8 / NF4 weights, docs/DESIGN.md §3): a plain C++ API (raw pointers,
// sizes, a stream; no torch) implemented in kernels/quant.cu. The per-element math is kernels/quant.h, the
// storage layout that of lro::QuantMatrix. Every launcher runs asynchronously on `stream` and returns the
// launch's cudaError_t; cudaErrorInvalidValue means an argument is out of range (see each launcher).
//
// There is no fused dequant-GEMM here: the CUDA backend decodes W tile by tile with launch_dequantize and
// multiplies with cuBLAS (csrc/quant_tiles.h); the fused GEMM is the Triton kernel
// (lowrank_ops/triton/quant.py). Which is faster per shape is for the GPU benchmark to say.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#if !defined(__CUDACC_RTC__)  // NVRTC (lowrank_ops.cupy) compiles the kernels only: no runtime API, no std
#include <cuda_runtime.h>

#include <cstdint>
#endif

#include "quant.h"

namespace lro {

#if !defined(__CUDACC_RTC__)  // launchers: host code
// codes/scales <- W [rows, cols] (contiguous) in `format` (kQuantInt8 or kQuantNF4). codes: int8 [rows, cols]
// (as bytes) or packed NF4 [ceil(rows cols / 2)]; scales: float32 [rows, ceil(cols / g)] or [ceil(rows cols / g)].
// Elements are encoded from their float32 value. rows, cols >= 1; group_size >= 1, even for NF4, at most 2^31.
cudaError_t launch_quantize(const float* w, int format, int64_t rows, int64_t cols, int64_t group_size,
                            uint8_t* codes, float* scales, cudaStream_t stream);
cudaError_t launch_quantize(const double* w, int format, int64_t rows, int64_t cols, int64_t group_size,
                            uint8_t* codes, float* scales, cudaStream_t stream);
cudaError_t launch_quantize(const __half* w, int format, int64_t rows, int64_t cols, int64_t group_size,
                            uint8_t* codes, float* scales, cudaStream_t stream);
cudaError_t launch_quantize(const __nv_bfloat16* w, int format, int64_t rows, int64_t cols, int64_t group_size,
                            uint8_t* codes, float* scales, cudaStream_t stream);

// out[i * ld + j] = deq(W)[r0 + i, c0 + j] for i < nr, j < nc: code value x scale in float (double for a
// double out), rounded once to out's type. The sub-rectangle must lie inside W; nr, nc >= 1; ld >= nc.
cudaError_t launch_dequantize(const QuantMatrix& w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, float* out,
                              int64_t ld, cudaStream_t stream);
cudaError_t launch_dequantize(const QuantMatrix& w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, double* out,
                              int64_t ld, cudaStream_t stream);
cudaError_t launch_dequantize(const QuantMatrix& w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, __half* out,
                              int64_t ld, cudaStream_t stream);
cudaError_t launch_dequantize(const QuantMatrix& w, int64_t r0, int64_t nr, int64_t c0, int64_t nc,
                              __nv_bfloat16* out, int64_t ld, cudaStream_t stream);
#endif

}  // namespace lro
