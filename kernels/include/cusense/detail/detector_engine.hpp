#pragma once
// Internal: detector scoring, the backend side. The runner (host/, detail/detector_runner.hpp,
// shared by both backends) keeps the watermark, buffers records until they can be scored
// causally, orders them, tracks silence and builds the result tables; a backend engine (this
// interface) holds the per-key detector state and scores released records. Not part of the
// public API.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <cusense/detectors.hpp>
#include <cusense/ops/detectors.hpp>
#include <cusense/types.hpp>

namespace cusense::detail {

class state_writer;
class state_reader;

/// Per-key detector state and scoring of one backend.
class detector_engine {
 public:
  virtual ~detector_engine() = default;
  /// Scores n released records. Records of one key come in their scoring order; slots[i] <
  /// num_slots is the key's dense state slot (slots are assigned 0, 1, 2, ...); ts[i] its event
  /// time (ns). values holds n * channels doubles, record-major. Writes scores[d * n + i] for
  /// each detector d. Synchronous.
  virtual void score(std::uint32_t const* slots, std::int64_t const* ts, double const* values,
                     std::size_t n, std::uint32_t num_slots, double* scores) = 0;
  /// Checkpoints: the state of slots [0, num_slots) of detector d, in the shared slot-major
  /// layout (d_stride() doubles and i_stride() int64 per slot; slots never scored are zero).
  virtual void export_state(std::uint32_t num_slots, std::vector<std::vector<double>>& d,
                            std::vector<std::vector<std::int64_t>>& i) = 0;
  /// Replaces the state by slots [0, num_slots) in the layout of export_state.
  virtual void import_state(std::uint32_t num_slots, std::vector<std::vector<double>> const& d,
                            std::vector<std::vector<std::int64_t>> const& i) = 0;
  /// Makes room for the state of slots [0, num_slots), so that a later score() of at most
  /// num_slots slots allocates no host memory for the state (may throw std::bad_alloc; the
  /// state is unchanged, slots beyond those in use stay zero). score() grows the state to its
  /// num_slots as it starts, so by default this is a score of no records.
  virtual void reserve(std::uint32_t num_slots)
  {
    score(nullptr, nullptr, nullptr, 0, num_slots, nullptr);
  }
};

std::unique_ptr<detector_engine> make_cpu_detector_engine(std::vector<ops::detector_params> params,
                                                          int channels);
/// Defined only when the CUDA backend is built.
std::unique_ptr<detector_engine> make_cuda_detector_engine(std::vector<ops::detector_params> params,
                                                           int channels);

}  // namespace cusense::detail
