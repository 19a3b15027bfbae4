#pragma once
// Internal: the full per-(key, window, channel) accumulator of the general CPU engines: moments,
// plus an extent (first/last/argmin_ts/argmax_ts) and a quantile sketch when the aggregations
// need them. Every part is a monoid built from the shared operator structs in ops/.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <cusense/ops/extent.hpp>
#include <cusense/ops/moments.hpp>
#include <cusense/ops/sketch.hpp>
#include <cusense/types.hpp>

namespace cusense::detail {

/// Which parts of channel_acc a pipeline needs.
struct acc_layout {
  bool extent = false;  ///< first, last, argmin_ts, argmax_ts
  bool sketch = false;  ///< quantiles
  ops::ddsketch_mapping mapping = ops::ddsketch_mapping::make(ops::ddsketch_mapping::default_alpha);

  static acc_layout of(pipeline_options const& o)
  {
    acc_layout l;
    for (agg a : o.aggs) {
      l.extent = l.extent || a == agg::first || a == agg::last || a == agg::argmin_ts ||
                 a == agg::argmax_ts;
      l.sketch = l.sketch || a == agg::quantile;
    }
    l.mapping = ops::ddsketch_mapping::make(o.quantile_accuracy);
    return l;
  }
};

/// A DDSketch held as a key-sorted bucket list (see ops/sketch.hpp for the error bound).
class quantile_sketch {
 public:
  void add(ops::ddsketch_mapping const& m, double x)
  {
    std::int32_t const key = m.key(x);
    auto it = std::lower_bound(buckets_.begin(), buckets_.end(), key,
                               [](ops::dd_bucket const& b, std::int32_t k) { return b.key < k; });
    if (it != buckets_.end() && it->key == key) {
      ++it->count;
    } else {
      buckets_.insert(it, ops::dd_bucket{key, 1});
    }
  }

  void merge(quantile_sketch const& o)
  {
    if (o.buckets_.empty()) { return; }
    if (buckets_.empty()) {
      buckets_ = o.buckets_;
      return;
    }
    std::vector<ops::dd_bucket> out(buckets_.size() + o.buckets_.size());
    out.resize(ops::merge_buckets(buckets_.data(), buckets_.size(), o.buckets_.data(),
                                  o.buckets_.size(), out.data()));
    buckets_ = std::move(out);
  }

  double quantile(ops::ddsketch_mapping const& m, std::int64_t total, double q, double lo,
                  double hi) const
  {
    return ops::quantile(m, buckets_.data(), buckets_.size(), total, q, lo, hi);
  }

  std::size_t bytes() const { return buckets_.capacity() * sizeof(ops::dd_bucket); }
  /// Empties the sketch, keeping its capacity.
  void clear() { buckets_.clear(); }
  /// Room for `n` buckets: adding values that take up to `n` does not allocate.
  void reserve(std::size_t n) { buckets_.reserve(n); }

  /// The key-sorted buckets (checkpoints).
  std::vector<ops::dd_bucket> const& buckets() const { return buckets_; }
  /// Replaces the buckets by a key-sorted list with positive counts (checkpoints).
  void assign(std::vector<ops::dd_bucket> b) { buckets_ = std::move(b); }

 private:
  std::vector<ops::dd_bucket> buckets_;
};

struct channel_acc {
  ops::moments m;
  ops::extent e;
  quantile_sketch s;
};

inline void add(channel_acc& a, acc_layout const& l, double x, std::int64_t ts, std::uint64_t seq)
{
  ops::add(a.m, x);
  if (l.extent) { ops::add(a.e, x, ts, seq); }
  if (l.sketch && !ops::is_nan(x)) { a.s.add(l.mapping, x); }
}

/// a = merge(a, b).
inline void merge_into(channel_acc& a, channel_acc const& b, acc_layout const& l)
{
  a.m = ops::merge(a.m, b.m);
  if (l.extent) { a.e = ops::merge(a.e, b.e); }
  if (l.sketch) { a.s.merge(b.s); }
}

inline std::size_t state_bytes(channel_acc const& a) { return sizeof(channel_acc) + a.s.bytes(); }

}  // namespace cusense::detail
