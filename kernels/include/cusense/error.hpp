#pragma once
#include <stdexcept>
#include <string>

namespace cusense {

/// Bad arguments or input data (length mismatch, wrong shape, unknown aggregation, timestamps
/// out of range, ...). Derives from std::invalid_argument, so Python sees a ValueError.
struct invalid_argument : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// A checkpoint could not be written or read back: the file is missing, truncated, corrupt
/// (checksum mismatch), of another format version, not a cusense checkpoint, or the stream
/// failed. The message names the problem. Derives from invalid_argument: Python sees a
/// ValueError.
struct checkpoint_error : invalid_argument {
  using invalid_argument::invalid_argument;
};

/// The requested backend was not compiled in or has no usable device.
struct backend_unavailable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A configured capacity (open windows, keys, staging) would be exceeded. Python sees
/// cusense.CapacityError, both a MemoryError and a RuntimeError.
struct capacity_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Host or device memory could not be allocated. Python sees a MemoryError.
struct out_of_memory : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A pipeline was called while another thread was inside a call on the same pipeline. Nothing
/// was changed by the refused call. Python sees cusense.ConcurrentUseError (a RuntimeError).
struct concurrent_use : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A CUDA runtime call failed.
struct cuda_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace cusense

#define CUSENSE_EXPECTS(cond, msg)                                       \
  do {                                                                   \
    if (!(cond)) { throw ::cusense::invalid_argument(std::string(msg)); } \
  } while (0)
