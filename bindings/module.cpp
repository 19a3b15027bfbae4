// The _core extension: a thin layer over the C++ API. Argument conversion (durations, columns)
// lives in the Python package (python/cusense); option ranges are validated by the library.
// This file registers the exceptions, devices and limits; the pipeline is bound in
// bind_pipeline.cpp, the detectors in bind_detectors.cpp.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cusense/cusense.hpp>
#include <cusense/detail/checkpoint.hpp>

namespace py = pybind11;
using namespace cusense;

void bind_pipeline(py::module_& m);   // bind_pipeline.cpp
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
    for (int a = 0; a < static_cast<int>(agg::quantile); ++a)
      names.push_back(to_string(static_cast<agg>(a)));
    names.push_back("pXX");  // quantiles: p50, p99, p99.9, ...
    return names;
  });
  m.attr("MAX_TIMESTAMP")     = max_timestamp;
  m.attr("MAX_DURATION")      = max_duration;
  m.attr("MAX_CHANNELS")      = max_channels;
  m.attr("MAX_CPU_THREADS")   = max_cpu_threads;
  m.attr("MAX_STAGING_SLOTS") = max_staging_slots;
  m.attr("MAX_DETECTOR_SIZE") = max_detector_size;
  m.attr("MAX_SUBSEQUENCE")   = max_subsequence;
  // Tests only: make checkpoint file writes fail like a full disk (see detail/checkpoint.hpp).
  m.def("_fail_checkpoint_writes_for_testing", &detail::fail_checkpoint_writes_for_testing,
        py::arg("errno"), py::arg("after_bytes") = 0);

  bind_pipeline(m);
  py::register_exception<checkpoint_error>(m, "CheckpointError", PyExc_ValueError);
  bind_detectors(m);
}
