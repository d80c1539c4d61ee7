// The fused low-rank AdamW step (lowrank_ops/pure_torch/lowrank_adam.py has the math as a chain of torch
// ops), device-independent part: the order of the GEMMs, run on the per-device parts of an AdamDevice
// (csrc/lowrank_adam_impl.h; csrc/cpu/lowrank_adam.cpp and csrc/cuda/lowrank_adam.cpp provide one each).
//
// Projection R = L G R^T. A seeded side is the device's sketch kernel (sketch_project: P generated tile by
// tile, never materialized); an explicit side is a GEMM with its matrix, over tiles of the projected
// dimension when G must be converted to the compute dtype; a "dct" side is the same
// tiled GEMM on basis tiles the device generates from the index vector (AdamDevice::fill_dct), so P is
// never materialized either. Two sides: two such GEMMs, the one on G first, in the order with fewer flops.
// Moments: one elementwise pass over R (kernels/adam.h), which leaves the direction in R's buffer.
// Unprojection with the weight update (the device's hook), one tile of P's columns at a time, so that only
// a tile of U = P^T Y or Y P is ever formed:
//   left   W[k, :] <- update(W[k, :], P[:, k]^T Y)    right   W[:, k] <- update(W[:, k], Y P[:, k])
// with Y the direction (one side) or, for two sides, D R (r1 x n, then left) or L^T D (m x r2, then
// right), whichever costs fewer flops.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>

#include "lowrank_adam_args.h"
#include "lowrank_adam_impl.h"
#include "lowrank_ops.h"
#include "sketch_impl.h"

namespace lowrank_ops {
namespace {

const char* kind_name(int kind) { return kind == kSideRademacher ? "rademacher" : "gaussian"; }

// The device's sketch kernel `kernel` (sketch_project or sketch_unproject) for a seeded side.
at::Tensor call_sketch(SketchKernel kernel, const at::Tensor& x, const SideOp& side, int64_t size, bool left,
                       at::ScalarType out_dtype) {
  return kernel(x, static_cast<int64_t>(side.seed), size, kind_name(side.kind), left ? "left" : "right", out_dtype);
}

// P[:, k0 : k0 + width] of an explicit side (a view of its matrix) or of a "dct" side (generated into
// `buffer`, rank x kb in the compute dtype).
at::Tensor operator_columns(const AdamDevice& device, const SideOp& side, int64_t k0, int64_t width,
                            const at::Tensor& buffer) {
  if (side.kind != kSideDct) return side.matrix.narrow(1, k0, width);
  const at::Tensor tile = buffer.narrow(1, 0, width);
  device.fill_dct(side, k0, tile);
  return tile;
}

// P X (left, X: dim x c) or X P^T (right, X: c x dim), accumulated in `compute` (sketch_project
// accumulates in X's compute dtype, so a float64 step takes X in float64: for float64 W and a
// lower-precision G that is a copy of G, float64 being the testing precision).
at::Tensor project(const AdamDevice& device, const SideOp& side, bool left, const at::Tensor& X_in,
                   at::ScalarType compute) {
  const at::TensorOptions options = X_in.options().dtype(compute);
  if (side.dim == 0) return left ? at::zeros({side.rank, X_in.size(1)}, options) : at::zeros({X_in.size(0), side.rank}, options);
  const at::Tensor X = compute == at::kDouble ? X_in.to(at::kDouble) : X_in;
  if (side.seeded()) return call_sketch(device.sketch_project, X, side, side.rank, left, compute);
  if (side.kind == kSideMatrix && X.scalar_type() == compute)
    return left ? at::mm(side.matrix, X) : at::mm(X, side.matrix.t());
  // Over tiles of P's columns: X converted tile by tile (no full-size copy of G in the compute dtype), and
  // a "dct" P generated one tile at a time.
  at::Tensor acc = left ? at::zeros({side.rank, X.size(1)}, options) : at::zeros({X.size(0), side.rank}, options);
  const int64_t kb = tile_columns(side.dim);
  const at::Tensor buffer = side.kind == kSideDct ? at::empty({side.rank, kb}, options) : at::Tensor();
  for (int64_t k0 = 0; k0 < side.dim; k0 += kb) {
    const int64_t width = std::min(kb, side.dim - k0);
    const at::Tensor p = operator_columns(device, side, k0, width, buffer);
    if (left) {
      acc.addmm_(p, X.narrow(0, k0, width).to(compute));
    } else {
      acc.addmm_(X.narrow(1, k0, width).to(compute), p.t());
    }
  }
  return acc;
}

// P^T Y (left: dim x c) or Y P (right: c x dim) for a small Y (the first GEMM of a two-sided unprojection).
at::Tensor unproject(const AdamDevice& device, const SideOp& side, bool left, const at::Tensor& Y) {
  if (side.dim == 0) return left ? at::empty({0, Y.size(1)}, Y.options()) : at::empty({Y.size(0), 0}, Y.options());
  if (side.seeded()) return call_sketch(device.sketch_unproject, Y, side, side.dim, left, Y.scalar_type());
  if (side.kind == kSideMatrix) return left ? at::mm(side.matrix.t(), Y) : at::mm(Y, side.matrix);
  at::Tensor out = left ? at::empty({side.dim, Y.size(1)}, Y.options()) : at::empty({Y.size(0), side.dim}, Y.options());
  const int64_t kb = tile_columns(side.dim);
  const at::Tensor buffer = at::empty({side.rank, kb}, Y.options());
  for (int64_t k0 = 0; k0 < side.dim; k0 += kb) {
    const int64_t width = std::min(kb, side.dim - k0);
    const at::Tensor p = operator_columns(device, side, k0, width, buffer);
    at::Tensor block = left ? out.narrow(0, k0, width) : out.narrow(1, k0, width);
    if (left) {
      at::mm_out(block, p.t(), Y);
    } else {
      at::mm_out(block, Y, p);
    }
  }
  return out;
}

// `state` as a contiguous tensor of `compute`: itself when it already is one, else a copy (written back
// by write_back).
at::Tensor working_copy(const at::Tensor& state, at::ScalarType compute) {
  return state.scalar_type() == compute && state.is_contiguous() ? state : state.to(compute).contiguous();
}

void write_back(const at::Tensor& work, const at::Tensor& state) {
  if (!work.is_same(state)) state.copy_(work);
}

// The whole step (arguments already checked by check_adam_args).
void step_on(const AdamDevice& device, const at::Tensor& W, const at::Tensor& G, const at::Tensor& exp_avg,
             const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& delta, const SideOp& left,
             const SideOp& right, const AdamArgs& args) {
  const at::ScalarType compute = compute_dtype(W.scalar_type());
  const double m = static_cast<double>(W.size(0)), n = static_cast<double>(W.size(1));
  const bool two_sided = left.present() && right.present();
  const double r1 = static_cast<double>(left.rank), r2 = static_cast<double>(right.rank);

  at::Tensor R;
  if (two_sided) {
    const bool right_first = m * n * r2 + r1 * m * r2 <= r1 * m * n + r1 * n * r2;
    R = right_first ? project(device, left, true, project(device, right, false, G, compute), compute)
                    : project(device, right, false, project(device, left, true, G, compute), compute);
  } else {
    R = left.present() ? project(device, left, true, G, compute) : project(device, right, false, G, compute);
  }

  at::Tensor m_work = working_copy(exp_avg, compute), v_work = working_copy(exp_avg_sq, compute);
  at::Tensor d_work = args.adapter ? working_copy(*delta, compute) : at::Tensor();
  device.moments(R, m_work, v_work, args.adapter ? &d_work : nullptr, args);
  write_back(m_work, exp_avg);
  write_back(v_work, exp_avg_sq);
  if (args.adapter) write_back(d_work, *delta);

  if (two_sided) {
    const bool via_left = r1 * r2 * n + m * n * r1 <= m * r1 * r2 + m * n * r2;
    if (via_left) {
      device.unproject_update(left, true, unproject(device, right, false, R), W, args);
    } else {
      device.unproject_update(right, false, unproject(device, left, true, R), W, args);
    }
  } else if (left.present()) {
    device.unproject_update(left, true, R, W, args);
  } else {
    device.unproject_update(right, false, R, W, args);
  }
}

}  // namespace

void lowrank_adamw_step_(const AdamDevice& device, const at::Tensor& W, const at::Tensor& G,
                         const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                         const std::optional<at::Tensor>& delta, c10::string_view left_kind, int64_t left_seed,
                         int64_t left_rank, const std::optional<at::Tensor>& left_matrix,
                         c10::string_view right_kind, int64_t right_seed, int64_t right_rank,
                         const std::optional<at::Tensor>& right_matrix, double lr, double beta1, double beta2,
                         double eps, double weight_decay, int64_t step, double scale, c10::string_view wd_mode) {
  const auto sides = check_adam_args(W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix,
                                     right_kind, right_seed, right_rank, right_matrix, step, wd_mode);
  const AdamArgs args{lr, beta1, beta2, eps, weight_decay, scale, step, wd_mode == "adapter"};
  const c10::DeviceGuard guard(W.device());
  step_on(device, W, G, exp_avg, exp_avg_sq, delta, sides.first, sides.second, args);
}

}  // namespace lowrank_ops
