#pragma once
// Helpers shared by the general CPU engines (panes, sessions, rolling): record access, the
// watermark, and pools of per-channel accumulators.
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <cusense/detail/accumulator.hpp>
#include <cusense/detail/engine.hpp>
#include <cusense/error.hpp>
#include <cusense/types.hpp>

namespace cusense::detail {

/// The running maximum of event time (arrival order) and the watermark derived from it.
struct watermark_clock {
  std::int64_t ooo    = 0;
  std::int64_t max_ts = 0;
  bool has            = false;

  /// max_ts - ooo (>= -2^62 - 2^61, no overflow).
  std::int64_t value() const { return max_ts - ooo; }
  /// Advances with an accepted record; true when the maximum grew.
  bool see(std::int64_t t)
  {
    if (has && t <= max_ts) { return false; }
    max_ts = t;
    has    = true;
    return true;
  }
};

/// w - d, clamped below at -max_timestamp. Clamping never changes a decision: every window
/// holding a record ends after -max_timestamp, the smallest valid timestamp.
inline std::int64_t minus_clamped(std::int64_t w, std::int64_t d)
{
  return w < -max_timestamp + d ? -max_timestamp : w - d;
}

/// Accumulator slots of `channels` channel_acc each, with a free list.
class acc_pool {
 public:
  explicit acc_pool(int channels) : channels_(channels) {}

  std::uint32_t take()
  {
    if (!free_.empty()) {
      std::uint32_t const s = free_.back();
      free_.pop_back();
      return s;
    }
    auto const s = static_cast<std::uint32_t>(acc_.size() / static_cast<std::size_t>(channels_));
    acc_.resize(acc_.size() + static_cast<std::size_t>(channels_));
    return s;
  }
  void give_back(std::uint32_t s)
  {
    for (int c = 0; c < channels_; ++c) at(s)[c] = channel_acc{};
    free_.push_back(s);
  }
  channel_acc* at(std::uint32_t s) { return acc_.data() + std::size_t{s} * static_cast<std::size_t>(channels_); }
  std::size_t live() const { return acc_.size() / static_cast<std::size_t>(channels_) - free_.size(); }
  /// Bytes held, sketches included (walks every slot).
  std::size_t bytes() const
  {
    std::size_t b = acc_.capacity() * sizeof(channel_acc) + free_.capacity() * sizeof(std::uint32_t);
    for (channel_acc const& a : acc_) b += a.s.bytes();
    return b;
  }

 private:
  int channels_;
  std::vector<channel_acc> acc_;
  std::vector<std::uint32_t> free_;
};

/// Adds the `channels` values of one record to `acc`; returns the number of NaN values.
template <typename T>
std::uint64_t add_record(channel_acc* acc, acc_layout const& layout, T const* v, int channels,
                         std::int64_t ts, std::uint64_t seq)
{
  std::uint64_t nans = 0;
  for (int c = 0; c < channels; ++c) {
    double const x = static_cast<double>(v[c]);
    nans += ops::is_nan(x) ? 1 : 0;
    add(acc[c], layout, x, ts, seq);
  }
  return nans;
}

inline void check_cap(std::size_t cap, std::size_t open, std::size_t added, std::size_t n,
                      char const* what)
{
  if (cap != 0 && open + added > cap) {
    throw capacity_error("max_open_windows = " + std::to_string(cap) + " would be exceeded: " +
                         std::to_string(open) + " " + what + " are open and the batch of " +
                         std::to_string(n) + " records opens up to " + std::to_string(added) +
                         " more; the batch was rejected and the pipeline is unchanged");
  }
}

}  // namespace cusense::detail
