// CPU kernels of the sketch family (spec v1, docs/DESIGN.md §3; declared in csrc/lowrank_ops.h). P is never materialized by the projections:
// it is generated tile by tile (r x kb columns, a slice of the projected dimension) into a cache-sized
// buffer and consumed by a GEMM on the tile.
//   left:  R = P G   = sum_k P[:, k] G[k, :]     (accumulate over column tiles of P)
//   right: R = G P^T = sum_k G[:, k] P[:, k]^T
//   unproject left:  Y[k, :] = P[:, k]^T R      (each tile writes its own rows of Y)
//   unproject right: Y[:, k] = R P[:, k]
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include "../../kernels/sketch.h"
#include "../lowrank_ops.h"
#include "../sketch_args.h"
#include "sketch_impl.h"

namespace lowrank_ops {
namespace cpu {

at::Tensor philox4x32(const at::Tensor& counters, int64_t seed, int64_t rounds) {
  check_philox_args(counters, rounds);
  const at::Tensor c = counters.contiguous();
  at::Tensor out = at::empty_like(c);
  const int64_t* in = c.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  const uint64_t key = static_cast<uint64_t>(seed);
  at::parallel_for(0, c.numel() / 4, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t* x = in + 4 * t;
      const lro::PhiloxWords w = lro::philox4x32(
          static_cast<uint32_t>(x[0]), static_cast<uint32_t>(x[1]), static_cast<uint32_t>(x[2]),
          static_cast<uint32_t>(x[3]), static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32),
          static_cast<int>(rounds));
      for (int q = 0; q < 4; ++q) o[4 * t + q] = w.w[q];
    }
  });
  return out;
}

void sketch_fill_(const at::Tensor& out, int64_t seed, c10::string_view kind) {
  check_fill_args(out);
  const int k = parse_kind("sketch_fill_", kind);
  const at::ScalarType compute = compute_dtype(out.scalar_type());
  const int64_t rank = out.size(0), d = out.size(1);
  at::Tensor full = (compute == out.scalar_type() && out.is_contiguous())
                        ? out
                        : at::empty({rank, d}, out.options().dtype(compute));
  sketch_tile(k, static_cast<uint64_t>(seed), rank, d, 0, d, compute, full);
  if (!full.is_same(out)) out.copy_(full);
}

// Both projections run as ONE parallel region: a thread owns a block of P's rows for the whole call,
// generates its rows of each column tile and runs a single-threaded GEMM into its own rows (left) or
// columns (right) of R. A fork/join per tile and per GEMM would cost more than the GEMMs on 2 cores
// (bench/results/sketch_cpu.json, diag rows). The tiles of all threads together hold rank x kb values,
// at most 1/8 of P. After each GEMM, visit(slab, k0, begin, end) sees the slab of G it read while it is in
// cache (sketch_impl.h).
at::Tensor sketch_project_visiting(const at::Tensor& G, int64_t seed, int64_t rank, c10::string_view kind,
                                   c10::string_view side, std::optional<at::ScalarType> out_dtype,
                                   ProjectSlabVisitor visit) {
  const ProjectionArgs a = check_project_args("sketch_project", G, rank, kind, side);
  const at::ScalarType compute = compute_dtype(G.scalar_type());
  const int64_t d = a.dim;
  const int64_t other = a.left ? G.size(1) : G.size(0);
  at::Tensor acc = a.left ? at::zeros({rank, other}, G.options().dtype(compute))
                          : at::zeros({other, rank}, G.options().dtype(compute));
  const int64_t kb = tile_columns(d);
  at::Tensor tile = at::empty({rank, kb}, G.options().dtype(compute));
  at::parallel_for(0, rank, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // worker threads lack the caller's dispatch TLS
    at::Tensor rows = tile.narrow(0, begin, end - begin);
    at::Tensor out = a.left ? acc.narrow(0, begin, end - begin) : acc.narrow(1, begin, end - begin);
    for (int64_t k0 = 0; k0 < d; k0 += kb) {
      const int64_t w = std::min(kb, d - k0);
      at::Tensor p = sketch_tile_rows(a.kind, static_cast<uint64_t>(seed), d, begin, k0, rows.narrow(1, 0, w));
      const at::Tensor slab = (a.left ? G.narrow(0, k0, w) : G.narrow(1, k0, w)).to(compute);
      if (a.left) {
        out.addmm_(p, slab);
      } else {
        out.addmm_(slab, p.t());
      }
      visit(slab, k0, begin, end);
    }
  });
  return acc.to(out_dtype.value_or(G.scalar_type()));
}

at::Tensor sketch_project(const at::Tensor& G, int64_t seed, int64_t rank, c10::string_view kind,
                          c10::string_view side, std::optional<at::ScalarType> out_dtype) {
  return sketch_project_visiting(G, seed, rank, kind, side, out_dtype,
                                 [](const at::Tensor&, int64_t, int64_t, int64_t) {});
}

// Column tiles of P map to disjoint rows (left) or columns (right) of the result, so threads split the
// tiles; each generates the full rank x kb tile it needs and runs a single-threaded GEMM.
at::Tensor sketch_unproject(const at::Tensor& R, int64_t seed, int64_t dim, c10::string_view kind,
                            c10::string_view side, std::optional<at::ScalarType> out_dtype) {
  const ProjectionArgs a = check_unproject_args("sketch_unproject", R, dim, kind, side);
  const at::ScalarType compute = compute_dtype(R.scalar_type());
  const at::Tensor r = R.to(compute);
  const int64_t rank = a.rank;
  const int64_t other = a.left ? R.size(1) : R.size(0);
  at::Tensor out = a.left ? at::empty({dim, other}, R.options().dtype(compute))
                          : at::empty({other, dim}, R.options().dtype(compute));
  const int64_t kb = tile_columns(dim);
  const int64_t tiles = (dim + kb - 1) / kb;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in sketch_project
    at::Tensor tile = at::empty({rank, kb}, R.options().dtype(compute));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t k0 = t * kb, w = std::min(kb, dim - k0);
      at::Tensor p = sketch_tile_rows(a.kind, static_cast<uint64_t>(seed), dim, 0, k0, tile.narrow(1, 0, w));
      if (a.left) {
        at::Tensor rows = out.narrow(0, k0, w);
        at::mm_out(rows, p.t(), r);
      } else {
        at::Tensor cols = out.narrow(1, k0, w);
        at::mm_out(cols, r, p);
      }
    }
  });
  return out.to(out_dtype.value_or(R.scalar_type()));
}

}  // namespace cpu
}  // namespace lowrank_ops
