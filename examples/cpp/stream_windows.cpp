// Streams generated sensor readings through a cusense pipeline in micro-batches and prints the
// windows it emits.
//
//   stream_windows [sensors=8] [records=200000] [batch=25000] [backend=auto]
#include <cusense/cusense.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr std::int64_t kSecond = 1'000'000'000;
constexpr std::int64_t kStart  = 1'767'225'600 * kSecond;  // 2026-01-01T00:00:00Z, ns since the epoch

// One micro-batch: every sensor reports about every 100 ms, up to 500 ms out of order.
struct batch {
  std::vector<std::uint32_t> keys;
  std::vector<std::int64_t> timestamps;
  std::vector<float> values;
};

batch make_batch(std::mt19937_64& rng, std::size_t first, std::size_t n, std::uint32_t sensors)
{
  std::uniform_int_distribution<std::uint32_t> key(0, sensors - 1);
  std::uniform_int_distribution<std::int64_t> jitter(0, kSecond / 2);
  std::normal_distribution<float> noise(0.0f, 0.5f);
  std::int64_t const start = kStart;
  std::int64_t const step  = kSecond / 10 / sensors;
  batch b;
  b.keys.resize(n);
  b.timestamps.resize(n);
  b.values.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t const t = start + static_cast<std::int64_t>(first + i) * step;
    b.keys[i]       = key(rng);
    b.timestamps[i] = t - jitter(rng);
    b.values[i]     = 20.0f + static_cast<float>(b.keys[i]) +
                  2.0f * std::sin(static_cast<float>(t - start) / (60.0f * kSecond)) + noise(rng);
  }
  return b;
}

void print_windows(cusense::table const& windows, std::size_t max_rows)
{
  auto const& key   = windows.get<std::uint32_t>("key");
  auto const& start = windows.get<std::int64_t>("window_start");
  auto const& count = windows.get<std::int64_t>("count");
  auto const& mean  = windows.get<double>("mean");
  auto const& max   = windows.get<double>("max");
  for (std::size_t i = 0; i < windows.num_rows() && i < max_rows; ++i) {
    std::printf("  key %3u  window at %+6lld s  count %5lld  mean %8.3f  max %8.3f\n", key[i],
                static_cast<long long>((start[i] - kStart) / kSecond), static_cast<long long>(count[i]),
                mean[i], max[i]);
  }
}

}  // namespace

int main(int argc, char** argv)
{
  std::uint32_t const sensors = argc > 1 ? static_cast<std::uint32_t>(std::atoi(argv[1])) : 8;
  std::size_t const records   = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 200'000;
  std::size_t const batch_n   = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 25'000;
  std::string const where     = argc > 4 ? argv[4] : "auto";
  if (sensors == 0 || batch_n == 0) {
    std::fprintf(stderr, "usage: stream_windows [sensors>0] [records] [batch>0] [auto|cpu|cuda]\n");
    return 2;
  }

  try {
    cusense::pipeline_options opt;
    opt.window               = cusense::window_spec::tumbling(5 * kSecond);  // 5 s windows
    opt.aggs                 = {cusense::agg::count, cusense::agg::mean, cusense::agg::max};
    opt.max_out_of_orderness = kSecond;  // the watermark trails the newest event time by 1 s
    opt.where                = cusense::parse_backend(where);
    cusense::pipeline pipe(opt);
    std::printf("cusense example: backend %s, %u sensors, %zu records in batches of %zu\n",
                cusense::to_string(pipe.where()).c_str(), sensors, records, batch_n);

    std::mt19937_64 rng(42);
    std::size_t emitted = 0;
    for (std::size_t first = 0; first < records; first += batch_n) {
      std::size_t const n = std::min(batch_n, records - first);
      batch const b       = make_batch(rng, first, n, sensors);
      pipe.push(b.keys.data(), b.timestamps.data(), b.values.data(), n);
      cusense::table windows = pipe.poll();  // windows closed by the watermark so far
      if (first == 0 && windows.num_rows() > 0) {
        std::printf("first windows:\n");
        print_windows(windows, 4);
      }
      emitted += windows.num_rows();
    }
    cusense::table last = pipe.flush();  // end of stream: emit every open window
    emitted += last.num_rows();
    std::printf("last windows:\n");
    print_windows(last, 4);

    cusense::pipeline_stats const st = pipe.stats();
    std::printf("records pushed %llu, aggregated %llu, late %llu\n",
                static_cast<unsigned long long>(st.records_pushed),
                static_cast<unsigned long long>(st.records_aggregated),
                static_cast<unsigned long long>(st.records_late));
    std::printf("windows emitted %zu\n", emitted);
    return st.records_pushed == records ? 0 : 1;
  } catch (cusense::backend_unavailable const& e) {
    std::fprintf(stderr, "backend unavailable: %s\n", e.what());
    return 3;
  } catch (std::exception const& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
