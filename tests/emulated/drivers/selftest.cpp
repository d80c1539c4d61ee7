// Test-only CUDA emulation (tests/emulated): small kernels that test the emulation itself (test_emulated_runtime.py):
// the built-in variables, __shared__ and __syncthreads, the warp exchange, the launch checks, the 16-bit
// conversions, and that broken kernels fail clearly (deadlocks, endless loops, sanitizer reports).
//   selftest_ids        block (bx, by, bz), grid (gx, gy, gz) -> ids [threads, 6]: threadIdx and blockIdx of
//                       every thread, stored at its global position (block-major); and reversed [threads]:
//                       each block's linear thread numbers reversed through shared memory
//   selftest_shuffle    values of one 256-thread block, x = 1000 warp + lane: out [256, 5] the
//                       __shfl_xor_sync(x, 1 << k) for k < 5, and max_out [256] a butterfly max of x
//   selftest_launch     a launch with the given block and grid sizes: prints its cudaGetLastError status
//   selftest_convert    float32 bits -> half, bfloat16 bits (n each); half and bfloat16 bits -> float32
//   selftest_broken     a kernel with the defect `defect` (see broken_kernel): meant to fail
#include <cstring>
#include <vector>

#include "driver.h"

namespace lro_emu {
namespace driver {
namespace {

constexpr int kReverseThreads = 1024;  // the largest block: the shared array fits every thread

__global__ void ids_kernel(uint32_t* ids, int32_t* reversed) {
  __shared__ int32_t slot[kReverseThreads];
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const uint32_t mine[6] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z};
  for (int k = 0; k < 6; ++k) ids[(b * threads + t) * 6 + k] = mine[k];
  // Threads run in order until a barrier: without a working barrier, thread t would read slot[threads - 1 - t]
  // before its owner wrote it (or the previous block's value).
  slot[t] = static_cast<int32_t>(b * threads + t);
  __syncthreads();
  reversed[b * threads + t] = slot[threads - 1 - t];
  __syncthreads();  // the block is done with slot before the next block (in CUDA: before the block exits)
}

void selftest_ids(const Args& a) {
  const dim3 block(static_cast<unsigned>(a.integer("bx")), static_cast<unsigned>(a.integer("by")),
                   static_cast<unsigned>(a.integer("bz")));
  const dim3 grid(static_cast<unsigned>(a.integer("gx")), static_cast<unsigned>(a.integer("gy")),
                  static_cast<unsigned>(a.integer("gz")));
  const int64_t threads = int64_t{block.x} * block.y * block.z * grid.x * grid.y * grid.z;
  DeviceMatrix<uint32_t> ids(threads, 6);
  DeviceMatrix<int32_t> reversed = device_vector<int32_t>(threads);
  LRO_LAUNCH(grid, block, 0, nullptr, ids_kernel)(ids.data(), reversed.data());
  report_status(cudaGetLastError());
  ids.store(a.text("ids"), "ids");
  reversed.store(a.text("reversed"), "reversed");
}

__global__ void shuffle_kernel(float* out, float* max_out) {
  const float x = static_cast<float>(1000 * (threadIdx.x / 32) + threadIdx.x % 32);
  for (int k = 0; k < 5; ++k) out[threadIdx.x * 5 + k] = __shfl_xor_sync(0xffffffffu, x, 1 << k);
  float m = x;
  for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
  max_out[threadIdx.x] = m;
}

void selftest_shuffle(const Args& a) {
  DeviceMatrix<float> out(256, 5);
  DeviceMatrix<float> max_out = device_vector<float>(256);
  LRO_LAUNCH(1, 256, 0, nullptr, shuffle_kernel)(out.data(), max_out.data());
  report_status(cudaGetLastError());
  out.store(a.text("out"), "out");
  max_out.store(a.text("max_out"), "max_out");
}

__global__ void count_kernel(int* count) {
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) ++*count;  // one per block
}

void selftest_launch(const Args& a) {
  const dim3 block(static_cast<unsigned>(a.integer("bx")), static_cast<unsigned>(a.integer("by")),
                   static_cast<unsigned>(a.integer("bz")));
  const dim3 grid(static_cast<unsigned>(a.integer("gx")), static_cast<unsigned>(a.integer("gy")),
                  static_cast<unsigned>(a.integer("gz")));
  DeviceMatrix<int> count = device_vector<int>(1);
  std::memset(count.data(), 0, sizeof(int));
  LRO_LAUNCH(grid, block, 0, nullptr, count_kernel)(count.data());
  report_status(cudaGetLastError());
  count.store(a.text("count"), "count");
}

void selftest_convert(const Args& a) {
  const int64_t n = a.integer("n");
  std::vector<float> f(static_cast<std::size_t>(n));
  std::vector<uint16_t> h(f.size()), b(f.size()), h_in(f.size()), b_in(f.size());
  std::vector<float> from_h(f.size()), from_b(f.size());
  read_bytes(a.text("floats"), f.data(), f.size() * sizeof(float));
  read_bytes(a.text("halves"), h_in.data(), h_in.size() * sizeof(uint16_t));
  read_bytes(a.text("bfloat16s"), b_in.data(), b_in.size() * sizeof(uint16_t));
  for (std::size_t i = 0; i < f.size(); ++i) {
    h[i] = __float2half_rn(f[i]).bits;
    b[i] = __float2bfloat16_rn(f[i]).bits;
    from_h[i] = __half2float(__half{h_in[i]});
    from_b[i] = __bfloat162float(__nv_bfloat16{b_in[i]});
  }
  write_bytes(a.text("to_half"), h.data(), h.size() * sizeof(uint16_t));
  write_bytes(a.text("to_bfloat16"), b.data(), b.size() * sizeof(uint16_t));
  write_bytes(a.text("from_half"), from_h.data(), from_h.size() * sizeof(float));
  write_bytes(a.text("from_bfloat16"), from_b.data(), from_b.size() * sizeof(float));
}

// Each defect is a bug a kernel of kernels/*.cu could have; the emulation must turn each into a clear failure.
enum Defect : int {
  kEarlyReturn = 0,       // thread 5 returns before __syncthreads()
  kDivergentBarrier = 1,  // odd threads wait at another __syncthreads() than even ones
  kLaneExits = 2,         // lane 3 returns before a __shfl_xor_sync()
  kEndlessLoop = 3,       // thread 0 spins on a flag nobody sets
  kGlobalOverflow = 4,    // the last thread writes one element past the output
  kSharedOverflow = 5,    // the last thread writes one element past a __shared__ array
  kSignedOverflow = 6,    // int overflow
};

__global__ void broken_kernel(int defect, int* out, int n) {
  __shared__ int tile[256];
  const int t = static_cast<int>(threadIdx.x);
  switch (defect) {
    case kEarlyReturn:
      if (t == 5) return;
      __syncthreads();
      break;
    case kDivergentBarrier:
      if (t % 2) {
        __syncthreads();
      } else {
        __syncthreads();
      }
      break;
    case kLaneExits:
      if (t == 3) return;
      out[t % n] = __shfl_xor_sync(0xffffffffu, t, 1);
      break;
    case kEndlessLoop:
      while (t == 0 && *static_cast<volatile int*>(out) == 0) {
      }
      break;
    case kGlobalOverflow:
      if (t == 255) out[n] = t;
      break;
    case kSharedOverflow:  // with n = 256
      tile[t] = t;
      if (t == 255) tile[n] = t;
      out[t % n] = tile[t];
      break;
    case kSignedOverflow:  // with n < 256, thread n overflows
      out[t % n] = (2147483647 - n + 1) + t;
      break;
  }
}

void selftest_broken(const Args& a) {
  const int n = static_cast<int>(a.integer("n"));
  DeviceMatrix<int> out = device_vector<int>(n);
  std::memset(out.data(), 0, sizeof(int) * n);
  LRO_LAUNCH(1, 256, 0, nullptr, broken_kernel)(static_cast<int>(a.integer("defect")), out.data(), n);
  report_status(cudaGetLastError());
}

const bool registered = register_command("selftest_ids", selftest_ids) &&
                        register_command("selftest_shuffle", selftest_shuffle) &&
                        register_command("selftest_launch", selftest_launch) &&
                        register_command("selftest_convert", selftest_convert) &&
                        register_command("selftest_broken", selftest_broken);

}  // namespace
}  // namespace driver
}  // namespace lro_emu
