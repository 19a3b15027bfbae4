#include <algorithm>
#include <cmath>
#include <limits>

#include <cusense/detail/results.hpp>

namespace cusense::detail {
namespace {

bool is_int_agg(agg a) { return a == agg::count || a == agg::nan_count; }

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

}  // namespace

double finalize(ops::moments const& m, agg a)
{
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  auto const n         = static_cast<double>(m.count);
  switch (a) {
    case agg::count: return n;
    case agg::nan_count: return static_cast<double>(m.nan_count);
    case agg::sum: return m.sum;
    case agg::mean: return m.count > 0 ? m.mean : nan;
    case agg::min: return m.count > 0 ? m.min : nan;
    case agg::max: return m.count > 0 ? m.max : nan;
    case agg::var: return m.count > 1 ? m.m2 / (n - 1) : nan;
    case agg::std: return m.count > 1 ? std::sqrt(m.m2 / (n - 1)) : nan;
    case agg::var_pop: return m.count > 0 ? m.m2 / n : nan;
    case agg::std_pop: return m.count > 0 ? std::sqrt(m.m2 / n) : nan;
  }
  return nan;
}

std::vector<std::string> value_column_names(pipeline_options const& options)
{
  std::vector<std::string> names;
  for (agg a : output_aggs(options)) {
    for (int c = 0; c < options.channels; ++c) {
      names.push_back(to_string(a) + channel_suffix(options, c));
    }
  }
  return names;
}

window_table_builder::window_table_builder(pipeline_options const& options)
  : aggs_(output_aggs(options)), channels_(options.channels), names_(value_column_names(options))
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
  keys_.reserve(keys_.size() + rows);
  starts_.reserve(starts_.size() + rows);
  ends_.reserve(ends_.size() + rows);
  for (auto& c : int_cols_) c.reserve(c.size() + rows);
  for (auto& c : float_cols_) c.reserve(c.size() + rows);
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
        int_cols_[ic++].push_back(a == agg::count ? acc[c].count : acc[c].nan_count);
      } else {
        float_cols_[fc++].push_back(finalize(acc[c], a));
      }
    }
  }
}

table window_table_builder::finish()
{
  table t;
  t.columns.push_back({"key", std::move(keys_)});
  t.columns.push_back({"window_start", std::move(starts_)});
  t.columns.push_back({"window_end", std::move(ends_)});
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
  keys_.clear();
  starts_.clear();
  ends_.clear();
  for (auto& c : int_cols_) c.clear();
  for (auto& c : float_cols_) c.clear();
  return t;
}

table empty_window_table(pipeline_options const& options)
{
  return window_table_builder(options).finish();
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
