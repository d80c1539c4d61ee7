// CPU kernel of the fused APOLLO step (lowrank_ops/ops/apollo.py; per-element math in kernels/apollo.h).
// Two reads of G and one read and write of W; no m x n temporary:
//   1. R = c P G (left) or c G P^T (right): a seeded P is generated tile by tile inside cpu::sketch_project;
//      an explicit P multiplies G a slab of rows / columns (64 Ki elements) at a time (only a slab of G is
//      ever converted);
//   2. per kept channel j, ||G_j||^2 (for the limiter's norm g), accumulated in double;
//   3. the moments of R, N and the squared channel norms of N and R (double), the scales s_j, g and lam;
//   4. W <- (W - (a / lam) s_j G) (1 - lr wd), rows in parallel, one rounding to W's dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../../kernels/apollo.h"
#include "../checks.h"
#include "../lowrank_ops.h"

namespace lowrank_ops {
namespace cpu {
namespace {

constexpr const char* kOp = "lowrank_apollo_step_";
constexpr int64_t kSlabElems = 64 * 1024;  // elements of G converted and multiplied at once (256 KiB in float32)

void check_state(const char* name, const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& W) {
  const bool dtype_ok =
      t.scalar_type() == at::kFloat || (W.scalar_type() == at::kDouble && t.scalar_type() == at::kDouble);
  TORCH_CHECK(t.sizes() == shape && dtype_ok, "lowrank_ops.", kOp, ": argument '", name,
              "' must be a float32 tensor of shape ", shape, ", got ", t.scalar_type(), " of shape ", shape_str(t));
  TORCH_CHECK(t.device() == W.device(), "lowrank_ops.", kOp, ": argument '", name, "' must be on W's device ",
              W.device(), ", got ", t.device());
}

// R = P G (left) or G P^T (right) for an explicit P (rank x d), in `compute`, a slab of G at a time.
at::Tensor matrix_project(const at::Tensor& G, const at::Tensor& P, bool left, at::ScalarType compute) {
  const int64_t d = left ? G.size(0) : G.size(1), rank = P.size(0);
  const int64_t slab = std::max<int64_t>(1, kSlabElems / (left ? G.size(1) : G.size(0)));
  at::Tensor Pc = P.to(compute);
  at::Tensor acc = left ? at::zeros({rank, G.size(1)}, G.options().dtype(compute))
                        : at::zeros({G.size(0), rank}, G.options().dtype(compute));
  for (int64_t k0 = 0; k0 < d; k0 += slab) {
    const int64_t w = std::min(slab, d - k0);
    if (left) {
      acc.addmm_(Pc.narrow(1, k0, w), G.narrow(0, k0, w).to(compute));
    } else {
      acc.addmm_(G.narrow(1, k0, w).to(compute), Pc.narrow(1, k0, w).t());
    }
  }
  return acc;
}

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
  check_float_matrix(kOp, "W", W);
  check_float_matrix(kOp, "G", G);
  TORCH_CHECK(W.scalar_type() == at::kFloat || W.scalar_type() == at::kBFloat16 || W.scalar_type() == at::kDouble,
              "lowrank_ops.", kOp, ": argument 'W' must be float32, bfloat16 or float64, got ", W.scalar_type());
  TORCH_CHECK(G.sizes() == W.sizes(), "lowrank_ops.", kOp, ": argument 'G' must be of W's shape ", shape_str(W),
              ", got ", shape_str(G));
  TORCH_CHECK(W.numel() > 0, "lowrank_ops.", kOp, ": argument 'W' must be a non-empty matrix, got ", shape_str(W));
  const bool left = parse_side(kOp, side);
  const bool seeded = kind == "rademacher" || kind == "gaussian";
  TORCH_CHECK(seeded || kind == "matrix", "lowrank_ops.", kOp,
              ": argument 'kind' must be \"rademacher\", \"gaussian\" or \"matrix\", got \"", std::string(kind), "\"");
  TORCH_CHECK(rank >= 1, "lowrank_ops.", kOp, ": argument 'rank' must be >= 1, got ", rank);
  const int64_t m = W.size(0), n = W.size(1), d = left ? m : n;
  if (!seeded) {
    TORCH_CHECK(matrix.has_value(), "lowrank_ops.", kOp, ": argument 'matrix' must be a tensor for kind \"matrix\"");
    check_float_matrix(kOp, "matrix", *matrix);
    TORCH_CHECK(matrix->size(0) == rank && matrix->size(1) == d, "lowrank_ops.", kOp,
                ": argument 'matrix' must be of shape [", rank, ", ", d, "], got ", shape_str(*matrix));
  }
  const std::vector<int64_t> projected = left ? std::vector<int64_t>{rank, n} : std::vector<int64_t>{m, rank};
  check_state("exp_avg", exp_avg, projected, W);
  check_state("exp_avg_sq", exp_avg_sq, projected, W);
  check_state("limiter_norm", limiter_norm, {}, W);
  TORCH_CHECK(step >= 1, "lowrank_ops.", kOp, ": argument 'step' must be >= 1, got ", step);
  TORCH_CHECK(scale_type == "channel" || scale_type == "tensor", "lowrank_ops.", kOp,
              ": argument 'scale_type' must be \"channel\" or \"tensor\", got \"", std::string(scale_type), "\"");
  TORCH_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && eps > 0 && lr >= 0 && weight_decay >= 0 &&
                  scale >= 0 && proj_scale > 0,
              "lowrank_ops.", kOp, ": the hyperparameters must be beta1, beta2 in [0, 1), eps > 0, lr, weight_decay, ",
              "scale >= 0 and proj_scale > 0, got beta1=", beta1, ", beta2=", beta2, ", eps=", eps, ", lr=", lr,
              ", weight_decay=", weight_decay, ", scale=", scale, ", proj_scale=", proj_scale);
  const bool channel = scale_type == "channel";
  const at::ScalarType compute = compute_dtype(W.scalar_type());

  // 1. R = c P G / c G P^T
  at::Tensor R =
      seeded ? sketch_project(G, seed, rank, kind, side, compute) : matrix_project(G, *matrix, left, compute);
  R.mul_(proj_scale);
  R = R.contiguous();
  // 2. ||G_j||^2
  const std::vector<double> g_sq = channel_sq_norms(G, left);
  const int64_t channels = left ? n : m;

  // 3. moments, N and the channel norms; s_j; the limiter
  // the moments as contiguous tensors of the compute dtype (copies written back when they are not)
  auto working = [&](const at::Tensor& t) {
    return t.scalar_type() == compute && t.is_contiguous() ? t : t.to(compute).contiguous();
  };
  at::Tensor m_work = working(exp_avg), v_work = working(exp_avg_sq);
  std::vector<double> n_sq(channels, 0.0), r_sq(channels, 0.0);
  AT_DISPATCH_FLOATING_TYPES(compute, "lowrank_apollo_step_ moments", [&] {
    const scalar_t b1 = static_cast<scalar_t>(beta1), b2 = static_cast<scalar_t>(beta2), e = static_cast<scalar_t>(eps);
    const scalar_t c1 = static_cast<scalar_t>(1.0 - beta1), c2 = static_cast<scalar_t>(1.0 - beta2);
    const scalar_t* r = R.const_data_ptr<scalar_t>();
    scalar_t* mp = m_work.data_ptr<scalar_t>();
    scalar_t* vp = v_work.data_ptr<scalar_t>();
    const int64_t rows = R.size(0), cols = R.size(1);
    if (left) {  // channels are R's columns
      at::parallel_for(0, cols, 64, [&](int64_t begin, int64_t end) {
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = begin; j < end; ++j) {
            const int64_t k = i * cols + j;
            const double nv = lro::apollo_moments(r[k], mp + k, vp + k, b1, c1, b2, c2, e);
            n_sq[j] += nv * nv;
            r_sq[j] += static_cast<double>(r[k]) * r[k];
          }
      });
    } else {  // channels are R's rows
      at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          for (int64_t j = 0; j < cols; ++j) {
            const int64_t k = i * cols + j;
            const double nv = lro::apollo_moments(r[k], mp + k, vp + k, b1, c1, b2, c2, e);
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
  if (channel) {
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
  double a = lr * std::sqrt(scale);
  if (correct_bias) {
    const double t = static_cast<double>(step);
    a *= std::sqrt(1.0 - std::pow(beta2, t)) / (1.0 - std::pow(beta1, t));
  }
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
