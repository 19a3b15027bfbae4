#pragma once
// Internal: the engine registry, the one place that answers "which engine runs this
// configuration?". Not part of the public API.
//
// Each entry maps a window kind and a backend to an engine factory, a predicate saying which
// configurations of that kind the engine runs, and the checkpoint form of its state. Entries
// are tried in order; the first whose predicate holds runs the configuration:
//
//   window    backend  engine                      runs                               state
//   tumbling  cpu      make_cpu_tumbling_engine    moment aggregations, no lateness   tumbling-moments
//   tumbling  cpu      make_cpu_sliding_engine     the rest, as slide == size         panes
//   sliding   cpu      make_cpu_sliding_engine     everything                         panes
//   session   cpu      make_cpu_session_engine     everything                         session
//   rolling   cpu      make_cpu_rolling_engine     everything                         rolling
//   tumbling  cuda     make_cuda_tumbling_engine   as the CPU tumbling engine         tumbling-moments
//   tumbling  cuda     make_cuda_sliding_engine    no quantiles, as slide == size     panes
//   sliding   cuda     make_cuda_sliding_engine    no quantiles                       panes
//   session   cuda     make_cuda_session_engine    no quantiles                       session
//   rolling   cuda     make_cuda_rolling_engine    no quantiles                       rolling
//
// The CPU backend runs every configuration. A configuration has one state form whatever the
// backend (that of its CPU entry), so a checkpoint taken on one backend restores on the other;
// the CUDA entries mirror the CPU ones to keep it so (tested). The CUDA factories exist only
// when the CUDA backend is built; their entries are listed (with no factory) in every build,
// so the support questions have the same answers everywhere.
#include <memory>
#include <string>

#include <cusense/detail/engine.hpp>
#include <cusense/types.hpp>

namespace cusense::detail {

/// Checkpoint forms of engine state: engines of one form read each other's state.
enum class state_form { tumbling_moments, panes, session, rolling };

/// The section tag written before an engine's state in a checkpoint.
char const* state_tag(state_form form);

using engine_factory = std::unique_ptr<window_engine> (*)(pipeline_options const& options);
/// Whether an engine runs `options` (of the entry's window kind); when not, `why` (never null)
/// gets the reason, worded to follow "... is not yet supported on the <backend> backend".
using engine_predicate = bool (*)(pipeline_options const& options, std::string* why);

struct engine_entry {
  char const* name;           ///< e.g. "cpu_tumbling"
  window_spec::kind window;   ///< the window kind of the configurations it serves
  backend where;              ///< backend::cpu or backend::cuda
  engine_predicate supports;  ///< nullptr: every configuration of the kind
  engine_factory make;        ///< nullptr: the backend is not built
  state_form form;            ///< checkpoint form of its state
};

/// Every entry, in order of preference (see the table above).
struct engine_entries {
  engine_entry const* begin_;
  engine_entry const* end_;
  engine_entry const* begin() const { return begin_; }
  engine_entry const* end() const { return end_; }
};
engine_entries engine_registry();

/// The entry that runs the windowed configuration `options` on `where` (cpu or cuda), or null
/// when that backend cannot run it (`why` then gets the reason, else "").
engine_entry const* find_engine(pipeline_options const& options, backend where,
                                std::string* why = nullptr);

/// Whether `where` (cpu or cuda) can run `options`; `why` gets the reason when not (else "").
/// Does not depend on whether the backend is built or a device is present.
bool engine_supports(pipeline_options const& options, backend where, std::string* why = nullptr);

/// The engine for `options` on `where`, which must support it and be built (logic_error
/// otherwise).
std::unique_ptr<window_engine> make_engine(pipeline_options const& options, backend where);

/// The checkpoint form of the engine state for `options`, the same on every backend.
state_form engine_state_form(pipeline_options const& options);
/// state_tag(engine_state_form(options)).
char const* engine_state_tag(pipeline_options const& options);

}  // namespace cusense::detail
