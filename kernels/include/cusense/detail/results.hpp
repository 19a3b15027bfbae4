#pragma once
// Internal: builds result tables from finished accumulators, shared by all backends so the
// finalisation (mean, variance, NaN rules) is defined once.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <cusense/detail/accumulator.hpp>
#include <cusense/ops/moments.hpp>
#include <cusense/table.hpp>
#include <cusense/types.hpp>

namespace cusense::detail {

/// Capacity for `more` elements beyond the size, growing geometrically (repeated small
/// reservations stay amortised O(1)).
template <typename T>
void reserve_more(std::vector<T>& v, std::size_t more)
{
  if (v.size() + more > v.capacity()) { v.reserve(std::max(v.size() + more, 2 * v.capacity())); }
}

/// Drops the elements of `v` from `n` on (none when it holds fewer); never allocates.
template <typename T>
void shrink_to(std::vector<T>& v, std::size_t n)
{
  if (v.size() > n) { v.erase(v.begin() + static_cast<std::ptrdiff_t>(n), v.end()); }
}

/// Final value of one aggregation from a moments accumulator.
double finalize(ops::moments const& m, agg a);
/// Final value of any aggregation from a full accumulator (q: the quantile, for agg::quantile).
double finalize(channel_acc const& a, agg x, double q, acc_layout const& layout);

/// Names of the value columns, in output order, for the given options
/// ("mean" or "mean_<channel>"; nan_count always present).
std::vector<std::string> value_column_names(pipeline_options const& options);

/// Collects emitted windows in output order.
class window_table_builder {
 public:
  explicit window_table_builder(pipeline_options const& options);
  void reserve(std::size_t rows);
  /// `acc` points to `channels` accumulators of one window (moment aggregations only).
  void append(std::uint32_t key, std::int64_t start, std::int64_t end, ops::moments const* acc);
  /// Rows of one window [start, end): key keys[i] with the `channels` accumulators at acc[i]
  /// (moment aggregations only), filled column by column.
  void append_window(std::int64_t start, std::int64_t end, std::size_t n, std::uint32_t const* keys,
                     ops::moments const* const* acc);
  /// `acc` points to `channels` full accumulators of one window; `is_update` fills the
  /// is_update column (present when options.allowed_lateness > 0).
  void append(std::uint32_t key, std::int64_t start, std::int64_t end, channel_acc const* acc,
              bool is_update);
  /// Rolling windows: one row for the record (key, ts); in a channel with fewer than
  /// `min_periods` non-NaN values every aggregation but count and nan_count is NaN (NaT).
  void append_row(std::uint32_t key, std::int64_t ts, channel_acc const* acc,
                  std::int64_t min_periods);
  /// Rolling windows, moment aggregations only: rows for the records (keys[i], ts[i]) with the
  /// `channels` accumulators at acc[i * channels]; NaN (NaT) below min_periods values as in
  /// append_row. Filled column by column.
  void append_rows(std::size_t n, std::uint32_t const* keys, std::int64_t const* ts,
                   ops::moments const* acc, std::int64_t min_periods);
  /// Rows appended since the last finish().
  std::size_t size() const { return keys_.size(); }
  /// Drops the rows from `rows` on, a row half appended included (a push that failed); never
  /// allocates.
  void truncate(std::size_t rows);
  table finish();

 private:
  void append_values(channel_acc const* acc, std::int64_t min_periods);
  // The value columns of rows [at, at + n): acc_of(i) gives the `channels` accumulators of
  // row at + i; a channel with fewer than min_count values gives NaN (count and nan_count
  // excepted).
  template <typename At>
  void fill_moment_rows(std::size_t at, std::size_t n, At&& acc_of, std::int64_t min_count);

  std::vector<agg> aggs_;  // with nan_count appended when not requested
  std::vector<double> q_;  // quantile of each entry of aggs_ (agg::quantile only)
  acc_layout layout_;
  bool rolling_ = false;   // columns key, timestamp instead of key, window_start, window_end
  bool updates_ = false;   // is_update column
  std::vector<std::uint8_t> is_update_;
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
  /// Drops the rows from `rows` on, a row half appended included (a push that failed); never
  /// allocates.
  void truncate(std::size_t rows)
  {
    shrink_to(keys_, rows);
    shrink_to(ts_, rows);
    for (auto& v : values_) shrink_to(v, rows);
  }
  /// Room for `rows` more records, so that appending them cannot fail.
  void reserve(std::size_t rows)
  {
    reserve_more(keys_, rows);
    reserve_more(ts_, rows);
    for (auto& v : values_) reserve_more(v, rows);
  }
  table finish();

 private:
  int channels_;
  std::vector<std::string> names_;
  std::vector<std::uint32_t> keys_;
  std::vector<std::int64_t> ts_;
  std::vector<std::vector<double>> values_;
};

}  // namespace cusense::detail
