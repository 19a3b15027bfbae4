// CPU engine for session windows: per key, records less than `gap` apart (directly or through
// records between them) share a session [first, last + gap).
//
// Records are processed one by one in arrival order, so results are bit-identical for any cut
// of the stream into batches. A record
//   - is late when the session it would open, [t, t + gap), ends at or before the watermark
//     minus allowed_lateness (the watermark just before it), or when it lies within gap of a
//     session of its key that was already freed (sessions are never reopened);
//   - otherwise joins every session of its key it lies within gap of; a record that bridges
//     several sessions merges them (also across batches): the merged accumulator is the merge
//     of theirs in start order, then the record is added.
// A session is emitted once the watermark reaches its end (end <= watermark), in
// (window_start, key) order within one watermark step, and kept until end <= watermark -
// allowed_lateness; a record that changes a session already emitted emits it again with
// is_update (when the session is still or again closed) or marks it so that its next emission
// is flagged is_update.
#include <algorithm>
#include <limits>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <cusense/detail/checkpoint.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/ops/windows.hpp>

#include "engine_common.hpp"

namespace cusense::detail {
namespace {

struct session_state {
  std::int64_t last;
  std::uint32_t slot;
  bool emitted;  // emitted at least once (its next emission is an update)
  bool closed;   // end <= watermark: emitted, waiting to be freed
};

class cpu_session_engine final : public cpu_engine_base {
 public:
  explicit cpu_session_engine(pipeline_options const& options)
    : cpu_engine_base(options), sess_{options.window.gap}, pool_(options.channels)
  {
  }

  void push(record_batch const& batch) override
  {
    with_values(batch, [&](auto const* values) { push_typed(batch, values); });
  }

  void flush() override
  {
    emit_open_until(std::numeric_limits<std::int64_t>::max());
    free_until(std::numeric_limits<std::int64_t>::max());
    freed_until_.clear();
    freed_order_.clear();
  }

  engine_counters counters() override
  {
    return make_counters(pool_.live(), keys_.size(),
                         pool_.bytes() + pool_.live() * 128 + keys_.size() * 64 + freed_until_.size() * 96);
  }

  // Checkpoint: clock, counters, the sessions sorted by (key, first) with their flags and
  // accumulators, and the freed-session marks.
  void save_state(state_writer& out) override
  {
    save_clock(out);
    save_counts(out);
    std::vector<std::uint32_t> keys;
    std::size_t n = 0;
    for (auto const& [key, sessions] : keys_) {
      keys.push_back(key);
      n += sessions.size();
    }
    std::sort(keys.begin(), keys.end());
    out.u64(n);
    for (std::uint32_t key : keys) {
      for (auto const& [first, st] : keys_.at(key)) {
        out.u32(key);
        out.i64(first);
        out.i64(st.last);
        out.boolean(st.emitted);
        out.boolean(st.closed);
        channel_acc const* a = pool_.at(st.slot);
        for (int c = 0; c < channels_; ++c) write_channel_acc(out, a[c]);
      }
    }
    std::vector<std::pair<std::uint32_t, std::int64_t>> freed(freed_until_.begin(), freed_until_.end());
    std::sort(freed.begin(), freed.end());
    out.u64(freed.size());
    for (auto const& [key, until] : freed) {
      out.u32(key);
      out.i64(until);
    }
    out.u64(freed_order_.size());
    for (auto const& [end, key] : freed_order_) {
      out.i64(end);
      out.u32(key);
    }
  }

  void load_state(state_reader& in) override
  {
    load_clock(in);
    load_counts(in);
    std::size_t const n = in.count(22);
    for (std::size_t i = 0; i < n; ++i) {
      std::uint32_t const key  = in.u32();
      std::int64_t const first = checked_time(in.i64());
      session_state st{};
      st.last    = checked_time(in.i64());
      st.emitted = in.boolean();
      st.closed  = in.boolean();
      state_reader::check(first <= st.last, "session ends before it starts");
      session_map& sessions = keys_[key];
      state_reader::check(sessions.empty() || sessions.rbegin()->second.last + sess_.gap <= first,
                          "sessions of a key overlap or are out of order");
      st.slot        = pool_.take();
      channel_acc* a = pool_.at(st.slot);
      for (int c = 0; c < channels_; ++c) read_channel_acc(in, a[c]);
      sessions.emplace(first, st);
      (st.closed ? kept_ : open_).emplace(sess_.end(st.last), key, first);
    }
    std::size_t const nf = in.count(12);
    for (std::size_t i = 0; i < nf; ++i) {
      std::uint32_t const key = in.u32();
      freed_until_[key]       = checked_time(in.i64(), sess_.gap);
    }
    std::size_t const no = in.count(12);
    for (std::size_t i = 0; i < no; ++i) {
      std::int64_t const end = checked_time(in.i64(), sess_.gap);
      freed_order_.emplace(end, in.u32());
    }
  }

 private:
  using session_map = std::map<std::int64_t, session_state>;  // first -> session
  using end_entry   = std::tuple<std::int64_t, std::uint32_t, std::int64_t>;  // end, key, first

  template <typename T>
  void push_typed(record_batch const& batch, T const* values)
  {
    if (options_.max_open_windows != 0) { check_capacity(batch); }
    std::int64_t const gap = sess_.gap;
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::uint32_t const key = batch.keys[i];
      std::int64_t const t    = batch.timestamps[i];
      T const* v              = values + i * static_cast<std::size_t>(channels_);
      std::uint64_t const seq = seq_++;
      if (is_late(key, t)) {
        reject_late(key, t, v);
        continue;
      }
      session_map& sessions = keys_[key];
      // Sessions touching t: first < t + gap and last + gap > t (contiguous in start order).
      auto hi = sessions.lower_bound(t + gap);
      auto lo = hi;
      while (lo != sessions.begin() && sess_.touches(t, std::prev(lo)->first, std::prev(lo)->second.last)) --lo;
      std::int64_t first = t, last = t;
      bool emitted = false;
      std::uint32_t slot;
      if (lo == hi) {
        slot = pool_.take();
      } else {
        slot  = lo->second.slot;
        first = std::min(first, lo->first);
        for (auto it = lo; it != hi; ++it) {
          last    = std::max(last, it->second.last);
          emitted = emitted || it->second.emitted;
          unlink(key, it->first, it->second);
          if (it != lo) {
            channel_acc* into = pool_.at(slot);
            channel_acc* from = pool_.at(it->second.slot);
            for (int c = 0; c < channels_; ++c) merge_into(into[c], from[c], layout_);
            pool_.give_back(it->second.slot);
          }
        }
        sessions.erase(lo, hi);
      }
      nan_values_ += add_record(pool_.at(slot), layout_, v, channels_, t, seq);
      ++aggregated_;
      session_state s{last, slot, emitted, false};
      std::int64_t const end = sess_.end(last);
      if (clock_.has && end <= clock_.value()) {
        // Changes a session that is already closed (allowed lateness): emit it again now.
        s.closed  = true;
        s.emitted = true;
        append(key, first, s, true);
        kept_.emplace(end, key, first);
      } else {
        open_.emplace(end, key, first);
      }
      sessions.emplace(first, s);
      if (clock_.see(t)) { advance(); }
    }
  }

  bool is_late(std::uint32_t key, std::int64_t t) const
  {
    if (!clock_.has) { return false; }
    std::int64_t const horizon = minus_clamped(clock_.value(), options_.allowed_lateness);
    if (sess_.end(t) <= horizon) { return true; }
    auto f = freed_until_.find(key);
    return f != freed_until_.end() && t < f->second;
  }

  // Removes a session from the end-ordered sets.
  void unlink(std::uint32_t key, std::int64_t first, session_state const& s)
  {
    end_entry const e{sess_.end(s.last), key, first};
    if (s.closed) {
      kept_.erase(e);
    } else {
      open_.erase(e);
    }
  }

  void append(std::uint32_t key, std::int64_t first, session_state const& s, bool update)
  {
    windows_out_.append(key, first, sess_.end(s.last), pool_.at(s.slot), update);
    ++emitted_;
  }

  void advance()
  {
    std::int64_t const wm = clock_.value();
    emit_open_until(wm);
    free_until(minus_clamped(wm, options_.allowed_lateness));
    // Freed-session marks that can no longer decide anything: a record before `until` has
    // t + gap < until + gap <= horizon, late anyway.
    std::int64_t const horizon = minus_clamped(wm, options_.allowed_lateness);
    while (!freed_order_.empty() && sess_.end(freed_order_.begin()->first) <= horizon) {
      auto const [until, key] = *freed_order_.begin();
      auto f                  = freed_until_.find(key);
      if (f != freed_until_.end() && f->second == until) { freed_until_.erase(f); }
      freed_order_.erase(freed_order_.begin());
    }
  }

  // Emits, in (window_start, key) order, the open sessions with end <= limit; they become
  // closed (kept for allowed lateness; freed by free_until).
  void emit_open_until(std::int64_t limit)
  {
    ready_.clear();
    auto it = open_.begin();
    for (; it != open_.end() && std::get<0>(*it) <= limit; ++it) {
      ready_.emplace_back(std::get<2>(*it), std::get<1>(*it));
    }
    open_.erase(open_.begin(), it);
    std::sort(ready_.begin(), ready_.end());
    windows_out_.reserve(ready_.size());
    for (auto const& [first, key] : ready_) {
      session_state& s = keys_.at(key).at(first);
      append(key, first, s, s.emitted);
      s.emitted = true;
      s.closed  = true;
      kept_.emplace(sess_.end(s.last), key, first);
    }
  }

  // Frees the closed sessions with end <= limit.
  void free_until(std::int64_t limit)
  {
    auto it = kept_.begin();
    for (; it != kept_.end() && std::get<0>(*it) <= limit; ++it) {
      auto const [end, key, first] = *it;
      auto k                       = keys_.find(key);
      auto s                       = k->second.find(first);
      pool_.give_back(s->second.slot);
      k->second.erase(s);
      if (k->second.empty()) { keys_.erase(k); }
      if (limit != std::numeric_limits<std::int64_t>::max()) {
        // try_emplace: a default-inserted 0 would mark negative times as freed.
        auto [until, fresh] = freed_until_.try_emplace(key, end);
        if (!fresh) { until->second = std::max(until->second, end); }
        freed_order_.emplace(end, key);
      }
    }
    kept_.erase(kept_.begin(), it);
  }

  // Refuses (before changing anything) a batch that could take the sessions held beyond
  // max_open_windows: counts the gap-separated runs, per key, of its non-late records (an
  // upper bound on the sessions it opens).
  void check_capacity(record_batch const& batch)
  {
    watermark_clock clock = clock_;
    std::vector<std::pair<std::uint32_t, std::int64_t>> recs;
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::int64_t const t = batch.timestamps[i];
      if (clock.has && sess_.end(t) <= minus_clamped(clock.value(), options_.allowed_lateness)) { continue; }
      recs.emplace_back(batch.keys[i], t);
      clock.see(t);
    }
    std::sort(recs.begin(), recs.end());
    std::size_t runs = 0;
    for (std::size_t i = 0; i < recs.size(); ++i) {
      runs += i == 0 || recs[i].first != recs[i - 1].first || recs[i].second >= recs[i - 1].second + sess_.gap;
    }
    check_cap(options_.max_open_windows, pool_.live(), runs, batch.n, "sessions");
  }

  ops::session sess_;
  acc_pool pool_;
  std::unordered_map<std::uint32_t, session_map> keys_;
  std::set<end_entry> open_;  // end > watermark: emitted once the watermark reaches the end
  std::set<end_entry> kept_;  // closed, kept for allowed lateness
  std::unordered_map<std::uint32_t, std::int64_t> freed_until_;  // key -> largest freed end
  std::set<std::pair<std::int64_t, std::uint32_t>> freed_order_;  // (freed end, key)
  std::vector<std::pair<std::int64_t, std::uint32_t>> ready_;     // scratch: (first, key)
};

}  // namespace

std::unique_ptr<window_engine> make_cpu_session_engine(pipeline_options const& options)
{
  return std::make_unique<cpu_session_engine>(options);
}

}  // namespace cusense::detail
