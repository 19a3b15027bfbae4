// CPU backend of the keyed window engine: state is sharded by key across threads; each shard
// maps (key, window id) to accumulator slots through an open-addressing index.
#include <algorithm>
#include <limits>
#include <map>
#include <thread>

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

struct shard_state {
  flat_index index;
  std::vector<ops::moments> acc;  // slot * channels + channel
  std::vector<std::uint32_t> slot_key;
  std::vector<std::uint32_t> free_slots;
  std::map<std::int64_t, std::vector<std::uint32_t>> open_by_window;  // window id -> slots
  std::vector<std::uint32_t> todo;  // record indices of the current batch
  std::uint64_t aggregated = 0;
  std::uint64_t nan_values = 0;

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
      acc.resize(acc.size() + channels);
    }
    index.insert(key, win, slot);
    open_by_window[win].push_back(slot);
    return slot;
  }

  template <typename T>
  void aggregate(std::uint32_t const* keys, std::int64_t const* ts, T const* values,
                 ops::tumbling const& window, int channels)
  {
    for (std::uint32_t i : todo) {
      std::uint32_t const slot = slot_for(keys[i], window.id(ts[i]), channels);
      ops::moments* a          = &acc[std::size_t{slot} * channels];
      T const* v               = values + std::size_t{i} * channels;
      for (int c = 0; c < channels; ++c) {
        double const x = static_cast<double>(v[c]);
        nan_values += ops::is_nan(x);
        ops::add(a[c], x);
      }
    }
    aggregated += todo.size();
    todo.clear();
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
    if (windows) { windows->append(windows_out_.finish()); }
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
    // Lateness is decided record by record in arrival order, against the watermark carried
    // from all earlier records, so it does not depend on how the stream is cut into batches.
    std::int64_t closed = std::numeric_limits<std::int64_t>::min();  // windows below are closed
    if (has_max_) { closed = window_.closed_before(watermark()); }
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::int64_t const t = batch.timestamps[i];
      if (window_.id(t) < closed) {
        late_out_.append(batch.keys[i], t, values + i * channels);
        ++late_count_;
        continue;
      }
      shards_[shard_of(batch.keys[i], shards)].todo.push_back(static_cast<std::uint32_t>(i));
      if (!has_max_ || t > max_ts_) {
        max_ts_  = t;
        has_max_ = true;
        closed   = window_.closed_before(watermark());
      }
    }
    auto work = [&](std::size_t s) {
      shards_[s].aggregate(batch.keys, batch.timestamps, values, window_, channels);
    };
    if (batch.n >= parallel_threshold && shards > 1) {
#pragma omp parallel for schedule(static, 1) num_threads(shards)
      for (std::int64_t s = 0; s < static_cast<std::int64_t>(shards); ++s) {
        work(static_cast<std::size_t>(s));
      }
    } else {
      for (std::size_t s = 0; s < shards; ++s) work(s);
    }
    if (has_max_) { emit_before(window_.closed_before(watermark())); }
  }

  // Emits, in (window start, key) order, every open window whose id is below `limit`.
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
      for (auto it = open.begin(); it != open.end() && it->first < limit; it = open.erase(it)) {
        for (std::uint32_t slot : it->second) {
          out.push_back({it->first, shards_[s].slot_key[slot], s, slot});
        }
      }
    }
    std::sort(out.begin(), out.end(), [](ready const& a, ready const& b) {
      return a.win != b.win ? a.win < b.win : a.key < b.key;
    });
    windows_out_.reserve(out.size());
    int const channels = options_.channels;
    for (ready const& r : out) {
      shard_state& sh = shards_[r.shard];
      windows_out_.append(r.key, window_.start(r.win), window_.end(r.win),
                          &sh.acc[std::size_t{r.slot} * channels]);
      sh.index.erase(r.key, r.win);
      sh.free_slots.push_back(r.slot);
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
};

}  // namespace

std::unique_ptr<window_engine> make_cpu_engine(pipeline_options const& options)
{
  return std::make_unique<cpu_window_engine>(options);
}

}  // namespace cusense::detail
