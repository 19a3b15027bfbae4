#include <array>
#include <utility>

#include <cusense/error.hpp>
#include <cusense/types.hpp>

namespace cusense {
namespace {
constexpr std::array<std::pair<agg, char const*>, 10> agg_names{{{agg::count, "count"},
                                                                 {agg::nan_count, "nan_count"},
                                                                 {agg::sum, "sum"},
                                                                 {agg::mean, "mean"},
                                                                 {agg::min, "min"},
                                                                 {agg::max, "max"},
                                                                 {agg::var, "var"},
                                                                 {agg::std, "std"},
                                                                 {agg::var_pop, "var_pop"},
                                                                 {agg::std_pop, "std_pop"}}};
}  // namespace

std::string to_string(backend b)
{
  switch (b) {
    case backend::cpu: return "cpu";
    case backend::cuda: return "cuda";
    default: return "auto";
  }
}

backend parse_backend(std::string const& name)
{
  if (name == "cpu") { return backend::cpu; }
  if (name == "cuda") { return backend::cuda; }
  if (name == "auto") { return backend::automatic; }
  throw invalid_argument("unknown backend '" + name + "' (expected 'auto', 'cpu' or 'cuda')");
}

std::string to_string(agg a)
{
  for (auto const& [value, name] : agg_names) {
    if (value == a) { return name; }
  }
  return "?";
}

agg parse_agg(std::string const& name)
{
  std::string known;
  for (auto const& [value, n] : agg_names) {
    if (name == n) { return value; }
    known += known.empty() ? n : std::string(", ") + n;
  }
  throw invalid_argument("unknown aggregation '" + name + "' (known: " + known + ")");
}

}  // namespace cusense
