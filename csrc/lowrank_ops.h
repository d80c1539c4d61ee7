// The C++ kernels of lowrank_ops: one function per op and device, with the op's schema arguments
// (lowrank_ops/_ops.py defines the schemas; this library defines none). lowrank_ops._C exposes them to
// Python (csrc/python_module.cpp), where they are registered as the ops' CPU and CUDA kernels; C++/libtorch
// users link the CMake target and call them directly. Each checks its arguments and raises c10::Error with
// "lowrank_ops.<op>: argument '<name>' must be <expected>, got <actual>".
//
// Conventions: `seed` is a uint64 passed through int64 (two's complement); `kind` is "rademacher" or
// "gaussian"; `side` is "left" or "right". The cuda:: functions exist in builds with LOWRANK_OPS_CUDA.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace lowrank_ops {

// The per-device parts of the fused low-rank AdamW step (csrc/lowrank_adam_impl.h).
struct AdamDevice;

// The fused low-rank AdamW step on `device` (cpu::kAdamDevice or cuda::kAdamDevice), in place on W,
// exp_avg, exp_avg_sq and delta. Sides: left acts on W's rows, right on its columns; kind "none" |
// "rademacher" | "gaussian" | "matrix" (the explicit rank x d matrix in the side's matrix slot) | "dct" (the
// basis rows' index vector in the matrix slot) | "sr_dct" (likewise, the rows signed by the side's seed).
// wd_mode "full" | "adapter" (needs delta).
void lowrank_adamw_step_(const AdamDevice& device, const at::Tensor& W, const at::Tensor& G,
                         const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                         const std::optional<at::Tensor>& delta, c10::string_view left_kind, int64_t left_seed,
                         int64_t left_rank, const std::optional<at::Tensor>& left_matrix,
                         c10::string_view right_kind, int64_t right_seed, int64_t right_rank,
                         const std::optional<at::Tensor>& right_matrix, double lr, double beta1, double beta2,
                         double eps, double weight_decay, int64_t step, double scale, c10::string_view wd_mode);

// The APOLLO step of one device (cpu:: or cuda::lowrank_apollo_step_, declared below).
using ApolloStepFn = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, c10::string_view, c10::string_view, int64_t, int64_t,
                              const std::optional<at::Tensor>&, double, double, double, double, double, double,
                              int64_t, double, c10::string_view, bool, bool);

// The multi-tensor APOLLO step: device_step(entry i of every list) for every matrix i, after checking them all
// (csrc/apollo.cpp). CPU matrices run in one parallel region, whole matrices per thread; others one after
// another on the current stream.
void lowrank_apollo_multi_step_(
    ApolloStepFn device_step, const std::vector<at::Tensor>& W, const std::vector<at::Tensor>& G,
    const std::vector<at::Tensor>& exp_avg, const std::vector<at::Tensor>& exp_avg_sq,
    const std::vector<at::Tensor>& limiter_norm, const std::vector<std::string>& side,
    const std::vector<std::string>& kind, const std::vector<int64_t>& seed, const std::vector<int64_t>& rank,
    const std::vector<std::optional<at::Tensor>>& matrix, const std::vector<double>& proj_scale,
    const std::vector<double>& lr, const std::vector<double>& beta1, const std::vector<double>& beta2,
    const std::vector<double>& eps, const std::vector<double>& weight_decay, const std::vector<int64_t>& step,
    const std::vector<double>& scale, const std::vector<std::string>& scale_type, const std::vector<bool>& limiter,
    const std::vector<bool>& correct_bias);

// The ops of one device. The same declarations for both devices: the device is the namespace.
#define LOWRANK_OPS_DECLARE_DEVICE_OPS                                                                         \
  /* sketch family (spec v1) */                                                                                \
  at::Tensor philox4x32(const at::Tensor& counters, int64_t seed, int64_t rounds);                             \
  void sketch_fill_(const at::Tensor& out, int64_t seed, c10::string_view kind);                               \
  at::Tensor sketch_project(const at::Tensor& G, int64_t seed, int64_t rank, c10::string_view kind,            \
                            c10::string_view side, std::optional<at::ScalarType> out_dtype);                   \
  at::Tensor sketch_unproject(const at::Tensor& R, int64_t seed, int64_t dim, c10::string_view kind,           \
                              c10::string_view side, std::optional<at::ScalarType> out_dtype);                 \
  /* dct family */                                                                                             \
  at::Tensor dct_scores(const at::Tensor& G, c10::string_view side, c10::string_view norm,                     \
                        c10::string_view method);                                                              \
  at::Tensor dct_topk(const at::Tensor& G, int64_t rank, c10::string_view side, c10::string_view norm,         \
                      c10::string_view method);                                                                \
  at::Tensor dct_basis(const at::Tensor& indices, int64_t dim, at::ScalarType dtype);                          \
  /* quant family */                                                                                           \
  std::tuple<at::Tensor, at::Tensor> quantize_weight(const at::Tensor& W, c10::string_view format,             \
                                                     int64_t group_size);                                      \
  at::Tensor dequantize_weight(const at::Tensor& codes, const at::Tensor& scales, c10::string_view format,      \
                               int64_t group_size, int64_t rows, int64_t cols, at::ScalarType dtype);          \
  at::Tensor dequant_matmul(const at::Tensor& X, const at::Tensor& codes, const at::Tensor& scales,            \
                            c10::string_view format, int64_t group_size, int64_t rows, int64_t cols,           \
                            const std::optional<at::Tensor>& bias);                                            \
  at::Tensor dequant_matmul_t(const at::Tensor& dY, const at::Tensor& codes, const at::Tensor& scales,         \
                              c10::string_view format, int64_t group_size, int64_t rows, int64_t cols);        \
  /* apollo family: APOLLO / APOLLO-Mini step in place on W, exp_avg, exp_avg_sq and limiter_norm */            \
  /* (csrc/<device>/apollo.cpp; lowrank_ops/ops/apollo.py states the math); an ApolloStepFn */                  \
  void lowrank_apollo_step_(const at::Tensor& W, const at::Tensor& G, const at::Tensor& exp_avg,                \
                            const at::Tensor& exp_avg_sq, const at::Tensor& limiter_norm, c10::string_view side, \
                            c10::string_view kind, int64_t seed, int64_t rank,                                 \
                            const std::optional<at::Tensor>& matrix, double proj_scale, double lr, double beta1, \
                            double beta2, double eps, double weight_decay, int64_t step, double scale,          \
                            c10::string_view scale_type, bool limiter, bool correct_bias);                     \
  /* lowrank_adam family: pass kAdamDevice to lowrank_ops::lowrank_adamw_step_; the multi-tensor step: entry */ \
  /* i of every list is matrix i's argument of lowrank_adamw_step_, `delta` the adapters of the matrices in */   \
  /* wd_mode "adapter", in order */                                                                            \
  extern const AdamDevice kAdamDevice;                                                                         \
  void lowrank_adamw_multi_step_(                                                                              \
      const std::vector<at::Tensor>& W, const std::vector<at::Tensor>& G, const std::vector<at::Tensor>& exp_avg, \
      const std::vector<at::Tensor>& exp_avg_sq, const std::vector<at::Tensor>& delta,                         \
      const std::vector<std::string>& left_kind, const std::vector<int64_t>& left_seed,                        \
      const std::vector<int64_t>& left_rank, const std::vector<std::optional<at::Tensor>>& left_matrix,         \
      const std::vector<std::string>& right_kind, const std::vector<int64_t>& right_seed,                      \
      const std::vector<int64_t>& right_rank, const std::vector<std::optional<at::Tensor>>& right_matrix,       \
      const std::vector<double>& lr, const std::vector<double>& beta1, const std::vector<double>& beta2,       \
      const std::vector<double>& eps, const std::vector<double>& weight_decay, const std::vector<int64_t>& step, \
      const std::vector<double>& scale, const std::vector<std::string>& wd_mode);

namespace cpu {
LOWRANK_OPS_DECLARE_DEVICE_OPS
// dct family, CPU only (CUDA tensors take the pure-torch kernel): P G / G P^T and P^T R / R P for
// P[i, t] = sign_t D[indices[i], t] (sign_t = 1 without `signs`), by a GEMM on generated tiles or the FFT
// (method "auto" | "gemm" | "fft"; csrc/cpu/dct_transform.cpp).
at::Tensor dct_project(const at::Tensor& G, const at::Tensor& indices, c10::string_view side,
                       const std::optional<at::Tensor>& signs, std::optional<at::ScalarType> out_dtype,
                       c10::string_view method);
at::Tensor dct_unproject(const at::Tensor& R, const at::Tensor& indices, int64_t dim, c10::string_view side,
                         const std::optional<at::Tensor>& signs, std::optional<at::ScalarType> out_dtype,
                         c10::string_view method);
// The blockwise 8-bit moment format (kernels/blockwise8.h), CPU only, not an op (csrc/cpu/blockwise8.cpp):
// (codes uint8 [rows, cols], absmax float32 [rows, ceil(cols / block)]) of a 2-D float32 `values`, and back.
std::tuple<at::Tensor, at::Tensor> blockwise8_encode(const at::Tensor& values, bool is_signed, int64_t block);
at::Tensor blockwise8_decode(const at::Tensor& codes, const at::Tensor& absmax, bool is_signed, int64_t block);
// The fused step's 8-bit moment epilogue (csrc/cpu/adam_epilogues8.h) on a whole projected gradient r
// ([rows, cols], contiguous float32 or float64; overwritten with the direction to unproject), in place on the
// codes, their absmax (and delta in the adapter mode).
void blockwise8_adam_moments_(const at::Tensor& r, const at::Tensor& exp_avg, const at::Tensor& exp_avg_absmax,
                              const at::Tensor& exp_avg_sq, const at::Tensor& exp_avg_sq_absmax,
                              const std::optional<at::Tensor>& delta, int64_t block, double lr, double beta1,
                              double beta2, double eps, double weight_decay, int64_t step, bool adapter);
}  // namespace cpu

namespace cuda {
LOWRANK_OPS_DECLARE_DEVICE_OPS
}  // namespace cuda

#undef LOWRANK_OPS_DECLARE_DEVICE_OPS

}  // namespace lowrank_ops
