// Device-independent parts of the sketch family (spec v1, docs/DESIGN.md §3), used by the CPU and CUDA
// bindings of the sketch and lowrank_adam families: how wide a generated tile of P is.
#pragma once
#include <algorithm>
#include <cstdint>

#include "../kernels/sketch.h"

namespace lowrank_ops {

// Column-tile width of P: an eighth of P's columns (so the tile holds at most 1/8 of P's bytes), a
// multiple of the Rademacher column group, at least one group and at most all of d.
inline int64_t tile_columns(int64_t d) {
  const int64_t group = lro::kRademacherGroup;
  const int64_t eighth = (d / 8) / group * group;
  return std::min<int64_t>(d, std::max<int64_t>(group, eighth));
}

}  // namespace lowrank_ops
