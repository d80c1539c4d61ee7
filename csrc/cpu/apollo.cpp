// CPU kernel of the fused APOLLO step (lowrank_ops/ops/apollo.py; per-element math in kernels/apollo.h).
// Two reads of G and one read and write of W; no m x n temporary:
//   1. R = c P G (left) or c G P^T (right): a seeded P is generated tile by tile inside cpu::sketch_project,
//      and each slab of G that a tile's GEMM reads adds to ||G_j||^2 (the limiter's norm g, per kept channel j,
//      in double) right after, while it is in cache; an explicit P multiplies G a slab of rows / columns
//      (64 Ki elements) at a time (only a slab of G is ever converted), and ||G_j||^2 is a pass of its own;
//   2. the moments of R, N and the squared channel norms of N and R (double), the scales s_j, g and lam;
//   3. W <- (W - (a / lam) s_j G) (1 - lr wd), rows in parallel, one rounding to W's dtype.
// Every loop walks memory contiguously and vectorizes: sums along a row go to kLanes independent partial sums
// (column j to lane j mod kLanes, the lanes added in order at the end), so their order depends neither on the
// slabs nor on the threads; N = m / (sqrt(v) + eps) runs as three loops (moments, sqrt, quotient) so that each
// vectorizes (sqrt_run). The multi-tensor step (csrc/apollo.cpp) runs this kernel on
// whole matrices in one parallel region.
#pragma GCC optimize("fp-contract=off")
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../apollo_impl.h"
#include "sketch_impl.h"

namespace lowrank_ops {
namespace cpu {
namespace {

// Independent partial sums per row sum: enough for the adds of several SIMD registers of doubles in flight.
constexpr int64_t kLanes = 16;
// Elements of G per converted slab of the explicit-P pass over G (256 KiB of float32).
constexpr int64_t kSlabElems = 64 * 1024;

template <typename T>
double square(T x) {
  const double y = static_cast<double>(x);
  return y * y;
}

// out[j] += x[i * s0 + j]^2 for i < rows, j < len, in i's order for each j (four rows per pass over out, each
// sum still added row after row).
template <typename T>
inline __attribute__((always_inline)) void column_squares(const T* x, int64_t rows, int64_t s0, int64_t len,
                                                          double* __restrict__ out) {
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    const T* __restrict__ x0 = x + i * s0;
    const T* __restrict__ x1 = x0 + s0;
    const T* __restrict__ x2 = x1 + s0;
    const T* __restrict__ x3 = x2 + s0;
    for (int64_t j = 0; j < len; ++j) out[j] = out[j] + square(x0[j]) + square(x1[j]) + square(x2[j]) + square(x3[j]);
  }
  for (; i < rows; ++i) {
    const T* __restrict__ xi = x + i * s0;
    for (int64_t j = 0; j < len; ++j) out[j] += square(xi[j]);
  }
}

// lanes[t mod kLanes] += x[t * s]^2 for t < len, lane by lane in t's order.
template <typename T>
inline __attribute__((always_inline)) void lane_squares(const T* x, int64_t len, int64_t s,
                                                        double* __restrict__ lanes) {
  int64_t t = 0;
  for (; t + kLanes <= len; t += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += square(x[(t + l) * s]);
  for (int64_t l = 0; t + l < len; ++l) lanes[l] += square(x[(t + l) * s]);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LRO_X86_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LRO_X86_CLONES
#endif

// The two above for float32 (G's slabs, R and N), compiled for AVX-512 and AVX2 besides the baseline (the
// file is compiled without floating-point contraction, so every clone returns the same bits), and for double.
LRO_X86_CLONES void add_squares(const float* x, int64_t rows,
                                                                               int64_t s0, int64_t len,
                                                                               double* out) {
  column_squares(x, rows, s0, len, out);
}
void add_squares(const double* x, int64_t rows, int64_t s0, int64_t len, double* out) {
  column_squares(x, rows, s0, len, out);
}
LRO_X86_CLONES void add_lanes(const float* x, int64_t len,
                                                                             double* lanes) {
  lane_squares(x, len, 1, lanes);
}
void add_lanes(const double* x, int64_t len, double* lanes) { lane_squares(x, len, 1, lanes); }

double sum_lanes(const double* lanes) {
  double total = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// out[j] = sqrt(x[j]) for j < len, correctly rounded: a loop of its own, which vectorizes (the extension is built
// with -fno-math-errno, so std::sqrt is the hardware instruction).
template <typename T>
void sqrt_run(const T* __restrict__ x, T* __restrict__ out, int64_t len) {
  for (int64_t j = 0; j < len; ++j) out[j] = std::sqrt(x[j]);
}

// ||G_j||^2 of the kept channels, added slab by slab: a slab is G's rows (left: the channels are the columns)
// or columns (right: the channels are the rows) k0 .. k0 + width - 1, restricted to a range of channels.
// Left: one sum per column, down the rows; right: kLanes partial sums per row. Threads may add disjoint channel
// ranges of one slab at once.
class ChannelSquares {
 public:
  ChannelSquares(bool left, int64_t channels) : left_(left), sums_(left ? channels : channels * kLanes, 0.0) {}

  // `slab` (float or double): channels c0 .. c0 + slab's channel count - 1 of the slab at k0 (k0 a multiple of
  // kLanes, so that column j of G always adds to lane j mod kLanes).
  void add(const at::Tensor& slab, int64_t k0, int64_t c0) {
    TORCH_INTERNAL_ASSERT(k0 % kLanes == 0);
    AT_DISPATCH_FLOATING_TYPES(slab.scalar_type(), "lowrank_apollo_step_ channel norms", [&] {
      const scalar_t* x = slab.const_data_ptr<scalar_t>();
      const int64_t rows = slab.size(0), cols = slab.size(1), s0 = slab.stride(0), s1 = slab.stride(1);
      if (left_ && s1 == 1) {
        add_squares(x, rows, s0, cols, sums_.data() + c0);
        return;
      }
      for (int64_t i = 0; i < rows; ++i) {
        if (left_) {
          for (int64_t j = 0; j < cols; ++j) sums_[c0 + j] += square(x[i * s0 + j * s1]);
        } else if (s1 == 1) {
          add_lanes(x + i * s0, cols, sums_.data() + (c0 + i) * kLanes);
        } else {
          lane_squares(x + i * s0, cols, s1, sums_.data() + (c0 + i) * kLanes);
        }
      }
    });
  }

  // The squared norm of every channel.
  std::vector<double> totals() const {
    if (left_) return sums_;
    std::vector<double> out(sums_.size() / kLanes);
    for (size_t i = 0; i < out.size(); ++i) out[i] = sum_lanes(sums_.data() + i * kLanes);
    return out;
  }

 private:
  bool left_;
  std::vector<double> sums_;
};

// R = c P G / c G P^T and ||G_j||^2: a seeded P adds each slab of G to the norms inside the projection (each thread
// the channels matching its share of P's rows), an explicit P is followed by a pass over G in slabs.
at::Tensor project_with_norms(const ApolloArgs& args, const at::Tensor& G, c10::string_view kind, int64_t seed,
                              int64_t rank, const std::optional<at::Tensor>& matrix, double proj_scale,
                              ChannelSquares& squares) {
  const bool left = args.left;
  const int64_t channels = args.channels;
  if (args.seeded) {
    const auto visit = [&](const at::Tensor& slab, int64_t k0, int64_t begin, int64_t end) {
      const int64_t c0 = begin * channels / rank, c1 = end * channels / rank;
      if (c1 > c0) squares.add(left ? slab.narrow(1, c0, c1 - c0) : slab.narrow(0, c0, c1 - c0), k0, c0);
    };
    const auto project = [&](const at::Tensor& g, int64_t s, int64_t r, c10::string_view k, c10::string_view side,
                             std::optional<at::ScalarType> dtype) {
      return sketch_project_visiting(g, s, r, k, side, dtype, visit);
    };
    return apollo_project(args, G, kind, seed, rank, matrix, proj_scale, project);
  }
  at::Tensor R = apollo_project(args, G, kind, seed, rank, matrix, proj_scale, &sketch_project);
  const int64_t d = left ? G.size(0) : G.size(1), other = left ? G.size(1) : G.size(0);
  const int64_t slab = std::max<int64_t>(kLanes, kSlabElems / other / kLanes * kLanes);
  at::parallel_for(0, channels, 16, [&](int64_t c0, int64_t c1) {
    const at::Tensor part = left ? G.narrow(1, c0, c1 - c0) : G.narrow(0, c0, c1 - c0);
    for (int64_t k0 = 0; k0 < d; k0 += slab) {
      const int64_t w = std::min(slab, d - k0);
      squares.add((left ? part.narrow(0, k0, w) : part.narrow(1, k0, w)).to(args.compute), k0, c0);
    }
  });
  return R;
}

// The moments of R's entries [i0, i1) x [j0, j1) in place, and the squared channel norms of N and R: left, the
// channels are R's columns (added to n_sq[j], r_sq[j] down the rows); right, they are R's rows (j0 = 0, j1 =
// cols: n_sq[i], r_sq[i] from kLanes partial sums). cols: R's row length.
template <typename T>
void moments_rows(const T* r, T* m, T* v, int64_t cols, int64_t i0, int64_t i1, int64_t j0, int64_t j1, bool left,
                  const lro::ApolloBetas<T>& betas, double* n_sq, double* r_sq) {
  const int64_t len = j1 - j0;
  std::vector<T> n_row(len);  // N's entries of the row
  T* __restrict__ nv = n_row.data();
  for (int64_t i = i0; i < i1; ++i) {
    const T* __restrict__ ri = r + i * cols + j0;
    T* __restrict__ mi = m + i * cols + j0;
    T* __restrict__ vi = v + i * cols + j0;
    for (int64_t j = 0; j < len; ++j) lro::apollo_update_moments(ri[j], mi + j, vi + j, betas);
    sqrt_run(vi, nv, len);
    for (int64_t j = 0; j < len; ++j) nv[j] = lro::apollo_normalized(mi[j], nv[j], betas.eps);
    if (left) {
      add_squares(nv, 1, len, len, n_sq + j0);
      add_squares(ri, 1, len, len, r_sq + j0);
    } else {
      double n_lanes[kLanes] = {}, r_lanes[kLanes] = {};
      add_lanes(nv, len, n_lanes);
      add_lanes(ri, len, r_lanes);
      n_sq[i] = sum_lanes(n_lanes);
      r_sq[i] = sum_lanes(r_lanes);
    }
  }
}

// W <- (W - c_s G) decay for rows [i0, i1), c_s = cs[j] (left) or cs[i] (right).
template <typename W_t, typename G_t, typename T>
void update_rows(W_t* w, int64_t w0, int64_t w1, const G_t* g, int64_t g0, int64_t g1, int64_t cols, int64_t i0,
                 int64_t i1, bool left, const T* cs, T decay) {
  for (int64_t i = i0; i < i1; ++i) {
    W_t* __restrict__ wi = w + i * w0;
    const G_t* __restrict__ gi = g + i * g0;
    if (w1 == 1 && g1 == 1) {
      if (left) {
        for (int64_t j = 0; j < cols; ++j)
          wi[j] = static_cast<W_t>(
              lro::apollo_weight_update(static_cast<T>(wi[j]), static_cast<T>(gi[j]), cs[j], decay));
      } else {
        const T c_s = cs[i];
        for (int64_t j = 0; j < cols; ++j)
          wi[j] = static_cast<W_t>(
              lro::apollo_weight_update(static_cast<T>(wi[j]), static_cast<T>(gi[j]), c_s, decay));
      }
    } else {
      for (int64_t j = 0; j < cols; ++j) {
        W_t* wij = wi + j * w1;
        *wij = static_cast<W_t>(lro::apollo_weight_update(static_cast<T>(*wij), static_cast<T>(gi[j * g1]),
                                                          cs[left ? j : i], decay));
      }
    }
  }
}

}  // namespace

void lowrank_apollo_step_(const at::Tensor& W, const at::Tensor& G, const at::Tensor& exp_avg,
                          const at::Tensor& exp_avg_sq, const at::Tensor& limiter_norm, c10::string_view side,
                          c10::string_view kind, int64_t seed, int64_t rank, const std::optional<at::Tensor>& matrix,
                          double proj_scale, double lr, double beta1, double beta2, double eps, double weight_decay,
                          int64_t step, double scale, c10::string_view scale_type, bool limiter, bool correct_bias) {
  const ApolloArgs args = check_apollo_args(W, G, exp_avg, exp_avg_sq, limiter_norm, side, kind, rank, matrix,
                                            proj_scale, lr, beta1, beta2, eps, weight_decay, step, scale, scale_type,
                                            correct_bias);
  const bool left = args.left;
  const int64_t m = W.size(0), n = W.size(1), channels = args.channels;

  // 1. R = c P G / c G P^T and ||G_j||^2
  ChannelSquares squares(left, channels);
  const at::Tensor R = project_with_norms(args, G, kind, seed, rank, matrix, proj_scale, squares);
  const std::vector<double> g_sq = squares.totals();

  // 2. moments, N and the channel norms; s_j; the limiter
  const at::Tensor m_work = apollo_working_state(exp_avg, args.compute);
  const at::Tensor v_work = apollo_working_state(exp_avg_sq, args.compute);
  std::vector<double> n_sq(channels, 0.0), r_sq(channels, 0.0);
  AT_DISPATCH_FLOATING_TYPES(args.compute, "lowrank_apollo_step_ moments", [&] {
    const lro::ApolloBetas<scalar_t> betas = lro::make_apollo_betas<scalar_t>(beta1, beta2, eps);
    const scalar_t* r = R.const_data_ptr<scalar_t>();
    scalar_t* mp = m_work.data_ptr<scalar_t>();
    scalar_t* vp = v_work.data_ptr<scalar_t>();
    const int64_t rows = R.size(0), cols = R.size(1);
    if (left) {  // channels are R's columns: split them, walk the rows
      at::parallel_for(0, cols, 64, [&](int64_t begin, int64_t end) {
        moments_rows(r, mp, vp, cols, 0, rows, begin, end, true, betas, n_sq.data(), r_sq.data());
      });
    } else {  // channels are R's rows
      at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
        moments_rows(r, mp, vp, cols, begin, end, 0, cols, false, betas, n_sq.data(), r_sq.data());
      });
    }
  });
  if (!m_work.is_same(exp_avg)) exp_avg.copy_(m_work);
  if (!v_work.is_same(exp_avg_sq)) exp_avg_sq.copy_(v_work);

  std::vector<double> s(channels);
  double g_total = 0.0;
  if (args.channel) {
    for (int64_t j = 0; j < channels; ++j) {
      s[j] = lro::apollo_channel_scale(n_sq[j], r_sq[j]);
      g_total += s[j] * s[j] * g_sq[j];
    }
  } else {
    double n_all = 0.0, r_all = 0.0, g_all = 0.0;
    for (int64_t j = 0; j < channels; ++j) n_all += n_sq[j], r_all += r_sq[j], g_all += g_sq[j];
    const double s_all = lro::apollo_channel_scale(n_all, r_all);
    std::fill(s.begin(), s.end(), s_all);
    g_total = s_all * s_all * g_all;
  }
  const double g = std::sqrt(g_total);
  double lam = 1.0;
  if (limiter) {
    lam = lro::apollo_limiter(g, limiter_norm.item<double>(), step);
    limiter_norm.fill_(g / lam);
  }

  // 3. the weight update
  const double a = args.step_size;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, W.scalar_type(), "lowrank_apollo_step_ update", [&] {
    using W_t = scalar_t;
    using T = at::opmath_type<W_t>;
    std::vector<T> cs(channels);
    for (int64_t j = 0; j < channels; ++j) cs[j] = static_cast<T>(a / lam * s[j]);
    const T decay = static_cast<T>(1.0 - lr * weight_decay);
    W_t* w = W.data_ptr<W_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, G.scalar_type(), "lowrank_apollo_step_ G", [&] {
      const scalar_t* gp = G.const_data_ptr<scalar_t>();
      at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
        update_rows(w, W.stride(0), W.stride(1), gp, G.stride(0), G.stride(1), n, begin, end, left, cs.data(), decay);
      });
    });
  });
}

}  // namespace cpu
}  // namespace lowrank_ops
