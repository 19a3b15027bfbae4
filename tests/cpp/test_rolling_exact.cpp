// Rolling (count) windows on the CPU backend, bit for bit: each row must be the fold of its
// window's records, in (timestamp, arrival) order, through the shared accumulator, whatever
// the batch cuts. Streams with many equal timestamps across keys and batches large enough
// for the engine's radix ordering, two channels, NaNs, late records and a wide time range.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <cusense/cusense.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/ops/moments.hpp>

#include "test_utils.hpp"

namespace {

using namespace cusense;

struct multi_stream {
  std::vector<std::uint32_t> keys;
  std::vector<std::int64_t> ts;
  std::vector<double> values;  // record-major, `channels` per record
};

multi_stream make_multi_stream(std::size_t n, int channels, bool wide_times, unsigned seed)
{
  std::mt19937_64 rng(seed);
  multi_stream s;
  std::int64_t now = 0;
  for (std::size_t i = 0; i < n; ++i) {
    s.keys.push_back(static_cast<std::uint32_t>(rng() % 9) * 1000003u);
    if (wide_times) {
      s.ts.push_back(static_cast<std::int64_t>(rng() % (std::uint64_t{1} << 61)) - (std::int64_t{1} << 60));
    } else {
      now += static_cast<std::int64_t>(rng() % 3);  // many equal timestamps
      s.ts.push_back(now - static_cast<std::int64_t>(rng() % 40));
    }
    for (int c = 0; c < channels; ++c) {
      s.values.push_back(rng() % 10 == 0 ? NAN : static_cast<double>(rng() % 1000) / 7.0 - 50.0);
    }
  }
  return s;
}

bool same_bits(double a, double b)
{
  return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof a) == 0;
}

void check_rolling_rows(std::int64_t rows, int channels, bool extent, bool wide_times,
                        std::vector<std::size_t> const& cuts, multi_stream const& s)
{
  std::int64_t const ooo         = wide_times ? (std::int64_t{1} << 59) : 25;
  std::int64_t const min_periods = std::min<std::int64_t>(2, rows);
  pipeline_options o;
  o.where                = backend::cpu;
  o.window               = window_spec::rolling(rows, min_periods);
  o.channels             = channels;
  o.max_out_of_orderness = ooo;
  o.aggs = {agg::count, agg::nan_count, agg::sum, agg::mean, agg::min, agg::max, agg::var};
  if (extent) {
    o.aggs.push_back(agg::first);
    o.aggs.push_back(agg::last);
  }
  pipeline p(o);
  table got;
  std::size_t begin = 0;
  auto const ch     = static_cast<std::size_t>(channels);
  for (std::size_t end : cuts) {
    p.push(s.keys.data() + begin, s.ts.data() + begin, s.values.data() + begin * ch, end - begin);
    got.append(p.poll());
    begin = end;
  }
  got.append(p.flush());

  // Oracle: the non-late records in (t, key, arrival) order; per key, the last `rows` of them.
  std::vector<std::size_t> kept;
  std::int64_t max_ts = 0;
  for (std::size_t i = 0; i < s.ts.size(); ++i) {
    if (!kept.empty() && s.ts[i] < max_ts - ooo) { continue; }
    max_ts = kept.empty() ? s.ts[i] : std::max(max_ts, s.ts[i]);
    kept.push_back(i);
  }
  std::stable_sort(kept.begin(), kept.end(), [&](std::size_t a, std::size_t b) {
    return std::tie(s.ts[a], s.keys[a]) < std::tie(s.ts[b], s.keys[b]);
  });
  ASSERT_EQ(got.num_rows(), kept.size());
  std::map<std::uint32_t, std::vector<std::size_t>> seen;
  for (std::size_t row = 0; row < kept.size(); ++row) {
    std::size_t const r = kept[row];
    ASSERT_EQ(got.get<std::uint32_t>("key")[row], s.keys[r]);
    ASSERT_EQ(got.get<std::int64_t>("timestamp")[row], s.ts[r]);
    auto& history = seen[s.keys[r]];
    history.push_back(r);
    std::size_t const from = history.size() > static_cast<std::size_t>(rows) ? history.size() - static_cast<std::size_t>(rows) : 0;
    for (std::size_t c = 0; c < ch; ++c) {
      std::string const suffix = channels == 1 ? "" : "_" + std::to_string(c);
      ops::moments m;
      double first = NAN, last = NAN;
      for (std::size_t j = from; j < history.size(); ++j) {
        double const x = s.values[history[j] * ch + c];
        ops::add(m, x);
        if (!std::isnan(x)) {
          if (std::isnan(first)) { first = x; }
          last = x;
        }
      }
      bool const valid = m.count >= min_periods;
      ASSERT_EQ(got.get<std::int64_t>("count" + suffix)[row], m.count) << "row " << row;
      ASSERT_EQ(got.get<std::int64_t>("nan_count" + suffix)[row], m.nan_count) << "row " << row;
      for (agg a : {agg::sum, agg::mean, agg::min, agg::max, agg::var}) {
        double const want = valid ? detail::finalize(m, a) : NAN;
        ASSERT_TRUE(same_bits(got.get<double>(to_string(a) + suffix)[row], want))
          << to_string(a) << suffix << " row " << row;
      }
      if (extent) {
        ASSERT_TRUE(same_bits(got.get<double>("first" + suffix)[row], valid ? first : NAN)) << "row " << row;
        ASSERT_TRUE(same_bits(got.get<double>("last" + suffix)[row], valid ? last : NAN)) << "row " << row;
      }
    }
  }
}

TEST(rolling_exact, rows_are_in_order_folds_for_any_batch_cuts)
{
  for (bool wide_times : {false, true}) {
    for (int channels : {1, 2}) {
      multi_stream const s = make_multi_stream(3000, channels, wide_times, 17u + static_cast<unsigned>(channels));
      for (std::int64_t rows : {1, 3, 10}) {
        for (bool extent : {false, true}) {
          SCOPED_TRACE("rows " + std::to_string(rows) + " channels " + std::to_string(channels) +
                       (extent ? " extent" : "") + (wide_times ? " wide times" : ""));
          check_rolling_rows(rows, channels, extent, wide_times, {s.ts.size()}, s);
          check_rolling_rows(rows, channels, extent, wide_times, test::random_cuts(s.ts.size(), 900, 5), s);
          check_rolling_rows(rows, channels, extent, wide_times, test::random_cuts(s.ts.size(), 20, 6), s);
        }
      }
    }
  }
}

}  // namespace
