// CUDA engine for rolling (count) windows, with exactly the semantics of the CPU rolling engine:
// a record is late when t < watermark just before it; its row is emitted once t < watermark,
// rows in (t, key, arrival) order; the row of record r aggregates, in order, the rows - 1
// records of its key emitted before it and r itself; min_periods per channel (applied by
// window_table_builder::append_row).
//
// push() cuts a batch into chunks of at most staging_records records and processes each chunk
// synchronously on one stream:
//   1. exclusive prefix max of the timestamps, seeded with the max carried from earlier chunks:
//      the watermark before each record. The max over all records equals the max over the
//      accepted ones: a late record has t < max - ooo <= max, so it never raises the max.
//   2. late flags; the non-late records are compacted (arrival order) and appended, with
//      their arrival numbers and values as double, to the pending records (kept on the device
//      in arrival order): the candidates.
//   3. the candidates with t < watermark are emitted (a stable partition: the rest, in
//      arrival order, is the new pending set) and sorted by (key, t, arrival) with two stable
//      radix passes (t, then key) over arrival-ordered indices.
//   4. the history (per key the last rows - 1 emitted records, sorted by key, in emission
//      order within a key) and the emitted records are merged by key, history first: the
//      timeline. A record's window is the (up to) rows entries of its key ending at it; one
//      thread per (row, channel) adds them in order with ops::add (moments, and extents for the
//      order aggregations), deterministic and in the CPU engine's order.
//   5. the rows are put in (t, key, arrival) order (one stable radix pass by t), copied back and
//      appended to the window table; the new history is the last rows - 1 timeline entries of
//      each key.
// Per key, every record emitted later has a larger time than the ones emitted before (it was
// pending at the watermark that emitted them, or arrived non-late after it), so emitting per
// chunk gives the CPU engine's rows in the CPU engine's order. flush() emits every pending
// record and clears the history, as the CPU engine does.
//
// New device state is written to the idle half of double-buffered arrays and adopted only once
// the chunk's device work succeeded, so a failing chunk leaves the state as it was.
#include <cuda_runtime_api.h>

#include <cub/block/block_reduce.cuh>
#include <cub/device/device_partition.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <cusense/detail/state_codec.hpp>
#include <cusense/detail/engine.hpp>
#include <cusense/detail/engine_shared.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/error.hpp>
#include <cusense/ops/extent.hpp>
#include <cusense/ops/moments.hpp>

#include "cuda_utils.cuh"

namespace cusense::detail {
namespace {

constexpr int block = cuda_block_threads;
/// Largest chunk and largest record set handled at once: CUB item counts are int and record
/// indices 32-bit.
constexpr std::size_t max_chunk_records = std::size_t{1} << 30;
constexpr std::size_t max_set_records   = static_cast<std::size_t>(INT_MAX) - 1;
/// "No timestamp yet" for the prefix max (valid timestamps are >= -2^62).
constexpr long long no_time = LLONG_MIN;

/// Small values the kernels produce and the host reads back after a synchronisation.
struct rolling_scalars {
  long long selected;             ///< items selected by the last partition / selection
  long long chunk_max;            ///< largest timestamp up to the end of the chunk
  unsigned long long nan_values;  ///< NaN values among the chunk's non-late records
};

struct max_time {
  __host__ __device__ std::int64_t operator()(std::int64_t a, std::int64_t b) const
  {
    return a < b ? b : a;
  }
};

/// Device pointers of a record set: time, key, arrival number, `channels` doubles each.
struct records {
  std::int64_t* t     = nullptr;
  std::uint32_t* key  = nullptr;
  std::uint64_t* seq  = nullptr;
  double* val         = nullptr;
};

/// Growable device record arrays; contents are lost when they grow.
struct record_arrays {
  device_buffer t, key, seq, val;

  records reserve(std::size_t n, std::size_t channels, cudaStream_t s)
  {
    records r;
    r.t   = t.get<std::int64_t>(n, s);
    r.key = key.get<std::uint32_t>(n, s);
    r.seq = seq.get<std::uint64_t>(n, s);
    r.val = val.get<double>(n * channels, s);
    return r;
  }
  records view() const
  {
    return records{t.data<std::int64_t>(), key.data<std::uint32_t>(), seq.data<std::uint64_t>(),
                   val.data<double>()};
  }
};

// ---------------------------------------------------------------------------------------------
// kernels

/// Per record: late flag against the watermark before it (prev_max - ooo; none before the
/// first record ever), the NaN values of the non-late records, and the chunk's largest time.
template <typename T>
__global__ void __launch_bounds__(block)
  classify_kernel(std::int64_t const* ts, std::int64_t const* prev_max, T const* values,
                  int channels, std::size_t n, std::int64_t out_of_orderness, std::uint8_t* keep,
                  rolling_scalars* sc)
{
  using block_reduce = cub::BlockReduce<unsigned long long, block>;
  __shared__ typename block_reduce::TempStorage temp;
  unsigned long long nans = 0;
  CUSENSE_FOR_EACH_INDEX(i, n)
  {
    std::int64_t const t    = ts[i];
    std::int64_t const prev = prev_max[i];
    bool const late         = prev != no_time && t < prev - out_of_orderness;
    keep[i]                 = late ? 0 : 1;
    if (!late) {
      T const* v = values + i * static_cast<std::size_t>(channels);
      for (int c = 0; c < channels; ++c) { nans += ops::is_nan(static_cast<double>(v[c])) ? 1u : 0u; }
    }
    if (i + 1 == n) { sc->chunk_max = static_cast<long long>(prev > t ? prev : t); }
  }
  unsigned long long const total = block_reduce(temp).Sum(nans);
  if (threadIdx.x == 0 && total != 0) { atomicAdd(&sc->nan_values, total); }
}

/// out[at + j] = chunk record sel[j] (arrival number seq_base + sel[j], values as double).
template <typename T>
__global__ void append_records_kernel(std::uint32_t const* sel, std::size_t nn,
                                      std::int64_t const* ts, std::uint32_t const* keys,
                                      T const* values, int channels, std::uint64_t seq_base,
                                      records out, std::size_t at)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_FOR_EACH_INDEX(j, nn)
  {
    std::size_t const i = sel[j];
    std::size_t const o = at + j;
    out.t[o]            = ts[i];
    out.key[o]          = keys[i];
    out.seq[o]          = seq_base + i;
    for (std::size_t c = 0; c < C; ++c) { out.val[o * C + c] = static_cast<double>(values[i * C + c]); }
  }
}

__global__ void before_kernel(std::int64_t const* t, std::size_t n, std::int64_t limit,
                              std::uint8_t* flag)
{
  CUSENSE_FOR_EACH_INDEX(i, n) { flag[i] = t[i] < limit ? 1 : 0; }
}

/// dst[j] = src[idx[j]], or src[idx[n - 1 - j]] when `reversed`.
__global__ void gather_records_kernel(records src, std::uint32_t const* idx, std::size_t n,
                                      bool reversed, int channels, records dst)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_FOR_EACH_INDEX(j, n)
  {
    std::size_t const i = idx[reversed ? n - 1 - j : j];
    dst.t[j]            = src.t[i];
    dst.key[j]          = src.key[i];
    dst.seq[j]          = src.seq[i];
    for (std::size_t c = 0; c < C; ++c) { dst.val[j * C + c] = src.val[i * C + c]; }
  }
}

/// Radix keys ordering int64 times as unsigned: t[idx[j]] (t[j] without idx) with the sign
/// bit flipped.
__global__ void time_bits_kernel(std::int64_t const* t, std::uint32_t const* idx, std::size_t n,
                                 std::uint64_t* out)
{
  CUSENSE_FOR_EACH_INDEX(j, n)
  {
    std::int64_t const v = t[idx != nullptr ? idx[j] : j];
    out[j]               = static_cast<std::uint64_t>(v) ^ (std::uint64_t{1} << 63);
  }
}

__global__ void gather_keys_kernel(std::uint32_t const* key, std::uint32_t const* idx,
                                   std::size_t n, std::uint32_t* out)
{
  CUSENSE_FOR_EACH_INDEX(j, n) { out[j] = key[idx[j]]; }
}

__global__ void iota_kernel(std::uint32_t* out, std::size_t n)
{
  CUSENSE_FOR_EACH_INDEX(i, n) { out[i] = static_cast<std::uint32_t>(i); }
}

/// First position in the sorted key[0, n) whose key is >= q (or > q with `upper`).
__device__ std::size_t key_bound(std::uint32_t const* key, std::size_t n, std::uint32_t q, bool upper)
{
  std::size_t lo = 0, hi = n;
  while (lo < hi) {
    std::size_t const mid = lo + (hi - lo) / 2;
    if (key[mid] < q || (upper && key[mid] == q)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

__device__ void copy_record(records const& src, std::size_t i, records const& dst, std::size_t o,
                            std::size_t C)
{
  dst.t[o]   = src.t[i];
  dst.key[o] = src.key[i];
  dst.seq[o] = src.seq[i];
  for (std::size_t c = 0; c < C; ++c) { dst.val[o * C + c] = src.val[i * C + c]; }
}

/// Stable merge by key of the history (h entries) and the emitted records (m), history first
/// on equal keys: history entry i goes after the emitted records with a smaller key.
__global__ void place_history_kernel(records hist, std::size_t h, std::uint32_t const* e_key,
                                     std::size_t m, int channels, records out)
{
  CUSENSE_FOR_EACH_INDEX(i, h)
  {
    std::size_t const o = i + key_bound(e_key, m, hist.key[i], false);
    copy_record(hist, i, out, o, static_cast<std::size_t>(channels));
  }
}

/// Emitted record j goes after the history entries with a key <= its own; pos[j] gets where.
__global__ void place_emitted_kernel(records em, std::size_t m, std::uint32_t const* h_key,
                                     std::size_t h, int channels, records out, std::uint32_t* pos)
{
  CUSENSE_FOR_EACH_INDEX(j, m)
  {
    std::size_t const o = j + key_bound(h_key, h, em.key[j], true);
    copy_record(em, j, out, o, static_cast<std::size_t>(channels));
    pos[j] = static_cast<std::uint32_t>(o);
  }
}

/// One thread per (row, channel): the row of the record at timeline position pos[j] adds the
/// (up to) `rows` timeline entries of its key ending there, in order.
__global__ void rolling_rows_kernel(records tl, std::size_t nt, std::uint32_t const* pos,
                                    std::size_t m, std::int64_t rows, int channels,
                                    ops::moments* out_m, ops::extent* out_e)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_FOR_EACH_INDEX(x, m * C)
  {
    std::size_t const j     = x / C;
    std::size_t const c     = x % C;
    std::size_t const p     = pos[j];
    std::size_t const first = key_bound(tl.key, nt, tl.key[p], false);
    auto const span         = static_cast<std::size_t>(rows);
    std::size_t const lo    = p + 1 >= span && p + 1 - span > first ? p + 1 - span : first;
    ops::moments acc{};
    for (std::size_t q = lo; q <= p; ++q) { ops::add(acc, tl.val[q * C + c]); }
    out_m[x] = acc;
    if (out_e != nullptr) {
      ops::extent e{};
      for (std::size_t q = lo; q <= p; ++q) { ops::add(e, tl.val[q * C + c], tl.t[q], tl.seq[q]); }
      out_e[x] = e;
    }
  }
}

/// The rows in output order: row j is the emitted record perm[j].
__global__ void order_rows_kernel(std::uint32_t const* perm, std::size_t m, records em,
                                  ops::moments const* row_m, ops::extent const* row_e,
                                  int channels, std::int64_t* out_t, std::uint32_t* out_key,
                                  ops::moments* out_m, ops::extent* out_e)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_FOR_EACH_INDEX(j, m)
  {
    std::size_t const r = perm[j];
    out_t[j]            = em.t[r];
    out_key[j]          = em.key[r];
    for (std::size_t c = 0; c < C; ++c) { out_m[j * C + c] = row_m[r * C + c]; }
    if (out_e != nullptr) {
      for (std::size_t c = 0; c < C; ++c) { out_e[j * C + c] = row_e[r * C + c]; }
    }
  }
}

/// keep[p] = 1 for the last rows - 1 timeline entries of each key (the new history).
__global__ void history_keep_kernel(std::uint32_t const* key, std::size_t nt, std::int64_t rows,
                                    std::uint8_t* keep)
{
  CUSENSE_FOR_EACH_INDEX(p, nt)
  {
    std::size_t const end = key_bound(key, nt, key[p], true);
    keep[p]               = end - p <= static_cast<std::size_t>(rows - 1) ? 1 : 0;
  }
}

// ---------------------------------------------------------------------------------------------
// engine

/// Every CUDA resource of an engine, released together under a device guard.
struct rolling_gpu {
  cuda_stream stream;
  device_buffer cub_temp, scalars;
  device_buffer chunk;  // timestamps | values | keys of one chunk
  device_buffer prev, keep, sel;
  device_buffer flag, idx, idx2, tkey, tkey2, k32, k32b, iota, perm, pos, hidx;
  device_buffer row_m, row_e, out_t, out_key, out_m, out_e;
  // pending records (not emitted yet, arrival order) and history (sorted by key, emission
  // order within a key), double-buffered; scratch sets
  record_arrays pending[2], hist[2];
  record_arrays cand, emitted, timeline;
  host_buffer staging, h_scalars, h_late, h_t, h_key, h_m, h_e;
};

/// Host copies of record arrays (checkpoints, key counts).
struct host_records {
  std::vector<std::int64_t> t;
  std::vector<std::uint32_t> key;
  std::vector<std::uint64_t> seq;
  std::vector<double> val;
};

class cuda_rolling_engine final : public window_engine {
 public:
  cuda_rolling_engine(pipeline_options const& options, int device)
    : options_(options),
      rows_(options.window.rows),
      min_periods_(options.window.min_periods < 0 ? options.window.rows : options.window.min_periods),
      extent_(acc_layout::of(options).extent),
      channels_(static_cast<std::size_t>(options.channels)),
      device_(device),
      windows_out_(options),
      late_out_(options)
  {
    // The options are validated by the pipeline and routed here by the engine registry.
    clock_.ooo = options.max_out_of_orderness;
    chunk_cap_ = std::clamp<std::size_t>(options.staging_records, 1, max_chunk_records);
    row_acc_.resize(channels_);
    device_guard guard(device_);
    gpu_ = std::make_unique<rolling_gpu>();
    gpu_->scalars.reserve(sizeof(rolling_scalars));
    gpu_->h_scalars.reserve(sizeof(rolling_scalars));
  }

  ~cuda_rolling_engine() override
  {
    try {
      device_guard guard(device_);
      CUSENSE_CUDA_TRY_NO_THROW(cudaStreamSynchronize(gpu_->stream.get()));
      gpu_.reset();
    } catch (...) {
      // Never throw from a destructor; gpu_'s destructor releases the resources.
    }
  }

  cuda_rolling_engine(cuda_rolling_engine const&)            = delete;
  cuda_rolling_engine& operator=(cuda_rolling_engine const&) = delete;

  void push(record_batch const& batch) override
  {
    if (batch.n == 0) { return; }
    if (options_.max_open_windows != 0) { check_capacity(batch); }
    device_guard guard(device_);
    for (std::size_t begin = 0; begin < batch.n; begin += chunk_cap_) {
      std::size_t const n = std::min(chunk_cap_, batch.n - begin);
      with_values(batch, [&](auto const* values) { process_chunk(batch, values, begin, n); });
    }
  }

  void flush() override
  {
    device_guard guard(device_);
    if (pending_size_ > 0) {
      emit_step(gpu_->pending[pcur_].view(), pending_size_, std::numeric_limits<std::int64_t>::max());
    }
    hist_size_ = 0;
  }

  void drain(table* windows, table* late) override
  {
    if (windows) { windows->append(windows_out_.finish()); }
    if (late) { late->append(late_out_.finish()); }
  }

  engine_counters counters() override
  {
    engine_counters c;
    c.aggregated    = aggregated_;
    c.late          = late_count_;
    c.nan_values    = nan_values_;
    c.emitted       = emitted_;
    c.open_windows  = pending_size_ + hist_size_;
    c.open_keys     = rows_ > 1 ? count_open_keys() : 0;
    c.state_bytes   = (pending_size_ + hist_size_) *
                    (sizeof(std::int64_t) + sizeof(std::uint32_t) + sizeof(std::uint64_t) +
                     channels_ * sizeof(double));
    c.has_watermark = clock_.has;
    c.watermark     = clock_.has ? clock_.value() : 0;
    return c;
  }

  void save_state(state_writer& out) override;
  void load_state(state_reader& in) override;

private:
  rolling_scalars read_scalars()
  {
    cudaStream_t const s = gpu_->stream.get();
    auto* h              = gpu_->h_scalars.data<rolling_scalars>();
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h, gpu_->scalars.data<rolling_scalars>(), sizeof(rolling_scalars),
                                     cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    return *h;
  }

  template <typename F>
  void run_cub(char const* what, F&& f)
  {
    run_cub_on(gpu_->cub_temp, gpu_->stream.get(), what, std::forward<F>(f));
  }

  /// Stable radix sort of the 32-bit values by their keys (keys_in is clobbered).
  template <typename K>
  void sort_pairs(K* keys_in, K* keys_out, std::uint32_t const* vals_in, std::uint32_t* vals_out,
                  std::size_t n)
  {
    cudaStream_t const s = gpu_->stream.get();
    run_cub("cub::DeviceRadixSort::SortPairs", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceRadixSort::SortPairs(temp, bytes, keys_in, keys_out, vals_in, vals_out,
                                             static_cast<int>(n), 0, static_cast<int>(8 * sizeof(K)), s);
    });
  }

  /// Refuses (before changing anything) a batch whose non-late records would take the records
  /// held beyond max_open_windows, counting as the CPU engine does.
  void check_capacity(record_batch const& batch) const
  {
    watermark_clock clock = clock_;
    std::size_t added     = 0;
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::int64_t const t = batch.timestamps[i];
      if (clock.has && t < clock.value()) { continue; }
      ++added;
      clock.see(t);
    }
    check_cap(options_.max_open_windows, pending_size_ + hist_size_, added, batch.n, "records");
  }

  template <typename T>
  void process_chunk(record_batch const& batch, T const* values, std::size_t begin, std::size_t n)
  {
    rolling_gpu& g       = *gpu_;
    cudaStream_t const s = g.stream.get();
    int const channels   = options_.channels;
    int const items      = static_cast<int>(n);

    // stage the chunk: timestamps | values | keys, one host-to-device copy
    std::size_t const ts_bytes  = n * sizeof(std::int64_t);
    std::size_t const val_bytes = n * channels_ * sizeof(T);
    std::size_t const key_bytes = n * sizeof(std::uint32_t);
    std::size_t const bytes     = ts_bytes + val_bytes + key_bytes;
    auto* h = g.staging.get<unsigned char>(bytes);  // the stream is idle: the last copy is done
    std::memcpy(h, batch.timestamps + begin, ts_bytes);
    std::memcpy(h + ts_bytes, values + begin * channels_, val_bytes);
    std::memcpy(h + ts_bytes + val_bytes, batch.keys + begin, key_bytes);
    auto* d = g.chunk.get<unsigned char>(bytes, s);
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, s));
    auto const* d_ts     = reinterpret_cast<std::int64_t const*>(d);
    auto const* d_values = reinterpret_cast<T const*>(d + ts_bytes);
    auto const* d_keys   = reinterpret_cast<std::uint32_t const*>(d + ts_bytes + val_bytes);
    auto* d_sc           = g.scalars.data<rolling_scalars>();
    CUSENSE_CUDA_TRY(cudaMemsetAsync(d_sc, 0, sizeof(rolling_scalars), s));

    // 1-2. watermark before each record, late flags, non-late records to the front
    auto* prev = g.prev.get<std::int64_t>(n, s);
    std::int64_t const carried = clock_.has ? clock_.max_ts : static_cast<std::int64_t>(no_time);
    run_cub("cub::DeviceScan::ExclusiveScan", [&](void* temp, std::size_t& tb) {
      return cub::DeviceScan::ExclusiveScan(temp, tb, d_ts, prev, max_time{}, carried, items, s);
    });
    auto* keep = g.keep.get<std::uint8_t>(n, s);
    classify_kernel<T><<<cuda_blocks_for(n), block, 0, s>>>(d_ts, prev, d_values, channels, n,
                                                            options_.max_out_of_orderness, keep, d_sc);
    CUSENSE_CHECK_LAST_ERROR();
    // non-late indices in arrival order at the front, late ones at the back in reverse order
    auto* sel = g.sel.get<std::uint32_t>(n, s);
    run_cub("cub::DevicePartition::Flagged", [&](void* temp, std::size_t& tb) {
      return cub::DevicePartition::Flagged(temp, tb, thrust::counting_iterator<std::uint32_t>(0), keep,
                                           sel, &d_sc->selected, items, s);
    });
    rolling_scalars const sc = read_scalars();
    if (sc.selected < 0 || static_cast<std::size_t>(sc.selected) > n) {
      throw cuda_error("cusense: inconsistent partition count from the device");
    }
    auto const nn = static_cast<std::size_t>(sc.selected);
    std::size_t const nl = n - nn;
    std::uint32_t* h_late = nullptr;
    if (nl > 0) {
      h_late = g.h_late.get<std::uint32_t>(nl);
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_late, sel + nn, nl * sizeof(std::uint32_t),
                                       cudaMemcpyDeviceToHost, s));
    }
    watermark_clock clock = clock_;
    clock.see(static_cast<std::int64_t>(sc.chunk_max));

    // candidates: the pending records, then the chunk's non-late ones (arrival order)
    std::size_t const np = pending_size_;
    std::size_t const nc = np + nn;
    if (nc > max_set_records) {
      throw out_of_memory("cusense: more than 2^31 rolling-window records wait for the watermark");
    }
    records cand{};
    if (nc > 0) {
      cand = g.cand.reserve(nc, channels_, s);
      if (np > 0) {
        records const p = g.pending[pcur_].view();
        CUSENSE_CUDA_TRY(cudaMemcpyAsync(cand.t, p.t, np * sizeof(std::int64_t), cudaMemcpyDeviceToDevice, s));
        CUSENSE_CUDA_TRY(cudaMemcpyAsync(cand.key, p.key, np * sizeof(std::uint32_t), cudaMemcpyDeviceToDevice, s));
        CUSENSE_CUDA_TRY(cudaMemcpyAsync(cand.seq, p.seq, np * sizeof(std::uint64_t), cudaMemcpyDeviceToDevice, s));
        CUSENSE_CUDA_TRY(cudaMemcpyAsync(cand.val, p.val, np * channels_ * sizeof(double),
                                         cudaMemcpyDeviceToDevice, s));
      }
      if (nn > 0) {
        append_records_kernel<T><<<cuda_blocks_for(nn), block, 0, s>>>(sel, nn, d_ts, d_keys, d_values,
                                                                      channels, seq_base_, cand, np);
        CUSENSE_CHECK_LAST_ERROR();
      }
    }
    // 3-5. emit the candidates the watermark passed; completes the late-index copy
    emit_step(cand, nc, clock.value());
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));

    // commit the chunk
    clock_ = clock;
    seq_base_ += n;
    aggregated_ += nn;
    late_count_ += nl;
    nan_values_ += sc.nan_values;
    if (nl > 0) {
      late_out_.reserve(nl);
      std::sort(h_late, h_late + nl);  // arrival order
      int const ch = options_.channels;
      for (std::size_t k = 0; k < nl; ++k) {
        std::size_t const i = begin + h_late[k];
        late_out_.append(batch.keys[i], batch.timestamps[i], values + i * static_cast<std::size_t>(ch));
      }
    }
  }

  /// Emits the rows of the n records of `src` (arrival order) with t < limit and keeps the
  /// others as the pending records; updates the history. The state changes only at the end.
  void emit_step(records const& src, std::size_t n, std::int64_t limit)
  {
    rolling_gpu& g       = *gpu_;
    cudaStream_t const s = g.stream.get();
    int const channels   = options_.channels;
    auto* d_sc           = g.scalars.data<rolling_scalars>();
    if (n == 0) {
      pending_size_ = 0;
      return;
    }
    auto* flag = g.flag.get<std::uint8_t>(n, s);
    before_kernel<<<cuda_blocks_for(n), block, 0, s>>>(src.t, n, limit, flag);
    CUSENSE_CHECK_LAST_ERROR();
    auto* idx = g.idx.get<std::uint32_t>(n, s);
    run_cub("cub::DevicePartition::Flagged", [&](void* temp, std::size_t& tb) {
      return cub::DevicePartition::Flagged(temp, tb, thrust::counting_iterator<std::uint32_t>(0), flag, idx,
                                           &d_sc->selected, static_cast<int>(n), s);
    });
    rolling_scalars const sc = read_scalars();
    if (sc.selected < 0 || static_cast<std::size_t>(sc.selected) > n) {
      throw cuda_error("cusense: inconsistent emission count from the device");
    }
    auto const m          = static_cast<std::size_t>(sc.selected);
    std::size_t const rest = n - m;
    // the records that wait: at the back of idx in reverse order, gathered in arrival order
    if (rest > 0) {
      records const next = g.pending[1 - pcur_].reserve(rest, channels_, s);
      gather_records_kernel<<<cuda_blocks_for(rest), block, 0, s>>>(src, idx + m, rest, true, channels,
                                                                     next);
      CUSENSE_CHECK_LAST_ERROR();
    }
    if (m == 0) {
      CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
      pcur_         = 1 - pcur_;
      pending_size_ = rest;
      return;
    }

    // emitted records sorted by (key, t, arrival): idx[0, m) is in arrival order, so two
    // stable passes (t, then key) do it
    auto* tkey  = g.tkey.get<std::uint64_t>(m, s);
    auto* tkey2 = g.tkey2.get<std::uint64_t>(m, s);
    auto* idx2  = g.idx2.get<std::uint32_t>(m, s);
    auto* k32   = g.k32.get<std::uint32_t>(m, s);
    auto* k32b  = g.k32b.get<std::uint32_t>(m, s);
    time_bits_kernel<<<cuda_blocks_for(m), block, 0, s>>>(src.t, idx, m, tkey);
    CUSENSE_CHECK_LAST_ERROR();
    sort_pairs(tkey, tkey2, idx, idx2, m);
    gather_keys_kernel<<<cuda_blocks_for(m), block, 0, s>>>(src.key, idx2, m, k32);
    CUSENSE_CHECK_LAST_ERROR();
    sort_pairs(k32, k32b, idx2, idx, m);  // idx[0, m) is no longer needed as input
    records const em = g.emitted.reserve(m, channels_, s);
    gather_records_kernel<<<cuda_blocks_for(m), block, 0, s>>>(src, idx, m, false, channels, em);
    CUSENSE_CHECK_LAST_ERROR();

    // timeline: history and emitted records merged by key, history first
    std::size_t const h  = hist_size_;
    std::size_t const nt = h + m;
    if (nt > max_set_records) {
      throw out_of_memory("cusense: more than 2^31 rolling-window records held");
    }
    records const tl  = g.timeline.reserve(nt, channels_, s);
    records const his = g.hist[hcur_].view();
    auto* pos         = g.pos.get<std::uint32_t>(m, s);
    if (h > 0) {
      place_history_kernel<<<cuda_blocks_for(h), block, 0, s>>>(his, h, em.key, m, channels, tl);
      CUSENSE_CHECK_LAST_ERROR();
    }
    place_emitted_kernel<<<cuda_blocks_for(m), block, 0, s>>>(em, m, his.key, h, channels, tl, pos);
    CUSENSE_CHECK_LAST_ERROR();

    // one row per emitted record
    auto* row_m = g.row_m.get<ops::moments>(m * channels_, s);
    auto* row_e = extent_ ? g.row_e.get<ops::extent>(m * channels_, s) : nullptr;
    rolling_rows_kernel<<<cuda_blocks_for(m * channels_), block, 0, s>>>(tl, nt, pos, m, rows_, channels,
                                                                         row_m, row_e);
    CUSENSE_CHECK_LAST_ERROR();

    // rows in (t, key, arrival) order: a stable sort by t of the (key, t, arrival) order
    auto* iota = g.iota.get<std::uint32_t>(m, s);
    auto* perm = g.perm.get<std::uint32_t>(m, s);
    iota_kernel<<<cuda_blocks_for(m), block, 0, s>>>(iota, m);
    CUSENSE_CHECK_LAST_ERROR();
    time_bits_kernel<<<cuda_blocks_for(m), block, 0, s>>>(em.t, nullptr, m, tkey);
    CUSENSE_CHECK_LAST_ERROR();
    sort_pairs(tkey, tkey2, iota, perm, m);
    auto* out_t   = g.out_t.get<std::int64_t>(m, s);
    auto* out_key = g.out_key.get<std::uint32_t>(m, s);
    auto* out_m   = g.out_m.get<ops::moments>(m * channels_, s);
    auto* out_e   = extent_ ? g.out_e.get<ops::extent>(m * channels_, s) : nullptr;
    order_rows_kernel<<<cuda_blocks_for(m), block, 0, s>>>(perm, m, em, row_m, row_e, channels, out_t,
                                                           out_key, out_m, out_e);
    CUSENSE_CHECK_LAST_ERROR();
    auto* h_t   = g.h_t.get<std::int64_t>(m);
    auto* h_key = g.h_key.get<std::uint32_t>(m);
    auto* h_m   = g.h_m.get<ops::moments>(m * channels_);
    auto* h_e   = extent_ ? g.h_e.get<ops::extent>(m * channels_) : nullptr;
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_t, out_t, m * sizeof(std::int64_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_key, out_key, m * sizeof(std::uint32_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_m, out_m, m * channels_ * sizeof(ops::moments),
                                     cudaMemcpyDeviceToHost, s));
    if (h_e != nullptr) {
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_e, out_e, m * channels_ * sizeof(ops::extent),
                                       cudaMemcpyDeviceToHost, s));
    }

    // new history: the last rows - 1 timeline entries of each key
    std::size_t hn = 0;
    if (rows_ > 1) {
      auto* keep = g.flag.get<std::uint8_t>(nt, s);  // the emission flags are no longer needed
      auto* hidx = g.hidx.get<std::uint32_t>(nt, s);
      history_keep_kernel<<<cuda_blocks_for(nt), block, 0, s>>>(tl.key, nt, rows_, keep);
      CUSENSE_CHECK_LAST_ERROR();
      run_cub("cub::DeviceSelect::Flagged", [&](void* temp, std::size_t& tb) {
        return cub::DeviceSelect::Flagged(temp, tb, thrust::counting_iterator<std::uint32_t>(0), keep, hidx,
                                          &d_sc->selected, static_cast<int>(nt), s);
      });
      rolling_scalars const hs = read_scalars();  // also completes the row copies
      if (hs.selected < 0 || static_cast<std::size_t>(hs.selected) > nt) {
        throw cuda_error("cusense: inconsistent history count from the device");
      }
      hn = static_cast<std::size_t>(hs.selected);
      if (hn > 0) {
        records const next = g.hist[1 - hcur_].reserve(hn, channels_, s);
        gather_records_kernel<<<cuda_blocks_for(hn), block, 0, s>>>(tl, hidx, hn, false, channels, next);
        CUSENSE_CHECK_LAST_ERROR();
      }
    }
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));

    // commit: adopt the new pending records and history, append the rows
    windows_out_.reserve(m);
    pcur_         = 1 - pcur_;
    pending_size_ = rest;
    if (rows_ > 1) {
      hcur_      = 1 - hcur_;
      hist_size_ = hn;
    }
    for (std::size_t r = 0; r < m; ++r) {
      for (std::size_t c = 0; c < channels_; ++c) {
        row_acc_[c].m = h_m[r * channels_ + c];
        if (h_e != nullptr) { row_acc_[c].e = h_e[r * channels_ + c]; }
      }
      windows_out_.append_row(h_key[r], h_t[r], row_acc_.data(), min_periods_);
    }
    emitted_ += m;
  }

  /// Host copy of the first n records of a device set.
  host_records copy_back(records const& src, std::size_t n)
  {
    host_records r;
    r.t.resize(n);
    r.key.resize(n);
    r.seq.resize(n);
    r.val.resize(n * channels_);
    if (n == 0) { return r; }
    cudaStream_t const s = gpu_->stream.get();
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(r.t.data(), src.t, n * sizeof(std::int64_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(r.key.data(), src.key, n * sizeof(std::uint32_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(r.seq.data(), src.seq, n * sizeof(std::uint64_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(r.val.data(), src.val, n * channels_ * sizeof(double),
                                     cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    return r;
  }

  /// Uploads host records into a device set (its contents replaced).
  void upload(record_arrays& dst, host_records const& src)
  {
    std::size_t const n = src.t.size();
    if (n == 0) { return; }
    cudaStream_t const s = gpu_->stream.get();
    records const d      = dst.reserve(n, channels_, s);
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(d.t, src.t.data(), n * sizeof(std::int64_t), cudaMemcpyHostToDevice, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(d.key, src.key.data(), n * sizeof(std::uint32_t), cudaMemcpyHostToDevice, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(d.seq, src.seq.data(), n * sizeof(std::uint64_t), cudaMemcpyHostToDevice, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(d.val, src.val.data(), n * channels_ * sizeof(double),
                                     cudaMemcpyHostToDevice, s));
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));  // the host vectors may go away on return
  }

  /// Keys holding state, sorted: every key with a pending record or history (the CPU engine's
  /// per-key entries: a key gets one with its first non-late record and keeps it until flush).
  std::vector<std::uint32_t> open_keys()
  {
    device_guard guard(device_);
    cudaStream_t const s = gpu_->stream.get();
    std::vector<std::uint32_t> keys(pending_size_ + hist_size_);
    if (pending_size_ > 0) {
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(keys.data(), gpu_->pending[pcur_].key.data<std::uint32_t>(),
                                       pending_size_ * sizeof(std::uint32_t), cudaMemcpyDeviceToHost, s));
    }
    if (hist_size_ > 0) {
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(keys.data() + pending_size_, gpu_->hist[hcur_].key.data<std::uint32_t>(),
                                       hist_size_ * sizeof(std::uint32_t), cudaMemcpyDeviceToHost, s));
    }
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    return keys;
  }

  std::uint64_t count_open_keys() { return open_keys().size(); }

  pipeline_options options_;
  std::int64_t rows_;
  std::int64_t min_periods_;
  bool extent_;  // order aggregations: extents next to the moments
  std::size_t channels_;
  int device_;
  std::size_t chunk_cap_ = 0;
  std::unique_ptr<rolling_gpu> gpu_;

  window_table_builder windows_out_;
  late_table_builder late_out_;
  std::vector<channel_acc> row_acc_;  // one row (host scratch)
  watermark_clock clock_;
  std::uint64_t seq_base_   = 0;  // arrival number of the next record
  std::uint64_t aggregated_ = 0;
  std::uint64_t late_count_ = 0;
  std::uint64_t nan_values_ = 0;
  std::uint64_t emitted_    = 0;
  int pcur_                 = 0;  // which pending[] holds the pending records
  std::size_t pending_size_ = 0;
  int hcur_                 = 0;  // which hist[] holds the history
  std::size_t hist_size_    = 0;
};

// ----- checkpoints: the CPU rolling engine's form

void cuda_rolling_engine::save_state(state_writer& out)
{
  out.boolean(clock_.has);
  out.i64(clock_.max_ts);
  out.u64(seq_base_);
  out.u64(aggregated_);
  out.u64(late_count_);
  out.u64(nan_values_);
  out.u64(emitted_);
  device_guard guard(device_);
  host_records const pend = copy_back(gpu_->pending[pcur_].view(), pending_size_);
  host_records const hist = copy_back(gpu_->hist[hcur_].view(), hist_size_);
  auto write_rec = [&](host_records const& r, std::size_t i) {
    out.i64(r.t[i]);
    out.u32(r.key[i]);
    out.u64(r.seq[i]);
    for (std::size_t c = 0; c < channels_; ++c) out.f64(r.val[i * channels_ + c]);
  };
  // the waiting records in (t, key, arrival) order
  std::vector<std::size_t> order(pending_size_);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return std::tie(pend.t[a], pend.key[a], pend.seq[a]) < std::tie(pend.t[b], pend.key[b], pend.seq[b]);
  });
  out.u64(order.size());
  for (std::size_t i : order) write_rec(pend, i);
  // per key (every key holding state, ascending) its history, possibly empty
  std::vector<std::uint32_t> const keys = rows_ > 1 ? open_keys() : std::vector<std::uint32_t>{};
  out.u64(keys.size());
  std::size_t at = 0;  // the history is sorted by key
  for (std::uint32_t key : keys) {
    std::size_t end = at;
    while (end < hist_size_ && hist.key[end] == key) ++end;
    out.u32(key);
    out.u64(end - at);
    for (std::size_t i = at; i < end; ++i) write_rec(hist, i);
    at = end;
  }
  if (at != hist_size_) { throw cuda_error("cusense: rolling history out of key order on the device"); }
  // Since format version 5: keys whose count of emitted records differs from their history's
  // length (the CPU engine aligns the blocks of long windows to it). This engine does not count
  // them: none is written, and a CPU restore aligns the blocks to the history.
  out.u64(0);
}

void cuda_rolling_engine::load_state(state_reader& in)
{
  watermark_clock clock;
  clock.ooo    = options_.max_out_of_orderness;
  clock.has    = in.boolean();
  clock.max_ts = in.i64();
  if (clock.has) { checked_time(clock.max_ts); }
  std::uint64_t const seq        = in.u64();
  std::uint64_t const aggregated = in.u64();
  std::uint64_t const late       = in.u64();
  std::uint64_t const nans       = in.u64();
  std::uint64_t const emitted    = in.u64();
  auto read_rec = [&](host_records& r) {
    r.t.push_back(checked_time(in.i64()));
    r.key.push_back(in.u32());
    r.seq.push_back(in.u64());
    for (std::size_t c = 0; c < channels_; ++c) r.val.push_back(in.f64());
  };
  std::size_t const rec_bytes = 20 + 8 * channels_;
  host_records pend;
  std::size_t const np = in.count(rec_bytes);
  for (std::size_t i = 0; i < np; ++i) read_rec(pend);
  // per key: its history (kept in emission order), gathered in ascending key order
  std::size_t const nk = in.count(12);
  std::vector<std::pair<std::uint32_t, host_records>> groups;
  groups.reserve(nk);
  for (std::size_t k = 0; k < nk; ++k) {
    std::uint32_t const key = in.u32();
    std::size_t const n     = in.count(rec_bytes);
    state_reader::check(rows_ > 1 && static_cast<std::int64_t>(n) <= rows_ - 1,
                        "rolling history longer than the window or repeated");
    groups.emplace_back(key, host_records{});
    for (std::size_t i = 0; i < n; ++i) {
      read_rec(groups.back().second);
      state_reader::check(groups.back().second.key.back() == key, "rolling history holds another key");
    }
  }
  if (in.version() >= 5) {  // per-key counts of emitted records (CPU long windows): not needed here
    std::size_t const aligned = in.count(12);
    for (std::size_t i = 0; i < aligned; ++i) {
      (void)in.u32();
      (void)in.u64();
    }
  }
  std::stable_sort(groups.begin(), groups.end(),
                   [](auto const& a, auto const& b) { return a.first < b.first; });
  for (std::size_t k = 1; k < groups.size(); ++k) {
    state_reader::check(groups[k - 1].first != groups[k].first,
                        "rolling history longer than the window or repeated");
  }
  host_records hist;
  for (auto const& [key, g] : groups) {
    hist.t.insert(hist.t.end(), g.t.begin(), g.t.end());
    hist.key.insert(hist.key.end(), g.key.begin(), g.key.end());
    hist.seq.insert(hist.seq.end(), g.seq.begin(), g.seq.end());
    hist.val.insert(hist.val.end(), g.val.begin(), g.val.end());
  }
  // the device keeps the pending records in arrival order
  std::vector<std::size_t> order(np);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return pend.seq[a] < pend.seq[b]; });
  host_records sorted;
  for (std::size_t i : order) {
    sorted.t.push_back(pend.t[i]);
    sorted.key.push_back(pend.key[i]);
    sorted.seq.push_back(pend.seq[i]);
    sorted.val.insert(sorted.val.end(), pend.val.begin() + static_cast<std::ptrdiff_t>(i * channels_),
                      pend.val.begin() + static_cast<std::ptrdiff_t>((i + 1) * channels_));
  }
  device_guard guard(device_);
  upload(gpu_->pending[pcur_], sorted);
  upload(gpu_->hist[hcur_], hist);
  clock_        = clock;
  seq_base_     = seq;
  aggregated_   = aggregated;
  late_count_   = late;
  nan_values_   = nans;
  emitted_      = emitted;
  pending_size_ = np;
  hist_size_    = hist.t.size();
}

}  // namespace

std::unique_ptr<window_engine> make_cuda_rolling_engine(pipeline_options const& options)
{
  int const device = usable_cuda_device(reinterpret_cast<void const*>(&iota_kernel));
  return std::make_unique<cuda_rolling_engine>(options, device);
}

}  // namespace cusense::detail
