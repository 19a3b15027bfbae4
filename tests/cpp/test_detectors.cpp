// Streaming detectors on every backend against plain oracles written here.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#include <cusense/cusense.hpp>

#include "backend_fixture.hpp"
#include "test_utils.hpp"

namespace cusense::test {
namespace {

// --- oracles (one key's values in scoring order -> scores) ---------------------------------------

double z_to_score(double z)
{
  double const u = std::abs(z) / std::sqrt(2.0);
  double const lp =
    u < 25.0 ? -std::log10(std::erfc(u)) : (u * u + std::log(u * std::sqrt(M_PI))) / std::log(10.0);
  return lp / (1.0 + lp);
}
double safe_z(double d, double spread)
{
  if (spread > 1e-12) return d / spread;
  if (std::abs(d) <= 1e-12) return 0.0;
  return d > 0 ? 1e6 : -1e6;
}

std::vector<double> ewma_oracle(std::vector<double> const& x, double alpha)
{
  std::vector<double> out(x.size(), 0.0);
  if (x.empty()) return out;
  double m = x[0], v = 0;
  for (std::size_t i = 1; i < x.size(); ++i) {
    double const d = x[i] - m;
    out[i]         = z_to_score(safe_z(d, std::sqrt(v)));
    m += alpha * d;
    v = (1 - alpha) * (v + alpha * d * d);
  }
  return out;
}

std::vector<double> rolling_z_oracle(std::vector<double> const& x, std::size_t w)
{
  std::vector<double> out(x.size(), 0.0);
  for (std::size_t t = 2; t < x.size(); ++t) {
    std::size_t const b = t > w ? t - w : 0;
    double mu           = 0;
    for (std::size_t k = b; k < t; ++k) mu += x[k];
    mu /= double(t - b);
    double q = 0;
    for (std::size_t k = b; k < t; ++k) q += (x[k] - mu) * (x[k] - mu);
    out[t] = z_to_score(safe_z(x[t] - mu, std::sqrt(q / double(t - b))));
  }
  return out;
}

double median(std::vector<double> v)
{
  std::sort(v.begin(), v.end());
  std::size_t const n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::vector<double> rolling_mad_oracle(std::vector<double> const& x, std::size_t w)
{
  std::vector<double> out(x.size(), 0.0);
  for (std::size_t t = 2; t < x.size(); ++t) {
    std::size_t const b = t > w ? t - w : 0;
    std::vector<double> B(x.begin() + b, x.begin() + t);
    double const med = median(B);
    std::vector<double> dev;
    double mean_dev = 0;
    for (double v : B) {
      dev.push_back(std::abs(v - med));
      mean_dev += std::abs(v - med);
    }
    double spread = 1.4826 * median(dev);
    if (!(spread > 1e-12)) spread = 1.2533 * mean_dev / double(B.size());
    out[t] = z_to_score(safe_z(x[t] - med, spread));
  }
  return out;
}

std::vector<double> knn_oracle(std::vector<double> const& x, detector_spec const& p)
{
  std::int64_t const n = std::int64_t(x.size()), L = p.L, H = p.H;
  std::vector<double> raw(x.size(), 0.0), s(x.size(), 0.0), g(x.size(), 0.0);
  for (std::int64_t t = L - 1; t < n; ++t) {
    std::int64_t const lo = std::max(L - 1, t - H + L - 1), hi = t - L;
    if (hi - lo + 1 < p.min_candidates) continue;
    double best = INFINITY;
    for (std::int64_t j = lo; j <= hi; ++j) {
      double q = 0;
      for (std::int64_t k = 0; k < L; ++k) q += std::pow(x[t - L + 1 + k] - x[j - L + 1 + k], 2);
      best = std::min(best, std::sqrt(q));
    }
    std::int64_t const b = std::max<std::int64_t>(0, t - H);
    double mu            = 0;
    for (std::int64_t k = b; k < t; ++k) mu += x[k];
    mu /= double(t - b);
    double q = 0;
    for (std::int64_t k = b; k < t; ++k) q += (x[k] - mu) * (x[k] - mu);
    double const sd = std::sqrt(q / double(t - b));
    raw[t] = sd > 1e-12 ? best / (std::sqrt(double(L)) * sd) : (best <= 1e-12 ? 0.0 : 1e6);
  }
  for (std::int64_t t = 0; t < n; ++t) {
    double M = 0;
    for (std::int64_t k = std::max<std::int64_t>(0, t - p.H2); k < t; ++k) M = std::max(M, raw[k]);
    s[t] = raw[t] + M > 0 ? raw[t] / (raw[t] + M) : 0.0;
    double prev = -INFINITY;
    for (std::int64_t k = std::max<std::int64_t>(0, t - p.K); k < t; ++k) prev = std::max(prev, s[k]);
    g[t] = s[t] > prev && t >= p.min_count ? s[t] : 0.0;
  }
  return g;
}

std::vector<double> oracle(detector_spec const& d, std::vector<double> const& x)
{
  switch (d.kind) {
    case detector_kind::ewma: return ewma_oracle(x, d.alpha);
    case detector_kind::rolling_z: return rolling_z_oracle(x, std::size_t(d.window));
    case detector_kind::rolling_mad: return rolling_mad_oracle(x, std::size_t(d.window));
    case detector_kind::knn_discord: return knn_oracle(x, d);
    default: return {};
  }
}

// --- streams ------------------------------------------------------------------------------------

// Per-key random walks with level shifts and spikes; event times shuffled within `disorder`.
stream make_stream(std::size_t n, std::uint32_t num_keys, std::int64_t disorder, unsigned seed)
{
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0, 1);
  std::vector<double> level(num_keys, 0.0);
  stream s;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t const k = std::uint32_t(rng() % num_keys);
    level[k] += 0.1 * noise(rng);
    double v = 10 * k + level[k] + noise(rng);
    if (rng() % 97 == 0) v += 8 * noise(rng);
    if (rng() % 50 == 0) v = std::round(v);  // ties for the median
    s.keys.push_back(k);
    s.ts.push_back(std::int64_t(i) * 10 - std::int64_t(rng() % std::uint64_t(disorder + 1)));
    s.values.push_back(v);
  }
  return s;
}

// Scores by arrival index (NaN where not scored), plus the late flags.
struct scored {
  std::vector<double> score;
  std::vector<std::uint8_t> late;
  std::vector<std::int64_t> order;  // seq in output order
};

scored run(pipeline& p, stream const& s, std::vector<std::size_t> const& cuts, std::string const& col)
{
  scored r;
  r.score.assign(s.ts.size(), std::numeric_limits<double>::quiet_NaN());
  r.late.assign(s.ts.size(), 0);
  auto collect = [&](table const& t) {
    auto const& seq  = t.get<std::int64_t>("seq");
    auto const& sc   = t.get<double>(col);
    auto const& late = t.get<std::uint8_t>("late");
    for (std::size_t i = 0; i < seq.size(); ++i) {
      r.score[std::size_t(seq[i])] = sc[i];
      r.late[std::size_t(seq[i])]  = late[i];
      r.order.push_back(seq[i]);
    }
  };
  std::size_t begin = 0;
  for (std::size_t end : cuts) {
    p.push(s.keys.data() + begin, s.ts.data() + begin, s.values.data() + begin, end - begin);
    collect(p.poll_scores());
    begin = end;
  }
  p.flush();
  collect(p.poll_scores());
  return r;
}

// Expected scores by arrival index: each key's records in (ts, arrival) order through the oracle.
std::vector<double> expected(detector_spec const& d, stream const& s)
{
  std::map<std::uint32_t, std::vector<std::size_t>> by_key;
  for (std::size_t i = 0; i < s.ts.size(); ++i) by_key[s.keys[i]].push_back(i);
  std::vector<double> out(s.ts.size());
  for (auto& [k, idx] : by_key) {
    std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return s.ts[a] < s.ts[b]; });
    std::vector<double> x;
    for (std::size_t i : idx) x.push_back(s.values[i]);
    std::vector<double> sc = oracle(d, x);
    for (std::size_t j = 0; j < idx.size(); ++j) out[idx[j]] = sc[j];
  }
  return out;
}

// Scores equal to `rel` relative plus `abs` absolute (scores lie in [0, 1]; near 0 a score is
// proportional to x - mean, whose relative rounding grows when x is close to the mean).
::testing::AssertionResult close(std::vector<double> const& got, std::vector<double> const& want, double rel,
                                 double abs = 1e-12)
{
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size";
  for (std::size_t i = 0; i < got.size(); ++i) {
    double const a = got[i], b = want[i];
    bool const ok = (std::isnan(a) && std::isnan(b)) ||
                    std::abs(a - b) <= rel * std::max(std::abs(a), std::abs(b)) + abs;
    if (!ok) return ::testing::AssertionFailure() << "record " << i << ": " << a << " vs " << b;
  }
  return ::testing::AssertionSuccess();
}

template <typename Backend>
class detector_test : public backend_test<Backend> {
 protected:
  pipeline_options options(std::vector<detector_spec> dets, std::int64_t ooo)
  {
    pipeline_options o;
    o.windowed             = false;
    o.detectors            = std::move(dets);
    o.max_out_of_orderness = ooo;
    o.where                = Backend::value;
    return o;
  }
};

TYPED_TEST_SUITE(detector_test, backends, backend_names);

std::vector<detector_spec> all_detectors()
{
  detector_spec knn = detector_spec::knn_discord();
  knn.H = 60, knn.L = 3, knn.min_candidates = 10, knn.H2 = 25, knn.K = 7, knn.min_count = 20;
  return {detector_spec::ewma(0.1), detector_spec::rolling_z(20), detector_spec::rolling_mad(15), knn};
}

TYPED_TEST(detector_test, matches_oracles_with_disorder_and_random_batches)
{
  stream s = make_stream(6000, 13, 150, 7);
  for (detector_spec const& d : all_detectors()) {
    pipeline p(this->options({d}, 200));  // disorder < bound: nothing late
    scored r = run(p, s, random_cuts(s.ts.size(), 700, 3), "score_" + d.column_name());
    EXPECT_TRUE(close(r.score, expected(d, s), 1e-9)) << d.column_name();
    EXPECT_EQ(std::accumulate(r.late.begin(), r.late.end(), 0), 0);
    EXPECT_EQ(p.stats().records_scored, s.ts.size());
  }
}

TYPED_TEST(detector_test, batching_changes_nothing)
{
  stream s = make_stream(3000, 7, 60, 11);
  auto dets = all_detectors();
  pipeline one(this->options(dets, 30));
  scored whole = run(one, s, {s.ts.size()}, "score_ewma");
  for (std::size_t step : {1u, 31u, 32u, 33u, 500u}) {
    std::vector<std::size_t> cuts;
    for (std::size_t at = step; at < s.ts.size() + step; at += step) cuts.push_back(std::min(at, s.ts.size()));
    for (auto const& d : dets) {
      pipeline a(this->options(dets, 30)), b(this->options(dets, 30));
      scored x = run(a, s, {s.ts.size()}, "score_" + d.column_name());
      scored y = run(b, s, cuts, "score_" + d.column_name());
      bool const cpu = TypeParam::value == backend::cpu;
      EXPECT_TRUE(close(y.score, x.score, cpu ? 0.0 : 1e-9, cpu ? 0.0 : 1e-12))
        << d.column_name() << " step " << step;
      EXPECT_EQ(x.late, y.late);
      if (TypeParam::value == backend::cpu) {
        for (std::size_t i = 0; i < x.score.size(); ++i) {
          ASSERT_TRUE(x.score[i] == y.score[i] || (std::isnan(x.score[i]) && std::isnan(y.score[i])));
        }
      }
    }
  }
  EXPECT_GT(std::accumulate(whole.late.begin(), whole.late.end(), 0), 0);  // disorder > bound
}

TYPED_TEST(detector_test, prefix_gives_prefix_of_scores)
{
  stream s = make_stream(2000, 5, 20, 5);
  auto dets = all_detectors();
  pipeline full(this->options(dets, 30));
  full.push(s.keys.data(), s.ts.data(), s.values.data(), s.ts.size());
  table all = full.poll_scores();
  pipeline part(this->options(dets, 30));
  part.push(s.keys.data(), s.ts.data(), s.values.data(), 1234);
  table pre = part.poll_scores();
  ASSERT_LE(pre.num_rows(), all.num_rows());
  ASSERT_GT(pre.num_rows(), 1000u);
  for (auto const& c : pre.columns) {
    auto const& whole = all[c.name];
    if (auto const* v = std::get_if<std::vector<double>>(&c.data)) {
      auto const& w = std::get<std::vector<double>>(whole.data);
      std::vector<double> head(w.begin(), w.begin() + std::ptrdiff_t(v->size()));
      bool const cpu = TypeParam::value == backend::cpu;
      EXPECT_TRUE(close(*v, head, cpu ? 0.0 : 1e-9, cpu ? 0.0 : 1e-12)) << c.name;
    }
  }
  EXPECT_EQ(pre.get<std::int64_t>("seq"),
            std::vector<std::int64_t>(all.get<std::int64_t>("seq").begin(),
                                      all.get<std::int64_t>("seq").begin() + std::ptrdiff_t(pre.num_rows())));
}

TYPED_TEST(detector_test, interleaved_keys_equal_each_key_alone)
{
  stream s = make_stream(3000, 9, 0, 21);
  for (detector_spec const& d : all_detectors()) {
    pipeline p(this->options({d}, 0));
    scored mixed = run(p, s, random_cuts(s.ts.size(), 300, 9), "score_" + d.column_name());
    for (std::uint32_t k = 0; k < 9; ++k) {
      stream one;
      std::vector<std::size_t> idx;
      for (std::size_t i = 0; i < s.ts.size(); ++i) {
        if (s.keys[i] != k) continue;
        one.keys.push_back(k);
        one.ts.push_back(s.ts[i]);
        one.values.push_back(s.values[i]);
        idx.push_back(i);
      }
      pipeline q(this->options({d}, 0));
      scored alone = run(q, one, {one.ts.size()}, "score_" + d.column_name());
      for (std::size_t j = 0; j < idx.size(); ++j) {
        double const a = mixed.score[idx[j]], b = alone.score[j];
        ASSERT_NEAR(a, b, TypeParam::value == backend::cpu ? 0.0 : 1e-12 + 1e-9 * std::abs(b))
          << d.column_name() << " key " << k;
      }
    }
  }
}

TYPED_TEST(detector_test, late_records_are_reported_not_dropped)
{
  pipeline p(this->options({detector_spec::ewma(0.5)}, 15));
  std::vector<std::uint32_t> keys{1, 1, 1, 1, 1};
  std::vector<std::int64_t> ts{100, 110, 96, 90, 120};  // 96 is within the bound, 90 is late
  std::vector<double> v{1, 2, 3, 4, 5};
  p.push(keys.data(), ts.data(), v.data(), 5);
  table t = p.poll_scores();
  // watermark 105: 96, 100 released in time order; 90 late; 110, 120 buffered
  EXPECT_EQ(t.get<std::int64_t>("timestamp"), (std::vector<std::int64_t>{90, 96, 100}));
  EXPECT_EQ(t.get<std::uint8_t>("late"), (std::vector<std::uint8_t>{1, 0, 0}));
  EXPECT_EQ(t.get<std::int64_t>("seq"), (std::vector<std::int64_t>{3, 2, 0}));
  EXPECT_TRUE(std::isnan(t.get<double>("score_ewma")[0]));
  EXPECT_EQ(t.get<double>("score_ewma")[1], 0.0);  // first value of the key
  EXPECT_EQ(p.stats().records_score_late, 1u);
  EXPECT_EQ(p.stats().records_score_buffered, 2u);
  p.flush();
  t = p.poll_scores();
  EXPECT_EQ(t.get<std::int64_t>("timestamp"), (std::vector<std::int64_t>{110, 120}));
  std::int64_t again = 119;  // below the largest time seen before the flush: late
  p.push(keys.data(), &again, v.data(), 1);
  EXPECT_EQ(p.poll_scores().get<std::uint8_t>("late"), (std::vector<std::uint8_t>{1}));
}

TYPED_TEST(detector_test, nan_values_score_nan_and_are_skipped)
{
  std::vector<double> x{1, 2, NAN, 3, 2.5, NAN, 10};
  std::vector<std::int64_t> ts(x.size());
  std::iota(ts.begin(), ts.end(), 0);
  std::vector<double> clean{1, 2, 3, 2.5, 10};
  auto const want = ewma_oracle(clean, 0.3);
  std::vector<double> got = score(nullptr, ts.data(), x.data(), x.size(), detector_spec::ewma(0.3), this->where);
  std::vector<double> got_clean;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(got[i]));
    } else {
      got_clean.push_back(got[i]);
    }
  }
  EXPECT_TRUE(close(got_clean, want, 1e-9));
}

TYPED_TEST(detector_test, one_shot_score_is_aligned_with_input_order)
{
  stream s = make_stream(800, 3, 1000, 4);  // heavy disorder: one-shot sorts by time per key
  detector_spec d = detector_spec::rolling_z(10);
  std::vector<double> got = score(s.keys.data(), s.ts.data(), s.values.data(), s.ts.size(), d, this->where);
  EXPECT_TRUE(close(got, expected(d, s), 1e-9));
}

TYPED_TEST(detector_test, silence_events)
{
  detector_spec sil = detector_spec::silence(100);
  pipeline p(this->options({sil}, 0));
  // key 1 reports every 10 ns; key 2 stops at 50 and comes back at 400.
  std::vector<std::uint32_t> keys;
  std::vector<std::int64_t> ts;
  for (std::int64_t t = 0; t <= 600; t += 10) {
    keys.push_back(1);
    ts.push_back(t);
    if (t <= 50 || t >= 400) {
      keys.push_back(2);
      ts.push_back(t);
    }
  }
  std::vector<double> v(ts.size(), 1.0);
  // push up to t = 300 (key 2 silent since 150), check, then the rest
  std::size_t cut = std::size_t(std::find(ts.begin(), ts.end(), 300) - ts.begin()) + 1;
  p.push(keys.data(), ts.data(), v.data(), cut);
  table a = p.poll_silence();
  ASSERT_EQ(a.num_rows(), 1u);
  EXPECT_EQ(a.get<std::uint32_t>("key")[0], 2u);
  EXPECT_EQ(a.get<std::int64_t>("last_seen")[0], 50);
  EXPECT_EQ(a.get<std::int64_t>("silent_since")[0], 150);
  EXPECT_EQ(a.get<std::uint8_t>("back")[0], 0);
  EXPECT_EQ(a.get<std::int64_t>("back_at")[0], std::numeric_limits<std::int64_t>::min());
  p.push(keys.data() + cut, ts.data() + cut, v.data() + cut, ts.size() - cut);
  table b = p.poll_silence();
  ASSERT_EQ(b.num_rows(), 1u);
  EXPECT_EQ(b.get<std::uint8_t>("back")[0], 1);
  EXPECT_EQ(b.get<std::int64_t>("back_at")[0], 400);
  EXPECT_EQ(b.get<std::int64_t>("silent_since")[0], 150);
  EXPECT_THROW(p.poll_scores(), invalid_argument);  // no scoring detector
}

TEST(detectors, bad_parameters_are_rejected)
{
  auto make = [](detector_spec d) {
    pipeline_options o;
    o.windowed  = false;
    o.where     = backend::cpu;
    o.detectors = {d};
    return pipeline(o);
  };
  EXPECT_THROW(make(detector_spec::ewma(0.0)), invalid_argument);
  EXPECT_THROW(make(detector_spec::ewma(1.5)), invalid_argument);
  EXPECT_NO_THROW(make(detector_spec::ewma(1.0)));
  EXPECT_THROW(make(detector_spec::rolling_z(1)), invalid_argument);
  EXPECT_THROW(make(detector_spec::rolling_mad(0)), invalid_argument);
  EXPECT_THROW(make(detector_spec::ewma(0.1, -0.1)), invalid_argument);
  EXPECT_THROW(make(detector_spec::ewma(0.1, 1.01)), invalid_argument);
  EXPECT_THROW(make(detector_spec::silence(0)), invalid_argument);
  detector_spec other = detector_spec::ewma();
  other.channel       = 1;
  EXPECT_THROW(make(other), invalid_argument);  // one channel only
  pipeline_options o;
  o.windowed  = false;
  o.where     = backend::cpu;
  o.detectors = {detector_spec::ewma(), detector_spec::ewma(0.2)};
  EXPECT_THROW(pipeline{o}, invalid_argument);  // duplicate names
  o.detectors[1].name = "ewma_fast";
  EXPECT_NO_THROW(pipeline{o});
  o.detectors.clear();
  EXPECT_THROW(pipeline{o}, invalid_argument);  // neither windows nor detectors
}

}  // namespace
}  // namespace cusense::test

// --- multiscale_z and joint_z (CPU backend only for now) -------------------------------------------

namespace cusense::test {
namespace {

double abs_z(double d, double var)
{
  double const sd = std::sqrt(std::max(var, 0.0));
  if (sd > 1e-12) return std::abs(d) / sd;
  return std::abs(d) <= 1e-12 ? 0.0 : 1e6;
}
double clip_to(double x, double b) { return std::min(std::max(x, -b), b); }

// Holt level/slope, residual e, short means with beta and beta / 3, each over its own EWMA square.
std::vector<double> multiscale_oracle(std::vector<double> const& x, detector_spec const& p)
{
  std::vector<double> out(x.size(), 0.0);
  double level = 0, slope = 0, v = 0, a[2] = {0, 0}, w[2] = {0, 0};
  double const betas[2] = {p.beta, p.beta / 3};
  for (std::size_t c = 0; c < x.size(); ++c) {
    if (c == 0) {
      level = x[0];
      continue;
    }
    double const n = double(c);
    double const pred = level + slope, e = x[c] - pred;
    double an[2];
    for (int k = 0; k < 2; ++k) an[k] = (1 - betas[k]) * a[k] + betas[k] * e;
    bool const warm = std::int64_t(c) >= p.min_count;
    if (warm) {
      double const t  = std::max({abs_z(e, v), abs_z(an[0], w[0]), abs_z(an[1], w[1])});
      double const nu = std::max(1.0, (std::min(n, 2 / p.gamma) - 1) / 2);  // Student t -> z
      out[c]          = z_to_score(std::sqrt((nu - 2.0 / 3 + 0.1 / nu) * std::log1p(t * t / nu)));
    }
    double const ec = warm ? clip_to(e, p.clip * std::sqrt(v)) : e;
    double const ra = std::max(p.alpha, 1 / n), g = std::max(p.gamma, 1 / n);
    double const nl = pred + ra * ec;
    slope           = p.trend > 0 ? slope + std::max(p.trend, 1 / n) * (nl - level - slope) : 0.0;
    level           = nl;
    v               = (1 - g) * v + g * ec * ec;
    for (int k = 0; k < 2; ++k) {
      double const anc = warm ? clip_to(an[k], p.clip * std::sqrt(w[k])) : an[k];
      a[k]             = (1 - betas[k]) * a[k] + betas[k] * ec;
      w[k]             = (1 - g) * w[k] + g * anc * anc;
    }
  }
  if (p.K == 0) return out;
  std::vector<double> gated(out.size());  // kept when above every score since the previous block
  std::size_t const K = std::size_t(p.K);
  for (std::size_t t = 0; t < out.size(); ++t) {
    double prev = -1;
    for (std::size_t j = t / K >= 1 ? K * (t / K - 1) : 0; j < t; ++j) prev = std::max(prev, out[j]);
    gated[t] = out[t] > prev ? out[t] : 0.0;
  }
  return gated;
}

TEST(detectors, multiscale_z_matches_oracle_with_disorder_and_random_batches)
{
  stream s = make_stream(6000, 11, 150, 21);
  detector_spec d = detector_spec::multiscale_z();
  d.min_count     = 10;
  d.K             = 40;
  pipeline_options o;
  o.windowed             = false;
  o.detectors            = {d};
  o.max_out_of_orderness = 200;
  o.where                = backend::cpu;
  pipeline p(o);
  scored r = run(p, s, random_cuts(s.ts.size(), 500, 5), "score_multiscale_z");
  std::map<std::uint32_t, std::vector<std::size_t>> by_key;
  for (std::size_t i = 0; i < s.ts.size(); ++i) by_key[s.keys[i]].push_back(i);
  std::vector<double> want(s.ts.size());
  for (auto& [k, idx] : by_key) {
    std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return s.ts[a] < s.ts[b]; });
    std::vector<double> x;
    for (std::size_t i : idx) x.push_back(s.values[i]);
    std::vector<double> sc = multiscale_oracle(x, d);
    for (std::size_t j = 0; j < idx.size(); ++j) want[idx[j]] = sc[j];
  }
  EXPECT_TRUE(close(r.score, want, 1e-9));
}

TEST(detectors, joint_z_reads_its_channels_and_scores_a_joint_shift)
{
  // 3 channels, one key; a shift of 3 sd on two channels at once after 600 records
  std::mt19937_64 rng(5);
  std::normal_distribution<double> noise(0, 1);
  std::size_t const n = 1000;
  std::vector<double> v(n * 3);
  std::vector<std::int64_t> ts(n);
  for (std::size_t i = 0; i < n; ++i) {
    ts[i] = std::int64_t(i) * 1000;
    for (int c = 0; c < 3; ++c) v[i * 3 + c] = 5.0 * c + noise(rng) + (i >= 600 && c > 0 ? 3.0 : 0.0);
  }
  detector_spec d        = detector_spec::joint_z();
  std::vector<double> sc = score(nullptr, ts.data(), v.data(), n, 3, d, backend::cpu);
  double before = 0, after = 0;
  for (std::size_t i = 0; i < 50; ++i) EXPECT_EQ(sc[i], 0.0);
  for (std::size_t i = 100; i < 600; ++i) before = std::max(before, sc[i]);
  for (std::size_t i = 600; i < 640; ++i) after = std::max(after, sc[i]);
  EXPECT_LT(before, d.threshold);
  EXPECT_GE(after, d.threshold);
  // channels 1..2 only: channel 0 replaced by garbage changes nothing
  detector_spec sub = detector_spec::joint_z(1, 2);
  std::vector<double> a = score(nullptr, ts.data(), v.data(), n, 3, sub, backend::cpu);
  for (std::size_t i = 0; i < n; ++i) v[i * 3] = 1e9 * noise(rng);
  std::vector<double> b = score(nullptr, ts.data(), v.data(), n, 3, sub, backend::cpu);
  EXPECT_EQ(a, b);
  detector_spec bad = detector_spec::joint_z(2, 2);
  EXPECT_THROW(score(nullptr, ts.data(), v.data(), n, 3, bad, backend::cpu), invalid_argument);
}


// --- likelihood (CPU backend only for now) -----------------------------------------------------------

detector_spec small_likelihood(detector_kind base)
{
  detector_spec d  = detector_spec::likelihood();
  d.base           = base;
  d.H              = 200;
  d.min_candidates = 20;
  d.tod_weight     = 0.05;
  d.min_count      = 10;  // the multiscale_z base's warm-up
  d.short_window   = 5;
  d.long_window    = 300;
  d.reestimate     = 50;
  d.learn          = 40;
  d.warmup         = 120;
  d.rest           = 30;
  return d;
}

pipeline_options likelihood_options(detector_spec const& d, std::int64_t ooo = 200)
{
  pipeline_options o;
  o.windowed             = false;
  o.detectors            = {d};
  o.max_out_of_orderness = ooo;
  o.where                = backend::cpu;
  return o;
}

TEST(detectors, likelihood_batching_keys_and_checkpoints_change_nothing)
{
  stream s = make_stream(8000, 5, 150, 31);
  std::int64_t const minute = 60'000'000'000;
  for (std::size_t i = 0; i < s.ts.size(); ++i) s.ts[i] *= minute;  // hours of day vary
  for (detector_kind base : {detector_kind::knn_discord, detector_kind::multiscale_z}) {
    detector_spec const d = small_likelihood(base);
    pipeline whole(likelihood_options(d, 200 * minute));
    scored const want = run(whole, s, {s.ts.size()}, "score_likelihood");
    double top = 0;
    for (double v : want.score) {
      ASSERT_TRUE(v >= 0.0 && v <= 1.0) << v;
      top = std::max(top, v);
    }
    EXPECT_GE(top, 0.5);  // some alarms
    pipeline cut(likelihood_options(d, 200 * minute));
    EXPECT_TRUE(close(run(cut, s, random_cuts(s.ts.size(), 300, 9), "score_likelihood").score, want.score, 0.0, 0.0));
    // a checkpoint after a third of the stream, restored, goes on with the same scores
    pipeline first(likelihood_options(d, 200 * minute));
    std::size_t const third = s.ts.size() / 3;
    first.push(s.keys.data(), s.ts.data(), s.values.data(), third);
    table const a = first.poll_scores();
    std::stringstream buf;
    first.checkpoint(buf);
    pipeline second = pipeline::restore(buf, backend::cpu);
    detector_spec const& r = second.options().detectors.at(0);
    EXPECT_EQ(r.base, d.base);
    EXPECT_EQ(r.tod_weight, d.tod_weight);
    EXPECT_EQ(r.scale, d.scale);
    EXPECT_EQ(r.short_window, d.short_window);
    EXPECT_EQ(r.long_window, d.long_window);
    EXPECT_EQ(r.reestimate, d.reestimate);
    EXPECT_EQ(r.learn, d.learn);
    EXPECT_EQ(r.warmup, d.warmup);
    EXPECT_EQ(r.rest, d.rest);
    EXPECT_EQ(r.spatial, d.spatial);
    second.push(s.keys.data() + third, s.ts.data() + third, s.values.data() + third, s.ts.size() - third);
    table const b = second.poll_scores();
    second.flush();
    table const c = second.poll_scores();
    std::vector<double> got(s.ts.size(), std::numeric_limits<double>::quiet_NaN());
    for (table const* t : {&a, &b, &c}) {
      auto const& seq = t->get<std::int64_t>("seq");
      auto const& sc  = t->get<double>("score_likelihood");
      for (std::size_t i = 0; i < seq.size(); ++i) got[std::size_t(seq[i])] = sc[i];
    }
    EXPECT_TRUE(close(got, want.score, 0.0, 0.0));
  }
}

TEST(detectors, likelihood_scores_new_extremes_and_waits_for_its_warm_up)
{
  std::size_t const n = 1000;
  std::vector<std::int64_t> ts(n);
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    ts[i] = std::int64_t(i) * 1'000'000'000;
    v[i]  = double(i % 4 == 3 ? 1 : i % 4);  // 0 1 2 1 ...
  }
  v[700] = 2.2;  // beyond the range by 10 %
  v[100] = 9.0;  // during the warm-up
  detector_spec d = detector_spec::likelihood();
  d.base          = detector_kind::multiscale_z;
  std::vector<double> const s = score(nullptr, ts.data(), v.data(), n, d, backend::cpu);
  for (std::size_t i = 0; i < 300; ++i) EXPECT_EQ(s[i], 0.0) << i;
  EXPECT_LT(s[700], 1.0);  // 9 is the range's maximum now
  v[100] = 1.0;
  std::vector<double> const t = score(nullptr, ts.data(), v.data(), n, d, backend::cpu);
  EXPECT_EQ(t[700], 1.0);
}

TEST(detectors, likelihood_bad_parameters_are_rejected)
{
  auto make = [](detector_spec d) { return pipeline(likelihood_options(d)); };
  EXPECT_NO_THROW(make(detector_spec::likelihood()));
  auto bad = [&](auto set) {
    detector_spec d = detector_spec::likelihood();
    set(d);
    EXPECT_THROW(make(d), invalid_argument);
  };
  bad([](detector_spec& d) { d.base = detector_kind::ewma; });
  bad([](detector_spec& d) { d.base = detector_kind::likelihood; });
  bad([](detector_spec& d) { d.scale = 0; });
  bad([](detector_spec& d) { d.scale = std::nan(""); });
  bad([](detector_spec& d) { d.short_window = 0; });
  bad([](detector_spec& d) { d.short_window = 1025; });
  bad([](detector_spec& d) { d.reestimate = 0; });
  bad([](detector_spec& d) { d.long_window = d.reestimate - 1; });
  bad([](detector_spec& d) { d.long_window = std::int64_t{1} << 20, d.reestimate = 8; });
  bad([](detector_spec& d) { d.warmup = 0; });
  bad([](detector_spec& d) { d.learn = d.warmup; });
  bad([](detector_spec& d) { d.learn = -1; });
  bad([](detector_spec& d) { d.rest = -1; });
  bad([](detector_spec& d) { d.spatial = -0.5; });
  bad([](detector_spec& d) { d.spatial = INFINITY; });
  bad([](detector_spec& d) { d.tod_weight = -1; });
  bad([](detector_spec& d) { d.H = 3; });
  bad([](detector_spec& d) { d.base = detector_kind::multiscale_z, d.alpha = 0; });
  detector_spec knn = detector_spec::knn_discord();
  knn.min_count     = 0;
  EXPECT_THROW(make(knn), invalid_argument);
  knn.min_count  = 250;
  knn.tod_weight = std::nan("");
  EXPECT_THROW(make(knn), invalid_argument);
}

TEST(detectors, knn_discord_waits_for_its_calibration)
{
  // Regression: the first calibrated score was raw / (raw + 0) = 1 on every key.
  std::mt19937_64 rng(3);
  std::normal_distribution<double> noise(0, 1);
  std::size_t const n = 600;
  std::vector<std::int64_t> ts(n);
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    ts[i] = std::int64_t(i) * 1'000'000'000;
    v[i]  = std::sin(double(i) / 30.0) + noise(rng);
  }
  detector_spec d = detector_spec::knn_discord();
  d.H             = 400;
  std::vector<double> const s = score(nullptr, ts.data(), v.data(), n, d, backend::cpu);
  std::size_t first = 0;
  while (first < n && s[first] == 0.0) ++first;
  EXPECT_GE(first, std::size_t(d.min_count));
  ASSERT_LT(first, n);
  EXPECT_LT(s[first], 0.99);
  d.min_count                   = 1;  // as before: the first score is 1
  std::vector<double> const old = score(nullptr, ts.data(), v.data(), n, d, backend::cpu);
  std::size_t k                 = 0;
  while (old[k] == 0.0) ++k;
  EXPECT_EQ(old[k], 1.0);
}

}  // namespace
}  // namespace cusense::test
