// The schemas of every C++-implemented op of lowrank_ops, in one place (pytorch/extension-cpp style).
// Implementations register per dispatch key in csrc/cpu/*.cpp and csrc/cuda/*.cpp; fake (meta) kernels
// and autograd are registered from Python (lowrank_ops/ops/*.py).
//
// Conventions: `seed` is a uint64 passed through int64 (two's complement); `kind` is "rademacher" or
// "gaussian"; `side` is "left" (R = P G) or "right" (R = G P^T).
#include <torch/library.h>

TORCH_LIBRARY(lowrank_ops, m) {
  // Philox4x32 output words for int64 counters [..., 4] of uint32 values.
  m.def("philox4x32(Tensor counters, int seed, int rounds=10) -> Tensor");
  // Fills `out` (r x d) with the sketch of spec v1.
  m.def("sketch_fill_(Tensor(a!) out, int seed, str kind) -> ()");
  // P G (left) or G P^T (right) without materializing P.
  m.def("sketch_project(Tensor G, int seed, int rank, str kind, str side, ScalarType? out_dtype=None) -> Tensor");
  // P^T R (left) or R P (right) without materializing P.
  m.def("sketch_unproject(Tensor R, int seed, int dim, str kind, str side, ScalarType? out_dtype=None) -> Tensor");

  // --- dct: DCT-II basis scoring and top-k selection (lowrank_ops/ops/dct.py, DESIGN.md §3) ---
  // Norms ("l1" | "l2") of the rows of D G (left) or columns of G D^T (right); float32 (float64 for float64
  // G). method: "auto" | "gemm" | "fft" (how the CPU computes them; CUDA takes "auto" | "gemm").
  m.def("dct_scores(Tensor G, str side, str norm=\"l1\", str method=\"auto\") -> Tensor");
  // The `rank` best basis rows by score: int32, ascending, ties to the lower index.
  m.def("dct_topk(Tensor G, int rank, str side, str norm=\"l1\", str method=\"auto\") -> Tensor");
  // Rows indices[i] of the dim x dim basis, in `dtype`.
  m.def("dct_basis(Tensor indices, int dim, ScalarType dtype) -> Tensor");

  // --- lowrank_adam: the fused project -> Adam -> unproject step (lowrank_ops/ops/lowrank_adam.py) ---
  // R = L G R^T with each side "none" | "rademacher" | "gaussian" (seeded) | "matrix" (explicit rank x d);
  // moments on R (fp32); W <- W - lr wd W - lr scale L^T N R ("full") or the adapter form with `delta`.
  m.def(
      "lowrank_adamw_step_(Tensor(a!) W, Tensor G, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor(d!)? delta, str left_kind, int left_seed, int left_rank, Tensor? left_matrix, "
      "str right_kind, int right_seed, int right_rank, Tensor? right_matrix, float lr, float beta1, "
      "float beta2, float eps, float weight_decay, int step, float scale, str wd_mode) -> ()");

  // --- quant: INT8 / NF4 weights and dequant-matmul (lowrank_ops/ops/quant.py, DESIGN.md §3) ---
  // W [rows, cols] -> (codes, scales): int8 codes [rows, cols] + float32 scales [rows, ceil(cols / g)], or
  // nf4 codes uint8 [ceil(rows cols / 2)] + float32 absmax [ceil(rows cols / g)] (bitsandbytes layout).
  m.def("quantize_weight(Tensor W, str format, int group_size) -> (Tensor, Tensor)");
  m.def(
      "dequantize_weight(Tensor codes, Tensor scales, str format, int group_size, int rows, int cols, "
      "ScalarType dtype) -> Tensor");
  // Y = X deq(W)^T (+ bias), X [tokens, cols], without materializing deq(W) in full.
  m.def(
      "dequant_matmul(Tensor X, Tensor codes, Tensor scales, str format, int group_size, int rows, int cols, "
      "Tensor? bias=None) -> Tensor");
  // dX = dY deq(W), dY [tokens, rows]: the input gradient of dequant_matmul.
  m.def(
      "dequant_matmul_t(Tensor dY, Tensor codes, Tensor scales, str format, int group_size, int rows, "
      "int cols) -> Tensor");
}
