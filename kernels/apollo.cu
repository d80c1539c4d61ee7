// CUDA kernels and launchers of the fused APOLLO step (API in apollo.cuh). The per-element math is
// kernels/apollo.h (lro::apollo_moments, apollo_channel_scale, apollo_limiter, apollo_weight_update), shared
// with the CPU backend; this file adds the indexing, the per-channel sums and the launches.
//
// Per-channel sums (the squared norms of G, N and R along the kept dimension) run one group of channels per
// block: with unit channel stride (adjacent channels adjacent in memory: G's columns of a row-major G, R's
// columns for side "left") a block takes 32 channels x 8 lanes along k, so that a warp reads 32 consecutive
// elements; otherwise one channel x 256 lanes along k (a row of a row-major G). The lanes' partial sums meet
// in a shared-memory tree, in double.
#if !defined(__CUDACC_RTC__)
#include <cmath>
#endif

#include "apollo.cuh"
#include "element.cuh"

namespace lro {
namespace {

constexpr int kThreads = 256;

// CPB channels per block: thread t works on channel c0 + t % CPB at k = t / CPB, t / CPB + kThreads / CPB, ...
template <int CPB>
struct ChannelLanes {
  static constexpr int kLanes = kThreads / CPB;  // threads along k per channel
  __device__ static int channel() { return static_cast<int>(threadIdx.x) % CPB; }
  __device__ static int lane() { return static_cast<int>(threadIdx.x) / CPB; }
};

// Sums `x` over the lanes of each channel of the block (every thread of the block must call it); thread
// t < CPB gets channel t's total. buf holds kThreads doubles.
template <int CPB>
__device__ double sum_over_lanes(double x, double* buf) {
  const int t = static_cast<int>(threadIdx.x);
  buf[t] = x;
  __syncthreads();
  for (int half = kThreads / 2; half >= CPB; half /= 2) {
    if (t < half) buf[t] += buf[t + half];
    __syncthreads();
  }
  const double total = buf[t < CPB ? t : 0];
  __syncthreads();  // buf is reused by the next call
  return total;
}

template <typename X, int CPB>
__global__ void __launch_bounds__(kThreads)
    apollo_sq_norms_kernel(const X* __restrict__ x, int64_t channels, int64_t len, int64_t cs, int64_t ks,
                           double* __restrict__ out) {
  __shared__ double buf[kThreads];
  using Lanes = ChannelLanes<CPB>;
  for (int64_t c0 = static_cast<int64_t>(blockIdx.x) * CPB; c0 < channels; c0 += static_cast<int64_t>(gridDim.x) * CPB) {
    const int64_t c = c0 + Lanes::channel();
    double acc = 0.0;
    if (c < channels) {
      for (int64_t k = Lanes::lane(); k < len; k += Lanes::kLanes) {
        const double v = static_cast<double>(widen(x[c * cs + k * ks]));
        acc += v * v;
      }
    }
    const double total = sum_over_lanes<CPB>(acc, buf);
    if (static_cast<int>(threadIdx.x) < CPB && c < channels) out[c] = total;
  }
}

// Minimum one block per SM, as in sketch.cu: with the default register budget ptxas spills the float,
// 32-channel instance on sm_80.
template <typename T, int CPB>
__global__ void __launch_bounds__(kThreads, 1)
    apollo_moments_kernel(const T* __restrict__ r, T* __restrict__ m, T* __restrict__ v, int64_t channels,
                          int64_t len, int64_t cs, int64_t ks, ApolloBetas<T> betas, double* __restrict__ n_sq,
                          double* __restrict__ r_sq) {
  __shared__ double buf[kThreads];
  using Lanes = ChannelLanes<CPB>;
  for (int64_t c0 = static_cast<int64_t>(blockIdx.x) * CPB; c0 < channels; c0 += static_cast<int64_t>(gridDim.x) * CPB) {
    const int64_t c = c0 + Lanes::channel();
    double n_acc = 0.0, r_acc = 0.0;
    if (c < channels) {
      for (int64_t k = Lanes::lane(); k < len; k += Lanes::kLanes) {
        const int64_t e = c * cs + k * ks;
        const double nv = static_cast<double>(apollo_moments(r[e], m + e, v + e, betas));
        const double rv = static_cast<double>(r[e]);
        n_acc += nv * nv;
        r_acc += rv * rv;
      }
    }
    const double n_total = sum_over_lanes<CPB>(n_acc, buf);
    const double r_total = sum_over_lanes<CPB>(r_acc, buf);
    if (static_cast<int>(threadIdx.x) < CPB && c < channels) {
      n_sq[c] = n_total;
      r_sq[c] = r_total;
    }
  }
}

// One block of kThreads: the scales, the limiter and c_s (apollo.cuh).
template <typename T, typename L>
__global__ void __launch_bounds__(kThreads)
    apollo_scales_kernel(const double* __restrict__ n_sq, const double* __restrict__ r_sq,
                         const double* __restrict__ g_sq, int64_t channels, ApolloScaling scaling,
                         L* __restrict__ limiter_norm, T* __restrict__ c_s) {
  __shared__ double buf[kThreads];
  const int64_t t = threadIdx.x;
  double s_all = 0.0, g_total;
  if (scaling.channel) {  // g^2 = sum_c s_c^2 ||G_c||^2
    double acc = 0.0;
    for (int64_t c = t; c < channels; c += kThreads) {
      const double s = apollo_channel_scale(n_sq[c], r_sq[c]);
      acc += s * s * g_sq[c];
    }
    g_total = sum_over_lanes<1>(acc, buf);
  } else {  // one s of ||N||_F and ||R||_F; g^2 = s^2 ||G||_F^2
    double n_acc = 0.0, r_acc = 0.0, g_acc = 0.0;
    for (int64_t c = t; c < channels; c += kThreads) n_acc += n_sq[c], r_acc += r_sq[c], g_acc += g_sq[c];
    const double n_all = sum_over_lanes<1>(n_acc, buf);
    const double r_all = sum_over_lanes<1>(r_acc, buf);
    const double g_all = sum_over_lanes<1>(g_acc, buf);
    s_all = apollo_channel_scale(n_all, r_all);
    g_total = s_all * s_all * g_all;
  }
  const double g = sqrt(g_total);
  double lam = 1.0;
  if (scaling.limiter) {
    lam = apollo_limiter(g, static_cast<double>(*limiter_norm), scaling.step);
    __syncthreads();  // every thread has read the previous norm
    if (t == 0) *limiter_norm = static_cast<L>(g / lam);
  }
  const double c = scaling.step_size / lam;
  for (int64_t j = t; j < channels; j += kThreads) {
    const double s = scaling.channel ? apollo_channel_scale(n_sq[j], r_sq[j]) : s_all;
    c_s[j] = static_cast<T>(c * s);
  }
}

template <typename W, typename G, typename T>
__global__ void __launch_bounds__(kThreads)
    apollo_weight_update_kernel(W* __restrict__ w, int64_t rows, int64_t cols, int64_t ws0, int64_t ws1,
                                const G* __restrict__ g, int64_t gs0, int64_t gs1, const T* __restrict__ c_s,
                                bool left, T decay) {
  const int64_t total = rows * cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = e / cols, j = e % cols;
    W* p = w + i * ws0 + j * ws1;
    const T gv = static_cast<T>(widen(g[i * gs0 + j * gs1]));
    *p = narrow_to<W>(apollo_weight_update(static_cast<T>(widen(*p)), gv, c_s[left ? j : i], decay));
  }
}

#if !defined(__CUDACC_RTC__)  // host launchers: nvcc only (NVRTC compiles the kernels above)
constexpr int64_t kMaxBlocks = 65535;

unsigned blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

bool valid_channels(int64_t channels, int64_t len, int64_t cs, int64_t ks) {
  return channels >= 0 && len >= 0 && cs >= 0 && ks >= 0;
}

// Blocks for `channels` channels, CPB per block.
unsigned channel_blocks(int64_t channels, int cpb) {
  const int64_t blocks = (channels + cpb - 1) / cpb;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}
#endif  // !__CUDACC_RTC__

}  // namespace

#if !defined(__CUDACC_RTC__)
template <typename X>
cudaError_t launch_apollo_sq_norms(const X* x, int64_t channels, int64_t len, int64_t cs, int64_t ks, double* out,
                                   cudaStream_t stream) {
  if (!valid_channels(channels, len, cs, ks)) return cudaErrorInvalidValue;
  if (channels == 0) return cudaSuccess;
  if (out == nullptr || (len > 0 && x == nullptr)) return cudaErrorInvalidValue;
  if (cs == 1) {
    LRO_LAUNCH(channel_blocks(channels, 32), kThreads, 0, stream, apollo_sq_norms_kernel<X, 32>)
    (x, channels, len, cs, ks, out);
  } else {
    LRO_LAUNCH(channel_blocks(channels, 1), kThreads, 0, stream, apollo_sq_norms_kernel<X, 1>)
    (x, channels, len, cs, ks, out);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_apollo_moments(const T* r, T* m, T* v, int64_t channels, int64_t len, int64_t cs, int64_t ks,
                                  const ApolloBetas<T>& betas, double* n_sq, double* r_sq, cudaStream_t stream) {
  if (!valid_channels(channels, len, cs, ks)) return cudaErrorInvalidValue;
  if (channels == 0) return cudaSuccess;
  if (n_sq == nullptr || r_sq == nullptr || (len > 0 && (r == nullptr || m == nullptr || v == nullptr)))
    return cudaErrorInvalidValue;
  if (cs == 1) {
    LRO_LAUNCH(channel_blocks(channels, 32), kThreads, 0, stream, apollo_moments_kernel<T, 32>)
    (r, m, v, channels, len, cs, ks, betas, n_sq, r_sq);
  } else {
    LRO_LAUNCH(channel_blocks(channels, 1), kThreads, 0, stream, apollo_moments_kernel<T, 1>)
    (r, m, v, channels, len, cs, ks, betas, n_sq, r_sq);
  }
  return cudaGetLastError();
}

template <typename T, typename L>
cudaError_t launch_apollo_scales(const double* n_sq, const double* r_sq, const double* g_sq, int64_t channels,
                                 const ApolloScaling& scaling, L* limiter_norm, T* c_s, cudaStream_t stream) {
  if (channels < 1 || scaling.step < 1) return cudaErrorInvalidValue;
  if (n_sq == nullptr || r_sq == nullptr || g_sq == nullptr || limiter_norm == nullptr || c_s == nullptr)
    return cudaErrorInvalidValue;
  LRO_LAUNCH(1, kThreads, 0, stream, apollo_scales_kernel<T, L>)(n_sq, r_sq, g_sq, channels, scaling, limiter_norm, c_s);
  return cudaGetLastError();
}

template <typename W, typename G>
cudaError_t launch_apollo_weight_update(W* w, int64_t rows, int64_t cols, int64_t ws0, int64_t ws1, const G* g,
                                        int64_t gs0, int64_t gs1, const typename ApolloCompute<W>::type* c_s,
                                        bool left, typename ApolloCompute<W>::type decay, cudaStream_t stream) {
  using T = typename ApolloCompute<W>::type;
  if (rows < 0 || cols < 0 || ws0 < 0 || ws1 < 0 || gs0 < 0 || gs1 < 0) return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (w == nullptr || g == nullptr || c_s == nullptr) return cudaErrorInvalidValue;
  LRO_LAUNCH(blocks_for(rows * cols), kThreads, 0, stream, apollo_weight_update_kernel<W, G, T>)
  (w, rows, cols, ws0, ws1, g, gs0, gs1, c_s, left, decay);
  return cudaGetLastError();
}

// The instances apollo.cuh promises.
#define LRO_APOLLO_INPUT_TYPES(X)                                                                                 \
  template cudaError_t launch_apollo_sq_norms<X>(const X*, int64_t, int64_t, int64_t, int64_t, double*,           \
                                                 cudaStream_t);                                                   \
  template cudaError_t launch_apollo_weight_update<float, X>(float*, int64_t, int64_t, int64_t, int64_t, const X*, \
                                                             int64_t, int64_t, const float*, bool, float,          \
                                                             cudaStream_t);                                       \
  template cudaError_t launch_apollo_weight_update<__nv_bfloat16, X>(__nv_bfloat16*, int64_t, int64_t, int64_t,    \
                                                                     int64_t, const X*, int64_t, int64_t,          \
                                                                     const float*, bool, float, cudaStream_t);     \
  template cudaError_t launch_apollo_weight_update<double, X>(double*, int64_t, int64_t, int64_t, int64_t,         \
                                                              const X*, int64_t, int64_t, const double*, bool,     \
                                                              double, cudaStream_t);
LRO_APOLLO_INPUT_TYPES(float)
LRO_APOLLO_INPUT_TYPES(double)
LRO_APOLLO_INPUT_TYPES(__half)
LRO_APOLLO_INPUT_TYPES(__nv_bfloat16)
#undef LRO_APOLLO_INPUT_TYPES

template cudaError_t launch_apollo_moments<float>(const float*, float*, float*, int64_t, int64_t, int64_t, int64_t,
                                                  const ApolloBetas<float>&, double*, double*, cudaStream_t);
template cudaError_t launch_apollo_moments<double>(const double*, double*, double*, int64_t, int64_t, int64_t,
                                                   int64_t, const ApolloBetas<double>&, double*, double*,
                                                   cudaStream_t);
template cudaError_t launch_apollo_scales<float, float>(const double*, const double*, const double*, int64_t,
                                                        const ApolloScaling&, float*, float*, cudaStream_t);
template cudaError_t launch_apollo_scales<double, float>(const double*, const double*, const double*, int64_t,
                                                         const ApolloScaling&, float*, double*, cudaStream_t);
template cudaError_t launch_apollo_scales<double, double>(const double*, const double*, const double*, int64_t,
                                                          const ApolloScaling&, double*, double*, cudaStream_t);
#endif  // !__CUDACC_RTC__

}  // namespace lro
