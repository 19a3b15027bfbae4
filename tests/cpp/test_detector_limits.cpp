// Bounded detector memory: the key cap (max_detector_keys), the memory budget
// (memory_budget_bytes), key expiry (key_ttl) against an oracle and across batchings,
// checkpoints and compaction of expired keys, and the caps on detector parameters.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <cusense/cusense.hpp>
#include <cusense/detail/memory_budget.hpp>

#include "backend_fixture.hpp"
#include "test_utils.hpp"

namespace cusense::test {
namespace {

constexpr std::int64_t ms = 1'000'000;

std::string checkpoint_of(pipeline& p)
{
  std::ostringstream s;
  p.checkpoint(s);
  return s.str();
}

void push(pipeline& p, stream const& s, std::size_t begin, std::size_t end)
{
  p.push(s.keys.data() + begin, s.ts.data() + begin, s.values.data() + begin, end - begin);
}

/// A fleet whose keys come and go: key k is active from k * spacing for `life` ms, reporting
/// every ~period ms with jitter (out of order within ooo), with pauses longer and shorter than
/// `pause` ms now and then; a few late records.
stream churn(std::size_t keys, std::int64_t spacing, std::int64_t life, std::int64_t pause,
             unsigned seed)
{
  std::mt19937 rng(seed);
  struct rec {
    std::int64_t arrive, t;
    std::uint32_t key;
    double v;
  };
  std::vector<rec> recs;
  for (std::size_t k = 0; k < keys; ++k) {
    std::int64_t t         = static_cast<std::int64_t>(k) * spacing * ms;
    std::int64_t const end = t + life * ms;
    double level           = static_cast<double>(rng() % 100);
    while (t < end) {
      double v = level + static_cast<double>(rng() % 1000) / 500.0;
      if (rng() % 50 == 0) v += 30.0;
      if (rng() % 97 == 0) v = std::numeric_limits<double>::quiet_NaN();
      std::int64_t const arrive = t + static_cast<std::int64_t>(rng() % 40) * ms;  // delivery delay
      recs.push_back({arrive, t, static_cast<std::uint32_t>(1000 + 7 * k), v});
      if (rng() % 60 == 0)
        recs.push_back(
          {arrive + 300 * ms, t - 200 * ms, static_cast<std::uint32_t>(1000 + 7 * k), v});  // late
      t += (10 + static_cast<std::int64_t>(rng() % 10)) * ms;
      if (rng() % 25 == 0) t += (rng() % 2 == 0 ? 2 * pause : pause / 2) * ms;  // a pause
    }
  }
  std::stable_sort(recs.begin(), recs.end(),
                   [](rec const& a, rec const& b) { return a.arrive < b.arrive; });
  stream s;
  for (rec const& r : recs) {
    s.keys.push_back(r.key);
    s.ts.push_back(r.t);
    s.values.push_back(r.v);
  }
  return s;
}

pipeline_options detectors_only(backend where, std::int64_t ttl, std::vector<detector_spec> d)
{
  pipeline_options o;
  o.windowed             = false;
  o.where                = where;
  o.max_out_of_orderness = 50 * ms;
  o.key_ttl     = ttl;
  o.detectors            = std::move(d);
  return o;
}

std::vector<detector_spec> scorers(backend where)
{
  detector_spec knn            = detector_spec::knn_discord();
  knn.L                        = 3;
  knn.H                        = 40;
  knn.H2                       = 10;
  knn.K                        = 5;
  knn.min_candidates           = 5;
  std::vector<detector_spec> d = {detector_spec::ewma(0.1), detector_spec::rolling_mad(8), knn};
  if (where == backend::cpu) { d.push_back(detector_spec::multiscale_z()); }
  return d;
}

/// Scores and silence events as rows sorted by arrival (seq), and silence events sorted.
struct scored {
  std::vector<std::tuple<std::int64_t, std::uint32_t, std::int64_t, bool, std::vector<double>>>
    scores;  // seq, key, ts, late, scores
  std::vector<std::tuple<std::int64_t, std::uint32_t, std::int64_t, bool>>
    silence;  // at, key, last_seen, back
};

void collect(pipeline& p, scored& out, bool silence)
{
  table const t    = p.poll_scores();
  auto const& seq  = t.get<std::int64_t>("seq");
  auto const& key  = t.get<std::uint32_t>("key");
  auto const& ts   = t.get<std::int64_t>("timestamp");
  auto const& late = t.get<std::uint8_t>("late");
  std::vector<std::vector<double> const*> cols;
  for (column const& c : t.columns) {
    if (c.name.rfind("score_", 0) == 0) cols.push_back(&std::get<std::vector<double>>(c.data));
  }
  for (std::size_t r = 0; r < seq.size(); ++r) {
    std::vector<double> sc;
    for (auto const* c : cols) sc.push_back((*c)[r]);
    out.scores.emplace_back(seq[r], key[r], ts[r], late[r] != 0, sc);
  }
  if (silence) {
    table const s     = p.poll_silence();
    auto const& k     = s.get<std::uint32_t>("key");
    auto const& l     = s.get<std::int64_t>("last_seen");
    auto const& b     = s.get<std::uint8_t>("back");
    auto const& a     = s.get<std::int64_t>("back_at");
    auto const& since = s.get<std::int64_t>("silent_since");
    for (std::size_t r = 0; r < k.size(); ++r)
      out.silence.emplace_back(b[r] ? a[r] : since[r], k[r], l[r], b[r] != 0);
  }
}

scored run(pipeline_options const& o, stream const& s, std::vector<std::size_t> const& cuts,
           bool flush, pipeline_stats* stats = nullptr)
{
  pipeline p(o);
  bool const silence =
    std::any_of(o.detectors.begin(), o.detectors.end(),
                [](detector_spec const& d) { return d.kind == detector_kind::silence; });
  scored out;
  std::size_t begin = 0;
  for (std::size_t end : cuts) {
    push(p, s, begin, end);
    collect(p, out, silence);
    begin = end;
  }
  if (flush) {
    p.flush();
    collect(p, out, silence);
  }
  if (stats) { *stats = p.stats(); }
  std::sort(out.scores.begin(), out.scores.end(),
            [](auto const& a, auto const& b) { return std::get<0>(a) < std::get<0>(b); });
  std::sort(out.silence.begin(), out.silence.end());
  return out;
}

void expect_same_scores(scored const& a, scored const& b, double tol, std::string const& what)
{
  ASSERT_EQ(a.scores.size(), b.scores.size()) << what;
  for (std::size_t r = 0; r < a.scores.size(); ++r) {
    auto const& [sa, ka, ta, la, xa] = a.scores[r];
    auto const& [sb, kb, tb, lb, xb] = b.scores[r];
    ASSERT_EQ(sa, sb) << what;
    ASSERT_EQ(ta, tb) << what << " seq " << sa;
    ASSERT_EQ(la, lb) << what << " seq " << sa;
    ASSERT_EQ(xa.size(), xb.size());
    for (std::size_t d = 0; d < xa.size(); ++d) {
      if (std::isnan(xa[d]) || std::isnan(xb[d])) {
        ASSERT_EQ(std::isnan(xa[d]), std::isnan(xb[d]))
          << what << " seq " << sa << " detector " << d;
      } else {
        ASSERT_NEAR(xa[d], xb[d], tol) << what << " seq " << sa << " detector " << d;
      }
    }
  }
}

template <typename B>
class key_ttl : public backend_test<B> {};
TYPED_TEST_SUITE(key_ttl, backends, backend_names);

// The oracle of key expiry: a key's records in scoring order, cut wherever the gap between two
// scored records exceeds the ttl; each piece is scored as a key of its own by a pipeline
// without expiry. Silence: each piece goes silent on its own, with no comeback between pieces.
TYPED_TEST(key_ttl, EqualsKeysCutAtGaps)
{
  std::int64_t const ttl = 150 * ms;
  stream const s         = churn(40, 30, 2000, 200, 7);
  auto d                 = scorers(TestFixture::where);
  d.push_back(detector_spec::silence(100 * ms));
  pipeline_options const o = detectors_only(TestFixture::where, ttl, d);

  // Which records are late does not depend on keys: take it from a run without expiry.
  pipeline_options plain             = o;
  plain.key_ttl             = 0;
  std::vector<std::size_t> const one = {s.keys.size()};
  scored const base                  = run(plain, s, one, false);
  std::vector<char> late(s.keys.size(), 0), released(s.keys.size(), 0);
  for (auto const& r : base.scores) {
    released[static_cast<std::size_t>(std::get<0>(r))] = 1;
    late[static_cast<std::size_t>(std::get<0>(r))]     = std::get<3>(r);
  }
  // Pieces: per key, records by (timestamp, arrival), cut at gaps > ttl.
  std::map<std::uint32_t, std::vector<std::size_t>> of_key;
  for (std::size_t i = 0; i < s.keys.size(); ++i) {
    if (!late[i]) of_key[s.keys[i]].push_back(i);
  }
  stream cut = s;
  std::map<std::uint32_t, std::uint32_t> original;  // piece key -> key
  std::uint32_t next = 1u << 30;
  std::size_t pieces = 0;
  for (auto& [key, idx] : of_key) {
    std::stable_sort(idx.begin(), idx.end(),
                     [&](std::size_t a, std::size_t b) { return s.ts[a] < s.ts[b]; });
    std::uint32_t piece = next++;
    original[piece]     = key;
    for (std::size_t j = 0; j < idx.size(); ++j) {
      if (j > 0 && s.ts[idx[j]] - s.ts[idx[j - 1]] > ttl) {
        piece           = next++;
        original[piece] = key;
        ++pieces;
      }
      cut.keys[idx[j]] = piece;
    }
  }
  ASSERT_GT(pieces, 20u) << "the stream should have gaps longer than the ttl";
  scored oracle = run(plain, cut, one, false);
  for (auto& r : oracle.scores) {
    if (!std::get<3>(r)) std::get<1>(r) = original[std::get<1>(r)];
  }
  for (auto& e : oracle.silence) std::get<1>(e) = original[std::get<1>(e)];
  std::sort(oracle.silence.begin(), oracle.silence.end());

  for (unsigned seed : {1u, 2u, 3u}) {
    auto const cuts = seed == 1 ? one : random_cuts(s.keys.size(), seed == 2 ? 7 : 400, seed);
    pipeline_stats st;
    scored const got = run(o, s, cuts, false, &st);
    double const tol = TestFixture::where == backend::cpu ? 0.0 : 1e-9;
    expect_same_scores(got, oracle, tol, "seed " + std::to_string(seed));
    EXPECT_EQ(got.silence, oracle.silence) << "seed " << seed;
    // Keys whose last record is more than ttl behind the watermark are gone.
    EXPECT_LT(st.open_keys, 20u);
  }
}

// Whatever the batching (flush included), and with a checkpoint and restore in the middle, the
// scores and silence events are the same, bit for bit on the CPU.
TYPED_TEST(key_ttl, IndependentOfBatchingAndRestores)
{
  stream const s = churn(60, 20, 1500, 150, 11);
  auto d         = scorers(TestFixture::where);
  d.push_back(detector_spec::silence(80 * ms));
  pipeline_options const o           = detectors_only(TestFixture::where, 120 * ms, d);
  std::vector<std::size_t> const one = {s.keys.size()};
  scored const whole                 = run(o, s, one, true);
  double const tol                   = TestFixture::where == backend::cpu ? 0.0 : 1e-9;
  for (unsigned seed : {4u, 5u}) {
    auto const cuts   = random_cuts(s.keys.size(), seed == 4 ? 3 : 250, seed);
    scored const part = run(o, s, cuts, true);
    expect_same_scores(part, whole, tol, "cuts " + std::to_string(seed));
    EXPECT_EQ(part.silence, whole.silence);
  }
  // Checkpoint and restore every few batches: the same outputs, and the final checkpoint of an
  // uninterrupted run (the keys are saved in key order, so slot histories do not show).
  auto const cuts = random_cuts(s.keys.size(), 60, 9);
  pipeline a(o);
  pipeline b(o);
  scored got;
  std::size_t begin = 0;
  for (std::size_t c = 0; c < cuts.size(); ++c) {
    push(a, s, begin, cuts[c]);
    push(b, s, begin, cuts[c]);
    collect(b, got, true);
    begin = cuts[c];
    if (c % 5 == 4) {
      std::istringstream in(checkpoint_of(b));
      b = pipeline::restore(in, TestFixture::where);
      EXPECT_EQ(b.options().key_ttl, o.key_ttl);
    }
  }
  scored ref;
  collect(a, ref, true);
  EXPECT_EQ(checkpoint_of(a), checkpoint_of(b));
  a.flush();
  b.flush();
  collect(b, got, true);
  collect(a, ref, true);
  std::sort(got.scores.begin(), got.scores.end(),
            [](auto const& x, auto const& y) { return std::get<0>(x) < std::get<0>(y); });
  std::sort(ref.scores.begin(), ref.scores.end(),
            [](auto const& x, auto const& y) { return std::get<0>(x) < std::get<0>(y); });
  std::sort(got.silence.begin(), got.silence.end());
  std::sort(ref.silence.begin(), ref.silence.end());
  expect_same_scores(got, whole, tol, "restored");
  EXPECT_EQ(got.silence, whole.silence);
}

// With expiry the detector state follows the active keys; without, every key ever seen.
TYPED_TEST(key_ttl, StateFollowsActiveKeys)
{
  stream const s = churn(400, 10, 300, 100, 13);  // about 30 keys active at a time
  pipeline_options const o =
    detectors_only(TestFixture::where, 200 * ms, scorers(TestFixture::where));
  pipeline_options plain = o;
  plain.key_ttl = 0;
  pipeline p(o), q(plain);
  std::uint64_t max_keys = 0, max_bytes = 0;
  auto const cuts   = random_cuts(s.keys.size(), 200, 3);
  std::size_t begin = 0;
  for (std::size_t end : cuts) {
    push(p, s, begin, end);
    push(q, s, begin, end);
    begin = end;
    (void)p.poll_scores();
    (void)q.poll_scores();
    max_keys  = std::max(max_keys, p.stats().open_keys);
    max_bytes = std::max(max_bytes, p.stats().state_bytes);
  }
  EXPECT_EQ(q.stats().open_keys, 400u);
  EXPECT_LT(max_keys, 80u);
  EXPECT_LT(max_bytes * 4, q.stats().state_bytes);
  // The checkpoint holds the live keys only.
  EXPECT_LT(checkpoint_of(p).size() * 4, checkpoint_of(q).size());
}

TEST(detector_limits, TtlIsValidated)
{
  auto bad = [](pipeline_options o, char const* what) {
    try {
      pipeline p(o);
      ADD_FAILURE() << "accepted: " << what;
    } catch (invalid_argument const& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  pipeline_options o =
    detectors_only(backend::cpu, 50 * ms, {detector_spec::ewma(), detector_spec::silence(60 * ms)});
  bad(o, "at least the silence timeout");
  o.key_ttl = -1;
  bad(o, "key_ttl must lie in");
  o.key_ttl = max_duration + 1;
  bad(o, "key_ttl must lie in");
  pipeline_options w;
  w.window           = window_spec::tumbling(1000);
  w.key_ttl = 1000;
  bad(w, "key_ttl applies to detectors");
  w.key_ttl  = 0;
  w.max_detector_keys = 10;
  bad(w, "max_detector_keys applies to detectors");
  o.key_ttl = 60 * ms;  // == timeout: fine
  EXPECT_NO_THROW(pipeline{o});
}

// ----- the key cap

TEST(detector_limits, KeyCapRejectsTheWholeBatch)
{
  pipeline_options o =
    detectors_only(backend::cpu, 0, {detector_spec::ewma(), detector_spec::silence(500 * ms)});
  o.max_detector_keys = 5;
  pipeline p(o), ref(o);
  std::vector<std::uint32_t> k = {1, 2, 3, 1, 2};
  std::vector<std::int64_t> t  = {0, 10 * ms, 20 * ms, 30 * ms, 40 * ms};
  std::vector<double> v        = {1, 2, 3, 4, 5};
  p.push(k.data(), t.data(), v.data(), k.size());
  ref.push(k.data(), t.data(), v.data(), k.size());
  // Three new keys (4, 5, 6): 6 keys > 5. Key 7 only as a late record does not count.
  std::vector<std::uint32_t> k2 = {4, 5, 1, 6, 7};
  std::vector<std::int64_t> t2  = {100 * ms, 110 * ms, 120 * ms, 130 * ms, -500 * ms};
  std::vector<double> v2        = {1, 1, 1, 1, 1};
  try {
    p.push(k2.data(), t2.data(), v2.data(), k2.size());
    ADD_FAILURE() << "the cap was not enforced";
  } catch (capacity_error const& e) {
    EXPECT_NE(std::string(e.what()).find("max_detector_keys (5)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("3 new keys"), std::string::npos) << e.what();
  }
  std::vector<std::int64_t> nat(k2.size(), std::numeric_limits<std::int64_t>::min());
  EXPECT_THROW(ref.push(k2.data(), nat.data(), v2.data(), k2.size()), invalid_argument);
  EXPECT_EQ(checkpoint_of(p), checkpoint_of(ref));
  EXPECT_EQ(p.stats().records_rejected, 5u);
  EXPECT_EQ(p.stats().open_keys, 3u);
  // Two new keys fit; a late record of an unknown key creates none.
  std::vector<std::uint32_t> k3 = {4, 5, 1, 7};
  std::vector<std::int64_t> t3  = {100 * ms, 110 * ms, 120 * ms, -500 * ms};
  EXPECT_NO_THROW(p.push(k3.data(), t3.data(), v2.data(), k3.size()));
  EXPECT_EQ(p.stats().open_keys, 5u);
  EXPECT_EQ(p.stats().records_score_late, 1u);
  // Known keys go on at the cap.
  EXPECT_NO_THROW(p.push(k.data(), t3.data(), v.data(), 3));
}

TEST(detector_limits, KeyCapWithExpiryCountsLiveKeys)
{
  // Keys come and go; with expiry a cap of 90 holds for a fleet of 400 keys over time.
  stream const s      = churn(400, 10, 300, 100, 17);
  pipeline_options o  = detectors_only(backend::cpu, 200 * ms, scorers(backend::cpu));
  o.max_detector_keys = 90;
  pipeline p(o);
  auto const cuts   = random_cuts(s.keys.size(), 100, 5);
  std::size_t begin = 0;
  for (std::size_t end : cuts) {
    push(p, s, begin, end);
    begin = end;
  }
  EXPECT_EQ(p.stats().records_rejected, 0u);
  o.key_ttl = 0;
  pipeline q(o);
  EXPECT_THROW(push(q, s, 0, s.keys.size()), capacity_error);
}

// ----- the memory budget

TEST(detector_limits, BudgetRefusesAKeyTooLargeForIt)
{
  detector_spec knn     = detector_spec::knn_discord();
  knn.H                 = max_detector_size;  // 8 MiB of history per key
  pipeline_options o    = detectors_only(backend::cpu, 0, {knn});
  o.memory_budget_bytes = 4 << 20;
  pipeline p(o);
  std::uint32_t key = 1;
  std::int64_t t    = 0;
  double v          = 1.0;
  try {
    p.push(&key, &t, &v, 1);
    ADD_FAILURE() << "a key of 8 MiB fit a budget of 4 MiB";
  } catch (capacity_error const& e) {
    EXPECT_NE(std::string(e.what()).find("memory_budget_bytes (4194304)"), std::string::npos)
      << e.what();
    EXPECT_NE(std::string(e.what()).find("the batch was rejected"), std::string::npos) << e.what();
  }
  EXPECT_EQ(p.stats().state_bytes, 0u);
  EXPECT_EQ(p.stats().records_rejected, 1u);
  o.memory_budget_bytes = 64 << 20;
  pipeline q(o);
  EXPECT_NO_THROW(q.push(&key, &t, &v, 1));
  EXPECT_GT(q.stats().state_bytes, std::uint64_t{8} << 20);
}

// The budget holds after every accepted push: stats().state_bytes never exceeds it, and pushes
// are refused (changing nothing) once the next would go beyond.
TEST(detector_limits, BudgetBoundsWindowsDetectorsAndBuffers)
{
  stream const s         = churn(300, 5, 400, 100, 19);
  pipeline_options o     = detectors_only(backend::cpu, 0, scorers(backend::cpu));
  o.windowed             = true;
  o.window               = window_spec::session(30 * ms);
  o.aggs                 = {agg::count, agg::mean, agg::last};
  o.max_out_of_orderness = 2000 * ms;  // a long buffer
  o.memory_budget_bytes  = 400'000;
  pipeline p(o);
  auto const cuts   = random_cuts(s.keys.size(), 50, 7);
  std::size_t begin = 0, refused = 0;
  for (std::size_t end : cuts) {
    pipeline_stats const before = p.stats();
    try {
      push(p, s, begin, end);
    } catch (capacity_error const&) {
      ++refused;
      pipeline_stats const after = p.stats();
      EXPECT_EQ(after.records_rejected, before.records_rejected + (end - begin));
      EXPECT_EQ(after.state_bytes, before.state_bytes);
      EXPECT_EQ(after.records_aggregated, before.records_aggregated);
      EXPECT_EQ(after.records_score_buffered, before.records_score_buffered);
      EXPECT_EQ(after.open_keys, before.open_keys);
    }
    EXPECT_LE(p.stats().state_bytes, o.memory_budget_bytes);
    begin = end;
  }
  EXPECT_GT(refused, 0u);
  pipeline_stats const st = p.stats();
  EXPECT_EQ(st.records_pushed, st.records_aggregated + st.records_late + st.records_rejected);
}

// The per-record bound of the estimate holds for every window kind: no push grows the window
// state by more than n * window_state_bound_per_record.
TEST(detector_limits, WindowStateBoundHolds)
{
  std::vector<std::pair<char const*, pipeline_options>> cases;
  auto with = [](window_spec w, std::vector<agg> aggs, int channels, std::int64_t lateness = 0) {
    pipeline_options o;
    o.where                = backend::cpu;
    o.window               = w;
    o.aggs                 = std::move(aggs);
    o.channels             = channels;
    o.allowed_lateness     = lateness;
    o.max_out_of_orderness = 100 * ms;
    return o;
  };
  cases.emplace_back("tumbling", with(window_spec::tumbling(50 * ms), {agg::count, agg::mean}, 1));
  cases.emplace_back("tumbling first/last",
                     with(window_spec::tumbling(50 * ms), {agg::first, agg::last}, 3));
  cases.emplace_back("tumbling lateness",
                     with(window_spec::tumbling(50 * ms), {agg::sum}, 2, 100 * ms));
  cases.emplace_back("sliding",
                     with(window_spec::sliding(200 * ms, 20 * ms), {agg::count, agg::max}, 1));
  cases.emplace_back("session",
                     with(window_spec::session(25 * ms), {agg::count, agg::argmax_ts}, 2));
  cases.emplace_back("rolling", with(window_spec::rolling(20), {agg::mean, agg::std}, 1));
  for (auto const& [name, o] : cases) {
    std::uint64_t const bound = detail::window_state_bound_per_record(o);
    stream s                  = churn(200, 3, 300, 60, 23);
    if (o.channels > 1) {
      std::vector<double> v;
      for (double x : s.values) v.insert(v.end(), static_cast<std::size_t>(o.channels), x);
      s.values = v;
    }
    pipeline p(o);
    auto const cuts   = random_cuts(s.keys.size(), 300, 29);
    std::size_t begin = 0;
    for (std::size_t end : cuts) {
      std::uint64_t const before = p.stats().state_bytes;
      p.push(s.keys.data() + begin, s.ts.data() + begin,
             s.values.data() + begin * static_cast<std::size_t>(o.channels), end - begin);
      std::uint64_t const after = p.stats().state_bytes;
      EXPECT_LE(after, before + (end - begin) * bound)
        << name << ": batch [" << begin << ", " << end << ")";
      begin = end;
    }
  }
}

TEST(detector_limits, OptionsAreCheckpointed)
{
  pipeline_options o    = detectors_only(backend::cpu, 3000 * ms, {detector_spec::ewma()});
  o.max_detector_keys   = 1234;
  o.memory_budget_bytes = 5678901;
  pipeline p(o);
  std::istringstream in(checkpoint_of(p));
  pipeline q = pipeline::restore(in, backend::cpu);
  EXPECT_EQ(q.options().max_detector_keys, 1234u);
  EXPECT_EQ(q.options().memory_budget_bytes, 5678901u);
  EXPECT_EQ(q.options().key_ttl, 3000 * ms);
}

// ----- detector parameters

TEST(detector_limits, ParametersAreCapped)
{
  auto refused = [](detector_spec s, char const* what) {
    try {
      validate(s);
      ADD_FAILURE() << "accepted: " << what;
    } catch (invalid_argument const& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  detector_spec k = detector_spec::knn_discord();
  k.H             = std::int64_t{1} << 24;
  refused(k, "H (history) must lie in [2, 1048576], got 16777216");
  k.H = 3000;
  k.L = 1025;
  refused(k, "L (subsequence length) must lie in [1, 1024]");
  k.L  = 4;
  k.H2 = max_detector_size + 1;
  refused(k, "H2 must lie in");
  k.H2 = 500;
  k.K  = max_detector_size + 1;
  refused(k, "K must lie in");
  k.K              = 50;
  k.min_candidates = max_detector_size + 1;
  refused(k, "min_candidates must lie in");
  refused(detector_spec::rolling_z(max_detector_size + 1), "window must lie in [2, 1048576]");
  detector_spec m = detector_spec::multiscale_z();
  m.K             = max_detector_size + 1;
  refused(m, "K must lie in [0, 1048576]");
  m.K         = 500;
  m.min_count = max_detector_size + 1;
  refused(m, "min_count must lie in");
  detector_spec e = detector_spec::ewma();
  e.min_count     = max_detector_size + 1;
  refused(e, "min_count must lie in");
  k.min_candidates = 50;
  k.H              = max_detector_size;
  EXPECT_NO_THROW(validate(k));
}

}  // namespace
}  // namespace cusense::test
