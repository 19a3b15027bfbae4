#include <cusense/backend.hpp>
#include <cusense/error.hpp>

#ifdef CUSENSE_WITH_CUDA
#include <cusense/detail/cuda_devices.hpp>
#endif

namespace cusense {

bool cuda_built()
{
#ifdef CUSENSE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::vector<device_info> devices()
{
#ifdef CUSENSE_WITH_CUDA
  return detail::cuda_devices();
#else
  return {};
#endif
}

bool cuda_available() { return !devices().empty(); }

backend resolve_backend(backend requested)
{
  if (requested == backend::cpu) { return backend::cpu; }
  bool const usable = cuda_available();
  if (requested == backend::automatic) { return usable ? backend::cuda : backend::cpu; }
  if (!cuda_built()) {
    throw backend_unavailable("backend 'cuda' requested but cusense was built without CUDA support");
  }
  if (!usable) {
    throw backend_unavailable(
      "backend 'cuda' requested but no usable CUDA device was found (no driver or no GPU)");
  }
  return backend::cuda;
}

}  // namespace cusense
