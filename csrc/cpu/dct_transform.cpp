// CPU kernels of the DCT projections (docs/DESIGN.md §3 "DCT" and "Subsampled randomized DCT"; declared
// in csrc/lowrank_ops.h, CPU only): with P[i, t] = sign_t D[indices[i], t] (r x d; sign_t = 1 without
// `signs`), the sr_dct projection's P = S C D,
//   dct_project(G, indices, side, signs)          P G (side "left", d = G.size(0)) or G P^T ("right")
//   dct_unproject(R, indices, dim, side, signs)   P^T R ("left", R r x n) or R P ("right", R m x r)
// computed in compute_dtype (float32, float64 for float64 data) and returned in out_dtype (default: the
// input's). Two ways, picked by `method` ("auto": the measured faster one, see use_fft):
//   "gemm"  tiles of P generated into cache (kernels/dct.h, times the signs) and multiplied by BLAS:
//           2 r d flops per signal;
//   "fft"   the DCT of every signal through the FFT (csrc/cpu/dct_cpu.h): project reads the r selected
//           coefficients of D (sign x); unproject scatters the r coefficients into the half spectrum of the
//           inverse transform, one irfft per signal, and multiplies by the signs: O(d log d) per signal,
//           whatever r.
// A signal is a column of the d-long side of the input (left) or a row (right). The FFT path runs chunks of
// signals in one parallel region; each chunk writes its own outputs, so the result does not depend on the
// number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <optional>
#include <vector>

#include "../../kernels/dct.h"
#include "../dct_args.h"
#include "../lowrank_ops.h"
#include "dct_cpu.h"

namespace lowrank_ops {
namespace cpu {
namespace {

// "auto": the FFT path when r >= kFftRankPerLog2 x log2(d), else the GEMM path. Per signal the GEMM
// costs ~2 r d flops, the FFT ~c d log2(d) plus the gather and scatter passes, so the crossover rank
// grows like log2(d); the constant is measured (bench/bench_dct.py --part transform, see the table below).
constexpr double kFftRankPerLog2 = 4.0;

bool use_fft(const DctTransformArgs& a) {
  if (a.method != DctMethod::kAuto) return a.method == DctMethod::kFft;
  return static_cast<double>(a.rank) >= kFftRankPerLog2 * std::log2(static_cast<double>(a.dim));
}

// The r selected rows as int64, and the signs in the compute type T (or an undefined tensor).
struct Rows {
  at::Tensor index;  // int64 [r], contiguous
  at::Tensor signs;  // T [d], contiguous, or undefined
};

Rows rows_of(const at::Tensor& indices, const std::optional<at::Tensor>& signs, at::ScalarType T) {
  return {indices.to(at::kLong).contiguous(),
          signs.has_value() ? signs->to(T).contiguous() : at::Tensor()};
}

// P[i0 : i0 + tile.size(0), :] into `tile` (T, contiguous): basis rows, times the signs.
void fill_tile(const at::Tensor& tile, const Rows& rows, int64_t dim, int64_t i0) {
  fill_rows(tile, dim, 0, rows.index.const_data_ptr<int64_t>() + i0);
  if (rows.signs.defined()) tile.mul_(rows.signs.unsqueeze(0));
}

int64_t tile_rows(int64_t dim, int64_t rank) { return std::min(rank, std::max<int64_t>(1, kGemmTileElems / dim)); }

// --- GEMM paths --------------------------------------------------------------------------------------------

at::Tensor project_gemm(const at::Tensor& X, const DctTransformArgs& a, const Rows& rows, at::ScalarType T) {
  const at::Tensor Xc = X.to(T);
  at::Tensor out = a.left ? at::empty({a.rank, a.other}, X.options().dtype(T))
                          : at::empty({a.other, a.rank}, X.options().dtype(T));
  const int64_t kb = tile_rows(a.dim, a.rank);
  at::Tensor tile_buf = at::empty({kb, a.dim}, X.options().dtype(T));
  for (int64_t i0 = 0; i0 < a.rank; i0 += kb) {
    const int64_t rows_now = std::min(kb, a.rank - i0);
    const at::Tensor tile = tile_buf.narrow(0, 0, rows_now);
    fill_tile(tile, rows, a.dim, i0);
    if (a.left) {
      at::Tensor block = out.narrow(0, i0, rows_now);  // rows of a contiguous result: contiguous
      at::mm_out(block, tile, Xc);
    } else {
      out.narrow(1, i0, rows_now).copy_(at::mm(Xc, tile.t()));
    }
  }
  return out;
}

at::Tensor unproject_gemm(const at::Tensor& X, const DctTransformArgs& a, const Rows& rows, at::ScalarType T) {
  const at::Tensor Xc = X.to(T);
  at::Tensor out = a.left ? at::zeros({a.dim, a.other}, X.options().dtype(T))
                          : at::zeros({a.other, a.dim}, X.options().dtype(T));
  const int64_t kb = tile_rows(a.dim, a.rank);
  at::Tensor tile_buf = at::empty({kb, a.dim}, X.options().dtype(T));
  for (int64_t i0 = 0; i0 < a.rank; i0 += kb) {
    const int64_t rows_now = std::min(kb, a.rank - i0);
    const at::Tensor tile = tile_buf.narrow(0, 0, rows_now);
    fill_tile(tile, rows, a.dim, i0);
    if (a.left)
      out.addmm_(tile.t(), Xc.narrow(0, i0, rows_now));  // P^T R = sum over tiles of tile^T R[tile rows]
    else
      out.addmm_(Xc.narrow(1, i0, rows_now), tile);  // R P = sum over tiles of R[:, tile rows] tile
  }
  return out;
}

// --- FFT paths ---------------------------------------------------------------------------------------------

// For each selected row i, the frequency kk_i in [0, d/2] of the half spectrum it reads (project) or writes
// (unproject), and the complex weight (wr_i, wi_i) of that bin, all from float64 and rounded once to T.
//   project:   D[k] x = c_k X_k with X_k = Re Z_kk (2k <= d, kk = k) or -Im Z_kk (2k > d, kk = d - k),
//              Z = tw V (tw = exp(-i pi kk / (2d))): value = wr Re V_kk + wi Im V_kk.
//   unproject: y = sum_i a_i D[k_i] is the inverse DCT-II of X with X_0 = d c_0 a, X_k = (d/2) c_k a
//              (x_t = (X_0 + 2 sum_k X_k cos(...)) / d), i.e. e_0 = sqrt(d), e_k = sqrt(d/2); the bin gets
//              V_kk += a_i (wr + i wi) with (wr + i wi) = e_k conj(tw) times 1 (2k < d), (1 - i) (2k = d:
//              Z_{d/2} = X_{d/2} - i X_{d/2}) or -i (2k > d: Z_kk = -i X_{d-kk}).
template <typename T>
struct Bins {
  std::vector<int64_t> kk;
  std::vector<T> wr, wi;
};

template <typename T>
Bins<T> bins(const Rows& rows, int64_t d, bool project) {
  const dct_fft::Twiddles<double> tw(d);
  const int64_t r = rows.index.numel();
  const int64_t* index = rows.index.const_data_ptr<int64_t>();
  Bins<T> b{std::vector<int64_t>(r), std::vector<T>(r), std::vector<T>(r)};
  for (int64_t i = 0; i < r; ++i) {
    const int64_t k = index[i];
    const bool low = 2 * k <= d;
    const int64_t kk = low ? k : d - k;
    const double c = lro::dct_row_scale<double>(k, d), tr = tw.re[kk], ti = tw.im[kk];
    double wr, wi;
    if (project) {
      wr = low ? c * tr : -c * ti;
      wi = low ? -c * ti : -c * tr;
    } else {
      const double e = k == 0 ? std::sqrt(static_cast<double>(d)) : std::sqrt(0.5 * static_cast<double>(d));
      const double cr = e * tr, ci = -e * ti;  // e conj(tw)
      if (2 * k < d) {
        wr = cr, wi = ci;
      } else if (2 * k == d) {
        wr = cr + ci, wi = ci - cr;  // (cr + i ci)(1 - i)
      } else {
        wr = ci, wi = -cr;  // (cr + i ci)(-i)
      }
    }
    b.kk[i] = kk;
    b.wr[i] = static_cast<T>(wr);
    b.wi[i] = static_cast<T>(wi);
  }
  return b;
}

// Runs body(j0, w) over chunks of `chunk` signals of `other` in one parallel region (no reduction: each
// chunk writes its own outputs).
template <typename Body>
void for_chunks(int64_t other, int64_t chunk, Body body) {
  const int64_t chunks = (other + chunk - 1) / chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // worker threads lack the caller's dispatch TLS
    for (int64_t c = c_begin; c < c_end; ++c) body(c * chunk, std::min(chunk, other - c * chunk));
  });
}

template <typename T>
at::Tensor project_fft(const at::Tensor& X, const DctTransformArgs& a, const Rows& rows) {
  const int64_t d = a.dim, r = a.rank, other = a.other, chunk = std::max<int64_t>(1, kFftChunkElems / d);
  const at::ScalarType t_type = c10::CppTypeToScalarType<T>::value;
  at::Tensor out = a.left ? at::empty({r, other}, X.options().dtype(t_type))
                          : at::empty({other, r}, X.options().dtype(t_type));
  const std::vector<int64_t> order = dct_fft::makhoul_order(d);
  const Bins<T> b = bins<T>(rows, d, /*project=*/true);
  const T* sign = rows.signs.defined() ? rows.signs.const_data_ptr<T>() : nullptr;
  const int64_t s_t = X.stride(a.left ? 0 : 1), s_j = X.stride(a.left ? 1 : 0);
  T* op = out.data_ptr<T>();
  for_chunks(other, chunk, [&](int64_t j0, int64_t w) {
    at::Tensor v = at::empty({w, d}, X.options().dtype(t_type));
    dct_fft::gather_reordered<T>(X, s_t, s_j, j0, w, order, sign, v.data_ptr<T>());
    const at::Tensor z = at::view_as_real(at::fft_rfft(v, std::nullopt, 1));  // [w, d/2 + 1, 2]
    const T* zp = z.const_data_ptr<T>();
    const int64_t zj = z.stride(0), zk = z.stride(1);
    for (int64_t i = 0; i < r; ++i) {
      const T* zi = zp + b.kk[i] * zk;
      const T wr = b.wr[i], wi = b.wi[i];
      for (int64_t j = 0; j < w; ++j) {
        const T value = wr * zi[j * zj] + wi * zi[j * zj + 1];
        if (a.left)
          op[i * other + j0 + j] = value;
        else
          op[(j0 + j) * r + i] = value;
      }
    }
  });
  return out;
}

template <typename T>
at::Tensor unproject_fft(const at::Tensor& X, const DctTransformArgs& a, const Rows& rows) {
  const int64_t d = a.dim, r = a.rank, other = a.other, h = d / 2 + 1;
  const int64_t chunk = std::max<int64_t>(1, kFftChunkElems / d);
  const at::ScalarType t_type = c10::CppTypeToScalarType<T>::value;
  at::Tensor out = a.left ? at::empty({d, other}, X.options().dtype(t_type))
                          : at::empty({other, d}, X.options().dtype(t_type));
  const std::vector<int64_t> order = dct_fft::makhoul_order(d);
  const Bins<T> b = bins<T>(rows, d, /*project=*/false);
  const T* sign = rows.signs.defined() ? rows.signs.const_data_ptr<T>() : nullptr;
  // coefficient i of signal j at X[i * s_i + j * s_j]
  const int64_t s_i = X.stride(a.left ? 0 : 1), s_j = X.stride(a.left ? 1 : 0);
  T* op = out.data_ptr<T>();
  for_chunks(other, chunk, [&](int64_t j0, int64_t w) {
    at::Tensor spectrum = at::zeros({w, h, 2}, X.options().dtype(t_type));
    T* sp = spectrum.data_ptr<T>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "lowrank_ops::dct_scatter", [&] {
      const scalar_t* src = X.const_data_ptr<scalar_t>() + j0 * s_j;
      for (int64_t i = 0; i < r; ++i) {
        T* bin = sp + b.kk[i] * 2;
        for (int64_t j = 0; j < w; ++j) {
          const T coefficient = static_cast<T>(src[i * s_i + j * s_j]);
          bin[j * h * 2] += coefficient * b.wr[i];
          bin[j * h * 2 + 1] += coefficient * b.wi[i];
        }
      }
    });
    const at::Tensor v = at::fft_irfft(at::view_as_complex(spectrum), d, 1).contiguous();  // [w, d]
    const T* vp = v.const_data_ptr<T>();
    for (int64_t i = 0; i < d; ++i) {
      const int64_t t = order[i];
      const T s = sign != nullptr ? sign[t] : T(1);
      for (int64_t j = 0; j < w; ++j) {
        if (a.left)
          op[t * other + j0 + j] = s * vp[j * d + i];
        else
          op[(j0 + j) * d + t] = s * vp[j * d + i];
      }
    }
  });
  return out;
}

at::Tensor transform(const char* op, const at::Tensor& X, const at::Tensor& indices, int64_t dim,
                     c10::string_view side, const std::optional<at::Tensor>& signs,
                     std::optional<at::ScalarType> out_dtype, c10::string_view method, bool project) {
  const DctTransformArgs a = check_transform_args(op, X, indices, dim, side, signs, method, project);
  if (out_dtype.has_value()) check_float_dtype(op, "out_dtype", *out_dtype);
  const at::ScalarType T = compute_dtype(X.scalar_type());
  const Rows rows = rows_of(indices, signs, T);
  at::Tensor out;
  if (!use_fft(a)) {
    out = project ? project_gemm(X, a, rows, T) : unproject_gemm(X, a, rows, T);
  } else {
    AT_DISPATCH_FLOATING_TYPES(T, "lowrank_ops::dct_transform", [&] {
      out = project ? project_fft<scalar_t>(X, a, rows) : unproject_fft<scalar_t>(X, a, rows);
    });
  }
  return out.to(out_dtype.value_or(X.scalar_type()));
}

}  // namespace

at::Tensor dct_project(const at::Tensor& G, const at::Tensor& indices, c10::string_view side,
                       const std::optional<at::Tensor>& signs, std::optional<at::ScalarType> out_dtype,
                       c10::string_view method) {
  return transform("dct_project", G, indices, 0, side, signs, out_dtype, method, /*project=*/true);
}

at::Tensor dct_unproject(const at::Tensor& R, const at::Tensor& indices, int64_t dim, c10::string_view side,
                         const std::optional<at::Tensor>& signs, std::optional<at::ScalarType> out_dtype,
                         c10::string_view method) {
  return transform("dct_unproject", R, indices, dim, side, signs, out_dtype, method, /*project=*/false);
}

}  // namespace cpu
}  // namespace lowrank_ops
