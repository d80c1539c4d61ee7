// The schemas of every C++-implemented op of lowrank_ops, in one place (pytorch/extension-cpp style).
// Implementations register per dispatch key in csrc/cpu/*.cpp and csrc/cuda/*.cpp; fake (meta) kernels
// and autograd are registered from Python (lowrank_ops/ops/*.py).
//
// Conventions: `seed` is a uint64 passed through int64 (two's complement); `kind` is "rademacher" or
// "gaussian"; `side` is "left" (R = P G) or "right" (R = G P^T).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Lets `import lowrank_ops._C` load this library; the ops register on load, no Python API is needed.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(lowrank_ops, m) {
  // Philox4x32 output words for int64 counters [..., 4] of uint32 values.
  m.def("philox4x32(Tensor counters, int seed, int rounds=10) -> Tensor");
  // Fills `out` (r x d) with the sketch of spec v1.
  m.def("sketch_fill_(Tensor(a!) out, int seed, str kind) -> ()");
  // P G (left) or G P^T (right) without materializing P.
  m.def("sketch_project(Tensor G, int seed, int rank, str kind, str side, ScalarType? out_dtype=None) -> Tensor");
  // P^T R (left) or R P (right) without materializing P.
  m.def("sketch_unproject(Tensor R, int seed, int dim, str kind, str side, ScalarType? out_dtype=None) -> Tensor");

  // --- lowrank_adam: the fused project -> Adam -> unproject step (lowrank_ops/ops/lowrank_adam.py) ---
  // R = L G R^T with each side "none" | "rademacher" | "gaussian" (seeded) | "matrix" (explicit rank x d);
  // moments on R (fp32); W <- W - lr wd W - lr scale L^T N R ("full") or the adapter form with `delta`.
  m.def(
      "lowrank_adamw_step_(Tensor(a!) W, Tensor G, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor(d!)? delta, str left_kind, int left_seed, int left_rank, Tensor? left_matrix, "
      "str right_kind, int right_seed, int right_rank, Tensor? right_matrix, float lr, float beta1, "
      "float beta2, float eps, float weight_decay, int step, float scale, str wd_mode) -> ()");
}
