// CUDA launcher of the blockwise 8-bit moment epilogue (docs/DESIGN.md §3 "8-bit optimizer moments"): a plain
// C++ API (raw pointers, sizes, a stream; no torch) implemented in kernels/blockwise8.cu. The per-element math
// is kernels/blockwise8.h and kernels/adam.h, the same functions the CPU epilogue (csrc/cpu/adam_epilogues8.h)
// runs. The launcher runs asynchronously on `stream` and returns the launch's cudaError_t;
// cudaErrorInvalidValue means an argument is out of range.
#pragma once
#if !defined(__CUDACC_RTC__)  // NVRTC compiles the kernels only: no runtime API, no std
#include <cuda_runtime.h>

#include <cstdint>
#endif

#include "adam.h"
#include "blockwise8.h"

namespace lro {

#if !defined(__CUDACC_RTC__)  // launchers: host code
// The moments of the projected gradient r [rows, cols] (contiguous, compute type T) on 8-bit moments: codes
// qm, qv uint8 [rows, cols] (signed code for exp_avg, unsigned for exp_avg_sq) and their float32 absmax am, av
// [rows, ceil(cols / block)], all in place; r is overwritten with the direction to unproject (delta, the
// adapter of the adapter mode, updated in place when not null). rows, cols, block >= 1.
cudaError_t launch_q8_adam_moments(float* r, uint8_t* qm, float* am, uint8_t* qv, float* av, float* delta,
                                   int64_t rows, int64_t cols, int64_t block, const AdamStep<float>& step,
                                   cudaStream_t stream);
cudaError_t launch_q8_adam_moments(double* r, uint8_t* qm, float* am, uint8_t* qv, float* av, double* delta,
                                   int64_t rows, int64_t cols, int64_t block, const AdamStep<double>& step,
                                   cudaStream_t stream);
#endif

}  // namespace lro
