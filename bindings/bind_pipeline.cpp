// Pipeline bindings: WindowSpec, PipelineOptions and Pipeline (windows, detectors,
// checkpoints). A thin layer over the C++ API: window specs are bound as they are and validated
// by the library (cusense::validate); this layer checks array shapes, releases the GIL while
// the library works and hands results over without copies.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cusense/cusense.hpp>

#include "array_adapters.hpp"

namespace py = pybind11;
using namespace cusense;
using cusense::bindings::carray;
using cusense::bindings::to_python;

namespace {

template <typename T>
void push(pipeline& p, carray<std::uint32_t> const& keys, carray<std::int64_t> const& ts,
          carray<T> const& values)
{
  auto const n        = static_cast<std::size_t>(keys.size());
  auto const channels = static_cast<std::size_t>(p.options().channels);
  if (keys.ndim() != 1 || ts.ndim() != 1) {
    throw invalid_argument("keys and timestamps must be 1-D");
  }
  if (static_cast<std::size_t>(ts.size()) != n) {
    throw invalid_argument("length mismatch: " + std::to_string(n) + " keys but " +
                           std::to_string(ts.size()) + " timestamps");
  }
  if (static_cast<std::size_t>(values.size()) != n * channels) {
    throw invalid_argument("length mismatch: " + std::to_string(n) + " keys but " +
                           std::to_string(values.size()) + " values for " +
                           std::to_string(channels) + " channel(s)");
  }
  std::uint32_t const* k = keys.data();
  std::int64_t const* t  = ts.data();
  T const* v             = values.data();
  py::gil_scoped_release release;
  p.push(k, t, v, n);
}

/// push under external watermarks: positions and the steps (at, watermark, position) as int64
/// arrays.
template <typename T>
void push_external(pipeline& p, carray<std::uint32_t> const& keys, carray<std::int64_t> const& ts,
                   carray<T> const& values, carray<std::int64_t> const& positions,
                   carray<std::int64_t> const& at, carray<std::int64_t> const& watermark,
                   carray<std::int64_t> const& position)
{
  auto const n        = static_cast<std::size_t>(keys.size());
  auto const channels = static_cast<std::size_t>(p.options().channels);
  if (keys.ndim() != 1 || ts.ndim() != 1 || positions.ndim() != 1) {
    throw invalid_argument("keys, timestamps and positions must be 1-D");
  }
  if (static_cast<std::size_t>(ts.size()) != n || static_cast<std::size_t>(positions.size()) != n ||
      static_cast<std::size_t>(values.size()) != n * channels) {
    throw invalid_argument("length mismatch: " + std::to_string(n) + " keys, " +
                           std::to_string(ts.size()) + " timestamps, " +
                           std::to_string(positions.size()) + " positions, " +
                           std::to_string(values.size()) + " values for " +
                           std::to_string(channels) + " channel(s)");
  }
  if (at.size() != watermark.size() || at.size() != position.size()) {
    throw invalid_argument("watermark steps: at, watermark and position must have one length");
  }
  watermark_steps steps;
  steps.at        = at.data();
  steps.watermark = watermark.data();
  steps.position  = position.data();
  steps.count     = static_cast<std::size_t>(at.size());
  std::uint32_t const* k = keys.data();
  std::int64_t const* t  = ts.data();
  T const* v             = values.data();
  std::int64_t const* q  = positions.data();
  py::gil_scoped_release release;
  p.push(k, t, v, n, q, steps);
}

/// A window spec made by `make`, checked (ValueError naming the parameter when out of range).
template <typename... A>
window_spec checked(window_spec (*make)(A...), A... args)
{
  window_spec const w = make(args...);
  validate(w);
  return w;
}

std::string repr(window_spec const& w)
{
  auto const i = [](std::int64_t v) { return std::to_string(v); };
  switch (w.type) {
    case window_spec::kind::tumbling:
      return "WindowSpec.tumbling(" + i(w.size) + ", " + i(w.offset) + ")";
    case window_spec::kind::sliding:
      return "WindowSpec.sliding(" + i(w.size) + ", " + i(w.slide) + ", " + i(w.offset) + ")";
    case window_spec::kind::session: return "WindowSpec.session(" + i(w.gap) + ")";
    case window_spec::kind::rolling:
      return "WindowSpec.rolling(" + i(w.rows) + ", " + i(w.min_periods) + ")";
  }
  return "WindowSpec(?)";
}

}  // namespace

void bind_pipeline(py::module_& m)
{
  using i64 = std::int64_t;
  py::class_<window_spec>(m, "WindowSpec")
    .def_static(
      "tumbling",
      [](i64 size, i64 offset) { return checked(&window_spec::tumbling, size, offset); },
      py::arg("size"), py::arg("offset") = 0)
    .def_static(
      "sliding",
      [](i64 size, i64 slide, i64 offset) {
        return checked(&window_spec::sliding, size, slide, offset);
      },
      py::arg("size"), py::arg("slide"), py::arg("offset") = 0)
    .def_static(
      "session", [](i64 gap) { return checked(&window_spec::session, gap); }, py::arg("gap"))
    .def_static(
      "rolling",
      [](i64 rows, i64 min_periods) { return checked(&window_spec::rolling, rows, min_periods); },
      py::arg("rows"), py::arg("min_periods") = -1)
    .def_property_readonly("kind", [](window_spec const& w) { return to_string(w.type); })
    .def_readonly("size", &window_spec::size)
    .def_readonly("offset", &window_spec::offset)
    .def_readonly("slide", &window_spec::slide)
    .def_readonly("gap", &window_spec::gap)
    .def_readonly("rows", &window_spec::rows)
    .def_readonly("min_periods", &window_spec::min_periods)
    .def("__repr__", &repr);

  py::class_<pipeline_options>(m, "PipelineOptions")
    .def(py::init<>())
    .def_readwrite("window", &pipeline_options::window)
    .def_readwrite("windowed", &pipeline_options::windowed)
    .def_readwrite("external_watermark", &pipeline_options::external_watermark)
    .def_property(
      "aggs", [](pipeline_options const& o) { return o.agg_names(); },
      [](pipeline_options& o, std::vector<std::string> const& names) {
        pipeline_options parsed;
        parsed.aggs.clear();
        for (auto const& n : names) parsed.add_agg(n);
        o.aggs      = std::move(parsed.aggs);
        o.quantiles = std::move(parsed.quantiles);
      })
    .def_readwrite("allowed_lateness", &pipeline_options::allowed_lateness)
    .def_readwrite("quantile_accuracy", &pipeline_options::quantile_accuracy)
    .def_readwrite("max_out_of_orderness", &pipeline_options::max_out_of_orderness)
    .def_property(
      "backend", [](pipeline_options const& o) { return to_string(o.where); },
      [](pipeline_options& o, std::string const& b) { o.where = parse_backend(b); })
    .def_readwrite("channels", &pipeline_options::channels)
    .def_property(
      "nan_policy", [](pipeline_options const& o) { return to_string(o.on_nan); },
      [](pipeline_options& o, std::string const& p) { o.on_nan = parse_nan_policy(p); })
    .def_readwrite("channel_names", &pipeline_options::channel_names)
    .def_readwrite("staging_records", &pipeline_options::staging_records)
    .def_readwrite("staging_slots", &pipeline_options::staging_slots)
    .def_readwrite("cpu_threads", &pipeline_options::cpu_threads)
    .def_readwrite("max_open_windows", &pipeline_options::max_open_windows)
    .def_readwrite("max_detector_keys", &pipeline_options::max_detector_keys)
    .def_readwrite("memory_budget_bytes", &pipeline_options::memory_budget_bytes)
    .def_readwrite("key_ttl", &pipeline_options::key_ttl)
    .def_readwrite("detectors", &pipeline_options::detectors);

  m.def(
    "partition_of",
    [](carray<std::uint32_t> const& keys, std::uint32_t parts) {
      if (parts < 1) { throw invalid_argument("partition_of: parts must be >= 1"); }
      py::array_t<std::uint32_t> out(keys.size());
      std::uint32_t const* k = keys.data();
      std::uint32_t* o       = out.mutable_data();
      for (py::ssize_t i = 0; i < keys.size(); ++i) o[i] = partition_of(k[i], parts);
      return out;
    },
    py::arg("keys").noconvert(), py::arg("parts"));

  py::class_<pipeline>(m, "Pipeline")
    .def(py::init<pipeline_options>(), py::call_guard<py::gil_scoped_release>())
    .def("push_f32", &push<float>, py::arg("keys").noconvert(), py::arg("timestamps").noconvert(),
         py::arg("values").noconvert())
    .def("push_f64", &push<double>, py::arg("keys").noconvert(), py::arg("timestamps").noconvert(),
         py::arg("values").noconvert())
    .def("push_external_f32", &push_external<float>, py::arg("keys").noconvert(),
         py::arg("timestamps").noconvert(), py::arg("values").noconvert(),
         py::arg("positions").noconvert(), py::arg("at").noconvert(),
         py::arg("watermark").noconvert(), py::arg("position").noconvert())
    .def("push_external_f64", &push_external<double>, py::arg("keys").noconvert(),
         py::arg("timestamps").noconvert(), py::arg("values").noconvert(),
         py::arg("positions").noconvert(), py::arg("at").noconvert(),
         py::arg("watermark").noconvert(), py::arg("position").noconvert())
    .def("poll",
         [](pipeline& p) {
           table t;
           {
             py::gil_scoped_release release;
             t = p.poll();
           }
           return to_python(std::move(t));
         })
    .def("poll_late",
         [](pipeline& p) {
           table t;
           {
             py::gil_scoped_release release;
             t = p.poll_late();
           }
           return to_python(std::move(t));
         })
    .def("flush",
         [](pipeline& p) {
           table t;
           {
             py::gil_scoped_release release;
             t = p.flush();
           }
           return to_python(std::move(t));
         })
    .def("stats",
         [](pipeline& p) {
           pipeline_stats s;
           {
             py::gil_scoped_release release;
             s = p.stats();
           }
           py::dict d;
           d["records_pushed"]     = s.records_pushed;
           d["records_aggregated"] = s.records_aggregated;
           d["records_late"]       = s.records_late;
           d["records_rejected"]   = s.records_rejected;
           d["nan_values"]         = s.nan_values;
           d["windows_emitted"]    = s.windows_emitted;
           d["open_windows"]       = s.open_windows;
           d["open_keys"]          = s.open_keys;
           d["state_bytes"]        = s.state_bytes;
           d["watermark"] =
             s.has_watermark ? py::object(py::int_(s.watermark)) : py::object(py::none());
           // The detector totals come from the same snapshot (a second stats() call could see a
           // later one when another thread is pushing).
           d["records_scored"]         = s.records_scored;
           d["records_score_late"]     = s.records_score_late;
           d["records_score_buffered"] = s.records_score_buffered;
           return d;
         })
    .def_property_readonly("backend", [](pipeline const& p) { return to_string(p.where()); })
    .def_property_readonly("options", [](pipeline const& p) { return p.options(); })
    .def(
      "checkpoint", [](pipeline& p, std::string const& path) { p.checkpoint(path); },
      py::arg("path"), py::call_guard<py::gil_scoped_release>())
    .def_static(
      "restore",
      [](std::string const& path, std::string const& where) {
        backend const b = parse_backend(where);
        py::gil_scoped_release release;
        return pipeline::restore(path, b);
      },
      py::arg("path"), py::arg("backend") = "auto")
    .def_static("rekey_checkpoints", &pipeline::rekey_checkpoints, py::arg("inputs"),
                py::arg("outputs"), py::call_guard<py::gil_scoped_release>())
    .def("poll_scores",
         [](pipeline& p) {
           table t;
           {
             py::gil_scoped_release release;
             t = p.poll_scores();
           }
           return to_python(std::move(t));
         })
    .def("poll_silence",
         [](pipeline& p) {
           table t;
           {
             py::gil_scoped_release release;
             t = p.poll_silence();
           }
           return to_python(std::move(t));
         })
    .def("detector_stats", [](pipeline& p) {
      pipeline_stats s;
      {
        py::gil_scoped_release release;
        s = p.stats();
      }
      py::dict d;
      d["records_scored"]         = s.records_scored;
      d["records_score_late"]     = s.records_score_late;
      d["records_score_buffered"] = s.records_score_buffered;
      return d;
    });
}
