// The blockwise 8-bit moment format of kernels/blockwise8.h on CPU tensors: encode and decode a whole
// moment, and the 8-bit moment epilogue of the fused step (csrc/cpu/adam_epilogues8.h) on a whole projected
// gradient. Not ops: these expose the arithmetic to the tests (bit-identity with
// lowrank_ops/pure_torch/blockwise8.py, the epilogue against the float64 oracle) and to the optimizers, which
// decode / encode states with them (lowrank_ops/projections/moments.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../../kernels/adam.h"
#include "../../kernels/blockwise8.h"
#include "../checks.h"
#include "../lowrank_ops.h"
#include "adam_epilogues8.h"

namespace lowrank_ops {
namespace cpu {
namespace {

constexpr const char* kEncode = "blockwise8_encode";
constexpr const char* kDecode = "blockwise8_decode";
constexpr int64_t kRowsGrain = 64;

void check_block(const char* op, int64_t block) {
  TORCH_CHECK(block >= 1, "lowrank_ops.", op, ": argument 'block' must be >= 1, got ", block);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> blockwise8_encode(const at::Tensor& values, bool is_signed, int64_t block) {
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == at::kFloat && values.device().is_cpu(), "lowrank_ops.",
              kEncode, ": argument 'values' must be a 2-D float32 CPU tensor, got ", values.dim(), "-D ",
              values.scalar_type(), " on ", values.device());
  check_block(kEncode, block);
  const at::Tensor v = values.contiguous();
  const int64_t rows = v.size(0), cols = v.size(1), blocks = (cols + block - 1) / block;
  at::Tensor codes = at::empty({rows, cols}, v.options().dtype(at::kByte));
  at::Tensor absmax = at::empty({rows, blocks}, v.options());
  const lro::Q8Table& table = q8_table(is_signed);
  const float* vp = v.const_data_ptr<float>();
  uint8_t* cp = codes.data_ptr<uint8_t>();
  float* ap = absmax.data_ptr<float>();
  at::parallel_for(0, rows, kRowsGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(std::min(block, cols));
    lro::q8_encode_rows(vp + begin * cols, end - begin, cols, block, table, cp + begin * cols, ap + begin * blocks,
                        scratch.data());
  });
  return {codes, absmax};
}

at::Tensor blockwise8_decode(const at::Tensor& codes, const at::Tensor& absmax, bool is_signed, int64_t block) {
  check_block(kDecode, block);
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kByte && codes.device().is_cpu(), "lowrank_ops.",
              kDecode, ": argument 'codes' must be a 2-D uint8 CPU tensor, got ", codes.dim(), "-D ",
              codes.scalar_type(), " on ", codes.device());
  const int64_t rows = codes.size(0), cols = codes.size(1), blocks = (cols + block - 1) / block;
  TORCH_CHECK(absmax.scalar_type() == at::kFloat && absmax.device().is_cpu() && absmax.dim() == 2 &&
                  absmax.size(0) == rows && absmax.size(1) == blocks,
              "lowrank_ops.", kDecode, ": argument 'absmax' must be a float32 CPU tensor of shape [", rows, ", ",
              blocks, "], got ", absmax.scalar_type(), " of shape ", shape_str(absmax));
  const at::Tensor c = codes.contiguous(), a = absmax.contiguous();
  at::Tensor out = at::empty({rows, cols}, a.options());
  const lro::Q8Table& table = q8_table(is_signed);
  const uint8_t* cp = c.const_data_ptr<uint8_t>();
  const float* ap = a.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, kRowsGrain, [&](int64_t begin, int64_t end) {
    lro::q8_decode_rows(cp + begin * cols, ap + begin * blocks, end - begin, cols, block, table.code, op + begin * cols);
  });
  return out;
}

void blockwise8_adam_moments_(const at::Tensor& r, const at::Tensor& exp_avg, const at::Tensor& exp_avg_absmax,
                              const at::Tensor& exp_avg_sq, const at::Tensor& exp_avg_sq_absmax,
                              const std::optional<at::Tensor>& delta, int64_t block, double lr, double beta1,
                              double beta2, double eps, double weight_decay, int64_t step, bool adapter) {
  constexpr const char* op = "blockwise8_adam_moments_";
  check_block(op, block);
  TORCH_CHECK(r.dim() == 2 && r.is_contiguous() && r.device().is_cpu() &&
                  (r.scalar_type() == at::kFloat || r.scalar_type() == at::kDouble),
              "lowrank_ops.", op, ": argument 'r' must be a contiguous 2-D float32 or float64 CPU tensor");
  const int64_t rows = r.size(0), cols = r.size(1), blocks = (cols + block - 1) / block;
  for (const at::Tensor* codes : {&exp_avg, &exp_avg_sq}) {
    TORCH_CHECK(codes->scalar_type() == at::kByte && codes->is_contiguous() && codes->sizes() == r.sizes(),
                "lowrank_ops.", op, ": the codes must be contiguous uint8 tensors of r's shape ", shape_str(r));
  }
  for (const at::Tensor* absmax : {&exp_avg_absmax, &exp_avg_sq_absmax}) {
    TORCH_CHECK(absmax->scalar_type() == at::kFloat && absmax->is_contiguous() && absmax->dim() == 2 &&
                    absmax->size(0) == rows && absmax->size(1) == blocks,
                "lowrank_ops.", op, ": the absmax must be contiguous float32 tensors of shape [", rows, ", ", blocks,
                "]");
  }
  TORCH_CHECK(!adapter || (delta.has_value() && delta->scalar_type() == r.scalar_type() && delta->is_contiguous() &&
                           delta->sizes() == r.sizes()),
              "lowrank_ops.", op, ": the adapter mode needs a contiguous 'delta' of r's shape and dtype");
  const Q8Moments q{exp_avg.data_ptr<uint8_t>(), exp_avg_absmax.data_ptr<float>(), exp_avg_sq.data_ptr<uint8_t>(),
                    exp_avg_sq_absmax.data_ptr<float>(), cols, block, &q8_table(true), &q8_table(false)};
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), op, [&] {
    const auto s = lro::make_adam_step<scalar_t>(lr, beta1, beta2, eps, weight_decay, step, 1.0, adapter);
    scalar_t* rp = r.data_ptr<scalar_t>();
    scalar_t* dp = adapter ? delta->data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, rows, kRowsGrain, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(2 * std::min(block, cols));
      for (int64_t i = begin; i < end; ++i) {
        adam_moments_run8(rp + i * cols, q, i, 0, cols, dp != nullptr ? dp + i * cols : nullptr, s, scratch.data());
      }
    });
  });
}

}  // namespace cpu
}  // namespace lowrank_ops
