// Per-element math of the fused APOLLO step (lowrank_ops/pure_torch/apollo.py, the oracle
// lowrank_ops/reference/apollo.py): APOLLO / APOLLO-Mini (Zhu et al. 2024) as apollo-torch 1.0.3's
// APOLLOAdamW computes it, with Fira's norm-growth limiter (arXiv:2410.01623). T is the compute type:
// float (float32 and bfloat16 weights) or double (float64). Torch-free, host and device.
//
// Element by element of R (the projected gradient, t >= 1 the step count after increment):
//   m <- b1 m + (1 - b1) r;  v <- b2 v + (1 - b2) r^2;  N = m / (sqrt(v) + eps)   (no bias correction)
// Per kept channel j (or the whole matrix, "tensor"): s_j = ||N_j|| / (||R_j|| + kApolloNormEps).
// Limiter on g = ||s (.) G||_F: lam = 1 at step 1, else max(g / (prev + kApolloNormEps), kApolloGrowth) /
// kApolloGrowth; the limiter's norm becomes g / lam.
// Element by element of W: W <- (W - (a / lam) s_j G) (1 - lr wd), a = lr sqrt(scale) sqrt(1 - b2^t) / (1 - b1^t).
#pragma once
#include "common.h"

namespace lro {

constexpr double kApolloNormEps = 1e-8;  // apollo-torch's guard of the channel norms and the limiter's ratio
constexpr double kApolloGrowth = 1.01;   // Fira's largest allowed growth of the update norm per step

LRO_HD float apollo_sqrt(float x) { return sqrtf(x); }
LRO_HD double apollo_sqrt(double x) { return sqrt(x); }

// The moment scalars of one step in T. 1 - b1 and 1 - b2 are rounded from double (as torch rounds its
// Python-float scalars), not formed from the rounded betas.
template <typename T>
struct ApolloBetas {
  T beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
};

template <typename T>
LRO_HD ApolloBetas<T> make_apollo_betas(double beta1, double beta2, double eps) {
  return {static_cast<T>(beta1), static_cast<T>(1.0 - beta1), static_cast<T>(beta2), static_cast<T>(1.0 - beta2),
          static_cast<T>(eps)};
}

// The Adam moments of one entry r of R, in place.
template <typename T>
LRO_HD void apollo_update_moments(T r, T* m, T* v, const ApolloBetas<T>& b) {
  const T mm = b.beta1 * *m + b.one_minus_beta1 * r;
  const T vv = b.beta2 * *v + b.one_minus_beta2 * r * r;
  *m = mm;
  *v = vv;
}

// N's entry m / (sqrt(v) + eps) from the updated moments m and sqrt_v = sqrt(v).
template <typename T>
LRO_HD T apollo_normalized(T m, T sqrt_v, T eps) {
  return m / (sqrt_v + eps);
}

// The Adam moments of one entry r of R, in place; returns N's entry m / (sqrt(v) + eps). (The CPU kernel runs
// the two halves as loops of their own, with a vectorized sqrt between them: csrc/cpu/apollo.cpp.)
template <typename T>
LRO_HD T apollo_moments(T r, T* m, T* v, const ApolloBetas<T>& b) {
  apollo_update_moments(r, m, v, b);
  return apollo_normalized(*m, apollo_sqrt(*v), b.eps);
}

// s = ||N|| / (||R|| + eps) from the squared norms (accumulated in double).
LRO_HD double apollo_channel_scale(double n_sq, double r_sq) { return sqrt(n_sq) / (sqrt(r_sq) + kApolloNormEps); }

// The limiter's divisor lam for the update norm g, the previous norm `prev` and the step t (1: none yet).
LRO_HD double apollo_limiter(double g, double prev, long long step) {
  if (step <= 1) return 1.0;
  const double ratio = g / (prev + kApolloNormEps);
  return (ratio < kApolloGrowth ? kApolloGrowth : ratio) / kApolloGrowth;  // a NaN ratio stays NaN (as torch's max)
}

// The step size a = lr sqrt(scale) sqrt(1 - b2^t) / (1 - b1^t) (lr sqrt(scale) without bias correction).
LRO_HD double apollo_step_size(double lr, double scale, double beta1, double beta2, long long step,
                               bool correct_bias) {
  double a = lr * sqrt(scale);
  if (correct_bias) {
    const double t = static_cast<double>(step);
    a *= sqrt(1.0 - pow(beta2, t)) / (1.0 - pow(beta1, t));
  }
  return a;
}

// One entry of W: (w - c s g) (1 - lr wd), c = a / lam.
template <typename T>
LRO_HD T apollo_weight_update(T w, T g, T c_s, T decay) {
  return (w - c_s * g) * decay;
}

}  // namespace lro
