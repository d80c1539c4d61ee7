// CPU kernels of the DCT projections (docs/DESIGN.md §3 "DCT" and "Subsampled randomized DCT"; declared
// in csrc/lowrank_ops.h, CPU only): with P[i, t] = sign_t D[indices[i], t] (r x d; sign_t = 1 without
// `signs`), the sr_dct projection's P = S C D,
//   dct_project(G, indices, side, signs)          P G (side "left", d = G.size(0)) or G P^T ("right")
//   dct_unproject(R, indices, dim, side, signs)   P^T R ("left", R r x n) or R P ("right", R m x r)
// computed in compute_dtype (float32, float64 for float64 data) and returned in out_dtype (default: the
// input's). Two ways, picked by `method` ("auto": the measured faster one for the rank, see use_fft):
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

// "auto": the FFT path from rank kFftMinRankRows / kFftMinRankColumns on, else the GEMM path. Per signal
// the GEMM costs 2 r d flops and the FFT ~c d log2(d) plus the gather and scatter passes, whatever r.
// Measured by bench/bench_dct.py --device cpu --threads 1 --transform-only (bench/results/
// dct_transform_cpu_t1.json; 2-core EPYC, shared, load average ~6: these are noisy to ~30%), median ms
// GEMM / FFT with 4096 signals, project | unproject:
//   signals in rows (side "right" of a contiguous G or R):
//     d =  128: r = 64   1.6 / 1.6 |  2.3 / 3.0      r = 128   5.3 / 3.0 |   4.3 / 3.6
//     d = 1024: r = 64   8.0 / 7.7 |  7.4 / 7.2      r = 128  14.6 / 7.4 |  16.4 / 8.5
//     d = 4096: r = 64    53 / 43  |   86 / 97       r = 128   122 / 55  |   127 / 97
//   signals in columns (side "left"; the FFT runs along the strided dimension):
//     d =  256: r = 128  4.8 / 5.6 |  5.6 / 6.3      r = 256   8.5 / 5.8 |   7.8 / 5.4
//     d = 1024: r = 128   13 / 15  |   17 / 11       r = 256    29 / 16  |    29 / 15
//     d = 4096: r = 64    62 / 113 |  104 / 191      r = 128   171 / 158 |   190 / 189
// The crossover hardly moves with d (the FFT's log2(d) against BLAS getting faster with d): r ~ 64 - 128
// for rows, ~128 - 256 for columns. d = 64 never reached it (r <= d).
constexpr int64_t kFftMinRankRows = 96;
constexpr int64_t kFftMinRankColumns = 160;

// `adjacent`: consecutive signals are adjacent in memory (the input's columns are the signals).
bool use_fft(const DctTransformArgs& a, bool adjacent) {
  if (a.method != DctMethod::kAuto) return a.method == DctMethod::kFft;
  return a.rank >= (adjacent ? kFftMinRankColumns : kFftMinRankRows);
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

// How a chunk of w signals lies in the FFT buffers, chosen to match the data: "entry-major" (the d entries
// of the time buffer, or the d/2 + 1 bins of the spectrum, are its rows and the signals its columns; the
// transform runs along dim 0) when consecutive signals are adjacent in memory (columns of a row-major
// matrix: side "left" of a contiguous G or R), else "signal-major" (one signal per row; the transform runs
// along dim 1). Every loop below then reads and writes along rows.
struct ChunkLayout {
  bool entry_major;
  int64_t w, d, h;
  int64_t fft_dim() const { return entry_major ? 0 : 1; }
  std::vector<int64_t> time_shape() const {  // the time buffer v
    return entry_major ? std::vector<int64_t>{d, w} : std::vector<int64_t>{w, d};
  }
  std::vector<int64_t> bins_shape() const {  // the half spectrum, as real pairs
    return entry_major ? std::vector<int64_t>{h, w, 2} : std::vector<int64_t>{w, h, 2};
  }
  int64_t time(int64_t i, int64_t j) const { return entry_major ? i * w + j : j * d + i; }  // element of v
  int64_t bin(int64_t k, int64_t j) const { return 2 * (entry_major ? k * w + j : j * h + k); }  // real part
};

// The signals of X: entry t (or coefficient i) of signal j at X[t * s_t + j * s_j].
struct Signals {
  int64_t s_t, s_j;
  explicit Signals(const at::Tensor& X, bool left) : s_t(X.stride(left ? 0 : 1)), s_j(X.stride(left ? 1 : 0)) {}
  bool adjacent() const { return s_j < s_t; }
};

// Runs f(i, j) over i in [0, n_i), j in [0, w), with j innermost when `j_inner`.
template <typename F>
void loop2(int64_t n_i, int64_t w, bool j_inner, F f) {
  if (j_inner) {
    for (int64_t i = 0; i < n_i; ++i)
      for (int64_t j = 0; j < w; ++j) f(i, j);
  } else {
    for (int64_t j = 0; j < w; ++j)
      for (int64_t i = 0; i < n_i; ++i) f(i, j);
  }
}

template <typename T>
at::Tensor project_fft(const at::Tensor& X, const DctTransformArgs& a, const Rows& rows) {
  const int64_t d = a.dim, r = a.rank, other = a.other, chunk = std::max<int64_t>(1, kFftChunkElems / d);
  const at::ScalarType t_type = c10::CppTypeToScalarType<T>::value;
  at::Tensor out = a.left ? at::empty({r, other}, X.options().dtype(t_type))
                          : at::empty({other, r}, X.options().dtype(t_type));
  const int64_t o_i = out.stride(a.left ? 0 : 1), o_j = out.stride(a.left ? 1 : 0);  // out (i, j)
  const std::vector<int64_t> order = dct_fft::makhoul_order(d);
  const Bins<T> b = bins<T>(rows, d, /*project=*/true);
  const T* sign = rows.signs.defined() ? rows.signs.const_data_ptr<T>() : nullptr;
  const Signals in(X, a.left);
  T* op = out.data_ptr<T>();
  for_chunks(other, chunk, [&](int64_t j0, int64_t w) {
    const ChunkLayout L{in.adjacent(), w, d, d / 2 + 1};
    at::Tensor v = at::empty(L.time_shape(), X.options().dtype(t_type));
    const int64_t v_i = L.time(1, 0) - L.time(0, 0), v_j = L.time(0, 1) - L.time(0, 0);
    dct_fft::gather_reordered<T>(X, in.s_t, in.s_j, j0, w, order, sign, v.data_ptr<T>(), v_i, v_j);
    const at::Tensor z = at::view_as_real(at::fft_rfft(v, std::nullopt, L.fft_dim())).contiguous();
    const T* zp = z.const_data_ptr<T>();
    // out (i, j) = wr_i Re V_j[kk_i] + wi_i Im V_j[kk_i]
    loop2(r, w, L.entry_major, [&](int64_t i, int64_t j) {
      const T* zij = zp + L.bin(b.kk[i], j);
      op[i * o_i + (j0 + j) * o_j] = b.wr[i] * zij[0] + b.wi[i] * zij[1];
    });
  });
  return out;
}

template <typename T>
at::Tensor unproject_fft(const at::Tensor& X, const DctTransformArgs& a, const Rows& rows) {
  const int64_t d = a.dim, r = a.rank, other = a.other, chunk = std::max<int64_t>(1, kFftChunkElems / d);
  const at::ScalarType t_type = c10::CppTypeToScalarType<T>::value;
  at::Tensor out = a.left ? at::empty({d, other}, X.options().dtype(t_type))
                          : at::empty({other, d}, X.options().dtype(t_type));
  const int64_t o_t = out.stride(a.left ? 0 : 1), o_j = out.stride(a.left ? 1 : 0);  // out (t, j)
  const std::vector<int64_t> order = dct_fft::makhoul_order(d);
  const Bins<T> b = bins<T>(rows, d, /*project=*/false);
  const T* sign = rows.signs.defined() ? rows.signs.const_data_ptr<T>() : nullptr;
  const Signals in(X, a.left);  // coefficient i of signal j at X[i * s_t + j * s_j]
  T* op = out.data_ptr<T>();
  for_chunks(other, chunk, [&](int64_t j0, int64_t w) {
    const ChunkLayout L{in.adjacent(), w, d, d / 2 + 1};
    at::Tensor spectrum = at::zeros(L.bins_shape(), X.options().dtype(t_type));
    T* sp = spectrum.data_ptr<T>();
    // bin kk_i of signal j += a_ij (wr_i + i wi_i), in the order i for each signal (repeated rows add up)
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "lowrank_ops::dct_scatter", [&] {
      const scalar_t* src = X.const_data_ptr<scalar_t>() + j0 * in.s_j;
      loop2(r, w, L.entry_major, [&](int64_t i, int64_t j) {
        const T coefficient = static_cast<T>(src[i * in.s_t + j * in.s_j]);
        T* bin = sp + L.bin(b.kk[i], j);
        bin[0] += coefficient * b.wr[i];
        bin[1] += coefficient * b.wi[i];
      });
    });
    const at::Tensor v = at::fft_irfft(at::view_as_complex(spectrum), d, L.fft_dim()).contiguous();
    const T* vp = v.const_data_ptr<T>();
    // out (t, j) = sign_t v_j[i] for t = order[i]
    loop2(d, w, L.entry_major, [&](int64_t i, int64_t j) {
      const int64_t t = order[i];
      op[t * o_t + (j0 + j) * o_j] = (sign != nullptr ? sign[t] : T(1)) * vp[L.time(i, j)];
    });
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
  if (!use_fft(a, Signals(X, a.left).adjacent())) {
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
