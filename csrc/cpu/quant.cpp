// CPU kernels of the quant family (INT8 / NF4 weights, docs/DESIGN.md §3; declared in csrc/lowrank_ops.h;
// per-element math in kernels/quant.h).
//   quantize_weight    per group (int8: a row's g consecutive elements; nf4: g consecutive flat elements):
//                      absmax, then every element encoded against it
//   dequantize_weight  deq(W) in the requested dtype
//   dequant_matmul     Y = X deq(W)^T (+ b), dequant_matmul_t  dX = dY deq(W): tile-wise dequant into a
//                      buffer of at most 8 MiB or 512 lines + a BLAS GEMM on the tile (csrc/quant_impl.h)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <type_traits>

#include "../../kernels/quant.h"
#include "../lowrank_ops.h"
#include "../quant_args.h"
#include "../quant_impl.h"

namespace lowrank_ops {
namespace cpu {
namespace {

// A decoded tile is 8 MiB (it stays in the last-level cache between its decode and its GEMM) or 512 lines
// of W if those are more: a 4096-wide W gives 512-row tiles in fp32 and 1024-row tiles in bf16, a
// 4096 x 11008 fp32 W 512-row tiles of 22 MiB (1/8 of deq(W)).
constexpr TilePolicy kTiles{int64_t{8} << 20, 512};
constexpr int64_t kGrainElements = 16384;  // elements per parallel task

// out[i * ld + j] = deq(W)[r0 + i, c0 + j] for i < nr, j < nc, rows in parallel.
template <typename Out>
void decode_rect(const lro::QuantMatrix& w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, Out* out,
                 int64_t ld) {
  using C = std::conditional_t<std::is_same<Out, double>::value, double, float>;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / nc);
  at::parallel_for(0, nr, grain, [&](int64_t begin, int64_t end) {
    C table[lro::kNF4Codes];
    lro::nf4_table<C>(table);
    for (int64_t i = begin; i < end; ++i) lro::quant_decode_segment<C, Out>(w, r0 + i, c0, nc, table, out + i * ld);
  });
}

// tile [nr, nc] <- deq(W)[r0 : r0 + nr, c0 : c0 + nc] in tile's dtype.
void decode_tile(const lro::QuantMatrix& w, const at::Tensor& tile, int64_t r0, int64_t c0) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tile.scalar_type(), "lowrank_ops::decode_tile", [&] {
    decode_rect<scalar_t>(w, r0, tile.size(0), c0, tile.size(1), tile.data_ptr<scalar_t>(), tile.stride(0));
  });
}

template <typename In>
void quantize_int8(const In* src, int64_t rows, int64_t cols, int64_t g, int8_t* codes, float* scales) {
  const int64_t groups = ceil_div(cols, g);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / g);
  at::parallel_for(0, rows * groups, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t / groups, j0 = (t % groups) * g, j1 = std::min(j0 + g, cols);
      const In* row = src + i * cols;
      float absmax = 0.0f;
      for (int64_t j = j0; j < j1; ++j) absmax = fmaxf(absmax, fabsf(static_cast<float>(row[j])));
      const float scale = lro::int8_scale(absmax);
      scales[t] = scale;
      for (int64_t j = j0; j < j1; ++j) codes[i * cols + j] = lro::int8_encode(static_cast<float>(row[j]), scale);
    }
  });
}

template <typename In>
void quantize_nf4(const In* src, int64_t numel, int64_t g, uint8_t* codes, float* absmax) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / g);
  at::parallel_for(0, ceil_div(numel, g), grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t e0 = b * g, e1 = std::min(e0 + g, numel);
      float amax = 0.0f;
      for (int64_t e = e0; e < e1; ++e) amax = fmaxf(amax, fabsf(static_cast<float>(src[e])));
      absmax[b] = amax;
      const float inv = lro::nf4_inverse_absmax(amax);
      // g is even, so pairs stay inside a block; only an odd total pads the last low nibble (with 0)
      for (int64_t e = e0; e < e1; e += 2) {
        const float odd = e + 1 < e1 ? static_cast<float>(src[e + 1]) : 0.0f;
        codes[e / 2] = lro::nf4_pack(lro::nf4_encode(static_cast<float>(src[e]) * inv), lro::nf4_encode(odd * inv));
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_weight(const at::Tensor& W, c10::string_view format, int64_t group_size) {
  const int fmt = check_quantize_args(W, format, group_size);
  const at::Tensor w = W.contiguous();
  const int64_t rows = w.size(0), cols = w.size(1), numel = rows * cols;
  at::Tensor codes, scales;
  std::tie(codes, scales) = empty_quant_storage(fmt, rows, cols, group_size, w.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "lowrank_ops::quantize_weight", [&] {
    if (fmt == lro::kQuantInt8) {
      quantize_int8(w.data_ptr<scalar_t>(), rows, cols, group_size, codes.data_ptr<int8_t>(),
                    scales.data_ptr<float>());
    } else {
      quantize_nf4(w.data_ptr<scalar_t>(), numel, group_size, codes.data_ptr<uint8_t>(), scales.data_ptr<float>());
    }
  });
  return {codes, scales};
}

at::Tensor dequantize_weight(const at::Tensor& codes, const at::Tensor& scales, c10::string_view format,
                             int64_t group_size, int64_t rows, int64_t cols, at::ScalarType dtype) {
  const lro::QuantMatrix w = check_dequantize_args(codes, scales, format, group_size, rows, cols, dtype);
  at::Tensor out = at::empty({rows, cols}, codes.options().dtype(dtype));
  decode_tile(w, out, 0, 0);
  return out;
}

at::Tensor dequant_matmul(const at::Tensor& X, const at::Tensor& codes, const at::Tensor& scales,
                          c10::string_view format, int64_t group_size, int64_t rows, int64_t cols,
                          const std::optional<at::Tensor>& bias) {
  const lro::QuantMatrix w = check_dequant_matmul_args(X, codes, scales, format, group_size, rows, cols, bias);
  return tiled_dequant_matmul(X, w, bias, kTiles,
                              [&](const at::Tensor& tile, int64_t r0, int64_t c0) { decode_tile(w, tile, r0, c0); });
}

at::Tensor dequant_matmul_t(const at::Tensor& dY, const at::Tensor& codes, const at::Tensor& scales,
                            c10::string_view format, int64_t group_size, int64_t rows, int64_t cols) {
  const lro::QuantMatrix w = check_dequant_matmul_t_args(dY, codes, scales, format, group_size, rows, cols);
  return tiled_dequant_matmul_t(dY, w, kTiles,
                                [&](const at::Tensor& tile, int64_t r0, int64_t c0) { decode_tile(w, tile, r0, c0); });
}

}  // namespace cpu
}  // namespace lowrank_ops
