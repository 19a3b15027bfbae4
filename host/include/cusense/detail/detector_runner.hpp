#pragma once
// Internal: the detector runner (host side, shared by both backends): watermark, buffering until
// records can be scored causally, release order, late records, silence and the output tables;
// the backend's detector_engine scores released records. Not part of the public API.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <cusense/detail/detector_engine.hpp>
#include <cusense/detail/key_slot_map.hpp>
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

/// A record to release, as sorted by detector_runner::plan: hi = its timestamp minus the
/// smallest released one, lo = its key, ref = its index in the released records.
struct detector_runner_sort_item {
  std::uint64_t hi;
  std::uint32_t lo;
  std::uint32_t ref;
};

/// Watermark, buffering, release order, late records, silence, key expiry and output tables.
///
/// A push runs in three steps, so that it is applied whole or not at all even when memory
/// runs out (pipeline::push runs the window engine between reserve() and apply()):
///  - plan() reads the batch and the state and decides everything the push will do: which
///    records are late, released or buffered, the release order, the slots of new keys and of
///    keys that start afresh (key_ttl); it checks max_detector_keys. It changes
///    nothing observable and may throw (capacity_error, std::bad_alloc).
///  - reserve() makes room for what the plan adds. It changes nothing observable and may throw
///    std::bad_alloc.
///  - apply() carries the plan out without allocating on the host (the CPU scorer starts threads
///    for batches of 16,384 released records or more, and the CUDA scorer allocates device
///    memory: those can still fail).
/// Slots of keys whose state was dropped are not reused: they are compacted away (the state
/// copied out and back) once they outnumber the live ones, at the start of a plan.
class detector_runner {
 public:
  detector_runner(pipeline_options const& options, backend where);

  /// A push of n records: plan, reserve, apply (the steps above). `steps` (external
  /// watermarks; null: the watermark follows the records) move the watermark between records;
  /// `positions` then gives each record's stream position, written to the seq column of its
  /// score row.
  void push(std::uint32_t const* keys, std::int64_t const* ts, void const* values, bool f32,
            std::size_t n, std::int64_t const* positions = nullptr,
            watermark_steps const* steps = nullptr);
  void plan(std::uint32_t const* keys, std::int64_t const* ts, void const* values, bool f32,
            std::size_t n, std::int64_t const* positions = nullptr,
            watermark_steps const* steps = nullptr);
  void reserve();
  /// Applies the last plan (made for the same batch, positions and steps).
  void apply(std::uint32_t const* keys, std::int64_t const* ts, void const* values, bool f32,
             std::size_t n, std::int64_t const* positions = nullptr,
             watermark_steps const* steps = nullptr);
  /// counters().state_bytes once the planned push is applied (before keys expire).
  std::uint64_t planned_state_bytes() const;
  /// Releases every buffered record (plan, reserve, apply of an empty batch releasing all).
  void flush();
  table drain_scores();
  table drain_silence();
  detector_counters counters() const;
  bool has_scorers() const { return !scorers_.empty(); }
  bool has_silence() const { return has_silence_; }
  /// Checkpoints: the complete state but the collected output (drain it first). The keys are
  /// written in key order, so the bytes do not depend on the slots the keys happen to have.
  void save_state(state_writer& out);
  void load_state(state_reader& in);

 private:
  static constexpr std::uint32_t no_slot = 0xffffffffu;

  struct pending {
    std::int64_t ts;
    std::uint32_t key;
    std::uint32_t slot;  // the key's slot (kept current when the key starts afresh)
    std::int64_t seq;
    std::size_t value_at;  // index of its first value in pending_values_
  };
  /// The clock of a slot: its last scored record (also the silence detector's state).
  struct silence_state {
    std::int64_t last_seen = 0;
    bool seen              = false;  // a record of the slot was scored
    bool reported          = false;  // the current silence has been reported
    bool queued            = false;  // has an entry in deadlines_
  };
  /// A key that starts afresh at row `row` (release order): from slot `from` to slot `to`.
  struct restart {
    std::size_t row;
    std::uint32_t from, to;
  };
  /// What plan() decided, for reserve() and apply().
  struct plan_counts {
    bool all               = false;  // flush: release everything
    std::size_t n          = 0;      // records of the batch
    std::int64_t max_ts    = 0;
    bool has_max           = false;
    std::int64_t release_below = 0;  // records with ts < this are released (unless all)
    std::size_t new_keys   = 0;
    std::size_t new_slots  = 0;  // new keys and restarts
    std::size_t released_pending = 0;  // buffered records released
    std::size_t buffered_new     = 0;  // records of the batch that stay buffered
    std::size_t rows             = 0;  // output rows: released and late records
    std::size_t scored           = 0;
    std::size_t deadlines_due    = 0;  // silence deadlines that may fall due
  };
  struct touched_key {  // plan(): a key's slot and clock as the release goes on
    std::uint32_t key, slot;
    std::int64_t latest;
    bool seen;
  };

  template <typename T>
  void plan_typed(std::uint32_t const* keys, std::int64_t const* ts, T const* values, std::size_t n,
                  std::int64_t const* positions, watermark_steps const* steps, bool all);
  template <typename T>
  void apply_typed(std::uint32_t const* keys, std::int64_t const* ts, T const* values, std::size_t n,
                   std::int64_t const* positions);
  void release_order();
  void emit_silence(std::uint32_t key, std::int64_t last_seen, bool back, std::int64_t back_at);
  std::uint32_t add_slot(std::uint32_t key) noexcept;
  void drop_slot(std::uint32_t slot) noexcept;
  void lru_unlink(std::uint32_t slot) noexcept;
  void lru_push_back(std::uint32_t slot) noexcept;
  void compact_slots();
  std::size_t pending_bytes() const;

  int channels_;
  std::int64_t ooo_;
  std::int64_t ttl_;               // key_ttl, 0 = never
  std::size_t max_keys_;           // max_detector_keys, 0 = unlimited
  std::vector<detector_spec> scorers_;
  std::vector<double> thresholds_;
  std::vector<std::string> value_names_;
  std::unique_ptr<detector_engine> engine_;
  bool has_silence_     = false;
  std::int64_t timeout_ = 0;
  std::size_t bytes_per_key_ = 0;  // detector state, clock and the key's entries in the tables

  // Keys and slots. Slots are taken in order and never reused: a dropped slot stays dead until
  // compact_slots() renumbers the live ones.
  key_slot_map slot_of_;
  std::uint32_t slots_used_ = 0;
  std::uint32_t dead_slots_ = 0;
  std::vector<std::uint32_t> slot_key_;     // by slot
  std::vector<silence_state> silence_;      // by slot
  std::vector<std::uint8_t> live_;          // by slot
  // With a ttl: the records of each slot still buffered, and the slots with a scored record
  // and nothing buffered in a list ordered by their last scored record (oldest first).
  std::vector<std::uint32_t> buffered_, lru_prev_, lru_next_;  // by slot
  std::uint32_t lru_head_ = no_slot, lru_tail_ = no_slot;

  std::vector<pending> pending_;
  std::vector<double> pending_values_;
  std::int64_t max_ts_   = 0;
  bool has_max_          = false;
  std::int64_t floor_    = 0;  // after a flush: timestamps below it are late
  bool has_floor_        = false;
  std::int64_t next_seq_ = 0;
  detector_counters counters_;

  struct deadline {  // (last_seen + timeout, slot); a min-heap in deadlines_
    std::int64_t when;
    std::uint32_t slot;
    bool operator>(deadline const& o) const
    {
      return when != o.when ? when > o.when : slot > o.slot;
    }
  };
  std::vector<deadline> deadlines_;

  // plan() scratch, read by apply(); kept to reuse its memory
  plan_counts plan_;
  std::vector<std::uint32_t> acc_slot_;  // per record of the batch: its slot, no_slot if late
  key_slot_map plan_new_;                // keys first seen in the batch -> slot
  std::vector<std::uint32_t> plan_new_keys_;
  key_slot_map plan_touched_;            // with a ttl: key -> index in touched_
  std::vector<touched_key> touched_;
  std::vector<restart> restarts_;
  std::vector<detector_runner_sort_item> order_, sort_tmp_;
  std::vector<std::size_t> ref64_;  // release order when order_ cannot hold it (>= 2^32 rows)
  std::vector<std::int64_t> rel_ts_, rel_seq_;  // rows in arrival order
  std::vector<std::uint32_t> rel_key_, rel_slot_;  // rel_slot_: no_slot for a late record
  std::vector<double> rel_values_;
  std::vector<std::uint32_t> row_slot_;  // by row in release order (after restarts)
  std::vector<std::uint32_t> score_slots_;
  std::vector<std::int64_t> score_ts_;  // event times of the records to score
  std::vector<double> score_values_, score_out_;
  std::vector<std::size_t> row_of_;
  std::vector<std::size_t> heap_walk_;
  std::int64_t order_tmin_ = 0;
  bool order_radix_        = false;

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
