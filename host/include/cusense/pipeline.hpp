#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include <cusense/error.hpp>
#include <cusense/table.hpp>
#include <cusense/types.hpp>

namespace cusense {

namespace detail {
class window_engine;
}

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
/// Backends: the CUDA backend copies each push into a ring of pinned staging slots and
/// enqueues the host-to-device copy and the kernels on its own streams; push() returns once
/// the data is staged, so the copy of one batch overlaps the compute of the previous one.
/// Window state stays on the device. The CPU backend computes the same results on host
/// threads. Results of the two agree exactly for counts, min and max, and to rounding for
/// sums and moments.
///
/// Thread safety: a pipeline is not safe for concurrent use; calls from several threads must
/// be serialised by the caller.
class pipeline {
 public:
  /// Validates `options` (throws cusense::invalid_argument naming the problem) and selects the
  /// backend (throws backend_unavailable when CUDA is asked for and cannot be used).
  explicit pipeline(pipeline_options options);
  ~pipeline();
  pipeline(pipeline&&) noexcept;
  pipeline& operator=(pipeline&&) noexcept;

  /// Pushes n records; `values` holds n * channels values, record-major. NaN values are skipped
  /// by the aggregations and counted. Throws cusense::invalid_argument (and changes nothing
  /// but the rejected count) when a timestamp is outside [-max_timestamp, max_timestamp].
  void push(std::uint32_t const* keys, std::int64_t const* timestamps, float const* values,
            std::size_t n);
  void push(std::uint32_t const* keys, std::int64_t const* timestamps, double const* values,
            std::size_t n);

  /// Windows emitted since the last poll (waits for pushed batches to finish).
  table poll();
  /// Late records since the last call: key, timestamp, value columns, in arrival order.
  table poll_late();
  /// Ends the stream: emits every open window, then returns poll(). The pipeline stays usable.
  table flush();

  pipeline_stats stats();
  backend where() const;  ///< cpu or cuda, never automatic
  pipeline_options const& options() const;

 private:
  template <typename T>
  void push_impl(std::uint32_t const*, std::int64_t const*, T const*, std::size_t);

  pipeline_options options_;
  backend backend_;
  std::unique_ptr<detail::window_engine> engine_;
  std::uint64_t pushed_   = 0;
  std::uint64_t rejected_ = 0;
};

/// One-shot windowed aggregation of a whole (finite) stream: push everything, flush.
table window_aggregate(std::uint32_t const* keys, std::int64_t const* timestamps,
                       double const* values, std::size_t n, pipeline_options const& options);

}  // namespace cusense
