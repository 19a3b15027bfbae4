// CPU engine for rolling (count) windows: per key, the last `rows` records in (timestamp,
// arrival) order; one output row per record, like pandas groupby(key).rolling(rows).
//
// A record is a point [t, t + 1): it is late when t < watermark just before it, and its row is
// emitted once t < watermark, when no record that precedes it can still arrive (a later one
// with an earlier or equal time is late or sorts after it). Rows come in (timestamp, key,
// arrival) order; the row of record r aggregates, in order, the rows - 1 records of its key
// before it and r itself. In a channel with fewer than min_periods non-NaN values in the
// window, every aggregation but count and nan_count is NaN.
#include <algorithm>
#include <deque>
#include <limits>
#include <queue>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <cusense/detail/checkpoint.hpp>
#include <cusense/detail/results.hpp>

#include "engine_common.hpp"

namespace cusense::detail {
namespace {

struct held_record {
  std::int64_t t;
  std::uint32_t key;
  std::uint64_t seq;
  std::uint32_t slot;  // values: vals_[slot * channels ...]

  bool operator>(held_record const& o) const
  {
    return std::tie(t, key, seq) > std::tie(o.t, o.key, o.seq);
  }
};

class cpu_rolling_engine final : public cpu_engine_base {
 public:
  explicit cpu_rolling_engine(pipeline_options const& options)
    : cpu_engine_base(options),
      rows_(options.window.rows),
      min_periods_(options.window.min_periods < 0 ? options.window.rows : options.window.min_periods)
  {
    tmp_.resize(static_cast<std::size_t>(channels_));
  }

  void push(record_batch const& batch) override
  {
    with_values(batch, [&](auto const* values) { push_typed(batch, values); });
  }

  void flush() override
  {
    emit_before(std::numeric_limits<std::int64_t>::max());
    for (auto& [key, h] : history_) {
      for (held_record const& r : h) free_.push_back(r.slot);
    }
    history_.clear();
  }

  engine_counters counters() override
  {
    return make_counters(held(), history_.size(),
                         vals_.capacity() * sizeof(double) + held() * sizeof(held_record) +
                           history_.size() * 96 + free_.capacity() * sizeof(std::uint32_t));
  }

  // Checkpoint: clock, counters, the waiting records in (t, key, arrival) order and the
  // per-key history (the last rows - 1 emitted records), with their values.
  void save_state(state_writer& out) override
  {
    save_clock(out);
    save_counts(out);
    auto const ch  = static_cast<std::size_t>(channels_);
    auto write_rec = [&](held_record const& r) {
      out.i64(r.t);
      out.u32(r.key);
      out.u64(r.seq);
      for (std::size_t c = 0; c < ch; ++c) out.f64(vals_[std::size_t{r.slot} * ch + c]);
    };
    auto waiting = pending_;
    out.u64(waiting.size());
    while (!waiting.empty()) {
      write_rec(waiting.top());
      waiting.pop();
    }
    std::vector<std::uint32_t> keys;
    for (auto const& [key, h] : history_) keys.push_back(key);
    std::sort(keys.begin(), keys.end());
    out.u64(keys.size());
    for (std::uint32_t key : keys) {
      auto const& h = history_.at(key);
      out.u32(key);
      out.u64(h.size());
      for (held_record const& r : h) write_rec(r);
    }
  }

  void load_state(state_reader& in) override
  {
    load_clock(in);
    load_counts(in);
    auto const ch = static_cast<std::size_t>(channels_);
    auto read_rec = [&] {
      held_record r{};
      r.t    = checked_time(in.i64());
      r.key  = in.u32();
      r.seq  = in.u64();
      r.slot = take();
      for (std::size_t c = 0; c < ch; ++c) vals_[std::size_t{r.slot} * ch + c] = in.f64();
      return r;
    };
    std::size_t const np = in.count(20 + 8 * ch);
    for (std::size_t i = 0; i < np; ++i) pending_.push(read_rec());
    std::size_t const nk = in.count(12);
    for (std::size_t k = 0; k < nk; ++k) {
      std::uint32_t const key = in.u32();
      std::size_t const n     = in.count(20 + 8 * ch);
      state_reader::check(rows_ > 1 && static_cast<std::int64_t>(n) <= rows_ - 1 &&
                            history_.count(key) == 0,
                          "rolling history longer than the window or repeated");
      auto& h = history_[key];
      for (std::size_t i = 0; i < n; ++i) {
        h.push_back(read_rec());
        state_reader::check(h.back().key == key, "rolling history holds another key");
      }
    }
  }

 private:
  // Records held: waiting rows and the per-key history.
  std::size_t held() const { return vals_.size() / static_cast<std::size_t>(channels_) - free_.size(); }

  template <typename T>
  void push_typed(record_batch const& batch, T const* values)
  {
    if (options_.max_open_windows != 0) { check_capacity(batch); }
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::int64_t const t    = batch.timestamps[i];
      T const* v              = values + i * static_cast<std::size_t>(channels_);
      std::uint64_t const seq = seq_++;
      if (clock_.has && t < clock_.value()) {
        reject_late(batch.keys[i], t, v);
        continue;
      }
      std::uint32_t const slot = take();
      double* dst              = &vals_[std::size_t{slot} * static_cast<std::size_t>(channels_)];
      for (int c = 0; c < channels_; ++c) {
        dst[c] = static_cast<double>(v[c]);
        nan_values_ += ops::is_nan(dst[c]) ? 1 : 0;
      }
      pending_.push({t, batch.keys[i], seq, slot});
      if (rows_ > 1) { history_[batch.keys[i]]; }  // the key holds state from now on
      ++aggregated_;
      clock_.see(t);
    }
    // Rows do not depend on when they are emitted (a record that could precede a waiting
    // row is late), so emitting once per batch gives the same rows in the same order.
    if (clock_.has) { emit_before(clock_.value()); }
  }

  std::uint32_t take()
  {
    if (!free_.empty()) {
      std::uint32_t const s = free_.back();
      free_.pop_back();
      return s;
    }
    auto const s = static_cast<std::uint32_t>(vals_.size() / static_cast<std::size_t>(channels_));
    vals_.resize(vals_.size() + static_cast<std::size_t>(channels_));
    return s;
  }

  // Emits the rows of the waiting records with t < limit, in (t, key, arrival) order.
  void emit_before(std::int64_t limit)
  {
    while (!pending_.empty() && pending_.top().t < limit) {
      held_record const r = pending_.top();
      pending_.pop();
      for (auto& a : tmp_) a = channel_acc{};
      auto const add_one = [&](held_record const& x) {
        double const* v = &vals_[std::size_t{x.slot} * static_cast<std::size_t>(channels_)];
        for (int c = 0; c < channels_; ++c) add(tmp_[c], layout_, v[c], x.t, x.seq);
      };
      auto h = history_.find(r.key);
      if (h != history_.end()) {
        for (held_record const& x : h->second) add_one(x);
      }
      add_one(r);
      windows_out_.append_row(r.key, r.t, tmp_.data(), min_periods_);
      ++emitted_;
      if (h != history_.end()) {
        h->second.push_back(r);
        if (static_cast<std::int64_t>(h->second.size()) > rows_ - 1) {
          free_.push_back(h->second.front().slot);
          h->second.pop_front();
        }
      } else {
        free_.push_back(r.slot);
      }
    }
  }

  // Refuses (before changing anything) a batch whose non-late records would take the records
  // held beyond max_open_windows.
  void check_capacity(record_batch const& batch)
  {
    watermark_clock clock = clock_;
    std::size_t added     = 0;
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::int64_t const t = batch.timestamps[i];
      if (clock.has && t < clock.value()) { continue; }
      ++added;
      clock.see(t);
    }
    check_cap(options_.max_open_windows, held(), added, batch.n, "records");
  }

  std::int64_t rows_;
  std::int64_t min_periods_;
  std::vector<double> vals_;  // values of held records, slot * channels + channel
  std::vector<std::uint32_t> free_;
  std::priority_queue<held_record, std::vector<held_record>, std::greater<held_record>> pending_;
  std::unordered_map<std::uint32_t, std::deque<held_record>> history_;  // last rows - 1 emitted
  std::vector<channel_acc> tmp_;
};

}  // namespace

std::unique_ptr<window_engine> make_cpu_rolling_engine(pipeline_options const& options)
{
  return std::make_unique<cpu_rolling_engine>(options);
}

}  // namespace cusense::detail
