#pragma once
// Internal: the checkpoint file format: framing (magic, version, checksum), the options and
// table codecs, atomic writes. The engines' state goes through the codec of
// detail/state_codec.hpp. Not part of the public API.
#include <cstddef>
#include <cstdint>
#include <string>

#include <cusense/detail/state_codec.hpp>
#include <cusense/table.hpp>
#include <cusense/types.hpp>

namespace cusense::detail {

/// Version of the checkpoint file format written by this build. Version 2 added the NaN policy
/// at the end of the options, version 3 the parameters of multiscale_z and joint_z after it,
/// version 4 external_watermark after those, version 5 the per-key counts of emitted records
/// at the end of the rolling-window state, version 6 max_detector_keys, memory_budget_bytes and
/// key_ttl at the end of the options, version 7 the parameters of likelihood and
/// knn_discord's tod_weight after those; older files are still read (as nan_policy::skip,
/// those parameters' defaults, the watermark from the records, each key's count equal to its
/// history's length, and no detector limits).
constexpr std::uint32_t checkpoint_format_version = 7;
/// The oldest format version this build reads.
constexpr std::uint32_t oldest_checkpoint_format_version = 1;
/// CRC-32 (IEEE 802.3, as zlib's crc32).
std::uint32_t crc32(char const* data, std::size_t n);
/// A checkpoint file from a payload: magic, version, length, payload, CRC-32.
std::string frame_checkpoint(std::string const& payload);
/// The payload of a checkpoint file (and its format version in `*version`, when given); throws
/// checkpoint_error naming what is wrong (empty, truncated, wrong magic, unsupported version,
/// checksum mismatch).
std::string unframe_checkpoint(std::string const& file, std::uint32_t* version = nullptr);

/// Testing only: while `err` is not 0, writes of checkpoint files (pipeline::checkpoint(path))
/// fail with errno `err` after `after_bytes` bytes of the temporary file, as a full disk
/// (ENOSPC) or a file system turned read-only (EROFS) would make them fail. 0 turns it off.
void fail_checkpoint_writes_for_testing(int err, std::size_t after_bytes = 0);

/// Tables (emitted but not yet polled outputs): name, type and values of each column.
void write_table(state_writer& w, table const& t);
table read_table(state_reader& r);
/// Throws checkpoint_error unless `got` (read from a checkpoint) is empty or has the columns
/// (names and types) of `want`, all of one length; `what` names the table in the message.
void check_schema(table const& got, table const& want, char const* what);

/// Pipeline options: every field, in a fixed order (checkpoint_format_version says what each
/// version added).
void write_options(state_writer& w, pipeline_options const& o);
/// Reads options as written by `version`; only what the rest of the payload depends on is
/// range-checked here (the pipeline constructor checks the rest).
pipeline_options read_options(state_reader& r, std::uint32_t version);

/// Writes `bytes` to `path` atomically: a temporary file of its own in the same directory,
/// written fully, fsync'ed and renamed over `path`; a failure leaves the previous file and
/// throws checkpoint_error naming path and cause.
void write_atomically(std::string const& path, std::string const& bytes);
/// Removes the temporary files of a checkpoint at `path` left by writers that died (best
/// effort).
void remove_stale_temporaries(std::string const& path);
/// The bytes of the file at `path`; checkpoint_error naming path and cause when unreadable.
std::string read_checkpoint_file(std::string const& path);

}  // namespace cusense::detail
