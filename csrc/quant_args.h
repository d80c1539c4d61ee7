// Argument checks of the quant family, shared by the CPU and CUDA bindings so that a C++ caller gets the
// same clear error (op, argument, expected vs got) on every device (csrc/checks.h).
//
// Storage (docs/DESIGN.md §3, kernels/quant.h), W of shape [rows, cols] = [out, in], group size g:
//   int8: codes int8 [rows, cols], scales float32 [rows, ceil(cols / g)]
//   nf4:  codes uint8 [ceil(rows cols / 2)], scales (absmax) float32 [ceil(rows cols / g)], g even
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <tuple>

#include "../kernels/quant.h"
#include "checks.h"

namespace lowrank_ops {

inline int parse_quant_format(const char* op, c10::string_view format) {
  if (format == "int8") return lro::kQuantInt8;
  if (format == "nf4") return lro::kQuantNF4;
  TORCH_CHECK(false, "lowrank_ops.", op, ": argument 'format' must be \"int8\" or \"nf4\", got \"",
              std::string(format), "\"");
}

inline void check_group_size(const char* op, int format, int64_t group_size) {
  TORCH_CHECK(group_size >= 1, "lowrank_ops.", op, ": argument 'group_size' must be >= 1, got ", group_size);
  TORCH_CHECK(format != lro::kQuantNF4 || group_size % 2 == 0, "lowrank_ops.", op,
              ": argument 'group_size' must be even for format \"nf4\" (two codes per byte never straddle "
              "two blocks), got ", group_size);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The W these codes describe; checks every tensor against the storage layout above.
inline lro::QuantMatrix check_quant_weight(const char* op, const at::Tensor& codes, const at::Tensor& scales,
                                           c10::string_view format, int64_t group_size, int64_t rows,
                                           int64_t cols) {
  const int fmt = parse_quant_format(op, format);
  check_group_size(op, fmt, group_size);
  TORCH_CHECK(rows >= 1 && cols >= 1, "lowrank_ops.", op, ": arguments 'rows' and 'cols' must be >= 1, got ",
              rows, " and ", cols);
  TORCH_CHECK(codes.device() == scales.device(), "lowrank_ops.", op,
              ": 'codes' and 'scales' must be on the same device, got ", codes.device(), " and ",
              scales.device());
  TORCH_CHECK(scales.scalar_type() == at::kFloat, "lowrank_ops.", op, ": argument 'scales' must be float32, got ",
              scales.scalar_type());
  TORCH_CHECK(codes.is_contiguous() && scales.is_contiguous(), "lowrank_ops.", op,
              ": 'codes' and 'scales' must be contiguous");
  if (fmt == lro::kQuantInt8) {
    TORCH_CHECK(codes.scalar_type() == at::kChar, "lowrank_ops.", op,
                ": argument 'codes' must be int8 for format \"int8\", got ", codes.scalar_type());
    TORCH_CHECK(codes.dim() == 2 && codes.size(0) == rows && codes.size(1) == cols, "lowrank_ops.", op,
                ": argument 'codes' must have shape [", rows, ", ", cols, "], got ", shape_str(codes));
    const int64_t groups = ceil_div(cols, group_size);
    TORCH_CHECK(scales.dim() == 2 && scales.size(0) == rows && scales.size(1) == groups, "lowrank_ops.", op,
                ": argument 'scales' must have shape [", rows, ", ", groups, "], got ", shape_str(scales));
  } else {
    const int64_t numel = rows * cols;
    TORCH_CHECK(codes.scalar_type() == at::kByte, "lowrank_ops.", op,
                ": argument 'codes' must be uint8 for format \"nf4\", got ", codes.scalar_type());
    TORCH_CHECK(codes.dim() == 1 && codes.size(0) == ceil_div(numel, 2), "lowrank_ops.", op,
                ": argument 'codes' must have shape [", ceil_div(numel, 2), "], got ", shape_str(codes));
    TORCH_CHECK(scales.dim() == 1 && scales.size(0) == ceil_div(numel, group_size), "lowrank_ops.", op,
                ": argument 'scales' must have shape [", ceil_div(numel, group_size), "], got ",
                shape_str(scales));
  }
  return {fmt, static_cast<const uint8_t*>(codes.data_ptr()), scales.data_ptr<float>(), rows, cols, group_size};
}

// quantize_weight's checks; returns the format (lro::kQuantInt8 or lro::kQuantNF4).
inline int check_quantize_args(const at::Tensor& W, c10::string_view format, int64_t group_size) {
  const int fmt = parse_quant_format("quantize_weight", format);
  check_group_size("quantize_weight", fmt, group_size);
  TORCH_CHECK(W.dim() == 2 && W.size(0) >= 1 && W.size(1) >= 1,
              "lowrank_ops.quantize_weight: argument 'W' must be a non-empty 2-D tensor, got shape ",
              shape_str(W));
  check_float_dtype("quantize_weight", "W", W.scalar_type());
  return fmt;
}

// Uninitialized (codes, scales) in the storage layout above for a rows x cols W, with opts' device.
inline std::tuple<at::Tensor, at::Tensor> empty_quant_storage(int fmt, int64_t rows, int64_t cols,
                                                              int64_t group_size, const at::TensorOptions& opts) {
  if (fmt == lro::kQuantInt8) {
    return {at::empty({rows, cols}, opts.dtype(at::kChar)),
            at::empty({rows, ceil_div(cols, group_size)}, opts.dtype(at::kFloat))};
  }
  const int64_t numel = rows * cols;
  return {at::empty({ceil_div(numel, 2)}, opts.dtype(at::kByte)),
          at::empty({ceil_div(numel, group_size)}, opts.dtype(at::kFloat))};
}

// dequantize_weight's checks: the storage, and an output dtype the kernels write.
inline lro::QuantMatrix check_dequantize_args(const at::Tensor& codes, const at::Tensor& scales,
                                              c10::string_view format, int64_t group_size, int64_t rows,
                                              int64_t cols, at::ScalarType dtype) {
  const lro::QuantMatrix w = check_quant_weight("dequantize_weight", codes, scales, format, group_size, rows, cols);
  check_float_dtype("dequantize_weight", "dtype", dtype);
  return w;
}

// X [t, k] against W [rows, cols]: k must be cols (forward) or rows (transposed product).
inline void check_matmul_input(const char* op, const char* name, const at::Tensor& X, int64_t k,
                               const at::Tensor& codes) {
  check_float_dtype(op, name, X.scalar_type());
  TORCH_CHECK(X.dim() == 2 && X.size(1) == k, "lowrank_ops.", op, ": argument '", name,
              "' must be a 2-D tensor [tokens, ", k, "], got shape ", shape_str(X));
  TORCH_CHECK(X.device() == codes.device(), "lowrank_ops.", op, ": argument '", name, "' is on ", X.device(),
              " but the codes are on ", codes.device());
}

inline void check_bias(const c10::optional<at::Tensor>& bias, const at::Tensor& X, int64_t rows) {
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == rows,
              "lowrank_ops.dequant_matmul: argument 'bias' must have shape [", rows, "], got ",
              shape_str(*bias));
  TORCH_CHECK(bias->scalar_type() == X.scalar_type() && bias->device() == X.device(),
              "lowrank_ops.dequant_matmul: argument 'bias' must have X's dtype and device (", X.scalar_type(),
              ", ", X.device(), "), got ", bias->scalar_type(), ", ", bias->device());
}

// dequant_matmul's checks: the storage, X [tokens, cols] on the codes' device, the optional bias [rows].
inline lro::QuantMatrix check_dequant_matmul_args(const at::Tensor& X, const at::Tensor& codes,
                                                  const at::Tensor& scales, c10::string_view format,
                                                  int64_t group_size, int64_t rows, int64_t cols,
                                                  const c10::optional<at::Tensor>& bias) {
  const lro::QuantMatrix w = check_quant_weight("dequant_matmul", codes, scales, format, group_size, rows, cols);
  check_matmul_input("dequant_matmul", "X", X, cols, codes);
  check_bias(bias, X, rows);
  return w;
}

// dequant_matmul_t's checks: the storage and dY [tokens, rows] on the codes' device.
inline lro::QuantMatrix check_dequant_matmul_t_args(const at::Tensor& dY, const at::Tensor& codes,
                                                    const at::Tensor& scales, c10::string_view format,
                                                    int64_t group_size, int64_t rows, int64_t cols) {
  const lro::QuantMatrix w = check_quant_weight("dequant_matmul_t", codes, scales, format, group_size, rows, cols);
  check_matmul_input("dequant_matmul_t", "dY", dY, rows, codes);
  return w;
}

}  // namespace lowrank_ops
