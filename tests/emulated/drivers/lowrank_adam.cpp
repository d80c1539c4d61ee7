// Test-only CUDA emulation (tests/emulated): driver commands for the launchers of kernels/lowrank_adam.cu.
//   sketch_window  out [rank, width] (leading dimension ld) = P[:, k0 : k0 + width]    launch_sketch_window
//   dct_window     out [rank, width] = D[indices, k0 : k0 + width], with `seed` times   launch_dct_window
//                  the "sr_dct" signs sign_(k0 + j) of that seed
//   adam_moments   r, m, v (and delta) [n] in place -> r_out, m_out, v_out (delta_out)  launch_adam_moments
//   weight_update  w [rows, cols] with strides (s0, s1), u [rows, cols] -> w_out       launch_adam_weight_update
// The step's scalars (lr, beta1, beta2, eps, weight_decay, step, scale, adapter) go through the production
// host function lro::make_adam_step.
#include "lowrank_adam.cuh"
#include "driver.h"

namespace lro_emu {
namespace driver {
namespace {

template <typename T>
lro::AdamStep<T> adam_step(const Args& a) {
  return lro::make_adam_step<T>(a.real("lr"), a.real("beta1"), a.real("beta2"), a.real("eps"),
                                a.real("weight_decay"), a.integer("step"), a.real("scale"),
                                a.integer("adapter") != 0);
}

// fn(T{}) for the compute types float32 and float64.
template <typename Fn>
void with_compute_type(const std::string& dtype, Fn&& fn) {
  if (dtype == "float32") return fn(float{});
  if (dtype == "float64") return fn(double{});
  die("the compute type is float32 or float64, got '%s'", dtype.c_str());
}

void sketch_window(const Args& a) {
  const int64_t rank = a.integer("rank"), width = a.integer("width"), ld = a.integer("ld");
  with_compute_type(a.text("dtype"), [&](auto zero) {
    using T = decltype(zero);
    DeviceMatrix<T> out(rank, width, ld, 1);
    report_status(lro::launch_sketch_window(out.data(), ld, static_cast<lro::SketchKind>(a.integer("kind")),
                                            a.unsigned64("seed"), rank, a.integer("dim"), a.integer("k0"), width,
                                            nullptr));
    out.store(a.text("out"), "out");
  });
}

void dct_window(const Args& a) {
  const int64_t rank = a.integer("rank"), width = a.integer("width"), ld = a.integer("ld");
  DeviceMatrix<int64_t> indices = device_vector<int64_t>(rank);
  indices.load(a.text("indices"));
  with_compute_type(a.text("dtype"), [&](auto zero) {
    using T = decltype(zero);
    DeviceMatrix<T> out(rank, width, ld, 1);
    const bool signs = a.has("seed");
    report_status(lro::launch_dct_window(out.data(), ld, indices.data(), rank, a.integer("dim"), a.integer("k0"),
                                         width, signs, signs ? a.unsigned64("seed") : 0, nullptr));
    out.store(a.text("out"), "out");
  });
}

void adam_moments(const Args& a) {
  const int64_t n = a.integer("n");
  const bool adapter = a.has("delta");
  with_compute_type(a.text("dtype"), [&](auto zero) {
    using T = decltype(zero);
    DeviceMatrix<T> r = device_vector<T>(n), m = device_vector<T>(n), v = device_vector<T>(n);
    DeviceMatrix<T> delta = device_vector<T>(adapter ? n : 0);
    r.load(a.text("r"));
    m.load(a.text("m"));
    v.load(a.text("v"));
    if (adapter) delta.load(a.text("delta"));
    report_status(lro::launch_adam_moments(r.data(), m.data(), v.data(), adapter ? delta.data() : nullptr, n,
                                           adam_step<T>(a), nullptr));
    r.store(a.text("r_out"), "r");
    m.store(a.text("m_out"), "m");
    v.store(a.text("v_out"), "v");
    if (adapter) delta.store(a.text("delta_out"), "delta");
  });
}

void weight_update(const Args& a) {
  const int64_t rows = a.integer("rows"), cols = a.integer("cols"), s0 = a.integer("s0"), s1 = a.integer("s1");
  with_float_type(a.text("dtype"), [&](auto zero) {
    using W = decltype(zero);
    if constexpr (std::is_same<W, __half>::value) {
      die("weight_update: w is float32, float64 or bfloat16");
    } else {
      using T = typename std::conditional<std::is_same<W, double>::value, double, float>::type;
      DeviceMatrix<W> w(rows, cols, s0, s1);
      DeviceMatrix<T> u(rows, cols);
      w.load(a.text("w"));
      u.load(a.text("u"));
      report_status(lro::launch_adam_weight_update(w.data(), rows, cols, s0, s1, u.data(), adam_step<T>(a), nullptr));
      w.store(a.text("w_out"), "w");
    }
  });
}

const bool registered = register_command("sketch_window", sketch_window) &&
                        register_command("dct_window", dct_window) &&
                        register_command("adam_moments", adam_moments) &&
                        register_command("weight_update", weight_update);

}  // namespace
}  // namespace driver
}  // namespace lro_emu
