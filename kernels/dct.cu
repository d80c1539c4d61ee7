// CUDA kernels and launchers of the DCT family (API and contracts in dct.cuh). The per-entry math is
// lro::dct_fill_segment from kernels/dct.h (tested on the host through the CPU backend); this file adds
// only indexing, tiling and the launch.
//
// A block generates kRows x kCols tiles of the selected basis rows into shared memory, one run of
// kSegment consecutive columns per thread (one exact integer reduction and kSegment cos/sin per run), then
// writes the tile out row by row, so that global stores coalesce.
#if !defined(__CUDACC_RTC__)
#include <climits>
#endif

#include "dct.cuh"

namespace lro {
namespace {

constexpr int kThreads = 256;
constexpr int kSegment = 8;
constexpr int kRows = 32, kCols = 64;
static_assert(kRows * kCols == kThreads * kSegment, "one run of kSegment columns per thread");

// *p = v rounded to the output type.
__device__ __forceinline__ void store_as(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_as(double* p, double v) { *p = v; }
__device__ __forceinline__ void store_as(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_as(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// C: the compute type (float, or double for a double output); O: the output type.
template <typename C, typename O>
__global__ void __launch_bounds__(kThreads, 1)
    dct_rows_kernel(O* __restrict__ out, int64_t rows, int64_t dim, int64_t ld,
                    const int64_t* __restrict__ indices, int64_t first_row) {
  __shared__ C tile[kRows * (kCols + 1)];  // odd row length: consecutive rows hit distinct banks
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kCols;
  // Thread q fills the run of columns c = (q / kRows) * kSegment of tile row r = q % kRows.
  const int r = threadIdx.x % kRows, c = (threadIdx.x / kRows) * kSegment;
  for (int64_t r0 = static_cast<int64_t>(blockIdx.y) * kRows; r0 < rows;
       r0 += static_cast<int64_t>(gridDim.y) * kRows) {
    const int64_t i = r0 + r, t0 = c0 + c;
    if (i < rows && t0 < dim) {
      const int64_t k = indices != nullptr ? indices[i] : first_row + i;
      const int64_t len = dim - t0 < kSegment ? dim - t0 : kSegment;
      dct_fill_segment<C>(dim, k, t0, len, tile + r * (kCols + 1) + c);
    }
    __syncthreads();
#pragma unroll
    for (int it = 0; it < kRows * kCols / kThreads; ++it) {
      const int q = threadIdx.x + it * kThreads;
      const int rr = q / kCols, cc = q % kCols;
      if (r0 + rr < rows && c0 + cc < dim) store_as(out + (r0 + rr) * ld + c0 + cc, tile[rr * (kCols + 1) + cc]);
    }
    __syncthreads();
  }
}

#if !defined(__CUDACC_RTC__)  // host launchers: nvcc only (NVRTC, lowrank_ops.cupy, compiles the kernels above)
template <typename C, typename O>
cudaError_t dct_rows(O* out, int64_t rows, int64_t dim, int64_t ld, const int64_t* indices, int64_t first_row,
                     cudaStream_t stream) {
  if (rows < 0 || dim < 1 || dim > kDctMaxDim || ld < dim || first_row < 0) return cudaErrorInvalidValue;
  if (indices == nullptr && first_row + rows > dim) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (out == nullptr) return cudaErrorInvalidValue;
  const int64_t col_tiles = (dim + kCols - 1) / kCols, row_tiles = (rows + kRows - 1) / kRows;
  if (col_tiles > INT_MAX) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>(row_tiles < 65535 ? row_tiles : 65535));
  LRO_LAUNCH(grid, kThreads, 0, stream, dct_rows_kernel<C, O>)(out, rows, dim, ld, indices, first_row);
  return cudaGetLastError();
}
#endif  // !__CUDACC_RTC__

}  // namespace

#if !defined(__CUDACC_RTC__)
cudaError_t launch_dct_rows(float* out, int64_t rows, int64_t dim, int64_t ld, const int64_t* indices,
                            int64_t first_row, cudaStream_t stream) {
  return dct_rows<float>(out, rows, dim, ld, indices, first_row, stream);
}
cudaError_t launch_dct_rows(double* out, int64_t rows, int64_t dim, int64_t ld, const int64_t* indices,
                            int64_t first_row, cudaStream_t stream) {
  return dct_rows<double>(out, rows, dim, ld, indices, first_row, stream);
}
cudaError_t launch_dct_rows(__half* out, int64_t rows, int64_t dim, int64_t ld, const int64_t* indices,
                            int64_t first_row, cudaStream_t stream) {
  return dct_rows<float>(out, rows, dim, ld, indices, first_row, stream);
}
cudaError_t launch_dct_rows(__nv_bfloat16* out, int64_t rows, int64_t dim, int64_t ld, const int64_t* indices,
                            int64_t first_row, cudaStream_t stream) {
  return dct_rows<float>(out, rows, dim, ld, indices, first_row, stream);
}
#endif  // !__CUDACC_RTC__

}  // namespace lro
