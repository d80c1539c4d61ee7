// CUDA kernels of the quant family (INT8 / NF4 weights, docs/DESIGN.md §3; declared in csrc/lowrank_ops.h):
// tensors -> pointers -> the launchers of kernels/quant.cuh, on the current stream of the tensor's device.
// Mirrors csrc/cpu/quant.cpp: the same argument checks (csrc/quant_args.h), the same storage, and the same
// tile-wise dequant + GEMM driver (csrc/quant_impl.h), here with cuBLAS (at::mm_out) on each tile decoded by
// launch_dequantize. A fused dequant-in-the-K-loop GEMM is the Triton backend's; docs/DESIGN.md §4 keeps this
// decode + cuBLAS path only where the GPU benchmark measures it faster, which no GPU has measured yet.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>

#include "../../kernels/quant.cuh"
#include "../lowrank_ops.h"
#include "../quant_args.h"
#include "../quant_impl.h"
#include "dtype_dispatch.h"
#include "launch.h"

namespace lowrank_ops {
namespace cuda {
namespace {

// A decoded tile is 16 MiB, or 1024 lines of W if those are more: a 4096-wide bf16 W gives 2048-row tiles,
// wide enough for cuBLAS to run near its peak, while deq(W) of a 4096 x 11008 layer (90 MB in bf16) is never
// held whole.
constexpr TilePolicy kTiles{int64_t{16} << 20, 1024};

// tile [nr, nc] <- deq(W)[r0 : r0 + nr, c0 : c0 + nc] in tile's dtype (tile contiguous in its rows).
void decode_tile(const lro::QuantMatrix& w, const at::Tensor& tile, int64_t r0, int64_t c0, const char* op) {
  const int64_t nr = tile.size(0), nc = tile.size(1), ld = tile.stride(0);
  const cudaError_t err = dispatch_float(tile.scalar_type(), op, "dtype", [&](auto tag) {
    return lro::launch_dequantize(w, r0, nr, c0, nc, data_as<decltype(tag)>(tile), ld, stream_of(tile));
  });
  check_launch(err, op, "a tile of " + std::to_string(nr) + " x " + std::to_string(nc) + " decoded weights");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_weight(const at::Tensor& W, c10::string_view format, int64_t group_size) {
  const int fmt = check_quantize_args(W, format, group_size);
  const c10::cuda::CUDAGuard guard(W.device());
  const at::Tensor w = W.contiguous();
  const int64_t rows = w.size(0), cols = w.size(1);
  at::Tensor codes, scales;
  std::tie(codes, scales) = empty_quant_storage(fmt, rows, cols, group_size, w.options());
  uint8_t* c = static_cast<uint8_t*>(codes.mutable_data_ptr());
  float* s = scales.mutable_data_ptr<float>();
  const cudaError_t err = dispatch_float(w.scalar_type(), "quantize_weight", "W", [&](auto tag) {
    return lro::launch_quantize(const_data_as<decltype(tag)>(w), fmt, rows, cols, group_size, c, s, stream_of(w));
  });
  check_launch(err, "quantize_weight", "W of shape " + shape_str(W));
  return {codes, scales};
}

at::Tensor dequantize_weight(const at::Tensor& codes, const at::Tensor& scales, c10::string_view format,
                             int64_t group_size, int64_t rows, int64_t cols, at::ScalarType dtype) {
  const lro::QuantMatrix w = check_dequantize_args(codes, scales, format, group_size, rows, cols, dtype);
  const c10::cuda::CUDAGuard guard(codes.device());
  at::Tensor out = at::empty({rows, cols}, codes.options().dtype(dtype));
  decode_tile(w, out, 0, 0, "dequantize_weight");
  return out;
}

at::Tensor dequant_matmul(const at::Tensor& X, const at::Tensor& codes, const at::Tensor& scales,
                          c10::string_view format, int64_t group_size, int64_t rows, int64_t cols,
                          const std::optional<at::Tensor>& bias) {
  const lro::QuantMatrix w = check_dequant_matmul_args(X, codes, scales, format, group_size, rows, cols, bias);
  const c10::cuda::CUDAGuard guard(X.device());
  return tiled_dequant_matmul(X, w, bias, kTiles, [&](const at::Tensor& tile, int64_t r0, int64_t c0) {
    decode_tile(w, tile, r0, c0, "dequant_matmul");
  });
}

at::Tensor dequant_matmul_t(const at::Tensor& dY, const at::Tensor& codes, const at::Tensor& scales,
                            c10::string_view format, int64_t group_size, int64_t rows, int64_t cols) {
  const lro::QuantMatrix w = check_dequant_matmul_t_args(dY, codes, scales, format, group_size, rows, cols);
  const c10::cuda::CUDAGuard guard(dY.device());
  return tiled_dequant_matmul_t(dY, w, kTiles, [&](const at::Tensor& tile, int64_t r0, int64_t c0) {
    decode_tile(w, tile, r0, c0, "dequant_matmul_t");
  });
}

}  // namespace cuda
}  // namespace lowrank_ops
