// Test-only CUDA emulation (tests/emulated): the part of CUDA that kernels/*.cu use, for a plain C++
// compiler, so that every __global__ kernel runs on the CPU with CUDA's execution semantics under
// AddressSanitizer and UndefinedBehaviorSanitizer. Force-included (g++ -include lro_emu.h) ahead of each
// kernels/*.cu, which is compiled as C++; the stand-ins cuda_runtime.h, cuda_fp16.h and cuda_bf16.h in this
// directory include it too.
//
// Execution model (runtime/scheduler.cpp): a launch runs its blocks one after another on the calling OS
// thread; each CUDA thread of a block is a fiber with its own stack, run until it reaches a barrier or
// returns.
//   __shared__           a function-local static: one copy per kernel instance, used by the block in flight
//                        (only one block is ever in flight). As a static array it gets AddressSanitizer
//                        redzones, which thread_local storage would not. It keeps its contents from one
//                        block to the next (on a GPU such leftovers are garbage too).
//   __syncthreads()      a barrier of the block's fibers; every thread of the block must reach the same
//                        __syncthreads() call: a thread that returned before it, or threads waiting at
//                        different ones, is a fatal "deadlock" error naming the threads and source lines.
//   __shfl_xor_sync()    lanes of a warp exchange through a per-warp buffer between two warp barriers; the
//                        mask must name every lane of the warp (all the kernels here use 0xffffffff).
//   threadIdx, ...       read-only views of the scheduler's values for the running fiber.
//   __CUDA_ARCH__        defined, so the shared headers (kernels/philox.h) compile their device branches.
// Arithmetic is the host's IEEE arithmetic without contraction (-ffp-contract=off): division and sqrtf are
// correctly rounded, as CUDA's defaults (-prec-div=true, -prec-sqrt=true) make them; logf/sinf/cosf are
// glibc's, which differ from CUDA's libdevice by an ulp or two (the tests allow what spec v1 allows), and
// nvcc may contract a * b + c into an FMA where this build does not.
#pragma once
#include <cmath>  // cuda_runtime.h makes the math functions (fmaxf, sqrtf, ...) available too
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#include "lro_emu_fp16.h"

#define __CUDA_ARCH__ 800
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

// ---- Runtime API (the subset the launchers use) ---------------------------------------------------------

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};

typedef struct CUstream_st* cudaStream_t;

// The last launch error, reset by the call (as CUDA's).
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);

// ---- Built-in variables ---------------------------------------------------------------------------------

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

extern const uint3& threadIdx;
extern const uint3& blockIdx;
extern const dim3& blockDim;
extern const dim3& gridDim;

// ---- Device intrinsics ----------------------------------------------------------------------------------

// The call site (file, line) identifies the barrier: CUDA requires every thread of the block to reach the
// same one. __builtin_FILE / __builtin_LINE as default arguments take the caller's position.
void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE());

inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}

namespace lro_emu {

constexpr int kWarpSize = 32;

// *out = the value that lane (this lane ^ lane_mask) put in `in` (`size` bytes), for the warp of the running
// fiber; every lane of the warp, named in `mask`, must call it at the same (file, line).
void warp_xor_exchange(unsigned mask, const void* in, void* out, std::size_t size, int lane_mask, int width,
                       const char* file, int line);

}  // namespace lro_emu

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = lro_emu::kWarpSize,
                  const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffles move 4- or 8-byte values");
  T out;
  lro_emu::warp_xor_exchange(mask, &var, &out, sizeof(T), lane_mask, width, file, line);
  return out;
}

// ---- Launches -------------------------------------------------------------------------------------------

namespace lro_emu {

struct LaunchConfig {
  dim3 grid;
  dim3 block;
  std::size_t shared_bytes;  // dynamic shared memory (unsupported: must be 0)
  const char* kernel;        // the kernel instance, for messages and the launch log
};

// Validates the configuration as CUDA does (cudaErrorInvalidConfiguration, reported by cudaGetLastError),
// logs the launch, then runs thread_body(context) once per CUDA thread of every block.
void run_grid(const LaunchConfig& config, void (*thread_body)(const void*), const void* context);

// Ends the process with an error naming the running kernel when it has not finished after `seconds`:
// a kernel that never ends fails instead of hanging the test.
void set_watchdog(unsigned seconds);

// The <name> in the __PRETTY_FUNCTION__ "... [with auto Kernel = <name>]" of kernel_name<Kernel>.
const char* name_in_signature(const char* pretty_function);

// The kernel instance's name, e.g. "lro::{anonymous}::dct_rows_kernel<float, __half>".
template <auto Kernel>
const char* kernel_name() {
  static const char* const name = name_in_signature(__PRETTY_FUNCTION__);
  return name;
}

template <typename F>
struct KernelParams;
template <typename... P>
struct KernelParams<void (*)(P...)> {
  using Tuple = std::tuple<std::decay_t<P>...>;
};

// LRO_LAUNCH(grid, block, shared, stream, kernel)(args...): the arguments are converted to the kernel's
// parameter types once per launch, and each thread calls the kernel with its own copies (as each CUDA
// thread sees its own parameters).
template <auto Kernel>
class Launch {
 public:
  Launch(dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t /*stream: launches run in order*/)
      : config_{grid, block, shared_bytes, kernel_name<Kernel>()} {}

  template <typename... A>
  void operator()(A&&... args) const {
    using Params = typename KernelParams<decltype(Kernel)>::Tuple;
    const Params params(std::forward<A>(args)...);
    run_grid(config_, [](const void* p) { std::apply(Kernel, *static_cast<const Params*>(p)); }, &params);
  }

 private:
  LaunchConfig config_;
};

}  // namespace lro_emu

#define LRO_LAUNCH(grid, block, shared_bytes, stream, ...) \
  ::lro_emu::Launch<&__VA_ARGS__>(grid, block, shared_bytes, stream)
