// Argument-check helpers shared by every family's checks (csrc/<family>_args.h), so that a C++ caller gets
// the same clear error on every op and device: the message names the op, the argument, what was expected
// and what was got. The Python layer (lowrank_ops/ops) checks the same things before dispatch.
#pragma once
#include <ATen/ATen.h>

#include <sstream>
#include <string>

namespace lowrank_ops {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// The precision an op computes in (lowrank_ops/spec.py compute_dtype): float64 stays float64; float32,
// bfloat16 and float16 compute in float32. Also the dtype of the DCT scores.
inline at::ScalarType compute_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_float_dtype(const char* op, const char* name, at::ScalarType s) {
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, "lowrank_ops.", op,
              ": argument '", name, "' must be float32, float64, float16 or bfloat16, got ", s);
}

inline void check_float_matrix(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2, "lowrank_ops.", op, ": argument '", name, "' must be a 2-D tensor, got ", t.dim(),
              "-D tensor of shape ", shape_str(t));
  check_float_dtype(op, name, t.scalar_type());
}

// "left" -> true, "right" -> false.
inline bool parse_side(const char* op, c10::string_view side) {
  if (side == "left") return true;
  if (side == "right") return false;
  TORCH_CHECK(false, "lowrank_ops.", op, ": argument 'side' must be \"left\" or \"right\", got \"",
              std::string(side), "\"");
}

}  // namespace lowrank_ops
