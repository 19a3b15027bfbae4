#pragma once
// Helpers shared by the CPU window kinds (sliding, sessions, rolling): pools of per-channel
// accumulators and a base class. The watermark, counters and outputs are the window runner's
// (detail/window_kind.hpp); what the CUDA engines share with them is in
// cusense/detail/engine_shared.hpp.
#include <cassert>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <cusense/detail/accumulator.hpp>
#include <cusense/detail/state_codec.hpp>
#include <cusense/detail/engine.hpp>
#include <cusense/detail/engine_shared.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/detail/window_kind.hpp>
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
  /// Whether the next take() reuses a freed slot (rather than growing the pool).
  bool has_free() const { return !free_.empty(); }
  /// Undoes the last take() that returned `s` (`reused`: what has_free() said before it), for
  /// the takes of a batch undone in reverse order; never allocates.
  void untake(std::uint32_t s, bool reused)
  {
    if (reused) {
      give_back(s);  // its place in free_ is still reserved: no allocation
    } else {
      acc_.resize(acc_.size() - static_cast<std::size_t>(channels_));
    }
  }
  /// Undoes the last give_back (of `s`), for a batch undone in reverse order; never allocates.
  void retake([[maybe_unused]] std::uint32_t s)
  {
    assert(!free_.empty() && free_.back() == s);
    free_.pop_back();
  }
  void give_back(std::uint32_t s)
  {
    for (int c = 0; c < channels_; ++c) at(s)[c] = channel_acc{};
    free_.push_back(s);
  }
  /// Room to give back `n` more slots without allocating.
  void reserve_free(std::size_t n) { reserve_more(free_, n); }
  int channels() const { return channels_; }
  /// Slots ever taken (live or free): slot ids are below this.
  std::size_t slots() const { return acc_.size() / static_cast<std::size_t>(channels_); }
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

/// The accumulators a batch changes, as they were before it, so that an undo restores them
/// exactly: the pool gets a copy and the original is kept (sketch capacity included).
class prior_slots {
 public:
  /// A batch starts: slots taken from here on are new to it (nothing to keep).
  void start(acc_pool const& pool)
  {
    ++epoch_;
    touched_.resize(pool.slots(), 0);
  }
  /// `slot` was just taken (from the free list: empty), so it holds nothing to keep.
  void taken(std::uint32_t slot)
  {
    if (slot < touched_.size()) { touched_[slot] = epoch_; }
  }
  /// Before the batch first changes `slot` (or gives it back): keeps its accumulators.
  void keep(acc_pool& pool, std::uint32_t slot)
  {
    // Slots at or past touched_.size() are new in this batch; the others are saved once.
    if (slot < touched_.size() && touched_[slot] != epoch_) { save(pool, slot); }
  }
  /// Puts the kept accumulators back, once every slot holds its state again; never allocates.
  void restore(acc_pool& pool) noexcept
  {
    auto const n = static_cast<std::size_t>(pool.channels());
    for (std::size_t i = 0; i < saved_slots_.size(); ++i) {
      channel_acc* a = pool.at(saved_slots_[i]);
      for (std::size_t c = 0; c < n; ++c) a[c] = std::move(saved_accs_[i * n + c]);
    }
    clear();
  }
  /// The batch is kept: forgets the prior states.
  void clear() noexcept
  {
    saved_slots_.clear();
    saved_accs_.clear();
  }

 private:
  // Out of line: keep() is on every record's path, this once per slot and batch.
  [[gnu::noinline]] void save(acc_pool& pool, std::uint32_t slot)
  {
    auto const n = static_cast<std::size_t>(pool.channels());
    reserve_more(saved_slots_, 1);
    reserve_more(saved_accs_, n);
    std::size_t const at = saved_accs_.size();
    channel_acc* a       = pool.at(slot);
    try {
      for (std::size_t c = 0; c < n; ++c) saved_accs_.push_back(a[c]);
    } catch (...) {
      shrink_to(saved_accs_, at);
      throw;
    }
    for (std::size_t c = 0; c < n; ++c) std::swap(a[c], saved_accs_[at + c]);
    saved_slots_.push_back(slot);
    touched_[slot] = epoch_;
  }

  std::vector<std::uint32_t> saved_slots_;  // in saved_accs_ order
  std::vector<channel_acc> saved_accs_;     // `channels` per saved slot
  std::vector<std::uint64_t> touched_;      // per slot: the last batch (epoch_) that kept it
  std::uint64_t epoch_ = 0;
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

/// What the CPU window kinds share: options, accumulator layout, and the output of the call
/// in progress (set by each entry point).
class cpu_kind_base : public window_kind {
 public:
  explicit cpu_kind_base(pipeline_options const& options)
    : options_(options), layout_(acc_layout::of(options)), channels_(options.channels)
  {
  }

 protected:
  pipeline_options options_;
  acc_layout layout_;
  int channels_;
  window_output* out_ = nullptr;  // the output of the apply, flush or settle in progress
};

}  // namespace cusense::detail
