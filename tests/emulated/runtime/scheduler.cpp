// Test-only CUDA emulation (tests/emulated): the execution of a launch (the model is described in
// include/lro_emu.h).
//
// Blocks run one after another on the calling OS thread. Within a block every CUDA thread is a fiber: a
// stack of its own and a saved stack pointer. The scheduler resumes each runnable fiber in thread order
// until it blocks at a barrier (or returns), then resolves the barriers:
//   - a warp whose lanes all wait at the same __shfl_xor_sync is released;
//   - a block whose threads all wait at the same __syncthreads is released;
//   - when no fiber can run and neither applies, the kernel has deadlocked (a thread returned before a
//     barrier, or threads wait at different barriers): a fatal error that names the threads and lines.
// Switching is a few instructions of x86-64 assembly (callee-saved registers, MXCSR and the x87 control
// word, then the stack pointer), annotated for AddressSanitizer with __sanitizer_start_switch_fiber /
// __sanitizer_finish_switch_fiber so that it tracks which stack is live. (ucontext's swapcontext would
// do a signal-mask system call per switch and trips ASan's swapcontext interceptor, which clears the
// shadow of the whole target stack.) Each fiber stack is 256 KiB with a PROT_NONE guard page below it,
// mapped once and reused by later blocks and launches.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "lro_emu.h"

#if !defined(__x86_64__)
#error "the fiber switch of the CUDA emulation is written for x86-64 hosts"
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

extern "C" void lro_emu_switch(void** save_sp, void* next_sp);

// lro_emu_switch(save_sp, next_sp): push the System V callee-saved state, store the stack pointer in
// *save_sp, load next_sp and pop the state saved there. The state block, from low to high addresses:
// MXCSR (4 bytes), x87 control word (2 + 2 padding), r15, r14, r13, r12, rbx, rbp, return address.
asm(R"(
  .pushsection .text
  .globl lro_emu_switch
  .type lro_emu_switch, @function
lro_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size lro_emu_switch, .-lro_emu_switch
  .popsection
)");

namespace lro_emu {
namespace {

constexpr std::size_t kStackBytes = 256 * 1024;
constexpr std::size_t kGuardBytes = 4096;
constexpr int kExitKernelError = 86;  // the driver's exit status for an emulation error (tests look for it)

uint3 g_thread_idx, g_block_idx;
dim3 g_block_dim, g_grid_dim;
cudaError_t g_last_error = cudaSuccess;

enum class State { kReady, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
  void* sp = nullptr;
  State state = State::kReady;
  const char* file = nullptr;  // where it waits
  int line = 0;
  unsigned mask = 0;  // of the shuffle it waits at
  uint3 tid{};
  unsigned linear = 0;  // x + y Dx + z Dx Dy: the CUDA thread number (warp = linear / 32)
  char* stack_lo = nullptr;
  void* fake_stack = nullptr;  // ASan's fake stack of the suspended fiber
};

// Per-warp exchange buffer of __shfl_xor_sync: one 8-byte slot per lane.
struct WarpSlots {
  unsigned char slot[kWarpSize][8];
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<WarpSlots> warps;
  void (*body)(const void*) = nullptr;
  const void* context = nullptr;
  const char* kernel = "";
};

Block g_block;
Fiber* g_current = nullptr;
void* g_scheduler_sp = nullptr;
const void* g_scheduler_stack_bottom = nullptr;  // the scheduler's stack, as ASan reports it
std::size_t g_scheduler_stack_size = 0;
char* g_stacks = nullptr;  // the mapped fiber stacks
std::size_t g_stack_count = 0;
unsigned g_timeout_seconds = 0;
char g_watchdog_message[512] = "lro_emu: error: timed out\n";  // prepared for the signal handler

[[noreturn]] __attribute__((format(printf, 1, 2))) void fail(const char* format, ...) {
  std::fprintf(stderr, "lro_emu: error in %s, block (%u, %u, %u) of grid (%u, %u, %u): ", g_block.kernel,
               g_block_idx.x, g_block_idx.y, g_block_idx.z, g_grid_dim.x, g_grid_dim.y, g_grid_dim.z);
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fputc('\n', stderr);
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(kExitKernelError);
}

void start_switch(void** fake_stack_save, const void* bottom, std::size_t size) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
  (void)fake_stack_save, (void)bottom, (void)size;
#endif
}

void finish_switch(void* fake_stack_save, const void** bottom_old, std::size_t* size_old) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack_save, bottom_old, size_old);
#else
  (void)fake_stack_save, (void)bottom_old, (void)size_old;
#endif
}

// From the running fiber back to the scheduler; returns when the scheduler resumes it.
void suspend(Fiber& f) {
  start_switch(f.state == State::kDone ? nullptr : &f.fake_stack, g_scheduler_stack_bottom,
               g_scheduler_stack_size);
  lro_emu_switch(&f.sp, g_scheduler_sp);
  finish_switch(f.fake_stack, &g_scheduler_stack_bottom, &g_scheduler_stack_size);
}

[[noreturn]] void fiber_entry() {
  finish_switch(nullptr, &g_scheduler_stack_bottom, &g_scheduler_stack_size);
  Fiber& f = *g_current;
  g_block.body(g_block.context);
  f.state = State::kDone;
  suspend(f);
  std::abort();  // a finished fiber is never resumed
}

void map_stacks(std::size_t count) {
  if (count <= g_stack_count) return;
  if (g_stacks != nullptr) munmap(g_stacks, g_stack_count * (kStackBytes + kGuardBytes));
  const std::size_t bytes = count * (kStackBytes + kGuardBytes);
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) fail("cannot map %zu fiber stacks", count);
  g_stacks = static_cast<char*>(p);
  g_stack_count = count;
  for (std::size_t i = 0; i < count; ++i) {
    mprotect(g_stacks + i * (kStackBytes + kGuardBytes), kGuardBytes, PROT_NONE);
  }
}

// A fresh fiber whose first resumption enters fiber_entry (see lro_emu_switch for the state block).
void init_fiber(Fiber& f, char* stack_lo) {
  f.stack_lo = stack_lo;
  f.state = State::kReady;
  f.fake_stack = nullptr;
  auto* top = reinterpret_cast<uint64_t*>(stack_lo + kStackBytes);  // 16-byte aligned
  top[-1] = 0;                                                       // fiber_entry's (unused) return address
  top[-2] = reinterpret_cast<uint64_t>(&fiber_entry);
  for (int r = 3; r <= 8; ++r) top[-r] = 0;  // rbp, rbx, r12-r15
  uint32_t control[2];
  asm volatile("stmxcsr %0" : "=m"(control[0]));
  asm volatile("fnstcw %0" : "=m"(control[1]));
  std::memcpy(&top[-9], control, sizeof control);
  f.sp = &top[-9];  // after the pops and the ret, rsp = top - 8: a function's entry alignment
}

void resume(Fiber& f) {
  g_current = &f;
  g_thread_idx = f.tid;
  void* fake_stack = nullptr;
  start_switch(&fake_stack, f.stack_lo, kStackBytes);
  lro_emu_switch(&g_scheduler_sp, f.sp);
  finish_switch(fake_stack, nullptr, nullptr);
  g_current = nullptr;
}

const char* state_name(State s) {
  switch (s) {
    case State::kReady: return "running";
    case State::kAtBlockBarrier: return "waiting at __syncthreads()";
    case State::kAtWarpBarrier: return "waiting at __shfl_xor_sync()";
    case State::kDone: return "returned";
  }
  return "?";
}

// "thread (x, y, z) <state> at file:line" for the message of a deadlock.
std::string describe(const Fiber& f) {
  char buf[512];
  if (f.state == State::kDone) {
    std::snprintf(buf, sizeof buf, "thread (%u, %u, %u) returned", f.tid.x, f.tid.y, f.tid.z);
  } else {
    std::snprintf(buf, sizeof buf, "thread (%u, %u, %u) is %s at %s:%d", f.tid.x, f.tid.y, f.tid.z,
                  state_name(f.state), f.file, f.line);
  }
  return buf;
}

// The first `limit` fibers with a property, described, and how many there are in all.
template <typename Pred>
std::string list_fibers(const std::vector<Fiber>& fibers, Pred pred, std::size_t limit = 4) {
  std::string out;
  std::size_t count = 0;
  for (const Fiber& f : fibers) {
    if (!pred(f)) continue;
    if (count++ < limit) out += (out.empty() ? "" : "; ") + describe(f);
  }
  if (count > limit) out += "; ... (" + std::to_string(count) + " threads in all)";
  return out;
}

bool same_site(const Fiber& a, const Fiber& b) { return a.line == b.line && std::strcmp(a.file, b.file) == 0; }

// Releases the warps whose lanes all wait at one shuffle; a warp with some lanes at a shuffle that cannot
// complete is a deadlock. Returns whether any fiber became ready.
bool release_warps() {
  bool released = false;
  const std::size_t n = g_block.fibers.size();
  for (std::size_t w0 = 0; w0 < n; w0 += kWarpSize) {
    const std::size_t w1 = w0 + kWarpSize < n ? w0 + kWarpSize : n;
    const Fiber* first = nullptr;
    bool all = true;
    for (std::size_t i = w0; i < w1; ++i) {
      const Fiber& f = g_block.fibers[i];
      if (f.state == State::kAtWarpBarrier) {
        if (first == nullptr) first = &f;
        if (!same_site(f, *first) || f.mask != first->mask) {
          fail("deadlock: lanes of warp %zu wait at different __shfl_xor_sync() calls: %s; %s", w0 / kWarpSize,
               describe(*first).c_str(), describe(f).c_str());
        }
      } else {
        all = false;
      }
    }
    if (first == nullptr) continue;
    if (!all) {
      const std::vector<Fiber> lanes(g_block.fibers.begin() + w0, g_block.fibers.begin() + w1);
      fail("deadlock: __shfl_xor_sync() at %s:%d is not reached by every lane of warp %zu: %s", first->file,
           first->line, w0 / kWarpSize,
           list_fibers(lanes, [](const Fiber& f) { return f.state != State::kAtWarpBarrier; }).c_str());
    }
    for (std::size_t i = w0; i < w1; ++i) g_block.fibers[i].state = State::kReady;
    released = true;
  }
  return released;
}

// Releases the block when every thread waits at one __syncthreads(); anything else is a deadlock.
void release_block() {
  const std::vector<Fiber>& fibers = g_block.fibers;
  const Fiber* first = nullptr;
  for (const Fiber& f : fibers) {
    if (f.state == State::kAtBlockBarrier) {
      first = &f;
      break;
    }
  }
  if (first == nullptr) fail("internal: no runnable thread and no barrier");  // release_warps covers the rest
  const auto elsewhere = [first](const Fiber& f) {
    return f.state != State::kAtBlockBarrier || !same_site(f, *first);
  };
  bool stuck = false;
  for (const Fiber& f : fibers) stuck = stuck || elsewhere(f);
  if (stuck) {
    fail("deadlock: __syncthreads() at %s:%d (%s) is not reached by every thread of the block: %s", first->file,
         first->line, describe(*first).c_str(), list_fibers(fibers, elsewhere).c_str());
  }
  for (Fiber& f : g_block.fibers) f.state = State::kReady;
}

void run_block() {
  std::vector<Fiber>& fibers = g_block.fibers;
  for (std::size_t i = 0; i < fibers.size(); ++i) {
    init_fiber(fibers[i], g_stacks + i * (kStackBytes + kGuardBytes) + kGuardBytes);
  }
  for (;;) {
    for (Fiber& f : fibers) {
      if (f.state == State::kReady) resume(f);
    }
    bool done = true;
    for (const Fiber& f : fibers) done = done && f.state == State::kDone;
    if (done) return;
    if (!release_warps()) release_block();
  }
}

// The running fiber waits at a barrier of kind `state` until the scheduler releases it.
void wait(State state, const char* file, int line, unsigned mask) {
  Fiber* f = g_current;
  if (f == nullptr) {
    std::fprintf(stderr, "lro_emu: error: %s:%d: a device barrier called outside a kernel\n", file, line);
    std::_Exit(kExitKernelError);
  }
  f->state = state;
  f->file = file;
  f->line = line;
  f->mask = mask;
  suspend(*f);
}

void on_watchdog(int) {
  const ssize_t ignored = write(STDERR_FILENO, g_watchdog_message, std::strlen(g_watchdog_message));
  (void)ignored;
  _exit(kExitKernelError);
}

bool valid_config(const LaunchConfig& c) {
  const uint64_t threads = uint64_t{c.block.x} * c.block.y * c.block.z;
  return c.block.x >= 1 && c.block.y >= 1 && c.block.z >= 1 && c.block.x <= 1024 && c.block.y <= 1024 &&
         c.block.z <= 64 && threads <= 1024 && c.grid.x >= 1 && c.grid.y >= 1 && c.grid.z >= 1 &&
         c.grid.x <= 2147483647u && c.grid.y <= 65535 && c.grid.z <= 65535;
}

}  // namespace

void warp_xor_exchange(unsigned mask, const void* in, void* out, std::size_t size, int lane_mask, int width,
                       const char* file, int line) {
  Fiber* f = g_current;
  if (f == nullptr) {
    std::fprintf(stderr, "lro_emu: error: %s:%d: __shfl_xor_sync called outside a kernel\n", file, line);
    std::_Exit(kExitKernelError);
  }
  const std::size_t warp = f->linear / kWarpSize, lane = f->linear % kWarpSize;
  const std::size_t lanes = std::min<std::size_t>(kWarpSize, g_block.fibers.size() - warp * kWarpSize);
  const unsigned full = lanes == kWarpSize ? 0xffffffffu : (1u << lanes) - 1u;
  if (mask != full || width != kWarpSize || lane_mask < 0 || lane_mask >= kWarpSize) {
    fail("%s:%d: __shfl_xor_sync(mask 0x%08x, lane_mask %d, width %d) in warp %zu of %zu lanes: the emulation "
         "supports the full warp (mask 0x%08x) and width %d only",
         file, line, mask, lane_mask, width, warp, lanes, full, kWarpSize);
  }
  WarpSlots& slots = g_block.warps[warp];
  std::memcpy(slots.slot[lane], in, size);
  wait(State::kAtWarpBarrier, file, line, mask);  // every lane has stored its value
  const std::size_t source = lane ^ static_cast<std::size_t>(lane_mask);
  std::memcpy(out, slots.slot[source < lanes ? source : lane], size);
  wait(State::kAtWarpBarrier, file, line, mask);  // every lane has read before the slots are reused
}

void run_grid(const LaunchConfig& config, void (*thread_body)(const void*), const void* context) {
  std::printf("launch\t%s\t%u,%u,%u\t%u,%u,%u\n", config.kernel, config.grid.x, config.grid.y, config.grid.z,
              config.block.x, config.block.y, config.block.z);
  std::snprintf(g_watchdog_message, sizeof g_watchdog_message,
                "lro_emu: error: timed out after %u s in %s (a kernel that never finishes: an endless loop, or "
                "a spin on memory that no other thread writes)\n",
                g_timeout_seconds, config.kernel);
  if (!valid_config(config)) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (config.shared_bytes != 0) {
    std::fprintf(stderr, "lro_emu: error: %s launched with %zu bytes of dynamic shared memory (unsupported)\n",
                 config.kernel, config.shared_bytes);
    std::_Exit(kExitKernelError);
  }
  const unsigned threads = config.block.x * config.block.y * config.block.z;
  map_stacks(threads);
  g_block.fibers.assign(threads, Fiber{});
  g_block.warps.assign((threads + kWarpSize - 1) / kWarpSize, WarpSlots{});
  for (unsigned z = 0, i = 0; z < config.block.z; ++z) {
    for (unsigned y = 0; y < config.block.y; ++y) {
      for (unsigned x = 0; x < config.block.x; ++x, ++i) {
        g_block.fibers[i].tid = uint3{x, y, z};
        g_block.fibers[i].linear = i;
      }
    }
  }
  g_block.body = thread_body;
  g_block.context = context;
  g_block.kernel = config.kernel;
  g_grid_dim = config.grid;
  g_block_dim = config.block;
  for (unsigned z = 0; z < config.grid.z; ++z) {
    for (unsigned y = 0; y < config.grid.y; ++y) {
      for (unsigned x = 0; x < config.grid.x; ++x) {
        g_block_idx = uint3{x, y, z};
        run_block();
      }
    }
  }
  g_block.kernel = "";
}

const char* name_in_signature(const char* pretty_function) {
  const char* begin = std::strstr(pretty_function, "Kernel = ");
  if (begin == nullptr) return pretty_function;
  begin += std::strlen("Kernel = ");
  std::size_t length = std::strlen(begin);
  if (length > 0 && begin[length - 1] == ']') --length;
  return strndup(begin, length);  // one per kernel instance, kept for the process's lifetime
}

void set_watchdog(unsigned seconds) {
  g_timeout_seconds = seconds;
  std::snprintf(g_watchdog_message, sizeof g_watchdog_message, "lro_emu: error: timed out after %u s\n", seconds);
  signal(SIGALRM, on_watchdog);
  alarm(seconds);
}

}  // namespace lro_emu

const uint3& threadIdx = lro_emu::g_thread_idx;
const uint3& blockIdx = lro_emu::g_block_idx;
const dim3& blockDim = lro_emu::g_block_dim;
const dim3& gridDim = lro_emu::g_grid_dim;

void __syncthreads(const char* file, int line) { lro_emu::wait(lro_emu::State::kAtBlockBarrier, file, line, 0); }

cudaError_t cudaGetLastError() {
  const cudaError_t e = lro_emu::g_last_error;
  lro_emu::g_last_error = cudaSuccess;
  return e;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  }
  return "unrecognized error code";
}
