#pragma once
// Internal: the guard every pipeline call and stats() holds (see detail::usage_state). Not part
// of the public API.
#include <mutex>
#include <thread>

#include <cusense/error.hpp>
#include <cusense/pipeline.hpp>

namespace cusense {

/// Holds the pipeline's usage state for one call or one stats().
///
/// A call (scoped_use(p)) marks the pipeline as inside a call for the guard's lifetime and
/// refuses with concurrent_use when another thread is inside one; it waits out a stats() that
/// is computing fresh totals. When the call ends (normally or by an exception) the pipeline
/// publishes its totals for stats() readers, then becomes idle.
///
/// stats() (scoped_use(p, std::try_to_lock)) takes the pipeline only when it is idle; held()
/// says whether it did (otherwise stats() returns the totals published last).
class pipeline::scoped_use {
 public:
  explicit scoped_use(pipeline& p) : p_(p), mode_(detail::usage_state::in_call)
  {
    auto& state = p_.usage_.state;
    for (;;) {
      int seen = detail::usage_state::idle;
      if (state.compare_exchange_weak(seen, detail::usage_state::in_call,
                                      std::memory_order_acquire)) {
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
  scoped_use(pipeline& p, std::try_to_lock_t) : p_(p), mode_(detail::usage_state::in_stats)
  {
    int seen = detail::usage_state::idle;
    held_    = p_.usage_.state.compare_exchange_strong(seen, detail::usage_state::in_stats,
                                                       std::memory_order_acquire);
  }
  ~scoped_use()
  {
    if (!held_) { return; }
    if (mode_ == detail::usage_state::in_call) { p_.publish_after_call(); }
    p_.usage_.state.store(detail::usage_state::idle, std::memory_order_release);
  }
  scoped_use(scoped_use const&)            = delete;
  scoped_use& operator=(scoped_use const&) = delete;

  bool held() const { return held_; }

 private:
  pipeline& p_;
  int mode_;
  bool held_ = true;
};

}  // namespace cusense
