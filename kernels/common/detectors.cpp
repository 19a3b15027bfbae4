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
    case detector_kind::likelihood: return "likelihood";
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
  // Integer sizes are capped so that one key's state stays bounded (a KnnDiscord key holds H +
  // H2 + K values, a rolling key 1 or 2 times `window`): at most max_detector_size (2^20)
  // records, max_subsequence (1024) for L.
  auto const size = [&](std::int64_t v, char const* name, std::int64_t low) {
    CUSENSE_EXPECTS(v >= low && v <= max_detector_size,
                    who + name + " must lie in [" + std::to_string(low) + ", " +
                      std::to_string(max_detector_size) + "], got " + std::to_string(v));
  };
  // knn_discord's parameters (also a likelihood's knn_discord base)
  auto const knn = [&] {
    CUSENSE_EXPECTS(s.L >= 1 && s.L <= max_subsequence,
                    who + "L (subsequence length) must lie in [1, " + std::to_string(max_subsequence) +
                      "], got " + std::to_string(s.L));
    size(s.H, "H (history)", 2);
    CUSENSE_EXPECTS(s.H >= 2 * s.L, who + "H (history) must be >= 2 L, got H = " + std::to_string(s.H) +
                                      ", L = " + std::to_string(s.L));
    size(s.min_candidates, "min_candidates", 1);
    size(s.H2, "H2", 1);
    size(s.K, "K", 1);
    size(s.min_count, "min_count", 1);
    CUSENSE_EXPECTS(s.tod_weight >= 0.0 && s.tod_weight <= 1e6,
                    who + "tod_weight must lie in [0, 1e6], got " + std::to_string(s.tod_weight));
  };
  // multiscale_z's and joint_z's weights (also a likelihood's multiscale_z base)
  auto const weights = [&] {
    auto const weight = [&](double w, char const* name, bool zero_ok) {
      CUSENSE_EXPECTS((zero_ok ? w >= 0.0 : w > 0.0) && w <= 1.0,
                      who + name + (zero_ok ? " must lie in [0, 1], got " : " must lie in (0, 1], got ") +
                        std::to_string(w));
    };
    weight(s.alpha, "alpha", false);
    weight(s.beta, "beta", false);
    weight(s.gamma, "gamma", false);
    size(s.min_count, "min_count", 1);
    if (s.kind != detector_kind::joint_z) { weight(s.trend, "trend", true); }
  };
  auto const multiscale = [&] {
    size(s.K, "K", 0);
    CUSENSE_EXPECTS(s.clip > 0.0 && s.clip <= 1e6, who + "clip must lie in (0, 1e6]");
  };
  switch (s.kind) {
    case detector_kind::ewma:
      CUSENSE_EXPECTS(s.alpha > 0.0 && s.alpha <= 1.0,
                      who + "alpha must lie in (0, 1], got " + std::to_string(s.alpha));
      size(s.min_count, "min_count", 1);
      break;
    case detector_kind::rolling_z:
    case detector_kind::rolling_mad:
      size(s.window, "window", 2);
      CUSENSE_EXPECTS(s.min_count >= 1 && s.min_count <= s.window,
                      who + "min_count must lie in [1, window], got " + std::to_string(s.min_count));
      break;
    case detector_kind::knn_discord: knn(); break;
    case detector_kind::multiscale_z:
    case detector_kind::joint_z: {
      weights();
      if (s.kind == detector_kind::multiscale_z) {
        multiscale();
      } else {
        CUSENSE_EXPECTS(s.freeze > 0.0 && s.freeze <= 1e6, who + "freeze must lie in (0, 1e6]");
        CUSENSE_EXPECTS(s.channels >= 0 && s.channel + s.channels <= channels,
                        who + "channels " + std::to_string(s.channel) + " .. " +
                          std::to_string(s.channel + s.channels - 1) + " do not exist (" +
                          std::to_string(channels) + " channel(s))");
      }
      break;
    }
    case detector_kind::likelihood: {
      CUSENSE_EXPECTS(s.base == detector_kind::knn_discord || s.base == detector_kind::multiscale_z,
                      who + "base must be knn_discord or multiscale_z, got " + to_string(s.base));
      if (s.base == detector_kind::knn_discord) {
        knn();
      } else {
        weights();
        multiscale();
      }
      CUSENSE_EXPECTS(s.scale > 0.0 && s.scale <= 1e6,
                      who + "scale must lie in (0, 1e6], got " + std::to_string(s.scale));
      CUSENSE_EXPECTS(
        s.short_window >= 1 && s.short_window <= max_subsequence,
        who + "short_window must lie in [1, 1024], got " + std::to_string(s.short_window));
      size(s.reestimate, "reestimate", 1);
      size(s.long_window, "long_window", s.reestimate);
      CUSENSE_EXPECTS((s.long_window + s.reestimate - 1) / s.reestimate <= (std::int64_t{1} << 16),
                      who + "long_window / reestimate must be <= 65536 blocks, got " +
                        std::to_string(s.long_window) + " / " + std::to_string(s.reestimate));
      size(s.warmup, "warmup", 1);
      CUSENSE_EXPECTS(s.learn >= 0 && s.learn < s.warmup,
                      who + "learn must lie in [0, warmup), got " + std::to_string(s.learn));
      size(s.rest, "rest", 0);
      CUSENSE_EXPECTS(s.spatial >= 0.0 && s.spatial <= 1e6,
                      who + "spatial must lie in [0, 1e6], got " + std::to_string(s.spatial));
      break;
    }
    case detector_kind::silence:
      CUSENSE_EXPECTS(s.timeout > 0 && s.timeout <= max_duration,
                      who + "timeout must lie in (0, 2^61] ns, got " + std::to_string(s.timeout));
      break;
  }
}

}  // namespace cusense
