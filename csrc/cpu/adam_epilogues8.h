// The moment epilogue of the fused low-rank AdamW step on blockwise 8-bit moments (docs/DESIGN.md §3 "8-bit
// optimizer moments"), on the CPU: for a run of projected elements of one row, block by block, decode the
// stored moments (kernels/blockwise8.h), update them with kernels/adam.h's arithmetic in the compute type T
// (the direction to unproject replaces r, from the updated values before encoding), round them to float32 and
// encode each block again. Used by the single-matrix kernel (csrc/cpu/lowrank_adam.cpp) and the multi-tensor
// one (csrc/cpu/lowrank_adam_multi.cpp) wherever adam_epilogues.h's adam_moments_run runs on float moments.
#pragma once
#include <cstdint>

#include "../../kernels/adam.h"
#include "../../kernels/blockwise8.h"
#include "../lowrank_adam_impl.h"

namespace lowrank_ops {
namespace cpu {

// The 8-bit moments of one matrix: codes [rows, cols] (row-major) and absmax [rows, ceil(cols / block)].
struct Q8Moments {
  uint8_t* m;
  float* m_absmax;
  uint8_t* v;
  float* v_absmax;
  int64_t cols, block;
  const lro::Q8Table* signed_table;    // exp_avg's code
  const lro::Q8Table* unsigned_table;  // exp_avg_sq's code
};

// The signed (exp_avg) and unsigned (exp_avg_sq) code tables, filled (and their bucket tables checked) once,
// on first use.
struct Q8Tables {
  lro::Q8Table signed_table, unsigned_table;
};

inline const Q8Tables& q8_tables() {
  static const Q8Tables tables = [] {
    Q8Tables t;
    lro::q8_fill_table(true, &t.signed_table);
    lro::q8_fill_table(false, &t.unsigned_table);
    return t;
  }();
  return tables;
}

// The signed or the unsigned table of q8_tables().
inline const lro::Q8Table& q8_table(bool is_signed) {
  return is_signed ? q8_tables().signed_table : q8_tables().unsigned_table;
}

// The 8-bit moments of a matrix with them (AdamMatrix::quantized; codes and absmax contiguous).
inline Q8Moments q8_moments(const AdamMatrix& matrix) {
  const Q8Tables& tables = q8_tables();
  return {matrix.exp_avg.data_ptr<uint8_t>(), matrix.exp_avg_absmax->data_ptr<float>(),
          matrix.exp_avg_sq.data_ptr<uint8_t>(), matrix.exp_avg_sq_absmax->data_ptr<float>(),
          matrix.exp_avg.size(1), matrix.state_block, &tables.signed_table, &tables.unsigned_table};
}

// Row `row`, columns [c0, c0 + n): c0 a multiple of `block`, and n a multiple of it or reaching the row's end,
// so the run holds whole blocks. delta (adapter mode) points at the run's first element, or is null.
// `scratch` holds 2 * min(block, cols) floats. Per block: one loop decodes, updates and rounds the moments to
// float32 into the scratch while it carries their new absmax; then the adapter's loop; then the encode's
// (kernels/blockwise8.h q8_encode_scaled). The loops have no per-element branch and the same per-element
// arithmetic as one fused loop.
template <typename T>
void adam_moments_run8(T* __restrict__ r, const Q8Moments& q, int64_t row, int64_t c0, int64_t n,
                       T* __restrict__ delta, const lro::AdamStep<T>& s, float* scratch) {
  const int64_t blocks = (q.cols + q.block - 1) / q.block;
  float* __restrict__ mb = scratch;
  float* __restrict__ vb = scratch + (q.block < q.cols ? q.block : q.cols);
  const float* __restrict__ m_code = q.signed_table->code;
  const float* __restrict__ v_code = q.unsigned_table->code;
  for (int64_t b0 = 0; b0 < n; b0 += q.block) {
    const int64_t len = n - b0 < q.block ? n - b0 : q.block;
    const int64_t at = row * q.cols + c0 + b0, ab = row * blocks + (c0 + b0) / q.block;
    const uint8_t* __restrict__ mq = q.m + at;
    const uint8_t* __restrict__ vq = q.v + at;
    const float am = q.m_absmax[ab], av = q.v_absmax[ab];
    T* __restrict__ rb = r + b0;
    int32_t m_max = 0, v_max = 0;  // bits of the new absmax (lro::q8_absmax_bits)
    for (int64_t i = 0; i < len; ++i) {
      T m = static_cast<T>(lro::q8_decode(mq[i], am, m_code));
      T v = static_cast<T>(lro::q8_decode(vq[i], av, v_code));
      rb[i] = lro::adam_moments(rb[i], &m, &v, s);
      mb[i] = static_cast<float>(m);
      vb[i] = static_cast<float>(v);
      m_max = lro::q8_absmax_bits(m_max, mb[i]);
      v_max = lro::q8_absmax_bits(v_max, vb[i]);
    }
    if (delta != nullptr) {
      T* __restrict__ db = delta + b0;
      for (int64_t i = 0; i < len; ++i) rb[i] = lro::adam_adapter_direction(rb[i], db + i, s);
    }
    q.m_absmax[ab] = lro::q8_bits_float(static_cast<uint32_t>(m_max));
    q.v_absmax[ab] = lro::q8_bits_float(static_cast<uint32_t>(v_max));
    lro::q8_encode_scaled(mb, len, q.m_absmax[ab], *q.signed_table, q.m + at);
    lro::q8_encode_scaled(vb, len, q.v_absmax[ab], *q.unsigned_table, q.v + at);
  }
}

}  // namespace cpu
}  // namespace lowrank_ops
