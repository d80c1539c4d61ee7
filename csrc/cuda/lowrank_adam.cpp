// CUDA implementation of the lowrank_adam family: the device hooks of csrc/lowrank_adam_driver.h (the same
// driver, checks and GEMM order as on the CPU). The GEMMs run on tiles with cuBLAS through ATen; the sketch
// and DCT basis tiles, the moment epilogue and the weight-update epilogue are the launchers of kernels/lowrank_adam.cuh,
// whose per-element math (kernels/adam.h, kernels/sketch.h) the CPU tests exercise. U = P^T Y or Y P is
// formed one tile of P's columns at a time (at most 1/8 of W), never as an m x n temporary.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>

#include "../../kernels/lowrank_adam.cuh"
#include "../lowrank_adam_driver.h"

namespace lowrank_ops {
namespace {

void check_launch(cudaError_t err, const std::string& what) {
  TORCH_CHECK(err == cudaSuccess, "lowrank_ops.", kAdamOp, ": CUDA kernel launch failed for ", what, ": ",
              cudaGetErrorString(err));
}

cudaStream_t stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.get_device()).stream(); }

template <typename T>
lro::AdamStep<T> adam_step(const AdamArgs& a) {
  return lro::make_adam_step<T>(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.step, a.scale, a.adapter);
}

void moments_cuda(at::Tensor& r, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor* delta,
                  const AdamArgs& args) {
  cudaError_t err;
  if (r.scalar_type() == at::kDouble) {
    err = lro::launch_adam_moments(r.mutable_data_ptr<double>(), exp_avg.mutable_data_ptr<double>(),
                                   exp_avg_sq.mutable_data_ptr<double>(),
                                   delta != nullptr ? delta->mutable_data_ptr<double>() : nullptr, r.numel(),
                                   adam_step<double>(args), stream_of(r));
  } else {
    err = lro::launch_adam_moments(r.mutable_data_ptr<float>(), exp_avg.mutable_data_ptr<float>(),
                                   exp_avg_sq.mutable_data_ptr<float>(),
                                   delta != nullptr ? delta->mutable_data_ptr<float>() : nullptr, r.numel(),
                                   adam_step<float>(args), stream_of(r));
  }
  check_launch(err, "the moment update of " + std::to_string(r.numel()) + " elements");
}

// tile (rank x width) <- P[:, k0 : k0 + width] of a seeded side.
void fill_sketch_cuda(const SideOp& side, int64_t k0, int64_t width, const at::Tensor& tile) {
  const auto kind = static_cast<lro::SketchKind>(side.kind);
  const cudaError_t err =
      tile.scalar_type() == at::kDouble
          ? lro::launch_sketch_window(tile.mutable_data_ptr<double>(), tile.stride(0), kind, side.seed, side.rank,
                                      side.dim, k0, width, stream_of(tile))
          : lro::launch_sketch_window(tile.mutable_data_ptr<float>(), tile.stride(0), kind, side.seed, side.rank,
                                      side.dim, k0, width, stream_of(tile));
  check_launch(err, "the sketch tile of columns [" + std::to_string(k0) + ", " + std::to_string(k0 + width) + ")");
}

// tile (rank x width) <- P[:, k0 : k0 + width] of a "dct" side.
void fill_dct_cuda(const SideOp& side, int64_t k0, const at::Tensor& tile) {
  const int64_t width = tile.size(1);
  const int64_t* index = side.indices.const_data_ptr<int64_t>();
  const cudaError_t err =
      tile.scalar_type() == at::kDouble
          ? lro::launch_dct_window(tile.mutable_data_ptr<double>(), tile.stride(0), index, side.rank, side.dim, k0,
                                   width, stream_of(tile))
          : lro::launch_dct_window(tile.mutable_data_ptr<float>(), tile.stride(0), index, side.rank, side.dim, k0,
                                   width, stream_of(tile));
  check_launch(err, "the DCT basis tile of columns [" + std::to_string(k0) + ", " + std::to_string(k0 + width) + ")");
}

// block <- adam_weight_update(block, U) with U = p^T y (left: block holds rows of W) or y p (right: columns).
void update_block(const at::Tensor& block, const at::Tensor& p, const at::Tensor& y, bool left, const AdamArgs& args) {
  const at::Tensor u = left ? at::mm(p.t(), y) : at::mm(y, p);
  const int64_t rows = block.size(0), cols = block.size(1), s0 = block.stride(0), s1 = block.stride(1);
  const cudaStream_t stream = stream_of(block);
  cudaError_t err;
  switch (block.scalar_type()) {
    case at::kFloat:
      err = lro::launch_adam_weight_update(block.mutable_data_ptr<float>(), rows, cols, s0, s1,
                                           u.const_data_ptr<float>(), adam_step<float>(args), stream);
      break;
    case at::kBFloat16:
      err = lro::launch_adam_weight_update(reinterpret_cast<__nv_bfloat16*>(block.mutable_data_ptr()), rows, cols,
                                           s0, s1, u.const_data_ptr<float>(), adam_step<float>(args), stream);
      break;
    default:
      err = lro::launch_adam_weight_update(block.mutable_data_ptr<double>(), rows, cols, s0, s1,
                                           u.const_data_ptr<double>(), adam_step<double>(args), stream);
  }
  check_launch(err, "the weight update of a block of shape " + shape_str(block));
}

void unproject_update_cuda(const SideOp& side, bool left, const at::Tensor& Y, const at::Tensor& W,
                           const AdamArgs& args) {
  const int64_t kb = tile_columns(side.dim);
  const at::Tensor tile = side.generated() ? at::empty({side.rank, kb}, Y.options()) : at::Tensor();
  for (int64_t k0 = 0; k0 < side.dim; k0 += kb) {
    const int64_t width = std::min(kb, side.dim - k0);
    at::Tensor p;
    if (side.seeded()) {
      p = tile.narrow(1, 0, width);
      fill_sketch_cuda(side, k0, width, p);
    } else if (side.kind == kSideDct) {
      p = tile.narrow(1, 0, width);
      fill_dct_cuda(side, k0, p);
    } else {
      p = side.matrix.narrow(1, k0, width);
    }
    update_block(left ? W.narrow(0, k0, width) : W.narrow(1, k0, width), p, Y, left, args);
  }
}

const AdamDevice kCuda{&moments_cuda, &unproject_update_cuda, &fill_dct_cuda};

void lowrank_adamw_step_cuda(const at::Tensor& W, const at::Tensor& G, const at::Tensor& exp_avg,
                             const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& delta,
                             c10::string_view left_kind, int64_t left_seed, int64_t left_rank,
                             const std::optional<at::Tensor>& left_matrix, c10::string_view right_kind,
                             int64_t right_seed, int64_t right_rank, const std::optional<at::Tensor>& right_matrix,
                             double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step,
                             double scale, c10::string_view wd_mode) {
  const c10::cuda::CUDAGuard guard(W.device());
  lowrank_adamw_step_op(kCuda, W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix,
                        right_kind, right_seed, right_rank, right_matrix, lr, beta1, beta2, eps, weight_decay, step,
                        scale, wd_mode);
}

}  // namespace

TORCH_LIBRARY_IMPL(lowrank_ops, CUDA, m) { m.impl("lowrank_adamw_step_", &lowrank_adamw_step_cuda); }

}  // namespace lowrank_ops
