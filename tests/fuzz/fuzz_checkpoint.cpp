// libFuzzer target for the checkpoint reader. The first input byte picks the mode:
//   even: the rest is a whole checkpoint file (framing, magic, version, length, checksum);
//   odd:  the rest is a payload, framed here with a valid header and CRC-32, so the fuzzer
//         reaches the section parsers (options, engine and detector states, pending outputs).
// Reading must either succeed or throw cusense::checkpoint_error / invalid_argument (never
// crash, hang or allocate without bound). A restored pipeline must then work: push, poll,
// poll_late, poll_scores, poll_silence, stats, a checkpoint of it that restores again, flush;
// with records_pushed == aggregated + late + rejected kept by the calls after the restore.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <cusense/cusense.hpp>
#include <cusense/detail/checkpoint.hpp>

#include "fuzz_check.hpp"

namespace {

using namespace cusense;

void exercise(pipeline& p)
{
  std::vector<std::uint32_t> keys = {0, 1, 2, 1, 0, 3};
  std::vector<std::int64_t> ts    = {0, 10, -5, 1000, 20, 7};
  std::vector<double> values(keys.size() * static_cast<std::size_t>(p.options().channels), 1.5);
  pipeline_stats const before = p.stats();
  try {
    p.push(keys.data(), ts.data(), values.data(), keys.size());
  } catch (capacity_error const&) {
  }
  pipeline_stats const after = p.stats();
  FUZZ_CHECK(after.records_pushed - before.records_pushed ==
             (after.records_aggregated - before.records_aggregated) +
               (after.records_late - before.records_late) +
               (after.records_rejected - before.records_rejected) ||
             !p.options().windowed);
  (void)p.poll();
  (void)p.poll_late();
  bool scorers = false, silence = false;
  for (auto const& d : p.options().detectors) (d.kind == detector_kind::silence ? silence : scorers) = true;
  if (scorers) { (void)p.poll_scores(); }
  if (silence) { (void)p.poll_silence(); }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size)
{
  if (size == 0) { return 0; }
  std::string bytes(reinterpret_cast<char const*>(data) + 1, size - 1);
  if (data[0] & 1u) { bytes = detail::frame_checkpoint(bytes); }
  std::istringstream in(bytes);
  std::optional<pipeline> p;
  try {
    p.emplace(pipeline::restore(in, backend::cpu));
  } catch (invalid_argument const&) {  // checkpoint_error, and options the pipeline rejects
    return 0;
  } catch (backend_unavailable const&) {
    return 0;
  }
  // Valid but costly configurations (many windows per record) only exercise the reader.
  window_spec const& w = p->options().window;
  if (p->options().windowed && w.type == window_spec::kind::sliding && w.slide > 0 &&
      w.size / w.slide > 64) {
    return 0;
  }
  exercise(*p);
  std::stringstream again;
  p->checkpoint(again);
  std::optional<pipeline> q;
  try {
    q.emplace(pipeline::restore(again, backend::cpu));
  } catch (std::exception const& e) {
    std::fprintf(stderr, "a checkpoint written by a restored pipeline does not read back: %s\n", e.what());
    std::abort();
  }
  exercise(*q);
  (void)q->flush();
  return 0;
}
