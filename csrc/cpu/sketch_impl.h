// Tiles of the seeded sketch P (spec v1, docs/DESIGN.md §3) for the CPU kernels: P is never materialized by
// a projection; it is generated r x kb columns at a time into a cache-sized buffer (csrc/sketch_impl.h says
// how wide) and consumed by a GEMM on the tile. Shared by the CPU sketch and lowrank_adam kernels.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/FunctionRef.h>

#include <algorithm>
#include <cmath>

#include "../../kernels/sketch.h"
#include "../sketch_impl.h"

namespace lowrank_ops {

// out[t] = scale * P_unscaled(row, j0 + t) for t < len: kernels/sketch.h's sketch_fill_segment in loops the
// compiler vectorizes (csrc/cpu/sketch_fill.cpp): Rademacher bit for bit, Gaussian within spec v1's entry bound
// (computed as the oracle computes it). T is float or double.
template <typename T>
void fill_sketch_segment(int kind, uint64_t seed, uint32_t row, int64_t j0, int64_t len, T scale, T* out);

// Rows [row0, row0 + rows) of P[:, k0 : k0 + kb] (the rank x d sketch) into `dst` (row stride ld),
// on the calling thread. scale = 1/sqrt(d) rounded to scalar_t, as on every backend.
template <typename scalar_t>
void fill_sketch_rows(int kind, uint64_t seed, int64_t d, int64_t row0, int64_t rows, int64_t k0, int64_t kb,
                      scalar_t* dst, int64_t ld) {
  const scalar_t scale = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(d)));
  for (int64_t i = 0; i < rows; ++i)
    fill_sketch_segment<scalar_t>(kind, seed, static_cast<uint32_t>(row0 + i), k0, kb, scale, dst + i * ld);
}

// The rows of P[:, k0 : k0 + kb] matching `tile`'s rows, starting at P's row `row0`, written into `tile`
// (rows x kb, unit column stride, float or double) on the calling thread. Returns `tile`.
inline at::Tensor sketch_tile_rows(int kind, uint64_t seed, int64_t d, int64_t row0, int64_t k0,
                                   at::Tensor tile) {
  AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "lowrank_ops::sketch_tile_rows", [&] {
    fill_sketch_rows<scalar_t>(kind, seed, d, row0, tile.size(0), k0, tile.size(1), tile.data_ptr<scalar_t>(),
                               tile.stride(0));
  });
  return tile;
}

// P[:, k0 : k0 + kb] of the rank x d sketch, written into `tile` (rank x kb, unit column stride) in
// `dtype` (float or double), generated row-parallel. Returns `tile`.
inline at::Tensor sketch_tile(int kind, uint64_t seed, int64_t rank, int64_t d, int64_t k0, int64_t kb,
                              at::ScalarType dtype, at::Tensor tile) {
  TORCH_INTERNAL_ASSERT(tile.scalar_type() == dtype);
  at::parallel_for(0, rank, 1, [&](int64_t begin, int64_t end) {
    sketch_tile_rows(kind, seed, d, begin, k0, tile.narrow(0, begin, end - begin).narrow(1, 0, kb));
  });
  return tile;
}

// Called by cpu::sketch_project_visiting on each thread after its GEMM on a slab of G: visit(slab, k0, begin,
// end), slab = G's rows (left) or columns (right) k0 .. k0 + slab's width - 1 in the compute dtype (a view of G
// when G has it), [begin, end) the thread's share of P's rows; the shares of all threads partition [0, rank), so
// a visitor that maps a share to its own part of the slab's work sees every part exactly once.
using ProjectSlabVisitor = c10::function_ref<void(const at::Tensor&, int64_t, int64_t, int64_t)>;

namespace cpu {
// cpu::sketch_project (csrc/lowrank_ops.h), calling `visit` on every slab of G it multiplies (csrc/cpu/sketch.cpp).
at::Tensor sketch_project_visiting(const at::Tensor& G, int64_t seed, int64_t rank, c10::string_view kind,
                                   c10::string_view side, std::optional<at::ScalarType> out_dtype,
                                   ProjectSlabVisitor visit);
}  // namespace cpu

}  // namespace lowrank_ops
