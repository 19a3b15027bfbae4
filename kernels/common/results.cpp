#include <algorithm>
#include <cmath>
#include <limits>

#include <cusense/detail/results.hpp>

namespace cusense::detail {
namespace {

bool is_int_agg(agg a)
{
  return a == agg::count || a == agg::nan_count || a == agg::argmin_ts || a == agg::argmax_ts;
}

constexpr std::int64_t nat = std::numeric_limits<std::int64_t>::min();

constexpr double no_value() { return std::numeric_limits<double>::quiet_NaN(); }

// The quantile of each entry of output_aggs(options) (0 for other aggregations).
std::vector<double> output_quantiles(pipeline_options const& options)
{
  std::vector<double> q;
  std::size_t qi = 0;
  for (agg a : options.aggs) {
    q.push_back(a == agg::quantile && qi < options.quantiles.size() ? options.quantiles[qi++] : 0.0);
  }
  q.push_back(0.0);  // nan_count, when appended
  return q;
}

std::string output_name(agg a, double q)
{
  return a == agg::quantile ? quantile_name(q) : to_string(a);
}

std::vector<agg> output_aggs(pipeline_options const& options)
{
  std::vector<agg> aggs = options.aggs;
  if (std::find(aggs.begin(), aggs.end(), agg::nan_count) == aggs.end()) {
    aggs.push_back(agg::nan_count);
  }
  return aggs;
}

std::string channel_suffix(pipeline_options const& options, int c)
{
  if (options.channels == 1) { return ""; }
  return "_" + (options.channel_names.empty() ? std::to_string(c) : options.channel_names[c]);
}

std::vector<std::string> value_names(pipeline_options const& options)
{
  std::vector<std::string> names;
  for (int c = 0; c < options.channels; ++c) {
    names.push_back("value" + channel_suffix(options, c));
  }
  return names;
}

// The mean: Welford's running mean, unless infinite values made it NaN (inf - inf); then, as
// numpy and pandas, sum / count (inf, -inf, or NaN when both signs occur).
inline double mean_of(ops::moments const& m)
{
  if (m.count == 0) { return std::numeric_limits<double>::quiet_NaN(); }
  return m.mean != m.mean ? m.sum / static_cast<double>(m.count) : m.mean;
}

// col[i] = finalize(at(i), a) for i in [lo, hi), NaN where at(i).count < min_count, with the
// aggregation's case chosen once per column rather than per value.
template <typename At>
void fill_moment_column(agg a, double* col, At&& at, std::size_t lo, std::size_t hi,
                        std::int64_t min_count)
{
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  auto const fill = [&](auto&& value) {
    for (std::size_t i = lo; i < hi; ++i) {
      ops::moments const& m = at(i);
      col[i]                = m.count >= min_count ? value(m) : nan;
    }
  };
  switch (a) {
    case agg::sum: fill([](ops::moments const& m) { return m.sum; }); break;
    case agg::mean: fill([](ops::moments const& m) { return mean_of(m); }); break;
    // (the lambdas name no local: a constexpr local read in a glvalue ?: would need a capture)
    case agg::min: fill([](ops::moments const& m) { return m.count > 0 ? m.min : no_value(); }); break;
    case agg::max: fill([](ops::moments const& m) { return m.count > 0 ? m.max : no_value(); }); break;
    default: fill([a](ops::moments const& m) { return finalize(m, a); });
  }
}

}  // namespace

double finalize(ops::moments const& m, agg a)
{
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  auto const n         = static_cast<double>(m.count);
  switch (a) {
    case agg::count: return n;
    case agg::nan_count: return static_cast<double>(m.nan_count);
    case agg::sum: return m.sum;
    case agg::mean: return mean_of(m);
    case agg::min: return m.count > 0 ? m.min : nan;
    case agg::max: return m.count > 0 ? m.max : nan;
    case agg::var: return m.count > 1 ? m.m2 / (n - 1) : nan;
    case agg::std: return m.count > 1 ? std::sqrt(m.m2 / (n - 1)) : nan;
    case agg::var_pop: return m.count > 0 ? m.m2 / n : nan;
    case agg::std_pop: return m.count > 0 ? std::sqrt(m.m2 / n) : nan;
    default: return nan;  // needs a full accumulator
  }
  return nan;
}

double finalize(channel_acc const& a, agg x, double q, acc_layout const& layout)
{
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  switch (x) {
    case agg::first: return a.e.n > 0 ? a.e.first_value : nan;
    case agg::last: return a.e.n > 0 ? a.e.last_value : nan;
    case agg::argmin_ts: return a.e.n > 0 ? static_cast<double>(a.e.min_ts) : nan;
    case agg::argmax_ts: return a.e.n > 0 ? static_cast<double>(a.e.max_ts) : nan;
    case agg::quantile: return a.s.quantile(layout.mapping, a.m.count, q, a.m.min, a.m.max);
    default: return finalize(a.m, x);
  }
}

std::vector<std::string> value_column_names(pipeline_options const& options)
{
  std::vector<std::string> names;
  std::vector<agg> const aggs  = output_aggs(options);
  std::vector<double> const qs = output_quantiles(options);
  for (std::size_t i = 0; i < aggs.size(); ++i) {
    for (int c = 0; c < options.channels; ++c) {
      names.push_back(output_name(aggs[i], qs[i]) + channel_suffix(options, c));
    }
  }
  return names;
}

window_table_builder::window_table_builder(pipeline_options const& options)
  : aggs_(output_aggs(options)),
    q_(output_quantiles(options)),
    layout_(acc_layout::of(options)),
    rolling_(options.window.type == window_spec::kind::rolling),
    updates_(options.allowed_lateness > 0 && options.window.type != window_spec::kind::rolling),
    channels_(options.channels),
    names_(value_column_names(options))
{
  for (agg a : aggs_) {
    for (int c = 0; c < channels_; ++c) {
      if (is_int_agg(a)) {
        int_cols_.emplace_back();
      } else {
        float_cols_.emplace_back();
      }
    }
  }
}

void window_table_builder::reserve(std::size_t rows)
{
  reserve_more(keys_, rows);
  reserve_more(starts_, rows);
  reserve_more(ends_, rows);
  for (auto& c : int_cols_) reserve_more(c, rows);
  for (auto& c : float_cols_) reserve_more(c, rows);
  if (updates_) { reserve_more(is_update_, rows); }
}

void window_table_builder::append(std::uint32_t key, std::int64_t start, std::int64_t end,
                                  ops::moments const* acc)
{
  keys_.push_back(key);
  starts_.push_back(start);
  ends_.push_back(end);
  std::size_t ic = 0, fc = 0;
  for (agg a : aggs_) {
    for (int c = 0; c < channels_; ++c) {
      if (is_int_agg(a)) {
        int_cols_[ic++].push_back(a == agg::count       ? acc[c].count
                                  : a == agg::nan_count ? acc[c].nan_count
                                                        : nat);
      } else {
        float_cols_[fc++].push_back(finalize(acc[c], a));
      }
    }
  }
  if (updates_) { is_update_.push_back(0); }
}

template <typename At>
void window_table_builder::fill_moment_rows(std::size_t at, std::size_t n, At&& acc_of, std::int64_t min_count)
{
  for (auto& col : int_cols_) col.resize(at + n);
  for (auto& col : float_cols_) col.resize(at + n);
  // Column by column (one aggregation per loop, no switch per value), over tiles of rows
  // whose accumulators stay in the L1 cache from one column to the next.
  constexpr std::size_t tile = 256;
  for (std::size_t lo = 0; lo < n; lo += tile) {
    std::size_t const hi = std::min(n, lo + tile);
    std::size_t ic = 0, fc = 0;
    for (agg a : aggs_) {
      for (int c = 0; c < channels_; ++c) {
        auto const channel = [&](std::size_t i) -> ops::moments const& { return acc_of(i)[c]; };
        if (is_int_agg(a)) {
          std::int64_t* col = int_cols_[ic++].data() + at;
          if (a == agg::count) {
            for (std::size_t i = lo; i < hi; ++i) col[i] = channel(i).count;
          } else if (a == agg::nan_count) {
            for (std::size_t i = lo; i < hi; ++i) col[i] = channel(i).nan_count;
          } else {
            std::fill(col + lo, col + hi, nat);
          }
        } else {
          fill_moment_column(a, float_cols_[fc++].data() + at, channel, lo, hi, min_count);
        }
      }
    }
  }
}

void window_table_builder::append_window(std::int64_t start, std::int64_t end, std::size_t n,
                                         std::uint32_t const* keys, ops::moments const* const* acc)
{
  keys_.insert(keys_.end(), keys, keys + n);
  starts_.insert(starts_.end(), n, start);
  ends_.insert(ends_.end(), n, end);
  if (updates_) { is_update_.insert(is_update_.end(), n, 0); }
  fill_moment_rows(keys_.size() - n, n, [acc](std::size_t i) { return acc[i]; }, 0);
}

void window_table_builder::append_rows(std::size_t n, std::uint32_t const* keys, std::int64_t const* ts,
                                       ops::moments const* acc, std::int64_t min_periods)
{
  keys_.insert(keys_.end(), keys, keys + n);
  starts_.insert(starts_.end(), ts, ts + n);
  auto const ch = static_cast<std::size_t>(channels_);
  fill_moment_rows(keys_.size() - n, n, [acc, ch](std::size_t i) { return acc + i * ch; }, min_periods);
}

void window_table_builder::append_values(channel_acc const* acc, std::int64_t min_periods)
{
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  std::size_t ic = 0, fc = 0;
  for (std::size_t i = 0; i < aggs_.size(); ++i) {
    agg const a = aggs_[i];
    for (int c = 0; c < channels_; ++c) {
      channel_acc const& x = acc[c];
      bool const valid     = x.m.count >= min_periods;
      switch (a) {
        case agg::count: int_cols_[ic++].push_back(x.m.count); break;
        case agg::nan_count: int_cols_[ic++].push_back(x.m.nan_count); break;
        case agg::argmin_ts: int_cols_[ic++].push_back(valid && x.e.n > 0 ? x.e.min_ts : nat); break;
        case agg::argmax_ts: int_cols_[ic++].push_back(valid && x.e.n > 0 ? x.e.max_ts : nat); break;
        default: float_cols_[fc++].push_back(valid ? finalize(x, a, q_[i], layout_) : nan);
      }
    }
  }
}

void window_table_builder::append(std::uint32_t key, std::int64_t start, std::int64_t end,
                                  channel_acc const* acc, bool is_update)
{
  keys_.push_back(key);
  starts_.push_back(start);
  ends_.push_back(end);
  append_values(acc, 0);
  if (updates_) { is_update_.push_back(is_update ? 1 : 0); }
}

void window_table_builder::append_row(std::uint32_t key, std::int64_t ts, channel_acc const* acc,
                                      std::int64_t min_periods)
{
  keys_.push_back(key);
  starts_.push_back(ts);
  append_values(acc, min_periods);
}

void window_table_builder::truncate(std::size_t rows)
{
  shrink_to(keys_, rows);
  shrink_to(starts_, rows);
  shrink_to(ends_, rows);
  for (auto& c : int_cols_) shrink_to(c, rows);
  for (auto& c : float_cols_) shrink_to(c, rows);
  shrink_to(is_update_, rows);
}

table window_table_builder::finish()
{
  table t;
  t.columns.push_back({"key", std::move(keys_)});
  if (rolling_) {
    t.columns.push_back({"timestamp", std::move(starts_)});
  } else {
    t.columns.push_back({"window_start", std::move(starts_)});
    t.columns.push_back({"window_end", std::move(ends_)});
  }
  std::size_t ic = 0, fc = 0, name = 0;
  for (agg a : aggs_) {
    for (int c = 0; c < channels_; ++c) {
      if (is_int_agg(a)) {
        t.columns.push_back({names_[name++], std::move(int_cols_[ic++])});
      } else {
        t.columns.push_back({names_[name++], std::move(float_cols_[fc++])});
      }
    }
  }
  if (updates_) { t.columns.push_back({"is_update", std::move(is_update_)}); }
  is_update_.clear();
  keys_.clear();
  starts_.clear();
  ends_.clear();
  for (auto& c : int_cols_) c.clear();
  for (auto& c : float_cols_) c.clear();
  return t;
}

table empty_window_table(pipeline_options const& options)
{
  table t = window_table_builder(options).finish();
  if (options.external_watermark) { t.columns.push_back({"position", std::vector<std::int64_t>{}}); }
  return t;
}

late_table_builder::late_table_builder(pipeline_options const& options)
  : channels_(options.channels), names_(value_names(options)), values_(options.channels)
{
}

table late_table_builder::finish()
{
  table t;
  t.columns.push_back({"key", std::move(keys_)});
  t.columns.push_back({"timestamp", std::move(ts_)});
  for (int c = 0; c < channels_; ++c) {
    t.columns.push_back({names_[c], std::move(values_[c])});
  }
  keys_.clear();
  ts_.clear();
  for (auto& v : values_) v.clear();
  return t;
}

}  // namespace cusense::detail
