// The memory budget of a pipeline and the checks of the detector memory options (see
// detail/memory_budget.hpp).
#include <algorithm>
#include <limits>
#include <string>

#include <cusense/detail/accumulator.hpp>
#include <cusense/detail/memory_budget.hpp>
#include <cusense/error.hpp>

namespace cusense::detail {

std::uint64_t window_state_bound_per_record(pipeline_options const& o)
{
  if (!o.windowed) { return 0; }
  bool const sketch = std::find(o.aggs.begin(), o.aggs.end(), agg::quantile) != o.aggs.end();
  std::uint64_t const per_channel = sizeof(channel_acc) + (sketch ? 2 * sizeof(ops::dd_bucket) : 0);
  return static_cast<std::uint64_t>(o.channels) * per_channel + 256;
}

namespace {

std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b)
{
  return a > std::numeric_limits<std::uint64_t>::max() - b
           ? std::numeric_limits<std::uint64_t>::max()
           : a + b;
}

}  // namespace

void check_memory_budget(pipeline_options const& o, std::uint64_t windows_now,
                         std::uint64_t window_growth, std::uint64_t detectors_now,
                         std::uint64_t detectors_after, std::size_t n)
{
  std::uint64_t const after =
    saturating_add(saturating_add(windows_now, window_growth), detectors_after);
  if (after <= o.memory_budget_bytes) { return; }
  throw capacity_error("memory_budget_bytes (" + std::to_string(o.memory_budget_bytes) +
                       ") would be exceeded: the " + "pipeline holds " +
                       std::to_string(saturating_add(windows_now, detectors_now)) +
                       " bytes (windows " + std::to_string(windows_now) + ", detectors " +
                       std::to_string(detectors_now) + ") and the batch of " + std::to_string(n) +
                       " records may take it to " + std::to_string(after) + " (windows up to " +
                       std::to_string(window_growth) + " more, detectors " +
                       std::to_string(detectors_after) + "); the batch was rejected");
}

void validate_limits(pipeline_options const& o)
{
  bool const detectors = !o.detectors.empty();
  CUSENSE_EXPECTS(o.max_detector_keys == 0 || detectors,
                  "max_detector_keys applies to detectors, and the pipeline has none");
  CUSENSE_EXPECTS(o.key_ttl == 0 || detectors ||
                    (o.windowed && o.window.type == window_spec::kind::rolling),
                  "key_ttl applies to detectors and rolling windows (per-key histories), and the "
                  "pipeline has neither");
  CUSENSE_EXPECTS(o.key_ttl >= 0 && o.key_ttl <= max_duration,
                  "key_ttl must lie in [0, 2**61] ns (0 = keys never expire), got " +
                    std::to_string(o.key_ttl) + " ns");
}

}  // namespace cusense::detail
