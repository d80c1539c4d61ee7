// Test-only CUDA emulation (tests/emulated): driver commands for the launchers of kernels/apollo.cu.
//   apollo_step  the device part of one APOLLO step after the projection, as csrc/cuda/apollo.cpp runs it:
//                w [rows, cols] (strides ws0, ws1), g [rows, cols] (strides gs0, gs1), r, m, v (R's shape,
//                contiguous, compute type), norm (one element) -> w_out, m_out, v_out, norm_out;
//                launch_apollo_sq_norms (of G), launch_apollo_moments, launch_apollo_scales and
//                launch_apollo_weight_update in that order
//   apollo_sq_norms  x [channels, len] (strides cs, ks), element type dtype -> out [channels] (float64)
// The step's scalars go through the production host functions lro::make_apollo_betas and apollo_step_size.
#include "apollo.cuh"
#include "driver.h"

namespace lro_emu {
namespace driver {
namespace {

// The step after the projection with W's element type Wt (compute type T) and limiter-norm type L.
template <typename Wt, typename T, typename L>
void step_with(const Args& a) {
  const int64_t rows = a.integer("rows"), cols = a.integer("cols"), rank = a.integer("rank");
  const bool left = a.integer("left") != 0;
  // R's layout: rank x cols (left: channels are its columns) or rows x rank (right: its rows)
  const int64_t r_rows = left ? rank : rows, r_cols = left ? cols : rank;
  const int64_t channels = left ? cols : rows;
  const int64_t r_cs = left ? 1 : rank, r_ks = left ? cols : 1;
  DeviceMatrix<Wt> w(rows, cols, a.integer("ws0"), a.integer("ws1"));
  DeviceMatrix<T> r(r_rows, r_cols), m(r_rows, r_cols), v(r_rows, r_cols);
  DeviceMatrix<L> norm = device_vector<L>(1);
  w.load(a.text("w"));
  r.load(a.text("r"));
  m.load(a.text("m"));
  v.load(a.text("v"));
  norm.load(a.text("norm"));
  DeviceMatrix<double> g_sq = device_vector<double>(channels), n_sq = device_vector<double>(channels),
                       r_sq = device_vector<double>(channels);
  DeviceMatrix<T> c_s = device_vector<T>(channels);
  const double lr = a.real("lr"), beta1 = a.real("beta1"), beta2 = a.real("beta2");
  const int64_t step = a.integer("step");
  const lro::ApolloScaling scaling{
      lro::apollo_step_size(lr, a.real("scale"), beta1, beta2, step, a.integer("correct_bias") != 0), step,
      a.integer("channel") != 0, a.integer("limiter") != 0};
  const T decay = static_cast<T>(1.0 - lr * a.real("weight_decay"));
  const int64_t gs0 = a.integer("gs0"), gs1 = a.integer("gs1");
  with_float_type(a.text("gdtype"), [&](auto g_zero) {
    using Gt = decltype(g_zero);
    DeviceMatrix<Gt> g(rows, cols, gs0, gs1);
    g.load(a.text("g"));
    report_status(lro::launch_apollo_sq_norms(g.data(), channels, left ? rows : cols, left ? gs1 : gs0,
                                              left ? gs0 : gs1, g_sq.data(), nullptr));
    report_status(lro::launch_apollo_moments(r.data(), m.data(), v.data(), channels, rank, r_cs, r_ks,
                                             lro::make_apollo_betas<T>(beta1, beta2, a.real("eps")), n_sq.data(),
                                             r_sq.data(), nullptr));
    report_status(
        lro::launch_apollo_scales(n_sq.data(), r_sq.data(), g_sq.data(), channels, scaling, norm.data(), c_s.data(),
                                  nullptr));
    report_status(lro::launch_apollo_weight_update(w.data(), rows, cols, a.integer("ws0"), a.integer("ws1"),
                                                   g.data(), gs0, gs1, c_s.data(), left, decay, nullptr));
  });
  w.store(a.text("w_out"), "w");
  m.store(a.text("m_out"), "m");
  v.store(a.text("v_out"), "v");
  norm.store(a.text("norm_out"), "norm");
}

void apollo_step(const Args& a) {
  const std::string wdtype = a.text("wdtype"), ndtype = a.text("ndtype");
  if (wdtype == "float32" && ndtype == "float32") return step_with<float, float, float>(a);
  if (wdtype == "bfloat16" && ndtype == "float32") return step_with<__nv_bfloat16, float, float>(a);
  if (wdtype == "float64" && ndtype == "float32") return step_with<double, double, float>(a);
  if (wdtype == "float64" && ndtype == "float64") return step_with<double, double, double>(a);
  die("apollo_step: (W, limiter norm) dtypes are (float32 | bfloat16, float32) or (float64, float32 | float64), "
      "got (%s, %s)", wdtype.c_str(), ndtype.c_str());
}

void apollo_sq_norms(const Args& a) {
  const int64_t channels = a.integer("channels"), len = a.integer("len"), cs = a.integer("cs"), ks = a.integer("ks");
  DeviceMatrix<double> out = device_vector<double>(channels);
  with_float_type(a.text("dtype"), [&](auto zero) {
    using X = decltype(zero);
    DeviceMatrix<X> x(channels, len, cs, ks);
    x.load(a.text("x"));
    report_status(lro::launch_apollo_sq_norms(x.data(), channels, len, cs, ks, out.data(), nullptr));
  });
  out.store(a.text("out"), "out");
}

const bool registered =
    register_command("apollo_step", apollo_step) && register_command("apollo_sq_norms", apollo_sq_norms);

}  // namespace
}  // namespace driver
}  // namespace lro_emu
