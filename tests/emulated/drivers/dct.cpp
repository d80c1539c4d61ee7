// Test-only CUDA emulation (tests/emulated): driver command for the launcher of kernels/dct.cu.
//   dct_rows  out [rows, dim] with leading dimension ld, rows `indices` [rows] (when given) or
//             first_row + i                                               launch_dct_rows
#include "dct.cuh"
#include "driver.h"

namespace lro_emu {
namespace driver {
namespace {

void dct_rows(const Args& a) {
  const int64_t rows = a.integer("rows"), dim = a.integer("dim"), ld = a.integer("ld");
  const int64_t first_row = a.integer("first_row");
  DeviceMatrix<int64_t> indices = device_vector<int64_t>(a.has("indices") ? rows : 0);
  if (a.has("indices")) indices.load(a.text("indices"));
  with_float_type(a.text("dtype"), [&](auto zero) {
    using T = decltype(zero);
    DeviceMatrix<T> out(rows, dim, ld, 1);
    report_status(lro::launch_dct_rows(out.data(), rows, dim, ld, a.has("indices") ? indices.data() : nullptr,
                                       first_row, nullptr));
    out.store(a.text("out"), "out");
  });
}

const bool registered = register_command("dct_rows", dct_rows);

}  // namespace
}  // namespace driver
}  // namespace lro_emu
