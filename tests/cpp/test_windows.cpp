// Sliding, session and rolling windows, order-based aggregations, quantiles and allowed
// lateness on every backend, against naive oracles written here. The CUDA engines run
// tumbling, sliding and rolling windows with every aggregation but quantiles (the CUDA cases
// leave p50 out there); other configurations must be refused with backend_unavailable.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <cusense/cusense.hpp>
#include <cusense/detail/engine_registry.hpp>
#include <cusense/ops/extent.hpp>
#include <cusense/ops/sketch.hpp>

#include "backend_fixture.hpp"
#include "test_utils.hpp"

namespace cusense::test {
namespace {

stream make_stream(std::size_t n, std::uint32_t num_keys, std::int64_t step, std::int64_t disorder,
                   unsigned seed)
{
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::uint32_t> key(0, num_keys - 1);
  std::uniform_int_distribution<std::int64_t> jitter(0, disorder);
  stream s;
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t t = static_cast<std::int64_t>(i) * step - jitter(rng);
    if (rng() % 40 == 0) { t -= 10 * disorder; }
    s.keys.push_back(key(rng));
    s.ts.push_back(t);
    double const v = std::round(std::uniform_real_distribution<double>(-50, 50)(rng));  // ties
    s.values.push_back(rng() % 30 == 0 ? std::numeric_limits<double>::quiet_NaN() : v);
  }
  return s;
}

std::int64_t fdiv(std::int64_t a, std::int64_t b)
{
  return static_cast<std::int64_t>(std::floor(static_cast<double>(a) / static_cast<double>(b)));
}

// Exact statistics of one window from the records (index list, arrival order) it holds.
struct exact {
  std::int64_t count = 0, nans = 0;
  double sum = 0, mn = NAN, mx = NAN, first = NAN, last = NAN, median = NAN;
  std::int64_t argmin = std::numeric_limits<std::int64_t>::min(), argmax = argmin;
};

exact summarize(stream const& s, std::vector<std::size_t> const& recs)
{
  exact e;
  std::vector<double> vals;
  std::size_t fi = 0, li = 0, mi = 0, xi = 0;
  bool any = false;
  for (std::size_t i : recs) {
    double const v = s.values[i];
    if (std::isnan(v)) {
      ++e.nans;
      continue;
    }
    vals.push_back(v);
    e.sum += v;
    if (!any) {
      fi = li = mi = xi = i;
      any = true;
      continue;
    }
    if (s.ts[i] < s.ts[fi]) fi = i;                   // arrival order: ties keep the earlier
    if (s.ts[i] >= s.ts[li]) li = i;                  // ties take the later arrival
    if (v < s.values[mi]) mi = i;
    if (v > s.values[xi]) xi = i;
  }
  e.count = static_cast<std::int64_t>(vals.size());
  if (any) {
    e.first  = s.values[fi];
    e.last   = s.values[li];
    e.argmin = s.ts[mi];
    e.argmax = s.ts[xi];
    std::sort(vals.begin(), vals.end());
    e.mn     = vals.front();
    e.mx     = vals.back();
    e.median = vals[static_cast<std::size_t>(std::floor(0.5 * static_cast<double>(vals.size() - 1)))];
  }
  return e;
}

bool has_column(table const& t, char const* name)
{
  return std::any_of(t.columns.begin(), t.columns.end(), [&](column const& c) { return c.name == name; });
}

void expect_row(table const& t, std::size_t row, exact const& e)
{
  EXPECT_EQ(t.get<std::int64_t>("count")[row], e.count) << "row " << row;
  EXPECT_EQ(t.get<std::int64_t>("nan_count")[row], e.nans) << "row " << row;
  EXPECT_NEAR(t.get<double>("sum")[row], e.sum, 1e-9 * (1 + std::abs(e.sum)));
  auto same = [](double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; };
  EXPECT_TRUE(same(t.get<double>("min")[row], e.mn)) << "row " << row;
  EXPECT_TRUE(same(t.get<double>("max")[row], e.mx)) << "row " << row;
  EXPECT_TRUE(same(t.get<double>("first")[row], e.first)) << "row " << row;
  EXPECT_TRUE(same(t.get<double>("last")[row], e.last)) << "row " << row;
  EXPECT_EQ(t.get<std::int64_t>("argmin_ts")[row], e.argmin) << "row " << row;
  EXPECT_EQ(t.get<std::int64_t>("argmax_ts")[row], e.argmax) << "row " << row;
  if (!has_column(t, "p50")) { return; }  // CUDA cases: quantiles are CPU-only
  double const p50 = t.get<double>("p50")[row];
  if (std::isnan(e.median)) {
    EXPECT_TRUE(std::isnan(p50));
  } else {
    EXPECT_LE(std::abs(p50 - e.median), 0.01 * std::abs(e.median) * (1 + 1e-9)) << "row " << row;
  }
}

template <typename Backend>
class windows_test : public backend_test<Backend> {
 protected:
  pipeline_options options(window_spec w, std::int64_t ooo)
  {
    pipeline_options o;
    o.window = w;
    o.aggs.clear();
    for (char const* a : {"count", "sum", "min", "max", "first", "last", "argmin_ts", "argmax_ts"}) {
      o.add_agg(a);
    }
    // Quantiles are CPU-only: the CUDA cases leave p50 out so that they run on the CUDA engines.
    if (Backend::value != backend::cuda) { o.add_agg("p50"); }
    o.max_out_of_orderness = ooo;
    o.where                = Backend::value;
    return o;
  }
  // On CUDA the configurations the CUDA engine cannot run are refused; true when the test
  // should skip this configuration.
  bool refused_on_cuda(pipeline_options const& o)
  {
    if constexpr (Backend::value == backend::cuda) {
      if (!detail::engine_supports(o, backend::cuda)) {
        EXPECT_THROW(pipeline{o}, backend_unavailable);
        return true;
      }
    }
    (void)o;
    return false;
  }
};

TYPED_TEST_SUITE(windows_test, backends, backend_names);

TYPED_TEST(windows_test, sliding_matches_oracle)
{
  for (auto [size, slide, offset] : {std::tuple{100, 30, 0}, {90, 45, 11}, {40, 40, -7}, {64, 1, 0}}) {
    std::int64_t const ooo = 50;
    pipeline_options o     = this->options(window_spec::sliding(size, slide, offset), ooo);
    o.staging_records      = 257;  // CUDA: several device chunks per push
    if (this->refused_on_cuda(o)) { return; }
    stream s = make_stream(3000, 13, 4, 60, static_cast<unsigned>(size + slide));
    pipeline p(o);
    table late;
    table t = run_windows(p, s, random_cuts(s.ts.size(), 500, 7), &late);
    // Oracle: record i counts in window k iff end_k > watermark just before it.
    std::map<std::pair<std::int64_t, std::uint32_t>, std::vector<std::size_t>> windows;
    std::vector<std::int64_t> late_ts;
    std::int64_t mx = std::numeric_limits<std::int64_t>::min();
    for (std::size_t i = 0; i < s.ts.size(); ++i) {
      std::int64_t const t0 = s.ts[i];
      bool counted          = false;
      for (std::int64_t k = fdiv(t0 - offset - size, slide) + 1; k <= fdiv(t0 - offset, slide); ++k) {
        std::int64_t const start = k * slide + offset;
        if (i == 0 || start + size > mx - ooo) {
          windows[{start, s.keys[i]}].push_back(i);
          counted = true;
        }
      }
      if (!counted) { late_ts.push_back(t0); }
      mx = std::max(mx, t0);
    }
    ASSERT_EQ(t.num_rows(), windows.size());
    std::size_t row = 0;
    for (auto const& [w, recs] : windows) {
      ASSERT_EQ(t.get<std::int64_t>("window_start")[row], w.first);
      ASSERT_EQ(t.get<std::uint32_t>("key")[row], w.second);
      EXPECT_EQ(t.get<std::int64_t>("window_end")[row], w.first + size);
      expect_row(t, row, summarize(s, recs));
      ++row;
    }
    EXPECT_EQ(late.get<std::int64_t>("timestamp"), late_ts);
    EXPECT_FALSE(late_ts.empty());
    EXPECT_EQ(p.stats().open_windows, 0u);
  }
}

TYPED_TEST(windows_test, sessions_merge_across_batches)
{
  pipeline_options o = this->options(window_spec::session(15), 100);
  if (this->refused_on_cuda(o)) { return; }
  pipeline p(o);
  std::vector<std::uint32_t> k{1, 1, 2};
  std::vector<std::int64_t> t{0, 20, 5};
  std::vector<double> v{1, 2, 7};
  p.push(k.data(), t.data(), v.data(), 3);
  EXPECT_EQ(p.stats().open_windows, 3u);
  EXPECT_EQ(p.stats().open_keys, 2u);
  std::uint32_t k1  = 1;
  std::int64_t t1   = 10;
  double v1         = 4;
  p.push(&k1, &t1, &v1, 1);  // bridges [0, 15) and [20, 35)
  EXPECT_EQ(p.stats().open_windows, 2u);
  table out = p.flush();
  EXPECT_EQ(out.get<std::int64_t>("window_start"), (std::vector<std::int64_t>{0, 5}));
  EXPECT_EQ(out.get<std::int64_t>("window_end"), (std::vector<std::int64_t>{35, 20}));
  EXPECT_EQ(out.get<std::int64_t>("count"), (std::vector<std::int64_t>{3, 1}));
  EXPECT_EQ(out.get<double>("first"), (std::vector<double>{1, 7}));
  EXPECT_EQ(out.get<double>("last"), (std::vector<double>{2, 7}));
  EXPECT_EQ(out.get<std::int64_t>("argmax_ts"), (std::vector<std::int64_t>{10, 5}));
}

TYPED_TEST(windows_test, rolling_matches_oracle)
{
  std::int64_t const rows = 4, ooo = 30;
  pipeline_options o      = this->options(window_spec::rolling(rows, 2), ooo);
  o.staging_records       = 97;  // CUDA: several device chunks per push
  if (this->refused_on_cuda(o)) { return; }
  stream s = make_stream(2000, 7, 3, 40, 5);
  pipeline p(o);
  table t = run_windows(p, s, random_cuts(s.ts.size(), 300, 3));
  // Oracle: non-late records (t >= watermark before), sorted per key by (t, arrival).
  std::vector<std::size_t> kept;
  std::int64_t mx = std::numeric_limits<std::int64_t>::min();
  for (std::size_t i = 0; i < s.ts.size(); ++i) {
    if (i > 0 && s.ts[i] < mx - ooo) { continue; }
    kept.push_back(i);
    mx = std::max(mx, s.ts[i]);
  }
  std::map<std::uint32_t, std::vector<std::size_t>> per_key;
  for (std::size_t i : kept) per_key[s.keys[i]].push_back(i);
  std::map<std::tuple<std::int64_t, std::uint32_t, std::size_t>, exact> rows_expected;
  for (auto& [key, recs] : per_key) {
    std::stable_sort(recs.begin(), recs.end(), [&](std::size_t a, std::size_t b) { return s.ts[a] < s.ts[b]; });
    for (std::size_t j = 0; j < recs.size(); ++j) {
      std::vector<std::size_t> win(recs.begin() + static_cast<std::ptrdiff_t>(j + 1 - std::min<std::size_t>(j + 1, rows)),
                                   recs.begin() + static_cast<std::ptrdiff_t>(j + 1));
      std::sort(win.begin(), win.end());  // arrival order for the tie rules
      exact e = summarize(s, win);
      if (e.count < 2) {  // min_periods
        e.sum = NAN, e.mn = e.mx = e.first = e.last = e.median = NAN;
        e.argmin = e.argmax = std::numeric_limits<std::int64_t>::min();
      }
      rows_expected[{s.ts[recs[j]], key, recs[j]}] = e;
    }
  }
  ASSERT_EQ(t.num_rows(), rows_expected.size());
  std::size_t row = 0;
  for (auto const& [k, e] : rows_expected) {
    ASSERT_EQ(t.get<std::int64_t>("timestamp")[row], std::get<0>(k));
    ASSERT_EQ(t.get<std::uint32_t>("key")[row], std::get<1>(k));
    if (std::isnan(e.sum)) {
      EXPECT_TRUE(std::isnan(t.get<double>("sum")[row]));
      EXPECT_EQ(t.get<std::int64_t>("count")[row], e.count);
    } else {
      expect_row(t, row, e);
    }
    ++row;
  }
}

TYPED_TEST(windows_test, chunking_does_not_change_results)
{
  stream s = make_stream(4000, 11, 2, 25, 9);
  for (window_spec w : {window_spec::tumbling(50), window_spec::sliding(50, 20), window_spec::session(7),
                        window_spec::rolling(5, 1)}) {
    for (std::int64_t lateness : {0, 40}) {
      if (lateness && w.type == window_spec::kind::rolling) { continue; }
      pipeline_options o = this->options(w, 20);
      o.allowed_lateness = lateness;
      if (this->refused_on_cuda(o)) { continue; }
      table one, one_late;
      {
        pipeline p(o);
        one = run_windows(p, s, {s.ts.size()}, &one_late);
      }
      ASSERT_GT(one.num_rows(), 0u);
      for (std::size_t step : {1u, 32u, 999u}) {
        pipeline p(o);
        table many_late;
        table many = run_windows(p, s, random_cuts(s.ts.size(), step, static_cast<unsigned>(step)), &many_late);
        ASSERT_EQ(many.num_rows(), one.num_rows()) << to_string(w.type) << " batch " << step;
        for (auto const& c : one.columns) {
          bool const same = c.data == many[c.name].data ||
                            (std::holds_alternative<std::vector<double>>(c.data) && [&] {
                              auto const& a = std::get<std::vector<double>>(c.data);
                              auto const& b = many.get<double>(c.name);
                              for (std::size_t i = 0; i < a.size(); ++i) {
                                if (!(a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])))) return false;
                              }
                              return true;
                            }());
          EXPECT_TRUE(same) << c.name << ", " << to_string(w.type) << ", batch " << step;
        }
        EXPECT_TRUE(many_late["timestamp"].data == one_late["timestamp"].data);
      }
    }
  }
}

TYPED_TEST(windows_test, allowed_lateness_updates_then_frees)
{
  pipeline_options o = this->options(window_spec::tumbling(10), 0);
  o.allowed_lateness = 20;
  if (this->refused_on_cuda(o)) { return; }
  pipeline p(o);
  auto push1 = [&](std::int64_t t, double v) {
    std::uint32_t k = 1;
    p.push(&k, &t, &v, 1);
  };
  push1(1, 5.0);
  push1(15, 1.0);  // closes [0, 10)
  table a = p.poll();
  ASSERT_EQ(a.num_rows(), 1u);
  EXPECT_EQ(a.get<std::uint8_t>("is_update"), (std::vector<std::uint8_t>{0}));
  push1(3, 7.0);  // within the allowed lateness
  table b = p.poll();
  ASSERT_EQ(b.num_rows(), 1u);
  EXPECT_EQ(b.get<std::uint8_t>("is_update"), (std::vector<std::uint8_t>{1}));
  EXPECT_EQ(b.get<std::int64_t>("count"), (std::vector<std::int64_t>{2}));
  EXPECT_EQ(b.get<double>("last"), (std::vector<double>{7.0}));
  EXPECT_EQ(b.get<std::int64_t>("argmax_ts"), (std::vector<std::int64_t>{3}));
  push1(30, 0.0);  // frees [0, 10)
  push1(4, 1.0);   // late now
  EXPECT_EQ(p.poll_late().num_rows(), 1u);
  EXPECT_EQ(p.stats().records_late, 1u);
}

// Allowed lateness and the open-window cap on this backend give the CPU engine's rows (update
// rows included, in the same order), late records, rejected batches and cap messages, also with
// pushes cut into several device chunks.
TYPED_TEST(windows_test, lateness_and_cap_match_the_cpu_engine)
{
  stream s = make_stream(3000, 9, 2, 30, 21);
  auto run = [&](pipeline_options o, std::vector<std::string>& errors, table& late) {
    pipeline p(o);
    table out;
    std::size_t begin = 0;
    for (std::size_t end : random_cuts(s.ts.size(), 200, 5)) {
      try {
        p.push(s.keys.data() + begin, s.ts.data() + begin, s.values.data() + begin, end - begin);
        errors.emplace_back();
      } catch (capacity_error const& e) {
        errors.emplace_back(e.what());
      }
      out.append(p.poll());
      begin = end;
    }
    out.append(p.flush());
    late.append(p.poll_late());
    EXPECT_EQ(p.stats().open_windows, 0u);
    return out;
  };
  for (window_spec w : {window_spec::tumbling(40), window_spec::sliding(60, 20), window_spec::sliding(50, 20)}) {
    for (std::int64_t lateness : {0, 70}) {
      for (std::size_t cap : {0u, 40u}) {
        if (lateness == 0 && cap == 0) { continue; }
        pipeline_options o = this->options(w, 20);
        o.allowed_lateness = lateness;
        o.max_open_windows = cap;
        o.staging_records  = 64;
        if (this->refused_on_cuda(o)) { continue; }
        pipeline_options c = o;
        c.where            = backend::cpu;
        std::vector<std::string> got_err, want_err;
        table got_late, want_late;
        table const got  = run(o, got_err, got_late);
        table const want = run(c, want_err, want_late);
        std::string const what = to_string(w.type) + " lateness " + std::to_string(lateness) +
                                 " cap " + std::to_string(cap);
        EXPECT_EQ(got_err, want_err) << what;
        if (cap != 0) {
          EXPECT_TRUE(std::any_of(want_err.begin(), want_err.end(), [](auto const& e) { return !e.empty(); }))
            << what << ": the cap is never reached";
        }
        if (lateness != 0) {
          auto const& upd = want.get<std::uint8_t>("is_update");
          EXPECT_TRUE(std::any_of(upd.begin(), upd.end(), [](std::uint8_t u) { return u != 0; })) << what;
        }
        ASSERT_EQ(got.num_rows(), want.num_rows()) << what;
        for (auto const& col : want.columns) {
          if (col.name == "sum") {
            auto const& a = got.get<double>("sum");
            auto const& b = want.get<double>("sum");
            for (std::size_t i = 0; i < a.size(); ++i) {
              EXPECT_NEAR(a[i], b[i], 1e-9 * (1 + std::abs(b[i]))) << what << " row " << i;
            }
          } else if (std::holds_alternative<std::vector<double>>(col.data)) {
            auto const& a = got.get<double>(col.name);
            auto const& b = std::get<std::vector<double>>(col.data);
            for (std::size_t i = 0; i < a.size(); ++i) {
              EXPECT_TRUE(a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])))
                << what << " " << col.name << " row " << i;
            }
          } else {
            EXPECT_TRUE(got[col.name].data == col.data) << what << " " << col.name;
          }
        }
        EXPECT_TRUE(got_late["timestamp"].data == want_late["timestamp"].data) << what;
      }
    }
  }
}

TEST(windows, capacity_cap_rejects_whole_batch)
{
  pipeline_options o;
  o.window           = window_spec::session(5);
  o.where            = backend::cpu;
  o.max_out_of_orderness = 1000;
  o.max_open_windows = 4;
  pipeline p(o);
  std::vector<std::uint32_t> k{1, 2, 3, 4, 5, 6};
  std::vector<std::int64_t> t{0, 0, 0, 0, 0, 0};
  std::vector<double> v(6, 1.0);
  p.push(k.data(), t.data(), v.data(), 3);
  EXPECT_THROW(p.push(k.data() + 3, t.data(), v.data(), 3), capacity_error);
  EXPECT_EQ(p.stats().open_windows, 3u);
  EXPECT_EQ(p.stats().records_rejected, 3u);
  EXPECT_EQ(p.flush().num_rows(), 3u);
}

// The CUDA rolling engine gives the CPU engine's rows (sums to rounding), late records and
// stats: several channels, float32, window lengths 1 to longer than a key's stream, small
// device chunks, a flush in the middle of the stream and a capacity cap.
TEST(windows, rolling_cuda_matches_cpu)
{
  if (!cuda_built() || !cuda_available()) { GTEST_SKIP() << "needs the CUDA backend and a device"; }
  std::mt19937_64 rng(17);
  std::size_t const n = 5000;
  int const ch        = 2;
  std::vector<std::uint32_t> keys(n);
  std::vector<std::int64_t> ts(n);
  std::vector<float> vals(n * ch);
  for (std::size_t i = 0; i < n; ++i) {
    keys[i] = static_cast<std::uint32_t>(rng() % 23) * 1000003u;  // sparse, large keys
    ts[i]   = static_cast<std::int64_t>(i) * 2 - static_cast<std::int64_t>(rng() % 30) -
            (rng() % 50 == 0 ? 200 : 0);
    for (int c = 0; c < ch; ++c) {
      vals[i * ch + c] = rng() % 20 == 0 ? std::numeric_limits<float>::quiet_NaN()
                                         : static_cast<float>(static_cast<int>(rng() % 41) - 20);
    }
  }
  for (std::int64_t rows : {1, 3, 50, 1000}) {
    for (std::int64_t min_periods : {std::int64_t{-1}, std::int64_t{0}}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + " min_periods " + std::to_string(min_periods));
      pipeline_options o;
      o.window = window_spec::rolling(rows, min_periods);
      o.aggs.clear();
      for (char const* a : {"count", "sum", "mean", "min", "max", "std", "var_pop", "first", "last",
                            "argmin_ts", "argmax_ts"}) {
        o.add_agg(a);
      }
      o.channels             = ch;
      o.max_out_of_orderness = 40;
      o.staging_records      = 61;
      auto run = [&](backend where, pipeline_stats* st) {
        o.where = where;
        pipeline p(o);
        table out, late;
        std::size_t at = 0;
        std::mt19937 cut(3);
        while (at < n) {
          std::size_t const len = std::min<std::size_t>(n - at, 1 + cut() % 300);
          p.push(keys.data() + at, ts.data() + at, vals.data() + at * ch, len);
          at += len;
          if (at > n / 2 && at - len <= n / 2) { out.append(p.flush()); }
          out.append(p.poll());
        }
        out.append(p.flush());
        late.append(p.poll_late());
        *st = p.stats();
        return std::make_pair(std::move(out), std::move(late));
      };
      pipeline_stats cs, gs;
      auto [cpu, cpu_late] = run(backend::cpu, &cs);
      auto [gpu, gpu_late] = run(backend::cuda, &gs);
      ASSERT_EQ(cpu.num_rows(), gpu.num_rows());
      ASSERT_GT(cpu.num_rows(), 0u);
      EXPECT_TRUE(cpu_late["timestamp"].data == gpu_late["timestamp"].data);
      EXPECT_TRUE(cpu_late["key"].data == gpu_late["key"].data);
      for (column const& c : cpu.columns) {
        if (auto const* a = std::get_if<std::vector<double>>(&c.data)) {
          auto const& b = gpu.get<double>(c.name);
          for (std::size_t r = 0; r < a->size(); ++r) {
            double const x = (*a)[r], y = b[r];
            ASSERT_TRUE((std::isnan(x) && std::isnan(y)) || std::abs(x - y) <= 1e-9 * (1 + std::abs(x)))
              << c.name << " row " << r << ": " << x << " vs " << y;
          }
        } else {
          EXPECT_TRUE(c.data == gpu[c.name].data) << c.name;
        }
      }
      EXPECT_EQ(cs.records_aggregated, gs.records_aggregated);
      EXPECT_EQ(cs.records_late, gs.records_late);
      EXPECT_GT(cs.records_late, 0u);
      EXPECT_EQ(cs.nan_values, gs.nan_values);
      EXPECT_EQ(cs.windows_emitted, gs.windows_emitted);
      EXPECT_EQ(cs.open_windows, gs.open_windows);
      EXPECT_EQ(cs.open_keys, gs.open_keys);
      EXPECT_EQ(cs.watermark, gs.watermark);
    }
  }
  // open state and the capacity cap, counted as on the CPU
  for (backend where : {backend::cpu, backend::cuda}) {
    pipeline_options o;
    o.window               = window_spec::rolling(3);
    o.aggs                 = {agg::count};
    o.max_out_of_orderness = 1000;
    o.max_open_windows     = 10;
    o.where                = where;
    pipeline p(o);
    std::vector<std::uint32_t> k{1, 2, 1, 3, 1};
    std::vector<std::int64_t> t{0, 1, 2, 3, 4};
    std::vector<double> v(5, 1.0);
    p.push(k.data(), t.data(), v.data(), 5);
    EXPECT_EQ(p.stats().open_windows, 5u);
    EXPECT_EQ(p.stats().open_keys, 3u);
    std::vector<std::uint32_t> k2(6, 4);
    std::vector<std::int64_t> t2{5000, 5001, 5002, 5003, 5004, 5005};
    EXPECT_THROW(p.push(k2.data(), t2.data(), v.data(), 6), capacity_error);
    EXPECT_EQ(p.stats().records_rejected, 6u);
    p.push(k2.data(), t2.data(), v.data(), 5);  // emits the first five: 4 kept as history, 5 pending
    EXPECT_EQ(p.stats().open_windows, 9u);
    EXPECT_EQ(p.stats().open_keys, 4u);
    EXPECT_EQ(p.poll().get<std::int64_t>("count"), (std::vector<std::int64_t>{1, 1, 2, 1, 3}));
    EXPECT_EQ(p.flush().num_rows(), 5u);
    EXPECT_EQ(p.stats().open_windows, 0u);
    EXPECT_EQ(p.stats().open_keys, 0u);
  }
}

TEST(windows, cuda_engine_support_and_automatic_backend)
{
  pipeline_options o;
  o.window = window_spec::tumbling(10);
  EXPECT_TRUE(detail::engine_supports(o, backend::cuda));
  std::string why;
  o.window = window_spec::sliding(10, 5);
  for (char const* a : {"first", "last", "argmin_ts", "argmax_ts"}) o.add_agg(a);
  EXPECT_TRUE(detail::engine_supports(o, backend::cuda, &why));
  EXPECT_EQ(why, "");
  o.window           = window_spec::session(10);
  o.allowed_lateness = 5;
  o.max_open_windows = 100;
  EXPECT_TRUE(detail::engine_supports(o, backend::cuda, &why));
  EXPECT_EQ(why, "");
  o.add_agg("p50");
  EXPECT_FALSE(detail::engine_supports(o, backend::cuda, &why));
  EXPECT_EQ(why, "aggregation 'p50'");
  o.aggs.pop_back();
  o.quantiles.pop_back();
  o.allowed_lateness = 0;
  o.max_open_windows = 0;
  o.window = window_spec::rolling(3);
  EXPECT_TRUE(detail::engine_supports(o, backend::cuda, &why));
  EXPECT_EQ(why, "");
  o.add_agg("p90");
  EXPECT_FALSE(detail::engine_supports(o, backend::cuda, &why));
  EXPECT_EQ(why, "aggregation 'p90'");
  o.aggs.pop_back();
  o.quantiles.pop_back();
  o.window           = window_spec::sliding(10, 5);
  o.max_open_windows = 100;
  EXPECT_TRUE(detail::engine_supports(o, backend::cuda, &why));
  o.max_open_windows = 0;
  o.allowed_lateness = 5;
  EXPECT_TRUE(detail::engine_supports(o, backend::cuda, &why));
  o.allowed_lateness = 0;
  o.window = window_spec::tumbling(10);
  o.add_agg("p99");
  EXPECT_FALSE(detail::engine_supports(o, backend::cuda, &why));
  EXPECT_EQ(why, "aggregation 'p99'");
  o.where = backend::automatic;
  EXPECT_EQ(pipeline{o}.where(), backend::cpu);
  o.where = backend::cuda;
  EXPECT_THROW(pipeline{o}, backend_unavailable);
}

TEST(windows, options_are_validated)
{
  pipeline_options o;
  o.where  = backend::cpu;
  o.window = window_spec::sliding(10, 20);
  EXPECT_THROW(pipeline{o}, invalid_argument);
  o.window = window_spec::session(0);
  EXPECT_THROW(pipeline{o}, invalid_argument);
  o.window = window_spec::rolling(0);
  EXPECT_THROW(pipeline{o}, invalid_argument);
  o.window           = window_spec::rolling(3);
  o.allowed_lateness = 5;
  EXPECT_THROW(pipeline{o}, invalid_argument);
  EXPECT_THROW(parse_quantile("p101"), invalid_argument);
  EXPECT_DOUBLE_EQ(parse_quantile("p99.9"), 0.999);
  EXPECT_EQ(quantile_name(parse_quantile("p99.9")), "p99.9");
  EXPECT_EQ(quantile_name(0.5), "p50");
}

TEST(ops, extent_merge_is_associative_with_arrival_ties)
{
  ops::extent a, b, c;
  ops::add(a, 1.0, 5, 0);
  ops::add(b, 1.0, 5, 1);  // same time and value, later arrival
  ops::add(c, 0.5, 9, 2);
  ops::extent const l = ops::merge(ops::merge(a, b), c);
  ops::extent const r = ops::merge(a, ops::merge(b, c));
  ops::extent const s = ops::merge(ops::merge(c, b), a);
  for (ops::extent const* e : {&l, &r, &s}) {
    EXPECT_EQ(e->first_seq, 0u);
    EXPECT_EQ(e->last_seq, 2u);
    EXPECT_EQ(e->min_ts, 9);
    EXPECT_EQ(e->max_seq, 0u);  // equal maxima: the earliest arrival
  }
}

TEST(ops, ddsketch_relative_error_bound)
{
  ops::ddsketch_mapping const m = ops::ddsketch_mapping::make(0.01);
  std::mt19937_64 rng(3);
  std::lognormal_distribution<double> d(0, 4);
  for (int i = 0; i < 100000; ++i) {
    double const x = (i % 2 ? 1 : -1) * d(rng);
    double const r = m.value(m.key(x));
    ASSERT_LE(std::abs(r - x), 0.01 * std::abs(x) * (1 + 1e-9)) << x;
  }
  EXPECT_EQ(m.key(0.0), 0);
  EXPECT_LT(m.key(-2.0), m.key(-1.0));
  EXPECT_LT(m.key(-1.0), m.key(0.0));
  EXPECT_LT(m.key(1.0), m.key(2.0));
}

}  // namespace
}  // namespace cusense::test

TEST(Table, FlagsGivesBoolsOfAFlagColumnAndRefusesOthers)
{
  cusense::table t;
  t.columns.push_back({"is_update", std::vector<std::uint8_t>{0, 1, 1}});
  t.columns.push_back({"count", std::vector<std::int64_t>{1, 2, 3}});
  EXPECT_EQ(t.flags("is_update"), (std::vector<bool>{false, true, true}));
  EXPECT_THROW(t.flags("count"), cusense::invalid_argument);
  EXPECT_THROW(t.flags("missing"), cusense::invalid_argument);
}
