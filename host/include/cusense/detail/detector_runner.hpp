#pragma once
// Internal: the detector runner (host side, shared by both backends): watermark, buffering until
// records can be scored causally, release order, late records, silence and the output tables;
// the backend's detector_engine scores released records. Not part of the public API.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <queue>
#include <unordered_map>
#include <utility>
#include <vector>

#include <cusense/detail/detector_engine.hpp>
#include <cusense/detectors.hpp>
#include <cusense/table.hpp>
#include <cusense/types.hpp>

namespace cusense::detail {

/// Converts a validated scoring spec (not silence) to kernel parameters.
ops::detector_params to_params(detector_spec const& spec);

struct detector_counters {
  std::uint64_t scored   = 0;  ///< released and scored
  std::uint64_t late     = 0;
  std::uint64_t buffered = 0;  ///< waiting for the watermark
  std::uint64_t silence_events = 0;
  std::uint64_t keys        = 0;  ///< keys holding detector state
  std::uint64_t state_bytes = 0;  ///< per-key state and buffered records
  std::int64_t watermark = 0;  ///< valid when has_watermark
  bool has_watermark     = false;
};

/// A record to release, as sorted by detector_runner::release: hi = its timestamp minus the
/// smallest released one, lo = its key, ref = its index in the released records.
struct detector_runner_sort_item {
  std::uint64_t hi;
  std::uint32_t lo;
  std::uint32_t ref;
};

/// Watermark, buffering, release order, late records, silence and output tables.
class detector_runner {
 public:
  detector_runner(pipeline_options const& options, backend where);

  /// `steps` (external watermarks; null: the watermark follows the records) move the watermark
  /// between records; `positions` then gives each record's stream position, written to the
  /// seq column of its score row.
  void push(std::uint32_t const* keys, std::int64_t const* ts, void const* values, bool f32,
            std::size_t n, std::int64_t const* positions = nullptr,
            watermark_steps const* steps = nullptr);
  /// Releases every buffered record.
  void flush();
  table drain_scores();
  table drain_silence();
  detector_counters counters() const;
  bool has_scorers() const { return !scorers_.empty(); }
  bool has_silence() const { return has_silence_; }
  /// Checkpoints: the complete state but the collected output (drain it first).
  void save_state(state_writer& out);
  void load_state(state_reader& in);

 private:
  struct pending {
    std::int64_t ts;
    std::uint32_t key;
    std::uint32_t slot;
    std::int64_t seq;
    bool late;
    std::size_t value_at;  // index of its first value in pending_values_ / late values
  };
  struct silence_state {
    std::int64_t last_seen = 0;
    bool seen              = false;
    bool reported          = false;  // the current silence has been reported
    bool queued            = false;  // has an entry in deadlines_
  };

  template <typename T>
  void push_typed(std::uint32_t const* keys, std::int64_t const* ts, T const* values, std::size_t n,
                  std::int64_t const* positions, watermark_steps const* steps);
  void release(bool all);
  void emit_silence(std::uint32_t key, std::int64_t last_seen, bool back, std::int64_t back_at);
  std::uint32_t slot_for(std::uint32_t key);
  std::uint32_t slot_lookup(std::uint32_t key);

  int channels_;
  std::int64_t ooo_;
  std::vector<detector_spec> scorers_;
  std::vector<double> thresholds_;
  std::vector<std::string> value_names_;
  std::unique_ptr<detector_engine> engine_;
  bool has_silence_     = false;
  std::int64_t timeout_ = 0;
  std::size_t bytes_per_key_ = 0;  // detector state, silence state and the key's slot

  std::unordered_map<std::uint32_t, std::uint32_t> slot_of_;
  std::vector<std::uint32_t> slot_dense_;  // cache of slot_of_ for small keys: slot + 1, 0 = unknown
  std::vector<std::uint32_t> slot_key_;
  std::vector<pending> pending_;
  std::vector<double> pending_values_;
  std::vector<pending> late_now_;  // late records of the current push
  std::vector<double> late_values_;
  std::int64_t max_ts_   = 0;
  bool has_max_          = false;
  std::int64_t floor_    = 0;  // after a flush: timestamps below it are late
  bool has_floor_        = false;
  std::int64_t next_seq_ = 0;
  detector_counters counters_;

  std::vector<silence_state> silence_;  // by slot
  using deadline = std::pair<std::int64_t, std::uint32_t>;  // (last_seen + timeout, slot)
  std::priority_queue<deadline, std::vector<deadline>, std::greater<deadline>> deadlines_;

  // scratch of release(), kept to reuse its memory
  std::vector<detector_runner_sort_item> order_, sort_tmp_;
  std::vector<std::size_t> ref64_;  // release order when order_ cannot hold it (>= 2^32 rows)
  std::vector<std::int64_t> rel_ts_, rel_seq_;  // released records, in arrival order
  std::vector<std::uint32_t> rel_key_, rel_slot_;
  std::vector<double> rel_values_;
  std::vector<std::uint32_t> score_slots_;
  std::vector<double> score_values_, score_out_;
  std::vector<std::size_t> row_of_;

  // output being collected
  std::vector<std::uint32_t> out_key_;
  std::vector<std::int64_t> out_ts_, out_seq_;
  std::vector<std::uint8_t> out_late_;
  std::vector<std::vector<double>> out_values_;  // per channel
  std::vector<std::vector<double>> out_scores_;  // per scorer
  struct silence_event {
    std::int64_t at;  // silent_since, or back_at for a comeback
    std::uint32_t key;
    bool back;
    std::int64_t last_seen, silent_since, back_at;
  };
  std::vector<silence_event> silence_out_;
  std::vector<silence_event> silence_step_;
};

}  // namespace cusense::detail
