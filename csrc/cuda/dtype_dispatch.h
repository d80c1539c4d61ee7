// The float/double/half/bfloat16 switch of the CUDA bindings, written once: the launchers of kernels/*.cuh
// are overloaded on CUDA's element types (float, double, __half, __nv_bfloat16), which ATen's AT_DISPATCH
// macros do not name (they give c10::Half and c10::BFloat16).
#pragma once
#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace lowrank_ops {
namespace cuda {

// Calls f(T{}) with T the CUDA element type of `dtype` (a value-initialized tag; use decltype to name the
// type) and returns its result; any other dtype raises "lowrank_ops.<op>: argument '<name>' must be ...".
template <typename F>
auto dispatch_float(at::ScalarType dtype, const char* op, const char* name, F&& f) {
  switch (dtype) {
    case at::kFloat:
      return f(float{});
    case at::kDouble:
      return f(double{});
    case at::kHalf:
      return f(__half{});
    case at::kBFloat16:
      return f(__nv_bfloat16{});
    default:
      TORCH_CHECK(false, "lowrank_ops.", op, ": argument '", name, "' must be float32, float64, float16 or ",
                  "bfloat16, got ", dtype);
  }
}

// t's data as a pointer to the CUDA element type T (for __half / __nv_bfloat16, which ATen's typed
// data_ptr does not know).
template <typename T>
T* data_as(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.mutable_data_ptr());
}

template <typename T>
const T* const_data_as(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr());
}

}  // namespace cuda
}  // namespace lowrank_ops
