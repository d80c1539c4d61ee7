// CUDA kernel of the fused APOLLO step (lowrank_ops/ops/apollo.py states the math; the per-element math is
// kernels/apollo.h, shared with csrc/cpu/apollo.cpp, and the checks and the projection csrc/apollo_impl.h).
// Two reads of G and one read and write of W; no m x n temporary:
//   1. R = c P G / c G P^T: cuda::sketch_project (P generated inside the GEMM) or, for an explicit P, cuBLAS
//      on slabs of G (apollo_project);
//   2. ||G_j||^2 per kept channel (launch_apollo_sq_norms);
//   3. the moments of R with the channel norms of N and R (launch_apollo_moments);
//   4. the scales, the limiter and c_j = a / lam s_j, on the device: no host synchronization
//      (launch_apollo_scales);
//   5. W <- (W - c_j G) (1 - lr wd) (launch_apollo_weight_update).
// The multi-tensor step (csrc/apollo.cpp) runs them matrix after matrix.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>
#include <type_traits>

#include "../../kernels/apollo.cuh"
#include "../apollo_impl.h"
#include "../lowrank_ops.h"
#include "dtype_dispatch.h"
#include "launch.h"

namespace lowrank_ops {
namespace cuda {
namespace {

// The layout of a "channel" array of the launchers (kernels/apollo.cuh) over a matrix t whose kept channels
// are its columns (left) or rows: (channels, len, channel stride, element stride).
struct ChannelLayout {
  int64_t channels, len, cs, ks;
};

ChannelLayout channel_layout(const at::Tensor& t, bool left) {
  return left ? ChannelLayout{t.size(1), t.size(0), t.stride(1), t.stride(0)}
              : ChannelLayout{t.size(0), t.size(1), t.stride(0), t.stride(1)};
}

// ||G_j||^2 per kept channel, in double.
at::Tensor gradient_sq_norms(const at::Tensor& G, bool left) {
  const ChannelLayout l = channel_layout(G, left);
  const at::Tensor out = at::empty({l.channels}, G.options().dtype(at::kDouble));
  const cudaError_t err = dispatch_float(G.scalar_type(), kApolloOp, "G", [&](auto tag) {
    return lro::launch_apollo_sq_norms(const_data_as<decltype(tag)>(G), l.channels, l.len, l.cs, l.ks,
                                       out.mutable_data_ptr<double>(), stream_of(G));
  });
  check_launch(err, kApolloOp, "the channel norms of G of shape " + shape_str(G));
  return out;
}

// The moments of R in place on m and v (contiguous, R's dtype) and the channel norms (n_sq, r_sq) of N and R.
void moments(const at::Tensor& R, const at::Tensor& m, const at::Tensor& v, bool left, double beta1, double beta2,
             double eps, const at::Tensor& n_sq, const at::Tensor& r_sq) {
  const ChannelLayout l = channel_layout(R, left);
  const auto launch = [&](auto tag) {
    using T = decltype(tag);
    return lro::launch_apollo_moments(R.const_data_ptr<T>(), m.mutable_data_ptr<T>(), v.mutable_data_ptr<T>(),
                                      l.channels, l.len, l.cs, l.ks, lro::make_apollo_betas<T>(beta1, beta2, eps),
                                      n_sq.mutable_data_ptr<double>(), r_sq.mutable_data_ptr<double>(),
                                      stream_of(R));
  };
  const cudaError_t err = R.scalar_type() == at::kDouble ? launch(double{}) : launch(float{});
  check_launch(err, kApolloOp, "the moment update of R of shape " + shape_str(R));
}

// c_s (compute dtype, one per channel) and the limiter's norm, from the channel norms.
at::Tensor channel_steps(const ApolloArgs& args, const at::Tensor& n_sq, const at::Tensor& r_sq,
                         const at::Tensor& g_sq, const at::Tensor& limiter_norm, int64_t step, bool limiter) {
  const at::Tensor c_s = at::empty({args.channels}, n_sq.options().dtype(args.compute));
  const lro::ApolloScaling scaling{args.step_size, static_cast<long long>(step), args.channel, limiter};
  const auto launch = [&](auto c_tag, auto l_tag) {
    return lro::launch_apollo_scales(n_sq.const_data_ptr<double>(), r_sq.const_data_ptr<double>(),
                                     g_sq.const_data_ptr<double>(), args.channels, scaling,
                                     limiter_norm.mutable_data_ptr<decltype(l_tag)>(),
                                     c_s.mutable_data_ptr<decltype(c_tag)>(), stream_of(c_s));
  };
  cudaError_t err;
  if (args.compute == at::kFloat) {
    err = launch(float{}, float{});
  } else {
    err = limiter_norm.scalar_type() == at::kDouble ? launch(double{}, double{}) : launch(double{}, float{});
  }
  check_launch(err, kApolloOp, "the channel scales and the limiter of " + std::to_string(args.channels) + " channels");
  return c_s;
}

void weight_update(const at::Tensor& W, const at::Tensor& G, const at::Tensor& c_s, bool left, double decay) {
  const auto launch = [&](auto* w) {
    using Wt = std::remove_pointer_t<decltype(w)>;
    using T = typename lro::ApolloCompute<Wt>::type;
    return dispatch_float(G.scalar_type(), kApolloOp, "G", [&](auto g_tag) {
      return lro::launch_apollo_weight_update(w, W.size(0), W.size(1), W.stride(0), W.stride(1),
                                              const_data_as<decltype(g_tag)>(G), G.stride(0), G.stride(1),
                                              c_s.const_data_ptr<T>(), left, static_cast<T>(decay), stream_of(W));
    });
  };
  cudaError_t err;
  switch (W.scalar_type()) {
    case at::kFloat:
      err = launch(data_as<float>(W));
      break;
    case at::kBFloat16:
      err = launch(data_as<__nv_bfloat16>(W));
      break;
    default:  // float64 (check_apollo_args)
      err = launch(data_as<double>(W));
  }
  check_launch(err, kApolloOp, "the weight update of W of shape " + shape_str(W));
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
  TORCH_CHECK(W.is_cuda(), "lowrank_ops.", kApolloOp, ": the CUDA kernel takes CUDA tensors, got ", W.device());
  const c10::cuda::CUDAGuard guard(W.device());
  const at::Tensor R = apollo_project(args, G, kind, seed, rank, matrix, proj_scale, &sketch_project);
  const at::Tensor g_sq = gradient_sq_norms(G, args.left);
  const at::Tensor m_work = apollo_working_state(exp_avg, args.compute);
  const at::Tensor v_work = apollo_working_state(exp_avg_sq, args.compute);
  const at::Tensor n_sq = at::empty({args.channels}, g_sq.options()), r_sq = at::empty({args.channels}, g_sq.options());
  moments(R, m_work, v_work, args.left, beta1, beta2, eps, n_sq, r_sq);
  if (!m_work.is_same(exp_avg)) exp_avg.copy_(m_work);
  if (!v_work.is_same(exp_avg_sq)) exp_avg_sq.copy_(v_work);
  const at::Tensor c_s = channel_steps(args, n_sq, r_sq, g_sq, limiter_norm, step, limiter);
  weight_update(W, G, c_s, args.left, 1.0 - lr * weight_decay);
}

}  // namespace cuda
}  // namespace lowrank_ops
