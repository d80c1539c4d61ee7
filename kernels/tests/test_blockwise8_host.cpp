// Host unit tests of kernels/blockwise8.h's CPU encode (no torch, no framework): q8_encode_bucket, the O(1)
// bucket-table encode, equals the format's definition q = #{ i : mid[i] < x } (a plain count over the 255
// midpoints, written here) and the binary search q8_encode, for both tables, at every point where q or the
// bucket can change and on random inputs. Exits non-zero, after printing every failed check, on failure.
//   1. every midpoint and its float32 neighbours (two steps each way);
//   2. every bucket boundary (both signs) and its neighbours;
//   3. +-0, +-1, NaNs of both signs, +-inf, denormals, FLT_MAX, values beyond +-1;
//   4. 10^6 uniform floats in [-1, 1], 10^6 log-uniform magnitudes in [2^-30, 1] of either sign, and 10^6
//      random bit patterns (every exponent, NaNs included);
//   5. the midpoints are ascending and mid[255] is +inf (the padding the rule reads).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "../blockwise8.h"

namespace {

int g_failures = 0;
int64_t g_checked = 0;

// #{ i < 255 : mid[i] < x }: the definition, independent of the code under test.
int count_below(const float* mid, float x) {
  int n = 0;
  for (int i = 0; i < 255; ++i) n += mid[i] < x;
  return n;
}

float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

uint32_t to_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

void check_point(const lro::Q8Table& table, const char* name, float x) {
  ++g_checked;
  const int expected = x == x ? count_below(table.mid, x) : 0;
  const int bucket = lro::q8_encode_bucket(x, table);
  const int search = lro::q8_encode(x, table.mid);
  if (bucket != expected || search != expected) {
    if (++g_failures <= 20) {
      std::printf("FAIL: %s table, x = %.9g (bits 0x%08x): definition %d, q8_encode_bucket %d, q8_encode %d\n",
                  name, x, to_bits(x), expected, bucket, search);
    }
  }
}

// x and its float32 neighbours, `steps` each way.
void check_around(const lro::Q8Table& table, const char* name, float x, int steps) {
  check_point(table, name, x);
  float up = x, down = x;
  for (int k = 0; k < steps; ++k) {
    up = std::nextafter(up, std::numeric_limits<float>::infinity());
    down = std::nextafter(down, -std::numeric_limits<float>::infinity());
    check_point(table, name, up);
    check_point(table, name, down);
  }
}

void check_table(bool is_signed) {
  const char* name = is_signed ? "signed" : "unsigned";
  const std::unique_ptr<lro::Q8Table> owned(new lro::Q8Table);  // 65 KiB: not on the stack
  const lro::Q8Table& table = *owned;
  lro::q8_fill_table(is_signed, owned.get());
  for (int i = 0; i + 1 < 255; ++i) {
    if (!(table.mid[i] <= table.mid[i + 1])) {
      ++g_failures;
      std::printf("FAIL: %s table, midpoints not ascending at %d\n", name, i);
    }
  }
  if (!(std::isinf(table.mid[255]) && table.mid[255] > 0)) {
    ++g_failures;
    std::printf("FAIL: %s table, mid[255] = %g, not +inf\n", name, table.mid[255]);
  }
  // 1. midpoints
  for (int i = 0; i < 255; ++i) {
    check_around(table, name, table.mid[i], 2);
    check_around(table, name, -table.mid[i], 2);
  }
  // 2. bucket boundaries: every bucket's first and last pattern, with their neighbours
  for (uint32_t key = 0; key < lro::kQ8Buckets; ++key) {
    const uint32_t first = key << lro::kQ8BucketShift, last = first | ((1u << lro::kQ8BucketShift) - 1);
    check_around(table, name, from_bits(first), 1);
    check_around(table, name, from_bits(last), 1);
  }
  // 3. special values
  const float inf = std::numeric_limits<float>::infinity();
  const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, 1.5f, -1.5f, 2.0f, -2.0f, 1e30f, -1e30f,
                            std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(), inf, -inf,
                            std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                            from_bits(0x7f800001u), from_bits(0xff800001u), from_bits(0x7fffffffu),
                            std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::denorm_min(),
                            from_bits(0x007fffffu), from_bits(0x807fffffu), std::numeric_limits<float>::min(),
                            -std::numeric_limits<float>::min(), 5e-8f, -5e-8f, 5e-7f, -5e-7f};
  for (float x : specials) check_around(table, name, x, 2);
  // 4. random inputs
  std::mt19937_64 rng(is_signed ? 17 : 18);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::uniform_real_distribution<double> log2_magnitude(-30.0, 0.0);
  for (int k = 0; k < 1000000; ++k) {
    check_point(table, name, uniform(rng));
    const float magnitude = static_cast<float>(std::exp2(log2_magnitude(rng)));
    check_point(table, name, (rng() & 1) ? magnitude : -magnitude);
    check_point(table, name, from_bits(static_cast<uint32_t>(rng())));
  }
}

}  // namespace

int main() {
  check_table(true);
  check_table(false);
  if (g_failures != 0) {
    std::printf("%d of %lld checks failed\n", g_failures, static_cast<long long>(g_checked));
    return 1;
  }
  std::printf("blockwise8 host: %lld checks passed\n", static_cast<long long>(g_checked));
  return 0;
}
