#pragma once
// Synthetic sensor stream shared by the microbenchmarks (same shape as benchmarks/run.py):
// keys uniform in [0, keys); record i at t0 + i * dt minus a jitter in [0, disorder), with
// dt = window / (keys * per_window) so a (key, window) holds about `per_window` records;
// float32 values. With max_out_of_orderness = disorder no record is late.
#include <cstdint>
#include <random>
#include <vector>

namespace cusense_bench {

/// Bytes of one record as pushed: key (4) + timestamp (8) + float32 value (4).
constexpr std::int64_t record_bytes = 16;
constexpr std::int64_t window_ns    = 10'000'000'000;  // 10 s tumbling windows
constexpr std::int64_t t0           = 1'700'000'000'000'000'000;

struct stream {
  std::vector<std::uint32_t> keys;
  std::vector<std::int64_t> ts;
  std::vector<float> values;
  std::int64_t disorder_ns = 0;
};

inline stream make_stream(std::size_t records, std::uint32_t keys, double per_window = 100.0,
                          std::uint64_t seed = 42)
{
  stream s;
  s.keys.resize(records);
  s.ts.resize(records);
  s.values.resize(records);
  double const dt = static_cast<double>(window_ns) / (static_cast<double>(keys) * per_window);
  s.disorder_ns   = window_ns / 20;  // mild: up to 5% of a window
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::uint32_t> key(0, keys - 1);
  std::uniform_int_distribution<std::int64_t> jitter(0, s.disorder_ns - 1);
  std::normal_distribution<float> value(20.0f, 5.0f);
  for (std::size_t i = 0; i < records; ++i) {
    s.keys[i]   = key(rng);
    s.ts[i]     = t0 + static_cast<std::int64_t>(static_cast<double>(i) * dt) - jitter(rng);
    s.values[i] = value(rng);
  }
  return s;
}

}  // namespace cusense_bench
