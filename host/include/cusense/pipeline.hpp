#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <cusense/error.hpp>
#include <cusense/table.hpp>
#include <cusense/types.hpp>

namespace cusense {

namespace detail {
class window_engine;
class detector_runner;

/// Who is inside a call on a pipeline, and the totals last published for stats(). Calls (push,
/// poll, flush, checkpoint, ...) refuse each other with concurrent_use; a call waits for a
/// stats() that is computing fresh totals (a short wait); stats() made during a call returns
/// the published totals instead of waiting or refusing. Moving a pipeline gives the target an
/// idle state and the published totals.
struct usage_state {
  enum : int { idle, in_call, in_stats };
  usage_state() = default;
  usage_state(usage_state&& o) noexcept : published(o.published) {}
  usage_state& operator=(usage_state&& o) noexcept
  {
    published = o.published;
    return *this;
  }
  std::atomic<int> state{idle};
  std::mutex published_mutex;  // guards `published` (written by calls, read by stats())
  pipeline_stats published;
};
}  // namespace detail

/// Seconds after which a checkpoint's temporary file that nobody touched counts as left by a
/// dead writer (see pipeline::checkpoint).
constexpr int stale_temporary_seconds = 600;

/// A keyed event-time windowing pipeline over a stream of (key, timestamp, value) records.
///
/// Records are pushed in micro-batches of any size; results do not depend on how the stream
/// is cut into batches. The watermark is the largest event time seen so far minus
/// `max_out_of_orderness`. A window is emitted once the watermark reaches its end; a record
/// whose window already ended at or before the watermark just before it (in arrival order) is
/// late: it is counted and returned by poll_late(), never aggregated and never dropped.
///
/// Output of poll()/flush(): columns key (uint32), window_start, window_end (int64 ns), then one
/// float64 column per aggregation (int64 for count and nan_count), named `<agg>` or
/// `<agg>_<channel>` with several channels, and a `nan_count` column when not requested.
/// Rows come ordered by (window_start, key).
///
/// Other windows (window_spec): sliding windows emit like tumbling ones; sessions come in
/// (window_start, key) order within each watermark step; rolling windows give one row per
/// record, columns key, timestamp (instead of window_start, window_end), in (timestamp, key,
/// arrival) order. argmin_ts/argmax_ts are int64 columns (INT64_MIN when no value). With
/// options.allowed_lateness > 0 a bool `is_update` column follows; updates are emitted right
/// after the record that caused them. The CUDA backend runs every window type with every
/// aggregation but quantiles, allowed_lateness and max_open_windows included; quantiles run on
/// the CPU backend only for now.
///
/// Backends: the CUDA backend copies each push into a ring of pinned staging slots and
/// enqueues the host-to-device copy and the kernels on its own streams; push() returns once
/// the data is staged, so the copy of one batch overlaps the compute of the previous one.
/// Window state stays on the device. The CPU backend computes the same results on host
/// threads. Results of the two agree exactly for counts, min and max, and to rounding for
/// sums and moments.
///
/// Thread safety: a pipeline is not safe for concurrent use. Calls from several threads must be
/// serialised by the caller; a call (push, poll, poll_late, flush, checkpoint, ...) made while
/// another thread is inside a call on the same pipeline is detected and refused with
/// cusense::concurrent_use, changing nothing. stats() is the exception: it may be called at any
/// time from any thread (see stats()). Distinct pipelines are independent.
///
/// Failures: a push that fails (invalid_argument, capacity_error when options.max_open_windows,
/// max_detector_keys or memory_budget_bytes would be exceeded, out_of_memory when an allocation
/// fails) leaves the pipeline as it was, except that its records count as rejected; the
/// pipeline stays usable. (The detectors reserve what a batch needs before the window engine
/// applies it and then apply it without allocating; tests/cpp/oom checks it.)
class pipeline {
 public:
  /// Validates `options` (throws cusense::invalid_argument naming the problem) and selects the
  /// backend (throws backend_unavailable when CUDA is asked for and cannot be used).
  explicit pipeline(pipeline_options options);
  /// Waits for the work still queued on the pipeline's streams, then frees its host and device
  /// memory. Never throws (a device error at that point is dropped).
  ~pipeline();
  /// Moves the pipeline (its state and streams); the moved-from object may only be destroyed
  /// or assigned to.
  pipeline(pipeline&&) noexcept;
  pipeline& operator=(pipeline&&) noexcept;

  /// Pushes n records; `values` holds n * channels values, record-major. NaN values are skipped
  /// by the aggregations and counted. Throws cusense::invalid_argument (and changes nothing
  /// but the rejected count) when a timestamp is outside [-max_timestamp, max_timestamp].
  ///
  /// Units: timestamps are int64 nanoseconds since the epoch (event time); keys are arbitrary
  /// uint32 ids. The three arrays are read before push returns (the CUDA backend copies them
  /// into a pinned staging slot on the calling thread, then enqueues the host-to-device copy
  /// on its copy stream and the kernels on its compute stream), so the caller may reuse them at
  /// once. push blocks while every staging slot is still in use (back-pressure; nothing is
  /// dropped). A device failure is reported as cusense::cuda_error; the work is asynchronous,
  /// so it may be reported by a later call.
  void push(std::uint32_t const* keys, std::int64_t const* timestamps, float const* values,
            std::size_t n);
  void push(std::uint32_t const* keys, std::int64_t const* timestamps, double const* values,
            std::size_t n);
  /// Pushes n records under external watermarks (options.external_watermark): the watermark
  /// moves only by `steps`, and `positions` gives each record's stream position (see
  /// watermark_steps). Records are late or not against the watermark in force just before
  /// them, as with push(). Throws invalid_argument (changing nothing but the rejected count)
  /// naming the problem when positions or steps break the rules of watermark_steps, or when the
  /// pipeline does not take external watermarks.
  void push(std::uint32_t const* keys, std::int64_t const* timestamps, float const* values,
            std::size_t n, std::int64_t const* positions, watermark_steps const& steps);
  void push(std::uint32_t const* keys, std::int64_t const* timestamps, double const* values,
            std::size_t n, std::int64_t const* positions, watermark_steps const& steps);

  /// Windows emitted since the last poll (waits for pushed batches to finish: synchronises the
  /// pipeline's streams, then copies the emitted windows back to host memory). The returned
  /// table is owned by the caller. Throws cuda_error on a device failure.
  table poll();
  /// Late records since the last call: key, timestamp, value columns, in arrival order
  /// (value_<channel> with several channels). Waits like poll().
  table poll_late();
  /// Emits every open window, then returns poll(). The watermark does not move, so the
  /// pipeline stays usable: records pushed afterwards are late or not as before, and a record
  /// of a window the flush emitted opens it again (a later row for that key and window holds
  /// only the records after the flush).
  table flush();

  /// Records scored by options.detectors since the last call, in release order: rows ordered by
  /// (timestamp, key, arrival) within each push (a push releases every buffered record with
  /// timestamp < watermark; flush() releases all). Columns: key, timestamp, seq (arrival index
  /// among accepted records, from 0; with options.external_watermark the record's stream
  /// position), value (or value_<channel>), late (too late to be scored
  /// causally: NaN scores), then per scoring detector score_<name> (float64 in [0, 1), NaN for
  /// NaN values and late records) and is_anomaly_<name> (score >= threshold). See detectors.hpp.
  table poll_scores();
  /// Silence events since the last call (needs a silence detector): key, last_seen (event time
  /// of the key's last scored record), silent_since (last_seen + timeout), back_at and back.
  /// A key goes silent when the watermark passes silent_since without a newer record of it
  /// (event: back = false, back_at = INT64_MIN); when its next record is scored the comeback
  /// is reported (back = true, back_at = that record's timestamp). A gap longer than the
  /// timeout released at once (e.g. by flush) gives both events. flush() releases records but
  /// does not advance the silence clock. Rows are ordered by (event time = silent_since or
  /// back_at, key) within each call. Late records do not count as signs of life.
  table poll_silence();

  /// Running totals (see pipeline_stats); waits for pushed batches like poll(). Never refused:
  /// called while another thread is inside a call on the pipeline, it returns the totals as of
  /// the end of an earlier call, a consistent snapshot (records_pushed == aggregated + late +
  /// rejected). On the CPU backend every call publishes its totals when it ends; on the CUDA
  /// backend (where the totals need the device) a stats() that finds the pipeline idle does.
  pipeline_stats stats();
  backend where() const;  ///< cpu or cuda, never automatic; never throws
  /// The options as given (backend::automatic is kept; where() tells the backend chosen).
  pipeline_options const& options() const;

  /// Recovery. Writes the complete operator state (options, open windows and panes, sessions,
  /// rolling histories, watermark, counters, detector state and buffered records, silence
  /// state, and the windows, late records, scores and silence events emitted but not yet
  /// polled) to `path`, atomically: a temporary file in the same directory is written,
  /// fsync'ed and renamed over `path`, so a crash leaves the previous checkpoint intact. The
  /// pipeline is unchanged (waits for pushed batches like poll()). The format is
  /// backend-neutral: a checkpoint from one backend restores on the other. Throws
  /// checkpoint_error naming the path and the cause when the file cannot be written (disk
  /// full, read-only directory, ...); the previous checkpoint at `path` is then left as it was
  /// and the pipeline stays usable. Each write uses its own temporary file, so pipelines (and
  /// processes) writing the same path never see each other's partial files; the last rename
  /// wins. Temporary files of `path` left by a writer that died (its process is gone, or the
  /// file has not been touched for stale_temporary_seconds) are removed by the next checkpoint
  /// or restore of `path`.
  void checkpoint(std::string const& path);
  /// As checkpoint(path), to a stream (not atomic: the caller owns the stream).
  void checkpoint(std::ostream& out);
  /// A pipeline in exactly the state of the checkpoint at `path`, with its options, on backend
  /// `where` (backend::automatic: CUDA when usable and the options run there). Pushing the
  /// records that followed the checkpoint gives exactly the outputs of an uninterrupted run.
  /// Throws checkpoint_error (an invalid_argument) naming the problem for a missing, empty,
  /// truncated, corrupt (checksum) or wrong-version file, one that is not a checkpoint, or one
  /// whose options the constructor would refuse (the message names the option).
  static pipeline restore(std::string const& path, backend where = backend::automatic);
  static pipeline restore(std::istream& in, backend where = backend::automatic);
  /// Re-partitioning: `inputs` are checkpoints of the pipelines that each hold one hash
  /// partition of the keys of one stream, taken at one stream position (same options, same
  /// watermark), in any number; writes outputs.size() checkpoints (atomically, as checkpoint())
  /// where outputs[p] holds the keyed state of the keys k with partition_of(k, outputs.size())
  /// == p: open windows, histories, and the outputs not yet polled. The counters of all
  /// inputs add up in outputs[0] (the others start at zero), so totals over the partitions are
  /// kept. Windowed pipelines without detectors. Throws checkpoint_error naming the problem.
  static void rekey_checkpoints(std::vector<std::string> const& inputs,
                                std::vector<std::string> const& outputs);

 private:
  template <typename T>
  void push_impl(std::uint32_t const*, std::int64_t const*, T const*, std::size_t,
                 std::int64_t const* positions = nullptr, watermark_steps const* steps = nullptr);
  // Throws invalid_argument when external positions or steps break the rules.
  void check_external(std::int64_t const* positions, watermark_steps const& steps, std::size_t n);
  class scoped_use;  // holds usage_ for one call or stats() (detail/scoped_use.hpp)
  std::string checkpoint_bytes();  // the caller holds a scoped_use
  static pipeline restore_bytes(std::string const& file, backend where);
  pipeline_stats current_stats();  // from the engines; the caller has the pipeline to itself
  void publish_stats(pipeline_stats const& s);
  void publish_after_call() noexcept;

  pipeline_options options_;
  backend backend_;
  std::unique_ptr<detail::window_engine> engine_;
  std::unique_ptr<detail::detector_runner> detectors_;
  std::uint64_t pushed_   = 0;
  std::uint64_t rejected_ = 0;
  // External watermarks: the last stream position given (positions increase across pushes).
  std::int64_t last_position_ = std::numeric_limits<std::int64_t>::min();
  // options.memory_budget_bytes: an upper bound of the window state (the last measurement plus
  // the estimated growth of the pushes since); measured again when it would exceed the budget.
  std::uint64_t window_bytes_bound_ = 0;
  bool window_bytes_known_          = false;
  // Outputs taken out of the engines by checkpoint() (or read by restore) that the next
  // poll / poll_late / poll_scores / poll_silence returns first.
  table held_windows_, held_late_, held_scores_, held_silence_;
  detail::usage_state usage_;
};

/// One-shot windowed aggregation of a whole (finite) stream: push everything, flush. Same
/// units, output and errors as pipeline; with options.max_out_of_orderness = 0 a record whose
/// window ended before it arrived is late (and left out), so sort by time or give a bound.
table window_aggregate(std::uint32_t const* keys, std::int64_t const* timestamps,
                       double const* values, std::size_t n, pipeline_options const& options);

/// One-shot scoring of a finite stream by one detector: every record is scored from its key's
/// earlier records in (timestamp, arrival) order (nothing is late). Returns one score per input
/// record, aligned with the input order. `keys` may be null: one series.
std::vector<double> score(std::uint32_t const* keys, std::int64_t const* timestamps,
                          double const* values, std::size_t n,
                          detector_spec const& detector = detector_spec::default_detector(),
                          backend where = backend::automatic);
/// The same for records of `channels` values each (`values` holds n * channels, record-major),
/// e.g. for joint_z.
std::vector<double> score(std::uint32_t const* keys, std::int64_t const* timestamps,
                          double const* values, std::size_t n, int channels,
                          detector_spec const& detector, backend where = backend::automatic);

}  // namespace cusense
