// Rows of the subsampled randomized DCT P = S C D (docs/DESIGN.md §3 "Subsampled randomized DCT",
// lowrank_ops/spec.py SRDCT_*): P[i, t] = sign_t D[k_i, t] with D the orthonormal DCT-II basis (dct.h) and
// sign_t the sign of entry (kSrDctSignRow, t) of the seed's Rademacher sketch (sketch.h, spec v1):
//   sign_t = +1 if bit (t % 32) of word (t % 128) / 32 of philox((t / 128, kSrDctSignRow, 0, 0); seed) is set,
//            else -1.
// Shared by the CPU backend, the CUDA kernels and the emulated tests, so every backend draws the same signs.
#pragma once
#include "dct.h"
#include "sketch.h"

namespace lro {

constexpr uint32_t kSrDctSignRow = 0;  // lowrank_ops/spec.py SRDCT_SIGN_ROW

// out[i] <- sign_(t0 + i) out[i] for i in [0, len): one Philox call per 128-column group touched. A negation
// is exact, so a signed entry is the basis entry's rounding with its sign flipped.
template <typename T>
LRO_HD void srdct_sign_segment(uint64_t seed, int64_t t0, int64_t len, T* out) {
  int64_t t = t0;
  const int64_t end = t0 + len;
  while (t < end) {
    const int64_t group = t / kRademacherGroup;
    const int64_t group_end = (group + 1) * kRademacherGroup < end ? (group + 1) * kRademacherGroup : end;
    const PhiloxWords w = sketch_words(seed, kSrDctSignRow, static_cast<uint32_t>(group));
    for (; t < group_end; ++t) {
      const uint32_t word = word_at(w, static_cast<int>((t % kRademacherGroup) / 32));
      if (((word >> (t % 32)) & 1u) == 0u) out[t - t0] = -out[t - t0];
    }
  }
}

// out[i] = P[., t0 + i] = sign_(t0 + i) D[k, t0 + i] for i in [0, len): dct_fill_segment, then the signs.
template <typename T>
LRO_HD void srdct_fill_segment(int64_t n, int64_t k, uint64_t seed, int64_t t0, int64_t len, T* out) {
  dct_fill_segment<T>(n, k, t0, len, out);
  srdct_sign_segment<T>(seed, t0, len, out);
}

}  // namespace lro
