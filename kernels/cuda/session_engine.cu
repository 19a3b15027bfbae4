// CUDA backend for session windows, with exactly the decisions of the CPU session engine
// (kernels/cpu/session_engine_cpu.cpp): the same late records, rows, is_update flags and row
// order; sums and moments may differ by rounding only.
//
// Sessions are sequential per key (a record may bridge and merge sessions), so each chunk runs
// one thread per key that walks the key's records in arrival order against the key's sessions,
// replaying the CPU logic. What couples keys is only the watermark, and it does not depend on
// any late decision: a record with t > max_ts is never late (t + gap > max_ts >= horizon and
// every freed end <= horizon), and a late record has t <= max_ts, so the clock is the plain
// prefix max of all timestamps in arrival order, computed up front by a scan.
//
// Per chunk (synchronous; batches are cut into chunks of at most `staging_records`):
//   1. prefix max of the timestamps (carried across chunks): watermark before / after each record
//   2. stable radix sort of the record indices by key; runs of equal keys
//   3. union of the keys holding state (freed marks included) and the chunk's keys (sort)
//   4. one thread per key: copies its sessions into a fresh array (room for one more per
//      record), then for each record: brings the sessions up to the watermark before it (emits
//      the open sessions it reached, at the arrival index where the watermark first reached
//      their end; frees kept ones and sets the freed-session mark), decides lateness, joins or
//      merges sessions, adds the record, and emits an update at once when the session is
//      already closed. Finally it catches up to the watermark after the chunk.
//   5. the emission events are sorted stably by (arrival step, window_start) (they are already
//      in key order), gathered, copied back and appended; late records are gathered on the host
//      in arrival order; the compacted key table and the session arrays become the new state.
// The state lives on the device: a key table sorted by key (sessions offset and count, freed
// mark) and session arrays (first, last, flags, accumulators per channel) sorted by first
// within each key. A failed chunk leaves the previous state in place.
#include <cuda_runtime_api.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
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
#include <cusense/ops/windows.hpp>

#include "cuda_utils.cuh"

namespace cusense::detail {
namespace {

constexpr int block_size = 128;
/// Largest chunk: record indices, steps and CUB item counts stay well inside 32-bit ints even
/// when sessions are added to the counts.
constexpr std::size_t max_chunk_records = std::size_t{1} << 26;
constexpr std::uint32_t no_index = 0xffffffffu;
/// "No timestamp yet" for the prefix max (valid timestamps are >= -2^62).
constexpr long long no_time = LLONG_MIN;
/// A key without a freed-session mark: no t is below it.
constexpr long long no_mark = LLONG_MIN;
constexpr std::uint8_t emitted_flag = 1;  // emitted at least once (next emission is an update)
constexpr std::uint8_t closed_flag  = 2;  // end <= watermark: kept for allowed lateness

/// Small values the kernels produce and the host reads back after a synchronisation.
struct session_scalars {
  long long num_runs;
  long long num_union;
  unsigned long long sess_total;
  unsigned long long ev_total;
  unsigned long long aggregated;
  unsigned long long nan_values;
  unsigned long long live_sessions;
  unsigned long long live_keys;
  long long num_keys;
  long long num_events;
  long long num_late;
  unsigned int overflow;
  unsigned int pad;
};

struct max_op {
  __host__ __device__ std::int64_t operator()(std::int64_t a, std::int64_t b) const
  {
    return a < b ? b : a;
  }
};

// ----- small kernels

__global__ void incl_max_kernel(std::int64_t const* prev, std::int64_t const* ts, std::size_t n,
                                std::int64_t* incl)
{
  CUSENSE_FOR_EACH_INDEX(i, n) { incl[i] = prev[i] > ts[i] ? prev[i] : ts[i]; }
}

__global__ void iota_kernel(std::uint32_t* out, std::size_t n)
{
  CUSENSE_FOR_EACH_INDEX(i, n) { out[i] = static_cast<std::uint32_t>(i); }
}

__global__ void heads_kernel(std::uint32_t const* keys, std::size_t n, std::uint32_t* head)
{
  CUSENSE_FOR_EACH_INDEX(p, n) { head[p] = (p == 0 || keys[p] != keys[p - 1]) ? 1u : 0u; }
}

/// Union of the state keys (sources < nk) and the chunk's run keys (sources >= nk), sorted by
/// key with state sources first: per distinct key its state entry and run (no_index: none).
__global__ void union_scatter_kernel(std::uint32_t const* keys, std::uint32_t const* src,
                                     std::uint32_t const* head, std::uint32_t const* incl,
                                     std::size_t n, std::size_t nk, std::uint32_t* u_key,
                                     std::uint32_t* u_state, std::uint32_t* u_run,
                                     session_scalars* sc)
{
  CUSENSE_FOR_EACH_INDEX(p, n)
  {
    std::uint32_t const u = incl[p] - 1;
    if (head[p] != 0) { u_key[u] = keys[p]; }
    if (src[p] < nk) {
      u_state[u] = src[p];
    } else {
      u_run[u] = static_cast<std::uint32_t>(src[p] - nk);
    }
    if (p + 1 == n) { sc->num_union = static_cast<long long>(incl[p]); }
  }
}

/// Per key: room for its sessions (old ones plus one per record) and its events (old sessions
/// each emitted at most once, plus per record at most one update and one later emission).
/// Entry nu is 0 so that the exclusive scans end with the totals.
__global__ void caps_kernel(std::uint32_t const* u_state, std::uint32_t const* u_run,
                            std::size_t nu, std::uint32_t const* o_count,
                            std::uint32_t const* run_len, std::uint64_t* sess_cap,
                            std::uint64_t* ev_cap)
{
  CUSENSE_FOR_EACH_INDEX(u, nu + 1)
  {
    std::uint64_t old = 0, recs = 0;
    if (u < nu) {
      old  = u_state[u] != no_index ? o_count[u_state[u]] : 0;
      recs = u_run[u] != no_index ? run_len[u_run[u]] : 0;
    }
    sess_cap[u] = old + recs;
    ev_cap[u]   = old + 2 * recs;
  }
}

// ----- the per-key walk

/// Everything one key thread reads and writes. Extent pointers are null without order
/// aggregations.
struct key_pass {
  // chunk
  std::int64_t const* ts;
  std::int64_t const* prev;  ///< largest timestamp before record i (no_time: none)
  std::int64_t const* incl;  ///< largest timestamp up to and including record i
  std::uint32_t const* rec_sorted;  ///< record indices by key, arrival order within a key
  std::uint32_t const* run_off;
  std::uint32_t const* run_len;
  std::size_t n;
  std::uint64_t seq_base;  ///< arrival number of record 0 (extent tie-breaks)
  int channels;
  std::int64_t gap, ooo, lateness;
  // union of keys
  std::size_t nu;
  std::uint32_t const* u_key;
  std::uint32_t const* u_state;
  std::uint32_t const* u_run;
  std::uint64_t const* sess_off;
  std::uint64_t const* ev_off;
  // old state
  std::uint64_t const* o_begin;
  std::uint32_t const* o_count;
  std::int64_t const* o_mark;
  std::int64_t const* o_first;
  std::int64_t const* o_last;
  std::uint8_t const* o_flags;
  ops::moments const* o_acc;
  ops::extent const* o_ext;
  // new state: sessions at sess_off[u], per-key results indexed by u
  std::int64_t* s_first;
  std::int64_t* s_last;
  std::uint8_t* s_flags;
  ops::moments* s_acc;
  ops::extent* s_ext;
  std::uint32_t* k_count;
  std::int64_t* k_mark;
  std::uint8_t* k_keep;
  // emission events at ev_off[u]
  std::uint32_t* ev_step;
  std::int64_t* ev_first;
  std::int64_t* ev_end;
  std::uint32_t* ev_key;
  std::uint8_t* ev_update;
  std::uint8_t* ev_valid;
  ops::moments* ev_acc;
  ops::extent* ev_ext;
  std::uint8_t* late;
  session_scalars* sc;
};

/// The CPU engine's per-key logic on the key's sessions, held at p.s_*[base, base + m).
template <typename T>
struct key_walker {
  key_pass const& p;
  T const* values;
  std::uint32_t key;
  std::uint64_t base, cap;
  std::uint64_t m = 0;
  std::uint64_t ev_base, ev_cap;
  std::uint64_t ne = 0;
  std::int64_t mark = no_mark;
  // Lower bounds of the ends of the open / kept sessions: a catch-up that cannot emit or free
  // anything skips the scan.
  std::int64_t min_open = LLONG_MAX;
  std::int64_t min_kept = LLONG_MAX;
  unsigned long long aggregated = 0, nans = 0;
  bool overflow = false;

  __host__ __device__ key_walker(key_pass const& pass, T const* v, std::size_t u) : p(pass), values(v)
  {
    key     = p.u_key[u];
    base    = p.sess_off[u];
    cap     = p.sess_off[u + 1] - base;
    ev_base = p.ev_off[u];
    ev_cap  = p.ev_off[u + 1] - ev_base;
  }

  __host__ __device__ std::size_t C() const { return static_cast<std::size_t>(p.channels); }

  __host__ __device__ void note_end(std::uint8_t flags, std::int64_t end)
  {
    if (flags & closed_flag) {
      min_kept = end < min_kept ? end : min_kept;
    } else {
      min_open = end < min_open ? end : min_open;
    }
  }

  __host__ __device__ void load(std::uint32_t s)
  {
    std::uint64_t const ob  = p.o_begin[s];
    std::uint64_t const cnt = p.o_count[s];
    mark                    = p.o_mark[s];
    if (cnt > cap) {
      overflow = true;
      return;
    }
    for (std::uint64_t k = 0; k < cnt; ++k) {
      std::uint64_t const d = base + k, o = ob + k;
      p.s_first[d]          = p.o_first[o];
      p.s_last[d]           = p.o_last[o];
      p.s_flags[d]          = p.o_flags[o];
      for (std::size_t c = 0; c < C(); ++c) p.s_acc[d * C() + c] = p.o_acc[o * C() + c];
      if (p.s_ext != nullptr) {
        for (std::size_t c = 0; c < C(); ++c) p.s_ext[d * C() + c] = p.o_ext[o * C() + c];
      }
      note_end(p.o_flags[o], p.o_last[o] + p.gap);
    }
    m = cnt;
  }

  __host__ __device__ void move(std::uint64_t dst, std::uint64_t src)
  {
    std::uint64_t const d = base + dst, s = base + src;
    p.s_first[d]          = p.s_first[s];
    p.s_last[d]           = p.s_last[s];
    p.s_flags[d]          = p.s_flags[s];
    for (std::size_t c = 0; c < C(); ++c) p.s_acc[d * C() + c] = p.s_acc[s * C() + c];
    if (p.s_ext != nullptr) {
      for (std::size_t c = 0; c < C(); ++c) p.s_ext[d * C() + c] = p.s_ext[s * C() + c];
    }
  }

  /// First arrival index of the chunk at which the watermark reached `end` (the CPU emits the
  /// session in that record's watermark step).
  __host__ __device__ std::uint32_t step_reaching(std::int64_t end) const
  {
    std::size_t lo = 0, hi = p.n;
    while (lo < hi) {
      std::size_t const mid = lo + (hi - lo) / 2;
      if (p.incl[mid] - p.ooo >= end) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    return static_cast<std::uint32_t>(lo < p.n ? lo : 0);
  }

  __host__ __device__ void emit(std::uint64_t k, std::uint32_t step, bool update)
  {
    if (ne >= ev_cap) {
      overflow = true;
      return;
    }
    std::uint64_t const e = ev_base + ne++;
    std::uint64_t const s = base + k;
    p.ev_step[e]          = step;
    p.ev_first[e]         = p.s_first[s];
    p.ev_end[e]           = p.s_last[s] + p.gap;
    p.ev_key[e]           = key;
    p.ev_update[e]        = update ? 1 : 0;
    p.ev_valid[e]         = 1;
    for (std::size_t c = 0; c < C(); ++c) p.ev_acc[e * C() + c] = p.s_acc[s * C() + c];
    if (p.ev_ext != nullptr) {
      for (std::size_t c = 0; c < C(); ++c) p.ev_ext[e * C() + c] = p.s_ext[s * C() + c];
    }
  }

  /// Applies every watermark step up to watermark `wm` (no record of this key in between):
  /// emits the open sessions it reached, frees the kept ones beyond the allowed lateness
  /// (their end becomes the freed mark) and drops a mark that can no longer decide anything.
  __host__ __device__ void catch_up(std::int64_t wm)
  {
    std::int64_t const h = minus_clamped(wm, p.lateness);
    if (wm >= min_open || h >= min_kept) {
      min_open = LLONG_MAX;
      min_kept = LLONG_MAX;
      std::uint64_t w = 0;
      for (std::uint64_t k = 0; k < m; ++k) {
        std::int64_t const end = p.s_last[base + k] + p.gap;
        std::uint8_t f         = p.s_flags[base + k];
        if (!(f & closed_flag) && end <= wm) {
          emit(k, step_reaching(end), (f & emitted_flag) != 0);
          f = emitted_flag | closed_flag;
        }
        if ((f & closed_flag) && end <= h) {
          mark = end > mark ? end : mark;
          continue;
        }
        p.s_flags[base + k] = f;
        if (w != k) { move(w, k); }
        note_end(f, end);
        ++w;
      }
      m = w;
    }
    // A record before the mark has t + gap < mark + gap <= h: late anyway.
    if (mark != no_mark && mark <= h - p.gap) { mark = no_mark; }
  }

  __host__ __device__ void record(std::uint32_t i)
  {
    std::int64_t const t  = p.ts[i];
    std::int64_t const pv = p.prev[i];
    bool const has        = pv != no_time;
    std::int64_t const wm = has ? pv - p.ooo : 0;
    if (has) {
      catch_up(wm);
      std::int64_t const h = minus_clamped(wm, p.lateness);
      if (t + p.gap <= h || t < mark) {
        p.late[i] = 1;
        return;
      }
    }
    ops::session const sess{p.gap};
    // Sessions touching t: first < t + gap and last + gap > t, contiguous in start order.
    std::uint64_t lo = 0, hi = m;
    while (lo < hi) {
      std::uint64_t const mid = lo + (hi - lo) / 2;
      if (p.s_first[base + mid] < t + p.gap) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    hi = lo;
    while (lo > 0 && sess.touches(t, p.s_first[base + lo - 1], p.s_last[base + lo - 1])) --lo;
    std::uint64_t target = lo;
    std::uint8_t flags   = 0;
    if (lo == hi) {
      if (m >= cap) {
        overflow = true;
        return;
      }
      for (std::uint64_t k = m; k > hi; --k) move(k, k - 1);
      std::uint64_t const s = base + hi;
      p.s_first[s]          = t;
      p.s_last[s]           = t;
      for (std::size_t c = 0; c < C(); ++c) p.s_acc[s * C() + c] = ops::moments{};
      if (p.s_ext != nullptr) {
        for (std::size_t c = 0; c < C(); ++c) p.s_ext[s * C() + c] = ops::extent{};
      }
      ++m;
    } else {
      // Bridges sessions lo .. hi - 1: merged into the first in start order.
      std::uint64_t const into = base + lo;
      std::int64_t const first = t < p.s_first[into] ? t : p.s_first[into];
      std::int64_t last        = t;
      for (std::uint64_t k = lo; k < hi; ++k) {
        std::uint64_t const s = base + k;
        last                  = p.s_last[s] > last ? p.s_last[s] : last;
        flags |= p.s_flags[s] & emitted_flag;
        if (k != lo) {
          for (std::size_t c = 0; c < C(); ++c) {
            p.s_acc[into * C() + c] = ops::merge(p.s_acc[into * C() + c], p.s_acc[s * C() + c]);
          }
          if (p.s_ext != nullptr) {
            for (std::size_t c = 0; c < C(); ++c) {
              p.s_ext[into * C() + c] = ops::merge(p.s_ext[into * C() + c], p.s_ext[s * C() + c]);
            }
          }
        }
      }
      std::uint64_t const removed = hi - lo - 1;
      if (removed != 0) {
        for (std::uint64_t k = hi; k < m; ++k) move(k - removed, k);
        m -= removed;
      }
      p.s_first[into] = first;
      p.s_last[into]  = last;
    }
    std::uint64_t const s = base + target;
    for (std::size_t c = 0; c < C(); ++c) {
      double const x = static_cast<double>(values[static_cast<std::size_t>(i) * C() + c]);
      nans += ops::is_nan(x) ? 1u : 0u;
      ops::add(p.s_acc[s * C() + c], x);
      if (p.s_ext != nullptr) { ops::add(p.s_ext[s * C() + c], x, t, p.seq_base + i); }
    }
    ++aggregated;
    std::int64_t const end = p.s_last[s] + p.gap;
    if (has && end <= wm) {
      // Changes a session that is already closed (allowed lateness): emitted again now.
      flags = emitted_flag | closed_flag;
      p.s_flags[s] = flags;
      emit(target, i, true);
    } else {
      p.s_flags[s] = flags;
    }
    note_end(flags, end);
  }
};

template <typename T>
__global__ void __launch_bounds__(block_size)
  session_key_kernel(key_pass p, T const* values)
{
  CUSENSE_FOR_EACH_INDEX(u, p.nu)
  {
    key_walker<T> w(p, values, u);
    if (p.u_state[u] != no_index) { w.load(p.u_state[u]); }
    std::uint32_t const r = p.u_run[u];
    if (r != no_index && !w.overflow) {
      std::uint32_t const begin = p.run_off[r], end = begin + p.run_len[r];
      for (std::uint32_t j = begin; j < end && !w.overflow; ++j) w.record(p.rec_sorted[j]);
    }
    w.catch_up(p.incl[p.n - 1] - p.ooo);
    p.k_count[u] = static_cast<std::uint32_t>(w.m);
    p.k_mark[u]  = w.mark;
    p.k_keep[u]  = (w.m > 0 || w.mark != no_mark) ? 1 : 0;
    if (w.aggregated != 0) { atomicAdd(&p.sc->aggregated, w.aggregated); }
    if (w.nans != 0) { atomicAdd(&p.sc->nan_values, w.nans); }
    if (w.m != 0) {
      atomicAdd(&p.sc->live_sessions, static_cast<unsigned long long>(w.m));
      atomicAdd(&p.sc->live_keys, 1ull);
    }
    if (w.overflow || w.m > 0xffffffffull) { atomicOr(&p.sc->overflow, 1u); }
  }
}

/// The kept keys of the union, compacted into the new key table.
__global__ void gather_key_table_kernel(std::uint32_t const* sel, std::size_t nk,
                                        std::uint32_t const* u_key, std::uint64_t const* sess_off,
                                        std::uint32_t const* k_count, std::int64_t const* k_mark,
                                        std::uint32_t* key, std::uint64_t* begin,
                                        std::uint32_t* count, std::int64_t* mark)
{
  CUSENSE_FOR_EACH_INDEX(j, nk)
  {
    std::uint32_t const u = sel[j];
    key[j]                = u_key[u];
    begin[j]              = sess_off[u];
    count[j]              = k_count[u];
    mark[j]               = k_mark[u];
  }
}

/// Sort keys of the events idx[0, n): window start with the sign bit flipped (unsigned order
/// equals signed order).
__global__ void event_first_keys_kernel(std::uint32_t const* idx, std::size_t n,
                                        std::int64_t const* first, std::uint64_t* out)
{
  CUSENSE_FOR_EACH_INDEX(j, n)
  {
    out[j] = static_cast<std::uint64_t>(first[idx[j]]) ^ (std::uint64_t{1} << 63);
  }
}

__global__ void event_step_keys_kernel(std::uint32_t const* idx, std::size_t n,
                                       std::uint32_t const* step, std::uint32_t* out)
{
  CUSENSE_FOR_EACH_INDEX(j, n) { out[j] = step[idx[j]]; }
}

/// The events in output order.
__global__ void gather_events_kernel(std::uint32_t const* idx, std::size_t n, int channels,
                                     std::uint32_t const* ev_key, std::int64_t const* ev_first,
                                     std::int64_t const* ev_end, std::uint8_t const* ev_update,
                                     ops::moments const* ev_acc, ops::extent const* ev_ext,
                                     std::uint32_t* key, std::int64_t* first, std::int64_t* end,
                                     std::uint8_t* update, ops::moments* acc, ops::extent* ext)
{
  auto const C = static_cast<std::size_t>(channels);
  CUSENSE_FOR_EACH_INDEX(j, n)
  {
    std::size_t const e = idx[j];
    key[j]              = ev_key[e];
    first[j]            = ev_first[e];
    end[j]              = ev_end[e];
    update[j]           = ev_update[e];
    for (std::size_t c = 0; c < C; ++c) acc[j * C + c] = ev_acc[e * C + c];
    if (ext != nullptr) {
      for (std::size_t c = 0; c < C; ++c) ext[j * C + c] = ev_ext[e * C + c];
    }
  }
}


// ----- engine

/// The device state: a key table sorted by key and the sessions each key entry points to
/// (begin, count), sorted by first within a key; holes between keys are allowed.
struct session_arrays {
  device_buffer key, begin, count, mark;            // key table
  device_buffer first, last, flags, acc, ext;       // sessions
};

struct session_gpu {
  cuda_stream stream;
  device_buffer cub_temp, scalars;
  device_buffer ts, keys, values, prev, incl, iota, keys_sorted, rec_sorted;
  device_buffer uniq, run_len, run_off;
  device_buffer cat_key, cat_key_out, cat_src, cat_src_out, head, head_incl;
  device_buffer u_key, u_state, u_run, sess_cap, ev_cap, sess_off, ev_off;
  device_buffer k_count, k_mark, k_keep, k_sel;
  device_buffer ev_step, ev_first, ev_end, ev_key, ev_update, ev_valid, ev_acc, ev_ext;
  device_buffer ev_sel, sort_u64, sort_u64_out, sort_u32, sort_u32_out, ev_idx;
  device_buffer row_key, row_first, row_end, row_update, row_acc, row_ext;
  device_buffer late, late_sel;
  session_arrays state[2];
  host_buffer h_scalars;
};

/// The state copied to the host (flush, checkpoints).
struct host_state {
  std::vector<std::uint32_t> key, count;
  std::vector<std::uint64_t> begin;
  std::vector<std::int64_t> mark, first, last;
  std::vector<std::uint8_t> flags;
  std::vector<ops::moments> acc;
  std::vector<ops::extent> ext;
};

class cuda_session_engine final : public window_engine {
 public:
  cuda_session_engine(pipeline_options const& options, int device)
    : options_(options),
      gap_(options.window.gap),
      extent_(acc_layout::of(options).extent),
      channels_(static_cast<std::size_t>(options.channels)),
      device_(device),
      windows_out_(options),
      late_out_(options)
  {
    // The options are validated by the pipeline and routed here by the engine registry.
    chunk_cap_ = std::clamp<std::size_t>(options.staging_records, 1, max_chunk_records);
    row_acc_.resize(channels_);
    device_guard guard(device_);
    gpu_ = std::make_unique<session_gpu>();
    gpu_->scalars.reserve(sizeof(session_scalars));
    gpu_->h_scalars.reserve(sizeof(session_scalars));
  }

  ~cuda_session_engine() override
  {
    try {
      device_guard guard(device_);
      CUSENSE_CUDA_TRY_NO_THROW(cudaStreamSynchronize(gpu_->stream.get()));
      gpu_.reset();
    } catch (...) {
      // Never throw from a destructor; gpu_'s destructor releases what is left.
    }
  }

  cuda_session_engine(cuda_session_engine const&)            = delete;
  cuda_session_engine& operator=(cuda_session_engine const&) = delete;

  void push(record_batch const& batch) override
  {
    if (batch.n == 0) { return; }
    if (options_.max_open_windows != 0) { check_capacity(batch); }
    device_guard guard(device_);
    std::size_t const value_size = batch.values_f32 ? sizeof(float) : sizeof(double);
    auto const* values           = static_cast<unsigned char const*>(batch.values);
    for (std::size_t begin = 0; begin < batch.n; begin += chunk_cap_) {
      record_batch chunk = batch;
      chunk.n            = std::min(chunk_cap_, batch.n - begin);
      chunk.keys         = batch.keys + begin;
      chunk.timestamps   = batch.timestamps + begin;
      chunk.values       = values + begin * channels_ * value_size;
      if (batch.values_f32) {
        process_chunk(chunk, static_cast<float const*>(chunk.values));
      } else {
        process_chunk(chunk, static_cast<double const*>(chunk.values));
      }
    }
  }

  void flush() override
  {
    if (num_keys_ == 0) { return; }
    host_state st = download();
    // Every open session, in (window_start, key) order; kept ones are freed silently.
    std::vector<std::tuple<std::int64_t, std::uint32_t, std::uint64_t>> ready;
    for (std::size_t k = 0; k < st.key.size(); ++k) {
      for (std::uint64_t s = st.begin[k]; s < st.begin[k] + st.count[k]; ++s) {
        if (!(st.flags[s] & closed_flag)) { ready.emplace_back(st.first[s], st.key[k], s); }
      }
    }
    std::sort(ready.begin(), ready.end());
    windows_out_.reserve(ready.size());
    for (auto const& [first, key, s] : ready) {
      append_row(key, first, st.last[s] + gap_, st.acc.data() + s * channels_,
                 extent_ ? st.ext.data() + s * channels_ : nullptr, (st.flags[s] & emitted_flag) != 0);
    }
    emitted_ += ready.size();
    clear_state();
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
    c.open_windows  = live_sessions_;
    c.open_keys     = live_keys_;
    c.state_bytes   = live_sessions_ * (2 * sizeof(std::int64_t) + 1 + channels_ * sizeof(ops::moments) +
                                      (extent_ ? channels_ * sizeof(ops::extent) : 0)) +
                    num_keys_ * (2 * sizeof(std::uint32_t) + sizeof(std::uint64_t) + sizeof(std::int64_t));
    c.has_watermark = has_max_;
    c.watermark     = has_max_ ? max_ts_ - options_.max_out_of_orderness : 0;
    return c;
  }

  void save_state(state_writer& out) override;
  void load_state(state_reader& in) override;

 private:
  template <typename F>
  void run_cub(char const* what, F&& f)
  {
    std::size_t bytes = 0;
    cudaError_t err   = f(nullptr, bytes);
    if (err != cudaSuccess) { throw_cuda_error(err, what, __FILE__, __LINE__); }
    void* temp = gpu_->cub_temp.get<unsigned char>(bytes, gpu_->stream.get());
    err        = f(temp, bytes);
    if (err != cudaSuccess) { throw_cuda_error(err, what, __FILE__, __LINE__); }
  }

  session_scalars read_scalars()
  {
    cudaStream_t const s = gpu_->stream.get();
    auto* h              = gpu_->h_scalars.data<session_scalars>();
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h, gpu_->scalars.data<session_scalars>(), sizeof(session_scalars),
                                     cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    return *h;
  }

  template <typename T>
  void process_chunk(record_batch const& chunk, T const* h_values);

  void append_row(std::uint32_t key, std::int64_t first, std::int64_t end, ops::moments const* acc,
                  ops::extent const* ext, bool update)
  {
    for (std::size_t c = 0; c < channels_; ++c) {
      row_acc_[c].m = acc[c];
      row_acc_[c].e = ext != nullptr ? ext[c] : ops::extent{};
    }
    windows_out_.append(key, first, end, row_acc_.data(), update);
  }

  void clear_state()
  {
    num_keys_      = 0;
    sess_used_     = 0;
    live_sessions_ = 0;
    live_keys_     = 0;
  }

  host_state download();
  void upload(host_state const& st);

  // Refuses (before changing anything) a batch that could take the sessions held beyond
  // max_open_windows, with the CPU engine's bound: the gap-separated runs, per key, of the
  // batch's records that are not late by the watermark alone.
  void check_capacity(record_batch const& batch) const
  {
    bool has         = has_max_;
    std::int64_t mx  = max_ts_;
    std::int64_t const ooo = options_.max_out_of_orderness;
    std::vector<std::pair<std::uint32_t, std::int64_t>> recs;
    for (std::size_t i = 0; i < batch.n; ++i) {
      std::int64_t const t = batch.timestamps[i];
      if (has && t + gap_ <= minus_clamped(mx - ooo, options_.allowed_lateness)) { continue; }
      recs.emplace_back(batch.keys[i], t);
      if (!has || t > mx) {
        mx  = t;
        has = true;
      }
    }
    std::sort(recs.begin(), recs.end());
    std::size_t runs = 0;
    for (std::size_t i = 0; i < recs.size(); ++i) {
      runs += i == 0 || recs[i].first != recs[i - 1].first || recs[i].second >= recs[i - 1].second + gap_;
    }
    check_cap(options_.max_open_windows, live_sessions_, runs, batch.n, "sessions");
  }

  pipeline_options options_;
  std::int64_t gap_;
  bool extent_;
  std::size_t channels_;
  int device_;
  std::size_t chunk_cap_ = 0;
  std::unique_ptr<session_gpu> gpu_;
  window_table_builder windows_out_;
  late_table_builder late_out_;
  std::vector<channel_acc> row_acc_;

  int cur_                     = 0;  // which session_arrays holds the state
  std::size_t num_keys_        = 0;  // key table entries (keys with sessions or a freed mark)
  std::size_t sess_used_       = 0;  // session array entries in use (holes included)
  std::uint64_t live_sessions_ = 0;
  std::uint64_t live_keys_     = 0;  // keys holding sessions
  std::int64_t max_ts_         = 0;
  bool has_max_                = false;
  std::uint64_t seq_           = 0;  // arrival number of the next record
  std::uint64_t aggregated_    = 0;
  std::uint64_t late_count_    = 0;
  std::uint64_t nan_values_    = 0;
  std::uint64_t emitted_       = 0;
};

template <typename T>
void cuda_session_engine::process_chunk(record_batch const& chunk, T const* h_values)
{
  session_gpu& g       = *gpu_;
  cudaStream_t const s = g.stream.get();
  std::size_t const n  = chunk.n;
  int const items      = static_cast<int>(n);
  auto* d_sc           = g.scalars.data<session_scalars>();
  session_arrays& old  = g.state[cur_];
  session_arrays& nxt  = g.state[1 - cur_];
  std::size_t const nk = num_keys_;

  CUSENSE_CUDA_TRY(cudaMemsetAsync(d_sc, 0, sizeof(session_scalars), s));
  auto* d_ts     = g.ts.get<std::int64_t>(n, s);
  auto* d_keys   = g.keys.get<std::uint32_t>(n, s);
  auto* d_values = g.values.get<T>(n * channels_, s);
  CUSENSE_CUDA_TRY(cudaMemcpyAsync(d_ts, chunk.timestamps, n * sizeof(std::int64_t), cudaMemcpyHostToDevice, s));
  CUSENSE_CUDA_TRY(cudaMemcpyAsync(d_keys, chunk.keys, n * sizeof(std::uint32_t), cudaMemcpyHostToDevice, s));
  CUSENSE_CUDA_TRY(cudaMemcpyAsync(d_values, h_values, n * channels_ * sizeof(T), cudaMemcpyHostToDevice, s));

  // 1. watermark before and after each record
  auto* d_prev = g.prev.get<std::int64_t>(n, s);
  auto* d_incl = g.incl.get<std::int64_t>(n, s);
  std::int64_t const carried = has_max_ ? max_ts_ : static_cast<std::int64_t>(no_time);
  run_cub("cub::DeviceScan::ExclusiveScan", [&](void* temp, std::size_t& bytes) {
    return cub::DeviceScan::ExclusiveScan(temp, bytes, d_ts, d_prev, max_op{}, carried, items, s);
  });
  incl_max_kernel<<<cuda_blocks_for(n, block_size), block_size, 0, s>>>(d_prev, d_ts, n, d_incl);
  CUSENSE_CHECK_LAST_ERROR();

  // 2. records by key (stable: arrival order within a key), runs of equal keys
  auto* d_iota        = g.iota.get<std::uint32_t>(n, s);
  auto* d_keys_sorted = g.keys_sorted.get<std::uint32_t>(n, s);
  auto* d_rec_sorted  = g.rec_sorted.get<std::uint32_t>(n, s);
  iota_kernel<<<cuda_blocks_for(n, block_size), block_size, 0, s>>>(d_iota, n);
  CUSENSE_CHECK_LAST_ERROR();
  std::uint32_t max_key = 0;
  for (std::size_t i = 0; i < n; ++i) max_key = std::max(max_key, chunk.keys[i]);
  int const key_bits = std::max(1, bit_width(max_key));
  run_cub("cub::DeviceRadixSort::SortPairs", [&](void* temp, std::size_t& bytes) {
    return cub::DeviceRadixSort::SortPairs(temp, bytes, d_keys, d_keys_sorted, d_iota, d_rec_sorted,
                                           items, 0, key_bits, s);
  });
  auto* d_uniq    = g.uniq.get<std::uint32_t>(n, s);
  auto* d_run_len = g.run_len.get<std::uint32_t>(n, s);
  auto* d_run_off = g.run_off.get<std::uint32_t>(n, s);
  run_cub("cub::DeviceRunLengthEncode::Encode", [&](void* temp, std::size_t& bytes) {
    return cub::DeviceRunLengthEncode::Encode(temp, bytes, d_keys_sorted, d_uniq, d_run_len,
                                              &d_sc->num_runs, items, s);
  });
  session_scalars sc = read_scalars();
  if (sc.num_runs <= 0 || static_cast<std::size_t>(sc.num_runs) > n) {
    throw cuda_error("cusense: inconsistent key run count from the device");
  }
  auto const nr = static_cast<std::size_t>(sc.num_runs);
  run_cub("cub::DeviceScan::ExclusiveSum", [&](void* temp, std::size_t& bytes) {
    return cub::DeviceScan::ExclusiveSum(temp, bytes, d_run_len, d_run_off, static_cast<int>(nr), s);
  });

  // 3. union of the state keys and the chunk's keys
  std::size_t const total = nk + nr;
  if (total >= static_cast<std::size_t>(INT_MAX)) {
    throw out_of_memory("cusense: too many keys with open sessions for one CUDA chunk");
  }
  auto* cat_key     = g.cat_key.get<std::uint32_t>(total, s);
  auto* cat_key_out = g.cat_key_out.get<std::uint32_t>(total, s);
  auto* cat_src     = g.cat_src.get<std::uint32_t>(total, s);
  auto* cat_src_out = g.cat_src_out.get<std::uint32_t>(total, s);
  if (nk > 0) {
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(cat_key, old.key.data<std::uint32_t>(), nk * sizeof(std::uint32_t),
                                     cudaMemcpyDeviceToDevice, s));
  }
  CUSENSE_CUDA_TRY(cudaMemcpyAsync(cat_key + nk, d_uniq, nr * sizeof(std::uint32_t), cudaMemcpyDeviceToDevice, s));
  iota_kernel<<<cuda_blocks_for(total, block_size), block_size, 0, s>>>(cat_src, total);
  CUSENSE_CHECK_LAST_ERROR();
  run_cub("cub::DeviceRadixSort::SortPairs", [&](void* temp, std::size_t& bytes) {
    return cub::DeviceRadixSort::SortPairs(temp, bytes, cat_key, cat_key_out, cat_src, cat_src_out,
                                           static_cast<int>(total), 0, 32, s);
  });
  auto* head      = g.head.get<std::uint32_t>(total, s);
  auto* head_incl = g.head_incl.get<std::uint32_t>(total, s);
  heads_kernel<<<cuda_blocks_for(total, block_size), block_size, 0, s>>>(cat_key_out, total, head);
  CUSENSE_CHECK_LAST_ERROR();
  run_cub("cub::DeviceScan::InclusiveSum", [&](void* temp, std::size_t& bytes) {
    return cub::DeviceScan::InclusiveSum(temp, bytes, head, head_incl, static_cast<int>(total), s);
  });
  auto* u_key   = g.u_key.get<std::uint32_t>(total, s);
  auto* u_state = g.u_state.get<std::uint32_t>(total, s);
  auto* u_run   = g.u_run.get<std::uint32_t>(total, s);
  CUSENSE_CUDA_TRY(cudaMemsetAsync(u_state, 0xff, total * sizeof(std::uint32_t), s));
  CUSENSE_CUDA_TRY(cudaMemsetAsync(u_run, 0xff, total * sizeof(std::uint32_t), s));
  union_scatter_kernel<<<cuda_blocks_for(total, block_size), block_size, 0, s>>>(cat_key_out, cat_src_out, head, head_incl,
                                                              total, nk, u_key, u_state, u_run, d_sc);
  CUSENSE_CHECK_LAST_ERROR();
  sc = read_scalars();
  if (sc.num_union <= 0 || static_cast<std::size_t>(sc.num_union) > total) {
    throw cuda_error("cusense: inconsistent key count from the device");
  }
  auto const nu = static_cast<std::size_t>(sc.num_union);

  // room per key for its new sessions and its events
  auto* sess_cap = g.sess_cap.get<std::uint64_t>(nu + 1, s);
  auto* ev_cap   = g.ev_cap.get<std::uint64_t>(nu + 1, s);
  auto* sess_off = g.sess_off.get<std::uint64_t>(nu + 1, s);
  auto* ev_off   = g.ev_off.get<std::uint64_t>(nu + 1, s);
  caps_kernel<<<cuda_blocks_for(nu + 1, block_size), block_size, 0, s>>>(u_state, u_run, nu, old.count.data<std::uint32_t>(),
                                                      d_run_len, sess_cap, ev_cap);
  CUSENSE_CHECK_LAST_ERROR();
  run_cub("cub::DeviceScan::ExclusiveSum", [&](void* temp, std::size_t& bytes) {
    return cub::DeviceScan::ExclusiveSum(temp, bytes, sess_cap, sess_off, static_cast<int>(nu + 1), s);
  });
  run_cub("cub::DeviceScan::ExclusiveSum", [&](void* temp, std::size_t& bytes) {
    return cub::DeviceScan::ExclusiveSum(temp, bytes, ev_cap, ev_off, static_cast<int>(nu + 1), s);
  });
  static_assert(sizeof(unsigned long long) == sizeof(std::uint64_t));
  CUSENSE_CUDA_TRY(cudaMemcpyAsync(&d_sc->sess_total, sess_off + nu, sizeof(std::uint64_t),
                                   cudaMemcpyDeviceToDevice, s));
  CUSENSE_CUDA_TRY(cudaMemcpyAsync(&d_sc->ev_total, ev_off + nu, sizeof(std::uint64_t),
                                   cudaMemcpyDeviceToDevice, s));
  sc = read_scalars();
  auto const sess_total = static_cast<std::size_t>(sc.sess_total);
  auto const ev_total   = static_cast<std::size_t>(sc.ev_total);
  // Event positions are 32-bit and CUB item counts int.
  if (ev_total >= static_cast<std::size_t>(INT_MAX)) {
    throw out_of_memory("cusense: too many open sessions for one CUDA chunk");
  }

  // 4. the per-key walk into fresh arrays
  key_pass p{};
  p.ts         = d_ts;
  p.prev       = d_prev;
  p.incl       = d_incl;
  p.rec_sorted = d_rec_sorted;
  p.run_off    = d_run_off;
  p.run_len    = d_run_len;
  p.n          = n;
  p.seq_base   = seq_;
  p.channels   = options_.channels;
  p.gap        = gap_;
  p.ooo        = options_.max_out_of_orderness;
  p.lateness   = options_.allowed_lateness;
  p.nu         = nu;
  p.u_key      = u_key;
  p.u_state    = u_state;
  p.u_run      = u_run;
  p.sess_off   = sess_off;
  p.ev_off     = ev_off;
  p.o_begin    = old.begin.data<std::uint64_t>();
  p.o_count    = old.count.data<std::uint32_t>();
  p.o_mark     = old.mark.data<std::int64_t>();
  p.o_first    = old.first.data<std::int64_t>();
  p.o_last     = old.last.data<std::int64_t>();
  p.o_flags    = old.flags.data<std::uint8_t>();
  p.o_acc      = old.acc.data<ops::moments>();
  p.o_ext      = extent_ ? old.ext.data<ops::extent>() : nullptr;
  p.s_first    = nxt.first.get<std::int64_t>(sess_total, s);
  p.s_last     = nxt.last.get<std::int64_t>(sess_total, s);
  p.s_flags    = nxt.flags.get<std::uint8_t>(sess_total, s);
  p.s_acc      = nxt.acc.get<ops::moments>(sess_total * channels_, s);
  p.s_ext      = extent_ ? nxt.ext.get<ops::extent>(sess_total * channels_, s) : nullptr;
  p.k_count    = g.k_count.get<std::uint32_t>(nu, s);
  p.k_mark     = g.k_mark.get<std::int64_t>(nu, s);
  p.k_keep     = g.k_keep.get<std::uint8_t>(nu, s);
  p.ev_step    = g.ev_step.get<std::uint32_t>(ev_total, s);
  p.ev_first   = g.ev_first.get<std::int64_t>(ev_total, s);
  p.ev_end     = g.ev_end.get<std::int64_t>(ev_total, s);
  p.ev_key     = g.ev_key.get<std::uint32_t>(ev_total, s);
  p.ev_update  = g.ev_update.get<std::uint8_t>(ev_total, s);
  p.ev_valid   = g.ev_valid.get<std::uint8_t>(ev_total, s);
  p.ev_acc     = g.ev_acc.get<ops::moments>(ev_total * channels_, s);
  p.ev_ext     = extent_ ? g.ev_ext.get<ops::extent>(ev_total * channels_, s) : nullptr;
  p.late       = g.late.get<std::uint8_t>(n, s);
  p.sc         = d_sc;
  CUSENSE_CUDA_TRY(cudaMemsetAsync(p.ev_valid, 0, std::max<std::size_t>(ev_total, 1), s));
  CUSENSE_CUDA_TRY(cudaMemsetAsync(p.late, 0, n, s));
  session_key_kernel<T><<<cuda_blocks_for(nu, block_size), block_size, 0, s>>>(p, d_values);
  CUSENSE_CHECK_LAST_ERROR();

  // 5. compact the key table, select the events and the late records
  auto* k_sel = g.k_sel.get<std::uint32_t>(nu, s);
  run_cub("cub::DeviceSelect::Flagged", [&](void* temp, std::size_t& bytes) {
    return cub::DeviceSelect::Flagged(temp, bytes, thrust::counting_iterator<std::uint32_t>(0), p.k_keep,
                                      k_sel, &d_sc->num_keys, static_cast<int>(nu), s);
  });
  auto* ev_sel = g.ev_sel.get<std::uint32_t>(ev_total, s);
  if (ev_total > 0) {
    run_cub("cub::DeviceSelect::Flagged", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceSelect::Flagged(temp, bytes, thrust::counting_iterator<std::uint32_t>(0), p.ev_valid,
                                        ev_sel, &d_sc->num_events, static_cast<int>(ev_total), s);
    });
  }
  auto* late_sel = g.late_sel.get<std::uint32_t>(n, s);
  run_cub("cub::DeviceSelect::Flagged", [&](void* temp, std::size_t& bytes) {
    return cub::DeviceSelect::Flagged(temp, bytes, thrust::counting_iterator<std::uint32_t>(0), p.late,
                                      late_sel, &d_sc->num_late, items, s);
  });
  sc = read_scalars();
  if (sc.overflow != 0 || sc.num_keys < 0 || static_cast<std::size_t>(sc.num_keys) > nu ||
      sc.num_events < 0 || static_cast<std::size_t>(sc.num_events) > ev_total || sc.num_late < 0 ||
      static_cast<std::size_t>(sc.num_late) > n || sc.aggregated + static_cast<unsigned long long>(sc.num_late) != n ||
      sc.live_sessions > sess_total) {
    throw cuda_error("cusense: inconsistent session counts from the device");
  }
  auto const new_keys = static_cast<std::size_t>(sc.num_keys);
  auto const ne       = static_cast<std::size_t>(sc.num_events);
  auto const nl       = static_cast<std::size_t>(sc.num_late);

  // new key table
  auto* nk_key   = nxt.key.get<std::uint32_t>(new_keys, s);
  auto* nk_begin = nxt.begin.get<std::uint64_t>(new_keys, s);
  auto* nk_count = nxt.count.get<std::uint32_t>(new_keys, s);
  auto* nk_mark  = nxt.mark.get<std::int64_t>(new_keys, s);
  if (new_keys > 0) {
    gather_key_table_kernel<<<cuda_blocks_for(new_keys, block_size), block_size, 0, s>>>(k_sel, new_keys, u_key, sess_off, p.k_count,
                                                                      p.k_mark, nk_key, nk_begin, nk_count, nk_mark);
    CUSENSE_CHECK_LAST_ERROR();
  }

  // events in (step, window_start, key) order: ev_sel is in key order, two stable passes
  std::vector<std::uint32_t> h_key(ne);
  std::vector<std::int64_t> h_first(ne), h_end(ne);
  std::vector<std::uint8_t> h_update(ne);
  std::vector<ops::moments> h_acc(ne * channels_);
  std::vector<ops::extent> h_ext(extent_ ? ne * channels_ : 0);
  if (ne > 0) {
    auto* k64     = g.sort_u64.get<std::uint64_t>(ne, s);
    auto* k64_out = g.sort_u64_out.get<std::uint64_t>(ne, s);
    auto* k32     = g.sort_u32.get<std::uint32_t>(ne, s);
    auto* k32_out = g.sort_u32_out.get<std::uint32_t>(ne, s);
    auto* idx     = g.ev_idx.get<std::uint32_t>(2 * ne, s);
    std::uint32_t* by_first = idx;
    std::uint32_t* by_step  = idx + ne;
    event_first_keys_kernel<<<cuda_blocks_for(ne, block_size), block_size, 0, s>>>(ev_sel, ne, p.ev_first, k64);
    CUSENSE_CHECK_LAST_ERROR();
    run_cub("cub::DeviceRadixSort::SortPairs", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceRadixSort::SortPairs(temp, bytes, k64, k64_out, ev_sel, by_first,
                                             static_cast<int>(ne), 0, 64, s);
    });
    event_step_keys_kernel<<<cuda_blocks_for(ne, block_size), block_size, 0, s>>>(by_first, ne, p.ev_step, k32);
    CUSENSE_CHECK_LAST_ERROR();
    run_cub("cub::DeviceRadixSort::SortPairs", [&](void* temp, std::size_t& bytes) {
      return cub::DeviceRadixSort::SortPairs(temp, bytes, k32, k32_out, by_first, by_step,
                                             static_cast<int>(ne), 0, std::max(1, bit_width(n)), s);
    });
    auto* r_key    = g.row_key.get<std::uint32_t>(ne, s);
    auto* r_first  = g.row_first.get<std::int64_t>(ne, s);
    auto* r_end    = g.row_end.get<std::int64_t>(ne, s);
    auto* r_update = g.row_update.get<std::uint8_t>(ne, s);
    auto* r_acc    = g.row_acc.get<ops::moments>(ne * channels_, s);
    ops::extent* r_ext = extent_ ? g.row_ext.get<ops::extent>(ne * channels_, s) : nullptr;
    gather_events_kernel<<<cuda_blocks_for(ne, block_size), block_size, 0, s>>>(by_step, ne, options_.channels, p.ev_key, p.ev_first,
                                                             p.ev_end, p.ev_update, p.ev_acc, p.ev_ext, r_key,
                                                             r_first, r_end, r_update, r_acc, r_ext);
    CUSENSE_CHECK_LAST_ERROR();
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_key.data(), r_key, ne * sizeof(std::uint32_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_first.data(), r_first, ne * sizeof(std::int64_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_end.data(), r_end, ne * sizeof(std::int64_t), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_update.data(), r_update, ne, cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_acc.data(), r_acc, ne * channels_ * sizeof(ops::moments),
                                     cudaMemcpyDeviceToHost, s));
    if (extent_) {
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_ext.data(), r_ext, ne * channels_ * sizeof(ops::extent),
                                       cudaMemcpyDeviceToHost, s));
    }
  }
  std::vector<std::uint32_t> h_late(nl);
  if (nl > 0) {
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_late.data(), late_sel, nl * sizeof(std::uint32_t), cudaMemcpyDeviceToHost, s));
  }
  CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));

  // commit: the new arrays become the state
  cur_           = 1 - cur_;
  num_keys_      = new_keys;
  sess_used_     = sess_total;
  live_sessions_ = sc.live_sessions;
  live_keys_     = sc.live_keys;
  for (std::size_t i = 0; i < n; ++i) {
    if (!has_max_ || chunk.timestamps[i] > max_ts_) {
      max_ts_  = chunk.timestamps[i];
      has_max_ = true;
    }
  }
  seq_ += n;
  aggregated_ += sc.aggregated;
  nan_values_ += sc.nan_values;
  late_count_ += nl;
  emitted_ += ne;

  windows_out_.reserve(ne);
  for (std::size_t r = 0; r < ne; ++r) {
    append_row(h_key[r], h_first[r], h_end[r], h_acc.data() + r * channels_,
               extent_ ? h_ext.data() + r * channels_ : nullptr, h_update[r] != 0);
  }
  late_out_.reserve(nl);
  for (std::size_t k = 0; k < nl; ++k) {
    std::size_t const i = h_late[k];
    late_out_.append(chunk.keys[i], chunk.timestamps[i], h_values + i * channels_);
  }
}

host_state cuda_session_engine::download()
{
  host_state st;
  std::size_t const nk = num_keys_, ns = sess_used_;
  st.key.resize(nk);
  st.count.resize(nk);
  st.begin.resize(nk);
  st.mark.resize(nk);
  st.first.resize(ns);
  st.last.resize(ns);
  st.flags.resize(ns);
  st.acc.resize(ns * channels_);
  if (extent_) { st.ext.resize(ns * channels_); }
  if (nk == 0) { return st; }
  device_guard guard(device_);
  cudaStream_t const s = gpu_->stream.get();
  session_arrays const& a = gpu_->state[cur_];
  CUSENSE_CUDA_TRY(cudaMemcpyAsync(st.key.data(), a.key.data<std::uint32_t>(), nk * sizeof(std::uint32_t),
                                   cudaMemcpyDeviceToHost, s));
  CUSENSE_CUDA_TRY(cudaMemcpyAsync(st.count.data(), a.count.data<std::uint32_t>(), nk * sizeof(std::uint32_t),
                                   cudaMemcpyDeviceToHost, s));
  CUSENSE_CUDA_TRY(cudaMemcpyAsync(st.begin.data(), a.begin.data<std::uint64_t>(), nk * sizeof(std::uint64_t),
                                   cudaMemcpyDeviceToHost, s));
  CUSENSE_CUDA_TRY(cudaMemcpyAsync(st.mark.data(), a.mark.data<std::int64_t>(), nk * sizeof(std::int64_t),
                                   cudaMemcpyDeviceToHost, s));
  if (ns > 0) {
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(st.first.data(), a.first.data<std::int64_t>(), ns * sizeof(std::int64_t),
                                     cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(st.last.data(), a.last.data<std::int64_t>(), ns * sizeof(std::int64_t),
                                     cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(st.flags.data(), a.flags.data<std::uint8_t>(), ns, cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(st.acc.data(), a.acc.data<ops::moments>(), ns * channels_ * sizeof(ops::moments),
                                     cudaMemcpyDeviceToHost, s));
    if (extent_) {
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(st.ext.data(), a.ext.data<ops::extent>(),
                                       ns * channels_ * sizeof(ops::extent), cudaMemcpyDeviceToHost, s));
    }
  }
  CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
  return st;
}

/// Makes `st` (a key table with contiguous sessions) the device state.
void cuda_session_engine::upload(host_state const& st)
{
  std::size_t const nk = st.key.size(), ns = st.first.size();
  device_guard guard(device_);
  cudaStream_t const s = gpu_->stream.get();
  session_arrays& a    = gpu_->state[cur_];
  auto up = [&](device_buffer& b, auto const& v) {
    using V = typename std::decay_t<decltype(v)>::value_type;
    V* d    = b.get<V>(v.size(), s);
    if (!v.empty()) {
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(d, v.data(), v.size() * sizeof(V), cudaMemcpyHostToDevice, s));
    }
  };
  up(a.key, st.key);
  up(a.count, st.count);
  up(a.begin, st.begin);
  up(a.mark, st.mark);
  up(a.first, st.first);
  up(a.last, st.last);
  up(a.flags, st.flags);
  up(a.acc, st.acc);
  if (extent_) { up(a.ext, st.ext); }
  CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));  // the host vectors are freed on return
  num_keys_      = nk;
  sess_used_     = ns;
  live_sessions_ = ns;
  live_keys_     = static_cast<std::uint64_t>(std::count_if(st.count.begin(), st.count.end(),
                                                            [](std::uint32_t c) { return c > 0; }));
}

// ----- checkpoints: exactly the CPU session engine's form

void cuda_session_engine::save_state(state_writer& out)
{
  host_state const st = download();
  out.boolean(has_max_);
  out.i64(max_ts_);
  out.u64(seq_);
  out.u64(aggregated_);
  out.u64(late_count_);
  out.u64(nan_values_);
  out.u64(emitted_);
  std::uint64_t sessions = 0;
  for (std::uint32_t c : st.count) sessions += c;
  out.u64(sessions);
  channel_acc a;
  for (std::size_t k = 0; k < st.key.size(); ++k) {
    for (std::uint64_t s = st.begin[k]; s < st.begin[k] + st.count[k]; ++s) {
      out.u32(st.key[k]);
      out.i64(st.first[s]);
      out.i64(st.last[s]);
      out.boolean((st.flags[s] & emitted_flag) != 0);
      out.boolean((st.flags[s] & closed_flag) != 0);
      for (std::size_t c = 0; c < channels_; ++c) {
        a.m = st.acc[s * channels_ + c];
        a.e = extent_ ? st.ext[s * channels_ + c] : ops::extent{};
        write_channel_acc(out, a);
      }
    }
  }
  // Freed marks by key; the pruning order holds the mark of each key (by end, then key).
  std::vector<std::pair<std::int64_t, std::uint32_t>> order;
  for (std::size_t k = 0; k < st.key.size(); ++k) {
    if (st.mark[k] != no_mark) { order.emplace_back(st.mark[k], st.key[k]); }
  }
  out.u64(order.size());
  for (std::size_t k = 0; k < st.key.size(); ++k) {
    if (st.mark[k] != no_mark) {
      out.u32(st.key[k]);
      out.i64(st.mark[k]);
    }
  }
  std::sort(order.begin(), order.end());
  out.u64(order.size());
  for (auto const& [end, key] : order) {
    out.i64(end);
    out.u32(key);
  }
}

void cuda_session_engine::load_state(state_reader& in)
{
  has_max_ = in.boolean();
  max_ts_  = in.i64();
  if (has_max_) { checked_time(max_ts_); }
  seq_        = in.u64();
  aggregated_ = in.u64();
  late_count_ = in.u64();
  nan_values_ = in.u64();
  emitted_    = in.u64();
  host_state st;
  std::vector<std::uint32_t> sess_key;
  std::size_t const n = in.count(22);
  channel_acc a;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t const key  = in.u32();
    std::int64_t const first = checked_time(in.i64());
    std::int64_t const last  = checked_time(in.i64());
    bool const emitted       = in.boolean();
    bool const closed        = in.boolean();
    state_reader::check(first <= last, "session ends before it starts");
    bool const same_key = !sess_key.empty() && sess_key.back() == key;
    state_reader::check(sess_key.empty() || sess_key.back() < key || (same_key && st.last.back() + gap_ <= first),
                        "sessions of a key overlap or are out of order");
    sess_key.push_back(key);
    st.first.push_back(first);
    st.last.push_back(last);
    st.flags.push_back(static_cast<std::uint8_t>((emitted ? emitted_flag : 0) | (closed ? closed_flag : 0)));
    for (std::size_t c = 0; c < channels_; ++c) {
      read_channel_acc(in, a);
      st.acc.push_back(a.m);
      if (extent_) { st.ext.push_back(a.e); }
    }
  }
  std::vector<std::pair<std::uint32_t, std::int64_t>> marks;
  std::size_t const nf = in.count(12);
  for (std::size_t i = 0; i < nf; ++i) {
    std::uint32_t const key = in.u32();
    marks.emplace_back(key, checked_time(in.i64(), gap_));
  }
  std::size_t const no = in.count(12);
  for (std::size_t i = 0; i < no; ++i) {
    checked_time(in.i64(), gap_);
    (void)in.u32();  // the pruning order: implied by the marks here
  }
  std::sort(marks.begin(), marks.end());
  // Key table: every key with sessions or a mark (a key saved twice keeps its largest mark).
  std::size_t si = 0, mi = 0;
  while (si < sess_key.size() || mi < marks.size()) {
    std::uint32_t key;
    if (mi == marks.size() || (si < sess_key.size() && sess_key[si] <= marks[mi].first)) {
      key = sess_key[si];
    } else {
      key = marks[mi].first;
    }
    std::uint64_t const begin = si;
    while (si < sess_key.size() && sess_key[si] == key) ++si;
    std::int64_t mark = no_mark;
    while (mi < marks.size() && marks[mi].first == key) mark = marks[mi++].second;
    st.key.push_back(key);
    st.begin.push_back(begin);
    st.count.push_back(static_cast<std::uint32_t>(si - begin));
    st.mark.push_back(mark);
  }
  upload(st);
}

}  // namespace

std::unique_ptr<window_engine> make_cuda_session_engine(pipeline_options const& options)
{
  int const device = usable_cuda_device(reinterpret_cast<void const*>(&iota_kernel));
  return std::make_unique<cuda_session_engine>(options, device);
}

}  // namespace cusense::detail
