// Host unit tests of kernels/philox.h and kernels/sketch.h (no torch, no framework): the math the CPU
// backend and the CUDA kernels share. Exits non-zero, after printing every failed check, on failure.
//   1. Philox4x32 known-answer vectors of Random123 (kat_vectors), 7 and 10 rounds.
//   2. sketch_fill_segment equals sketch_entry * scale for every entry, for odd offsets and lengths that
//      start, end and cross column groups, both kinds, float and double.
//   3. Rademacher entries are exactly +1 or -1; the words they come from are spec v1's.
//   4. Gaussian entries: sample mean ~ 0, variance ~ 1, fourth moment ~ 3 over 2^18 draws.
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../sketch.h"

namespace {

int g_failures = 0;

// Prints "FAIL: <message>" (printf-style) and counts the failure when !ok.
__attribute__((format(printf, 2, 3))) void check(bool ok, const char* format, ...) {
  if (ok) return;
  ++g_failures;
  std::printf("FAIL: ");
  va_list args;
  va_start(args, format);
  std::vprintf(format, args);
  va_end(args);
  std::printf("\n");
}

struct Kat {
  int rounds;
  uint32_t ctr[4];
  uint32_t key[2];
  uint32_t out[4];
};

// Random123 kat_vectors, "philox4x32 <rounds> <ctr0..3> <key0..1> <out0..3>".
constexpr Kat kKats[] = {
    {7, {0, 0, 0, 0}, {0, 0}, {0x5f6fb709u, 0x0d893f64u, 0x4f121f81u, 0x4f730a48u}},
    {7,
     {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
     {0xffffffffu, 0xffffffffu},
     {0x5207ddc2u, 0x45165e59u, 0x4d8ee751u, 0x8c52f662u}},
    {7,
     {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
     {0xa4093822u, 0x299f31d0u},
     {0x4dfccabau, 0x190a87f0u, 0xc47362bau, 0xb6b5242au}},
    {10, {0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
    {10,
     {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
     {0xffffffffu, 0xffffffffu},
     {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
    {10,
     {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
     {0xa4093822u, 0x299f31d0u},
     {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
};

void test_philox_known_answers() {
  for (const Kat& k : kKats) {
    const lro::PhiloxWords w =
        lro::philox4x32(k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3], k.key[0], k.key[1], k.rounds);
    for (int q = 0; q < 4; ++q)
      check(w.w[q] == k.out[q], "philox4x32-%d known answer, word %d: expected 0x%08x, got 0x%08x", k.rounds,
            q, k.out[q], w.w[q]);
  }
  // Default rounds are 10, and sketch_words puts the seed's low half in k0, the high half in k1.
  const lro::PhiloxWords d = lro::philox4x32(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u,
                                             0x299f31d0u);
  check(d.w[0] == 0xd16cfe09u, "philox4x32 default rounds: expected 10 (word 0 0xd16cfe09), got 0x%08x",
        d.w[0]);
  const lro::PhiloxWords s = lro::sketch_words(0x299f31d0a4093822ull, 0x85a308d3u, 0x243f6a88u);
  const lro::PhiloxWords r = lro::philox4x32(0x243f6a88u, 0x85a308d3u, 0, 0, 0xa4093822u, 0x299f31d0u);
  for (int q = 0; q < 4; ++q)
    check(s.w[q] == r.w[q], "sketch_words word %d: expected philox((group, row, 0, 0), (lo, hi)) = 0x%08x, "
          "got 0x%08x", q, r.w[q], s.w[q]);
}

template <typename T>
void test_segment_matches_entries(int kind) {
  const uint64_t seed = 0x9e3779b97f4a7c15ull;
  const T scale = static_cast<T>(1.0 / std::sqrt(300.0));
  // Offsets and lengths chosen to start mid-group, end mid-group and span several groups of 4 and 128.
  const int64_t offsets[] = {0, 1, 3, 5, 127, 129, 255, 383, 1001};
  const int64_t lengths[] = {1, 3, 7, 31, 129, 257};
  for (uint32_t row : {0u, 1u, 77u, 0xfffffffeu}) {
    for (int64_t j0 : offsets) {
      for (int64_t len : lengths) {
        std::vector<T> out(static_cast<size_t>(len));
        lro::sketch_fill_segment<T>(kind, seed, row, j0, len, scale, out.data());
        for (int64_t t = 0; t < len; ++t) {
          const T want = static_cast<T>(lro::sketch_entry(kind, seed, row, j0 + t)) * scale;
          check(out[t] == want, "%s segment [%lld, %lld) of row %u, column %lld: expected %.9g, got %.9g",
                kind == lro::kRademacher ? "rademacher" : "gaussian", static_cast<long long>(j0),
                static_cast<long long>(j0 + len), row, static_cast<long long>(j0 + t),
                static_cast<double>(want), static_cast<double>(out[t]));
        }
      }
    }
  }
}

void test_rademacher_values() {
  const uint64_t seed = 0x0123456789abcdefull;
  int64_t plus = 0, total = 0;
  for (uint32_t row = 0; row < 16; ++row) {
    for (int64_t j = 0; j < 1000; ++j) {
      const float v = lro::sketch_entry(lro::kRademacher, seed, row, j);
      check(v == 1.0f || v == -1.0f, "rademacher entry (%u, %lld): expected exactly +-1, got %.9g", row,
            static_cast<long long>(j), static_cast<double>(v));
      // Spec v1: bit (j % 32) of word (j % 128) / 32 of philox((j / 128, row, 0, 0), seed).
      const lro::PhiloxWords w = lro::sketch_words(seed, row, static_cast<uint32_t>(j / 128));
      const bool bit = (w.w[(j % 128) / 32] >> (j % 32)) & 1u;
      check(v == (bit ? 1.0f : -1.0f), "rademacher entry (%u, %lld): expected %d from spec v1, got %.9g", row,
            static_cast<long long>(j), bit ? 1 : -1, static_cast<double>(v));
      plus += v > 0;
      ++total;
    }
  }
  // 16000 fair signs: the count of +1 is within 5 standard deviations (sqrt(16000) / 2 ~ 63) of half.
  check(std::llabs(2 * plus - total) < 2 * 5 * 64,
        "rademacher signs: expected about half +1, got %lld of %lld", static_cast<long long>(plus),
        static_cast<long long>(total));
}

void test_gaussian_moments() {
  const uint64_t seed = 42;
  const int64_t rows = 64, cols = 4096;  // 2^18 draws
  std::vector<float> row_values(cols);
  double s1 = 0, s2 = 0, s4 = 0;
  bool finite = true;
  for (uint32_t i = 0; i < rows; ++i) {
    lro::sketch_fill_segment<float>(lro::kGaussian, seed, i, 0, cols, 1.0f, row_values.data());
    for (float v : row_values) {
      finite = finite && std::isfinite(v);
      s1 += v;
      s2 += static_cast<double>(v) * v;
      s4 += static_cast<double>(v) * v * v * v;
    }
  }
  const double n = static_cast<double>(rows * cols);
  const double mean = s1 / n, var = s2 / n - mean * mean, m4 = s4 / n;
  check(finite, "gaussian entries: expected all finite, got a non-finite value");
  // Standard errors over 2^18 draws: mean 0.002, variance 0.003, fourth moment 0.02; bounds are ~5 of them.
  check(std::fabs(mean) < 0.01, "gaussian sample mean: expected |mean| < 0.01, got %.6f", mean);
  check(std::fabs(var - 1.0) < 0.015, "gaussian sample variance: expected 1 +- 0.015, got %.6f", var);
  check(std::fabs(m4 - 3.0) < 0.1, "gaussian fourth moment: expected 3 +- 0.1, got %.6f", m4);
}

}  // namespace

int main() {
  test_philox_known_answers();
  test_segment_matches_entries<float>(lro::kRademacher);
  test_segment_matches_entries<float>(lro::kGaussian);
  test_segment_matches_entries<double>(lro::kRademacher);
  test_segment_matches_entries<double>(lro::kGaussian);
  test_rademacher_values();
  test_gaussian_moments();
  if (g_failures > 0) {
    std::printf("%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all sketch host checks passed\n");
  return 0;
}
