// The fused low-rank AdamW step, the interface between its device-independent driver (csrc/lowrank_adam.cpp:
// the order of the GEMMs) and its per-device parts, an AdamDevice: the moment epilogue, the unprojection GEMM
// with the weight-update epilogue, the generated operator tiles and the device's sketch kernels.
// csrc/cpu/lowrank_adam.cpp and csrc/cuda/lowrank_adam.cpp provide one each (cpu::kAdamDevice,
// cuda::kAdamDevice, declared in csrc/lowrank_ops.h).
#pragma once
#include <ATen/ATen.h>

#include <optional>

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
  // tile (rank x width, unit column stride, compute dtype) <- P[:, k0 : k0 + width] of a "dct" side.
  void (*fill_dct)(const SideOp& side, int64_t k0, const at::Tensor& tile);
  // The device's sketch_project and sketch_unproject (csrc/lowrank_ops.h), for the seeded sides.
  SketchKernel sketch_project;
  SketchKernel sketch_unproject;
};

}  // namespace lowrank_ops
