// cusense::validate(window_spec): the one check of the window limits, shared by the pipeline
// and the Python window classes; errors name the parameter.
#include <gtest/gtest.h>

#include <string>

#include <cusense/cusense.hpp>

namespace {

using namespace cusense;

std::string error_of(window_spec const& w)
{
  try {
    validate(w);
  } catch (invalid_argument const& e) {
    return e.what();
  }
  return "";
}

TEST(window_spec, limits_are_checked_with_the_parameter_named)
{
  EXPECT_EQ(error_of(window_spec::tumbling(1)), "");
  EXPECT_EQ(error_of(window_spec::tumbling(max_duration, -max_duration)), "");
  EXPECT_EQ(error_of(window_spec::sliding(10, 10)), "");
  EXPECT_EQ(error_of(window_spec::sliding(max_windows_per_record, 1)), "");
  EXPECT_EQ(error_of(window_spec::session(max_duration)), "");
  EXPECT_EQ(error_of(window_spec::rolling(max_rolling_rows, 0)), "");
  EXPECT_EQ(error_of(window_spec::rolling(3)), "");  // min_periods -1: rows

  EXPECT_NE(error_of(window_spec::tumbling(0)).find("window size must be positive"),
            std::string::npos);
  EXPECT_NE(error_of(window_spec::tumbling(max_duration + 1)).find("window size"),
            std::string::npos);
  EXPECT_NE(error_of(window_spec::tumbling(10, max_duration + 1)).find("window offset"),
            std::string::npos);
  EXPECT_NE(error_of(window_spec::sliding(10, 11)).find("window slide"), std::string::npos);
  EXPECT_NE(error_of(window_spec::sliding(10, 0)).find("window slide"), std::string::npos);
  EXPECT_NE(error_of(window_spec::sliding(max_windows_per_record + 1, 1)).find("ratio"),
            std::string::npos);
  EXPECT_NE(error_of(window_spec::session(0)).find("session gap"), std::string::npos);
  EXPECT_NE(error_of(window_spec::session(max_duration + 1)).find("session gap"),
            std::string::npos);
  EXPECT_NE(error_of(window_spec::rolling(0)).find("rolling window n"), std::string::npos);
  EXPECT_NE(error_of(window_spec::rolling(max_rolling_rows + 1)).find("rolling window n"),
            std::string::npos);
  EXPECT_NE(error_of(window_spec::rolling(3, 4)).find("min_periods"), std::string::npos);
  EXPECT_NE(error_of(window_spec::rolling(3, -2)).find("min_periods"), std::string::npos);
}

TEST(window_spec, the_pipeline_applies_the_same_check)
{
  pipeline_options o;
  o.window = window_spec::sliding(10, 20);
  try {
    pipeline p(o);
    FAIL() << "accepted";
  } catch (invalid_argument const& e) {
    EXPECT_EQ(std::string(e.what()), error_of(o.window));
  }
}

}  // namespace
