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
#include <cassert>
#include <limits>
#include <utility>
#include <vector>

#include <cusense/detail/state_codec.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/ops/windows.hpp>

#include "engine_common.hpp"

namespace cusense::detail {
namespace {

// Layout (chosen so that a record costs a hash probe and a scan of its key's few sessions, with
// no per-record tree operation or allocation):
//   - per key, its sessions in a vector sorted by first (usually one or two);
//   - the sessions waiting for their end (open) or for their release (kept) in two min-heaps
//     of entries whose end is a lower bound: a record that only extends a session leaves its
//     entry alone (ends only grow), and an entry popped too early is pushed again with the
//     session's current end. An entry is valid while its ticket is the session's; a session gets
//     a new ticket (and entry) whenever it changes heap, start or is merged, so stale entries
//     are skipped when popped.
// The heaps give the sessions due at a watermark step in no useful order: they are sorted by
// (window_start, key) before they are emitted; the order of releases is unobservable (it only
// permutes free accumulator slots).

struct session_state {
  std::int64_t first;
  std::int64_t last;
  std::uint64_t ticket;  // matches the session's one valid heap entry
  std::uint32_t slot;
  bool emitted;  // emitted at least once (its next emission is an update)
  bool closed;   // end <= watermark: emitted, waiting to be freed
};

struct key_state {
  std::uint32_t key = 0;
  bool freed        = false;  // freed_until holds the largest end of a freed session
  std::int64_t freed_until = 0;
  std::vector<session_state> sessions;  // by first; each starts at or after the end of the one before
  std::uint64_t saved_in = 0;  // the last batch (epoch) that journalled it
};

// A session due at end_bound (or later): (key, first) finds it, ticket tells whether it is current.
struct due_entry {
  std::int64_t end_bound;
  std::int64_t first;
  std::uint64_t ticket;
  std::uint32_t key;
};

// Min-heap of due_entry by end_bound; ties in any order (callers do not depend on it).
class due_heap {
 public:
  bool empty() const { return heap_.empty(); }
  due_entry const& top() const { return heap_.front(); }
  void push(due_entry const& e)
  {
    heap_.push_back(e);
    std::push_heap(heap_.begin(), heap_.end(), later{});
  }
  due_entry pop()
  {
    std::pop_heap(heap_.begin(), heap_.end(), later{});
    due_entry const e = heap_.back();
    heap_.pop_back();
    return e;
  }
  void clear() { heap_.clear(); }
  /// Undoes a batch: drops the entries with tickets above `last_old` (filed by the batch) and
  /// puts back those it popped; never allocates (the heap held them all before the batch).
  void undo(std::uint64_t last_old, std::vector<due_entry> const& popped) noexcept
  {
    heap_.erase(std::remove_if(heap_.begin(), heap_.end(),
                               [&](due_entry const& e) { return e.ticket > last_old; }),
                heap_.end());
    for (due_entry const& e : popped) heap_.push_back(e);
    std::make_heap(heap_.begin(), heap_.end(), later{});
  }

 private:
  struct later {  // a type, not a function pointer, so that the heap algorithms inline it
    bool operator()(due_entry const& a, due_entry const& b) const { return a.end_bound > b.end_bound; }
  };
  std::vector<due_entry> heap_;
};

// Open-addressing map from key to an index, linear probing with backward-shift deletion.
class key_map {
 public:
  static constexpr std::uint32_t none = ~std::uint32_t{0};

  key_map() { entries_.resize(64); }

  std::uint32_t find(std::uint32_t key) const
  {
    for (std::size_t i = home(key);; i = (i + 1) & mask()) {
      entry const& e = entries_[i];
      if (e.index == none) { return none; }
      if (e.key == key) { return e.index; }
    }
  }
  /// Room for `n` more keys: inserting them will not allocate.
  void reserve_more(std::size_t n)
  {
    while (2 * (size_ + n) > entries_.size()) grow();
  }
  /// Maps a key that is not present. Does not allocate when it leaves the map no larger than
  /// it has been.
  void insert(std::uint32_t key, std::uint32_t index)
  {
    if (2 * (size_ + 1) > entries_.size()) { grow(); }
    std::size_t i = home(key);
    while (entries_[i].index != none) { i = (i + 1) & mask(); }
    entries_[i] = {key, index};
    ++size_;
  }
  /// Unmaps a key that is present.
  void erase(std::uint32_t key)
  {
    std::size_t hole = home(key);
    while (entries_[hole].key != key || entries_[hole].index == none) { hole = (hole + 1) & mask(); }
    for (std::size_t j = (hole + 1) & mask(); entries_[j].index != none; j = (j + 1) & mask()) {
      // Move j into the hole unless its home lies (cyclically) after the hole.
      if (((j - home(entries_[j].key)) & mask()) >= ((j - hole) & mask())) {
        entries_[hole] = entries_[j];
        hole           = j;
      }
    }
    entries_[hole].index = none;
    --size_;
  }
  void clear()
  {
    entries_.assign(64, entry{});
    size_ = 0;
  }

 private:
  struct entry {
    std::uint32_t key   = 0;
    std::uint32_t index = none;
  };
  std::size_t mask() const { return entries_.size() - 1; }
  std::size_t home(std::uint32_t key) const
  {
    return static_cast<std::size_t>((key * 0x9E3779B97F4A7C15ull) >> 32) & mask();
  }
  void grow()
  {
    std::vector<entry> old(entries_.size() * 2);
    old.swap(entries_);
    size_ = 0;
    for (entry const& e : old) {
      if (e.index != none) { insert(e.key, e.index); }
    }
  }
  std::vector<entry> entries_;
  std::size_t size_ = 0;
};

class cpu_session_kind final : public cpu_kind_base {
 public:
  explicit cpu_session_kind(pipeline_options const& options)
    : cpu_kind_base(options), sess_{options.window.gap}, pool_(options.channels)
  {
  }

  // All or nothing: what the batch changes is journalled (keys added and dropped, the prior
  // state of the keys and accumulators it changes, heap entries it pops) and undone if anything
  // throws; freed-session marks are only filed and dropped once the batch is kept.
  void apply(watermark_feed& feed, window_output& out) override
  {
    out_ = &out;
    start_batch();
    try {
      with_values(feed.batch(), [&](auto const* values) { push_typed(feed, values); });
      // Room to file the batch's freed-session marks and drop those it made obsolete.
      reserve_more(freed_order_, marks_added_.size());
      reserve_more(free_key_states_, key_states_.size() - free_key_states_.size());
    } catch (...) {
      undo_batch();
      throw;
    }
    file_marks();
    end_batch();
    if (feed.has()) { drop_marks_before(horizon(feed.value())); }
  }

  void flush(window_output& out) override
  {
    out_ = &out;
    emit_open_until(std::numeric_limits<std::int64_t>::max());
    free_until(std::numeric_limits<std::int64_t>::max());
    // Every session is freed and the freed-session marks are dropped: no key holds state.
    keys_.clear();
    key_states_.clear();
    free_key_states_.clear();
    open_.clear();
    kept_.clear();
    freed_marks_ = 0;
    freed_order_.clear();
  }

  kind_size size() const override
  {
    return {pool_.live(), live_keys_,
            pool_.bytes() + pool_.live() * 128 + live_keys_ * 64 + freed_marks_ * 96};
  }

  // Checkpoint: clock, counters, the sessions sorted by (key, first) with their flags and
  // accumulators, and the freed-session marks.
  void save_state(state_writer& out, runner_fields const& fields) override
  {
    fields.save_clock(out);
    fields.save_counts(out);
    std::vector<std::pair<std::uint32_t, std::uint32_t>> with_sessions;  // key, index
    std::vector<std::pair<std::uint32_t, std::int64_t>> freed;            // key, until
    std::size_t n = 0;
    for (std::uint32_t i : used_key_states()) {
      key_state const& ks = key_states_[i];
      if (!ks.sessions.empty()) { with_sessions.emplace_back(ks.key, i); }
      if (ks.freed) { freed.emplace_back(ks.key, ks.freed_until); }
      n += ks.sessions.size();
    }
    std::sort(with_sessions.begin(), with_sessions.end());
    out.u64(n);
    for (auto const& [key, index] : with_sessions) {
      for (session_state const& st : key_states_[index].sessions) {
        out.u32(key);
        out.i64(st.first);
        out.i64(st.last);
        out.boolean(st.emitted);
        out.boolean(st.closed);
        channel_acc const* a = pool_.at(st.slot);
        for (int c = 0; c < channels_; ++c) write_channel_acc(out, a[c]);
      }
    }
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

  void load_state(state_reader& in, runner_fields& fields, key_filter const& keep) override
  {
    fields.load_clock(in);
    fields.load_counts(in);
    std::size_t const n = in.count(22);
    for (std::size_t i = 0; i < n; ++i) {
      std::uint32_t const key = in.u32();
      session_state st{};
      st.first   = checked_time(in.i64());
      st.last    = checked_time(in.i64());
      st.emitted = in.boolean();
      st.closed  = in.boolean();
      state_reader::check(st.first <= st.last, "session ends before it starts");
      if (!keep.keeps(key)) {
        channel_acc skipped;
        for (int c = 0; c < channels_; ++c) read_channel_acc(in, skipped);
        continue;
      }
      key_state& ks = key_states_[state_of(key)];
      state_reader::check(ks.sessions.empty() || ks.sessions.back().last + sess_.gap <= st.first,
                          "sessions of a key overlap or are out of order");
      st.slot        = pool_.take();
      channel_acc* a = pool_.at(st.slot);
      for (int c = 0; c < channels_; ++c) read_channel_acc(in, a[c]);
      file(key, st);
      if (ks.sessions.empty()) { ++live_keys_; }
      ks.sessions.push_back(st);
    }
    std::size_t const nf = in.count(12);
    for (std::size_t i = 0; i < nf; ++i) {
      std::uint32_t const key  = in.u32();
      std::int64_t const until = checked_time(in.i64(), sess_.gap);
      if (!keep.keeps(key)) { continue; }
      key_state& ks            = key_states_[state_of(key)];
      freed_marks_ += ks.freed ? 0 : 1;
      ks.freed       = true;
      ks.freed_until = until;
    }
    std::size_t const no = in.count(12);
    for (std::size_t i = 0; i < no; ++i) {
      std::int64_t const end  = checked_time(in.i64(), sess_.gap);
      std::uint32_t const key = in.u32();
      if (keep.keeps(key)) { freed_order_.emplace_back(end, key); }
    }
    std::sort(freed_order_.begin(), freed_order_.end());
    freed_order_.erase(std::unique(freed_order_.begin(), freed_order_.end()), freed_order_.end());
  }

 private:
  template <typename T>
  void push_typed(watermark_feed& feed, T const* values)
  {
    record_batch const& batch = feed.batch();
    std::int64_t const gap    = sess_.gap;
    auto const advance        = [&](std::int64_t position) {
      this->advance(feed.value());
      out_->tag_windows(position);
    };
    feed.start(advance);
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::uint32_t const key = batch.keys[i];
      std::int64_t const t    = batch.timestamps[i];
      T const* v              = values + i * static_cast<std::size_t>(channels_);
      std::uint32_t index     = keys_.find(key);
      if (is_late(feed, index, t)) {
        out_->reject_late(key, t, v, feed.position(i));
        feed.after(i, t, advance);
        continue;
      }
      if (index == key_map::none) {
        index = state_of(key);
      } else {
        keep_prior_state(index);
      }
      std::vector<session_state>& sessions = key_states_[index].sessions;
      // Sessions touching t: first < t + gap and last + gap > t (contiguous in start order).
      std::size_t const hi = static_cast<std::size_t>(
        std::partition_point(sessions.begin(), sessions.end(),
                             [&](session_state const& s) { return s.first < t + gap; }) -
        sessions.begin());
      std::size_t lo = hi;
      while (lo > 0 && sess_.touches(t, sessions[lo - 1].first, sessions[lo - 1].last)) --lo;
      session_state s{t, t, 0, 0, false, false};
      bool keeps_entry = false;  // the session's heap entry stays valid
      if (lo == hi) {
        s.slot = take_slot();
      } else {
        session_state const& base = sessions[lo];
        s.slot   = base.slot;
        s.first  = std::min(t, base.first);
        s.ticket = base.ticket;
        for (std::size_t j = lo; j < hi; ++j) {
          s.last    = std::max(s.last, sessions[j].last);
          s.emitted = s.emitted || sessions[j].emitted;
          if (j != lo) {
            prior_.keep(pool_, s.slot);
            channel_acc* into = pool_.at(s.slot);
            channel_acc* from = pool_.at(sessions[j].slot);
            for (int c = 0; c < channels_; ++c) merge_into(into[c], from[c], layout_);
            give_back_slot(sessions[j].slot);
          }
        }
        keeps_entry = hi - lo == 1 && s.first == base.first;
      }
      prior_.keep(pool_, s.slot);
      out_->nan_values += add_record(pool_.at(s.slot), layout_, v, channels_, t, feed.seq(i));
      std::int64_t const end = sess_.end(s.last);
      if (feed.has() && end <= feed.value()) {
        // Changes a session that is already closed (allowed lateness): emit it again now.
        keeps_entry = keeps_entry && sessions[lo].closed;
        s.closed    = true;
        s.emitted   = true;
        append(key, s.first, s, true);
      } else {
        keeps_entry = keeps_entry && !sessions[lo].closed;
      }
      if (!keeps_entry) { file(key, s); }
      if (lo == hi) {
        if (sessions.empty()) { ++live_keys_; }
        sessions.insert(sessions.begin() + static_cast<std::ptrdiff_t>(lo), s);
      } else {
        sessions[lo] = s;
        sessions.erase(sessions.begin() + static_cast<std::ptrdiff_t>(lo + 1),
                       sessions.begin() + static_cast<std::ptrdiff_t>(hi));
      }
      out_->tag_windows(feed.position(i));  // an update emitted above
      feed.after(i, t, advance);
    }
  }

  bool is_late(watermark_feed const& feed, std::uint32_t index, std::int64_t t) const
  {
    if (!feed.has()) { return false; }
    std::int64_t const horizon = minus_clamped(feed.value(), options_.allowed_lateness);
    if (sess_.end(t) <= horizon) { return true; }
    if (index == key_map::none) { return false; }
    key_state const& ks = key_states_[index];
    return ks.freed && t < ks.freed_until;
  }

  // The state of `key`, created when missing (allocating before changing anything).
  std::uint32_t state_of(std::uint32_t key)
  {
    std::uint32_t index = keys_.find(key);
    if (index != key_map::none) { return index; }
    bool const reused = !free_key_states_.empty();
    if (!reused) { reserve_more(key_states_, 1); }
    keys_.reserve_more(1);
    if (journalling_) { reserve_more(changes_, 1); }
    if (reused) {
      index = free_key_states_.back();
      free_key_states_.pop_back();
    } else {
      index = static_cast<std::uint32_t>(key_states_.size());
      key_states_.emplace_back();
    }
    key_states_[index].key      = key;
    key_states_[index].saved_in = epoch_;  // its undo below empties it: nothing to keep
    keys_.insert(key, index);
    if (journalling_) { changes_.push_back({change::key_added, reused, key, index}); }
    return index;
  }

  // Drops the state of a key that holds no session and no freed mark (its vector keeps its
  // capacity for the next key).
  void drop_if_unused(std::uint32_t index)
  {
    key_state& ks = key_states_[index];
    if (!ks.sessions.empty() || ks.freed) { return; }
    reserve_more(free_key_states_, 1);
    if (journalling_) { reserve_more(changes_, 1); }
    keys_.erase(ks.key);
    free_key_states_.push_back(index);
    if (journalling_) { changes_.push_back({change::key_dropped, false, ks.key, index}); }
  }

  // ----- one batch, all or nothing ----------------------------------------------------------

  // A change the batch made to the keys or the pool, undone in reverse order.
  struct change {
    enum what : std::uint8_t {
      key_added,    // index: from the free list (reused) or appended
      key_dropped,  // index went to the free list
      key_saved,    // the key's state before the batch: saved_keys_[at], saved_sessions_[from..)
      slot_taken,   // index: the slot, from the free list (reused) or appended
      slot_freed    // index: the slot, given back
    };
    what w;
    bool reused;
    std::uint32_t key;
    std::uint32_t index;
  };
  struct saved_key {
    bool freed;
    std::int64_t freed_until;
    std::size_t from;  // its sessions, in saved_sessions_
    std::size_t count;
  };

  void start_batch()
  {
    journalling_ = true;
    ++epoch_;
    prior_.start(pool_);
    batch_start_ = {live_keys_, freed_marks_, tickets_};
  }

  void end_batch() noexcept
  {
    journalling_ = false;
    changes_.clear();
    saved_keys_.clear();
    saved_sessions_.clear();
    popped_open_.clear();
    popped_kept_.clear();
    marks_added_.clear();
    prior_.clear();
  }

  // Before the batch first changes the state of key `index`: keeps its fields and sessions.
  void keep_prior_state(std::uint32_t index)
  {
    if (journalling_ && key_states_[index].saved_in != epoch_) { save_key(index); }
  }
  // Out of line: keep_prior_state is on every record's path, this once per key and batch.
  [[gnu::noinline]] void save_key(std::uint32_t index)
  {
    key_state& ks = key_states_[index];
    reserve_more(changes_, 1);
    reserve_more(saved_keys_, 1);
    std::size_t const from = saved_sessions_.size();
    saved_sessions_.insert(saved_sessions_.end(), ks.sessions.begin(), ks.sessions.end());
    saved_keys_.push_back({ks.freed, ks.freed_until, from, ks.sessions.size()});
    changes_.push_back({change::key_saved, false, ks.key, index});
    ks.saved_in = epoch_;
  }

  std::uint32_t take_slot()
  {
    if (journalling_) { reserve_more(changes_, 1); }
    bool const reused        = pool_.has_free();
    std::uint32_t const slot = pool_.take();
    if (journalling_) {
      prior_.taken(slot);
      changes_.push_back({change::slot_taken, reused, 0, slot});
    }
    return slot;
  }

  void give_back_slot(std::uint32_t slot)
  {
    pool_.reserve_free(1);
    if (journalling_) {
      prior_.keep(pool_, slot);
      reserve_more(changes_, 1);
    }
    pool_.give_back(slot);
    if (journalling_) { changes_.push_back({change::slot_freed, false, 0, slot}); }
  }

  // Pops the top entry of `heap`, journalling it when it was there before the batch.
  due_entry pop_due(due_heap& heap, std::vector<due_entry>& popped)
  {
    if (journalling_ && heap.top().ticket <= batch_start_.tickets) {
      popped.push_back(heap.top());
    }
    return heap.pop();
  }

  // An entry popped before the session's end: files it again, due at the session's end (with
  // a new ticket, so that an undo tells it from the entry it replaces).
  void file_again(std::uint32_t index, std::size_t pos)
  {
    keep_prior_state(index);
    session_state& s = key_states_[index].sessions[pos];
    file(key_states_[index].key, s);
  }

  // Puts everything the batch changed back as it was. Never allocates: every container holds
  // no more than it held before (nor than its capacity), and slots go back to the pool's free
  // list in reverse order of leaving it.
  void undo_batch() noexcept
  {
    std::size_t saved = saved_keys_.size();
    for (auto c = changes_.rbegin(); c != changes_.rend(); ++c) {
      switch (c->w) {
        case change::key_added: {
          key_state& ks = key_states_[c->index];
          keys_.erase(c->key);
          if (c->reused) {
            ks.sessions.clear();
            ks.freed = false;
            free_key_states_.push_back(c->index);
          } else {
            key_states_.pop_back();
          }
          break;
        }
        case change::key_dropped:
          assert(free_key_states_.back() == c->index);
          free_key_states_.pop_back();
          key_states_[c->index].key = c->key;  // its index may have gone to another key since
          keys_.insert(c->key, c->index);
          break;
        case change::key_saved: {
          saved_key const& k = saved_keys_[--saved];
          key_state& ks      = key_states_[c->index];
          ks.key             = c->key;
          auto const from    = saved_sessions_.begin() + static_cast<std::ptrdiff_t>(k.from);
          ks.sessions.assign(from, from + static_cast<std::ptrdiff_t>(k.count));
          ks.freed       = k.freed;
          ks.freed_until = k.freed_until;
          break;
        }
        case change::slot_taken: pool_.untake(c->index, c->reused); break;
        case change::slot_freed: pool_.retake(c->index); break;
      }
    }
    prior_.restore(pool_);
    open_.undo(batch_start_.tickets, popped_open_);
    kept_.undo(batch_start_.tickets, popped_kept_);
    live_keys_   = batch_start_.live_keys;
    freed_marks_ = batch_start_.freed_marks;
    end_batch();
  }

  std::vector<std::uint32_t> used_key_states() const
  {
    std::vector<bool> unused(key_states_.size());
    for (std::uint32_t i : free_key_states_) unused[i] = true;
    std::vector<std::uint32_t> used;
    for (std::uint32_t i = 0; i < key_states_.size(); ++i) {
      if (!unused[i]) { used.push_back(i); }
    }
    return used;
  }

  // Gives the session a new ticket and an entry in the heap of its state, due at its end.
  void file(std::uint32_t key, session_state& s)
  {
    s.ticket = ++tickets_;
    (s.closed ? kept_ : open_).push({sess_.end(s.last), s.first, s.ticket, key});
  }

  // The position of the session an entry stands for in its key's sessions, or npos when the
  // entry is stale.
  static constexpr std::size_t npos = ~std::size_t{0};
  std::size_t locate(due_entry const& e, std::uint32_t index) const
  {
    if (index == key_map::none) { return npos; }
    std::vector<session_state> const& sessions = key_states_[index].sessions;
    auto it = std::partition_point(sessions.begin(), sessions.end(),
                                   [&](session_state const& s) { return s.first < e.first; });
    if (it == sessions.end() || it->first != e.first || it->ticket != e.ticket) { return npos; }
    return static_cast<std::size_t>(it - sessions.begin());
  }

  void append(std::uint32_t key, std::int64_t first, session_state const& s, bool update)
  {
    out_->windows.append(key, first, sess_.end(s.last), pool_.at(s.slot), update);
  }

  // The watermark moved to `wm`: emit the sessions it closed, free what can no longer change.
  void advance(std::int64_t wm)
  {
    emit_open_until(wm);
    free_until(horizon(wm));
  }

  // Sessions ending at or before this are freed (records that would join them are late).
  std::int64_t horizon(std::int64_t wm) const
  {
    return minus_clamped(wm, options_.allowed_lateness);
  }

  // Files the marks of the sessions a kept batch freed (room reserved). They sort after every
  // mark filed before (those sessions ended after the horizon the last batch reached, or they
  // would have been freed by it), so appending them in order keeps freed_order_ sorted.
  void file_marks() noexcept
  {
    std::sort(marks_added_.begin(), marks_added_.end());
    std::size_t const old = freed_order_.size();
    freed_order_.insert(freed_order_.end(), marks_added_.begin(), marks_added_.end());
    if (old > 0 && !marks_added_.empty() && marks_added_.front() < freed_order_[old - 1]) {
      // Not expected (the note above); merged without a buffer when none can be had.
      auto const middle = freed_order_.begin() + static_cast<std::ptrdiff_t>(old);
      std::inplace_merge(freed_order_.begin(), middle, freed_order_.end());
    }
  }

  // Freed-session marks that can no longer decide anything: a record before `until` has
  // t + gap < until + gap <= horizon, late anyway. Dropped once a batch is kept (the watermark
  // only rises, and a mark due within the batch decides nothing in it), so that no batch needs
  // to undo it; never allocates given room for every key state in free_key_states_.
  void drop_marks_before(std::int64_t horizon) noexcept
  {
    std::size_t dropped = 0;
    for (; dropped < freed_order_.size() && sess_.end(freed_order_[dropped].first) <= horizon;
         ++dropped) {
      auto const [until, key]   = freed_order_[dropped];
      std::uint32_t const index = keys_.find(key);
      if (index != key_map::none && key_states_[index].freed &&
          key_states_[index].freed_until == until) {
        key_states_[index].freed = false;
        --freed_marks_;
        drop_if_unused(index);
      }
    }
    freed_order_.erase(freed_order_.begin(),
                       freed_order_.begin() + static_cast<std::ptrdiff_t>(dropped));
  }

  // Emits, in (window_start, key) order, the open sessions with end <= limit; they become
  // closed (kept for allowed lateness; freed by free_until).
  void emit_open_until(std::int64_t limit)
  {
    if (open_.empty() || open_.top().end_bound > limit) { return; }  // most watermark steps
    ready_.clear();
    while (!open_.empty() && open_.top().end_bound <= limit) {
      reserve_more(ready_, 1);
      if (journalling_) { reserve_more(popped_open_, 1); }
      due_entry const e         = pop_due(open_, popped_open_);
      std::uint32_t const index = keys_.find(e.key);
      std::size_t const pos     = locate(e, index);
      if (pos == npos) { continue; }
      std::int64_t const end = sess_.end(key_states_[index].sessions[pos].last);
      if (end > limit) {
        file_again(index, pos);
        continue;
      }
      ready_.push_back({e.first, e.key, index, pos});
    }
    std::sort(ready_.begin(), ready_.end(), [](ready_session const& a, ready_session const& b) {
      return a.first != b.first ? a.first < b.first : a.key < b.key;
    });
    out_->windows.reserve(ready_.size());
    for (ready_session const& r : ready_) {
      keep_prior_state(r.index);
      session_state& s = key_states_[r.index].sessions[r.pos];
      append(r.key, r.first, s, s.emitted);
      s.emitted = true;
      s.closed  = true;
      file(r.key, s);
    }
  }

  // Frees the closed sessions with end <= limit.
  void free_until(std::int64_t limit)
  {
    bool const marks = limit != std::numeric_limits<std::int64_t>::max();
    while (!kept_.empty() && kept_.top().end_bound <= limit) {
      if (journalling_) { reserve_more(popped_kept_, 1); }
      due_entry const e         = pop_due(kept_, popped_kept_);
      std::uint32_t const index = keys_.find(e.key);
      std::size_t const pos     = locate(e, index);
      if (pos == npos) { continue; }
      std::int64_t const end = sess_.end(key_states_[index].sessions[pos].last);
      if (end > limit) {
        file_again(index, pos);
        continue;
      }
      keep_prior_state(index);
      if (marks) { marks_added_.emplace_back(end, e.key); }  // filed once the batch is kept
      key_state& ks = key_states_[index];
      give_back_slot(ks.sessions[pos].slot);
      ks.sessions.erase(ks.sessions.begin() + static_cast<std::ptrdiff_t>(pos));
      if (ks.sessions.empty()) { --live_keys_; }
      if (marks) {
        freed_marks_ += ks.freed ? 0 : 1;
        ks.freed_until = ks.freed ? std::max(ks.freed_until, end) : end;
        ks.freed       = true;
      }
      drop_if_unused(index);
    }
  }

  // Refuses (before changing anything) a batch that could take the sessions held beyond
  // max_open_windows: counts the gap-separated runs, per key, of its non-late records (an
  // upper bound on the sessions it opens).
  void check_capacity(watermark_feed feed) override
  {
    record_batch const& batch = feed.batch();
    auto const no_op          = [](std::int64_t) {};
    std::vector<std::pair<std::uint32_t, std::int64_t>> recs;
    feed.start(no_op);
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::int64_t const t = batch.timestamps[i];
      if (!(feed.has() && sess_.end(t) <= minus_clamped(feed.value(), options_.allowed_lateness))) {
        recs.emplace_back(batch.keys[i], t);
      }
      feed.after(i, t, no_op);
    }
    std::sort(recs.begin(), recs.end());
    std::size_t runs = 0;
    for (std::size_t i = 0; i < recs.size(); ++i) {
      runs += i == 0 || recs[i].first != recs[i - 1].first || recs[i].second >= recs[i - 1].second + sess_.gap;
    }
    check_cap(options_.max_open_windows, pool_.live(), runs, batch.n, "sessions");
  }

  struct ready_session {
    std::int64_t first;
    std::uint32_t key;
    std::uint32_t index;  // in key_states_
    std::size_t pos;      // in its sessions
  };

  ops::session sess_;
  acc_pool pool_;
  key_map keys_;                                // key -> index in key_states_
  std::vector<key_state> key_states_;           // keys with sessions or a freed mark, and unused ones
  std::vector<std::uint32_t> free_key_states_;  // unused indices of key_states_
  std::size_t live_keys_   = 0;                 // keys with sessions
  std::size_t freed_marks_ = 0;                 // keys with a freed mark
  due_heap open_;  // end > watermark: emitted once the watermark reaches the end
  due_heap kept_;  // closed, kept for allowed lateness
  std::uint64_t tickets_ = 0;
  using freed_mark = std::pair<std::int64_t, std::uint32_t>;  // (freed end, key)
  std::vector<freed_mark> freed_order_;  // sorted
  std::vector<ready_session> ready_;                              // scratch

  // The batch in progress (see apply).
  bool journalling_   = false;
  std::uint64_t epoch_ = 0;  // of the batch in progress or the last one
  struct {
    std::size_t live_keys;
    std::size_t freed_marks;
    std::uint64_t tickets;  // heap entries with higher tickets were filed by the batch
  } batch_start_{};
  std::vector<change> changes_;  // in the order they happened
  std::vector<saved_key> saved_keys_;
  std::vector<session_state> saved_sessions_;
  std::vector<freed_mark> marks_added_;  // filed into freed_order_ when the batch is kept
  std::vector<due_entry> popped_open_;  // entries the batch popped that were filed before it
  std::vector<due_entry> popped_kept_;
  prior_slots prior_;  // accumulators it changed, as they were
};

}  // namespace

std::unique_ptr<window_kind> make_cpu_session_kind(pipeline_options const& options)
{
  return std::make_unique<cpu_session_kind>(options);
}

}  // namespace cusense::detail
