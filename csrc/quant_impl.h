// Device-independent parts of the quant family: the tile-wise dequant + GEMM, shared by the CPU and CUDA
// bindings:
//   dequant_matmul    Y  = X deq(W)^T (+ b)  over row tiles of W:     Y[:, R]  = X deq(W[R, :])^T (+ b[R])
//   dequant_matmul_t  dX = dY deq(W)         over column tiles of W:  dX[:, C] = dY deq(W[:, C])
// Each tile of deq(W) is decoded into one reused buffer in X's dtype (sized by a TilePolicy) and consumed by
// a GEMM (at::mm_out / at::addmm_out: BLAS on CPU, cuBLAS on CUDA) that writes
// its own slice of the output. deq(W) is never materialized in full and no output is accumulated across
// tiles, so each output element is one GEMM's dot product, like X @ deq(W)^T.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>

#include "quant_args.h"

namespace lowrank_ops {

// How big a tile of deq(W) is: at most `bytes` unless that is fewer than `min_lines` lines (rows or columns
// of W), then `min_lines` lines. Each tile's GEMM re-reads (re-packs) the whole other operand, X or dY, so a
// tile must be wide enough for its own flops to dwarf that: below ~512 lines the CPU GEMMs lose 5-15%.
struct TilePolicy {
  int64_t bytes;
  int64_t min_lines;
};

// Lines per tile under `policy`, rounded down to a multiple of `align` when at least `align` fit, at least 1
// and at most `extent`.
inline int64_t tile_extent(int64_t extent, int64_t bytes_per_line, const TilePolicy& policy, int64_t align) {
  int64_t lines = std::max(policy.min_lines, policy.bytes / std::max<int64_t>(1, bytes_per_line));
  if (lines >= align) lines = lines / align * align;
  return std::max<int64_t>(1, std::min(extent, lines));
}

// decode(tile, r0, c0): tile [nr, nc] (contiguous, X's dtype) <- deq(W)[r0 : r0 + nr, c0 : c0 + nc].
template <typename DecodeTile>
at::Tensor tiled_dequant_matmul(const at::Tensor& X, const lro::QuantMatrix& w,
                                const c10::optional<at::Tensor>& bias, const TilePolicy& policy,
                                DecodeTile decode) {
  at::Tensor Y = at::empty({X.size(0), w.rows}, X.options());
  if (X.size(0) == 0) return Y;
  const int64_t tile_rows = tile_extent(w.rows, w.cols * X.element_size(), policy, 64);
  at::Tensor buffer = at::empty({tile_rows, w.cols}, X.options());
  for (int64_t r0 = 0; r0 < w.rows; r0 += tile_rows) {
    const int64_t nr = std::min(tile_rows, w.rows - r0);
    at::Tensor tile = buffer.narrow(0, 0, nr);
    decode(tile, r0, 0);
    at::Tensor out = Y.narrow(1, r0, nr);
    if (bias.has_value()) {
      at::addmm_out(out, bias->narrow(0, r0, nr), X, tile.t());
    } else {
      at::mm_out(out, X, tile.t());
    }
  }
  return Y;
}

template <typename DecodeTile>
at::Tensor tiled_dequant_matmul_t(const at::Tensor& dY, const lro::QuantMatrix& w, const TilePolicy& policy,
                                  DecodeTile decode) {
  at::Tensor dX = at::empty({dY.size(0), w.cols}, dY.options());
  if (dY.size(0) == 0) return dX;
  const int64_t align = w.format == lro::kQuantInt8 && w.group_size <= 4096 ? w.group_size : 64;
  const int64_t tile_cols = tile_extent(w.cols, w.rows * dY.element_size(), policy, align);
  at::Tensor buffer = at::empty({w.rows, tile_cols}, dY.options());
  for (int64_t c0 = 0; c0 < w.cols; c0 += tile_cols) {
    const int64_t nc = std::min(tile_cols, w.cols - c0);
    at::Tensor tile = nc == tile_cols ? buffer : buffer.view(-1).narrow(0, 0, w.rows * nc).view({w.rows, nc});
    decode(tile, 0, c0);
    at::Tensor out = dX.narrow(1, c0, nc);
    at::mm_out(out, dY, tile);
  }
  return dX;
}

}  // namespace lowrank_ops
