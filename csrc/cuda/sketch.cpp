// CUDA implementations of the sketch family (spec v1, DESIGN.md §3): tensors -> pointers -> the launchers
// of kernels/sketch.cuh, on the current stream of the tensor's device. Mirrors csrc/cpu/sketch.cpp: the
// same argument checks (csrc/sketch_args.h), the same compute types (float64 stays float64, the rest
// computes in float32), results cast to out_dtype (default: the input dtype). The projections never
// materialize P: the fused kernel generates it tile by tile in shared memory. The stream comes from
// c10/cuda/CUDAStream.h (the function ATen re-exports as at::cuda::getCurrentCUDAStream), which needs
// no cuBLAS/cuSPARSE headers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>

#include "../sketch_args.h"
#include "../../kernels/sketch.cuh"

namespace lowrank_ops {
namespace {

// The launchers answer cudaErrorInvalidValue for sizes outside the kernels' limits (kernels/sketch.cuh).
void check_launch(cudaError_t err, const char* op, const std::string& what) {
  TORCH_CHECK(err == cudaSuccess, "lowrank_ops.", op, ": CUDA kernel launch failed for ", what, ": ",
              cudaGetErrorString(err),
              err == cudaErrorInvalidValue
                  ? " (expected rank <= 2^32, dim <= 2^34, at most 2^31 - 1 output tiles of 64 x 64)"
                  : "");
}

template <typename In>
lro::StridedMatrix<In> strided(const at::Tensor& t) {
  return {reinterpret_cast<const In*>(t.const_data_ptr()), t.size(0), t.size(1), t.stride(0), t.stride(1)};
}

// out (contiguous, compute dtype) = the `product` of P and x; x of any float dtype and strides.
void sketch_gemm(lro::SketchProduct product, const lro::SketchSpec& spec, const at::Tensor& x,
                 const at::Tensor& out, const char* op) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  cudaError_t err = cudaSuccess;
  switch (x.scalar_type()) {
    case at::kFloat:
      err = lro::launch_sketch_gemm(product, spec, strided<float>(x), out.mutable_data_ptr<float>(), stream);
      break;
    case at::kDouble:
      err = lro::launch_sketch_gemm(product, spec, strided<double>(x), out.mutable_data_ptr<double>(),
                                    stream);
      break;
    case at::kHalf:
      err = lro::launch_sketch_gemm(product, spec, strided<__half>(x), out.mutable_data_ptr<float>(), stream);
      break;
    case at::kBFloat16:
      err = lro::launch_sketch_gemm(product, spec, strided<__nv_bfloat16>(x), out.mutable_data_ptr<float>(),
                                    stream);
      break;
    default:
      TORCH_CHECK(false, "lowrank_ops.", op, ": input must be float32, float64, float16 or bfloat16, got ",
                  x.scalar_type());
  }
  check_launch(err, op,
               "input of shape " + shape_str(x) + ", rank " + std::to_string(spec.rank) + ", dim " +
                   std::to_string(spec.dim));
}

at::Tensor philox4x32_cuda(const at::Tensor& counters, int64_t seed, int64_t rounds) {
  check_philox_args(counters, rounds);
  const c10::cuda::CUDAGuard guard(counters.device());
  const at::Tensor c = counters.contiguous();
  at::Tensor out = at::empty_like(c);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(c.get_device()).stream();
  check_launch(lro::launch_philox4x32(c.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>(),
                                      c.numel() / 4, static_cast<uint64_t>(seed), static_cast<int>(rounds),
                                      stream),
               "philox4x32", "counters of shape " + shape_str(counters));
  return out;
}

void sketch_fill_cuda(const at::Tensor& out, int64_t seed, c10::string_view kind) {
  check_fill_args(out);
  const auto k = static_cast<lro::SketchKind>(parse_kind("sketch_fill_", kind));
  const c10::cuda::CUDAGuard guard(out.device());
  const at::ScalarType compute = compute_dtype(out.scalar_type());
  const int64_t rank = out.size(0), d = out.size(1);
  at::Tensor full = (compute == out.scalar_type() && out.is_contiguous())
                        ? out
                        : at::empty({rank, d}, out.options().dtype(compute));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(out.get_device()).stream();
  const uint64_t key = static_cast<uint64_t>(seed);
  const cudaError_t err =
      compute == at::kDouble
          ? lro::launch_sketch_fill(full.mutable_data_ptr<double>(), rank, d, d, k, key, stream)
          : lro::launch_sketch_fill(full.mutable_data_ptr<float>(), rank, d, d, k, key, stream);
  check_launch(err, "sketch_fill_", "out of shape " + shape_str(out));
  if (!full.is_same(out)) out.copy_(full);
}

at::Tensor sketch_project_cuda(const at::Tensor& G, int64_t seed, int64_t rank, c10::string_view kind,
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

at::Tensor sketch_unproject_cuda(const at::Tensor& R, int64_t seed, int64_t dim, c10::string_view kind,
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

}  // namespace

TORCH_LIBRARY_IMPL(lowrank_ops, CUDA, m) {
  m.impl("philox4x32", &philox4x32_cuda);
  m.impl("sketch_fill_", &sketch_fill_cuda);
  m.impl("sketch_project", &sketch_project_cuda);
  m.impl("sketch_unproject", &sketch_unproject_cuda);
}

}  // namespace lowrank_ops
