// The multi-tensor fused low-rank AdamW step on the CPU (cpu::lowrank_adamw_multi_step_, csrc/lowrank_ops.h):
// every matrix of an optimizer in one call, with no Python and no ATen op per matrix on the hot path.
//
// Schedule. Matrices are independent, so the whole call is ONE parallel region in which each thread takes
// whole matrices, largest first (sorting by cost puts the matrices of one shape, kind, rank and side together),
// and runs single-threaded BLAS on them: no fork/join per GEMM, which on few cores costs more than a GEMM of
// an LLM layer (bench/results/sketch_cpu.json). A matrix too large for that to balance (the greedy
// largest-first makespan would exceed the even share by kBalanceSlack: one large layer, or two layers on
// three threads) runs first, alone, on all threads through lowrank_adamw_step_'s kernel (the driver's grouped
// form, run_adam_steps_grouped, for several of them).
//
// One matrix, one-sided (the blocked path). With P (r x d) materialized once per matrix in a per-thread
// buffer (generated, or the explicit matrix itself; r/other of G's bytes, 1/4 for a 512 x 512 layer at
// rank 128) and the other dimension cut into blocks whose projected rows stay in the thread's L2:
//   right (R = G P^T, m x r):  R_b = G_b P^T;  moments on R_b;  W_b <- beta W_b + alpha N_b P    (row blocks)
//   left  (R = P G, r x n):    R_b = P G_b;    moments on R_b;  W_b <- beta W_b + alpha P^T N_b  (column blocks)
// with alpha = -lr scale, beta = 1 - lr wd (1 in the adapter mode): the moment update is the projection
// GEMM's epilogue (on the block it just produced, in cache), and for a float32 W with a unit stride the weight
// update IS the unprojection GEMM (BLAS's C = alpha A B + beta C on W's block), so no U exists at all; other W
// (bfloat16, float64, fully strided), ranks above kDirectMaxRank and blocks under kDirectMinLen (where BLAS would
// round W more than once) get U_b in a per-thread buffer and kernels/adam.h's update. No m x r, and
// no m x n, temporary is formed.
// 8-bit moments (docs/DESIGN.md §3 "8-bit optimizer moments"): the epilogue is adam_moments_run8 on the block,
// which decodes, updates and encodes whole blocks of B elements of a moment row: a right-side R_b holds whole
// moment rows; a left-side block's len is a multiple of B (but the last), so R_b's rows hold whole blocks too.
//
// Rounding against lowrank_adamw_step_ (csrc/cpu/lowrank_adam.cpp): the same float32 (float64) math, in
// other summation orders: one GEMM over all of d instead of tiles of d, and, through BLAS's epilogue, W's
// update rounded as BLAS rounds beta w + alpha u (its own order, with or without a fused multiply-add) instead
// of w (1 - lr wd) - (lr scale) fl(u) (float32 W; measured: the same error against float64 as that epilogue,
// W's own rounding dominating both). Results agree within the tolerance rule (docs/DESIGN.md §5), not bit for
// bit. Matrices the blocked path does not take run lowrank_adamw_step_'s own kernel inside the same region
// (single-threaded there) and equal it bit for bit on one thread: two-sided projections, moments that are not
// contiguous in the compute dtype (8-bit: codes or absmax not contiguous), an empty projected dimension, sizes
// past BLAS's 32-bit integers, or a torch whose BLAS does not export the Fortran sgemm_/dgemm_ symbols.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../lowrank_adam_impl.h"
#include "../lowrank_ops.h"
#include "adam_epilogues.h"
#include "adam_epilogues8.h"
#include "sketch_impl.h"

// The Fortran BLAS of torch's own build (MKL or OpenBLAS inside libtorch_cpu, which exports them; torch's
// cpublas calls the same functions). Weak: a torch without them still loads this library, and the
// multi-tensor step then runs every matrix through lowrank_adamw_step_'s kernel.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace lowrank_ops {
namespace cpu {
namespace {

// Bytes of the per-thread block buffers (projected rows, and converted G or U rows when needed): half of a
// 1 MiB L2, so the block, P's panel and BLAS's packed panels stay in it.
constexpr int64_t kBlockBytes = 512 * 1024;
// A matrix runs alone on all threads when largest-first scheduling would make the slowest thread take more
// than (1 + kBalanceSlack) x the even share of the per-thread matrices.
constexpr double kBalanceSlack = 0.15;
// W's update through BLAS's C <- alpha A B + beta C (step_blocked) for ranks up to kDirectMaxRank and blocks
// of at least kDirectMinLen columns (rows) of W.
constexpr int64_t kDirectMaxRank = 256;
constexpr int64_t kDirectMinLen = 32;

// ----------------------------------------------------------------------------------------------------------
// Strided matrices and BLAS
// ----------------------------------------------------------------------------------------------------------

// A rows x cols matrix at p[i * s0 + j * s1].
template <typename T>
struct View {
  T* p;
  int64_t rows, cols, s0, s1;
  View<T> t() const { return {p, cols, rows, s1, s0}; }
  View<T> block_rows(int64_t r0, int64_t n) const { return {p + r0 * s0, n, cols, s0, s1}; }
  View<T> block_cols(int64_t c0, int64_t n) const { return {p + c0 * s1, rows, n, s0, s1}; }
};

template <typename T>
View<T> view_of(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.size(0), t.size(1), t.stride(0), t.stride(1)};
}

bool fits_int(int64_t x) { return x >= 0 && x <= INT_MAX; }

// The leading dimension with which column-major BLAS reads `a`: as column-major storage (unit row stride;
// trans 'N'; ld = the column stride) or as the transpose of row-major storage (unit column stride; trans 'T';
// ld = the row stride). A dimension of size 1 takes any stride. -1 when neither applies (no unit stride, or
// an ld below the stored column length, as a stride-0 broadcast has) or when it does not fit BLAS's int.
template <typename T>
int64_t column_major_ld(const View<T>& a, bool* transposed) {
  int64_t ld = -1;
  if (a.s0 == 1 || a.rows == 1) {
    *transposed = false;
    ld = a.cols == 1 ? std::max<int64_t>(a.rows, 1) : (a.s1 >= std::max<int64_t>(a.rows, 1) ? a.s1 : -1);
  }
  if (ld < 0 && (a.s1 == 1 || a.cols == 1)) {
    *transposed = true;
    ld = a.rows == 1 ? std::max<int64_t>(a.cols, 1) : (a.s0 >= std::max<int64_t>(a.cols, 1) ? a.s0 : -1);
  }
  return fits_int(ld) ? ld : -1;
}

template <typename T>
bool blas_usable(const View<T>& a) {
  bool transposed;
  return fits_int(a.rows) && fits_int(a.cols) && column_major_ld(a, &transposed) >= 0;
}

void xgemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
           const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void xgemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
           const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
           const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <typename T>
bool blas_available() {
  return std::is_same<T, float>::value ? sgemm_ != nullptr : dgemm_ != nullptr;
}

// C <- alpha A B + beta C (beta = 0: C is only written), on the calling thread (inside the parallel region BLAS
// runs single-threaded). Every view has a unit stride in one dimension (blas_usable).
template <typename T>
void gemm(T alpha, const View<T>& A, const View<T>& B, T beta, const View<T>& C) {
  if (C.rows == 0 || C.cols == 0) return;
  if (!(C.s0 == 1 || C.rows == 1)) {  // row-major C: C^T = B^T A^T is column-major
    gemm(alpha, B.t(), A.t(), beta, C.t());
    return;
  }
  bool ta, tb, tc;
  const int lda = static_cast<int>(column_major_ld(A, &ta)), ldb = static_cast<int>(column_major_ld(B, &tb));
  const int ldc = static_cast<int>(column_major_ld(C, &tc));
  const int m = static_cast<int>(C.rows), n = static_cast<int>(C.cols), k = static_cast<int>(A.cols);
  xgemm(ta ? "T" : "N", tb ? "T" : "N", &m, &n, &k, &alpha, A.p, &lda, B.p, &ldb, &beta, C.p, &ldc);
}

// ----------------------------------------------------------------------------------------------------------
// One matrix
// ----------------------------------------------------------------------------------------------------------

template <typename T>
bool contiguous_in(const at::Tensor& t) {
  return t.scalar_type() == c10::CppTypeToScalarType<T>::value && t.is_contiguous();
}

// Whether the blocked path takes this matrix in compute type T.
template <typename T>
bool blocked_path_takes(const AdamMatrix& x) {
  if (x.left.present() == x.right.present() || !blas_available<T>()) return false;
  const SideOp& side = x.left.present() ? x.left : x.right;
  const int64_t other = x.left.present() ? x.W.size(1) : x.W.size(0);
  if (side.dim == 0 || other == 0 || !fits_int(side.dim) || !fits_int(side.rank) || !fits_int(other)) return false;
  if (!fits_int(side.rank * std::max<int64_t>(side.dim, other))) return false;
  if (x.quantized()) {  // codes and absmax as adam_moments_run8 reads them
    if (!x.exp_avg.is_contiguous() || !x.exp_avg_sq.is_contiguous() || !x.exp_avg_absmax->is_contiguous() ||
        !x.exp_avg_sq_absmax->is_contiguous())
      return false;
  } else if (!contiguous_in<T>(x.exp_avg) || !contiguous_in<T>(x.exp_avg_sq)) {
    return false;
  }
  if (x.args.adapter && !contiguous_in<T>(*x.delta)) return false;
  return side.kind != kSideMatrix || blas_usable(view_of<T>(side.matrix));
}

// Per-thread buffers, grown to the largest need and kept for the thread's next matrices. torch's allocator
// (64-byte aligned, as BLAS's results may depend on alignment; and visible to torch's memory profiler).
template <typename T>
struct Workspace {
  at::Tensor p, r, g, u;
  T* take(at::Tensor& buffer, int64_t n) {
    if (!buffer.defined() || buffer.numel() < n) {
      buffer.reset();  // the old buffer goes before the larger one comes: the peak is one buffer, not two
      buffer = at::empty({n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
    }
    return buffer.data_ptr<T>();
  }
};

// P (rank x dim) of a generated side into `out` (row-major), on the calling thread.
template <typename T>
void fill_operator(const SideOp& side, T* out) {
  if (side.seeded()) {
    fill_sketch_rows<T>(side.kind, side.seed, side.dim, 0, side.rank, 0, side.dim, out, side.dim);
    return;
  }
  for (int64_t i = 0; i < side.rank; ++i) side.fill_basis_segment<T>(i, 0, side.dim, out + i * side.dim);
}

// `src` (a block of G, any float dtype and strides) as a row-major T matrix in `dst`.
template <typename T>
View<T> converted(const at::Tensor& G, int64_t r0, int64_t c0, int64_t rows, int64_t cols, T* dst) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, G.scalar_type(), "lowrank_adamw_multi_step_ G", [&] {
    const scalar_t* base = G.const_data_ptr<scalar_t>();
    const int64_t s0 = G.stride(0), s1 = G.stride(1);
    for (int64_t i = 0; i < rows; ++i) {
      const scalar_t* row = base + (r0 + i) * s0 + c0 * s1;
      T* out = dst + i * cols;
      for (int64_t j = 0; j < cols; ++j) out[j] = static_cast<T>(row[j * s1]);
    }
  });
  return {dst, rows, cols, cols, 1};
}

template <typename T>
void step_blocked(const AdamMatrix& x, Workspace<T>& ws) {
  const bool left = x.left.present();
  const SideOp& side = left ? x.left : x.right;
  const int64_t r = side.rank, d = side.dim, other = left ? x.W.size(1) : x.W.size(0);
  const lro::AdamStep<T> s = adam_step<T>(x.args);

  View<T> P;
  if (side.kind == kSideMatrix) {
    P = view_of<T>(side.matrix);
  } else {
    P = {ws.take(ws.p, r * d), r, d, d, 1};
    fill_operator<T>(side, P.p);
  }
  const bool g_direct = x.G.scalar_type() == c10::CppTypeToScalarType<T>::value && blas_usable(view_of<T>(x.G));
  // The BLAS epilogue for float32 W only: for float64 (the testing precision) MKL's dgemm rounds beta C + alpha A B
  // to a few ulp of W (measured 4x the error of kernels/adam.h's w (1 - lr wd) - (lr scale) u), while sgemm's
  // error matches that epilogue's, both dominated by W's own rounding -- as long as BLAS adds A B to C once.
  // It adds it in pieces, each rounded at W's magnitude, when K = r spans several of its K panels (measured
  // with MKL: r = 1024; OpenBLAS's and BLIS's panels are 256 deep or more) and in its small-matrix kernels
  // (measured: blocks of 8 columns); those matrices and blocks (kDirectMaxRank, kDirectMinLen) take U_b.
  const bool w_direct = std::is_same<T, float>::value && x.W.scalar_type() == at::kFloat &&
                        blas_usable(view_of<T>(x.W)) && r <= kDirectMaxRank;
  const int64_t per_unit = r + (g_direct ? 0 : d) + (w_direct ? 0 : d);  // buffer elements per unit of `other`
  int64_t block = std::max<int64_t>(1, std::min<int64_t>(other, kBlockBytes / (per_unit * sizeof(T))));
  if (x.quantized() && left && block < other) {  // column chunks of whole moment blocks (B | block)
    block = std::min(other, std::max(x.state_block, block / x.state_block * x.state_block));
  }
  T* R = ws.take(ws.r, block * r);
  T* Gbuf = g_direct ? nullptr : ws.take(ws.g, block * d);
  T* U = w_direct ? nullptr : ws.take(ws.u, block * d);
  T* m = x.quantized() ? nullptr : x.exp_avg.data_ptr<T>();
  T* v = x.quantized() ? nullptr : x.exp_avg_sq.data_ptr<T>();
  T* delta = x.args.adapter ? x.delta->data_ptr<T>() : nullptr;
  // 8-bit moments (r x other left, other x r right): adam_moments_run8 on whole blocks of a row
  const Q8Moments q8 = x.quantized() ? q8_moments(x) : Q8Moments{};
  std::vector<float> scratch(x.quantized() ? 2 * std::min(x.state_block, left ? other : r) : 0);

  for (int64_t c0 = 0; c0 < other; c0 += block) {
    const int64_t len = std::min(block, other - c0);
    if (left) {  // G_b = G[:, c0 : c0 + len] (d x len); R_b = P G_b (r x len, row-major)
      const View<T> Gb = g_direct ? view_of<T>(x.G).block_cols(c0, len) : converted<T>(x.G, 0, c0, d, len, Gbuf);
      const View<T> Rb{R, r, len, len, 1};
      gemm<T>(T(1), P, Gb, T(0), Rb);
      for (int64_t i = 0; i < r; ++i) {  // state rows are rows of the r x n moments
        const int64_t at = i * other + c0;
        T* d_at = delta != nullptr ? delta + at : nullptr;
        if (x.quantized()) {  // c0 and len are multiples of B, or len reaches the row's end
          adam_moments_run8(R + i * len, q8, i, c0, len, d_at, s, scratch.data());
        } else {
          adam_moments_run(R + i * len, m + at, v + at, d_at, len, s);
        }
      }
    } else {  // G_b = G[c0 : c0 + len, :] (len x d); R_b = G_b P^T (len x r, the moments' rows c0..)
      const View<T> Gb = g_direct ? view_of<T>(x.G).block_rows(c0, len) : converted<T>(x.G, c0, 0, len, d, Gbuf);
      const View<T> Rb{R, len, r, r, 1};
      gemm<T>(T(1), Gb, P.t(), T(0), Rb);
      const int64_t at = c0 * r;
      if (x.quantized()) {  // whole rows of the m x r moments
        for (int64_t i = 0; i < len; ++i) {
          adam_moments_run8(R + i * r, q8, c0 + i, 0, r, delta != nullptr ? delta + at + i * r : nullptr, s,
                            scratch.data());
        }
      } else {
        adam_moments_run(R, m + at, v + at, delta != nullptr ? delta + at : nullptr, len * r, s);
      }
    }
    // W_b <- weight_multiplier W_b - update_scale U_b, U_b = P^T N_b (left) or N_b P (right)
    const View<T> A = left ? P.t() : View<T>{R, len, r, r, 1};
    const View<T> B = left ? View<T>{R, r, len, len, 1} : P;
    if (w_direct && len >= kDirectMinLen) {
      const View<T> W = view_of<T>(x.W);
      gemm<T>(-s.update_scale, A, B, s.weight_multiplier, left ? W.block_cols(c0, len) : W.block_rows(c0, len));
      continue;
    }
    const int64_t rows = left ? d : len, cols = left ? len : d;
    T* Ub = w_direct ? ws.take(ws.u, len * d) : U;  // a direct matrix's short block: at most kDirectMinLen x d
    gemm<T>(T(1), A, B, T(0), View<T>{Ub, rows, cols, cols, 1});
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.W.scalar_type(), "lowrank_adamw_multi_step_ W", [&] {
      scalar_t* w = x.W.data_ptr<scalar_t>() + (left ? c0 * x.W.stride(1) : c0 * x.W.stride(0));
      update_rows<scalar_t, T>(w, x.W.stride(0), x.W.stride(1), rows, cols, Ub, s);
    });
  }
}

// ----------------------------------------------------------------------------------------------------------
// The call
// ----------------------------------------------------------------------------------------------------------

bool compute_is_double(const AdamMatrix& x) { return x.W.scalar_type() == at::kDouble; }

bool blocked(const AdamMatrix& x) {
  return compute_is_double(x) ? blocked_path_takes<double>(x) : blocked_path_takes<float>(x);
}

// Multiply-adds of the matrix's step (its two or four GEMMs), the schedule's measure of work.
double cost(const AdamMatrix& x) {
  const double m = static_cast<double>(x.W.size(0)), n = static_cast<double>(x.W.size(1));
  const double r1 = x.left.present() ? static_cast<double>(x.left.rank) : 0.0;
  const double r2 = x.right.present() ? static_cast<double>(x.right.rank) : 0.0;
  if (r1 > 0 && r2 > 0) return 2 * (std::min(m * n * r2 + r1 * m * r2, r1 * m * n + r1 * n * r2));
  return 2 * m * n * (r1 + r2) + m * n;
}

// The slowest thread's work when `threads` threads take the items (costs sorted descending) largest first,
// each the next one when it is free.
double greedy_makespan(const std::vector<double>& costs, int threads) {
  std::vector<double> load(static_cast<size_t>(threads), 0.0);
  for (double c : costs) *std::min_element(load.begin(), load.end()) += c;
  return *std::max_element(load.begin(), load.end());
}

struct ThreadState {
  Workspace<float> f;
  Workspace<double> d;
};

void step_one(const AdamMatrix& x, ThreadState& state) {
  if (!blocked(x)) {
    run_adam_step(kAdamDevice, x);
  } else if (compute_is_double(x)) {
    step_blocked<double>(x, state.d);
  } else {
    step_blocked<float>(x, state.f);
  }
}

}  // namespace

void lowrank_adamw_multi_step_(
    const std::vector<at::Tensor>& W, const std::vector<at::Tensor>& G, const std::vector<at::Tensor>& exp_avg,
    const std::vector<at::Tensor>& exp_avg_sq, const std::vector<at::Tensor>& delta,
    const std::vector<std::string>& left_kind, const std::vector<int64_t>& left_seed,
    const std::vector<int64_t>& left_rank, const std::vector<std::optional<at::Tensor>>& left_matrix,
    const std::vector<std::string>& right_kind, const std::vector<int64_t>& right_seed,
    const std::vector<int64_t>& right_rank, const std::vector<std::optional<at::Tensor>>& right_matrix,
    const std::vector<double>& lr, const std::vector<double>& beta1, const std::vector<double>& beta2,
    const std::vector<double>& eps, const std::vector<double>& weight_decay, const std::vector<int64_t>& step,
    const std::vector<double>& scale, const std::vector<std::string>& wd_mode) {
  lowrank_adamw_multi_step8_(W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix,
                             right_kind, right_seed, right_rank, right_matrix, lr, beta1, beta2, eps, weight_decay,
                             step, scale, wd_mode, {}, {}, {});
}

void lowrank_adamw_multi_step8_(
    const std::vector<at::Tensor>& W, const std::vector<at::Tensor>& G, const std::vector<at::Tensor>& exp_avg,
    const std::vector<at::Tensor>& exp_avg_sq, const std::vector<at::Tensor>& delta,
    const std::vector<std::string>& left_kind, const std::vector<int64_t>& left_seed,
    const std::vector<int64_t>& left_rank, const std::vector<std::optional<at::Tensor>>& left_matrix,
    const std::vector<std::string>& right_kind, const std::vector<int64_t>& right_seed,
    const std::vector<int64_t>& right_rank, const std::vector<std::optional<at::Tensor>>& right_matrix,
    const std::vector<double>& lr, const std::vector<double>& beta1, const std::vector<double>& beta2,
    const std::vector<double>& eps, const std::vector<double>& weight_decay, const std::vector<int64_t>& step,
    const std::vector<double>& scale, const std::vector<std::string>& wd_mode,
    const std::vector<at::Tensor>& exp_avg_absmax, const std::vector<at::Tensor>& exp_avg_sq_absmax,
    const std::vector<int64_t>& state_block_size) {
  const std::vector<AdamMatrix> matrices =
      check_multi_step_args(W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix, right_kind,
                            right_seed, right_rank, right_matrix, lr, beta1, beta2, eps, weight_decay, step, scale,
                            wd_mode, exp_avg_absmax, exp_avg_sq_absmax, state_block_size);
  if (matrices.empty()) return;
  TORCH_CHECK(matrices[0].W.device().is_cpu(), "lowrank_ops.lowrank_adamw_multi_step_: the CPU kernel takes CPU "
              "tensors, got ", matrices[0].W.device());

  // Largest first; equal costs keep the call's order (matrices of one group stay together).
  std::vector<size_t> order(matrices.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::vector<double> costs(matrices.size());
  for (size_t i = 0; i < matrices.size(); ++i) costs[i] = cost(matrices[i]);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return costs[a] > costs[b]; });

  // The largest matrices run alone on all threads until the rest balance over the threads.
  const int threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  size_t alone = 0;
  if (threads > 1) {
    std::vector<double> rest(order.size());
    for (size_t i = 0; i < order.size(); ++i) rest[i] = costs[order[i]];
    double total = std::accumulate(rest.begin(), rest.end(), 0.0);
    while (alone < rest.size()) {
      const std::vector<double> tail(rest.begin() + static_cast<std::ptrdiff_t>(alone), rest.end());
      if (greedy_makespan(tail, threads) <= (1.0 + kBalanceSlack) * total / threads) break;
      total -= rest[alone++];
    }
  }
  // (grouped: matrices of one shape, kinds and step scalars share one moment pass, the driver's form that the
  // CUDA kernel runs for every matrix)
  std::vector<AdamMatrix> large;
  for (size_t i = 0; i < alone; ++i) large.push_back(matrices[order[i]]);
  run_adam_steps_grouped(kAdamDevice, large);

  std::atomic<size_t> next{alone};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // worker threads lack the caller's dispatch TLS
    ThreadState state;
    for (size_t i = next++; i < order.size(); i = next++) step_one(matrices[order[i]], state);
  });
}

}  // namespace cpu
}  // namespace lowrank_ops
