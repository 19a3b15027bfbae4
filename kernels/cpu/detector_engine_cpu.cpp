// CPU backend of the detectors: per-key state in flat host arrays (slot-major), records scored
// one by one in release order with the shared sequential step (ops::detector_step). Keys are
// independent, so large batches are split across threads by slot; each key's records stay in
// order on one thread, so results are bit-identical for any thread count and batching.
#include <algorithm>
#include <thread>

#include <cusense/detail/detector_engine.hpp>
#include <cusense/ops/detectors.hpp>

namespace cusense::detail {
namespace {

constexpr std::size_t parallel_threshold = 1 << 14;

class cpu_detector_engine final : public detector_engine {
 public:
  cpu_detector_engine(std::vector<ops::detector_params> params, int channels)
    : params_(std::move(params)), channels_(channels), d_(params_.size()), i_(params_.size())
  {
  }

  void score(std::uint32_t const* slots, std::int64_t const* ts, double const* values,
             std::size_t n, std::uint32_t num_slots, double* scores) override
  {
    grow(num_slots);
    auto const ch = static_cast<std::size_t>(channels_);
    unsigned const threads =
      n >= parallel_threshold ? std::max(1u, std::thread::hardware_concurrency()) : 1u;
    for (std::size_t d = 0; d < params_.size(); ++d) {
      ops::detector_params const& p = params_[d];
      auto const ds = static_cast<std::size_t>(p.d_stride());
      auto const is = static_cast<std::size_t>(p.i_stride());
      double* out   = scores + d * n;
      auto run      = [&](unsigned part, unsigned parts) {
        for (std::size_t r = 0; r < n; ++r) {
          std::uint32_t const s = slots[r];
          if (parts > 1 && s % parts != part) continue;
          out[r] = ops::detector_step_row(p, d_[d].data() + s * ds, i_[d].data() + s * is,
                                          values + r * ch + static_cast<std::size_t>(p.channel),
                                          ts[r]);
        }
      };
      if (threads <= 1) {
        run(0, 1);
      } else {
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t) pool.emplace_back(run, t, threads);
        for (auto& t : pool) t.join();
      }
    }
  }

  void export_state(std::uint32_t num_slots, std::vector<std::vector<double>>& d,
                    std::vector<std::vector<std::int64_t>>& i) override
  {
    grow(num_slots);
    d.resize(params_.size());
    i.resize(params_.size());
    for (std::size_t k = 0; k < params_.size(); ++k) {
      d[k].assign(d_[k].begin(), d_[k].begin() + num_slots * static_cast<std::size_t>(params_[k].d_stride()));
      i[k].assign(i_[k].begin(), i_[k].begin() + num_slots * static_cast<std::size_t>(params_[k].i_stride()));
    }
  }

  void import_state(std::uint32_t num_slots, std::vector<std::vector<double>> const& d,
                    std::vector<std::vector<std::int64_t>> const& i) override
  {
    for (std::size_t k = 0; k < params_.size(); ++k) {
      d_[k] = d[k];
      i_[k] = i[k];
    }
    slots_ = num_slots;
  }

 private:
  void grow(std::uint32_t num_slots)
  {
    if (num_slots <= slots_) return;
    for (std::size_t d = 0; d < params_.size(); ++d) {
      d_[d].resize(num_slots * static_cast<std::size_t>(params_[d].d_stride()), 0.0);
      i_[d].resize(num_slots * static_cast<std::size_t>(params_[d].i_stride()), 0);
    }
    slots_ = num_slots;
  }

  std::vector<ops::detector_params> params_;
  int channels_;
  std::vector<std::vector<double>> d_;
  std::vector<std::vector<std::int64_t>> i_;
  std::uint32_t slots_ = 0;
};

}  // namespace

std::unique_ptr<detector_engine> make_cpu_detector_engine(std::vector<ops::detector_params> params,
                                                          int channels)
{
  return std::make_unique<cpu_detector_engine>(std::move(params), channels);
}

}  // namespace cusense::detail
