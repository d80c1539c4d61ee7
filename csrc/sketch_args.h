// Argument checks of the sketch family, shared by the CPU and CUDA bindings so that a C++ caller gets
// the same clear error (op, argument, expected vs got) on every device (csrc/checks.h).
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "../kernels/sketch.h"
#include "checks.h"

namespace lowrank_ops {

struct ProjectionArgs {
  int kind;      // lro::SketchKind
  bool left;     // side == "left"
  int64_t dim;   // the projected dimension d
  int64_t rank;  // r
};

inline int parse_kind(const char* op, c10::string_view kind) {
  if (kind == "rademacher") return lro::kRademacher;
  if (kind == "gaussian") return lro::kGaussian;
  TORCH_CHECK(false, "lowrank_ops.", op, ": argument 'kind' must be \"rademacher\" or \"gaussian\", got \"",
              std::string(kind), "\"");
}

inline void check_philox_args(const at::Tensor& counters, int64_t rounds) {
  TORCH_CHECK(counters.scalar_type() == at::kLong,
              "lowrank_ops.philox4x32: argument 'counters' must be int64, got ", counters.scalar_type());
  TORCH_CHECK(counters.dim() >= 1 && counters.size(-1) == 4,
              "lowrank_ops.philox4x32: argument 'counters' must have shape [..., 4], got ",
              shape_str(counters));
  TORCH_CHECK(rounds >= 1 && rounds <= 16,
              "lowrank_ops.philox4x32: argument 'rounds' must be in [1, 16], got ", rounds);
  if (counters.numel() > 0) {
    const int64_t lo = counters.min().item<int64_t>(), hi = counters.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi <= 0xffffffffLL,
                "lowrank_ops.philox4x32: argument 'counters' must hold uint32 values in [0, 2^32), got "
                "values in [", lo, ", ", hi, "]");
  }
}

inline void check_fill_args(const at::Tensor& out) {
  check_float_matrix("sketch_fill_", "out", out);
  TORCH_CHECK(out.size(0) >= 1 && out.size(1) >= 1,
              "lowrank_ops.sketch_fill_: argument 'out' must have at least one row and one column, got "
              "shape ", shape_str(out));
}

inline ProjectionArgs check_project_args(const char* op, const at::Tensor& G, int64_t rank,
                                         c10::string_view kind, c10::string_view side) {
  check_float_matrix(op, "G", G);
  const bool left = parse_side(op, side);
  const int64_t dim = left ? G.size(0) : G.size(1);
  TORCH_CHECK(rank >= 1, "lowrank_ops.", op, ": argument 'rank' must be >= 1, got ", rank);
  TORCH_CHECK(dim >= 1, "lowrank_ops.", op, ": the projected dimension of 'G' (side ", std::string(side),
              ") must be >= 1, got G of shape ", shape_str(G));
  return {parse_kind(op, kind), left, dim, rank};
}

inline ProjectionArgs check_unproject_args(const char* op, const at::Tensor& R, int64_t dim,
                                           c10::string_view kind, c10::string_view side) {
  check_float_matrix(op, "R", R);
  const bool left = parse_side(op, side);
  const int64_t rank = left ? R.size(0) : R.size(1);
  TORCH_CHECK(dim >= 1, "lowrank_ops.", op, ": argument 'dim' must be >= 1, got ", dim);
  TORCH_CHECK(rank >= 1, "lowrank_ops.", op, ": the rank dimension of 'R' (side ", std::string(side),
              ") must be >= 1, got R of shape ", shape_str(R));
  return {parse_kind(op, kind), left, dim, rank};
}

}  // namespace lowrank_ops
