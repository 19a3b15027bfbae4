#pragma once
// Internal CUDA utilities of the CUDA backend: error checking, a device guard and RAII owners
// for device and (pinned, with a pageable fallback) host memory. nvcc only.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>

#include <cusense/error.hpp>

namespace cusense::detail {

/// Throws out_of_memory for allocation failures and cuda_error otherwise, naming the failed
/// call. Clears the (non-sticky) last error first so the runtime stays usable.
[[noreturn]] inline void throw_cuda_error(cudaError_t err, char const* call, char const* file,
                                          int line)
{
  (void)cudaGetLastError();
  std::string msg = std::string("CUDA error at ") + file + ":" + std::to_string(line) + ": " +
                    call + " failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
  if (err == cudaErrorMemoryAllocation) { throw ::cusense::out_of_memory(msg); }
  throw ::cusense::cuda_error(msg);
}

}  // namespace cusense::detail

/// Evaluates a CUDA runtime call and throws (out_of_memory / cuda_error) when it fails.
#define CUSENSE_CUDA_TRY(call)                                                       \
  do {                                                                               \
    cudaError_t const cusense_err_ = (call);                                         \
    if (cusense_err_ != cudaSuccess) {                                               \
      ::cusense::detail::throw_cuda_error(cusense_err_, #call, __FILE__, __LINE__);  \
    }                                                                                \
  } while (0)

/// For destructors and cleanup paths: evaluates the call, ignores and clears any error.
#define CUSENSE_CUDA_TRY_NO_THROW(call)              \
  do {                                               \
    if ((call) != cudaSuccess) { (void)cudaGetLastError(); } \
  } while (0)

/// After a kernel launch: throws if the launch failed.
#define CUSENSE_CHECK_LAST_ERROR() CUSENSE_CUDA_TRY(cudaGetLastError())

/// Grid-stride loop over [0, n) with 64-bit indices: correct for any grid size.
#define CUSENSE_FOR_EACH_INDEX(i, n)                                                    \
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; \
       i < (n); i += static_cast<std::size_t>(gridDim.x) * blockDim.x)

namespace cusense::detail {

/// Makes `device` current for the calling thread and restores the previous device on exit.
class device_guard {
 public:
  explicit device_guard(int device) : device_(device)
  {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      (void)cudaGetLastError();
      previous_ = -1;
    }
    if (previous_ != device_) { CUSENSE_CUDA_TRY(cudaSetDevice(device_)); }
  }
  ~device_guard()
  {
    if (previous_ >= 0 && previous_ != device_) { CUSENSE_CUDA_TRY_NO_THROW(cudaSetDevice(previous_)); }
  }
  device_guard(device_guard const&)            = delete;
  device_guard& operator=(device_guard const&) = delete;

 private:
  int device_;
  int previous_ = -1;
};

/// Owning, growable, untyped device allocation. Contents are not preserved by growth.
class device_buffer {
 public:
  device_buffer() = default;
  ~device_buffer() { release(); }
  device_buffer(device_buffer const&)            = delete;
  device_buffer& operator=(device_buffer const&) = delete;
  device_buffer(device_buffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0))
  {
  }
  device_buffer& operator=(device_buffer&& o) noexcept
  {
    if (this != &o) {
      release();
      ptr_   = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }

  /// Ensures at least `bytes` bytes; grows geometrically (x1.5), never shrinks. The caller
  /// guarantees that no queued work still uses the block (see the stream overload).
  void reserve(std::size_t bytes)
  {
    if (bytes <= bytes_) return;
    std::size_t const wanted = std::max(bytes, bytes_ + bytes_ / 2);
    release();
    void* p         = nullptr;
    cudaError_t err = cudaMalloc(&p, wanted);
    if (err != cudaSuccess && wanted > bytes) {
      (void)cudaGetLastError();  // retry without the geometric slack
      err = cudaMalloc(&p, bytes);
      if (err == cudaSuccess) {
        ptr_   = p;
        bytes_ = bytes;
        return;
      }
    }
    if (err != cudaSuccess) { throw_cuda_error(err, "cudaMalloc", __FILE__, __LINE__); }
    ptr_   = p;
    bytes_ = wanted;
  }

  /// As reserve(bytes), for a block used only on `stream`: before the old block is freed, the
  /// work queued on `stream` (which may still use it) is waited for.
  void reserve(std::size_t bytes, cudaStream_t stream)
  {
    if (bytes <= bytes_) return;
    if (ptr_ != nullptr) { CUSENSE_CUDA_TRY(cudaStreamSynchronize(stream)); }
    reserve(bytes);
  }

  template <typename T>
  T* data() const
  {
    return static_cast<T*>(ptr_);
  }
  /// Ensures room for `count` objects of type T and returns the typed pointer. Contents are
  /// lost when the block grows; the caller guarantees no queued work still uses the block.
  template <typename T>
  T* get(std::size_t count)
  {
    reserve(std::max<std::size_t>(count, 1) * sizeof(T));
    return data<T>();
  }
  /// As get(count), for a block used only on `stream`: growth first waits for that stream.
  template <typename T>
  T* get(std::size_t count, cudaStream_t stream)
  {
    reserve(std::max<std::size_t>(count, 1) * sizeof(T), stream);
    return data<T>();
  }
  std::size_t capacity() const { return bytes_; }

  void release() noexcept
  {
    if (ptr_ != nullptr) { CUSENSE_CUDA_TRY_NO_THROW(cudaFree(ptr_)); }
    ptr_   = nullptr;
    bytes_ = 0;
  }

 private:
  void* ptr_         = nullptr;
  std::size_t bytes_ = 0;
};

/// Process-wide cache of page-locked blocks. Pinning is slow (cudaHostAlloc maps and locks
/// every page: ~0.5 ms per MiB, more than the copies it speeds up for a short-lived pipeline),
/// so blocks given back are kept, up to `max_cached_bytes`, for the next pipeline.
class pinned_pool {
 public:
  static constexpr std::size_t max_cached_bytes = std::size_t{1} << 30;

  static pinned_pool& instance()
  {
    static pinned_pool* pool = new pinned_pool;  // never destroyed: the driver may be gone at exit
    return *pool;
  }

  /// A block of at least `bytes` (its size in `*got`), or nullptr when pinning fails.
  void* take(std::size_t bytes, std::size_t* got)
  {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // The smallest cached block that fits without wasting more than half of it.
      auto it = cached_.lower_bound(bytes);
      if (it != cached_.end() && it->first / 2 <= bytes) {
        *got = it->first;
        void* p = it->second;
        cached_bytes_ -= it->first;
        cached_.erase(it);
        return p;
      }
    }
    void* p = nullptr;
    // Portable: a cached block may serve a pipeline on another device.
    if (cudaHostAlloc(&p, bytes, cudaHostAllocPortable) != cudaSuccess || p == nullptr) {
      (void)cudaGetLastError();
      return nullptr;
    }
    *got = bytes;
    return p;
  }

  void give(void* p, std::size_t bytes) noexcept
  {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_bytes_ + bytes <= max_cached_bytes) {
        try {
          cached_.emplace(bytes, p);
          cached_bytes_ += bytes;
          return;
        } catch (...) {
          // no room to remember it: free it below
        }
      }
    }
    CUSENSE_CUDA_TRY_NO_THROW(cudaFreeHost(p));
  }

 private:
  std::mutex mutex_;
  std::multimap<std::size_t, void*> cached_;
  std::size_t cached_bytes_ = 0;
};

/// Owning, growable host allocation: page-locked (cudaHostAlloc) when possible, pageable
/// otherwise (copies then still work, only without overlap). Contents are not preserved.
class host_buffer {
 public:
  host_buffer() = default;
  ~host_buffer() { release(); }
  host_buffer(host_buffer const&)            = delete;
  host_buffer& operator=(host_buffer const&) = delete;

  void reserve(std::size_t bytes)
  {
    if (bytes <= bytes_) return;
    std::size_t const wanted = std::max(bytes, bytes_ + bytes_ / 2);
    release();
    std::size_t got = 0;
    if (void* p = pinned_pool::instance().take(wanted, &got)) {
      ptr_    = p;
      bytes_  = got;
      pinned_ = true;
      return;
    }
    // pinned memory exhausted: fall back to pageable memory
    try {
      pageable_.reset(new unsigned char[wanted]);
    } catch (std::bad_alloc const&) {
      throw ::cusense::out_of_memory("cusense: cannot allocate " + std::to_string(wanted) +
                                     " bytes of host staging memory");
    }
    ptr_    = pageable_.get();
    bytes_  = wanted;
    pinned_ = false;
  }

  template <typename T>
  T* data() const
  {
    return static_cast<T*>(ptr_);
  }
  template <typename T>
  T* get(std::size_t count)
  {
    reserve(std::max<std::size_t>(count, 1) * sizeof(T));
    return data<T>();
  }
  bool pinned() const { return pinned_; }
  std::size_t capacity() const { return bytes_; }

  void release() noexcept
  {
    if (pinned_ && ptr_ != nullptr) { pinned_pool::instance().give(ptr_, bytes_); }
    pageable_.reset();
    ptr_    = nullptr;
    bytes_  = 0;
    pinned_ = false;
  }

 private:
  void* ptr_         = nullptr;
  std::size_t bytes_ = 0;
  bool pinned_       = false;
  std::unique_ptr<unsigned char[]> pageable_;
};

/// Threads per block of the grid-stride kernels.
constexpr int cuda_block_threads = 256;

/// Blocks of `threads` for a grid-stride launch over n items (at least 1, at most 2^20: the
/// loop covers the rest).
inline unsigned cuda_blocks_for(std::size_t n, int threads = cuda_block_threads)
{
  auto const per_block     = static_cast<std::size_t>(threads);
  std::size_t const blocks = (n + per_block - 1) / per_block;
  return static_cast<unsigned>(std::clamp<std::size_t>(blocks, 1, std::size_t{1} << 20));
}

/// Bits needed to write v (0 for 0): the radix-sort bit range of keys up to v.
inline int bit_width(std::uint64_t v)
{
  int b = 0;
  for (; v != 0; v >>= 1) ++b;
  return b;
}

/// Runs a CUB device algorithm twice (size query, then the call) with `temp` as its scratch
/// (grown on `stream`, so queued work that may use it is waited for first).
template <typename F>
void run_cub_on(device_buffer& temp, cudaStream_t stream, char const* what, F&& f)
{
  std::size_t bytes = 0;
  cudaError_t err   = f(nullptr, bytes);
  if (err != cudaSuccess) { throw_cuda_error(err, what, __FILE__, __LINE__); }
  void* p = temp.get<unsigned char>(bytes, stream);
  err     = f(p, bytes);
  if (err != cudaSuccess) { throw_cuda_error(err, what, __FILE__, __LINE__); }
}

/// The current CUDA device, checked to be usable: throws backend_unavailable when there is
/// none, or when `probe` (any kernel of this library) has no image the device can run.
inline int usable_cuda_device(void const* probe)
{
  int count       = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count <= 0) {
    (void)cudaGetLastError();
    throw ::cusense::backend_unavailable(std::string("cusense: no usable CUDA device (") +
                                         (err != cudaSuccess ? cudaGetErrorString(err) : "no devices") + ")");
  }
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    device = 0;
  }
  device_guard guard(device);
  cudaFuncAttributes attr{};
  err = cudaFuncGetAttributes(&attr, probe);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    int major = 0, minor = 0;
    (void)cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    (void)cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    (void)cudaGetLastError();
    throw ::cusense::backend_unavailable("cusense: the CUDA backend cannot run on device " +
                                         std::to_string(device) + " (compute capability " +
                                         std::to_string(major) + "." + std::to_string(minor) +
                                         "): " + cudaGetErrorString(err));
  }
  return device;
}

/// Owning CUDA stream (non-blocking with respect to the legacy default stream).
class cuda_stream {
 public:
  cuda_stream() { CUSENSE_CUDA_TRY(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~cuda_stream()
  {
    if (s_ != nullptr) { CUSENSE_CUDA_TRY_NO_THROW(cudaStreamDestroy(s_)); }
  }
  cuda_stream(cuda_stream const&)            = delete;
  cuda_stream& operator=(cuda_stream const&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

/// Owning CUDA event without timing.
class cuda_event {
 public:
  cuda_event() { CUSENSE_CUDA_TRY(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming)); }
  ~cuda_event()
  {
    if (e_ != nullptr) { CUSENSE_CUDA_TRY_NO_THROW(cudaEventDestroy(e_)); }
  }
  cuda_event(cuda_event const&)            = delete;
  cuda_event& operator=(cuda_event const&) = delete;
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

}  // namespace cusense::detail
