// CUDA kernels of the sketch family (spec v1, docs/DESIGN.md §3; declared in csrc/lowrank_ops.h): tensors ->
// pointers -> the launchers of kernels/sketch.cuh, on the current stream of the tensor's device. Mirrors
// csrc/cpu/sketch.cpp: the same argument checks (csrc/sketch_args.h), the same compute types (float64 stays
// float64, the rest computes in float32), results cast to out_dtype (default: the input dtype). The
// projections never materialize P: the fused kernel generates it tile by tile in shared memory.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>

#include "../../kernels/sketch.cuh"
#include "../lowrank_ops.h"
#include "../sketch_args.h"
#include "dtype_dispatch.h"
#include "launch.h"

namespace lowrank_ops {
namespace cuda {
namespace {

// What cudaErrorInvalidValue means for the sketch launchers (kernels/sketch.cuh).
constexpr char kSketchLimits[] = " (expected rank <= 2^32, dim <= 2^34, at most 2^31 - 1 output tiles of 64 x 64)";

// out (contiguous, compute dtype) = the `product` of P and x; x of any float dtype and strides.
void sketch_gemm(lro::SketchProduct product, const lro::SketchSpec& spec, const at::Tensor& x,
                 const at::Tensor& out, const char* op) {
  const cudaError_t err = dispatch_float(x.scalar_type(), op, "input", [&](auto tag) {
    using In = decltype(tag);
    using Acc = std::conditional_t<std::is_same_v<In, double>, double, float>;
    const lro::StridedMatrix<In> m{const_data_as<In>(x), x.size(0), x.size(1), x.stride(0), x.stride(1)};
    return lro::launch_sketch_gemm(product, spec, m, out.mutable_data_ptr<Acc>(), stream_of(x));
  });
  check_launch(err, op,
               "input of shape " + shape_str(x) + ", rank " + std::to_string(spec.rank) + ", dim " +
                   std::to_string(spec.dim),
               kSketchLimits);
}

}  // namespace

at::Tensor philox4x32(const at::Tensor& counters, int64_t seed, int64_t rounds) {
  check_philox_args(counters, rounds);
  const c10::cuda::CUDAGuard guard(counters.device());
  const at::Tensor c = counters.contiguous();
  at::Tensor out = at::empty_like(c);
  check_launch(lro::launch_philox4x32(c.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>(), c.numel() / 4,
                                      static_cast<uint64_t>(seed), static_cast<int>(rounds), stream_of(c)),
               "philox4x32", "counters of shape " + shape_str(counters));
  return out;
}

void sketch_fill_(const at::Tensor& out, int64_t seed, c10::string_view kind) {
  check_fill_args(out);
  const auto k = static_cast<lro::SketchKind>(parse_kind("sketch_fill_", kind));
  const c10::cuda::CUDAGuard guard(out.device());
  const at::ScalarType compute = compute_dtype(out.scalar_type());
  const int64_t rank = out.size(0), d = out.size(1);
  at::Tensor full = (compute == out.scalar_type() && out.is_contiguous())
                        ? out
                        : at::empty({rank, d}, out.options().dtype(compute));
  const uint64_t key = static_cast<uint64_t>(seed);
  const cudaError_t err =
      compute == at::kDouble
          ? lro::launch_sketch_fill(full.mutable_data_ptr<double>(), rank, d, d, k, key, stream_of(out))
          : lro::launch_sketch_fill(full.mutable_data_ptr<float>(), rank, d, d, k, key, stream_of(out));
  check_launch(err, "sketch_fill_", "out of shape " + shape_str(out), kSketchLimits);
  if (!full.is_same(out)) out.copy_(full);
}

at::Tensor sketch_project(const at::Tensor& G, int64_t seed, int64_t rank, c10::string_view kind,
                          c10::string_view side, std::optional<at::ScalarType> out_dtype) {
  const ProjectionArgs a = check_project_args("sketch_project", G, rank, kind, side);
  const c10::cuda::CUDAGuard guard(G.device());
  const int64_t other = a.left ? G.size(1) : G.size(0);
  const at::Tensor out = a.left ? at::empty({rank, other}, G.options().dtype(compute_dtype(G.scalar_type())))
                                : at::empty({other, rank}, G.options().dtype(compute_dtype(G.scalar_type())));
  const lro::SketchSpec spec{static_cast<lro::SketchKind>(a.kind), static_cast<uint64_t>(seed), rank, a.dim};
  sketch_gemm(a.left ? lro::SketchProduct::kProjectLeft : lro::SketchProduct::kProjectRight, spec, G, out,
              "sketch_project");
  return out.to(out_dtype.value_or(G.scalar_type()));
}

at::Tensor sketch_unproject(const at::Tensor& R, int64_t seed, int64_t dim, c10::string_view kind,
                            c10::string_view side, std::optional<at::ScalarType> out_dtype) {
  const ProjectionArgs a = check_unproject_args("sketch_unproject", R, dim, kind, side);
  const c10::cuda::CUDAGuard guard(R.device());
  const int64_t other = a.left ? R.size(1) : R.size(0);
  const at::Tensor out = a.left ? at::empty({dim, other}, R.options().dtype(compute_dtype(R.scalar_type())))
                                : at::empty({other, dim}, R.options().dtype(compute_dtype(R.scalar_type())));
  const lro::SketchSpec spec{static_cast<lro::SketchKind>(a.kind), static_cast<uint64_t>(seed), a.rank, dim};
  sketch_gemm(a.left ? lro::SketchProduct::kUnprojectLeft : lro::SketchProduct::kUnprojectRight, spec, R, out,
              "sketch_unproject");
  return out.to(out_dtype.value_or(R.scalar_type()));
}

}  // namespace cuda
}  // namespace lowrank_ops
