// The _core extension: a thin layer over the C++ API. Argument conversion and friendly
// validation live in the Python package (python/cusense); this layer checks shapes again,
// releases the GIL while the library works and hands results over without copies.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cusense/cusense.hpp>
#include <cusense/detail/checkpoint.hpp>

#include "array_adapters.hpp"

namespace py = pybind11;
using namespace cusense;
using cusense::bindings::carray;
using cusense::bindings::to_numpy;
using cusense::bindings::to_python;

namespace {

template <typename T>
void push(pipeline& p, carray<std::uint32_t> const& keys, carray<std::int64_t> const& ts,
          carray<T> const& values)
{
  auto const n        = static_cast<std::size_t>(keys.size());
  auto const channels = static_cast<std::size_t>(p.options().channels);
  if (keys.ndim() != 1 || ts.ndim() != 1) { throw invalid_argument("keys and timestamps must be 1-D"); }
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

}  // namespace

void bind_detectors(py::module_& m);  // bind_detectors.cpp

PYBIND11_MODULE(_core, m)
{
  m.doc() = "cusense native core";
  py::register_exception<backend_unavailable>(m, "BackendUnavailableError", PyExc_RuntimeError);
  // A cap standing in for memory exhaustion: both a MemoryError and a RuntimeError.
  py::register_exception<capacity_error>(
    m, "CapacityError",
    py::make_tuple(py::handle(PyExc_MemoryError), py::handle(PyExc_RuntimeError)));
  py::register_exception<concurrent_use>(m, "ConcurrentUseError", PyExc_RuntimeError);
  py::register_exception<cuda_error>(m, "CudaError", PyExc_RuntimeError);
  py::register_exception<out_of_memory>(m, "OutOfMemoryError", PyExc_MemoryError);

  py::class_<device_info>(m, "DeviceInfo")
    .def_readonly("ordinal", &device_info::ordinal)
    .def_readonly("name", &device_info::name)
    .def_readonly("compute_major", &device_info::compute_major)
    .def_readonly("compute_minor", &device_info::compute_minor)
    .def_readonly("total_memory", &device_info::total_memory)
    .def("__repr__", [](device_info const& d) {
      return "DeviceInfo(" + std::to_string(d.ordinal) + ", '" + d.name + "', sm_" +
             std::to_string(d.compute_major) + std::to_string(d.compute_minor) + ")";
    });
  m.def("devices", &devices, py::call_guard<py::gil_scoped_release>());
  m.def("cuda_built", &cuda_built);
  m.def("aggregation_names", [] {
    std::vector<std::string> names;
    for (int a = 0; a < static_cast<int>(agg::quantile); ++a) names.push_back(to_string(static_cast<agg>(a)));
    names.push_back("pXX");  // quantiles: p50, p99, p99.9, ...
    return names;
  });
  m.attr("MAX_TIMESTAMP") = max_timestamp;
  m.attr("MAX_DURATION")  = max_duration;
  m.attr("MAX_CHANNELS")  = max_channels;
  m.attr("MAX_CPU_THREADS") = max_cpu_threads;
  m.attr("MAX_STAGING_SLOTS") = max_staging_slots;
  // Tests only: make checkpoint file writes fail like a full disk (see detail/checkpoint.hpp).
  m.def("_fail_checkpoint_writes_for_testing", &detail::fail_checkpoint_writes_for_testing,
        py::arg("errno"), py::arg("after_bytes") = 0);

  py::class_<pipeline_options>(m, "PipelineOptions")
    .def(py::init<>())
    .def_property(
      "window_size", [](pipeline_options const& o) { return o.window.size; },
      [](pipeline_options& o, std::int64_t v) { o.window.size = v; })
    .def_property(
      "window_offset", [](pipeline_options const& o) { return o.window.offset; },
      [](pipeline_options& o, std::int64_t v) { o.window.offset = v; })
    .def_property(
      "aggs",
      [](pipeline_options const& o) { return o.agg_names(); },
      [](pipeline_options& o, std::vector<std::string> const& names) {
        pipeline_options parsed;
        parsed.aggs.clear();
        for (auto const& n : names) parsed.add_agg(n);
        o.aggs      = std::move(parsed.aggs);
        o.quantiles = std::move(parsed.quantiles);
      })
    .def_property(
      "window_kind", [](pipeline_options const& o) { return to_string(o.window.type); },
      [](pipeline_options& o, std::string const& k) {
        using kind = window_spec::kind;
        if (k == "tumbling") { o.window.type = kind::tumbling; }
        else if (k == "sliding") { o.window.type = kind::sliding; }
        else if (k == "session") { o.window.type = kind::session; }
        else if (k == "rolling") { o.window.type = kind::rolling; }
        else { throw invalid_argument("unknown window kind '" + k + "'"); }
      })
    .def_property(
      "window_slide", [](pipeline_options const& o) { return o.window.slide; },
      [](pipeline_options& o, std::int64_t v) { o.window.slide = v; })
    .def_property(
      "session_gap", [](pipeline_options const& o) { return o.window.gap; },
      [](pipeline_options& o, std::int64_t v) { o.window.gap = v; })
    .def_property(
      "rolling_rows", [](pipeline_options const& o) { return o.window.rows; },
      [](pipeline_options& o, std::int64_t v) { o.window.rows = v; })
    .def_property(
      "min_periods", [](pipeline_options const& o) { return o.window.min_periods; },
      [](pipeline_options& o, std::int64_t v) { o.window.min_periods = v; })
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
    .def_readwrite("max_open_windows", &pipeline_options::max_open_windows);

  py::class_<pipeline>(m, "Pipeline")
    .def(py::init<pipeline_options>(), py::call_guard<py::gil_scoped_release>())
    .def("push_f32", &push<float>, py::arg("keys").noconvert(), py::arg("timestamps").noconvert(),
         py::arg("values").noconvert())
    .def("push_f64", &push<double>, py::arg("keys").noconvert(), py::arg("timestamps").noconvert(),
         py::arg("values").noconvert())
    .def("poll", [](pipeline& p) {
      table t;
      { py::gil_scoped_release release; t = p.poll(); }
      return to_python(std::move(t));
    })
    .def("poll_late", [](pipeline& p) {
      table t;
      { py::gil_scoped_release release; t = p.poll_late(); }
      return to_python(std::move(t));
    })
    .def("flush", [](pipeline& p) {
      table t;
      { py::gil_scoped_release release; t = p.flush(); }
      return to_python(std::move(t));
    })
    .def("stats", [](pipeline& p) {
      pipeline_stats s;
      { py::gil_scoped_release release; s = p.stats(); }
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
      d["watermark"]          = s.has_watermark ? py::object(py::int_(s.watermark)) : py::object(py::none());
      // The detector totals come from the same snapshot (a second stats() call could see a
      // later one when another thread is pushing).
      d["records_scored"]         = s.records_scored;
      d["records_score_late"]     = s.records_score_late;
      d["records_score_buffered"] = s.records_score_buffered;
      return d;
    })
    .def_property_readonly("backend", [](pipeline const& p) { return to_string(p.where()); })
    .def_property_readonly("options", [](pipeline const& p) { return p.options(); })
    .def("checkpoint", [](pipeline& p, std::string const& path) { p.checkpoint(path); },
         py::arg("path"), py::call_guard<py::gil_scoped_release>())
    .def_static(
      "restore",
      [](std::string const& path, std::string const& where) {
        backend const b = parse_backend(where);
        py::gil_scoped_release release;
        return pipeline::restore(path, b);
      },
      py::arg("path"), py::arg("backend") = "auto");
  py::register_exception<checkpoint_error>(m, "CheckpointError", PyExc_ValueError);
  bind_detectors(m);
}
