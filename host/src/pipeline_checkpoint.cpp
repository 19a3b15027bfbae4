// Checkpoint and restore of a pipeline: the payload's sections (options, pipeline counters,
// engine state, detector state, outputs not yet polled); the file format is in checkpoint.cpp.
#include <istream>
#include <iterator>
#include <ostream>
#include <memory>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <cusense/detail/checkpoint.hpp>
#include <cusense/detail/detector_runner.hpp>
#include <cusense/detail/engine.hpp>
#include <cusense/detail/engine_registry.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/detail/scoped_use.hpp>
#include <cusense/pipeline.hpp>

namespace cusense {
namespace {

void append_rows(table& into, table&& from)
{
  if (from.columns.empty()) { return; }
  into.append(std::move(from));
}

// The rows of `t` whose key the filter keeps (every column cut alike).
table rows_kept(table const& t, detail::key_filter const& keep)
{
  if (t.columns.empty()) { return t; }
  auto const* keys = std::get_if<std::vector<std::uint32_t>>(&t.columns.front().data);
  detail::state_reader::check(keys != nullptr && t.columns.front().name == "key",
                              "an output table without a key column");
  std::vector<std::size_t> rows;
  for (std::size_t i = 0; i < keys->size(); ++i) {
    if (keep.keeps((*keys)[i])) { rows.push_back(i); }
  }
  table out;
  for (column const& c : t.columns) {
    column k{c.name, {}};
    std::visit(
      [&](auto const& v) {
        std::decay_t<decltype(v)> picked;
        picked.reserve(rows.size());
        for (std::size_t i : rows) picked.push_back(v[i]);
        k.data = std::move(picked);
      },
      c.data);
    out.columns.push_back(std::move(k));
  }
  return out;
}

}  // namespace

std::string pipeline::checkpoint_bytes()
{
  // Outputs emitted but not yet polled move into the pipeline's held tables (the next poll
  // returns them first) so that the engines' state below holds no output.
  if (engine_) {
    table w, l;
    engine_->drain(&w, &l);
    append_rows(held_windows_, std::move(w));
    append_rows(held_late_, std::move(l));
  }
  if (detectors_) {
    if (detectors_->has_scorers()) { append_rows(held_scores_, detectors_->drain_scores()); }
    append_rows(held_silence_, detectors_->drain_silence());
  }
  detail::state_writer w;
  w.tag("options");
  detail::write_options(w, options_);
  w.tag("pipeline");
  w.u8(static_cast<std::uint8_t>(backend_));
  w.u64(pushed_);
  w.u64(rejected_);
  w.tag("engine");
  w.boolean(engine_ != nullptr);
  if (engine_) {
    w.tag(detail::engine_state_tag(options_));
    engine_->save_state(w);
  }
  w.tag("detectors");
  w.boolean(detectors_ != nullptr);
  if (detectors_) { detectors_->save_state(w); }
  w.tag("outputs");
  for (table const* t : {&held_windows_, &held_late_, &held_scores_, &held_silence_}) {
    detail::write_table(w, *t);
  }
  w.tag("end");
  return detail::frame_checkpoint(w.data());
}

void pipeline::checkpoint(std::string const& path)
{
  // The guard covers the write too: a second checkpoint of this pipeline from another thread
  // is refused (concurrent_use) instead of racing for the file.
  scoped_use use(*this);
  detail::remove_stale_temporaries(path);
  detail::write_atomically(path, checkpoint_bytes());
}

void pipeline::checkpoint(std::ostream& out)
{
  scoped_use use(*this);
  std::string const bytes = checkpoint_bytes();
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.flush();
  if (!out) { throw checkpoint_error("checkpoint: the output stream failed while writing"); }
}

pipeline pipeline::restore_bytes(std::string const& file, backend where)
{
  std::uint32_t version     = 0;
  std::string const payload = detail::unframe_checkpoint(file, &version);
  detail::state_reader r(payload.data(), payload.size());
  r.set_version(version);
  r.expect("options");
  pipeline_options o = detail::read_options(r, version);
  o.where            = where;
  // The options get the constructor's checks: a file with a valid checksum may still hold
  // options no caller could give (edited by hand, or written by a buggy tool).
  auto construct = [&]() -> pipeline {
    try {
      return pipeline(std::move(o));
    } catch (checkpoint_error const&) {
      throw;
    } catch (invalid_argument const& e) {
      throw checkpoint_error(std::string("checkpoint holds invalid options: ") + e.what());
    }
  };
  pipeline p = construct();
  r.expect("pipeline");
  (void)r.u8();  // backend the checkpoint was taken on (informational)
  p.pushed_   = r.u64();
  p.rejected_ = r.u64();
  r.expect("engine");
  bool const has_engine = r.boolean();
  detail::state_reader::check(has_engine == (p.engine_ != nullptr),
                              "engine section does not match the options");
  if (p.engine_) {
    r.expect(detail::engine_state_tag(p.options_));
    p.engine_->load_state(r);
  }
  r.expect("detectors");
  bool const has_detectors = r.boolean();
  detail::state_reader::check(has_detectors == (p.detectors_ != nullptr),
                              "detector section does not match the options");
  if (p.detectors_) { p.detectors_->load_state(r); }
  r.expect("outputs");
  // The column layout of each output, from the fresh (empty) outputs of this pipeline.
  table want_windows, want_late, want_scores, want_silence;
  if (p.engine_) {
    want_windows = detail::empty_window_table(p.options_);
    table w;
    p.engine_->drain(&w, &want_late);
  }
  if (p.detectors_) {
    if (p.detectors_->has_scorers()) { want_scores = p.detectors_->drain_scores(); }
    want_silence = p.detectors_->drain_silence();
  }
  p.held_windows_ = detail::read_table(r);
  detail::check_schema(p.held_windows_, want_windows, "windows");
  p.held_late_ = detail::read_table(r);
  detail::check_schema(p.held_late_, want_late, "late records");
  p.held_scores_ = detail::read_table(r);
  detail::check_schema(p.held_scores_, want_scores, "scores");
  p.held_silence_ = detail::read_table(r);
  detail::check_schema(p.held_silence_, want_silence, "silence");
  r.expect("end");
  detail::state_reader::check(r.at_end(),
                              std::to_string(r.left()) + " unexpected bytes after the end");
  p.publish_stats(p.current_stats());
  return p;
}

void pipeline::rekey_checkpoints(std::vector<std::string> const& inputs,
                                 std::vector<std::string> const& outputs)
{
  if (inputs.empty() || outputs.empty()) {
    throw checkpoint_error("rekey_checkpoints: needs at least one input and one output");
  }
  std::vector<std::string> payloads;
  std::vector<std::uint32_t> versions;
  for (std::string const& path : inputs) {
    std::uint32_t version = 0;
    payloads.push_back(detail::unframe_checkpoint(detail::read_checkpoint_file(path), &version));
    versions.push_back(version);
  }
  auto const parts = static_cast<std::uint32_t>(outputs.size());
  for (std::uint32_t part = 0; part < parts; ++part) {
    detail::key_filter const keep{parts, part};
    std::string first_options;
    std::unique_ptr<pipeline> out;
    for (std::size_t i = 0; i < payloads.size(); ++i) {
      std::string const where = "rekey_checkpoints: input '" + inputs[i] + "': ";
      try {
        detail::state_reader r(payloads[i].data(), payloads[i].size());
        r.set_version(versions[i]);
        r.expect("options");
        pipeline_options o = detail::read_options(r, versions[i]);
        o.where            = backend::cpu;
        detail::state_writer canonical;
        detail::write_options(canonical, o);
        if (i == 0) {
          first_options = canonical.data();
          detail::state_reader::check(o.windowed && o.detectors.empty(),
                                      "only windowed pipelines without detectors can be rekeyed");
          out = std::make_unique<pipeline>(std::move(o));
        } else {
          detail::state_reader::check(canonical.data() == first_options,
                                      "its options differ from those of the first input");
        }
        r.expect("pipeline");
        (void)r.u8();
        std::uint64_t const pushed   = r.u64();
        std::uint64_t const rejected = r.u64();
        if (part == 0) {
          out->pushed_ += pushed;
          out->rejected_ += rejected;
        }
        r.expect("engine");
        detail::state_reader::check(r.boolean(), "engine section missing");
        r.expect(detail::engine_state_tag(out->options_));
        out->engine_->merge_state(r, keep, part == 0);
        r.expect("detectors");
        detail::state_reader::check(!r.boolean(), "detector section present");
        r.expect("outputs");
        for (table* held : {&out->held_windows_, &out->held_late_, &out->held_scores_,
                            &out->held_silence_}) {
          append_rows(*held, rows_kept(detail::read_table(r), keep));
        }
        r.expect("end");
      } catch (checkpoint_error const& e) {
        throw checkpoint_error(where + e.what());
      } catch (invalid_argument const& e) {
        throw checkpoint_error(where + e.what());
      }
    }
    detail::write_atomically(outputs[part], out->checkpoint_bytes());
  }
}

pipeline pipeline::restore(std::istream& in, backend where)
{
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) { throw checkpoint_error("checkpoint: the input stream failed while reading"); }
  return restore_bytes(bytes, where);
}

pipeline pipeline::restore(std::string const& path, backend where)
{
  detail::remove_stale_temporaries(path);
  std::string const bytes = detail::read_checkpoint_file(path);
  try {
    return restore_bytes(bytes, where);
  } catch (checkpoint_error const& e) {
    throw checkpoint_error(std::string(e.what()) + " (file '" + path + "')");
  }
}

}  // namespace cusense
