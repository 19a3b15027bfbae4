#pragma once
// Internal CUDA utilities of the CUDA backend: error checking, a device guard and RAII owners
// for device and (pinned, with a pageable fallback) host memory. nvcc only.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <memory>
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
    void* p = nullptr;
    if (cudaHostAlloc(&p, wanted, cudaHostAllocDefault) == cudaSuccess && p != nullptr) {
      ptr_    = p;
      bytes_  = wanted;
      pinned_ = true;
      return;
    }
    (void)cudaGetLastError();  // pinned memory exhausted: fall back to pageable memory
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
    if (pinned_ && ptr_ != nullptr) { CUSENSE_CUDA_TRY_NO_THROW(cudaFreeHost(ptr_)); }
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
