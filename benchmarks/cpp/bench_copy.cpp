// The hardware limits the GPU pipeline is measured against: host->device copy bandwidth from
// pinned and from pageable memory, and device->device copy bandwidth. Without the CUDA backend
// (or without a device) these benchmarks report an error and are skipped.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <vector>

#ifdef CUSENSE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace {

#ifdef CUSENSE_WITH_CUDA

bool have_device(benchmark::State& state)
{
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    state.SkipWithError("no usable CUDA device");
    return false;
  }
  return true;
}

bool ok(cudaError_t err, benchmark::State& state)
{
  if (err == cudaSuccess) return true;
  state.SkipWithError(cudaGetErrorString(err));
  (void)cudaGetLastError();
  return false;
}

// Times each copy with CUDA events (manual time), so the figure is the transfer alone.
template <typename Copy>
void timed_copies(benchmark::State& state, std::size_t bytes, Copy&& copy)
{
  cudaEvent_t start{}, stop{};
  if (!ok(cudaEventCreate(&start), state) || !ok(cudaEventCreate(&stop), state)) return;
  if (!ok(copy(), state) || !ok(cudaDeviceSynchronize(), state)) return;  // warm-up
  for (auto _ : state) {
    cudaEventRecord(start);
    cudaError_t const err = copy();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    if (!ok(err, state)) break;
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(static_cast<double>(ms) / 1e3);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(bytes));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

void h2d_pinned(benchmark::State& state)
{
  if (!have_device(state)) return;
  auto const bytes = static_cast<std::size_t>(state.range(0));
  void* host       = nullptr;
  void* dev        = nullptr;
  if (!ok(cudaMallocHost(&host, bytes), state)) return;
  if (ok(cudaMalloc(&dev, bytes), state)) {
    std::memset(host, 1, bytes);
    timed_copies(state, bytes, [&] { return cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, 0); });
    cudaFree(dev);
  }
  cudaFreeHost(host);
}

void h2d_pageable(benchmark::State& state)
{
  if (!have_device(state)) return;
  auto const bytes = static_cast<std::size_t>(state.range(0));
  std::vector<unsigned char> host(bytes, 1);
  void* dev = nullptr;
  if (!ok(cudaMalloc(&dev, bytes), state)) return;
  timed_copies(state, bytes, [&] { return cudaMemcpy(dev, host.data(), bytes, cudaMemcpyHostToDevice); });
  cudaFree(dev);
}

void d2d(benchmark::State& state)
{
  if (!have_device(state)) return;
  auto const bytes = static_cast<std::size_t>(state.range(0));
  void* a          = nullptr;
  void* b          = nullptr;
  if (ok(cudaMalloc(&a, bytes), state)) {
    if (ok(cudaMalloc(&b, bytes), state)) {
      cudaMemset(a, 1, bytes);
      // A device copy reads and writes every byte: report read + write traffic.
      timed_copies(state, 2 * bytes, [&] { return cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0); });
      cudaFree(b);
    }
    cudaFree(a);
  }
}

#else  // no CUDA backend built

void h2d_pinned(benchmark::State& state) { state.SkipWithError("built without the CUDA backend"); }
void h2d_pageable(benchmark::State& state) { state.SkipWithError("built without the CUDA backend"); }
void d2d(benchmark::State& state) { state.SkipWithError("built without the CUDA backend"); }

#endif

void sizes(benchmark::internal::Benchmark* b)
{
  for (std::int64_t mib : {1, 16, 256}) b->Arg(mib << 20);
  b->ArgName("bytes")->UseManualTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK(h2d_pinned)->Apply(sizes);
BENCHMARK(h2d_pageable)->Apply(sizes);
BENCHMARK(d2d)->Apply(sizes);

}  // namespace
