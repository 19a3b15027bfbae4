#pragma once
// Streaming per-key anomaly detectors: configuration types. Included by types.hpp; the pipeline
// runs them (pipeline::poll_scores, pipeline::poll_silence) and cusense::score scores a finite
// stream in one call (pipeline.hpp).
//
// Semantics (both backends):
// - Causality in event time. Each key's records are scored in (timestamp, arrival) order, and
//   a record's score depends only on that key's earlier records in this order and on itself.
//   Records are buffered per pipeline and released for scoring once the watermark (largest
//   event time seen - max_out_of_orderness, the same watermark as the windows) guarantees that
//   no earlier record of that key can still arrive: a push releases every buffered record with
//   timestamp < watermark. flush() releases all buffered records.
// - Late records. A record whose timestamp is < the watermark just before it (arrival order),
//   or < the largest timestamp seen before the last flush(), cannot be scored causally: it is
//   never silently dropped but reported by poll_scores with late = true, NaN scores and
//   is_anomaly = false, and counted (stats().records_score_late). It does not touch any state.
// - Batching. Scores do not depend on how the stream is cut into pushes (bit-identical on the
//   CPU backend), and many keys interleaved give each key the scores it gets alone. Without a
//   flush(), the scores polled after a prefix of the pushes are a prefix of those of the whole
//   stream.
// - Values. A detector reads one value channel (`channel`, default 0). A NaN value is scored
//   NaN (is_anomaly false) and leaves the state unchanged.
// - Scores lie in [0, 1). The z-score detectors map z to Lp / (1 + Lp), Lp = -log10(erfc(|z| /
//   sqrt 2)) (the two-sided normal tail in decades): strictly increasing in |z|, 0 at z = 0,
//   0.565 at 1.96, 0.720 at 3, 0.862 at 5. A spread (std, MAD) <= 1e-12 gives z = 0 for a
//   deviation <= 1e-12 and |z| = 1e6 otherwise. is_anomaly = score >= threshold.
#include <cstdint>
#include <string>

namespace cusense {

enum class detector_kind {
  ewma,         ///< exponentially weighted mean / variance z-score
  rolling_z,    ///< mean / std of the previous `window` records
  rolling_mad,  ///< median / MAD of the previous `window` records (robust)
  knn_discord,  ///< 1-NN subsequence discord, calibrated by the recent maximum, gated
  silence,      ///< sensor silent for longer than `timeout` (poll_silence, no score column)
  multiscale_z, ///< Holt residual z at three time scales (the default)
  joint_z,      ///< several channels of a record scored jointly (multivariate)
  likelihood,   ///< anomaly likelihood of a raw scorer's novelty, and new extremes
};

std::string to_string(detector_kind k);

/// One detector of a pipeline. Build with the factories; `name` labels its output columns
/// (score_<name>, is_anomaly_<name>) and defaults to the kind's name.
///
/// - ewma(alpha): state m, v per key; the first value sets m = x, v = 0. For each later value
///   x: d = x - m, z = d / sqrt(v) (state before the update), then m = (1-alpha) m + alpha x,
///   v = (1-alpha) (v + alpha d^2). Score 0 while the key has fewer than max(1, min_count)
///   earlier values. alpha in (0, 1].
/// - rolling_z(window): B = the previous min(count, window) values of the key; z = (x -
///   mean(B)) / std(B), population std (ddof 0), two-pass. Score 0 while |B| < min_count
///   (default 2). window >= 2.
/// - rolling_mad(window): B as above; z = (x - median(B)) / (1.4826 MAD(B)), with 1.2533 *
///   mean|B - median(B)| as the spread when the MAD is 0. Median of an even count: mean of the
///   two middle values. Score 0 while |B| < min_count (default 2). window >= 2.
/// - knn_discord(L, H, min_candidates, H2, K): for the record at key
///   position t, query q = the last L values (including x); candidates: all length-L
///   subsequences of the previous H values not overlapping q (raw = 0 when fewer than
///   min_candidates); raw = min_j ||q - c_j||_2 / (sqrt(L) std(previous min(t, H) values));
///   calibrated s = raw / (raw + M), M = max raw of the previous H2 records; score = s when s
///   is greater than every s of the previous K records, else 0 (one alarm per burst); 0 while
///   t < min_count (250 by the factory: the calibration's warm-up). With tod_weight w > 0 a
///   candidate whose last value lies dh hours of the day away from the record's (UTC, circular)
///   adds w dh^2 to its squared normalised distance (ops::knn_raw_tod); CPU backend only.
/// - likelihood: anomaly likelihood (after Numenta's HTM detector for NAB) of the novelty
///   min(1, dev / scale) of a raw scorer `base` (knn_discord: its raw distance, with L, H,
///   min_candidates, tod_weight; multiscale_z: its z before the gate, with alpha, trend, beta,
///   gamma, clip, min_count): the mean a of the last short_window novelties is compared with
///   the mean and spread of a over the last long_window records (re-estimated every
///   `reestimate` records, the first `learn` records left out, floored at 0.03 and sqrt 0.0003);
///   its two-sided normal tail p gives the score log(p + 1e-10) / log(1e-10) (0.5 at p = 1e-5).
///   Only the first record of a run with p <= 1e-5 keeps it, and only when no such alarm was
///   kept in the previous `rest` records (else p = 1e-3: score 0.3). A value beyond every
///   earlier value by more than `spatial` times their range scores 1. Scores lie in [0, 1]; 0
///   while the key has fewer than `warmup` earlier values. CPU backend only. See
///   ops::likelihood_step.
/// - multiscale_z(alpha, trend, beta, gamma, clip), the default detector: Holt's linear trend
///   (level weight alpha, slope weight trend) predicts x; the residual e, and its short-scale
///   EWMAs with weights beta and beta/3, are each divided by the root of an EWMA (weight gamma)
///   of their own squares; the largest of the three, read as a Student t with
///   max(1, (min(count, 2/gamma) - 1) / 2) degrees of freedom, gives z; residuals are clipped at clip spreads
///   when they update the state. Weights are max(w, 1/count) early on. Score 0 while the key
///   has fewer than min_count (30) earlier values. With K > 0 (500 by the factory) a score is
///   kept only when it beats every score since the start of the previous block of K records
///   (the last K to 2K - 1; one alarm per burst), else 0. See ops::multiscale_z_step.
/// - joint_z(alpha, beta, gamma, freeze): reads `channels` channels from `channel` on (0: all
///   the pipeline's channels from `channel` on); z = the normal equivalent of the chi-square
///   sum over channels of (short-scale EWMA of x - mean)^2 / its own EWMA square; mean and
///   spread adapt only while z < freeze. Score 0 while fewer than min_count (50) earlier
///   records. See ops::joint_z_step.
/// - silence(timeout): see pipeline::poll_silence. At most one per pipeline.
struct detector_spec {
  detector_kind kind = detector_kind::ewma;
  std::string name;         ///< output column suffix; empty = to_string(kind)
  /// is_anomaly = score >= threshold; in [0, 1]. 0.8 is |z| ~ 3.9 for the z-score detectors.
  double threshold = 0.8;
  int channel      = 0;     ///< value channel read

  double alpha           = 0.05;  ///< ewma: in (0, 1]
  std::int64_t window    = 100;   ///< rolling_z, rolling_mad: >= 2
  /// values needed before scoring (ewma 1, rolling 2, knn_discord 250, multiscale_z 30, joint_z
  /// 50; likelihood: its multiscale_z base's, the likelihood's own is `warmup`)
  std::int64_t min_count = 1;
  std::int64_t L = 4, H = 3000, min_candidates = 50, H2 = 500;  ///< knn_discord
  std::int64_t K = 50;  ///< knn_discord, multiscale_z (0 = no gate): alarm gate span
  std::int64_t timeout = 0;       ///< silence: nanoseconds, > 0
  double beta   = 0.3;    ///< multiscale_z, joint_z: short-scale weight in (0, 1]
  double gamma  = 0.01;   ///< multiscale_z, joint_z: spread weight in (0, 1]
  double trend  = 0.01;   ///< multiscale_z: slope weight in [0, 1]
  double clip   = 4.0;    ///< multiscale_z: > 0
  double freeze = 4.0;    ///< joint_z: z at or above which the baseline stops adapting, > 0
  int channels  = 0;      ///< joint_z: channels read from `channel` on; 0 = all the rest
  double tod_weight = 0.0;  ///< knn_discord (and a knn likelihood base): >= 0, per hour^2
  /// likelihood: the raw scorer, knn_discord or multiscale_z (its parameters: the fields above)
  detector_kind base = detector_kind::knn_discord;
  double scale              = 1.0;   ///< likelihood: novelty = min(1, dev / scale), > 0
  std::int64_t short_window = 10;    ///< likelihood: novelties in the short mean, [1, 1024]
  std::int64_t long_window  = 4000;  ///< likelihood: records of the long-window estimate
  std::int64_t reestimate   = 100;   ///< likelihood: re-estimation period (records)
  std::int64_t learn        = 150;   ///< likelihood: first records left out of the estimate
  std::int64_t warmup       = 300;   ///< likelihood: records before the first score, > learn
  std::int64_t rest         = 200;   ///< likelihood: records after an alarm without another
  double spatial            = 0.05;  ///< likelihood: new-extreme tolerance (0: off)

  static detector_spec ewma(double alpha = 0.05, double threshold = 0.8)
  {
    detector_spec s;
    s.kind      = detector_kind::ewma;
    s.alpha     = alpha;
    s.threshold = threshold;
    s.min_count = 1;
    return s;
  }
  static detector_spec rolling_z(std::int64_t window = 100, double threshold = 0.8)
  {
    detector_spec s;
    s.kind      = detector_kind::rolling_z;
    s.window    = window;
    s.threshold = threshold;
    s.min_count = 2;
    return s;
  }
  static detector_spec rolling_mad(std::int64_t window = 100, double threshold = 0.8)
  {
    detector_spec s = rolling_z(window, threshold);
    s.kind          = detector_kind::rolling_mad;
    return s;
  }
  static detector_spec knn_discord(double threshold = 0.5365)
  {
    detector_spec s;
    s.kind      = detector_kind::knn_discord;
    s.threshold = threshold;
    s.min_count = 250;
    return s;
  }
  /// likelihood over knn_discord's raw distance with the hour-of-day penalty 0.02 (the NAB
  /// configuration; `base` and its parameters can be changed after). Threshold 0.51: the NAB
  /// standard profile's (p <= about 6e-6; 0.5 keeps every alarm).
  static detector_spec likelihood(double threshold = 0.51)
  {
    detector_spec s;
    s.kind       = detector_kind::likelihood;
    s.threshold  = threshold;
    s.base       = detector_kind::knn_discord;
    s.tod_weight = 0.02;
    s.min_count  = 30;  // a multiscale_z base's warm-up
    return s;
  }
  /// multiscale_z with the defaults; threshold 0.7691 is |z| = 3.5.
  static detector_spec multiscale_z(double threshold = 0.7691)
  {
    detector_spec s;
    s.kind      = detector_kind::multiscale_z;
    s.threshold = threshold;
    s.alpha     = 0.05;
    s.beta      = 0.3;
    s.gamma     = 0.01;
    s.trend     = 0.01;
    s.clip      = 4.0;
    s.min_count = 30;
    s.K         = 500;
    return s;
  }
  /// joint_z with the defaults (all channels); threshold 0.8076 is z = 4.
  static detector_spec joint_z(int first_channel = 0, int channels = 0, double threshold = 0.8076)
  {
    detector_spec s;
    s.kind      = detector_kind::joint_z;
    s.threshold = threshold;
    s.channel   = first_channel;
    s.channels  = channels;
    s.alpha     = 0.01;
    s.beta      = 0.2;
    s.gamma     = 0.002;
    s.freeze    = 4.0;
    s.min_count = 50;
    return s;
  }
  static detector_spec silence(std::int64_t timeout_ns)
  {
    detector_spec s;
    s.kind    = detector_kind::silence;
    s.timeout = timeout_ns;
    return s;
  }
  /// The configuration recommended for unknown data: multiscale_z with its defaults.
  static detector_spec default_detector() { return multiscale_z(); }

  /// The name used in column names.
  std::string column_name() const { return name.empty() ? to_string(kind) : name; }
};

/// Upper bound of the integer sizes of a detector (rolling `window`, KnnDiscord H, H2, K,
/// min_candidates, multiscale_z K, every min_count): they bound the state one key holds (a
/// KnnDiscord key with H = H2 = K = 2^20 holds about 40 MiB).
constexpr std::int64_t max_detector_size = std::int64_t{1} << 20;
/// Upper bound of KnnDiscord's subsequence length L (each score compares L values with every
/// candidate of the history).
constexpr std::int64_t max_subsequence = 1024;

/// Throws cusense::invalid_argument naming the problem when a parameter is out of range.
void validate(detector_spec const& spec, int channels = 1);

}  // namespace cusense
