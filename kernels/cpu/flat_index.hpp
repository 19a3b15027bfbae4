#pragma once
// Open-addressing hash index from (key, window id) to a dense slot number, with linear probing
// and backward-shift deletion (no tombstones, so lookups stay short under churn).
#include <cstdint>
#include <vector>

namespace cusense::detail {

class flat_index {
 public:
  static constexpr std::uint32_t none = ~std::uint32_t{0};

  explicit flat_index(std::size_t capacity = 1024) { rehash(round_up(capacity)); }

  std::size_t size() const { return size_; }

  /// The hash of (key, win): computed once, it serves find_hashed and prefetch_hashed, also
  /// across a rehash.
  static std::uint64_t hash(std::uint32_t key, std::int64_t win)
  {
    std::uint64_t h = (static_cast<std::uint64_t>(win) * 0x9E3779B97F4A7C15ull) ^ key;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return h;
  }

  /// The slot of (key, win), or `none`.
  std::uint32_t find(std::uint32_t key, std::int64_t win) const { return find_hashed(hash(key, win), key, win); }

  /// find() given h = hash(key, win).
  std::uint32_t find_hashed(std::uint64_t h, std::uint32_t key, std::int64_t win) const
  {
    for (std::size_t i = static_cast<std::size_t>(h) & mask_;; i = (i + 1) & mask_) {
      entry const& e = entries_[i];
      if (e.slot == none) { return none; }
      if (e.key == key && e.win == win) { return e.slot; }
    }
  }

  /// Hints that (key, win) will be looked up soon: loads its home bucket into the cache.
  void prefetch(std::uint32_t key, std::int64_t win) const
  {
    __builtin_prefetch(&entries_[bucket(key, win)]);
  }

  /// prefetch() given h = hash(key, win).
  void prefetch_hashed(std::uint64_t h) const { __builtin_prefetch(&entries_[static_cast<std::size_t>(h) & mask_]); }

  /// Inserts (key, win) -> slot; the pair must not be present.
  void insert(std::uint32_t key, std::int64_t win, std::uint32_t slot)
  {
    if (2 * (size_ + 1) > entries_.size()) { rehash(entries_.size() * 2); }
    std::size_t i = bucket(key, win);
    while (entries_[i].slot != none) { i = (i + 1) & mask_; }
    entries_[i] = {win, key, slot};
    ++size_;
  }

  /// Removes every entry, keeping the capacity (no allocation).
  void clear()
  {
    for (entry& e : entries_) e.slot = none;
    size_ = 0;
  }

  /// Removes (key, win) if present.
  void erase(std::uint32_t key, std::int64_t win)
  {
    std::size_t i = bucket(key, win);
    for (;; i = (i + 1) & mask_) {
      if (entries_[i].slot == none) { return; }
      if (entries_[i].key == key && entries_[i].win == win) { break; }
    }
    // Backward shift: move later members of the probe run into the hole when their home
    // bucket does not lie (cyclically) between the hole and their position.
    std::size_t hole = i;
    for (std::size_t j = (i + 1) & mask_; entries_[j].slot != none; j = (j + 1) & mask_) {
      std::size_t home = bucket(entries_[j].key, entries_[j].win);
      bool const movable = ((j - home) & mask_) >= ((j - hole) & mask_);
      if (movable) {
        entries_[hole] = entries_[j];
        hole           = j;
      }
    }
    entries_[hole].slot = none;
    --size_;
  }

 private:
  struct entry {
    std::int64_t win;
    std::uint32_t key;
    std::uint32_t slot = none;
  };

  static std::size_t round_up(std::size_t n)
  {
    std::size_t c = 16;
    while (c < n) c *= 2;
    return c;
  }

  std::size_t bucket(std::uint32_t key, std::int64_t win) const
  {
    return static_cast<std::size_t>(hash(key, win)) & mask_;
  }

  // Strong guarantee: allocates the new table before touching the old one.
  void rehash(std::size_t capacity)
  {
    std::vector<entry> fresh(capacity);
    std::vector<entry> old = std::move(entries_);
    entries_ = std::move(fresh);
    mask_ = capacity - 1;
    size_ = 0;
    for (entry const& e : old) {
      if (e.slot != none) { insert(e.key, e.win, e.slot); }
    }
  }

  std::vector<entry> entries_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
};

}  // namespace cusense::detail
