// Argument checks of the lowrank_adam family (the fused low-rank AdamW step), so that a C++ or torch.ops
// caller gets the same clear error (op, argument, expected vs got) on every device (csrc/checks.h).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "../kernels/sketch.h"
#include "../kernels/sr_dct.h"
#include "checks.h"

namespace lowrank_ops {

// One side operator of the projection R = L G R^T (lowrank_ops/ops/projection.py).
// kSideDct: P[i, :] = D[indices[i], :], rows of the dim x dim orthonormal DCT-II basis (kernels/dct.h),
// generated tile by tile from the index vector like a seeded sketch from its seed. kSideSrDct: the same rows
// with the signs of the side's seed, P[i, t] = sign_t D[indices[i], t] (kernels/sr_dct.h).
enum SideKind : int {
  kSideNone = -1,
  kSideRademacher = lro::kRademacher,
  kSideGaussian = lro::kGaussian,
  kSideMatrix = 2,
  kSideDct = 3,
  kSideSrDct = 4
};

struct SideOp {
  int kind = kSideNone;
  uint64_t seed = 0;
  int64_t rank = 0;    // rows of P
  int64_t dim = 0;     // columns of P: the projected dimension of W
  at::Tensor matrix;   // kSideMatrix: P (rank x dim), in the compute dtype
  at::Tensor indices;  // kSideDct, kSideSrDct: the basis rows, int64, contiguous, on W's device
  bool present() const { return kind != kSideNone; }
  bool seeded() const { return kind == kSideRademacher || kind == kSideGaussian; }
  // P is rows of the DCT-II basis given by `indices` (signed by `seed` for kSideSrDct).
  bool basis() const { return kind == kSideDct || kind == kSideSrDct; }
  // P is generated inside the kernels (from a seed or from indices), never read from memory.
  bool generated() const { return seeded() || basis(); }
  // out[j] = P[i, t0 + j] for j in [0, len) of a basis side whose indices are on the CPU (T float or double).
  template <typename T>
  void fill_basis_segment(int64_t i, int64_t t0, int64_t len, T* out) const {
    const int64_t k = indices.const_data_ptr<int64_t>()[i];
    if (kind == kSideSrDct) {
      lro::srdct_fill_segment<T>(dim, k, seed, t0, len, out);
    } else {
      lro::dct_fill_segment<T>(dim, k, t0, len, out);
    }
  }
};

// The scalars of one step, as the schema passes them.
struct AdamArgs {
  double lr, beta1, beta2, eps, weight_decay, scale;
  int64_t step;
  bool adapter;  // wd_mode == "adapter"
};

inline constexpr char kAdamOp[] = "lowrank_adamw_step_";

// The index vector of a "dct" or "sr_dct" side (passed in the side's matrix slot): 1-D int16/int32/int64 of
// length rank on W's device, values in [0, dim). The values are read only on the CPU: on CUDA that would be a device
// sync per step (lowrank_ops/ops/lowrank_adam.py says why that is safe). Returned as contiguous int64.
inline at::Tensor parse_dct_indices(const char* side, const char* kind, const at::Tensor& indices, int64_t rank,
                                    int64_t dim, const at::Tensor& W) {
  const std::string name = std::string(side) + "_matrix";
  const at::ScalarType t = indices.scalar_type();
  TORCH_CHECK(indices.dim() == 1 && indices.size(0) == rank && (t == at::kShort || t == at::kInt || t == at::kLong),
              "lowrank_ops.", kAdamOp, ": argument '", name, "' of kind \"", kind, "\" must be a 1-D int16, int32 or ",
              "int64 index vector of length ", rank, " (the rank), got ", t, " of shape ", shape_str(indices));
  TORCH_CHECK(indices.device() == W.device(), "lowrank_ops.", kAdamOp, ": argument '", name,
              "' must be on W's device ", W.device(), ", got ", indices.device());
  TORCH_CHECK(dim <= lro::kDctMaxDim, "lowrank_ops.", kAdamOp, ": kind \"", kind, "\" needs a projected dimension <= ",
              lro::kDctMaxDim, ", got ", dim);
  if (indices.device().is_cpu() && rank > 0) {
    const int64_t lo = indices.min().item<int64_t>(), hi = indices.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < dim, "lowrank_ops.", kAdamOp, ": argument '", name, "' must hold values in [0, ", dim,
                ") (basis rows of the projected dimension), got values in [", lo, ", ", hi, "]");
  }
  return indices.to(at::kLong).contiguous();
}

inline SideOp parse_side_op(const char* side, c10::string_view kind, int64_t seed, int64_t rank,
                         const std::optional<at::Tensor>& matrix, int64_t dim, const at::Tensor& W) {
  SideOp s;
  if (kind == "none") {
    s.kind = kSideNone;
  } else if (kind == "rademacher") {
    s.kind = kSideRademacher;
  } else if (kind == "gaussian") {
    s.kind = kSideGaussian;
  } else if (kind == "matrix") {
    s.kind = kSideMatrix;
  } else if (kind == "dct") {
    s.kind = kSideDct;
  } else if (kind == "sr_dct") {
    s.kind = kSideSrDct;
  } else {
    TORCH_CHECK(false, "lowrank_ops.", kAdamOp, ": argument '", side,
                "_kind' must be \"none\", \"rademacher\", \"gaussian\", \"matrix\", \"dct\" or \"sr_dct\", got \"",
                std::string(kind), "\"");
  }
  if (!s.present()) return s;
  TORCH_CHECK(rank >= 1, "lowrank_ops.", kAdamOp, ": argument '", side, "_rank' must be >= 1, got ", rank);
  s.seed = static_cast<uint64_t>(seed);
  s.rank = rank;
  s.dim = dim;
  const bool has_matrix = matrix.has_value() && matrix->defined();
  TORCH_CHECK(has_matrix != s.seeded(), "lowrank_ops.", kAdamOp, ": argument '", side, "_matrix' must be ",
              s.kind == kSideMatrix ? "a tensor for kind \"matrix\""
              : s.basis()           ? "the index vector for kinds \"dct\" and \"sr_dct\""
                                    : "None for a seeded kind",
              ", got ", has_matrix ? "a tensor" : "None");
  if (has_matrix && s.basis()) {
    s.indices = parse_dct_indices(side, s.kind == kSideDct ? "dct" : "sr_dct", *matrix, rank, dim, W);
  } else if (has_matrix) {
    const std::string name = std::string(side) + "_matrix";
    check_float_matrix(kAdamOp, name.c_str(), *matrix);
    TORCH_CHECK(matrix->size(0) == rank && matrix->size(1) == dim, "lowrank_ops.", kAdamOp, ": argument '", name,
                "' must have shape [", rank, ", ", dim, "], got ", shape_str(*matrix));
    TORCH_CHECK(matrix->device() == W.device(), "lowrank_ops.", kAdamOp, ": argument '", name,
                "' must be on W's device ", W.device(), ", got ", matrix->device());
    s.matrix = matrix->to(compute_dtype(W.scalar_type()));
  }
  return s;
}

inline void check_state(const char* name, const at::Tensor& t, const at::Tensor& W, int64_t rows, int64_t cols,
                        bool codes = false) {
  const bool dtype_ok = codes ? t.scalar_type() == at::kByte
                              : t.scalar_type() == at::kFloat ||
                                    (W.scalar_type() == at::kDouble && t.scalar_type() == at::kDouble);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols && dtype_ok, "lowrank_ops.", kAdamOp,
              ": argument '", name, "' must be a ", codes ? "uint8 (8-bit codes)" : "float32",
              " tensor of the projected shape [", rows, ", ", cols, "], got ", t.scalar_type(), " of shape ",
              shape_str(t));
  TORCH_CHECK(t.device() == W.device(), "lowrank_ops.", kAdamOp, ": argument '", name, "' must be on W's device ",
              W.device(), ", got ", t.device());
}

// Checks every argument; returns the two sides (left acts on W's rows, right on its columns). `codes`: the
// moments are 8-bit codes (uint8; their absmax are checked by attach_q8_moments).
inline std::pair<SideOp, SideOp> check_adam_args(const at::Tensor& W, const at::Tensor& G, const at::Tensor& exp_avg,
                                                 const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& delta,
                                                 c10::string_view left_kind, int64_t left_seed, int64_t left_rank,
                                                 const std::optional<at::Tensor>& left_matrix,
                                                 c10::string_view right_kind, int64_t right_seed, int64_t right_rank,
                                                 const std::optional<at::Tensor>& right_matrix, int64_t step,
                                                 c10::string_view wd_mode, bool codes = false) {
  check_float_matrix(kAdamOp, "W", W);
  check_float_matrix(kAdamOp, "G", G);
  const at::ScalarType w = W.scalar_type();
  TORCH_CHECK(w == at::kFloat || w == at::kBFloat16 || w == at::kDouble, "lowrank_ops.", kAdamOp,
              ": argument 'W' must be float32, bfloat16 or float64, got ", w);
  TORCH_CHECK(G.sizes() == W.sizes(), "lowrank_ops.", kAdamOp, ": argument 'G' must be of W's shape ",
              shape_str(W), ", got ", shape_str(G));
  TORCH_CHECK(G.device() == W.device(), "lowrank_ops.", kAdamOp, ": argument 'G' must be on W's device ",
              W.device(), ", got ", G.device());
  const SideOp left = parse_side_op("left", left_kind, left_seed, left_rank, left_matrix, W.size(0), W);
  const SideOp right = parse_side_op("right", right_kind, right_seed, right_rank, right_matrix, W.size(1), W);
  TORCH_CHECK(left.present() || right.present(), "lowrank_ops.", kAdamOp,
              ": at least one of 'left_kind' and 'right_kind' must not be \"none\"");
  const int64_t rows = left.present() ? left.rank : W.size(0);
  const int64_t cols = right.present() ? right.rank : W.size(1);
  check_state("exp_avg", exp_avg, W, rows, cols, codes);
  check_state("exp_avg_sq", exp_avg_sq, W, rows, cols, codes);
  TORCH_CHECK(wd_mode == "full" || wd_mode == "adapter", "lowrank_ops.", kAdamOp,
              ": argument 'wd_mode' must be \"full\" or \"adapter\", got \"", std::string(wd_mode), "\"");
  const bool has_delta = delta.has_value() && delta->defined();
  TORCH_CHECK(has_delta || wd_mode != "adapter", "lowrank_ops.", kAdamOp,
              ": argument 'delta' must be a tensor when wd_mode is \"adapter\", got None");
  if (has_delta) check_state("delta", *delta, W, rows, cols);
  TORCH_CHECK(step >= 1, "lowrank_ops.", kAdamOp, ": argument 'step' must be >= 1 (the step count after increment), got ",
              step);
  return {left, right};
}

}  // namespace lowrank_ops
