// The blockwise 8-bit moment format of kernels/blockwise8.h on CPU tensors: encode and decode a whole
// moment. Not an op: the optimizers' 8-bit moments are decoded and encoded inside the fused steps; these
// functions expose the header's arithmetic to the tests (bit-identity with lowrank_ops/pure_torch/blockwise8.py)
// and to the optimizers' refresh transforms.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <tuple>

#include "../../kernels/blockwise8.h"
#include "../checks.h"
#include "../lowrank_ops.h"

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
  lro::Q8Table table;
  lro::q8_fill_table(is_signed, &table);
  const float* vp = v.const_data_ptr<float>();
  uint8_t* cp = codes.data_ptr<uint8_t>();
  float* ap = absmax.data_ptr<float>();
  at::parallel_for(0, rows, kRowsGrain, [&](int64_t begin, int64_t end) {
    lro::q8_encode_rows(vp + begin * cols, end - begin, cols, block, table.mid, cp + begin * cols, ap + begin * blocks);
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
  lro::Q8Table table;
  lro::q8_fill_table(is_signed, &table);
  const uint8_t* cp = c.const_data_ptr<uint8_t>();
  const float* ap = a.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, kRowsGrain, [&](int64_t begin, int64_t end) {
    lro::q8_decode_rows(cp + begin * cols, ap + begin * blocks, end - begin, cols, block, table.code, op + begin * cols);
  });
  return out;
}

}  // namespace cpu
}  // namespace lowrank_ops
