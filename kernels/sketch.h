// Entries of the seeded sketch P (r x d), spec v1 (docs/DESIGN.md §3). Shared by the CPU backend, the CUDA
// kernels and the host unit tests, so the per-entry math is tested on machines without a GPU.
//   Rademacher (i, j): w = philox((j / 128, i, 0, 0), key); bit (j % 32) of word (j % 128) / 32;
//                      value (bit ? +1 : -1) * scale.
//   Gaussian   (i, j): w = philox((j / 4, i, 0, 0), key); Box-Muller on (w0, w1) and (w2, w3) gives
//                      (z0, z1, z2, z3); value z_(j % 4) * scale.
// scale = 1 / sqrt(d) rounded to the compute type, so E[P P^T] = I_r (duality paper, Table 1).
#pragma once
#include "philox.h"

namespace lro {

enum SketchKind : int { kRademacher = 0, kGaussian = 1 };

constexpr int kRademacherGroup = 128;  // columns served by one Philox call
constexpr int kGaussianGroup = 4;

// w.w[q] and z[q] for a runtime q, written as selects: indexing a register array with a runtime value
// would put it in local memory on the GPU.
LRO_HD uint32_t word_at(const PhiloxWords& w, int q) {
  return q == 0 ? w.w[0] : q == 1 ? w.w[1] : q == 2 ? w.w[2] : w.w[3];
}

LRO_HD float quad_at(const float z[4], int q) { return q == 0 ? z[0] : q == 1 ? z[1] : q == 2 ? z[2] : z[3]; }

LRO_HD PhiloxWords sketch_words(uint64_t seed, uint32_t row, uint32_t group) {
  return philox4x32(group, row, 0u, 0u, static_cast<uint32_t>(seed & 0xffffffffu),
                    static_cast<uint32_t>(seed >> 32));
}

// Triton's uint_to_uniform_float: int32 view, ~x when negative, times 2^-31 (as a float constant).
LRO_HD float uniform_from_word(uint32_t x) {
  int32_t i = static_cast<int32_t>(x);
  if (i < 0) i = ~i;
  return static_cast<float>(i) * 4.6566127342e-10f;
}

// Box-Muller: u1 = max(1e-7, U(a)), theta = 2 pi U(b), rho = sqrt(-2 ln u1) -> (rho cos, rho sin).
LRO_HD void box_muller(uint32_t a, uint32_t b, float* z0, float* z1) {
  const float u1 = fmaxf(1.0e-7f, uniform_from_word(a));
  const float theta = 6.283185307179586f * uniform_from_word(b);
  const float rho = sqrtf(-2.0f * logf(u1));
  float s, c;
#if defined(_MSC_VER) && !defined(__CUDA_ARCH__)
  s = sinf(theta);
  c = cosf(theta);
#else
  sincosf(theta, &s, &c);  // one range reduction for both (CUDA, NVRTC and glibc all provide it)
#endif
  *z0 = rho * c;
  *z1 = rho * s;
}

LRO_HD void gaussian_quad(uint64_t seed, uint32_t row, uint32_t group, float z[4]) {
  const PhiloxWords w = sketch_words(seed, row, group);
  box_muller(w.w[0], w.w[1], &z[0], &z[1]);
  box_muller(w.w[2], w.w[3], &z[2], &z[3]);
}

// The unscaled entry (i, j): +-1 or a standard normal. One Philox call per entry; the segment fill
// below amortizes a call over its whole column group.
LRO_HD float sketch_entry(int kind, uint64_t seed, uint32_t i, int64_t j) {
  if (kind == kRademacher) {
    const PhiloxWords w = sketch_words(seed, i, static_cast<uint32_t>(j / kRademacherGroup));
    const uint32_t word = word_at(w, static_cast<int>((j % kRademacherGroup) / 32));
    return ((word >> (j % 32)) & 1u) ? 1.0f : -1.0f;
  }
  float z[4];
  gaussian_quad(seed, i, static_cast<uint32_t>(j / kGaussianGroup), z);
  return quad_at(z, static_cast<int>(j % kGaussianGroup));
}

// out[t] = scale * entry(row, j0 + t) for t in [0, len). One Philox call per column group touched.
template <typename T>
LRO_HD void sketch_fill_segment(int kind, uint64_t seed, uint32_t row, int64_t j0, int64_t len,
                                T scale, T* out) {
  const int group_size = kind == kRademacher ? kRademacherGroup : kGaussianGroup;
  int64_t j = j0;
  const int64_t end = j0 + len;
  while (j < end) {
    const int64_t group = j / group_size;
    const int64_t group_end = (group + 1) * group_size < end ? (group + 1) * group_size : end;
    const PhiloxWords w = sketch_words(seed, row, static_cast<uint32_t>(group));
    if (kind == kRademacher) {
      // One 32-bit word serves up to 32 consecutive columns: shift its bits out one per column.
      while (j < group_end) {
        const int bit0 = static_cast<int>(j % 32);
        uint32_t word = word_at(w, static_cast<int>((j % kRademacherGroup) / 32)) >> bit0;
        const int64_t run_end = j + (32 - bit0) < group_end ? j + (32 - bit0) : group_end;
        for (; j < run_end; ++j, word >>= 1) out[j - j0] = (word & 1u) ? scale : -scale;
      }
    } else {
      float z[4];
      box_muller(w.w[0], w.w[1], &z[0], &z[1]);
      box_muller(w.w[2], w.w[3], &z[2], &z[3]);
      for (; j < group_end; ++j) out[j - j0] = static_cast<T>(quad_at(z, static_cast<int>(j % kGaussianGroup))) * scale;
    }
  }
}

}  // namespace lro
