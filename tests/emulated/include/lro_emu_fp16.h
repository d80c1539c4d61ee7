// Test-only CUDA emulation (tests/emulated): the 16-bit float types of cuda_fp16.h / cuda_bf16.h that
// kernels/*.cu use, with exact IEEE conversions. Only the explicit conversion intrinsics exist, no implicit
// conversions and no 16-bit arithmetic: torch compiles its CUDA code with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__, so a kernel relying on them would not build there either.
//
//   float -> half      round to nearest, ties to even (__float2half_rn): overflow to +-inf from 65520 up,
//                      subnormal halves below 2^-14, +-0 below 2^-25 (2^-25 itself is a tie and goes to 0)
//   float -> bfloat16  round to nearest, ties to even on the 16 dropped bits (__float2bfloat16_rn)
//   NaN -> either      CUDA's canonical NaN 0x7fff
//   half/bf16 -> float exact
#pragma once
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t bits;  // IEEE binary16
};

struct __nv_bfloat16 {
  uint16_t bits;  // the high half of an IEEE binary32
};

namespace lro_emu {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

constexpr uint16_t kCanonicalNaN16 = 0x7fff;

// m >> shift, rounded to nearest with ties to even on the shifted-out bits (1 <= shift <= 31).
inline uint32_t shift_right_rne(uint32_t m, int shift) {
  const uint32_t q = m >> shift, rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  return q + ((rest > half || (rest == half && (q & 1u))) ? 1u : 0u);
}

inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return kCanonicalNaN16;
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // |f| >= 65520 = 65504 + half an ulp (a tie, 65504 is odd)
  const uint32_t e = ax >> 23;                    // biased float exponent
  if (e >= 113) {                                 // |f| >= 2^-14: a normal half; rebias 127 -> 15
    return static_cast<uint16_t>(sign | shift_right_rne(ax - (112u << 23), 13));
  }
  if (e < 102) return sign;  // |f| < 2^-25: rounds to 0
  // Subnormal half: |f| = m 2^(e - 150) with the 24-bit significand m, in units of 2^-24: m >> (126 - e).
  // A carry into 0x400 gives the smallest normal half, as it should.
  return static_cast<uint16_t>(sign | shift_right_rne((ax & 0x7fffffu) | 0x800000u, static_cast<int>(126 - e)));
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_float(sign | 0x7f800000u | (m << 13));
  if (e == 0) {  // zero or subnormal: m 2^-24, exact in float
    const float magnitude = static_cast<float>(m) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

inline uint16_t float_to_bfloat16_bits(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return kCanonicalNaN16;
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);  // ties to even; overflows to inf
}

inline float bfloat16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

}  // namespace lro_emu

inline __half __float2half_rn(float f) { return __half{lro_emu::float_to_half_bits(f)}; }
inline float __half2float(__half h) { return lro_emu::half_bits_to_float(h.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{lro_emu::float_to_bfloat16_bits(f)}; }
inline float __bfloat162float(__nv_bfloat16 b) { return lro_emu::bfloat16_bits_to_float(b.bits); }
