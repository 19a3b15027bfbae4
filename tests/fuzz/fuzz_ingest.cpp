// libFuzzer target for record ingestion: the input bytes choose a pipeline configuration (tumbling,
// sliding, session or rolling windows) and a
// sequence of push / poll / poll_late / flush calls with arbitrary keys, timestamps (also out
// of range) and values (NaN, inf, huge). Checked after every call:
//   - records_pushed == aggregated + late + rejected; open windows within max_open_windows;
//   - tumbling: every emitted row is a window of the configured grid, rows ordered by
//     (window_start, key) across polls up to each flush, and after a final flush the counts
//     add up to records_aggregated;
//   - after a final flush no state is open and the late rows number records_late;
//   - without a cap, a twin pipeline fed the same accepted records cut differently into
//     batches emits bit-identical windows and late records (chunking invariance).
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <vector>

#include <cusense/cusense.hpp>
#include <cusense/ops/windows.hpp>

#include "fuzz_check.hpp"

namespace {

using namespace cusense;

std::int64_t pick_duration(FuzzedDataProvider& in, std::int64_t lo)
{
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: return in.ConsumeIntegralInRange<std::int64_t>(lo, 16);
    case 1: return in.ConsumeIntegralInRange<std::int64_t>(lo, 1000);
    case 2: return in.ConsumeIntegralInRange<std::int64_t>(lo, max_duration);
    default: return in.ConsumeBool() ? max_duration : lo;
  }
}

std::int64_t pick_timestamp(FuzzedDataProvider& in, std::int64_t& clock)
{
  switch (in.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: return in.ConsumeIntegral<std::int64_t>();  // anything, mostly out of range
    case 1: {
      static constexpr std::int64_t edges[] = {max_timestamp, -max_timestamp, max_timestamp + 1,
                                               -max_timestamp - 1,
                                               std::numeric_limits<std::int64_t>::min(),
                                               std::numeric_limits<std::int64_t>::max(), 0, -1};
      return edges[in.ConsumeIntegralInRange<int>(0, 7)];
    }
    case 2: clock -= in.ConsumeIntegralInRange<std::int64_t>(0, 200); return clock;  // back
    default: clock += in.ConsumeIntegralInRange<std::int64_t>(0, 20); return clock;  // forward
  }
}

double pick_value(FuzzedDataProvider& in)
{
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0: return std::numeric_limits<double>::quiet_NaN();
    case 1: return in.ConsumeBool() ? std::numeric_limits<double>::infinity()
                                    : -std::numeric_limits<double>::infinity();
    case 2: return in.ConsumeFloatingPoint<double>();
    default: return in.ConsumeIntegralInRange<int>(-100, 100);
  }
}

float to_f32(double x)  // without the undefined behaviour of an out-of-range cast
{
  if (std::isnan(x)) { return std::numeric_limits<float>::quiet_NaN(); }
  if (x > std::numeric_limits<float>::max()) { return std::numeric_limits<float>::infinity(); }
  if (x < -std::numeric_limits<float>::max()) { return -std::numeric_limits<float>::infinity(); }
  return static_cast<float>(x);
}

bool same(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

void expect_identical(table const& a, table const& b)
{
  FUZZ_CHECK(a.columns.size() == b.columns.size());
  FUZZ_CHECK(a.num_rows() == b.num_rows());
  for (std::size_t c = 0; c < a.columns.size(); ++c) {
    FUZZ_CHECK(a.columns[c].name == b.columns[c].name);
    std::visit(
      [&](auto const& va) {
        auto const& vb = std::get<std::decay_t<decltype(va)>>(b.columns[c].data);
        for (std::size_t i = 0; i < va.size(); ++i) {
          if constexpr (std::is_same_v<std::decay_t<decltype(va)>, std::vector<double>>) {
            FUZZ_CHECK(same(va[i], vb[i]));
          } else {
            FUZZ_CHECK(va[i] == vb[i]);
          }
        }
      },
      a.columns[c].data);
  }
}

struct checker {
  pipeline_options const& o;
  bool has_last = false;
  std::int64_t last_start = 0;
  std::uint32_t last_key  = 0;
  std::int64_t counted    = 0;  // count + nan_count of channel 0 over emitted rows
  bool can_count          = false;

  void windows(table const& t)
  {
    auto const& key   = t.get<std::uint32_t>("key");
    auto const& start = t.get<std::int64_t>("window_start");
    auto const& end   = t.get<std::int64_t>("window_end");
    std::string const suffix = o.channels > 1 ? "_" + (o.channel_names.empty() ? std::string("0") : o.channel_names[0]) : "";
    std::vector<std::int64_t> const* count = nullptr;
    for (auto const& c : t.columns) {
      if (c.name == "count" + suffix) { count = &std::get<std::vector<std::int64_t>>(c.data); }
    }
    auto const& nans = t.get<std::int64_t>("nan_count" + suffix);
    can_count        = count != nullptr;
    for (std::size_t i = 0; i < key.size(); ++i) {
      FUZZ_CHECK(end[i] - start[i] == o.window.size);
      FUZZ_CHECK(ops::floor_div(start[i] - o.window.offset, o.window.size) * o.window.size +
                   o.window.offset == start[i]);
      FUZZ_CHECK(!has_last || start[i] > last_start || (start[i] == last_start && key[i] > last_key));
      has_last   = true;
      last_start = start[i];
      last_key   = key[i];
      std::int64_t const n = (count ? (*count)[i] : 0) + nans[i];
      FUZZ_CHECK(!count || n >= 1);
      counted += n;
    }
  }
  void flushed() { has_last = false; }
};

void check_stats(pipeline& p)
{
  pipeline_stats const s = p.stats();
  FUZZ_CHECK(s.records_pushed == s.records_aggregated + s.records_late + s.records_rejected);
  std::size_t const cap = p.options().max_open_windows;
  FUZZ_CHECK(cap == 0 || s.open_windows <= cap);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size)
{
  FuzzedDataProvider in(data, size);
  pipeline_options o;
  std::int64_t const offset = in.ConsumeBool() ? 0 : pick_duration(in, 0) * (in.ConsumeBool() ? -1 : 1);
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 3: {  // sliding, at most 16 windows per record
      std::int64_t const slide = pick_duration(in, 1);
      std::int64_t const per   = in.ConsumeIntegralInRange<std::int64_t>(1, 16);
      o.window = window_spec::sliding(slide <= max_duration / per ? slide * per : slide, slide, offset);
      break;
    }
    case 4: o.window = window_spec::session(pick_duration(in, 1)); break;
    case 5: {
      std::int64_t const rows = in.ConsumeIntegralInRange<std::int64_t>(1, 40);
      o.window = window_spec::rolling(rows, in.ConsumeIntegralInRange<std::int64_t>(-1, rows));
      break;
    }
    default: o.window = window_spec::tumbling(pick_duration(in, 1), offset);
  }
  bool const tumbling = o.window.type == window_spec::kind::tumbling;
  o.max_out_of_orderness = in.ConsumeBool() ? 0 : pick_duration(in, 0);
  o.channels             = in.ConsumeIntegralInRange<int>(1, 3);
  if (o.channels > 1 && in.ConsumeBool()) {
    for (int c = 0; c < o.channels; ++c) o.channel_names.push_back("c" + std::to_string(c));
  }
  auto const mask = in.ConsumeIntegralInRange<unsigned>(1, (1u << 10) - 1);
  o.aggs.clear();
  for (int a = 0; a < 10; ++a) {
    if (mask & (1u << a)) { o.aggs.push_back(static_cast<agg>(a)); }
  }
  o.where            = backend::cpu;
  o.cpu_threads      = in.ConsumeIntegralInRange<int>(1, 3);
  o.max_open_windows = in.ConsumeBool() ? 0 : in.ConsumeIntegralInRange<std::size_t>(1, 24);
  bool const f32     = in.ConsumeBool();

  pipeline_options o2 = o;
  o2.cpu_threads      = 1 + o.cpu_threads % 3;
  std::unique_ptr<pipeline> pp, tp;
  try {
    pp = std::make_unique<pipeline>(o);
    tp = std::make_unique<pipeline>(o2);
  } catch (invalid_argument const&) {
    return 0;
  }
  pipeline& p    = *pp;
  pipeline& twin = *tp;  // same records, other cuts; compared only without a cap
  bool const compare = o.max_open_windows == 0;
  checker chk{p.options()};
  table got_w, got_l, twin_w, twin_l;
  std::int64_t clock = in.ConsumeIntegralInRange<std::int64_t>(-1000, 1000);

  int ops = 0;
  while (in.remaining_bytes() > 0 && ops++ < 64) {
    switch (in.ConsumeIntegralInRange<int>(0, 7)) {
      case 0: {
        table t = p.poll();
        if (tumbling) { chk.windows(t); }
        got_w.append(std::move(t));
        break;
      }
      case 1: got_l.append(p.poll_late()); break;
      case 2: {
        table t = p.flush();
        if (tumbling) { chk.windows(t); }
        chk.flushed();
        got_w.append(std::move(t));
        if (compare) { twin_w.append(twin.flush()); }
        FUZZ_CHECK(p.stats().open_windows == 0);
        break;
      }
      default: {
        auto const n = in.ConsumeIntegralInRange<std::size_t>(0, 48);
        std::vector<std::uint32_t> keys(n);
        std::vector<std::int64_t> ts(n);
        std::vector<double> v64(n * o.channels);
        std::uint32_t const key_range = in.ConsumeBool() ? 4 : 1000;
        for (std::size_t i = 0; i < n; ++i) {
          keys[i] = in.ConsumeBool() ? in.ConsumeIntegralInRange<std::uint32_t>(0, key_range)
                                     : in.ConsumeIntegral<std::uint32_t>();
          ts[i]   = pick_timestamp(in, clock);
          for (int c = 0; c < o.channels; ++c) v64[i * o.channels + c] = pick_value(in);
        }
        std::vector<float> v32(v64.size());
        for (std::size_t i = 0; i < v64.size(); ++i) v32[i] = to_f32(v64[i]);
        bool accepted = true;
        try {
          if (f32) {
            p.push(keys.data(), ts.data(), v32.data(), n);
          } else {
            p.push(keys.data(), ts.data(), v64.data(), n);
          }
        } catch (invalid_argument const&) {
          accepted = false;
        } catch (capacity_error const&) {
          FUZZ_CHECK(o.max_open_windows != 0);
          accepted = false;
        }
        if (accepted && compare) {
          std::size_t const cut = n == 0 ? 0 : in.ConsumeIntegralInRange<std::size_t>(0, n);
          for (auto [a, b] : {std::pair<std::size_t, std::size_t>{0, cut}, {cut, n}}) {
            if (f32) {
              twin.push(keys.data() + a, ts.data() + a, v32.data() + a * o.channels, b - a);
            } else {
              twin.push(keys.data() + a, ts.data() + a, v64.data() + a * o.channels, b - a);
            }
          }
          if (in.ConsumeBool()) { twin_w.append(twin.poll()); }
        }
      }
    }
    check_stats(p);
  }
  table t = p.flush();
  if (tumbling) { chk.windows(t); }
  got_w.append(std::move(t));
  got_l.append(p.poll_late());
  pipeline_stats const s = p.stats();
  FUZZ_CHECK(s.open_windows == 0);
  FUZZ_CHECK(got_l.num_rows() == s.records_late);
  FUZZ_CHECK(!tumbling || !chk.can_count || chk.counted == static_cast<std::int64_t>(s.records_aggregated));
  if (compare) {
    twin_w.append(twin.flush());
    twin_l.append(twin.poll_late());
    expect_identical(got_w, twin_w);
    expect_identical(got_l, twin_l);
  }
  return 0;
}
