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
//
// Order aggregations (first, last, argmin_ts, argmax_ts): an ops::extent accumulator array
// runs next to the moments everywhere (partials, merges, state), with each record's arrival
// number (global across batches) as its tie-break, exactly as the CPU engines.
//
// Sliding windows (panes of p = gcd(size, slide), ops::sliding): the state holds (pane, key)
// partials sorted by (pane id, key), built and merged exactly as above with pane ids in place
// of window ids. A record is late when every window holding its pane closed at the watermark
// just before it; otherwise it counts in the windows of its pane from vis = max(first window
// of the pane, closed_before(watermark before it)) on (those not emitted yet when it arrived).
// Within a (pane, key) run in arrival order vis never decreases, so the chunk partials are
// reduced per (pane, key, vis) run. After the chunk every window k in [emitted_before,
// closed_before(watermark)) is emitted: each source (old state entry: vis = -inf; chunk
// partial) yields the pairs (k, key) of the windows it counts in, the pairs are radix-sorted
// by (k, key) and each group is merged (state panes first, then chunk partials, in pane
// order). Then the chunk partials, merged per (pane, key), join the state and the panes no
// unemitted window needs (pane < first_pane(closed_before)) are dropped from its front.
#include <cuda_runtime_api.h>

#include <cub/block/block_reduce.cuh>
#include <cub/device/device_partition.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_select.cuh>
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
#include <type_traits>
#include <utility>
#include <vector>

#include <cusense/detail/state_codec.hpp>
#include <cusense/detail/engine.hpp>
#include <cusense/detail/engine_shared.hpp>
#include <cusense/detail/host_parallel.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/error.hpp>
#include <cusense/ops/extent.hpp>
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
/// Most (window, key, pane) pairs one sliding emission step handles; a larger step is split
/// by window range (keeps the scratch bounded and indices in 32 bits).
constexpr std::uint64_t max_emit_pairs = std::uint64_t{1} << 26;
/// "No timestamp yet" for the prefix max (valid timestamps are >= -2^62).
constexpr long long no_time = LLONG_MIN;
// Watermarks are clamped below at -max_timestamp (minus_clamped, as the CPU engines: clamping
// never changes a decision), which keeps watermark - offset - size within int64.

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
  long long num_pairs;           ///< sliding emission: (window, key, source) pairs
  long long pair_kmin;           ///< sliding emission: smallest / largest window id of a pair
  long long pair_kmax;
  long long num_groups;          ///< distinct (id, key) runs (windows emitted, or panes)
  unsigned int pair_max_key;     ///< sliding emission: largest key of a pair
  unsigned int pad2;
  long long num_updates;         ///< allowed lateness: records that update emitted windows
};

struct classify_stats {
  long long min_wid;
  long long max_wid;
  unsigned long long nan_values;
  unsigned int max_key;
  unsigned long long updates;
};

struct combine_classify_stats {
  __device__ classify_stats operator()(classify_stats const& a, classify_stats const& b) const
  {
    classify_stats r;
    r.min_wid    = a.min_wid < b.min_wid ? a.min_wid : b.min_wid;
    r.max_wid    = a.max_wid > b.max_wid ? a.max_wid : b.max_wid;
    r.nan_values = a.nan_values + b.nan_values;
    r.max_key    = a.max_key > b.max_key ? a.max_key : b.max_key;
    r.updates    = a.updates + b.updates;
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
    sc->num_pairs       = 0;
    sc->pair_kmin       = LLONG_MAX;
    sc->pair_kmax       = LLONG_MIN;
    sc->num_groups      = 0;
    sc->pair_max_key    = 0;
    sc->pad2            = 0;
    sc->num_updates     = 0;
  }
}

/// Per record: window id, late flag (against the max of all earlier timestamps), and the
/// statistics of the non-late records. Must be launched with block_size threads per block.
/// W = ops::tumbling: `wid` is the window id. W = ops::sliding: `wid` is the pane id, the record
/// is late when the last window holding its pane is closed, and `vis` gets the first window it
/// counts in: max(first window of the pane, closed_before(watermark before it)). With
/// allowed lateness (sliding only) the record is late when the last window holding its pane was
/// freed (closed at watermark - lateness), and `upd` flags the records that update windows
/// emitted but still kept (the CPU pane engine's rule).
template <typename T, typename W>
__global__ void __launch_bounds__(block_size)
  classify_kernel(std::int64_t const* ts, std::int64_t const* prev_max, std::uint32_t const* keys,
                  T const* values, int channels, std::size_t n, W window,
                  std::int64_t out_of_orderness, std::int64_t lateness, std::uint8_t* keep,
                  std::int64_t* wid, std::int64_t* vis, std::uint8_t* upd, chunk_scalars* sc)
{
  using block_reduce = cub::BlockReduce<classify_stats, block_size>;
  __shared__ typename block_reduce::TempStorage temp;
  classify_stats local{LLONG_MAX, LLONG_MIN, 0ull, 0u, 0ull};
  CUSENSE_FOR_EACH_INDEX(i, n)
  {
    std::int64_t const t    = ts[i];
    std::int64_t const prev = prev_max[i];
    bool late               = false;
    std::int64_t w;
    if constexpr (std::is_same_v<W, ops::sliding>) {
      w                  = window.pane_id(t);
      std::int64_t first = window.first_window(w);
      bool update        = false;
      if (prev != no_time) {
        std::int64_t const wm     = prev - out_of_orderness;
        std::int64_t const closed = window.closed_before(minus_clamped(wm, 0));
        std::int64_t const kept =
          lateness == 0 ? closed
                        : window.closed_before(minus_clamped(wm, lateness));
        std::int64_t const last = window.last_window(w);
        late                    = last < kept;
        // Emitted windows of the pane still kept: [max(first, kept), min(last, closed - 1)].
        std::int64_t const lo = kept > first ? kept : first;
        std::int64_t const hi = last < closed - 1 ? last : closed - 1;
        update                = !late && lo <= hi;
        first                 = closed > first ? closed : first;
      }
      vis[i] = first;
      if (upd != nullptr) { upd[i] = update ? 1 : 0; }
      local.updates += update ? 1u : 0u;
    } else {
      (void)vis;
      (void)lateness;
      (void)upd;
      w = window.id(t);
      if (prev != no_time) {
        std::int64_t const watermark = prev - out_of_orderness;
        late                         = w < window.closed_before(watermark);
      }
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
    if (agg.updates != 0) {
      atomicAdd(reinterpret_cast<unsigned long long*>(&sc->num_updates), agg.updates);
    }
  }
}

/// Per update record u (chunk index upd_idx[u]): its position among the non-late indices
/// `sel` (ascending, nn of them) and the largest time before it.
__global__ void gather_updates_kernel(std::uint32_t const* upd_idx, std::size_t nu,
                                      std::uint32_t const* sel, std::size_t nn,
                                      std::int64_t const* prev_max, std::uint32_t* rank,
                                      std::int64_t* prev)
{
  CUSENSE_FOR_EACH_INDEX(u, nu)
  {
    std::uint32_t const i = upd_idx[u];
    std::size_t lo = 0, hi = nn;
    while (lo < hi) {
      std::size_t const mid = lo + (hi - lo) / 2;
      if (sel[mid] < i) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    rank[u] = static_cast<std::uint32_t>(lo);
    prev[u] = prev_max[i];
  }
}

/// (window id - min) << key_bits | key, for the kept records.
__global__ void composite_key_kernel(std::uint32_t const* sel, std::size_t nn,
                                     std::int64_t const* wid, std::uint32_t const* keys,
                                     std::int64_t min_wid, int key_bits, std::uint64_t* out)
{
  CUSENSE_FOR_EACH_INDEX(j, nn)
  {
    std::uint32_t const i  = sel[j];
    std::uint64_t const dw = static_cast<std::uint64_t>(wid[i]) - static_cast<std::uint64_t>(min_wid);
    out[j]                 = (dw << key_bits) | static_cast<std::uint64_t>(keys[i]);
  }
}

__global__ void gather_keys_kernel(std::uint32_t const* sel, std::size_t nn,
                                   std::uint32_t const* keys, std::uint32_t* out)
{
  CUSENSE_FOR_EACH_INDEX(j, nn) { out[j] = keys[sel[j]]; }
}

__global__ void window_offset_kernel(std::uint32_t const* idx, std::size_t nn,
                                     std::int64_t const* wid, std::int64_t min_wid,
                                     std::uint64_t* out)
{
  CUSENSE_FOR_EACH_INDEX(j, nn)
  {
    out[j] = static_cast<std::uint64_t>(wid[idx[j]]) - static_cast<std::uint64_t>(min_wid);
  }
}

/// Segment heads (first record of a (window, key) run in sorted order; with `vis`, of a
/// (pane, key, vis) run) and sub-segment heads (segment heads plus every
/// sub_segment_length-th position).
__global__ void segment_flags_kernel(std::uint32_t const* sorted, std::size_t nn,
                                     std::int64_t const* wid, std::uint32_t const* keys,
                                     std::int64_t const* vis, std::uint32_t* head,
                                     std::uint32_t* subhead)
{
  CUSENSE_FOR_EACH_INDEX(j, nn)
  {
    bool h = (j == 0);
    if (!h) {
      std::uint32_t const i = sorted[j];
      std::uint32_t const p = sorted[j - 1];
      h = wid[i] != wid[p] || keys[i] != keys[p] || (vis != nullptr && vis[i] != vis[p]);
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
                                        std::int64_t const* vis, std::int64_t* part_wid,
                                        std::uint32_t* part_key, std::int64_t* part_vis,
                                        std::uint32_t* seg_first_sub, std::uint32_t* sub_pos,
                                        chunk_scalars* sc)
{
  CUSENSE_FOR_EACH_INDEX(j, nn)
  {
    if (head[j] != 0) {
      std::uint32_t const g = seg_incl[j] - 1;
      std::uint32_t const i = sorted[j];
      part_wid[g]           = wid[i];
      part_key[g]           = keys[i];
      if (vis != nullptr) { part_vis[g] = vis[i]; }
      seg_first_sub[g]      = sub_incl[j] - 1;
    }
    if (subhead[j] != 0) { sub_pos[sub_incl[j] - 1] = static_cast<std::uint32_t>(j); }
    if (j + 1 == nn) {
      sc->num_segments    = static_cast<long long>(seg_incl[j]);
      sc->num_subsegments = static_cast<long long>(sub_incl[j]);
    }
  }
}

/// One thread per (sub-segment, channel): ops::add over its records in arrival order. With
/// `out_ext`, also the extent, the record at chunk index i having arrival number seq_base + i.
template <typename T>
__global__ void subsegment_reduce_kernel(std::uint32_t const* sorted, T const* values,
                                         int channels, std::uint32_t const* sub_pos,
                                         std::size_t nsub, std::size_t nn, ops::moments* out,
                                         std::int64_t const* ts, std::uint64_t seq_base,
                                         ops::extent* out_ext)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_FOR_EACH_INDEX(t, nsub * C)
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
    if (out_ext != nullptr) {
      ops::extent e{};
      for (std::size_t j = begin; j < end; ++j) {
        std::size_t const i = sorted[j];
        ops::add(e, static_cast<double>(values[i * C + c]), ts[i], seq_base + i);
      }
      out_ext[t] = e;
    }
  }
}

/// One thread per (segment, channel): ops::merge of its sub-segment partials in order (the
/// extents too when `sub_ext` is given).
__global__ void segment_merge_kernel(std::uint32_t const* seg_first_sub, std::size_t nseg,
                                     std::size_t nsub, int channels, ops::moments const* sub_acc,
                                     ops::moments* out, ops::extent const* sub_ext,
                                     ops::extent* out_ext)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_FOR_EACH_INDEX(t, nseg * C)
  {
    std::size_t const g     = t / C;
    std::size_t const c     = t % C;
    std::size_t const begin = seg_first_sub[g];
    std::size_t const end   = g + 1 < nseg ? seg_first_sub[g + 1] : nsub;
    ops::moments m          = sub_acc[begin * C + c];
    for (std::size_t s = begin + 1; s < end; ++s) { m = ops::merge(m, sub_acc[s * C + c]); }
    out[t] = m;
    if (sub_ext != nullptr) {
      ops::extent e = sub_ext[begin * C + c];
      for (std::size_t s = begin + 1; s < end; ++s) { e = ops::merge(e, sub_ext[s * C + c]); }
      out_ext[t] = e;
    }
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
  CUSENSE_FOR_EACH_INDEX(j, np + 1)
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
                                    std::int64_t* d_wid, std::uint32_t* d_key, ops::moments* d_acc,
                                    ops::extent const* s_ext, ops::extent* d_ext)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_FOR_EACH_INDEX(i, ns)
  {
    std::size_t const below = lower_bound_pair(p_wid, p_key, np, s_wid[i], s_key[i]);
    std::size_t const o     = i + below - mx[below];
    d_wid[o]                = s_wid[i];
    d_key[o]                = s_key[i];
    for (std::size_t c = 0; c < C; ++c) { d_acc[o * C + c] = s_acc[i * C + c]; }
    if (s_ext != nullptr) {
      for (std::size_t c = 0; c < C; ++c) { d_ext[o * C + c] = s_ext[i * C + c]; }
    }
  }
}

/// Partial j goes to pos[j] + (number of unmatched partials before it); a matched partial is
/// merged into the state entry there (state first: it holds the earlier records). Runs after
/// place_states_kernel on the same stream.
__global__ void place_partials_kernel(std::uint64_t const* pos, std::uint32_t const* matched,
                                      std::uint32_t const* mx, std::int64_t const* p_wid,
                                      std::uint32_t const* p_key, ops::moments const* p_acc,
                                      std::size_t np, ops::moments const* s_acc, int channels,
                                      std::int64_t* d_wid, std::uint32_t* d_key, ops::moments* d_acc,
                                      ops::extent const* p_ext, ops::extent const* s_ext,
                                      ops::extent* d_ext)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_FOR_EACH_INDEX(j, np)
  {
    std::size_t const p = pos[j];
    std::size_t const o = p + j - mx[j];
    d_wid[o]            = p_wid[j];
    d_key[o]            = p_key[j];
    if (matched[j] != 0) {
      for (std::size_t c = 0; c < C; ++c) {
        d_acc[o * C + c] = ops::merge(s_acc[p * C + c], p_acc[j * C + c]);
      }
      if (p_ext != nullptr) {
        for (std::size_t c = 0; c < C; ++c) {
          d_ext[o * C + c] = ops::merge(s_ext[p * C + c], p_ext[j * C + c]);
        }
      }
    } else {
      for (std::size_t c = 0; c < C; ++c) { d_acc[o * C + c] = p_acc[j * C + c]; }
      if (p_ext != nullptr) {
        for (std::size_t c = 0; c < C; ++c) { d_ext[o * C + c] = p_ext[j * C + c]; }
      }
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

// ----- sliding windows: emission from (pane, key) sources

struct k_range {
  long long lo;
  long long hi;
  unsigned int max_key;
};

struct combine_k_range {
  __device__ k_range operator()(k_range const& a, k_range const& b) const
  {
    return k_range{a.lo < b.lo ? a.lo : b.lo, a.hi > b.hi ? a.hi : b.hi,
                   a.max_key > b.max_key ? a.max_key : b.max_key};
  }
};

__global__ void reset_pair_scalars_kernel(chunk_scalars* sc)
{
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    sc->num_pairs    = 0;
    sc->pair_kmin    = LLONG_MAX;
    sc->pair_kmax    = LLONG_MIN;
    sc->num_groups   = 0;
    sc->pair_max_key = 0;
  }
}

/// The windows k in [lo, hi] that source s counts in and that are emitted now (k_begin <= k <
/// k_end). Sources s < ns are state entries (pane s_wid[s], counting in every window of the
/// pane not emitted before); the others are chunk partials (pane p_wid[s - ns], counting from
/// window p_vis[s - ns] on).
struct emit_sources {
  ops::sliding window;
  std::int64_t const* s_wid;
  std::size_t ns;
  std::int64_t const* p_wid;
  std::int64_t const* p_vis;
  std::size_t np;
  std::int64_t k_begin;  ///< INT64_MIN: no lower bound
  std::int64_t k_end;    ///< INT64_MAX: no upper bound

  __device__ void range(std::size_t s, std::int64_t& lo, std::int64_t& hi) const
  {
    std::int64_t const j = s < ns ? s_wid[s] : p_wid[s - ns];
    lo                   = s < ns ? window.first_window(j) : p_vis[s - ns];
    lo                   = lo > k_begin ? lo : k_begin;
    hi                   = window.last_window(j);
    if (k_end != LLONG_MAX && hi > k_end - 1) { hi = k_end - 1; }
  }
};

/// cnt[s] = number of windows source s is emitted in (cnt[ns + np] = 0 closes the array for
/// the exclusive scan); the smallest and largest such window id go to sc->pair_kmin/kmax, the
/// largest key to sc->pair_max_key. Must be launched with block_size threads per block.
__global__ void __launch_bounds__(block_size)
  pair_count_kernel(emit_sources src, std::uint32_t const* s_key, std::uint32_t const* p_key,
                    std::uint64_t* cnt, chunk_scalars* sc)
{
  using block_reduce = cub::BlockReduce<k_range, block_size>;
  __shared__ typename block_reduce::TempStorage temp;
  k_range local{LLONG_MAX, LLONG_MIN, 0u};
  std::size_t const n = src.ns + src.np;
  CUSENSE_FOR_EACH_INDEX(s, n + 1)
  {
    if (s == n) {
      cnt[n] = 0;
    } else {
      std::int64_t lo, hi;
      src.range(s, lo, hi);
      if (lo <= hi) {
        std::uint32_t const key = s < src.ns ? s_key[s] : p_key[s - src.ns];
        cnt[s]        = static_cast<std::uint64_t>(hi) - static_cast<std::uint64_t>(lo) + 1u;
        local.lo      = lo < local.lo ? lo : local.lo;
        local.hi      = hi > local.hi ? hi : local.hi;
        local.max_key = key > local.max_key ? key : local.max_key;
      } else {
        cnt[s] = 0;
      }
    }
  }
  k_range const agg = block_reduce(temp).Reduce(local, combine_k_range{});
  if (threadIdx.x == 0 && agg.lo <= agg.hi) {
    atomicMin(&sc->pair_kmin, agg.lo);
    atomicMax(&sc->pair_kmax, agg.hi);
    atomicMax(&sc->pair_max_key, agg.max_key);
  }
}

/// Writes the pairs of every source at its offset: window id, key, source index.
__global__ void pair_fill_kernel(emit_sources src, std::uint32_t const* s_key,
                                 std::uint32_t const* p_key, std::uint64_t const* off,
                                 std::int64_t* pair_k, std::uint32_t* pair_key,
                                 std::uint32_t* pair_src)
{
  std::size_t const n = src.ns + src.np;
  CUSENSE_FOR_EACH_INDEX(s, n)
  {
    std::int64_t lo, hi;
    src.range(s, lo, hi);
    std::uint32_t const key = s < src.ns ? s_key[s] : p_key[s - src.ns];
    std::uint64_t o         = off[s];
    for (std::int64_t k = lo; k <= hi; ++k, ++o) {
      pair_k[o]   = k;
      pair_key[o] = key;
      pair_src[o] = static_cast<std::uint32_t>(s);
    }
  }
}

__global__ void iota_kernel(std::uint32_t* out, std::size_t n)
{
  CUSENSE_FOR_EACH_INDEX(i, n) { out[i] = static_cast<std::uint32_t>(i); }
}

/// head[p] = 1 where element e(p) = idx ? idx[p] : p starts a run of equal (wid, key).
__global__ void run_heads_kernel(std::uint32_t const* idx, std::size_t n, std::int64_t const* wid,
                                 std::uint32_t const* key, std::uint32_t* head)
{
  CUSENSE_FOR_EACH_INDEX(p, n)
  {
    bool h = (p == 0);
    if (!h) {
      std::size_t const e = idx != nullptr ? idx[p] : p;
      std::size_t const f = idx != nullptr ? idx[p - 1] : p - 1;
      h                   = wid[e] != wid[f] || key[e] != key[f];
    }
    head[p] = h ? 1u : 0u;
  }
}

/// Per run (from the inclusive scan of the heads): its (wid, key) and first position; the
/// number of runs goes to *count.
__global__ void run_scatter_kernel(std::uint32_t const* idx, std::size_t n,
                                   std::int64_t const* wid, std::uint32_t const* key,
                                   std::uint32_t const* head, std::uint32_t const* incl,
                                   std::int64_t* out_wid, std::uint32_t* out_key,
                                   std::uint32_t* out_first, long long* count)
{
  CUSENSE_FOR_EACH_INDEX(p, n)
  {
    if (head[p] != 0) {
      std::size_t const e = idx != nullptr ? idx[p] : p;
      std::uint32_t const g = incl[p] - 1;
      out_wid[g]            = wid[e];
      out_key[g]            = key[e];
      out_first[g]          = static_cast<std::uint32_t>(p);
    }
    if (p + 1 == n) { *count = static_cast<long long>(incl[p]); }
  }
}

/// One thread per (run, channel): merges, in position order, the accumulators of the run's
/// elements. Element e(p) = idx ? idx[p] : p has source s = src ? src[e] : e, whose
/// accumulators are a[s] for s < na and b[s - na] otherwise (extents when out_ext is given).
__global__ void gather_merge_kernel(std::uint32_t const* first, std::size_t nruns, std::size_t n,
                                    std::uint32_t const* idx, std::uint32_t const* src,
                                    std::size_t na, ops::moments const* a_acc,
                                    ops::extent const* a_ext, ops::moments const* b_acc,
                                    ops::extent const* b_ext, int channels, ops::moments* out_acc,
                                    ops::extent* out_ext)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_FOR_EACH_INDEX(t, nruns * C)
  {
    std::size_t const g     = t / C;
    std::size_t const c     = t % C;
    std::size_t const begin = first[g];
    std::size_t const end   = g + 1 < nruns ? first[g + 1] : n;
    ops::moments m{};
    ops::extent e{};
    for (std::size_t p = begin; p < end; ++p) {
      std::size_t const el = idx != nullptr ? idx[p] : p;
      std::size_t const s  = src != nullptr ? src[el] : el;
      if (s < na) {
        m = ops::merge(m, a_acc[s * C + c]);
        if (out_ext != nullptr) { e = ops::merge(e, a_ext[s * C + c]); }
      } else {
        m = ops::merge(m, b_acc[(s - na) * C + c]);
        if (out_ext != nullptr) { e = ops::merge(e, b_ext[(s - na) * C + c]); }
      }
    }
    out_acc[t] = m;
    if (out_ext != nullptr) { out_ext[t] = e; }
  }
}

/// Allowed lateness: the rows of windows k_lo .. k_lo + count - 1 of `key`, each the merge (in
/// pane order) of the key's state panes of the window; one thread per (window, channel).
__global__ void update_rows_kernel(ops::sliding window, std::int64_t const* s_wid,
                                   std::uint32_t const* s_key, ops::moments const* s_acc,
                                   ops::extent const* s_ext, std::size_t ns, std::uint32_t key,
                                   std::int64_t k_lo, std::size_t count, int channels,
                                   std::int64_t* out_k, std::uint32_t* out_key,
                                   ops::moments* out_acc, ops::extent* out_ext)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_FOR_EACH_INDEX(t, count * C)
  {
    std::size_t const r     = t / C;
    std::size_t const c     = t % C;
    std::int64_t const k    = k_lo + static_cast<std::int64_t>(r);
    std::int64_t const pane0 = window.first_pane(k);
    std::int64_t const panes = window.panes_per_window();
    ops::moments m{};
    ops::extent e{};
    std::size_t p = lower_bound_pair(s_wid, s_key, ns, pane0, key);
    for (std::int64_t j = pane0; j < pane0 + panes && p < ns; ++j) {
      // Entries of other keys lie between the key's panes: search each pane from p on.
      std::size_t const q = p + lower_bound_pair(s_wid + p, s_key + p, ns - p, j, key);
      if (q < ns && s_wid[q] == j && s_key[q] == key) {
        m = ops::merge(m, s_acc[q * C + c]);
        if (out_ext != nullptr) { e = ops::merge(e, s_ext[q * C + c]); }
        p = q + 1;
      } else {
        p = q;
      }
    }
    out_acc[t] = m;
    if (out_ext != nullptr) { out_ext[t] = e; }
    if (c == 0) {
      out_k[r]   = k;
      out_key[r] = key;
    }
  }
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
///
/// The device state of the engine, all of it (what a checkpoint must carry): `size` live
/// entries starting at entry `offset` of state[cur] (see cuda_window_engine), each
///   wid   int64        window id (tumbling) or pane id (sliding: ops::sliding::pane_id)
///   key   uint32       record key
///   acc   ops::moments x channels
///   ext   ops::extent  x channels, only when an order aggregation is requested (has_extent)
/// sorted by (wid, key), unique. The host side adds max_ts/has_max (watermark), the arrival
/// counter seq_base (extent tie-breaks), and for sliding windows emitted_before/has_emitted
/// (windows k < emitted_before were emitted by the watermark).
struct state_arrays {
  device_buffer wid;
  device_buffer key;
  device_buffer acc;
  device_buffer ext;
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
  device_buffer sub_ext, part_ext;  // extents (order aggregations only)
  // sliding windows: per-record first window counted in, per-partial vis, the partials
  // merged per (pane, key), and the emission pairs
  device_buffer vis, part_vis;
  device_buffer col_head, col_incl, col_wid, col_key, col_first, col_acc, col_ext;
  device_buffer pair_cnt, pair_off, pair_k, pair_key, pair_src, pair_idx;
  device_buffer win_k, win_key, win_first, win_acc, win_ext;
  // allowed lateness: per-record update flag; the update records' indices, their positions
  // among the non-late records and the largest time before each
  device_buffer upd, upd_idx, upd_rank, upd_prev;

  // open-window state, double-buffered for the merge
  state_arrays state[2];

  // host side of the read-backs
  host_buffer h_scalars;
  host_buffer h_late;
  host_buffer h_wid, h_key, h_acc, h_ext;
  host_buffer h_upd_idx, h_upd_rank, h_upd_prev;
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
  // tumbling_moments: a tumbling configuration kept in the CPU tumbling engine's state form
  // (checkpoints), as the engine registry chose it.
  cuda_window_engine(pipeline_options const& options, int device, bool tumbling_moments)
    : options_(options),
      tumbling_moments_(tumbling_moments),
      window_{options.window.size, options.window.offset},
      slide_(ops::sliding::make(options.window.size,
                                options.window.type == window_spec::kind::sliding ? options.window.slide
                                                                                   : options.window.size,
                                options.window.offset)),
      sliding_((options.window.type == window_spec::kind::sliding &&
                options.window.slide != options.window.size) ||
               options.allowed_lateness > 0),
      extent_(acc_layout::of(options).extent),
      channels_(static_cast<std::size_t>(options.channels)),
      device_(device),
      windows_out_(options),
      late_out_(options)
  {
    // The options are validated by the pipeline and routed here by the engine registry.
    row_acc_.resize(channels_);
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
    if (options_.max_open_windows != 0) { check_capacity(batch); }
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
      parallel_copy(h + ts_offset(), batch.timestamps + begin, ts_bytes);
      parallel_copy(h + values_offset(slot.cap), values + begin * channels_ * value_size, val_bytes);
      parallel_copy(h + keys_offset(slot.cap), batch.keys + begin, key_bytes);

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
                    (sizeof(std::int64_t) + sizeof(std::uint32_t) + channels_ * sizeof(ops::moments) +
                     (extent_ ? channels_ * sizeof(ops::extent) : 0));
    c.open_keys     = count_open_keys();
    c.has_watermark = has_max_;
    c.watermark     = has_max_ ? watermark() : 0;
    return c;
  }

  void save_state(state_writer& out) override;
  void load_state(state_reader& in) override;

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

  /// Refuses, before any chunk of it is staged, a batch that would take the open states beyond
  /// max_open_windows, counting exactly as the CPU engine for these options: the distinct
  /// (window, key) (sliding: (pane, key)) states of the batch's non-late records that are not
  /// open yet, against the states open now. Runs on the host once earlier chunks are done (it
  /// needs their state); the open states are bounded by the cap, so copying them back is cheap.
  void check_capacity(record_batch const& batch)
  {
    wait_idle();
    rethrow_pending();
    std::size_t const ns = state_size_;
    std::vector<std::int64_t> open_wid(ns);
    std::vector<std::uint32_t> open_key(ns);
    if (ns > 0) {
      cudaStream_t const s   = gpu_->compute.get();
      state_arrays const& sa = gpu_->state[cur_];
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(open_wid.data(), sa.wid.data<std::int64_t>() + offset_,
                                       ns * sizeof(std::int64_t), cudaMemcpyDeviceToHost, s));
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(open_key.data(), sa.key.data<std::uint32_t>() + offset_,
                                       ns * sizeof(std::uint32_t), cudaMemcpyDeviceToHost, s));
      CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    }
    // The record-by-record lateness decision of the kernels, with the running maximum of
    // this batch; the bound is recomputed only when the maximum moves.
    bool has         = has_max_;
    std::int64_t max = max_ts_;
    std::int64_t kept = 0;
    if (has) { kept = kept_from(max); }
    std::vector<std::pair<std::int64_t, std::uint32_t>> fresh;
    fresh.reserve(batch.n);
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::int64_t const t = batch.timestamps[i];
      std::int64_t const j = slide_.pane_id(t);
      if (has && slide_.last_window(j) < kept) { continue; }
      fresh.emplace_back(j, batch.keys[i]);
      if (!has || t > max) {
        max  = t;
        has  = true;
        kept = kept_from(max);
      }
    }
    std::sort(fresh.begin(), fresh.end());
    fresh.erase(std::unique(fresh.begin(), fresh.end()), fresh.end());
    // Both lists are sorted by (id, key): count the fresh states the state does not hold.
    std::size_t added = 0, o = 0;
    for (auto const& [j, key] : fresh) {
      while (o < ns && (open_wid[o] < j || (open_wid[o] == j && open_key[o] < key))) { ++o; }
      if (o == ns || open_wid[o] != j || open_key[o] != key) { ++added; }
    }
    std::size_t const cap = options_.max_open_windows;
    if (ns + added <= cap) { return; }
    // The CPU engine for these options words it: the tumbling engine counts (key, window)
    // states it creates, the pane engine bounds the (key, pane) states it may create.
    bool const windows = tumbling_moments_form();
    throw capacity_error(capacity_message(cap, ns, added, batch.n,
                                          windows ? "(key, window) states" : "(key, pane) states",
                                          !windows));
  }

  /// Windows k < kept_from(max) are freed once the largest time seen is `max`: a record all of
  /// whose windows are among them is late. The watermark is clamped to the valid time range
  /// (never changes a decision, keeps the window arithmetic in int64).
  std::int64_t kept_from(std::int64_t max) const
  {
    std::int64_t const w = max - options_.max_out_of_orderness;
    std::int64_t const d = options_.allowed_lateness;
    return slide_.closed_before(minus_clamped(w, d));
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

  /// Whether the configuration's checkpoint form is the CPU tumbling engine's.
  bool tumbling_moments_form() const { return tumbling_moments_; }

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
          flush_state();
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

    std::uint64_t const seq_base = seq_base_;  // arrival number of the chunk's first record
    seq_base_ += n;

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
    std::int64_t* d_vis = nullptr;
    std::uint8_t* d_upd = nullptr;
    if (sliding_) {
      d_vis = g.vis.get<std::int64_t>(n, s);
      if (options_.allowed_lateness > 0) { d_upd = g.upd.get<std::uint8_t>(n, s); }
      classify_kernel<T, ops::sliding><<<cuda_blocks_for(n, block_size), block_size, 0, s>>>(
        d_ts, d_prev, d_keys, d_values, channels, n, slide_, options_.max_out_of_orderness,
        options_.allowed_lateness, d_keep, d_wid, d_vis, d_upd, d_sc);
    } else {
      classify_kernel<T, ops::tumbling><<<cuda_blocks_for(n, block_size), block_size, 0, s>>>(
        d_ts, d_prev, d_keys, d_values, channels, n, window_, options_.max_out_of_orderness, 0,
        d_keep, d_wid, d_vis, nullptr, d_sc);
    }
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

    // 3-6. aggregate the kept records into the state and emit the windows the watermark closed
    std::size_t emit = 0;
    if (sliding_ && first.num_updates > 0) {
      chunk_with_updates<T>(slot, n, nn, first, d_ts, d_prev, seq_base, d_keys, d_values, d_wid,
                            d_vis, d_upd, d_sel);
      if (nl > 0) { CUSENSE_CUDA_TRY(cudaStreamSynchronize(s)); }  // completes the late-index copy
    } else if (sliding_) {
      sliding_chunk<T>(nn, first, d_ts, seq_base, d_keys, d_values, d_wid, d_vis, d_sel);
      if (nl > 0) { CUSENSE_CUDA_TRY(cudaStreamSynchronize(s)); }  // completes the late-index copy
    } else {
      // 3-5 (leaves pending_merge_ set: the new state size is still on the device)
      if (nn > 0) {
        merge_into_state(aggregate<T>(nn, first, d_ts, seq_base, d_keys, d_values, d_wid, nullptr, d_sel));
      }

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
      emit = locate ? static_cast<std::size_t>(last.emit_count) : 0;
    }

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

  /// Partials of one chunk (or merged from them) in scratch buffers of gpu_resources: `np`
  /// entries sorted by (wid, key[, vis]), `channels` accumulators each.
  struct partials {
    std::size_t np           = 0;
    std::int64_t const* wid  = nullptr;  ///< window id (tumbling) or pane id (sliding)
    std::uint32_t const* key = nullptr;
    std::int64_t const* vis  = nullptr;  ///< sliding: first window the entry counts in
    ops::moments const* acc  = nullptr;
    ops::extent const* ext   = nullptr;  ///< order aggregations only
  };

  /// Sorts the nn indices d_sel stably by (d_wid[i], d_keys[i]), all d_wid[i] in
  /// [min_wid, max_wid] and keys <= max_key; ties keep their order. Returns d_sel itself when
  /// there is nothing to sort, else g.sorted.
  std::uint32_t const* sort_by_wid_key(std::size_t nn, std::uint32_t const* d_sel,
                                       std::int64_t const* d_wid, std::uint32_t const* d_keys,
                                       std::int64_t min_wid, std::int64_t max_wid,
                                       std::uint32_t max_key)
  {
    gpu_resources& g     = *gpu_;
    cudaStream_t const s = g.compute.get();
    int const items      = static_cast<int>(nn);
    std::uint64_t const span =
      static_cast<std::uint64_t>(max_wid) - static_cast<std::uint64_t>(min_wid);
    int const span_bits = bit_width(span);
    int const key_bits  = bit_width(max_key);
    if (span_bits + key_bits == 0) { return d_sel; }
    auto* sorted = g.sorted.get<std::uint32_t>(nn, s);
    auto* ck     = g.ckey.get<std::uint64_t>(nn, s);
    auto* ck_out = g.ckey_out.get<std::uint64_t>(nn, s);
    if (span_bits + key_bits <= 64) {
      composite_key_kernel<<<cuda_blocks_for(nn, block_size), block_size, 0, s>>>(d_sel, nn, d_wid, d_keys, min_wid,
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
      gather_keys_kernel<<<cuda_blocks_for(nn, block_size), block_size, 0, s>>>(d_sel, nn, d_keys, k1);
      CUSENSE_CHECK_LAST_ERROR();
      run_cub("cub::DeviceRadixSort::SortPairs", [&](void* temp, std::size_t& bytes) {
        return cub::DeviceRadixSort::SortPairs(temp, bytes, k1, k1_out, d_sel, tmp, items, 0,
                                               key_bits, s);
      });
      window_offset_kernel<<<cuda_blocks_for(nn, block_size), block_size, 0, s>>>(tmp, nn, d_wid, min_wid, ck);
      CUSENSE_CHECK_LAST_ERROR();
      run_cub("cub::DeviceRadixSort::SortPairs", [&](void* temp, std::size_t& bytes) {
        return cub::DeviceRadixSort::SortPairs(temp, bytes, ck, ck_out, tmp, sorted, items, 0,
                                               span_bits, s);
      });
    }
    return sorted;
  }

  /// Steps 3-4 for the nn kept records: sort by (wid, key), reduce each (wid, key) run (with
  /// d_vis: each (pane, key, vis) run) in arrival order. Record i of the chunk has arrival
  /// number seq_base + i.
  template <typename T>
  partials aggregate(std::size_t nn, chunk_scalars const& first, std::int64_t const* d_ts,
                     std::uint64_t seq_base, std::uint32_t const* d_keys, T const* d_values,
                     std::int64_t const* d_wid, std::int64_t const* d_vis,
                     std::uint32_t const* d_sel)
  {
    gpu_resources& g     = *gpu_;
    cudaStream_t const s = g.compute.get();
    int const channels   = options_.channels;
    int const items      = static_cast<int>(nn);
    auto* d_sc           = g.scalars.data<chunk_scalars>();

    // 3. stable sort of the kept indices by (window id, key); ties keep arrival order
    std::uint32_t const* d_sorted =
      sort_by_wid_key(nn, d_sel, d_wid, d_keys, static_cast<std::int64_t>(first.min_wid),
                      static_cast<std::int64_t>(first.max_wid), first.max_key);

    // 4a. (window, key) segments and sub-segments of at most sub_segment_length records
    auto* head     = g.head.get<std::uint32_t>(nn, s);
    auto* subhead  = g.subhead.get<std::uint32_t>(nn, s);
    auto* seg_incl = g.seg_incl.get<std::uint32_t>(nn, s);
    auto* sub_incl = g.sub_incl.get<std::uint32_t>(nn, s);
    segment_flags_kernel<<<cuda_blocks_for(nn, block_size), block_size, 0, s>>>(d_sorted, nn, d_wid, d_keys, d_vis,
                                                              head, subhead);
    CUSENSE_CHECK_LAST_ERROR();
    run_cub("cub::DeviceScan::InclusiveSum", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceScan::InclusiveSum(temp, bytes, head, seg_incl, items, s);
    });
    run_cub("cub::DeviceScan::InclusiveSum", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceScan::InclusiveSum(temp, bytes, subhead, sub_incl, items, s);
    });
    auto* part_wid      = g.part_wid.get<std::int64_t>(nn, s);
    auto* part_key      = g.part_key.get<std::uint32_t>(nn, s);
    auto* part_vis      = d_vis != nullptr ? g.part_vis.get<std::int64_t>(nn, s) : nullptr;
    auto* seg_first_sub = g.seg_first_sub.get<std::uint32_t>(nn, s);
    auto* sub_pos       = g.sub_pos.get<std::uint32_t>(nn, s);
    scatter_segments_kernel<<<cuda_blocks_for(nn, block_size), block_size, 0, s>>>(
      d_sorted, nn, d_wid, d_keys, head, subhead, seg_incl, sub_incl, d_vis, part_wid, part_key,
      part_vis, seg_first_sub, sub_pos, d_sc);
    CUSENSE_CHECK_LAST_ERROR();
    chunk_scalars const counts = read_scalars(s);
    auto const nseg            = static_cast<std::size_t>(counts.num_segments);
    auto const nsub            = static_cast<std::size_t>(counts.num_subsegments);
    if (nseg == 0 || nseg > nn || nsub < nseg || nsub > nn) {
      throw cuda_error("cusense: inconsistent segment counts from the device");
    }

    // 4b. partials per (segment, channel)
    auto* sub_acc = g.sub_acc.get<ops::moments>(nsub * channels_, s);
    ops::extent* sub_ext = extent_ ? g.sub_ext.get<ops::extent>(nsub * channels_, s) : nullptr;
    subsegment_reduce_kernel<T><<<cuda_blocks_for(nsub * channels_, block_size), block_size, 0, s>>>(
      d_sorted, d_values, channels, sub_pos, nsub, nn, sub_acc, d_ts, seq_base, sub_ext);
    CUSENSE_CHECK_LAST_ERROR();
    ops::moments* part_acc = sub_acc;
    ops::extent* part_ext  = sub_ext;
    if (nsub != nseg) {
      part_acc = g.part_acc.get<ops::moments>(nseg * channels_, s);
      part_ext = extent_ ? g.part_ext.get<ops::extent>(nseg * channels_, s) : nullptr;
      segment_merge_kernel<<<cuda_blocks_for(nseg * channels_, block_size), block_size, 0, s>>>(
        seg_first_sub, nseg, nsub, channels, sub_acc, part_acc, sub_ext, part_ext);
      CUSENSE_CHECK_LAST_ERROR();
    }
    partials p;
    p.np  = nseg;
    p.wid = part_wid;
    p.key = part_key;
    p.vis = part_vis;
    p.acc = part_acc;
    p.ext = part_ext;
    return p;
  }

  /// Step 5: merges the partials p (unique (wid, key), sorted) into the open state, kept sorted
  /// by (wid, key); equal entries are combined, state first. Leaves the merge result size on
  /// the device (pending_merge_), read back by the next locate_emission_kernel.
  void merge_into_state(partials const& p)
  {
    gpu_resources& g     = *gpu_;
    cudaStream_t const s = g.compute.get();
    int const channels   = options_.channels;
    std::size_t const np = p.np;
    if (np == 0) { return; }
    if (state_size_ == 0) {
      state_arrays& st = g.state[cur_];
      auto* w          = st.wid.get<std::int64_t>(np, s);
      auto* k          = st.key.get<std::uint32_t>(np, s);
      auto* a          = st.acc.get<ops::moments>(np * channels_, s);
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(w, p.wid, np * sizeof(std::int64_t),
                                       cudaMemcpyDeviceToDevice, s));
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(k, p.key, np * sizeof(std::uint32_t),
                                       cudaMemcpyDeviceToDevice, s));
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(a, p.acc, np * channels_ * sizeof(ops::moments),
                                       cudaMemcpyDeviceToDevice, s));
      if (extent_) {
        auto* e = st.ext.get<ops::extent>(np * channels_, s);
        CUSENSE_CUDA_TRY(cudaMemcpyAsync(e, p.ext, np * channels_ * sizeof(ops::extent),
                                         cudaMemcpyDeviceToDevice, s));
      }
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
    auto const* s_ext    = extent_ ? src.ext.data<ops::extent>() + offset_ * channels_ : nullptr;
    auto* d_wid_out      = dst.wid.get<std::int64_t>(ns + np, s);
    auto* d_key_out      = dst.key.get<std::uint32_t>(ns + np, s);
    auto* d_acc_out      = dst.acc.get<ops::moments>((ns + np) * channels_, s);
    auto* d_ext_out      = extent_ ? dst.ext.get<ops::extent>((ns + np) * channels_, s) : nullptr;
    auto* pos            = g.pos.get<std::uint64_t>(np, s);
    auto* matched        = g.matched.get<std::uint32_t>(np + 1, s);
    auto* mx             = g.mx.get<std::uint32_t>(np + 1, s);
    locate_partials_kernel<<<cuda_blocks_for(np + 1, block_size), block_size, 0, s>>>(p.wid, p.key, np, s_wid, s_key,
                                                                   ns, pos, matched);
    CUSENSE_CHECK_LAST_ERROR();
    run_cub("cub::DeviceScan::ExclusiveSum", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceScan::ExclusiveSum(temp, bytes, matched, mx, static_cast<int>(np + 1), s);
    });
    place_states_kernel<<<cuda_blocks_for(ns, block_size), block_size, 0, s>>>(s_wid, s_key, s_acc, ns, p.wid, p.key,
                                                            np, mx, channels, d_wid_out, d_key_out,
                                                            d_acc_out, s_ext, d_ext_out);
    CUSENSE_CHECK_LAST_ERROR();
    place_partials_kernel<<<cuda_blocks_for(np, block_size), block_size, 0, s>>>(
      pos, matched, mx, p.wid, p.key, p.acc, np, s_acc, channels, d_wid_out, d_key_out, d_acc_out,
      p.ext, s_ext, d_ext_out);
    CUSENSE_CHECK_LAST_ERROR();
    cur_            = 1 - cur_;
    offset_         = 0;
    pending_merge_  = true;
    pending_base_   = ns;
    pending_mx_end_ = mx + np;
    pending_np_     = np;
  }

  /// Ends the stream: emits every open window and empties the state (the watermark and, for
  /// sliding windows, emitted_before_ stay: later records start new windows).
  void flush_state()
  {
    if (state_size_ == 0) { return; }
    if (!sliding_) {
      emit_prefix(state_size_);
      return;
    }
    emit_sliding(partials{}, has_emitted_ ? emitted_before_ : std::numeric_limits<std::int64_t>::min(),
                 std::numeric_limits<std::int64_t>::max());
    state_size_ = 0;
    offset_     = 0;
  }

  // ----- sliding windows

  std::int64_t sliding_closed() const
  {
    std::int64_t const w = watermark();
    return slide_.closed_before(minus_clamped(w, 0));
  }

  /// Steps 3-6 for sliding windows: (pane, key, vis) partials; emission of every window k in
  /// [emitted_before_, closed) from the old state and these partials; the partials merged per
  /// (pane, key) into the state; the panes no unemitted window needs dropped.
  template <typename T>
  void sliding_chunk(std::size_t nn, chunk_scalars const& first, std::int64_t const* d_ts,
                     std::uint64_t seq_base, std::uint32_t const* d_keys, T const* d_values,
                     std::int64_t const* d_wid, std::int64_t const* d_vis,
                     std::uint32_t const* d_sel)
  {
    std::int64_t const closed = sliding_closed();
    partials p;
    if (nn > 0) { p = aggregate<T>(nn, first, d_ts, seq_base, d_keys, d_values, d_wid, d_vis, d_sel); }
    bool const advance = !has_emitted_ || closed > emitted_before_;
    if (advance) {
      if (state_size_ > 0 || p.np > 0) {
        emit_sliding(p, has_emitted_ ? emitted_before_ : std::numeric_limits<std::int64_t>::min(),
                     closed);
      }
      emitted_before_ = closed;
      has_emitted_    = true;
    }
    if (p.np > 0) { merge_into_state(collapse(p)); }
    // Panes no kept window needs go (with allowed lateness the freeing bound moves on its own).
    bool const lateness = options_.allowed_lateness > 0;
    if (pending_merge_ || ((advance || lateness) && state_size_ > 0)) {
      drop_panes_before(slide_.first_pane(kept_from(max_ts_)));
    }
  }

  /// Allowed lateness, a chunk holding records that update emitted windows: the CPU pane engine
  /// emits their rows at once, between the windows closed before and after them, so the chunk
  /// is cut there. The records between two update records go through sliding_chunk with the
  /// watermark reached at the end of their run (an update record never moves it); each update
  /// record joins the state alone and its rows follow.
  template <typename T>
  void chunk_with_updates(staging_slot const& slot, std::size_t n, std::size_t nn,
                          chunk_scalars const& first, std::int64_t const* d_ts,
                          std::int64_t const* d_prev, std::uint64_t seq_base,
                          std::uint32_t const* d_keys, T const* d_values, std::int64_t const* d_wid,
                          std::int64_t const* d_vis, std::uint8_t const* d_upd,
                          std::uint32_t const* d_sel)
  {
    gpu_resources& g     = *gpu_;
    cudaStream_t const s = g.compute.get();
    auto* d_sc           = g.scalars.data<chunk_scalars>();
    auto const nu        = static_cast<std::size_t>(first.num_updates);
    if (nu > nn) { throw cuda_error("cusense: inconsistent update count from the device"); }
    auto* d_idx  = g.upd_idx.get<std::uint32_t>(nu, s);
    auto* d_rank = g.upd_rank.get<std::uint32_t>(nu, s);
    auto* d_up   = g.upd_prev.get<std::int64_t>(nu, s);
    run_cub("cub::DeviceSelect::Flagged", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceSelect::Flagged(temp, bytes, thrust::counting_iterator<std::uint32_t>(0), d_upd,
                                        d_idx, &d_sc->num_updates, static_cast<int>(n), s);
    });
    gather_updates_kernel<<<cuda_blocks_for(nu, block_size), block_size, 0, s>>>(d_idx, nu, d_sel, nn, d_prev, d_rank, d_up);
    CUSENSE_CHECK_LAST_ERROR();
    auto* h_idx  = g.h_upd_idx.get<std::uint32_t>(nu);
    auto* h_rank = g.h_upd_rank.get<std::uint32_t>(nu);
    auto* h_prev = g.h_upd_prev.get<std::int64_t>(nu);
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_idx, d_idx, nu * sizeof(std::uint32_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_rank, d_rank, nu * sizeof(std::uint32_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_prev, d_up, nu * sizeof(std::int64_t), cudaMemcpyDeviceToHost, s));
    if (static_cast<std::size_t>(read_scalars(s).num_updates) != nu) {
      throw cuda_error("cusense: inconsistent update count from the device");
    }
    auto const* h        = slot.host.data<unsigned char>();
    auto const* h_ts     = reinterpret_cast<std::int64_t const*>(h + ts_offset());
    auto const* h_keys   = reinterpret_cast<std::uint32_t const*>(h + keys_offset(slot.cap));
    std::int64_t const chunk_max = max_ts_;
    std::size_t pos = 0;  // first non-late position not processed yet
    for (std::size_t u = 0; u < nu; ++u) {
      std::size_t const r = h_rank[u];
      std::size_t const i = h_idx[u];
      if (r < pos || r >= nn || i >= n || (u > 0 && h_prev[u] < h_prev[u - 1])) {
        throw cuda_error("cusense: inconsistent update records from the device");
      }
      max_ts_ = h_prev[u];
      sliding_chunk<T>(r - pos, first, d_ts, seq_base, d_keys, d_values, d_wid, d_vis, d_sel + pos);
      update_record<T>(r, first, d_ts, seq_base, d_keys, d_values, d_wid, d_vis, d_sel, h_keys[i], h_ts[i]);
      pos = r + 1;
    }
    max_ts_ = chunk_max;
    sliding_chunk<T>(nn - pos, first, d_ts, seq_base, d_keys, d_values, d_wid, d_vis, d_sel + pos);
  }

  /// The update record at non-late position r (key `key`, time `t`, watermark before it from
  /// max_ts_): joins the state, then its kept emitted windows are emitted again, in window
  /// order, flagged is_update.
  template <typename T>
  void update_record(std::size_t r, chunk_scalars const& first, std::int64_t const* d_ts,
                     std::uint64_t seq_base, std::uint32_t const* d_keys, T const* d_values,
                     std::int64_t const* d_wid, std::int64_t const* d_vis,
                     std::uint32_t const* d_sel, std::uint32_t key, std::int64_t t)
  {
    gpu_resources& g     = *gpu_;
    cudaStream_t const s = g.compute.get();
    int const channels   = options_.channels;
    std::int64_t const j      = slide_.pane_id(t);
    std::int64_t const closed = sliding_closed();
    std::int64_t const lo     = std::max(slide_.first_window(j), kept_from(max_ts_));
    std::int64_t const hi     = std::min(slide_.last_window(j), closed - 1);
    if (lo > hi || hi - lo >= max_windows_per_record) {
      throw cuda_error("cusense: inconsistent update record from the device");
    }
    partials p = aggregate<T>(1, first, d_ts, seq_base, d_keys, d_values, d_wid, d_vis, d_sel + r);
    p.vis      = nullptr;  // one (pane, key) entry
    merge_into_state(p);
    drop_panes_before(std::numeric_limits<std::int64_t>::min());  // resolves the merge size
    auto const count = static_cast<std::size_t>(hi - lo + 1);
    auto* w_k   = g.win_k.get<std::int64_t>(count, s);
    auto* w_key = g.win_key.get<std::uint32_t>(count, s);
    auto* w_acc = g.win_acc.get<ops::moments>(count * channels_, s);
    auto* w_ext = extent_ ? g.win_ext.get<ops::extent>(count * channels_, s) : nullptr;
    state_arrays& st = g.state[cur_];
    update_rows_kernel<<<cuda_blocks_for(count * channels_, block_size), block_size, 0, s>>>(
      slide_, st.wid.data<std::int64_t>() + offset_, st.key.data<std::uint32_t>() + offset_,
      st.acc.data<ops::moments>() + offset_ * channels_,
      extent_ ? st.ext.data<ops::extent>() + offset_ * channels_ : nullptr, state_size_, key, lo,
      count, channels, w_k, w_key, w_acc, w_ext);
    CUSENSE_CHECK_LAST_ERROR();
    copy_back_and_append(count, w_k, w_key, w_acc, w_ext, true);
  }

  /// The partials p (sorted by (pane, key, vis)) merged per (pane, key), in order.
  partials collapse(partials const& p)
  {
    gpu_resources& g     = *gpu_;
    cudaStream_t const s = g.compute.get();
    int const channels   = options_.channels;
    auto* d_sc           = g.scalars.data<chunk_scalars>();
    std::size_t const np = p.np;
    auto* head           = g.col_head.get<std::uint32_t>(np, s);
    auto* incl           = g.col_incl.get<std::uint32_t>(np, s);
    auto* c_wid          = g.col_wid.get<std::int64_t>(np, s);
    auto* c_key          = g.col_key.get<std::uint32_t>(np, s);
    auto* c_first        = g.col_first.get<std::uint32_t>(np, s);
    run_heads_kernel<<<cuda_blocks_for(np, block_size), block_size, 0, s>>>(nullptr, np, p.wid, p.key, head);
    CUSENSE_CHECK_LAST_ERROR();
    run_cub("cub::DeviceScan::InclusiveSum", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceScan::InclusiveSum(temp, bytes, head, incl, static_cast<int>(np), s);
    });
    run_scatter_kernel<<<cuda_blocks_for(np, block_size), block_size, 0, s>>>(nullptr, np, p.wid, p.key, head, incl,
                                                           c_wid, c_key, c_first, &d_sc->num_groups);
    CUSENSE_CHECK_LAST_ERROR();
    auto const ng = static_cast<std::size_t>(read_scalars(s).num_groups);
    if (ng == 0 || ng > np) { throw cuda_error("cusense: inconsistent pane counts from the device"); }
    if (ng == np) {
      partials q = p;
      q.vis      = nullptr;
      return q;
    }
    auto* c_acc = g.col_acc.get<ops::moments>(ng * channels_, s);
    auto* c_ext = extent_ ? g.col_ext.get<ops::extent>(ng * channels_, s) : nullptr;
    gather_merge_kernel<<<cuda_blocks_for(ng * channels_, block_size), block_size, 0, s>>>(
      c_first, ng, np, nullptr, nullptr, 0, nullptr, nullptr, p.acc, p.ext, channels, c_acc, c_ext);
    CUSENSE_CHECK_LAST_ERROR();
    partials q;
    q.np  = ng;
    q.wid = c_wid;
    q.key = c_key;
    q.acc = c_acc;
    q.ext = c_ext;
    return q;
  }

  /// Resolves a pending merge and drops the leading states with pane id < first_kept.
  void drop_panes_before(std::int64_t first_kept)
  {
    gpu_resources& g     = *gpu_;
    cudaStream_t const s = g.compute.get();
    auto* d_sc           = g.scalars.data<chunk_scalars>();
    if (pending_merge_) {
      locate_emission_kernel<<<1, 1, 0, s>>>(g.state[cur_].wid.data<std::int64_t>(), pending_base_,
                                             pending_mx_end_, pending_np_, first_kept, d_sc);
    } else {
      locate_emission_kernel<<<1, 1, 0, s>>>(g.state[cur_].wid.data<std::int64_t>() + offset_,
                                             state_size_, nullptr, 0, first_kept, d_sc);
    }
    CUSENSE_CHECK_LAST_ERROR();
    chunk_scalars const sc = read_scalars(s);
    if (pending_merge_) {
      state_size_    = static_cast<std::size_t>(sc.state_size);
      offset_        = 0;
      pending_merge_ = false;
    }
    auto const drop = static_cast<std::size_t>(sc.emit_count);
    if (drop > state_size_) { throw cuda_error("cusense: inconsistent pane count from the device"); }
    offset_ += drop;
    state_size_ -= drop;
    if (state_size_ == 0) { offset_ = 0; }
  }

  /// Emits, in (window start, key) order, every window k_begin <= k < k_end (INT64_MIN /
  /// INT64_MAX: unbounded) holding records: of the state entries (all of whose records count in
  /// the windows not emitted before) and of the chunk partials p (counting from window
  /// p.vis on). Splits the window range when it would take more than max_emit_pairs pairs.
  void emit_sliding(partials const& p, std::int64_t k_begin, std::int64_t k_end)
  {
    gpu_resources& g     = *gpu_;
    cudaStream_t const s = g.compute.get();
    int const channels   = options_.channels;
    auto* d_sc           = g.scalars.data<chunk_scalars>();
    state_arrays& st     = g.state[cur_];
    std::size_t const ns = state_size_;
    std::size_t const n  = ns + p.np;
    if (n == 0) { return; }
    // n + 1 is a CUB item count (int); source indices are 32-bit.
    if (n >= static_cast<std::size_t>(INT_MAX)) { throw cuda_error("cusense: too many open panes to emit"); }
    emit_sources src;
    src.window  = slide_;
    src.s_wid   = st.wid.data<std::int64_t>() + offset_;
    src.ns      = ns;
    src.p_wid   = p.wid;
    src.p_vis   = p.vis;
    src.np      = p.np;
    src.k_begin = k_begin;
    src.k_end   = k_end;
    auto const* s_key = st.key.data<std::uint32_t>() + offset_;
    auto const* s_acc = st.acc.data<ops::moments>() + offset_ * channels_;
    auto const* s_ext = extent_ ? st.ext.data<ops::extent>() + offset_ * channels_ : nullptr;

    // pairs per source, their offsets and total, the window and key range
    reset_pair_scalars_kernel<<<1, 1, 0, s>>>(d_sc);
    CUSENSE_CHECK_LAST_ERROR();
    auto* cnt = g.pair_cnt.get<std::uint64_t>(n + 1, s);
    auto* off = g.pair_off.get<std::uint64_t>(n + 1, s);
    pair_count_kernel<<<cuda_blocks_for(n + 1, block_size), block_size, 0, s>>>(src, s_key, p.key, cnt, d_sc);
    CUSENSE_CHECK_LAST_ERROR();
    run_cub("cub::DeviceScan::ExclusiveSum", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceScan::ExclusiveSum(temp, bytes, cnt, off, static_cast<int>(n + 1), s);
    });
    static_assert(sizeof(long long) == sizeof(std::uint64_t));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(&d_sc->num_pairs, off + n, sizeof(std::uint64_t),
                                     cudaMemcpyDeviceToDevice, s));
    chunk_scalars const sc = read_scalars(s);
    auto const m           = static_cast<std::uint64_t>(sc.num_pairs);
    if (m == 0) { return; }
    std::int64_t const kmin = static_cast<std::int64_t>(sc.pair_kmin);
    std::int64_t const kmax = static_cast<std::int64_t>(sc.pair_kmax);
    if (kmin > kmax || kmin < k_begin || (k_end != std::numeric_limits<std::int64_t>::max() && kmax >= k_end)) {
      throw cuda_error("cusense: inconsistent window range from the device");
    }
    if (m > max_emit_pairs && kmin < kmax) {
      std::uint64_t const half = (static_cast<std::uint64_t>(kmax) - static_cast<std::uint64_t>(kmin)) / 2;
      std::int64_t const mid   = static_cast<std::int64_t>(static_cast<std::uint64_t>(kmin) + half) + 1;
      emit_sliding(p, kmin, mid);  // windows kmin .. mid - 1, then mid .. kmax
      emit_sliding(p, mid, kmax + 1);
      return;
    }
    if (m > max_chunk_records) {
      throw out_of_memory("cusense: a sliding window holds more than 2^30 (key, pane) partials");
    }
    std::size_t const mm = static_cast<std::size_t>(m);

    // the pairs, sorted by (window, key); ties keep the source order (state panes first)
    auto* pair_k   = g.pair_k.get<std::int64_t>(mm, s);
    auto* pair_key = g.pair_key.get<std::uint32_t>(mm, s);
    auto* pair_src = g.pair_src.get<std::uint32_t>(mm, s);
    auto* pair_idx = g.pair_idx.get<std::uint32_t>(mm, s);
    pair_fill_kernel<<<cuda_blocks_for(n, block_size), block_size, 0, s>>>(src, s_key, p.key, off, pair_k, pair_key,
                                                         pair_src);
    CUSENSE_CHECK_LAST_ERROR();
    iota_kernel<<<cuda_blocks_for(mm, block_size), block_size, 0, s>>>(pair_idx, mm);
    CUSENSE_CHECK_LAST_ERROR();
    std::uint32_t const* sorted =
      sort_by_wid_key(mm, pair_idx, pair_k, pair_key, kmin, kmax, sc.pair_max_key);

    // one window per (k, key) run: merge its sources in order
    auto* head  = g.head.get<std::uint32_t>(mm, s);
    auto* incl  = g.seg_incl.get<std::uint32_t>(mm, s);
    auto* w_k   = g.win_k.get<std::int64_t>(mm, s);
    auto* w_key = g.win_key.get<std::uint32_t>(mm, s);
    auto* w_first = g.win_first.get<std::uint32_t>(mm, s);
    run_heads_kernel<<<cuda_blocks_for(mm, block_size), block_size, 0, s>>>(sorted, mm, pair_k, pair_key, head);
    CUSENSE_CHECK_LAST_ERROR();
    run_cub("cub::DeviceScan::InclusiveSum", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceScan::InclusiveSum(temp, bytes, head, incl, static_cast<int>(mm), s);
    });
    run_scatter_kernel<<<cuda_blocks_for(mm, block_size), block_size, 0, s>>>(sorted, mm, pair_k, pair_key, head, incl,
                                                           w_k, w_key, w_first, &d_sc->num_groups);
    CUSENSE_CHECK_LAST_ERROR();
    auto const nw = static_cast<std::size_t>(read_scalars(s).num_groups);
    if (nw == 0 || nw > mm) { throw cuda_error("cusense: inconsistent window count from the device"); }
    auto* w_acc = g.win_acc.get<ops::moments>(nw * channels_, s);
    auto* w_ext = extent_ ? g.win_ext.get<ops::extent>(nw * channels_, s) : nullptr;
    gather_merge_kernel<<<cuda_blocks_for(nw * channels_, block_size), block_size, 0, s>>>(
      w_first, nw, mm, sorted, pair_src, ns, s_acc, s_ext, p.acc, p.ext, channels, w_acc, w_ext);
    CUSENSE_CHECK_LAST_ERROR();
    copy_back_and_append(nw, w_k, w_key, w_acc, w_ext);
  }

  /// Copies `count` emitted windows (id, key, accumulators) back and appends them to the window
  /// table in order.
  void copy_back_and_append(std::size_t count, std::int64_t const* d_id, std::uint32_t const* d_key,
                            ops::moments const* d_acc, ops::extent const* d_ext, bool update = false)
  {
    gpu_resources& g     = *gpu_;
    cudaStream_t const s = g.compute.get();
    auto* h_wid          = g.h_wid.get<std::int64_t>(count);
    auto* h_key          = g.h_key.get<std::uint32_t>(count);
    auto* h_acc          = g.h_acc.get<ops::moments>(count * channels_);
    ops::extent* h_ext   = extent_ ? g.h_ext.get<ops::extent>(count * channels_) : nullptr;
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_wid, d_id, count * sizeof(std::int64_t),
                                     cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_key, d_key, count * sizeof(std::uint32_t),
                                     cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_acc, d_acc, count * channels_ * sizeof(ops::moments),
                                     cudaMemcpyDeviceToHost, s));
    if (h_ext != nullptr) {
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_ext, d_ext, count * channels_ * sizeof(ops::extent),
                                       cudaMemcpyDeviceToHost, s));
    }
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    windows_out_.reserve(count);
    for (std::size_t r = 0; r < count; ++r) {
      std::int64_t const k     = h_wid[r];
      std::int64_t const start = sliding_ ? slide_.start(k) : window_.start(k);
      std::int64_t const end   = sliding_ ? slide_.end(k) : window_.end(k);
      if (h_ext == nullptr && !update) {
        windows_out_.append(h_key[r], start, end, h_acc + r * channels_);
      } else {
        for (std::size_t c = 0; c < channels_; ++c) {
          row_acc_[c].m = h_acc[r * channels_ + c];
          row_acc_[c].e = h_ext != nullptr ? h_ext[r * channels_ + c] : ops::extent{};
        }
        windows_out_.append(h_key[r], start, end, row_acc_.data(), update);
      }
    }
    emitted_ += count;
  }

  /// Copies the first `count` open states back, appends them to the window table in order
  /// and drops them from the state.
  void emit_prefix(std::size_t count)
  {
    gpu_resources& g = *gpu_;
    state_arrays& st = g.state[cur_];
    copy_back_and_append(count, st.wid.data<std::int64_t>() + offset_,
                         st.key.data<std::uint32_t>() + offset_,
                         st.acc.data<ops::moments>() + offset_ * channels_,
                         extent_ ? st.ext.data<ops::extent>() + offset_ * channels_ : nullptr);
    offset_ += count;
    state_size_ -= count;
    if (state_size_ == 0) { offset_ = 0; }
  }

  pipeline_options options_;
  bool tumbling_moments_;
  ops::tumbling window_;
  ops::sliding slide_;   // sliding windows (panes of gcd(size, slide))
  bool sliding_;         // the pane path: sliding windows with slide < size, or allowed lateness
                         // (else the tumbling path)
  bool extent_;          // order aggregations: ext arrays next to acc
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
  std::uint64_t seq_base_    = 0;  // arrival number of the next record (extent tie-breaks)
  std::int64_t emitted_before_ = 0;  // sliding: windows k < this were emitted by the watermark
  bool has_emitted_          = false;
  std::vector<channel_acc> row_acc_;  // one emitted row with extents (host scratch)
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

// ----- checkpoints: the neutral tumbling_state, shared with the CPU tumbling engine

/// Waits for the worker, then copies the open states (already sorted by (window id, key))
/// back to the host.
void cuda_window_engine::save_state(state_writer& out)
{
  // The neutral form holds tumbling windows with moment aggregations: refuse anything else
  // rather than write an incomplete state.
  if (!tumbling_moments_form()) {
    throw checkpoint_error("checkpoints of this configuration are not supported on the CUDA backend yet");
  }
  wait_idle();
  rethrow_pending();
  tumbling_state st;
  st.has_max    = has_max_;
  st.max_ts     = max_ts_;
  st.aggregated = aggregated_;
  st.late       = late_count_;
  st.nan_values = nan_values_;
  st.emitted    = emitted_;
  std::size_t const n = state_size_;
  st.wid.resize(n);
  st.key.resize(n);
  st.acc.resize(n * channels_);
  if (n > 0) {
    device_guard guard(device_);
    cudaStream_t const s   = gpu_->compute.get();
    state_arrays const& sa = gpu_->state[cur_];
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(st.wid.data(), sa.wid.data<std::int64_t>() + offset_,
                                     n * sizeof(std::int64_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(st.key.data(), sa.key.data<std::uint32_t>() + offset_,
                                     n * sizeof(std::uint32_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(st.acc.data(), sa.acc.data<ops::moments>() + offset_ * channels_,
                                     n * channels_ * sizeof(ops::moments), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
  }
  write_tumbling_state(out, st, options_.channels);
}

/// Uploads a state into this (fresh) engine: the sorted open states become the device state.
void cuda_window_engine::load_state(state_reader& in)
{
  if (!tumbling_moments_form()) {
    throw checkpoint_error("checkpoints of this configuration are not supported on the CUDA backend yet");
  }
  tumbling_state const st = read_tumbling_state(in, options_);
  wait_idle();
  rethrow_pending();
  std::size_t const n = st.wid.size();
  if (n > 0) {
    device_guard guard(device_);
    cudaStream_t const s = gpu_->compute.get();
    state_arrays& sa     = gpu_->state[cur_];
    auto* w              = sa.wid.get<std::int64_t>(n, s);
    auto* k              = sa.key.get<std::uint32_t>(n, s);
    auto* a              = sa.acc.get<ops::moments>(n * channels_, s);
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(w, st.wid.data(), n * sizeof(std::int64_t),
                                     cudaMemcpyHostToDevice, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(k, st.key.data(), n * sizeof(std::uint32_t),
                                     cudaMemcpyHostToDevice, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(a, st.acc.data(), n * channels_ * sizeof(ops::moments),
                                     cudaMemcpyHostToDevice, s));
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));  // the host vectors are freed on return
  }
  has_max_       = st.has_max;
  max_ts_        = st.max_ts;
  aggregated_    = st.aggregated;
  late_count_    = st.late;
  nan_values_    = st.nan_values;
  emitted_       = st.emitted;
  offset_        = 0;
  state_size_    = n;
  pending_merge_ = false;
}

}  // namespace

std::unique_ptr<window_engine> make_cuda_sliding_engine(pipeline_options const& options)
{
  int const device = usable_cuda_device(reinterpret_cast<void const*>(&init_scalars_kernel));
  return std::make_unique<cuda_window_engine>(options, device, false);
}

std::unique_ptr<window_engine> make_cuda_tumbling_engine(pipeline_options const& options)
{
  int const device = usable_cuda_device(reinterpret_cast<void const*>(&init_scalars_kernel));
  return std::make_unique<cuda_window_engine>(options, device, true);
}

}  // namespace cusense::detail
