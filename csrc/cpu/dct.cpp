// CPU kernels of the DCT family (docs/DESIGN.md §3; declared in csrc/lowrank_ops.h): basis rows from kernels/dct.h, scores by a GEMM on basis
// tiles generated into cache or by an FFT (csrc/dct_impl.h), and the deterministic top-k.
//
// Precision: the CPU computes in float64 for every input dtype and rounds the scores once, to float32
// (float64 for float64 G). So its float32 scores are the float64 reference's rounded to float32 (the
// float64 result is ~1e-15 relative from exact), and mathematically tied scores come out as equal
// floats whatever the summation order, which keeps dct_topk's tie rule meaningful.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "../../kernels/dct.h"
#include "../dct_args.h"
#include "../dct_impl.h"
#include "../lowrank_ops.h"
#include "dct_cpu.h"

namespace lowrank_ops {
namespace cpu {
namespace {

// FFT path: chunks of kFftChunkElems entries of G (csrc/cpu/dct_cpu.h) in at most kFftGroups groups (see
// scores_fft).
constexpr int64_t kFftGroups = 64;
// "auto" takes the GEMM path for d <= kGemmMaxDim and the FFT path above. Measured by bench/bench_dct.py
// --threads 1 (bench/results/dct_cpu_t1.json; 2-core Xeon with AVX-512, shared, load average ~8), median
// ms, GEMM / FFT, G with 4096 columns (left; the right-side rows are within 20%):
//   d =  16:  0.26 / 0.51     d =  32:  0.63 / 1.12     d =  48:  1.26 / 1.53     d =  64:  1.83 / 2.04
//   d =  96:  4.0 / 3.1       d = 128:  6.9 / 5.8       d = 256:  26 / 12         d = 1024:  402 / 52
//   G 4096 x 4096 (right):  7961 / 225                  G 4096 x 11008 (left):  23482 / 651
// The GEMM does 2 d^2 (other) flops, the FFT ~5 d log2(d) (other) plus fixed costs (plan, twiddles, the
// reordering pass): the GEMM wins up to d = 64, the FFT from d = 96 on, by 35x at d = 4096.
constexpr int64_t kGemmMaxDim = 64;

// Scores through the FFT (csrc/cpu/dct_cpu.h): the scores need only |X_k| summed over G's other dimension,
// so per k the sums of |Re Z_k| and |Im Z_k| (squares for l2) are accumulated, chunk by chunk of `chunk`
// columns (left) or rows (right) of G, and finally scaled by c_k. O(m n log d) work against the GEMM's
// O(m n d). float64 throughout; the reordering (with the cast to float64) and the twiddle-and-reduce step
// are single passes written here, the rfft is torch's (MKL or pocketfft).
at::Tensor scores_fft(const at::Tensor& G, const DctScoreArgs& a, int64_t chunk) {
  const int64_t d = a.dim, h = d / 2 + 1, other = a.other;
  const std::vector<int64_t> perm = dct_fft::makhoul_order(d);
  const dct_fft::Twiddles<double> tw(d);
  // Signal j of G (a column for left, a row for right) has entry t at G[t * s_t + j * s_j]. A chunk of
  // w signals is gathered, reordered and cast into v[j, i] = signal (j0 + j) at t = perm[i] (w x d), so
  // the rfft runs along contiguous rows on both sides. Chunks are split into a fixed number of groups
  // (it depends on the shape only); one thread runs a group's chunks in order into the group's own sums,
  // and the groups' sums are added in group order: the result does not depend on the number of threads,
  // and there is one parallel region per call (on a loaded machine, many short regions cost more than
  // the work).
  const int64_t s_t = G.stride(a.left ? 0 : 1), s_j = G.stride(a.left ? 1 : 0);
  const int64_t chunks = (other + chunk - 1) / chunk;
  const int64_t groups = std::min(chunks, kFftGroups);
  const int64_t per_group = groups > 0 ? (chunks + groups - 1) / groups : 0;
  std::vector<double> sums(static_cast<size_t>(groups * 2 * h), 0.0);  // [group][re, im][k]
  at::parallel_for(0, groups, 1, [&](int64_t g_begin, int64_t g_end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // worker threads lack the caller's dispatch TLS
    at::Tensor v_buf = at::empty({std::min(chunk, other) * d}, G.options().dtype(at::kDouble));
    for (int64_t g = g_begin; g < g_end; ++g) {
      double* sum_re = sums.data() + g * 2 * h;
      double* sum_im = sum_re + h;
      const int64_t end = std::min(other, (g + 1) * per_group * chunk);
      for (int64_t j0 = g * per_group * chunk; j0 < end; j0 += chunk) {
        const int64_t w = std::min(chunk, other - j0);
        const at::Tensor v = v_buf.narrow(0, 0, w * d).view({w, d});
        dct_fft::gather_reordered<double>(G, s_t, s_j, j0, w, perm, nullptr, v.data_ptr<double>(), 1, d);
        const at::Tensor z = at::view_as_real(at::fft_rfft(v, std::nullopt, 1));  // [w, h, 2]
        const double* zp = z.const_data_ptr<double>();
        const int64_t zj = z.stride(0), zk = z.stride(1);
        for (int64_t j = 0; j < w; ++j) {
          const double* zr = zp + j * zj;
          for (int64_t k = 0; k < h; ++k) {
            const double re = tw.re[k] * zr[k * zk] - tw.im[k] * zr[k * zk + 1];
            const double im = tw.re[k] * zr[k * zk + 1] + tw.im[k] * zr[k * zk];
            sum_re[k] += a.l2 ? re * re : std::abs(re);
            sum_im[k] += a.l2 ? im * im : std::abs(im);
          }
        }
      }
    }
  });
  std::vector<double> sum_re(h, 0.0), sum_im(h, 0.0);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t k = 0; k < h; ++k) {
      sum_re[k] += sums[g * 2 * h + k];
      sum_im[k] += sums[g * 2 * h + h + k];
    }
  // s_k = c_k * (sum over |X_k|): X_k from Re Z_k for k <= d/2, X_{d-k} from -Im Z_k for k <= (d-1)/2.
  at::Tensor s = at::empty({d}, at::TensorOptions().dtype(at::kDouble));
  double* sp = s.data_ptr<double>();
  for (int64_t k = 0; k < h; ++k) sp[k] = sum_re[k];
  for (int64_t k = 1; k <= (d - 1) / 2; ++k) sp[d - k] = sum_im[k];
  for (int64_t k = 0; k < d; ++k) sp[k] = lro::dct_row_scale<double>(k, d) * (a.l2 ? std::sqrt(sp[k]) : sp[k]);
  return s;
}

at::Tensor scores(const char* op, const at::Tensor& G, c10::string_view side, c10::string_view norm,
                      c10::string_view method) {
  const DctScoreArgs a = check_scores_args(op, G, side, norm, method);
  const at::ScalarType out = compute_dtype(G.scalar_type());
  const bool gemm = a.method == DctMethod::kGemm || (a.method == DctMethod::kAuto && a.dim <= kGemmMaxDim);
  at::Tensor s;
  if (gemm) {
    const int64_t kb = std::max<int64_t>(1, kGemmTileElems / a.dim);
    s = dct::scores_gemm(G.to(at::kDouble), a, kb, at::kDouble, at::kDouble,
                         [&](const at::Tensor& tile, int64_t k0) { fill_rows(tile, a.dim, k0, nullptr); });
  } else {
    s = scores_fft(G, a, std::max<int64_t>(1, kFftChunkElems / a.dim));
  }
  return s.to(out);
}

}  // namespace

at::Tensor dct_scores(const at::Tensor& G, c10::string_view side, c10::string_view norm, c10::string_view method) {
  return scores("dct_scores", G, side, norm, method);
}

at::Tensor dct_topk(const at::Tensor& G, int64_t rank, c10::string_view side, c10::string_view norm,
                    c10::string_view method) {
  check_topk_args(G, rank, side, norm, method);
  return dct::select_top(scores("dct_topk", G, side, norm, method), rank);
}

at::Tensor dct_basis(const at::Tensor& indices, int64_t dim, at::ScalarType dtype) {
  check_basis_args(indices, dim, dtype);
  const at::Tensor index = indices.to(at::kLong).contiguous();
  at::Tensor rows = at::empty({index.numel(), dim}, indices.options().dtype(compute_dtype(dtype)));
  fill_rows(rows, dim, 0, index.data_ptr<int64_t>());
  return rows.to(dtype);
}

}  // namespace cpu
}  // namespace lowrank_ops
