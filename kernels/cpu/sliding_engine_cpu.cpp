// CPU engine for tumbling and sliding windows with every aggregation and allowed lateness.
//
// Records are added to panes of gcd(size, slide) (one accumulator per (key, pane)); a window
// is the merge of its size/gcd panes, formed when it is emitted, so a record is aggregated
// once however many windows hold it. Records are processed one by one in arrival order and
// windows are emitted as soon as the watermark passes their end, before the next record, so
// results are bit-identical for any cut of the stream into batches.
//
// Per record: late when every window holding it ended at or before watermark - lateness
// (the watermark just before it); otherwise it joins its pane, so it counts in every window
// holding it that has not been emitted yet, and re-emits (is_update) the windows holding it
// that were emitted but are still kept (end > watermark - allowed_lateness).
#include <algorithm>
#include <limits>
#include <map>
#include <tuple>
#include <utility>
#include <unordered_map>
#include <vector>

#include <cusense/detail/state_codec.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/ops/windows.hpp>

#include "engine_common.hpp"

namespace cusense::detail {
namespace {

constexpr std::int64_t none = std::numeric_limits<std::int64_t>::min();

class cpu_sliding_kind final : public cpu_kind_base {
 public:
  explicit cpu_sliding_kind(pipeline_options const& options)
    : cpu_kind_base(options),
      win_(ops::sliding::make(options.window.size,
                              options.window.type == window_spec::kind::sliding ? options.window.slide
                                                                                 : options.window.size,
                              options.window.offset)),
      pool_(options.channels)
  {
    tmp_.resize(static_cast<std::size_t>(channels_));
  }

  // All or nothing: what the batch changes is journalled (panes created and freed, the prior
  // state of panes it adds to) and undone if anything throws.
  void apply(watermark_feed& feed, window_output& out) override
  {
    out_ = &out;
    start_batch();
    try {
      with_values(feed.batch(), [&](auto const* values) { push_typed(feed, values); });
    } catch (...) {
      undo_batch();
      throw;
    }
    keep_spares();
    end_batch();
  }

  void flush(window_output& out) override
  {
    out_ = &out;
    emit_windows(emitted_before_, std::numeric_limits<std::int64_t>::max());
    free_panes_before(std::numeric_limits<std::int64_t>::max(), /*journal=*/false);
  }

  kind_size size() const override
  {
    return {pool_.live(), keys_.size(), pool_.bytes() + pool_.live() * 64 + keys_.size() * 64};
  }

  // Checkpoint: clock, emission bounds, counters, then the (key, pane) partials sorted by
  // (pane, key), `channels` full accumulators each.
  void save_state(state_writer& out, runner_fields const& fields) override
  {
    fields.save_clock(out);
    out.i64(emitted_before_);
    out.i64(kept_from_);
    fields.save_counts(out);
    std::size_t n = 0;
    for (auto const& [j, keys] : keys_by_pane_) n += keys.size();
    out.u64(n);
    std::vector<std::uint32_t> keys;
    for (auto const& [j, holders] : keys_by_pane_) {
      keys = holders;
      std::sort(keys.begin(), keys.end());
      for (std::uint32_t key : keys) {
        out.i64(j);
        out.u32(key);
        channel_acc const* a = pool_.at(keys_.at(key).at(j));
        for (int c = 0; c < channels_; ++c) write_channel_acc(out, a[c]);
      }
    }
  }

  void load_state(state_reader& in, runner_fields& fields, key_filter const& keep) override
  {
    fields.load_clock(in);
    auto bound = [&](std::int64_t k) {
      return k == none ? k : checked_window(k, win_.slide, win_.offset);
    };
    emitted_before_ = bound(in.i64());
    kept_from_      = bound(in.i64());
    fields.load_counts(in);
    std::size_t const n = in.count(12);
    std::int64_t prev_j = 0;
    std::uint32_t prev_key = 0;
    for (std::size_t i = 0; i < n; ++i) {
      std::int64_t const j    = checked_window(in.i64(), win_.pane, win_.offset);
      std::uint32_t const key = in.u32();
      state_reader::check(i == 0 || prev_j < j || (prev_j == j && prev_key < key),
                          "panes not sorted by (pane, key)");
      prev_j   = j;
      prev_key = key;
      if (!keep.keeps(key)) {
        for (auto& a : tmp_) read_channel_acc(in, a);
        continue;
      }
      std::uint32_t const slot = pool_.take();
      keys_[key].emplace(j, slot);
      keys_by_pane_[j].push_back(key);
      channel_acc* a = pool_.at(slot);
      for (int c = 0; c < channels_; ++c) read_channel_acc(in, a[c]);
    }
  }

 private:
  using pane_map   = std::map<std::int64_t, std::uint32_t>;  // pane id -> slot
  using key_map    = std::unordered_map<std::uint32_t, pane_map>;
  using pane_lists = std::map<std::int64_t, std::vector<std::uint32_t>>;

  // The windows closed at watermark `wm` - lateness: those with ids below the result.
  std::int64_t closed_before(std::int64_t wm, std::int64_t lateness) const
  {
    return win_.closed_before(minus_clamped(wm, lateness));
  }

  template <typename T>
  void push_typed(watermark_feed& feed, T const* values)
  {
    record_batch const& batch = feed.batch();
    auto const advance = [&](std::int64_t position) {
      this->advance(feed.value());
      out_->tag_windows(position);
    };
    feed.start(advance);
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::uint32_t const key = batch.keys[i];
      std::int64_t const t    = batch.timestamps[i];
      T const* v              = values + i * static_cast<std::size_t>(channels_);
      std::int64_t const j    = win_.pane_id(t);
      if (feed.has() && win_.last_window(j) < kept_from_) {
        out_->reject_late(key, t, v, feed.position(i));
        feed.after(i, t, advance);
        continue;
      }
      auto const [panes, slot] = pane_to_change(key, j);
      out_->nan_values += add_record(pool_.at(slot), layout_, v, channels_, t, feed.seq(i));
      if (feed.has() && options_.allowed_lateness > 0) {
        // Windows holding the record that were emitted and are still kept: emit them again.
        std::int64_t const lo = std::max(win_.first_window(j), kept_from_);
        std::int64_t const hi = std::min(win_.last_window(j), emitted_before_ - 1);
        for (std::int64_t k = lo; k <= hi; ++k) emit_window(key, *panes, k, true);
        out_->tag_windows(feed.position(i));
      }
      feed.after(i, t, advance);
    }
  }

  // ----- one batch, all or nothing ----------------------------------------------------------

  // A (key, pane) state the batch created (undone by removing it) or freed (undone by putting
  // back its map nodes and accumulators, kept in freed_panes_, freed_keys_ and freed_accs_ in
  // the order of the frees).
  struct pane_change {
    std::uint32_t key;
    std::int64_t j;
    std::uint32_t slot;
    bool freed;
    bool reused;     // created: the slot came from the pool's free list
    bool key_freed;  // freed: it was the key's last pane (its entry is in freed_keys_)
  };

  void start_batch()
  {
    batch_start_ = {emitted_before_, kept_from_};
    prior_.start(pool_);
  }

  void end_batch() noexcept
  {
    changes_.clear();
    freed_accs_.clear();
    freed_panes_.clear();
    freed_keys_.clear();
    freed_lists_.clear();
    prior_.clear();
  }

  // The pane map of `key` and the slot of its pane `j`, created if new; either way the batch
  // can be undone afterwards.
  std::pair<pane_map*, std::uint32_t> pane_to_change(std::uint32_t key, std::int64_t j)
  {
    if (auto k = keys_.find(key); k != keys_.end()) {
      if (auto p = k->second.find(j); p != k->second.end()) {
        prior_.keep(pool_, p->second);
        return {&k->second, p->second};
      }
    }
    reserve_more(changes_, 1);  // so the pane is journalled before anything else changes
    bool const reused        = pool_.has_free();
    std::uint32_t const slot = pool_.take();
    changes_.push_back({key, j, slot, false, reused, false});
    prior_.taken(slot);
    pane_map& panes = panes_of(key);
    if (spare_panes_.empty()) {
      panes.emplace(j, slot);
    } else {
      spare_panes_.back().key()    = j;
      spare_panes_.back().mapped() = slot;
      panes.insert(std::move(spare_panes_.back()));
      spare_panes_.pop_back();
    }
    keys_of(j).push_back(key);
    return {&panes, slot};
  }

  // ----- map nodes kept for reuse -------------------------------------------------------------
  // The map nodes of the panes (and keys and pane lists) a kept batch freed become spares that
  // the panes of the next batch take, rather than each freed pane's nodes going back to the
  // allocator and each new one allocating (in a steady stream a batch frees about as many as
  // it creates). Spares the next batch does not take are released.

  // The pane map of `key`, created (from a spare node when there is one) if missing.
  pane_map& panes_of(std::uint32_t key)
  {
    if (auto k = keys_.find(key); k != keys_.end()) { return k->second; }
    if (spare_keys_.empty()) { return keys_[key]; }
    key_map::node_type& node = spare_keys_.back();  // its pane map is empty
    node.key()               = key;
    try {
      auto const inserted = keys_.insert(std::move(node));  // may rehash
      spare_keys_.pop_back();
      return inserted.position->second;
    } catch (...) {
      spare_keys_.pop_back();  // whether or not the node is still in its handle
      throw;
    }
  }

  // The keys holding pane `j`, created (from a spare node when there is one) if missing.
  std::vector<std::uint32_t>& keys_of(std::int64_t j)
  {
    if (auto h = keys_by_pane_.find(j); h != keys_by_pane_.end()) { return h->second; }
    if (spare_lists_.empty()) { return keys_by_pane_[j]; }
    pane_lists::node_type& node = spare_lists_.back();  // an empty list (keeping its capacity)
    node.key()                  = j;
    auto const inserted         = keys_by_pane_.insert(std::move(node));
    spare_lists_.pop_back();
    return inserted.position->second;
  }

  // A kept batch: the nodes it freed become the spares (those left from before are released).
  void keep_spares() noexcept
  {
    spare_panes_.clear();
    spare_panes_.swap(freed_panes_);
    spare_keys_.clear();
    spare_keys_.swap(freed_keys_);
    for (auto& list : freed_lists_) list.mapped().clear();
    spare_lists_.clear();
    spare_lists_.swap(freed_lists_);
  }

  // Puts everything the batch changed back as it was. Never allocates: nodes go back into the
  // maps they left (an unordered map that held as many keys before needs no more buckets), and
  // slots into the pool's free list in reverse order of leaving it.
  void undo_batch() noexcept
  {
    auto const n = static_cast<std::size_t>(channels_);
    std::size_t accs_end = freed_accs_.size();
    // The freed panes' key lists first: panes the batch created and then freed are undone
    // below through them, and it creates no pane in a freed list's pane after freeing it
    // (such records are late).
    for (auto& list : freed_lists_) keys_by_pane_.insert(std::move(list));
    for (auto p = changes_.rbegin(); p != changes_.rend(); ++p) {
      if (p->freed) {
        pool_.retake(p->slot);
        accs_end -= n;
        channel_acc* a = pool_.at(p->slot);
        for (std::size_t c = 0; c < n; ++c) a[c] = std::move(freed_accs_[accs_end + c]);
        if (p->key_freed) {
          keys_.insert(std::move(freed_keys_.back()));
          freed_keys_.pop_back();
        }
        keys_.find(p->key)->second.insert(std::move(freed_panes_.back()));
        freed_panes_.pop_back();
        continue;
      }
      // Undone in reverse, so the key is the last one the batch added to its pane's list.
      if (auto k = keys_.find(p->key); k != keys_.end()) {
        k->second.erase(p->j);
        if (k->second.empty()) { keys_.erase(k); }
      }
      if (auto h = keys_by_pane_.find(p->j); h != keys_by_pane_.end()) {
        if (!h->second.empty() && h->second.back() == p->key) { h->second.pop_back(); }
        if (h->second.empty()) { keys_by_pane_.erase(h); }
      }
      pool_.untake(p->slot, p->reused);
    }
    prior_.restore(pool_);  // every pane is in its slot again
    std::tie(emitted_before_, kept_from_) = batch_start_;
    end_batch();
  }

  // The watermark moved to `wm`: emit the windows it closed, free what can no longer change.
  void advance(std::int64_t wm)
  {
    std::int64_t const closed = closed_before(wm, 0);
    if (emitted_before_ == none || closed > emitted_before_) {
      emit_windows(emitted_before_, closed);
      emitted_before_ = closed;
    }
    std::int64_t const kept = closed_before(wm, options_.allowed_lateness);
    if (kept_from_ == none || kept > kept_from_) {
      free_panes_before(kept, /*journal=*/true);
      kept_from_ = kept;
    }
  }

  // Emits, in (window start, key) order, the windows k0 <= k < k1 holding records
  // (k0 == none: no lower bound; k1 == INT64_MAX: no upper bound).
  void emit_windows(std::int64_t k0, std::int64_t k1)
  {
    if (keys_by_pane_.empty() || k1 == none) { return; }
    std::int64_t const w = win_.panes_per_window();
    auto it  = k0 == none ? keys_by_pane_.begin() : keys_by_pane_.lower_bound(win_.first_pane(k0));
    auto end = k1 == std::numeric_limits<std::int64_t>::max()
                 ? keys_by_pane_.end()
                 : keys_by_pane_.upper_bound(win_.first_pane(k1 - 1) + w - 1);
    ready_.clear();
    for (; it != end; ++it) {
      std::int64_t const j  = it->first;
      std::int64_t const lo = k0 == none ? win_.first_window(j) : std::max(k0, win_.first_window(j));
      std::int64_t const hi = std::min(k1 - 1, win_.last_window(j));
      for (std::uint32_t key : it->second) {
        for (std::int64_t k = lo; k <= hi; ++k) ready_.push_back({k, key});
      }
    }
    std::sort(ready_.begin(), ready_.end());
    ready_.erase(std::unique(ready_.begin(), ready_.end()), ready_.end());
    out_->windows.reserve(ready_.size());
    for (auto const& [k, key] : ready_) emit_window(key, keys_.at(key), k, false);
  }

  void emit_window(std::uint32_t key, pane_map const& panes, std::int64_t k, bool update)
  {
    for (auto& a : tmp_) a = channel_acc{};
    std::int64_t const first = win_.first_pane(k);
    std::int64_t const last  = first + win_.panes_per_window() - 1;
    for (auto p = panes.lower_bound(first); p != panes.end() && p->first <= last; ++p) {
      channel_acc const* a = pool_.at(p->second);
      for (int c = 0; c < channels_; ++c) merge_into(tmp_[c], a[c], layout_);
    }
    out_->windows.append(key, win_.start(k), win_.end(k), tmp_.data(), update);
  }

  // Frees the panes of windows k < kept only (panes j < kept * panes_per_slide), allocating
  // (if at all) before changing anything. `journal`: the batch may still be undone.
  void free_panes_before(std::int64_t kept, bool journal)
  {
    auto const end = kept == std::numeric_limits<std::int64_t>::max()
                       ? keys_by_pane_.end()
                       : keys_by_pane_.lower_bound(win_.first_pane(kept));
    std::size_t n = 0, lists = 0;
    for (auto it = keys_by_pane_.begin(); it != end; ++it, ++lists) n += it->second.size();
    pool_.reserve_free(n);
    if (journal) {
      reserve_more(changes_, n);
      reserve_more(freed_accs_, n * static_cast<std::size_t>(channels_));
      reserve_more(freed_panes_, n);
      reserve_more(freed_keys_, n);
      reserve_more(freed_lists_, lists);
    }
    for (auto it = keys_by_pane_.begin(); it != end; ++it) {
      for (std::uint32_t key : it->second) {
        auto k          = keys_.find(key);
        pane_map& panes = k->second;
        auto p          = panes.find(it->first);
        std::uint32_t const slot = p->second;
        if (journal) {
          channel_acc* a = pool_.at(slot);
          for (int c = 0; c < channels_; ++c) freed_accs_.push_back(std::move(a[c]));
          freed_panes_.push_back(panes.extract(p));
          bool const last = panes.empty();
          if (last) { freed_keys_.push_back(keys_.extract(k)); }
          changes_.push_back({key, it->first, slot, true, false, last});
        } else {
          panes.erase(p);
          if (panes.empty()) { keys_.erase(k); }
        }
        pool_.give_back(slot);
      }
    }
    if (journal) {
      while (keys_by_pane_.begin() != end) freed_lists_.push_back(keys_by_pane_.extract(keys_by_pane_.begin()));
    } else {
      keys_by_pane_.erase(keys_by_pane_.begin(), end);
    }
  }

  // Refuses (before changing anything) a batch that would take the (key, pane) states held
  // beyond max_open_windows, counting the new states of its non-late records.
  void check_capacity(watermark_feed feed) override
  {
    record_batch const& batch = feed.batch();
    std::int64_t kept         = kept_from_;
    auto const advance        = [&](std::int64_t) {
      std::int64_t const k = closed_before(feed.value(), options_.allowed_lateness);
      kept                 = kept == none ? k : std::max(kept, k);
    };
    std::vector<std::pair<std::uint32_t, std::int64_t>> fresh;
    feed.start(advance);
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::int64_t const t = batch.timestamps[i];
      std::int64_t const j = win_.pane_id(t);
      if (!(feed.has() && win_.last_window(j) < kept)) {
        auto k = keys_.find(batch.keys[i]);
        if (k == keys_.end() || k->second.count(j) == 0) { fresh.emplace_back(batch.keys[i], j); }
      }
      feed.after(i, t, advance);
    }
    std::sort(fresh.begin(), fresh.end());
    fresh.erase(std::unique(fresh.begin(), fresh.end()), fresh.end());
    check_cap(options_.max_open_windows, pool_.live(), fresh.size(), batch.n, "(key, pane) states");
  }

  ops::sliding win_;
  acc_pool pool_;
  key_map keys_;
  pane_lists keys_by_pane_;  // pane -> keys holding it
  std::vector<std::pair<std::int64_t, std::uint32_t>> ready_;        // scratch: (window, key)
  std::vector<channel_acc> tmp_;
  std::int64_t emitted_before_ = none;  // windows k < this have been emitted (by the watermark)
  std::int64_t kept_from_      = none;  // windows k < this are freed

  // The batch in progress (see apply).
  std::pair<std::int64_t, std::int64_t> batch_start_;  // emitted_before_, kept_from_
  std::vector<pane_change> changes_;          // in the order they happened
  std::vector<channel_acc> freed_accs_;       // of the freed panes, in changes_ order
  std::vector<pane_map::node_type> freed_panes_;  // map nodes of the freed panes
  std::vector<key_map::node_type> freed_keys_;    // of the keys whose last pane was freed
  std::vector<pane_lists::node_type> freed_lists_;
  std::vector<pane_map::node_type> spare_panes_;  // see keep_spares
  std::vector<key_map::node_type> spare_keys_;
  std::vector<pane_lists::node_type> spare_lists_;
  prior_slots prior_;                         // the panes it changed, as they were
};

}  // namespace

std::unique_ptr<window_kind> make_cpu_sliding_kind(pipeline_options const& options)
{
  return std::make_unique<cpu_sliding_kind>(options);
}

}  // namespace cusense::detail
