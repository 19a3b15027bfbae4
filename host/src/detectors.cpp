// The host-side detector runner shared by both backends (watermark, buffering, release order,
// late records, silence, result tables), kernel parameters from specs, and the one-shot
// cusense::score. The specs themselves (names, validation): kernels/common/detectors.cpp.
#include <algorithm>
#include <cmath>
#include <functional>
#include <new>
#include <limits>
#include <numeric>
#include <string>

#include <cusense/detail/detector_runner.hpp>
#include <cusense/error.hpp>
#include <cusense/pipeline.hpp>

namespace cusense {
namespace detail {

namespace {

ops::detector_kind_id kind_id(detector_kind k)
{
  switch (k) {
    case detector_kind::ewma: return ops::detector_kind_id::ewma;
    case detector_kind::rolling_z: return ops::detector_kind_id::rolling_z;
    case detector_kind::rolling_mad: return ops::detector_kind_id::rolling_mad;
    case detector_kind::knn_discord: return ops::detector_kind_id::knn_discord;
    case detector_kind::multiscale_z: return ops::detector_kind_id::multiscale_z;
    case detector_kind::joint_z: return ops::detector_kind_id::joint_z;
    case detector_kind::likelihood: return ops::detector_kind_id::likelihood;
    case detector_kind::silence: break;
  }
  throw invalid_argument("the silence detector gives no scores");
}

}  // namespace

ops::detector_params to_params(detector_spec const& s)
{
  ops::detector_params p;
  p.kind           = kind_id(s.kind);
  p.channel        = s.channel;
  p.alpha          = s.alpha;
  p.window         = s.window;
  p.min_count      = s.min_count;
  p.L              = s.L;
  p.H              = s.H;
  p.min_candidates = s.min_candidates;
  p.H2             = s.H2;
  p.K              = s.K;
  p.beta           = s.beta;
  p.gamma          = s.gamma;
  p.trend          = s.trend;
  p.clip           = s.clip;
  p.freeze         = s.freeze;
  p.channels       = s.channels;  // resolved by the runner (0 = all from `channel` on)
  p.tod_weight     = s.tod_weight;
  if (s.kind == detector_kind::likelihood) { p.base = kind_id(s.base); }
  p.scale        = s.scale;
  p.short_window = s.short_window;
  p.long_window  = s.long_window;
  p.reestimate   = s.reestimate;
  p.learn        = s.learn;
  p.warmup       = s.warmup;
  p.rest         = s.rest;
  p.spatial      = s.spatial;
  return p;
}

namespace {

std::vector<std::string> value_names(pipeline_options const& o)
{
  std::vector<std::string> names;
  for (int c = 0; c < o.channels; ++c) {
    if (o.channels == 1) {
      names.push_back("value");
    } else {
      names.push_back("value_" + (o.channel_names.empty() ? std::to_string(c) : o.channel_names[c]));
    }
  }
  return names;
}

}  // namespace

detector_runner::detector_runner(pipeline_options const& o, backend where)
  : channels_(o.channels),
    ooo_(o.max_out_of_orderness),
    ttl_(o.key_ttl),
    max_keys_(o.max_detector_keys),
    value_names_(value_names(o))
{
  std::vector<std::string> names;
  std::vector<ops::detector_params> params;
  for (detector_spec const& s : o.detectors) {
    validate(s, o.channels);
    if (s.kind == detector_kind::silence) {
      CUSENSE_EXPECTS(!has_silence_, "at most one silence detector per pipeline");
      has_silence_ = true;
      timeout_     = s.timeout;
      continue;
    }
    names.push_back(s.column_name());
    scorers_.push_back(s);
    if (s.kind == detector_kind::joint_z && s.channels == 0) {
      scorers_.back().channels = o.channels - s.channel;
    }
    thresholds_.push_back(s.threshold);
    params.push_back(to_params(scorers_.back()));
  }
  CUSENSE_EXPECTS(ttl_ == 0 || !has_silence_ || ttl_ >= timeout_,
                  "key_ttl (" + std::to_string(ttl_) +
                    " ns) must be at least the silence timeout (" + std::to_string(timeout_) +
                    " ns): a key is forgotten only after its silence was reported");
  // Per key: the key's slot entries (key, clock, live flag, with a ttl the buffered count and
  // list links), its entry in the key table, and each scorer's state.
  bytes_per_key_ = sizeof(std::uint32_t) + sizeof(silence_state) + sizeof(std::uint8_t) +
                   key_slot_map::bytes_per_key;
  if (ttl_ > 0) { bytes_per_key_ += 3 * sizeof(std::uint32_t); }
  for (ops::detector_params const& p : params) {
    bytes_per_key_ += static_cast<std::size_t>(p.d_stride()) * sizeof(double) +
                      static_cast<std::size_t>(p.i_stride()) * sizeof(std::int64_t);
  }
  // multiscale_z, joint_z, likelihood and knn_discord with tod_weight have no CUDA scorer yet:
  // an explicit backend="cuda" is refused, automatic runs the detectors on the CPU (the windows
  // keep their backend).
  for (detector_spec const& s : scorers_) {
    bool const tod = s.kind == detector_kind::knn_discord && s.tod_weight > 0.0;
    if (where == backend::cuda &&
        (s.kind == detector_kind::multiscale_z || s.kind == detector_kind::joint_z ||
         s.kind == detector_kind::likelihood || tod)) {
      if (o.where == backend::cuda) {
        throw backend_unavailable("detector '" + to_string(s.kind) + "'" +
                                  (tod ? " with tod_weight > 0" : "") +
                                  " is not yet supported on the CUDA backend; use backend='cpu'");
      }
      where = backend::cpu;
    }
  }
  std::sort(names.begin(), names.end());
  auto dup = std::adjacent_find(names.begin(), names.end());
  CUSENSE_EXPECTS(dup == names.end(),
                  "two detectors are named '" + (dup == names.end() ? "" : *dup) +
                    "': give them distinct names");
  if (!scorers_.empty()) {
    if (where == backend::cuda) {
#ifdef CUSENSE_WITH_CUDA
      engine_ = make_cuda_detector_engine(params, channels_);
#else
      throw backend_unavailable("cusense was built without CUDA support");
#endif
    } else {
      engine_ = make_cpu_detector_engine(params, channels_);
    }
  }
  out_values_.resize(static_cast<std::size_t>(channels_));
  out_scores_.resize(scorers_.size());
}

namespace {

/// Grows v's capacity to at least `size` elements, geometrically (a reserve to the exact size
/// on every push would copy the vector every time).
template <typename V>
void reserve_for(V& v, std::size_t size)
{
  if (size > v.capacity()) { v.reserve(std::max(size, 2 * v.capacity())); }
}

/// Stable LSD radix sort of items by hi with 11-bit digits; ties keep their input order. Digits
/// where every item agrees are skipped. n must be < 2^32.
void radix_sort(std::vector<detector_runner_sort_item>& a, std::vector<detector_runner_sort_item>& tmp)
{
  std::size_t const n = a.size();
  if (n < 2) return;
  constexpr int bits              = 11;
  constexpr std::uint32_t buckets = 1u << bits;
  constexpr int digits            = (64 + bits - 1) / bits;
  std::vector<std::uint32_t> hist(static_cast<std::size_t>(digits) * buckets, 0);
  for (detector_runner_sort_item const& it : a) {
    std::uint32_t* h = hist.data();
    for (int b = 0; b < digits; ++b, h += buckets) ++h[(it.hi >> (bits * b)) & (buckets - 1)];
  }
  tmp.resize(n);
  for (int d = 0; d < digits; ++d) {
    std::uint32_t* h  = hist.data() + static_cast<std::size_t>(d) * buckets;
    bool trivial      = false;
    std::uint32_t sum = 0;
    for (std::uint32_t v = 0; v < buckets; ++v) {
      std::uint32_t const c = h[v];
      if (c == n) { trivial = true; }
      h[v] = sum;
      sum += c;
    }
    if (trivial) continue;  // every item has the same digit: the pass would not move anything
    detector_runner_sort_item const* src = a.data();
    detector_runner_sort_item* dst       = tmp.data();
    int const shift                      = bits * d;
    for (std::size_t k = 0; k < n; ++k) dst[h[(src[k].hi >> shift) & (buckets - 1)]++] = src[k];
    a.swap(tmp);
  }
}

}  // namespace

void detector_runner::push(std::uint32_t const* keys, std::int64_t const* ts, void const* values,
                           bool f32, std::size_t n, std::int64_t const* positions,
                           watermark_steps const* steps)
{
  plan(keys, ts, values, f32, n, positions, steps);
  reserve();
  apply(keys, ts, values, f32, n, positions, steps);
}

void detector_runner::plan(std::uint32_t const* keys, std::int64_t const* ts, void const* values,
                           bool f32, std::size_t n, std::int64_t const* positions,
                           watermark_steps const* steps)
{
  if (f32) {
    plan_typed(keys, ts, static_cast<float const*>(values), n, positions, steps, false);
  } else {
    plan_typed(keys, ts, static_cast<double const*>(values), n, positions, steps, false);
  }
}

void detector_runner::apply(std::uint32_t const* keys, std::int64_t const* ts, void const* values,
                            bool f32, std::size_t n, std::int64_t const* positions,
                            watermark_steps const*)
{
  if (f32) {
    apply_typed(keys, ts, static_cast<float const*>(values), n, positions);
  } else {
    apply_typed(keys, ts, static_cast<double const*>(values), n, positions);
  }
}

void detector_runner::flush()
{
  plan_typed<double>(nullptr, nullptr, nullptr, 0, nullptr, nullptr, true);
  reserve();
  apply_typed<double>(nullptr, nullptr, nullptr, 0, nullptr);
  if (has_max_) {
    floor_     = has_floor_ ? std::max(floor_, max_ts_) : max_ts_;
    has_floor_ = true;
  }
}

std::size_t detector_runner::pending_bytes() const
{
  return sizeof(pending) + static_cast<std::size_t>(channels_) * sizeof(double);
}

std::uint64_t detector_runner::planned_state_bytes() const
{
  std::size_t const keys    = slot_of_.size() + plan_.new_keys;
  std::size_t const pending = pending_.size() - plan_.released_pending + plan_.buffered_new;
  return static_cast<std::uint64_t>(keys) * bytes_per_key_ +
         static_cast<std::uint64_t>(pending) * pending_bytes();
}

// ----- plan

template <typename T>
void detector_runner::plan_typed(std::uint32_t const* keys, std::int64_t const* ts, T const* values,
                                 std::size_t n, std::int64_t const* positions,
                                 watermark_steps const* steps, bool all)
{
  auto const ch = static_cast<std::size_t>(channels_);
  // Scratch of the previous plan (which may have thrown half-way).
  for (std::uint32_t k : plan_new_keys_) plan_new_.erase(k);
  plan_new_keys_.clear();
  for (touched_key const& t : touched_) plan_touched_.erase(t.key);
  touched_.clear();
  restarts_.clear();
  plan_ = plan_counts{};

  // Housekeeping first: it changes nothing observable, and it may need memory.
  if (dead_slots_ >= 32 && dead_slots_ >= slots_used_ - dead_slots_) { compact_slots(); }

  plan_.all = all;
  plan_.n   = n;
  // 1. The records of the batch in arrival order: late (below the watermark just before them,
  // or the flush floor) or accepted; the slots of keys not seen before, in order of arrival.
  std::int64_t max_ts = max_ts_;
  bool has_max        = has_max_;
  auto limit = [&] {
    std::int64_t l = std::numeric_limits<std::int64_t>::min();
    if (has_max) { l = max_ts - ooo_; }
    if (has_floor_) { l = std::max(l, floor_); }
    return l;
  };
  std::int64_t lim = limit();
  // External watermarks: the caller's steps up to record i (the clock keeps watermark +
  // max_out_of_orderness, as if a record had raised it).
  std::size_t step = 0;
  auto take_steps  = [&](std::size_t i) {
    while (steps && step < steps->count && static_cast<std::size_t>(steps->at[step]) <= i) {
      max_ts  = steps->watermark[step++] + ooo_;
      has_max = true;
      lim     = limit();
    }
  };
  acc_slot_.resize(n);
  std::uint32_t next_slot = slots_used_;
  for (std::size_t i = 0; i < n; ++i) {
    take_steps(i);
    std::int64_t const t = ts[i];
    if (t < lim) {
      acc_slot_[i] = no_slot;
      continue;
    }
    std::uint32_t const key = keys[i];
    std::uint32_t slot      = slot_of_.find(key);
    if (slot == no_slot) {
      slot = plan_new_.find(key);
      if (slot == no_slot) {
        if (next_slot >= no_slot - 1) { throw capacity_error("more than 2^32 - 2 detector keys"); }
        slot = next_slot++;
        plan_new_.make_room_for_one();
        plan_new_keys_.push_back(key);  // first: the next plan erases the keys listed
        plan_new_.set(key, slot);
      }
    }
    acc_slot_[i] = slot;
    if (!steps && (!has_max || t > max_ts)) {
      max_ts  = t;
      has_max = true;
      lim     = limit();
    }
  }
  take_steps(n);
  plan_.new_keys = next_slot - slots_used_;
  if (max_keys_ > 0 && slot_of_.size() + plan_.new_keys > max_keys_) {
    throw capacity_error("max_detector_keys (" + std::to_string(max_keys_) + ") would be exceeded: " +
                         std::to_string(slot_of_.size()) + " keys hold detector state and the batch of " +
                         std::to_string(n) + " records brings " + std::to_string(plan_.new_keys) +
                         " new keys; the batch was rejected");
  }
  plan_.max_ts        = max_ts;
  plan_.has_max       = has_max;
  std::int64_t const wm = has_max ? max_ts - ooo_ : std::numeric_limits<std::int64_t>::min();
  plan_.release_below = wm;
  auto released       = [&](std::int64_t t) { return all || t < wm; };

  // 2. The rows in arrival order: the buffered records released, then the batch's records that
  // are late or released at once (the buffered ones came first: smaller arrival indices).
  rel_ts_.clear();
  rel_key_.clear();
  rel_seq_.clear();
  rel_slot_.clear();
  rel_values_.clear();
  for (pending const& p : pending_) {
    if (!released(p.ts)) continue;
    rel_ts_.push_back(p.ts);
    rel_key_.push_back(p.key);
    rel_seq_.push_back(p.seq);
    rel_slot_.push_back(p.slot);
    rel_values_.insert(rel_values_.end(), pending_values_.begin() + static_cast<std::ptrdiff_t>(p.value_at),
                       pending_values_.begin() + static_cast<std::ptrdiff_t>(p.value_at + ch));
  }
  plan_.released_pending = rel_ts_.size();
  std::size_t n_late     = 0;
  for (std::size_t i = 0; i < n; ++i) {
    bool const late = acc_slot_[i] == no_slot;
    if (!late && !released(ts[i])) {
      ++plan_.buffered_new;
      continue;
    }
    rel_ts_.push_back(ts[i]);
    rel_key_.push_back(keys[i]);
    rel_seq_.push_back(positions ? positions[i] : next_seq_ + static_cast<std::int64_t>(i));
    rel_slot_.push_back(acc_slot_[i]);
    T const* v = values + i * ch;
    for (std::size_t c = 0; c < ch; ++c) rel_values_.push_back(static_cast<double>(v[c]));
    n_late += late ? 1 : 0;
  }
  std::size_t const rows = rel_ts_.size();
  plan_.rows             = rows;
  plan_.scored           = rows - n_late;

  // 3. Release order: (timestamp, key, arrival).
  release_order();
  auto ref_at = [&](std::size_t r) -> std::size_t { return ref64_.empty() ? order_[r].ref : ref64_[r]; };

  // 4. Each row's slot. With a ttl, a record more than ttl after its key's previous scored
  // record starts the key afresh in a new slot (the old one is dropped when applied).
  row_slot_.resize(rows);
  if (ttl_ == 0) {
    for (std::size_t r = 0; r < rows; ++r) row_slot_[r] = rel_slot_[ref_at(r)];
  } else {
    for (std::size_t r = 0; r < rows; ++r) {
      std::size_t const m = ref_at(r);
      if (rel_slot_[m] == no_slot) {
        row_slot_[r] = no_slot;
        continue;
      }
      std::uint32_t const key = rel_key_[m];
      std::uint32_t at        = plan_touched_.find(key);
      if (at == no_slot) {
        std::uint32_t const slot = rel_slot_[m];
        bool const known         = slot < slots_used_;
        plan_touched_.make_room_for_one();
        at = static_cast<std::uint32_t>(touched_.size());
        touched_.push_back({key, slot, known ? silence_[slot].last_seen : 0, known && silence_[slot].seen});
        plan_touched_.set(key, at);
      }
      touched_key& k       = touched_[at];
      std::int64_t const t = rel_ts_[m];
      if (k.seen && t - k.latest > ttl_) {
        if (next_slot >= no_slot - 1) { throw capacity_error("more than 2^32 - 2 detector keys"); }
        restarts_.push_back({r, k.slot, next_slot});
        k.slot = next_slot++;
      }
      k.latest     = t;
      k.seen       = true;
      row_slot_[r] = k.slot;
    }
  }
  plan_.new_slots = next_slot - slots_used_;

  // 5. Scratch of apply(), and a bound on the silence deadlines that may fall due: the heap's
  // entries below the watermark (a walk from the root that stops at larger entries).
  score_slots_.resize(plan_.scored);
  score_ts_.resize(plan_.scored);
  score_values_.resize(plan_.scored * ch);
  row_of_.resize(n_late > 0 ? plan_.scored : 0);
  score_out_.resize(scorers_.size() * plan_.scored);
  if (has_silence_ && !all && has_max) {
    heap_walk_.clear();
    if (!deadlines_.empty() && deadlines_[0].when < wm) heap_walk_.push_back(0);
    while (!heap_walk_.empty()) {
      std::size_t const i = heap_walk_.back();
      heap_walk_.pop_back();
      ++plan_.deadlines_due;
      for (std::size_t c = 2 * i + 1; c <= 2 * i + 2 && c < deadlines_.size(); ++c) {
        if (deadlines_[c].when < wm) heap_walk_.push_back(c);
      }
    }
  }
}

void detector_runner::release_order()
{
  std::size_t const n = rel_ts_.size();
  ref64_.clear();
  bool const fits = n < std::numeric_limits<std::uint32_t>::max();  // refs fit order_[r].ref
  order_radix_    = n > 0 && fits;
  order_.resize(fits ? n : 0);
  order_tmin_ = 0;
  if (order_radix_) {
    // The rows are in arrival order: a stable sort by timestamp (radix), then by key within runs
    // of equal timestamps (rare), gives (timestamp, key, arrival).
    order_tmin_ = *std::min_element(rel_ts_.begin(), rel_ts_.end());
    for (std::size_t m = 0; m < n; ++m) {
      order_[m] = {static_cast<std::uint64_t>(rel_ts_[m]) - static_cast<std::uint64_t>(order_tmin_),
                   rel_key_[m], static_cast<std::uint32_t>(m)};
    }
    radix_sort(order_, sort_tmp_);
    for (std::size_t r = 0; r < n;) {
      std::size_t e = r + 1;
      while (e < n && order_[e].hi == order_[r].hi) ++e;
      if (e - r > 1) {
        std::sort(order_.begin() + static_cast<std::ptrdiff_t>(r), order_.begin() + static_cast<std::ptrdiff_t>(e),
                  [](detector_runner_sort_item const& x, detector_runner_sort_item const& y) {
                    return x.lo != y.lo ? x.lo < y.lo : x.ref < y.ref;
                  });
      }
      r = e;
    }
  } else if (n > 0) {
    ref64_.resize(n);
    std::iota(ref64_.begin(), ref64_.end(), std::size_t{0});
    std::sort(ref64_.begin(), ref64_.end(), [&](std::size_t x, std::size_t y) {
      if (rel_ts_[x] != rel_ts_[y]) return rel_ts_[x] < rel_ts_[y];
      if (rel_key_[x] != rel_key_[y]) return rel_key_[x] < rel_key_[y];
      return rel_seq_[x] < rel_seq_[y];
    });
  }
}

// ----- reserve

void detector_runner::reserve()
{
  auto const ch            = static_cast<std::size_t>(channels_);
  std::size_t const slots  = std::size_t{slots_used_} + plan_.new_slots;
  reserve_for(slot_key_, slots);
  reserve_for(silence_, slots);
  reserve_for(live_, slots);
  if (ttl_ > 0) {
    reserve_for(buffered_, slots);
    reserve_for(lru_prev_, slots);
    reserve_for(lru_next_, slots);
  }
  slot_of_.reserve(slot_of_.size() + plan_.new_keys);
  if (engine_ && plan_.new_slots > 0) { engine_->reserve(static_cast<std::uint32_t>(slots)); }
  std::size_t const np = pending_.size() - plan_.released_pending + plan_.buffered_new;
  reserve_for(pending_, np);
  reserve_for(pending_values_, np * ch);
  std::size_t const rows = out_key_.size() + plan_.rows;
  reserve_for(out_key_, rows);
  reserve_for(out_ts_, rows);
  reserve_for(out_seq_, rows);
  reserve_for(out_late_, rows);
  for (auto& col : out_values_) reserve_for(col, rows);
  for (auto& col : out_scores_) reserve_for(col, col.size() + plan_.rows);
  if (has_silence_) {
    // A deadline is pushed at most once per scored row (a pop pushes back at most the one it
    // took); events: at most two per row, one per restart, one per deadline falling due.
    reserve_for(deadlines_, deadlines_.size() + plan_.scored);
    std::size_t const events = plan_.deadlines_due + 4 * plan_.scored;
    reserve_for(silence_step_, events);
    reserve_for(silence_out_, silence_out_.size() + events);
  }
}

// ----- apply: no allocation from here on

std::uint32_t detector_runner::add_slot(std::uint32_t key) noexcept
{
  std::uint32_t const slot = slots_used_++;
  slot_key_.push_back(key);
  silence_.emplace_back();
  live_.push_back(1);
  if (ttl_ > 0) {
    buffered_.push_back(0);
    lru_prev_.push_back(no_slot);
    lru_next_.push_back(no_slot);
  }
  slot_of_.set(key, slot);
  return slot;
}

void detector_runner::lru_unlink(std::uint32_t s) noexcept
{
  std::uint32_t const p = lru_prev_[s], n = lru_next_[s];
  if (p == no_slot && n == no_slot && lru_head_ != s) { return; }  // not in the list
  (p == no_slot ? lru_head_ : lru_next_[p]) = n;
  (n == no_slot ? lru_tail_ : lru_prev_[n]) = p;
  lru_prev_[s] = lru_next_[s] = no_slot;
}

void detector_runner::lru_push_back(std::uint32_t s) noexcept
{
  lru_unlink(s);
  lru_prev_[s] = lru_tail_;
  if (lru_tail_ == no_slot) {
    lru_head_ = s;
  } else {
    lru_next_[lru_tail_] = s;
  }
  lru_tail_ = s;
}

// The slot's key no longer uses it (the key expired or moved to a new slot).
void detector_runner::drop_slot(std::uint32_t slot) noexcept
{
  live_[slot] = 0;
  if (ttl_ > 0) { lru_unlink(slot); }
  ++dead_slots_;
}

template <typename T>
void detector_runner::apply_typed(std::uint32_t const* keys, std::int64_t const* ts, T const* values,
                                  std::size_t n, std::int64_t const* positions)
{
  auto const ch                     = static_cast<std::size_t>(channels_);
  bool const all                    = plan_.all;
  std::int64_t const wm             = plan_.release_below;
  std::size_t const np              = pending_.size();
  std::size_t const rows            = plan_.rows;
  std::size_t const n_scored        = plan_.scored;
  std::size_t const n_late          = rows - n_scored;

  // 1. The batch's accepted records: slots of new keys (in the plan's order), buffered counts.
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t const slot = acc_slot_[i];
    if (slot == no_slot) continue;
    if (slot >= slots_used_) { add_slot(keys[i]); }  // == slot: new keys come in this order
    if (ttl_ > 0) {
      ++buffered_[slot];
      lru_unlink(slot);
    }
  }
  max_ts_  = plan_.max_ts;
  has_max_ = plan_.has_max;

  // 2. The rows in release order: output columns, restarts, clocks and silence, the records to
  // score gathered in order.
  auto ref_at = [&](std::size_t r) -> std::size_t { return ref64_.empty() ? order_[r].ref : ref64_[r]; };
  std::size_t const base = out_key_.size();
  out_key_.resize(base + rows);
  out_ts_.resize(base + rows);
  out_seq_.resize(base + rows);
  out_late_.resize(base + rows);
  for (auto& col : out_values_) col.resize(base + rows);
  std::size_t k = 0, q = 0;
  bool const clock = has_silence_ || ttl_ > 0;
  for (std::size_t r = 0; r < rows; ++r) {
    std::size_t const m = ref_at(r);
    std::uint32_t const slot = row_slot_[r];
    bool const late          = slot == no_slot;
    std::int64_t const t     = rel_ts_[m];
    std::uint32_t const key  = rel_key_[m];
    out_key_[base + r]  = key;
    out_ts_[base + r]   = t;
    out_seq_[base + r]  = rel_seq_[m];
    out_late_[base + r] = late ? 1 : 0;
    double const* v     = &rel_values_[m * ch];
    for (std::size_t c = 0; c < ch; ++c) out_values_[c][base + r] = v[c];
    if (late) continue;
    if (q < restarts_.size() && restarts_[q].row == r) {
      // The key starts afresh: its silence is reported (no comeback: the key is new again).
      std::uint32_t const from = restarts_[q++].from;
      add_slot(key);  // == slot (restarts take slots in row order after the new keys)
      silence_state& old = silence_[from];
      if (has_silence_ && !old.reported) { emit_silence(key, old.last_seen, false, 0); }
      buffered_[slot] = buffered_[from];
      buffered_[from] = 0;
      drop_slot(from);
    }
    if (clock) {
      silence_state& s = silence_[slot];
      if (has_silence_) {
        if (s.seen && t - s.last_seen > timeout_) {
          if (!s.reported) emit_silence(key, s.last_seen, false, 0);
          emit_silence(key, s.last_seen, true, t);
        }
        s.reported = false;
        if (!s.queued) {
          deadlines_.push_back({t + timeout_, slot});
          std::push_heap(deadlines_.begin(), deadlines_.end(), std::greater<deadline>());
          s.queued = true;
        }
      }
      s.last_seen = t;
      s.seen      = true;
    }
    if (ttl_ > 0) {
      if (--buffered_[slot] == 0) {
        lru_push_back(slot);
      } else {
        lru_unlink(slot);
      }
    }
    score_slots_[k] = slot;
    score_ts_[k]    = t;
    for (std::size_t c = 0; c < ch; ++c) score_values_[k * ch + c] = v[c];
    if (n_late > 0) row_of_[k] = r;
    ++k;
  }

  // 3. Scores.
  if (engine_ && n_scored > 0) {
    engine_->score(score_slots_.data(), score_ts_.data(), score_values_.data(), n_scored, slots_used_,
                   score_out_.data());
  }
  for (std::size_t d = 0; d < scorers_.size(); ++d) {
    auto& col            = out_scores_[d];
    std::size_t const at = col.size();
    double const* sc     = score_out_.data() + d * n_scored;
    if (n_late == 0) {
      col.insert(col.end(), sc, sc + n_scored);
    } else {
      col.resize(at + rows, std::numeric_limits<double>::quiet_NaN());
      for (std::size_t j = 0; j < n_scored; ++j) col[at + row_of_[j]] = sc[j];
    }
  }
  counters_.scored += n_scored;
  counters_.late += n_late;

  // 4. Silence: keys the watermark has left silent (not on flush: it does not move the clock).
  if (has_silence_) {
    if (!all && has_max_) {
      while (!deadlines_.empty() && deadlines_.front().when < wm) {
        std::pop_heap(deadlines_.begin(), deadlines_.end(), std::greater<deadline>());
        deadline const d = deadlines_.back();
        deadlines_.pop_back();
        if (!live_[d.slot]) continue;  // the key moved to another slot or expired
        silence_state& s = silence_[d.slot];
        if (s.last_seen + timeout_ != d.when) {  // seen since: wait for the new deadline
          deadlines_.push_back({s.last_seen + timeout_, d.slot});
          std::push_heap(deadlines_.begin(), deadlines_.end(), std::greater<deadline>());
          continue;
        }
        s.queued = false;
        if (!s.reported) {
          emit_silence(slot_key_[d.slot], s.last_seen, false, 0);
          s.reported = true;
        }
      }
    }
    std::sort(silence_step_.begin(), silence_step_.end(), [](silence_event const& a, silence_event const& b) {
      if (a.at != b.at) return a.at < b.at;
      if (a.key != b.key) return a.key < b.key;
      return a.back < b.back;
    });
    silence_out_.insert(silence_out_.end(), silence_step_.begin(), silence_step_.end());
    counters_.silence_events += silence_step_.size();
    silence_step_.clear();
  }

  // 5. Expiry: keys whose last scored record is more than ttl behind the watermark (their
  // silence, if any, was reported above: ttl >= timeout).
  if (ttl_ > 0 && !all && has_max_) {
    while (lru_head_ != no_slot && silence_[lru_head_].last_seen + ttl_ < wm) {
      std::uint32_t const slot = lru_head_;
      slot_of_.erase(slot_key_[slot]);
      drop_slot(slot);
    }
  }

  // 6. The records still buffered, in arrival order, values packed; then the batch's.
  if (plan_.released_pending > 0 || !restarts_.empty()) {
    std::size_t w = 0, wv = 0;
    for (std::size_t i = 0; i < np; ++i) {
      pending p = pending_[i];
      if (all || p.ts < wm) continue;
      if (!restarts_.empty()) { p.slot = slot_of_.find(p.key); }
      if (p.value_at != wv) {
        std::copy(pending_values_.begin() + static_cast<std::ptrdiff_t>(p.value_at),
                  pending_values_.begin() + static_cast<std::ptrdiff_t>(p.value_at + ch),
                  pending_values_.begin() + static_cast<std::ptrdiff_t>(wv));
      }
      p.value_at    = wv;
      pending_[w++] = p;
      wv += ch;
    }
    pending_.resize(w);
    pending_values_.resize(wv);
  }
  for (std::size_t i = 0; i < n && plan_.buffered_new > 0; ++i) {
    std::uint32_t const slot = acc_slot_[i];
    if (slot == no_slot || all || ts[i] < wm) continue;
    std::uint32_t const now = restarts_.empty() ? slot : slot_of_.find(keys[i]);
    std::int64_t const seq = positions ? positions[i] : next_seq_ + static_cast<std::int64_t>(i);
    pending_.push_back({ts[i], keys[i], now, seq, pending_values_.size()});
    T const* v = values + i * ch;
    for (std::size_t c = 0; c < ch; ++c) pending_values_.push_back(static_cast<double>(v[c]));
  }
  next_seq_ += static_cast<std::int64_t>(n);
}

void detector_runner::emit_silence(std::uint32_t key, std::int64_t last_seen, bool back,
                                   std::int64_t back_at)
{
  std::int64_t const since = last_seen + timeout_;
  silence_step_.push_back({back ? back_at : since, key, back, last_seen, since,
                           back ? back_at : std::numeric_limits<std::int64_t>::min()});
}

// ----- compaction of dead slots

void detector_runner::compact_slots()
{
  std::uint32_t const used = slots_used_;
  // Everything that may allocate first: the new slot of each slot, the state copied out.
  std::vector<std::uint32_t> new_of;
  std::vector<std::vector<double>> d;
  std::vector<std::vector<std::int64_t>> iv;
  try {
    new_of.resize(used);
    if (engine_) { engine_->export_state(used, d, iv); }
  } catch (std::bad_alloc const&) {
    return;  // housekeeping only: the dead slots wait for the next chance
  }
  // From here nothing allocates. The live slots keep their order.
  std::uint32_t live = 0;
  for (std::uint32_t s = 0; s < used; ++s) new_of[s] = live_[s] ? live++ : no_slot;
  auto remap = [&](std::uint32_t s) { return s == no_slot ? no_slot : new_of[s]; };
  if (ttl_ > 0) {  // list links join live slots only
    for (std::uint32_t s = 0; s < used; ++s) {
      if (!live_[s]) continue;
      lru_prev_[s] = remap(lru_prev_[s]);
      lru_next_[s] = remap(lru_next_[s]);
    }
    lru_head_ = remap(lru_head_);
    lru_tail_ = remap(lru_tail_);
  }
  std::size_t w = 0;
  for (deadline const& e : deadlines_) {
    if (live_[e.slot]) deadlines_[w++] = {e.when, new_of[e.slot]};
  }
  deadlines_.resize(w);
  std::make_heap(deadlines_.begin(), deadlines_.end(), std::greater<deadline>());
  for (pending& p : pending_) p.slot = new_of[p.slot];
  for (std::uint32_t s = 0; s < used; ++s) {
    std::uint32_t const to = new_of[s];
    if (to == no_slot || to == s) continue;
    slot_key_[to] = slot_key_[s];
    silence_[to]  = silence_[s];
    if (ttl_ > 0) {
      buffered_[to] = buffered_[s];
      lru_prev_[to] = lru_prev_[s];
      lru_next_[to] = lru_next_[s];
    }
    for (std::size_t k = 0; k < d.size(); ++k) {
      std::size_t const ds = d[k].size() / used, is = iv[k].size() / used;
      std::copy(d[k].begin() + static_cast<std::ptrdiff_t>(s * ds),
                d[k].begin() + static_cast<std::ptrdiff_t>((s + 1) * ds),
                d[k].begin() + static_cast<std::ptrdiff_t>(to * ds));
      std::copy(iv[k].begin() + static_cast<std::ptrdiff_t>(s * is),
                iv[k].begin() + static_cast<std::ptrdiff_t>((s + 1) * is),
                iv[k].begin() + static_cast<std::ptrdiff_t>(to * is));
    }
  }
  for (std::size_t k = 0; k < d.size() && used > 0; ++k) {  // the freed tail reads as never scored
    std::size_t const ds = d[k].size() / used, is = iv[k].size() / used;
    std::fill(d[k].begin() + static_cast<std::ptrdiff_t>(live * ds), d[k].end(), 0.0);
    std::fill(iv[k].begin() + static_cast<std::ptrdiff_t>(live * is), iv[k].end(), 0);
  }
  slot_key_.resize(live);
  silence_.resize(live);
  live_.assign(live, 1);
  if (ttl_ > 0) {
    buffered_.resize(live);
    lru_prev_.resize(live);
    lru_next_.resize(live);
  }
  for (std::uint32_t s = 0; s < live; ++s) slot_of_.set(slot_key_[s], s);
  slots_used_ = live;
  dead_slots_ = 0;
  // The engine keeps `used` slots, the tail zero: new slots start from a clean state.
  if (engine_) { engine_->import_state(used, d, iv); }
}

// ----- outputs and counters

table detector_runner::drain_scores()
{
  table t;
  t.columns.push_back({"key", std::move(out_key_)});
  t.columns.push_back({"timestamp", std::move(out_ts_)});
  t.columns.push_back({"seq", std::move(out_seq_)});
  for (std::size_t c = 0; c < out_values_.size(); ++c) {
    t.columns.push_back({value_names_[c], std::move(out_values_[c])});
  }
  t.columns.push_back({"late", std::vector<std::uint8_t>(out_late_)});
  for (std::size_t d = 0; d < scorers_.size(); ++d) {
    std::vector<std::uint8_t> flag(out_scores_[d].size());
    for (std::size_t r = 0; r < flag.size(); ++r) flag[r] = out_scores_[d][r] >= thresholds_[d];
    std::string const name = scorers_[d].column_name();
    t.columns.push_back({"score_" + name, std::move(out_scores_[d])});
    t.columns.push_back({"is_anomaly_" + name, std::move(flag)});
  }
  out_key_ = {};
  out_ts_  = {};
  out_seq_ = {};
  out_late_.clear();
  for (auto& v : out_values_) v = {};
  for (auto& v : out_scores_) v = {};
  return t;
}

table detector_runner::drain_silence()
{
  std::vector<std::uint32_t> key;
  std::vector<std::int64_t> last, since, back_at;
  std::vector<std::uint8_t> back;
  for (silence_event const& e : silence_out_) {
    key.push_back(e.key);
    last.push_back(e.last_seen);
    since.push_back(e.silent_since);
    back_at.push_back(e.back_at);
    back.push_back(e.back ? 1 : 0);
  }
  silence_out_.clear();
  table t;
  t.columns.push_back({"key", std::move(key)});
  t.columns.push_back({"last_seen", std::move(last)});
  t.columns.push_back({"silent_since", std::move(since)});
  t.columns.push_back({"back_at", std::move(back_at)});
  t.columns.push_back({"back", std::move(back)});
  return t;
}

detector_counters detector_runner::counters() const
{
  detector_counters c = counters_;
  c.buffered          = pending_.size();
  c.keys              = slot_of_.size();
  c.state_bytes       = slot_of_.size() * bytes_per_key_ + pending_.size() * pending_bytes();
  c.has_watermark     = has_max_;
  c.watermark         = has_max_ ? max_ts_ - ooo_ : 0;
  return c;
}

}  // namespace detail

std::vector<double> score(std::uint32_t const* keys, std::int64_t const* timestamps,
                          double const* values, std::size_t n, detector_spec const& detector,
                          backend where)
{
  return score(keys, timestamps, values, n, 1, detector, where);
}

std::vector<double> score(std::uint32_t const* keys, std::int64_t const* timestamps,
                          double const* values, std::size_t n, int channels,
                          detector_spec const& detector, backend where)
{
  CUSENSE_EXPECTS(detector.kind != detector_kind::silence,
                  "score: the silence detector gives events, not scores (use a pipeline)");
  pipeline_options o;
  o.windowed             = false;  // detectors only
  o.detectors            = {detector};
  o.max_out_of_orderness = max_duration;  // a finite stream: everything is scored in time order
  o.where                = where;
  o.channels             = channels;
  pipeline p(o);
  std::vector<std::uint32_t> zeros;
  if (keys == nullptr) {
    zeros.assign(n, 0);
    keys = zeros.data();
  }
  p.push(keys, timestamps, values, n);
  p.flush();
  table t = p.poll_scores();
  std::vector<double> out(n, std::numeric_limits<double>::quiet_NaN());
  auto const& seq = t.get<std::int64_t>("seq");
  auto const& s   = t.get<double>("score_" + detector.column_name());
  for (std::size_t r = 0; r < seq.size(); ++r) out[static_cast<std::size_t>(seq[r])] = s[r];
  return out;
}

}  // namespace cusense
