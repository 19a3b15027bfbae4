// Tumbling windows on every backend against a naive oracle written here.
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <tuple>
#include <vector>

#include <cusense/cusense.hpp>

#include "backend_fixture.hpp"
#include "test_utils.hpp"

namespace cusense::test {
namespace {

// Random stream: mostly increasing time with jitter up to `disorder`, a few very late records.
stream make_stream(std::size_t n, std::uint32_t num_keys, std::int64_t step, std::int64_t disorder,
                   unsigned seed)
{
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::uint32_t> key(0, num_keys - 1);
  std::uniform_int_distribution<std::int64_t> jitter(0, disorder);
  std::uniform_real_distribution<double> val(-100, 100);
  stream s;
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t t = static_cast<std::int64_t>(i) * step - jitter(rng);
    if (rng() % 50 == 0) { t -= 20 * disorder; }  // far beyond the bound: late
    s.keys.push_back(key(rng));
    s.ts.push_back(t);
    s.values.push_back(rng() % 40 == 0 ? std::numeric_limits<double>::quiet_NaN() : val(rng));
  }
  return s;
}

struct oracle_window {
  std::vector<double> values;
  std::int64_t nans = 0;
};

struct oracle_result {
  std::map<std::pair<std::int64_t, std::uint32_t>, oracle_window> windows;  // (start, key)
  std::vector<std::size_t> late;                                           // record indices
};

oracle_result oracle(stream const& s, std::int64_t size, std::int64_t offset, std::int64_t ooo)
{
  oracle_result r;
  bool has = false;
  std::int64_t mx = 0;
  for (std::size_t i = 0; i < s.ts.size(); ++i) {
    std::int64_t t     = s.ts[i];
    std::int64_t start = static_cast<std::int64_t>(std::floor(double(t - offset) / double(size))) * size + offset;
    if (has && start + size <= mx - ooo) {
      r.late.push_back(i);
      continue;
    }
    if (!has || t > mx) { mx = t; }
    has   = true;
    auto& w = r.windows[{start, s.keys[i]}];
    if (std::isnan(s.values[i])) {
      ++w.nans;
    } else {
      w.values.push_back(s.values[i]);
    }
  }
  return r;
}

// Columns equal: integers exactly, floats to `rel` relative (NaN equals NaN). The CPU backend
// folds records in arrival order, so its results are bit-identical for any batching; the CUDA
// backend combines per-batch partials, so its sums and moments agree to rounding.
::testing::AssertionResult same_column(column const& a, column const& b, double rel)
{
  if (a.data.index() != b.data.index() || a.size() != b.size()) {
    return ::testing::AssertionFailure() << a.name << ": type or length differs";
  }
  if (auto const* x = std::get_if<std::vector<double>>(&a.data)) {
    auto const& y = std::get<std::vector<double>>(b.data);
    for (std::size_t i = 0; i < x->size(); ++i) {
      double const u = (*x)[i], v = y[i];
      bool const ok = (std::isnan(u) && std::isnan(v)) || std::abs(u - v) <= rel * (1 + std::abs(u));
      if (!ok) { return ::testing::AssertionFailure() << a.name << "[" << i << "]: " << u << " vs " << v; }
    }
    return ::testing::AssertionSuccess();
  }
  if (a.data == b.data) { return ::testing::AssertionSuccess(); }
  return ::testing::AssertionFailure() << a.name << ": values differ";
}

template <typename Backend>
class tumbling_test : public backend_test<Backend> {
 protected:
  pipeline_options options(std::int64_t size, std::int64_t offset, std::int64_t ooo)
  {
    pipeline_options o;
    o.window               = window_spec::tumbling(size, offset);
    o.aggs                 = {agg::count, agg::sum, agg::mean, agg::min, agg::max, agg::var, agg::std, agg::var_pop};
    o.max_out_of_orderness = ooo;
    o.where                = Backend::value;
    o.staging_records      = 1000;  // several staging slots per big push
    return o;
  }
};

TYPED_TEST_SUITE(tumbling_test, backends, backend_names);

TYPED_TEST(tumbling_test, matches_oracle_in_random_batches)
{
  for (unsigned seed : {1u, 2u, 3u}) {
    std::int64_t const size = 1000, offset = 250 * seed, ooo = 300;
    stream s = make_stream(20000 + 37 * seed, 97, 7, 400, seed);
    std::vector<std::size_t> const cuts = random_cuts(s.ts.size(), 3000, seed);
    pipeline p(this->options(size, offset, ooo));
    table late;
    table windows = run_windows(p, s, cuts, &late);
    oracle_result expect = oracle(s, size, offset, ooo);

    ASSERT_EQ(windows.num_rows(), expect.windows.size());
    auto const& key   = windows.template get<std::uint32_t>("key");
    auto const& start = windows.template get<std::int64_t>("window_start");
    auto const& end   = windows.template get<std::int64_t>("window_end");
    auto const& count = windows.template get<std::int64_t>("count");
    auto const& nans  = windows.template get<std::int64_t>("nan_count");
    auto const& sum   = windows.template get<double>("sum");
    auto const& mn    = windows.template get<double>("min");
    auto const& mx    = windows.template get<double>("max");
    auto const& var   = windows.template get<double>("var");
    auto const& varp  = windows.template get<double>("var_pop");
    std::size_t row = 0;
    for (auto const& [k, w] : expect.windows) {  // map order == (start, key) order
      ASSERT_EQ(start[row], k.first) << "row " << row;
      ASSERT_EQ(key[row], k.second) << "row " << row;
      EXPECT_EQ(end[row], k.first + size);
      EXPECT_EQ(count[row], static_cast<std::int64_t>(w.values.size()));
      EXPECT_EQ(nans[row], w.nans);
      double s1 = 0, lo = INFINITY, hi = -INFINITY;
      for (double v : w.values) { s1 += v; lo = std::min(lo, v); hi = std::max(hi, v); }
      EXPECT_NEAR(sum[row], s1, 1e-9 * (1 + std::abs(s1)));
      if (w.values.empty()) {
        EXPECT_TRUE(std::isnan(mn[row]));
      } else {
        EXPECT_EQ(mn[row], lo);
        EXPECT_EQ(mx[row], hi);
        double mean = s1 / w.values.size(), ss = 0;
        for (double v : w.values) ss += (v - mean) * (v - mean);
        EXPECT_NEAR(varp[row], ss / w.values.size(), 1e-9 * (1 + ss));
        if (w.values.size() > 1) { EXPECT_NEAR(var[row], ss / (w.values.size() - 1), 1e-9 * (1 + ss)); }
        else { EXPECT_TRUE(std::isnan(var[row])); }
      }
      ++row;
    }
    ASSERT_EQ(late.num_rows(), expect.late.size());
    auto const& late_ts = late.template get<std::int64_t>("timestamp");
    for (std::size_t i = 0; i < expect.late.size(); ++i) {
      EXPECT_EQ(late_ts[i], s.ts[expect.late[i]]);
    }
    pipeline_stats st = p.stats();
    EXPECT_EQ(st.records_pushed, s.ts.size());
    EXPECT_EQ(st.records_late, expect.late.size());
    EXPECT_EQ(st.records_aggregated + st.records_late, st.records_pushed);
    EXPECT_EQ(st.open_windows, 0u);
  }
}

TYPED_TEST(tumbling_test, chunking_does_not_change_results)
{
  stream s = make_stream(5000, 33, 3, 50, 11);
  table one, one_late;
  {
    pipeline p(this->options(100, 0, 40));
    one = run_windows(p, s, {s.ts.size()}, &one_late);
  }
  for (std::size_t step : {1u, 31u, 32u, 33u, 999u}) {
    std::vector<std::size_t> cuts;
    for (std::size_t at = step; at < s.ts.size() + step; at += step) cuts.push_back(std::min(at, s.ts.size()));
    pipeline p(this->options(100, 0, 40));
    table many_late;
    table many = run_windows(p, s, cuts, &many_late);
    ASSERT_EQ(many.num_rows(), one.num_rows()) << "batch size " << step;
    for (auto const& c : one.columns) {
      double const rel = TypeParam::value == backend::cpu ? 0.0 : 1e-12;
      EXPECT_TRUE(same_column(c, many[c.name], rel)) << "batch size " << step;
    }
    EXPECT_TRUE(many_late["timestamp"].data == one_late["timestamp"].data);
  }
}

TYPED_TEST(tumbling_test, float32_values_and_channels)
{
  pipeline_options o = this->options(10, 0, 0);
  o.channels         = 2;
  o.channel_names    = {"temp", "hum"};
  o.aggs             = {agg::count, agg::mean, agg::max};
  pipeline p(o);
  std::vector<std::uint32_t> keys{1, 2, 1, 1};
  std::vector<std::int64_t> ts{0, 1, 5, 12};
  std::vector<float> v{1.f, 10.f, 2.f, 20.f, 3.f, NAN, 4.f, 40.f};
  p.push(keys.data(), ts.data(), v.data(), keys.size());
  table t = p.flush();
  ASSERT_EQ(t.num_rows(), 3u);
  EXPECT_EQ(t.get<std::uint32_t>("key"), (std::vector<std::uint32_t>{1, 2, 1}));
  EXPECT_EQ(t.get<double>("mean_temp"), (std::vector<double>{2.0, 2.0, 4.0}));
  EXPECT_EQ(t.get<std::int64_t>("count_hum"), (std::vector<std::int64_t>{1, 1, 1}));
  EXPECT_EQ(t.get<std::int64_t>("nan_count_hum"), (std::vector<std::int64_t>{1, 0, 0}));
  EXPECT_EQ(t.get<double>("max_hum"), (std::vector<double>{10.0, 20.0, 40.0}));
}

TYPED_TEST(tumbling_test, negative_timestamps_and_empty_pushes)
{
  pipeline p(this->options(10, 3, 0));
  std::vector<std::uint32_t> keys{7, 7, 7};
  std::vector<std::int64_t> ts{-8, -7, 2};
  std::vector<double> v{1, 2, 3};
  p.push(keys.data(), ts.data(), v.data(), 0);
  p.push(keys.data(), ts.data(), v.data(), 3);
  table t = p.flush();
  EXPECT_EQ(t.get<std::int64_t>("window_start"), (std::vector<std::int64_t>{-17, -7}));
  EXPECT_EQ(t.get<std::int64_t>("count"), (std::vector<std::int64_t>{1, 2}));
}

TYPED_TEST(tumbling_test, rejects_out_of_range_timestamps_and_stays_usable)
{
  pipeline p(this->options(10, 0, 0));
  std::vector<std::uint32_t> keys{1, 1};
  std::vector<std::int64_t> bad{0, std::numeric_limits<std::int64_t>::min()};
  std::vector<double> v{1, 2};
  EXPECT_THROW(p.push(keys.data(), bad.data(), v.data(), 2), invalid_argument);
  std::vector<std::int64_t> good{0, 1};
  p.push(keys.data(), good.data(), v.data(), 2);
  table t = p.flush();
  EXPECT_EQ(t.get<std::int64_t>("count"), (std::vector<std::int64_t>{2}));
  EXPECT_EQ(p.stats().records_rejected, 2u);
  EXPECT_EQ(p.stats().records_pushed, 4u);
}

TEST(options, invalid_options_are_rejected)
{
  pipeline_options o;
  o.where = backend::cpu;
  EXPECT_THROW(pipeline{o}, invalid_argument);  // window size 0
  o.window = window_spec::tumbling(10);
  o.max_out_of_orderness = -1;
  EXPECT_THROW(pipeline{o}, invalid_argument);
  EXPECT_THROW(parse_agg("median_of_doom"), invalid_argument);
  EXPECT_THROW(parse_backend("tpu"), invalid_argument);
}

TEST(options, cuda_request_without_device_is_a_clear_error)
{
  if (cuda_available()) { GTEST_SKIP() << "a CUDA device is present"; }
  pipeline_options o;
  o.window = window_spec::tumbling(10);
  o.where  = backend::cuda;
  EXPECT_THROW(pipeline{o}, backend_unavailable);
  o.where = backend::automatic;
  EXPECT_EQ(pipeline{o}.where(), backend::cpu);
}

}  // namespace
}  // namespace cusense::test
