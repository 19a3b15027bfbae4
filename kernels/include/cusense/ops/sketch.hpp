#pragma once
// DDSketch (Masson, Rim, Lee, VLDB 2019): a mergeable quantile sketch with a relative-accuracy
// guarantee. Values are counted in logarithmic buckets; two sketches merge by adding the
// counts of equal buckets, which is associative, commutative and exact, so any grouping of
// the records (batches, panes, merged sessions, future multi-GPU partials) gives the same
// sketch, and quantiles are deterministic.
//
// Error bound. With gamma = (1 + alpha) / (1 - alpha), bucket i holds magnitudes in
// (gamma^(i-1), gamma^i] and is represented by 2 gamma^i / (gamma + 1), which lies within a
// relative distance alpha of every magnitude in the bucket. For n non-NaN values
// x(0) <= ... <= x(n-1) and q in [0, 1], the estimate of quantile q is the representative of
// the bucket holding x(r), r = floor(q * (n - 1)) (numpy's method="lower"), clamped to
// [min, max]; hence |estimate - x(r)| <= alpha * |x(r)| (up to one rounding of log()).
// Magnitudes below `min_magnitude` (1e-300) share a zero bucket represented by 0.
//
// Storage is a list of (key, count) buckets sorted by key; keys order like the values they
// stand for (negative values get negative keys, zero 0, positive values positive keys). The
// functions here work on plain arrays so the CPU backend and CUDA kernels share them.
#include <math.h>

#include <cstddef>
#include <cstdint>

#include <cusense/ops/macros.hpp>

namespace cusense::ops {

struct dd_bucket {
  std::int32_t key;
  std::int64_t count;
};

struct ddsketch_mapping {
  static constexpr double default_alpha  = 0.01;
  static constexpr double min_magnitude  = 1e-300;
  static constexpr std::int32_t inf_key  = 2147483647;  ///< +-inf_key: infinite values

  double alpha         = default_alpha;
  double gamma         = 0.0;
  double log_gamma     = 0.0;
  double inv_log_gamma = 0.0;
  std::int32_t bias    = 0;  ///< added to the bucket index so that keys of non-zero values are >= 1

  /// alpha must lie in [1e-4, 0.5].
  CUSENSE_HD static ddsketch_mapping make(double alpha)
  {
    ddsketch_mapping m;
    m.alpha         = alpha;
    m.gamma         = (1.0 + alpha) / (1.0 - alpha);
    m.log_gamma     = log(m.gamma);
    m.inv_log_gamma = 1.0 / m.log_gamma;
    m.bias          = static_cast<std::int32_t>(ceil(-log(min_magnitude) * m.inv_log_gamma)) + 2;
    return m;
  }

  /// Bucket key of a non-NaN value.
  CUSENSE_HD std::int32_t key(double x) const
  {
    double const mag = x < 0 ? -x : x;
    if (mag < min_magnitude) { return 0; }
    std::int32_t k = inf_key;
    if (mag <= 1.7976931348623157e308) {
      k = static_cast<std::int32_t>(ceil(log(mag) * inv_log_gamma)) + bias;
      if (k < 1) { k = 1; }
    }
    return x < 0 ? -k : k;
  }

  /// The value that represents bucket `key`.
  CUSENSE_HD double value(std::int32_t key) const
  {
    if (key == 0) { return 0.0; }
    std::int32_t const k = key < 0 ? -key : key;
    double v = k == inf_key ? HUGE_VAL : 2.0 * exp(static_cast<double>(k - bias) * log_gamma) / (gamma + 1.0);
    return key < 0 ? -v : v;
  }
};

/// Merges two key-sorted bucket lists into `out` (room for na + nb buckets); returns its length.
CUSENSE_HD std::size_t merge_buckets(dd_bucket const* a, std::size_t na, dd_bucket const* b,
                                     std::size_t nb, dd_bucket* out)
{
  std::size_t i = 0, j = 0, o = 0;
  while (i < na && j < nb) {
    if (a[i].key < b[j].key) {
      out[o++] = a[i++];
    } else if (b[j].key < a[i].key) {
      out[o++] = b[j++];
    } else {
      out[o] = a[i++];
      out[o++].count += b[j++].count;
    }
  }
  while (i < na) out[o++] = a[i++];
  while (j < nb) out[o++] = b[j++];
  return o;
}

/// 0-based rank of quantile q among n values: floor(q * (n - 1)).
CUSENSE_HD std::int64_t quantile_rank(std::int64_t n, double q)
{
  double const r = floor(q * static_cast<double>(n - 1));
  if (r <= 0) { return 0; }
  return r >= static_cast<double>(n - 1) ? n - 1 : static_cast<std::int64_t>(r);
}

/// Estimate of quantile q of the `total` values counted in key-sorted `buckets`, clamped to
/// [lo, hi] (the exact minimum and maximum). NaN when total == 0.
CUSENSE_HD double quantile(ddsketch_mapping const& m, dd_bucket const* buckets, std::size_t nb,
                           std::int64_t total, double q, double lo, double hi)
{
  if (total <= 0 || nb == 0) { return NAN; }
  std::int64_t const r = quantile_rank(total, q);
  std::int64_t seen    = 0;
  std::size_t i        = 0;
  for (; i + 1 < nb; ++i) {
    seen += buckets[i].count;
    if (seen > r) { break; }
  }
  double v = m.value(buckets[i].key);
  v        = v < lo ? lo : v;
  return v > hi ? hi : v;
}

}  // namespace cusense::ops
