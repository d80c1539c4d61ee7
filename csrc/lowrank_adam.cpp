// The fused low-rank AdamW step (lowrank_ops/pure_torch/lowrank_adam.py has the math as a chain of torch
// ops), device-independent part: the order of the GEMMs, run on the per-device parts of an AdamDevice
// (csrc/lowrank_adam_impl.h; csrc/cpu/lowrank_adam.cpp and csrc/cuda/lowrank_adam.cpp provide one each).
//
// Projection R = L G R^T. A seeded side is the device's sketch kernel (sketch_project: P generated tile by
// tile, never materialized); an explicit side is a GEMM with its matrix, over tiles of the projected
// dimension when G must be converted to the compute dtype; a "dct" or "sr_dct" side is the same
// tiled GEMM on basis tiles the device generates from the index vector (and, "sr_dct", the sign seed;
// AdamDevice::fill_dct), so P is never materialized either. Two sides: two such GEMMs, the one on G first, in the order with fewer flops.
// Moments: one elementwise pass over R (kernels/adam.h), which leaves the direction in R's buffer.
// Unprojection with the weight update (the device's hook), one tile of P's columns at a time, so that only
// a tile of U = P^T Y or Y P is ever formed:
//   left   W[k, :] <- update(W[k, :], P[:, k]^T Y)    right   W[:, k] <- update(W[:, k], Y P[:, k])
// with Y the direction (one side) or, for two sides, D R (r1 x n, then left) or L^T D (m x r2, then
// right), whichever costs fewer flops.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <string>
#include <vector>

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

// P[:, k0 : k0 + width] of an explicit side (a view of its matrix) or of a basis side ("dct", "sr_dct":
// generated into `buffer`, rank x kb in the compute dtype).
at::Tensor operator_columns(const AdamDevice& device, const SideOp& side, int64_t k0, int64_t width,
                            const at::Tensor& buffer) {
  if (!side.basis()) return side.matrix.narrow(1, k0, width);
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
  // a basis P generated one tile at a time.
  at::Tensor acc = left ? at::zeros({side.rank, X.size(1)}, options) : at::zeros({X.size(0), side.rank}, options);
  const int64_t kb = tile_columns(side.dim);
  const at::Tensor buffer = side.basis() ? at::empty({side.rank, kb}, options) : at::Tensor();
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

}  // namespace

namespace {

// R = L G R^T of one matrix in the compute dtype (two sides: the GEMM order with fewer flops).
at::Tensor project_matrix(const AdamDevice& device, const AdamMatrix& matrix, at::ScalarType compute) {
  const SideOp &left = matrix.left, &right = matrix.right;
  const double m = static_cast<double>(matrix.W.size(0)), n = static_cast<double>(matrix.W.size(1));
  const double r1 = static_cast<double>(left.rank), r2 = static_cast<double>(right.rank);
  if (left.present() && right.present()) {
    const bool right_first = m * n * r2 + r1 * m * r2 <= r1 * m * n + r1 * n * r2;
    return right_first ? project(device, left, true, project(device, right, false, matrix.G, compute), compute)
                       : project(device, right, false, project(device, left, true, matrix.G, compute), compute);
  }
  return left.present() ? project(device, left, true, matrix.G, compute)
                        : project(device, right, false, matrix.G, compute);
}

// W <- update(W, L^T D R) for the direction D (the projected shape, compute dtype).
void unproject_update_matrix(const AdamDevice& device, const AdamMatrix& matrix, const at::Tensor& D) {
  const SideOp &left = matrix.left, &right = matrix.right;
  const double m = static_cast<double>(matrix.W.size(0)), n = static_cast<double>(matrix.W.size(1));
  const double r1 = static_cast<double>(left.rank), r2 = static_cast<double>(right.rank);
  if (left.present() && right.present()) {
    const bool via_left = r1 * r2 * n + m * n * r1 <= m * r1 * r2 + m * n * r2;
    if (via_left) {
      device.unproject_update(left, true, unproject(device, right, false, D), matrix.W, matrix.args);
    } else {
      device.unproject_update(right, false, unproject(device, left, true, D), matrix.W, matrix.args);
    }
  } else if (left.present()) {
    device.unproject_update(left, true, D, matrix.W, matrix.args);
  } else {
    device.unproject_update(right, false, D, matrix.W, matrix.args);
  }
}

bool same_side(const SideOp& a, const SideOp& b) { return a.kind == b.kind && a.rank == b.rank; }

bool same_args(const AdamArgs& a, const AdamArgs& b) {
  return a.lr == b.lr && a.beta1 == b.beta1 && a.beta2 == b.beta2 && a.eps == b.eps &&
         a.weight_decay == b.weight_decay && a.scale == b.scale && a.step == b.step && a.adapter == b.adapter;
}

// Whether two matrices can share one moment pass: float moments (an 8-bit matrix runs run_adam_step alone), the
// same shapes, dtypes, side kinds and ranks, and the same step scalars (kernels/adam.h's AdamStep is one per pass).
bool same_group(const AdamMatrix& a, const AdamMatrix& b) {
  return !a.quantized() && !b.quantized() && a.W.sizes() == b.W.sizes() && a.W.scalar_type() == b.W.scalar_type() &&
         a.G.scalar_type() == b.G.scalar_type() && a.exp_avg.scalar_type() == b.exp_avg.scalar_type() &&
         a.exp_avg_sq.scalar_type() == b.exp_avg_sq.scalar_type() &&
         (!a.args.adapter || a.delta->scalar_type() == b.delta->scalar_type()) && same_side(a.left, b.left) &&
         same_side(a.right, b.right) && same_args(a.args, b.args);
}

// The states of a group stacked into one [B, ...] tensor of the compute dtype (written back by unstack_into).
at::Tensor stacked(const std::vector<at::Tensor>& states, at::ScalarType compute) {
  return at::stack(states).to(compute).contiguous();
}

void unstack_into(const at::Tensor& work, const std::vector<at::Tensor>& states) {
  for (size_t b = 0; b < states.size(); ++b) states[b].copy_(work[static_cast<int64_t>(b)]);
}

// One group (same_group): the projections per matrix into one [B, r1, r2] buffer, ONE moment pass over the
// whole group, then each matrix's unprojection with the weight update.
void run_group(const AdamDevice& device, const std::vector<AdamMatrix>& matrices, const std::vector<size_t>& group) {
  const AdamMatrix& first = matrices[group[0]];
  const at::ScalarType compute = compute_dtype(first.W.scalar_type());
  std::vector<at::Tensor> Rs, ms, vs, ds;
  for (size_t i : group) {
    const AdamMatrix& x = matrices[i];
    Rs.push_back(project_matrix(device, x, compute));
    ms.push_back(x.exp_avg);
    vs.push_back(x.exp_avg_sq);
    if (x.args.adapter) ds.push_back(*x.delta);
  }
  at::Tensor R = at::stack(Rs), m_work = stacked(ms, compute), v_work = stacked(vs, compute);
  at::Tensor d_work = first.args.adapter ? stacked(ds, compute) : at::Tensor();
  device.moments(R, m_work, v_work, first.args.adapter ? &d_work : nullptr, first.args);
  unstack_into(m_work, ms);
  unstack_into(v_work, vs);
  if (first.args.adapter) unstack_into(d_work, ds);
  for (size_t b = 0; b < group.size(); ++b) unproject_update_matrix(device, matrices[group[b]], R[static_cast<int64_t>(b)]);
}

}  // namespace

void run_adam_step(const AdamDevice& device, const AdamMatrix& matrix) {
  const at::ScalarType compute = compute_dtype(matrix.W.scalar_type());
  at::Tensor R = project_matrix(device, matrix, compute);
  if (matrix.quantized()) {  // the 8-bit epilogue decodes, updates and encodes the moments itself
    TORCH_CHECK(device.moments8 != nullptr, "lowrank_ops.", kAdamOp, ": 8-bit moments on ", matrix.W.device(),
                " are not in this device's C++ kernels yet");
    at::Tensor d_work = matrix.args.adapter ? working_copy(*matrix.delta, compute) : at::Tensor();
    device.moments8(R, matrix, matrix.args.adapter ? &d_work : nullptr);
    if (matrix.args.adapter) write_back(d_work, *matrix.delta);
    unproject_update_matrix(device, matrix, R);
    return;
  }
  at::Tensor m_work = working_copy(matrix.exp_avg, compute), v_work = working_copy(matrix.exp_avg_sq, compute);
  at::Tensor d_work = matrix.args.adapter ? working_copy(*matrix.delta, compute) : at::Tensor();
  device.moments(R, m_work, v_work, matrix.args.adapter ? &d_work : nullptr, matrix.args);
  write_back(m_work, matrix.exp_avg);
  write_back(v_work, matrix.exp_avg_sq);
  if (matrix.args.adapter) write_back(d_work, *matrix.delta);
  unproject_update_matrix(device, matrix, R);
}

void lowrank_adamw_step8_(const AdamDevice& device, const at::Tensor& W, const at::Tensor& G,
                          const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                          const std::optional<at::Tensor>& delta, c10::string_view left_kind, int64_t left_seed,
                          int64_t left_rank, const std::optional<at::Tensor>& left_matrix,
                          c10::string_view right_kind, int64_t right_seed, int64_t right_rank,
                          const std::optional<at::Tensor>& right_matrix, double lr, double beta1, double beta2,
                          double eps, double weight_decay, int64_t step, double scale, c10::string_view wd_mode,
                          const at::Tensor& exp_avg_absmax, const at::Tensor& exp_avg_sq_absmax,
                          int64_t state_block_size) {
  const auto sides = check_adam_args(W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix,
                                     right_kind, right_seed, right_rank, right_matrix, step, wd_mode, true);
  const AdamArgs args{lr, beta1, beta2, eps, weight_decay, scale, step, wd_mode == "adapter"};
  AdamMatrix matrix{W, G, exp_avg, exp_avg_sq, delta, sides.first, sides.second, args};
  attach_q8_moments(matrix, exp_avg_absmax, exp_avg_sq_absmax, state_block_size);
  const c10::DeviceGuard guard(W.device());
  run_adam_step(device, matrix);
}

void attach_q8_moments(AdamMatrix& matrix, const at::Tensor& exp_avg_absmax, const at::Tensor& exp_avg_sq_absmax,
                       int64_t state_block_size) {
  TORCH_CHECK(state_block_size >= 1, "lowrank_ops.", kAdamOp, ": argument 'state_block_size' must be >= 1, got ",
              state_block_size);
  const int64_t rows = matrix.exp_avg.size(0);
  const int64_t blocks = (matrix.exp_avg.size(1) + state_block_size - 1) / state_block_size;
  for (const auto& [name, absmax] : {std::pair<const char*, const at::Tensor*>{"exp_avg_absmax", &exp_avg_absmax},
                                     {"exp_avg_sq_absmax", &exp_avg_sq_absmax}}) {
    TORCH_CHECK(absmax->scalar_type() == at::kFloat && absmax->dim() == 2 && absmax->size(0) == rows &&
                    absmax->size(1) == blocks && absmax->device() == matrix.W.device(),
                "lowrank_ops.", kAdamOp, ": argument '", name, "' must be a float32 tensor of shape [", rows, ", ",
                blocks, "] on W's device, got ", absmax->scalar_type(), " of shape ", shape_str(*absmax));
  }
  matrix.exp_avg_absmax = exp_avg_absmax;
  matrix.exp_avg_sq_absmax = exp_avg_sq_absmax;
  matrix.state_block = state_block_size;
}

void run_adam_steps_grouped(const AdamDevice& device, const std::vector<AdamMatrix>& matrices) {
  std::vector<std::vector<size_t>> groups;
  for (size_t i = 0; i < matrices.size(); ++i) {
    auto found = std::find_if(groups.begin(), groups.end(),
                              [&](const std::vector<size_t>& g) { return same_group(matrices[g[0]], matrices[i]); });
    if (found == groups.end()) {
      groups.push_back({i});
    } else {
      found->push_back(i);
    }
  }
  for (const std::vector<size_t>& group : groups) {
    if (group.size() == 1) {
      run_adam_step(device, matrices[group[0]]);
    } else {
      run_group(device, matrices, group);
    }
  }
}

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
  run_adam_step(device, AdamMatrix{W, G, exp_avg, exp_avg_sq, delta, sides.first, sides.second, args});
}

namespace {

constexpr char kMultiOp[] = "lowrank_adamw_multi_step_";

template <typename T>
void check_length(const char* name, const std::vector<T>& list, size_t count) {
  TORCH_CHECK(list.size() == count, "lowrank_ops.", kMultiOp, ": argument '", name,
              "' must have one entry per matrix (", count, ", as 'W'), got ", list.size());
}

// A single-matrix check's message ("lowrank_ops.lowrank_adamw_step_: argument ...") for matrix i of the
// multi-tensor op: "lowrank_ops.lowrank_adamw_multi_step_: matrix i: argument ...".
[[noreturn]] void rethrow_for_matrix(const c10::Error& error, size_t i) {
  std::string message = error.what_without_backtrace();
  const std::string prefix = std::string("lowrank_ops.") + kAdamOp + ": ";
  if (message.rfind(prefix, 0) == 0) message = message.substr(prefix.size());
  TORCH_CHECK(false, "lowrank_ops.", kMultiOp, ": matrix ", i, ": ", message);
}

}  // namespace

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
    const std::vector<at::Tensor>& exp_avg_absmax, const std::vector<at::Tensor>& exp_avg_sq_absmax,
    const std::vector<int64_t>& state_block_size) {
  const size_t count = W.size();
  check_length("G", G, count);
  check_length("exp_avg", exp_avg, count);
  check_length("exp_avg_sq", exp_avg_sq, count);
  check_length("left_kind", left_kind, count);
  check_length("left_seed", left_seed, count);
  check_length("left_rank", left_rank, count);
  check_length("left_matrix", left_matrix, count);
  check_length("right_kind", right_kind, count);
  check_length("right_seed", right_seed, count);
  check_length("right_rank", right_rank, count);
  check_length("right_matrix", right_matrix, count);
  check_length("lr", lr, count);
  check_length("beta1", beta1, count);
  check_length("beta2", beta2, count);
  check_length("eps", eps, count);
  check_length("weight_decay", weight_decay, count);
  check_length("step", step, count);
  check_length("scale", scale, count);
  check_length("wd_mode", wd_mode, count);
  const size_t adapters = static_cast<size_t>(std::count(wd_mode.begin(), wd_mode.end(), "adapter"));
  TORCH_CHECK(delta.size() == adapters, "lowrank_ops.", kMultiOp, ": argument 'delta' must hold one adapter per ",
              "matrix in wd_mode \"adapter\" (", adapters, "), got ", delta.size());
  TORCH_CHECK(state_block_size.empty() || state_block_size.size() == count, "lowrank_ops.", kMultiOp,
              ": argument 'state_block_size' must be empty or have one entry per matrix (", count, ", as 'W'), got ",
              state_block_size.size());
  const size_t quantized = static_cast<size_t>(
      std::count_if(state_block_size.begin(), state_block_size.end(), [](int64_t b) { return b != 0; }));
  for (const auto& [name, list] : {std::pair<const char*, const std::vector<at::Tensor>*>{"exp_avg_absmax",
                                                                                         &exp_avg_absmax},
                                   {"exp_avg_sq_absmax", &exp_avg_sq_absmax}}) {
    TORCH_CHECK(list->size() == quantized, "lowrank_ops.", kMultiOp, ": argument '", name, "' must hold one ",
                "absmax per matrix with 8-bit moments (state_block_size != 0: ", quantized, "), got ", list->size());
  }
  std::vector<AdamMatrix> matrices;
  matrices.reserve(count);
  size_t next_adapter = 0, next_q8 = 0;
  for (size_t i = 0; i < count; ++i) {
    const bool adapter = wd_mode[i] == "adapter";
    const int64_t block = state_block_size.empty() ? 0 : state_block_size[i];
    const std::optional<at::Tensor> d = adapter ? std::optional<at::Tensor>(delta[next_adapter++]) : std::nullopt;
    try {
      TORCH_CHECK(W[i].device() == W[0].device(), "lowrank_ops.", kAdamOp, ": argument 'W' must be on the device ",
                  "of W[0] (", W[0].device(), "), got ", W[i].device());
      const auto sides = check_adam_args(W[i], G[i], exp_avg[i], exp_avg_sq[i], d, left_kind[i], left_seed[i],
                                         left_rank[i], left_matrix[i], right_kind[i], right_seed[i], right_rank[i],
                                         right_matrix[i], step[i], wd_mode[i], block != 0);
      const AdamArgs args{lr[i], beta1[i], beta2[i], eps[i], weight_decay[i], scale[i], step[i], adapter};
      AdamMatrix matrix{W[i], G[i], exp_avg[i], exp_avg_sq[i], d, sides.first, sides.second, args};
      if (block != 0) {
        attach_q8_moments(matrix, exp_avg_absmax[next_q8], exp_avg_sq_absmax[next_q8], block);
        ++next_q8;
      }
      matrices.push_back(std::move(matrix));
    } catch (const c10::Error& error) {
      rethrow_for_matrix(error, i);
    }
  }
  return matrices;
}

}  // namespace lowrank_ops
