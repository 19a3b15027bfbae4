// CPU backend of the keyed tumbling-window engine: state is sharded by key across threads; each
// shard finds a record's accumulator slot through its key (a table of each key's open states,
// found without hashing on the window), keeps the slots of each window in one list, and emits
// a window by sorting its list by key: no per-state index to insert into or erase from.
#include <algorithm>
#include <exception>
#include <limits>
#include <map>
#include <new>
#include <string>
#include <thread>

#include <cusense/error.hpp>

#include <cusense/detail/state_codec.hpp>
#include <cusense/detail/engine.hpp>
#include <cusense/detail/engine_shared.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/detail/window_kind.hpp>
#include <cusense/ops/moments.hpp>
#include <cusense/ops/windows.hpp>

#include "flat_index.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace cusense::detail {
namespace {

// Below this many records a batch is processed on the calling thread.
constexpr std::size_t parallel_threshold = 1 << 15;

std::uint32_t shard_of(std::uint32_t key, std::uint32_t shards)
{
  return static_cast<std::uint32_t>((std::uint64_t{key * 0x9E3779B1u} * shards) >> 32);
}

// Window id of a timestamp, remembering the last window's bounds: in a (mostly) time-ordered
// stream consecutive records share a window or move to a neighbour, so the 64-bit division is
// rarely needed.
struct window_id_cache {
  ops::tumbling const& window;
  // [lo, hi) holds window `id`; starts empty, with lo = hi below every time so that the first
  // record takes the division (t - size never underflows: |t| <= 2^62, size <= 2^61).
  std::int64_t lo = std::numeric_limits<std::int64_t>::min(), hi = lo, id = 0;

  std::int64_t operator()(std::int64_t t)
  {
    if (t >= hi) {
      if (t - window.size < hi) {  // the next window: common in a disordered stream
        ++id;
        lo = hi;
        hi = window.end(id);
        return id;
      }
    } else if (t >= lo) {
      return id;
    } else if (t + window.size >= lo) {  // the previous window
      --id;
      hi = lo;
      lo = window.start(id);
      return id;
    }
    id = window.id(t);
    lo = window.start(id);
    hi = window.end(id);
    return id;
  }
};

// Pass 0a counts records per shard in this many interleaved sets of counters.
constexpr std::size_t count_lanes = 4;

// Below this many emitted windows they are sorted and released on the calling thread.
constexpr std::size_t parallel_emit_threshold = 1 << 11;

// How many records ahead the state-lookup passes prefetch hash buckets and accumulators.
constexpr std::size_t prefetch_ahead = 16;

// Sorts v[0, n) by the upper 32 bits of each value (a key, unique in the range), with tmp[0, n)
// as scratch: a radix sort, least significant byte first, skipping bytes every value shares
// (dense sensor ids use one or two of the four).
void sort_by_upper_half(std::uint64_t* v, std::uint64_t* tmp, std::size_t n)
{
  if (n < 64) {
    std::sort(v, v + n);
    return;
  }
  std::size_t count[4][256] = {};
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t const k = v[i] >> 32;
    ++count[0][k & 255];
    ++count[1][(k >> 8) & 255];
    ++count[2][(k >> 16) & 255];
    ++count[3][k >> 24];
  }
  std::uint64_t* from = v;
  std::uint64_t* to   = tmp;
  for (int b = 0; b < 4; ++b) {
    unsigned const shift = 32 + 8 * static_cast<unsigned>(b);
    if (count[b][(from[0] >> shift) & 255] == n) { continue; }
    std::size_t at[256];
    std::size_t sum = 0;
    for (int d = 0; d < 256; ++d) {
      at[d] = sum;
      sum += count[b][d];
    }
    for (std::size_t i = 0; i < n; ++i) to[at[(from[i] >> shift) & 255]++] = from[i];
    std::swap(from, to);
  }
  if (from != v) { std::copy(from, from + n, v); }
}

// The open states of one key: up to two (key, window) states found without hashing on the
// window. A key's records mostly fall in the window of its previous record or, near a window
// boundary of a disordered stream, in the next one; further states of the key (a batch that
// spans many windows leaves many open until it ends) go to the shard's spill log. A way is
// empty when its window is window_none (below every window id a record can have), stale when
// its window was emitted (below the shard's live_from).
constexpr std::int64_t window_none = std::numeric_limits<std::int64_t>::min();

struct key_entry {
  std::int64_t win[2]   = {window_none, window_none};
  std::int64_t spill_max = window_none;  // the largest window of the key sent to the spill log
  std::uint32_t slot[2] = {flat_index::none, flat_index::none};
  std::uint32_t key     = 0;
  std::uint32_t used    = 0;
};

// Open-addressing table from a key to its key_entry (linear probing). Entries are not erased one by one when their windows are emitted:
// their ways go stale, and growing the table drops the entries that hold no open state.
// A batch can be undone (undo_batch): the keys it inserted are journalled, and the table as
// it was before the batch's first growth is kept until end_batch.
class key_table {
 public:
  key_table() : entries_(std::size_t{1} << min_bits), shift_(64 - min_bits) {}

  /// Entries, including keys whose states were all emitted since the table last grew.
  std::size_t size() const { return size_; }

  void prefetch(std::uint32_t key) const { __builtin_prefetch(&entries_[home(key)]); }

  /// The entry of `key`, added with empty ways when missing. Strong guarantee: throws
  /// (bad_alloc) with nothing changed. The pointer is valid until the next call.
  key_entry* find_or_insert(std::uint32_t key, std::int64_t live_from)
  {
    std::size_t const mask = entries_.size() - 1;
    for (std::size_t i = home(key);; i = (i + 1) & mask) {
      key_entry& e = entries_[i];
      if (e.used == 0) {
        if (3 * (size_ + 1) > 2 * entries_.size()) {
          rebuild(live_from);
          return find_or_insert(key, live_from);
        }
        reserve_more(inserted_, 1);
        inserted_.push_back(key);
        e.key  = key;
        e.used = 1;
        ++size_;
        return &e;
      }
      if (e.key == key) { return &e; }
    }
  }

  /// The entry of `key`, or null.
  key_entry* find(std::uint32_t key)
  {
    std::size_t const mask = entries_.size() - 1;
    for (std::size_t i = home(key);; i = (i + 1) & mask) {
      key_entry& e = entries_[i];
      if (e.used == 0) { return nullptr; }
      if (e.key == key) { return &e; }
    }
  }

  /// Removes every entry, keeping the capacity (no allocation).
  void clear()
  {
    std::fill(entries_.begin(), entries_.end(), key_entry{});
    size_ = 0;
  }

  /// Puts back the keys the table held when the batch began (entries found there are as the
  /// batch left them); never allocates.
  void undo_batch()
  {
    if (rebuilt_) {
      entries_.swap(before_entries_);
      shift_ = before_shift_;
      size_  = before_size_;
    }
    for (auto k = inserted_.rbegin(); k != inserted_.rend(); ++k) erase(*k);
    end_batch();
  }

  /// The batch is kept: forgets what undo_batch would need.
  void end_batch()
  {
    inserted_.clear();
    std::vector<key_entry>{}.swap(before_entries_);
    rebuilt_ = false;
  }

 private:
  static constexpr unsigned min_bits = 6;

  std::size_t home(std::uint32_t key) const
  {
    // Multiplicative hashing (one multiply, the product's high bits), with a multiplier
    // unrelated to shard_of()'s golden-ratio one, which would put a shard's keys in half the
    // table.
    return static_cast<std::size_t>((std::uint64_t{key} * 0xD6E8FEB86659FD93ull) >> shift_);
  }

  static bool holds_open(key_entry const& e, std::int64_t live_from)
  {
    return e.spill_max >= live_from || (e.slot[0] != flat_index::none && e.win[0] >= live_from) ||
           (e.slot[1] != flat_index::none && e.win[1] >= live_from);
  }

  // Moves the entries that hold an open state into a table at most half full.
  void rebuild(std::int64_t live_from)
  {
    std::size_t live = 0;
    for (key_entry const& e : entries_) live += e.used != 0 && holds_open(e, live_from);
    unsigned bits = min_bits;
    while ((std::size_t{1} << bits) < 2 * (live + 1)) ++bits;
    std::vector<key_entry> fresh(std::size_t{1} << bits);  // may throw: nothing changed yet
    std::swap(entries_, fresh);
    unsigned const old_shift    = shift_;
    std::size_t const old_size = size_;
    shift_ = 64 - bits;
    size_  = 0;
    std::size_t const mask = entries_.size() - 1;
    for (key_entry const& e : fresh) {
      if (e.used == 0 || !holds_open(e, live_from)) { continue; }
      std::size_t i = home(e.key);
      while (entries_[i].used != 0) i = (i + 1) & mask;
      entries_[i] = e;
      ++size_;
    }
    if (!rebuilt_) {  // the table as the batch found it, for undo_batch
      before_entries_ = std::move(fresh);
      before_shift_   = old_shift;
      before_size_    = old_size;
      rebuilt_        = true;
    }
  }

  // Removes `key` if present, shifting back the entries of its probe run so that every entry
  // stays reachable from its home (no tombstones).
  void erase(std::uint32_t key)
  {
    std::size_t const mask = entries_.size() - 1;
    std::size_t i          = home(key);
    for (;; i = (i + 1) & mask) {
      if (entries_[i].used == 0) { return; }
      if (entries_[i].key == key) { break; }
    }
    for (std::size_t j = (i + 1) & mask; entries_[j].used != 0; j = (j + 1) & mask) {
      std::size_t const h = home(entries_[j].key);
      // The entry at j may fill the hole at i when its home is not cyclically in (i, j].
      bool const home_between = i <= j ? (i < h && h <= j) : (i < h || h <= j);
      if (!home_between) {
        entries_[i] = entries_[j];
        i           = j;
      }
    }
    entries_[i] = key_entry{};
    --size_;
  }

  std::vector<key_entry> entries_;
  unsigned shift_;
  std::size_t size_ = 0;
  // The batch in progress (undo_batch).
  std::vector<std::uint32_t> inserted_;
  std::vector<key_entry> before_entries_;
  unsigned before_shift_    = 0;
  std::size_t before_size_  = 0;
  bool rebuilt_             = false;
};

struct shard_state {
  key_table keys;
  // States that did not fit in their key's ways, in the order they left (appended: no hashing
  // while a batch that spans many windows runs through them), and an index over a prefix of
  // that log, built only when a record looks for one of them (a key's old window).
  struct spilled_state {
    std::int64_t win;
    std::uint32_t key;
    std::uint32_t slot;
  };
  std::vector<spilled_state> spill_log;
  flat_index spill{16};
  std::size_t spill_indexed = 0;                  // spill_log[0, spill_indexed) is in spill
  std::int64_t spill_clean_from = window_none;    // live_from when the log was last pruned
  std::vector<ops::moments> acc;  // slot * channels + channel
  std::vector<std::uint32_t> slot_key;
  std::vector<std::uint32_t> free_slots;
  std::map<std::int64_t, std::vector<std::uint32_t>> open_by_window;  // window id -> slots
  // Every window below was emitted; ways holding one are stale. A record that is not late
  // lies in a window >= live_from (the emission limit follows the watermark), so a way whose
  // window equals the record's is never stale.
  std::int64_t live_from = window_none;
  // The list of the window that last received a state (creation is mostly in one window).
  std::int64_t last_win                 = window_none;
  std::vector<std::uint32_t>* last_list = nullptr;
  // The records of the current batch: runs of record indices (one per chunk of the batch, in
  // arrival order), read where pass 0 wrote them rather than copied together.
  std::vector<std::vector<std::uint32_t> const*> todo;
  std::vector<std::uint32_t> slots;  // state slot of each todo record, runs concatenated
  struct created_state {
    std::int64_t win;
    std::uint32_t key;
    std::uint32_t slot;
  };
  std::vector<created_state> created;  // states the current batch created, for roll-back
  std::vector<key_entry> changed_keys;  // key entries before the batch's create() changed them
  std::size_t slots_before     = 0;    // slot_key.size() when the batch started
  std::size_t spill_log_before = 0;    // spill_log.size() when the batch started
  std::uint64_t aggregated     = 0;
  std::uint64_t nan_values     = 0;

  std::size_t open_states() const { return slot_key.size() - free_slots.size(); }

  /// Bytes of the state held: each open state (its accumulators, key and place in its
  /// window's list), the keys that may hold one and the spilled states. Memory kept for reuse
  /// (free slots, capacity) is not counted, so a flushed pipeline reports 0.
  std::size_t state_bytes(int channels) const
  {
    return open_states() * (static_cast<std::size_t>(channels) * sizeof(ops::moments) + 2 * sizeof(std::uint32_t)) +
           keys.size() * sizeof(key_entry) + spill_log.size() * sizeof(spilled_state);
  }

  void begin_batch()
  {
    todo.clear();
    slots.clear();
    end_batch();
    slots_before     = slot_key.size();
    spill_log_before = spill_log.size();
  }

  /// The batch is kept: forgets what roll_back would need.
  void end_batch()
  {
    created.clear();
    changed_keys.clear();
    keys.end_batch();
  }

  // Gives back a slot taken for a state of the current batch. Slots are given back in reverse
  // order of taking, so an appended one is the last; neither branch allocates.
  void release_new_slot(std::uint32_t slot, int channels)
  {
    if (slot >= slots_before) {
      slot_key.pop_back();
      acc.resize(acc.size() - static_cast<std::size_t>(channels));
    } else {
      free_slots.push_back(slot);  // it was popped from there: the capacity is still held
    }
  }

  std::vector<std::uint32_t>& list_of(std::int64_t win)
  {
    if (last_list == nullptr || last_win != win) {
      last_list = &open_by_window[win];  // an empty list left by a failure is harmless
      last_win  = win;
    }
    return *last_list;
  }

  bool way_open(key_entry const& e, int way) const
  {
    return e.slot[way] != flat_index::none && e.win[way] >= live_from;
  }

  // The slot of (key, win) among the spilled states, or none.
  std::uint32_t find_spilled(std::uint32_t key, std::int64_t win)
  {
    for (; spill_indexed < spill_log.size(); ++spill_indexed) {  // insert may throw: no gap
      spilled_state const& s = spill_log[spill_indexed];
      if (s.win >= live_from) { spill.insert(s.key, s.win, s.slot); }
    }
    return spill.find(key, win);
  }

  // Sends a state to the spill log (strong guarantee).
  void spill_state(key_entry& e, std::int64_t win, std::uint32_t slot)
  {
    spill_log.push_back({win, e.key, slot});
    e.spill_max = std::max(e.spill_max, win);
  }

  // The slot of a new state (key, win), which must be missing. Throws (bad_alloc) with nothing
  // changed but, at most, a way sent to the spill log, which roll_back undoes.
  __attribute__((noinline)) std::uint32_t create(key_entry& e, std::uint32_t key, std::int64_t win,
                                                 int channels)
  {
    // A free way takes the state; else the older of the two windows goes to the spill log,
    // or the new state itself when it is older than both.
    reserve_more(changed_keys, 1);
    changed_keys.push_back(e);  // what roll_back restores
    int way = !way_open(e, 0) ? 0 : !way_open(e, 1) ? 1 : e.win[0] <= e.win[1] ? 0 : 1;
    bool const to_log = way_open(e, way) && win < e.win[way];
    if (way_open(e, way) && !to_log) { spill_state(e, e.win[way], e.slot[way]); }
    std::uint32_t slot;
    if (!free_slots.empty()) {
      slot = free_slots.back();
      free_slots.pop_back();
      std::fill_n(acc.begin() + std::size_t{slot} * channels, channels, ops::moments{});
      slot_key[slot] = key;
    } else {
      slot = static_cast<std::uint32_t>(slot_key.size());
      slot_key.push_back(key);
      try {
        acc.resize(acc.size() + channels);
      } catch (...) {
        slot_key.pop_back();
        throw;
      }
    }
    try {
      auto& list = list_of(win);
      list.push_back(slot);
      try {
        created.push_back({win, key, slot});
        try {
          if (to_log) { spill_state(e, win, slot); }
        } catch (...) {
          created.pop_back();
          throw;
        }
      } catch (...) {
        list.pop_back();
        throw;
      }
    } catch (...) {
      release_new_slot(slot, channels);
      throw;
    }
    if (!to_log) {
      e.win[way]  = win;
      e.slot[way] = slot;
    }
    return slot;
  }

  // Removes every state the current batch created and every key it added, restoring the
  // shard as it was (its state_bytes and checkpoint included). Allocates nothing.
  void roll_back(int channels)
  {
    keys.undo_batch();
    for (auto c = changed_keys.rbegin(); c != changed_keys.rend(); ++c) {
      if (key_entry* e = keys.find(c->key)) { *e = *c; }  // keys new to the batch are gone
    }
    shrink_to(spill_log, spill_log_before);  // the batch only appended to the log
    spill.clear();
    spill_indexed = 0;
    // In reverse: each window's list ends with the states the batch created in it, and slots
    // go back to the free list in the order they left it.
    for (auto c = created.rbegin(); c != created.rend(); ++c) {
      auto w = open_by_window.find(c->win);
      w->second.pop_back();
      if (w->second.empty()) { open_by_window.erase(w); }
      if (c->slot < slots_before) { free_slots.push_back(c->slot); }  // capacity held
    }
    slot_key.resize(slots_before);
    acc.resize(slots_before * static_cast<std::size_t>(channels));
    last_list = nullptr;
    end_batch();
  }

  // Drops the spilled states of emitted windows (no allocation).
  void prune_spill()
  {
    if (spill_clean_from == live_from) { return; }
    spill_log.erase(std::remove_if(spill_log.begin(), spill_log.end(),
                                   [&](spilled_state const& s) { return s.win < live_from; }),
                    spill_log.end());
    spill.clear();
    spill_indexed    = 0;
    spill_clean_from = live_from;
  }

  // Pass 1 of a batch, the only one that allocates state: finds or creates the state of every
  // todo record. On failure rolls back and rethrows.
  void resolve(std::uint32_t const* keys_of, std::int64_t const* ts, ops::tumbling const& window,
               int channels)
  {
    try {
      std::size_t n = 0;
      for (auto const* run : todo) n += run->size();
      slots.resize(n);
      window_id_cache wid{window};
      std::uint32_t* slot_of = slots.data();
      for (auto const* run : todo) {
        std::uint32_t const* const records = run->data();
        std::size_t const m                = run->size();
        for (std::size_t j = 0; j < m; ++j) {
          // The cache lines are the cost (random accesses): load them ahead of their use.
          if (j + prefetch_ahead < m) { keys.prefetch(keys_of[records[j + prefetch_ahead]]); }
          std::uint32_t const r   = records[j];
          std::uint32_t const key = keys_of[r];
          std::int64_t const win  = wid(ts[r]);
          key_entry* const e      = keys.find_or_insert(key, live_from);
          // Select the matching way with masks, not branches (which way matches changes from
          // key to key). Empty ways hold window_none and stale ones a window below live_from,
          // so neither matches; two ways never hold the same window.
          auto const match = [&](int w) {
            return std::uint32_t{0} - static_cast<std::uint32_t>(e->win[w] == win);
          };
          std::uint32_t const m0 = match(0), m1 = match(1);
          std::uint32_t slot     = (e->slot[0] & m0) | (e->slot[1] & m1) | ~(m0 | m1);
          if (slot == flat_index::none) {
            if (win <= e->spill_max) { slot = find_spilled(key, win); }
            if (slot == flat_index::none) { slot = create(*e, key, win, channels); }
          }
          *slot_of++ = slot;
        }
      }
    } catch (...) {
      roll_back(channels);
      throw;
    }
  }

  // Pass 2, cannot fail: folds the records into their states in arrival order.
  template <typename T>
  void accumulate(T const* values, int channels)
  {
    if (channels == 1) {
      accumulate<T, 1>(values);
    } else {
      accumulate<T, 0>(values, channels);
    }
  }

  // Fixed = the channel count known at compile time, or 0.
  template <typename T, int Fixed>
  void accumulate(T const* values, int channels = Fixed)
  {
    if constexpr (Fixed != 0) { channels = Fixed; }
    std::size_t const n = slots.size();
    std::size_t j       = 0;
    for (auto const* run : todo) {
      for (std::uint32_t const r : *run) {
        if (j + prefetch_ahead < n) {
          __builtin_prefetch(&acc[std::size_t{slots[j + prefetch_ahead]} * channels], 1);
        }
        ops::moments* a = &acc[std::size_t{slots[j]} * channels];
        T const* v      = values + std::size_t{r} * channels;
        for (int c = 0; c < channels; ++c) {
          double const x = static_cast<double>(v[c]);
          nan_values += ops::is_nan(x);
          ops::add(a[c], x);
        }
        ++j;
      }
    }
    aggregated += n;
    todo.clear();
    end_batch();
  }

  // After the windows below `limit` were emitted and their slots freed.
  void closed_below(std::int64_t limit)
  {
    open_by_window.erase(open_by_window.begin(), open_by_window.lower_bound(limit));
    last_list = nullptr;
    if (limit == std::numeric_limits<std::int64_t>::max()) {
      // Everything was emitted (flush): start afresh, so that records of windows emitted by
      // the flush open new states.
      keys.clear();
      spill_log.clear();
      spill.clear();
      spill_indexed    = 0;
      live_from        = window_none;
      spill_clean_from = window_none;
    } else {
      live_from = std::max(live_from, limit);
      prune_spill();
    }
  }
};

class cpu_tumbling_kind final : public window_kind {
 public:
  explicit cpu_tumbling_kind(pipeline_options const& options)
    : options_(options), window_{options.window.size, options.window.offset}
  {
    int threads = options.cpu_threads;
    if (threads <= 0) {
      threads = std::min(max_cpu_threads, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    }
    shards_.resize(static_cast<std::size_t>(threads));
  }

  // Capacity is checked while the batch is applied (pass 1), which rolls back on failure.
  void check_capacity(watermark_feed) override {}

  void apply(watermark_feed& feed, window_output& out) override
  {
    out_ = &out;
    with_values(feed.batch(), [&](auto const* values) { push_typed(feed, values); });
  }

  void flush(window_output& out) override
  {
    out_ = &out;
    emit_before(std::numeric_limits<std::int64_t>::max());
  }

  // Windows whose emission a push deferred (out of memory), if any: step by step, each tagged
  // with its step's position, as the push would have.
  void settle(window_output& out) override
  {
    out_ = &out;
    for (; pending_from_ < pending_.size(); ++pending_from_) {
      pending_step const& s = pending_[pending_from_];
      emit_before(window_.closed_before(s.watermark));
      out_->tag_windows(s.position);
    }
    pending_.clear();
    pending_from_ = 0;
  }

  kind_size size() const override
  {
    kind_size z;
    for (auto const& s : shards_) {
      z.open_windows += s.open_states();
      z.state_bytes += s.state_bytes(options_.channels);
    }
    return z;
  }

  void save_state(state_writer& out, runner_fields const& fields) override;
  void load_state(state_reader& in, runner_fields& fields, key_filter const& keep) override;

 private:
  template <typename T>
  void push_typed(watermark_feed& feed, T const* values)
  {
    record_batch const& batch = feed.batch();
    bool const external       = feed.external();
    auto const shards = static_cast<std::uint32_t>(shards_.size());
    int const channels = options_.channels;
    if (batch.n > std::numeric_limits<std::uint32_t>::max()) {
      throw capacity_error("a batch holds at most 2^32-1 records, got " + std::to_string(batch.n) +
                           "; split it (results do not depend on how the stream is cut)");
    }
    // Strong guarantee: passes 0 and 1 may fail (bad_alloc, capacity) and leave the engine as
    // it was; pass 2 cannot fail. All passes run in one parallel region: the batch is cut into
    // one chunk per part (thread) for pass 0, the shards are divided among the threads for
    // passes 1 and 2. Results do not depend on the number of threads or parts.
    // Room to leave every watermark step of the batch for later (settle).
    pending_.reserve(std::max<std::size_t>(1, feed.steps().count));
    for (auto& s : shards_) s.begin_batch();
    late_idx_.clear();
    std::size_t const n   = batch.n;
    bool const parallel   = n >= parallel_threshold && shards > 1;
    std::uint32_t const parts = parallel ? shards : 1;
    if (parts_.size() < parts) { parts_.resize(parts); }
    for (std::uint32_t c = 0; c < parts; ++c) {
      parts_[c].by_shard.resize(shards);
      parts_[c].count.assign(count_lanes * shards, 0);
      parts_[c].cursor.resize(shards);
      parts_[c].late.clear();
      parts_[c].error = nullptr;
    }
    std::vector<std::exception_ptr> errors(shards);
    std::vector<std::uint64_t> nan_added(shards, 0);
    bool ok = true;
    std::size_t open = 0, created = 0;  // states open after pass 1, and created by it
    auto const chunk_begin = [&](std::uint32_t c) { return n / parts * c + std::min<std::size_t>(c, n % parts); };
    auto body = [&](std::uint32_t tid, std::uint32_t team) {
      // Pass 0a: the largest timestamp of each chunk, and how many of its records each shard
      // holds (late ones included: a bound).
      for (std::uint32_t c = tid; c < parts; c += team) {
        std::int64_t m      = std::numeric_limits<std::int64_t>::min();
        std::size_t* const count = parts_[c].count.data();
        // Consecutive records often hit the same shard: separate counters per lane keep the
        // increments from waiting on each other.
        std::size_t i = chunk_begin(c);
        std::size_t const e = chunk_begin(c + 1);
        for (; i + count_lanes <= e; i += count_lanes) {
          for (std::size_t l = 0; l < count_lanes; ++l) {
            m = std::max(m, batch.timestamps[i + l]);
            ++count[l * shards + shard_of(batch.keys[i + l], shards)];
          }
        }
        for (; i < e; ++i) {
          m = std::max(m, batch.timestamps[i]);
          ++count[shard_of(batch.keys[i], shards)];
        }
        for (std::size_t l = 1; l < count_lanes; ++l) {
          for (std::uint32_t s = 0; s < shards; ++s) count[s] += count[l * shards + s];
        }
        parts_[c].max = m;
      }
#pragma omp barrier
      // Pass 0b: lateness and shard of each record. Lateness is decided record by record in
      // arrival order, against the largest time of all earlier records (those of earlier batches
      // and chunks included), so it does not depend on how the stream is cut into batches or
      // chunks. A late record is below that largest time, so it never raises it.
      for (std::uint32_t c = tid; c < parts; c += team) {
        part& pc = parts_[c];
        try {
          // m: the largest time so far, or INT64_MIN (below every valid time) when there is none.
          // External watermarks: the caller's watermark plus max_out_of_orderness (the time
          // that would have raised it), moved before each record.
          watermark_feed ahead = feed;
          ahead.move_to(chunk_begin(c));
          std::int64_t m = ahead.has() ? ahead.clock().max_ts : std::numeric_limits<std::int64_t>::min();
          if (!external) {
            for (std::uint32_t d = 0; d < c; ++d) m = std::max(m, parts_[d].max);
          }
          // A record is late when its window id is below closed_before(watermark), that is when
          // its time is below the start of that window: compare times, no division per record.
          // The bound changes only when the watermark reaches the end of that window.
          std::int64_t late_below = std::numeric_limits<std::int64_t>::min();
          std::int64_t recompute  = std::numeric_limits<std::int64_t>::min();  // m that moves it
          auto const update = [&] {
            // A watermark below the valid time range closes no window holding a valid time;
            // clamping it keeps start(k) from overflowing.
            std::int64_t const k =
              window_.closed_before(std::max(m - options_.max_out_of_orderness, -max_timestamp));
            late_below           = window_.start(k);
            recompute            = window_.end(k) + options_.max_out_of_orderness;
          };
          bool const has = m != std::numeric_limits<std::int64_t>::min();
          if (has) { update(); }
          auto& lists = pc.by_shard;
          for (std::uint32_t s = 0; s < shards; ++s) {
            lists[s].resize(pc.count[s]);
            pc.cursor[s] = lists[s].data();
          }
          std::uint32_t** const cursor = pc.cursor.data();
          auto const split = [&](auto&& to_shard) {
            if (external) {
              for (std::size_t i = chunk_begin(c), e = chunk_begin(c + 1); i < e; ++i) {
                ahead.move_to(i);
                if (ahead.has() && ahead.clock().max_ts >= recompute) {
                  m = ahead.clock().max_ts;
                  update();
                }
                if (batch.timestamps[i] < late_below) {
                  pc.late.push_back(static_cast<std::uint32_t>(i));
                  continue;
                }
                to_shard(static_cast<std::uint32_t>(i), batch.keys[i]);
              }
              return;
            }
            for (std::size_t i = chunk_begin(c), e = chunk_begin(c + 1); i < e; ++i) {
              std::int64_t const t = batch.timestamps[i];
              if (t < late_below) {
                pc.late.push_back(static_cast<std::uint32_t>(i));
                continue;
              }
              to_shard(static_cast<std::uint32_t>(i), batch.keys[i]);
              m = std::max(m, t);
              if (m >= recompute) { update(); }
            }
          };
          // A cursor kept in memory makes consecutive records of one shard wait on each other
          // (store-to-load forwarding); with one or two shards the cursors stay in registers.
          if (shards == 1) {
            std::uint32_t* c0 = cursor[0];
            split([&](std::uint32_t i, std::uint32_t) { *c0++ = i; });
            cursor[0] = c0;
          } else if (shards == 2) {
            std::uint32_t *c0 = cursor[0], *c1 = cursor[1];
            split([&](std::uint32_t i, std::uint32_t key) {
              std::uint32_t const second = shard_of(key, 2);
              *(second ? c1 : c0) = i;
              c0 += 1 - second;
              c1 += second;
            });
            cursor[0] = c0;
            cursor[1] = c1;
          } else {
            split([&](std::uint32_t i, std::uint32_t key) { *cursor[shard_of(key, shards)]++ = i; });
          }
          for (std::uint32_t s = 0; s < shards; ++s) {
            lists[s].resize(static_cast<std::size_t>(cursor[s] - lists[s].data()));
          }
        } catch (...) {
          pc.error = std::current_exception();
        }
      }
#pragma omp barrier
      // Pass 1: find or create the state of each record, shard by shard.
      bool const partitioned = std::none_of(parts_.begin(), parts_.begin() + parts,
                                            [](part const& p) { return p.error != nullptr; });
      if (partitioned) {
        for (std::uint32_t s = tid; s < shards; s += team) {
          try {
            shard_state& sh = shards_[s];
            for (std::uint32_t c = 0; c < parts; ++c) sh.todo.push_back(&parts_[c].by_shard[s]);
            sh.resolve(batch.keys, batch.timestamps, window_, channels);
          } catch (...) {
            errors[s] = std::current_exception();
          }
        }
      }
#pragma omp barrier
#pragma omp single
      {
        for (auto const& s : shards_) {
          open += s.open_states();
          created += s.created.size();
        }
        std::size_t const cap = options_.max_open_windows;
        ok = partitioned && std::none_of(errors.begin(), errors.end(), [](auto const& e) { return e != nullptr; }) &&
             !(cap != 0 && open > cap);
        if (ok) {
          try {
            std::size_t late = 0;
            for (std::uint32_t c = 0; c < parts; ++c) late += parts_[c].late.size();
            late_idx_.reserve(late);
            out_->late.reserve(late);
            if (out_->keep_positions) { reserve_more(out_->late_positions, late); }
            for (std::uint32_t c = 0; c < parts; ++c) {
              late_idx_.insert(late_idx_.end(), parts_[c].late.begin(), parts_[c].late.end());
            }
          } catch (...) {
            errors[0] = std::current_exception();
            ok        = false;
          }
        }
      }
      // Pass 2: apply.
      if (ok) {
        for (std::uint32_t s = tid; s < shards; s += team) {
          std::uint64_t const nan_before = shards_[s].nan_values;
          shards_[s].accumulate(values, channels);
          nan_added[s] = shards_[s].nan_values - nan_before;
        }
      }
    };
#pragma omp parallel num_threads(parts) if (parallel)
    {
#ifdef _OPENMP
      body(static_cast<std::uint32_t>(omp_get_thread_num()), static_cast<std::uint32_t>(omp_get_num_threads()));
#else
      body(0, 1);
#endif
    }
    if (!ok) {
      for (std::uint32_t c = 0; c < parts; ++c) {
        if (parts_[c].error) { std::rethrow_exception(parts_[c].error); }  // nothing was created
      }
      for (auto& s : shards_) s.roll_back(channels);
      auto const failed = std::find_if(errors.begin(), errors.end(), [](auto const& e) { return e != nullptr; });
      if (failed != errors.end()) { std::rethrow_exception(*failed); }
      throw capacity_error(capacity_message(options_.max_open_windows, open - created, created, batch.n,
                                            "(key, window) states", false));
    }
    for (std::uint64_t a : nan_added) out_->nan_values += a;
    if (!external) {
      for (std::uint32_t c = 0; c < parts; ++c) {
        if (chunk_begin(c) < chunk_begin(c + 1)) { feed.raise(parts_[c].max); }
      }  // (a late record is below the running maximum, so chunk maxima are maxima of on-time ones)
    }
    for (std::uint32_t i : late_idx_) {
      out_->reject_late(batch.keys[i], batch.timestamps[i], values + std::size_t{i} * channels,
                        feed.position(i));
    }
    // The batch is applied; windows it closes are emitted now (step by step under external
    // watermarks, each row tagged with its step's position), or, when memory runs out here,
    // from the step that failed on by the next call (settle), so the caller never sees an
    // applied batch fail.
    std::size_t steps_done = 0;
    try {
      if (external) {
        feed.finish([&](std::int64_t position) {
          clock_ = feed.clock();
          emit_closed();
          out_->tag_windows(position);
          ++steps_done;
        });
      } else {
        clock_ = feed.clock();
        emit_closed();
      }
    } catch (std::bad_alloc const&) {
      feed.move_to(batch.n);
      watermark_steps const& steps = feed.steps();
      if (external) {  // (reserved above: no allocation)
        for (std::size_t s = steps_done; s < steps.count; ++s) {
          pending_.push_back({steps.watermark[s], steps.position[s]});
        }
      } else {
        pending_.push_back({feed.clock().value(), 0});
      }
    }
    clock_ = feed.clock();
  }

  void emit_closed()
  {
    if (clock_.has) { emit_before(window_.closed_before(clock_.value())); }
  }

  // Emits, in (window start, key) order, every open window whose id is below `limit`. Throws
  // (bad_alloc) before changing anything, or succeeds.
  void emit_before(std::int64_t limit)
  {
    auto const shards = static_cast<std::uint32_t>(shards_.size());
    if (std::all_of(shards_.begin(), shards_.end(), [&](shard_state const& sh) {
          return sh.open_by_window.empty() || sh.open_by_window.begin()->first >= limit;
        })) {
      return;
    }
    // Each shard lists its windows below `limit` (ranges) and their states (order: key << 32 |
    // slot), sorted by key within each window, in parallel; then the windows are emitted in
    // ascending order, the shards' rows of each merged by key (a key lives in one shard only).
    emit_.first.assign(shards + 1, 0);
    emit_.first_range.assign(shards + 1, 0);
    std::size_t widest = 0;  // rows of the largest window in all shards together (a bound)
    for (std::uint32_t s = 0; s < shards; ++s) {
      auto const& open = shards_[s].open_by_window;
      std::size_t rows = 0, ranges = 0;
      for (auto it = open.begin(); it != open.end() && it->first < limit; ++it) {
        rows += it->second.size();
        widest = std::max(widest, it->second.size());
        ++ranges;
      }
      emit_.first[s + 1]       = emit_.first[s] + rows;
      emit_.first_range[s + 1] = emit_.first_range[s] + ranges;
    }
    std::size_t const total = emit_.first[shards];
    emit_.ranges.resize(emit_.first_range[shards]);
    emit_.order.resize(total);
    emit_.scratch.resize(total);
    emit_.keys.resize(widest * shards);
    emit_.acc.resize(widest * shards);
    out_->windows.reserve(total);
    for (auto& sh : shards_) sh.free_slots.reserve(sh.slot_key.size());
    // Nothing below allocates.
    auto const collect = [&](std::uint32_t s) {
      shard_state const& sh = shards_[s];
      std::uint64_t* to     = emit_.order.data() + emit_.first[s];
      emit_range* range     = emit_.ranges.data() + emit_.first_range[s];
      for (auto it = sh.open_by_window.begin(); it != sh.open_by_window.end() && it->first < limit; ++it) {
        std::size_t const begin = static_cast<std::size_t>(to - emit_.order.data());
        for (std::uint32_t slot : it->second) *to++ = std::uint64_t{sh.slot_key[slot]} << 32 | slot;
        std::size_t const end = static_cast<std::size_t>(to - emit_.order.data());
        sort_by_upper_half(emit_.order.data() + begin, emit_.scratch.data() + begin, end - begin);
        *range++ = {it->first, begin, end};
      }
    };
    bool const parallel = shards > 1 && total >= parallel_emit_threshold;
#pragma omp parallel for num_threads(shards) schedule(static, 1) if (parallel)
    for (std::uint32_t s = 0; s < shards; ++s) collect(s);

    int const channels = options_.channels;
    std::vector<std::size_t>& next = emit_.next;  // per shard: its next range
    next.assign(emit_.first_range.begin(), emit_.first_range.end() - 1);
    for (;;) {
      std::int64_t win = std::numeric_limits<std::int64_t>::max();
      for (std::uint32_t s = 0; s < shards; ++s) {
        if (next[s] < emit_.first_range[s + 1]) { win = std::min(win, emit_.ranges[next[s]].win); }
      }
      if (win == std::numeric_limits<std::int64_t>::max()) { break; }
      // Merge the rows of window `win` from every shard holding it (usually every shard).
      std::size_t n = 0;
      for (;;) {
        std::uint32_t best = shards;
        std::uint64_t best_row = 0;
        for (std::uint32_t s = 0; s < shards; ++s) {
          if (next[s] >= emit_.first_range[s + 1]) { continue; }
          emit_range& r = emit_.ranges[next[s]];
          if (r.win != win || r.begin == r.end) { continue; }
          std::uint64_t const row = emit_.order[r.begin];
          if (best == shards || row >> 32 < best_row >> 32) {
            best     = s;
            best_row = row;
          }
        }
        if (best == shards) { break; }
        ++emit_.ranges[next[best]].begin;
        emit_.keys[n] = static_cast<std::uint32_t>(best_row >> 32);
        emit_.acc[n]  = &shards_[best].acc[(best_row & 0xFFFFFFFFu) * static_cast<std::size_t>(channels)];
        ++n;
      }
      out_->windows.append_window(window_.start(win), window_.end(win), n, emit_.keys.data(), emit_.acc.data());
      for (std::uint32_t s = 0; s < shards; ++s) {
        if (next[s] < emit_.first_range[s + 1] && emit_.ranges[next[s]].win == win) { ++next[s]; }
      }
    }
    // Release the states: their slots go back to the free lists (create() resets them).
    for (auto& sh : shards_) {
      for (auto it = sh.open_by_window.begin(); it != sh.open_by_window.end() && it->first < limit; ++it) {
        sh.free_slots.insert(sh.free_slots.end(), it->second.begin(), it->second.end());
      }
      sh.closed_below(limit);
    }
  }

  pipeline_options options_;
  ops::tumbling window_;
  std::vector<shard_state> shards_;
  window_output* out_ = nullptr;  // the output of the apply, flush or settle in progress
  watermark_clock clock_;          // as of the end of the last batch
  // Watermark steps whose emission ran out of memory, for settle (pending_[pending_from_, ...)).
  struct pending_step {
    std::int64_t watermark;
    std::int64_t position;  // of the step (external watermarks)
  };
  std::vector<pending_step> pending_;
  std::size_t pending_from_ = 0;
  std::vector<std::uint32_t> late_idx_;  // scratch: late records of the current batch
  // Scratch of emit_before, kept across calls so that emission does not allocate in steady
  // state: per shard its rows (first) and windows (first_range) below the limit.
  struct emit_range {
    std::int64_t win;
    std::size_t begin, end;  // rows in order
  };
  struct emit_scratch {
    std::vector<std::size_t> first, first_range, next;
    std::vector<emit_range> ranges;
    std::vector<std::uint64_t> order, scratch;
    std::vector<std::uint32_t> keys;
    std::vector<ops::moments const*> acc;
  } emit_;
  // Scratch of pass 0, one per chunk of a batch: the chunk's largest time, its on-time records
  // split by shard and its late records, in arrival order.
  struct part {
    std::int64_t max = 0;
    std::vector<std::vector<std::uint32_t>> by_shard;
    std::vector<std::size_t> count;         // pass 0a: records per shard (a bound for by_shard)
    std::vector<std::uint32_t*> cursor;     // pass 0b: where by_shard[s] is written next
    std::vector<std::uint32_t> late;
    std::exception_ptr error;
  };
  std::vector<part> parts_;
};

// ----- checkpoints: the neutral tumbling_state (open states sorted by (window, key))

void cpu_tumbling_kind::save_state(state_writer& out, runner_fields const& fields)
{
  tumbling_state st;
  st.has_max    = fields.clock.has;
  st.max_ts     = fields.clock.max_ts;
  st.late       = fields.late;
  st.emitted    = fields.emitted;
  st.aggregated = fields.aggregated;
  st.nan_values = fields.nan_values;
  int const channels = options_.channels;
  struct entry {
    std::int64_t win;
    std::uint32_t key;
    ops::moments const* acc;
  };
  std::vector<entry> all;
  for (auto const& sh : shards_) {
    for (auto const& [win, slots] : sh.open_by_window) {
      for (std::uint32_t slot : slots) {
        all.push_back({win, sh.slot_key[slot], &sh.acc[std::size_t{slot} * channels]});
      }
    }
  }
  std::sort(all.begin(), all.end(), [](entry const& a, entry const& b) {
    return a.win != b.win ? a.win < b.win : a.key < b.key;
  });
  for (entry const& e : all) {
    st.wid.push_back(e.win);
    st.key.push_back(e.key);
    st.acc.insert(st.acc.end(), e.acc, e.acc + channels);
  }
  write_tumbling_state(out, st, channels);
}

void cpu_tumbling_kind::load_state(state_reader& in, runner_fields& fields, key_filter const& keep)
{
  tumbling_state const st = read_tumbling_state(in, options_);
  int const channels      = options_.channels;
  auto const shards       = static_cast<std::uint32_t>(shards_.size());
  for (auto& sh : shards_) sh.begin_batch();
  for (std::size_t i = 0; i < st.wid.size(); ++i) {
    if (!keep.keeps(st.key[i])) { continue; }
    shard_state& sh          = shards_[shard_of(st.key[i], shards)];
    key_entry* const e       = sh.keys.find_or_insert(st.key[i], sh.live_from);
    std::uint32_t const slot = sh.create(*e, st.key[i], st.wid[i], channels);
    std::copy_n(&st.acc[i * static_cast<std::size_t>(channels)], channels,
                &sh.acc[std::size_t{slot} * channels]);
  }
  for (auto& sh : shards_) sh.end_batch();
  fields.aggregated = st.aggregated;
  fields.nan_values = st.nan_values;
  fields.clock.has    = st.has_max;
  fields.clock.max_ts = st.max_ts;
  fields.late       = st.late;
  fields.emitted    = st.emitted;
  // fields.seq is not part of this state form: only order statistics use it, and this kind
  // runs moment aggregations only.
  clock_ = fields.clock;
}

}  // namespace

std::unique_ptr<window_kind> make_cpu_tumbling_kind(pipeline_options const& options)
{
  return std::make_unique<cpu_tumbling_kind>(options);
}

}  // namespace cusense::detail
