#pragma once
// Internal: the per-kind state steps of the CPU window engines, and what the window runner
// (host: detail/window_runner.hpp) hands them. The runner owns the watermark, the counters,
// the output tables, the stream positions of output rows and their checkpoint form; a kind
// owns its open windows and decides, record by record, what is late and what is emitted.
// Not part of the public API.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <cusense/detail/engine.hpp>
#include <cusense/detail/engine_shared.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/detail/state_codec.hpp>

namespace cusense::detail {

/// Where the kinds write: emitted windows, late records, NaN count, and (external watermarks)
/// the stream position of every output row, the key to merge the outputs of partitions.
class window_output {
 public:
  explicit window_output(pipeline_options const& options)
    : windows(options), late(options), keep_positions(options.external_watermark)
  {
  }

  /// Gives the window rows appended since the last call the stream position `p`.
  void tag_windows(std::int64_t p)
  {
    if (keep_positions) { window_positions.resize(windows.size(), p); }
  }
  /// A late record, at stream position `p`.
  template <typename T>
  void reject_late(std::uint32_t key, std::int64_t t, T const* v, std::int64_t p)
  {
    late.append(key, t, v);
    if (keep_positions) { late_positions.push_back(p); }
  }

  /// How much output there is: what a push that fails goes back to (roll_back).
  struct mark {
    std::size_t windows, late;
    std::uint64_t nan_values;
  };
  mark here() const { return {windows.size(), late.size(), nan_values}; }
  /// Drops what was written since `m` was taken; never allocates.
  void roll_back(mark const& m)
  {
    windows.truncate(m.windows);
    late.truncate(m.late);
    nan_values = m.nan_values;
    shrink_to(window_positions, m.windows);
    shrink_to(late_positions, m.late);
  }

  window_table_builder windows;
  late_table_builder late;
  std::uint64_t nan_values = 0;  ///< NaN values among the aggregated records
  bool keep_positions;
  std::vector<std::int64_t> window_positions;  ///< of the window rows (keep_positions)
  std::vector<std::int64_t> late_positions;    ///< of the late rows (keep_positions)
};

/// The watermark as a batch moves it. From the records (the default): the largest event time
/// so far minus max_out_of_orderness, raised by each record. External: only the caller's steps
/// move it. A plain value, so a kind can copy it to look ahead (capacity checks).
class watermark_feed {
 public:
  /// `positions` and `steps` (external watermarks) are null/empty for a feed from the records.
  watermark_feed(watermark_clock clock, record_batch const& batch, std::uint64_t first_seq,
                 std::int64_t const* positions = nullptr, watermark_steps steps = {},
                 bool external = false)
    : clock_(clock),
      batch_(batch),
      first_seq_(first_seq),
      positions_(positions),
      steps_(steps),
      external_(external)
  {
  }

  bool has() const { return clock_.has; }
  /// The watermark now (valid when has()).
  std::int64_t value() const { return clock_.value(); }
  watermark_clock const& clock() const { return clock_; }
  bool external() const { return external_; }
  record_batch const& batch() const { return batch_; }
  /// Arrival sequence number of record i (orders records of equal time: first, last).
  std::uint64_t seq(std::size_t i) const { return first_seq_ + i; }
  /// Stream position of record i: given by the caller (external), else its sequence number.
  std::int64_t position(std::size_t i) const
  {
    return positions_ ? positions_[i] : static_cast<std::int64_t>(first_seq_ + i);
  }
  watermark_steps const& steps() const { return steps_; }

  /// Before record 0: the caller's steps at 0; advance(position) after each.
  template <typename Advance>
  void start(Advance&& advance)
  {
    if (external()) { take_steps(0, advance); }
  }
  /// After record i (time t, accepted or late): moves the watermark, calling advance(position)
  /// after each move.
  template <typename Advance>
  void after(std::size_t i, std::int64_t t, Advance&& advance)
  {
    if (!external()) {
      if (clock_.see(t)) { advance(position(i)); }
      return;
    }
    take_steps(i + 1, advance);
  }
  /// The watermark just before record i, for records taken out of order (i never below the
  /// last i asked): moves it without callbacks.
  void move_to(std::size_t i)
  {
    if (!external()) { return; }
    while (next_ < steps_.count && at(next_) <= i) set(steps_.watermark[next_++]);
  }
  /// From the records: the batch's accepted records raised the largest time to at least
  /// `max_ts` (kinds that scan a batch in parallel rather than record by record).
  void raise(std::int64_t max_ts) { clock_.see(max_ts); }
  /// Every remaining step, for kinds that emit once per batch: advance(position) after each.
  template <typename Advance>
  void finish(Advance&& advance)
  {
    if (external()) { take_steps(batch_.n, advance); }
  }

 private:
  void set(std::int64_t watermark)
  {
    // The clock keeps max_ts: watermark + max_out_of_orderness, as if a record had raised it.
    clock_.max_ts = watermark + clock_.ooo;
    clock_.has    = true;
  }
  template <typename Advance>
  void take_steps(std::size_t at, Advance& advance)
  {
    while (next_ < steps_.count && this->at(next_) <= at) {
      set(steps_.watermark[next_]);
      advance(steps_.position[next_]);
      ++next_;
    }
  }

  watermark_clock clock_;
  record_batch batch_;
  std::uint64_t first_seq_;
  std::int64_t const* positions_;
  std::size_t at(std::size_t s) const { return static_cast<std::size_t>(steps_.at[s]); }

  watermark_steps steps_;
  bool external_;
  std::size_t next_ = 0;
};

/// How much state a kind holds (engine_counters' open_windows, open_keys, state_bytes).
struct kind_size {
  std::size_t open_windows = 0;
  std::size_t open_keys    = 0;
  std::size_t state_bytes  = 0;
};

/// The runner's checkpointed fields, which a kind writes where its state form puts them.
struct runner_fields {
  watermark_clock clock;
  std::uint64_t seq        = 0;
  std::uint64_t aggregated = 0;
  std::uint64_t late       = 0;
  std::uint64_t nan_values = 0;
  std::uint64_t emitted    = 0;

  void save_clock(state_writer& out) const
  {
    out.boolean(clock.has);
    out.i64(clock.max_ts);
  }
  void load_clock(state_reader& in)
  {
    clock.has    = in.boolean();
    clock.max_ts = in.i64();
    if (clock.has) { checked_time(clock.max_ts); }
  }
  void save_counts(state_writer& out) const
  {
    out.u64(seq);
    out.u64(aggregated);
    out.u64(late);
    out.u64(nan_values);
    out.u64(emitted);
  }
  void load_counts(state_reader& in)
  {
    seq        = in.u64();
    aggregated = in.u64();
    late       = in.u64();
    nan_values = in.u64();
    emitted    = in.u64();
  }
};

/// The state steps of one window kind on the CPU. The runner calls check_capacity, then apply,
/// with a feed positioned before the batch. A kind that throws from either has left its own
/// state as it was (the runner drops what the apply wrote to the output).
class window_kind {
 public:
  virtual ~window_kind() = default;
  /// Refuses (capacity_error) a batch that would take the state beyond max_open_windows.
  virtual void check_capacity(watermark_feed feed) = 0;
  /// Takes the batch in arrival order: each record aggregated or (out.reject_late) late, the
  /// feed moved after it (feed.after), windows emitted as the watermark passes them, each
  /// emission tagged with its position (out.tag_windows).
  virtual void apply(watermark_feed& feed, window_output& out) = 0;
  /// Ends the stream: every open window is emitted.
  virtual void flush(window_output& out) = 0;
  /// Emits what an apply that ran out of memory after taking its batch left for later, as the
  /// apply would have (the runner calls it before the next push or flush, and before output or
  /// state is read). May throw (out of memory) having emitted part of it, and be called again.
  virtual void settle(window_output&) {}
  virtual kind_size size() const = 0;
  /// The kind's state form, with the runner's fields where the form puts them.
  virtual void save_state(state_writer& out, runner_fields const& fields) = 0;
  /// Reads the state of the keys `keep` keeps into the kind, on top of what it holds (keys
  /// held are never read again: checkpoints of partitions hold disjoint keys).
  virtual void load_state(state_reader& in, runner_fields& fields, key_filter const& keep) = 0;
};

// Factories (each defined in its kind's source file in kernels/cpu).
std::unique_ptr<window_kind> make_cpu_tumbling_kind(pipeline_options const& options);
std::unique_ptr<window_kind> make_cpu_sliding_kind(pipeline_options const& options);
std::unique_ptr<window_kind> make_cpu_session_kind(pipeline_options const& options);
std::unique_ptr<window_kind> make_cpu_rolling_kind(pipeline_options const& options);

}  // namespace cusense::detail
