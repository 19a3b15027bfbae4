// Session windows on the CUDA backend against the CPU engine: the same rows in the same order,
// the same is_update flags, late records and counters for random streams (out-of-order and
// far-late records, NaN values, negative times, bridging records), any cut into batches and
// device chunks, allowed lateness, several channels, float32 and float64; checkpoints restore
// across backends.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include <cusense/backend.hpp>
#include <cusense/pipeline.hpp>

namespace {

using namespace cusense;

struct stream {
  std::vector<std::uint32_t> keys;
  std::vector<std::int64_t> ts;
  std::vector<double> values;  // n * channels
};

stream make_stream(unsigned seed, std::size_t n, int channels, std::uint32_t num_keys, std::int64_t jitter)
{
  std::mt19937_64 rng(seed);
  stream s;
  std::int64_t clock = -500;
  for (std::size_t i = 0; i < n; ++i) {
    clock += static_cast<std::int64_t>(rng() % 4);
    std::int64_t t = clock - static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(jitter));
    if (rng() % 40 == 0) { t -= static_cast<std::int64_t>(rng() % 200); }  // far late
    s.keys.push_back(static_cast<std::uint32_t>(rng() % num_keys) * 7919u);
    s.ts.push_back(t);
    for (int c = 0; c < channels; ++c) {
      double v = static_cast<double>(static_cast<std::int64_t>(rng() % 2001) - 1000) / 8.0;
      if (rng() % 25 == 0) { v = std::numeric_limits<double>::quiet_NaN(); }
      s.values.push_back(v);
    }
  }
  return s;
}

std::vector<std::size_t> cuts(std::size_t n, std::size_t max_step, unsigned seed)
{
  std::mt19937 rng(seed);
  std::vector<std::size_t> out;
  std::size_t at = 0;
  while (at < n) {
    at = std::min(n, at + 1 + rng() % max_step);
    out.push_back(at);
  }
  return out;
}

struct result {
  table windows, late;
  pipeline_stats stats;
};

result run(pipeline_options o, backend where, stream const& s, std::vector<std::size_t> const& ends, bool f32,
           std::size_t checkpoint_at = 0, backend restore_on = backend::cpu)
{
  o.where = where;
  pipeline p(o);
  result r;
  std::size_t begin = 0, batch = 0;
  auto const ch = static_cast<std::size_t>(o.channels);
  for (std::size_t end : ends) {
    std::size_t const m = end - begin;
    if (f32) {
      std::vector<float> v(s.values.begin() + static_cast<std::ptrdiff_t>(begin * ch),
                           s.values.begin() + static_cast<std::ptrdiff_t>(end * ch));
      p.push(s.keys.data() + begin, s.ts.data() + begin, v.data(), m);
    } else {
      p.push(s.keys.data() + begin, s.ts.data() + begin, s.values.data() + begin * ch, m);
    }
    begin = end;
    r.windows.append(p.poll());
    if (++batch == checkpoint_at) {
      std::stringstream buf;
      p.checkpoint(buf);
      buf.seekg(0);
      p = pipeline::restore(buf, restore_on);
    }
  }
  r.late = p.poll_late();
  r.windows.append(p.flush());
  r.stats = p.stats();
  return r;
}

void expect_same(result const& a, result const& b)
{
  ASSERT_EQ(a.windows.num_rows(), b.windows.num_rows());
  for (auto const& c : a.windows.columns) {
    auto const& other = b.windows[c.name].data;
    if (auto const* x = std::get_if<std::vector<double>>(&c.data)) {
      auto const& y = std::get<std::vector<double>>(other);
      bool const exact = c.name.rfind("min", 0) == 0 || c.name.rfind("max", 0) == 0 ||
                         c.name.rfind("first", 0) == 0 || c.name.rfind("last", 0) == 0;
      for (std::size_t i = 0; i < x->size(); ++i) {
        double const u = (*x)[i], v = y[i];
        if (std::isnan(u) || std::isnan(v)) {
          EXPECT_TRUE(std::isnan(u) && std::isnan(v)) << c.name << " row " << i;
        } else if (exact) {
          EXPECT_EQ(u, v) << c.name << " row " << i;
        } else {
          EXPECT_NEAR(u, v, 1e-9 * (1 + std::abs(u))) << c.name << " row " << i;
        }
      }
    } else {
      EXPECT_TRUE(c.data == other) << c.name;
    }
  }
  ASSERT_EQ(a.late.num_rows(), b.late.num_rows());
  for (auto const& c : a.late.columns) {
    if (auto const* x = std::get_if<std::vector<double>>(&c.data)) {
      auto const& y = std::get<std::vector<double>>(b.late[c.name].data);
      for (std::size_t i = 0; i < x->size(); ++i) {
        EXPECT_TRUE((*x)[i] == y[i] || (std::isnan((*x)[i]) && std::isnan(y[i]))) << c.name << " row " << i;
      }
    } else {
      EXPECT_TRUE(c.data == b.late[c.name].data) << c.name;
    }
  }
  EXPECT_EQ(a.stats.records_aggregated, b.stats.records_aggregated);
  EXPECT_EQ(a.stats.records_late, b.stats.records_late);
  EXPECT_EQ(a.stats.nan_values, b.stats.nan_values);
  EXPECT_EQ(a.stats.windows_emitted, b.stats.windows_emitted);
  EXPECT_EQ(a.stats.open_windows, b.stats.open_windows);
  EXPECT_EQ(a.stats.watermark, b.stats.watermark);
}

class cuda_sessions : public ::testing::Test {
 protected:
  void SetUp() override
  {
    if (!cuda_built()) { GTEST_SKIP() << "CUDA backend not built"; }
    if (!cuda_available()) { GTEST_SKIP() << "no usable CUDA device"; }
  }
  static pipeline_options options(std::int64_t gap, std::int64_t ooo, std::int64_t lateness, int channels)
  {
    pipeline_options o;
    o.window = window_spec::session(gap);
    o.aggs.clear();
    for (char const* a : {"count", "sum", "mean", "min", "max", "std", "first", "last", "argmin_ts", "argmax_ts"}) {
      o.add_agg(a);
    }
    o.max_out_of_orderness = ooo;
    o.allowed_lateness     = lateness;
    o.channels             = channels;
    return o;
  }
};

TEST_F(cuda_sessions, match_the_cpu_engine)
{
  unsigned seed = 1;
  for (std::int64_t lateness : {0, 15, 60}) {
    for (int channels : {1, 3}) {
      for (bool f32 : {false, true}) {
        for (auto [gap, ooo, keys] : {std::tuple{5, 20, 13u}, {12, 3, 4u}, {30, 0, 50u}}) {
          SCOPED_TRACE("lateness " + std::to_string(lateness) + " channels " + std::to_string(channels) +
                       " f32 " + std::to_string(f32) + " gap " + std::to_string(gap));
          pipeline_options o = options(gap, ooo, lateness, channels);
          stream const s     = make_stream(++seed, 3000, channels, keys, 40);
          auto const ends    = cuts(s.ts.size(), 400, seed);
          result const want  = run(o, backend::cpu, s, ends, f32);
          EXPECT_GT(want.stats.records_late, 0u);
          o.staging_records = 97;  // several device chunks per push
          expect_same(want, run(o, backend::cuda, s, ends, f32));
          o.staging_records = std::size_t{1} << 22;
          expect_same(want, run(o, backend::cuda, s, {s.ts.size()}, f32));
          expect_same(want, run(o, backend::cuda, s, cuts(s.ts.size(), 3, seed), f32));
        }
      }
    }
  }
}

TEST_F(cuda_sessions, checkpoints_restore_across_backends)
{
  pipeline_options o = options(9, 25, 30, 2);
  stream const s     = make_stream(77, 2500, 2, 9, 35);
  auto const ends    = cuts(s.ts.size(), 150, 5);
  result const want  = run(o, backend::cpu, s, ends, false);
  for (std::size_t at : {1u, 4u, 9u}) {
    expect_same(want, run(o, backend::cuda, s, ends, false, at, backend::cpu));
    expect_same(want, run(o, backend::cpu, s, ends, false, at, backend::cuda));
    expect_same(want, run(o, backend::cuda, s, ends, false, at, backend::cuda));
  }
}

TEST_F(cuda_sessions, capacity_cap_rejects_whole_batch)
{
  pipeline_options o     = options(5, 1000, 0, 1);
  o.where                = backend::cuda;
  o.max_open_windows     = 4;
  pipeline p(o);
  std::vector<std::uint32_t> k{1, 2, 3, 4, 5, 6};
  std::vector<std::int64_t> t{0, 0, 0, 0, 0, 0};
  std::vector<double> v(6, 1.0);
  p.push(k.data(), t.data(), v.data(), 3);
  EXPECT_THROW(p.push(k.data() + 3, t.data(), v.data(), 3), capacity_error);
  EXPECT_EQ(p.stats().open_windows, 3u);
  EXPECT_EQ(p.stats().open_keys, 3u);
  EXPECT_EQ(p.stats().records_rejected, 3u);
  EXPECT_EQ(p.flush().num_rows(), 3u);
  EXPECT_EQ(p.stats().open_windows, 0u);
}

}  // namespace
