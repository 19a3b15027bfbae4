#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace cusense {

/// Where the work runs. `automatic` picks CUDA when it was built and a device is usable.
enum class backend { cpu, cuda, automatic };

std::string to_string(backend b);
/// Parses "cpu", "cuda" or "auto"; throws cusense::invalid_argument otherwise.
backend parse_backend(std::string const& name);

/// Timestamps are int64 nanoseconds since the epoch and must lie within
/// [-max_timestamp, max_timestamp] (about years 1824..2116), so window arithmetic never overflows.
constexpr std::int64_t max_timestamp = std::int64_t{1} << 62;
/// Upper bound for window sizes, offsets and the out-of-orderness bound (about 73 years).
constexpr std::int64_t max_duration = std::int64_t{1} << 61;

/// Keyed event-time windows.
struct window_spec {
  enum class kind { tumbling };
  kind type           = kind::tumbling;
  std::int64_t size   = 0;  ///< nanoseconds, > 0
  std::int64_t offset = 0;  ///< nanoseconds: windows are [k*size + offset, (k+1)*size + offset)

  static window_spec tumbling(std::int64_t size_ns, std::int64_t offset_ns = 0)
  {
    return window_spec{kind::tumbling, size_ns, offset_ns};
  }
};

/// Aggregations: count, nan_count, sum, mean, min, max, var, std (sample, ddof = 1, like pandas),
/// var_pop, std_pop (population, ddof = 0).
enum class agg { count, nan_count, sum, mean, min, max, var, std, var_pop, std_pop };

std::string to_string(agg a);
/// Parses an aggregation name; throws cusense::invalid_argument naming it when unknown.
agg parse_agg(std::string const& name);

/// Everything that defines a pipeline.
struct pipeline_options {
  window_spec window;
  std::vector<agg> aggs = {agg::count, agg::sum, agg::mean, agg::min, agg::max, agg::var, agg::std};
  std::int64_t max_out_of_orderness = 0;  ///< nanoseconds the watermark trails the largest event time
  backend where                     = backend::automatic;
  int channels                      = 1;  ///< values per record
  std::vector<std::string> channel_names;  ///< optional; default "0", "1", ... when channels > 1
  /// Records per staging slot on the CUDA backend; larger pushes are split into slots.
  std::size_t staging_records = std::size_t{1} << 22;
  int staging_slots           = 3;   ///< pinned staging slots (>= 2 overlaps copy with compute)
  int cpu_threads             = 0;   ///< CPU backend worker threads; 0 = all hardware threads
};

/// Running totals. Every record pushed is aggregated, late, or rejected:
/// records_pushed == records_aggregated + records_late + records_rejected.
struct pipeline_stats {
  std::uint64_t records_pushed     = 0;
  std::uint64_t records_aggregated = 0;
  std::uint64_t records_late       = 0;
  std::uint64_t records_rejected   = 0;  ///< in pushes refused by validation
  std::uint64_t nan_values         = 0;  ///< NaN values among aggregated records
  std::uint64_t windows_emitted    = 0;
  std::uint64_t open_windows       = 0;  ///< (key, window) states held now
  std::int64_t watermark           = 0;  ///< valid when has_watermark
  bool has_watermark               = false;
};

}  // namespace cusense
