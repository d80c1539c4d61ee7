// The fused low-rank AdamW step, the interface between its device-independent driver (csrc/lowrank_adam.cpp:
// the order of the GEMMs) and its per-device parts, an AdamDevice: the moment epilogue, the unprojection GEMM
// with the weight-update epilogue, the generated operator tiles and the device's sketch kernels.
// csrc/cpu/lowrank_adam.cpp and csrc/cuda/lowrank_adam.cpp provide one each (cpu::kAdamDevice,
// cuda::kAdamDevice, declared in csrc/lowrank_ops.h).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

#include "../kernels/adam.h"
#include "lowrank_adam_args.h"
#include "lowrank_ops.h"

namespace lowrank_ops {

// The scalars of one step in the precision T of its elementwise math (kernels/adam.h).
template <typename T>
lro::AdamStep<T> adam_step(const AdamArgs& a) {
  return lro::make_adam_step<T>(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.step, a.scale, a.adapter);
}

using SketchKernel = at::Tensor (*)(const at::Tensor&, int64_t, int64_t, c10::string_view, c10::string_view,
                                    std::optional<at::ScalarType>);

struct AdamMatrix;

struct AdamDevice {
  // The moments of every element of r (the projected gradient; contiguous, compute dtype), in place on
  // the states (contiguous, compute dtype; delta only in the adapter mode); r is overwritten with the
  // direction to unproject.
  void (*moments)(at::Tensor& r, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor* delta,
                  const AdamArgs& args);
  // W <- adam_weight_update(W, U) with U = P^T Y (left) or Y P (right), P the side's rank x dim operator,
  // Y in the compute dtype, without forming U as a whole.
  void (*unproject_update)(const SideOp& side, bool left, const at::Tensor& Y, const at::Tensor& W,
                           const AdamArgs& args);
  // tile (rank x width, unit column stride, compute dtype) <- P[:, k0 : k0 + width] of a basis side ("dct",
  // "sr_dct").
  void (*fill_dct)(const SideOp& side, int64_t k0, const at::Tensor& tile);
  // The device's sketch_project and sketch_unproject (csrc/lowrank_ops.h), for the seeded sides.
  SketchKernel sketch_project;
  SketchKernel sketch_unproject;
  // The moments of r on 8-bit moments (docs/DESIGN.md §3 "8-bit optimizer moments"): the matrix's codes and
  // absmax in place, r overwritten with the direction, delta (compute dtype, contiguous) in the adapter mode
  // (CPU: csrc/cpu/adam_epilogues8.h; CUDA: kernels/blockwise8.cuh). Null on a device without it.
  void (*moments8)(at::Tensor& r, const AdamMatrix& matrix, at::Tensor* delta) = nullptr;
};

// One matrix of a step with its arguments checked (check_adam_args): what lowrank_adamw_step_ takes, parsed.
struct AdamMatrix {
  at::Tensor W, G, exp_avg, exp_avg_sq;
  std::optional<at::Tensor> delta;  // the adapter, in wd_mode "adapter"
  SideOp left, right;
  AdamArgs args;
  // 8-bit moments: exp_avg / exp_avg_sq hold uint8 codes, these their float32 absmax per block of
  // `state_block` elements of a row (csrc/cpu/adam_epilogues8.h); absent for float moments.
  std::optional<at::Tensor> exp_avg_absmax, exp_avg_sq_absmax;
  int64_t state_block = 0;
  bool quantized() const { return exp_avg_absmax.has_value(); }
};

// lowrank_adamw_step_ on 8-bit moments (exp_avg, exp_avg_sq uint8 codes with their float32 absmax [rows,
// ceil(cols / state_block)]): checked, then run_adam_step with `device`'s moments8 (csrc/lowrank_adam.cpp).
void lowrank_adamw_step8_(const AdamDevice& device, const at::Tensor& W, const at::Tensor& G,
                          const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                          const std::optional<at::Tensor>& delta, c10::string_view left_kind, int64_t left_seed,
                          int64_t left_rank, const std::optional<at::Tensor>& left_matrix,
                          c10::string_view right_kind, int64_t right_seed, int64_t right_rank,
                          const std::optional<at::Tensor>& right_matrix, double lr, double beta1, double beta2,
                          double eps, double weight_decay, int64_t step, double scale, c10::string_view wd_mode,
                          const at::Tensor& exp_avg_absmax, const at::Tensor& exp_avg_sq_absmax,
                          int64_t state_block_size);

// lowrank_adamw_step_ on a checked matrix, with `device`'s parts (csrc/lowrank_adam.cpp); the caller holds
// the device guard.
void run_adam_step(const AdamDevice& device, const AdamMatrix& matrix);

// run_adam_step for every matrix, grouped: matrices of one shape, dtypes, side kinds and ranks and step
// scalars share one moment pass over their stacked projected gradients (one elementwise kernel per group on
// CUDA); projections and unprojections run per matrix on the device's GEMMs (csrc/lowrank_adam.cpp). The
// caller holds the device guard.
void run_adam_steps_grouped(const AdamDevice& device, const std::vector<AdamMatrix>& matrices);

// The 8-bit moments of a checked matrix: its absmax (float32 [rows, ceil(cols / state_block_size)] on W's device,
// checked here with lowrank_adamw_step_'s messages) and block length, attached to `matrix`.
void attach_q8_moments(AdamMatrix& matrix, const at::Tensor& exp_avg_absmax, const at::Tensor& exp_avg_sq_absmax,
                       int64_t state_block_size);

// The arguments of lowrank_adamw_multi_step_ (csrc/lowrank_ops.h), checked: one entry per matrix in every list,
// `delta` one adapter per matrix in wd_mode "adapter" (in order), every W on W[0]'s device, and each matrix as
// check_adam_args checks it (its errors read "lowrank_ops.lowrank_adamw_multi_step_: matrix i: argument ...").
// 8-bit moments: `state_block_size` empty (every matrix has float moments) or one per matrix, 0 for float
// moments and the block length B >= 1 for 8-bit ones, whose absmax are the entries of `exp_avg_absmax` and
// `exp_avg_sq_absmax` (one per 8-bit matrix, in order).
std::vector<AdamMatrix> check_multi_step_args(
    const std::vector<at::Tensor>& W, const std::vector<at::Tensor>& G, const std::vector<at::Tensor>& exp_avg,
    const std::vector<at::Tensor>& exp_avg_sq, const std::vector<at::Tensor>& delta,
    const std::vector<std::string>& left_kind, const std::vector<int64_t>& left_seed,
    const std::vector<int64_t>& left_rank, const std::vector<std::optional<at::Tensor>>& left_matrix,
    const std::vector<std::string>& right_kind, const std::vector<int64_t>& right_seed,
    const std::vector<int64_t>& right_rank, const std::vector<std::optional<at::Tensor>>& right_matrix,
    const std::vector<double>& lr, const std::vector<double>& beta1, const std::vector<double>& beta2,
    const std::vector<double>& eps, const std::vector<double>& weight_decay, const std::vector<int64_t>& step,
    const std::vector<double>& scale, const std::vector<std::string>& wd_mode,
    const std::vector<at::Tensor>& exp_avg_absmax = {}, const std::vector<at::Tensor>& exp_avg_sq_absmax = {},
    const std::vector<int64_t>& state_block_size = {});

namespace cpu {
// lowrank_adamw_multi_step_ with 8-bit moments (the lists of check_multi_step_args): the CPU kernel of the op
// (csrc/cpu/lowrank_adam_multi.cpp); cpu::lowrank_adamw_multi_step_ is it with no 8-bit matrix.
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
    const std::vector<int64_t>& state_block_size);
}  // namespace cpu

}  // namespace lowrank_ops
