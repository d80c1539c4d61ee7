// Device-agnostic parts of the DCT family, written with ATen ops so the CPU and CUDA bindings share them:
// scoring basis rows by a GEMM on generated basis tiles, and the deterministic top-k selection. Only the
// generation of the tiles differs per device (the caller passes it in). The CPU's FFT path is in
// csrc/cpu/dct.cpp.
//
// Scores (docs/DESIGN.md §3): side "left", d = G.size(0): s_k = || (D G)[k, :] ||; side "right", d = G.size(1):
// s_k = || (G D^T)[:, k] ||, with D the d x d orthonormal DCT-II matrix of kernels/dct.h and the l1 or l2
// norm.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <tuple>

#include "dct_args.h"
#include "../kernels/dct.h"

namespace lowrank_ops {
namespace dct {

// Sum over `dim` of |x| (l1) or x^2 (l2): the per-basis-vector partial sums of one block of D G.
inline at::Tensor partial_norms(const at::Tensor& x, int64_t dim, bool l2) {
  return l2 ? x.square().sum(dim) : x.abs().sum(dim);
}

// Scores through a GEMM on generated basis tiles: for k0 = 0, kb, 2 kb, ...
//   tile = D[k0 : k0 + kb, :] (fill(tile, k0) writes it, tile_dtype),
//   left: s[k0 : k0 + kb] = row norms of tile @ G;  right: column norms of G @ tile^T,
// so D is never materialized beyond one tile. The products are formed in `acc_dtype` (float32 for 16-bit
// G on CUDA through mm's out_dtype; G's own dtype otherwise), the norms reduced in that dtype.
template <typename Fill>
at::Tensor scores_gemm(const at::Tensor& G, const DctScoreArgs& a, int64_t kb, at::ScalarType tile_dtype,
                       at::ScalarType acc_dtype, Fill fill) {
  const int64_t d = a.dim;
  at::Tensor sums = at::empty({d}, G.options().dtype(acc_dtype));
  at::Tensor tile_buf = at::empty({std::min(kb, d), d}, G.options().dtype(tile_dtype));
  for (int64_t k0 = 0; k0 < d; k0 += kb) {
    const int64_t rows = std::min(kb, d - k0);
    at::Tensor tile = tile_buf.narrow(0, 0, rows);
    fill(tile, k0);
    const at::Tensor lhs = a.left ? tile : G;
    const at::Tensor rhs = a.left ? G : tile.t();
    const at::Tensor prod = acc_dtype == tile_dtype ? at::mm(lhs, rhs) : at::mm(lhs, rhs, acc_dtype);
    sums.narrow(0, k0, rows).copy_(partial_norms(prod, a.left ? 1 : 0, a.l2));
  }
  return a.l2 ? sums.sqrt_() : sums;
}

// The `rank` indices of the largest scores, ascending, int32. Ties go to the lower index: a stable
// descending sort keeps equal scores in index order (CUB's radix sort on CUDA is stable too), so the
// result is the same on every device. NaN sorts above every number (torch's sort order).
inline at::Tensor select_top(const at::Tensor& scores, int64_t rank) {
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  return std::get<0>(at::sort(order.narrow(0, 0, rank))).to(at::kInt);
}

}  // namespace dct
}  // namespace lowrank_ops
