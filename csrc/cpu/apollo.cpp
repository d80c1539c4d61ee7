// CPU kernel of the fused APOLLO step (lowrank_ops/ops/apollo.py; per-element math in kernels/apollo.h).
// Two reads of G and one read and write of W; no m x n temporary:
//   1. R = c P G (left) or c G P^T (right): a seeded P is generated tile by tile inside cpu::sketch_project;
//      an explicit P multiplies G a slab of rows / columns (64 Ki elements) at a time (only a slab of G is
//      ever converted);
//   2. per kept channel j, ||G_j||^2 (for the limiter's norm g), accumulated in double;
//   3. the moments of R, N and the squared channel norms of N and R (double), the scales s_j, g and lam;
//   4. W <- (W - (a / lam) s_j G) (1 - lr wd), rows in parallel, one rounding to W's dtype.
// The multi-tensor step (csrc/apollo.cpp) runs this kernel on whole matrices in one parallel region.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../apollo_impl.h"

namespace lowrank_ops {
namespace cpu {
namespace {

// The squared norm of each kept channel of G (left: columns, right: rows), in double.
std::vector<double> channel_sq_norms(const at::Tensor& G, bool left) {
  const int64_t m = G.size(0), n = G.size(1), s0 = G.stride(0), s1 = G.stride(1);
  std::vector<double> out(left ? n : m, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, G.scalar_type(), "lowrank_apollo_step_ norms", [&] {
    const scalar_t* g = G.const_data_ptr<scalar_t>();
    if (left) {  // columns: split the columns, walk the rows
      at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = begin; j < end; ++j) {
            const double x = static_cast<double>(g[i * s0 + j * s1]);
            out[j] += x * x;
          }
      });
    } else {
      at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          double acc = 0.0;
          for (int64_t j = 0; j < n; ++j) {
            const double x = static_cast<double>(g[i * s0 + j * s1]);
            acc += x * x;
          }
          out[i] = acc;
        }
      });
    }
  });
  return out;
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

  // 1. R = c P G / c G P^T
  const at::Tensor R = apollo_project(args, G, kind, seed, rank, matrix, proj_scale, &sketch_project);
  // 2. ||G_j||^2
  const std::vector<double> g_sq = channel_sq_norms(G, left);

  // 3. moments, N and the channel norms; s_j; the limiter
  const at::Tensor m_work = apollo_working_state(exp_avg, args.compute);
  const at::Tensor v_work = apollo_working_state(exp_avg_sq, args.compute);
  std::vector<double> n_sq(channels, 0.0), r_sq(channels, 0.0);
  AT_DISPATCH_FLOATING_TYPES(args.compute, "lowrank_apollo_step_ moments", [&] {
    const lro::ApolloBetas<scalar_t> betas = lro::make_apollo_betas<scalar_t>(beta1, beta2, eps);
    const scalar_t* r = R.const_data_ptr<scalar_t>();
    scalar_t* mp = m_work.data_ptr<scalar_t>();
    scalar_t* vp = v_work.data_ptr<scalar_t>();
    const int64_t rows = R.size(0), cols = R.size(1);
    if (left) {  // channels are R's columns
      at::parallel_for(0, cols, 64, [&](int64_t begin, int64_t end) {
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = begin; j < end; ++j) {
            const int64_t k = i * cols + j;
            const double nv = lro::apollo_moments(r[k], mp + k, vp + k, betas);
            n_sq[j] += nv * nv;
            r_sq[j] += static_cast<double>(r[k]) * r[k];
          }
      });
    } else {  // channels are R's rows
      at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          for (int64_t j = 0; j < cols; ++j) {
            const int64_t k = i * cols + j;
            const double nv = lro::apollo_moments(r[k], mp + k, vp + k, betas);
            n_sq[i] += nv * nv;
            r_sq[i] += static_cast<double>(r[k]) * r[k];
          }
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

  // 4. the weight update
  const double a = args.step_size;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, W.scalar_type(), "lowrank_apollo_step_ update", [&] {
    using W_t = scalar_t;
    using T = at::opmath_type<W_t>;
    std::vector<T> cs(channels);
    for (int64_t j = 0; j < channels; ++j) cs[j] = static_cast<T>(a / lam * s[j]);
    const T decay = static_cast<T>(1.0 - lr * weight_decay);
    W_t* w = W.data_ptr<W_t>();
    const int64_t w0 = W.stride(0), w1 = W.stride(1), g0 = G.stride(0), g1 = G.stride(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, G.scalar_type(), "lowrank_apollo_step_ G", [&] {
      const scalar_t* gp = G.const_data_ptr<scalar_t>();
      at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          for (int64_t j = 0; j < n; ++j) {
            W_t* wij = w + i * w0 + j * w1;
            const T c_s = cs[left ? j : i];
            *wij = static_cast<W_t>(
                lro::apollo_weight_update(static_cast<T>(*wij), static_cast<T>(gp[i * g0 + j * g1]), c_s, decay));
          }
      });
    });
  });
}

}  // namespace cpu
}  // namespace lowrank_ops
