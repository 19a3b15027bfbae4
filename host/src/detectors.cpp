// Detector configuration, the host-side runner shared by both backends (watermark, buffering,
// release order, late records, silence, result tables) and the one-shot cusense::score.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include <cusense/detail/detector_engine.hpp>
#include <cusense/error.hpp>
#include <cusense/pipeline.hpp>

namespace cusense {

std::string to_string(detector_kind k)
{
  switch (k) {
    case detector_kind::ewma: return "ewma";
    case detector_kind::rolling_z: return "rolling_z";
    case detector_kind::rolling_mad: return "rolling_mad";
    case detector_kind::knn_discord: return "knn_discord";
    case detector_kind::silence: return "silence";
  }
  return "unknown";
}

void validate(detector_spec const& s, int channels)
{
  std::string const who = "detector '" + s.column_name() + "': ";
  CUSENSE_EXPECTS(s.threshold >= 0.0 && s.threshold <= 1.0,
                  who + "threshold must lie in [0, 1], got " + std::to_string(s.threshold));
  CUSENSE_EXPECTS(s.channel >= 0 && s.channel < channels,
                  who + "channel " + std::to_string(s.channel) + " does not exist (" +
                    std::to_string(channels) + " channel(s))");
  for (char c : s.name) {
    CUSENSE_EXPECTS(std::isalnum(static_cast<unsigned char>(c)) || c == '_',
                    who + "name may hold only letters, digits and '_'");
  }
  switch (s.kind) {
    case detector_kind::ewma:
      CUSENSE_EXPECTS(s.alpha > 0.0 && s.alpha <= 1.0,
                      who + "alpha must lie in (0, 1], got " + std::to_string(s.alpha));
      CUSENSE_EXPECTS(s.min_count >= 1, who + "min_count must be >= 1");
      break;
    case detector_kind::rolling_z:
    case detector_kind::rolling_mad:
      CUSENSE_EXPECTS(s.window >= 2, who + "window must be >= 2 records, got " + std::to_string(s.window));
      CUSENSE_EXPECTS(s.window <= (std::int64_t{1} << 24), who + "window must be <= 2^24 records");
      CUSENSE_EXPECTS(s.min_count >= 1 && s.min_count <= s.window,
                      who + "min_count must lie in [1, window], got " + std::to_string(s.min_count));
      break;
    case detector_kind::knn_discord:
      CUSENSE_EXPECTS(s.L >= 1 && s.L <= (std::int64_t{1} << 23),
                      who + "L (subsequence length) must lie in [1, 2^23]");
      CUSENSE_EXPECTS(s.H >= 2 * s.L, who + "H (history) must be >= 2 L");
      CUSENSE_EXPECTS(s.H <= (std::int64_t{1} << 24), who + "H must be <= 2^24 records");
      CUSENSE_EXPECTS(s.min_candidates >= 1, who + "min_candidates must be >= 1");
      CUSENSE_EXPECTS(s.H2 >= 1 && s.H2 <= (std::int64_t{1} << 24), who + "H2 must lie in [1, 2^24]");
      CUSENSE_EXPECTS(s.K >= 1 && s.K <= (std::int64_t{1} << 24), who + "K must lie in [1, 2^24]");
      break;
    case detector_kind::silence:
      CUSENSE_EXPECTS(s.timeout > 0 && s.timeout <= max_duration,
                      who + "timeout must lie in (0, 2^61] ns, got " + std::to_string(s.timeout));
      break;
  }
}

namespace detail {

ops::detector_params to_params(detector_spec const& s)
{
  ops::detector_params p;
  switch (s.kind) {
    case detector_kind::ewma: p.kind = ops::detector_kind_id::ewma; break;
    case detector_kind::rolling_z: p.kind = ops::detector_kind_id::rolling_z; break;
    case detector_kind::rolling_mad: p.kind = ops::detector_kind_id::rolling_mad; break;
    case detector_kind::knn_discord: p.kind = ops::detector_kind_id::knn_discord; break;
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
    thresholds_.push_back(s.threshold);
    params.push_back(to_params(s));
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
  auto [it, inserted] = slot_of_.try_emplace(key, static_cast<std::uint32_t>(slot_key_.size()));
  if (inserted) {
    slot_key_.push_back(key);
    silence_.emplace_back();
  }
  return it->second;
}

void detector_runner::push(std::uint32_t const* keys, std::int64_t const* ts, void const* values,
                           bool f32, std::size_t n)
{
  if (f32) {
    push_typed(keys, ts, static_cast<float const*>(values), n);
  } else {
    push_typed(keys, ts, static_cast<double const*>(values), n);
  }
}

template <typename T>
void detector_runner::push_typed(std::uint32_t const* keys, std::int64_t const* ts, T const* values,
                                 std::size_t n)
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
  pending_.reserve(pending_.size() + n);
  pending_values_.reserve(pending_values_.size() + n * ch);
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t const t = ts[i];
    T const* v           = values + i * ch;
    if (t < lim) {
      late_now_.push_back({t, keys[i], 0, next_seq_++, true, late_values_.size()});
      for (std::size_t c = 0; c < ch; ++c) late_values_.push_back(static_cast<double>(v[c]));
      continue;
    }
    pending_.push_back({t, keys[i], slot_for(keys[i]), next_seq_++, false, pending_values_.size()});
    for (std::size_t c = 0; c < ch; ++c) pending_values_.push_back(static_cast<double>(v[c]));
    if (!has_max_ || t > max_ts_) {
      max_ts_  = t;
      has_max_ = true;
      lim      = limit();
    }
  }
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

void detector_runner::release(bool all)
{
  std::int64_t const wm =
    has_max_ ? max_ts_ - ooo_ : std::numeric_limits<std::int64_t>::min();
  // Split the buffer: released records (ts < watermark, or all) and the rest, kept in order.
  std::vector<pending> out;
  std::vector<pending> keep;
  std::vector<double> keep_values;
  if (all) {
    out.swap(pending_);
  } else {
    for (pending const& p : pending_) {
      if (p.ts < wm) {
        out.push_back(p);
      } else {
        keep.push_back(p);
      }
    }
    if (!keep.empty()) {
      auto const ch = static_cast<std::size_t>(channels_);
      keep_values.reserve(keep.size() * ch);
      for (pending& p : keep) {
        std::size_t const at = keep_values.size();
        keep_values.insert(keep_values.end(), pending_values_.begin() + p.value_at,
                           pending_values_.begin() + p.value_at + ch);
        p.value_at = at;
      }
    }
  }
  std::size_t const n_scored = out.size();
  std::size_t const n_late   = late_now_.size();
  out.insert(out.end(), late_now_.begin(), late_now_.end());
  late_now_.clear();
  // Release order: (timestamp, key, arrival).
  std::sort(out.begin(), out.end(), [](pending const& a, pending const& b) {
    if (a.ts != b.ts) return a.ts < b.ts;
    if (a.key != b.key) return a.key < b.key;
    return a.seq < b.seq;
  });

  auto const ch = static_cast<std::size_t>(channels_);
  std::size_t const n = out.size();
  // Gather the records to score, in release order.
  std::vector<std::uint32_t> slots;
  std::vector<double> vals;
  std::vector<std::size_t> row_of;  // scored index -> out index
  slots.reserve(n_scored);
  vals.reserve(n_scored * ch);
  row_of.reserve(n_scored);
  for (std::size_t r = 0; r < n; ++r) {
    pending const& p = out[r];
    if (p.late) continue;
    slots.push_back(p.slot);
    vals.insert(vals.end(), pending_values_.begin() + p.value_at, pending_values_.begin() + p.value_at + ch);
    row_of.push_back(r);
  }
  std::vector<double> scores(scorers_.size() * n_scored);
  if (engine_ && n_scored > 0) {
    engine_->score(slots.data(), vals.data(), n_scored, static_cast<std::uint32_t>(slot_key_.size()),
                   scores.data());
  }

  // Output rows.
  std::size_t const base = out_key_.size();
  out_key_.reserve(base + n);
  for (std::size_t r = 0; r < n; ++r) {
    pending const& p = out[r];
    out_key_.push_back(p.key);
    out_ts_.push_back(p.ts);
    out_seq_.push_back(p.seq);
    out_late_.push_back(p.late ? 1 : 0);
    double const* v = p.late ? &late_values_[p.value_at] : &pending_values_[p.value_at];
    for (std::size_t c = 0; c < ch; ++c) out_values_[c].push_back(v[c]);
  }
  for (std::size_t d = 0; d < scorers_.size(); ++d) {
    auto& col = out_scores_[d];
    std::size_t const at = col.size();
    col.resize(at + n, std::numeric_limits<double>::quiet_NaN());
    for (std::size_t k = 0; k < n_scored; ++k) col[at + row_of[k]] = scores[d * n_scored + k];
  }
  late_values_.clear();
  counters_.scored += n_scored;
  counters_.late += n_late;

  if (all) {
    pending_values_.clear();
  } else {
    pending_.swap(keep);
    pending_values_.swap(keep_values);
  }

  // Silence: gaps between released records of a key, then keys the watermark has left silent.
  if (has_silence_) {
    for (std::size_t r = 0; r < n; ++r) {
      pending const& p = out[r];
      if (p.late) continue;
      silence_state& s = silence_[p.slot];
      if (s.seen && p.ts - s.last_seen > timeout_) {
        if (!s.reported) emit_silence(p.key, s.last_seen, false, 0);
        emit_silence(p.key, s.last_seen, true, p.ts);
      }
      s.last_seen = p.ts;
      s.seen      = true;
      s.reported  = false;
      if (!s.queued) {
        deadlines_.push({p.ts + timeout_, p.slot});
        s.queued = true;
      }
    }
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
  c.has_watermark     = has_max_;
  c.watermark         = has_max_ ? max_ts_ - ooo_ : 0;
  return c;
}

}  // namespace detail

std::vector<double> score(std::uint32_t const* keys, std::int64_t const* timestamps,
                          double const* values, std::size_t n, detector_spec const& detector,
                          backend where)
{
  CUSENSE_EXPECTS(detector.kind != detector_kind::silence,
                  "score: the silence detector gives events, not scores (use a pipeline)");
  pipeline_options o;
  o.windowed             = false;  // detectors only
  o.detectors            = {detector};
  o.max_out_of_orderness = max_duration;  // a finite stream: everything is scored in time order
  o.where                = where;
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
