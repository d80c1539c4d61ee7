// Argument checks of the DCT family, shared by the CPU and CUDA bindings so that a C++ caller gets the
// same clear error (op, argument, expected vs got) on every device (csrc/checks.h).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "../kernels/dct.h"
#include "checks.h"

namespace lowrank_ops {

// How the CPU computes the scores: "gemm" (basis tiles generated into cache, times G), "fft" (a DCT of
// G through torch.fft) or "auto" (the measured faster one for the shape; see csrc/cpu/dct.cpp).
enum class DctMethod : int { kAuto = 0, kGemm = 1, kFft = 2 };

struct DctScoreArgs {
  bool left;        // side == "left": scores of the rows of D G, d = G.size(0)
  bool l2;          // norm == "l2" (else "l1")
  int64_t dim;      // d, the projected dimension
  int64_t other;    // G's other extent
  DctMethod method;
};

inline bool parse_norm(const char* op, c10::string_view norm) {
  if (norm == "l2") return true;
  TORCH_CHECK(norm == "l1", "lowrank_ops.", op, ": argument 'norm' must be \"l1\" or \"l2\", got \"",
              std::string(norm), "\"");
  return false;
}

inline DctMethod parse_method(const char* op, c10::string_view method) {
  if (method == "auto") return DctMethod::kAuto;
  if (method == "gemm") return DctMethod::kGemm;
  if (method == "fft") return DctMethod::kFft;
  TORCH_CHECK(false, "lowrank_ops.", op, ": argument 'method' must be \"auto\", \"gemm\" or \"fft\", got \"",
              std::string(method), "\"");
}

inline DctScoreArgs check_scores_args(const char* op, const at::Tensor& G, c10::string_view side,
                                      c10::string_view norm, c10::string_view method) {
  check_float_matrix(op, "G", G);
  const bool left = parse_side(op, side);
  const int64_t dim = left ? G.size(0) : G.size(1);
  TORCH_CHECK(dim >= 1, "lowrank_ops.", op, ": the projected dimension of 'G' (side ", std::string(side),
              ") must be >= 1, got G of shape ", shape_str(G));
  TORCH_CHECK(dim <= lro::kDctMaxDim, "lowrank_ops.", op, ": the projected dimension of 'G' (side ",
              std::string(side), ") must be <= ", lro::kDctMaxDim, ", got ", dim);
  return {left, parse_norm(op, norm), dim, left ? G.size(1) : G.size(0), parse_method(op, method)};
}

inline DctScoreArgs check_topk_args(const at::Tensor& G, int64_t rank, c10::string_view side,
                                    c10::string_view norm, c10::string_view method) {
  const DctScoreArgs a = check_scores_args("dct_topk", G, side, norm, method);
  TORCH_CHECK(rank >= 1, "lowrank_ops.dct_topk: argument 'rank' must be >= 1, got ", rank);
  TORCH_CHECK(rank <= a.dim, "lowrank_ops.dct_topk: argument 'rank' must be <= ", a.dim,
              " (the projected dimension d of G, side ", std::string(side), ", shape ", shape_str(G),
              "), got ", rank);
  return a;
}

inline void check_basis_args(const at::Tensor& indices, int64_t dim, at::ScalarType dtype) {
  const at::ScalarType s = indices.scalar_type();
  TORCH_CHECK(s == at::kShort || s == at::kInt || s == at::kLong,
              "lowrank_ops.dct_basis: argument 'indices' must be int16, int32 or int64, got ", s);
  TORCH_CHECK(indices.dim() == 1, "lowrank_ops.dct_basis: argument 'indices' must be a 1-D tensor, got ",
              indices.dim(), "-D tensor of shape ", shape_str(indices));
  TORCH_CHECK(dim >= 1 && dim <= lro::kDctMaxDim, "lowrank_ops.dct_basis: argument 'dim' must be in [1, ",
              lro::kDctMaxDim, "], got ", dim);
  check_float_dtype("dct_basis", "dtype", dtype);
  if (indices.numel() > 0) {
    const int64_t lo = indices.min().item<int64_t>(), hi = indices.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < dim, "lowrank_ops.dct_basis: argument 'indices' must hold values in [0, ",
                dim, "), got values in [", lo, ", ", hi, "]");
  }
}

// dct_project / dct_unproject: P[i, t] = sign_t D[indices[i], t] (r x d) applied to X on `side`.
struct DctTransformArgs {
  bool left;        // side == "left": P X / P^T X (d or r = X.size(0)); else X P^T / X P
  int64_t dim;      // d
  int64_t rank;     // r = indices.numel()
  int64_t other;    // X's other extent (the number of signals)
  DctMethod method;
};

// `project`: X = G (d along the side); else X = R (r along the side) and `dim` = d. indices: int16/32/64,
// 1-D, non-empty, values in [0, d) (read: CPU tensors); signs: absent or a 1-D float tensor of length d.
inline DctTransformArgs check_transform_args(const char* op, const at::Tensor& X, const at::Tensor& indices,
                                             int64_t dim, c10::string_view side,
                                             const std::optional<at::Tensor>& signs, c10::string_view method,
                                             bool project) {
  const char* arg = project ? "G" : "R";
  check_float_matrix(op, arg, X);
  const bool left = parse_side(op, side);
  const at::ScalarType s = indices.scalar_type();
  TORCH_CHECK(s == at::kShort || s == at::kInt || s == at::kLong, "lowrank_ops.", op,
              ": argument 'indices' must be int16, int32 or int64, got ", s);
  TORCH_CHECK(indices.dim() == 1 && indices.numel() >= 1, "lowrank_ops.", op,
              ": argument 'indices' must be a non-empty 1-D tensor, got shape ", shape_str(indices));
  const int64_t along = X.size(left ? 0 : 1), rank = indices.numel();
  if (project) dim = along;
  TORCH_CHECK(dim >= 1 && dim <= lro::kDctMaxDim, "lowrank_ops.", op, ": the projected dimension d (",
              project ? "of 'G', side " : "argument 'dim', side ", std::string(side), ") must be in [1, ",
              lro::kDctMaxDim, "], got ", dim);
  TORCH_CHECK(project || along == rank, "lowrank_ops.", op, ": argument 'R' must have ", rank,
              " (the number of indices) ", left ? "rows" : "columns", " (side ", std::string(side),
              "), got shape ", shape_str(X));
  const int64_t lo = indices.min().item<int64_t>(), hi = indices.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < dim, "lowrank_ops.", op, ": argument 'indices' must hold values in [0, ", dim,
              "), got values in [", lo, ", ", hi, "]");
  if (signs.has_value()) {
    check_float_dtype(op, "signs", signs->scalar_type());
    TORCH_CHECK(signs->dim() == 1 && signs->size(0) == dim, "lowrank_ops.", op,
                ": argument 'signs' must be a 1-D tensor of length d = ", dim, ", got shape ", shape_str(*signs));
  }
  return {left, dim, rank, X.size(left ? 1 : 0), parse_method(op, method)};
}

}  // namespace lowrank_ops
