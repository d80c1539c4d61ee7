// The multi-tensor APOLLO step (lowrank_ops/ops/apollo_multi.py), device-independent: every matrix is checked
// first, then each runs the device's single step (csrc/cpu/apollo.cpp, csrc/cuda/apollo.cpp).
//   CPU   one parallel region; each thread takes the next matrix, largest first, and runs the single step on
//         it, whose own parallel loops then run inline on that thread: each matrix is computed whole on one
//         thread, so the result does not depend on the thread count, and it equals a lowrank_apollo_step_
//         call on one thread bit for bit (with more threads that call splits P G's rows into one GEMM per
//         thread, another BLAS summation order). The caller's thread-local state (grad mode) goes with the
//         work to every thread.
//   else  matrix after matrix on the caller's thread: the launches go to the current stream of the device.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <string>
#include <vector>

#include "apollo_impl.h"
#include "lowrank_ops.h"

namespace lowrank_ops {

void lowrank_apollo_multi_step_(
    ApolloStepFn device_step, const std::vector<at::Tensor>& W, const std::vector<at::Tensor>& G,
    const std::vector<at::Tensor>& exp_avg, const std::vector<at::Tensor>& exp_avg_sq,
    const std::vector<at::Tensor>& limiter_norm, const std::vector<std::string>& side,
    const std::vector<std::string>& kind, const std::vector<int64_t>& seed, const std::vector<int64_t>& rank,
    const std::vector<std::optional<at::Tensor>>& matrix, const std::vector<double>& proj_scale,
    const std::vector<double>& lr, const std::vector<double>& beta1, const std::vector<double>& beta2,
    const std::vector<double>& eps, const std::vector<double>& weight_decay, const std::vector<int64_t>& step,
    const std::vector<double>& scale, const std::vector<std::string>& scale_type, const std::vector<bool>& limiter,
    const std::vector<bool>& correct_bias) {
  const ApolloMatrices matrices{W,   G,    exp_avg,      exp_avg_sq, limiter_norm, side,  kind,
                                seed, rank, matrix,       proj_scale, lr,           beta1, beta2,
                                eps, weight_decay, step,  scale,      scale_type,   limiter, correct_bias};
  check_apollo_matrices(matrices);
  if (matrices.size() == 0) return;
  if (!W[0].is_cpu()) {
    const c10::DeviceGuard guard(W[0].device());
    for (size_t i = 0; i < matrices.size(); ++i) apollo_step_matrix(device_step, matrices, i);
    return;
  }
  std::vector<size_t> order(matrices.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return W[a].numel() > W[b].numel(); });
  std::atomic<size_t> next{0};
  const at::ThreadLocalState caller;
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(order.size()));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const at::ThreadLocalStateGuard guard(caller);
    for (size_t k = next++; k < order.size(); k = next++) apollo_step_matrix(device_step, matrices, order[k]);
  });
}

}  // namespace lowrank_ops
