#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include <cusense/error.hpp>
#include <cusense/types.hpp>

namespace cusense {
namespace {
constexpr std::array<std::pair<agg, char const*>, 15> agg_names{{{agg::count, "count"},
                                                                 {agg::nan_count, "nan_count"},
                                                                 {agg::sum, "sum"},
                                                                 {agg::mean, "mean"},
                                                                 {agg::min, "min"},
                                                                 {agg::max, "max"},
                                                                 {agg::var, "var"},
                                                                 {agg::std, "std"},
                                                                 {agg::var_pop, "var_pop"},
                                                                 {agg::std_pop, "std_pop"},
                                                                 {agg::first, "first"},
                                                                 {agg::last, "last"},
                                                                 {agg::argmin_ts, "argmin_ts"},
                                                                 {agg::argmax_ts, "argmax_ts"},
                                                                 {agg::quantile, "p"}}};
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

std::string to_string(nan_policy p) { return p == nan_policy::raise ? "raise" : "skip"; }

nan_policy parse_nan_policy(std::string const& name)
{
  if (name == "skip") { return nan_policy::skip; }
  if (name == "raise") { return nan_policy::raise; }
  throw invalid_argument("unknown nan_policy '" + name + "' (expected 'skip' or 'raise')");
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
    if (value == agg::quantile) { continue; }
    if (name == n) { return value; }
    known += known.empty() ? n : std::string(", ") + n;
  }
  if (name.size() > 1 && name[0] == 'p' && name[1] >= '0' && name[1] <= '9') {
    parse_quantile(name);
    return agg::quantile;
  }
  throw invalid_argument("unknown aggregation '" + name + "' (known: " + known +
                         ", and quantiles pXX such as p50, p99, p99.9)");
}

double parse_quantile(std::string const& name)
{
  bool ok = name.size() > 1 && name[0] == 'p';
  for (std::size_t i = 1; ok && i < name.size(); ++i) {
    ok = (name[i] >= '0' && name[i] <= '9') || (name[i] == '.' && i > 1);
  }
  double pct = 0;
  if (ok) {
    char* end = nullptr;
    pct       = std::strtod(name.c_str() + 1, &end);
    ok        = end && *end == '\0' && pct >= 0 && pct <= 100;
  }
  if (!ok) {
    throw invalid_argument("bad quantile aggregation '" + name +
                           "' (expected pXX with XX a percentage in [0, 100], e.g. p50, p99.9)");
  }
  return pct / 100.0;
}

std::string quantile_name(double q)
{
  char buf[64];
  std::snprintf(buf, sizeof buf, "p%.10g", q * 100.0);
  return buf;
}

std::string to_string(window_spec::kind k)
{
  switch (k) {
    case window_spec::kind::tumbling: return "tumbling";
    case window_spec::kind::sliding: return "sliding";
    case window_spec::kind::session: return "session";
    case window_spec::kind::rolling: return "rolling";
  }
  return "?";
}

void validate(window_spec const& w)
{
  using kind = window_spec::kind;
  auto ns    = [](std::int64_t v) { return std::to_string(v) + " ns"; };
  if (w.type == kind::tumbling || w.type == kind::sliding) {
    CUSENSE_EXPECTS(w.size > 0, "window size must be positive, got " + ns(w.size));
    CUSENSE_EXPECTS(w.size <= max_duration,
                    "window size must lie in [1, 2**61] ns (about 73 years), got " + ns(w.size));
    CUSENSE_EXPECTS(w.offset >= -max_duration && w.offset <= max_duration,
                    "window offset must lie within +-2**61 ns (about 73 years), got " + ns(w.offset));
  }
  if (w.type == kind::sliding) {
    CUSENSE_EXPECTS(w.slide > 0 && w.slide <= w.size, "window slide must lie in (0, size], got slide " +
                                                        ns(w.slide) + " for size " + ns(w.size));
    // Each record lies in ceil(size / slide) windows: bound the fan-out so one record cannot
    // demand an unbounded number of window emissions.
    CUSENSE_EXPECTS((w.size - 1) / w.slide + 1 <= max_windows_per_record,
                    "sliding window size/slide ratio too large: each record would lie in " +
                      std::to_string((w.size - 1) / w.slide + 1) + " windows (at most " +
                      std::to_string(max_windows_per_record) + ")");
  }
  if (w.type == kind::session) {
    CUSENSE_EXPECTS(w.gap > 0, "session gap must be positive, got " + ns(w.gap));
    CUSENSE_EXPECTS(w.gap <= max_duration,
                    "session gap must lie in [1, 2**61] ns (about 73 years), got " + ns(w.gap));
  }
  if (w.type == kind::rolling) {
    CUSENSE_EXPECTS(w.rows > 0 && w.rows <= max_rolling_rows,
                    "rolling window n (rows) must lie in [1, 2**24], got " + std::to_string(w.rows));
    CUSENSE_EXPECTS(w.min_periods >= -1 && w.min_periods <= w.rows,
                    "rolling window min_periods must lie in [0, n], got " + std::to_string(w.min_periods) +
                      " for n " + std::to_string(w.rows));
  }
}

void pipeline_options::add_agg(std::string const& name)
{
  agg const a = parse_agg(name);
  if (a == agg::quantile) { quantiles.push_back(parse_quantile(name)); }
  aggs.push_back(a);
}

std::vector<std::string> pipeline_options::agg_names() const
{
  std::vector<std::string> names;
  std::size_t qi = 0;
  for (agg a : aggs) {
    if (a == agg::quantile) {
      names.push_back(qi < quantiles.size() ? quantile_name(quantiles[qi]) : "p?");
      ++qi;
    } else {
      names.push_back(to_string(a));
    }
  }
  return names;
}

}  // namespace cusense
