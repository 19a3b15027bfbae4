// The detector specifications of the public API (detectors.hpp): names and validation.
#include <cctype>
#include <string>

#include <cusense/detectors.hpp>
#include <cusense/error.hpp>
#include <cusense/types.hpp>

namespace cusense {

std::string to_string(detector_kind k)
{
  switch (k) {
    case detector_kind::ewma: return "ewma";
    case detector_kind::rolling_z: return "rolling_z";
    case detector_kind::rolling_mad: return "rolling_mad";
    case detector_kind::knn_discord: return "knn_discord";
    case detector_kind::silence: return "silence";
    case detector_kind::multiscale_z: return "multiscale_z";
    case detector_kind::joint_z: return "joint_z";
  }
  return "unknown";
}

void validate(detector_spec const& s, int channels)
{
  std::string const who = "detector '" + s.column_name() + "': ";
  CUSENSE_EXPECTS(s.threshold >= 0.0 && s.threshold <= 1.0,
                  who + "threshold must lie in [0, 1], got " + std::to_string(s.threshold));
  CUSENSE_EXPECTS(s.channel >= 0 && s.channel < channels,
                  who + "channel " + std::to_string(s.channel) + " does not exist (" +
                    std::to_string(channels) + " channel(s))");
  for (char c : s.name) {
    CUSENSE_EXPECTS(std::isalnum(static_cast<unsigned char>(c)) || c == '_',
                    who + "name may hold only letters, digits and '_'");
  }
  switch (s.kind) {
    case detector_kind::ewma:
      CUSENSE_EXPECTS(s.alpha > 0.0 && s.alpha <= 1.0,
                      who + "alpha must lie in (0, 1], got " + std::to_string(s.alpha));
      CUSENSE_EXPECTS(s.min_count >= 1, who + "min_count must be >= 1");
      break;
    case detector_kind::rolling_z:
    case detector_kind::rolling_mad:
      CUSENSE_EXPECTS(s.window >= 2, who + "window must be >= 2 records, got " + std::to_string(s.window));
      CUSENSE_EXPECTS(s.window <= (std::int64_t{1} << 24), who + "window must be <= 2^24 records");
      CUSENSE_EXPECTS(s.min_count >= 1 && s.min_count <= s.window,
                      who + "min_count must lie in [1, window], got " + std::to_string(s.min_count));
      break;
    case detector_kind::knn_discord:
      CUSENSE_EXPECTS(s.L >= 1 && s.L <= (std::int64_t{1} << 23),
                      who + "L (subsequence length) must lie in [1, 2^23]");
      CUSENSE_EXPECTS(s.H >= 2 * s.L, who + "H (history) must be >= 2 L");
      CUSENSE_EXPECTS(s.H <= (std::int64_t{1} << 24), who + "H must be <= 2^24 records");
      CUSENSE_EXPECTS(s.min_candidates >= 1, who + "min_candidates must be >= 1");
      CUSENSE_EXPECTS(s.H2 >= 1 && s.H2 <= (std::int64_t{1} << 24), who + "H2 must lie in [1, 2^24]");
      CUSENSE_EXPECTS(s.K >= 1 && s.K <= (std::int64_t{1} << 24), who + "K must lie in [1, 2^24]");
      break;
    case detector_kind::multiscale_z:
    case detector_kind::joint_z: {
      auto const weight = [&](double w, char const* name, bool zero_ok) {
        CUSENSE_EXPECTS((zero_ok ? w >= 0.0 : w > 0.0) && w <= 1.0,
                        who + name + (zero_ok ? " must lie in [0, 1], got " : " must lie in (0, 1], got ") +
                          std::to_string(w));
      };
      weight(s.alpha, "alpha", false);
      weight(s.beta, "beta", false);
      weight(s.gamma, "gamma", false);
      CUSENSE_EXPECTS(s.min_count >= 1 && s.min_count <= (std::int64_t{1} << 24),
                      who + "min_count must lie in [1, 2^24]");
      if (s.kind == detector_kind::multiscale_z) {
        weight(s.trend, "trend", true);
        CUSENSE_EXPECTS(s.K >= 0 && s.K <= (std::int64_t{1} << 24), who + "K must lie in [0, 2^24]");
        CUSENSE_EXPECTS(s.clip > 0.0 && s.clip <= 1e6, who + "clip must lie in (0, 1e6]");
      } else {
        CUSENSE_EXPECTS(s.freeze > 0.0 && s.freeze <= 1e6, who + "freeze must lie in (0, 1e6]");
        CUSENSE_EXPECTS(s.channels >= 0 && s.channel + s.channels <= channels,
                        who + "channels " + std::to_string(s.channel) + " .. " +
                          std::to_string(s.channel + s.channels - 1) + " do not exist (" +
                          std::to_string(channels) + " channel(s))");
      }
      break;
    }
    case detector_kind::silence:
      CUSENSE_EXPECTS(s.timeout > 0 && s.timeout <= max_duration,
                      who + "timeout must lie in (0, 2^61] ns, got " + std::to_string(s.timeout));
      break;
  }
}

}  // namespace cusense
