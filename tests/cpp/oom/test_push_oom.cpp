// Pushes under memory exhaustion: a push is applied whole or not at all. The global operator
// new of this executable (hence its own test binary) can be told to fail at its k-th call; for
// k = 1, 2, ... every allocation a push makes fails once in turn. A push that fails must raise
// cusense::out_of_memory and leave the pipeline exactly as a pipeline that never saw the batch
// (stats, checkpoint bytes, and every output after the rest of the stream), with the batch's
// records counted as rejected; a push that succeeds must equal one that never failed.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <typeinfo>
#include <vector>

#include <cusense/cusense.hpp>

// ----- the allocation hook ------------------------------------------------------------------

namespace alloc_hook {
std::atomic<bool> armed{false};
std::atomic<long> left{0};  // the allocation that makes this reach 0 fails
std::atomic<bool> fired{false};

void arm(long k)
{
  fired = false;
  left  = k;
  armed = true;
}
void disarm() { armed = false; }

void* allocate(std::size_t n, std::size_t align)
{
  if (armed.load(std::memory_order_relaxed) && left.fetch_sub(1) == 1) {
    armed = false;
    fired = true;
    throw std::bad_alloc();
  }
  if (n == 0) { n = 1; }
  void* p = nullptr;
  if (align > alignof(std::max_align_t)) {
    p = std::aligned_alloc(align, (n + align - 1) / align * align);
  } else {
    p = std::malloc(n);
  }
  if (p == nullptr) { throw std::bad_alloc(); }
  return p;
}
}  // namespace alloc_hook

void* operator new(std::size_t n) { return alloc_hook::allocate(n, 0); }
void* operator new[](std::size_t n) { return alloc_hook::allocate(n, 0); }
void* operator new(std::size_t n, std::align_val_t a)
{
  return alloc_hook::allocate(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a)
{
  return alloc_hook::allocate(n, static_cast<std::size_t>(a));
}
void* operator new(std::size_t n, std::nothrow_t const&) noexcept
{
  try {
    return alloc_hook::allocate(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, std::nothrow_t const&) noexcept
{
  try {
    return alloc_hook::allocate(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::nothrow_t const&) noexcept { std::free(p); }
void operator delete[](void* p, std::nothrow_t const&) noexcept { std::free(p); }

namespace cusense {
namespace {

// ----- streams and comparisons --------------------------------------------------------------

struct batch {
  std::vector<std::uint32_t> keys;
  std::vector<std::int64_t> ts;
  std::vector<double> values;  // channels per record
  // External watermarks (options.external_watermark): each record's stream position and the
  // watermark steps of the batch.
  std::vector<std::int64_t> positions, step_at, step_watermark, step_position;
  std::size_t size() const { return keys.size(); }
};

/// Gives the batches of `stream` the positions and watermark steps of a watermark kept outside
/// the pipeline: record j of the stream at position 2j, a step after it (position 2j + 1) to the
/// largest time so far - ooo whenever that grows.
void with_external_steps(std::vector<batch>& stream, std::int64_t ooo)
{
  std::int64_t j = 0, top = std::numeric_limits<std::int64_t>::min();
  bool has = false;
  for (batch& b : stream) {
    for (std::size_t i = 0; i < b.size(); ++i, ++j) {
      b.positions.push_back(2 * j);
      if (!has || b.ts[i] - ooo > top) {
        top = b.ts[i] - ooo;
        has = true;
        b.step_at.push_back(static_cast<std::int64_t>(i) + 1);
        b.step_watermark.push_back(top);
        b.step_position.push_back(2 * j + 1);
      }
    }
  }
}

/// A stream of `batches` batches of about `per_batch` records with key churn (keys join and
/// leave), out-of-order times within `ooo`, a few late records, NaN values and, in the
/// `quiet`-th batch, a pause of all but a few keys (silence).
std::vector<batch> make_stream(int batches, int per_batch, int channels, std::int64_t ooo,
                               unsigned seed, std::uint32_t churn = 1)
{
  std::mt19937 rng(seed);
  std::vector<batch> out;
  std::int64_t now        = 1000;
  std::uint32_t first_key = 0;
  for (int b = 0; b < batches; ++b) {
    batch x;
    first_key += b % 2 == 0 ? 2 * churn : churn;  // keys leave and new ones join
    for (int i = 0; i < per_batch; ++i) {
      now += static_cast<std::int64_t>(rng() % 4);
      std::uint32_t const key = first_key + rng() % 9;
      std::int64_t t = now - static_cast<std::int64_t>(rng() % static_cast<unsigned>(ooo + 1));
      if (rng() % 23 == 0) { t = now - 4 * ooo - 7; }  // late
      x.keys.push_back(key);
      x.ts.push_back(t);
      for (int c = 0; c < channels; ++c) {
        double v =
          std::sin(0.1 * static_cast<double>(t) + c) + 0.01 * static_cast<double>(rng() % 100);
        if (rng() % 31 == 0) { v = std::numeric_limits<double>::quiet_NaN(); }
        if (rng() % 17 == 0) { v += 5.0; }
        x.values.push_back(v);
      }
    }
    now += b % 3 == 2 ? 8 * ooo : 0;  // a gap: silences, expiries
    out.push_back(std::move(x));
  }
  return out;
}

std::string checkpoint_of(pipeline& p)
{
  std::ostringstream s;
  p.checkpoint(s);
  return s.str();
}

void expect_same_stats(pipeline_stats const& a, pipeline_stats const& b, std::string const& at)
{
  EXPECT_EQ(a.records_pushed, b.records_pushed) << at;
  EXPECT_EQ(a.records_aggregated, b.records_aggregated) << at;
  EXPECT_EQ(a.records_late, b.records_late) << at;
  EXPECT_EQ(a.records_rejected, b.records_rejected) << at;
  EXPECT_EQ(a.nan_values, b.nan_values) << at;
  EXPECT_EQ(a.windows_emitted, b.windows_emitted) << at;
  EXPECT_EQ(a.open_windows, b.open_windows) << at;
  EXPECT_EQ(a.open_keys, b.open_keys) << at;
  EXPECT_EQ(a.state_bytes, b.state_bytes) << at;
  EXPECT_EQ(a.watermark, b.watermark) << at;
  EXPECT_EQ(a.has_watermark, b.has_watermark) << at;
  EXPECT_EQ(a.records_scored, b.records_scored) << at;
  EXPECT_EQ(a.records_score_late, b.records_score_late) << at;
  EXPECT_EQ(a.records_score_buffered, b.records_score_buffered) << at;
}

/// Bitwise equality of two tables (NaN equals NaN).
bool same_table(table const& a, table const& b, std::string* why)
{
  if (a.columns.size() != b.columns.size()) {
    *why = "column counts differ";
    return false;
  }
  for (std::size_t c = 0; c < a.columns.size(); ++c) {
    column const& x = a.columns[c];
    column const& y = b.columns[c];
    if (x.name != y.name || x.data.index() != y.data.index() || x.size() != y.size()) {
      *why = "column " + x.name + " differs in name, type or length (" + std::to_string(x.size()) +
             " vs " + std::to_string(y.size()) + ")";
      return false;
    }
    bool const equal = std::visit(
      [&](auto const& xv) {
        using V        = std::decay_t<decltype(xv)>;
        auto const& yv = std::get<V>(y.data);
        return xv.empty() || std::memcmp(xv.data(), yv.data(), xv.size() * sizeof(xv[0])) == 0;
      },
      x.data);
    if (!equal) {
      *why = "column " + x.name + " differs";
      return false;
    }
  }
  return true;
}

void push(pipeline& p, batch const& b)
{
  if (p.options().external_watermark) {
    watermark_steps const steps{b.step_at.data(), b.step_watermark.data(), b.step_position.data(),
                                b.step_at.size()};
    p.push(b.keys.data(), b.ts.data(), b.values.data(), b.size(), b.positions.data(), steps);
  } else {
    p.push(b.keys.data(), b.ts.data(), b.values.data(), b.size());
  }
}

/// What a pipeline gives out: every output table, then its checkpoint and stats.
struct outputs {
  std::vector<table> tables;
  std::string checkpoint;
  pipeline_stats stats;
};

outputs drain(pipeline& p)
{
  outputs o;
  o.tables.push_back(p.poll());
  o.tables.push_back(p.poll_late());
  bool scorers = false, silence = false;
  for (detector_spec const& d : p.options().detectors) {
    (d.kind == detector_kind::silence ? silence : scorers) = true;
  }
  if (scorers) { o.tables.push_back(p.poll_scores()); }
  if (silence) { o.tables.push_back(p.poll_silence()); }
  o.checkpoint = checkpoint_of(p);
  o.stats      = p.stats();
  return o;
}

void expect_same(outputs const& a, outputs const& b, std::string const& at)
{
  ASSERT_EQ(a.tables.size(), b.tables.size()) << at;
  for (std::size_t i = 0; i < a.tables.size(); ++i) {
    std::string why;
    EXPECT_TRUE(same_table(a.tables[i], b.tables[i], &why))
      << at << ": output " << i << ": " << why;
  }
  EXPECT_TRUE(a.checkpoint == b.checkpoint) << at << ": checkpoint bytes differ";
  expect_same_stats(a.stats, b.stats, at);
}

/// The result of running the harness over one configuration.
struct harness_result {
  long allocations = 0;  ///< allocations the failing push makes (k = 1..allocations tried)
  long rejected    = 0;  ///< k for which the push failed (and was rejected)
  long mismatches  = 0;  ///< k for which the pipeline differed from its reference
  std::string first_mismatch;
};

/// Feeds `stream` to a pipeline of `o`, failing allocation k of the push of batch `at`, for every
/// k; compares with the references (batch `at` rejected by validation, or pushed normally).
/// Failures of EXPECT_* inside are recorded unless `quiet` (which only counts mismatches).
harness_result run_harness(pipeline_options const& o, std::vector<batch> const& stream,
                           std::size_t at, bool quiet = false)
{
  harness_result res;
  // Reference outputs right after batch `at` and at the end, both ways.
  batch invalid = stream[at];
  std::fill(invalid.ts.begin(), invalid.ts.end(), std::numeric_limits<std::int64_t>::min());
  auto reference = [&](bool applied, outputs* right_after, outputs* at_end) {
    pipeline p(o);
    for (std::size_t b = 0; b < at; ++b) push(p, stream[b]);
    if (applied) {
      push(p, stream[at]);
    } else {
      EXPECT_THROW(push(p, invalid), invalid_argument);
    }
    *right_after = drain(p);
    if (!applied) { push(p, stream[at]); }  // the caller retries the batch
    for (std::size_t b = at + 1; b < stream.size(); ++b) push(p, stream[b]);
    p.flush();
    *at_end = drain(p);
  };
  outputs applied_now, applied_end, rejected_now, rejected_end;
  reference(true, &applied_now, &applied_end);
  reference(false, &rejected_now, &rejected_end);

  for (long k = 1;; ++k) {
    pipeline p(o);
    for (std::size_t b = 0; b < at; ++b) push(p, stream[b]);
    bool failed = false;
    std::string error;
    alloc_hook::arm(k);
    try {
      push(p, stream[at]);
    } catch (out_of_memory const&) {
      failed = true;
    } catch (std::exception const& e) {
      failed = true;
      error  = std::string(typeid(e).name()) + ": " + e.what();
    }
    alloc_hook::disarm();
    if (!alloc_hook::fired) {
      res.allocations = k - 1;
      break;
    }
    res.rejected += failed ? 1 : 0;
    std::string const label =
      "allocation " + std::to_string(k) + (failed ? " failed the push" : " (push succeeded)");
    int const failures_before =
      ::testing::UnitTest::GetInstance()->current_test_info()->result()->total_part_count();
    bool mismatch = false;
    auto check    = [&](outputs const& got, outputs const& want, std::string const& when) {
      if (quiet) {
        std::string why;
        bool same = got.checkpoint == want.checkpoint && got.tables.size() == want.tables.size();
        for (std::size_t i = 0; same && i < got.tables.size(); ++i)
          same = same_table(got.tables[i], want.tables[i], &why);
        same = same && got.stats.records_rejected == want.stats.records_rejected &&
               got.stats.records_aggregated == want.stats.records_aggregated &&
               got.stats.state_bytes == want.stats.state_bytes;
        if (!same) {
          mismatch = true;
          if (res.first_mismatch.empty())
            res.first_mismatch = label + ", " + when + (why.empty() ? "" : ": " + why);
        }
      } else {
        expect_same(got, want, label + ", " + when);
      }
    };
    if (!error.empty()) {
      mismatch = true;
      if (res.first_mismatch.empty())
        res.first_mismatch = label + ": not out_of_memory but " + error;
      if (!quiet) ADD_FAILURE() << label << ": expected cusense::out_of_memory, got " << error;
    }
    try {
      check(drain(p), failed ? rejected_now : applied_now, "right after the push");
      if (failed) { push(p, stream[at]); }
      for (std::size_t b = at + 1; b < stream.size(); ++b) push(p, stream[b]);
      p.flush();
      check(drain(p), failed ? rejected_end : applied_end, "at the end of the stream");
    } catch (std::exception const& e) {  // a broken pipeline: a later call fails
      mismatch               = true;
      std::string const what = label + ": a later call threw " + typeid(e).name() + ": " + e.what();
      if (res.first_mismatch.empty()) res.first_mismatch = what;
      if (!quiet) ADD_FAILURE() << what;
    }
    int const failures_after =
      ::testing::UnitTest::GetInstance()->current_test_info()->result()->total_part_count();
    if (mismatch || failures_after != failures_before) ++res.mismatches;
    if (!quiet && res.mismatches > 3) {
      ADD_FAILURE() << "stopping after 3 mismatching allocations";
      break;
    }
  }
  return res;
}

// ----- configurations -----------------------------------------------------------------------

pipeline_options base(int channels = 2)
{
  pipeline_options o;
  o.where                = backend::cpu;
  o.cpu_threads          = 1;
  o.max_out_of_orderness = 20;
  o.channels             = channels;
  return o;
}

std::vector<detector_spec> every_detector(std::int64_t silence_timeout = 60)
{
  detector_spec knn  = detector_spec::knn_discord();
  knn.L              = 2;
  knn.H              = 16;
  knn.H2             = 8;
  knn.K              = 4;
  knn.min_candidates = 2;
  detector_spec msz  = detector_spec::multiscale_z();
  msz.min_count      = 3;
  msz.K              = 4;
  detector_spec jz   = detector_spec::joint_z(0, 2);
  jz.min_count       = 3;
  detector_spec mad  = detector_spec::rolling_mad(6);
  mad.channel        = 1;
  return {detector_spec::ewma(0.2),
          detector_spec::rolling_z(5),
          mad,
          knn,
          msz,
          jz,
          detector_spec::silence(silence_timeout)};
}

void expect_all_or_nothing(pipeline_options const& o, unsigned seed, int batches = 7,
                           int per_batch = 60, std::uint32_t churn = 1)
{
  auto stream = make_stream(batches, per_batch, o.channels, o.max_out_of_orderness, seed, churn);
  if (o.external_watermark) { with_external_steps(stream, o.max_out_of_orderness); }
  for (std::size_t at : {std::size_t{0}, std::size_t{3}, stream.size() - 2, stream.size() - 1}) {
    SCOPED_TRACE("failing push of batch " + std::to_string(at));
    harness_result const r = run_harness(o, stream, at);
    std::printf("[ batch %zu ] %ld allocations, %ld failed pushes\n", at, r.allocations,
                r.rejected);
    if (at == 0) {  // a first push allocates (a later one may find room everywhere)
      EXPECT_GT(r.allocations, 0);
      EXPECT_GT(r.rejected, 0);
    }
    EXPECT_EQ(r.mismatches, 0) << r.first_mismatch;
  }
}

TEST(push_oom, DetectorsOnly)
{
  pipeline_options o = base();
  o.windowed         = false;
  o.detectors        = every_detector();
  expect_all_or_nothing(o, 1);
}

TEST(push_oom, DetectorsOnlyOneChannelEwma)
{
  pipeline_options o = base(1);
  o.windowed         = false;
  o.detectors        = {detector_spec::ewma(0.1)};
  expect_all_or_nothing(o, 2);
}

TEST(push_oom, DetectorsWithoutBuffering)
{
  pipeline_options o     = base();
  o.windowed             = false;
  o.max_out_of_orderness = 0;
  o.detectors            = every_detector();
  expect_all_or_nothing(o, 3);
}

TEST(push_oom, DetectorsWithKeyExpiry)
{
  // Keys restart after gaps and expire (every third batch ends with a pause of 8 * ooo), and
  // with much churn the dead slots are compacted during the pushes.
  pipeline_options o = base();
  o.windowed         = false;
  o.detectors        = every_detector(50);
  o.key_ttl = 60;
  expect_all_or_nothing(o, 6);
  expect_all_or_nothing(o, 7, 16, 50, 6);
}

TEST(push_oom, DetectorsWithCapAndBudget)
{
  pipeline_options o    = base();
  o.windowed            = false;
  o.detectors           = every_detector(50);
  o.key_ttl    = 60;
  o.max_detector_keys   = 1000;
  o.memory_budget_bytes = 10'000'000;
  expect_all_or_nothing(o, 8, 10, 60, 4);
}

TEST(push_oom, DetectorsWithExternalWatermark)
{
  pipeline_options o   = base();
  o.windowed           = false;
  o.detectors          = every_detector(50);
  o.key_ttl   = 60;
  o.external_watermark = true;
  expect_all_or_nothing(o, 9, 10, 60, 3);
}

TEST(push_oom, TumblingWindowAndDetectors)
{
  pipeline_options o  = base();
  o.window            = window_spec::tumbling(50);
  o.aggs              = {agg::count, agg::mean, agg::max};
  o.detectors         = every_detector();
  expect_all_or_nothing(o, 4);
}

TEST(push_oom, DetectorsCheckpointedAndRestored)
{
  // A restored pipeline (its containers freshly sized) behaves the same.
  pipeline_options o = base();
  o.windowed         = false;
  o.detectors        = every_detector();
  auto const stream  = make_stream(6, 50, o.channels, o.max_out_of_orderness, 5);
  pipeline p(o);
  for (std::size_t b = 0; b < 3; ++b) push(p, stream[b]);
  std::istringstream in(checkpoint_of(p));
  pipeline r = pipeline::restore(in, backend::cpu);
  for (long k = 1;; ++k) {
    std::istringstream again(checkpoint_of(r));
    pipeline q = pipeline::restore(again, backend::cpu);
    alloc_hook::arm(k);
    bool failed = false;
    try {
      push(q, stream[3]);
    } catch (out_of_memory const&) {
      failed = true;
    }
    alloc_hook::disarm();
    if (!alloc_hook::fired) break;
    std::istringstream fresh(checkpoint_of(r));
    pipeline want = pipeline::restore(fresh, backend::cpu);
    if (failed) {
      batch invalid = stream[3];
      std::fill(invalid.ts.begin(), invalid.ts.end(), std::numeric_limits<std::int64_t>::min());
      EXPECT_THROW(push(want, invalid), invalid_argument);
    } else {
      push(want, stream[3]);
    }
    expect_same(drain(q), drain(want), "restored, allocation " + std::to_string(k));
  }
}

// ----- window engines without detectors ------------------------------------------------------
//
// The same harness over each window kind alone, one test per configuration;
// WindowEnginesReport runs every kind without failing and prints how many allocations of the
// push leave the pipeline different from its reference.

struct window_case {
  char const* name;
  pipeline_options options;
};

std::vector<window_case> window_cases()
{
  auto with = [](window_spec w, std::vector<agg> aggs, std::int64_t lateness = 0) {
    pipeline_options o = base();
    o.window           = w;
    o.aggs             = std::move(aggs);
    o.allowed_lateness = lateness;
    return o;
  };
  std::vector<window_case> cases;
  cases.push_back(
    {"tumbling_moments", with(window_spec::tumbling(50), {agg::count, agg::mean, agg::max})});
  cases.push_back(
    {"tumbling_order_aggs", with(window_spec::tumbling(50), {agg::count, agg::first, agg::last})});
  cases.push_back(
    {"tumbling_lateness", with(window_spec::tumbling(50), {agg::count, agg::mean}, 40)});
  {
    pipeline_options q = with(window_spec::tumbling(50), {agg::count, agg::quantile});
    q.quantiles        = {0.5};
    cases.push_back({"tumbling_quantile", q});
  }
  cases.push_back(
    {"sliding", with(window_spec::sliding(100, 25), {agg::count, agg::mean, agg::min})});
  cases.push_back({"session", with(window_spec::session(15), {agg::count, agg::mean, agg::last})});
  {
    // Sessions re-emitted as updates and kept for lateness; sketches in the accumulators.
    pipeline_options q = with(window_spec::session(15), {agg::count, agg::quantile}, 40);
    q.quantiles        = {0.5};
    cases.push_back({"session_lateness", q});
  }
  cases.push_back({"rolling", with(window_spec::rolling(5), {agg::count, agg::mean, agg::max})});
  {
    // The one-channel row path (rows computed four at a time).
    pipeline_options one = with(window_spec::rolling(5), {agg::count, agg::mean});
    one.channels         = 1;
    cases.push_back({"rolling_one_channel", one});
  }
  // Long windows (two-stack folds; blocks fill on the longer streams), sketches, key expiry.
  cases.push_back(
    {"rolling_two_stack", with(window_spec::rolling(130), {agg::count, agg::mean, agg::first})});
  {
    pipeline_options q = with(window_spec::rolling(5), {agg::count, agg::quantile});
    q.quantiles        = {0.5};
    cases.push_back({"rolling_quantile", q});
  }
  {
    pipeline_options ttl = with(window_spec::rolling(5), {agg::count, agg::mean});
    ttl.key_ttl          = 30;
    cases.push_back({"rolling_key_ttl", ttl});
  }
  return cases;
}

TEST(push_oom_windows, WindowEnginesReport)
{
  // Informational: runs every kind quietly and prints which keep part of a failed batch.
  for (window_case const& c : window_cases()) {
    auto const stream = make_stream(6, 60, c.options.channels, c.options.max_out_of_orderness, 11);
    harness_result const r = run_harness(c.options, stream, 3, /*quiet=*/true);
    std::printf("[ window %-20s ] %ld allocations, %ld rejected, %ld mismatching%s%s\n", c.name,
                r.allocations, r.rejected, r.mismatches,
                r.first_mismatch.empty() ? "" : ": first at ", r.first_mismatch.c_str());
  }
}

void expect_window_case(char const* name)
{
  for (window_case const& c : window_cases()) {
    if (std::string(c.name) == name) {
      auto const stream =
        make_stream(6, 60, c.options.channels, c.options.max_out_of_orderness, 11);
      harness_result const r = run_harness(c.options, stream, 3);
      EXPECT_EQ(r.mismatches, 0) << r.first_mismatch;
      // Many keys joining and leaving (the key tables grow and drop keys during a push), the
      // first and last batches failing, two threads, and a watermark kept outside.
      expect_all_or_nothing(c.options, 21, 10, 80, 6);
      pipeline_options threads = c.options;
      threads.cpu_threads      = 2;
      expect_all_or_nothing(threads, 22, 8, 300, 4);
      pipeline_options external   = c.options;
      external.external_watermark = true;
      expect_all_or_nothing(external, 23, 8, 60, 3);
      return;
    }
  }
  FAIL() << "no window case " << name;
}

TEST(push_oom_windows, TumblingMoments) { expect_window_case("tumbling_moments"); }
TEST(push_oom_windows, TumblingOrderAggs) { expect_window_case("tumbling_order_aggs"); }
TEST(push_oom_windows, TumblingLateness) { expect_window_case("tumbling_lateness"); }
TEST(push_oom_windows, TumblingQuantile) { expect_window_case("tumbling_quantile"); }
TEST(push_oom_windows, Sliding) { expect_window_case("sliding"); }
TEST(push_oom_windows, Session) { expect_window_case("session"); }
TEST(push_oom_windows, SessionLateness) { expect_window_case("session_lateness"); }
TEST(push_oom_windows, Rolling) { expect_window_case("rolling"); }
TEST(push_oom_windows, RollingOneChannel) { expect_window_case("rolling_one_channel"); }
TEST(push_oom_windows, RollingTwoStack) { expect_window_case("rolling_two_stack"); }
TEST(push_oom_windows, RollingQuantile) { expect_window_case("rolling_quantile"); }
TEST(push_oom_windows, RollingKeyTtl) { expect_window_case("rolling_key_ttl"); }

}  // namespace
}  // namespace cusense
