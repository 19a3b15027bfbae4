// Microbenchmarks of the streaming pipeline: a synthetic stream pushed in micro-batches,
// polled after every push, over records x keys x batch size, on each backend.
//
// Counters: items_per_second (records/s), bytes_per_second (16 bytes per record as pushed),
// windows (rows emitted per pass). CUDA cases report an error (skip) without a usable device.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <tuple>

#include <cusense/cusense.hpp>

#include "common.hpp"

namespace {

using cusense_bench::record_bytes;

cusense_bench::stream const& cached_stream(std::size_t records, std::uint32_t keys)
{
  static std::map<std::pair<std::size_t, std::uint32_t>, cusense_bench::stream> cache;
  auto it = cache.find({records, keys});
  if (it == cache.end()) {
    if (cache.size() > 2) cache.clear();  // bound memory across argument sets
    it = cache.emplace(std::make_pair(records, keys), cusense_bench::make_stream(records, keys)).first;
  }
  return it->second;
}

cusense::pipeline_options options_for(cusense::backend where, std::int64_t disorder)
{
  cusense::pipeline_options opt;
  opt.window               = cusense::window_spec::tumbling(cusense_bench::window_ns);
  opt.aggs                 = {cusense::agg::count, cusense::agg::sum, cusense::agg::mean,
                              cusense::agg::min, cusense::agg::max};
  opt.max_out_of_orderness = disorder;
  opt.where                = where;
  return opt;
}

bool usable(cusense::backend where, benchmark::State& state)
{
  if (where == cusense::backend::cuda && !cusense::cuda_available()) {
    state.SkipWithError(cusense::cuda_built() ? "no usable CUDA device"
                                              : "built without the CUDA backend");
    return false;
  }
  return true;
}

// args: records, keys, batch
void pipeline_stream(benchmark::State& state, cusense::backend where)
{
  if (!usable(where, state)) return;
  auto const records = static_cast<std::size_t>(state.range(0));
  auto const keys    = static_cast<std::uint32_t>(state.range(1));
  auto const batch   = static_cast<std::size_t>(state.range(2));
  auto const& s      = cached_stream(records, keys);
  std::size_t rows   = 0;
  for (auto _ : state) {
    cusense::pipeline pipe(options_for(where, s.disorder_ns));
    rows = 0;
    for (std::size_t off = 0; off < records; off += batch) {
      std::size_t const n = std::min(batch, records - off);
      pipe.push(s.keys.data() + off, s.ts.data() + off, s.values.data() + off, n);
      rows += pipe.poll().num_rows();
    }
    rows += pipe.flush().num_rows();
    benchmark::DoNotOptimize(rows);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(records));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(records) * record_bytes);
  state.counters["windows"] = static_cast<double>(rows);
}

// The CPU sweep: records x keys at a fixed batch, and batch sizes at fixed records/keys.
void cpu_args(benchmark::internal::Benchmark* b)
{
  for (std::int64_t records : {100'000, 1'000'000}) {
    for (std::int64_t keys : {10, 1'000, 100'000}) b->Args({records, keys, 100'000});
  }
  for (std::int64_t batch : {1'000, 10'000, 1'000'000}) b->Args({1'000'000, 1'000, batch});
  b->Args({10'000'000, 10'000, 1'000'000});  // the standard workload of benchmarks/run.py
  b->ArgNames({"records", "keys", "batch"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

void gpu_args(benchmark::internal::Benchmark* b)
{
  for (std::int64_t keys : {10, 10'000, 1'000'000}) b->Args({10'000'000, keys, 1'000'000});
  for (std::int64_t batch : {10'000, 100'000, 10'000'000}) b->Args({10'000'000, 10'000, batch});
  b->ArgNames({"records", "keys", "batch"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK_CAPTURE(pipeline_stream, cpu, cusense::backend::cpu)->Apply(cpu_args);
BENCHMARK_CAPTURE(pipeline_stream, cuda, cusense::backend::cuda)->Apply(gpu_args);

// Device-resident (kernel-only) case: not expressible through the public API, which takes
// host pointers only (push() always stages host memory and copies it to the device). The
// closest figure is pipeline_stream/cuda with large batches, where copy and compute overlap;
// bench_copy.cpp gives the copy limits to compare against.

}  // namespace

BENCHMARK_MAIN();
