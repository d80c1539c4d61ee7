// CUDA kernels and launchers of the sketch family (API and contracts in sketch.cuh). The per-entry math
// is lro::sketch_fill_segment / lro::philox4x32 from the shared headers (tested on the host); this file
// adds only indexing, tiling and the launches.
//
// The fused GEMM computes C[M, N] = A[M, K] B[K, N] where one operand is the sketch P (or P^T) and the
// other the dense input X:
//   project left     C[r, n] = P X      A = P   (P[m, k]),  B = X
//   project right    C[m, r] = X P^T    A = X,              B = P^T (P[n, k])
//   unproject left   C[d, n] = P^T X    A = P^T (P[k, m]),  B = X
//   unproject right  C[m, d] = X P      A = X,              B = P   (P[k, n])
// A block owns a kBM x kBN tile of C; for each kBK slice of K it writes the A and B slices into shared
// memory (P generated there, X loaded and widened), then each thread accumulates a kTM x kTN register
// tile, C[m0 + ty + 16 i, n0 + tx + 16 j] += sum_k a(k, ty + 16 i) b(k, tx + 16 j).
#if !defined(__CUDACC_RTC__)
#include <climits>
#include <cmath>
#endif

#include "sketch.cuh"

namespace lro {
namespace {

constexpr int kThreads = 256;
constexpr int kSegment = 8;  // columns of one P row that one thread generates per call

constexpr int kBM = 64, kBN = 64, kBK = 32;
constexpr int kTM = 4, kTN = 4;
constexpr int kThreadCols = kBN / kTN;  // tx in [0, 16), ty in [0, 16)
static_assert(kThreads == (kBM / kTM) * (kBN / kTN), "one thread per register tile");
static_assert(kBM == kBN, "the shared-memory tile size below assumes square C tiles");
// A shared slice holds kBK x kBM values in one of two padded layouts: k-major (kBK rows of kBM + 1) or
// P-row-major (kBM rows of kBK + 1); the odd row length keeps column walks free of bank conflicts.
constexpr int kSliceElems = kBM * (kBK + 1) > kBK * (kBM + 1) ? kBM * (kBK + 1) : kBK * (kBM + 1);

constexpr int kFillRows = 32, kFillCols = 64;  // sketch_fill_ tile, staged in shared memory

#if !defined(__CUDACC_RTC__)
// Philox counters carry P's row as a uint32 and its column group as a uint32 (spec v1).
constexpr int64_t kMaxSketchRows = int64_t{1} << 32;
constexpr int64_t kMaxSketchCols = int64_t{kGaussianGroup} << 32;

bool valid_sketch(SketchKind kind, int64_t rank, int64_t dim) {
  return (kind == kRademacher || kind == kGaussian) && rank >= 1 && rank <= kMaxSketchRows && dim >= 1 &&
         dim <= kMaxSketchCols;
}
#endif

// The compute type of an input element: double stays double, everything else widens to float.
__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

// s[r * LD + c] = P[r0 + r, c0 + c] for r < ROWS, c < COLS, and 0 outside P (rank x dim). The kind is
// the compile-time KIND (spec.kind is not read), which keeps the other kind's code out of the kernel.
// Thread q fills the run of kSegment columns c = (q / ROWS) * kSegment of row r = q % ROWS with
// sketch_fill_segment, so one Philox call serves all the run's columns of its column group (a Rademacher
// group spans 128 columns, a Gaussian group 4). Consecutive threads take consecutive rows: with LD odd,
// their shared stores hit distinct banks.
template <typename T, int KIND, int ROWS, int COLS, int LD>
__device__ __forceinline__ void fill_sketch_tile(T* s, const SketchSpec& spec, T scale, int64_t r0,
                                                 int64_t c0) {
  static_assert(ROWS * COLS == kThreads * kSegment && LD >= COLS, "one run of kSegment columns per thread");
  const int r = threadIdx.x % ROWS, c = (threadIdx.x / ROWS) * kSegment;
  const int64_t row = r0 + r, col = c0 + c;
  T* dst = s + r * LD + c;
  int len = 0;
  if (row < spec.rank && col < spec.dim) {
    len = spec.dim - col < kSegment ? static_cast<int>(spec.dim - col) : kSegment;
    sketch_fill_segment<T>(KIND, spec.seed, static_cast<uint32_t>(row), col, len, scale, dst);
  }
  for (int t = len; t < kSegment; ++t) dst[t] = T(0);
}

// s[r * SR + c * SC] = X[r0 + r, c0 + c] widened to T for r < ROWS, c < COLS, and 0 outside X.
// Consecutive threads walk X's unit-stride direction (rows when rows_fast) so that global loads coalesce;
// as kThreads is a multiple of ROWS and COLS, each thread keeps one coordinate along that direction and
// steps the other by a constant (d_r, d_c) per load.
template <typename T, int ROWS, int COLS, int SR, int SC, typename In>
__device__ __forceinline__ void load_dense_tile(T* s, const StridedMatrix<In>& x, int64_t r0, int64_t c0,
                                                bool rows_fast) {
  static_assert(kThreads % ROWS == 0 && kThreads % COLS == 0, "a thread keeps its fast coordinate");
  const int r = rows_fast ? threadIdx.x % ROWS : threadIdx.x / COLS;
  const int c = rows_fast ? threadIdx.x / ROWS : threadIdx.x % COLS;
  const int d_r = rows_fast ? 0 : kThreads / COLS;
  const int d_c = rows_fast ? kThreads / ROWS : 0;
  const In* src = x.data + (r0 + r) * x.stride_row + (c0 + c) * x.stride_col;
  const int64_t step = d_r * x.stride_row + d_c * x.stride_col;
#pragma unroll
  for (int it = 0; it < ROWS * COLS / kThreads; ++it) {
    const int64_t i = r0 + r + it * d_r, j = c0 + c + it * d_c;
    s[(r + it * d_r) * SR + (c + it * d_c) * SC] =
        (i < x.rows && j < x.cols) ? static_cast<T>(widen(src[it * step])) : T(0);
  }
}

__global__ void __launch_bounds__(kThreads, 1)
    philox4x32_kernel(const int64_t* __restrict__ counters, int64_t* __restrict__ words, int64_t n,
                      uint64_t seed, int rounds) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < n; t += step) {
    const int64_t* c = counters + 4 * t;
    const PhiloxWords w = philox4x32(static_cast<uint32_t>(c[0]), static_cast<uint32_t>(c[1]),
                                     static_cast<uint32_t>(c[2]), static_cast<uint32_t>(c[3]), k0, k1,
                                     rounds);
#pragma unroll
    for (int q = 0; q < 4; ++q) words[4 * t + q] = w.w[q];
  }
}

// out[i * ld + j] = P[i, j]: each block generates kFillRows x kFillCols tiles into shared memory (runs of
// P rows, see fill_sketch_tile) and writes them out row by row, coalesced. blockIdx.x picks the column
// tile, blockIdx.y strides over row tiles.
template <typename T, int KIND>
__global__ void __launch_bounds__(kThreads, 1)
    sketch_fill_kernel(T* __restrict__ out, int64_t ld, SketchSpec spec, T scale) {
  __shared__ T tile[kFillRows * (kFillCols + 1)];
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kFillCols;
  for (int64_t r0 = static_cast<int64_t>(blockIdx.y) * kFillRows; r0 < spec.rank;
       r0 += static_cast<int64_t>(gridDim.y) * kFillRows) {
    fill_sketch_tile<T, KIND, kFillRows, kFillCols, kFillCols + 1>(tile, spec, scale, r0, c0);
    __syncthreads();
#pragma unroll
    for (int it = 0; it < kFillRows * kFillCols / kThreads; ++it) {
      const int q = threadIdx.x + it * kThreads;
      const int r = q / kFillCols, c = q % kFillCols;
      if (r0 + r < spec.rank && c0 + c < spec.dim) {
        out[(r0 + r) * ld + c0 + c] = tile[r * (kFillCols + 1) + c];
      }
    }
    __syncthreads();
  }
}

// C = A B of the file comment; T is the compute type, In the element type of X. Block b owns the C tile
// (b / tiles_n, b % tiles_n).
template <typename T, typename In, SketchProduct kProduct, int KIND>
__global__ void __launch_bounds__(kThreads, 1)
    sketch_gemm_kernel(SketchSpec spec, StridedMatrix<In> x, T scale, T* __restrict__ out, int64_t M,
                       int64_t N, int64_t K, bool rows_fast) {
  // Shared layouts: a(k, m) = As[k * kAK + m * kAM], b(k, n) = Bs[k * kBK_ + n * kBN_]. A P slice keeps
  // P's row-major layout (a run of a P row is contiguous), an X slice is k-major.
  constexpr int kAK = kProduct == SketchProduct::kProjectLeft ? 1 : kBM + 1;
  constexpr int kAM = kProduct == SketchProduct::kProjectLeft ? kBK + 1 : 1;
  constexpr int kBK_ = kProduct == SketchProduct::kProjectRight ? 1 : kBN + 1;
  constexpr int kBN_ = kProduct == SketchProduct::kProjectRight ? kBK + 1 : 1;
  __shared__ T As[kSliceElems];
  __shared__ T Bs[kSliceElems];

  const int64_t tiles_n = (N + kBN - 1) / kBN;
  const int64_t m0 = (blockIdx.x / tiles_n) * kBM, n0 = (blockIdx.x % tiles_n) * kBN;
  const int tx = threadIdx.x % kThreadCols, ty = threadIdx.x / kThreadCols;

  T acc[kTM][kTN];
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) acc[i][j] = T(0);

  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    if constexpr (kProduct == SketchProduct::kProjectLeft) {
      fill_sketch_tile<T, KIND, kBM, kBK, kBK + 1>(As, spec, scale, m0, k0);  // P[m, k]
    } else if constexpr (kProduct == SketchProduct::kUnprojectLeft) {
      fill_sketch_tile<T, KIND, kBK, kBM, kBM + 1>(As, spec, scale, k0, m0);  // P[k, m]
    } else {
      load_dense_tile<T, kBM, kBK, 1, kBM + 1>(As, x, m0, k0, rows_fast);  // X[m, k]
    }
    if constexpr (kProduct == SketchProduct::kProjectRight) {
      fill_sketch_tile<T, KIND, kBN, kBK, kBK + 1>(Bs, spec, scale, n0, k0);  // P[n, k]
    } else if constexpr (kProduct == SketchProduct::kUnprojectRight) {
      fill_sketch_tile<T, KIND, kBK, kBN, kBN + 1>(Bs, spec, scale, k0, n0);  // P[k, n]
    } else {
      load_dense_tile<T, kBK, kBN, kBN + 1, 1>(Bs, x, k0, n0, rows_fast);  // X[k, n]
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kBK; ++k) {
      T a[kTM], b[kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i) a[i] = As[k * kAK + (ty + 16 * i) * kAM];
#pragma unroll
      for (int j = 0; j < kTN; ++j) b[j] = Bs[k * kBK_ + (tx + 16 * j) * kBN_];
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int64_t row = m0 + ty + 16 * i;
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int64_t col = n0 + tx + 16 * j;
      if (row < M && col < N) out[row * N + col] = acc[i][j];
    }
  }
}

#if !defined(__CUDACC_RTC__)  // host launchers: nvcc only (NVRTC, lowrank_ops.cupy, compiles the kernels above)
template <typename T>
cudaError_t sketch_fill(T* out, int64_t rows, int64_t cols, int64_t ld, SketchKind kind, uint64_t seed,
                        cudaStream_t stream) {
  if (out == nullptr || !valid_sketch(kind, rows, cols) || (rows > 1 && ld < cols)) {
    return cudaErrorInvalidValue;
  }
  const int64_t col_tiles = (cols + kFillCols - 1) / kFillCols;
  const int64_t row_tiles = (rows + kFillRows - 1) / kFillRows;
  if (col_tiles > INT_MAX) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(col_tiles),
                  static_cast<unsigned>(row_tiles < 65535 ? row_tiles : 65535));
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(cols)));
  const SketchSpec spec{kind, seed, rows, cols};
  if (kind == kRademacher) {
    LRO_LAUNCH(grid, kThreads, 0, stream, sketch_fill_kernel<T, kRademacher>)(out, ld, spec, scale);
  } else {
    LRO_LAUNCH(grid, kThreads, 0, stream, sketch_fill_kernel<T, kGaussian>)(out, ld, spec, scale);
  }
  return cudaGetLastError();
}

// One kernel instance per (product, kind): the kind picks the instance here, on the host.
template <typename T, typename In, SketchProduct kProduct>
void launch_gemm(unsigned grid, cudaStream_t stream, const SketchSpec& spec, const StridedMatrix<In>& x,
                 T scale, T* out, int64_t M, int64_t N, int64_t K, bool rows_fast) {
  if (spec.kind == kRademacher) {
    LRO_LAUNCH(grid, kThreads, 0, stream, sketch_gemm_kernel<T, In, kProduct, kRademacher>)
    (spec, x, scale, out, M, N, K, rows_fast);
  } else {
    LRO_LAUNCH(grid, kThreads, 0, stream, sketch_gemm_kernel<T, In, kProduct, kGaussian>)
    (spec, x, scale, out, M, N, K, rows_fast);
  }
}

template <typename T, typename In>
cudaError_t sketch_gemm(SketchProduct product, const SketchSpec& spec, const StridedMatrix<In>& x, T* out,
                        cudaStream_t stream) {
  if (!valid_sketch(spec.kind, spec.rank, spec.dim) || x.rows < 0 || x.cols < 0) return cudaErrorInvalidValue;
  // C[M, N] = A[M, K] B[K, N]; `inner` is X's extent along K.
  int64_t M, N, K, inner;
  switch (product) {
    case SketchProduct::kProjectLeft: M = spec.rank, N = x.cols, K = spec.dim, inner = x.rows; break;
    case SketchProduct::kProjectRight: M = x.rows, N = spec.rank, K = spec.dim, inner = x.cols; break;
    case SketchProduct::kUnprojectLeft: M = spec.dim, N = x.cols, K = spec.rank, inner = x.rows; break;
    case SketchProduct::kUnprojectRight: M = x.rows, N = spec.dim, K = spec.rank, inner = x.cols; break;
    default: return cudaErrorInvalidValue;
  }
  if (inner != K) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  if (out == nullptr || x.data == nullptr) return cudaErrorInvalidValue;
  const int64_t tiles = ((M + kBM - 1) / kBM) * ((N + kBN - 1) / kBN);
  if (tiles > INT_MAX) return cudaErrorInvalidValue;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(spec.dim)));
  // Walk X down its columns when a column is the contiguous direction (or X is a single column).
  const bool rows_fast = x.cols == 1 || (x.rows > 1 && x.stride_row < x.stride_col);
  const unsigned grid = static_cast<unsigned>(tiles);
  using P = SketchProduct;
  switch (product) {
    case P::kProjectLeft:
      launch_gemm<T, In, P::kProjectLeft>(grid, stream, spec, x, scale, out, M, N, K, rows_fast);
      break;
    case P::kProjectRight:
      launch_gemm<T, In, P::kProjectRight>(grid, stream, spec, x, scale, out, M, N, K, rows_fast);
      break;
    case P::kUnprojectLeft:
      launch_gemm<T, In, P::kUnprojectLeft>(grid, stream, spec, x, scale, out, M, N, K, rows_fast);
      break;
    case P::kUnprojectRight:
      launch_gemm<T, In, P::kUnprojectRight>(grid, stream, spec, x, scale, out, M, N, K, rows_fast);
      break;
  }
  return cudaGetLastError();
}
#endif  // !__CUDACC_RTC__

}  // namespace

#if !defined(__CUDACC_RTC__)
cudaError_t launch_philox4x32(const int64_t* counters, int64_t* words, int64_t n, uint64_t seed, int rounds,
                              cudaStream_t stream) {
  if (n < 0 || rounds < 1 || rounds > 16) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (counters == nullptr || words == nullptr) return cudaErrorInvalidValue;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));
  LRO_LAUNCH(grid, kThreads, 0, stream, philox4x32_kernel)(counters, words, n, seed, rounds);
  return cudaGetLastError();
}

cudaError_t launch_sketch_fill(float* out, int64_t rows, int64_t cols, int64_t ld, SketchKind kind,
                               uint64_t seed, cudaStream_t stream) {
  return sketch_fill(out, rows, cols, ld, kind, seed, stream);
}
cudaError_t launch_sketch_fill(double* out, int64_t rows, int64_t cols, int64_t ld, SketchKind kind,
                               uint64_t seed, cudaStream_t stream) {
  return sketch_fill(out, rows, cols, ld, kind, seed, stream);
}

cudaError_t launch_sketch_gemm(SketchProduct product, const SketchSpec& spec, const StridedMatrix<float>& x,
                               float* out, cudaStream_t stream) {
  return sketch_gemm(product, spec, x, out, stream);
}
cudaError_t launch_sketch_gemm(SketchProduct product, const SketchSpec& spec, const StridedMatrix<double>& x,
                               double* out, cudaStream_t stream) {
  return sketch_gemm(product, spec, x, out, stream);
}
cudaError_t launch_sketch_gemm(SketchProduct product, const SketchSpec& spec, const StridedMatrix<__half>& x,
                               float* out, cudaStream_t stream) {
  return sketch_gemm(product, spec, x, out, stream);
}
cudaError_t launch_sketch_gemm(SketchProduct product, const SketchSpec& spec,
                               const StridedMatrix<__nv_bfloat16>& x, float* out, cudaStream_t stream) {
  return sketch_gemm(product, spec, x, out, stream);
}
#endif  // !__CUDACC_RTC__

}  // namespace lro
