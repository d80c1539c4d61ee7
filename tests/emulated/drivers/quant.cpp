// Test-only CUDA emulation (tests/emulated): driver commands for the launchers of kernels/quant.cu.
//   quantize    w [rows, cols] -> codes [n_codes] bytes, scales [n_scales] float32     launch_quantize
//   dequantize  codes, scales of a rows x cols W -> out [nr, nc] (leading dimension ld), the
//               sub-rectangle at (r0, c0)                                             launch_dequantize
#include "quant.cuh"
#include "driver.h"

namespace lro_emu {
namespace driver {
namespace {

void quantize(const Args& a) {
  const int64_t rows = a.integer("rows"), cols = a.integer("cols"), group_size = a.integer("group_size");
  const int format = static_cast<int>(a.integer("format"));
  DeviceMatrix<uint8_t> codes = device_vector<uint8_t>(a.integer("n_codes"));
  DeviceMatrix<float> scales = device_vector<float>(a.integer("n_scales"));
  with_float_type(a.text("dtype"), [&](auto zero) {
    using In = decltype(zero);
    DeviceMatrix<In> w(rows, cols);
    w.load(a.text("w"));
    report_status(
        lro::launch_quantize(w.data(), format, rows, cols, group_size, codes.data(), scales.data(), nullptr));
  });
  codes.store(a.text("codes"), "codes");
  scales.store(a.text("scales"), "scales");
}

void dequantize(const Args& a) {
  DeviceMatrix<uint8_t> codes = device_vector<uint8_t>(a.integer("n_codes"));
  DeviceMatrix<float> scales = device_vector<float>(a.integer("n_scales"));
  codes.load(a.text("codes"));
  scales.load(a.text("scales"));
  const lro::QuantMatrix w{static_cast<int>(a.integer("format")), codes.data(), scales.data(), a.integer("rows"),
                           a.integer("cols"), a.integer("group_size")};
  const int64_t r0 = a.integer("r0"), nr = a.integer("nr"), c0 = a.integer("c0"), nc = a.integer("nc");
  const int64_t ld = a.integer("ld");
  with_float_type(a.text("dtype"), [&](auto zero) {
    using Out = decltype(zero);
    DeviceMatrix<Out> out(nr, nc, ld, 1);
    report_status(lro::launch_dequantize(w, r0, nr, c0, nc, out.data(), ld, nullptr));
    out.store(a.text("out"), "out");
  });
}

const bool registered = register_command("quantize", quantize) && register_command("dequantize", dequantize);

}  // namespace
}  // namespace driver
}  // namespace lro_emu
