#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include <cusense/types.hpp>

namespace cusense {

/// True when the library was compiled with the CUDA backend. Never throws.
bool cuda_built();
/// CUDA devices usable by this process; empty without CUDA support, driver or device (any CUDA
/// error counts as "no usable device"). Never throws. Safe to call from any thread; the first
/// call initialises the CUDA runtime and may take a moment.
std::vector<device_info> devices();
/// True when the CUDA backend was built and at least one device is usable.
bool cuda_available();
/// Resolves `automatic` to cpu or cuda; throws backend_unavailable when cuda is asked for and
/// cannot be used, with the reason.
backend resolve_backend(backend requested);

}  // namespace cusense
