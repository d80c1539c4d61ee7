// Test-only CUDA emulation (tests/emulated): driver command for the launcher of kernels/blockwise8.cu.
//   q8_adam_moments  r [rows, cols] (float32 / float64), codes qm, qv [rows, cols], absmax am, av
//                    [rows, ceil(cols / block)] (and delta) in place -> r_out, qm_out, am_out, qv_out, av_out
//                    (delta_out)                                                       launch_q8_adam_moments
// The step's scalars go through the production host function lro::make_adam_step (scale 1).
#include "blockwise8.cuh"
#include "driver.h"

namespace lro_emu {
namespace driver {
namespace {

void q8_adam_moments(const Args& a) {
  const int64_t rows = a.integer("rows"), cols = a.integer("cols"), block = a.integer("block");
  const int64_t n_absmax = rows * ((cols + block - 1) / block);
  const bool adapter = a.has("delta");
  DeviceMatrix<uint8_t> qm(rows, cols), qv(rows, cols);
  DeviceMatrix<float> am = device_vector<float>(n_absmax), av = device_vector<float>(n_absmax);
  qm.load(a.text("qm"));
  qv.load(a.text("qv"));
  am.load(a.text("am"));
  av.load(a.text("av"));
  const std::string dtype = a.text("dtype");
  auto run = [&](auto zero) {
    using T = decltype(zero);
    DeviceMatrix<T> r(rows, cols), delta = device_vector<T>(adapter ? rows * cols : 0);
    r.load(a.text("r"));
    if (adapter) delta.load(a.text("delta"));
    const lro::AdamStep<T> s = lro::make_adam_step<T>(a.real("lr"), a.real("beta1"), a.real("beta2"), a.real("eps"),
                                                      a.real("weight_decay"), a.integer("step"), 1.0, adapter);
    report_status(lro::launch_q8_adam_moments(r.data(), qm.data(), am.data(), qv.data(), av.data(),
                                              adapter ? delta.data() : nullptr, rows, cols, block, s, nullptr));
    r.store(a.text("r_out"), "r");
    if (adapter) delta.store(a.text("delta_out"), "delta");
  };
  if (dtype == "float32") {
    run(float{});
  } else if (dtype == "float64") {
    run(double{});
  } else {
    die("q8_adam_moments: r is float32 or float64, got '%s'", dtype.c_str());
  }
  qm.store(a.text("qm_out"), "qm");
  qv.store(a.text("qv_out"), "qv");
  am.store(a.text("am_out"), "am");
  av.store(a.text("av_out"), "av");
}

const bool registered = register_command("q8_adam_moments", q8_adam_moments);

}  // namespace
}  // namespace driver
}  // namespace lro_emu
