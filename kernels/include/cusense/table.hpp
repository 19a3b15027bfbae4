#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
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
/// length; their order is part of the output contract. A table is a plain value in host memory
/// (no device memory, no reference to the pipeline that made it): copy, move and read it from
/// any thread; like std::vector, concurrent modification needs the caller's synchronisation.
class table {
 public:
  std::vector<column> columns;

  std::size_t num_rows() const { return columns.empty() ? 0 : columns.front().size(); }
  /// The column called `name`; throws cusense::invalid_argument if there is none.
  column const& operator[](std::string const& name) const;
  column& operator[](std::string const& name);
  /// The values of column `name` as std::vector<T>: uint32_t for key, int64_t for times
  /// (ns since the epoch) and counts, double for statistics, uint8_t for booleans. Throws
  /// cusense::invalid_argument when there is no such column and std::bad_variant_access when T
  /// is not its type.
  template <typename T>
  std::vector<T> const& get(std::string const& name) const
  {
    // Without this, get<bool> fails deep inside std::variant with pages of template errors.
    static_assert(!std::is_same_v<T, bool>,
                  "flag columns (is_update, late, back, is_anomaly_*) hold std::uint8_t: use "
                  "table::flags(name) for std::vector<bool>, or get<std::uint8_t>(name)");
    return std::get<std::vector<T>>((*this)[name].data);
  }
  /// A flag column (is_update, late, back, is_anomaly_*) as bools. Throws
  /// cusense::invalid_argument when there is no such column or it is not a flag column.
  std::vector<bool> flags(std::string const& name) const;
  /// Appends the rows of `other`, which must have the same columns (an empty table adopts them).
  void append(table&& other);
};

}  // namespace cusense
