// CPU backend of the keyed window engine: state is sharded by key across threads; each shard
// maps (key, window id) to accumulator slots through an open-addressing index.
#include <algorithm>
#include <exception>
#include <limits>
#include <map>
#include <new>
#include <string>
#include <thread>

#include <cusense/error.hpp>

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
// stream consecutive records share a window, so the 64-bit division is rarely needed.
struct window_id_cache {
  ops::tumbling const& window;
  std::int64_t lo = 1, hi = 0, id = 0;  // [lo, hi) holds window `id`; starts empty

  std::int64_t operator()(std::int64_t t)
  {
    if (t < lo || t >= hi) {
      id = window.id(t);
      lo = window.start(id);
      hi = window.end(id);
    }
    return id;
  }
};

// How many records ahead the state-lookup passes prefetch hash buckets and accumulators.
constexpr std::size_t prefetch_ahead = 16;

struct shard_state {
  flat_index index;
  std::vector<ops::moments> acc;  // slot * channels + channel
  std::vector<std::uint32_t> slot_key;
  std::vector<std::uint32_t> free_slots;
  std::map<std::int64_t, std::vector<std::uint32_t>> open_by_window;  // window id -> slots
  std::vector<std::uint32_t> todo;   // record indices of the current batch
  std::vector<std::uint32_t> slots;  // state slot of each todo record
  std::vector<std::int64_t> wins;    // scratch: window id of each todo record
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
    if (slot >= slots_before) {
      slot_key.pop_back();
      acc.resize(acc.size() - static_cast<std::size_t>(channels));
    } else {
      free_slots.push_back(slot);  // it was popped from there: the capacity is still held
    }
  }

  // The slot of (key, win), created when missing. Strong guarantee: throws (bad_alloc) with
  // nothing changed.
  std::uint32_t slot_for(std::uint32_t key, std::int64_t win, int channels)
  {
    std::uint32_t slot = index.find(key, win);
    if (slot != flat_index::none) { return slot; }
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
      std::size_t const n = todo.size();
      slots.resize(n);
      wins.resize(n);
      window_id_cache wid{window};
      for (std::size_t j = 0; j < n; ++j) wins[j] = wid(ts[todo[j]]);
      // The bucket loads are the cost (random accesses): issue them ahead of their use.
      for (std::size_t j = 0; j < n; ++j) {
        if (j + prefetch_ahead < n) {
          index.prefetch(keys[todo[j + prefetch_ahead]], wins[j + prefetch_ahead]);
        }
        slots[j] = slot_for(keys[todo[j]], wins[j], channels);
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
    std::size_t const n = todo.size();
    for (std::size_t j = 0; j < n; ++j) {
      if (j + prefetch_ahead < n) {
        __builtin_prefetch(&acc[std::size_t{slots[j + prefetch_ahead]} * channels], 1);
      }
      ops::moments* a = &acc[std::size_t{slots[j]} * channels];
      T const* v      = values + std::size_t{todo[j]} * channels;
      for (int c = 0; c < channels; ++c) {
        double const x = static_cast<double>(v[c]);
        nan_values += ops::is_nan(x);
        ops::add(a[c], x);
      }
    }
    aggregated += todo.size();
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
    if (threads <= 0) { threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }
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
    // it was; pass 2 cannot fail.
    for (auto& s : shards_) s.begin_batch();
    late_idx_.clear();
    // Pass 0: lateness and shard of each record. Lateness is decided record by record in
    // arrival order, against the watermark carried from all earlier records, so it does not
    // depend on how the stream is cut into batches.
    std::int64_t max_ts = max_ts_;
    bool has_max        = has_max_;
    auto const wm       = [&] { return max_ts - options_.max_out_of_orderness; };
    // A record is late when its window id is below closed_before(watermark), that is when its
    // time is below the start of that window: compare times, no division per record.
    std::int64_t late_below = std::numeric_limits<std::int64_t>::min();
    if (has_max) { late_below = window_.start(window_.closed_before(wm())); }
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::int64_t const t = batch.timestamps[i];
      if (t < late_below) {
        late_idx_.push_back(static_cast<std::uint32_t>(i));
        continue;
      }
      shards_[shard_of(batch.keys[i], shards)].todo.push_back(static_cast<std::uint32_t>(i));
      if (!has_max || t > max_ts) {
        max_ts     = t;
        has_max    = true;
        late_below = window_.start(window_.closed_before(wm()));
      }
    }
    late_out_.reserve(late_idx_.size());
    // Pass 1: find or create the state of each record.
    bool const parallel = batch.n >= parallel_threshold && shards > 1;
    std::vector<std::exception_ptr> errors(shards);
    auto resolve = [&](std::size_t s) {
      try {
        shards_[s].resolve(batch.keys, batch.timestamps, window_, channels);
      } catch (...) {
        errors[s] = std::current_exception();
      }
    };
    if (parallel) {
#pragma omp parallel for schedule(static, 1) num_threads(shards)
      for (std::int64_t s = 0; s < static_cast<std::int64_t>(shards); ++s) {
        resolve(static_cast<std::size_t>(s));
      }
    } else {
      for (std::size_t s = 0; s < shards; ++s) resolve(s);
    }
    std::size_t open = 0, created = 0;
    for (auto const& s : shards_) {
      open += s.index.size();
      created += s.created.size();
    }
    auto const failed = std::find_if(errors.begin(), errors.end(), [](auto const& e) { return e != nullptr; });
    std::size_t const cap = options_.max_open_windows;
    if (failed != errors.end() || (cap != 0 && open > cap)) {
      for (auto& s : shards_) s.roll_back(channels);
      if (failed != errors.end()) { std::rethrow_exception(*failed); }
      throw capacity_error("max_open_windows = " + std::to_string(cap) + " would be exceeded: " +
                           std::to_string(open - created) + " (key, window) states are open and " +
                           "the batch of " + std::to_string(batch.n) + " records opens " +
                           std::to_string(created) + " more; the batch was rejected and the " +
                           "pipeline is unchanged");
    }
    // Pass 2: apply.
    auto accumulate = [&](std::size_t s) { shards_[s].accumulate(values, channels); };
    if (parallel) {
#pragma omp parallel for schedule(static, 1) num_threads(shards)
      for (std::int64_t s = 0; s < static_cast<std::int64_t>(shards); ++s) {
        accumulate(static_cast<std::size_t>(s));
      }
    } else {
      for (std::size_t s = 0; s < shards; ++s) accumulate(s);
    }
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
    std::vector<ready> out;
    for (std::uint32_t s = 0; s < shards_.size(); ++s) {
      auto& open = shards_[s].open_by_window;
      for (auto it = open.begin(); it != open.end() && it->first < limit; ++it) {
        for (std::uint32_t slot : it->second) {
          out.push_back({it->first, shards_[s].slot_key[slot], s, slot});
        }
      }
    }
    if (out.empty() && std::all_of(shards_.begin(), shards_.end(), [&](shard_state const& sh) {
          return sh.open_by_window.empty() || sh.open_by_window.begin()->first >= limit;
        })) {
      return;
    }
    std::sort(out.begin(), out.end(), [](ready const& a, ready const& b) {
      return a.win != b.win ? a.win < b.win : a.key < b.key;
    });
    windows_out_.reserve(out.size());
    for (auto& sh : shards_) sh.free_slots.reserve(sh.slot_key.size());
    // Nothing below allocates.
    int const channels = options_.channels;
    for (ready const& r : out) {
      shard_state& sh = shards_[r.shard];
      windows_out_.append(r.key, window_.start(r.win), window_.end(r.win),
                          &sh.acc[std::size_t{r.slot} * channels]);
      sh.index.erase(r.key, r.win);
      sh.free_slots.push_back(r.slot);
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
};

}  // namespace

std::unique_ptr<window_engine> make_cpu_engine(pipeline_options const& options)
{
  return std::make_unique<cpu_window_engine>(options);
}

}  // namespace cusense::detail
