#include <algorithm>
#include <limits>
#include <type_traits>
#include <string>

#include <cusense/backend.hpp>
#include <cusense/detail/engine.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/pipeline.hpp>

namespace cusense {
namespace {

void validate(pipeline_options const& o)
{
  CUSENSE_EXPECTS(o.window.size > 0, "window size must be positive, got " +
                                       std::to_string(o.window.size) + " ns");
  CUSENSE_EXPECTS(o.window.size <= max_duration, "window size exceeds 2^61 ns");
  CUSENSE_EXPECTS(o.window.offset >= -max_duration && o.window.offset <= max_duration,
                  "window offset must lie within +-2^61 ns");
  CUSENSE_EXPECTS(o.max_out_of_orderness >= 0 && o.max_out_of_orderness <= max_duration,
                  "max_out_of_orderness must lie in [0, 2^61] ns, got " +
                    std::to_string(o.max_out_of_orderness));
  CUSENSE_EXPECTS(!o.aggs.empty(), "at least one aggregation is required");
  CUSENSE_EXPECTS(o.channels >= 1, "channels must be >= 1");
  CUSENSE_EXPECTS(o.channel_names.empty() ||
                    o.channel_names.size() == static_cast<std::size_t>(o.channels),
                  "channel_names has " + std::to_string(o.channel_names.size()) +
                    " names for " + std::to_string(o.channels) + " channels");
  CUSENSE_EXPECTS(o.staging_records >= 1, "staging_records must be >= 1");
  CUSENSE_EXPECTS(o.staging_slots >= 1, "staging_slots must be >= 1");
  auto names = detail::value_column_names(o);
  std::sort(names.begin(), names.end());
  auto dup = std::adjacent_find(names.begin(), names.end());
  CUSENSE_EXPECTS(dup == names.end(), "duplicate output column '" + (dup == names.end() ? "" : *dup) + "'");
}

}  // namespace

pipeline::pipeline(pipeline_options options) : options_(std::move(options))
{
  validate(options_);
  backend_ = resolve_backend(options_.where);
  if (backend_ == backend::cuda) {
#ifdef CUSENSE_WITH_CUDA
    engine_ = detail::make_cuda_engine(options_);
#endif
  } else {
    engine_ = detail::make_cpu_engine(options_);
  }
}

pipeline::~pipeline()                              = default;
pipeline::pipeline(pipeline&&) noexcept            = default;
pipeline& pipeline::operator=(pipeline&&) noexcept = default;

template <typename T>
void pipeline::push_impl(std::uint32_t const* keys, std::int64_t const* timestamps,
                         T const* values, std::size_t n)
{
  if (n == 0) { return; }
  CUSENSE_EXPECTS(keys && timestamps && values, "push: null data pointer");
  pushed_ += n;
  auto [lo, hi] = std::minmax_element(timestamps, timestamps + n);
  if (*lo < -max_timestamp || *hi > max_timestamp) {
    rejected_ += n;
    std::int64_t const bad = *lo < -max_timestamp ? *lo : *hi;
    auto const at          = (*lo < -max_timestamp ? lo : hi) - timestamps;
    throw invalid_argument(
      "timestamp out of range at record " + std::to_string(at) + ": " + std::to_string(bad) +
      " ns (valid: +-2^62 ns around the epoch, years 1824..2116" +
      (bad == std::numeric_limits<std::int64_t>::min() ? "; NaT is not a valid time" : "") +
      "); the batch of " + std::to_string(n) + " records was rejected");
  }
  detail::record_batch batch;
  batch.keys       = keys;
  batch.timestamps = timestamps;
  batch.values     = values;
  batch.values_f32 = std::is_same_v<T, float>;
  batch.n          = n;
  engine_->push(batch);
}

void pipeline::push(std::uint32_t const* keys, std::int64_t const* timestamps,
                    float const* values, std::size_t n)
{
  push_impl(keys, timestamps, values, n);
}

void pipeline::push(std::uint32_t const* keys, std::int64_t const* timestamps,
                    double const* values, std::size_t n)
{
  push_impl(keys, timestamps, values, n);
}

table pipeline::poll()
{
  table t = detail::empty_window_table(options_);
  engine_->drain(&t, nullptr);
  return t;
}

table pipeline::poll_late()
{
  table t;
  engine_->drain(nullptr, &t);
  return t;
}

table pipeline::flush()
{
  engine_->flush();
  return poll();
}

pipeline_stats pipeline::stats()
{
  detail::engine_counters const c = engine_->counters();
  pipeline_stats s;
  s.records_aggregated = c.aggregated;
  s.records_late       = c.late;
  s.records_rejected   = rejected_;
  s.records_pushed     = pushed_;
  s.nan_values         = c.nan_values;
  s.windows_emitted    = c.emitted;
  s.open_windows       = c.open_windows;
  s.watermark          = c.watermark;
  s.has_watermark      = c.has_watermark;
  return s;
}

backend pipeline::where() const { return backend_; }
pipeline_options const& pipeline::options() const { return options_; }

table window_aggregate(std::uint32_t const* keys, std::int64_t const* timestamps,
                       double const* values, std::size_t n, pipeline_options const& options)
{
  pipeline p(options);
  p.push(keys, timestamps, values, n);
  return p.flush();
}

}  // namespace cusense
