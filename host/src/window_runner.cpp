// The window runner: see detail/window_runner.hpp.
#include <algorithm>
#include <limits>
#include <utility>

#include <cusense/detail/window_runner.hpp>

namespace cusense::detail {

window_runner::window_runner(pipeline_options const& options, std::unique_ptr<window_kind> kind)
  : options_(options), kind_(std::move(kind)), out_(options)
{
  fields_.clock.ooo = options.max_out_of_orderness;
}

void window_runner::push(record_batch const& batch)
{
  run(watermark_feed(fields_.clock, batch, fields_.seq));
}

void window_runner::push_external(record_batch const& batch, std::int64_t const* positions,
                                  watermark_steps const& steps)
{
  run(watermark_feed(fields_.clock, batch, fields_.seq, positions, steps, true));
}

void window_runner::run(watermark_feed feed)
{
  if (feed.batch().n == 0 && feed.steps().count == 0) { return; }
  settle();  // first, so that rows left for later keep their place before this batch's
  if (options_.max_open_windows != 0) { kind_->check_capacity(feed); }
  window_output::mark const before = out_.here();
  // A kind that throws has left its state as it was; its output is dropped here, and the
  // fields are only updated after it returns.
  try {
    kind_->apply(feed, out_);
  } catch (...) {
    out_.roll_back(before);
    throw;
  }
  std::size_t const late = out_.late.size() - before.late;
  fields_.clock = feed.clock();
  fields_.seq += feed.batch().n;
  fields_.late += late;
  fields_.aggregated += feed.batch().n - late;
  fields_.nan_values += out_.nan_values - before.nan_values;
  fields_.emitted += out_.windows.size() - before.windows;
}

void window_runner::settle()
{
  std::size_t const rows_before = out_.windows.size();
  try {
    kind_->settle(out_);
  } catch (...) {
    fields_.emitted += out_.windows.size() - rows_before;
    throw;
  }
  fields_.emitted += out_.windows.size() - rows_before;
}

void window_runner::flush()
{
  settle();
  std::size_t const rows_before = out_.windows.size();
  kind_->flush(out_);
  out_.tag_windows(std::numeric_limits<std::int64_t>::max());
  fields_.emitted += out_.windows.size() - rows_before;
}

void window_runner::drain(table* windows, table* late)
{
  settle();
  if (windows) {
    table t = out_.windows.finish();
    if (out_.keep_positions) {
      t.columns.push_back({"position", std::move(out_.window_positions)});
      out_.window_positions.clear();
    }
    windows->append(std::move(t));
  }
  if (late) {
    table t = out_.late.finish();
    if (out_.keep_positions) {
      t.columns.push_back({"position", std::move(out_.late_positions)});
      out_.late_positions.clear();
    }
    late->append(std::move(t));
  }
}

engine_counters window_runner::counters()
{
  kind_size const s = kind_->size();
  engine_counters c;
  c.aggregated    = fields_.aggregated;
  c.late          = fields_.late;
  c.nan_values    = fields_.nan_values;
  c.emitted       = fields_.emitted;
  c.open_windows  = s.open_windows;
  c.open_keys     = s.open_keys;
  c.state_bytes   = s.state_bytes;
  c.has_watermark = fields_.clock.has;
  c.watermark     = fields_.clock.has ? fields_.clock.value() : 0;
  return c;
}

void window_runner::save_state(state_writer& out)
{
  settle();
  kind_->save_state(out, fields_);
}

void window_runner::load_state(state_reader& in) { kind_->load_state(in, fields_, key_filter{}); }

void window_runner::merge_state(state_reader& in, key_filter const& keep, bool counters)
{
  runner_fields f;
  f.clock.ooo = fields_.clock.ooo;
  kind_->load_state(in, f, keep);
  state_reader::check(!merged_ || (f.clock.has == fields_.clock.has &&
                                   (!f.clock.has || f.clock.max_ts == fields_.clock.max_ts)),
                      "the checkpoints hold different watermarks (not taken at one stream "
                      "position)");
  fields_.clock = f.clock;
  // Arrival numbers order the records of one key only: above every one read is enough.
  fields_.seq = std::max(fields_.seq, f.seq);
  if (counters) {
    fields_.aggregated += f.aggregated;
    fields_.late += f.late;
    fields_.nan_values += f.nan_values;
    fields_.emitted += f.emitted;
  }
  merged_ = true;
}

std::unique_ptr<window_engine> make_cpu_tumbling_engine(pipeline_options const& options)
{
  return std::make_unique<window_runner>(options, make_cpu_tumbling_kind(options));
}

std::unique_ptr<window_engine> make_cpu_sliding_engine(pipeline_options const& options)
{
  return std::make_unique<window_runner>(options, make_cpu_sliding_kind(options));
}

std::unique_ptr<window_engine> make_cpu_session_engine(pipeline_options const& options)
{
  return std::make_unique<window_runner>(options, make_cpu_session_kind(options));
}

std::unique_ptr<window_engine> make_cpu_rolling_engine(pipeline_options const& options)
{
  return std::make_unique<window_runner>(options, make_cpu_rolling_kind(options));
}

}  // namespace cusense::detail
