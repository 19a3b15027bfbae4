// Reliability under concurrency and failures: checkpoints written from several threads and
// pipelines to one path, temporary files left by killed writers, failed writes (disk full,
// read-only file system), checkpoints whose options were edited, option ranges, and stats()
// read while another thread pushes.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <utime.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <cusense/cusense.hpp>
#include <cusense/detail/checkpoint.hpp>

#include "backend_fixture.hpp"

namespace cusense {
namespace {

namespace fs = std::filesystem;

pipeline_options options()
{
  pipeline_options o;
  o.window               = window_spec::tumbling(1000);
  o.max_out_of_orderness = 500;
  o.where                = backend::cpu;
  o.cpu_threads          = 2;
  return o;
}

class reliability : public ::testing::Test {
 protected:
  void SetUp() override
  {
    dir_ = fs::temp_directory_path() /
           ("cusense-rel-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override
  {
    detail::fail_checkpoint_writes_for_testing(0);
    fs::remove_all(dir_);
  }

  // Records [from, to): 2000 keys, so a checkpoint is large enough for writes to overlap.
  static void feed(pipeline& p, std::int64_t from, std::int64_t to)
  {
    std::vector<std::uint32_t> k;
    std::vector<std::int64_t> t;
    std::vector<double> v;
    for (std::int64_t i = from; i < to; ++i) {
      k.push_back(static_cast<std::uint32_t>(i % 2000));
      t.push_back(i / 10);
      v.push_back(static_cast<double>(i % 13));
    }
    p.push(k.data(), t.data(), v.data(), k.size());
  }
  std::string path(std::string const& name) const { return (dir_ / name).string(); }
  static std::string read(std::string const& p)
  {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  static void write(std::string const& p, std::string const& bytes)
  {
    std::ofstream(p, std::ios::binary | std::ios::trunc)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  std::vector<std::string> files() const
  {
    std::vector<std::string> names;
    for (auto const& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
  // A process id that no process has: a child that has exited and been reaped.
  static pid_t dead_pid()
  {
    pid_t const child = ::fork();
    if (child == 0) { ::_exit(0); }
    int status = 0;
    ::waitpid(child, &status, 0);
    return child;
  }

  fs::path dir_;
};

// Threads checkpointing one pipeline to one path: of overlapping calls all but one are refused
// with concurrent_use (never a file error), and the file is always a whole checkpoint. A small
// state keeps each write short, so that the threads overlap inside the writes.
TEST_F(reliability, ThreadsCheckpointingOnePipeline)
{
  pipeline p(options());
  feed(p, 0, 100);
  std::string const file = path("one.ckpt");
  std::atomic<int> written{0}, refused{0};
  std::vector<std::string> other_errors;
  std::mutex errors_mutex;
  auto writer = [&] {
    for (int i = 0; i < 300; ++i) {
      try {
        p.checkpoint(file);
        ++written;
      } catch (concurrent_use const&) {
        ++refused;
      } catch (std::exception const& e) {
        std::lock_guard<std::mutex> lock(errors_mutex);
        other_errors.push_back(e.what());
      }
      std::error_code ec;
      if (fs::file_size(file, ec) == 0) {
        std::lock_guard<std::mutex> lock(errors_mutex);
        other_errors.push_back("an empty file at the path");
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back(writer);
  for (auto& t : threads) t.join();
  EXPECT_TRUE(other_errors.empty()) << other_errors.size() << " errors, first: " << other_errors[0];
  EXPECT_GT(written.load(), 0);
  EXPECT_EQ(written + refused, 1200);
  pipeline q = pipeline::restore(file, backend::cpu);
  EXPECT_EQ(q.stats().records_aggregated, p.stats().records_aggregated);
  EXPECT_EQ(files(), std::vector<std::string>{"one.ckpt"});  // no temporary file left
}

// Two pipelines checkpointing to one path at once (and a reader restoring it meanwhile): no
// error, and every restore reads a whole checkpoint of one of them.
TEST_F(reliability, TwoPipelinesCheckpointingOnePath)
{
  pipeline p(options()), q(options());
  feed(p, 0, 300);
  feed(q, 0, 200);
  std::string const file = path("shared.ckpt");
  p.checkpoint(file);
  std::atomic<bool> done{false};
  std::vector<std::string> errors;
  std::mutex errors_mutex;
  auto note = [&](std::string const& e) {
    std::lock_guard<std::mutex> lock(errors_mutex);
    errors.push_back(e);
  };
  auto writer = [&](pipeline& w) {
    for (int i = 0; i < 200; ++i) {
      try {
        w.checkpoint(file);
      } catch (std::exception const& e) {
        note(std::string("checkpoint: ") + e.what());
      }
    }
  };
  std::thread reader([&] {
    std::uint64_t const a = p.stats().records_pushed, b = q.stats().records_pushed;
    while (!done) {
      try {
        std::uint64_t const got = pipeline::restore(file, backend::cpu).stats().records_pushed;
        if (got != a && got != b) { note("restored a pipeline of " + std::to_string(got) + " records"); }
      } catch (std::exception const& e) {
        note(std::string("restore: ") + e.what());
      }
    }
  });
  std::thread wp([&] { writer(p); }), wq([&] { writer(q); });
  wp.join();
  wq.join();
  done = true;
  reader.join();
  EXPECT_TRUE(errors.empty()) << errors.size() << " errors, first: " << errors[0];
  EXPECT_EQ(files(), std::vector<std::string>{"shared.ckpt"});
}

// Temporary files left by killed writers are removed by the next checkpoint or restore of that
// path; those of live writers, of other paths and files of other names stay.
TEST_F(reliability, StaleTemporaryFilesAreRemoved)
{
  pipeline p(options());
  feed(p, 0, 1000);
  std::string const dead = std::to_string(dead_pid());
  std::string const self = std::to_string(::getpid());
  std::string const parent = std::to_string(::getppid());  // alive
  write(path(".c.ckpt.tmp-" + dead + "-3-0badf00d"), "partial");
  write(path(".c.ckpt.tmp-" + dead), "partial, older naming");
  write(path(".c.ckpt.tmp-" + self + "-7-00000001"), "this process, recent: maybe being written");
  write(path(".c.ckpt.tmp-" + parent + "-1-00000002"), "a live process, recent");
  write(path(".c.ckpt.tmp-" + self + "-8-00000003"), "this process, untouched for an hour");
  struct utimbuf const hour_ago{::time(nullptr) - 3600, ::time(nullptr) - 3600};
  ASSERT_EQ(::utime(path(".c.ckpt.tmp-" + self + "-8-00000003").c_str(), &hour_ago), 0);
  write(path(".d.ckpt.tmp-" + dead + "-1-00000004"), "another checkpoint's");
  write(path(".c.ckpt.tmp-notmine"), "not a name the library writes");

  p.checkpoint(path("c.ckpt"));
  std::vector<std::string> const want = {".c.ckpt.tmp-" + parent + "-1-00000002",
                                         ".c.ckpt.tmp-" + self + "-7-00000001",
                                         ".c.ckpt.tmp-notmine",
                                         ".d.ckpt.tmp-" + dead + "-1-00000004",
                                         "c.ckpt"};
  std::vector<std::string> sorted_want = want;
  std::sort(sorted_want.begin(), sorted_want.end());
  EXPECT_EQ(files(), sorted_want);

  // restore cleans up too
  write(path(".c.ckpt.tmp-" + dead + "-9-0000000a"), "partial");
  (void)pipeline::restore(path("c.ckpt"), backend::cpu);
  EXPECT_EQ(files(), sorted_want);
}

// A write that fails (disk full, read-only file system) names the path and the cause, leaves
// the previous checkpoint and no temporary file, and the pipeline goes on.
TEST_F(reliability, FailedWritesLeaveThePreviousCheckpoint)
{
  pipeline p(options());
  feed(p, 0, 5000);
  std::string const file = path("full.ckpt");
  p.checkpoint(file);
  std::string const before = read(file);
  feed(p, 5000, 9000);
  for (auto [err, after] : {std::pair{ENOSPC, std::size_t{1000}}, std::pair{ENOSPC, std::size_t{0}},
                            std::pair{EROFS, std::size_t{10}}}) {
    detail::fail_checkpoint_writes_for_testing(err, after);
    try {
      p.checkpoint(file);
      ADD_FAILURE() << "the injected failure did not fail the checkpoint";
    } catch (checkpoint_error const& e) {
      std::string const what = e.what();
      EXPECT_NE(what.find(file), std::string::npos) << what;
      EXPECT_NE(what.find(std::strerror(err)), std::string::npos) << what;
    }
    EXPECT_EQ(read(file), before);
    EXPECT_EQ(files(), std::vector<std::string>{"full.ckpt"});
  }
  detail::fail_checkpoint_writes_for_testing(0);
  // usable: pushes, and a checkpoint that now succeeds and restores to the same state
  feed(p, 9000, 12000);
  p.checkpoint(file);
  pipeline q = pipeline::restore(file, backend::cpu);
  table a = p.flush(), b = q.flush();
  EXPECT_EQ(a.num_rows(), b.num_rows());
  EXPECT_EQ(p.stats().records_aggregated, q.stats().records_aggregated);
}

// The payload of a checkpoint file and a file of it with a correct checksum again.
std::string payload_of(std::string const& file)
{
  return detail::unframe_checkpoint(file);
}

std::string with_version(std::string file, std::uint32_t version)
{
  for (int i = 0; i < 4; ++i) file[8 + i] = static_cast<char>((version >> (8 * i)) & 0xffu);
  std::uint32_t const crc = detail::crc32(file.data(), file.size() - 4);
  for (int i = 0; i < 4; ++i) file[file.size() - 4 + i] = static_cast<char>((crc >> (8 * i)) & 0xffu);
  return file;
}

void put_i64(std::string& s, std::size_t at, std::int64_t v)
{
  for (int i = 0; i < 8; ++i) s[at + i] = static_cast<char>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xffu);
}

// Options edited by hand (the checksum recomputed) are checked like the constructor's: values
// it would refuse are refused with checkpoint_error naming the option.
TEST_F(reliability, EditedOptionsAreValidated)
{
  pipeline p(options());
  feed(p, 0, 3000);
  p.checkpoint(path("good.ckpt"));
  std::string const payload = payload_of(read(path("good.ckpt")));
  // The options section: tag "options" (u64 length + 7 bytes), window kind (u8), size (i64),
  // offset (i64), slide, gap, rows, min_periods, aggs, max_out_of_orderness ...
  std::size_t const size_at = 8 + 7 + 1;
  std::size_t const offset_at = size_at + 8;
  std::size_t const bound_at  = offset_at + 8 * 5 + 8 + options().aggs.size();
  struct edit {
    std::size_t at;
    std::int64_t value;
    char const* field;
  };
  for (edit e : {edit{size_at, 0, "window size"}, edit{size_at, -1000, "window size"},
                 edit{offset_at, std::int64_t{1} << 62, "window offset"},
                 edit{bound_at, -5, "max_out_of_orderness"}}) {
    std::string edited = payload;
    put_i64(edited, e.at, e.value);
    write(path("edited.ckpt"), detail::frame_checkpoint(edited));
    try {
      (void)pipeline::restore(path("edited.ckpt"), backend::cpu);
      ADD_FAILURE() << e.field << " = " << e.value << " was accepted";
    } catch (checkpoint_error const& err) {
      EXPECT_NE(std::string(err.what()).find(e.field), std::string::npos) << err.what();
    }
  }
}

// The NaN policy is part of a checkpoint; version 1 files (without it) still read, as "skip".
TEST_F(reliability, NanPolicyIsCheckpointed)
{
  pipeline_options o = options();
  o.on_nan           = nan_policy::raise;
  pipeline p(o);
  feed(p, 0, 100);
  double const nan = std::nan("");
  std::uint32_t key = 1;
  std::int64_t t    = 50;
  EXPECT_THROW(p.push(&key, &t, &nan, 1), invalid_argument);
  p.checkpoint(path("raise.ckpt"));
  pipeline q = pipeline::restore(path("raise.ckpt"), backend::cpu);
  EXPECT_EQ(q.options().on_nan, nan_policy::raise);
  EXPECT_THROW(q.push(&key, &t, &nan, 1), invalid_argument);
  EXPECT_EQ(q.stats().records_rejected, 2u);

  // The same checkpoint in format version 1: no policy byte after the options (nor the
  // external_watermark byte of version 4, nor the detector limits of version 6: 3 * 8 bytes).
  std::string payload = payload_of(read(path("raise.ckpt")));
  std::string const next = std::string("\x08\0\0\0\0\0\0\0pipeline", 16);
  std::size_t const at   = payload.find(next);
  ASSERT_NE(at, std::string::npos);
  ASSERT_EQ(payload[at - 26], static_cast<char>(nan_policy::raise));
  ASSERT_EQ(payload[at - 25], 0);  // external_watermark = false
  payload.erase(at - 26, 26);
  write(path("v1.ckpt"), with_version(detail::frame_checkpoint(payload), 1));
  pipeline old = pipeline::restore(path("v1.ckpt"), backend::cpu);
  EXPECT_EQ(old.options().on_nan, nan_policy::skip);
  EXPECT_NO_THROW(old.push(&key, &t, &nan, 1));
}

// Checkpoints of format 6 (before likelihood and tod_weight: 73 bytes per detector at the end of
// the options) still read, with those parameters' defaults, and score on as before.
TEST_F(reliability, Format6DetectorCheckpointsStillRead)
{
  pipeline_options o;
  o.windowed             = false;
  o.where                = backend::cpu;
  o.max_out_of_orderness = 0;
  detector_spec knn      = detector_spec::knn_discord();
  knn.H = 300, knn.H2 = 50, knn.K = 10, knn.min_count = 60;
  o.detectors = {knn};
  std::vector<std::uint32_t> keys(2000);
  std::vector<std::int64_t> ts(2000);
  std::vector<double> v(2000);
  for (std::size_t i = 0; i < v.size(); ++i) {
    keys[i] = std::uint32_t(i % 2);
    ts[i]   = std::int64_t(i / 2) * 1000;
    v[i]    = std::sin(double(i) / 17.0) + (i % 97 == 0 ? 3.0 : 0.0);
  }
  auto tail_scores = [&](pipeline& p) {
    p.push(keys.data() + 1000, ts.data() + 1000, v.data() + 1000, 1000);
    p.flush();
    return p.poll_scores().get<double>("score_knn_discord");
  };
  pipeline whole(o);
  whole.push(keys.data(), ts.data(), v.data(), 1000);
  (void)whole.poll_scores();
  whole.checkpoint(path("v7.ckpt"));
  std::vector<double> const want = tail_scores(whole);

  std::string payload    = payload_of(read(path("v7.ckpt")));
  std::string const next = std::string("\x08\0\0\0\0\0\0\0pipeline", 16);
  std::size_t const at   = payload.find(next);
  ASSERT_NE(at, std::string::npos);
  ASSERT_EQ(payload[at - 73 + 8], static_cast<char>(detector_kind::knn_discord));  // the base
  payload.erase(at - 73, 73);
  write(path("v6.ckpt"), with_version(detail::frame_checkpoint(payload), 6));
  pipeline old = pipeline::restore(path("v6.ckpt"), backend::cpu);
  detector_spec const& r = old.options().detectors.at(0);
  EXPECT_EQ(r.tod_weight, 0.0);
  EXPECT_EQ(r.min_count, 60);
  EXPECT_EQ(r.warmup, detector_spec{}.warmup);
  EXPECT_EQ(tail_scores(old), want);
}

TEST_F(reliability, OptionRangesAreChecked)
{
  for (int threads : {-5, 257, 4096, 1000000}) {
    pipeline_options o = options();
    o.cpu_threads      = threads;
    try {
      pipeline p(o);
      ADD_FAILURE() << "cpu_threads = " << threads << " was accepted";
    } catch (invalid_argument const& e) {
      EXPECT_NE(std::string(e.what()).find("cpu_threads must lie in [1, 256] (0 = automatic)"),
                std::string::npos)
        << e.what();
    }
  }
  pipeline_options o = options();
  o.cpu_threads      = 256;
  EXPECT_NO_THROW(pipeline{o});
  o.cpu_threads = 0;
  EXPECT_NO_THROW(pipeline{o});
  o.channels = max_channels + 1;
  EXPECT_THROW(pipeline{o}, invalid_argument);
}

template <typename Backend>
class stats_test : public test::backend_test<Backend> {};
TYPED_TEST_SUITE(stats_test, test::backends, test::backend_names);

// stats() is never refused: read while another thread pushes, it gives a consistent snapshot
// (pushed == aggregated + late + rejected, never going back), and the pushes are never
// refused because of it.
TYPED_TEST(stats_test, ReadableWhileAnotherThreadPushes)
{
  pipeline_options o = options();
  o.where            = this->where;
  pipeline p(o);
  std::size_t const n = std::size_t{1} << 16;
  std::vector<std::uint32_t> keys(n);
  std::vector<double> values(n, 1.0);
  std::vector<std::int64_t> ts(n);
  std::atomic<bool> done{false};
  std::atomic<int> push_errors{0};
  std::thread pusher([&] {
    for (int b = 0; b < 60; ++b) {
      for (std::size_t i = 0; i < n; ++i) {
        keys[i] = static_cast<std::uint32_t>(i % 500);
        ts[i]   = static_cast<std::int64_t>(b * n + i) / 4;
      }
      try {
        p.push(keys.data(), ts.data(), values.data(), n);
      } catch (std::exception const&) {
        ++push_errors;
      }
    }
    done = true;
  });
  std::uint64_t reads = 0, last_pushed = 0;
  while (!done) {
    pipeline_stats s;
    ASSERT_NO_THROW(s = p.stats());
    EXPECT_EQ(s.records_pushed, s.records_aggregated + s.records_late + s.records_rejected);
    EXPECT_GE(s.records_pushed, last_pushed);
    last_pushed = s.records_pushed;
    ++reads;
  }
  pusher.join();
  EXPECT_EQ(push_errors.load(), 0);
  EXPECT_GT(reads, 0u);
  EXPECT_EQ(p.stats().records_pushed, 60 * n);
}

}  // namespace
}  // namespace cusense
