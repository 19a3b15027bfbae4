// CPU backend of the keyed window engine: state is sharded by key across threads; each shard
// maps (key, window id) to accumulator slots through an open-addressing index, in front of
// which a small per-key cache of recently used states answers most lookups.
#include <algorithm>
#include <exception>
#include <limits>
#include <map>
#include <new>
#include <string>
#include <thread>

#include <cusense/error.hpp>

#include <cusense/detail/checkpoint.hpp>
#include <cusense/detail/engine.hpp>
#include <cusense/detail/results.hpp>
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

struct shard_state {
  flat_index index;
  std::vector<ops::moments> acc;  // slot * channels + channel
  std::vector<std::uint32_t> slot_key;
  std::vector<std::uint32_t> free_slots;
  std::map<std::int64_t, std::vector<std::uint32_t>> open_by_window;  // window id -> slots
  // The records of the current batch: runs of record indices (one per chunk of the batch, in
  // arrival order), read where pass 0 wrote them rather than copied together.
  std::vector<std::vector<std::uint32_t> const*> todo;
  std::vector<std::uint32_t> slots;  // state slot of each todo record, runs concatenated
  // The states a key last used, direct-mapped by the key's low bits: a key's records mostly
  // fall in the window of its previous record (or, near a window boundary of a disordered
  // stream, in the next one: two ways), and sensor keys are mostly dense small integers, so
  // this usually answers without hashing or probing. It holds only open states: forget()
  // drops a state from it before its slot can be reused.
  struct recent_state {
    std::int64_t win;
    std::uint32_t key;
    std::uint32_t slot = flat_index::none;
  };
  struct alignas(32) recent_states {
    recent_state way[2];
  };
  std::vector<recent_states> recent = std::vector<recent_states>(std::size_t{1} << 8);
  struct created_state {
    std::int64_t win;
    std::uint32_t key;
    std::uint32_t slot;
  };
  std::vector<created_state> created;  // states the current batch created, for roll-back
  std::size_t slots_before = 0;        // slot_key.size() when the batch started
  std::uint64_t aggregated = 0;
  std::uint64_t nan_values = 0;

  void begin_batch()
  {
    todo.clear();
    slots.clear();
    created.clear();
    slots_before = slot_key.size();
  }

  // Gives back a slot taken for a state of the current batch. Slots are given back in reverse
  // order of taking, so an appended one is the last; neither branch allocates.
  void release_new_slot(std::uint32_t slot, int channels)
  {
    forget(slot_key[slot], slot);
    if (slot >= slots_before) {
      slot_key.pop_back();
      acc.resize(acc.size() - static_cast<std::size_t>(channels));
    } else {
      free_slots.push_back(slot);  // it was popped from there: the capacity is still held
    }
  }

  // Called when `slot` (the state of `key`) is closed or removed.
  void forget(std::uint32_t key, std::uint32_t slot)
  {
    for (recent_state& r : recent[key & (recent.size() - 1)].way) {
      if (r.slot == slot) { r.slot = flat_index::none; }
    }
  }

  // Keeps `recent` at least twice the open states, and larger for a large batch (whose keys
  // are not known yet), up to a bound, so that dense keys do not collide. Only a cache: when
  // it cannot grow, it stays as it is.
  void size_recent(std::size_t records)
  {
    constexpr std::size_t max_recent = std::size_t{1} << 20;
    std::size_t const need = std::max(2 * index.size(), std::min(records / 8, std::size_t{1} << 16));
    std::size_t want       = recent.size();
    while (want < max_recent && want < need) want *= 2;
    if (want == recent.size()) { return; }
    try {
      std::vector<recent_states> fresh(want);
      recent.swap(fresh);
    } catch (std::bad_alloc const&) {
    }
  }

  // The slot of (key, win), created when missing. Strong guarantee: throws (bad_alloc) with
  // nothing changed.
  std::uint32_t slot_for(std::uint32_t key, std::int64_t win, int channels)
  {
    std::uint32_t const slot = index.find(key, win);
    return slot != flat_index::none ? slot : create(key, win, channels);
  }

  // The slot of a new state (key, win), which must be missing; slot_for's slow path.
  __attribute__((noinline)) std::uint32_t create(std::uint32_t key, std::int64_t win, int channels)
  {
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
      index.insert(key, win, slot);
      try {
        auto& list = open_by_window[win];  // an empty list left by a failure is harmless
        list.push_back(slot);
        try {
          created.push_back({win, key, slot});
        } catch (...) {
          list.pop_back();
          throw;
        }
      } catch (...) {
        index.erase(key, win);
        throw;
      }
    } catch (...) {
      release_new_slot(slot, channels);
      throw;
    }
    return slot;
  }

  // Removes every state the current batch created, restoring the shard as it was.
  void roll_back(int channels)
  {
    for (auto it = created.rbegin(); it != created.rend(); ++it) {
      auto w = open_by_window.find(it->win);
      w->second.pop_back();
      if (w->second.empty()) { open_by_window.erase(w); }
      index.erase(it->key, it->win);
      release_new_slot(it->slot, channels);
    }
    created.clear();
  }

  // Pass 1 of a batch, the only one that allocates state: finds or creates the state of every
  // todo record. On failure rolls back and rethrows.
  void resolve(std::uint32_t const* keys, std::int64_t const* ts, ops::tumbling const& window,
               int channels)
  {
    try {
      std::size_t n = 0;
      for (auto const* run : todo) n += run->size();
      size_recent(n);
      slots.resize(n);
      window_id_cache wid{window};
      std::size_t const recent_mask = recent.size() - 1;
      std::uint32_t* slot_of = slots.data();
      for (auto const* run : todo) {
        std::uint32_t const* const records = run->data();
        std::size_t const m                = run->size();
        for (std::size_t j = 0; j < m; ++j) {
          // The cache lines are the cost (random accesses): load them ahead of their use.
          if (j + prefetch_ahead < m) { __builtin_prefetch(&recent[keys[records[j + prefetch_ahead]] & recent_mask]); }
          std::uint32_t const r   = records[j];
          std::uint32_t const key = keys[r];
          std::int64_t const win  = wid(ts[r]);
          recent_state* const way = recent[key & recent_mask].way;
          // Which way holds the record's window changes from key to key: select with masks,
          // not branches. No match gives none (all ones); a forgotten way that matches gives
          // none too, even ORed with a live copy of the same state (rare: then both ways
          // hold it, with the same slot).
          auto const match = [&](recent_state const& w) {
            return std::uint32_t{0} - static_cast<std::uint32_t>((w.key == key) & (w.win == win));
          };
          std::uint32_t const m0 = match(way[0]), m1 = match(way[1]);
          std::uint32_t slot     = (way[0].slot & m0) | (way[1].slot & m1) | ~(m0 | m1);
          if (slot == flat_index::none) {
            slot = index.find(key, win);
            if (slot == flat_index::none) { slot = create(key, win, channels); }
            // Replace a free way, else the older window (closed first).
            bool const second = way[0].slot != flat_index::none &&
                                (way[1].slot == flat_index::none || way[1].win < way[0].win);
            way[second] = {win, key, slot};
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
    created.clear();
  }
};

class cpu_window_engine final : public window_engine {
 public:
  explicit cpu_window_engine(pipeline_options const& options)
    : options_(options),
      window_{options.window.size, options.window.offset},
      windows_out_(options),
      late_out_(options)
  {
    int threads = options.cpu_threads;
    if (threads <= 0) {
      threads = std::min(max_cpu_threads, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    }
    shards_.resize(static_cast<std::size_t>(threads));
  }

  void push(record_batch const& batch) override
  {
    if (batch.values_f32) {
      push_typed(batch, static_cast<float const*>(batch.values));
    } else {
      push_typed(batch, static_cast<double const*>(batch.values));
    }
  }

  void flush() override { emit_before(std::numeric_limits<std::int64_t>::max()); }

  void drain(table* windows, table* late) override
  {
    if (windows) {
      emit_closed();  // windows whose emission a push deferred (out of memory), if any
      windows->append(windows_out_.finish());
    }
    if (late) { late->append(late_out_.finish()); }
  }

  engine_counters counters() override
  {
    engine_counters c;
    for (auto const& s : shards_) {
      c.aggregated += s.aggregated;
      c.nan_values += s.nan_values;
      c.open_windows += s.index.size();
    }
    c.late          = late_count_;
    c.emitted       = emitted_;
    c.has_watermark = has_max_;
    c.watermark     = has_max_ ? watermark() : 0;
    return c;
  }

  void save_state(state_writer& out) override;
  void load_state(state_reader& in) override;

 private:
  std::int64_t watermark() const { return max_ts_ - options_.max_out_of_orderness; }

  template <typename T>
  void push_typed(record_batch const& batch, T const* values)
  {
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
          std::int64_t m = has_max_ ? max_ts_ : std::numeric_limits<std::int64_t>::min();
          for (std::uint32_t d = 0; d < c; ++d) m = std::max(m, parts_[d].max);
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
          open += s.index.size();
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
            late_out_.reserve(late);
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
        for (std::uint32_t s = tid; s < shards; s += team) shards_[s].accumulate(values, channels);
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
      std::size_t const cap = options_.max_open_windows;
      throw capacity_error("max_open_windows = " + std::to_string(cap) + " would be exceeded: " +
                           std::to_string(open - created) + " (key, window) states are open and " +
                           "the batch of " + std::to_string(batch.n) + " records opens " +
                           std::to_string(created) + " more; the batch was rejected and the " +
                           "pipeline is unchanged");
    }
    std::int64_t max_ts = max_ts_;
    bool has_max        = has_max_;
    for (std::uint32_t c = 0; c < parts; ++c) {
      if (chunk_begin(c) < chunk_begin(c + 1)) {
        max_ts  = has_max ? std::max(max_ts, parts_[c].max) : parts_[c].max;
        has_max = true;
      }
    }  // (a late record is below the running maximum, so chunk maxima are maxima of on-time ones)
    for (std::uint32_t i : late_idx_) {
      late_out_.append(batch.keys[i], batch.timestamps[i], values + std::size_t{i} * channels);
    }
    late_count_ += late_idx_.size();
    max_ts_  = max_ts;
    has_max_ = has_max;
    // The batch is applied; windows it closes are emitted now, or, when memory runs out here,
    // by the next call (drain retries), so the caller never sees an applied batch fail.
    try {
      emit_closed();
    } catch (std::bad_alloc const&) {
    }
  }

  void emit_closed()
  {
    if (has_max_) { emit_before(window_.closed_before(watermark())); }
  }

  // Emits, in (window start, key) order, every open window whose id is below `limit`. Throws
  // (bad_alloc) before changing anything, or succeeds.
  void emit_before(std::int64_t limit)
  {
    struct ready {
      std::int64_t win;
      std::uint32_t key;
      std::uint32_t shard;
      std::uint32_t slot;
    };
    auto const shards = static_cast<std::uint32_t>(shards_.size());
    // Each shard's states go to its own range of `out`, sorted there (in parallel for many
    // rows), then the ranges are merged: a (key, window) pair lives in one shard only, so the
    // order is the same total order as one sort of everything.
    if (std::all_of(shards_.begin(), shards_.end(), [&](shard_state const& sh) {
          return sh.open_by_window.empty() || sh.open_by_window.begin()->first >= limit;
        })) {
      return;
    }
    std::vector<std::size_t> first(shards + 1, 0);
    for (std::uint32_t s = 0; s < shards; ++s) {
      auto const& open = shards_[s].open_by_window;
      std::size_t rows = 0;
      for (auto it = open.begin(); it != open.end() && it->first < limit; ++it) rows += it->second.size();
      first[s + 1] = first[s] + rows;
    }
    std::vector<ready> out(first[shards]);
    auto const by_window_then_key = [](ready const& a, ready const& b) {
      return a.win != b.win ? a.win < b.win : a.key < b.key;
    };
    auto const collect = [&](std::uint32_t s) {
      shard_state const& sh = shards_[s];
      ready* to             = out.data() + first[s];
      for (auto it = sh.open_by_window.begin(); it != sh.open_by_window.end() && it->first < limit; ++it) {
        for (std::uint32_t slot : it->second) *to++ = {it->first, sh.slot_key[slot], s, slot};
      }
      std::sort(out.begin() + first[s], out.begin() + first[s + 1], by_window_then_key);
    };
    bool const parallel = shards > 1 && out.size() >= parallel_emit_threshold;
#pragma omp parallel for num_threads(shards) schedule(static, 1) if (parallel)
    for (std::uint32_t s = 0; s < shards; ++s) collect(s);
    for (std::uint32_t s = 1; s < shards; ++s) {
      // (inplace_merge falls back to a slower merge, without throwing, when it gets no buffer)
      std::inplace_merge(out.begin(), out.begin() + first[s], out.begin() + first[s + 1], by_window_then_key);
    }
    windows_out_.reserve(out.size());
    for (auto& sh : shards_) sh.free_slots.reserve(sh.slot_key.size());
    // Nothing below allocates.
    int const channels = options_.channels;
    auto const append_rows = [&] {
      for (ready const& r : out) {
        windows_out_.append(r.key, window_.start(r.win), window_.end(r.win),
                            &shards_[r.shard].acc[std::size_t{r.slot} * channels]);
      }
    };
    // Releasing a state leaves its accumulator as it is (create() resets it), so the rows can
    // be appended while other threads release the states (index erasures: random accesses).
    auto const release = [&](std::uint32_t s) {
      shard_state& sh = shards_[s];
      for (ready const& r : out) {
        if (r.shard != s) { continue; }
        sh.index.erase(r.key, r.win);
        sh.forget(r.key, r.slot);
        sh.free_slots.push_back(r.slot);
      }
    };
#pragma omp parallel num_threads(shards) if (parallel)
    {
#ifdef _OPENMP
      auto const tid  = static_cast<std::uint32_t>(omp_get_thread_num());
      auto const team = static_cast<std::uint32_t>(omp_get_num_threads());
#else
      std::uint32_t const tid = 0, team = 1;
#endif
      if (tid == 0) { append_rows(); }
      // Thread 0 appends the rows; the others (or thread 0 alone) release the states.
      std::uint32_t const releasers      = team > 1 ? team - 1 : 1;
      std::uint32_t const first_releaser = team > 1 ? 1 : 0;
      if (tid >= first_releaser) {
        for (std::uint32_t s = tid - first_releaser; s < shards; s += releasers) release(s);
      }
    }
    for (auto& sh : shards_) {
      sh.open_by_window.erase(sh.open_by_window.begin(), sh.open_by_window.lower_bound(limit));
    }
    emitted_ += out.size();
  }

  pipeline_options options_;
  ops::tumbling window_;
  std::vector<shard_state> shards_;
  window_table_builder windows_out_;
  late_table_builder late_out_;
  std::int64_t max_ts_   = 0;
  bool has_max_          = false;
  std::uint64_t late_count_ = 0;
  std::uint64_t emitted_    = 0;
  std::vector<std::uint32_t> late_idx_;  // scratch: late records of the current batch
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

void cpu_window_engine::save_state(state_writer& out)
{
  emit_closed();
  tumbling_state st;
  st.has_max    = has_max_;
  st.max_ts     = max_ts_;
  st.late       = late_count_;
  st.emitted    = emitted_;
  int const channels = options_.channels;
  struct entry {
    std::int64_t win;
    std::uint32_t key;
    ops::moments const* acc;
  };
  std::vector<entry> all;
  for (auto const& sh : shards_) {
    st.aggregated += sh.aggregated;
    st.nan_values += sh.nan_values;
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

void cpu_window_engine::load_state(state_reader& in)
{
  tumbling_state const st = read_tumbling_state(in, options_);
  int const channels      = options_.channels;
  auto const shards       = static_cast<std::uint32_t>(shards_.size());
  for (auto& sh : shards_) sh.begin_batch();
  for (std::size_t i = 0; i < st.wid.size(); ++i) {
    shard_state& sh          = shards_[shard_of(st.key[i], shards)];
    std::uint32_t const slot = sh.slot_for(st.key[i], st.wid[i], channels);
    std::copy_n(&st.acc[i * static_cast<std::size_t>(channels)], channels,
                &sh.acc[std::size_t{slot} * channels]);
  }
  for (auto& sh : shards_) sh.created.clear();
  shards_[0].aggregated = st.aggregated;
  shards_[0].nan_values = st.nan_values;
  has_max_    = st.has_max;
  max_ts_     = st.max_ts;
  late_count_ = st.late;
  emitted_    = st.emitted;
}

}  // namespace

std::unique_ptr<window_engine> make_cpu_engine(pipeline_options const& options)
{
  return std::make_unique<cpu_window_engine>(options);
}

}  // namespace cusense::detail
