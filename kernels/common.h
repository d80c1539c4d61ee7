// Portability layer for the framework-agnostic kernels: the same header compiles with a plain C++
// compiler (host unit tests, the CPU backend), with nvcc, and with NVRTC (no standard headers there).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define LRO_HD __host__ __device__ __forceinline__
#else
#define LRO_HD inline
#endif

#if defined(__CUDACC_RTC__)
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef unsigned int uint32_t;
typedef int int32_t;
typedef unsigned long long uint64_t;
typedef long long int64_t;
#else
#include <cmath>
#include <cstdint>
#endif

// A kernel launch: LRO_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...) is
// kernel<<<grid, block, shared_bytes, stream>>>(args...). The kernel comes last, so that a template-id with
// commas needs no parentheses. The test-only CPU emulation (tests/emulated) defines LRO_LAUNCH before this
// header and runs the kernel on host threads instead.
#ifndef LRO_LAUNCH
#define LRO_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#endif
