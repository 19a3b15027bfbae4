"""Streaming anomaly detectors against plain numpy references, on every backend."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

import cusense
from streams import random_cuts
from cusense import detectors as D

RTOL = 1e-9
# Scores lie in [0, 1]; near 0 a score is proportional to x - mean, whose relative rounding grows
# when x is close to the mean, so comparisons also allow 1e-12 absolute.
ATOL = 1e-12


# --- references (one key's values in event-time order -> scores) ----------------------------------

def z_to_score(z):
    u = abs(z) / math.sqrt(2.0)
    lp = -math.log10(math.erfc(u)) if u < 25.0 else (u * u + math.log(u * math.sqrt(math.pi))) / math.log(10.0)
    return lp / (1.0 + lp)


def safe_z(d, spread):
    if spread > 1e-12:
        return d / spread
    if abs(d) <= 1e-12:
        return 0.0
    return 1e6 if d > 0 else -1e6


def ewma_ref(x, alpha, min_count=1):
    out = np.zeros(len(x))
    if len(x) == 0:
        return out
    m, v = x[0], 0.0
    for i in range(1, len(x)):
        d = x[i] - m
        out[i] = z_to_score(safe_z(d, math.sqrt(v))) if i >= min_count else 0.0
        m = m + alpha * d
        v = (1 - alpha) * (v + alpha * d * d)
    return out


def rolling_z_ref(x, window, min_count=2):
    out = np.zeros(len(x))
    for t in range(len(x)):
        b = x[max(0, t - window):t]
        if len(b) < min_count:
            continue
        mu = b.mean()
        sd = math.sqrt(((b - mu) ** 2).mean())
        out[t] = z_to_score(safe_z(x[t] - mu, sd))
    return out


def rolling_mad_ref(x, window, min_count=2):
    out = np.zeros(len(x))
    for t in range(len(x)):
        b = x[max(0, t - window):t]
        if len(b) < min_count:
            continue
        med = np.median(b)
        dev = np.abs(b - med)
        spread = 1.4826 * np.median(dev)
        if not spread > 1e-12:
            spread = 1.2533 * dev.mean()
        out[t] = z_to_score(safe_z(x[t] - med, spread))
    return out


def knn_ref(x, L, H, min_candidates, H2, K, min_count):
    n = len(x)
    raw = np.zeros(n)
    for t in range(L - 1, n):
        lo, hi = max(L - 1, t - H + L - 1), t - L
        if hi - lo + 1 < min_candidates:
            continue
        q = x[t - L + 1:t + 1]
        cands = np.stack([x[j - L + 1:j + 1] for j in range(lo, hi + 1)])
        dmin = np.sqrt(((cands - q) ** 2).sum(axis=1)).min()
        b = x[max(0, t - H):t]
        sd = math.sqrt(((b - b.mean()) ** 2).mean())
        raw[t] = dmin / (math.sqrt(L) * sd) if sd > 1e-12 else (0.0 if dmin <= 1e-12 else 1e6)
    s = np.zeros(n)
    g = np.zeros(n)
    for t in range(n):
        m = raw[max(0, t - H2):t].max(initial=0.0)
        s[t] = raw[t] / (raw[t] + m) if raw[t] + m > 0 else 0.0
        prev = s[max(0, t - K):t].max(initial=-np.inf)
        g[t] = s[t] if s[t] > prev and t >= min_count else 0.0
    return g


SMALL_KNN = dict(L=3, H=60, min_candidates=10, H2=25, K=7, min_count=20)

DETECTORS = {
    "ewma": (D.EWMA(alpha=0.1), lambda x: ewma_ref(x, 0.1)),
    "ewma_warm": (D.EWMA(alpha=0.3, min_count=5, name="ewma_warm"), lambda x: ewma_ref(x, 0.3, 5)),
    "rolling_z": (D.RollingZ(window=20), lambda x: rolling_z_ref(x, 20)),
    "rolling_mad": (D.RollingMAD(window=15), lambda x: rolling_mad_ref(x, 15)),
    "knn_discord": (D.KnnDiscord(**SMALL_KNN), lambda x: knn_ref(x, **SMALL_KNN)),
}


# --- helpers ----------------------------------------------------------------------------------------

def make_stream(rng, n, num_keys, disorder):
    """Per-key random walks with spikes and ties; event times shuffled within `disorder` ns."""
    keys = rng.integers(0, num_keys, n).astype(np.uint32)
    steps = rng.normal(0, 0.1, n)
    level = np.zeros(n)
    for k in range(num_keys):
        sel = keys == k
        level[sel] = np.cumsum(steps[sel])
    values = 10.0 * keys + level + rng.normal(0, 1, n)
    spikes = rng.random(n) < 0.01
    values[spikes] += rng.normal(0, 8, spikes.sum())
    ties = rng.random(n) < 0.02
    values[ties] = np.round(values[ties])
    ts = np.arange(n, dtype=np.int64) * 10 - rng.integers(0, disorder + 1, n)
    return keys, ts, values


def run(pipe, keys, ts, values, cuts):
    parts = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        pipe.push(keys[a:b], ts[a:b], values[a:b])
        parts.append(pipe.poll_scores())
    pipe.flush()
    parts.append(pipe.poll_scores())
    return cusense.Result.concat(parts)


def by_seq(res, column, n):
    out = np.full(n, np.nan)
    out[res["seq"]] = res[column]
    return out


def expected(ref, keys, ts, values):
    out = np.zeros(len(ts))
    for k in np.unique(keys):
        idx = np.flatnonzero(keys == k)
        idx = idx[np.argsort(ts[idx], kind="stable")]
        out[idx] = ref(values[idx])
    return out


def tolerance(backend):
    """(rtol, atol) between runs of one backend: bit-identical on the CPU; the CUDA EWMA scans
    associate differently for different batchings."""
    return (0.0, 0.0) if backend == "cpu" else (RTOL, ATOL)


# --- tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(DETECTORS))
def test_matches_numpy_reference(backend, rng, name):
    det, ref = DETECTORS[name]
    keys, ts, values = make_stream(rng, 4000, 11, disorder=150)
    pipe = cusense.Pipeline(detectors=[det], max_out_of_orderness=200, backend=backend)
    res = run(pipe, keys, ts, values, random_cuts(rng, len(ts), 601))
    assert len(res) == len(ts) and not res["late"].any()
    col = det.column_name
    np.testing.assert_allclose(by_seq(res, f"score_{col}", len(ts)), expected(ref, keys, ts, values),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(res[f"is_anomaly_{col}"], res[f"score_{col}"] >= det.threshold)
    # release order: (timestamp, key, arrival) within each push, here also globally
    order = np.lexsort((res["seq"], res["key"], res["timestamp"]))
    np.testing.assert_array_equal(order, np.arange(len(res)))
    assert pipe.stats["records_scored"] == len(ts)


def _load_nab_reference():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "nab" / "reference_detectors.py"
    if not path.exists():
        pytest.skip("benchmarks/nab/reference_detectors.py not present")
    spec = importlib.util.spec_from_file_location("nab_reference_detectors", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_matches_nab_reference_detectors(backend, rng):
    """Same numbers as the NAB benchmark's numpy reference detectors (one series)."""
    ref = _load_nab_reference()
    n = 1500
    x = np.cumsum(rng.normal(0, 0.2, n)) + rng.normal(0, 1, n)
    x[rng.random(n) < 0.01] += 10
    x[700:760] = 3.0  # a flat stretch: zero spreads
    ts = np.arange(n, dtype=np.int64) * 1_000_000_000
    cases = [
        (D.EWMA(alpha=0.05), ref.ewma_zscore(ts, x, alpha=0.05)),
        (D.RollingZ(window=100), ref.rolling_zscore(ts, x, window=100)),
        (D.RollingMAD(window=100), ref.rolling_mad(ts, x, window=100)),
        (D.KnnDiscord(L=4, H=300, H2=50, K=10), ref.knn_discord(ts, x, L=4, H=300, H2=50, K=10)),
    ]
    for det, want in cases:
        got = cusense.score(ts, x, detector=det, backend=backend)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=det.kind)


def test_default_is_multiscale_z():
    d = D.default()
    assert isinstance(d, D.MultiScaleZ)
    assert (d.alpha, d.trend, d.beta, d.gamma, d.clip, d.min_count, d.K) == (0.05, 0.01, 0.3, 0.01, 4.0, 30, 500)
    assert d.threshold == 0.7691  # |z| = 3.5 (benchmarks/fleet/evaluate.py)
    k = D.KnnDiscord()
    assert (k.L, k.H, k.min_candidates, k.H2, k.K, k.threshold) == (4, 3000, 50, 500, 50, 0.5365)
    assert (k.min_count, k.tod_weight) == (250, 0.0)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_batching_changes_nothing(backend, rng, name):
    det, _ = DETECTORS[name]
    keys, ts, values = make_stream(rng, 3000, 7, disorder=60)  # some records beyond the bound
    col = f"score_{det.column_name}"
    whole = run(cusense.Pipeline(detectors=[det], max_out_of_orderness=30, backend=backend),
                keys, ts, values, [0, len(ts)])
    assert whole["late"].any()
    for _ in range(3):
        cuts = random_cuts(rng, len(ts), int(rng.integers(1, 400)) + 1)
        part = run(cusense.Pipeline(detectors=[det], max_out_of_orderness=30, backend=backend),
                   keys, ts, values, cuts)
        np.testing.assert_array_equal(by_seq(part, "late", len(ts)), by_seq(whole, "late", len(ts)))
        a, b = by_seq(part, col, len(ts)), by_seq(whole, col, len(ts))
        if backend == "cpu":
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def test_prefix_gives_prefix_of_scores(backend, rng):
    dets = [d for d, _ in DETECTORS.values()]
    keys, ts, values = make_stream(rng, 2000, 5, disorder=20)
    full = cusense.Pipeline(detectors=dets, max_out_of_orderness=30, backend=backend)
    full.push(keys, ts, values)
    whole = full.poll_scores()
    cut = int(rng.integers(100, 1900))
    part = cusense.Pipeline(detectors=dets, max_out_of_orderness=30, backend=backend)
    part.push(keys[:cut], ts[:cut], values[:cut])
    pre = part.poll_scores()
    assert 0 < len(pre) <= len(whole)
    for c in pre.columns:
        rtol, atol = tolerance(backend)
        np.testing.assert_allclose(pre[c].astype(float), whole[c][:len(pre)].astype(float),
                                   rtol=rtol, atol=atol)


def test_interleaved_keys_equal_each_key_alone(backend, rng):
    dets = [d for d, _ in DETECTORS.values()]
    keys, ts, values = make_stream(rng, 3000, 6, disorder=0)
    mixed = run(cusense.Pipeline(detectors=dets, backend=backend), keys, ts, values,
                random_cuts(rng, len(ts), 501))
    for k in range(6):
        idx = np.flatnonzero(keys == k)
        alone = run(cusense.Pipeline(detectors=dets, backend=backend), keys[idx], ts[idx], values[idx],
                    [0, len(idx)])
        for d in dets:
            col = f"score_{d.column_name}"
            rtol, atol = tolerance(backend)
            np.testing.assert_allclose(by_seq(mixed, col, len(ts))[idx], by_seq(alone, col, len(idx)),
                                       rtol=rtol, atol=atol)


def test_late_records_are_reported(backend):
    pipe = cusense.Pipeline(detectors=[D.EWMA(alpha=0.5)], max_out_of_orderness=15, backend=backend)
    pipe.push(np.ones(5, np.uint32), [100, 110, 96, 90, 120], [1.0, 2, 3, 4, 5])
    r = pipe.poll_scores()
    np.testing.assert_array_equal(r["timestamp"], [90, 96, 100])
    np.testing.assert_array_equal(r["late"], [True, False, False])
    np.testing.assert_array_equal(r["seq"], [3, 2, 0])
    assert np.isnan(r["score_ewma"][0]) and not r["is_anomaly_ewma"][0]
    s = pipe.stats
    assert (s["records_scored"], s["records_score_late"], s["records_score_buffered"]) == (2, 1, 2)
    pipe.flush()
    np.testing.assert_array_equal(pipe.poll_scores()["timestamp"], [110, 120])


def test_nan_values(backend):
    x = np.array([1.0, 2, np.nan, 3, 2.5, np.nan, 10])
    got = cusense.score(np.arange(7), x, detector=D.EWMA(alpha=0.3), backend=backend)
    assert np.isnan(got[[2, 5]]).all()
    np.testing.assert_allclose(got[~np.isnan(x)], ewma_ref(x[~np.isnan(x)], 0.3), rtol=RTOL, atol=ATOL)


def test_one_shot_score_aligned_with_input(backend, rng):
    keys, ts, values = make_stream(rng, 600, 3, disorder=5000)  # heavy disorder
    got = cusense.score(ts, values, keys=keys, detector=D.RollingZ(window=10), backend=backend)
    np.testing.assert_allclose(got, expected(lambda x: rolling_z_ref(x, 10), keys, ts, values), rtol=RTOL, atol=ATOL)
    one = cusense.score(ts, values, detector=D.EWMA(alpha=0.2), backend=backend)  # one series
    order = np.argsort(ts, kind="stable")
    np.testing.assert_allclose(one[order], ewma_ref(values[order], 0.2), rtol=RTOL, atol=ATOL)


def test_windows_and_detectors_together(backend, rng):
    keys, ts, values = make_stream(rng, 2000, 4, disorder=0)
    pipe = cusense.Pipeline(cusense.Tumbling(1000), aggs=["count"], backend=backend,
                            detectors=[D.EWMA(alpha=0.1), D.RollingZ(window=10)])
    pipe.push(keys, ts, values)
    windows = pipe.flush()
    scores = pipe.poll_scores()
    assert windows["count"].sum() == len(ts)
    assert len(scores) == len(ts)
    assert {"score_ewma", "is_anomaly_ewma", "score_rolling_z", "is_anomaly_rolling_z"} <= set(scores.columns)


def test_multichannel_detector_reads_its_channel(backend, rng):
    n = 500
    v = rng.normal(0, 1, (n, 2))
    pipe = cusense.Pipeline(detectors=[D.EWMA(alpha=0.1, channel=1)], channels=["a", "b"], backend=backend)
    pipe.push(np.zeros(n, np.uint32), np.arange(n), v)
    pipe.flush()
    r = pipe.poll_scores()
    np.testing.assert_array_equal(r["value_b"], v[:, 1])
    np.testing.assert_allclose(r["score_ewma"], ewma_ref(v[:, 1], 0.1), rtol=RTOL, atol=ATOL)


def test_silence_events(backend):
    pipe = cusense.Pipeline(detectors=[D.Silence(timeout=100)], backend=backend)
    t1 = np.arange(0, 601, 10)
    t2 = np.concatenate([np.arange(0, 51, 10), np.arange(400, 601, 10)])
    keys = np.concatenate([np.ones(len(t1)), np.full(len(t2), 2)]).astype(np.uint32)
    ts = np.concatenate([t1, t2])
    order = np.argsort(ts, kind="stable")
    keys, ts = keys[order], ts[order]
    cut = int(np.searchsorted(ts, 300, side="right"))
    pipe.push(keys[:cut], ts[:cut], np.ones(cut))
    a = pipe.poll_silence()
    assert list(a["key"]) == [2] and list(a["last_seen"]) == [50] and list(a["silent_since"]) == [150]
    assert list(a["back"]) == [False] and a["back_at"][0] == np.iinfo(np.int64).min
    pipe.push(keys[cut:], ts[cut:], np.ones(len(ts) - cut))
    b = pipe.poll_silence()
    assert list(b["key"]) == [2] and list(b["back"]) == [True] and list(b["back_at"]) == [400]
    with pytest.raises(ValueError):
        pipe.poll_scores()  # no scoring detector


def test_silence_reported_once_per_gap_in_any_batching(backend, rng):
    keys = rng.integers(0, 5, 3000).astype(np.uint32)
    ts = np.sort(rng.integers(0, 300_000, 3000))
    def events(cuts):
        pipe = cusense.Pipeline(detectors=[D.Silence(timeout=1500)], backend=backend)
        out = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            pipe.push(keys[a:b], ts[a:b], np.zeros(b - a))
            out.append(pipe.poll_silence())
        return cusense.Result.concat(out)
    whole = events([0, len(ts)])
    part = events(random_cuts(rng, len(ts), 201))
    assert len(whole) > 0
    for c in whole.columns:
        np.testing.assert_array_equal(part[c], whole[c])
    # reference: gaps > timeout between consecutive records of a key, counted when the later
    # record is released (no flush: only records before the final watermark, max(ts), are)
    n_back = 0
    for k in range(5):
        tk = ts[keys == k]
        n_back += int(((np.diff(tk) > 1500) & (tk[1:] < ts.max())).sum())
    assert int(whole["back"].sum()) == n_back


@pytest.mark.parametrize("make", [
    lambda: D.EWMA(alpha=0.0), lambda: D.EWMA(alpha=1.5), lambda: D.EWMA(threshold=1.2),
    lambda: D.RollingZ(window=1), lambda: D.RollingMAD(window=0), lambda: D.RollingZ(threshold=-0.1),
    lambda: D.Silence(timeout=0), lambda: D.Silence(timeout="-1s"),
])
def test_bad_parameters_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_bad_parameters_checked_in_cpp():
    spec = cusense._core.DetectorSpec()
    spec.kind = "ewma"
    spec.alpha = 2.0
    with pytest.raises(ValueError, match="alpha"):
        spec.validate()
    with pytest.raises(ValueError, match="H"):
        cusense.Pipeline(detectors=[D.KnnDiscord(H=3, L=4)])
    with pytest.raises(ValueError, match="distinct names"):
        cusense.Pipeline(detectors=[D.EWMA(), D.EWMA(alpha=0.2)])
    with pytest.raises(ValueError, match="channel"):
        cusense.Pipeline(detectors=[D.EWMA(channel=3)])
    with pytest.raises(TypeError):
        cusense.Pipeline()


@pytest.mark.parametrize("make, name", [
    (lambda: D.EWMA(min_count=2**63), "min_count"),
    (lambda: D.RollingZ(window=2**63), "window"),
    (lambda: D.RollingMAD(window=2**21), "window"),
    (lambda: D.KnnDiscord(H=2**24), "H"),
    (lambda: D.KnnDiscord(L=2**40), "L"),
    (lambda: D.KnnDiscord(K=0), "K"),
    (lambda: D.EWMA(channel=-1), "channel"),
    (lambda: D.RollingZ(window=2.5), "window"),
])
def test_integer_parameters_are_bounded_with_their_name(make, name):
    """Absurd sizes fail at construction, naming the parameter, instead of surfacing the native
    layer's type error or allocating gigabytes per key."""
    with pytest.raises((ValueError, TypeError), match=rf"^{name} must"):
        make()
