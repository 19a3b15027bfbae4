// Checkpoint and restore: a run checkpointed at random points and resumed from each checkpoint
// gives exactly the outputs and stats of an uninterrupted run, for every window type and the
// detectors, on each backend and across backends; damaged files are rejected clearly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <streambuf>
#include <string>
#include <vector>

#include <cusense/backend.hpp>
#include <cusense/cusense.hpp>
#include <cusense/detail/engine_registry.hpp>

#include "backend_fixture.hpp"

namespace cusense {
namespace {

struct stream {
  std::vector<std::uint32_t> keys;
  std::vector<std::int64_t> ts;
  std::vector<double> values;  // n * channels
  std::vector<std::size_t> cuts;  // batch boundaries, from 0 to n
};

stream make_stream(std::uint32_t seed, std::size_t n, int channels)
{
  std::mt19937_64 rng(seed);
  stream s;
  std::uniform_int_distribution<std::uint32_t> key(0, 7);
  std::uniform_int_distribution<std::int64_t> jitter(-60, 0);
  std::normal_distribution<double> value(10.0, 3.0);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (std::size_t i = 0; i < n; ++i) {
    // key 9 falls silent after the first third (silence detector)
    s.keys.push_back(i < n / 3 && i % 7 == 0 ? 9u : key(rng));
    std::int64_t const t = 1000 + static_cast<std::int64_t>(i) * 3 + jitter(rng);
    s.ts.push_back(u(rng) < 0.04 ? t - 250 : t);  // some records arrive late
    for (int c = 0; c < channels; ++c) {
      double v = value(rng);
      if (u(rng) < 0.03) { v = std::numeric_limits<double>::quiet_NaN(); }
      if (u(rng) < 0.01) { v += 60.0; }  // spikes for the detectors
      s.values.push_back(v);
    }
  }
  s.cuts.push_back(0);
  std::uniform_int_distribution<std::size_t> len(1, 40);
  while (s.cuts.back() < n) s.cuts.push_back(std::min(n, s.cuts.back() + len(rng)));
  return s;
}

/// Everything a run emits, concatenated over its polls, and its final stats.
struct outputs {
  table windows, late, scores, silence;
  pipeline_stats stats;
};

void poll_all(pipeline& p, outputs& o)
{
  auto add = [](table& into, table&& t) {
    if (!t.columns.empty()) { into.append(std::move(t)); }
  };
  if (p.options().windowed) {
    add(o.windows, p.poll());
    add(o.late, p.poll_late());
  }
  bool scorers = false, silence = false;
  for (auto const& d : p.options().detectors) {
    (d.kind == detector_kind::silence ? silence : scorers) = true;
  }
  if (scorers) { add(o.scores, p.poll_scores()); }
  if (silence) { add(o.silence, p.poll_silence()); }
}

/// Runs the stream; at batch indices in `restore_at` the pipeline is checkpointed (through
/// `save`) and replaced by the restored one (through `load`). Polls every third batch so that
/// checkpoints also carry outputs not yet polled.
outputs run(pipeline_options const& opt, stream const& s, std::vector<std::size_t> const& restore_at,
            std::function<pipeline(pipeline&)> const& checkpoint_and_restore)
{
  pipeline p(opt);
  outputs o;
  int const ch = opt.channels;
  for (std::size_t b = 0; b + 1 < s.cuts.size(); ++b) {
    if (std::find(restore_at.begin(), restore_at.end(), b) != restore_at.end()) {
      pipeline next = checkpoint_and_restore(p);
      p             = std::move(next);
    }
    std::size_t const lo = s.cuts[b], hi = s.cuts[b + 1];
    p.push(s.keys.data() + lo, s.ts.data() + lo, s.values.data() + lo * ch, hi - lo);
    if (b % 3 == 2) { poll_all(p, o); }
  }
  if (opt.windowed) {
    table t = p.flush();
    if (!t.columns.empty()) { o.windows.append(std::move(t)); }
  } else {
    // detectors only: flush releases the buffered records
    p.flush();
  }
  poll_all(p, o);
  o.stats = p.stats();
  return o;
}

bool same_double(double a, double b, double tol)
{
  if (std::isnan(a) || std::isnan(b)) { return std::isnan(a) && std::isnan(b); }
  if (tol == 0.0) { return std::memcmp(&a, &b, sizeof a) == 0 || a == b; }
  return std::fabs(a - b) <= tol * std::max(1.0, std::fabs(a));
}

void expect_same_table(table const& a, table const& b, double tol, char const* what)
{
  ASSERT_EQ(a.columns.size(), b.columns.size()) << what;
  for (std::size_t i = 0; i < a.columns.size(); ++i) {
    column const& x = a.columns[i];
    column const& y = b.columns[i];
    ASSERT_EQ(x.name, y.name) << what;
    ASSERT_EQ(x.data.index(), y.data.index()) << what << " " << x.name;
    ASSERT_EQ(x.size(), y.size()) << what << " " << x.name;
    if (auto const* v = std::get_if<std::vector<double>>(&x.data)) {
      auto const& w = std::get<std::vector<double>>(y.data);
      for (std::size_t r = 0; r < v->size(); ++r) {
        ASSERT_TRUE(same_double((*v)[r], w[r], tol))
          << what << " column " << x.name << " row " << r << ": " << (*v)[r] << " vs " << w[r];
      }
    } else {
      EXPECT_TRUE(x.data == y.data) << what << " column " << x.name;
    }
  }
}

void expect_same(outputs const& a, outputs const& b, double tol = 0.0)
{
  expect_same_table(a.windows, b.windows, tol, "windows");
  expect_same_table(a.late, b.late, tol, "late");
  expect_same_table(a.scores, b.scores, tol, "scores");
  expect_same_table(a.silence, b.silence, tol, "silence");
  pipeline_stats const& x = a.stats;
  pipeline_stats const& y = b.stats;
  EXPECT_EQ(x.records_pushed, y.records_pushed);
  EXPECT_EQ(x.records_aggregated, y.records_aggregated);
  EXPECT_EQ(x.records_late, y.records_late);
  EXPECT_EQ(x.records_rejected, y.records_rejected);
  EXPECT_EQ(x.nan_values, y.nan_values);
  EXPECT_EQ(x.windows_emitted, y.windows_emitted);
  EXPECT_EQ(x.open_windows, y.open_windows);
  EXPECT_EQ(x.watermark, y.watermark);
  EXPECT_EQ(x.has_watermark, y.has_watermark);
  EXPECT_EQ(x.records_scored, y.records_scored);
  EXPECT_EQ(x.records_score_late, y.records_score_late);
  EXPECT_EQ(x.records_score_buffered, y.records_score_buffered);
}

struct config {
  char const* name;
  pipeline_options options;
};

std::vector<config> configs()
{
  std::vector<config> out;
  auto base = [] {
    pipeline_options o;
    o.max_out_of_orderness = 30;
    o.cpu_threads          = 2;
    return o;
  };
  {
    pipeline_options o = base();
    o.window           = window_spec::tumbling(100, 7);
    o.channels         = 2;
    out.push_back({"tumbling_moments", o});
  }
  {
    pipeline_options o = base();
    o.window           = window_spec::tumbling(100);
    o.aggs.clear();
    for (char const* a : {"count", "mean", "first", "last", "argmax_ts", "p50", "p90"}) o.add_agg(a);
    o.allowed_lateness = 50;
    out.push_back({"tumbling_lateness_quantiles", o});
  }
  {
    pipeline_options o = base();
    o.window           = window_spec::sliding(100, 25);
    o.aggs.clear();
    for (char const* a : {"count", "sum", "std", "first", "last", "argmin_ts", "p99"}) o.add_agg(a);
    out.push_back({"sliding", o});
  }
  {
    pipeline_options o = base();
    o.window           = window_spec::session(12);
    o.aggs.clear();
    for (char const* a : {"count", "mean", "first", "last", "p50"}) o.add_agg(a);
    o.allowed_lateness = 30;
    out.push_back({"session_lateness", o});
  }
  {
    pipeline_options o = base();
    o.window           = window_spec::rolling(5, 2);
    o.aggs.clear();
    for (char const* a : {"count", "mean", "max", "first", "last", "p50"}) o.add_agg(a);
    out.push_back({"rolling", o});
  }
  {
    pipeline_options o = base();  // runs on the CUDA backend too (no quantiles)
    o.window           = window_spec::rolling(4, 1);
    o.channels         = 2;
    o.aggs.clear();
    for (char const* a : {"count", "sum", "std", "last", "argmin_ts"}) o.add_agg(a);
    out.push_back({"rolling_no_quantiles", o});
  }
  {
    pipeline_options o = base();
    o.windowed         = false;
    detector_spec knn  = detector_spec::knn_discord();
    knn.L = 3, knn.H = 40, knn.min_candidates = 5, knn.H2 = 20, knn.K = 5;
    o.detectors = {detector_spec::ewma(0.1), detector_spec::rolling_z(10), detector_spec::rolling_mad(10),
                   knn, detector_spec::silence(60)};
    out.push_back({"detectors", o});
  }
  {
    pipeline_options o = base();
    o.window           = window_spec::tumbling(50);
    o.channels         = 2;
    detector_spec e    = detector_spec::ewma(0.2);
    e.channel          = 1;
    o.detectors        = {e, detector_spec::silence(80)};
    out.push_back({"tumbling_with_detectors", o});
  }
  return out;
}

pipeline via_stream(pipeline& p, backend to)
{
  std::stringstream buf;
  p.checkpoint(buf);
  buf.seekg(0);
  return pipeline::restore(buf, to);
}

template <typename Backend>
class checkpoint_test : public test::backend_test<Backend> {};
TYPED_TEST_SUITE(checkpoint_test, test::backends, test::backend_names);

TYPED_TEST(checkpoint_test, RestoreAtRandomPointsEqualsUninterruptedRun)
{
  backend const where = TestFixture::where;
  for (config c : configs()) {
    SCOPED_TRACE(c.name);
    c.options.where = where;
    if (where == backend::cuda && c.options.windowed && !detail::engine_supports(c.options, backend::cuda)) {
      continue;
    }
    for (std::uint32_t seed : {1u, 2u, 3u}) {
      stream const s = make_stream(seed, 1500, c.options.channels);
      outputs const want = run(c.options, s, {}, nullptr);
      // the stream exercises every output: late records, windows, scores and silence events
      if (c.options.windowed) {
        EXPECT_GT(want.windows.num_rows(), 0u);
        EXPECT_GT(want.late.num_rows(), 0u);
      }
      if (!c.options.detectors.empty()) {
        EXPECT_GT(want.scores.num_rows(), 0u);
        EXPECT_GT(want.silence.num_rows(), 0u);
        EXPECT_GT(want.stats.records_score_late, 0u);
      }
      std::mt19937 rng(seed);
      std::uniform_int_distribution<std::size_t> at(0, s.cuts.size() - 2);
      std::vector<std::size_t> points = {at(rng), at(rng), at(rng), 0};
      outputs const got = run(c.options, s, points, [&](pipeline& p) { return via_stream(p, where); });
      expect_same(want, got);
    }
  }
}

// The pipeline a checkpoint was taken from goes on exactly as if nothing happened.
TYPED_TEST(checkpoint_test, CheckpointLeavesThePipelineUnchanged)
{
  backend const where = TestFixture::where;
  for (config c : configs()) {
    SCOPED_TRACE(c.name);
    c.options.where = where;
    if (where == backend::cuda && c.options.windowed && !detail::engine_supports(c.options, backend::cuda)) {
      continue;
    }
    stream const s = make_stream(11, 800, c.options.channels);
    outputs const want = run(c.options, s, {}, nullptr);
    outputs const got  = run(c.options, s, {5, 17, 30}, [&](pipeline& p) {
      std::stringstream sink;
      p.checkpoint(sink);
      return std::move(p);
    });
    expect_same(want, got);
  }
}

// A checkpoint from this backend restores on the other one (when both are usable).
TYPED_TEST(checkpoint_test, CrossBackend)
{
  backend const where = TestFixture::where;
  if (!cuda_built() || !cuda_available()) { GTEST_SKIP() << "needs the CUDA backend and a device"; }
  backend const other = where == backend::cpu ? backend::cuda : backend::cpu;
  for (config c : configs()) {
    SCOPED_TRACE(c.name);
    c.options.where = where;
    if (c.options.windowed && !detail::engine_supports(c.options, backend::cuda)) { continue; }
    stream const s = make_stream(5, 1200, c.options.channels);
    outputs const want = run(c.options, s, {}, nullptr);
    // there and back: the second restore returns to this backend
    outputs const got = run(c.options, s, {9, 40}, [&, n = 0](pipeline& p) mutable {
      return via_stream(p, n++ % 2 == 0 ? other : where);
    });
    // sums and moments agree to rounding across backends
    expect_same(want, got, 1e-9);
  }
}

class checkpoint_file : public ::testing::Test {
 protected:
  void SetUp() override
  {
    dir_ = std::filesystem::temp_directory_path() /
           ("cusense-ckpt-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static pipeline_options options()
  {
    pipeline_options o;
    o.window               = window_spec::tumbling(100);
    o.max_out_of_orderness = 20;
    o.where                = backend::cpu;
    o.detectors            = {detector_spec::ewma()};
    return o;
  }
  static void feed(pipeline& p, std::int64_t from, std::int64_t to)
  {
    std::vector<std::uint32_t> k;
    std::vector<std::int64_t> t;
    std::vector<double> v;
    for (std::int64_t i = from; i < to; ++i) {
      k.push_back(static_cast<std::uint32_t>(i % 5));
      t.push_back(i * 7);
      v.push_back(static_cast<double>(i % 13));
    }
    p.push(k.data(), t.data(), v.data(), k.size());
  }
  std::string path(char const* name) const { return (dir_ / name).string(); }
  static std::string read(std::string const& p)
  {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  static void write(std::string const& p, std::string const& bytes)
  {
    std::ofstream(p, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  static std::string error_of(std::string const& p)
  {
    try {
      pipeline::restore(p, backend::cpu);
    } catch (checkpoint_error const& e) {
      return e.what();
    }
    return "no error";
  }

  std::filesystem::path dir_;
};

TEST_F(checkpoint_file, PathRoundTripKeepsOptionsAndState)
{
  pipeline p(options());
  feed(p, 0, 300);
  p.checkpoint(path("a.ckpt"));
  pipeline q = pipeline::restore(path("a.ckpt"), backend::cpu);
  EXPECT_EQ(q.options().window.size, 100);
  EXPECT_EQ(q.options().detectors.size(), 1u);
  feed(p, 300, 500);
  feed(q, 300, 500);
  outputs a, b;
  a.windows = p.flush();
  b.windows = q.flush();
  poll_all(p, a);
  poll_all(q, b);
  a.stats = p.stats();
  b.stats = q.stats();
  expect_same(a, b);
  // no temporary file is left behind
  std::size_t files = 0;
  for (auto const& e : std::filesystem::directory_iterator(dir_)) files += e.is_regular_file();
  EXPECT_EQ(files, 1u);
}

TEST_F(checkpoint_file, DamagedFilesAreRejectedClearly)
{
  pipeline p(options());
  feed(p, 0, 300);
  p.checkpoint(path("good.ckpt"));
  std::string const good = read(path("good.ckpt"));
  ASSERT_GT(good.size(), 40u);

  write(path("empty"), "");
  EXPECT_NE(error_of(path("empty")).find("empty"), std::string::npos) << error_of(path("empty"));

  write(path("short"), good.substr(0, good.size() - 10));
  EXPECT_NE(error_of(path("short")).find("truncated"), std::string::npos) << error_of(path("short"));
  write(path("tiny"), good.substr(0, 10));
  EXPECT_NE(error_of(path("tiny")).find("truncated"), std::string::npos) << error_of(path("tiny"));

  std::string flipped = good;
  flipped[flipped.size() / 2] ^= 0x10;
  write(path("flipped"), flipped);
  EXPECT_NE(error_of(path("flipped")).find("checksum"), std::string::npos) << error_of(path("flipped"));

  std::string version = good;
  version[8] = 99;
  write(path("version"), version);
  EXPECT_NE(error_of(path("version")).find("version 99"), std::string::npos) << error_of(path("version"));

  std::string magic = good;
  magic[0] = 'X';
  write(path("magic"), magic);
  EXPECT_NE(error_of(path("magic")).find("not a cusense checkpoint"), std::string::npos);

  EXPECT_NE(error_of(path("missing")).find("cannot open"), std::string::npos);
  // every error is an invalid_argument (Python: ValueError)
  EXPECT_THROW(pipeline::restore(path("flipped")), invalid_argument);
}

// A stream that fails after `limit` bytes, as a full disk or a crash mid-write would.
class failing_buf : public std::streambuf {
 public:
  explicit failing_buf(std::size_t limit) : limit_(limit) {}

 protected:
  int_type overflow(int_type c) override
  {
    if (written_ >= limit_) { return traits_type::eof(); }
    ++written_;
    return c;
  }
  std::streamsize xsputn(char const*, std::streamsize n) override
  {
    std::streamsize const k = std::min<std::streamsize>(n, static_cast<std::streamsize>(limit_ - written_));
    written_ += static_cast<std::size_t>(k);
    return k;
  }

 private:
  std::size_t limit_, written_ = 0;
};

TEST_F(checkpoint_file, FailedWriteLeavesThePreviousCheckpoint)
{
  pipeline p(options());
  feed(p, 0, 200);
  p.checkpoint(path("c.ckpt"));
  std::string const before = read(path("c.ckpt"));
  feed(p, 200, 400);

  failing_buf buf(100);
  std::ostream out(&buf);
  EXPECT_THROW(p.checkpoint(out), checkpoint_error);

  // A writer killed mid-write leaves only a partial temporary file next to the checkpoint.
  std::string const partial = read(path("c.ckpt")).substr(0, 50);
  write(path(".c.ckpt.tmp-12345"), partial);
  EXPECT_EQ(read(path("c.ckpt")), before);
  EXPECT_NO_THROW(pipeline::restore(path("c.ckpt")));

  // A checkpoint into a directory that does not exist fails and changes nothing.
  EXPECT_THROW(p.checkpoint(path("no/such/dir/c.ckpt")), checkpoint_error);
  // The pipeline stays usable and a later checkpoint replaces the file atomically.
  p.checkpoint(path("c.ckpt"));
  EXPECT_NE(read(path("c.ckpt")), before);
  EXPECT_NO_THROW(pipeline::restore(path("c.ckpt")));
}

TEST_F(checkpoint_file, RefusedOnCudaLeavesThePipelineUnchanged)
{
  if (!cuda_built() || !cuda_available()) { GTEST_SKIP() << "needs the CUDA backend and a device"; }
  pipeline_options o = options();
  o.where            = backend::cuda;
  o.window           = window_spec::sliding(100, 50);
  o.detectors.clear();
  pipeline tried(o), untouched(o);
  feed(tried, 0, 300);
  feed(untouched, 0, 300);
  outputs a, b;
  poll_all(tried, a);  // some windows polled before, some held across the refused checkpoint
  poll_all(untouched, b);
  feed(tried, 300, 320);
  feed(untouched, 300, 320);
  try {
    tried.checkpoint(path("s.ckpt"));
    FAIL() << "sliding windows are not checkpointed on the CUDA backend";
  } catch (checkpoint_error const& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA backend"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(path("s.ckpt")));
  feed(tried, 320, 500);
  feed(untouched, 320, 500);
  for (auto [p, o] : {std::pair{&tried, &a}, std::pair{&untouched, &b}}) {
    if (table t = p->flush(); !t.columns.empty()) { o->windows.append(std::move(t)); }
    poll_all(*p, *o);
  }
  a.stats = tried.stats();
  b.stats = untouched.stats();
  expect_same(a, b, 1e-12);
}

}  // namespace
}  // namespace cusense
