#pragma once
#include <cstdint>

#include <cusense/ops/macros.hpp>
#include <cusense/ops/moments.hpp>

namespace cusense::ops {

/// Order-dependent summary of one (key, window, channel): the first and last value by event
/// time and the timestamps of the minimum and maximum. A monoid (identity `extent{}`, merge
/// `merge()`), with ties broken by arrival sequence so the result never depends on how the
/// records were grouped:
///   first      smallest (timestamp, seq)          last       largest (timestamp, seq)
///   argmin_ts  smallest value, then smallest seq  argmax_ts  largest value, then smallest seq
/// `seq` is the record's arrival number in the stream. NaN values are skipped.
struct extent {
  std::int64_t n = 0;  ///< non-NaN values; the fields below are valid only when n > 0
  double first_value = 0.0;
  double last_value  = 0.0;
  double min_value   = 0.0;
  double max_value   = 0.0;
  std::int64_t first_ts = 0;
  std::int64_t last_ts  = 0;
  std::int64_t min_ts   = 0;
  std::int64_t max_ts   = 0;
  std::uint64_t first_seq = 0;
  std::uint64_t last_seq  = 0;
  std::uint64_t min_seq   = 0;
  std::uint64_t max_seq   = 0;
};

/// (ta, sa) strictly before (tb, sb) in (timestamp, arrival) order.
CUSENSE_HD bool precedes(std::int64_t ta, std::uint64_t sa, std::int64_t tb, std::uint64_t sb)
{
  return ta < tb || (ta == tb && sa < sb);
}

CUSENSE_HD void add(extent& e, double x, std::int64_t ts, std::uint64_t seq)
{
  if (is_nan(x)) { return; }
  if (e.n == 0) {
    e.first_value = e.last_value = e.min_value = e.max_value = x;
    e.first_ts = e.last_ts = e.min_ts = e.max_ts = ts;
    e.first_seq = e.last_seq = e.min_seq = e.max_seq = seq;
    e.n = 1;
    return;
  }
  ++e.n;
  if (precedes(ts, seq, e.first_ts, e.first_seq)) {
    e.first_value = x, e.first_ts = ts, e.first_seq = seq;
  }
  if (precedes(e.last_ts, e.last_seq, ts, seq)) {
    e.last_value = x, e.last_ts = ts, e.last_seq = seq;
  }
  if (x < e.min_value || (x == e.min_value && seq < e.min_seq)) {
    e.min_value = x, e.min_ts = ts, e.min_seq = seq;
  }
  if (x > e.max_value || (x == e.max_value && seq < e.max_seq)) {
    e.max_value = x, e.max_ts = ts, e.max_seq = seq;
  }
}

CUSENSE_HD extent merge(extent const& a, extent const& b)
{
  if (b.n == 0) { return a; }
  if (a.n == 0) { return b; }
  extent r = a;
  r.n      = a.n + b.n;
  if (precedes(b.first_ts, b.first_seq, r.first_ts, r.first_seq)) {
    r.first_value = b.first_value, r.first_ts = b.first_ts, r.first_seq = b.first_seq;
  }
  if (precedes(r.last_ts, r.last_seq, b.last_ts, b.last_seq)) {
    r.last_value = b.last_value, r.last_ts = b.last_ts, r.last_seq = b.last_seq;
  }
  if (b.min_value < r.min_value || (b.min_value == r.min_value && b.min_seq < r.min_seq)) {
    r.min_value = b.min_value, r.min_ts = b.min_ts, r.min_seq = b.min_seq;
  }
  if (b.max_value > r.max_value || (b.max_value == r.max_value && b.max_seq < r.max_seq)) {
    r.max_value = b.max_value, r.max_ts = b.max_ts, r.max_seq = b.max_seq;
  }
  return r;
}

struct merge_extent {
  CUSENSE_HD extent operator()(extent const& a, extent const& b) const { return merge(a, b); }
};

}  // namespace cusense::ops
