#pragma once
// Kernels of the CUDA detector engine. Each applies the shared operators of
// <cusense/ops/detectors.hpp>. Records arrive sorted by (slot, timestamp, arrival): a segment
// is a maximal run of one slot (one key), so segment starts are where the slot changes.
#include <cstdint>

#include <cusense/ops/detectors.hpp>

namespace cusense::detail::kernels {

__device__ __forceinline__ bool segment_start(std::uint32_t const* slot, std::int64_t k)
{
  return k == 0 || slot[k] != slot[k - 1];
}
__device__ __forceinline__ bool segment_end(std::uint32_t const* slot, std::int64_t k, std::int64_t n)
{
  return k == n - 1 || slot[k + 1] != slot[k];
}

__global__ void iota(std::uint32_t* idx, std::int64_t n)
{
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    idx[k] = static_cast<std::uint32_t>(k);
  }
}

/// x_sorted[k] = values[perm[k] * channels + channel]; notnan[k] = x is not NaN.
__global__ void gather_channel(double const* values, std::uint32_t const* perm, int channels,
                               int channel, std::int64_t n, double* x, std::int64_t* notnan)
{
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    double const v = values[std::int64_t{perm[k]} * channels + channel];
    x[k]           = v;
    notnan[k]      = ops::isnan_(v) ? 0 : 1;
  }
}

/// out[perm[k]] = in[k]
__global__ void scatter_scores(double const* in, std::uint32_t const* perm, std::int64_t n, double* out)
{
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    out[perm[k]] = in[k];
  }
}

/// One thread per key: the sequential step over the key's records (rolling_z, rolling_mad).
__global__ void sequential_per_key(ops::detector_params p, std::uint32_t const* slot,
                                   double const* x, std::int64_t n, double* d_state,
                                   std::int64_t* i_state, double* out)
{
  std::int64_t const ds = p.d_stride(), is = p.i_stride();
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    if (!segment_start(slot, k)) continue;
    std::uint32_t const s = slot[k];
    double* d             = d_state + s * ds;
    std::int64_t* i       = i_state + s * is;
    for (std::int64_t j = k; j < n && slot[j] == s; ++j) out[j] = ops::detector_step(p, d, i, x[j]);
  }
}

// --- EWMA: three segmented scans -----------------------------------------------------------------

/// count_before[k] = values the key had before record k.
__device__ __forceinline__ std::int64_t count_before(std::int64_t const* i_state, std::uint32_t s,
                                                     std::int64_t const* cnt_incl,
                                                     std::int64_t const* notnan, std::int64_t k)
{
  return i_state[s] + cnt_incl[k] - notnan[k];
}

/// Mean maps; the carried mean folded into each segment's first map.
__global__ void ewma_mean_maps(double alpha, std::uint32_t const* slot, double const* x,
                               std::int64_t const* notnan, std::int64_t const* cnt_incl,
                               double const* d_state, std::int64_t const* i_state, std::int64_t n,
                               ops::affine* maps)
{
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    std::uint32_t const s = slot[k];
    ops::affine f;  // identity for NaN
    if (notnan[k]) { f = ops::ewma_mean_map(alpha, x[k], count_before(i_state, s, cnt_incl, notnan, k)); }
    if (segment_start(slot, k)) { f = ops::affine{0.0, ops::apply(f, d_state[2 * std::int64_t{s}])}; }
    maps[k] = f;
  }
}

__device__ __forceinline__ double mean_before(std::uint32_t const* slot, ops::affine const* mean_scan,
                                              double const* d_state, std::int64_t k)
{
  return segment_start(slot, k) ? d_state[2 * std::int64_t{slot[k]}] : mean_scan[k - 1].b;
}
__device__ __forceinline__ double var_before(std::uint32_t const* slot, ops::affine const* var_scan,
                                             double const* d_state, std::int64_t k)
{
  return segment_start(slot, k) ? d_state[2 * std::int64_t{slot[k]} + 1] : var_scan[k - 1].b;
}

/// Variance maps from the scanned means (d = x - mean before); carried variance folded in.
__global__ void ewma_var_maps(double alpha, std::uint32_t const* slot, double const* x,
                              std::int64_t const* notnan, std::int64_t const* cnt_incl,
                              ops::affine const* mean_scan, double const* d_state,
                              std::int64_t const* i_state, std::int64_t n, ops::affine* maps)
{
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    std::uint32_t const s = slot[k];
    ops::affine f;
    if (notnan[k]) {
      double const dev = x[k] - mean_before(slot, mean_scan, d_state, k);
      f = ops::ewma_var_map(alpha, dev, count_before(i_state, s, cnt_incl, notnan, k));
    }
    if (segment_start(slot, k)) { f = ops::affine{0.0, ops::apply(f, d_state[2 * std::int64_t{s} + 1])}; }
    maps[k] = f;
  }
}

__global__ void ewma_scores(std::int64_t min_count, std::uint32_t const* slot, double const* x,
                            std::int64_t const* notnan, std::int64_t const* cnt_incl,
                            ops::affine const* mean_scan, ops::affine const* var_scan,
                            double const* d_state, std::int64_t const* i_state, std::int64_t n,
                            double* out)
{
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    if (!notnan[k]) {
      out[k] = x[k];
      continue;
    }
    std::uint32_t const s = slot[k];
    out[k] = ops::ewma_score(x[k], count_before(i_state, s, cnt_incl, notnan, k),
                             mean_before(slot, mean_scan, d_state, k),
                             var_before(slot, var_scan, d_state, k), min_count);
  }
}

/// Writes each key's state after its last record (a separate launch: ewma_scores reads it).
__global__ void ewma_store(std::uint32_t const* slot, std::int64_t const* cnt_incl,
                           ops::affine const* mean_scan, ops::affine const* var_scan,
                           std::int64_t n, double* d_state, std::int64_t* i_state)
{
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    if (!segment_end(slot, k, n)) continue;
    std::int64_t const s = slot[k];
    i_state[s] += cnt_incl[k];
    d_state[2 * s]     = mean_scan[k].b;
    d_state[2 * s + 1] = var_scan[k].b;
  }
}

// --- knn_discord: raw distances in parallel per record, calibration per key ----------------------

__global__ void segment_flags(std::uint32_t const* slot, std::int64_t n, std::int64_t* flag)
{
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    flag[k] = segment_start(slot, k) ? 1 : 0;
  }
}

/// Per segment: history length and extended size (history + non-NaN batch values).
/// seg_id is the inclusive scan of the flags (1-based).
__global__ void segment_sizes(ops::detector_params p, std::uint32_t const* slot,
                              std::int64_t const* seg_id, std::int64_t const* cnt_incl,
                              std::int64_t const* i_state, std::int64_t n, std::int64_t* hist_len,
                              std::int64_t* ext_size, std::int64_t* seg_slot)
{
  std::int64_t const is = p.i_stride();
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    if (!segment_end(slot, k, n)) continue;
    std::int64_t const g = seg_id[k] - 1;
    std::int64_t const c = i_state[std::int64_t{slot[k]} * is];
    std::int64_t const h = c < p.H ? c : p.H;
    hist_len[g]          = h;
    ext_size[g]          = h + cnt_incl[k];
    seg_slot[g]          = slot[k];
  }
}

/// Copies each key's carried history (oldest first) to the front of its extended segment.
__global__ void copy_history(ops::detector_params p, std::int64_t const* seg_slot,
                             std::int64_t const* hist_len, std::int64_t const* ext_base,
                             double const* d_state, std::int64_t const* i_state,
                             std::int64_t segments, double* ext)
{
  std::int64_t const ds = p.d_stride(), is = p.i_stride();
  for (std::int64_t g = blockIdx.y; g < segments; g += gridDim.y) {
    std::int64_t const s = seg_slot[g];
    ops::ring_view const h{d_state + s * ds, p.H, i_state[s * is]};
    for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < hist_len[g];
         k += std::int64_t{blockDim.x} * gridDim.x) {
      ext[ext_base[g] + k] = h(k);
    }
  }
}

__device__ __forceinline__ std::int64_t ext_position(std::int64_t const* seg_id,
                                                     std::int64_t const* hist_len,
                                                     std::int64_t const* ext_base,
                                                     std::int64_t const* cnt_incl, std::int64_t k)
{
  std::int64_t const g = seg_id[k] - 1;
  return ext_base[g] + hist_len[g] + cnt_incl[k] - 1;
}

__global__ void copy_batch_values(double const* x, std::int64_t const* notnan,
                                  std::int64_t const* seg_id, std::int64_t const* hist_len,
                                  std::int64_t const* ext_base, std::int64_t const* cnt_incl,
                                  std::int64_t n, double* ext)
{
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    if (notnan[k]) { ext[ext_position(seg_id, hist_len, ext_base, cnt_incl, k)] = x[k]; }
  }
}

/// Stage 1 for every record at once: its history is a contiguous run of the extended array.
__global__ void knn_raw_scores(ops::detector_params p, std::uint32_t const* slot,
                               std::int64_t const* notnan, std::int64_t const* cnt_incl,
                               std::int64_t const* seg_id, std::int64_t const* hist_len,
                               std::int64_t const* ext_base, std::int64_t const* i_state,
                               double const* ext, std::int64_t n, double* raw)
{
  std::int64_t const is = p.i_stride();
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    if (!notnan[k]) continue;
    std::int64_t const t   = i_state[std::int64_t{slot[k]} * is] + cnt_incl[k] - 1;
    std::int64_t const pos = ext_position(seg_id, hist_len, ext_base, cnt_incl, k);
    std::int64_t const len = t < p.H ? t : p.H;
    raw[k]                 = ops::knn_raw(p, ops::span_view{ext + pos - len}, len, t);
  }
}

/// Stages 2 and 3 and the state update, one thread per key, in record order.
__global__ void knn_calibrate_per_key(ops::detector_params p, std::uint32_t const* slot,
                                      double const* x, double const* raw, std::int64_t n,
                                      double* d_state, std::int64_t* i_state, double* out)
{
  std::int64_t const ds = p.d_stride(), is = p.i_stride();
  for (std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; k < n;
       k += std::int64_t{blockDim.x} * gridDim.x) {
    if (!segment_start(slot, k)) continue;
    std::uint32_t const s = slot[k];
    double* d             = d_state + s * ds;
    std::int64_t* i       = i_state + s * is;
    for (std::int64_t j = k; j < n && slot[j] == s; ++j) {
      if (ops::isnan_(x[j])) {
        out[j] = x[j];
        continue;
      }
      std::int64_t const t = i[0];
      out[j]               = ops::knn_calibrate(p, d, i, t, raw[j]);
      ops::ring_push(d, p.H, t, x[j]);
      i[0] = t + 1;
    }
  }
}

}  // namespace cusense::detail::kernels
