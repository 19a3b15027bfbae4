#pragma once
// Internal: the guard every pipeline call holds (see detail::usage_state). Not part of the
// public API.
#include <thread>

#include <cusense/error.hpp>
#include <cusense/pipeline.hpp>

namespace cusense {

/// Marks the pipeline as inside a call for the guard's lifetime; refuses the call with
/// concurrent_use when another thread is inside one. When the call ends (normally or by an
/// exception) the pipeline publishes its totals for stats() readers, then becomes idle.
class pipeline::call_guard {
 public:
  explicit call_guard(pipeline& p) : p_(p)
  {
    auto& state = p_.usage_.state;
    for (;;) {
      int seen = detail::usage_state::idle;
      if (state.compare_exchange_weak(seen, detail::usage_state::in_call, std::memory_order_acquire)) {
        return;
      }
      if (seen == detail::usage_state::in_call) {
        throw concurrent_use(
          "cusense.Pipeline is being used from another thread; serialise calls or use one "
          "pipeline per thread");
      }
      // idle (a spurious failure) or a stats() computing fresh totals, which ends shortly.
      std::this_thread::yield();
    }
  }
  ~call_guard()
  {
    p_.publish_after_call();
    p_.usage_.state.store(detail::usage_state::idle, std::memory_order_release);
  }
  call_guard(call_guard const&)            = delete;
  call_guard& operator=(call_guard const&) = delete;

 private:
  pipeline& p_;
};

}  // namespace cusense
