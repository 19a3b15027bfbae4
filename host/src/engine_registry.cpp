// The engine registry: see detail/engine_registry.hpp.
#include <algorithm>
#include <iterator>
#include <stdexcept>
#include <string>

#include <cusense/detail/engine_registry.hpp>
#include <cusense/detail/window_runner.hpp>

namespace cusense::detail {
namespace {

using kind = window_spec::kind;

// The CPU tumbling engine: moment aggregations only (no order statistics, no sketches) and no
// allowed lateness.
bool cpu_tumbling_supports(pipeline_options const& o, std::string* why)
{
  if (o.allowed_lateness != 0) {
    *why = "allowed_lateness";
    return false;
  }
  auto const other = std::find_if(o.aggs.begin(), o.aggs.end(), [](agg a) {
    return a == agg::first || a == agg::last || a == agg::argmin_ts || a == agg::argmax_ts ||
           a == agg::quantile;
  });
  if (other != o.aggs.end()) {
    *why = "aggregation '" + o.agg_names()[static_cast<std::size_t>(other - o.aggs.begin())] + "'";
    return false;
  }
  return true;
}

// The CUDA engines: every configuration but quantiles and external watermarks.
bool cuda_supports(pipeline_options const& o, std::string* why)
{
  if (o.external_watermark) {
    *why = "an external watermark";
    return false;
  }
  if (o.key_ttl != 0 && o.window.type == window_spec::kind::rolling) {
    *why = "key_ttl on rolling windows";
    return false;
  }
  for (std::string const& name : o.agg_names()) {
    if (parse_agg(name) == agg::quantile) {
      *why = "aggregation '" + name + "'";
      return false;
    }
  }
  return true;
}

// The CUDA tumbling engine (the sliding engine's code, keeping the CPU tumbling engine's state
// form) runs the tumbling configurations the CPU tumbling engine runs.
bool cuda_tumbling_moments_supports(pipeline_options const& o, std::string* why)
{
  return cuda_supports(o, why) && cpu_tumbling_supports(o, why);
}

#ifdef CUSENSE_WITH_CUDA
constexpr engine_factory cuda_tumbling = &make_cuda_tumbling_engine;
constexpr engine_factory cuda_sliding  = &make_cuda_sliding_engine;
constexpr engine_factory cuda_session  = &make_cuda_session_engine;
constexpr engine_factory cuda_rolling  = &make_cuda_rolling_engine;
#else
constexpr engine_factory cuda_tumbling = nullptr;
constexpr engine_factory cuda_sliding  = nullptr;
constexpr engine_factory cuda_session  = nullptr;
constexpr engine_factory cuda_rolling  = nullptr;
#endif

// In order of preference; see the table in engine_registry.hpp.
constexpr engine_entry entries[] = {
  {"cpu_tumbling", kind::tumbling, backend::cpu, &cpu_tumbling_supports, &make_cpu_tumbling_engine,
   state_form::tumbling_moments},
  {"cpu_sliding", kind::tumbling, backend::cpu, nullptr, &make_cpu_sliding_engine,
   state_form::panes},
  {"cpu_sliding", kind::sliding, backend::cpu, nullptr, &make_cpu_sliding_engine,
   state_form::panes},
  {"cpu_session", kind::session, backend::cpu, nullptr, &make_cpu_session_engine,
   state_form::session},
  {"cpu_rolling", kind::rolling, backend::cpu, nullptr, &make_cpu_rolling_engine,
   state_form::rolling},
  {"cuda_tumbling", kind::tumbling, backend::cuda, &cuda_tumbling_moments_supports, cuda_tumbling,
   state_form::tumbling_moments},
  {"cuda_sliding", kind::tumbling, backend::cuda, &cuda_supports, cuda_sliding, state_form::panes},
  {"cuda_sliding", kind::sliding, backend::cuda, &cuda_supports, cuda_sliding, state_form::panes},
  {"cuda_session", kind::session, backend::cuda, &cuda_supports, cuda_session, state_form::session},
  {"cuda_rolling", kind::rolling, backend::cuda, &cuda_supports, cuda_rolling, state_form::rolling},
};

}  // namespace

char const* state_tag(state_form form)
{
  switch (form) {
    case state_form::tumbling_moments: return "tumbling-moments";
    case state_form::panes: return "panes";
    case state_form::session: return "session";
    case state_form::rolling: return "rolling";
  }
  throw std::logic_error("unknown engine state form");
}

engine_entries engine_registry() { return {std::begin(entries), std::end(entries)}; }

engine_entry const* find_engine(pipeline_options const& options, backend where, std::string* why)
{
  std::string reason;
  for (engine_entry const& e : entries) {
    if (e.window != options.window.type || e.where != where) { continue; }
    if (e.supports == nullptr || e.supports(options, &reason)) {
      if (why) { why->clear(); }
      return &e;
    }
  }
  if (why) { *why = reason.empty() ? std::string("this window kind") : reason; }
  return nullptr;
}

bool engine_supports(pipeline_options const& options, backend where, std::string* why)
{
  return find_engine(options, where, why) != nullptr;
}

std::unique_ptr<window_engine> make_engine(pipeline_options const& options, backend where)
{
  std::string why;
  engine_entry const* e = find_engine(options, where, &why);
  if (e == nullptr) {
    throw std::logic_error("no engine runs this configuration on this backend: " + why);
  }
  if (e->make == nullptr) {
    throw std::logic_error(std::string("engine ") + e->name + " is not built");
  }
  return e->make(options);
}

state_form engine_state_form(pipeline_options const& options)
{
  engine_entry const* e = find_engine(options, backend::cpu);
  if (e == nullptr) { throw std::logic_error("no CPU engine runs this configuration"); }
  return e->form;
}

char const* engine_state_tag(pipeline_options const& options)
{
  return state_tag(engine_state_form(options));
}

}  // namespace cusense::detail
