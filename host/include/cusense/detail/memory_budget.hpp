#pragma once
// Internal: the pipeline's memory budget (pipeline_options::memory_budget_bytes) and the checks
// of the options that bound detector memory. Not part of the public API.
//
// The budget counts what stats().state_bytes counts: the window engine's state, the detectors'
// per-key state and the records buffered for them. A push is checked before anything is
// allocated for it: the state after the push is estimated as
//   windows: the window state now + n * window_state_bound_per_record(options), an upper bound
//            of what one record can add to the window engines' state (one new (key, window),
//            pane, session or held record, with its key's entry);
//   detectors: exactly what the planned push leaves (keys held after it, before the keys it
//            expires are dropped, and the records still buffered);
// and the push is refused (capacity_error) when that exceeds the budget. The window state is
// measured (engine counters: on the CUDA backend a wait for the device) only when the running
// upper bound (the last measurement plus the estimates of the pushes since) would exceed the
// budget, so a pipeline well inside its budget does not pay for the measurement.
#include <cstddef>
#include <cstdint>

#include <cusense/types.hpp>

namespace cusense::detail {

/// Upper bound of the bytes of window state (engine state_bytes) one record can add, for any
/// engine running `o`: channels * (the general accumulator, plus two quantile sketch buckets
/// when quantiles are asked for) + 256 bytes of per-state and per-key entries. A quantile
/// sketch whose bucket list is full grows by doubling, which one record can trigger: with
/// quantiles the estimate does not count that reallocation.
std::uint64_t window_state_bound_per_record(pipeline_options const& o);

/// Throws capacity_error (naming the budget, the state and the estimate; "the batch was
/// rejected") when `windows_now + window_growth + detectors_after` exceeds the budget.
void check_memory_budget(pipeline_options const& o, std::uint64_t windows_now,
                         std::uint64_t window_growth, std::uint64_t detectors_now,
                         std::uint64_t detectors_after, std::size_t n);

/// Checks max_detector_keys, memory_budget_bytes and key_ttl (ranges, and that the
/// detector options come with detectors); throws invalid_argument naming the option.
void validate_limits(pipeline_options const& o);

}  // namespace cusense::detail
