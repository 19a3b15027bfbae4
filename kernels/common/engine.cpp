#include <stdexcept>

#include <cusense/detail/engine.hpp>

namespace cusense::detail {

void window_engine::push_external(record_batch const&, std::int64_t const*, watermark_steps const&)
{
  throw std::logic_error("this window engine does not take external watermarks");
}

void window_engine::merge_state(state_reader&, key_filter const&, bool)
{
  throw std::logic_error("this window engine cannot merge checkpoint state");
}

}  // namespace cusense::detail
