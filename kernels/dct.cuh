// CUDA launchers of the DCT family (docs/DESIGN.md §3): a plain C++ API (raw pointers, sizes, a stream; no
// torch) implemented in kernels/dct.cu. Every launcher runs asynchronously on `stream` and returns the
// launch's cudaError_t; cudaErrorInvalidValue means an argument is out of range.
//
// D is the dim x dim orthonormal DCT-II basis of kernels/dct.h, D[k, t] = c_k cos(pi k (2t + 1) / (2 dim)).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#if !defined(__CUDACC_RTC__)  // NVRTC (lowrank_ops.cupy) compiles the kernels only: no runtime API, no std
#include <cuda_runtime.h>

#include <cstdint>
#endif

#include "dct.h"

namespace lro {

#if !defined(__CUDACC_RTC__)  // launchers: host code
// out[i * ld + t] = D[row_i, t] for i < rows, t < dim, where row_i = indices[i] if `indices` is not null
// (device int64, values in [0, dim): not checked here), else first_row + i (first_row + rows <= dim).
// Entries are computed in float (double for a double out) by dct_fill_segment and rounded to the output
// type. rows >= 0, 1 <= dim <= kDctMaxDim, ld >= dim.
cudaError_t launch_dct_rows(float* out, int64_t rows, int64_t dim, int64_t ld, const int64_t* indices,
                            int64_t first_row, cudaStream_t stream);
cudaError_t launch_dct_rows(double* out, int64_t rows, int64_t dim, int64_t ld, const int64_t* indices,
                            int64_t first_row, cudaStream_t stream);
cudaError_t launch_dct_rows(__half* out, int64_t rows, int64_t dim, int64_t ld, const int64_t* indices,
                            int64_t first_row, cudaStream_t stream);
cudaError_t launch_dct_rows(__nv_bfloat16* out, int64_t rows, int64_t dim, int64_t ld, const int64_t* indices,
                            int64_t first_row, cudaStream_t stream);
#endif

}  // namespace lro
