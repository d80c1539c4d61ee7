// CPU kernels of the lowrank_adam family: the device hooks of csrc/lowrank_adam_impl.h (cpu::kAdamDevice).
// The per-element math is kernels/adam.h (and kernels/dct.h, kernels/sr_dct.h for the basis tiles of a "dct" or
// "sr_dct" side). Each hook is ONE
// parallel region: on a machine with few cores a fork/join per tile and per GEMM costs more than it saves
// (bench/results/sketch_cpu.json, bench/results/optim_cpu*.json).
// The weight update splits P's columns (W's rows for a left side, its columns for a right side) into
// blocks; a thread generates its block of P, forms U = P^T Y or Y P for it chunk by chunk of the other
// dimension in a buffer that stays in its L2 (single-threaded GEMMs), and updates that chunk of W at once:
// W is read and written once and U never exists as a whole.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../../kernels/adam.h"
#include "../lowrank_adam_impl.h"
#include "../lowrank_ops.h"
#include "adam_epilogues.h"
#include "adam_epilogues8.h"
#include "sketch_impl.h"

namespace lowrank_ops {
namespace cpu {
namespace {

// Columns of P per block of the weight update (one Rademacher Philox group), and elements of the U chunk
// a thread forms and consumes at once (256 KiB in float32).
constexpr int64_t kBlockColumns = 128;
constexpr int64_t kChunkElems = 64 * 1024;
constexpr int64_t kMomentsGrain = 4096;

void moments(at::Tensor& r, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor* delta,
                 const AdamArgs& args) {
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "lowrank_adamw_step_ moments", [&] {
    const lro::AdamStep<scalar_t> s = adam_step<scalar_t>(args);
    scalar_t* rp = r.data_ptr<scalar_t>();
    scalar_t* mp = exp_avg.data_ptr<scalar_t>();
    scalar_t* vp = exp_avg_sq.data_ptr<scalar_t>();
    scalar_t* dp = delta != nullptr ? delta->data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, r.numel(), kMomentsGrain, [&](int64_t begin, int64_t end) {
      adam_moments_run(rp + begin, mp + begin, vp + begin, dp != nullptr ? dp + begin : nullptr, end - begin, s);
    });
  });
}

// The moments of r on the matrix's 8-bit moments (adam_epilogues8.h): rows in parallel, each row block by
// block; the codes and absmax are written in place (contiguous: the caller's tensors, made contiguous by the
// op layer).
void moments8(at::Tensor& r, const AdamMatrix& matrix, at::Tensor* delta) {
  TORCH_CHECK(matrix.exp_avg.is_contiguous() && matrix.exp_avg_sq.is_contiguous() &&
                  matrix.exp_avg_absmax->is_contiguous() && matrix.exp_avg_sq_absmax->is_contiguous(),
              "lowrank_ops.", kAdamOp, ": 8-bit moments and their absmax must be contiguous");
  const int64_t rows = r.size(0), cols = r.size(1);
  const Q8Moments q = q8_moments(matrix);
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "lowrank_adamw_step_ 8-bit moments", [&] {
    const lro::AdamStep<scalar_t> s = adam_step<scalar_t>(matrix.args);
    scalar_t* rp = r.data_ptr<scalar_t>();
    scalar_t* dp = delta != nullptr ? delta->data_ptr<scalar_t>() : nullptr;
    const int64_t grain = std::max<int64_t>(1, kMomentsGrain / std::max<int64_t>(cols, 1));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(2 * std::min(matrix.state_block, cols));
      for (int64_t i = begin; i < end; ++i) {
        adam_moments_run8(rp + i * cols, q, i, 0, cols, dp != nullptr ? dp + i * cols : nullptr, s, scratch.data());
      }
    });
  });
}

// rows i of P[:, k0 : k0 + width] of a basis side (P[i, :] = D[indices[i], :], signed for "sr_dct"), written
// into `tile` (rank x width, unit column stride, float or double) by SideOp::fill_basis_segment, rows in
// parallel (inline when called inside a parallel region).
void fill_dct(const SideOp& side, int64_t k0, const at::Tensor& tile) {
  const int64_t width = tile.size(1), ld = tile.stride(0);
  AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "lowrank_adamw_step_ dct tile", [&] {
    scalar_t* base = tile.data_ptr<scalar_t>();
    at::parallel_for(0, tile.size(0), 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) side.fill_basis_segment<scalar_t>(i, k0, width, base + i * ld);
    });
  });
}

void unproject_update(const SideOp& side, bool left, const at::Tensor& Y, const at::Tensor& W,
                          const AdamArgs& args) {
  const int64_t d = side.dim, other = left ? W.size(1) : W.size(0);
  if (d == 0 || other == 0) return;
  const int64_t blocks = (d + kBlockColumns - 1) / kBlockColumns;
  const int64_t chunk = std::max<int64_t>(1, std::min(other, kChunkElems / kBlockColumns));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, W.scalar_type(), "lowrank_adamw_step_ update", [&] {
    using W_t = scalar_t;
    using T = at::opmath_type<W_t>;
    const lro::AdamStep<T> s = adam_step<T>(args);
    const int64_t s0 = W.stride(0), s1 = W.stride(1);
    W_t* const base = W.data_ptr<W_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      at::Tensor tile = side.generated() ? at::empty({side.rank, kBlockColumns}, Y.options()) : at::Tensor();
      at::Tensor buffer = at::empty({kBlockColumns * chunk}, Y.options());
      for (int64_t b = begin; b < end; ++b) {
        const int64_t k0 = b * kBlockColumns, width = std::min(kBlockColumns, d - k0);
        at::Tensor p;
        if (side.seeded()) {
          p = sketch_tile_rows(side.kind, side.seed, d, 0, k0, tile.narrow(1, 0, width));
        } else if (side.basis()) {
          p = tile.narrow(1, 0, width);
          fill_dct(side, k0, p);
        } else {
          p = side.matrix.narrow(1, k0, width);
        }
        for (int64_t c0 = 0; c0 < other; c0 += chunk) {
          const int64_t len = std::min(chunk, other - c0);
          if (left) {  // U = P[:, k]^T Y[:, c] updates W[k, c]
            at::Tensor u = buffer.narrow(0, 0, width * len).view({width, len});
            at::mm_out(u, p.t(), Y.narrow(1, c0, len));
            update_rows(base + k0 * s0 + c0 * s1, s0, s1, width, len, u.data_ptr<T>(), s);
          } else {  // U = Y[c, :] P[:, k] updates W[c, k]
            at::Tensor u = buffer.narrow(0, 0, width * len).view({len, width});
            at::mm_out(u, Y.narrow(0, c0, len), p);
            update_rows(base + c0 * s0 + k0 * s1, s0, s1, len, width, u.data_ptr<T>(), s);
          }
        }
      }
    });
  });
}

}  // namespace

const AdamDevice kAdamDevice{&moments, &unproject_update, &fill_dct, &sketch_project, &sketch_unproject, &moments8};

}  // namespace cpu
}  // namespace lowrank_ops
