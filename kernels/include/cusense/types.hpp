#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <cusense/detectors.hpp>

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
/// Upper bound for the number of sliding windows a record lies in (ceil(size / slide)). It bounds
/// emission: a record adds at most this many rows to the output (one per window it opens or
/// updates), so a push of n records emits at most n * 4096 rows of its own, before any
/// allocation grows out of hand (Sliding(65536, 1) would emit 13 million rows for 200 records).
constexpr std::int64_t max_windows_per_record = std::int64_t{1} << 12;
/// Upper bound for pipeline_options::channels (values per record).
constexpr int max_channels = 4096;
/// Upper bound for pipeline_options::cpu_threads: more threads than this only cost memory and
/// start-up time (each worker has its own stack and scratch).
constexpr int max_cpu_threads = 256;
/// Upper bound for pipeline_options::staging_slots.
constexpr int max_staging_slots = 1024;

/// Keyed windows.
///  - tumbling: [k*size + offset, (k+1)*size + offset)
///  - sliding:  [k*slide + offset, k*slide + offset + size); a record lies in ceil(size/slide)
///              windows (computed from panes of gcd(size, slide))
///  - session:  per key, records less than `gap` apart share a session [first, last + gap)
///  - rolling:  per key, the last `rows` records in (timestamp, arrival) order, one output row
///              per record (count windows, like pandas groupby(key).rolling(rows))
struct window_spec {
  enum class kind { tumbling, sliding, session, rolling };
  kind type           = kind::tumbling;
  std::int64_t size   = 0;  ///< nanoseconds, > 0 (tumbling, sliding)
  std::int64_t offset = 0;  ///< nanoseconds: windows are [k*size + offset, (k+1)*size + offset)
  std::int64_t slide  = 0;  ///< sliding: nanoseconds between window starts, in (0, size]
  std::int64_t gap    = 0;  ///< session: nanoseconds, > 0
  std::int64_t rows   = 0;  ///< rolling: records per window, > 0
  /// rolling: fewest non-NaN values for a row to get values (else NaN, like pandas);
  /// -1 means `rows`
  std::int64_t min_periods = -1;

  static window_spec tumbling(std::int64_t size_ns, std::int64_t offset_ns = 0)
  {
    return window_spec{kind::tumbling, size_ns, offset_ns};
  }
  static window_spec sliding(std::int64_t size_ns, std::int64_t slide_ns, std::int64_t offset_ns = 0)
  {
    window_spec w{kind::sliding, size_ns, offset_ns};
    w.slide = slide_ns;
    return w;
  }
  static window_spec session(std::int64_t gap_ns)
  {
    window_spec w{kind::session};
    w.gap = gap_ns;
    return w;
  }
  static window_spec rolling(std::int64_t rows, std::int64_t min_periods = -1)
  {
    window_spec w{kind::rolling};
    w.rows        = rows;
    w.min_periods = min_periods;
    return w;
  }
};

std::string to_string(window_spec::kind k);

/// Maximum records per rolling (count) window.
constexpr std::int64_t max_rolling_rows = std::int64_t{1} << 24;

/// Checks the parameters of `w` against the engines' limits: size in [1, max_duration], offset
/// within +-max_duration, slide in (0, size] with at most max_windows_per_record windows per
/// record, gap in [1, max_duration], rows in [1, max_rolling_rows], min_periods in [0, rows] or
/// -1. Throws invalid_argument naming the parameter and its range. The one place these limits
/// are checked (the pipeline and the Python window classes call it).
void validate(window_spec const& w);

/// Aggregations: count, nan_count, sum, mean, min, max, var, std (sample, ddof = 1, like pandas),
/// var_pop, std_pop (population, ddof = 0), first, last (value of the earliest / latest record
/// by event time, ties by arrival), argmin_ts, argmax_ts (event time of the minimum / maximum,
/// ties to the earliest arrival; int64 ns, INT64_MIN = NaT when there is no value) and quantile
/// (approximate, from a DDSketch: see pipeline_options::quantiles). NaN values are skipped.
enum class agg {
  count, nan_count, sum, mean, min, max, var, std, var_pop, std_pop,
  first, last, argmin_ts, argmax_ts, quantile
};

/// The name of `a` ("p" for quantile; use quantile_name for its column name).
std::string to_string(agg a);
/// Parses an aggregation name; "pXX" (p50, p99, p99.9: percent in [0, 100]) gives
/// agg::quantile (see parse_quantile). Throws cusense::invalid_argument naming it when unknown.
agg parse_agg(std::string const& name);
/// The quantile in [0, 1] of a name "pXX" (XX percent); throws invalid_argument otherwise.
double parse_quantile(std::string const& name);
/// The column name of quantile q: "p50", "p99.9", ...
std::string quantile_name(double q);

/// What a push does with NaN values: skip them (leave them out of the aggregations and count
/// them), or refuse the whole batch with invalid_argument.
enum class nan_policy { skip, raise };

std::string to_string(nan_policy p);
/// Parses "skip" or "raise"; throws cusense::invalid_argument otherwise.
nan_policy parse_nan_policy(std::string const& name);

/// Everything that defines a pipeline.
struct pipeline_options {
  window_spec window;
  std::vector<agg> aggs = {agg::count, agg::sum, agg::mean, agg::min, agg::max, agg::var, agg::std};
  std::int64_t max_out_of_orderness = 0;  ///< nanoseconds the watermark trails the largest event time
  backend where                     = backend::automatic;
  int channels                      = 1;  ///< values per record, in [1, max_channels]
  nan_policy on_nan                 = nan_policy::skip;  ///< NaN values: skipped or refused
  std::vector<std::string> channel_names;  ///< optional; default "0", "1", ... when channels > 1
  /// Records per staging slot on the CUDA backend; larger pushes are split into slots.
  std::size_t staging_records = std::size_t{1} << 22;
  /// Pinned staging slots, in [1, max_staging_slots] (>= 2 overlaps copy with compute).
  int staging_slots = 3;
  /// CPU backend worker threads, in [1, max_cpu_threads]; 0 = all hardware threads (at most
  /// max_cpu_threads).
  int cpu_threads = 0;
  /// Cap on the (key, window) states held at once, counted while a batch is applied (before
  /// the windows it closes are emitted); 0 = unlimited. A push that would exceed it throws
  /// cusense::capacity_error and changes nothing but the rejected count. It also bounds the
  /// number of keys with open state.
  std::size_t max_open_windows = 0;
  /// For each agg::quantile entry of `aggs`, in order, its quantile in [0, 1].
  std::vector<double> quantiles;
  /// Relative accuracy alpha of the quantile sketch, in [1e-4, 0.5]: each quantile is within
  /// alpha * |x| of the exact order statistic x = sorted[floor(q * (n - 1))].
  double quantile_accuracy = 0.01;
  /// Nanoseconds a window is kept after it was emitted (tumbling, sliding, session): a record
  /// arriving within it updates the window, which is emitted again with is_update = true.
  /// With allowed_lateness > 0 window tables get an `is_update` column.
  std::int64_t allowed_lateness = 0;
  /// Per-key anomaly detectors (see detectors.hpp): scored records come from
  /// pipeline::poll_scores, silence events from pipeline::poll_silence.
  std::vector<detector_spec> detectors;
  /// false: a detectors-only pipeline (`window` and `aggs` are ignored, poll() gives nothing).
  bool windowed = true;
  /// true: the watermark moves only by the steps the caller gives with each push (see
  /// watermark_steps), never by the records' times; output rows then carry their stream
  /// position (a `position` column), the key that merges the outputs of pipelines that each
  /// hold part of the keys of one stream into that stream's order.
  bool external_watermark = false;
  /// Cap on the keys holding detector state at once (0 = unlimited): the keys of the batch not
  /// yet known are counted before anything is allocated for it, and a push that would exceed
  /// the cap throws cusense::capacity_error and changes nothing but the rejected count. Counted
  /// while the batch is applied, before the keys it expires (key_ttl) are dropped.
  /// Needs detectors.
  std::size_t max_detector_keys = 0;
  /// Bytes of state the pipeline may hold (0 = no budget): window state (stats().state_bytes of
  /// the windows), detector state and the records buffered for the detectors. A push whose
  /// estimated growth would take the state beyond it throws cusense::capacity_error before
  /// anything is allocated for the batch (see detail/memory_budget.hpp for the estimate).
  std::size_t memory_budget_bytes = 0;
  /// Nanoseconds of event time after which a key's history is forgotten (0 = never): its
  /// detector state and its rolling-window history; in [0, max_duration] and, with a silence
  /// detector, at least its timeout. Detectors: a record that comes more than key_ttl after the
  /// previous scored record of its key is scored as the key's first record (warm-up again; with
  /// a silence detector the silence is reported, but no comeback, since the key starts afresh).
  /// Rolling windows: a record more than key_ttl after the previous record of its key (in row
  /// order) starts the key's window afresh. Either way the key's state is dropped once the
  /// watermark passes its last record + key_ttl. Independent of how the stream is cut into
  /// batches. Needs detectors or a rolling window.
  std::int64_t key_ttl = 0;

  /// Appends an aggregation by name (also "pXX" quantiles).
  void add_agg(std::string const& name);
  /// Output names of the aggregations, in order ("p99" for quantiles).
  std::vector<std::string> agg_names() const;
};

/// The hash partition of `key` among `parts` partitions (parts >= 1): MurmurHash3's 32-bit
/// finalizer (fmix32) of the key, modulo parts. Stable across builds, machines and versions:
/// it decides which partition of a partitioned pipeline owns a key, and checkpoints are
/// re-split by it (pipeline::rekey_checkpoints).
constexpr std::uint32_t partition_of(std::uint32_t key, std::uint32_t parts)
{
  std::uint32_t h = key;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h % parts;
}

/// Watermark steps given by the caller with a push (pipeline_options::external_watermark), as
/// `count` entries of three arrays: after the first at[s] records of the batch the watermark
/// becomes watermark[s] (nanoseconds; the watermark itself, not an event time), at stream
/// position position[s]. `at` is nondecreasing in [0, n]; watermarks increase strictly (also
/// across pushes); positions increase strictly and interleave with the records' positions.
struct watermark_steps {
  std::int64_t const* at        = nullptr;
  std::int64_t const* watermark = nullptr;
  std::int64_t const* position  = nullptr;
  std::size_t count             = 0;
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
  std::uint64_t open_keys          = 0;  ///< distinct keys holding state now (key cardinality)
  std::uint64_t state_bytes        = 0;  ///< approximate bytes of window state held now
  std::int64_t watermark           = 0;  ///< valid when has_watermark
  bool has_watermark               = false;
  std::uint64_t records_scored       = 0;  ///< released to the detectors and scored
  std::uint64_t records_score_late   = 0;  ///< too late to be scored causally (poll_scores, late)
  std::uint64_t records_score_buffered = 0;  ///< waiting for the watermark before scoring
};

/// A usable CUDA device.
struct device_info {
  int ordinal = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  std::size_t total_memory = 0;  ///< bytes
};

}  // namespace cusense
