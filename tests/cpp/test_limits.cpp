// Bounded resources and failure behaviour: the open-window cap, out-of-memory during a push
// (by failing allocations on purpose), and concurrent use of one pipeline from two threads.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cusense/cusense.hpp>

#include "backend_fixture.hpp"

// --- allocation failure injection ----------------------------------------------------------
// When armed, the next `budget` allocations through operator new succeed and every later one
// throws std::bad_alloc until disarmed, like a process that has run out of memory.
namespace {
std::atomic<bool> alloc_armed{false};
std::atomic<long> alloc_budget{0};
}  // namespace

// Every replaceable form but the aligned ones, so that each allocation is paired with the
// matching deallocation (AddressSanitizer checks that).
namespace {
void* allocate(std::size_t size) noexcept
{
  if (alloc_armed.load(std::memory_order_relaxed) &&
      alloc_budget.fetch_sub(1, std::memory_order_relaxed) <= 0) {
    return nullptr;
  }
  return std::malloc(size == 0 ? 1 : size);
}
void* allocate_or_throw(std::size_t size)
{
  if (void* p = allocate(size)) { return p; }
  throw std::bad_alloc();
}
}  // namespace

void* operator new(std::size_t size) { return allocate_or_throw(size); }
void* operator new[](std::size_t size) { return allocate_or_throw(size); }
void* operator new(std::size_t size, std::nothrow_t const&) noexcept { return allocate(size); }
void* operator new[](std::size_t size, std::nothrow_t const&) noexcept { return allocate(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::nothrow_t const&) noexcept { std::free(p); }
void operator delete[](void* p, std::nothrow_t const&) noexcept { std::free(p); }

namespace cusense::test {
namespace {

struct failing_allocations {
  explicit failing_allocations(long budget)
  {
    alloc_budget.store(budget);
    alloc_armed.store(true);
  }
  ~failing_allocations() { alloc_armed.store(false); }
};

struct batch {
  std::vector<std::uint32_t> keys;
  std::vector<std::int64_t> ts;
  std::vector<double> values;
  std::size_t size() const { return keys.size(); }
};

// `count` records from time `t0` on, `step` apart with jitter, over `num_keys` keys; a few late
// ones and NaNs.
batch make_batch(std::mt19937_64& rng, std::size_t count, std::int64_t t0, std::int64_t step,
                 std::uint32_t num_keys)
{
  batch b;
  for (std::size_t i = 0; i < count; ++i) {
    std::int64_t t = t0 + static_cast<std::int64_t>(i) * step - static_cast<std::int64_t>(rng() % 50);
    if (rng() % 20 == 0) { t -= 5000; }
    b.keys.push_back(static_cast<std::uint32_t>(rng() % num_keys));
    b.ts.push_back(t);
    b.values.push_back(rng() % 15 == 0 ? std::nan("") : static_cast<double>(rng() % 1000) / 7.0);
  }
  return b;
}

pipeline_options options_for(backend where, std::size_t cap = 0)
{
  pipeline_options o;
  o.window               = window_spec::tumbling(100);
  o.max_out_of_orderness = 30;
  o.where                = where;
  o.cpu_threads          = 2;
  o.max_open_windows     = cap;
  return o;
}

void push(pipeline& p, batch const& b) { p.push(b.keys.data(), b.ts.data(), b.values.data(), b.size()); }

// Every column equal, NaN equal to NaN (results are bit-identical on the CPU backend).
void expect_same(table const& a, table const& b)
{
  ASSERT_EQ(a.columns.size(), b.columns.size());
  ASSERT_EQ(a.num_rows(), b.num_rows());
  for (std::size_t c = 0; c < a.columns.size(); ++c) {
    ASSERT_EQ(a.columns[c].name, b.columns[c].name);
    std::visit(
      [&](auto const& va) {
        auto const& vb = std::get<std::decay_t<decltype(va)>>(b.columns[c].data);
        for (std::size_t i = 0; i < va.size(); ++i) {
          if constexpr (std::is_same_v<std::decay_t<decltype(va)>, std::vector<double>>) {
            if (std::isnan(va[i]) && std::isnan(vb[i])) { continue; }
          }
          ASSERT_EQ(va[i], vb[i]) << a.columns[c].name << " row " << i;
        }
      },
      a.columns[c].data);
  }
}

struct outputs {
  table windows, late;
};

outputs run_all(pipeline& p, std::vector<batch const*> const& batches, outputs out = {})
{
  for (batch const* b : batches) {
    push(p, *b);
    out.windows.append(p.poll());
  }
  out.windows.append(p.flush());
  out.late.append(p.poll_late());
  return out;
}

template <typename B>
class limits_test : public backend_test<B> {};
TYPED_TEST_SUITE(limits_test, backends, backend_names);

TYPED_TEST(limits_test, open_window_cap_rejects_the_whole_batch_and_stays_usable)
{
  pipeline p(options_for(this->where, 6));
  std::vector<std::uint32_t> keys{0, 1, 2, 0};
  std::vector<std::int64_t> ts{10, 20, 30, 40};
  std::vector<double> vals{1, 2, 3, 4};
  p.push(keys.data(), ts.data(), vals.data(), 4);  // 3 open states
  EXPECT_EQ(p.stats().open_windows, 3u);

  // Four more keys in the same window: 7 > 6, the whole batch is refused.
  std::vector<std::uint32_t> k2{3, 4, 5, 6};
  try {
    p.push(k2.data(), ts.data(), vals.data(), 4);
    FAIL() << "expected capacity_error";
  } catch (capacity_error const& e) {
    std::string const msg = e.what();
    EXPECT_NE(msg.find("max_open_windows = 6"), std::string::npos) << msg;
    EXPECT_NE(msg.find("3 (key, window) states are open"), std::string::npos) << msg;
    EXPECT_NE(msg.find("opens 4 more"), std::string::npos) << msg;
  }
  auto s = p.stats();
  EXPECT_EQ(s.records_pushed, 8u);
  EXPECT_EQ(s.records_rejected, 4u);
  EXPECT_EQ(s.records_aggregated, 4u);
  EXPECT_EQ(s.open_windows, 3u);

  // Three more keys fit; then the next window for all three keys fits (6 at the peak, then
  // the first window is emitted).
  std::vector<std::uint32_t> k3{3, 4, 5};
  p.push(k3.data(), ts.data(), vals.data(), 3);
  EXPECT_THROW(p.push(k2.data() + 3, ts.data(), vals.data(), 1), capacity_error);
  std::vector<std::uint32_t> k4{0, 1, 2, 3, 4, 5};
  std::vector<std::int64_t> t4{150, 150, 150, 150, 150, 150};
  std::vector<double> v4{1, 1, 1, 1, 1, 1};
  EXPECT_THROW(p.push(k4.data(), t4.data(), v4.data(), 6), capacity_error);  // peak 12 > 6
  EXPECT_EQ(p.stats().open_windows, 6u);
  p.push(k4.data(), t4.data(), v4.data(), 0);
  // Even half of the keys in the next window do not fit while window 0 is still open.
  std::vector<std::int64_t> t5{140, 140, 140};
  EXPECT_THROW(p.push(k4.data(), t5.data(), v4.data(), 3), capacity_error);  // 9 > 6
  table w = p.poll();
  EXPECT_EQ(w.num_rows(), 0u);
  table all = p.flush();
  EXPECT_EQ(all.num_rows(), 6u);
  s = p.stats();
  EXPECT_EQ(s.records_pushed, s.records_aggregated + s.records_late + s.records_rejected);
  EXPECT_EQ(s.records_aggregated, 7u);
  EXPECT_EQ(s.open_windows, 0u);
}

TYPED_TEST(limits_test, capped_run_equals_uncapped_run_without_the_rejected_batches)
{
  std::mt19937_64 rng(12345);
  std::vector<batch> batches;
  std::int64_t t = 0;
  for (int i = 0; i < 40; ++i) {
    std::size_t const n = 1 + rng() % 300;
    batches.push_back(make_batch(rng, n, t, 1 + static_cast<std::int64_t>(rng() % 4), 1 + rng() % 40));
    t += static_cast<std::int64_t>(n) * 2;
  }
  for (std::size_t cap : {20u, 45u, 90u}) {
    pipeline capped(options_for(this->where, cap));
    std::vector<batch const*> accepted;
    outputs got;
    std::uint64_t rejected = 0;
    for (auto const& b : batches) {
      try {
        push(capped, b);
        accepted.push_back(&b);
      } catch (capacity_error const&) {
        rejected += b.size();
        EXPECT_LE(capped.stats().open_windows, cap);
      }
      got.windows.append(capped.poll());
    }
    got.windows.append(capped.flush());
    got.late.append(capped.poll_late());
    EXPECT_GT(rejected, 0u) << "cap " << cap << " never reached: the test is too weak";
    EXPECT_LT(accepted.size(), batches.size());

    pipeline plain(options_for(this->where));
    outputs want = run_all(plain, accepted);
    expect_same(got.windows, want.windows);
    expect_same(got.late, want.late);
    auto s = capped.stats();
    EXPECT_EQ(s.records_rejected, rejected);
    EXPECT_EQ(s.records_pushed, s.records_aggregated + s.records_late + s.records_rejected);
    EXPECT_EQ(s.records_aggregated, plain.stats().records_aggregated);
  }
}

// Fails the n-th allocation of a push (and all after it) for n = 0, 1, 2, ... until the push
// gets through: each failed push must raise out_of_memory, change nothing but the rejected
// count, and leave a pipeline whose further output equals a run that never saw the batch.
TEST(limits_cpu, out_of_memory_during_push_leaves_the_pipeline_unchanged)
{
  std::mt19937_64 rng(777);
  batch const prefix = make_batch(rng, 500, 0, 2, 30);
  batch const victim = make_batch(rng, 400, 1000, 2, 60);  // new keys and windows, late ones
  batch const suffix = make_batch(rng, 300, 1800, 2, 30);
  int failures = 0;
  for (long budget = 0;; ++budget) {
    ASSERT_LT(budget, 100000) << "the push never succeeded";
    pipeline p(options_for(backend::cpu));
    outputs got;
    push(p, prefix);
    got.windows.append(p.poll());
    pipeline_stats const before = p.stats();
    bool failed = false;
    {
      failing_allocations oom(budget);
      try {
        push(p, victim);
      } catch (out_of_memory const&) {
        failed = true;
      } catch (std::bad_alloc const&) {  // out of memory even for the error message
        failed = true;
      }
    }
    pipeline_stats const after = p.stats();
    EXPECT_EQ(after.records_pushed, before.records_pushed + victim.size());
    if (failed) {
      ++failures;
      EXPECT_EQ(after.records_rejected, before.records_rejected + victim.size());
      EXPECT_EQ(after.records_aggregated, before.records_aggregated);
      EXPECT_EQ(after.records_late, before.records_late);
      EXPECT_EQ(after.open_windows, before.open_windows);
      EXPECT_EQ(after.watermark, before.watermark);
    }
    got = run_all(p, {&suffix}, std::move(got));

    pipeline ref(options_for(backend::cpu));
    outputs want = failed ? run_all(ref, {&prefix, &suffix}) : run_all(ref, {&prefix, &victim, &suffix});
    expect_same(got.windows, want.windows);
    expect_same(got.late, want.late);
    EXPECT_EQ(p.stats().records_aggregated, ref.stats().records_aggregated);
    if (::testing::Test::HasFailure()) {
      FAIL() << "allocation budget " << budget;
    }
    if (!failed) { break; }
  }
  EXPECT_GT(failures, 3);
}

TEST(limits_cpu, out_of_memory_during_flush_leaves_the_windows_open)
{
  std::mt19937_64 rng(99);
  batch const b = make_batch(rng, 300, 0, 3, 20);
  pipeline ref(options_for(backend::cpu));
  outputs want = run_all(ref, {&b});
  for (long budget = 0; budget < 4; ++budget) {
    pipeline p(options_for(backend::cpu));
    outputs got;
    push(p, b);
    got.windows.append(p.poll());
    auto const open = p.stats().open_windows;
    {
      failing_allocations oom(budget);
      EXPECT_ANY_THROW(p.flush());
    }
    EXPECT_EQ(p.stats().open_windows, open);
    got.windows.append(p.flush());
    got.late.append(p.poll_late());
    expect_same(got.windows, want.windows);
    expect_same(got.late, want.late);
  }
}

TYPED_TEST(limits_test, a_large_batch_works)
{
  std::size_t const n = std::size_t{1} << 21;
  std::vector<std::uint32_t> keys(n);
  std::vector<std::int64_t> ts(n);
  std::vector<float> values(n, 1.0f);
  for (std::size_t i = 0; i < n; ++i) {
    keys[i] = static_cast<std::uint32_t>(i % 1000);
    ts[i]   = static_cast<std::int64_t>(i);
  }
  pipeline_options o = options_for(this->where);
  o.window           = window_spec::tumbling(1 << 16);
  pipeline p(o);
  p.push(keys.data(), ts.data(), values.data(), n);
  table w = p.flush();
  EXPECT_EQ(w.num_rows(), 32u * 1000u);
  auto s = p.stats();
  EXPECT_EQ(s.records_aggregated, n);
}

// Two threads on one pipeline: a call made while the other thread is inside one is refused
// with concurrent_use and changes nothing; the totals equal the successful pushes exactly.
TYPED_TEST(limits_test, concurrent_calls_are_refused_cleanly)
{
  pipeline_options o = options_for(this->where);
  o.window           = window_spec::tumbling(1000);
  pipeline p(o);
  std::size_t const big_n = std::size_t{1} << 20;
  std::vector<std::uint32_t> big_keys(big_n);
  std::vector<std::int64_t> big_ts(big_n);
  std::vector<double> big_vals(big_n, 2.0);
  for (std::size_t i = 0; i < big_n; ++i) {
    big_keys[i] = static_cast<std::uint32_t>(i % 97);
    big_ts[i]   = static_cast<std::int64_t>(i);
  }
  std::atomic<bool> started{false}, done{false};
  std::atomic<std::uint64_t> small_ok{0}, refused{0}, big_ok{0};
  std::thread big([&] {
    started = true;
    for (int r = 0; r < 3; ++r) {
      try {
        p.push(big_keys.data(), big_ts.data(), big_vals.data(), big_n);
        big_ok += big_n;
      } catch (concurrent_use const&) {
        ++refused;
      }
    }
    done = true;
  });
  std::uint32_t key = 5;
  std::int64_t t    = 0;
  double v          = 1.0;
  while (!started) std::this_thread::yield();
  while (!done) {
    try {
      p.push(&key, &t, &v, 1);
      ++small_ok;
    } catch (concurrent_use const& e) {
      ++refused;
      EXPECT_NE(std::string(e.what()).find("another thread"), std::string::npos);
    }
  }
  big.join();
  EXPECT_GT(refused.load(), 0u);
  table w = p.flush();
  auto s  = p.stats();
  EXPECT_EQ(s.records_pushed, small_ok + big_ok);
  EXPECT_EQ(s.records_pushed, s.records_aggregated + s.records_late + s.records_rejected);
  EXPECT_EQ(s.records_rejected, 0u);
  std::int64_t total = 0;
  for (auto c : w.get<std::int64_t>("count")) total += c;
  EXPECT_EQ(static_cast<std::uint64_t>(total), s.records_aggregated);
}

}  // namespace
}  // namespace cusense::test
