#pragma once
// Internal: the window runner, the one CPU window engine. It owns what every window kind
// shares: the watermark (from the records, or the caller's steps), the counters, the output
// tables with the stream positions of their rows, the checkpoint form of those fields, and the
// all-or-nothing rule of a push. The kinds (detail/window_kind.hpp) hold the open windows.
// Not part of the public API.
#include <memory>

#include <cusense/detail/engine.hpp>
#include <cusense/detail/window_kind.hpp>

namespace cusense::detail {

class window_runner final : public window_engine {
 public:
  window_runner(pipeline_options const& options, std::unique_ptr<window_kind> kind);

  void push(record_batch const& batch) override;
  void push_external(record_batch const& batch, std::int64_t const* positions,
                     watermark_steps const& steps) override;
  void flush() override;
  void drain(table* windows, table* late) override;
  engine_counters counters() override;
  void save_state(state_writer& out) override;
  void load_state(state_reader& in) override;
  void merge_state(state_reader& in, key_filter const& keep, bool counters) override;

 private:
  void run(watermark_feed feed);
  // Lets the kind emit what a push that ran out of memory left for later (window_kind::settle),
  // counting the rows it emits even if it fails part way.
  void settle();

  pipeline_options options_;
  std::unique_ptr<window_kind> kind_;
  window_output out_;
  runner_fields fields_;
  bool merged_ = false;  // merge_state has read a section
};

// The CPU engines: the runner with each kind (defined in window_runner.cpp).
std::unique_ptr<window_engine> make_cpu_tumbling_engine(pipeline_options const& options);
std::unique_ptr<window_engine> make_cpu_sliding_engine(pipeline_options const& options);
std::unique_ptr<window_engine> make_cpu_session_engine(pipeline_options const& options);
std::unique_ptr<window_engine> make_cpu_rolling_engine(pipeline_options const& options);

}  // namespace cusense::detail
