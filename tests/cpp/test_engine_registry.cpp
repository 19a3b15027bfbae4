// The engine registry: which engine runs which configuration, on which backend, and the
// checkpoint form of its state.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <cusense/cusense.hpp>
#include <cusense/detail/engine_registry.hpp>

namespace {

using namespace cusense;
using detail::state_form;

std::vector<pipeline_options> configurations()
{
  std::vector<pipeline_options> all;
  std::vector<window_spec> const windows = {window_spec::tumbling(10), window_spec::sliding(10, 5),
                                            window_spec::sliding(10, 10), window_spec::session(10),
                                            window_spec::rolling(3)};
  std::vector<std::vector<char const*>> const aggs = {
    {"count"}, {"mean", "std"}, {"first"}, {"argmax_ts", "sum"}, {"p50"}, {"min", "p99"}};
  for (window_spec const& w : windows) {
    for (auto const& names : aggs) {
      for (std::int64_t lateness : {0, 5}) {
        if (lateness != 0 && w.type == window_spec::kind::rolling) { continue; }
        pipeline_options o;
        o.window           = w;
        o.allowed_lateness = lateness;
        for (char const* a : names) o.add_agg(a);
        all.push_back(o);
      }
    }
  }
  return all;
}

bool has_quantile(pipeline_options const& o)
{
  for (agg a : o.aggs) {
    if (a == agg::quantile) { return true; }
  }
  return false;
}

TEST(engine_registry, cpu_runs_every_configuration)
{
  for (pipeline_options const& o : configurations()) {
    std::string why               = "unchanged";
    detail::engine_entry const* e = detail::find_engine(o, backend::cpu, &why);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(why, "");
    EXPECT_EQ(e->where, backend::cpu);
    EXPECT_EQ(e->window, o.window.type);
    EXPECT_NE(e->make, nullptr);
  }
}

TEST(engine_registry, cuda_runs_everything_but_quantiles_in_the_cpu_state_form)
{
  for (pipeline_options const& o : configurations()) {
    std::string why;
    detail::engine_entry const* e = detail::find_engine(o, backend::cuda, &why);
    if (has_quantile(o)) {
      EXPECT_EQ(e, nullptr);
      EXPECT_EQ(why.rfind("aggregation 'p", 0), 0u) << why;
      continue;
    }
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->where, backend::cuda);
    // A checkpoint taken on one backend restores on the other.
    EXPECT_EQ(e->form, detail::engine_state_form(o));
    EXPECT_EQ(e->make != nullptr, cuda_built());
  }
}

TEST(engine_registry, routes_and_state_tags)
{
  pipeline_options o;
  o.window = window_spec::tumbling(10);
  o.add_agg("mean");
  EXPECT_STREQ(detail::find_engine(o, backend::cpu)->name, "cpu_tumbling");
  EXPECT_STREQ(detail::find_engine(o, backend::cuda)->name, "cuda_tumbling");
  EXPECT_STREQ(detail::engine_state_tag(o), "tumbling-moments");
  o.allowed_lateness = 5;  // the sliding engine runs it, as slide == size
  EXPECT_STREQ(detail::find_engine(o, backend::cpu)->name, "cpu_sliding");
  EXPECT_STREQ(detail::engine_state_tag(o), "panes");
  o.allowed_lateness = 0;
  o.add_agg("last");
  EXPECT_STREQ(detail::find_engine(o, backend::cpu)->name, "cpu_sliding");
  EXPECT_STREQ(detail::find_engine(o, backend::cuda)->name, "cuda_sliding");
  EXPECT_STREQ(detail::engine_state_tag(o), "panes");
  o.window = window_spec::session(10);
  EXPECT_STREQ(detail::find_engine(o, backend::cpu)->name, "cpu_session");
  EXPECT_STREQ(detail::engine_state_tag(o), "session");
  o.window = window_spec::rolling(4);
  EXPECT_STREQ(detail::find_engine(o, backend::cuda)->name, "cuda_rolling");
  EXPECT_STREQ(detail::engine_state_tag(o), "rolling");
  EXPECT_STREQ(detail::state_tag(state_form::tumbling_moments), "tumbling-moments");
}

}  // namespace
