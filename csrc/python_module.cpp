// The Python module lowrank_ops._C: the C++ kernels of csrc/lowrank_ops.h as plain functions, in the
// submodules `cpu` and (built with LOWRANK_OPS_CUDA) `cuda`, each function with its op's schema arguments.
// No schemas here: lowrank_ops/_ops.py defines every op once and registers these functions as the ops' CPU
// and CUDA kernels. Only setup.py compiles this file; the CMake library for C++/libtorch users stays free of
// Python. Every function releases the GIL while it runs and raises c10 errors as Python exceptions the way
// torch's own bindings do (torch::wrap_pybind_function_no_gil).
#include <torch/csrc/Exceptions.h>
#include <torch/extension.h>

#include "lowrank_adam_impl.h"
#include "lowrank_ops.h"

namespace lowrank_ops {
namespace {

namespace py = pybind11;

template <typename F>
void def(py::module_& m, const char* name, F f) {
  m.def(name, torch::wrap_pybind_function_no_gil(f));
}

// The step with the device table bound: one binding for both devices, which differ only in the table.
void def_lowrank_adam(py::module_& m, const AdamDevice& device) {
  def(m, "lowrank_adamw_step_",
      [&device](const at::Tensor& W, const at::Tensor& G, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                const std::optional<at::Tensor>& delta, c10::string_view left_kind, int64_t left_seed,
                int64_t left_rank, const std::optional<at::Tensor>& left_matrix, c10::string_view right_kind,
                int64_t right_seed, int64_t right_rank, const std::optional<at::Tensor>& right_matrix, double lr,
                double beta1, double beta2, double eps, double weight_decay, int64_t step, double scale,
                c10::string_view wd_mode) {
        lowrank_adamw_step_(device, W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix,
                            right_kind, right_seed, right_rank, right_matrix, lr, beta1, beta2, eps, weight_decay,
                            step, scale, wd_mode);
      });
}

// lowrank_adamw_step_ on 8-bit moments with the device table bound (the op's kernel calls it when the absmax
// are given; lowrank_ops/_kernels.py): the schema's arguments, then exp_avg_absmax, exp_avg_sq_absmax,
// state_block_size.
void def_lowrank_adam8(py::module_& m, const AdamDevice& device) {
  def(m, "lowrank_adamw_step8_",
      [&device](const at::Tensor& W, const at::Tensor& G, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                const std::optional<at::Tensor>& delta, c10::string_view left_kind, int64_t left_seed,
                int64_t left_rank, const std::optional<at::Tensor>& left_matrix, c10::string_view right_kind,
                int64_t right_seed, int64_t right_rank, const std::optional<at::Tensor>& right_matrix, double lr,
                double beta1, double beta2, double eps, double weight_decay, int64_t step, double scale,
                c10::string_view wd_mode, const at::Tensor& exp_avg_absmax, const at::Tensor& exp_avg_sq_absmax,
                int64_t state_block_size) {
        lowrank_adamw_step8_(device, W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix,
                             right_kind, right_seed, right_rank, right_matrix, lr, beta1, beta2, eps, weight_decay,
                             step, scale, wd_mode, exp_avg_absmax, exp_avg_sq_absmax, state_block_size);
      });
}

// The multi-tensor APOLLO step with the device's single step bound.
void def_apollo_multi(py::module_& m, ApolloStepFn device_step) {
  def(m, "lowrank_apollo_multi_step_",
      [device_step](const std::vector<at::Tensor>& W, const std::vector<at::Tensor>& G,
                    const std::vector<at::Tensor>& exp_avg, const std::vector<at::Tensor>& exp_avg_sq,
                    const std::vector<at::Tensor>& limiter_norm, const std::vector<std::string>& side,
                    const std::vector<std::string>& kind, const std::vector<int64_t>& seed,
                    const std::vector<int64_t>& rank, const std::vector<std::optional<at::Tensor>>& matrix,
                    const std::vector<double>& proj_scale, const std::vector<double>& lr,
                    const std::vector<double>& beta1, const std::vector<double>& beta2, const std::vector<double>& eps,
                    const std::vector<double>& weight_decay, const std::vector<int64_t>& step,
                    const std::vector<double>& scale, const std::vector<std::string>& scale_type,
                    const std::vector<bool>& limiter, const std::vector<bool>& correct_bias) {
        lowrank_apollo_multi_step_(device_step, W, G, exp_avg, exp_avg_sq, limiter_norm, side, kind, seed, rank,
                                   matrix, proj_scale, lr, beta1, beta2, eps, weight_decay, step, scale, scale_type,
                                   limiter, correct_bias);
      });
}

}  // namespace
}  // namespace lowrank_ops

// One block per device: the names are the op names, the functions those of the device's namespace.
#define LOWRANK_OPS_DEF_DEVICE_OPS(m, device)                                \
  do {                                                                       \
    using namespace lowrank_ops;                                             \
    def(m, "philox4x32", &device::philox4x32);                               \
    def(m, "sketch_fill_", &device::sketch_fill_);                           \
    def(m, "sketch_project", &device::sketch_project);                       \
    def(m, "sketch_unproject", &device::sketch_unproject);                   \
    def(m, "dct_scores", &device::dct_scores);                               \
    def(m, "dct_topk", &device::dct_topk);                                   \
    def(m, "dct_basis", &device::dct_basis);                                 \
    def(m, "quantize_weight", &device::quantize_weight);                     \
    def(m, "dequantize_weight", &device::dequantize_weight);                 \
    def(m, "dequant_matmul", &device::dequant_matmul);                       \
    def(m, "dequant_matmul_t", &device::dequant_matmul_t);                   \
    def(m, "lowrank_apollo_step_", &device::lowrank_apollo_step_);           \
    def_apollo_multi(m, &device::lowrank_apollo_step_);                      \
    def_lowrank_adam(m, device::kAdamDevice);                                \
    def_lowrank_adam8(m, device::kAdamDevice);                               \
    def(m, "lowrank_adamw_multi_step_", &device::lowrank_adamw_multi_step_); \
  } while (false)

PYBIND11_MODULE(_C, m) {
  m.doc() = "The C++ kernels of lowrank_ops (csrc/lowrank_ops.h), registered as op kernels by lowrank_ops/_ops.py";
  auto cpu_module = m.def_submodule("cpu", "CPU kernels");
  LOWRANK_OPS_DEF_DEVICE_OPS(cpu_module, cpu);
  lowrank_ops::def(cpu_module, "dct_project", &lowrank_ops::cpu::dct_project);  // CPU-only ops
  lowrank_ops::def(cpu_module, "dct_unproject", &lowrank_ops::cpu::dct_unproject);
  lowrank_ops::def(cpu_module, "blockwise8_encode", &lowrank_ops::cpu::blockwise8_encode);  // not ops: the
  lowrank_ops::def(cpu_module, "blockwise8_decode", &lowrank_ops::cpu::blockwise8_decode);  // 8-bit moment format
  lowrank_ops::def(cpu_module, "blockwise8_adam_moments_", &lowrank_ops::cpu::blockwise8_adam_moments_);
  lowrank_ops::def(  // lowrank_adamw_multi_step_ with 8-bit moments (the op's CPU kernel calls it when there are any)
      cpu_module, "lowrank_adamw_multi_step8_", &lowrank_ops::cpu::lowrank_adamw_multi_step8_);
#ifdef LOWRANK_OPS_CUDA
  auto cuda_module = m.def_submodule("cuda", "CUDA kernels");
  LOWRANK_OPS_DEF_DEVICE_OPS(cuda_module, cuda);
#endif
}
