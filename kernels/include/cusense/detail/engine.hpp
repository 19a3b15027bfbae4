#pragma once
// Internal: the interface each backend implements. Not part of the public API.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <cusense/table.hpp>
#include <cusense/types.hpp>

namespace cusense::detail {

class state_writer;
class state_reader;

/// A validated micro-batch in host memory: n records, values record-major (n * channels).
struct record_batch {
  std::uint32_t const* keys       = nullptr;
  std::int64_t const* timestamps  = nullptr;
  void const* values              = nullptr;
  bool values_f32                 = false;  ///< float32 values, else float64
  std::size_t n                   = 0;
};

/// The keys a state load keeps: those of one hash partition (partition_of), or all.
struct key_filter {
  std::uint32_t parts = 1;
  std::uint32_t part  = 0;
  bool keeps(std::uint32_t key) const { return parts <= 1 || partition_of(key, parts) == part; }
};

/// Counters kept by an engine (the pipeline adds pushed/rejected).
struct engine_counters {
  std::uint64_t aggregated   = 0;
  std::uint64_t late         = 0;
  std::uint64_t nan_values   = 0;
  std::uint64_t emitted      = 0;
  std::uint64_t open_windows = 0;
  std::uint64_t open_keys    = 0;  ///< distinct keys holding state
  std::uint64_t state_bytes  = 0;  ///< approximate bytes of state
  std::int64_t watermark     = 0;
  bool has_watermark         = false;
};

/// Keyed windowing state machine of one backend. Implementations must give identical results
/// for any cut of the stream into batches.
class window_engine {
 public:
  virtual ~window_engine() = default;
  /// Consumes a batch. May return before the work is done (the batch memory must stay valid
  /// only until push returns).
  virtual void push(record_batch const& batch) = 0;
  /// Consumes a batch under external watermarks (options.external_watermark): `positions`
  /// holds each record's stream position, `steps` the caller's watermark steps (validated by
  /// the pipeline). Engines without it throw logic_error (the registry does not pick them).
  virtual void push_external(record_batch const& batch, std::int64_t const* positions,
                             watermark_steps const& steps);
  /// Ends the stream: every open window is emitted.
  virtual void flush() = 0;
  /// Waits for pending work, then moves out the windows emitted and the late records
  /// collected so far (either pointer may be null to leave that output in place).
  virtual void drain(table* windows, table* late) = 0;
  virtual engine_counters counters() = 0;

  /// Checkpoints (see detail/checkpoint.hpp). save_state writes the complete state (open
  /// windows, watermark, counters) in a backend-neutral form, after waiting for pending work;
  /// the caller has drained the emitted windows and late records first. load_state reads it
  /// into a fresh engine made from the same options, on either backend; throws
  /// checkpoint_error on corrupt input.
  virtual void save_state(state_writer& out) = 0;
  virtual void load_state(state_reader& in) = 0;
  /// Re-partitioning (pipeline::rekey_checkpoints): adds the state of the keys `keep` keeps
  /// from a checkpoint's engine section, on top of what earlier calls added (sections of
  /// checkpoints taken at one stream position: the watermarks must agree); the counters are
  /// added too when `counters`. Engines without it throw logic_error.
  virtual void merge_state(state_reader& in, key_filter const& keep, bool counters);
};

/// Which engine runs a configuration and the checkpoint form of each engine's state: the
/// engine registry (host: detail/engine_registry.hpp).

// ----- CUDA factories (each defined in its engine's source file). The CPU engines are the
// window runner with a window kind (host: detail/window_runner.hpp).

/// CUDA engine for tumbling windows that keeps its state in the CPU tumbling engine's form
/// (the configurations make_cpu_tumbling_engine runs, so checkpoints cross backends).
std::unique_ptr<window_engine> make_cuda_tumbling_engine(pipeline_options const& options);
/// CUDA engine for sliding windows, and tumbling ones as slide == size (every aggregation but
/// quantiles, allowed lateness, max_open_windows).
std::unique_ptr<window_engine> make_cuda_sliding_engine(pipeline_options const& options);
/// CUDA engine for session windows (every aggregation but quantiles).
std::unique_ptr<window_engine> make_cuda_session_engine(pipeline_options const& options);
/// CUDA engine for rolling (count) windows (every aggregation but quantiles).
std::unique_ptr<window_engine> make_cuda_rolling_engine(pipeline_options const& options);

}  // namespace cusense::detail
