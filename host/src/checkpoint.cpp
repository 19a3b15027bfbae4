// Checkpoint and restore: the file framing (magic, format version, payload length, CRC-32),
// the atomic file write, the pipeline options and the pipeline-level state (counters, outputs
// not yet polled), and the detector runner's state. Engines write their own sections through
// detail::state_writer (detail/checkpoint.hpp).
//
// File layout (all integers little-endian):
//   0  8 bytes  magic "CUSNCKPT"
//   8  u32      format version (checkpoint_format_version)
//   12 u32      reserved, 0
//   16 u64      payload length P
//   24 P bytes  payload: sections "options", "pipeline", "engine", "detectors", "outputs", "end"
//   24+P u32    CRC-32 (IEEE, as zlib's crc32) of bytes [0, 24 + P)
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <istream>
#include <iterator>
#include <limits>
#include <ostream>
#include <random>
#include <sstream>
#include <string>

#include <cusense/detail/call_guard.hpp>
#include <cusense/detail/checkpoint.hpp>
#include <cusense/detail/detector_engine.hpp>
#include <cusense/detail/engine.hpp>
#include <cusense/detail/engine_registry.hpp>
#include <cusense/detail/results.hpp>
#include <cusense/pipeline.hpp>

namespace cusense {
namespace detail {

namespace {

constexpr char magic[8]             = {'C', 'U', 'S', 'N', 'C', 'K', 'P', 'T'};
constexpr std::size_t header_bytes  = 24;
constexpr std::size_t trailer_bytes = 4;

std::array<std::uint32_t, 256> make_crc_table()
{
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}

std::uint32_t read_le32(char const* p)
{
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= std::uint32_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

std::uint64_t read_le64(char const* p)
{
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= std::uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

// ----- options

void write_options(state_writer& w, pipeline_options const& o)
{
  w.u8(static_cast<std::uint8_t>(o.window.type));
  w.i64(o.window.size);
  w.i64(o.window.offset);
  w.i64(o.window.slide);
  w.i64(o.window.gap);
  w.i64(o.window.rows);
  w.i64(o.window.min_periods);
  w.u64(o.aggs.size());
  for (agg a : o.aggs) w.u8(static_cast<std::uint8_t>(a));
  w.i64(o.max_out_of_orderness);
  w.u8(static_cast<std::uint8_t>(o.where));
  w.i32(o.channels);
  w.u64(o.channel_names.size());
  for (auto const& n : o.channel_names) w.str(n);
  w.u64(o.staging_records);
  w.i32(o.staging_slots);
  w.i32(o.cpu_threads);
  w.u64(o.max_open_windows);
  w.u64(o.quantiles.size());
  for (double q : o.quantiles) w.f64(q);
  w.f64(o.quantile_accuracy);
  w.i64(o.allowed_lateness);
  w.u64(o.detectors.size());
  for (detector_spec const& d : o.detectors) {
    w.u8(static_cast<std::uint8_t>(d.kind));
    w.str(d.name);
    w.f64(d.threshold);
    w.i32(d.channel);
    w.f64(d.alpha);
    w.i64(d.window);
    w.i64(d.min_count);
    w.i64(d.L);
    w.i64(d.H);
    w.i64(d.min_candidates);
    w.i64(d.H2);
    w.i64(d.K);
    w.i64(d.timeout);
  }
  w.boolean(o.windowed);
  w.u8(static_cast<std::uint8_t>(o.on_nan));  // since format version 2
  for (detector_spec const& d : o.detectors) {  // since format version 3
    w.f64(d.beta);
    w.f64(d.gamma);
    w.f64(d.trend);
    w.f64(d.clip);
    w.f64(d.freeze);
    w.i32(d.channels);
  }
}

template <typename E>
E read_enum(state_reader& r, int count, char const* what)
{
  std::uint8_t const v = r.u8();
  state_reader::check(v < count, std::string("unknown ") + what + " " + std::to_string(v));
  return static_cast<E>(v);
}

// Reads the options as written; the ranges are checked by the pipeline constructor, as for
// options given by a caller (restore turns its refusal into a checkpoint_error).
pipeline_options read_options(state_reader& r, std::uint32_t version)
{
  pipeline_options o;
  o.window.type        = read_enum<window_spec::kind>(r, 4, "window kind");
  o.window.size        = r.i64();
  o.window.offset      = r.i64();
  o.window.slide       = r.i64();
  o.window.gap         = r.i64();
  o.window.rows        = r.i64();
  o.window.min_periods = r.i64();
  o.aggs.resize(r.count(1));
  for (agg& a : o.aggs) a = read_enum<agg>(r, static_cast<int>(agg::quantile) + 1, "aggregation");
  o.max_out_of_orderness = r.i64();
  o.where                = read_enum<backend>(r, 3, "backend");
  o.channels             = r.i32();
  // Checked here too: the list lengths below and the engine state depend on it.
  state_reader::check(o.channels >= 1 && o.channels <= max_channels,
                      "channels " + std::to_string(o.channels) + " out of range");
  o.channel_names.resize(r.count(8));
  for (auto& n : o.channel_names) n = r.str();
  o.staging_records = static_cast<std::size_t>(r.u64());
  o.staging_slots   = r.i32();
  o.cpu_threads     = r.i32();
  // Checked here as well as by the constructor, which checks them only for windowed pipelines.
  state_reader::check(o.staging_slots >= 1 && o.staging_slots <= max_staging_slots,
                      "staging_slots " + std::to_string(o.staging_slots) + " out of range");
  o.max_open_windows = static_cast<std::size_t>(r.u64());
  o.quantiles.resize(r.count(8));
  for (double& q : o.quantiles) q = r.f64();
  o.quantile_accuracy = r.f64();
  state_reader::check(o.quantile_accuracy >= 1e-4 && o.quantile_accuracy <= 0.5,
                      "quantile_accuracy out of range");
  o.allowed_lateness  = r.i64();
  o.detectors.resize(r.count(90));
  for (detector_spec& d : o.detectors) {
    d.kind           = read_enum<detector_kind>(r, version >= 3 ? 7 : 5, "detector kind");
    d.name           = r.str();
    d.threshold      = r.f64();
    d.channel        = r.i32();
    d.alpha          = r.f64();
    d.window         = r.i64();
    d.min_count      = r.i64();
    d.L              = r.i64();
    d.H              = r.i64();
    d.min_candidates = r.i64();
    d.H2             = r.i64();
    d.K              = r.i64();
    d.timeout        = r.i64();
  }
  o.windowed = r.boolean();
  // Version 1 did not store the NaN policy: those pipelines skipped NaN values (the policy
  // lived in the Python layer, which restored "skip" unless told otherwise).
  o.on_nan = version >= 2 ? read_enum<nan_policy>(r, 2, "nan_policy") : nan_policy::skip;
  if (version >= 3) {
    for (detector_spec& d : o.detectors) {
      d.beta     = r.f64();
      d.gamma    = r.f64();
      d.trend    = r.f64();
      d.clip     = r.f64();
      d.freeze   = r.f64();
      d.channels = r.i32();
    }
  }
  return o;
}

void check_schema(table const& got, table const& want, char const* what)
{
  bool ok = got.columns.size() == want.columns.size();
  for (std::size_t i = 0; ok && i < got.columns.size(); ++i) {
    ok = got.columns[i].name == want.columns[i].name &&
         got.columns[i].data.index() == want.columns[i].data.index() &&
         got.columns[i].size() == got.columns[0].size();
  }
  state_reader::check(ok || got.columns.empty(), std::string("the pending ") + what +
                                                   " table does not match the pipeline's columns");
}

void append_rows(table& into, table&& from)
{
  if (from.columns.empty()) { return; }
  into.append(std::move(from));
}

}  // namespace

std::uint32_t crc32(char const* data, std::size_t n)
{
  static std::array<std::uint32_t, 256> const table = make_crc_table();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) {
    c = table[(c ^ static_cast<unsigned char>(data[i])) & 0xFFu] ^ (c >> 8);
  }
  return c ^ 0xFFFFFFFFu;
}

std::string frame_checkpoint(std::string const& payload)
{
  state_writer w;
  w.data().append(magic, sizeof magic);
  w.u32(checkpoint_format_version);
  w.u32(0);
  w.u64(payload.size());
  w.data().append(payload);
  w.u32(crc32(w.data().data(), w.data().size()));
  return std::move(w.data());
}

std::string unframe_checkpoint(std::string const& file, std::uint32_t* version_out)
{
  if (file.empty()) { throw checkpoint_error("checkpoint is empty (0 bytes)"); }
  if (file.size() < header_bytes + trailer_bytes) {
    throw checkpoint_error("checkpoint is truncated: " + std::to_string(file.size()) +
                           " bytes, shorter than the " + std::to_string(header_bytes + trailer_bytes) +
                           "-byte header and checksum");
  }
  if (std::memcmp(file.data(), magic, sizeof magic) != 0) {
    throw checkpoint_error("not a cusense checkpoint (wrong magic bytes)");
  }
  std::uint32_t const version = read_le32(file.data() + 8);
  if (version < oldest_checkpoint_format_version || version > checkpoint_format_version) {
    throw checkpoint_error("checkpoint format version " + std::to_string(version) +
                           " is not supported (this build reads versions " +
                           std::to_string(oldest_checkpoint_format_version) + " to " +
                           std::to_string(checkpoint_format_version) + ")");
  }
  if (version_out) { *version_out = version; }
  std::uint64_t const len = read_le64(file.data() + 16);
  std::size_t const have  = file.size() - header_bytes - trailer_bytes;
  if (len != have) {
    throw checkpoint_error(std::string("checkpoint is ") + (len > have ? "truncated" : "corrupt") +
                           ": the header announces a payload of " + std::to_string(len) +
                           " bytes, the file holds " + std::to_string(have));
  }
  std::uint32_t const want = read_le32(file.data() + header_bytes + have);
  if (crc32(file.data(), header_bytes + have) != want) {
    throw checkpoint_error("checkpoint is corrupt: checksum (CRC-32) mismatch");
  }
  return file.substr(header_bytes, have);
}

void write_table(state_writer& w, table const& t)
{
  w.u64(t.columns.size());
  for (column const& c : t.columns) {
    w.str(c.name);
    w.u8(static_cast<std::uint8_t>(c.data.index()));
    std::visit(
      [&](auto const& v) {
        using T = typename std::decay_t<decltype(v)>::value_type;
        w.u64(v.size());
        for (T x : v) {
          if constexpr (std::is_same_v<T, std::uint32_t>) w.u32(x);
          else if constexpr (std::is_same_v<T, std::int64_t>) w.i64(x);
          else if constexpr (std::is_same_v<T, double>) w.f64(x);
          else w.u8(x);
        }
      },
      c.data);
  }
}

table read_table(state_reader& r)
{
  table t;
  t.columns.resize(r.count(10));
  for (column& c : t.columns) {
    c.name = r.str();
    switch (read_enum<int>(r, 4, "column type")) {
      case 0: {
        std::vector<std::uint32_t> v(r.count(4));
        for (auto& x : v) x = r.u32();
        c.data = std::move(v);
        break;
      }
      case 1: {
        std::vector<std::int64_t> v(r.count(8));
        for (auto& x : v) x = r.i64();
        c.data = std::move(v);
        break;
      }
      case 2: {
        std::vector<double> v(r.count(8));
        for (auto& x : v) x = r.f64();
        c.data = std::move(v);
        break;
      }
      default: {
        std::vector<std::uint8_t> v(r.count(1));
        for (auto& x : v) x = r.boolean() ? 1 : 0;
        c.data = std::move(v);
        break;
      }
    }
  }
  return t;
}

// ----- detector runner

void detector_runner::save_state(state_writer& w)
{
  auto const ch = static_cast<std::size_t>(channels_);
  w.u64(slot_key_.size());
  for (std::size_t s = 0; s < slot_key_.size(); ++s) {
    w.u32(slot_key_[s]);
    silence_state const& st = silence_[s];
    w.i64(st.last_seen);
    w.boolean(st.seen);
    w.boolean(st.reported);
    w.boolean(st.queued);
  }
  w.u64(pending_.size());
  for (pending const& p : pending_) {
    w.i64(p.ts);
    w.u32(p.key);
    w.u32(p.slot);
    w.i64(p.seq);
    for (std::size_t c = 0; c < ch; ++c) w.f64(pending_values_[p.value_at + c]);
  }
  w.i64(max_ts_);
  w.boolean(has_max_);
  w.i64(floor_);
  w.boolean(has_floor_);
  w.i64(next_seq_);
  w.u64(counters_.scored);
  w.u64(counters_.late);
  w.u64(counters_.silence_events);
  auto deadlines = deadlines_;
  w.u64(deadlines.size());
  while (!deadlines.empty()) {
    w.i64(deadlines.top().first);
    w.u32(deadlines.top().second);
    deadlines.pop();
  }
  w.boolean(engine_ != nullptr);
  if (engine_) {
    std::vector<std::vector<double>> d;
    std::vector<std::vector<std::int64_t>> i;
    engine_->export_state(static_cast<std::uint32_t>(slot_key_.size()), d, i);
    w.u64(d.size());
    for (std::size_t k = 0; k < d.size(); ++k) {
      w.u64(d[k].size());
      for (double x : d[k]) w.f64(x);
      w.u64(i[k].size());
      for (std::int64_t x : i[k]) w.i64(x);
    }
  }
}

void detector_runner::load_state(state_reader& r)
{
  auto const ch = static_cast<std::size_t>(channels_);
  std::size_t const slots = r.count(15);
  state_reader::check(slots <= std::numeric_limits<std::uint32_t>::max(), "too many detector keys");
  for (std::size_t s = 0; s < slots; ++s) {
    std::uint32_t const key = r.u32();
    state_reader::check(slot_of_.emplace(key, static_cast<std::uint32_t>(s)).second,
                        "a detector key appears twice");
    slot_key_.push_back(key);
    silence_state st;
    st.last_seen = checked_time(r.i64());
    st.seen      = r.boolean();
    st.reported  = r.boolean();
    st.queued    = r.boolean();
    silence_.push_back(st);
  }
  std::size_t const np = r.count(24 + 8 * ch);
  for (std::size_t k = 0; k < np; ++k) {
    pending p{};
    p.ts   = checked_time(r.i64());
    p.key  = r.u32();
    p.slot = r.u32();
    p.seq  = r.i64();
    state_reader::check(p.slot < slots && slot_key_[p.slot] == p.key,
                        "a buffered record refers to an unknown detector key");
    p.late     = false;
    p.value_at = pending_values_.size();
    for (std::size_t c = 0; c < ch; ++c) pending_values_.push_back(r.f64());
    pending_.push_back(p);
  }
  max_ts_    = r.i64();
  has_max_   = r.boolean();
  floor_     = r.i64();
  has_floor_ = r.boolean();
  if (has_max_) { checked_time(max_ts_); }
  if (has_floor_) { checked_time(floor_); }
  next_seq_                = r.i64();
  counters_.scored         = r.u64();
  counters_.late           = r.u64();
  counters_.silence_events = r.u64();
  std::size_t const nd = r.count(12);
  for (std::size_t k = 0; k < nd; ++k) {
    std::int64_t const when  = checked_time(r.i64(), max_duration);
    std::uint32_t const slot = r.u32();
    state_reader::check(slot < slots, "a silence deadline refers to an unknown detector key");
    deadlines_.push({when, slot});
  }
  bool const has_engine = r.boolean();
  state_reader::check(has_engine == (engine_ != nullptr), "detector state does not match the detectors");
  if (!engine_) { return; }
  std::size_t const n = r.count(16);
  state_reader::check(n == scorers_.size(), "detector state does not match the detectors");
  std::vector<std::vector<double>> d(n);
  std::vector<std::vector<std::int64_t>> i(n);
  for (std::size_t k = 0; k < n; ++k) {
    ops::detector_params const p = to_params(scorers_[k]);
    auto const ds = static_cast<std::size_t>(p.d_stride());
    auto const is = static_cast<std::size_t>(p.i_stride());
    d[k].resize(r.count(8));
    state_reader::check(d[k].size() == slots * ds, "detector state has the wrong size");
    for (double& x : d[k]) x = r.f64();
    i[k].resize(r.count(8));
    state_reader::check(i[k].size() == slots * is, "detector state has the wrong size");
    for (std::int64_t& x : i[k]) x = r.i64();
    for (std::size_t s = 0; s < slots; ++s) {
      std::int64_t const* st = i[k].data() + s * is;
      bool ok = st[0] >= 0;
      if (p.kind == ops::detector_kind_id::knn_discord) {
        std::int64_t const c2 = p.H2 + 1, c3 = p.K + 1;
        ok = ok && st[1] >= 0 && st[1] < c2 && st[2] >= 0 && st[2] <= c2 && st[3] >= 0 &&
             st[3] < c3 && st[4] >= 0 && st[4] <= c3;
      }
      state_reader::check(ok, "detector state holds an invalid count or index");
    }
  }
  engine_->import_state(static_cast<std::uint32_t>(slots), d, i);
}

namespace {
// Set by fail_checkpoint_writes_for_testing: errno to fail with (0 = off) and after how many
// bytes.
std::atomic<int> injected_write_errno{0};
std::atomic<std::size_t> injected_write_after{0};
}  // namespace

void fail_checkpoint_writes_for_testing(int err, std::size_t after_bytes)
{
  injected_write_after.store(after_bytes);
  injected_write_errno.store(err);
}

}  // namespace detail

// ----- pipeline

namespace {

[[noreturn]] void fail_io(std::string const& what, std::string const& path, int err)
{
  throw checkpoint_error("checkpoint: cannot " + what + " '" + path + "': " + std::strerror(err));
}

// Temporary files of a checkpoint at dir/name are dir/.name.tmp-<pid>-<n>-<random>: unique per
// write (process id, a per-process counter and random bits), so concurrent writers of one path,
// in one process or several, never share a temporary file.
std::string temporary_prefix(std::filesystem::path const& target)
{
  return "." + target.filename().string() + ".tmp-";
}

std::string unique_temporary_name(std::filesystem::path const& target)
{
  static std::atomic<std::uint64_t> counter{0};
  static std::uint64_t const salt = [] {
    std::random_device rd;
    return (std::uint64_t{rd()} << 32) ^ rd();
  }();
  std::uint64_t const n = counter.fetch_add(1, std::memory_order_relaxed);
  // Mixing the counter into the salt keeps names distinct even if the salt repeats.
  std::uint64_t const bits = (salt ^ (n * 0x9E3779B97F4A7C15ull)) & 0xFFFFFFFFull;
  char random_hex[9];
  std::snprintf(random_hex, sizeof random_hex, "%08llx", static_cast<unsigned long long>(bits));
  return temporary_prefix(target) + std::to_string(::getpid()) + "-" + std::to_string(n) + "-" +
         random_hex;
}

// Whether the temporary file `entry` (named <prefix><pid>...) was left by a writer that died:
// its process no longer exists, or the file was not touched for stale_temporary_seconds (a
// live writer writes the whole file at once, then renames it). Files of this process count
// only by age: another thread may be writing them.
bool left_by_dead_writer(std::filesystem::directory_entry const& entry, std::size_t prefix_size)
{
  std::string const name = entry.path().filename().string();
  std::size_t end = prefix_size;
  while (end < name.size() && name[end] >= '0' && name[end] <= '9') ++end;
  if (end == prefix_size || end - prefix_size > 9 || (end < name.size() && name[end] != '-')) {
    return false;  // not a name this library writes
  }
  auto const pid = static_cast<pid_t>(std::stol(name.substr(prefix_size, end - prefix_size)));
  if (pid > 0 && pid != ::getpid() && ::kill(pid, 0) != 0 && errno == ESRCH) { return true; }
  struct stat st{};
  if (::lstat(entry.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) { return false; }
  return ::time(nullptr) - st.st_mtime > stale_temporary_seconds;
}

// Removes the temporary files of a checkpoint at `path` left by writers that died (killed
// mid-write). Best effort: a directory that cannot be listed is left alone.
void remove_stale_temporaries(std::string const& path)
{
  namespace fs = std::filesystem;
  fs::path const target(path);
  fs::path dir = target.parent_path();
  if (dir.empty()) { dir = "."; }
  std::string const prefix = temporary_prefix(target);
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string const name = it->path().filename().string();
    if (name.compare(0, prefix.size(), prefix) == 0 && left_by_dead_writer(*it, prefix.size())) {
      ::unlink(it->path().c_str());
    }
  }
}

// Writes `bytes` to `path` atomically: a temporary file of its own in the same directory,
// written fully, fsync'ed, renamed over `path`, then the directory fsync'ed. A crash or a failure
// at any point leaves either the old file or the new one at `path`, never a short one; a
// failure removes the temporary file.
void write_atomically(std::string const& path, std::string const& bytes)
{
  namespace fs = std::filesystem;
  fs::path const target(path);
  fs::path dir = target.parent_path();
  if (dir.empty()) { dir = "."; }
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    tmp = (dir / unique_temporary_name(target)).string();
    fd  = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && (errno != EEXIST || attempt == 8)) {
      fail_io("create a temporary file for", path, errno);
    }
  }
  auto fail = [&](char const* what, int err) {
    if (fd >= 0) { ::close(fd); }
    ::unlink(tmp.c_str());
    throw checkpoint_error("checkpoint: cannot " + std::string(what) + " '" + path + "': " +
                           std::strerror(err) + "; the previous checkpoint there is unchanged");
  };
  std::size_t done = 0;
  while (done < bytes.size()) {
    std::size_t chunk = bytes.size() - done;
    int const injected = detail::injected_write_errno.load();
    if (injected != 0) {
      std::size_t const allowed = detail::injected_write_after.load();
      if (done >= allowed) { fail("write", injected); }
      chunk = std::min(chunk, allowed - done);
    }
    ssize_t const k = ::write(fd, bytes.data() + done, chunk);
    if (k < 0) {
      if (errno == EINTR) { continue; }
      fail("write", errno);
    }
    done += static_cast<std::size_t>(k);
  }
  if (::fsync(fd) != 0) { fail("fsync", errno); }
  int const closed = ::close(fd);
  fd               = -1;
  if (closed != 0) { fail("close", errno); }
  if (::rename(tmp.c_str(), path.c_str()) != 0) { fail("rename the temporary file onto", errno); }
  int const dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);  // makes the rename durable; some file systems refuse: not an error
    ::close(dfd);
  }
}

}  // namespace

std::string pipeline::checkpoint_bytes()
{
  // Outputs emitted but not yet polled move into the pipeline's held tables (the next poll
  // returns them first) so that the engines' state below holds no output.
  if (engine_) {
    table w, l;
    engine_->drain(&w, &l);
    detail::append_rows(held_windows_, std::move(w));
    detail::append_rows(held_late_, std::move(l));
  }
  if (detectors_) {
    if (detectors_->has_scorers()) { detail::append_rows(held_scores_, detectors_->drain_scores()); }
    detail::append_rows(held_silence_, detectors_->drain_silence());
  }
  detail::state_writer w;
  w.tag("options");
  detail::write_options(w, options_);
  w.tag("pipeline");
  w.u8(static_cast<std::uint8_t>(backend_));
  w.u64(pushed_);
  w.u64(rejected_);
  w.tag("engine");
  w.boolean(engine_ != nullptr);
  if (engine_) {
    w.tag(detail::engine_state_tag(options_));
    engine_->save_state(w);
  }
  w.tag("detectors");
  w.boolean(detectors_ != nullptr);
  if (detectors_) { detectors_->save_state(w); }
  w.tag("outputs");
  for (table const* t : {&held_windows_, &held_late_, &held_scores_, &held_silence_}) {
    detail::write_table(w, *t);
  }
  w.tag("end");
  return detail::frame_checkpoint(w.data());
}

void pipeline::checkpoint(std::string const& path)
{
  // The guard covers the write too: a second checkpoint of this pipeline from another thread
  // is refused (concurrent_use) instead of racing for the file.
  call_guard use(*this);
  remove_stale_temporaries(path);
  write_atomically(path, checkpoint_bytes());
}

void pipeline::checkpoint(std::ostream& out)
{
  call_guard use(*this);
  std::string const bytes = checkpoint_bytes();
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.flush();
  if (!out) { throw checkpoint_error("checkpoint: the output stream failed while writing"); }
}

pipeline pipeline::restore_bytes(std::string const& file, backend where)
{
  std::uint32_t version      = 0;
  std::string const payload = detail::unframe_checkpoint(file, &version);
  detail::state_reader r(payload.data(), payload.size());
  r.expect("options");
  pipeline_options o = detail::read_options(r, version);
  o.where            = where;
  // The options get the constructor's checks: a file with a valid checksum may still hold
  // options no caller could give (edited by hand, or written by a buggy tool).
  auto construct = [&]() -> pipeline {
    try {
      return pipeline(std::move(o));
    } catch (checkpoint_error const&) {
      throw;
    } catch (invalid_argument const& e) {
      throw checkpoint_error(std::string("checkpoint holds invalid options: ") + e.what());
    }
  };
  pipeline p = construct();
  r.expect("pipeline");
  (void)r.u8();  // backend the checkpoint was taken on (informational)
  p.pushed_   = r.u64();
  p.rejected_ = r.u64();
  r.expect("engine");
  bool const has_engine = r.boolean();
  detail::state_reader::check(has_engine == (p.engine_ != nullptr), "engine section does not match the options");
  if (p.engine_) {
    r.expect(detail::engine_state_tag(p.options_));
    p.engine_->load_state(r);
  }
  r.expect("detectors");
  bool const has_detectors = r.boolean();
  detail::state_reader::check(has_detectors == (p.detectors_ != nullptr),
                              "detector section does not match the options");
  if (p.detectors_) { p.detectors_->load_state(r); }
  r.expect("outputs");
  // The column layout of each output, from the fresh (empty) outputs of this pipeline.
  table want_windows, want_late, want_scores, want_silence;
  if (p.engine_) {
    want_windows = detail::empty_window_table(p.options_);
    table w;
    p.engine_->drain(&w, &want_late);
  }
  if (p.detectors_) {
    if (p.detectors_->has_scorers()) { want_scores = p.detectors_->drain_scores(); }
    want_silence = p.detectors_->drain_silence();
  }
  p.held_windows_ = detail::read_table(r);
  detail::check_schema(p.held_windows_, want_windows, "windows");
  p.held_late_ = detail::read_table(r);
  detail::check_schema(p.held_late_, want_late, "late records");
  p.held_scores_ = detail::read_table(r);
  detail::check_schema(p.held_scores_, want_scores, "scores");
  p.held_silence_ = detail::read_table(r);
  detail::check_schema(p.held_silence_, want_silence, "silence");
  r.expect("end");
  detail::state_reader::check(r.at_end(), std::to_string(r.left()) + " unexpected bytes after the end");
  p.publish_stats(p.current_stats());
  return p;
}

pipeline pipeline::restore(std::istream& in, backend where)
{
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) { throw checkpoint_error("checkpoint: the input stream failed while reading"); }
  return restore_bytes(bytes, where);
}

pipeline pipeline::restore(std::string const& path, backend where)
{
  remove_stale_temporaries(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) { fail_io("open", path, errno); }
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) { fail_io("read", path, errno); }
  try {
    return restore_bytes(bytes, where);
  } catch (checkpoint_error const& e) {
    throw checkpoint_error(std::string(e.what()) + " (file '" + path + "')");
  }
}

}  // namespace cusense
