// Checkpoints of the detector runner: its keys, buffered records, clock, counters, silence
// deadlines and the scorers' state, in the backend-neutral form of detail/checkpoint.hpp.
#include <algorithm>
#include <cstddef>
#include <functional>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include <cusense/detail/checkpoint.hpp>
#include <cusense/detail/detector_runner.hpp>

namespace cusense::detail {

void detector_runner::save_state(state_writer& w)
{
  auto const ch = static_cast<std::size_t>(channels_);
  // The live keys in key order; index_of: a slot's place in that order.
  std::vector<std::uint32_t> order;
  order.reserve(slot_of_.size());
  for (std::uint32_t s = 0; s < slots_used_; ++s) {
    if (live_[s]) order.push_back(s);
  }
  std::sort(order.begin(), order.end(),
            [&](std::uint32_t a, std::uint32_t b) { return slot_key_[a] < slot_key_[b]; });
  std::vector<std::uint32_t> index_of(slots_used_, no_slot);
  for (std::size_t j = 0; j < order.size(); ++j) index_of[order[j]] = static_cast<std::uint32_t>(j);

  w.u64(order.size());
  for (std::uint32_t s : order) {
    w.u32(slot_key_[s]);
    silence_state const& st = silence_[s];
    w.i64(st.last_seen);
    w.boolean(st.seen);
    w.boolean(st.reported);
    w.boolean(st.queued);
  }
  w.u64(pending_.size());
  for (pending const& p : pending_) {
    w.i64(p.ts);
    w.u32(p.key);
    w.u32(index_of[p.slot]);
    w.i64(p.seq);
    for (std::size_t c = 0; c < ch; ++c) w.f64(pending_values_[p.value_at + c]);
  }
  w.i64(max_ts_);
  w.boolean(has_max_);
  w.i64(floor_);
  w.boolean(has_floor_);
  w.i64(next_seq_);
  w.u64(counters_.scored);
  w.u64(counters_.late);
  w.u64(counters_.silence_events);
  std::vector<std::pair<std::int64_t, std::uint32_t>> deadlines;
  for (deadline const& d : deadlines_) {
    if (live_[d.slot]) deadlines.emplace_back(d.when, index_of[d.slot]);
  }
  std::sort(deadlines.begin(), deadlines.end());
  w.u64(deadlines.size());
  for (auto const& [when, slot] : deadlines) {
    w.i64(when);
    w.u32(slot);
  }
  w.boolean(engine_ != nullptr);
  if (engine_) {
    std::vector<std::vector<double>> d;
    std::vector<std::vector<std::int64_t>> i;
    engine_->export_state(slots_used_, d, i);
    w.u64(d.size());
    for (std::size_t k = 0; k < d.size(); ++k) {
      ops::detector_params const p = to_params(scorers_[k]);
      auto const ds                = static_cast<std::size_t>(p.d_stride());
      auto const is                = static_cast<std::size_t>(p.i_stride());
      w.u64(order.size() * ds);
      for (std::uint32_t s : order) {
        for (std::size_t x = 0; x < ds; ++x) w.f64(d[k][s * ds + x]);
      }
      w.u64(order.size() * is);
      for (std::uint32_t s : order) {
        for (std::size_t x = 0; x < is; ++x) w.i64(i[k][s * is + x]);
      }
    }
  }
}

void detector_runner::load_state(state_reader& r)
{
  auto const ch           = static_cast<std::size_t>(channels_);
  std::size_t const slots = r.count(15);
  state_reader::check(slots < no_slot, "too many detector keys");
  slot_of_.reserve(slots);
  for (std::size_t s = 0; s < slots; ++s) {
    std::uint32_t const key = r.u32();
    state_reader::check(slot_of_.find(key) == no_slot, "a detector key appears twice");
    silence_state st;
    st.last_seen = checked_time(r.i64());
    st.seen      = r.boolean();
    st.reported  = r.boolean();
    st.queued    = r.boolean();
    add_slot(key);
    silence_.back() = st;
  }
  std::size_t const np = r.count(24 + 8 * ch);
  for (std::size_t k = 0; k < np; ++k) {
    pending p{};
    p.ts   = checked_time(r.i64());
    p.key  = r.u32();
    p.slot = r.u32();
    p.seq  = r.i64();
    state_reader::check(p.slot < slots && slot_key_[p.slot] == p.key,
                        "a buffered record refers to an unknown detector key");
    p.value_at = pending_values_.size();
    for (std::size_t c = 0; c < ch; ++c) pending_values_.push_back(r.f64());
    pending_.push_back(p);
    if (ttl_ > 0) { ++buffered_[p.slot]; }
  }
  max_ts_    = r.i64();
  has_max_   = r.boolean();
  floor_     = r.i64();
  has_floor_ = r.boolean();
  if (has_max_) { checked_time(max_ts_); }
  if (has_floor_) { checked_time(floor_); }
  next_seq_                = r.i64();
  counters_.scored         = r.u64();
  counters_.late           = r.u64();
  counters_.silence_events = r.u64();
  std::size_t const nd     = r.count(12);
  for (std::size_t k = 0; k < nd; ++k) {
    std::int64_t const when  = checked_time(r.i64(), max_duration);
    std::uint32_t const slot = r.u32();
    state_reader::check(slot < slots, "a silence deadline refers to an unknown detector key");
    deadlines_.push_back({when, slot});
  }
  std::make_heap(deadlines_.begin(), deadlines_.end(), std::greater<deadline>());
  if (ttl_ > 0) {
    // The expiry list: keys with a scored record and nothing buffered, by (last scored, key),
    // the order in which the releases put them.
    std::vector<std::uint32_t> idle;
    for (std::uint32_t s = 0; s < slots_used_; ++s) {
      if (silence_[s].seen && buffered_[s] == 0) idle.push_back(s);
    }
    std::sort(idle.begin(), idle.end(), [&](std::uint32_t a, std::uint32_t b) {
      if (silence_[a].last_seen != silence_[b].last_seen) return silence_[a].last_seen < silence_[b].last_seen;
      return slot_key_[a] < slot_key_[b];
    });
    for (std::uint32_t s : idle) lru_push_back(s);
  }
  bool const has_engine = r.boolean();
  state_reader::check(has_engine == (engine_ != nullptr),
                      "detector state does not match the detectors");
  if (!engine_) { return; }
  std::size_t const n = r.count(16);
  state_reader::check(n == scorers_.size(), "detector state does not match the detectors");
  std::vector<std::vector<double>> d(n);
  std::vector<std::vector<std::int64_t>> i(n);
  for (std::size_t k = 0; k < n; ++k) {
    ops::detector_params const p = to_params(scorers_[k]);
    auto const ds                = static_cast<std::size_t>(p.d_stride());
    auto const is                = static_cast<std::size_t>(p.i_stride());
    d[k].resize(r.count(8));
    state_reader::check(d[k].size() == slots * ds, "detector state has the wrong size");
    for (double& x : d[k]) x = r.f64();
    i[k].resize(r.count(8));
    state_reader::check(i[k].size() == slots * is, "detector state has the wrong size");
    for (std::int64_t& x : i[k]) x = r.i64();
    for (std::size_t s = 0; s < slots; ++s) {
      std::int64_t const* st = i[k].data() + s * is;
      bool ok                = st[0] >= 0;
      if (p.kind == ops::detector_kind_id::knn_discord) {
        std::int64_t const c2 = p.H2 + 1, c3 = p.K + 1;
        ok = ok && st[1] >= 0 && st[1] < c2 && st[2] >= 0 && st[2] <= c2 && st[3] >= 0 &&
             st[3] < c3 && st[4] >= 0 && st[4] <= c3;
      }
      state_reader::check(ok, "detector state holds an invalid count or index");
    }
  }
  engine_->import_state(static_cast<std::uint32_t>(slots), d, i);
}

}  // namespace cusense::detail
