// The device-independent parts of the fused APOLLO step (lowrank_ops/ops/apollo.py states the math): the
// argument checks, the projection R = c P G / c G P^T and the working copies of the moments. The per-device
// parts are csrc/cpu/apollo.cpp and csrc/cuda/apollo.cpp; the per-element math is kernels/apollo.h.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../kernels/apollo.h"
#include "checks.h"
#include "lowrank_ops.h"

namespace lowrank_ops {

constexpr const char* kApolloOp = "lowrank_apollo_step_";
constexpr const char* kApolloMultiOp = "lowrank_apollo_multi_step_";

// The checked arguments of one step.
struct ApolloArgs {
  bool left;                 // side "left": R = c P G (r x n), the kept channels are W's columns
  bool seeded;               // kind "rademacher" / "gaussian" (else "matrix": the explicit P)
  bool channel;              // scale_type "channel" (else "tensor")
  int64_t channels;          // n (left) or m (right)
  at::ScalarType compute;    // float32, or float64 for float64 W
  double step_size;          // a = lr sqrt(scale) (sqrt(1 - b2^t) / (1 - b1^t)), kernels/apollo.h
};

inline void check_apollo_state(const char* name, const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& W) {
  const bool dtype_ok =
      t.scalar_type() == at::kFloat || (W.scalar_type() == at::kDouble && t.scalar_type() == at::kDouble);
  TORCH_CHECK(t.sizes() == shape && dtype_ok, "lowrank_ops.", kApolloOp, ": argument '", name,
              "' must be a float32 tensor of shape ", shape, ", got ", t.scalar_type(), " of shape ", shape_str(t));
  TORCH_CHECK(t.device() == W.device(), "lowrank_ops.", kApolloOp, ": argument '", name, "' must be on W's device ",
              W.device(), ", got ", t.device());
}

inline ApolloArgs check_apollo_args(const at::Tensor& W, const at::Tensor& G, const at::Tensor& exp_avg,
                                    const at::Tensor& exp_avg_sq, const at::Tensor& limiter_norm,
                                    c10::string_view side, c10::string_view kind, int64_t rank,
                                    const std::optional<at::Tensor>& matrix, double proj_scale, double lr,
                                    double beta1, double beta2, double eps, double weight_decay, int64_t step,
                                    double scale, c10::string_view scale_type, bool correct_bias) {
  const char* op = kApolloOp;
  check_float_matrix(op, "W", W);
  check_float_matrix(op, "G", G);
  TORCH_CHECK(W.scalar_type() == at::kFloat || W.scalar_type() == at::kBFloat16 || W.scalar_type() == at::kDouble,
              "lowrank_ops.", op, ": argument 'W' must be float32, bfloat16 or float64, got ", W.scalar_type());
  TORCH_CHECK(G.sizes() == W.sizes(), "lowrank_ops.", op, ": argument 'G' must be of W's shape ", shape_str(W),
              ", got ", shape_str(G));
  TORCH_CHECK(G.device() == W.device(), "lowrank_ops.", op, ": argument 'G' must be on W's device ", W.device(),
              ", got ", G.device());
  TORCH_CHECK(W.numel() > 0, "lowrank_ops.", op, ": argument 'W' must be a non-empty matrix, got ", shape_str(W));
  ApolloArgs a{};
  a.left = parse_side(op, side);
  a.seeded = kind == "rademacher" || kind == "gaussian";
  TORCH_CHECK(a.seeded || kind == "matrix", "lowrank_ops.", op,
              ": argument 'kind' must be \"rademacher\", \"gaussian\" or \"matrix\", got \"", std::string(kind), "\"");
  TORCH_CHECK(rank >= 1, "lowrank_ops.", op, ": argument 'rank' must be >= 1, got ", rank);
  const int64_t m = W.size(0), n = W.size(1), d = a.left ? m : n;
  if (!a.seeded) {
    TORCH_CHECK(matrix.has_value(), "lowrank_ops.", op, ": argument 'matrix' must be a tensor for kind \"matrix\"");
    check_float_matrix(op, "matrix", *matrix);
    TORCH_CHECK(matrix->size(0) == rank && matrix->size(1) == d, "lowrank_ops.", op,
                ": argument 'matrix' must be of shape [", rank, ", ", d, "], got ", shape_str(*matrix));
    TORCH_CHECK(matrix->device() == W.device(), "lowrank_ops.", op, ": argument 'matrix' must be on W's device ",
                W.device(), ", got ", matrix->device());
  }
  const std::vector<int64_t> projected = a.left ? std::vector<int64_t>{rank, n} : std::vector<int64_t>{m, rank};
  check_apollo_state("exp_avg", exp_avg, projected, W);
  check_apollo_state("exp_avg_sq", exp_avg_sq, projected, W);
  check_apollo_state("limiter_norm", limiter_norm, {}, W);
  TORCH_CHECK(step >= 1, "lowrank_ops.", op, ": argument 'step' must be >= 1, got ", step);
  TORCH_CHECK(scale_type == "channel" || scale_type == "tensor", "lowrank_ops.", op,
              ": argument 'scale_type' must be \"channel\" or \"tensor\", got \"", std::string(scale_type), "\"");
  TORCH_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && eps > 0 && lr >= 0 && weight_decay >= 0 &&
                  scale >= 0 && proj_scale > 0,
              "lowrank_ops.", op, ": the hyperparameters must be beta1, beta2 in [0, 1), eps > 0, lr, weight_decay, ",
              "scale >= 0 and proj_scale > 0, got beta1=", beta1, ", beta2=", beta2, ", eps=", eps, ", lr=", lr,
              ", weight_decay=", weight_decay, ", scale=", scale, ", proj_scale=", proj_scale);
  a.channel = scale_type == "channel";
  a.channels = a.left ? n : m;
  a.compute = compute_dtype(W.scalar_type());
  a.step_size = lro::apollo_step_size(lr, scale, beta1, beta2, step, correct_bias);
  return a;
}

// R = c P G (left) or c G P^T (right), contiguous in the compute dtype. A seeded P is generated tile by tile
// by the device's sketch_project; an explicit P multiplies G a slab of rows / columns (64 Ki elements) at a
// time, so that only a slab of G is ever converted. `sketch_project`: cpu:: or cuda::sketch_project.
template <typename SketchProject>
at::Tensor apollo_project(const ApolloArgs& a, const at::Tensor& G, c10::string_view kind, int64_t seed,
                          int64_t rank, const std::optional<at::Tensor>& matrix, double proj_scale,
                          SketchProject sketch_project) {
  at::Tensor R;
  if (a.seeded) {
    R = sketch_project(G, seed, rank, kind, a.left ? "left" : "right", a.compute);
  } else {
    constexpr int64_t kSlabElems = 64 * 1024;  // 256 KiB of float32
    const int64_t d = a.left ? G.size(0) : G.size(1);
    const int64_t slab = std::max<int64_t>(1, kSlabElems / (a.left ? G.size(1) : G.size(0)));
    const at::Tensor P = matrix->to(a.compute);
    R = a.left ? at::zeros({rank, G.size(1)}, G.options().dtype(a.compute))
               : at::zeros({G.size(0), rank}, G.options().dtype(a.compute));
    for (int64_t k0 = 0; k0 < d; k0 += slab) {
      const int64_t w = std::min(slab, d - k0);
      if (a.left) {
        R.addmm_(P.narrow(1, k0, w), G.narrow(0, k0, w).to(a.compute));
      } else {
        R.addmm_(G.narrow(1, k0, w).to(a.compute), P.narrow(1, k0, w).t());
      }
    }
  }
  R.mul_(proj_scale);
  return R.contiguous();
}

// A moment state as a contiguous tensor of the compute dtype: the state itself, or a copy to write back
// (copy_) after the step when it is not.
inline at::Tensor apollo_working_state(const at::Tensor& state, at::ScalarType compute) {
  return state.scalar_type() == compute && state.is_contiguous() ? state : state.to(compute).contiguous();
}

// The lists of the multi-tensor step: entry i of each is matrix i's argument of lowrank_apollo_step_.
struct ApolloMatrices {
  const std::vector<at::Tensor>&W, &G, &exp_avg, &exp_avg_sq, &limiter_norm;
  const std::vector<std::string>&side, &kind;
  const std::vector<int64_t>&seed, &rank;
  const std::vector<std::optional<at::Tensor>>& matrix;
  const std::vector<double>&proj_scale, &lr, &beta1, &beta2, &eps, &weight_decay;
  const std::vector<int64_t>& step;
  const std::vector<double>& scale;
  const std::vector<std::string>& scale_type;
  const std::vector<bool>&limiter, &correct_bias;

  size_t size() const { return W.size(); }
};

// step(matrix i's arguments): the device's lowrank_apollo_step_.
inline void apollo_step_matrix(ApolloStepFn step, const ApolloMatrices& a, size_t i) {
  step(a.W[i], a.G[i], a.exp_avg[i], a.exp_avg_sq[i], a.limiter_norm[i], a.side[i], a.kind[i], a.seed[i], a.rank[i],
       a.matrix[i], a.proj_scale[i], a.lr[i], a.beta1[i], a.beta2[i], a.eps[i], a.weight_decay[i], a.step[i],
       a.scale[i], a.scale_type[i], a.limiter[i], a.correct_bias[i]);
}

// Every list has one entry per matrix, every matrix passes lowrank_apollo_step_'s checks (the message names
// the matrix) and all are on W[0]'s device: checked before any matrix is stepped.
inline void check_apollo_matrices(const ApolloMatrices& a) {
  const size_t n = a.size();
  const std::pair<const char*, size_t> lengths[] = {
      {"G", a.G.size()}, {"exp_avg", a.exp_avg.size()}, {"exp_avg_sq", a.exp_avg_sq.size()},
      {"limiter_norm", a.limiter_norm.size()}, {"side", a.side.size()}, {"kind", a.kind.size()},
      {"seed", a.seed.size()}, {"rank", a.rank.size()}, {"matrix", a.matrix.size()},
      {"proj_scale", a.proj_scale.size()}, {"lr", a.lr.size()}, {"beta1", a.beta1.size()},
      {"beta2", a.beta2.size()}, {"eps", a.eps.size()}, {"weight_decay", a.weight_decay.size()},
      {"step", a.step.size()}, {"scale", a.scale.size()}, {"scale_type", a.scale_type.size()},
      {"limiter", a.limiter.size()}, {"correct_bias", a.correct_bias.size()}};
  for (const auto& [name, length] : lengths) {
    TORCH_CHECK(length == n, "lowrank_ops.", kApolloMultiOp, ": argument '", name,
                "' must have one entry per matrix (", n, ", as 'W'), got ", length);
  }
  for (size_t i = 0; i < n; ++i) {
    try {
      check_apollo_args(a.W[i], a.G[i], a.exp_avg[i], a.exp_avg_sq[i], a.limiter_norm[i], a.side[i], a.kind[i],
                        a.rank[i], a.matrix[i], a.proj_scale[i], a.lr[i], a.beta1[i], a.beta2[i], a.eps[i],
                        a.weight_decay[i], a.step[i], a.scale[i], a.scale_type[i], a.correct_bias[i]);
      TORCH_CHECK(a.W[i].device() == a.W[0].device(), "lowrank_ops.", kApolloOp,
                  ": argument 'W' must be on the device of W[0] (", a.W[0].device(), "), got ", a.W[i].device());
    } catch (const c10::Error& e) {
      std::string message = e.what_without_backtrace();
      const std::string single = std::string("lowrank_ops.") + kApolloOp + ": ";
      if (message.rfind(single, 0) == 0) message = message.substr(single.size());
      TORCH_CHECK(false, "lowrank_ops.", kApolloMultiOp, ": matrix ", i, ": ", message);
    }
  }
}

}  // namespace lowrank_ops
