// Tiles of the seeded sketch P (spec v1, DESIGN.md §3) for the CPU kernels: P is never materialized by a
// projection; it is generated r x kb columns at a time into a cache-sized buffer and consumed by a GEMM on
// the tile. Shared by the sketch and lowrank_adam families.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "../../kernels/sketch.h"

namespace lowrank_ops {

// Column-tile width of P: an eighth of P's columns (so the tile holds at most 1/8 of P's bytes), a
// multiple of the Rademacher column group, at least one group and at most all of d.
inline int64_t tile_columns(int64_t d) {
  const int64_t group = lro::kRademacherGroup;
  const int64_t eighth = (d / 8) / group * group;
  return std::min<int64_t>(d, std::max<int64_t>(group, eighth));
}

// P[:, k0 : k0 + kb] of the rank x d sketch, written into `tile` (rank x kb, unit column stride) in
// `dtype` (float or double), generated row-parallel. Returns `tile`.
inline at::Tensor sketch_tile(int kind, uint64_t seed, int64_t rank, int64_t d, int64_t k0, int64_t kb,
                              at::ScalarType dtype, at::Tensor tile) {
  AT_DISPATCH_FLOATING_TYPES(dtype, "lowrank_ops::sketch_tile", [&] {
    const scalar_t scale = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(d)));
    scalar_t* base = tile.data_ptr<scalar_t>();
    const int64_t ld = tile.stride(0);
    at::parallel_for(0, rank, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        lro::sketch_fill_segment<scalar_t>(kind, seed, static_cast<uint32_t>(i), k0, kb, scale,
                                           base + i * ld);
    });
  });
  return tile;
}

}  // namespace lowrank_ops
