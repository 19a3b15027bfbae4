#pragma once
// Internal: host-side passes over a batch that one core cannot do at memory speed (a single
// thread moves ~6 GB/s on typical servers; a PCIe 5 link takes ~50 GB/s).
#include <cstddef>
#include <cstdint>

namespace cusense::detail {

/// memcpy split across threads for large copies (staging into pinned memory).
void parallel_copy(void* dst, void const* src, std::size_t bytes);

/// Smallest and largest of n >= 1 timestamps.
void parallel_minmax(std::int64_t const* t, std::size_t n, std::int64_t& lo, std::int64_t& hi);

}  // namespace cusense::detail
