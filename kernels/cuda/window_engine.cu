// CUDA backend of the keyed window engine.
//
// Staging: push() cuts a batch into chunks of at most `staging_records` records. Each chunk is
// copied into the next slot of a ring of host staging slots (pinned, pageable as a fallback),
// and the host-to-device copy is enqueued on a dedicated copy stream followed by an event.
// The chunk is then handed to one worker thread, which runs the compute for chunks strictly in
// arrival order on a compute stream that first waits on the copy event. push() returns once the
// chunk is staged, so the copy of chunk k+1 overlaps the compute of chunk k; it blocks only
// when every slot is still in use (back-pressure).
//
// Compute per chunk (compute stream; the worker synchronises it to read counts):
//   1. exclusive prefix max of the timestamps, seeded with the max carried from earlier chunks
//      -> each record's watermark before it; late flag, window id, NaN count and the key /
//      window-id ranges of the non-late records (one fused kernel)
//   2. partition record indices into non-late (front, arrival order) and late (back)
//   3. stable radix sort of the non-late indices by (window id, key)
//   4. segmented reduction per (window, key, channel): sub-segments of at most 256 records
//      reduced sequentially with ops::add in arrival order, then merged per segment with
//      ops::merge in order (deterministic, no floating-point atomics)
//   5. merge of the chunk partials into the open-window state, kept on the device as arrays
//      sorted by (window id, key) with `channels` accumulators per state (binary-search merge,
//      equal entries combined with ops::merge, state first)
//   6. emission: windows to emit form a prefix of the state (sorted by window id first); its
//      length is found by a binary search for closed_before(watermark); the prefix is copied
//      back and fed to window_table_builder, then dropped from the state.
// Late records are gathered on the host from the pinned copy of the chunk using the late
// indices copied back from the device; the slot is released only after that.
#include <cuda_runtime_api.h>

#include <cub/block/block_reduce.cuh>
#include <cub/device/device_partition.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <thrust/iterator/counting_iterator.h>

#include <algorithm>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <cusense/detail/engine.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/error.hpp>
#include <cusense/ops/moments.hpp>
#include <cusense/ops/windows.hpp>

#include "cuda_utils.cuh"

namespace cusense::detail {
namespace {

constexpr int block_size = 256;
/// Longest run of records one thread reduces sequentially; longer (window, key) segments are
/// cut into sub-segments whose partials are merged afterwards.
constexpr std::uint32_t sub_segment_length = 256;
/// Largest chunk: keeps record indices in 32 bits and CUB item counts in int.
constexpr std::size_t max_chunk_records = std::size_t{1} << 30;
/// "No timestamp yet" for the prefix max (valid timestamps are >= -2^62).
constexpr long long no_time = LLONG_MIN;

/// Small values the kernels produce and the host reads back after a synchronisation.
struct chunk_scalars {
  long long chunk_max;           ///< largest timestamp seen up to the end of the chunk
  long long num_kept;            ///< non-late records (written by the partition)
  long long min_wid;             ///< smallest window id among non-late records
  long long max_wid;             ///< largest window id among non-late records
  unsigned long long nan_values; ///< NaN values among non-late records
  unsigned int max_key;          ///< largest key among non-late records
  unsigned int pad;
  long long num_segments;        ///< distinct (window, key) among non-late records
  long long num_subsegments;
  long long state_size;          ///< open states after the merge
  long long emit_count;          ///< leading states whose window is closed
};

struct classify_stats {
  long long min_wid;
  long long max_wid;
  unsigned long long nan_values;
  unsigned int max_key;
};

struct combine_classify_stats {
  __device__ classify_stats operator()(classify_stats const& a, classify_stats const& b) const
  {
    classify_stats r;
    r.min_wid    = a.min_wid < b.min_wid ? a.min_wid : b.min_wid;
    r.max_wid    = a.max_wid > b.max_wid ? a.max_wid : b.max_wid;
    r.nan_values = a.nan_values + b.nan_values;
    r.max_key    = a.max_key > b.max_key ? a.max_key : b.max_key;
    return r;
  }
};

struct max_op {
  __host__ __device__ std::int64_t operator()(std::int64_t a, std::int64_t b) const
  {
    return a < b ? b : a;
  }
};

// ---------------------------------------------------------------------------------------------
// kernels (all grid-stride, so any grid size is correct)

#define CUSENSE_GRID_STRIDE(i, n)                                                   \
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; \
       i < (n); i += static_cast<std::size_t>(gridDim.x) * blockDim.x)

__global__ void init_scalars_kernel(chunk_scalars* sc)
{
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    sc->chunk_max       = no_time;
    sc->num_kept        = 0;
    sc->min_wid         = LLONG_MAX;
    sc->max_wid         = LLONG_MIN;
    sc->nan_values      = 0;
    sc->max_key         = 0;
    sc->pad             = 0;
    sc->num_segments    = 0;
    sc->num_subsegments = 0;
    sc->state_size      = 0;
    sc->emit_count      = 0;
  }
}

/// Per record: window id, late flag (against the max of all earlier timestamps), and the
/// statistics of the non-late records. Must be launched with block_size threads per block.
template <typename T>
__global__ void __launch_bounds__(block_size)
  classify_kernel(std::int64_t const* ts, std::int64_t const* prev_max, std::uint32_t const* keys,
                  T const* values, int channels, std::size_t n, ops::tumbling window,
                  std::int64_t out_of_orderness, std::uint8_t* keep, std::int64_t* wid,
                  chunk_scalars* sc)
{
  using block_reduce = cub::BlockReduce<classify_stats, block_size>;
  __shared__ typename block_reduce::TempStorage temp;
  classify_stats local{LLONG_MAX, LLONG_MIN, 0ull, 0u};
  CUSENSE_GRID_STRIDE(i, n)
  {
    std::int64_t const t    = ts[i];
    std::int64_t const w    = window.id(t);
    std::int64_t const prev = prev_max[i];
    bool late               = false;
    if (prev != no_time) {
      std::int64_t const watermark = prev - out_of_orderness;
      late                         = w < window.closed_before(watermark);
    }
    wid[i]  = w;
    keep[i] = late ? 0 : 1;
    if (!late) {
      long long const wl = static_cast<long long>(w);
      local.min_wid      = wl < local.min_wid ? wl : local.min_wid;
      local.max_wid      = wl > local.max_wid ? wl : local.max_wid;
      local.max_key      = keys[i] > local.max_key ? keys[i] : local.max_key;
      T const* v         = values + i * static_cast<std::size_t>(channels);
      for (int c = 0; c < channels; ++c) {
        local.nan_values += ops::is_nan(static_cast<double>(v[c])) ? 1u : 0u;
      }
    }
    if (i + 1 == n) { sc->chunk_max = static_cast<long long>(prev > t ? prev : t); }
  }
  classify_stats const agg = block_reduce(temp).Reduce(local, combine_classify_stats{});
  if (threadIdx.x == 0 && agg.min_wid <= agg.max_wid) {
    atomicMin(&sc->min_wid, agg.min_wid);
    atomicMax(&sc->max_wid, agg.max_wid);
    atomicMax(&sc->max_key, agg.max_key);
    if (agg.nan_values != 0) { atomicAdd(&sc->nan_values, agg.nan_values); }
  }
}

/// (window id - min) << key_bits | key, for the kept records.
__global__ void composite_key_kernel(std::uint32_t const* sel, std::size_t nn,
                                     std::int64_t const* wid, std::uint32_t const* keys,
                                     std::int64_t min_wid, int key_bits, std::uint64_t* out)
{
  CUSENSE_GRID_STRIDE(j, nn)
  {
    std::uint32_t const i  = sel[j];
    std::uint64_t const dw = static_cast<std::uint64_t>(wid[i]) - static_cast<std::uint64_t>(min_wid);
    out[j]                 = (dw << key_bits) | static_cast<std::uint64_t>(keys[i]);
  }
}

__global__ void gather_keys_kernel(std::uint32_t const* sel, std::size_t nn,
                                   std::uint32_t const* keys, std::uint32_t* out)
{
  CUSENSE_GRID_STRIDE(j, nn) { out[j] = keys[sel[j]]; }
}

__global__ void window_offset_kernel(std::uint32_t const* idx, std::size_t nn,
                                     std::int64_t const* wid, std::int64_t min_wid,
                                     std::uint64_t* out)
{
  CUSENSE_GRID_STRIDE(j, nn)
  {
    out[j] = static_cast<std::uint64_t>(wid[idx[j]]) - static_cast<std::uint64_t>(min_wid);
  }
}

/// Segment heads (first record of a (window, key) run in sorted order) and sub-segment heads
/// (segment heads plus every sub_segment_length-th position).
__global__ void segment_flags_kernel(std::uint32_t const* sorted, std::size_t nn,
                                     std::int64_t const* wid, std::uint32_t const* keys,
                                     std::uint32_t* head, std::uint32_t* subhead)
{
  CUSENSE_GRID_STRIDE(j, nn)
  {
    bool h = (j == 0);
    if (!h) {
      std::uint32_t const i = sorted[j];
      std::uint32_t const p = sorted[j - 1];
      h                     = wid[i] != wid[p] || keys[i] != keys[p];
    }
    head[j]    = h ? 1u : 0u;
    subhead[j] = (h || j % sub_segment_length == 0) ? 1u : 0u;
  }
}

/// From the inclusive scans of the head flags: per segment its (window, key) and first
/// sub-segment; per sub-segment its first position; the counts.
__global__ void scatter_segments_kernel(std::uint32_t const* sorted, std::size_t nn,
                                        std::int64_t const* wid, std::uint32_t const* keys,
                                        std::uint32_t const* head, std::uint32_t const* subhead,
                                        std::uint32_t const* seg_incl, std::uint32_t const* sub_incl,
                                        std::int64_t* part_wid, std::uint32_t* part_key,
                                        std::uint32_t* seg_first_sub, std::uint32_t* sub_pos,
                                        chunk_scalars* sc)
{
  CUSENSE_GRID_STRIDE(j, nn)
  {
    if (head[j] != 0) {
      std::uint32_t const g = seg_incl[j] - 1;
      std::uint32_t const i = sorted[j];
      part_wid[g]           = wid[i];
      part_key[g]           = keys[i];
      seg_first_sub[g]      = sub_incl[j] - 1;
    }
    if (subhead[j] != 0) { sub_pos[sub_incl[j] - 1] = static_cast<std::uint32_t>(j); }
    if (j + 1 == nn) {
      sc->num_segments    = static_cast<long long>(seg_incl[j]);
      sc->num_subsegments = static_cast<long long>(sub_incl[j]);
    }
  }
}

/// One thread per (sub-segment, channel): ops::add over its records in arrival order.
template <typename T>
__global__ void subsegment_reduce_kernel(std::uint32_t const* sorted, T const* values,
                                         int channels, std::uint32_t const* sub_pos,
                                         std::size_t nsub, std::size_t nn, ops::moments* out)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_GRID_STRIDE(t, nsub * C)
  {
    std::size_t const s     = t / C;
    std::size_t const c     = t % C;
    std::size_t const begin = sub_pos[s];
    std::size_t const end   = s + 1 < nsub ? sub_pos[s + 1] : nn;
    ops::moments m{};
    for (std::size_t j = begin; j < end; ++j) {
      ops::add(m, static_cast<double>(values[static_cast<std::size_t>(sorted[j]) * C + c]));
    }
    out[t] = m;
  }
}

/// One thread per (segment, channel): ops::merge of its sub-segment partials in order.
__global__ void segment_merge_kernel(std::uint32_t const* seg_first_sub, std::size_t nseg,
                                     std::size_t nsub, int channels, ops::moments const* sub_acc,
                                     ops::moments* out)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_GRID_STRIDE(t, nseg * C)
  {
    std::size_t const g     = t / C;
    std::size_t const c     = t % C;
    std::size_t const begin = seg_first_sub[g];
    std::size_t const end   = g + 1 < nseg ? seg_first_sub[g + 1] : nsub;
    ops::moments m          = sub_acc[begin * C + c];
    for (std::size_t s = begin + 1; s < end; ++s) { m = ops::merge(m, sub_acc[s * C + c]); }
    out[t] = m;
  }
}

/// First position in the sorted (wid, key) arrays [0, n) not less than (qw, qk).
__device__ std::size_t lower_bound_pair(std::int64_t const* wid, std::uint32_t const* key,
                                        std::size_t n, std::int64_t qw, std::uint32_t qk)
{
  std::size_t lo = 0, hi = n;
  while (lo < hi) {
    std::size_t const mid = lo + (hi - lo) / 2;
    bool const less       = wid[mid] < qw || (wid[mid] == qw && key[mid] < qk);
    if (less) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/// Per partial j: its insertion point in the state and whether the state already holds it;
/// matched[np] = 0 terminates the array for the exclusive scan.
__global__ void locate_partials_kernel(std::int64_t const* p_wid, std::uint32_t const* p_key,
                                       std::size_t np, std::int64_t const* s_wid,
                                       std::uint32_t const* s_key, std::size_t ns,
                                       std::uint64_t* pos, std::uint32_t* matched)
{
  CUSENSE_GRID_STRIDE(j, np + 1)
  {
    if (j == np) {
      matched[np] = 0;
    } else {
      std::size_t const p = lower_bound_pair(s_wid, s_key, ns, p_wid[j], p_key[j]);
      pos[j]              = p;
      matched[j] = (p < ns && s_wid[p] == p_wid[j] && s_key[p] == p_key[j]) ? 1u : 0u;
    }
  }
}

/// State i goes to i + (number of unmatched partials before it).
/// `mx` is the exclusive scan of `matched` (np + 1 entries).
__global__ void place_states_kernel(std::int64_t const* s_wid, std::uint32_t const* s_key,
                                    ops::moments const* s_acc, std::size_t ns,
                                    std::int64_t const* p_wid, std::uint32_t const* p_key,
                                    std::size_t np, std::uint32_t const* mx, int channels,
                                    std::int64_t* d_wid, std::uint32_t* d_key, ops::moments* d_acc)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_GRID_STRIDE(i, ns)
  {
    std::size_t const below = lower_bound_pair(p_wid, p_key, np, s_wid[i], s_key[i]);
    std::size_t const o     = i + below - mx[below];
    d_wid[o]                = s_wid[i];
    d_key[o]                = s_key[i];
    for (std::size_t c = 0; c < C; ++c) { d_acc[o * C + c] = s_acc[i * C + c]; }
  }
}

/// Partial j goes to pos[j] + (number of unmatched partials before it); a matched partial is
/// merged into the state entry there (state first: it holds the earlier records). Runs after
/// place_states_kernel on the same stream.
__global__ void place_partials_kernel(std::uint64_t const* pos, std::uint32_t const* matched,
                                      std::uint32_t const* mx, std::int64_t const* p_wid,
                                      std::uint32_t const* p_key, ops::moments const* p_acc,
                                      std::size_t np, ops::moments const* s_acc, int channels,
                                      std::int64_t* d_wid, std::uint32_t* d_key, ops::moments* d_acc)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_GRID_STRIDE(j, np)
  {
    std::size_t const p = pos[j];
    std::size_t const o = p + j - mx[j];
    d_wid[o]            = p_wid[j];
    d_key[o]            = p_key[j];
    if (matched[j] != 0) {
      for (std::size_t c = 0; c < C; ++c) {
        d_acc[o * C + c] = ops::merge(s_acc[p * C + c], p_acc[j * C + c]);
      }
    } else {
      for (std::size_t c = 0; c < C; ++c) { d_acc[o * C + c] = p_acc[j * C + c]; }
    }
  }
}

/// Size of the state (base size plus unmatched partials when `mx_end` is given) and the number
/// of leading states whose window id is below `closed_before`.
__global__ void locate_emission_kernel(std::int64_t const* s_wid, std::size_t ns_base,
                                       std::uint32_t const* mx_end, std::size_t np,
                                       std::int64_t closed_before, chunk_scalars* sc)
{
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  std::size_t const ns = mx_end != nullptr ? ns_base + np - *mx_end : ns_base;
  std::size_t lo = 0, hi = ns;
  while (lo < hi) {
    std::size_t const mid = lo + (hi - lo) / 2;
    if (s_wid[mid] < closed_before) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  sc->state_size = static_cast<long long>(ns);
  sc->emit_count = static_cast<long long>(lo);
}

#undef CUSENSE_GRID_STRIDE

unsigned grid_for(std::size_t n)
{
  std::size_t const blocks = (n + block_size - 1) / block_size;
  return static_cast<unsigned>(std::clamp<std::size_t>(blocks, 1, std::size_t{1} << 20));
}

int bit_width(std::uint64_t v)
{
  int b = 0;
  while (v != 0) {
    ++b;
    v >>= 1;
  }
  return b;
}

// ---------------------------------------------------------------------------------------------
// engine

/// One host staging slot and the device buffer its chunk is copied into. Layout (both sides),
/// for capacity `cap` records: timestamps (cap * 8 bytes), values (cap * channels * 8 bytes,
/// room for doubles), keys (cap * 4 bytes).
struct staging_slot {
  host_buffer host;
  device_buffer dev;
  std::size_t cap = 0;
  cuda_event copied;    ///< H2D copy done (copy stream)
  cuda_event consumed;  ///< compute done with `dev` (compute stream)
  bool busy = false;    ///< owned by the worker; guarded by the engine mutex
};

/// One (window, key) state array set: sorted by (window id, key), `channels` accumulators each.
struct state_arrays {
  device_buffer wid;
  device_buffer key;
  device_buffer acc;
};

/// Every CUDA resource of an engine, so that they are released together under a device guard.
struct gpu_resources {
  cuda_stream copy;
  cuda_stream compute;
  std::vector<std::unique_ptr<staging_slot>> slots;

  // per-chunk scratch (grown, never shrunk)
  device_buffer cub_temp;
  device_buffer scalars;
  device_buffer prev_max, wid, keep, sel, sorted, sort_tmp_idx;
  device_buffer ckey, ckey_out, key_tmp, key_tmp_out;
  device_buffer head, subhead, seg_incl, sub_incl;
  device_buffer part_wid, part_key, seg_first_sub, sub_pos;
  device_buffer sub_acc, part_acc;
  device_buffer pos, matched, mx;

  // open-window state, double-buffered for the merge
  state_arrays state[2];

  // host side of the read-backs
  host_buffer h_scalars;
  host_buffer h_late;
  host_buffer h_wid, h_key, h_acc;
};

struct task {
  enum class kind { chunk, flush };
  kind type         = kind::chunk;
  int slot          = -1;
  std::size_t n     = 0;
  bool values_f32   = false;
};

class cuda_window_engine final : public window_engine {
 public:
  cuda_window_engine(pipeline_options const& options, int device)
    : options_(options),
      window_{options.window.size, options.window.offset},
      channels_(static_cast<std::size_t>(options.channels)),
      device_(device),
      windows_out_(options),
      late_out_(options)
  {
    if (options.channels < 1) { throw invalid_argument("cusense: channels must be >= 1"); }
    if (options.window.size <= 0) { throw invalid_argument("cusense: window size must be positive"); }
    chunk_cap_ = std::clamp<std::size_t>(options.staging_records, 1, max_chunk_records);
    int const nslots = std::max(1, options.staging_slots);

    device_guard guard(device_);
    gpu_ = std::make_unique<gpu_resources>();
    for (int i = 0; i < nslots; ++i) { gpu_->slots.push_back(std::make_unique<staging_slot>()); }
    gpu_->scalars.reserve(sizeof(chunk_scalars));
    gpu_->h_scalars.reserve(sizeof(chunk_scalars));
    worker_ = std::thread([this] { worker_main(); });
  }

  ~cuda_window_engine() override
  {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    work_cv_.notify_all();
    if (worker_.joinable()) { worker_.join(); }
    try {
      device_guard guard(device_);
      CUSENSE_CUDA_TRY_NO_THROW(cudaStreamSynchronize(gpu_->copy.get()));
      CUSENSE_CUDA_TRY_NO_THROW(cudaStreamSynchronize(gpu_->compute.get()));
      gpu_.reset();
    } catch (...) {
      // Never throw from a destructor; the resources are released by gpu_'s destructor.
    }
  }

  cuda_window_engine(cuda_window_engine const&)            = delete;
  cuda_window_engine& operator=(cuda_window_engine const&) = delete;

  void push(record_batch const& batch) override
  {
    rethrow_pending();
    if (batch.n == 0) return;
    device_guard guard(device_);
    std::size_t const value_size = batch.values_f32 ? sizeof(float) : sizeof(double);
    auto const* values           = static_cast<unsigned char const*>(batch.values);
    for (std::size_t begin = 0; begin < batch.n; begin += chunk_cap_) {
      std::size_t const m = std::min(chunk_cap_, batch.n - begin);
      int const index     = next_slot_;
      staging_slot& slot  = *gpu_->slots[static_cast<std::size_t>(index)];
      {
        // Back-pressure: wait until the worker has finished with this slot.
        std::unique_lock<std::mutex> lock(mutex_);
        slot_cv_.wait(lock, [&] { return !slot.busy; });
      }
      next_slot_ = (index + 1) % static_cast<int>(gpu_->slots.size());
      // The previous copy out of the host buffer must be complete before it is overwritten
      // (normally long done: the worker waited for it).
      CUSENSE_CUDA_TRY(cudaEventSynchronize(slot.copied.get()));
      if (slot.cap < m) {
        std::size_t const cap = std::min(chunk_cap_, std::max(m, 2 * slot.cap));
        CUSENSE_CUDA_TRY(cudaEventSynchronize(slot.consumed.get()));
        slot.cap = 0;
        slot.host.reserve(slot_bytes(cap));
        slot.dev.reserve(slot_bytes(cap));
        slot.cap = cap;
      }
      auto* h = slot.host.data<unsigned char>();
      auto* d = slot.dev.data<unsigned char>();
      std::size_t const ts_bytes  = m * sizeof(std::int64_t);
      std::size_t const val_bytes = m * channels_ * value_size;
      std::size_t const key_bytes = m * sizeof(std::uint32_t);
      std::memcpy(h + ts_offset(), batch.timestamps + begin, ts_bytes);
      std::memcpy(h + values_offset(slot.cap), values + begin * channels_ * value_size, val_bytes);
      std::memcpy(h + keys_offset(slot.cap), batch.keys + begin, key_bytes);

      cudaStream_t const cs = gpu_->copy.get();
      // The device buffer may still be read by the compute of the slot's previous chunk.
      CUSENSE_CUDA_TRY(cudaStreamWaitEvent(cs, slot.consumed.get(), 0));
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(d + ts_offset(), h + ts_offset(), ts_bytes,
                                       cudaMemcpyHostToDevice, cs));
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(d + values_offset(slot.cap), h + values_offset(slot.cap),
                                       val_bytes, cudaMemcpyHostToDevice, cs));
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(d + keys_offset(slot.cap), h + keys_offset(slot.cap),
                                       key_bytes, cudaMemcpyHostToDevice, cs));
      CUSENSE_CUDA_TRY(cudaEventRecord(slot.copied.get(), cs));

      task t;
      t.type       = task::kind::chunk;
      t.slot       = index;
      t.n          = m;
      t.values_f32 = batch.values_f32;
      enqueue(t, &slot);
    }
  }

  void flush() override
  {
    rethrow_pending();
    task t;
    t.type = task::kind::flush;
    enqueue(t, nullptr);
    wait_idle();
    rethrow_pending();
  }

  void drain(table* windows, table* late) override
  {
    wait_idle();
    rethrow_pending();
    if (windows) { windows->append(windows_out_.finish()); }
    if (late) { late->append(late_out_.finish()); }
  }

  engine_counters counters() override
  {
    wait_idle();
    rethrow_pending();
    engine_counters c;
    c.aggregated    = aggregated_;
    c.late          = late_count_;
    c.nan_values    = nan_values_;
    c.emitted       = emitted_;
    c.open_windows  = static_cast<std::uint64_t>(state_size_);
    c.state_bytes   = static_cast<std::uint64_t>(state_size_) *
                    (sizeof(std::int64_t) + sizeof(std::uint32_t) + channels_ * sizeof(ops::moments));
    c.open_keys     = count_open_keys();
    c.has_watermark = has_max_;
    c.watermark     = has_max_ ? watermark() : 0;
    return c;
  }

 private:
  /// Distinct keys among the open states (caller thread, worker idle): the keys are copied
  /// back and counted on the host. Meant for stats(), not for the hot path.
  std::uint64_t count_open_keys()
  {
    if (state_size_ == 0) return 0;
    device_guard guard(device_);
    cudaStream_t const s = gpu_->compute.get();
    std::vector<std::uint32_t> keys(state_size_);
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(keys.data(), gpu_->state[cur_].key.data<std::uint32_t>() + offset_,
                                     state_size_ * sizeof(std::uint32_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    std::sort(keys.begin(), keys.end());
    return static_cast<std::uint64_t>(std::unique(keys.begin(), keys.end()) - keys.begin());
  }

  // ----- slot layout
  static constexpr std::size_t ts_offset() { return 0; }
  std::size_t values_offset(std::size_t cap) const { return cap * sizeof(std::int64_t); }
  std::size_t keys_offset(std::size_t cap) const
  {
    return cap * sizeof(std::int64_t) + cap * channels_ * sizeof(double);
  }
  std::size_t slot_bytes(std::size_t cap) const { return keys_offset(cap) + cap * sizeof(std::uint32_t); }

  std::int64_t watermark() const { return max_ts_ - options_.max_out_of_orderness; }

  // ----- queue and worker
  void enqueue(task const& t, staging_slot* slot)
  {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (slot != nullptr) { slot->busy = true; }
      queue_.push_back(t);
      ++outstanding_;
    }
    work_cv_.notify_one();
  }

  void wait_idle()
  {
    std::unique_lock<std::mutex> lock(mutex_);
    idle_cv_.wait(lock, [&] { return outstanding_ == 0; });
  }

  void rethrow_pending()
  {
    std::exception_ptr err;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      err = std::exchange(error_, nullptr);
    }
    if (err) { std::rethrow_exception(err); }
  }

  void worker_main()
  {
    if (cudaSetDevice(device_) != cudaSuccess) { (void)cudaGetLastError(); }
    for (;;) {
      task t;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        t = queue_.front();
        queue_.pop_front();
      }
      std::exception_ptr err;
      staging_slot* slot = nullptr;
      try {
        if (t.type == task::kind::chunk) {
          slot = gpu_->slots[static_cast<std::size_t>(t.slot)].get();
          if (t.values_f32) {
            process_chunk<float>(*slot, t.n);
          } else {
            process_chunk<double>(*slot, t.n);
          }
        } else {
          if (state_size_ > 0) { emit_prefix(state_size_); }
        }
      } catch (...) {
        err = std::current_exception();
        recover_after_error();
      }
      if (slot != nullptr) {
        // Later copies into the slot's device buffer wait for everything enqueued so far.
        CUSENSE_CUDA_TRY_NO_THROW(cudaEventRecord(slot->consumed.get(), gpu_->compute.get()));
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (err && !error_) { error_ = err; }
        if (slot != nullptr) { slot->busy = false; }
        --outstanding_;
      }
      slot_cv_.notify_all();
      idle_cv_.notify_all();
    }
  }

  /// After a failed chunk: make the host view of the state consistent again, so the engine
  /// stays usable. If the size of a half-finished merge cannot be read back, the open windows
  /// are dropped (the error has been reported to the caller).
  void recover_after_error() noexcept
  {
    if (!pending_merge_) return;
    try {
      cudaStream_t const s = gpu_->compute.get();
      auto* d_sc           = gpu_->scalars.data<chunk_scalars>();
      locate_emission_kernel<<<1, 1, 0, s>>>(gpu_->state[cur_].wid.data<std::int64_t>(),
                                             pending_base_, pending_mx_end_, pending_np_,
                                             std::numeric_limits<std::int64_t>::min(), d_sc);
      CUSENSE_CHECK_LAST_ERROR();
      state_size_ = static_cast<std::size_t>(read_scalars(s).state_size);
      offset_     = 0;
    } catch (...) {
      state_size_ = 0;
      offset_     = 0;
    }
    pending_merge_ = false;
  }

  // ----- compute (worker thread only)
  template <typename F>
  void run_cub(char const* what, F&& f)
  {
    std::size_t bytes = 0;
    cudaError_t err   = f(nullptr, bytes);
    if (err != cudaSuccess) { throw_cuda_error(err, what, __FILE__, __LINE__); }
    void* temp = gpu_->cub_temp.get<unsigned char>(bytes, gpu_->compute.get());
    err        = f(temp, bytes);
    if (err != cudaSuccess) { throw_cuda_error(err, what, __FILE__, __LINE__); }
  }

  chunk_scalars read_scalars(cudaStream_t s)
  {
    auto* h = gpu_->h_scalars.data<chunk_scalars>();
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h, gpu_->scalars.data<chunk_scalars>(), sizeof(chunk_scalars),
                                     cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    return *h;
  }

  template <typename T>
  void process_chunk(staging_slot& slot, std::size_t n)
  {
    gpu_resources& g      = *gpu_;
    cudaStream_t const s  = g.compute.get();
    int const channels    = options_.channels;
    std::size_t const cap = slot.cap;
    CUSENSE_CUDA_TRY(cudaStreamWaitEvent(s, slot.copied.get(), 0));

    auto* dev             = slot.dev.data<unsigned char>();
    auto const* d_ts      = reinterpret_cast<std::int64_t const*>(dev + ts_offset());
    auto const* d_values  = reinterpret_cast<T const*>(dev + values_offset(cap));
    auto const* d_keys    = reinterpret_cast<std::uint32_t const*>(dev + keys_offset(cap));
    auto* d_sc            = g.scalars.data<chunk_scalars>();
    int const items       = static_cast<int>(n);

    init_scalars_kernel<<<1, 1, 0, s>>>(d_sc);
    CUSENSE_CHECK_LAST_ERROR();

    // 1. watermark before each record and the late flag
    auto* d_prev = g.prev_max.get<std::int64_t>(n, s);
    std::int64_t const carried = has_max_ ? max_ts_ : static_cast<std::int64_t>(no_time);
    run_cub("cub::DeviceScan::ExclusiveScan", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceScan::ExclusiveScan(temp, bytes, d_ts, d_prev, max_op{}, carried, items, s);
    });
    auto* d_keep = g.keep.get<std::uint8_t>(n, s);
    auto* d_wid  = g.wid.get<std::int64_t>(n, s);
    classify_kernel<T><<<grid_for(n), block_size, 0, s>>>(d_ts, d_prev, d_keys, d_values, channels,
                                                          n, window_, options_.max_out_of_orderness,
                                                          d_keep, d_wid, d_sc);
    CUSENSE_CHECK_LAST_ERROR();

    // 2. non-late indices to the front (arrival order), late ones to the back
    auto* d_sel = g.sel.get<std::uint32_t>(n, s);
    run_cub("cub::DevicePartition::Flagged", [&](void* temp, std::size_t& bytes) {
      return cub::DevicePartition::Flagged(temp, bytes, thrust::counting_iterator<std::uint32_t>(0),
                                           d_keep, d_sel, &d_sc->num_kept, items, s);
    });
    chunk_scalars const first = read_scalars(s);
    if (first.num_kept < 0 || static_cast<std::size_t>(first.num_kept) > n) {
      throw cuda_error("cusense: inconsistent partition count from the device");
    }
    std::size_t const nn = static_cast<std::size_t>(first.num_kept);
    std::size_t const nl = n - nn;

    std::int64_t const old_max = max_ts_;
    bool const had_max         = has_max_;
    max_ts_  = has_max_ ? std::max<std::int64_t>(max_ts_, first.chunk_max) : first.chunk_max;
    has_max_ = true;

    std::uint32_t* h_late = nullptr;
    if (nl > 0) {
      h_late = g.h_late.get<std::uint32_t>(nl);
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_late, d_sel + nn, nl * sizeof(std::uint32_t),
                                       cudaMemcpyDeviceToHost, s));
    }

    // 3-5. aggregate the kept records into the state (leaves pending_merge_ set: the new
    // state size is still on the device)
    if (nn > 0) { aggregate<T>(nn, first, d_keys, d_values, d_wid, d_sel); }

    // 6. emission: needed after a merge, or when the watermark moved
    std::int64_t const closed = window_.closed_before(watermark());
    bool const moved          = !had_max || max_ts_ != old_max;
    bool const locate         = pending_merge_ || (moved && state_size_ > 0);
    if (pending_merge_) {
      locate_emission_kernel<<<1, 1, 0, s>>>(g.state[cur_].wid.data<std::int64_t>(), pending_base_,
                                             pending_mx_end_, pending_np_, closed, d_sc);
      CUSENSE_CHECK_LAST_ERROR();
    } else if (locate) {
      locate_emission_kernel<<<1, 1, 0, s>>>(g.state[cur_].wid.data<std::int64_t>() + offset_,
                                             state_size_, nullptr, 0, closed, d_sc);
      CUSENSE_CHECK_LAST_ERROR();
    }
    chunk_scalars const last = read_scalars(s);  // also completes the late-index copy
    if (pending_merge_) {
      state_size_    = static_cast<std::size_t>(last.state_size);
      offset_        = 0;
      pending_merge_ = false;
    }
    std::size_t const emit = locate ? static_cast<std::size_t>(last.emit_count) : 0;

    // counters of this chunk
    aggregated_ += nn;
    late_count_ += nl;
    nan_values_ += first.nan_values;

    // late records, in arrival order, from the host copy of the chunk
    if (nl > 0) {
      std::sort(h_late, h_late + nl);
      auto const* h            = slot.host.data<unsigned char>();
      auto const* h_ts         = reinterpret_cast<std::int64_t const*>(h + ts_offset());
      auto const* h_values     = reinterpret_cast<T const*>(h + values_offset(cap));
      auto const* h_keys       = reinterpret_cast<std::uint32_t const*>(h + keys_offset(cap));
      for (std::size_t k = 0; k < nl; ++k) {
        std::size_t const i = h_late[k];
        late_out_.append(h_keys[i], h_ts[i], h_values + i * channels_);
      }
    }

    if (emit > state_size_) { throw cuda_error("cusense: inconsistent emission count from the device"); }
    if (emit > 0) { emit_prefix(emit); }
  }

  /// Steps 3-5 for the nn kept records: sort, reduce, merge into the state. Leaves the merge
  /// result size on the device (pending_merge_), read back with the emission count.
  template <typename T>
  void aggregate(std::size_t nn, chunk_scalars const& first, std::uint32_t const* d_keys,
                 T const* d_values, std::int64_t const* d_wid, std::uint32_t const* d_sel)
  {
    gpu_resources& g     = *gpu_;
    cudaStream_t const s = g.compute.get();
    int const channels   = options_.channels;
    int const items      = static_cast<int>(nn);
    auto* d_sc           = g.scalars.data<chunk_scalars>();

    // 3. stable sort of the kept indices by (window id, key); ties keep arrival order
    std::int64_t const min_wid = static_cast<std::int64_t>(first.min_wid);
    std::uint64_t const span =
      static_cast<std::uint64_t>(first.max_wid) - static_cast<std::uint64_t>(first.min_wid);
    int const span_bits = bit_width(span);
    int const key_bits  = bit_width(first.max_key);
    std::uint32_t const* d_sorted = d_sel;
    if (span_bits + key_bits > 0) {
      auto* sorted = g.sorted.get<std::uint32_t>(nn, s);
      auto* ck     = g.ckey.get<std::uint64_t>(nn, s);
      auto* ck_out = g.ckey_out.get<std::uint64_t>(nn, s);
      if (span_bits + key_bits <= 64) {
        composite_key_kernel<<<grid_for(nn), block_size, 0, s>>>(d_sel, nn, d_wid, d_keys, min_wid,
                                                                  key_bits, ck);
        CUSENSE_CHECK_LAST_ERROR();
        int const end_bit = span_bits + key_bits;
        run_cub("cub::DeviceRadixSort::SortPairs", [&](void* temp, std::size_t& bytes) {
          return cub::DeviceRadixSort::SortPairs(temp, bytes, ck, ck_out, d_sel, sorted, items, 0,
                                                 end_bit, s);
        });
      } else {
        // Two stable LSD passes: by key, then by window id offset.
        auto* k1     = g.key_tmp.get<std::uint32_t>(nn, s);
        auto* k1_out = g.key_tmp_out.get<std::uint32_t>(nn, s);
        auto* tmp    = g.sort_tmp_idx.get<std::uint32_t>(nn, s);
        gather_keys_kernel<<<grid_for(nn), block_size, 0, s>>>(d_sel, nn, d_keys, k1);
        CUSENSE_CHECK_LAST_ERROR();
        run_cub("cub::DeviceRadixSort::SortPairs", [&](void* temp, std::size_t& bytes) {
          return cub::DeviceRadixSort::SortPairs(temp, bytes, k1, k1_out, d_sel, tmp, items, 0,
                                                 key_bits, s);
        });
        window_offset_kernel<<<grid_for(nn), block_size, 0, s>>>(tmp, nn, d_wid, min_wid, ck);
        CUSENSE_CHECK_LAST_ERROR();
        run_cub("cub::DeviceRadixSort::SortPairs", [&](void* temp, std::size_t& bytes) {
          return cub::DeviceRadixSort::SortPairs(temp, bytes, ck, ck_out, tmp, sorted, items, 0,
                                                 span_bits, s);
        });
      }
      d_sorted = sorted;
    }

    // 4a. (window, key) segments and sub-segments of at most sub_segment_length records
    auto* head     = g.head.get<std::uint32_t>(nn, s);
    auto* subhead  = g.subhead.get<std::uint32_t>(nn, s);
    auto* seg_incl = g.seg_incl.get<std::uint32_t>(nn, s);
    auto* sub_incl = g.sub_incl.get<std::uint32_t>(nn, s);
    segment_flags_kernel<<<grid_for(nn), block_size, 0, s>>>(d_sorted, nn, d_wid, d_keys, head,
                                                              subhead);
    CUSENSE_CHECK_LAST_ERROR();
    run_cub("cub::DeviceScan::InclusiveSum", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceScan::InclusiveSum(temp, bytes, head, seg_incl, items, s);
    });
    run_cub("cub::DeviceScan::InclusiveSum", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceScan::InclusiveSum(temp, bytes, subhead, sub_incl, items, s);
    });
    auto* part_wid      = g.part_wid.get<std::int64_t>(nn, s);
    auto* part_key      = g.part_key.get<std::uint32_t>(nn, s);
    auto* seg_first_sub = g.seg_first_sub.get<std::uint32_t>(nn, s);
    auto* sub_pos       = g.sub_pos.get<std::uint32_t>(nn, s);
    scatter_segments_kernel<<<grid_for(nn), block_size, 0, s>>>(
      d_sorted, nn, d_wid, d_keys, head, subhead, seg_incl, sub_incl, part_wid, part_key,
      seg_first_sub, sub_pos, d_sc);
    CUSENSE_CHECK_LAST_ERROR();
    chunk_scalars const counts = read_scalars(s);
    auto const nseg            = static_cast<std::size_t>(counts.num_segments);
    auto const nsub            = static_cast<std::size_t>(counts.num_subsegments);
    if (nseg == 0 || nseg > nn || nsub < nseg || nsub > nn) {
      throw cuda_error("cusense: inconsistent segment counts from the device");
    }

    // 4b. partials per (segment, channel)
    auto* sub_acc = g.sub_acc.get<ops::moments>(nsub * channels_, s);
    subsegment_reduce_kernel<T><<<grid_for(nsub * channels_), block_size, 0, s>>>(
      d_sorted, d_values, channels, sub_pos, nsub, nn, sub_acc);
    CUSENSE_CHECK_LAST_ERROR();
    ops::moments* part_acc = sub_acc;
    if (nsub != nseg) {
      part_acc = g.part_acc.get<ops::moments>(nseg * channels_, s);
      segment_merge_kernel<<<grid_for(nseg * channels_), block_size, 0, s>>>(
        seg_first_sub, nseg, nsub, channels, sub_acc, part_acc);
      CUSENSE_CHECK_LAST_ERROR();
    }

    // 5. merge into the open-window state
    std::size_t const np = nseg;
    if (state_size_ == 0) {
      state_arrays& st = g.state[cur_];
      auto* w          = st.wid.get<std::int64_t>(np, s);
      auto* k          = st.key.get<std::uint32_t>(np, s);
      auto* a          = st.acc.get<ops::moments>(np * channels_, s);
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(w, part_wid, np * sizeof(std::int64_t),
                                       cudaMemcpyDeviceToDevice, s));
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(k, part_key, np * sizeof(std::uint32_t),
                                       cudaMemcpyDeviceToDevice, s));
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(a, part_acc, np * channels_ * sizeof(ops::moments),
                                       cudaMemcpyDeviceToDevice, s));
      offset_         = 0;
      pending_merge_  = true;
      pending_base_   = np;
      pending_mx_end_ = nullptr;
      pending_np_     = 0;
      return;
    }
    std::size_t const ns = state_size_;
    state_arrays& src    = g.state[cur_];
    state_arrays& dst    = g.state[1 - cur_];
    auto const* s_wid    = src.wid.data<std::int64_t>() + offset_;
    auto const* s_key    = src.key.data<std::uint32_t>() + offset_;
    auto const* s_acc    = src.acc.data<ops::moments>() + offset_ * channels_;
    auto* d_wid_out      = dst.wid.get<std::int64_t>(ns + np, s);
    auto* d_key_out      = dst.key.get<std::uint32_t>(ns + np, s);
    auto* d_acc_out      = dst.acc.get<ops::moments>((ns + np) * channels_, s);
    auto* pos            = g.pos.get<std::uint64_t>(np, s);
    auto* matched        = g.matched.get<std::uint32_t>(np + 1, s);
    auto* mx             = g.mx.get<std::uint32_t>(np + 1, s);
    locate_partials_kernel<<<grid_for(np + 1), block_size, 0, s>>>(part_wid, part_key, np, s_wid,
                                                                   s_key, ns, pos, matched);
    CUSENSE_CHECK_LAST_ERROR();
    run_cub("cub::DeviceScan::ExclusiveSum", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceScan::ExclusiveSum(temp, bytes, matched, mx, static_cast<int>(np + 1), s);
    });
    place_states_kernel<<<grid_for(ns), block_size, 0, s>>>(s_wid, s_key, s_acc, ns, part_wid,
                                                            part_key, np, mx, channels, d_wid_out,
                                                            d_key_out, d_acc_out);
    CUSENSE_CHECK_LAST_ERROR();
    place_partials_kernel<<<grid_for(np), block_size, 0, s>>>(pos, matched, mx, part_wid, part_key,
                                                              part_acc, np, s_acc, channels,
                                                              d_wid_out, d_key_out, d_acc_out);
    CUSENSE_CHECK_LAST_ERROR();
    cur_            = 1 - cur_;
    offset_         = 0;
    pending_merge_  = true;
    pending_base_   = ns;
    pending_mx_end_ = mx + np;
    pending_np_     = np;
  }

  /// Copies the first `count` open states back, appends them to the window table in order
  /// and drops them from the state.
  void emit_prefix(std::size_t count)
  {
    gpu_resources& g     = *gpu_;
    cudaStream_t const s = g.compute.get();
    state_arrays& st     = g.state[cur_];
    auto* h_wid          = g.h_wid.get<std::int64_t>(count);
    auto* h_key          = g.h_key.get<std::uint32_t>(count);
    auto* h_acc          = g.h_acc.get<ops::moments>(count * channels_);
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_wid, st.wid.data<std::int64_t>() + offset_,
                                     count * sizeof(std::int64_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_key, st.key.data<std::uint32_t>() + offset_,
                                     count * sizeof(std::uint32_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_acc, st.acc.data<ops::moments>() + offset_ * channels_,
                                     count * channels_ * sizeof(ops::moments),
                                     cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    windows_out_.reserve(count);
    for (std::size_t r = 0; r < count; ++r) {
      windows_out_.append(h_key[r], window_.start(h_wid[r]), window_.end(h_wid[r]),
                          h_acc + r * channels_);
    }
    emitted_ += count;
    offset_ += count;
    state_size_ -= count;
    if (state_size_ == 0) { offset_ = 0; }
  }

  pipeline_options options_;
  ops::tumbling window_;
  std::size_t channels_;
  int device_;
  std::size_t chunk_cap_ = 0;
  std::unique_ptr<gpu_resources> gpu_;
  int next_slot_ = 0;  // caller thread only

  // worker-thread state (read by the caller only while the worker is idle)
  window_table_builder windows_out_;
  late_table_builder late_out_;
  std::int64_t max_ts_       = 0;
  bool has_max_              = false;
  std::uint64_t aggregated_  = 0;
  std::uint64_t late_count_  = 0;
  std::uint64_t nan_values_  = 0;
  std::uint64_t emitted_     = 0;
  int cur_                   = 0;  // which state_arrays holds the state
  std::size_t offset_        = 0;  // first live state (emitted prefixes are dropped lazily)
  std::size_t state_size_    = 0;
  bool pending_merge_        = false;  // state size known only on the device until read back
  std::size_t pending_base_  = 0;
  std::uint32_t const* pending_mx_end_ = nullptr;
  std::size_t pending_np_    = 0;

  // queue
  std::mutex mutex_;
  std::condition_variable work_cv_, slot_cv_, idle_cv_;
  std::deque<task> queue_;
  std::size_t outstanding_ = 0;
  bool stop_               = false;
  std::exception_ptr error_;
  std::thread worker_;  // last: started once everything above exists
};

}  // namespace

std::unique_ptr<window_engine> make_cuda_engine(pipeline_options const& options)
{
  int count       = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count <= 0) {
    (void)cudaGetLastError();
    throw backend_unavailable(std::string("cusense: no usable CUDA device (") +
                              (err != cudaSuccess ? cudaGetErrorString(err) : "no devices") + ")");
  }
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    device = 0;
  }
  {
    device_guard guard(device);
    cudaFuncAttributes attr{};
    err = cudaFuncGetAttributes(&attr, init_scalars_kernel);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      int major = 0, minor = 0;
      (void)cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
      (void)cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
      (void)cudaGetLastError();
      throw backend_unavailable("cusense: the CUDA backend cannot run on device " +
                                std::to_string(device) + " (compute capability " +
                                std::to_string(major) + "." + std::to_string(minor) +
                                "): " + cudaGetErrorString(err));
    }
  }
  return std::make_unique<cuda_window_engine>(options, device);
}

}  // namespace cusense::detail
