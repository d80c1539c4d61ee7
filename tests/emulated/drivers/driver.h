// Test-only CUDA emulation (tests/emulated): what the per-family drivers share. A driver command reads its
// scalars as key=value arguments and its arrays from raw little-endian files (paths given as arguments),
// calls one launcher of kernels/*.cu on "device memory" (host allocations of exactly the array's extent,
// so that AddressSanitizer sees any access outside it), and writes the arrays it produced to raw files.
// See tests/emulated/harness.py for the Python side and why files and a separate process.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "lro_emu.h"

namespace lro_emu {
namespace driver {

[[noreturn]] __attribute__((format(printf, 1, 2))) void die(const char* format, ...);

// Reads exactly `bytes` bytes (the file must have that size); writes `bytes` bytes.
void read_bytes(const std::string& path, void* out, std::size_t bytes);
void write_bytes(const std::string& path, const void* data, std::size_t bytes);

// key=value command-line arguments; every argument must be read by the command (a misspelt key fails).
class Args {
 public:
  Args(int argc, char** argv);
  bool has(const std::string& key) const;
  std::string text(const std::string& key) const;
  int64_t integer(const std::string& key) const;
  uint64_t unsigned64(const std::string& key) const;
  double real(const std::string& key) const;  // decimal or C99 hex-float text (Python's float.hex())
  void check_all_used() const;

 private:
  std::map<std::string, std::string> values_;
  mutable std::set<std::string> used_;
};

// A rows x cols matrix at data[i * stride_row + j * stride_col] (strides >= 0) in one allocation of exactly
// its extent, (rows - 1) stride_row + (cols - 1) stride_col + 1 elements. Up to kPatternLimit bytes the
// whole allocation is first filled with 0xff bytes (NaN in every float format): a kernel that reads a gap
// between elements gets NaN, and one that writes a gap is reported by check_gaps_untouched. Larger
// allocations (strides that take offsets past 2^31 bytes) are left unfilled, so that only the pages the
// kernel touches are ever mapped, and are never freed: ASan would poison the shadow of the whole extent on
// free (an eighth of it written: seconds for a 4 GiB extent), and the process ends right after the launch
// (LeakSanitizer is off: it would scan the whole extent for pointers, and the drivers' leaks are not the
// kernels' bugs).
template <typename T>
class DeviceMatrix {
 public:
  static constexpr std::size_t kPatternLimit = std::size_t{64} << 20;

  DeviceMatrix(int64_t rows, int64_t cols, int64_t stride_row, int64_t stride_col)
      : rows_(rows), cols_(cols), stride_row_(stride_row), stride_col_(stride_col) {
    if (rows < 0 || cols < 0 || stride_row < 0 || stride_col < 0) die("negative matrix extent or stride");
    extent_ = rows == 0 || cols == 0 ? 0 : (rows - 1) * stride_row + (cols - 1) * stride_col + 1;
    const std::size_t bytes = static_cast<std::size_t>(extent_) * sizeof(T);
    data_.reset(static_cast<T*>(std::malloc(bytes > 0 ? bytes : 1)));
    if (!data_) die("cannot allocate %zu bytes", bytes);
    patterned_ = bytes <= kPatternLimit;
    if (patterned_) {
      std::memset(static_cast<void*>(data_.get()), 0xff, bytes);
    } else {
      data_.get_deleter().keep = true;
    }
  }
  DeviceMatrix(int64_t rows, int64_t cols) : DeviceMatrix(rows, cols, cols, 1) {}

  T* data() { return data_.get(); }
  int64_t numel() const { return rows_ * cols_; }

  // Elements from a file of numel() values, row-major.
  void load(const std::string& path) {
    const std::vector<T> values = read(path);
    for (int64_t i = 0; i < rows_; ++i)
      for (int64_t j = 0; j < cols_; ++j) data_.get()[offset(i, j)] = values[i * cols_ + j];
  }

  // Elements to a file, row-major, after checking that the gaps between them still hold the fill.
  void store(const std::string& path, const char* name) const {
    check_gaps_untouched(name);
    std::vector<T> values(static_cast<std::size_t>(numel()));
    for (int64_t i = 0; i < rows_; ++i)
      for (int64_t j = 0; j < cols_; ++j) values[i * cols_ + j] = data_.get()[offset(i, j)];
    write(path, values);
  }

 private:
  struct Free {
    bool keep = false;
    void operator()(T* p) const {
      if (!keep) std::free(p);
    }
  };

  int64_t offset(int64_t i, int64_t j) const { return i * stride_row_ + j * stride_col_; }

  void check_gaps_untouched(const char* name) const {
    if (!patterned_) return;
    std::vector<bool> element(static_cast<std::size_t>(extent_), false);
    for (int64_t i = 0; i < rows_; ++i)
      for (int64_t j = 0; j < cols_; ++j) element[offset(i, j)] = true;
    const auto* bytes = reinterpret_cast<const unsigned char*>(data_.get());
    for (int64_t e = 0; e < extent_; ++e) {
      if (element[e]) continue;
      for (std::size_t b = 0; b < sizeof(T); ++b) {
        if (bytes[e * sizeof(T) + b] != 0xff) die("a kernel wrote %s at offset %lld, between its elements", name,
                                                  static_cast<long long>(e));
      }
    }
  }

  std::vector<T> read(const std::string& path) const {
    std::vector<T> values(static_cast<std::size_t>(numel()));
    read_bytes(path, values.data(), values.size() * sizeof(T));
    return values;
  }

  static void write(const std::string& path, const std::vector<T>& values) {
    write_bytes(path, values.data(), values.size() * sizeof(T));
  }

  int64_t rows_, cols_, stride_row_, stride_col_, extent_ = 0;
  bool patterned_ = false;
  std::unique_ptr<T, Free> data_;
};

// A contiguous vector of n elements.
template <typename T>
DeviceMatrix<T> device_vector(int64_t n) {
  return DeviceMatrix<T>(1, n, n, 1);
}

// Prints "status <code>" for the harness; unless the launcher returned cudaSuccess, the command ends there
// (exit status 0, no outputs: the harness reports the status, or a test of argument checks expects it).
void report_status(cudaError_t status);

// fn(T{}) with T the element type named by `dtype`: float32, float64, float16 or bfloat16.
template <typename Fn>
void with_float_type(const std::string& dtype, Fn&& fn) {
  if (dtype == "float32") return fn(float{});
  if (dtype == "float64") return fn(double{});
  if (dtype == "float16") return fn(__half{});
  if (dtype == "bfloat16") return fn(__nv_bfloat16{});
  die("unknown dtype '%s' (float32, float64, float16 or bfloat16)", dtype.c_str());
}

// The commands: name -> function, registered by static initializers of the family drivers.
using Command = void (*)(const Args&);
bool register_command(const char* name, Command command);

}  // namespace driver
}  // namespace lro_emu
