#pragma once
// Conversions shared by the binding sources: library vectors and tables to numpy arrays and
// dicts without copies (the array owns the moved vector), and C-contiguous input arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <cusense/cusense.hpp>

namespace cusense::bindings {

namespace py = pybind11;

/// A numpy array owning `v` (moved, not copied).
template <typename T>
py::array to_numpy(std::vector<T>&& v)
{
  auto* owner = new std::vector<T>(std::move(v));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(static_cast<py::ssize_t>(owner->size()), owner->data(), free_when_done);
}

/// A dict of column name -> numpy array (uint8 columns as bool), owning the columns.
inline py::dict to_python(table&& t)
{
  py::dict out;
  for (auto& c : t.columns) {
    out[py::str(c.name)] = std::visit(
      [](auto&& v) -> py::object {
        using vec = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<vec, std::vector<std::uint8_t>>) {
          return to_numpy(std::move(v)).attr("view")("bool");
        } else {
          return to_numpy(std::move(v));
        }
      },
      c.data);
  }
  return out;
}

/// A C-contiguous numpy array argument (pybind11 converts other layouts).
template <typename T>
using carray = py::array_t<T, py::array::c_style>;

}  // namespace cusense::bindings
