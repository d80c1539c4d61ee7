// Launching the kernels of kernels/*.cuh from the CUDA bindings: every launch runs on the current stream of
// its tensor's device and its cudaError_t is checked once, with one message format.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <string>

namespace lowrank_ops {
namespace cuda {

// The current stream of t's device (c10/cuda/CUDAStream.h, the function ATen re-exports as
// at::cuda::getCurrentCUDAStream; it needs no cuBLAS/cuSPARSE headers).
inline cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.get_device()).stream();
}

// Raises "lowrank_ops.<op>: CUDA kernel launch failed for <what>: <CUDA's error> <hint>" unless err is
// cudaSuccess. `limits`: what cudaErrorInvalidValue means for this launcher (the ranges it accepts), or null.
inline void check_launch(cudaError_t err, const char* op, const std::string& what, const char* limits = nullptr) {
  TORCH_CHECK(err == cudaSuccess, "lowrank_ops.", op, ": CUDA kernel launch failed for ", what, ": ",
              cudaGetErrorString(err), err == cudaErrorInvalidValue && limits != nullptr ? limits : "");
}

}  // namespace cuda
}  // namespace lowrank_ops
