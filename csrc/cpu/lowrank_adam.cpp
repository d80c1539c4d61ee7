// CPU kernels of the lowrank_adam family: the device hooks of csrc/lowrank_adam_driver.h. The per-element
// math is kernels/adam.h. The weight update forms U = P^T Y (left) or Y P (right) one chunk of W's
// columns (left) or rows (right) at a time per thread, in a buffer that stays in the core's L2, and
// applies the update to that chunk of W straight away; W is read and written once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../../kernels/adam.h"
#include "../lowrank_adam_driver.h"
#include "sketch_tile.h"

namespace lowrank_ops {
namespace {

// Elements of the U chunk a thread forms and consumes at once (256 KiB in float32).
constexpr int64_t kChunkElems = 64 * 1024;
constexpr int64_t kMomentsGrain = 4096;

template <typename T>
lro::AdamStep<T> adam_step(const AdamArgs& a) {
  return lro::make_adam_step<T>(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.step, a.scale, a.adapter);
}

void fill_sketch_cpu(const SideOp& side, int64_t k0, int64_t width, at::Tensor& tile) {
  sketch_tile(side.kind, side.seed, side.rank, side.dim, k0, width, tile.scalar_type(), tile);
}

void moments_cpu(at::Tensor& r, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor* delta,
                 const AdamArgs& args) {
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "lowrank_adamw_step_ moments", [&] {
    const lro::AdamStep<scalar_t> s = adam_step<scalar_t>(args);
    scalar_t* __restrict__ rp = r.data_ptr<scalar_t>();
    scalar_t* __restrict__ mp = exp_avg.data_ptr<scalar_t>();
    scalar_t* __restrict__ vp = exp_avg_sq.data_ptr<scalar_t>();
    scalar_t* __restrict__ dp = delta != nullptr ? delta->data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, r.numel(), kMomentsGrain, [&](int64_t begin, int64_t end) {
      if (dp != nullptr) {
        for (int64_t i = begin; i < end; ++i)
          rp[i] = lro::adam_adapter_direction(lro::adam_moments(rp[i], mp + i, vp + i, s), dp + i, s);
      } else {
        for (int64_t i = begin; i < end; ++i) rp[i] = lro::adam_moments(rp[i], mp + i, vp + i, s);
      }
    });
  });
}

// w[i * s0 + j * s1] <- adam_weight_update(w, u[i * cols + j]) for a rows x cols block; one rounding to W_t.
template <typename W_t, typename T>
void update_rows(W_t* w, int64_t s0, int64_t s1, int64_t rows, int64_t cols, const T* __restrict__ u,
                 const lro::AdamStep<T>& s) {
  for (int64_t i = 0; i < rows; ++i) {
    W_t* __restrict__ wr = w + i * s0;
    const T* __restrict__ ur = u + i * cols;
    if (s1 == 1) {
      for (int64_t j = 0; j < cols; ++j)
        wr[j] = static_cast<W_t>(lro::adam_weight_update(static_cast<T>(wr[j]), ur[j], s));
    } else {
      for (int64_t j = 0; j < cols; ++j)
        wr[j * s1] = static_cast<W_t>(lro::adam_weight_update(static_cast<T>(wr[j * s1]), ur[j], s));
    }
  }
}

// Left: block = W[k, :] (width rows), U = p^T y chunk by chunk of columns. Right: block = W[:, k] (width
// columns), U = y p chunk by chunk of rows. Each thread owns whole chunks: it forms U for its chunk with a
// single-threaded GEMM (MKL runs serially inside a parallel region) and updates that part of W.
void update_cpu(const at::Tensor& block, const at::Tensor& p, const at::Tensor& y, bool left,
                const AdamArgs& args) {
  const int64_t width = p.size(1);
  const int64_t other = left ? block.size(1) : block.size(0);
  if (width == 0 || other == 0) return;
  const int64_t chunk = std::max<int64_t>(1, std::min(other, kChunkElems / width));
  const int64_t chunks = (other + chunk - 1) / chunk;
  const at::Tensor pt = p.t();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, block.scalar_type(), "lowrank_adamw_step_ update", [&] {
    using W_t = scalar_t;
    using T = at::opmath_type<W_t>;
    const lro::AdamStep<T> s = adam_step<T>(args);
    const int64_t s0 = block.stride(0), s1 = block.stride(1);
    W_t* const base = block.data_ptr<W_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      at::Tensor buffer = at::empty({width * chunk}, p.options());
      for (int64_t c = begin; c < end; ++c) {
        const int64_t c0 = c * chunk, len = std::min(chunk, other - c0);
        at::Tensor u = buffer.narrow(0, 0, width * len);
        if (left) {
          u = u.view({width, len});
          at::mm_out(u, pt, y.narrow(1, c0, len));
          update_rows(base + c0 * s1, s0, s1, width, len, u.data_ptr<T>(), s);
        } else {
          u = u.view({len, width});
          at::mm_out(u, y.narrow(0, c0, len), p);
          update_rows(base + c0 * s0, s0, s1, len, width, u.data_ptr<T>(), s);
        }
      }
    });
  });
}

const AdamDevice kCpu{&fill_sketch_cpu, &moments_cpu, &update_cpu};

void lowrank_adamw_step_cpu(const at::Tensor& W, const at::Tensor& G, const at::Tensor& exp_avg,
                            const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& delta,
                            c10::string_view left_kind, int64_t left_seed, int64_t left_rank,
                            const std::optional<at::Tensor>& left_matrix, c10::string_view right_kind,
                            int64_t right_seed, int64_t right_rank, const std::optional<at::Tensor>& right_matrix,
                            double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step,
                            double scale, c10::string_view wd_mode) {
  lowrank_adamw_step_op(kCpu, W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix,
                        right_kind, right_seed, right_rank, right_matrix, lr, beta1, beta2, eps, weight_decay, step,
                        scale, wd_mode);
}

}  // namespace

TORCH_LIBRARY_IMPL(lowrank_ops, CPU, m) { m.impl("lowrank_adamw_step_", &lowrank_adamw_step_cpu); }

}  // namespace lowrank_ops
