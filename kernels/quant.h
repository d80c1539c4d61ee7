// Per-element math of the quant family (docs/DESIGN.md §3 "Quantized weights"), shared by the CPU backend and
// the CUDA kernels, so that the CPU tests test the arithmetic the GPU runs.
//
// INT8 (symmetric absmax per group of g consecutive elements of a row of W [out, in]):
//   scale = absmax / 127                          (float32, stored)
//   code  = clamp(rint(w / scale), -127, 127)     (round half to even; scale 0 -> code 0)
//   w'    = code * scale
// The division by the stored scale (rather than a product with a reciprocal) keeps the encoding free of
// float contraction: every backend rounds the same correctly rounded quotient.
//
// NF4 (QLoRA / bitsandbytes NormalFloat4, blocks of g consecutive elements of the flattened W):
//   inv   = 1 / max(absmax, 1e-38)                (float32)
//   code  = #{ t : x > T_t },  x = w * inv,  T_t = (c_t + c_(t+1)) / 2 in float32, t = 0..14
//           i.e. the nearest codebook value, ties to the lower one (torch.bucketize on the midpoints)
//   w'    = c_code * absmax
// Element 2i goes to the high nibble of byte i, element 2i + 1 to its low nibble. An all-zero block
// encodes 0 (code 7) and stores absmax 0, like bitsandbytes.
//
// Every function works on the float32 value of an input element; decoding is done in the compute type
// C (double for float64 outputs, float otherwise) and rounded once to the output type by the caller.
#pragma once
#include "common.h"

namespace lro {

enum QuantFormat : int { kQuantInt8 = 0, kQuantNF4 = 1 };

constexpr int kNF4Codes = 16;
constexpr float kNF4MinAbsmax = 1e-38f;  // bitsandbytes clamps the divisor of an all-zero block to this

// ---- INT8 ----------------------------------------------------------------------------------------------

LRO_HD float int8_scale(float absmax) { return absmax / 127.0f; }

LRO_HD int8_t int8_encode(float w, float scale) {
  if (!(scale > 0.0f)) return 0;
  const float q = fminf(fmaxf(rintf(w / scale), -127.0f), 127.0f);
  return static_cast<int8_t>(q);
}

template <typename C>
LRO_HD C int8_decode(int code, float scale) {
  return static_cast<C>(code) * static_cast<C>(scale);
}

// ---- NF4 -----------------------------------------------------------------------------------------------

// The NormalFloat4 codebook of QLoRA (Dettmers et al. 2023, App. E) as bitsandbytes 0.50 stores it.
// A select tree on the code's bits: no table in memory, so device code keeps it in registers.
LRO_HD float nf4_value(uint32_t q) {
  const bool b0 = q & 1u, b1 = q & 2u, b2 = q & 4u;
  if (q & 8u) {
    return b2 ? (b1 ? (b0 ? 1.0f : 0.7229568362236023f) : (b0 ? 0.5626170039176941f : 0.44070982933044434f))
              : (b1 ? (b0 ? 0.33791524171829224f : 0.24611230194568634f)
                    : (b0 ? 0.16093020141124725f : 0.07958029955625534f));
  }
  return b2 ? (b1 ? (b0 ? 0.0f : -0.09105003625154495f) : (b0 ? -0.18477343022823334f : -0.28444138169288635f))
            : (b1 ? (b0 ? -0.39491748809814453f : -0.5250730514526367f)
                  : (b0 ? -0.6961928009986877f : -1.0f));
}

// Midpoint between codes t and t + 1, rounded to float32 exactly as (c_t + c_(t+1)) / 2 in float32.
LRO_HD float nf4_threshold(uint32_t t) { return 0.5f * (nf4_value(t) + nf4_value(t + 1)); }

LRO_HD float nf4_inverse_absmax(float absmax) { return 1.0f / fmaxf(absmax, kNF4MinAbsmax); }

// The code of x = w * inv: the number of midpoints strictly below x (x >= 1 gives 15, x <= -1 gives 0).
LRO_HD uint32_t nf4_encode(float x) {
  uint32_t q = 0;
  for (uint32_t t = 0; t + 1 < kNF4Codes; ++t) q += x > nf4_threshold(t) ? 1u : 0u;
  return q;
}

LRO_HD uint8_t nf4_pack(uint32_t even, uint32_t odd) { return static_cast<uint8_t>((even << 4) | odd); }

// ---- Decoding a stored matrix ---------------------------------------------------------------------------

// W [rows, cols] in one of the formats (storage in csrc/quant_args.h): int8 codes [rows, cols] with
// scales [rows, ceil(cols / g)], or packed NF4 codes [ceil(rows cols / 2)] with absmax [ceil(rows cols / g)].
struct QuantMatrix {
  int format;
  const uint8_t* codes;
  const float* scales;
  int64_t rows;
  int64_t cols;
  int64_t group_size;
};

// The one rounding from the compute type to the output type. Device code specializes it for __half and
// __nv_bfloat16 (torch builds CUDA code without their implicit conversions).
template <typename Out, typename C>
LRO_HD Out convert_to(C v) {
  return static_cast<Out>(v);
}

// table[q] = nf4_value(q) in the compute type: callers build it once (stack, shared memory) and the
// segment decoder looks codes up in it; a decoded element is table[code] * absmax in C.
template <typename C>
LRO_HD void nf4_table(C* table) {
  for (uint32_t q = 0; q < kNF4Codes; ++q) table[q] = static_cast<C>(nf4_value(q));
}

// out[t] = deq(W)[i, j0 + t] rounded to Out, for t < len (j0 + len <= cols), of an int8 W. Walks the
// segment one scale group at a time, so the inner loop has a fixed scale.
template <typename C, typename Out>
LRO_HD void int8_decode_segment(const QuantMatrix& w, int64_t i, int64_t j0, int64_t len, Out* out) {
  const int64_t g = w.group_size;
  const int8_t* codes = reinterpret_cast<const int8_t*>(w.codes) + i * w.cols;
  const float* scales = w.scales + i * ((w.cols + g - 1) / g);
  for (int64_t j = j0, end = j0 + len; j < end;) {
    const int64_t group_end = (j / g + 1) * g < end ? (j / g + 1) * g : end;
    const float s = scales[j / g];
    for (; j < group_end; ++j) out[j - j0] = convert_to<Out>(int8_decode<C>(codes[j], s));
  }
}

// The same for an NF4 W: element (i, j) is flat element e = i cols + j of block e / g, nibble e % 2 of byte
// e / 2; whole bytes (an even e and the odd one after it) are decoded together. `table` is nf4_table<C>.
template <typename C, typename Out>
LRO_HD void nf4_decode_segment(const QuantMatrix& w, int64_t i, int64_t j0, int64_t len, const C* table,
                               Out* out) {
  const int64_t g = w.group_size;
  const int64_t e0 = i * w.cols + j0;
  const uint8_t* codes = w.codes;
  for (int64_t e = e0, end = e0 + len; e < end;) {
    const int64_t block_end = (e / g + 1) * g < end ? (e / g + 1) * g : end;
    const C a = static_cast<C>(w.scales[e / g]);
    if (e & 1) {
      out[e - e0] = convert_to<Out>(table[codes[e >> 1] & 15u] * a);
      ++e;
    }
    // whole bytes: out[2t], out[2t + 1] from byte t, with t counted from the segment's first whole byte
    Out* pair = out + (e - e0);
    const uint8_t* bytes = codes + (e >> 1);
    const int64_t n = (block_end - e) / 2;
    for (int64_t t = 0; t < n; ++t) {
      const uint32_t byte = bytes[t];
      pair[2 * t] = convert_to<Out>(table[byte >> 4] * a);
      pair[2 * t + 1] = convert_to<Out>(table[byte & 15u] * a);
    }
    e += 2 * n;
    if (e < block_end) {
      out[e - e0] = convert_to<Out>(table[codes[e >> 1] >> 4] * a);
      ++e;
    }
  }
}

template <typename C, typename Out>
LRO_HD void quant_decode_segment(const QuantMatrix& w, int64_t i, int64_t j0, int64_t len, const C* table,
                                 Out* out) {
  if (w.format == kQuantInt8) {
    int8_decode_segment<C, Out>(w, i, j0, len, out);
  } else {
    nf4_decode_segment<C, Out>(w, i, j0, len, table, out);
  }
}

}  // namespace lro
