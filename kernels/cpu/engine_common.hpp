#pragma once
// Helpers shared by the general CPU engines (sliding, sessions, rolling): pools of per-channel
// accumulators and the engine plumbing (outputs, counters, checkpointed clock and counters).
// What the CUDA engines share with them is in cusense/detail/engine_shared.hpp.
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <cusense/detail/accumulator.hpp>
#include <cusense/detail/state_codec.hpp>
#include <cusense/detail/engine.hpp>
#include <cusense/detail/engine_shared.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/error.hpp>
#include <cusense/types.hpp>

namespace cusense::detail {

/// Accumulator slots of `channels` channel_acc each, with a free list.
class acc_pool {
 public:
  explicit acc_pool(int channels) : channels_(channels) {}

  std::uint32_t take()
  {
    if (!free_.empty()) {
      std::uint32_t const s = free_.back();
      free_.pop_back();
      return s;
    }
    auto const s = static_cast<std::uint32_t>(acc_.size() / static_cast<std::size_t>(channels_));
    acc_.resize(acc_.size() + static_cast<std::size_t>(channels_));
    return s;
  }
  void give_back(std::uint32_t s)
  {
    for (int c = 0; c < channels_; ++c) at(s)[c] = channel_acc{};
    free_.push_back(s);
  }
  channel_acc* at(std::uint32_t s) { return acc_.data() + std::size_t{s} * static_cast<std::size_t>(channels_); }
  std::size_t live() const { return acc_.size() / static_cast<std::size_t>(channels_) - free_.size(); }
  /// Bytes of the live slots, sketches included (walks every slot; free slots hold empty
  /// sketches). Memory kept for reuse is not counted.
  std::size_t bytes() const
  {
    std::size_t b = live() * static_cast<std::size_t>(channels_) * sizeof(channel_acc);
    for (channel_acc const& a : acc_) b += a.s.bytes();
    return b;
  }

 private:
  int channels_;
  std::vector<channel_acc> acc_;
  std::vector<std::uint32_t> free_;
};

/// Adds the `channels` values of one record to `acc`; returns the number of NaN values.
template <typename T>
std::uint64_t add_record(channel_acc* acc, acc_layout const& layout, T const* v, int channels,
                         std::int64_t ts, std::uint64_t seq)
{
  std::uint64_t nans = 0;
  for (int c = 0; c < channels; ++c) {
    double const x = static_cast<double>(v[c]);
    nans += ops::is_nan(x) ? 1 : 0;
    add(acc[c], layout, x, ts, seq);
  }
  return nans;
}

/// What the general CPU engines share: options, accumulator layout, output builders, the
/// watermark clock and the counters, with their checkpoint form.
class cpu_engine_base : public window_engine {
 public:
  explicit cpu_engine_base(pipeline_options const& options)
    : options_(options),
      layout_(acc_layout::of(options)),
      channels_(options.channels),
      windows_out_(options),
      late_out_(options)
  {
    clock_.ooo = options.max_out_of_orderness;
  }

  void drain(table* windows, table* late) override
  {
    if (windows) { windows->append(windows_out_.finish()); }
    if (late) { late->append(late_out_.finish()); }
  }

 protected:
  /// The counters, with the engine's own measure of the state it holds.
  engine_counters make_counters(std::size_t open_windows, std::size_t open_keys,
                                std::size_t state_bytes) const
  {
    engine_counters c;
    c.aggregated    = aggregated_;
    c.late          = late_count_;
    c.nan_values    = nan_values_;
    c.emitted       = emitted_;
    c.open_windows  = open_windows;
    c.open_keys     = open_keys;
    c.state_bytes   = state_bytes;
    c.has_watermark = clock_.has;
    c.watermark     = clock_.has ? clock_.value() : 0;
    return c;
  }

  /// A late record: to the late table.
  template <typename T>
  void reject_late(std::uint32_t key, std::int64_t t, T const* v)
  {
    late_out_.append(key, t, v);
    ++late_count_;
  }

  // Checkpoint form: the clock, then (after any engine fields) the sequence and counters.
  void save_clock(state_writer& out) const
  {
    out.boolean(clock_.has);
    out.i64(clock_.max_ts);
  }
  void load_clock(state_reader& in)
  {
    clock_.has    = in.boolean();
    clock_.max_ts = in.i64();
    if (clock_.has) { checked_time(clock_.max_ts); }
  }
  void save_counts(state_writer& out) const
  {
    out.u64(seq_);
    out.u64(aggregated_);
    out.u64(late_count_);
    out.u64(nan_values_);
    out.u64(emitted_);
  }
  void load_counts(state_reader& in)
  {
    seq_        = in.u64();
    aggregated_ = in.u64();
    late_count_ = in.u64();
    nan_values_ = in.u64();
    emitted_    = in.u64();
  }

  pipeline_options options_;
  acc_layout layout_;
  int channels_;
  window_table_builder windows_out_;
  late_table_builder late_out_;
  watermark_clock clock_;
  std::uint64_t seq_        = 0;
  std::uint64_t aggregated_ = 0;
  std::uint64_t late_count_ = 0;
  std::uint64_t nan_values_ = 0;
  std::uint64_t emitted_    = 0;
};

}  // namespace cusense::detail
