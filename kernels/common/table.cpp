#include <cusense/error.hpp>
#include <cusense/table.hpp>

namespace cusense {

std::size_t column::size() const
{
  return std::visit([](auto const& v) { return v.size(); }, data);
}

column const& table::operator[](std::string const& name) const
{
  for (auto const& c : columns) {
    if (c.name == name) { return c; }
  }
  throw invalid_argument("table has no column '" + name + "'");
}

column& table::operator[](std::string const& name)
{
  return const_cast<column&>(static_cast<table const&>(*this)[name]);
}

std::vector<bool> table::flags(std::string const& name) const
{
  auto const* values = std::get_if<std::vector<std::uint8_t>>(&(*this)[name].data);
  CUSENSE_EXPECTS(values != nullptr, "table::flags: column '" + name + "' is not a flag column");
  return std::vector<bool>(values->begin(), values->end());
}

void table::append(table&& other)
{
  if (columns.empty()) {
    columns = std::move(other.columns);
    return;
  }
  CUSENSE_EXPECTS(other.columns.size() == columns.size(), "table::append: column count differs");
  for (std::size_t i = 0; i < columns.size(); ++i) {
    CUSENSE_EXPECTS(columns[i].name == other.columns[i].name &&
                      columns[i].data.index() == other.columns[i].data.index(),
                    "table::append: column '" + other.columns[i].name + "' does not match");
    std::visit(
      [&](auto& dst) {
        auto& src = std::get<std::decay_t<decltype(dst)>>(other.columns[i].data);
        dst.insert(dst.end(), src.begin(), src.end());
      },
      columns[i].data);
  }
}

}  // namespace cusense
