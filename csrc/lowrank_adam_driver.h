// The fused low-rank AdamW step (lowrank_ops/reference/lowrank_adam.py), device-independent part: the
// order of the GEMMs and their tiling. The per-device parts (sketch tile generation, the moment epilogue,
// the unprojection GEMM with the weight-update epilogue) come in an AdamDevice; csrc/cpu/lowrank_adam.cpp
// and csrc/cuda/lowrank_adam.cpp provide one each.
//
// Projection R = L G R^T. One side: a GEMM over tiles of P's columns (the projected dimension d), each
// tile of P generated into a cache-sized buffer (seeded kinds) or read from the matrix, and G read tile by
// tile in the compute dtype:
//   left   R = P G   = sum_k P[:, k] G[k, :]          right   R = G P^T = sum_k G[:, k] P[:, k]^T
// Two sides: two such GEMMs, the one on G first, in the order with fewer flops.
// Moments: one elementwise pass over R (kernels/adam.h), which leaves the direction in R's buffer.
// Unprojection with the weight update, tile by tile of P's columns, so that only a tile of U is formed:
//   left   W[k, :] <- update(W[k, :], P[:, k]^T Y)    right   W[:, k] <- update(W[:, k], Y P[:, k])
// with Y the direction (one side) or, for two sides, D R (r1 x n, then left) or L^T D (m x r2, then
// right), whichever costs fewer flops.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>

#include "cpu/sketch_tile.h"
#include "lowrank_adam_args.h"

namespace lowrank_ops {

struct AdamDevice {
  // tile (rank x width, compute dtype, unit column stride) <- P[:, k0 : k0 + width] of a seeded side.
  void (*fill_sketch)(const SideOp& side, int64_t k0, int64_t width, at::Tensor& tile);
  // The moments of every element of r (the projected gradient; contiguous, compute dtype), in place on
  // the states (contiguous, compute dtype; delta only in the adapter mode); r is overwritten with the
  // direction to unproject.
  void (*moments)(at::Tensor& r, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor* delta,
                  const AdamArgs& args);
  // w_block <- adam_weight_update(w_block, U) with U = p^T y (left: w_block holds rows of W) or y p
  // (right: columns of W). p is rank x width, y the direction operand, both in the compute dtype.
  void (*update)(const at::Tensor& w_block, const at::Tensor& p, const at::Tensor& y, bool left, const AdamArgs& args);
};

namespace adam_driver {

// Calls fn(k0, width, P[:, k0 : k0 + width]) for consecutive column tiles of the side's P.
template <typename Fn>
void for_each_tile(const SideOp& side, const at::TensorOptions& options, const AdamDevice& device, Fn fn) {
  const int64_t kb = tile_columns(side.dim);
  at::Tensor buffer = side.seeded() ? at::empty({side.rank, kb}, options) : at::Tensor();
  for (int64_t k0 = 0; k0 < side.dim; k0 += kb) {
    const int64_t width = std::min(kb, side.dim - k0);
    if (side.seeded()) {
      at::Tensor tile = buffer.narrow(1, 0, width);
      device.fill_sketch(side, k0, width, tile);
      fn(k0, width, tile);
    } else {
      fn(k0, width, side.matrix.narrow(1, k0, width));
    }
  }
}

// P X (left, X: dim x c) or X P^T (right, X: c x dim), accumulated in `compute`.
inline at::Tensor project(const SideOp& side, bool left, const at::Tensor& X, at::ScalarType compute,
                          const AdamDevice& device) {
  const at::TensorOptions options = X.options().dtype(compute);
  at::Tensor acc = left ? at::zeros({side.rank, X.size(1)}, options) : at::zeros({X.size(0), side.rank}, options);
  for_each_tile(side, options, device, [&](int64_t k0, int64_t width, const at::Tensor& p) {
    if (left) {
      acc.addmm_(p, X.narrow(0, k0, width).to(compute));
    } else {
      acc.addmm_(X.narrow(1, k0, width).to(compute), p.t());
    }
  });
  return acc;
}

// P^T Y (left: dim x c) or Y P (right: c x dim) for a small Y (the first GEMM of a two-sided unprojection).
inline at::Tensor unproject(const SideOp& side, bool left, const at::Tensor& Y, const AdamDevice& device) {
  at::Tensor out = left ? at::empty({side.dim, Y.size(1)}, Y.options()) : at::empty({Y.size(0), side.dim}, Y.options());
  for_each_tile(side, Y.options(), device, [&](int64_t k0, int64_t width, const at::Tensor& p) {
    if (left) {
      at::Tensor rows = out.narrow(0, k0, width);
      at::mm_out(rows, p.t(), Y);
    } else {
      at::Tensor cols = out.narrow(1, k0, width);
      at::mm_out(cols, Y, p);
    }
  });
  return out;
}

// W <- update(W, P^T Y) (left) or update(W, Y P) (right), one tile of P's columns at a time.
inline void unproject_update(const SideOp& side, bool left, const at::Tensor& Y, const at::Tensor& W, const AdamArgs& args,
                             const AdamDevice& device) {
  for_each_tile(side, Y.options(), device, [&](int64_t k0, int64_t width, const at::Tensor& p) {
    const at::Tensor block = left ? W.narrow(0, k0, width) : W.narrow(1, k0, width);
    device.update(block, p, Y, left, args);
  });
}

// `state` as a contiguous tensor of `compute`: itself when it already is one, else a copy (written back
// by write_back).
inline at::Tensor working_copy(const at::Tensor& state, at::ScalarType compute) {
  return state.scalar_type() == compute && state.is_contiguous() ? state : state.to(compute).contiguous();
}

inline void write_back(const at::Tensor& work, const at::Tensor& state) {
  if (!work.is_same(state)) state.copy_(work);
}

}  // namespace adam_driver

// The whole step (arguments already checked by check_adam_args).
inline void lowrank_adamw_step(const at::Tensor& W, const at::Tensor& G, const at::Tensor& exp_avg,
                               const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& delta,
                               const SideOp& left, const SideOp& right, const AdamArgs& args,
                               const AdamDevice& device) {
  using namespace adam_driver;
  const at::ScalarType compute = compute_dtype(W.scalar_type());
  const double m = static_cast<double>(W.size(0)), n = static_cast<double>(W.size(1));
  const bool two_sided = left.present() && right.present();
  const double r1 = static_cast<double>(left.rank), r2 = static_cast<double>(right.rank);

  at::Tensor R;
  if (two_sided) {
    const bool right_first = m * n * r2 + r1 * m * r2 <= r1 * m * n + r1 * n * r2;
    R = right_first ? project(left, true, project(right, false, G, compute, device), compute, device)
                    : project(right, false, project(left, true, G, compute, device), compute, device);
  } else {
    R = left.present() ? project(left, true, G, compute, device) : project(right, false, G, compute, device);
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
      unproject_update(left, true, unproject(right, false, R, device), W, args, device);
    } else {
      unproject_update(right, false, unproject(left, true, R, device), W, args, device);
    }
  } else if (left.present()) {
    unproject_update(left, true, R, W, args, device);
  } else {
    unproject_update(right, false, R, W, args, device);
  }
}

// The op with the schema's arguments (csrc/registration.cpp): checks them, then runs the step on `device`.
inline void lowrank_adamw_step_op(const AdamDevice& device, const at::Tensor& W, const at::Tensor& G,
                                  const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                                  const std::optional<at::Tensor>& delta, c10::string_view left_kind,
                                  int64_t left_seed, int64_t left_rank, const std::optional<at::Tensor>& left_matrix,
                                  c10::string_view right_kind, int64_t right_seed, int64_t right_rank,
                                  const std::optional<at::Tensor>& right_matrix, double lr, double beta1, double beta2,
                                  double eps, double weight_decay, int64_t step, double scale,
                                  c10::string_view wd_mode) {
  const auto sides = check_adam_args(W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix,
                                     right_kind, right_seed, right_rank, right_matrix, step, wd_mode);
  const AdamArgs args{lr, beta1, beta2, eps, weight_decay, scale, step, wd_mode == "adapter"};
  lowrank_adamw_step(W, G, exp_avg, exp_avg_sq, delta, sides.first, sides.second, args, device);
}

}  // namespace lowrank_ops
