// CUDA backend of the detectors. Per-key state lives on the device between batches (flat
// slot-major arrays, as on the CPU). For each batch of released records:
//   1. the slots go to the device and a stable radix sort orders the records by slot (the
//      release order already puts each key's records in (timestamp, arrival) order);
//   2. per detector, the channel is gathered in that order and scored:
//      - ewma: three segmented scans (cub::DeviceScan::InclusiveScanByKey): the count of values,
//        the mean as a composition of affine maps m -> (1-alpha) m + alpha x, then the variance
//        as affine maps v -> (1-alpha) v + (1-alpha) alpha d^2 with d from the scanned means;
//        no loop over a key's records;
//      - knn_discord: each key's carried history and batch values are laid out contiguously, the
//        raw discord distance of every record is computed in parallel (one thread per record),
//        then one thread per key runs the O(1) calibration deques in order;
//      - rolling_z, rolling_mad: one thread per key runs the shared sequential step;
//   3. scores are scattered back to release order and copied to the host.
// Results agree with the CPU backend to rounding (the scans associate differently and nvcc
// contracts multiply-adds into FMAs).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda/std/functional>

#include <cusense/detail/detector_engine.hpp>

#include "cuda_utils.cuh"
#include "detector_engine.cuh"

namespace cusense::detail {
namespace {

constexpr int block = 256;

// Grow-only device / pinned host allocations owned by this engine. Contents are not kept by
// growth (the engine synchronises its stream at the end of every call, so nothing is in flight).
class dev_mem {
 public:
  dev_mem() = default;
  ~dev_mem() { release(); }
  dev_mem(dev_mem const&)            = delete;
  dev_mem& operator=(dev_mem const&) = delete;
  dev_mem(dev_mem&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr, o.bytes_ = 0; }
  dev_mem& operator=(dev_mem&& o) noexcept
  {
    if (this != &o) {
      release();
      p_     = o.p_;
      bytes_ = o.bytes_;
      o.p_   = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  void reserve(std::size_t bytes)
  {
    if (bytes <= bytes_) return;
    release();
    CUSENSE_CUDA_TRY(cudaMalloc(&p_, bytes));
    bytes_ = bytes;
  }
  template <typename T>
  T* get(std::size_t count)
  {
    reserve(std::max<std::size_t>(count, 1) * sizeof(T));
    return static_cast<T*>(p_);
  }
  template <typename T>
  T* data() const
  {
    return static_cast<T*>(p_);
  }
  void release() noexcept
  {
    if (p_ != nullptr) { CUSENSE_CUDA_TRY_NO_THROW(cudaFree(p_)); }
    p_     = nullptr;
    bytes_ = 0;
  }

 private:
  void* p_           = nullptr;
  std::size_t bytes_ = 0;
};

class pinned_mem {
 public:
  pinned_mem() = default;
  ~pinned_mem() { release(); }
  pinned_mem(pinned_mem const&)            = delete;
  pinned_mem& operator=(pinned_mem const&) = delete;
  template <typename T>
  T* get(std::size_t count)
  {
    std::size_t const bytes = std::max<std::size_t>(count, 1) * sizeof(T);
    if (bytes > bytes_) {
      release();
      CUSENSE_CUDA_TRY(cudaMallocHost(&p_, bytes));
      bytes_ = bytes;
    }
    return static_cast<T*>(p_);
  }
  void release() noexcept
  {
    if (p_ != nullptr) { CUSENSE_CUDA_TRY_NO_THROW(cudaFreeHost(p_)); }
    p_     = nullptr;
    bytes_ = 0;
  }

 private:
  void* p_           = nullptr;
  std::size_t bytes_ = 0;
};

class stream_owner {
 public:
  stream_owner() { CUSENSE_CUDA_TRY(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~stream_owner()
  {
    if (s_ != nullptr) {
      CUSENSE_CUDA_TRY_NO_THROW(cudaStreamSynchronize(s_));
      CUSENSE_CUDA_TRY_NO_THROW(cudaStreamDestroy(s_));
    }
  }
  stream_owner(stream_owner const&)            = delete;
  stream_owner& operator=(stream_owner const&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

int grid_for(std::int64_t n)
{
  std::int64_t const g = (n + block - 1) / block;
  return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(g, 65535 * 4)));
}

int bits_for(std::uint32_t max_value)
{
  int b = 1;
  while (b < 32 && (max_value >> b) != 0) ++b;
  return b;
}

class cuda_detector_engine final : public detector_engine {
 public:
  cuda_detector_engine(std::vector<ops::detector_params> params, int channels)
    : params_(std::move(params)), channels_(channels), d_(params_.size()), i_(params_.size())
  {
  }

  // ts is not read: the detectors that read event times (knn_discord with tod_weight > 0,
  // likelihood) run on the CPU (detector_runner).
  void score(std::uint32_t const* slots, std::int64_t const* /*ts*/, double const* values,
             std::size_t n_, std::uint32_t num_slots, double* scores) override
  {
    if (n_ == 0) return;
    auto const n        = static_cast<std::int64_t>(n_);
    cudaStream_t const s = stream_.get();
    grow(num_slots);
    std::size_t const ch = static_cast<std::size_t>(channels_);
    std::size_t const nd = params_.size();

    // Inputs through pinned staging.
    std::uint32_t* h_slots = h_slots_.get<std::uint32_t>(n_);
    double* h_values       = h_values_.get<double>(n_ * ch);
    std::memcpy(h_slots, slots, n_ * sizeof(std::uint32_t));
    std::memcpy(h_values, values, n_ * ch * sizeof(double));
    std::uint32_t* slot_in  = slot_in_.get<std::uint32_t>(n_);
    std::uint32_t* idx_in   = idx_in_.get<std::uint32_t>(n_);
    std::uint32_t* slot     = slot_.get<std::uint32_t>(n_);
    std::uint32_t* perm     = perm_.get<std::uint32_t>(n_);
    double* vals            = vals_.get<double>(n_ * ch);
    double* x               = x_.get<double>(n_);
    std::int64_t* notnan    = notnan_.get<std::int64_t>(n_);
    cnt_.get<std::int64_t>(n_);
    double* sorted_scores   = sorted_scores_.get<double>(n_);
    double* out             = out_.get<double>(n_ * nd);
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(slot_in, h_slots, n_ * sizeof(std::uint32_t), cudaMemcpyHostToDevice, s));
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(vals, h_values, n_ * ch * sizeof(double), cudaMemcpyHostToDevice, s));

    // 1. Stable sort by slot: records of a key become contiguous, still in scoring order.
    kernels::iota<<<grid_for(n), block, 0, s>>>(idx_in, n);
    CUSENSE_CHECK_LAST_ERROR();
    int const end_bit = bits_for(num_slots == 0 ? 0 : num_slots - 1);
    std::size_t bytes = 0;
    CUSENSE_CUDA_TRY(cub::DeviceRadixSort::SortPairs(nullptr, bytes, slot_in, slot, idx_in, perm, n, 0,
                                                     end_bit, s));
    CUSENSE_CUDA_TRY(cub::DeviceRadixSort::SortPairs(temp(bytes), bytes, slot_in, slot, idx_in, perm, n,
                                                     0, end_bit, s));

    // 2. Each detector.
    for (std::size_t d = 0; d < nd; ++d) {
      ops::detector_params const& p = params_[d];
      double* d_state               = d_[d].data<double>();
      std::int64_t* i_state         = i_[d].data<std::int64_t>();
      kernels::gather_channel<<<grid_for(n), block, 0, s>>>(vals, perm, channels_, p.channel, n, x, notnan);
      CUSENSE_CHECK_LAST_ERROR();
      switch (p.kind) {
        case ops::detector_kind_id::ewma: ewma(p, n, slot, d_state, i_state, sorted_scores); break;
        case ops::detector_kind_id::knn_discord: knn(p, n, slot, d_state, i_state, sorted_scores); break;
        default:
          kernels::sequential_per_key<<<grid_for(n), block, 0, s>>>(p, slot, x, n, d_state, i_state,
                                                                    sorted_scores);
          CUSENSE_CHECK_LAST_ERROR();
      }
      kernels::scatter_scores<<<grid_for(n), block, 0, s>>>(sorted_scores, perm, n, out + d * n_);
      CUSENSE_CHECK_LAST_ERROR();
    }

    // 3. Back to the host.
    double* h_out = h_out_.get<double>(n_ * nd);
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(h_out, out, n_ * nd * sizeof(double), cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    std::memcpy(scores, h_out, n_ * nd * sizeof(double));
  }

 private:
  void* temp(std::size_t bytes) { return temp_.get<unsigned char>(bytes); }

  // Segmented inclusive count of non-NaN values per key (cnt_.data()).
  void count_scan(std::int64_t n, std::uint32_t const* slot)
  {
    cudaStream_t const s = stream_.get();
    std::size_t bytes    = 0;
    auto* notnan         = notnan_.data<std::int64_t>();
    auto* cnt            = cnt_.data<std::int64_t>();
    CUSENSE_CUDA_TRY(cub::DeviceScan::InclusiveScanByKey(nullptr, bytes, slot, notnan, cnt,
                                                         ::cuda::std::plus<std::int64_t>{}, n,
                                                         ::cuda::std::equal_to<std::uint32_t>{}, s));
    CUSENSE_CUDA_TRY(cub::DeviceScan::InclusiveScanByKey(temp(bytes), bytes, slot, notnan, cnt,
                                                         ::cuda::std::plus<std::int64_t>{}, n,
                                                         ::cuda::std::equal_to<std::uint32_t>{}, s));
  }

  void affine_scan(std::int64_t n, std::uint32_t const* slot, ops::affine const* in, ops::affine* out)
  {
    cudaStream_t const s = stream_.get();
    std::size_t bytes    = 0;
    CUSENSE_CUDA_TRY(cub::DeviceScan::InclusiveScanByKey(nullptr, bytes, slot, in, out,
                                                         ops::compose_affine{}, n,
                                                         ::cuda::std::equal_to<std::uint32_t>{}, s));
    CUSENSE_CUDA_TRY(cub::DeviceScan::InclusiveScanByKey(temp(bytes), bytes, slot, in, out,
                                                         ops::compose_affine{}, n,
                                                         ::cuda::std::equal_to<std::uint32_t>{}, s));
  }

  void ewma(ops::detector_params const& p, std::int64_t n, std::uint32_t const* slot, double* d_state,
            std::int64_t* i_state, double* scores)
  {
    cudaStream_t const s = stream_.get();
    auto const un        = static_cast<std::size_t>(n);
    double const* x      = x_.data<double>();
    auto const* notnan   = notnan_.data<std::int64_t>();
    auto const* cnt      = cnt_.data<std::int64_t>();
    ops::affine* maps    = maps_.get<ops::affine>(un);
    ops::affine* mean    = mean_scan_.get<ops::affine>(un);
    ops::affine* var     = var_scan_.get<ops::affine>(un);
    count_scan(n, slot);
    kernels::ewma_mean_maps<<<grid_for(n), block, 0, s>>>(p.alpha, slot, x, notnan, cnt, d_state,
                                                          i_state, n, maps);
    CUSENSE_CHECK_LAST_ERROR();
    affine_scan(n, slot, maps, mean);
    kernels::ewma_var_maps<<<grid_for(n), block, 0, s>>>(p.alpha, slot, x, notnan, cnt, mean, d_state,
                                                         i_state, n, maps);
    CUSENSE_CHECK_LAST_ERROR();
    affine_scan(n, slot, maps, var);
    kernels::ewma_scores<<<grid_for(n), block, 0, s>>>(p.min_count, slot, x, notnan, cnt, mean, var,
                                                       d_state, i_state, n, scores);
    CUSENSE_CHECK_LAST_ERROR();
    kernels::ewma_store<<<grid_for(n), block, 0, s>>>(slot, cnt, mean, var, n, d_state, i_state);
    CUSENSE_CHECK_LAST_ERROR();
  }

  void knn(ops::detector_params const& p, std::int64_t n, std::uint32_t const* slot, double* d_state,
           std::int64_t* i_state, double* scores)
  {
    cudaStream_t const s = stream_.get();
    auto const un        = static_cast<std::size_t>(n);
    double const* x      = x_.data<double>();
    auto const* notnan   = notnan_.data<std::int64_t>();
    auto const* cnt      = cnt_.data<std::int64_t>();
    count_scan(n, slot);
    // Segments: id per record, then per-segment history length and extended offsets.
    std::int64_t* flag   = flag_.get<std::int64_t>(un);
    std::int64_t* seg_id = seg_id_.get<std::int64_t>(un);
    kernels::segment_flags<<<grid_for(n), block, 0, s>>>(slot, n, flag);
    CUSENSE_CHECK_LAST_ERROR();
    std::size_t bytes = 0;
    CUSENSE_CUDA_TRY(cub::DeviceScan::InclusiveSum(nullptr, bytes, flag, seg_id, n, s));
    CUSENSE_CUDA_TRY(cub::DeviceScan::InclusiveSum(temp(bytes), bytes, flag, seg_id, n, s));
    std::int64_t segments = 0;
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(&segments, seg_id + (n - 1), sizeof(std::int64_t),
                                     cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    auto const us          = static_cast<std::size_t>(segments);
    std::int64_t* hist_len = hist_len_.get<std::int64_t>(us);
    std::int64_t* ext_size = ext_size_.get<std::int64_t>(us + 1);
    std::int64_t* ext_base = ext_base_.get<std::int64_t>(us + 1);
    std::int64_t* seg_slot = seg_slot_.get<std::int64_t>(us);
    CUSENSE_CUDA_TRY(cudaMemsetAsync(ext_size + segments, 0, sizeof(std::int64_t), s));
    kernels::segment_sizes<<<grid_for(n), block, 0, s>>>(p, slot, seg_id, cnt, i_state, n, hist_len,
                                                         ext_size, seg_slot);
    CUSENSE_CHECK_LAST_ERROR();
    bytes = 0;
    CUSENSE_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, bytes, ext_size, ext_base, segments + 1, s));
    CUSENSE_CUDA_TRY(cub::DeviceScan::ExclusiveSum(temp(bytes), bytes, ext_size, ext_base, segments + 1, s));
    std::int64_t total = 0;
    CUSENSE_CUDA_TRY(cudaMemcpyAsync(&total, ext_base + segments, sizeof(std::int64_t),
                                     cudaMemcpyDeviceToHost, s));
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    double* ext = ext_.get<double>(static_cast<std::size_t>(total));
    dim3 const hist_grid(static_cast<unsigned>(std::min<std::int64_t>((p.H + block - 1) / block, 64)),
                         static_cast<unsigned>(std::min<std::int64_t>(segments, 65535)));
    kernels::copy_history<<<hist_grid, block, 0, s>>>(p, seg_slot, hist_len, ext_base, d_state, i_state,
                                                      segments, ext);
    CUSENSE_CHECK_LAST_ERROR();
    kernels::copy_batch_values<<<grid_for(n), block, 0, s>>>(x, notnan, seg_id, hist_len, ext_base, cnt,
                                                             n, ext);
    CUSENSE_CHECK_LAST_ERROR();
    double* raw = raw_.get<double>(un);
    kernels::knn_raw_scores<<<grid_for(n), block, 0, s>>>(p, slot, notnan, cnt, seg_id, hist_len,
                                                          ext_base, i_state, ext, n, raw);
    CUSENSE_CHECK_LAST_ERROR();
    kernels::knn_calibrate_per_key<<<grid_for(n), block, 0, s>>>(p, slot, x, raw, n, d_state, i_state,
                                                                 scores);
    CUSENSE_CHECK_LAST_ERROR();
  }

  // Checkpoints: copies slots [0, num_slots) of each detector's state back to the host.
  void export_state(std::uint32_t num_slots, std::vector<std::vector<double>>& d,
                    std::vector<std::vector<std::int64_t>>& i) override
  {
    grow(num_slots);
    cudaStream_t const s = stream_.get();
    d.resize(params_.size());
    i.resize(params_.size());
    for (std::size_t k = 0; k < params_.size(); ++k) {
      d[k].resize(std::size_t{num_slots} * static_cast<std::size_t>(params_[k].d_stride()));
      i[k].resize(std::size_t{num_slots} * static_cast<std::size_t>(params_[k].i_stride()));
      if (num_slots == 0) continue;
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(d[k].data(), d_[k].data<double>(), d[k].size() * sizeof(double),
                                       cudaMemcpyDeviceToHost, s));
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(i[k].data(), i_[k].data<std::int64_t>(),
                                       i[k].size() * sizeof(std::int64_t), cudaMemcpyDeviceToHost, s));
    }
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
  }

  // Checkpoints: uploads slots [0, num_slots) (zero-filled beyond, like grow()).
  void import_state(std::uint32_t num_slots, std::vector<std::vector<double>> const& d,
                    std::vector<std::vector<std::int64_t>> const& i) override
  {
    grow(num_slots);
    cudaStream_t const s = stream_.get();
    for (std::size_t k = 0; k < params_.size(); ++k) {
      if (num_slots == 0) continue;
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(d_[k].data<double>(), d[k].data(), d[k].size() * sizeof(double),
                                       cudaMemcpyHostToDevice, s));
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(i_[k].data<std::int64_t>(), i[k].data(),
                                       i[k].size() * sizeof(std::int64_t), cudaMemcpyHostToDevice, s));
    }
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
  }

  // Grows the per-slot state to num_slots, keeping what is there and zeroing the rest.
  void grow(std::uint32_t num_slots)
  {
    if (num_slots <= slots_) return;
    std::size_t const want = std::max<std::size_t>(num_slots, slots_ + slots_ / 2);
    cudaStream_t const s   = stream_.get();
    for (std::size_t d = 0; d < params_.size(); ++d) {
      grow_one(d_[d], slots_ * params_[d].d_stride() * sizeof(double),
               want * params_[d].d_stride() * sizeof(double), s);
      grow_one(i_[d], slots_ * params_[d].i_stride() * sizeof(std::int64_t),
               want * params_[d].i_stride() * sizeof(std::int64_t), s);
    }
    slots_ = static_cast<std::uint32_t>(want);
  }

  static void grow_one(dev_mem& buf, std::size_t old_bytes, std::size_t new_bytes, cudaStream_t s)
  {
    dev_mem next;
    next.reserve(new_bytes);
    CUSENSE_CUDA_TRY(cudaMemsetAsync(next.data<unsigned char>(), 0, new_bytes, s));
    if (old_bytes > 0) {
      CUSENSE_CUDA_TRY(cudaMemcpyAsync(next.data<unsigned char>(), buf.data<unsigned char>(), old_bytes,
                                       cudaMemcpyDeviceToDevice, s));
    }
    CUSENSE_CUDA_TRY(cudaStreamSynchronize(s));
    buf = std::move(next);
  }

  std::vector<ops::detector_params> params_;
  int channels_;
  stream_owner stream_;
  std::vector<dev_mem> d_, i_;  // per detector state
  std::uint32_t slots_ = 0;
  dev_mem slot_in_, idx_in_, slot_, perm_, vals_, x_, notnan_, cnt_, sorted_scores_, out_;
  dev_mem maps_, mean_scan_, var_scan_, flag_, seg_id_, hist_len_, ext_size_, ext_base_,
    seg_slot_, ext_, raw_, temp_;
  pinned_mem h_slots_, h_values_, h_out_;
};

}  // namespace

std::unique_ptr<detector_engine> make_cuda_detector_engine(std::vector<ops::detector_params> params,
                                                           int channels)
{
  return std::make_unique<cuda_detector_engine>(std::move(params), channels);
}

}  // namespace cusense::detail
