// Detector bindings: DetectorSpec and the one-shot score(). The pipeline's detector options and
// outputs (PipelineOptions.detectors, Pipeline.poll_scores, ...) are bound in bind_pipeline.cpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cusense/cusense.hpp>

#include "array_adapters.hpp"

namespace py = pybind11;
using namespace cusense;
using cusense::bindings::carray;
using cusense::bindings::to_numpy;
using cusense::bindings::to_python;

namespace {

detector_kind parse_kind(std::string const& name)
{
  for (auto k : {detector_kind::ewma, detector_kind::rolling_z, detector_kind::rolling_mad,
                 detector_kind::knn_discord, detector_kind::silence, detector_kind::multiscale_z,
                 detector_kind::joint_z, detector_kind::likelihood}) {
    if (to_string(k) == name) return k;
  }
  throw invalid_argument("unknown detector kind '" + name +
                         "' (ewma, rolling_z, rolling_mad, knn_discord, multiscale_z, joint_z, "
                         "likelihood, silence)");
}

}  // namespace

void bind_detectors(py::module_& m)
{
  py::class_<detector_spec>(m, "DetectorSpec")
    .def(py::init<>())
    .def_property(
      "kind", [](detector_spec const& s) { return to_string(s.kind); },
      [](detector_spec& s, std::string const& k) { s.kind = parse_kind(k); })
    .def_readwrite("name", &detector_spec::name)
    .def_readwrite("threshold", &detector_spec::threshold)
    .def_readwrite("channel", &detector_spec::channel)
    .def_readwrite("alpha", &detector_spec::alpha)
    .def_readwrite("window", &detector_spec::window)
    .def_readwrite("min_count", &detector_spec::min_count)
    .def_readwrite("L", &detector_spec::L)
    .def_readwrite("H", &detector_spec::H)
    .def_readwrite("min_candidates", &detector_spec::min_candidates)
    .def_readwrite("H2", &detector_spec::H2)
    .def_readwrite("K", &detector_spec::K)
    .def_readwrite("timeout", &detector_spec::timeout)
    .def_readwrite("beta", &detector_spec::beta)
    .def_readwrite("gamma", &detector_spec::gamma)
    .def_readwrite("trend", &detector_spec::trend)
    .def_readwrite("clip", &detector_spec::clip)
    .def_readwrite("freeze", &detector_spec::freeze)
    .def_readwrite("channels", &detector_spec::channels)
    .def_readwrite("tod_weight", &detector_spec::tod_weight)
    .def_property(
      "base", [](detector_spec const& s) { return to_string(s.base); },
      [](detector_spec& s, std::string const& k) { s.base = parse_kind(k); })
    .def_readwrite("scale", &detector_spec::scale)
    .def_readwrite("short_window", &detector_spec::short_window)
    .def_readwrite("long_window", &detector_spec::long_window)
    .def_readwrite("reestimate", &detector_spec::reestimate)
    .def_readwrite("learn", &detector_spec::learn)
    .def_readwrite("warmup", &detector_spec::warmup)
    .def_readwrite("rest", &detector_spec::rest)
    .def_readwrite("spatial", &detector_spec::spatial)
    .def_property_readonly("column_name", &detector_spec::column_name)
    .def("validate", [](detector_spec const& s, int channels) { validate(s, channels); },
         py::arg("channels") = 1);

  m.def(
    "score",
    [](carray<std::uint32_t> const& keys,
       carray<std::int64_t> const& ts,
       carray<double> const& values, detector_spec const& spec,
       std::string const& where, bool has_keys) {
      auto const n      = static_cast<std::size_t>(ts.size());
      int const channels = values.ndim() == 2 ? static_cast<int>(values.shape(1)) : 1;
      if (ts.ndim() != 1 || values.ndim() < 1 || values.ndim() > 2 || channels < 1 ||
          static_cast<std::size_t>(values.shape(0)) != n ||
          (has_keys && static_cast<std::size_t>(keys.size()) != n)) {
        throw invalid_argument(
          "score: timestamps and keys must be 1-D, values (n,) or (n, channels), of equal length");
      }
      backend const b            = parse_backend(where);
      std::uint32_t const* k     = has_keys ? keys.data() : nullptr;
      std::int64_t const* t      = ts.data();
      double const* v            = values.data();
      std::vector<double> scores;
      {
        py::gil_scoped_release release;
        scores = score(k, t, v, n, channels, spec, b);
      }
      return to_numpy(std::move(scores));
    },
    py::arg("keys"), py::arg("timestamps"), py::arg("values"), py::arg("detector"),
    py::arg("backend"), py::arg("has_keys"));
}
