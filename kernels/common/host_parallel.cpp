#include <cusense/detail/host_parallel.hpp>

#include <algorithm>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace cusense::detail {
namespace {

/// Below this a pass stays on one thread: waking a team costs more than it saves.
constexpr std::size_t min_bytes_per_thread = std::size_t{1} << 18;
/// A few threads saturate host memory bandwidth; more only compete with other work.
constexpr int max_threads = 8;

int threads_for(std::size_t bytes)
{
  int available = 1;
#ifdef _OPENMP
  available = std::min(omp_get_max_threads(), max_threads);
#endif
  auto const wanted = static_cast<int>(std::min<std::size_t>(bytes / min_bytes_per_thread, max_threads));
  return std::max(1, std::min(available, wanted));
}

}  // namespace

void parallel_copy(void* dst, void const* src, std::size_t bytes)
{
  int const threads = threads_for(bytes);
  if (threads == 1) {
    std::memcpy(dst, src, bytes);
    return;
  }
  // Slices start on cache-line boundaries so no two threads write the same line.
  std::size_t const slice = ((bytes + threads - 1) / threads + 63) & ~std::size_t{63};
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int i = 0; i < threads; ++i) {
    std::size_t const begin = std::min(bytes, slice * static_cast<std::size_t>(i));
    std::size_t const end   = std::min(bytes, begin + slice);
    std::memcpy(static_cast<char*>(dst) + begin, static_cast<char const*>(src) + begin, end - begin);
  }
}

void parallel_minmax(std::int64_t const* t, std::size_t n, std::int64_t& lo, std::int64_t& hi)
{
  std::int64_t mn = t[0], mx = t[0];
  int const threads = threads_for(n * sizeof(std::int64_t));
#pragma omp parallel for num_threads(threads) schedule(static) reduction(min : mn) reduction(max : mx)
  for (std::size_t i = 0; i < n; ++i) {
    mn = std::min(mn, t[i]);
    mx = std::max(mx, t[i]);
  }
  lo = mn;
  hi = mx;
}

}  // namespace cusense::detail
