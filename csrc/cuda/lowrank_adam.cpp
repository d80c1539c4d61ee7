// CUDA kernels of the lowrank_adam family: the device hooks of csrc/lowrank_adam_impl.h (cuda::kAdamDevice;
// the same driver, checks and GEMM order as on the CPU). The GEMMs run on tiles with cuBLAS through ATen; the
// sketch and DCT basis tiles, the moment epilogue and the weight-update epilogue are the launchers of
// kernels/lowrank_adam.cuh, whose per-element math (kernels/adam.h, kernels/sketch.h) the CPU tests
// exercise; on 8-bit moments the moment epilogue is kernels/blockwise8.cuh's, which decodes, updates and encodes
// the codes in place (no float copy of the moments). U = P^T Y or Y P is formed one tile of P's columns at a time (at most 1/8 of W), never as an
// m x n temporary. The multi-tensor step (lowrank_adamw_multi_step_) runs the driver's grouped form: one
// moment kernel over each group of matrices of one shape, kinds and step scalars (run_adam_steps_grouped).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <string>
#include <vector>

#include "../../kernels/blockwise8.cuh"
#include "../../kernels/lowrank_adam.cuh"
#include "../lowrank_adam_impl.h"
#include "../lowrank_ops.h"
#include "../sketch_impl.h"
#include "dtype_dispatch.h"
#include "launch.h"

namespace lowrank_ops {
namespace cuda {
namespace {

std::string columns(int64_t k0, int64_t width) {
  return "columns [" + std::to_string(k0) + ", " + std::to_string(k0 + width) + ")";
}

void moments(at::Tensor& r, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor* delta, const AdamArgs& args) {
  const auto launch = [&](auto tag) {  // float, or double for a float64 step
    using T = decltype(tag);
    return lro::launch_adam_moments(data_as<T>(r), data_as<T>(exp_avg), data_as<T>(exp_avg_sq),
                                    delta != nullptr ? data_as<T>(*delta) : nullptr, r.numel(), adam_step<T>(args),
                                    stream_of(r));
  };
  const cudaError_t err = r.scalar_type() == at::kDouble ? launch(double{}) : launch(float{});
  check_launch(err, kAdamOp, "the moment update of " + std::to_string(r.numel()) + " elements");
}

// The moments of r on the matrix's 8-bit moments (docs/DESIGN.md §3 "8-bit optimizer moments"): one launch of
// launch_q8_adam_moments over r [rows, cols], the codes and absmax written in place (contiguous: the caller's
// tensors, made contiguous by the op layer), r overwritten with the direction, delta updated in the adapter mode.
void moments8(at::Tensor& r, const AdamMatrix& matrix, at::Tensor* delta) {
  TORCH_CHECK(matrix.exp_avg.is_contiguous() && matrix.exp_avg_sq.is_contiguous() &&
                  matrix.exp_avg_absmax->is_contiguous() && matrix.exp_avg_sq_absmax->is_contiguous(),
              "lowrank_ops.", kAdamOp, ": 8-bit moments and their absmax must be contiguous");
  if (r.numel() == 0) return;
  const auto launch = [&](auto tag) {  // float, or double for a float64 step
    using T = decltype(tag);
    return lro::launch_q8_adam_moments(data_as<T>(r), data_as<uint8_t>(matrix.exp_avg),
                                       data_as<float>(*matrix.exp_avg_absmax), data_as<uint8_t>(matrix.exp_avg_sq),
                                       data_as<float>(*matrix.exp_avg_sq_absmax),
                                       delta != nullptr ? data_as<T>(*delta) : nullptr, r.size(0), r.size(1),
                                       matrix.state_block, adam_step<T>(matrix.args), stream_of(r));
  };
  const cudaError_t err = r.scalar_type() == at::kDouble ? launch(double{}) : launch(float{});
  check_launch(err, kAdamOp, "the 8-bit moment update of " + std::to_string(r.numel()) + " elements");
}

// tile (rank x width, compute dtype) <- P[:, k0 : k0 + width] of a seeded side.
void fill_sketch(const SideOp& side, int64_t k0, int64_t width, const at::Tensor& tile) {
  const auto kind = static_cast<lro::SketchKind>(side.kind);
  const auto launch = [&](auto tag) {
    return lro::launch_sketch_window(data_as<decltype(tag)>(tile), tile.stride(0), kind, side.seed, side.rank,
                                     side.dim, k0, width, stream_of(tile));
  };
  const cudaError_t err = tile.scalar_type() == at::kDouble ? launch(double{}) : launch(float{});
  check_launch(err, kAdamOp, "the sketch tile of " + columns(k0, width));
}

// tile (rank x width, compute dtype) <- P[:, k0 : k0 + width] of a basis side ("dct"; "sr_dct": signed by its
// seed).
void fill_dct(const SideOp& side, int64_t k0, const at::Tensor& tile) {
  const int64_t width = tile.size(1);
  const int64_t* index = side.indices.const_data_ptr<int64_t>();
  const bool signs = side.kind == kSideSrDct;
  const auto launch = [&](auto tag) {
    return lro::launch_dct_window(data_as<decltype(tag)>(tile), tile.stride(0), index, side.rank, side.dim, k0,
                                  width, signs, side.seed, stream_of(tile));
  };
  const cudaError_t err = tile.scalar_type() == at::kDouble ? launch(double{}) : launch(float{});
  check_launch(err, kAdamOp, "the DCT basis tile of " + columns(k0, width));
}

// block <- adam_weight_update(block, U) with U = p^T y (left: block holds rows of W) or y p (right: columns).
// W is float32, bfloat16 or float64 (check_adam_args); U is in the compute dtype (float64 for float64 W).
void update_block(const at::Tensor& block, const at::Tensor& p, const at::Tensor& y, bool left, const AdamArgs& args) {
  const at::Tensor u = left ? at::mm(p.t(), y) : at::mm(y, p);
  const auto launch = [&](auto* w, auto tag) {
    using T = decltype(tag);
    return lro::launch_adam_weight_update(w, block.size(0), block.size(1), block.stride(0), block.stride(1),
                                          u.const_data_ptr<T>(), adam_step<T>(args), stream_of(block));
  };
  cudaError_t err;
  switch (block.scalar_type()) {
    case at::kFloat:
      err = launch(data_as<float>(block), float{});
      break;
    case at::kBFloat16:
      err = launch(data_as<__nv_bfloat16>(block), float{});
      break;
    default:
      err = launch(data_as<double>(block), double{});
  }
  check_launch(err, kAdamOp, "the weight update of a block of shape " + shape_str(block));
}

void unproject_update(const SideOp& side, bool left, const at::Tensor& Y, const at::Tensor& W, const AdamArgs& args) {
  const int64_t kb = tile_columns(side.dim);
  const at::Tensor tile = side.generated() ? at::empty({side.rank, kb}, Y.options()) : at::Tensor();
  for (int64_t k0 = 0; k0 < side.dim; k0 += kb) {
    const int64_t width = std::min(kb, side.dim - k0);
    at::Tensor p;
    if (side.seeded()) {
      p = tile.narrow(1, 0, width);
      fill_sketch(side, k0, width, p);
    } else if (side.basis()) {
      p = tile.narrow(1, 0, width);
      fill_dct(side, k0, p);
    } else {
      p = side.matrix.narrow(1, k0, width);
    }
    update_block(left ? W.narrow(0, k0, width) : W.narrow(1, k0, width), p, Y, left, args);
  }
}

}  // namespace

const AdamDevice kAdamDevice{&moments, &unproject_update, &fill_dct, &sketch_project, &sketch_unproject, &moments8};

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
  const std::vector<AdamMatrix> matrices =
      check_multi_step_args(W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix, right_kind,
                            right_seed, right_rank, right_matrix, lr, beta1, beta2, eps, weight_decay, step, scale,
                            wd_mode);
  if (matrices.empty()) return;
  TORCH_CHECK(matrices[0].W.is_cuda(), "lowrank_ops.lowrank_adamw_multi_step_: the CUDA kernel takes CUDA tensors, "
              "got ", matrices[0].W.device());
  const c10::DeviceGuard guard(matrices[0].W.device());
  run_adam_steps_grouped(kAdamDevice, matrices);
}

}  // namespace cuda
}  // namespace lowrank_ops
