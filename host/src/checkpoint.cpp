// Checkpoint format: the file framing (magic, format version, payload length, CRC-32), the
// atomic file write, and the codecs of the pipeline options and of tables. What a pipeline
// writes into the payload is in pipeline_checkpoint.cpp, the detector runner's state in
// detectors_checkpoint.cpp; engines write their own sections through detail::state_writer
// (detail/checkpoint.hpp).
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

#include <cusense/detail/checkpoint.hpp>
#include <cusense/pipeline.hpp>  // stale_temporary_seconds

namespace cusense::detail {

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

template <typename E>
E read_enum(state_reader& r, int count, char const* what)
{
  std::uint8_t const v = r.u8();
  state_reader::check(v < count, std::string("unknown ") + what + " " + std::to_string(v));
  return static_cast<E>(v);
}

// Set by fail_checkpoint_writes_for_testing: errno to fail with (0 = off) and after how many
// bytes.
std::atomic<int> injected_write_errno{0};
std::atomic<std::size_t> injected_write_after{0};

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
  std::size_t end        = prefix_size;
  while (end < name.size() && name[end] >= '0' && name[end] <= '9') ++end;
  if (end == prefix_size || end - prefix_size > 9 || (end < name.size() && name[end] != '-')) {
    return false;  // not a name this library writes
  }
  auto const pid = static_cast<pid_t>(std::stol(name.substr(prefix_size, end - prefix_size)));
  if (pid > 0 && pid != ::getpid() && ::kill(pid, 0) != 0 && errno == ESRCH) { return true; }
  struct stat st {};
  if (::lstat(entry.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) { return false; }
  return ::time(nullptr) - st.st_mtime > stale_temporary_seconds;
}

}  // namespace

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
  w.u8(static_cast<std::uint8_t>(o.on_nan));    // since format version 2
  for (detector_spec const& d : o.detectors) {  // since format version 3
    w.f64(d.beta);
    w.f64(d.gamma);
    w.f64(d.trend);
    w.f64(d.clip);
    w.f64(d.freeze);
    w.i32(d.channels);
  }
  w.boolean(o.external_watermark);  // since format version 4
  w.u64(o.max_detector_keys);  // since format version 6
  w.u64(o.memory_budget_bytes);
  w.i64(o.key_ttl);
  // since format version 7
  for (detector_spec const& d : o.detectors) {
    w.f64(d.tod_weight);
    w.u8(static_cast<std::uint8_t>(d.base));
    w.f64(d.scale);
    w.i64(d.short_window);
    w.i64(d.long_window);
    w.i64(d.reestimate);
    w.i64(d.learn);
    w.i64(d.warmup);
    w.i64(d.rest);
    w.f64(d.spatial);
  }
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
  o.allowed_lateness = r.i64();
  o.detectors.resize(r.count(90));
  int const detector_kinds = version >= 7 ? 8 : version >= 3 ? 7 : 5;
  for (detector_spec& d : o.detectors) {
    d.kind           = read_enum<detector_kind>(r, detector_kinds, "detector kind");
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
  o.external_watermark = version >= 4 && r.boolean();
  if (version >= 6) {
    o.max_detector_keys   = static_cast<std::size_t>(r.u64());
    o.memory_budget_bytes = static_cast<std::size_t>(r.u64());
    o.key_ttl    = r.i64();
  }
  if (version >= 7) {
    for (detector_spec& d : o.detectors) {
      d.tod_weight   = r.f64();
      d.base         = read_enum<detector_kind>(r, 8, "likelihood base");
      d.scale        = r.f64();
      d.short_window = r.i64();
      d.long_window  = r.i64();
      d.reestimate   = r.i64();
      d.learn        = r.i64();
      d.warmup       = r.i64();
      d.rest         = r.i64();
      d.spatial      = r.f64();
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

std::uint32_t crc32(char const* data, std::size_t n)
{
  static std::array<std::uint32_t, 256> const table = make_crc_table();
  std::uint32_t c                                   = 0xFFFFFFFFu;
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
    throw checkpoint_error(
      "checkpoint is truncated: " + std::to_string(file.size()) + " bytes, shorter than the " +
      std::to_string(header_bytes + trailer_bytes) + "-byte header and checksum");
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
          if constexpr (std::is_same_v<T, std::uint32_t>)
            w.u32(x);
          else if constexpr (std::is_same_v<T, std::int64_t>)
            w.i64(x);
          else if constexpr (std::is_same_v<T, double>)
            w.f64(x);
          else
            w.u8(x);
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

// ----- files

void fail_checkpoint_writes_for_testing(int err, std::size_t after_bytes)
{
  injected_write_after.store(after_bytes);
  injected_write_errno.store(err);
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
    std::size_t chunk  = bytes.size() - done;
    int const injected = injected_write_errno.load();
    if (injected != 0) {
      std::size_t const allowed = injected_write_after.load();
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

std::string read_checkpoint_file(std::string const& path)
{
  std::ifstream in(path, std::ios::binary);
  if (!in) { fail_io("open", path, errno); }
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) { fail_io("read", path, errno); }
  return bytes;
}

}  // namespace cusense::detail
