// CPU engine for rolling (count) windows: per key, the last `rows` records in (timestamp,
// arrival) order; one output row per record, like pandas groupby(key).rolling(rows).
//
// A record is a point [t, t + 1): it is late when t < watermark just before it, and its row is
// emitted once t < watermark, when no record that precedes it can still arrive (a later one
// with an earlier or equal time is late or sorts after it). Rows come in (timestamp, key,
// arrival) order; the row of record r aggregates, in order, the rows - 1 records of its key
// before it and r itself. In a channel with fewer than min_periods non-NaN values in the
// window, every aggregation but count and nan_count is NaN.
//
// Layout: waiting records are kept sorted in a vector (each push radix-sorts its arrivals by
// time and merges them in), and each key's history is a ring of its last rows - 1 emitted
// records, reached through a dense key index stored with every waiting record. Every row is
// recomputed from its rows records in order, so its sums and Welford updates are exactly those
// of adding the records one by one (a sliding update would round differently).
//
// Long windows (rows > two_stack_min_rows, without quantile sketches) cost O(1) per row, not
// O(rows): a key's records are cut into blocks of rows - 1 (by the count of its emitted
// records, kept in checkpoints), the key keeps the suffix folds of its last full block and the
// fold of the current one, and a row is the merge of the suffix starting at its window's first
// record and the current block's fold up to the record (the two-stack algorithm). Min, max,
// first, last and counts are exact; sums, means and variances are merges of two partial folds,
// which may differ from the one-by-one fold in the last bits. Rows do not depend on batch cuts
// or on checkpoints (the blocks are rebuilt from the history on restore, bit for bit).
#include <algorithm>
#include <limits>
#include <thread>
#include <tuple>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cusense/detail/state_codec.hpp>
#include <cusense/detail/results.hpp>

#include "engine_common.hpp"

namespace cusense::detail {
namespace {

constexpr std::uint32_t no_index = ~std::uint32_t{0};

// A record waiting for its row.
struct waiting_record {
  std::int64_t t;
  std::uint64_t seq;
  std::uint32_t key;
  std::uint32_t slot;       // values: vals_[slot * channels ...]
  std::uint32_t key_index;  // into keys_, or no_index when the key held no state on arrival
  double value0;            // the first channel's value, at hand for the one-channel rows
};

bool row_order_less(waiting_record const& a, waiting_record const& b)
{
  return std::tie(a.t, a.key, a.seq) < std::tie(b.t, b.key, b.seq);
}

// An emitted record kept in its key's history.
struct history_record {
  std::int64_t t;
  std::uint64_t seq;
  std::uint32_t slot;
  double value0;  // the first channel's value (a copy: a row reads its window without a gather)
};

// The last rows - 1 emitted records of one key: a ring that grows up to its capacity, then
// overwrites its oldest entry (at `head`).
struct key_history {
  std::uint32_t key  = 0;
  std::uint32_t head = 0;
  std::vector<history_record> ring;
  // Long windows (two-stack): records of the key emitted so far (blocks of rows - 1 are counted
  // from its first), the suffix folds of the last full block (offset * channels + channel;
  // empty before one) and the fold of the current block, per channel.
  std::uint64_t retired = 0;
  std::vector<ops::moments> suffix_m, prefix_m;
  std::vector<ops::extent> suffix_e, prefix_e;
  std::uint32_t waiting = 0;  // records of the key waiting for their rows
  bool live             = true;  // false: the index is free (the key expired)
  std::uint32_t rows_due = 0;  // scratch (prepare_emission): rows of the key about to be emitted
  bool provisioned       = false;  // holds all the room its rows can need (prepare_emission)

  // The key's last emitted record (the history must not be empty).
  history_record const& newest() const { return ring[(head + ring.size() - 1) % ring.size()]; }

  template <typename F>
  void for_each_oldest_first(F&& f) const
  {
    std::size_t const n = ring.size();
    for (std::size_t i = head; i < n; ++i) f(ring[i]);
    for (std::size_t i = 0; i < head; ++i) f(ring[i]);
  }
};

// Open-addressing map from key to its dense index (linear probing; keys are only ever added,
// and all removed at once).
class key_index_map {
 public:
  key_index_map() { buckets_.assign(64, empty_bucket()); }

  std::uint32_t find(std::uint32_t key) const
  {
    for (std::size_t i = home(key);; i = (i + 1) & mask()) {
      bucket const& b = buckets_[i];
      if (b.index == no_index) { return no_index; }
      if (b.key == key) { return b.index; }
    }
  }

  /// Room for one more key: the next insert will not allocate.
  void reserve_one()
  {
    if (2 * (size_ + 1) > buckets_.size()) { grow(); }
  }

  // Inserts key -> index; the key must be absent.
  void insert(std::uint32_t key, std::uint32_t index)
  {
    if (2 * (size_ + 1) > buckets_.size()) { grow(); }
    std::size_t i = home(key);
    while (buckets_[i].index != no_index) { i = (i + 1) & mask(); }
    buckets_[i] = {key, index};
    ++size_;
  }

  void clear()
  {
    std::fill(buckets_.begin(), buckets_.end(), empty_bucket());
    size_ = 0;
  }

  // Removes key (when present), shifting back the entries of its probe run that may move.
  void erase(std::uint32_t key)
  {
    std::size_t i = home(key);
    for (;; i = (i + 1) & mask()) {
      if (buckets_[i].index == no_index) { return; }
      if (buckets_[i].key == key) { break; }
    }
    for (std::size_t j = i;;) {
      j = (j + 1) & mask();
      if (buckets_[j].index == no_index) { break; }
      std::size_t const h = home(buckets_[j].key);
      bool const stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);  // h in (i, j]
      if (!stays) {
        buckets_[i] = buckets_[j];
        i           = j;
      }
    }
    buckets_[i] = empty_bucket();
    --size_;
  }

 private:
  struct bucket {
    std::uint32_t key;
    std::uint32_t index;
  };
  static bucket empty_bucket() { return {0, no_index}; }
  std::size_t mask() const { return buckets_.size() - 1; }
  std::size_t home(std::uint32_t key) const
  {
    return static_cast<std::size_t>((std::uint64_t{key} * 0x9E3779B97F4A7C15ull) >> 32) & mask();
  }
  void grow()
  {
    std::vector<bucket> previous(buckets_.size() * 2, empty_bucket());  // allocates first
    previous.swap(buckets_);
    size_ = 0;
    for (bucket const& b : previous) {
      if (b.index != no_index) { insert(b.key, b.index); }
    }
  }

  std::vector<bucket> buckets_;
  std::size_t size_ = 0;
};

// Orders records by (t, key, seq) without moving them: a stable LSD radix sort of
// (t - t_min, position) codes, then a comparison sort of each run of equal times; small inputs
// and wide time ranges take a comparison sort. position(i) is the index of the i-th record.
class row_order_sorter {
 public:
  void sort(std::vector<waiting_record> const& recs)
  {
    std::size_t const n = recs.size();
    codes_.resize(n);
    position_bits_ = bit_width(n > 0 ? n - 1 : 0);
    auto const by_row_order = [&](std::uint64_t a, std::uint64_t b) {
      return row_order_less(recs[position_of(a)], recs[position_of(b)]);
    };
    std::int64_t t_min = 0, t_max = 0;
    if (n > 0) {
      auto const [lo, hi] = std::minmax_element(
        recs.begin(), recs.end(), [](waiting_record const& a, waiting_record const& b) { return a.t < b.t; });
      t_min = lo->t;
      t_max = hi->t;
    }
    int const time_bits = bit_width(static_cast<std::uint64_t>(t_max) - static_cast<std::uint64_t>(t_min));
    if (n < 512 || time_bits > 48 || time_bits + position_bits_ > 64) {
      for (std::size_t i = 0; i < n; ++i) codes_[i] = i;
      std::sort(codes_.begin(), codes_.end(), by_row_order);
      return;
    }
    for (std::size_t i = 0; i < n; ++i) {
      codes_[i] = ((static_cast<std::uint64_t>(recs[i].t) - static_cast<std::uint64_t>(t_min)) << position_bits_) | i;
    }
    scratch_.resize(n);
    int const passes               = (time_bits + max_digit_bits - 1) / max_digit_bits;
    int const digit_bits           = passes > 0 ? (time_bits + passes - 1) / passes : 0;
    std::uint64_t const digit_mask = (std::uint64_t{1} << digit_bits) - 1;
    for (int p = 0; p < passes; ++p) {
      int const shift = position_bits_ + p * digit_bits;
      std::fill(counts_, counts_ + digit_mask + 1, 0u);
      for (std::uint64_t c : codes_) ++counts_[(c >> shift) & digit_mask];
      std::uint32_t sum = 0;
      for (std::size_t d = 0; d <= digit_mask; ++d) {
        std::uint32_t const k = counts_[d];
        counts_[d]            = sum;
        sum += k;
      }
      for (std::uint64_t c : codes_) scratch_[counts_[(c >> shift) & digit_mask]++] = c;
      codes_.swap(scratch_);
    }
    // Equal times: order by (key, seq), which the positions need not follow.
    for (std::size_t b = 0; b < n;) {
      std::size_t e = b + 1;
      while (e < n && recs[position(e)].t == recs[position(b)].t) ++e;
      if (e - b > 1) { std::sort(codes_.begin() + b, codes_.begin() + e, by_row_order); }
      b = e;
    }
  }

  std::size_t position(std::size_t i) const { return position_of(codes_[i]); }

 private:
  static constexpr int max_digit_bits = 12;

  static int bit_width(std::uint64_t x) { return x == 0 ? 0 : 64 - __builtin_clzll(x); }

  std::size_t position_of(std::uint64_t code) const
  {
    return static_cast<std::size_t>(code & ((std::uint64_t{1} << position_bits_) - 1));
  }

  int position_bits_ = 0;
  std::vector<std::uint64_t> codes_, scratch_;
  std::uint32_t counts_[std::size_t{1} << max_digit_bits];
};

class cpu_rolling_kind final : public cpu_kind_base {
 public:
  explicit cpu_rolling_kind(pipeline_options const& options)
    : cpu_kind_base(options),
      rows_(options.window.rows),
      min_periods_(options.window.min_periods < 0 ? options.window.rows : options.window.min_periods),
      history_capacity_(rows_ > 1 ? static_cast<std::size_t>(rows_ - 1) : 0),
      threads_(options.cpu_threads > 0
                 ? options.cpu_threads
                 : std::min(max_cpu_threads, static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))))
  {
    tmp_.resize(static_cast<std::size_t>(channels_));
    two_stack_ = rows_ > two_stack_min_rows && !layout_.sketch;
    key_ttl_   = options.key_ttl;
  }

  // All or nothing: a push takes its records (undone if anything throws), then allocates all
  // that emitting its rows needs, then emits them, which cannot fail.
  void apply(watermark_feed& feed, window_output& out) override
  {
    out_ = &out;
    with_values(feed.batch(), [&](auto const* values) { push_typed(feed, values); });
  }

  void flush(window_output& out) override
  {
    out_ = &out;
    prepare_emission(std::numeric_limits<std::int64_t>::max());
    emit_before(std::numeric_limits<std::int64_t>::max());
    for (key_history const& h : keys_) {
      for (history_record const& r : h.ring) free_.push_back(r.slot);
    }
    keys_.clear();
    key_index_.clear();
    free_keys_.clear();
    unprovisioned_ = 0;
    keys_with_suffix_ = 0;
  }

  kind_size size() const override { return {held(), live_keys(), state_bytes()}; }

  // Checkpoint: clock, counters, the waiting records in (t, key, arrival) order and the
  // per-key history (the last rows - 1 emitted records), with their values.
  void save_state(state_writer& out, runner_fields const& fields) override
  {
    fields.save_clock(out);
    fields.save_counts(out);
    auto const ch  = static_cast<std::size_t>(channels_);
    auto write_rec = [&](std::int64_t t, std::uint32_t key, std::uint64_t seq, std::uint32_t slot) {
      out.i64(t);
      out.u32(key);
      out.u64(seq);
      for (std::size_t c = 0; c < ch; ++c) out.f64(vals_[std::size_t{slot} * ch + c]);
    };
    out.u64(waiting_.size());
    for (waiting_record const& r : waiting_) write_rec(r.t, r.key, r.seq, r.slot);
    std::vector<std::uint32_t> order;
    for (std::uint32_t i = 0; i < keys_.size(); ++i) {
      if (keys_[i].live) { order.push_back(i); }
    }
    std::sort(order.begin(), order.end(),
              [&](std::uint32_t a, std::uint32_t b) { return keys_[a].key < keys_[b].key; });
    out.u64(order.size());
    for (std::uint32_t i : order) {
      key_history const& h = keys_[i];
      out.u32(h.key);
      out.u64(h.ring.size());
      h.for_each_oldest_first([&](history_record const& r) { write_rec(r.t, h.key, r.seq, r.slot); });
    }
    // Since format version 5: the keys whose count of emitted records differs from their
    // history's length (the blocks of long windows are aligned to it; only they count), in key
    // order.
    auto const aligned = [&](std::uint32_t i) {
      return two_stack_ && keys_[i].retired != keys_[i].ring.size();
    };
    out.u64(static_cast<std::size_t>(std::count_if(order.begin(), order.end(), aligned)));
    for (std::uint32_t i : order) {
      if (!aligned(i)) { continue; }
      out.u32(keys_[i].key);
      out.u64(keys_[i].retired);
    }
  }

  void load_state(state_reader& in, runner_fields& fields, key_filter const& keep) override
  {
    fields.load_clock(in);
    fields.load_counts(in);
    auto const ch = static_cast<std::size_t>(channels_);
    struct loaded {
      std::int64_t t;
      std::uint32_t key;
      std::uint64_t seq;
      std::uint32_t slot;
    };
    // A record of a key `keep` drops is read into no slot.
    auto read_rec = [&] {
      loaded r{};
      r.t    = checked_time(in.i64());
      r.key  = in.u32();
      r.seq  = in.u64();
      if (!keep.keeps(r.key)) {
        for (std::size_t c = 0; c < ch; ++c) (void)in.f64();
        r.slot = no_index;
        return r;
      }
      r.slot = take();
      for (std::size_t c = 0; c < ch; ++c) vals_[std::size_t{r.slot} * ch + c] = in.f64();
      return r;
    };
    std::size_t const np = in.count(20 + 8 * ch);
    std::vector<waiting_record> pending;
    for (std::size_t i = 0; i < np; ++i) {
      loaded const r = read_rec();
      if (r.slot == no_index) { continue; }
      pending.push_back({r.t, r.seq, r.key, r.slot, no_index, vals_[std::size_t{r.slot} * ch]});
    }
    std::size_t const nk = in.count(12);
    std::vector<std::uint32_t> loaded_keys;
    for (std::size_t k = 0; k < nk; ++k) {
      std::uint32_t const key = in.u32();
      std::size_t const n     = in.count(20 + 8 * ch);
      if (!keep.keeps(key)) {
        for (std::size_t i = 0; i < n; ++i) {
          state_reader::check(read_rec().key == key, "rolling history holds another key");
        }
        continue;
      }
      state_reader::check(rows_ > 1 && static_cast<std::int64_t>(n) <= rows_ - 1 &&
                            key_index_.find(key) == no_index,
                          "rolling history longer than the window or repeated");
      key_history& h = keys_[add_key(key)];
      for (std::size_t i = 0; i < n; ++i) {
        loaded const r = read_rec();
        h.ring.push_back({r.t, r.seq, r.slot, vals_[std::size_t{r.slot} * ch]});
        state_reader::check(r.key == key, "rolling history holds another key");
      }
      h.retired = n;
      loaded_keys.push_back(key);
    }
    if (in.version() >= 5) {
      std::size_t const na = in.count(12);
      for (std::size_t i = 0; i < na; ++i) {
        std::uint32_t const key     = in.u32();
        std::uint64_t const retired = in.u64();
        if (!two_stack_ || !keep.keeps(key)) { continue; }
        std::uint32_t const index = key_index_.find(key);
        state_reader::check(index != no_index && retired >= keys_[index].ring.size() &&
                              keys_[index].ring.size() == history_capacity_,
                            "rolling record count for a key without a full history");
        keys_[index].retired = retired;
      }
    }
    if (two_stack_) {
      for (std::uint32_t key : loaded_keys) rebuild_blocks(keys_[key_index_.find(key)]);
    }
    for (waiting_record& r : pending) {
      r.key_index = key_index_.find(r.key);
      if (r.key_index != no_index) { ++keys_[r.key_index].waiting; }
    }
    merge_waiting(pending);
  }

 private:
  static constexpr std::size_t max_grouped_history = 4096;

  // Bytes of the live state: each key's history entry, index bucket and history records, the
  // waiting records, and the values of every held record (capacity kept for reuse not counted).
  std::size_t state_bytes() const
  {
    std::size_t const history = held() - waiting_.size();
    auto const ch = static_cast<std::size_t>(channels_);
    std::size_t const fold = sizeof(ops::moments) + (layout_.extent ? sizeof(ops::extent) : 0);
    return live_keys() * (sizeof(key_history) + 2 * sizeof(std::uint32_t)) +
           history * sizeof(history_record) + waiting_.size() * sizeof(waiting_record) +
           held() * ch * sizeof(double) +
           (two_stack_ ? live_keys() * ch * fold + keys_with_suffix_ * history_capacity_ * ch * fold
                       : 0);
  }

  // Records held: waiting rows and the per-key history.
  std::size_t held() const { return vals_.size() / static_cast<std::size_t>(channels_) - free_.size(); }

  std::size_t live_keys() const { return keys_.size() - free_keys_.size(); }

  // Allocates before changing anything.
  std::uint32_t add_key(std::uint32_t key)
  {
    if (free_keys_.empty()) { reserve_more(keys_, 1); }
    key_index_.reserve_one();
    std::uint32_t index = 0;
    if (free_keys_.empty()) {
      index = static_cast<std::uint32_t>(keys_.size());
      keys_.emplace_back();
    } else {
      index = free_keys_.back();
      free_keys_.pop_back();
      keys_[index] = key_history{};
    }
    ++unprovisioned_;
    keys_[index].key = key;
    key_index_.insert(key, index);
    return index;
  }

  // Key expiry (key_ttl): a record more than key_ttl after its key's last emitted record starts
  // the key afresh (its window holds only the records from it on), whenever it comes.
  void restart_if_expired(key_history* h, waiting_record const& r, std::vector<std::uint32_t>& freed)
  {
    if (key_ttl_ == 0 || h == nullptr || h->ring.empty() || r.t - h->newest().t <= key_ttl_) { return; }
    forget_history(*h, freed);
  }

  void forget_history(key_history& h, std::vector<std::uint32_t>& freed)
  {
    for (history_record const& x : h.ring) freed.push_back(x.slot);
    h.ring.clear();
    h.head    = 0;
    h.retired = 0;
    if (!h.suffix_m.empty()) { --keys_with_suffix_; }
    h.suffix_m.clear();
    h.suffix_e.clear();
    h.prefix_m.clear();
    h.prefix_e.clear();
  }

  // Drops the keys that no record can reach within key_ttl any more: their last emitted record
  // is more than key_ttl before the watermark `wm` and none waits (a later record starts them
  // afresh anyway, so dropping them changes no row). Runs once per quarter key_ttl of
  // watermark progress, a pass over the keys.
  void expire_keys(std::int64_t wm)
  {
    if (key_ttl_ == 0 || wm == std::numeric_limits<std::int64_t>::max()) { return; }
    if (swept_ && wm - last_sweep_ < std::max<std::int64_t>(key_ttl_ / 4, 1)) { return; }
    swept_     = true;
    last_sweep_ = wm;
    for (std::uint32_t i = 0; i < keys_.size(); ++i) {
      key_history& h = keys_[i];
      if (!h.live || h.waiting != 0 || h.ring.empty() || h.newest().t + key_ttl_ >= wm) { continue; }
      forget_history(h, free_);
      h.live = false;
      unprovisioned_ -= h.provisioned ? 0 : 1;
      key_index_.erase(h.key);
      free_keys_.push_back(i);
    }
  }

  template <typename T>
  void push_typed(watermark_feed& feed, T const* values)
  {
    record_batch const& batch = feed.batch();
    auto const ch             = static_cast<std::size_t>(channels_);
    // Lateness record by record; rows are emitted once, after the batch (below), up to the
    // highest watermark the batch reaches.
    watermark_feed during = feed;
    std::int64_t limit    = feed.has() ? feed.value() : std::numeric_limits<std::int64_t>::min();
    auto const raise      = [&](std::int64_t) { limit = std::max(limit, during.value()); };
    during.start(raise);
    arrivals_.resize(batch.n);
    batch_start_ = {vals_.size(), keys_.size(), waiting_.size(), 0};
    waiting_merged_ = false;
    try {
      for (std::size_t i = 0; i < batch.n; ++i) {
        std::int64_t const t    = batch.timestamps[i];
        std::uint32_t const key = batch.keys[i];
        T const* v              = values + i * ch;
        if (during.has() && t < during.value()) {
          out_->reject_late(key, t, v, during.position(i));
          during.after(i, t, raise);
          continue;
        }
        std::uint32_t key_index = no_index;
        if (rows_ > 1) {  // the key holds state from now on
          key_index = key_index_.find(key);
          if (key_index == no_index) {
            reserve_more(added_keys_, 1);
            key_index = add_key(key);
            added_keys_.push_back(key_index);
          }
        }
        std::uint32_t const slot = take();
        double* dst              = &vals_[std::size_t{slot} * ch];
        for (std::size_t c = 0; c < ch; ++c) {
          dst[c] = static_cast<double>(v[c]);
          out_->nan_values += ops::is_nan(dst[c]) ? 1 : 0;
        }
        if (key_index != no_index) { ++keys_[key_index].waiting; }
        arrivals_[batch_start_.accepted++] = {t, feed.seq(i), key, slot, key_index, dst[0]};
        during.after(i, t, raise);
      }
      arrivals_.resize(batch_start_.accepted);
      merge_waiting(arrivals_);
      prepare_emission(limit);
    } catch (...) {
      undo_arrivals();
      throw;
    }
    added_keys_.clear();
    // Rows do not depend on when they are emitted (a record that could precede a waiting
    // row is late), so emitting once per batch gives the same rows in the same order; under
    // external watermarks, step by step, so that each row gets the position of its step.
    if (feed.external()) {
      feed.finish([&](std::int64_t position) {
        emit_before(feed.value());
        out_->tag_windows(position);
      });
    } else {
      feed = during;
      if (feed.has()) { emit_before(feed.value()); }
    }
  }

  // Merges records (in any order) into the waiting records, which stay in row order.
  void merge_waiting(std::vector<waiting_record> const& recs)
  {
    std::size_t const n = recs.size();
    if (n == 0) { return; }
    sorter_.sort(recs);
    std::size_t const kept = waiting_.size();
    if (kept == 0 || row_order_less(waiting_.back(), recs[sorter_.position(0)])) {
      waiting_.resize(kept + n);
      for (std::size_t i = 0; i < n; ++i) waiting_[kept + i] = recs[sorter_.position(i)];
      return;
    }
    merged_.resize(kept + n);
    std::size_t a = 0, b = 0, out = 0;
    while (a < kept && b < n) {
      waiting_record const& next = recs[sorter_.position(b)];
      if (row_order_less(next, waiting_[a])) {
        merged_[out++] = next;
        ++b;
      } else {
        merged_[out++] = waiting_[a++];
      }
    }
    while (a < kept) merged_[out++] = waiting_[a++];
    while (b < n) merged_[out++] = recs[sorter_.position(b++)];
    waiting_.swap(merged_);
    waiting_merged_ = true;  // merged_ holds the waiting records from before
  }

  // Reserves, for the keys of the rows [first, last) that lack it, the room their histories
  // and two-stack folds need for those rows; a key with room for a full history is
  // provisioned for good (its history never shrinks its room).
  void provision_histories(std::vector<waiting_record>::iterator first,
                           std::vector<waiting_record>::iterator last)
  {
    auto const ch           = static_cast<std::size_t>(channels_);
    std::size_t const block = history_capacity_;
    for (auto r = first; r != last; ++r) {
      key_history* h = history_of(*r);
      if (h != nullptr && !h->provisioned) { ++h->rows_due; }
    }
    try {
      for (auto r = first; r != last; ++r) {
        key_history* h = history_of(*r);
        if (h == nullptr || h->rows_due == 0) { continue; }
        std::size_t const need = std::min(history_capacity_, h->ring.size() + h->rows_due);
        if (need > h->ring.capacity()) {
          h->ring.reserve(std::min(history_capacity_, std::max(need, 2 * h->ring.capacity())));
        }
        if (two_stack_) {
          h->prefix_m.reserve(ch);
          if (layout_.extent) { h->prefix_e.reserve(ch); }
          if (h->retired % block + h->rows_due >= block) {  // fills a block: suffix folds
            h->suffix_m.reserve(block * ch);
            if (layout_.extent) { h->suffix_e.reserve(block * ch); }
          }
        }
        h->rows_due = 0;
        if (h->ring.capacity() >= history_capacity_ &&
            (!two_stack_ || h->suffix_m.capacity() >= block * ch)) {
          h->provisioned = true;
          --unprovisioned_;
        }
      }
    } catch (...) {
      for (auto r = first; r != last; ++r) {
        if (key_history* h = history_of(*r)) { h->rows_due = 0; }
      }
      throw;
    }
  }

  // Undoes the records a push took (a push that failed before emitting); never allocates.
  void undo_arrivals() noexcept
  {
    std::size_t const slots_before = batch_start_.vals / static_cast<std::size_t>(channels_);
    for (std::size_t i = batch_start_.accepted; i-- > 0;) {
      waiting_record const& r = arrivals_[i];
      if (r.key_index != no_index) { --keys_[r.key_index].waiting; }
      if (r.slot < slots_before) { free_.push_back(r.slot); }  // back where take() found it
    }
    vals_.resize(batch_start_.vals);
    for (std::size_t i = added_keys_.size(); i-- > 0;) {
      std::uint32_t const index = added_keys_[i];
      key_index_.erase(keys_[index].key);
      unprovisioned_ -= keys_[index].provisioned ? 0 : 1;
      if (index < batch_start_.keys) {  // from free_keys_: dead again
        keys_[index]      = key_history{};
        keys_[index].live = false;
        free_keys_.push_back(index);
      } else {
        keys_.pop_back();
      }
    }
    added_keys_.clear();
    if (waiting_merged_) {
      waiting_.swap(merged_);
    } else {
      shrink_to(waiting_, batch_start_.waiting);
    }
  }

  // Allocates all that emitting the rows of the waiting records with t < limit needs, so that
  // emit_before(limit) (or several calls up to it) cannot fail: output rows, the free lists,
  // the histories the rows go to and their two-stack folds, and the emission scratch.
  void prepare_emission(std::int64_t limit)
  {
    auto const ready_end = std::partition_point(
      waiting_.begin(), waiting_.end(), [&](waiting_record const& r) { return r.t < limit; });
    auto const n = static_cast<std::size_t>(ready_end - waiting_.begin());
    auto const ch = static_cast<std::size_t>(channels_);
    std::size_t const slots = vals_.size() / ch;
    reserve_more(free_, slots - free_.size());  // each slot is free at most once
    reserve_more(free_keys_, keys_.size() - free_keys_.size());
    if (n == 0) { return; }
    out_->windows.reserve(n);
    if (out_->keep_positions) { reserve_more(out_->window_positions, n); }
    // Per key: room in its history for the rows it gains (up to rows - 1), until it has room
    // for a full history (in a steady fleet, every key soon: no pass over the rows).
    if (unprovisioned_ > 0) { provision_histories(waiting_.begin(), ready_end); }
    if (layout_.sketch) {
      for (channel_acc& a : tmp_) a.s.reserve(history_capacity_ + 1);  // a row: rows values
    }
    bool const moments_only = !layout_.extent && !layout_.sketch;
    if (!two_stack_ && moments_only && channels_ == 1 && history_capacity_ < max_grouped_history) {
      row_acc_.reserve(n);
      row_keys_.reserve(n);
      row_ts_.reserve(n);
      // A thread frees a slot per row, and a whole history per key_ttl restart.
      std::size_t const freed_max =
        key_ttl_ == 0 ? n : std::min(slots, n * (history_capacity_ + 1));
      freed_.resize(static_cast<std::size_t>(threads_));
      for (auto& f : freed_) f.reserve(freed_max);
      window_values_.resize(static_cast<std::size_t>(threads_) * lanes * (history_capacity_ + 1));
    }
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
    auto const ready_end = std::partition_point(
      waiting_.begin(), waiting_.end(), [&](waiting_record const& r) { return r.t < limit; });
    auto const n_ready = static_cast<std::size_t>(ready_end - waiting_.begin());
    if (n_ready == 0) {
      expire_keys(limit);
      return;
    }
    out_->windows.reserve(n_ready);
    bool const moments_only = !layout_.extent && !layout_.sketch;
    // The grouped path gathers lanes * rows values; long windows take the two-stack one.
    if (two_stack_) {
      emit_rows_two_stack(n_ready);
    } else if (moments_only && channels_ == 1 && history_capacity_ < max_grouped_history) {
      emit_rows_one_channel(n_ready);
    } else if (moments_only) {
      emit_rows(n_ready, [&](key_history const* h, waiting_record const& r) { aggregate_moments(h, r); });
    } else {
      emit_rows(n_ready, [&](key_history const* h, waiting_record const& r) { aggregate_full(h, r); });
    }
    waiting_.erase(waiting_.begin(), ready_end);
    expire_keys(limit);
  }

  // The history a waiting record's row aggregates (nullptr: none).
  key_history* history_of(waiting_record const& r)
  {
    std::uint32_t index = r.key_index;
    // A record restored without its key's state takes the key's history if it has one now.
    if (index == no_index && rows_ > 1) { index = key_index_.find(r.key); }
    return index == no_index ? nullptr : &keys_[index];
  }

  // Adds r to its key's history (or frees it when the key keeps none), evicting the oldest.
  void retire(key_history* h, waiting_record const& r) { retire(h, r, free_); }
  void retire(key_history* h, waiting_record const& r, std::vector<std::uint32_t>& freed)
  {
    if (h != nullptr && r.key_index != no_index) { --h->waiting; }
    if (h == nullptr) {
      freed.push_back(r.slot);
    } else if (h->ring.size() < history_capacity_) {
      h->ring.push_back({r.t, r.seq, r.slot, r.value0});
    } else {
      history_record& oldest = h->ring[h->head];
      freed.push_back(oldest.slot);
      oldest  = {r.t, r.seq, r.slot, r.value0};
      h->head = h->head + 1 == h->ring.size() ? 0 : h->head + 1;
    }
  }

  // One channel, moments only. Each row is a chain of dependent Welford updates (a division
  // each), so rows are computed `lanes` at a time, interleaved, to overlap their latencies.
  // The window values of a group are gathered first, updating the histories in row order
  // (two rows of one key in a group see each other), then the rows are computed. The keys are
  // split over threads (a key's rows and history belong to one), each row's accumulator goes
  // to its place in row order, and the output columns are filled from them at once.
  void emit_rows_one_channel(std::size_t n)
  {
    // Nothing here allocates: prepare_emission made room.
    row_acc_.resize(n);
    row_keys_.resize(n);
    row_ts_.resize(n);
    int const threads = n >= parallel_emit_rows ? threads_ : 1;
    for (auto& f : freed_) f.clear();
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#ifdef _OPENMP
      auto const tid = static_cast<std::uint32_t>(omp_get_thread_num());
#else
      std::uint32_t const tid = 0;
#endif
      emit_rows_one_channel_of(n, tid, static_cast<std::uint32_t>(threads));
    }
    for (std::size_t t = 0; t < static_cast<std::size_t>(threads); ++t) {
      free_.insert(free_.end(), freed_[t].begin(), freed_[t].end());
    }
    for (std::size_t i = 0; i < n; ++i) {
      row_keys_[i] = waiting_[i].key;
      row_ts_[i]   = waiting_[i].t;
    }
    out_->windows.append_rows(n, row_keys_.data(), row_ts_.data(), row_acc_.data(), min_periods_);
  }

  // The rows of the first n waiting records whose key belongs to thread `tid` of `team`.
  void emit_rows_one_channel_of(std::size_t n, std::uint32_t tid, std::uint32_t team)
  {
    std::size_t const width = history_capacity_ + 1;
    double* const values    = &window_values_[std::size_t{tid} * lanes * width];
    std::vector<std::uint32_t>& freed = freed_[tid];
    std::size_t row[lanes];
    std::size_t i = 0;
    for (;;) {
      std::size_t group = 0;
      for (; i < n && group < lanes; ++i) {
        if (team == 1 || owner(waiting_[i].key, team) == tid) { row[group++] = i; }
      }
      if (group == 0) { break; }
      std::size_t len[lanes] = {};
      std::size_t longest    = 0;
      for (std::size_t l = 0; l < group; ++l) {
        waiting_record const& r = waiting_[row[l]];
        key_history* h          = history_of(r);
        restart_if_expired(h, r, freed);
        double* out             = values + l * width;
        std::size_t k           = 0;
        if (h != nullptr) {
          h->for_each_oldest_first([&](history_record const& x) { out[k++] = x.value0; });
        }
        out[k++] = r.value0;
        len[l]   = k;
        longest  = std::max(longest, k);
        retire(h, r, freed);
      }
      ops::moments m[lanes] = {};
      for (std::size_t j = 0; j < longest; ++j) {
        for (std::size_t l = 0; l < lanes; ++l) {
          if (j < len[l]) { ops::add(m[l], values[l * width + j]); }
        }
      }
      for (std::size_t l = 0; l < group; ++l) row_acc_[row[l]] = m[l];
    }
  }

  // The thread of `team` that computes the rows of `key`.
  static std::uint32_t owner(std::uint32_t key, std::uint32_t team)
  {
    return static_cast<std::uint32_t>((std::uint64_t{key * 0x9E3779B1u} * team) >> 32);
  }

  // Emits the first n waiting records; aggregate(history or nullptr, record) fills tmp_.
  template <typename Aggregate>
  void emit_rows(std::size_t n, Aggregate&& aggregate)
  {
    for (std::size_t i = 0; i < n; ++i) {
      waiting_record const& r = waiting_[i];
      key_history* h          = history_of(r);
      restart_if_expired(h, r, free_);
      aggregate(h, r);
      out_->windows.append_row(r.key, r.t, tmp_.data(), min_periods_);
      retire(h, r);
    }
  }

  // Long windows: each row merges a suffix fold of the key's last full block with the fold of
  // its current block up to the record (see the top of the file).
  void emit_rows_two_stack(std::size_t n)
  {
    std::size_t const block = history_capacity_;
    auto const ch           = static_cast<std::size_t>(channels_);
    bool const extent       = layout_.extent;
    for (std::size_t i = 0; i < n; ++i) {
      waiting_record const& r = waiting_[i];
      key_history* h          = history_of(r);
      restart_if_expired(h, r, free_);
      double const* v         = values_of(r.slot);
      if (h == nullptr) {  // a restored record whose key kept no history: its row is itself
        for (std::size_t c = 0; c < ch; ++c) {
          tmp_[c] = channel_acc{};
          add(tmp_[c], layout_, v[c], r.t, r.seq);
        }
      } else {
        std::size_t const offset = static_cast<std::size_t>(h->retired % block);
        if (offset == 0) {
          h->prefix_m.assign(ch, ops::moments{});
          if (extent) { h->prefix_e.assign(ch, ops::extent{}); }
        }
        for (std::size_t c = 0; c < ch; ++c) {
          ops::add(h->prefix_m[c], v[c]);
          if (extent) { ops::add(h->prefix_e[c], v[c], r.t, r.seq); }
          channel_acc& a = tmp_[c];
          if (h->retired >= block) {
            a.m = ops::merge(h->suffix_m[offset * ch + c], h->prefix_m[c]);
            if (extent) { a.e = ops::merge(h->suffix_e[offset * ch + c], h->prefix_e[c]); }
          } else {
            a.m = h->prefix_m[c];
            if (extent) { a.e = h->prefix_e[c]; }
          }
        }
      }
      out_->windows.append_row(r.key, r.t, tmp_.data(), min_periods_);
      retire(h, r);
      if (h != nullptr && ++h->retired % block == 0) { build_suffix(*h, 0); }
    }
  }

  // The suffix folds of the block the history ends with, from offset `first` on: the history
  // holds block offsets first .. rows - 2, oldest first (first = 0 when the block just filled).
  void build_suffix(key_history& h, std::size_t first)
  {
    std::size_t const block = history_capacity_;
    auto const ch           = static_cast<std::size_t>(channels_);
    bool const extent       = layout_.extent;
    if (h.suffix_m.empty()) { ++keys_with_suffix_; }
    h.suffix_m.resize(block * ch);
    if (extent) { h.suffix_e.resize(block * ch); }
    for (std::size_t o = block; o-- > first;) {
      history_record const& x = h.ring[(h.head + (o - first)) % h.ring.size()];  // oldest first
      double const* v         = values_of(x.slot);
      for (std::size_t c = 0; c < ch; ++c) {
        ops::moments m{};
        ops::add(m, v[c]);
        h.suffix_m[o * ch + c] = o + 1 == block ? m : ops::merge(m, h.suffix_m[(o + 1) * ch + c]);
        if (extent) {
          ops::extent e{};
          ops::add(e, v[c], x.t, x.seq);
          h.suffix_e[o * ch + c] = o + 1 == block ? e : ops::merge(e, h.suffix_e[(o + 1) * ch + c]);
        }
      }
    }
  }

  // After a restore: the folds of a key's current block (its last retired % (rows - 1)
  // records, one by one) and the suffixes of the block before it that rows can still need,
  // exactly as the uninterrupted run computed them.
  void rebuild_blocks(key_history& h)
  {
    std::size_t const block  = history_capacity_;
    auto const ch            = static_cast<std::size_t>(channels_);
    std::size_t const offset = static_cast<std::size_t>(h.retired % block);
    std::vector<history_record const*> recs;
    h.for_each_oldest_first([&](history_record const& x) { recs.push_back(&x); });
    h.prefix_m.assign(ch, ops::moments{});
    if (layout_.extent) { h.prefix_e.assign(ch, ops::extent{}); }
    for (std::size_t k = recs.size() - offset; k < recs.size(); ++k) {
      double const* v = values_of(recs[k]->slot);
      for (std::size_t c = 0; c < ch; ++c) {
        ops::add(h.prefix_m[c], v[c]);
        if (layout_.extent) { ops::add(h.prefix_e[c], v[c], recs[k]->t, recs[k]->seq); }
      }
    }
    if (h.retired >= block) {
      // The history holds the block's offsets `offset` .. rows - 2, then the current block.
      key_history older = h;
      older.ring.resize(block - offset);
      older.head = 0;
      std::size_t j = 0;
      h.for_each_oldest_first([&](history_record const& x) {
        if (j < block - offset) { older.ring[j] = x; }
        ++j;
      });
      older.suffix_m.clear();
      build_suffix(older, offset);
      h.suffix_m = std::move(older.suffix_m);
      h.suffix_e = std::move(older.suffix_e);
    }
  }

  double const* values_of(std::uint32_t slot) const
  {
    return vals_.data() + std::size_t{slot} * static_cast<std::size_t>(channels_);
  }

  void aggregate_moments(key_history const* h, waiting_record const& r)
  {
    for (channel_acc& a : tmp_) a.m = ops::moments{};
    auto const add_one = [&](double const* v) {
      for (int c = 0; c < channels_; ++c) ops::add(tmp_[c].m, v[c]);
    };
    if (h != nullptr) {
      h->for_each_oldest_first([&](history_record const& x) { add_one(values_of(x.slot)); });
    }
    add_one(values_of(r.slot));
  }

  void aggregate_full(key_history const* h, waiting_record const& r)
  {
    for (channel_acc& a : tmp_) {  // keeps the sketch's room (prepare_emission)
      a.m = ops::moments{};
      a.e = ops::extent{};
      a.s.clear();
    }
    auto const add_one = [&](std::int64_t t, std::uint64_t seq, double const* v) {
      for (int c = 0; c < channels_; ++c) add(tmp_[c], layout_, v[c], t, seq);
    };
    if (h != nullptr) {
      h->for_each_oldest_first([&](history_record const& x) { add_one(x.t, x.seq, values_of(x.slot)); });
    }
    add_one(r.t, r.seq, values_of(r.slot));
  }

  // Refuses (before changing anything) a batch whose non-late records would take the records
  // held beyond max_open_windows.
  void check_capacity(watermark_feed feed) override
  {
    record_batch const& batch = feed.batch();
    auto const no_op          = [](std::int64_t) {};
    std::size_t added         = 0;
    feed.start(no_op);
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::int64_t const t = batch.timestamps[i];
      added += feed.has() && t < feed.value() ? 0 : 1;
      feed.after(i, t, no_op);
    }
    check_cap(options_.max_open_windows, held(), added, batch.n, "records");
  }

  std::int64_t rows_;
  std::int64_t min_periods_;
  std::size_t history_capacity_;  // rows - 1
  // Windows longer than this take the two-stack path (when no quantile sketch is kept).
  static constexpr std::int64_t two_stack_min_rows = 128;
  bool two_stack_ = false;
  std::vector<std::uint32_t> free_keys_;  // indices of keys_ whose key expired
  std::int64_t key_ttl_   = 0;            // 0: keys never expire
  bool swept_             = false;        // expire_keys has run (at last_sweep_)
  std::int64_t last_sweep_ = 0;
  std::size_t keys_with_suffix_ = 0;  // two-stack: keys holding suffix folds (for state_bytes)
  std::size_t unprovisioned_    = 0;  // live keys not provisioned (key_history::provisioned)
  std::vector<double> vals_;  // values of held records, slot * channels + channel
  std::vector<std::uint32_t> free_;
  std::vector<waiting_record> waiting_;  // sorted in row order
  std::vector<waiting_record> arrivals_, merged_;  // per-push scratch

  // The push in progress: what undo_arrivals goes back to.
  struct {
    std::size_t vals;      // vals_.size()
    std::size_t keys;      // keys_.size()
    std::size_t waiting;   // waiting_.size()
    std::size_t accepted;  // records taken so far (arrivals_)
  } batch_start_{};
  std::vector<std::uint32_t> added_keys_;  // key indices the push added, in order
  bool waiting_merged_ = false;            // merge_waiting swapped waiting_ and merged_
  row_order_sorter sorter_;
  std::vector<key_history> keys_;  // keys holding state, in order of first arrival
  key_index_map key_index_;
  static constexpr std::size_t lanes = 4;
  // Below this many rows an emission runs on the calling thread.
  static constexpr std::size_t parallel_emit_rows = std::size_t{1} << 14;
  int threads_;
  std::vector<double> window_values_;  // emit scratch: the window values of a group of rows, per thread
  std::vector<ops::moments> row_acc_;  // emit scratch: the accumulator of each row
  std::vector<std::uint32_t> row_keys_;
  std::vector<std::int64_t> row_ts_;
  std::vector<std::vector<std::uint32_t>> freed_;  // emit scratch: slots each thread frees
  std::vector<channel_acc> tmp_;
};

}  // namespace

std::unique_ptr<window_kind> make_cpu_rolling_kind(pipeline_options const& options)
{
  return std::make_unique<cpu_rolling_kind>(options);
}

}  // namespace cusense::detail
