// Test-only CUDA emulation (tests/emulated): driver commands for the launchers of kernels/sketch.cu.
//   philox       counters [n, 4] int64 -> words [n, 4]                  launch_philox4x32
//   sketch_fill  out [rows, cols] with leading dimension ld             launch_sketch_fill
//   sketch_gemm  x [rows, cols] with strides (stride_row, stride_col)   launch_sketch_gemm
//                -> out [out_rows, out_cols] in the compute type
#include "sketch.cuh"
#include "driver.h"

namespace lro_emu {
namespace driver {
namespace {

void philox(const Args& a) {
  const int64_t n = a.integer("n");
  DeviceMatrix<int64_t> counters(n, 4), words(n, 4);
  counters.load(a.text("counters"));
  report_status(lro::launch_philox4x32(counters.data(), words.data(), n, a.unsigned64("seed"),
                                       static_cast<int>(a.integer("rounds")), nullptr));
  words.store(a.text("words"), "words");
}

void sketch_fill(const Args& a) {
  const int64_t rows = a.integer("rows"), cols = a.integer("cols"), ld = a.integer("ld");
  const auto kind = static_cast<lro::SketchKind>(a.integer("kind"));
  const uint64_t seed = a.unsigned64("seed");
  with_float_type(a.text("dtype"), [&](auto zero) {
    using T = decltype(zero);
    if constexpr (std::is_same<T, float>::value || std::is_same<T, double>::value) {
      DeviceMatrix<T> out(rows, cols, ld, 1);
      report_status(lro::launch_sketch_fill(out.data(), rows, cols, ld, kind, seed, nullptr));
      out.store(a.text("out"), "out");
    } else {
      die("sketch_fill: out is float32 or float64");
    }
  });
}

void sketch_gemm(const Args& a) {
  const lro::SketchSpec spec{static_cast<lro::SketchKind>(a.integer("kind")), a.unsigned64("seed"),
                             a.integer("rank"), a.integer("dim")};
  const auto product = static_cast<lro::SketchProduct>(a.integer("product"));
  const int64_t rows = a.integer("rows"), cols = a.integer("cols");
  const int64_t stride_row = a.integer("stride_row"), stride_col = a.integer("stride_col");
  const int64_t out_rows = a.integer("out_rows"), out_cols = a.integer("out_cols");
  with_float_type(a.text("dtype"), [&](auto zero) {
    using In = decltype(zero);
    using T = typename std::conditional<std::is_same<In, double>::value, double, float>::type;
    DeviceMatrix<In> x(rows, cols, stride_row, stride_col);
    x.load(a.text("x"));
    DeviceMatrix<T> out(out_rows, out_cols);
    const lro::StridedMatrix<In> view{x.data(), rows, cols, stride_row, stride_col};
    report_status(lro::launch_sketch_gemm(product, spec, view, out.data(), nullptr));
    out.store(a.text("out"), "out");
  });
}

const bool registered = register_command("philox", philox) && register_command("sketch_fill", sketch_fill) &&
                        register_command("sketch_gemm", sketch_gemm);

}  // namespace
}  // namespace driver
}  // namespace lro_emu
