#pragma once
// Internal: what every window engine shares, CPU or CUDA: the watermark clock, the clamped
// lateness horizon, the capacity_error message and typed access to a batch's values. Compiles
// with plain g++ and nvcc (no CUDA headers); minus_clamped is usable in device code. Not part
// of the public API.
#include <cstddef>
#include <cstdint>
#include <string>

#include <cusense/detail/engine.hpp>
#include <cusense/error.hpp>
#include <cusense/ops/macros.hpp>
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
CUSENSE_HD constexpr std::int64_t minus_clamped(std::int64_t w, std::int64_t d)
{
  return w < -max_timestamp + d ? -max_timestamp : w - d;
}

/// The capacity_error message: `open` `what` (e.g. "sessions") are open and the batch of `n`
/// records opens (`up_to`: up to) `added` more, which would exceed max_open_windows = `cap`.
inline std::string capacity_message(std::size_t cap, std::size_t open, std::size_t added,
                                    std::size_t n, char const* what, bool up_to = true)
{
  return "max_open_windows = " + std::to_string(cap) +
         " would be exceeded: " + std::to_string(open) + " " + what +
         " are open and the batch of " + std::to_string(n) + " records opens " +
         (up_to ? "up to " : "") + std::to_string(added) +
         " more; the batch was rejected and the pipeline is unchanged";
}

/// Throws capacity_error (capacity_message) when `open + added` exceeds a cap `cap` != 0.
inline void check_cap(std::size_t cap, std::size_t open, std::size_t added, std::size_t n,
                      char const* what)
{
  if (cap != 0 && open + added > cap) {
    throw capacity_error(capacity_message(cap, open, added, n, what));
  }
}

/// Calls f(values) with the batch's values as float const* or double const*.
template <typename F>
void with_values(record_batch const& batch, F&& f)
{
  if (batch.values_f32) {
    f(static_cast<float const*>(batch.values));
  } else {
    f(static_cast<double const*>(batch.values));
  }
}

}  // namespace cusense::detail
