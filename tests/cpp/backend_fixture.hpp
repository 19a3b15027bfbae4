#pragma once
// Typed-test plumbing: every test body runs once per backend; CUDA cases skip with the reason.
#include <gtest/gtest.h>

#include <cusense/backend.hpp>

namespace cusense::test {

struct cpu_backend {
  static constexpr backend value = backend::cpu;
  static constexpr char const* name = "cpu";
};
struct cuda_backend {
  static constexpr backend value = backend::cuda;
  static constexpr char const* name = "cuda";
};

using backends = ::testing::Types<cpu_backend, cuda_backend>;

struct backend_names {
  template <typename T>
  static std::string GetName(int) { return T::name; }
};

template <typename Backend>
class backend_test : public ::testing::Test {
 protected:
  void SetUp() override
  {
    if constexpr (Backend::value == backend::cuda) {
      if (!cuda_built()) { GTEST_SKIP() << "CUDA backend not built"; }
      if (!cuda_available()) { GTEST_SKIP() << "no usable CUDA device"; }
    }
  }
  static constexpr backend where = Backend::value;
};

}  // namespace cusense::test
