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
  // start + size: (k + 1) * size can overflow although the end itself is in range.
  CUSENSE_HD std::int64_t end(std::int64_t k) const { return start(k) + size; }
  /// Windows with id < closed_before(w) have end <= w: the watermark has passed them.
  CUSENSE_HD std::int64_t closed_before(std::int64_t w) const { return floor_div(w - offset, size); }
};

/// Greatest common divisor of two positive integers.
CUSENSE_HD std::int64_t gcd(std::int64_t a, std::int64_t b)
{
  while (b != 0) {
    std::int64_t const t = a % b;
    a                    = b;
    b                    = t;
  }
  return a;
}

/// Sliding (hopping) windows [k*slide + offset, k*slide + offset + size), cut into panes of
/// p = gcd(size, slide): pane j is [j*p + offset, (j+1)*p + offset). Window k is the union of
/// panes k*s .. k*s + w - 1 (s = slide / p, w = size / p), so a record is added to one pane
/// and each window is the merge of its w panes. Tumbling windows are the case slide == size.
struct sliding {
  std::int64_t size;
  std::int64_t slide;
  std::int64_t offset;
  std::int64_t pane;  ///< gcd(size, slide)

  CUSENSE_HD static sliding make(std::int64_t size, std::int64_t slide, std::int64_t offset)
  {
    return sliding{size, slide, offset, gcd(size, slide)};
  }
  CUSENSE_HD std::int64_t panes_per_window() const { return size / pane; }
  CUSENSE_HD std::int64_t panes_per_slide() const { return slide / pane; }
  CUSENSE_HD std::int64_t pane_id(std::int64_t t) const { return floor_div(t - offset, pane); }
  /// First and last window holding pane j.
  CUSENSE_HD std::int64_t first_window(std::int64_t j) const
  {
    return floor_div(j - panes_per_window(), panes_per_slide()) + 1;
  }
  CUSENSE_HD std::int64_t last_window(std::int64_t j) const { return floor_div(j, panes_per_slide()); }
  CUSENSE_HD std::int64_t first_pane(std::int64_t k) const { return k * panes_per_slide(); }
  CUSENSE_HD std::int64_t start(std::int64_t k) const { return k * slide + offset; }
  CUSENSE_HD std::int64_t end(std::int64_t k) const { return k * slide + offset + size; }
  /// Windows with id < closed_before(w) have end <= w. Needs w - offset - size >= INT64_MIN.
  CUSENSE_HD std::int64_t closed_before(std::int64_t w) const
  {
    return floor_div(w - offset - size, slide) + 1;
  }
};

/// Session windows: per key, records less than `gap` apart (directly or through records between
/// them) share a session spanning [first, last + gap).
struct session {
  std::int64_t gap;

  /// A record at t joins the session [first, last] when it is less than gap from it.
  CUSENSE_HD bool touches(std::int64_t t, std::int64_t first, std::int64_t last) const
  {
    return t > first - gap && t < last + gap;
  }
  CUSENSE_HD std::int64_t end(std::int64_t last) const { return last + gap; }
};

}  // namespace cusense::ops
