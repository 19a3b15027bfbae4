#pragma once
// Internal: a map from uint32 keys to uint32 slots (open addressing, linear probing, backward
// shift deletion) whose memory is reserved ahead: once reserve(n) returned, inserting up to n
// keys in all never allocates, so a detector push can apply a batch that was planned and
// reserved without any allocation that could fail half-way. Not part of the public API.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace cusense::detail {

class key_slot_map {
 public:
  static constexpr std::uint32_t none = 0xffffffffu;

  std::size_t size() const { return size_; }
  /// Bytes of table per key held at the largest load (one half).
  static constexpr std::size_t bytes_per_key = 2 * 2 * sizeof(std::uint32_t);

  /// The slot of `key`, or none.
  std::uint32_t find(std::uint32_t key) const
  {
    if (size_ == 0) { return none; }
    for (std::size_t i = home(key);; i = (i + 1) & mask_) {
      entry const& e = table_[i];
      if (e.slot == none) { return none; }
      if (e.key == key) { return e.slot; }
    }
  }

  /// Room for `count` keys in all. May allocate (and throw std::bad_alloc, leaving the map as
  /// it was); afterwards set() of new keys up to `count` keys never allocates.
  void reserve(std::size_t count)
  {
    std::size_t want = 16;
    while (want < 2 * count) { want *= 2; }
    if (want <= table_.size()) { return; }
    std::vector<entry> next(want, entry{0, none});
    std::swap(table_, next);  // `next` holds the old entries; nothing can throw from here
    mask_ = want - 1;
    bits_ = 0;
    while ((std::size_t{1} << bits_) < want) { ++bits_; }
    for (entry const& e : next) {
      if (e.slot != none) { place(e); }
    }
  }

  /// Room for one more key (doubling the table when full). May allocate.
  void make_room_for_one()
  {
    if (2 * (size_ + 1) > table_.size()) { reserve(2 * (size_ + 1)); }
  }

  /// Sets the slot of `key` (inserting it if new: reserve first). Never allocates.
  void set(std::uint32_t key, std::uint32_t slot) noexcept
  {
    for (std::size_t i = home(key);; i = (i + 1) & mask_) {
      entry& e = table_[i];
      if (e.slot == none) {
        e = entry{key, slot};
        ++size_;
        return;
      }
      if (e.key == key) {
        e.slot = slot;
        return;
      }
    }
  }

  /// Removes `key` if present. Never allocates.
  void erase(std::uint32_t key) noexcept
  {
    if (size_ == 0) { return; }
    std::size_t i = home(key);
    for (;; i = (i + 1) & mask_) {
      if (table_[i].slot == none) { return; }
      if (table_[i].key == key) { break; }
    }
    // Backward shift: move later entries of the probe run into the hole when their home
    // position does not lie cyclically in (hole, position].
    for (std::size_t j = (i + 1) & mask_;; j = (j + 1) & mask_) {
      entry const& e = table_[j];
      if (e.slot == none) { break; }
      std::size_t const h = home(e.key);
      bool const stays    = i <= j ? (i < h && h <= j) : (i < h || h <= j);
      if (!stays) {
        table_[i] = e;
        i         = j;
      }
    }
    table_[i] = entry{0, none};
    --size_;
  }

  /// Removes every key; keeps the memory.
  void clear() noexcept
  {
    for (entry& e : table_) e = entry{0, none};
    size_ = 0;
  }

 private:
  struct entry {
    std::uint32_t key;
    std::uint32_t slot;  // none: empty
  };

  std::size_t home(std::uint32_t key) const
  {
    return static_cast<std::size_t>((std::uint64_t{key} * 0x9E3779B97F4A7C15ull) >> (64 - bits_));
  }
  void place(entry e) noexcept
  {
    std::size_t i = home(e.key);
    while (table_[i].slot != none) i = (i + 1) & mask_;
    table_[i] = e;
  }

  std::vector<entry> table_;
  std::size_t mask_ = 0;
  int bits_         = 0;
  std::size_t size_ = 0;
};

}  // namespace cusense::detail
