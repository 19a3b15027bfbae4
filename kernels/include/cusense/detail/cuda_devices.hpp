#pragma once
// Internal: device discovery of the CUDA backend. Defined only when the CUDA backend is built
// (kernels/cuda/devices.cu); plain C++ header, no CUDA headers.
#include <vector>

#include <cusense/types.hpp>

namespace cusense::detail {

/// CUDA devices usable by this process. Never throws: without a driver (cudaGetDeviceCount
/// then returns cudaErrorInsufficientDriver), without devices, or on any CUDA error the
/// result is empty. Devices in the "prohibited" compute mode are left out.
std::vector<device_info> cuda_devices();

}  // namespace cusense::detail
