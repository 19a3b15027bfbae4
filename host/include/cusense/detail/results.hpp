#pragma once
// Internal: builds result tables from finished accumulators, shared by all backends so the
// finalisation (mean, variance, NaN rules) is defined once.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <cusense/ops/moments.hpp>
#include <cusense/table.hpp>
#include <cusense/types.hpp>

namespace cusense::detail {

/// Final value of one aggregation from a moments accumulator.
double finalize(ops::moments const& m, agg a);

/// Names of the value columns, in output order, for the given options
/// ("mean" or "mean_<channel>"; nan_count always present).
std::vector<std::string> value_column_names(pipeline_options const& options);

/// Collects emitted windows in output order.
class window_table_builder {
 public:
  explicit window_table_builder(pipeline_options const& options);
  void reserve(std::size_t rows);
  /// `acc` points to `channels` accumulators of one window.
  void append(std::uint32_t key, std::int64_t start, std::int64_t end, ops::moments const* acc);
  table finish();

 private:
  std::vector<agg> aggs_;  // with nan_count appended when not requested
  int channels_;
  std::vector<std::string> names_;
  std::vector<std::uint32_t> keys_;
  std::vector<std::int64_t> starts_, ends_;
  std::vector<std::vector<std::int64_t>> int_cols_;
  std::vector<std::vector<double>> float_cols_;
};

/// An empty window table with the right columns.
table empty_window_table(pipeline_options const& options);

/// Collects late records: key, timestamp, value (or value_<channel>) columns.
class late_table_builder {
 public:
  explicit late_table_builder(pipeline_options const& options);
  template <typename T>
  void append(std::uint32_t key, std::int64_t ts, T const* values)
  {
    keys_.push_back(key);
    ts_.push_back(ts);
    for (int c = 0; c < channels_; ++c) values_[c].push_back(static_cast<double>(values[c]));
  }
  std::size_t size() const { return keys_.size(); }
  table finish();

 private:
  int channels_;
  std::vector<std::string> names_;
  std::vector<std::uint32_t> keys_;
  std::vector<std::int64_t> ts_;
  std::vector<std::vector<double>> values_;
};

}  // namespace cusense::detail
