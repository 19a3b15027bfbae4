#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace cusense {

/// One named column of a result table.
struct column {
  using data_type = std::variant<std::vector<std::uint32_t>,
                                 std::vector<std::int64_t>,
                                 std::vector<double>,
                                 std::vector<std::uint8_t>>;  // booleans
  std::string name;
  data_type data;

  std::size_t size() const;
};

/// A column-oriented result: emitted windows, late records, scores. Columns all have the same
/// length; their order is part of the output contract.
class table {
 public:
  std::vector<column> columns;

  std::size_t num_rows() const { return columns.empty() ? 0 : columns.front().size(); }
  /// The column called `name`; throws cusense::invalid_argument if there is none.
  column const& operator[](std::string const& name) const;
  column& operator[](std::string const& name);
  template <typename T>
  std::vector<T> const& get(std::string const& name) const
  {
    return std::get<std::vector<T>>((*this)[name].data);
  }
  /// Appends the rows of `other`, which must have the same columns (an empty table adopts them).
  void append(table&& other);
};

}  // namespace cusense
