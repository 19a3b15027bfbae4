// Device discovery for the CUDA backend.
#include <cuda_runtime_api.h>

#include <exception>
#include <vector>

#include <cusense/types.hpp>
#include <cusense/detail/cuda_devices.hpp>

namespace cusense::detail {

std::vector<device_info> cuda_devices()
{
  std::vector<device_info> out;
  try {
    int count       = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count <= 0) {
      (void)cudaGetLastError();  // e.g. cudaErrorInsufficientDriver without a driver
      return out;
    }
    for (int d = 0; d < count; ++d) {
      cudaDeviceProp prop{};
      if (cudaGetDeviceProperties(&prop, d) != cudaSuccess) {
        (void)cudaGetLastError();
        continue;
      }
      int mode = cudaComputeModeDefault;
      if (cudaDeviceGetAttribute(&mode, cudaDevAttrComputeMode, d) != cudaSuccess) {
        (void)cudaGetLastError();
        mode = cudaComputeModeDefault;
      }
      if (mode == cudaComputeModeProhibited) continue;
      device_info info;
      info.ordinal       = d;
      info.name          = prop.name;
      info.compute_major = prop.major;
      info.compute_minor = prop.minor;
      info.total_memory  = prop.totalGlobalMem;
      out.push_back(std::move(info));
    }
  } catch (...) {
    (void)cudaGetLastError();
    return {};
  }
  return out;
}

}  // namespace cusense::detail
