#pragma once
#include <cstdint>

#include <cusense/ops/macros.hpp>

namespace cusense::ops {

/// floor(a / b) for b > 0, also for negative a (C++ division truncates toward zero).
CUSENSE_HD std::int64_t floor_div(std::int64_t a, std::int64_t b)
{
  std::int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

/// Tumbling windows [k*size + offset, (k+1)*size + offset): window k holds a timestamp t iff
/// k == floor((t - offset) / size).
struct tumbling {
  std::int64_t size;
  std::int64_t offset;

  CUSENSE_HD std::int64_t id(std::int64_t t) const { return floor_div(t - offset, size); }
  CUSENSE_HD std::int64_t start(std::int64_t k) const { return k * size + offset; }
  CUSENSE_HD std::int64_t end(std::int64_t k) const { return (k + 1) * size + offset; }
  /// Windows with id < closed_before(w) have end <= w: the watermark has passed them.
  CUSENSE_HD std::int64_t closed_before(std::int64_t w) const { return floor_div(w - offset, size); }
};

}  // namespace cusense::ops
