// The host-side detector runner shared by both backends (watermark, buffering, release order,
// late records, silence, result tables), kernel parameters from specs, and the one-shot
// cusense::score. The specs themselves (names, validation): kernels/common/detectors.cpp.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include <cusense/detail/detector_runner.hpp>
#include <cusense/error.hpp>
#include <cusense/pipeline.hpp>

namespace cusense {
namespace detail {

ops::detector_params to_params(detector_spec const& s)
{
  ops::detector_params p;
  switch (s.kind) {
    case detector_kind::ewma: p.kind = ops::detector_kind_id::ewma; break;
    case detector_kind::rolling_z: p.kind = ops::detector_kind_id::rolling_z; break;
    case detector_kind::rolling_mad: p.kind = ops::detector_kind_id::rolling_mad; break;
    case detector_kind::knn_discord: p.kind = ops::detector_kind_id::knn_discord; break;
    case detector_kind::multiscale_z: p.kind = ops::detector_kind_id::multiscale_z; break;
    case detector_kind::joint_z: p.kind = ops::detector_kind_id::joint_z; break;
    case detector_kind::silence: throw invalid_argument("the silence detector gives no scores");
  }
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
  : channels_(o.channels), ooo_(o.max_out_of_orderness), value_names_(value_names(o))
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
  bytes_per_key_ = sizeof(std::uint32_t) + 4 * sizeof(std::uint64_t);  // slot_key_ and the key map's node
  for (ops::detector_params const& p : params) {
    bytes_per_key_ += static_cast<std::size_t>(p.d_stride()) * sizeof(double) +
                      static_cast<std::size_t>(p.i_stride()) * sizeof(std::int64_t);
  }
  if (has_silence_) { bytes_per_key_ += sizeof(silence_state); }
  // multiscale_z and joint_z have no CUDA scorer yet: an explicit backend="cuda" is refused,
  // automatic runs the detectors on the CPU (the windows keep their backend).
  for (detector_spec const& s : scorers_) {
    if (where == backend::cuda &&
        (s.kind == detector_kind::multiscale_z || s.kind == detector_kind::joint_z)) {
      if (o.where == backend::cuda) {
        throw backend_unavailable("detector '" + to_string(s.kind) +
                                  "' is not yet supported on the CUDA backend; use backend='cpu'");
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

std::uint32_t detector_runner::slot_for(std::uint32_t key)
{
  constexpr std::uint32_t dense_keys = 1u << 20;
  if (key < slot_dense_.size() && slot_dense_[key] != 0) { return slot_dense_[key] - 1; }
  std::uint32_t const slot = slot_lookup(key);
  if (key < dense_keys) {
    if (key >= slot_dense_.size()) {
      slot_dense_.resize(std::min<std::size_t>(dense_keys, std::max<std::size_t>(2 * slot_dense_.size(), key + std::size_t{1})), 0);
    }
    slot_dense_[key] = slot + 1;
  }
  return slot;
}

std::uint32_t detector_runner::slot_lookup(std::uint32_t key)
{
  auto [it, inserted] = slot_of_.try_emplace(key, static_cast<std::uint32_t>(slot_key_.size()));
  if (inserted) {
    slot_key_.push_back(key);
    silence_.emplace_back();
  }
  return it->second;
}

void detector_runner::push(std::uint32_t const* keys, std::int64_t const* ts, void const* values,
                           bool f32, std::size_t n, std::int64_t const* positions,
                           watermark_steps const* steps)
{
  if (f32) {
    push_typed(keys, ts, static_cast<float const*>(values), n, positions, steps);
  } else {
    push_typed(keys, ts, static_cast<double const*>(values), n, positions, steps);
  }
}

template <typename T>
void detector_runner::push_typed(std::uint32_t const* keys, std::int64_t const* ts, T const* values,
                                 std::size_t n, std::int64_t const* positions,
                                 watermark_steps const* steps)
{
  auto const ch = static_cast<std::size_t>(channels_);
  // The bound below which a record is late: the watermark before it, or the flush floor.
  auto limit = [&] {
    std::int64_t l = std::numeric_limits<std::int64_t>::min();
    if (has_max_) { l = max_ts_ - ooo_; }
    if (has_floor_) { l = std::max(l, floor_); }
    return l;
  };
  std::int64_t lim = limit();
  // External watermarks: the caller's steps up to record i (the clock keeps watermark +
  // max_out_of_orderness, as if a record had raised it).
  std::size_t step = 0;
  auto take_steps  = [&](std::size_t i) {
    while (steps && step < steps->count && static_cast<std::size_t>(steps->at[step]) <= i) {
      max_ts_  = steps->watermark[step++] + ooo_;
      has_max_ = true;
      lim      = limit();
    }
  };
  pending_.reserve(pending_.size() + n);
  pending_values_.reserve(pending_values_.size() + n * ch);
  for (std::size_t i = 0; i < n; ++i) {
    take_steps(i);
    std::int64_t const t   = ts[i];
    T const* v             = values + i * ch;
    std::int64_t const seq = positions ? positions[i] : next_seq_;
    ++next_seq_;
    if (t < lim) {
      late_now_.push_back({t, keys[i], 0, seq, true, late_values_.size()});
      for (std::size_t c = 0; c < ch; ++c) late_values_.push_back(static_cast<double>(v[c]));
      continue;
    }
    pending_.push_back({t, keys[i], slot_for(keys[i]), seq, false, pending_values_.size()});
    for (std::size_t c = 0; c < ch; ++c) pending_values_.push_back(static_cast<double>(v[c]));
    if (!steps && (!has_max_ || t > max_ts_)) {
      max_ts_  = t;
      has_max_ = true;
      lim      = limit();
    }
  }
  take_steps(n);
  release(false);
}

void detector_runner::flush()
{
  release(true);
  if (has_max_) {
    floor_     = has_floor_ ? std::max(floor_, max_ts_) : max_ts_;
    has_floor_ = true;
  }
}

void detector_runner::emit_silence(std::uint32_t key, std::int64_t last_seen, bool back,
                                   std::int64_t back_at)
{
  std::int64_t const since = last_seen + timeout_;
  silence_step_.push_back({back ? back_at : since, key, back, last_seen, since,
                           back ? back_at : std::numeric_limits<std::int64_t>::min()});
}

namespace {

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

void detector_runner::release(bool all)
{
  std::int64_t const wm =
    has_max_ ? max_ts_ - ooo_ : std::numeric_limits<std::int64_t>::min();
  auto const ch            = static_cast<std::size_t>(channels_);
  std::size_t const np     = pending_.size();
  std::size_t const n_late = late_now_.size();
  constexpr std::uint32_t late_slot = std::numeric_limits<std::uint32_t>::max();

  // The released records (ts < watermark, or all) and this push's late ones, merged in arrival
  // order into rel_* (slot late_slot marks a late record).
  auto released = [&](pending const& p) { return all || p.ts < wm; };
  rel_ts_.clear();
  rel_key_.clear();
  rel_seq_.clear();
  rel_slot_.clear();
  rel_values_.clear();
  bool in_order = true;
  {
    std::size_t i = 0, j = 0;
    while (true) {
      while (i < np && !released(pending_[i])) ++i;
      bool const take_pending = i < np && (j >= n_late || pending_[i].seq < late_now_[j].seq);
      pending const* p;
      double const* v;
      if (take_pending) {
        p = &pending_[i++];
        v = &pending_values_[p->value_at];
      } else if (j < n_late) {
        p = &late_now_[j++];
        v = &late_values_[p->value_at];
      } else {
        break;
      }
      if (!rel_seq_.empty() && p->seq <= rel_seq_.back()) { in_order = false; }
      rel_ts_.push_back(p->ts);
      rel_key_.push_back(p->key);
      rel_seq_.push_back(p->seq);
      rel_slot_.push_back(p->late ? late_slot : p->slot);
      rel_values_.insert(rel_values_.end(), v, v + ch);
    }
  }
  std::size_t const n        = rel_ts_.size();
  std::size_t const n_scored = n - n_late;

  // Release order: (timestamp, key, arrival). order_[r].ref is the rel_* index of row r.
  bool const fits  = n < std::numeric_limits<std::uint32_t>::max();  // refs fit order_[r].ref
  bool const radix = n > 0 && in_order && fits;
  order_.resize(fits ? n : 0);
  std::int64_t tmin = 0;
  if (radix) {
    // The records are in arrival order: a stable sort by timestamp (radix), then by key within
    // runs of equal timestamps (rare), gives (timestamp, key, arrival).
    tmin = *std::min_element(rel_ts_.begin(), rel_ts_.end());
    for (std::size_t m = 0; m < n; ++m) {
      order_[m] = {static_cast<std::uint64_t>(rel_ts_[m]) - static_cast<std::uint64_t>(tmin), rel_key_[m],
                   static_cast<std::uint32_t>(m)};
    }
    radix_sort(order_, sort_tmp_);
    for (std::size_t r = 0; r < n;) {
      std::size_t e = r + 1;
      while (e < n && order_[e].hi == order_[r].hi) ++e;
      if (e - r > 1) {
        std::stable_sort(order_.begin() + static_cast<std::ptrdiff_t>(r),
                         order_.begin() + static_cast<std::ptrdiff_t>(e),
                         [](detector_runner_sort_item const& x, detector_runner_sort_item const& y) {
                           return x.lo < y.lo;
                         });
      }
      r = e;
    }
  } else {
    std::vector<std::size_t> idx(n);
    std::iota(idx.begin(), idx.end(), std::size_t{0});
    std::sort(idx.begin(), idx.end(), [&](std::size_t x, std::size_t y) {
      if (rel_ts_[x] != rel_ts_[y]) return rel_ts_[x] < rel_ts_[y];
      if (rel_key_[x] != rel_key_[y]) return rel_key_[x] < rel_key_[y];
      return rel_seq_[x] < rel_seq_[y];
    });
    if (!fits) {
      ref64_.swap(idx);
    } else {
      for (std::size_t r = 0; r < n; ++r) order_[r].ref = static_cast<std::uint32_t>(idx[r]);
    }
  }
  auto ref_at = [&](std::size_t r) -> std::size_t { return ref64_.empty() ? order_[r].ref : ref64_[r]; };

  // Output rows, and the records to score gathered in release order.
  std::size_t const base = out_key_.size();
  out_key_.resize(base + n);
  out_ts_.resize(base + n);
  out_seq_.resize(base + n);
  out_late_.resize(base + n);
  for (auto& col : out_values_) col.resize(base + n);
  score_slots_.resize(n_scored);
  score_values_.resize(n_scored * ch);
  row_of_.resize(n_late > 0 ? n_scored : 0);
  std::size_t k = 0;
  for (std::size_t r = 0; r < n; ++r) {
    std::size_t const m       = ref_at(r);
    std::uint32_t const slot  = rel_slot_[m];
    bool const late           = slot == late_slot;
    if (radix) {  // the sort item holds the timestamp and key
      out_ts_[base + r]  = static_cast<std::int64_t>(static_cast<std::uint64_t>(tmin) + order_[r].hi);
      out_key_[base + r] = order_[r].lo;
    } else {
      out_key_[base + r] = rel_key_[m];
      out_ts_[base + r]  = rel_ts_[m];
    }
    out_seq_[base + r]        = rel_seq_[m];
    out_late_[base + r]       = late ? 1 : 0;
    double const* v           = &rel_values_[m * ch];
    for (std::size_t c = 0; c < ch; ++c) out_values_[c][base + r] = v[c];
    if (!late) {
      score_slots_[k] = slot;
      for (std::size_t c = 0; c < ch; ++c) score_values_[k * ch + c] = v[c];
      if (n_late > 0) row_of_[k] = r;
      ++k;
    }
  }
  score_out_.resize(scorers_.size() * n_scored);
  if (engine_ && n_scored > 0) {
    engine_->score(score_slots_.data(), score_values_.data(), n_scored,
                   static_cast<std::uint32_t>(slot_key_.size()), score_out_.data());
  }
  for (std::size_t d = 0; d < scorers_.size(); ++d) {
    auto& col            = out_scores_[d];
    std::size_t const at = col.size();
    double const* sc     = score_out_.data() + d * n_scored;
    if (n_late == 0) {
      col.insert(col.end(), sc, sc + n_scored);
    } else {
      col.resize(at + n, std::numeric_limits<double>::quiet_NaN());
      for (std::size_t q = 0; q < n_scored; ++q) col[at + row_of_[q]] = sc[q];
    }
  }
  counters_.scored += n_scored;
  counters_.late += n_late;

  // Silence: gaps between released records of a key, then keys the watermark has left silent.
  if (has_silence_) {
    for (std::size_t r = 0; r < n; ++r) {
      std::uint32_t const slot = out_late_[base + r] ? late_slot : rel_slot_[ref_at(r)];
      if (slot == late_slot) continue;
      std::int64_t const ts    = out_ts_[base + r];
      std::uint32_t const key  = out_key_[base + r];
      silence_state& s = silence_[slot];
      if (s.seen && ts - s.last_seen > timeout_) {
        if (!s.reported) emit_silence(key, s.last_seen, false, 0);
        emit_silence(key, s.last_seen, true, ts);
      }
      s.last_seen = ts;
      s.seen      = true;
      s.reported  = false;
      if (!s.queued) {
        deadlines_.push({ts + timeout_, slot});
        s.queued = true;
      }
    }
  }
  ref64_.clear();

  late_now_.clear();
  late_values_.clear();
  // Keep the records not released, in order, with their values packed.
  if (all) {
    pending_.clear();
    pending_values_.clear();
  } else {
    std::size_t w = 0, wv = 0;
    for (std::size_t i = 0; i < np; ++i) {
      pending p = pending_[i];
      if (p.ts < wm) continue;
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

  if (has_silence_) {
    if (!all && has_max_) {
      while (!deadlines_.empty() && deadlines_.top().first < wm) {
        auto const [when, slot] = deadlines_.top();
        deadlines_.pop();
        silence_state& s = silence_[slot];
        if (s.last_seen + timeout_ != when) {  // seen since: wait for the new deadline
          deadlines_.push({s.last_seen + timeout_, slot});
          continue;
        }
        s.queued = false;
        if (!s.reported) {
          emit_silence(slot_key_[slot], s.last_seen, false, 0);
          s.reported = true;
        }
      }
    }
    std::sort(silence_step_.begin(), silence_step_.end(),
              [](silence_event const& a, silence_event const& b) {
                if (a.at != b.at) return a.at < b.at;
                if (a.key != b.key) return a.key < b.key;
                return a.back < b.back;
              });
    silence_out_.insert(silence_out_.end(), silence_step_.begin(), silence_step_.end());
    counters_.silence_events += silence_step_.size();
    silence_step_.clear();
  }
}

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
  c.keys              = slot_key_.size();
  c.state_bytes       = slot_key_.size() * bytes_per_key_ +
                  pending_.size() * (sizeof(pending) + static_cast<std::size_t>(channels_) * sizeof(double));
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
