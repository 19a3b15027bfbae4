#pragma once
// Helpers shared by the C++ tests: a record stream, random batch cuts and running a stream
// through a pipeline in batches. The oracles stay in each test.
#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include <cusense/cusense.hpp>

namespace cusense::test {

/// One value channel: record i is (keys[i], ts[i], values[i]).
struct stream {
  std::vector<std::uint32_t> keys;
  std::vector<std::int64_t> ts;
  std::vector<double> values;
};

/// Batch ends (exclusive, increasing, the last == n) of batches of 1 to max_batch records.
inline std::vector<std::size_t> random_cuts(std::size_t n, std::size_t max_batch, unsigned seed)
{
  std::mt19937 rng(seed);
  std::vector<std::size_t> cuts;
  for (std::size_t at = 0; at < n;) {
    at = std::min(n, at + 1 + rng() % max_batch);
    cuts.push_back(at);
  }
  return cuts;
}

/// Pushes `s` cut at `cuts`, polling after each batch, then flushes; returns the windows and
/// appends the late records to *late when given.
inline table run_windows(pipeline& p, stream const& s, std::vector<std::size_t> const& cuts,
                         table* late = nullptr)
{
  table out;
  std::size_t begin = 0;
  for (std::size_t end : cuts) {
    p.push(s.keys.data() + begin, s.ts.data() + begin, s.values.data() + begin, end - begin);
    out.append(p.poll());
    begin = end;
  }
  out.append(p.flush());
  if (late) { late->append(p.poll_late()); }
  return out;
}

}  // namespace cusense::test
