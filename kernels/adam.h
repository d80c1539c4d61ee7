// Per-element math of the fused low-rank AdamW step (lowrank_ops/reference/lowrank_adam.py), shared by the
// CPU backend and the CUDA kernels so that CPU tests test it. T is the compute type: float (float32,
// bfloat16 and float16 data) or double (float64 data).
//
// With R = L G R^T the projected gradient and t >= 1 the step count after increment, element by element
// of the projected shape (torch.optim.AdamW's order of operations, torch/optim/adam.py):
//   m <- m + (1 - b1) (r - m)            m.lerp_(r, 1 - b1) (torch's lerp formula for weights < 1/2;
//                                        for b1 <= 1/2 torch rounds the same value differently)
//   v <- b2 v + (1 - b2) r^2             v.mul_(b2).addcmul_(r, r, value=1 - b2)
//   N  = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps),   bc1 = 1 - b1^t, bc2 = 1 - b2^t
// The direction that is unprojected is N ("full" weight decay) or, in the "adapter" mode of the duality
// paper (App. B), N + wd D with the adapter D <- D - lr (N + wd D). Element by element of W with
// U = L^T direction R the unprojected direction:
//   "full":    W <- W (1 - lr wd) - lr scale U     (param.mul_(1 - lr wd), then the update)
//   "adapter": W <- W - lr scale U
#pragma once
#include "common.h"

namespace lro {

LRO_HD float adam_sqrt(float x) { return sqrtf(x); }
LRO_HD double adam_sqrt(double x) { return sqrt(x); }

// The scalars of one step, rounded once to T on the host (make_adam_step).
template <typename T>
struct AdamStep {
  T beta1_weight;  // 1 - b1, the lerp weight
  T beta2;
  T one_minus_beta2;
  T bias1;       // 1 - b1^t
  T bias2_sqrt;  // sqrt(1 - b2^t)
  T eps;
  T lr;
  T adapter_decay;  // wd in the adapter mode (D's weight decay), 0 in the full mode
  T weight_multiplier;  // 1 - lr wd in the full mode, 1 in the adapter mode
  T update_scale;   // lr * scale
};

#if !defined(__CUDACC_RTC__)
// Host-side: the scalars in double, then rounded to T (as torch rounds its Python-float scalars).
template <typename T>
inline AdamStep<T> make_adam_step(double lr, double beta1, double beta2, double eps, double weight_decay,
                                  int64_t step, double scale, bool adapter) {
  const double t = static_cast<double>(step);
  AdamStep<T> s;
  s.beta1_weight = static_cast<T>(1.0 - beta1);
  s.beta2 = static_cast<T>(beta2);
  s.one_minus_beta2 = static_cast<T>(1.0 - beta2);
  s.bias1 = static_cast<T>(1.0 - std::pow(beta1, t));
  s.bias2_sqrt = static_cast<T>(std::sqrt(1.0 - std::pow(beta2, t)));
  s.eps = static_cast<T>(eps);
  s.lr = static_cast<T>(lr);
  s.adapter_decay = static_cast<T>(adapter ? weight_decay : 0.0);
  s.weight_multiplier = static_cast<T>(adapter ? 1.0 : 1.0 - lr * weight_decay);
  s.update_scale = static_cast<T>(lr * scale);
  return s;
}
#endif

// Moments of one projected element r, in place; returns N.
template <typename T>
LRO_HD T adam_moments(T r, T* m, T* v, const AdamStep<T>& s) {
  const T m1 = *m + s.beta1_weight * (r - *m);
  const T v1 = *v * s.beta2 + s.one_minus_beta2 * r * r;
  *m = m1;
  *v = v1;
  return (m1 / s.bias1) / (adam_sqrt(v1) / s.bias2_sqrt + s.eps);
}

// Adapter mode: the direction N + wd D, and D <- D - lr (N + wd D) in place.
template <typename T>
LRO_HD T adam_adapter_direction(T n, T* delta, const AdamStep<T>& s) {
  const T direction = n + s.adapter_decay * *delta;
  *delta = *delta - s.lr * direction;
  return direction;
}

// The new weight from the old one and the unprojected direction u.
template <typename T>
LRO_HD T adam_weight_update(T w, T u, const AdamStep<T>& s) {
  return w * s.weight_multiplier - s.update_scale * u;
}

}  // namespace lro
