#pragma once
// Internal: the backend-neutral state codec of checkpoints. Every engine writes its state as
// typed little-endian fields through state_writer and reads it back through state_reader; the
// representation never depends on an engine's internals (hash slots, shards, device arrays):
// open windows are written as lists sorted by (window, key) with their accumulators, so a
// checkpoint taken on one backend restores on the other. The file format (framing, version,
// options, checksum, atomic writes) is the host's: detail/checkpoint.hpp. Not part of the
// public API.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <cusense/detail/accumulator.hpp>
#include <cusense/error.hpp>
#include <cusense/ops/moments.hpp>
#include <cusense/table.hpp>
#include <cusense/types.hpp>

namespace cusense::detail {

/// Appends typed fields to a byte buffer (little-endian, fixed width).
class state_writer {
 public:
  void u8(std::uint8_t v) { buf_.push_back(static_cast<char>(v)); }
  void boolean(bool v) { u8(v ? 1 : 0); }
  void u32(std::uint32_t v) { put(v, 4); }
  void i32(std::int32_t v) { u32(static_cast<std::uint32_t>(v)); }
  void u64(std::uint64_t v) { put(v, 8); }
  void i64(std::int64_t v) { u64(static_cast<std::uint64_t>(v)); }
  void f64(double v)
  {
    std::uint64_t b;
    std::memcpy(&b, &v, sizeof b);
    u64(b);
  }
  void str(std::string const& s)
  {
    u64(s.size());
    buf_.append(s);
  }
  /// A section marker, checked by state_reader::expect.
  void tag(char const* name) { str(name); }

  std::string const& data() const { return buf_; }
  std::string& data() { return buf_; }

 private:
  void put(std::uint64_t v, int bytes)
  {
    for (int i = 0; i < bytes; ++i) buf_.push_back(static_cast<char>((v >> (8 * i)) & 0xffu));
  }
  std::string buf_;
};

/// Reads what state_writer wrote; throws checkpoint_error naming the problem on truncated or
/// inconsistent input (never reads out of bounds).
class state_reader {
 public:
  state_reader(char const* data, std::size_t size) : p_(data), end_(data + size) {}

  std::uint8_t u8()
  {
    need(1, "byte");
    return static_cast<std::uint8_t>(*p_++);
  }
  bool boolean()
  {
    std::uint8_t const v = u8();
    check(v <= 1, "a boolean field holds " + std::to_string(v));
    return v == 1;
  }
  std::uint32_t u32() { return static_cast<std::uint32_t>(get(4)); }
  std::int32_t i32() { return static_cast<std::int32_t>(u32()); }
  std::uint64_t u64() { return get(8); }
  std::int64_t i64() { return static_cast<std::int64_t>(u64()); }
  double f64()
  {
    std::uint64_t const b = u64();
    double v;
    std::memcpy(&v, &b, sizeof v);
    return v;
  }
  std::string str()
  {
    std::size_t const n = count(1);
    std::string s(p_, p_ + n);
    p_ += n;
    return s;
  }
  /// A list length whose entries take at least `min_entry_bytes` each: checked against the
  /// bytes left, so a corrupt length cannot trigger a huge allocation.
  std::size_t count(std::size_t min_entry_bytes)
  {
    std::uint64_t const n = u64();
    std::size_t const left = static_cast<std::size_t>(end_ - p_);
    check(min_entry_bytes == 0 ? n <= (std::uint64_t{1} << 32) : n <= left / min_entry_bytes,
          "a list of " + std::to_string(n) + " entries does not fit in the " +
            std::to_string(left) + " bytes left (truncated or corrupt)");
    return static_cast<std::size_t>(n);
  }
  void expect(char const* name)
  {
    std::string const got = str();
    check(got == name, std::string("section '") + name + "' expected, found '" + got.substr(0, 40) + "'");
  }
  bool at_end() const { return p_ == end_; }
  /// The checkpoint format version being read (state forms that grew check it); the latest
  /// unless set.
  std::uint32_t version() const { return version_; }
  void set_version(std::uint32_t v) { version_ = v; }
  std::size_t left() const { return static_cast<std::size_t>(end_ - p_); }

  /// Throws checkpoint_error("checkpoint is corrupt: <what>") unless `ok`.
  static void check(bool ok, std::string const& what)
  {
    if (!ok) { throw checkpoint_error("checkpoint is corrupt: " + what); }
  }

 private:
  void need(std::size_t n, char const* what)
  {
    if (static_cast<std::size_t>(end_ - p_) < n) {
      throw checkpoint_error(std::string("checkpoint is truncated: a ") + what +
                             " field runs past the end of the payload");
    }
  }
  std::uint64_t get(int bytes)
  {
    need(static_cast<std::size_t>(bytes), "numeric");
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= std::uint64_t{static_cast<unsigned char>(p_[i])} << (8 * i);
    p_ += bytes;
    return v;
  }
  char const* p_;
  char const* end_;
  std::uint32_t version_ = ~std::uint32_t{0};
};

// ----- shared field groups

inline void write_moments(state_writer& w, ops::moments const& m)
{
  w.i64(m.count);
  w.i64(m.nan_count);
  w.f64(m.sum);
  w.f64(m.mean);
  w.f64(m.m2);
  w.f64(m.min);
  w.f64(m.max);
}

inline ops::moments read_moments(state_reader& r)
{
  ops::moments m;
  m.count     = r.i64();
  m.nan_count = r.i64();
  m.sum       = r.f64();
  m.mean      = r.f64();
  m.m2        = r.f64();
  m.min       = r.f64();
  m.max       = r.f64();
  state_reader::check(m.count >= 0 && m.nan_count >= 0, "negative count in an accumulator");
  return m;
}
constexpr std::size_t moments_bytes = 56;

/// A full accumulator: moments, extent and quantile sketch (always all three, so the form does
/// not depend on which aggregations an engine computes).
inline void write_channel_acc(state_writer& w, channel_acc const& a)
{
  write_moments(w, a.m);
  ops::extent const& e = a.e;
  w.i64(e.n);
  w.f64(e.first_value);
  w.f64(e.last_value);
  w.f64(e.min_value);
  w.f64(e.max_value);
  w.i64(e.first_ts);
  w.i64(e.last_ts);
  w.i64(e.min_ts);
  w.i64(e.max_ts);
  w.u64(e.first_seq);
  w.u64(e.last_seq);
  w.u64(e.min_seq);
  w.u64(e.max_seq);
  auto const& b = a.s.buckets();
  w.u64(b.size());
  for (ops::dd_bucket const& x : b) {
    w.i32(x.key);
    w.i64(x.count);
  }
}

inline void read_channel_acc(state_reader& r, channel_acc& a)
{
  a.m            = read_moments(r);
  ops::extent& e = a.e;
  e.n            = r.i64();
  e.first_value  = r.f64();
  e.last_value   = r.f64();
  e.min_value    = r.f64();
  e.max_value    = r.f64();
  e.first_ts     = r.i64();
  e.last_ts      = r.i64();
  e.min_ts       = r.i64();
  e.max_ts       = r.i64();
  e.first_seq    = r.u64();
  e.last_seq     = r.u64();
  e.min_seq      = r.u64();
  e.max_seq      = r.u64();
  state_reader::check(e.n >= 0, "negative count in an accumulator");
  std::size_t const n = r.count(12);
  std::vector<ops::dd_bucket> b(n);
  for (std::size_t i = 0; i < n; ++i) {
    b[i].key   = r.i32();
    b[i].count = r.i64();
    state_reader::check(b[i].count > 0 && b[i].key > -ops::ddsketch_mapping::inf_key - 1 &&
                          (i == 0 || b[i - 1].key < b[i].key),
                        "quantile sketch buckets out of order");
  }
  a.s.assign(std::move(b));
}

/// Checks that a timestamp lies within [-max_timestamp, max_timestamp] (widened by `slack`,
/// e.g. max_duration for window ends).
inline std::int64_t checked_time(std::int64_t t, std::int64_t slack = 0)
{
  state_reader::check(t >= -max_timestamp - slack && t <= max_timestamp + slack,
                      "timestamp " + std::to_string(t) + " out of range");
  return t;
}

/// Checks that a window / pane id k has start k * width + offset within the valid timestamp range
/// widened by one window (so every later arithmetic on it stays far from overflow).
inline std::int64_t checked_window(std::int64_t k, std::int64_t width, std::int64_t offset)
{
  std::int64_t const lo = (-max_timestamp - max_duration - offset) / width - 1;
  std::int64_t const hi = (max_timestamp + max_duration - offset) / width + 1;
  state_reader::check(k >= lo && k <= hi, "window id " + std::to_string(k) + " out of range");
  return k;
}

/// The state of a tumbling-window engine with moment aggregations (the CPU tumbling engine and
/// the CUDA engine): open states sorted by (window id, key), `channels` accumulators each.
struct tumbling_state {
  bool has_max             = false;
  std::int64_t max_ts      = 0;
  std::uint64_t aggregated = 0, late = 0, nan_values = 0, emitted = 0;
  std::vector<std::int64_t> wid;
  std::vector<std::uint32_t> key;
  std::vector<ops::moments> acc;  // state * channels + channel
};

inline void write_tumbling_state(state_writer& w, tumbling_state const& s, int channels)
{
  w.boolean(s.has_max);
  w.i64(s.max_ts);
  w.u64(s.aggregated);
  w.u64(s.late);
  w.u64(s.nan_values);
  w.u64(s.emitted);
  w.u64(s.wid.size());
  for (std::size_t i = 0; i < s.wid.size(); ++i) {
    w.i64(s.wid[i]);
    w.u32(s.key[i]);
    for (int c = 0; c < channels; ++c) write_moments(w, s.acc[i * static_cast<std::size_t>(channels) + c]);
  }
}

inline tumbling_state read_tumbling_state(state_reader& r, pipeline_options const& o)
{
  tumbling_state s;
  s.has_max    = r.boolean();
  s.max_ts     = r.i64();
  s.aggregated = r.u64();
  s.late       = r.u64();
  s.nan_values = r.u64();
  s.emitted    = r.u64();
  if (s.has_max) { checked_time(s.max_ts); }
  auto const ch = static_cast<std::size_t>(o.channels);
  std::size_t const n = r.count(12 + ch * moments_bytes);
  s.wid.resize(n);
  s.key.resize(n);
  s.acc.resize(n * ch);
  for (std::size_t i = 0; i < n; ++i) {
    s.wid[i] = checked_window(r.i64(), o.window.size, o.window.offset);
    s.key[i] = r.u32();
    state_reader::check(i == 0 || s.wid[i - 1] < s.wid[i] ||
                          (s.wid[i - 1] == s.wid[i] && s.key[i - 1] < s.key[i]),
                        "open windows not sorted by (window, key)");
    for (std::size_t c = 0; c < ch; ++c) s.acc[i * ch + c] = read_moments(r);
  }
  return s;
}

}  // namespace cusense::detail
