#pragma once
#include <cstdint>

#include <cusense/ops/macros.hpp>

namespace cusense::ops {

/// Mergeable summary of the values of one (key, window, channel): a monoid whose identity is
/// `moments{}` and whose merge is `merge()`. Variance uses Welford updates and Chan's merge,
/// accumulated in double.
struct moments {
  std::int64_t count     = 0;  ///< non-NaN values
  std::int64_t nan_count = 0;
  double sum             = 0.0;
  double mean            = 0.0;
  double m2              = 0.0;  ///< sum of squared deviations from the mean
  double min             = 0.0;  ///< valid only when count > 0
  double max             = 0.0;
};

CUSENSE_HD bool is_nan(double x) { return x != x; }

CUSENSE_HD void add(moments& a, double x)
{
  if (is_nan(x)) {
    ++a.nan_count;
    return;
  }
  if (a.count == 0) {
    a.min = x;
    a.max = x;
  } else {
    a.min = x < a.min ? x : a.min;
    a.max = x > a.max ? x : a.max;
  }
  ++a.count;
  a.sum += x;
  double const delta = x - a.mean;
  a.mean += delta / static_cast<double>(a.count);
  a.m2 += delta * (x - a.mean);
}

CUSENSE_HD moments merge(moments const& a, moments const& b)
{
  if (b.count == 0) {
    moments r = a;
    r.nan_count += b.nan_count;
    return r;
  }
  if (a.count == 0) {
    moments r = b;
    r.nan_count += a.nan_count;
    return r;
  }
  moments r;
  r.count          = a.count + b.count;
  r.nan_count      = a.nan_count + b.nan_count;
  r.sum            = a.sum + b.sum;
  double const n   = static_cast<double>(r.count);
  double const na  = static_cast<double>(a.count);
  double const nb  = static_cast<double>(b.count);
  double const d   = b.mean - a.mean;
  r.mean           = a.mean + d * (nb / n);
  r.m2             = a.m2 + b.m2 + d * d * (na * nb / n);
  r.min            = a.min < b.min ? a.min : b.min;
  r.max            = a.max > b.max ? a.max : b.max;
  return r;
}

struct merge_moments {
  CUSENSE_HD moments operator()(moments const& a, moments const& b) const { return merge(a, b); }
};

}  // namespace cusense::ops
