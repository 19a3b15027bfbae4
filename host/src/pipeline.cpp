#include <algorithm>
#include <limits>
#include <new>
#include <type_traits>
#include <string>

#include <cusense/backend.hpp>
#include <cusense/detail/scoped_use.hpp>
#include <cusense/detail/detector_runner.hpp>
#include <cusense/detail/engine.hpp>
#include <cusense/detail/engine_registry.hpp>
#include <cusense/detail/host_parallel.hpp>
#include <cusense/detail/memory_budget.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/pipeline.hpp>

namespace cusense {
namespace {

void validate_window(pipeline_options const& o)
{
  validate(o.window);
  CUSENSE_EXPECTS(
    o.window.type != window_spec::kind::rolling || o.allowed_lateness == 0,
    "allowed_lateness does not apply to rolling windows (rows are final when emitted)");
  auto const nq = static_cast<std::size_t>(std::count(o.aggs.begin(), o.aggs.end(), agg::quantile));
  CUSENSE_EXPECTS(nq == o.quantiles.size(), std::to_string(nq) + " quantile aggregations but " +
                                              std::to_string(o.quantiles.size()) +
                                              " entries in quantiles");
  for (double q : o.quantiles) {
    CUSENSE_EXPECTS(q >= 0.0 && q <= 1.0, "quantiles must lie in [0, 1], got " + std::to_string(q));
  }
  CUSENSE_EXPECTS(
    o.quantile_accuracy >= 1e-4 && o.quantile_accuracy <= 0.5,
    "quantile_accuracy must lie in [1e-4, 0.5], got " + std::to_string(o.quantile_accuracy));
}

// Checks that apply with or without a window.
void validate_stream(pipeline_options const& o)
{
  CUSENSE_EXPECTS(o.max_out_of_orderness >= 0 && o.max_out_of_orderness <= max_duration,
                  "max_out_of_orderness must lie in [0, 2**61] ns (about 73 years), got " +
                    std::to_string(o.max_out_of_orderness) + " ns");
  CUSENSE_EXPECTS(o.allowed_lateness >= 0 && o.allowed_lateness <= max_duration,
                  "allowed_lateness must lie in [0, 2**61] ns (about 73 years), got " +
                    std::to_string(o.allowed_lateness) + " ns");
  CUSENSE_EXPECTS(o.channels >= 1 && o.channels <= max_channels,
                  "channels must lie in [1, " + std::to_string(max_channels) + "], got " +
                    std::to_string(o.channels));
  CUSENSE_EXPECTS(o.cpu_threads >= 0 && o.cpu_threads <= max_cpu_threads,
                  "cpu_threads must lie in [1, " + std::to_string(max_cpu_threads) +
                    "] (0 = automatic), got " + std::to_string(o.cpu_threads));
  CUSENSE_EXPECTS(o.on_nan == nan_policy::skip || o.on_nan == nan_policy::raise,
                  "nan_policy must be skip or raise");
  detail::validate_limits(o);
  CUSENSE_EXPECTS(
    o.channel_names.empty() || o.channel_names.size() == static_cast<std::size_t>(o.channels),
    "channel_names has " + std::to_string(o.channel_names.size()) + " names for " +
      std::to_string(o.channels) + " channels");
}

void validate(pipeline_options const& o)
{
  validate_stream(o);
  if (!o.windowed) {
    CUSENSE_EXPECTS(!o.detectors.empty(), "a pipeline without a window needs detectors");
    return;
  }
  validate_window(o);
  CUSENSE_EXPECTS(!o.aggs.empty(), "at least one aggregation is required");
  CUSENSE_EXPECTS(o.staging_records >= 1, "staging_records must be >= 1");
  CUSENSE_EXPECTS(o.staging_slots >= 1 && o.staging_slots <= max_staging_slots,
                  "staging_slots must lie in [1, " + std::to_string(max_staging_slots) + "], got " +
                    std::to_string(o.staging_slots));
  auto names = detail::value_column_names(o);
  std::sort(names.begin(), names.end());
  auto dup = std::adjacent_find(names.begin(), names.end());
  CUSENSE_EXPECTS(dup == names.end(),
                  "duplicate output column '" + (dup == names.end() ? "" : *dup) + "'");
}

// Moves the rows of `held` (outputs kept by a checkpoint or restore) to the end of `t`.
void take_held(table& t, table& held)
{
  if (held.columns.empty()) { return; }
  t.append(std::move(held));
  held.columns.clear();
}

// The rows held back (held) followed by the freshly drained rows (more).
table held_then(table& held, table&& more)
{
  table t;
  take_held(t, held);
  take_held(t, more);
  return t;
}

}  // namespace

pipeline::pipeline(pipeline_options options) : options_(std::move(options))
{
  validate(options_);
  backend_ = resolve_backend(options_.where);
  std::string why;
  if (options_.windowed && backend_ == backend::cuda &&
      !detail::engine_supports(options_, backend::cuda, &why)) {
    if (options_.where == backend::cuda) {
      throw backend_unavailable(why +
                                " is not yet supported on the CUDA backend; use backend='cpu'");
    }
    backend_ = backend::cpu;  // automatic: the CPU engines run every configuration
  }
  if (!options_.detectors.empty()) {
    detectors_ = std::make_unique<detail::detector_runner>(options_, backend_);
  }
  if (options_.windowed) { engine_ = detail::make_engine(options_, backend_); }
}

pipeline::~pipeline()                              = default;
pipeline::pipeline(pipeline&&) noexcept            = default;
pipeline& pipeline::operator=(pipeline&&) noexcept = default;

template <typename T>
void pipeline::push_impl(std::uint32_t const* keys, std::int64_t const* timestamps, T const* values,
                         std::size_t n, std::int64_t const* positions, watermark_steps const* steps)
{
  CUSENSE_EXPECTS((steps != nullptr) == options_.external_watermark,
                  options_.external_watermark
                    ? "push: this pipeline takes external watermarks (options.external_watermark): "
                      "give the records' positions and the watermark steps"
                    : "push: positions and watermark steps are for pipelines with "
                      "options.external_watermark");
  if (n == 0 && (steps == nullptr || steps->count == 0)) { return; }
  CUSENSE_EXPECTS(n == 0 || (keys && timestamps && values), "push: null data pointer");
  scoped_use use(*this);
  pushed_ += n;
  if (steps) {
    try {
      check_external(positions, *steps, n);
    } catch (invalid_argument const&) {
      rejected_ += n;
      throw;
    } catch (std::bad_alloc const&) {  // its messages are built as it goes
      rejected_ += n;
      throw out_of_memory("out of host memory while pushing a batch of " + std::to_string(n) +
                          " records; the batch was rejected and the pipeline is unchanged");
    }
  }
  // Range check: a branch-free pass over the values; positions only on the error path.
  std::int64_t tmin = 0, tmax = 0;
  if (n != 0) { detail::parallel_minmax(timestamps, n, tmin, tmax); }
  if (tmin < -max_timestamp || tmax > max_timestamp) {
    auto [lo, hi] = std::minmax_element(timestamps, timestamps + n);
    rejected_ += n;
    std::int64_t const bad = *lo < -max_timestamp ? *lo : *hi;
    auto const at          = (*lo < -max_timestamp ? lo : hi) - timestamps;
    throw invalid_argument(
      "timestamp out of range at record " + std::to_string(at) + ": " + std::to_string(bad) +
      " ns (valid: +-2^62 ns around the epoch, years 1824..2116" +
      (bad == std::numeric_limits<std::int64_t>::min() ? "; NaT is not a valid time" : "") +
      "); the batch of " + std::to_string(n) + " records was rejected");
  }
  if (options_.on_nan == nan_policy::raise) {
    std::size_t const count = n * static_cast<std::size_t>(options_.channels);
    T const* nan            = std::find_if(values, values + count, [](T v) { return v != v; });
    if (nan != values + count) {
      rejected_ += n;
      throw invalid_argument(
        "value is NaN at index " + std::to_string((nan - values) / options_.channels) +
        " (nan_policy='raise'); batch of " + std::to_string(n) + " records rejected");
    }
  }
  detail::record_batch batch;
  batch.keys       = keys;
  batch.timestamps = timestamps;
  batch.values     = values;
  batch.values_f32 = std::is_same_v<T, float>;
  batch.n          = n;
  // All or nothing: the detectors plan the batch and reserve what it needs, and the memory
  // budget is checked, before the window engine applies it (an engine that throws has changed
  // nothing); the detectors then apply their plan without allocating. A failure before that
  // point leaves the pipeline unchanged: the batch counts as rejected.
  try {
    std::uint64_t window_growth = 0;
    if (detectors_) { detectors_->plan(keys, timestamps, values, batch.values_f32, n, positions, steps); }
    if (options_.memory_budget_bytes > 0) {
      window_growth = n * detail::window_state_bound_per_record(options_);
      std::uint64_t const dets_now   = detectors_ ? detectors_->counters().state_bytes : 0;
      std::uint64_t const dets_after = detectors_ ? detectors_->planned_state_bytes() : 0;
      if (!window_bytes_known_ ||
          window_bytes_bound_ + window_growth + dets_after > options_.memory_budget_bytes) {
        window_bytes_bound_ = engine_ ? engine_->counters().state_bytes : 0;  // measure
        window_bytes_known_ = true;
      }
      detail::check_memory_budget(options_, window_bytes_bound_, window_growth, dets_now, dets_after, n);
    }
    if (detectors_) { detectors_->reserve(); }
    if (engine_ && steps) {
      engine_->push_external(batch, positions, *steps);
    } else if (engine_) {
      engine_->push(batch);
    }
    window_bytes_bound_ += window_growth;
  } catch (capacity_error const&) {
    rejected_ += n;
    throw;
  } catch (out_of_memory const&) {
    rejected_ += n;
    throw;
  } catch (std::bad_alloc const&) {
    rejected_ += n;
    throw out_of_memory("out of host memory while pushing a batch of " + std::to_string(n) +
                        " records; the batch was rejected and the pipeline is unchanged");
  }
  if (detectors_) { detectors_->apply(keys, timestamps, values, batch.values_f32, n, positions, steps); }
  if (steps) {
    if (n != 0) { last_position_ = positions[n - 1]; }
    if (steps->count != 0) {
      last_position_ = std::max(last_position_, steps->position[steps->count - 1]);
    }
  }
}

void pipeline::check_external(std::int64_t const* positions, watermark_steps const& steps,
                              std::size_t n)
{
  auto const fail = [&](std::string const& why) {
    throw invalid_argument("push: " + why + "; the batch of " + std::to_string(n) +
                           " records was rejected");
  };
  if (n != 0 && positions == nullptr) { fail("positions are missing"); }
  if (steps.count != 0 && (!steps.at || !steps.watermark || !steps.position)) {
    fail("watermark steps are missing");
  }
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t const prev = i == 0 ? last_position_ : positions[i - 1];
    if (positions[i] <= prev) {
      fail("record positions must increase strictly (also across pushes): position " +
           std::to_string(positions[i]) + " of record " + std::to_string(i) + " follows " +
           std::to_string(prev));
    }
  }
  detail::engine_counters c = engine_ ? engine_->counters() : detail::engine_counters{};
  if (!engine_ && detectors_) {
    detail::detector_counters const d = detectors_->counters();
    c.has_watermark                   = d.has_watermark;
    c.watermark                       = d.watermark;
  }
  std::int64_t const ooo = options_.max_out_of_orderness;
  for (std::size_t s = 0; s < steps.count; ++s) {
    std::int64_t const at = steps.at[s];
    std::int64_t const w  = steps.watermark[s];
    std::int64_t const p  = steps.position[s];
    std::string const step = "watermark step " + std::to_string(s);
    if (at < 0 || static_cast<std::size_t>(at) > n || (s > 0 && at < steps.at[s - 1])) {
      fail(step + ": at = " + std::to_string(at) + " must lie in [0, " + std::to_string(n) +
           "] and not decrease");
    }
    if (w < -max_timestamp - ooo || w > max_timestamp - ooo) {
      fail(step + ": watermark " + std::to_string(w) +
           " ns is outside the valid range (a time in +-2^62 ns minus max_out_of_orderness)");
    }
    bool const has_prev       = s > 0 || c.has_watermark;
    std::int64_t const prev_w = s > 0 ? steps.watermark[s - 1] : c.watermark;
    if (has_prev && w <= prev_w) {
      fail(step + ": watermarks must increase strictly, got " + std::to_string(w) + " after " +
           std::to_string(prev_w));
    }
    std::int64_t const prev_p = s > 0 ? std::max(steps.position[s - 1], at > 0 ? positions[at - 1] : last_position_)
                                      : (at > 0 ? positions[at - 1] : last_position_);
    if (p <= prev_p || (static_cast<std::size_t>(at) < n && p >= positions[at])) {
      fail(step + ": its position " + std::to_string(p) +
           " must lie between the positions of the records and steps around it");
    }
  }
}

void pipeline::push(std::uint32_t const* keys, std::int64_t const* timestamps, float const* values,
                    std::size_t n)
{
  push_impl(keys, timestamps, values, n);
}

void pipeline::push(std::uint32_t const* keys, std::int64_t const* timestamps, double const* values,
                    std::size_t n)
{
  push_impl(keys, timestamps, values, n);
}

void pipeline::push(std::uint32_t const* keys, std::int64_t const* timestamps, float const* values,
                    std::size_t n, std::int64_t const* positions, watermark_steps const& steps)
{
  push_impl(keys, timestamps, values, n, positions, &steps);
}

void pipeline::push(std::uint32_t const* keys, std::int64_t const* timestamps, double const* values,
                    std::size_t n, std::int64_t const* positions, watermark_steps const& steps)
{
  push_impl(keys, timestamps, values, n, positions, &steps);
}

table pipeline::poll()
{
  scoped_use use(*this);
  table t = detail::empty_window_table(options_);
  take_held(t, held_windows_);
  if (engine_) { engine_->drain(&t, nullptr); }
  return t;
}

table pipeline::poll_late()
{
  scoped_use use(*this);
  table t;
  take_held(t, held_late_);
  if (engine_) { engine_->drain(nullptr, &t); }
  return t;
}

table pipeline::poll_scores()
{
  scoped_use use(*this);
  CUSENSE_EXPECTS(detectors_ && detectors_->has_scorers(),
                  "poll_scores: the pipeline has no scoring detector (options.detectors)");
  return held_then(held_scores_, detectors_->drain_scores());
}

table pipeline::poll_silence()
{
  scoped_use use(*this);
  CUSENSE_EXPECTS(detectors_ && detectors_->has_silence(),
                  "poll_silence: the pipeline has no silence detector (options.detectors)");
  return held_then(held_silence_, detectors_->drain_silence());
}

table pipeline::flush()
{
  {
    scoped_use use(*this);
    if (engine_) { engine_->flush(); }
    if (detectors_) { detectors_->flush(); }
  }
  return poll();
}

pipeline_stats pipeline::current_stats()
{
  detail::engine_counters const c = engine_ ? engine_->counters() : detail::engine_counters{};
  pipeline_stats s;
  s.records_aggregated = c.aggregated;
  s.records_late       = c.late;
  s.records_rejected   = rejected_;
  s.records_pushed     = pushed_;
  s.nan_values         = c.nan_values;
  s.windows_emitted    = c.emitted;
  s.open_windows       = c.open_windows;
  s.open_keys          = c.open_keys;
  s.state_bytes        = c.state_bytes;
  s.watermark          = c.watermark;
  s.has_watermark      = c.has_watermark;
  if (detectors_) {
    detail::detector_counters const d = detectors_->counters();
    s.records_scored         = d.scored;
    s.records_score_late     = d.late;
    s.records_score_buffered = d.buffered;
    s.state_bytes += d.state_bytes;
    if (!engine_) {
      s.open_keys     = d.keys;
      s.has_watermark = d.has_watermark;
      s.watermark     = d.watermark;
    }
  }
  return s;
}

void pipeline::publish_stats(pipeline_stats const& s)
{
  std::lock_guard<std::mutex> lock(usage_.published_mutex);
  usage_.published = s;
}

void pipeline::publish_after_call() noexcept
{
  // The CPU engines keep their totals at hand; the CUDA engines would have to wait for the
  // device (and copy state back), which would undo the overlap of copy and compute, so on
  // the CUDA backend only stats() publishes.
  if (backend_ != backend::cpu) { return; }
  try {
    publish_stats(current_stats());
  } catch (...) {  // the previous snapshot stays: it is consistent, only older
  }
}

pipeline_stats pipeline::stats()
{
  scoped_use const use(*this, std::try_to_lock);
  if (!use.held()) {
    // Another thread is inside a call (or computing stats): the totals it published last.
    std::lock_guard<std::mutex> lock(usage_.published_mutex);
    return usage_.published;
  }
  pipeline_stats const s = current_stats();
  publish_stats(s);
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
