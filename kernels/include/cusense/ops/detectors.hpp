#pragma once
// Per-key streaming anomaly detectors: the state layout and the update/score functions, shared
// by the CPU backend and the CUDA kernels (marked CUSENSE_HD). No CUDA headers.
//
// Every detector keeps its per-key state in two flat arrays owned by the backend: `d` (doubles)
// and `i` (int64), of d_stride() / i_stride() elements per key (see detector_params). i[0] is
// always the number of non-NaN values the key has had so far. A record with a NaN value is
// scored NaN and leaves the state unchanged.
#include <math.h>

#include <cstdint>

#include <cusense/ops/macros.hpp>

namespace cusense::ops {

/// Spreads (std, MAD) at or below this are treated as zero.
constexpr double tiny_spread = 1e-12;
/// z used for a deviation over a zero spread.
constexpr double huge_z = 1e6;
/// MAD to standard deviation for normal data (the conventional 1.4826).
constexpr double mad_scale = 1.4826;
/// Mean absolute deviation to standard deviation for normal data (sqrt(pi/2), 4 digits).
constexpr double mean_abs_dev_scale = 1.2533;

CUSENSE_HD bool isnan_(double x) { return x != x; }

/// -log10(erfc(|z| / sqrt 2)): the two-sided normal tail probability of z, in decades. For
/// |z|/sqrt2 >= 25 the asymptotic form (u^2 + ln(u sqrt(pi))) / ln 10 avoids underflow.
CUSENSE_HD double neglog10_tail(double z)
{
  double const u = fabs(z) / sqrt(2.0);
  if (u < 25.0) { return -log10(erfc(u)); }
  return (u * u + log(u * sqrt(3.14159265358979323846))) / log(10.0);
}

/// z to a score in [0, 1): Lp / (1 + Lp) with Lp = neglog10_tail(z). Strictly increasing in |z|
/// (a threshold on it is a threshold on |z|) and, unlike erf(|z|/sqrt2), it does not round to
/// 1.0 for large |z|: 0 -> 0, |z| = 1.96 -> 0.565, 3 -> 0.720, 5 -> 0.862, 10 -> 0.958.
CUSENSE_HD double z_to_score(double z)
{
  double const lp = neglog10_tail(z);
  return lp / (1.0 + lp);
}

/// d / spread; when spread <= tiny_spread: 0 if |d| <= tiny_spread, else +-huge_z.
CUSENSE_HD double safe_z(double d, double spread)
{
  if (spread > tiny_spread) { return d / spread; }
  if (fabs(d) <= tiny_spread) { return 0.0; }
  return d > 0 ? huge_z : -huge_z;
}

enum class detector_kind_id : int {
  ewma        = 0,
  rolling_z   = 1,
  rolling_mad = 2,
  knn_discord = 3,
  multiscale_z = 4,
  joint_z     = 5,
  likelihood  = 6,
};

/// Parameters of one scoring detector, trivially copyable to the device.
struct detector_params {
  detector_kind_id kind = detector_kind_id::ewma;
  int channel           = 0;     ///< value channel the detector reads
  double alpha          = 0.05;  ///< ewma
  std::int64_t window   = 100;   ///< rolling_z, rolling_mad: records in the buffer
  std::int64_t min_count = 1;    ///< earlier values needed before scoring (score 0 before)
  std::int64_t L        = 4;     ///< knn_discord: subsequence length
  std::int64_t H        = 3000;  ///< knn_discord: history (records)
  std::int64_t min_candidates = 50;
  std::int64_t H2       = 500;   ///< knn_discord: recent-max calibration span
  std::int64_t K        = 50;    ///< knn_discord: alarm gate span
  double beta           = 0.3;   ///< multiscale_z, joint_z: short-scale EWMA weight
  double gamma          = 0.01;  ///< multiscale_z, joint_z: spread EWMA weight
  double trend          = 0.01;  ///< multiscale_z: Holt trend weight
  double clip           = 4.0;   ///< multiscale_z: residuals clipped at clip spreads in updates
  double freeze         = 4.0;   ///< joint_z: no baseline update while z >= freeze
  std::int64_t channels = 1;     ///< joint_z: channels read, from `channel` on
  double tod_weight     = 0.0;   ///< knn_discord (and a knn likelihood base): hour-of-day penalty
  detector_kind_id base = detector_kind_id::knn_discord;  ///< likelihood: the raw scorer
  double scale          = 1.0;   ///< likelihood: novelty = min(1, deviation / scale)
  std::int64_t short_window = 10;    ///< likelihood: records in the short mean of the novelty
  std::int64_t long_window  = 4000;  ///< likelihood: records in the long-window estimate
  std::int64_t reestimate   = 100;   ///< likelihood: records per block (re-estimation period)
  std::int64_t learn        = 150;   ///< likelihood: first records kept out of the estimate
  std::int64_t warmup       = 300;   ///< likelihood: records before the first score
  std::int64_t rest         = 200;   ///< likelihood: records after an alarm with no new one
  double spatial            = 0.05;  ///< likelihood: new-extreme tolerance (share of the range)

  /// knn ring: H values, and their hours of day when tod_weight > 0.
  CUSENSE_HD std::int64_t knn_ring_stride() const { return tod_weight > 0.0 ? 2 * H : H; }
  /// likelihood: blocks of `reestimate` records kept for the long-window estimate.
  CUSENSE_HD std::int64_t likelihood_blocks() const
  {
    return (long_window + reestimate - 1) / reestimate;
  }
  /// likelihood: doubles of the raw scorer's state (the likelihood's own follow).
  CUSENSE_HD std::int64_t likelihood_base_stride() const
  {
    return base == detector_kind_id::multiscale_z ? 9 : knn_ring_stride();
  }

  CUSENSE_HD std::int64_t d_stride() const
  {
    switch (kind) {
      case detector_kind_id::ewma: return 2;                  // mean, var
      case detector_kind_id::rolling_z: return window;        // ring
      case detector_kind_id::rolling_mad: return 2 * window;  // ring, sorted
      case detector_kind_id::knn_discord:  // ring (and hours), dq2, dq3 values
        return knn_ring_stride() + (H2 + 1) + (K + 1);
      case detector_kind_id::multiscale_z: return 9;  // level, slope, var, a1, w1, a2, w2, 2 block maxima
      case detector_kind_id::joint_z: return 3 * channels;  // mean, smoothed residual, spread
      case detector_kind_id::likelihood:  // base state, short ring, blocks, accumulator, 6 scalars
        return likelihood_base_stride() + short_window + 3 * likelihood_blocks() + 3 + 6;
    }
    return 0;
  }
  CUSENSE_HD std::int64_t i_stride() const
  {
    // count; knn: + dq2 head/size, dq3 head/size, dq2 and dq3 indices; likelihood: + last
    // alarm position
    if (kind == detector_kind_id::knn_discord) { return 5 + (H2 + 1) + (K + 1); }
    return kind == detector_kind_id::likelihood ? 2 : 1;
  }
};

// --- EWMA z-score ------------------------------------------------------------------------------

/// x -> a * x + b. Composition is associative, so a sequence of them is a parallel scan.
struct affine {
  double a = 1.0;
  double b = 0.0;
};
CUSENSE_HD double apply(affine f, double x) { return f.a * x + f.b; }
/// `second` after `first`.
CUSENSE_HD affine compose(affine first, affine second)
{
  return {second.a * first.a, second.a * first.b + second.b};
}
struct compose_affine {
  CUSENSE_HD affine operator()(affine first, affine second) const { return compose(first, second); }
};

/// EWMA mean update as an affine map of the previous mean: m' = (1-alpha) m + alpha x; the first
/// value (count_before == 0) sets m' = x.
CUSENSE_HD affine ewma_mean_map(double alpha, double x, std::int64_t count_before)
{
  if (count_before == 0) { return {0.0, x}; }
  return {1.0 - alpha, alpha * x};
}
/// EWMA variance update as an affine map of the previous variance, given d = x - m_before:
/// v' = (1-alpha) (v + alpha d^2) = (1-alpha) v + (1-alpha) alpha d^2; the first value sets 0.
CUSENSE_HD affine ewma_var_map(double alpha, double d, std::int64_t count_before)
{
  if (count_before == 0) { return {0.0, 0.0}; }
  return {1.0 - alpha, (1.0 - alpha) * alpha * d * d};
}
/// Score of x from the state before it (count, mean, var).
CUSENSE_HD double ewma_score(double x, std::int64_t count_before, double mean, double var,
                             std::int64_t min_count)
{
  if (count_before == 0 || count_before < min_count) { return 0.0; }
  return z_to_score(safe_z(x - mean, sqrt(var)));
}
/// Sequential EWMA step (d = [mean, var], i = [count]): returns the score, updates the state.
CUSENSE_HD double ewma_step(detector_params const& p, double* d, std::int64_t* i, double x)
{
  std::int64_t const c = i[0];
  double const score   = ewma_score(x, c, d[0], d[1], p.min_count);
  double const dev     = x - d[0];
  d[0]                 = apply(ewma_mean_map(p.alpha, x, c), d[0]);
  d[1]                 = apply(ewma_var_map(p.alpha, dev, c), d[1]);
  i[0]                 = c + 1;
  return score;
}

// --- ring buffers --------------------------------------------------------------------------------

/// The last min(count, cap) values pushed into a ring of capacity cap, oldest first.
struct ring_view {
  double const* buf;
  std::int64_t cap;
  std::int64_t count;  ///< values ever pushed
  CUSENSE_HD std::int64_t size() const { return count < cap ? count : cap; }
  CUSENSE_HD double operator()(std::int64_t k) const
  {
    std::int64_t const first = count < cap ? 0 : count % cap;
    std::int64_t j           = first + k;
    if (j >= cap) { j -= cap; }
    return buf[j];
  }
};
CUSENSE_HD void ring_push(double* buf, std::int64_t cap, std::int64_t count, double x)
{
  buf[count % cap] = x;
}

/// A ring's history followed by one more value x at position size().
struct ring_with_value {
  ring_view h;
  std::int64_t len;
  double x;
  CUSENSE_HD double operator()(std::int64_t k) const { return k == len ? x : h(k); }
};

/// A contiguous history, oldest first.
struct span_view {
  double const* p;
  CUSENSE_HD double operator()(std::int64_t k) const { return p[k]; }
};

// --- rolling z-score -----------------------------------------------------------------------------

/// Score of x against the buffer B = h(0..len-1): population mean and std (two-pass),
/// z = (x - mean) / std; 0 while len < min_count.
template <typename Hist>
CUSENSE_HD double rolling_z_score(Hist const& h, std::int64_t len, double x, std::int64_t min_count)
{
  if (len < min_count || len == 0) { return 0.0; }
  double s = 0.0;
  for (std::int64_t k = 0; k < len; ++k) s += h(k);
  double const mu = s / static_cast<double>(len);
  double q        = 0.0;
  for (std::int64_t k = 0; k < len; ++k) {
    double const e = h(k) - mu;
    q += e * e;
  }
  double const sd = sqrt(q / static_cast<double>(len));
  return z_to_score(safe_z(x - mu, sd));
}

CUSENSE_HD double rolling_z_step(detector_params const& p, double* d, std::int64_t* i, double x)
{
  std::int64_t const c = i[0];
  ring_view const h{d, p.window, c};
  double const score = rolling_z_score(h, h.size(), x, p.min_count);
  ring_push(d, p.window, c, x);
  i[0] = c + 1;
  return score;
}

// --- rolling median / MAD -------------------------------------------------------------------------

/// Median of sorted s[0..n-1], n >= 1: the middle value, or the mean of the two middle ones.
CUSENSE_HD double sorted_median(double const* s, std::int64_t n)
{
  std::int64_t const h = n / 2;
  return (n % 2 == 1) ? s[h] : (s[h - 1] + s[h]) / 2.0;
}

/// Median of |s[k] - med| over sorted s[0..n-1] without sorting the deviations: they grow
/// outwards from med, so a two-pointer merge finds the middle ones in O(n).
CUSENSE_HD double sorted_mad(double const* s, std::int64_t n, double med)
{
  std::int64_t lo = 0, hi = n;  // first index with s >= med
  while (lo < hi) {
    std::int64_t const mid = (lo + hi) / 2;
    if (s[mid] < med) { lo = mid + 1; } else { hi = mid; }
  }
  std::int64_t left = lo - 1, right = lo;  // next candidates on each side
  std::int64_t const want_hi = n / 2, want_lo = (n - 1) / 2;
  double dev_lo = 0.0, dev = 0.0;
  for (std::int64_t k = 0; k <= want_hi; ++k) {
    bool const take_left =
      right >= n || (left >= 0 && (med - s[left]) <= (s[right] - med));
    if (take_left) { dev = med - s[left--]; } else { dev = s[right++] - med; }
    if (k == want_lo) { dev_lo = dev; }
  }
  return (n % 2 == 1) ? dev : (dev_lo + dev) / 2.0;
}

/// Score of x against sorted buffer s[0..n-1]: spread = 1.4826 MAD, or 1.2533 * mean absolute
/// deviation from the median when that is <= tiny_spread; 0 while n < min_count.
CUSENSE_HD double rolling_mad_score(double const* s, std::int64_t n, double x, std::int64_t min_count)
{
  if (n < min_count || n == 0) { return 0.0; }
  double const med = sorted_median(s, n);
  double spread    = mad_scale * sorted_mad(s, n, med);
  if (!(spread > tiny_spread)) {
    double a = 0.0;
    for (std::int64_t k = 0; k < n; ++k) a += fabs(s[k] - med);
    spread = mean_abs_dev_scale * (a / static_cast<double>(n));
  }
  return z_to_score(safe_z(x - med, spread));
}

/// Sorted buffer update: removes one value equal to `old` (when remove is set), inserts x.
CUSENSE_HD void sorted_replace(double* s, std::int64_t n, bool remove, double old, double x)
{
  if (remove) {
    std::int64_t lo = 0, hi = n;
    while (lo < hi) {
      std::int64_t const mid = (lo + hi) / 2;
      if (s[mid] < old) { lo = mid + 1; } else { hi = mid; }
    }
    for (std::int64_t k = lo; k + 1 < n; ++k) s[k] = s[k + 1];
    --n;
  }
  std::int64_t k = n;
  while (k > 0 && s[k - 1] > x) {
    s[k] = s[k - 1];
    --k;
  }
  s[k] = x;
}

CUSENSE_HD double rolling_mad_step(detector_params const& p, double* d, std::int64_t* i, double x)
{
  std::int64_t const c = i[0], w = p.window;
  double* ring         = d;
  double* sorted       = d + w;
  std::int64_t const n = c < w ? c : w;
  double const score   = rolling_mad_score(sorted, n, x, p.min_count);
  bool const full      = c >= w;
  double const old     = full ? ring[c % w] : 0.0;
  sorted_replace(sorted, n, full, old, x);
  ring_push(ring, w, c, x);
  i[0] = c + 1;
  return score;
}

// --- k-NN subsequence discord -----------------------------------------------------------------------

/// Stage 1 of knn_discord: the raw left-discord distance of the record at key position t (its
/// count of earlier values), given h(0..len) = the len = min(t, H) values before it, oldest
/// first, followed by the record's own value h(len).
///   query q = x[t-L+1 .. t] (needs t >= L-1); candidates: the length-L subsequences ending at
///   j in [max(L-1, t-H+L-1), t-L] (inside the history, not overlapping q); fewer than
///   min_candidates -> 0; dmin = min_j ||q - x[j-L+1 .. j]||_2;
///   sd = population std of the history; raw = dmin / (sqrt(L) sd) (0 / 1e6 when sd <= tiny).
template <typename Hist>
CUSENSE_HD double knn_raw(detector_params const& p, Hist const& h, std::int64_t len, std::int64_t t)
{
  std::int64_t const L = p.L;
  if (t < L - 1) { return 0.0; }
  std::int64_t j_lo       = t - p.H + L - 1;
  if (j_lo < L - 1) { j_lo = L - 1; }
  std::int64_t const j_hi = t - L;
  if (j_hi - j_lo + 1 < p.min_candidates) { return 0.0; }
  std::int64_t const base = t - len;  // key position of h(0)
  double best             = 0.0;
  bool have               = false;
  for (std::int64_t j = j_lo; j <= j_hi; ++j) {
    double s = 0.0;
    for (std::int64_t k = 0; k < L; ++k) {
      double const e = h(t - L + 1 + k - base) - h(j - L + 1 + k - base);
      s += e * e;
    }
    if (!have || s < best) {
      best = s;
      have = true;
    }
  }
  double const dmin = sqrt(best);  // sqrt is monotone: min of the roots == root of the min
  double m          = 0.0;
  for (std::int64_t k = 0; k < len; ++k) m += h(k);
  m /= static_cast<double>(len);
  double q = 0.0;
  for (std::int64_t k = 0; k < len; ++k) {
    double const e = h(k) - m;
    q += e * e;
  }
  double const sd = sqrt(q / static_cast<double>(len));
  if (sd > tiny_spread) { return dmin / (sqrt(static_cast<double>(L)) * sd); }
  return dmin <= tiny_spread ? 0.0 : huge_z;
}

/// A monotone (non-increasing values) deque of (index, value) in fixed storage of cap slots:
/// the maximum over a sliding index range in O(1) amortised.
struct max_deque {
  std::int64_t* idx;
  double* val;
  std::int64_t cap;
  std::int64_t* head;
  std::int64_t* size;

  CUSENSE_HD std::int64_t at(std::int64_t k) const
  {
    std::int64_t j = *head + k;
    return j >= cap ? j - cap : j;
  }
  /// Drops entries with index < lo.
  CUSENSE_HD void expire(std::int64_t lo)
  {
    while (*size > 0 && idx[*head] < lo) {
      *head = (*head + 1 == cap) ? 0 : *head + 1;
      --*size;
    }
  }
  CUSENSE_HD bool empty() const { return *size == 0; }
  CUSENSE_HD double front() const { return val[*head]; }
  CUSENSE_HD void push(std::int64_t i, double v)
  {
    while (*size > 0 && val[at(*size - 1)] <= v) --*size;
    std::int64_t const j = at(*size);
    idx[j]               = i;
    val[j]               = v;
    ++*size;
  }
};

/// Stages 2 and 3 of knn_discord for the record at key position t with raw score r:
///   s = r / (r + M), M = max raw over the previous H2 records (0 if none; s = 0 if r + M == 0);
///   score = s if s > max s over the previous K records (strictly; -inf if none), else 0; and 0
///   while t < min_count (the calibration's warm-up: the first raw scores have too few earlier
///   ones to be calibrated against; s still enters both deques).
/// State (i): [count, dq2 head, dq2 size, dq3 head, dq3 size, dq2 idx (H2+1), dq3 idx (K+1)];
/// (d): [ring (knn_ring_stride()), dq2 val (H2+1), dq3 val (K+1)]. Does not touch the ring or
/// the count.
CUSENSE_HD double knn_calibrate(detector_params const& p, double* d, std::int64_t* i,
                                std::int64_t t, double r)
{
  std::int64_t const ring = p.knn_ring_stride();
  max_deque q2{i + 5, d + ring, p.H2 + 1, i + 1, i + 2};
  max_deque q3{i + 5 + (p.H2 + 1), d + ring + (p.H2 + 1), p.K + 1, i + 3, i + 4};
  q2.expire(t - p.H2);
  double const M = q2.empty() ? 0.0 : q2.front();
  double const s = (r + M) > 0.0 ? r / (r + M) : 0.0;
  q2.push(t, r);
  q3.expire(t - p.K);
  double const g = (q3.empty() || s > q3.front()) ? s : 0.0;
  q3.push(t, s);
  return t < p.min_count ? 0.0 : g;
}

/// Hour of the day in [0, 24) of a timestamp in ns since the epoch (UTC): the seconds since
/// midnight (floor division, so times before 1970 too) / 3600.
CUSENSE_HD double hour_of_day(std::int64_t ts)
{
  std::int64_t sec = ts / 1000000000;
  if (ts % 1000000000 < 0) { --sec; }
  std::int64_t r = sec % 86400;
  if (r < 0) { r += 86400; }
  return static_cast<double>(r) / 3600.0;
}

/// knn_raw with an hour-of-day penalty (tod_weight w > 0): hh(k) is the hour of day of history
/// value h(k) (k < len), hx the record's own. With sd the population std of the history,
///   e_j = ||q - x[j-L+1 .. j]||^2 / (L sd^2),  dh_j = min(|hx - hh(j)|, 24 - |hx - hh(j)|),
///   raw = sqrt(min_j (e_j + w dh_j^2)),
/// the hour taken at the candidate's last value: a candidate from another time of day must be
/// closer to count as the neighbour. sd <= tiny_spread: 0 when the nearest squared distance is
/// <= tiny_spread^2, else huge_z (no penalty, as knn_raw).
template <typename Hist, typename Hours>
CUSENSE_HD double knn_raw_tod(detector_params const& p, Hist const& h, Hours const& hh,
                              std::int64_t len, std::int64_t t, double hx)
{
  std::int64_t const L = p.L;
  if (t < L - 1) { return 0.0; }
  std::int64_t j_lo = t - p.H + L - 1;
  if (j_lo < L - 1) { j_lo = L - 1; }
  std::int64_t const j_hi = t - L;
  if (j_hi - j_lo + 1 < p.min_candidates) { return 0.0; }
  std::int64_t const base = t - len;  // key position of h(0)
  double m                = 0.0;
  for (std::int64_t k = 0; k < len; ++k) m += h(k);
  m /= static_cast<double>(len);
  double q = 0.0;
  for (std::int64_t k = 0; k < len; ++k) {
    double const e = h(k) - m;
    q += e * e;
  }
  double const sd    = sqrt(q / static_cast<double>(len));
  bool const flat    = !(sd > tiny_spread);
  double const denom = static_cast<double>(L) * sd * sd;
  double best        = 0.0;
  bool have          = false;
  for (std::int64_t j = j_lo; j <= j_hi; ++j) {
    double s = 0.0;
    for (std::int64_t k = 0; k < L; ++k) {
      double const e = h(t - L + 1 + k - base) - h(j - L + 1 + k - base);
      s += e * e;
    }
    if (!flat) {
      double dh = fabs(hx - hh(j - base));
      if (24.0 - dh < dh) { dh = 24.0 - dh; }
      s = s / denom + p.tod_weight * dh * dh;
    }
    if (!have || s < best) {
      best = s;
      have = true;
    }
  }
  if (!flat) { return sqrt(best); }
  return sqrt(best) <= tiny_spread ? 0.0 : huge_z;
}

/// The raw score (stage 1) of value x at key position t from the ring of the key's last H values
/// (and, with tod_weight > 0, their hours of day after them: ring[H .. 2H)).
CUSENSE_HD double knn_raw_at(detector_params const& p, double const* ring, std::int64_t t, double x,
                             std::int64_t ts)
{
  ring_view const h{ring, p.H, t};
  std::int64_t const len = h.size();
  ring_with_value const hx{h, len, x};
  if (p.tod_weight > 0.0) {
    ring_view const hh{ring + p.H, p.H, t};
    return knn_raw_tod(p, hx, hh, len, t, hour_of_day(ts));
  }
  return knn_raw(p, hx, len, t);
}

/// Adds value x (at key position t, time ts) to the ring of knn_raw_at.
CUSENSE_HD void knn_ring_push(detector_params const& p, double* ring, std::int64_t t, double x,
                              std::int64_t ts)
{
  ring_push(ring, p.H, t, x);
  if (p.tod_weight > 0.0) { ring_push(ring + p.H, p.H, t, hour_of_day(ts)); }
}

CUSENSE_HD double knn_step(detector_params const& p, double* d, std::int64_t* i, double x,
                           std::int64_t ts)
{
  std::int64_t const t = i[0];
  double const r       = knn_raw_at(p, d, t, x, ts);
  double const score   = knn_calibrate(p, d, i, t, r);
  knn_ring_push(p, d, t, x, ts);
  i[0] = t + 1;
  return score;
}

// --- multi-scale z-score (the default) ---------------------------------------------------------

/// Weight of an EWMA with nominal weight w after `count` earlier values: max(w, 1/count), so the
/// first values are averaged plainly (accurate estimates at the end of the warm-up).
CUSENSE_HD double warm_weight(double w, std::int64_t count)
{
  double const c = 1.0 / static_cast<double>(count);
  return c > w ? c : w;
}

/// Student-t statistic with nu degrees of freedom to the normal z of the same tail (Gaver and
/// Kafadar's approximation, monotone and unbounded): sqrt((nu - 2/3 + 1/(10 nu)) ln(1 + t^2/nu)).
CUSENSE_HD double t_to_z(double t, double nu)
{
  return sqrt((nu - 2.0 / 3.0 + 0.1 / nu) * log1p(t * t / nu));
}

CUSENSE_HD double clamp_abs(double x, double bound) { return x > bound ? bound : (x < -bound ? -bound : x); }

/// |a| / sqrt(w), 0 when both are ~0 (safe_z on a spread).
CUSENSE_HD double abs_z(double a, double w) { return fabs(safe_z(a, sqrt(w > 0.0 ? w : 0.0))); }

/// Multi-scale z-score. State d = [level l, slope b, v, a1, w1, a2, w2], i = [count]. For the
/// value x after count c >= 1 earlier ones: prediction p = l + b (Holt's linear trend), residual
/// e = x - p; short-scale means of the residual a1' = (1-beta) a1 + beta e and a2' with beta/3;
/// t = max(|e|/sqrt v, |a1'|/sqrt w1, |a2'|/sqrt w2) where v, w1, w2 are EWMAs (weight gamma) of
/// the squares of e, a1', a2' themselves: each statistic is measured against its own history.
/// The spreads are estimates from few values early on (and from autocorrelated ones for the
/// short means), so t is read as a Student t with nu = max(1, (min(c, 2/gamma) - 1) / 2)
/// degrees of freedom and converted to the normal z of the same tail (t_to_z): a young key
/// needs more evidence. Score z_to_score(z), 0 while c < min_count. Updates, with the residual clipped to clip sqrt(v) (and the short
/// means to clip sqrt(w)) once c >= min_count, so one outlier moves nothing far:
///   l' = p + max(alpha, 1/c) e_c, b' = b + max(trend, 1/c) (l' - l - b) (b = 0 when trend == 0),
///   a_k = (1-beta_k) a_k + beta_k e_c, v' = (1-g) v + g e_c^2, w_k' = (1-g) w_k + g a_k'_c^2,
/// with g = max(gamma, 1/c). The first value sets l = x and everything else 0.
/// Gate (K > 0), in O(1) state: key positions are cut into blocks of K records; the score s of
/// the record at position c is kept only when it is greater (strictly) than every score since
/// the start of the previous block (the last K to 2K - 1 records; none at the start), else 0:
/// one alarm per burst, at any threshold. d[7] = max score of the current block, d[8] = of the
/// previous one (-1 = none; scores are >= 0).
CUSENSE_HD double multiscale_gate(detector_params const& p, double* d, std::int64_t c, double s)
{
  if (p.K <= 0) { return s; }
  if (c == 0) {
    d[7] = -1.0;
    d[8] = -1.0;
  } else if (c % p.K == 0) {
    d[8] = d[7];
    d[7] = -1.0;
  }
  double const g = (s > d[7] && s > d[8]) ? s : 0.0;
  if (s > d[7]) d[7] = s;
  return g;
}

/// The state update of multiscale_z_step without the gate: returns the normal z of the record
/// (t_to_z of the largest of the three statistics; 0 while c < min_count) and sets *warm to
/// c >= min_count. d[7], d[8] (the gate's maxima) are not touched.
CUSENSE_HD double multiscale_z_dev(detector_params const& p, double* d, std::int64_t* i, double x,
                                   bool* warm_out)
{
  std::int64_t const c = i[0];
  i[0]                 = c + 1;
  if (c == 0) {
    d[0] = x;
    for (int k = 1; k < 7; ++k) d[k] = 0.0;
    *warm_out = false;
    return 0.0;
  }
  double const beta2 = p.beta / 3.0;
  double const pred  = d[0] + d[1];
  double const e     = x - pred;
  double const a1    = (1.0 - p.beta) * d[3] + p.beta * e;
  double const a2    = (1.0 - beta2) * d[5] + beta2 * e;
  double dev         = 0.0;
  bool const warm    = c >= p.min_count;
  if (warm) {
    double z        = abs_z(e, d[2]);
    double const z1 = abs_z(a1, d[4]);
    double const z2 = abs_z(a2, d[6]);
    if (z1 > z) z = z1;
    if (z2 > z) z = z2;
    double const seen = static_cast<double>(c) < 2.0 / p.gamma ? static_cast<double>(c) : 2.0 / p.gamma;
    double const nu   = (seen - 1.0) / 2.0 > 1.0 ? (seen - 1.0) / 2.0 : 1.0;
    dev               = t_to_z(z, nu);
  }
  double const ec  = warm ? clamp_abs(e, p.clip * sqrt(d[2])) : e;
  double const a1c = warm ? clamp_abs(a1, p.clip * sqrt(d[4])) : a1;
  double const a2c = warm ? clamp_abs(a2, p.clip * sqrt(d[6])) : a2;
  double const ra  = warm_weight(p.alpha, c);
  double const g   = warm_weight(p.gamma, c);
  double const l   = pred + ra * ec;
  d[1]             = p.trend > 0.0 ? d[1] + warm_weight(p.trend, c) * (l - d[0] - d[1]) : 0.0;
  d[0]             = l;
  d[2]             = (1.0 - g) * d[2] + g * ec * ec;
  d[3]             = (1.0 - p.beta) * d[3] + p.beta * ec;
  d[4]             = (1.0 - g) * d[4] + g * a1c * a1c;
  d[5]             = (1.0 - beta2) * d[5] + beta2 * ec;
  d[6]             = (1.0 - g) * d[6] + g * a2c * a2c;
  *warm_out        = warm;
  return dev;
}

CUSENSE_HD double multiscale_z_step(detector_params const& p, double* d, std::int64_t* i, double x)
{
  std::int64_t const c = i[0];
  bool warm            = false;
  double const z       = multiscale_z_dev(p, d, i, x, &warm);
  return multiscale_gate(p, d, c, warm ? z_to_score(z) : 0.0);
}

// --- joint (multivariate) z-score -------------------------------------------------------------------

/// chi-square(k) statistic to an approximately standard normal z (Wilson-Hilferty), >= 0.
CUSENSE_HD double chi2_to_z(double d2, std::int64_t k)
{
  double const kk = static_cast<double>(k);
  double const c  = 2.0 / (9.0 * kk);
  double const z  = (cbrt(d2 / kk) - (1.0 - c)) / sqrt(c);
  return z > 0.0 ? z : 0.0;
}

/// Joint z-score of C = p.channels channels x[0..C-1]. State d = [mean m (C), smoothed residual
/// a (C), spread s (C)], i = [count]. For a record after c >= 1 earlier ones: e = x - m,
/// a' = (1-beta) a + beta e, d2 = sum_k a'_k^2 / s_k (a channel with s_k <= 1e-24 adds 0 when
/// |a'_k| <= 1e-12, else 1e12, as safe_z),
/// z = Wilson-Hilferty normal equivalent of d2 ~ chi2(C) (>= 0); score 0 while c < min_count.
/// Then a = a' always; the baseline (m += max(alpha, 1/(c+1)) e; s = (1-g) s + g a'^2 with
/// g = max(gamma, 1/(c+1))) is updated only during the warm-up or while z < freeze, so a fault
/// that lasts does not become the new normal. The first record sets m = x. A record with a NaN
/// in any read channel scores NaN and changes nothing.
CUSENSE_HD double joint_z_step(detector_params const& p, double* d, std::int64_t* i, double const* x)
{
  std::int64_t const C = p.channels;
  for (std::int64_t k = 0; k < C; ++k) {
    if (isnan_(x[k])) { return x[k]; }
  }
  double* m            = d;
  double* a            = d + C;
  double* s            = d + 2 * C;
  std::int64_t const c = i[0];
  i[0]                 = c + 1;
  if (c == 0) {
    for (std::int64_t k = 0; k < C; ++k) {
      m[k] = x[k];
      a[k] = 0.0;
      s[k] = 0.0;
    }
    return 0.0;
  }
  double d2 = 0.0;
  for (std::int64_t k = 0; k < C; ++k) {
    double const an = (1.0 - p.beta) * a[k] + p.beta * (x[k] - m[k]);
    if (s[k] > tiny_spread * tiny_spread) {
      d2 += an * an / s[k];
    } else if (fabs(an) > tiny_spread) {
      d2 += huge_z * huge_z;  // a channel that never moved moves: as safe_z
    }
  }
  bool const warm = c >= p.min_count;
  double const z  = warm ? chi2_to_z(d2, C) : 0.0;
  bool const learn = !warm || z < p.freeze;
  double const r   = 1.0 / static_cast<double>(c + 1);
  double const ra  = r > p.alpha ? r : p.alpha;
  double const g   = r > p.gamma ? r : p.gamma;
  for (std::int64_t k = 0; k < C; ++k) {
    double const e  = x[k] - m[k];
    double const an = (1.0 - p.beta) * a[k] + p.beta * e;
    a[k]            = an;
    if (learn) {
      m[k] += ra * e;
      s[k] = (1.0 - g) * s[k] + g * an * an;
    }
  }
  return warm ? z_to_score(z) : 0.0;
}

// --- anomaly likelihood (wraps knn_discord or multiscale_z) ----------------------------------------

/// Tail probabilities at or below this are alarms ("red"); the first of a run only.
constexpr double likelihood_red = 1e-5;
/// The tail probability given to the rest of a red run, and to reds within `rest` records after
/// an alarm ("yellow": score 0.3).
constexpr double likelihood_yellow = 1e-3;
/// Floors of the long-window estimate: mean and variance of the short mean of the novelty.
constexpr double likelihood_mean_floor = 0.03;
constexpr double likelihood_var_floor  = 0.0003;

/// Tail probability to a score in [0, 1]: log(p + 1e-10) / log(1e-10) (p = 1e-5 -> 0.5, 1e-3 ->
/// 0.3, 0.5 -> 0.03, 0 -> 1).
CUSENSE_HD double tail_to_score(double tail) { return log(tail + 1e-10) / log(1e-10); }

/// The likelihood stage for the record at key position c with novelty nov in [0, 1] and value x.
/// State d = [short ring (W = short_window), blocks (3 per block: count, sum, sum of squares of
/// the short mean), accumulator (3), mean, sd, prev_tail, min, max, estimated], i = [last alarm
/// position (-1 none)]. Steps:
/// - a = mean of the last min(c + 1, W) novelties (the ring in slot order);
/// - from c >= warmup: when there is no estimate yet or c % reestimate == 0, (mean, sd) of a over
///   the records >= learn in the last long_window / reestimate complete blocks and the current
///   one, floored at likelihood_mean_floor and sqrt(likelihood_var_floor) (mean 0.5, sd 1000 when
///   there are none); tail = 0.5 erfc(|a - mean| / (sd sqrt 2)) (mirrored below the mean);
///   a tail <= red is kept only for the first record of a run of reds and when the last kept one
///   is more than `rest` records back, else it becomes yellow; score = tail_to_score(tail);
/// - spatial (> 0, from c >= warmup): a value beyond [min - spatial r, max + spatial r] of every
///   earlier value (r = max - min > 0) scores 1;
/// - then a joins the accumulator when c >= learn, which becomes a block every `reestimate`
///   records.
/// Scores are 0 while c < warmup.
CUSENSE_HD double likelihood_stage(detector_params const& p, double* d, std::int64_t* li,
                                   std::int64_t c, double nov, double x)
{
  std::int64_t const W  = p.short_window;
  std::int64_t const NB = p.likelihood_blocks();
  std::int64_t const B  = p.reestimate;
  double* ring          = d;
  double* blk           = ring + W;
  double* acc           = blk + 3 * NB;
  double* sc            = acc + 3;  // mean, sd, prev_tail, min, max, estimated
  if (c == 0) {
    for (std::int64_t k = 0; k < W + 3 * NB + 3; ++k) d[k] = 0.0;
    sc[0] = 0.5;
    sc[1] = 1000.0;
    sc[2] = 1.0;
    sc[3] = x;
    sc[4] = x;
    sc[5] = 0.0;
    li[0] = -1;
  }
  ring[c % W]          = nov;
  std::int64_t const n = c + 1 < W ? c + 1 : W;
  double a             = 0.0;
  for (std::int64_t k = 0; k < n; ++k) a += ring[k];
  a /= static_cast<double>(n);
  double score = 0.0;
  if (c >= p.warmup) {
    if (sc[5] == 0.0 || c % B == 0) {
      std::int64_t const done = c / B < NB ? c / B : NB;
      double s0 = acc[0], s1 = acc[1], s2 = acc[2];
      for (std::int64_t b = 0; b < done; ++b) {
        s0 += blk[3 * b];
        s1 += blk[3 * b + 1];
        s2 += blk[3 * b + 2];
      }
      if (s0 > 0.0) {
        double const m = s1 / s0;
        double v       = s2 / s0 - m * m;
        if (v < likelihood_var_floor) { v = likelihood_var_floor; }
        sc[0] = m > likelihood_mean_floor ? m : likelihood_mean_floor;
        sc[1] = sqrt(v);
      } else {
        sc[0] = 0.5;
        sc[1] = 1000.0;
      }
      sc[5] = 1.0;
    }
    double const y    = a >= sc[0] ? a : 2.0 * sc[0] - a;
    double const tail = 0.5 * erfc((y - sc[0]) / (sc[1] * sqrt(2.0)));
    double kept       = tail;
    if (tail <= likelihood_red) {
      if (sc[2] > likelihood_red && (li[0] < 0 || c - li[0] > p.rest)) {
        li[0] = c;
      } else {
        kept = likelihood_yellow;
      }
    }
    sc[2] = tail;
    score = tail_to_score(kept);
    if (p.spatial > 0.0 && sc[4] > sc[3]) {
      double const tol = (sc[4] - sc[3]) * p.spatial;
      if (x > sc[4] + tol || x < sc[3] - tol) { score = 1.0; }
    }
  }
  if (x < sc[3]) { sc[3] = x; }
  if (x > sc[4]) { sc[4] = x; }
  if (c >= p.learn) {
    acc[0] += 1.0;
    acc[1] += a;
    acc[2] += a * a;
  }
  if ((c + 1) % B == 0) {
    std::int64_t const b = (c / B) % NB;
    for (int k = 0; k < 3; ++k) {
      blk[3 * b + k] = acc[k];
      acc[k]         = 0.0;
    }
  }
  return score;
}

/// Anomaly likelihood: the raw scorer `base` gives each record a deviation dev (knn_discord: the
/// raw nearest-neighbour distance of knn_raw_at, with the hour-of-day penalty when tod_weight >
/// 0; multiscale_z: the normal z of multiscale_z_dev, before its gate), the novelty is
/// min(1, dev / scale), and likelihood_stage turns it into the score. State d = [base state
/// (likelihood_base_stride()), likelihood_stage's], i = [count, last alarm position].
CUSENSE_HD double likelihood_step(detector_params const& p, double* d, std::int64_t* i, double x,
                                  std::int64_t ts)
{
  std::int64_t const c = i[0];
  double dev           = 0.0;
  if (p.base == detector_kind_id::multiscale_z) {
    bool warm = false;
    dev       = multiscale_z_dev(p, d, i, x, &warm);  // counts the value
  } else {
    dev = knn_raw_at(p, d, c, x, ts);
    knn_ring_push(p, d, c, x, ts);
    i[0] = c + 1;
  }
  double nov = dev / p.scale;
  if (!(nov < 1.0)) { nov = 1.0; }
  if (nov < 0.0) { nov = 0.0; }
  return likelihood_stage(p, d + p.likelihood_base_stride(), i + 1, c, nov, x);
}

/// One sequential step of any univariate detector: the score of x, and the state updated.
/// NaN -> NaN.
CUSENSE_HD double detector_step(detector_params const& p, double* d, std::int64_t* i, double x,
                                std::int64_t ts = 0)
{
  if (isnan_(x)) { return x; }
  switch (p.kind) {
    case detector_kind_id::ewma: return ewma_step(p, d, i, x);
    case detector_kind_id::rolling_z: return rolling_z_step(p, d, i, x);
    case detector_kind_id::rolling_mad: return rolling_mad_step(p, d, i, x);
    case detector_kind_id::knn_discord: return knn_step(p, d, i, x, ts);
    case detector_kind_id::multiscale_z: return multiscale_z_step(p, d, i, x);
    case detector_kind_id::joint_z: return x;  // needs the record's channels: detector_step_row
    case detector_kind_id::likelihood: return likelihood_step(p, d, i, x, ts);
  }
  return x;
}

/// One sequential step of any detector on a record's channels (row[0] is channel p.channel) at
/// time ts (ns; read by knn_discord with tod_weight > 0 and likelihood).
CUSENSE_HD double detector_step_row(detector_params const& p, double* d, std::int64_t* i,
                                    double const* row, std::int64_t ts)
{
  if (p.kind == detector_kind_id::joint_z) { return joint_z_step(p, d, i, row); }
  return detector_step(p, d, i, row[0], ts);
}

}  // namespace cusense::ops
