"""AnomalyLikelihood against the NAB numpy reference and a plain-Python oracle of its
likelihood stage; causality, batching, checkpoints and parameter checks; KnnDiscord's
calibration warm-up (no alarm at every key's first score) and its hour-of-day penalty."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cusense
from cusense import detectors as D
from streams import random_cuts

REPO = Path(__file__).resolve().parents[2]

# Small sizes, so that the long window wraps, blocks are re-estimated often and alarms happen.
SMALL = dict(short_window=5, long_window=300, reestimate=50, learn=40, warmup=120, rest=30)


def _reference():
    path = REPO / "benchmarks" / "nab" / "reference_detectors.py"
    if not path.exists():
        pytest.skip("benchmarks/nab/reference_detectors.py not present")
    spec = importlib.util.spec_from_file_location("nab_reference_detectors", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def series(rng, n, start=1_400_000_000):
    """A daily cycle (5-minute steps) with noise, spikes, a level shift and a new extreme."""
    ts = (start + np.arange(n, dtype=np.int64) * 300) * 10**9
    hours = (ts // 10**9 % 86400) / 3600.0
    x = 10 + 3 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 0.5, n)
    x[rng.random(n) < 0.01] += rng.normal(0, 6, 1).item()
    x[n // 2:n // 2 + 40] += 4.0
    x[int(0.8 * n)] = 40.0
    return ts, x


# --- an oracle of the likelihood stage, written from the documentation -------------------------

def stage_oracle(nov, x, short_window, long_window, reestimate, learn, warmup, rest, spatial):
    """Keeps every short mean of the key (no ring, no blocks) and recomputes the estimate from
    the list: the same numbers up to the order of summation."""
    out = np.zeros(len(nov))
    means, m, sd, have = [], 0.5, 1000.0, False
    prev, last = 1.0, None
    nb = -(-long_window // reestimate)
    for c in range(len(nov)):
        a = float(np.mean(nov[max(0, c - short_window + 1):c + 1]))
        if c >= warmup:
            if not have or c % reestimate == 0:
                first = max(learn, (c // reestimate - nb) * reestimate)
                window = [means[j] for j in range(first, c)]
                if window:
                    mu = float(np.mean(window))
                    m = max(mu, 0.03)
                    sd = math.sqrt(max(float(np.mean(np.square(window))) - mu * mu, 0.0003))
                have = True
            y = a if a >= m else 2 * m - a
            p = 0.5 * math.erfc((y - m) / (sd * math.sqrt(2)))
            kept = p
            if p <= 1e-5:
                if prev > 1e-5 and (last is None or c - last > rest):
                    last = c
                else:
                    kept = 1e-3
            prev = p
            out[c] = math.log(kept + 1e-10) / math.log(1e-10)
            lo, hi = x[:c].min(), x[:c].max()
            if spatial > 0 and hi > lo and (x[c] > hi + spatial * (hi - lo) or x[c] < lo - spatial * (hi - lo)):
                out[c] = 1.0
        means.append(a)
    return out


def test_likelihood_stage_matches_oracle(rng):
    ref = _reference()
    ts, x = series(rng, 2500)
    dev, _ = ref.multiscale_z_dev(x)
    nov = np.clip(dev / 4.0, 0, 1)
    want = stage_oracle(nov, x, spatial=0.05, **SMALL)
    got = D.score(ts, x, detector=D.AnomalyLikelihood(base=D.MultiScaleZ(), scale=4.0, **SMALL),
                  backend="cpu")
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert (got >= 0.5).sum() >= 2  # alarms happen, so the comparison covers them


@pytest.mark.parametrize("base, params", [
    ("knn_discord", dict(L=4, H=400, min_candidates=20, tod_weight=0.02)),
    ("knn_discord", dict(L=3, H=200, min_candidates=10, tod_weight=0.0)),
    ("multiscale_z", dict(alpha=0.1, trend=0.0, beta=0.5, gamma=0.02, clip=3.0, min_count=10)),
])
def test_matches_nab_reference(rng, base, params):
    ref = _reference()
    ts, x = series(rng, 3000)
    b = D.KnnDiscord(**params) if base == "knn_discord" else D.MultiScaleZ(**params)
    det = D.AnomalyLikelihood(base=b, scale=1.5, spatial=0.1, **SMALL)
    got = D.score(ts, x, detector=det, backend="cpu")
    want = ref.anomaly_likelihood(ts, x, base=base, scale=1.5, spatial=0.1, **params, **SMALL)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert got.min() >= 0.0 and got.max() <= 1.0
    assert got[int(0.8 * len(x))] == 1.0  # the new extreme


def test_defaults_match_nab_reference(rng):
    ref = _reference()
    ts, x = series(rng, 4500)
    got = D.score(ts, x, detector=D.AnomalyLikelihood(), backend="cpu")
    np.testing.assert_allclose(got, ref.anomaly_likelihood(ts, x), rtol=1e-9, atol=1e-9)
    assert (got[:300] == 0).all() and (got[300:] > 0).all()


def test_defaults():
    d = D.AnomalyLikelihood()
    assert d.base == D.KnnDiscord(tod_weight=0.02)
    assert (d.scale, d.short_window, d.long_window, d.reestimate, d.learn, d.warmup, d.rest,
            d.spatial, d.threshold) == (1.0, 10, 4000, 100, 150, 300, 200, 0.05, 0.51)
    # only the scoring parameters of the base are kept
    d = D.AnomalyLikelihood(base=D.KnnDiscord(L=5, H2=7, K=3, threshold=0.9, name="x"))
    assert d.base == D.KnnDiscord(L=5)
    d = D.AnomalyLikelihood(base=D.MultiScaleZ(alpha=0.2, K=9, threshold=0.1))
    assert d.base == D.MultiScaleZ(alpha=0.2)


def test_causal_and_prefix(rng):
    """A score depends only on the key's records at or before it: the scores of a prefix of the
    stream are the prefix of the scores, whatever follows."""
    ts, x = series(rng, 2000)
    det = D.AnomalyLikelihood(base=D.KnnDiscord(H=300, tod_weight=0.02), **SMALL)
    whole = D.score(ts, x, detector=det, backend="cpu")
    for cut in (150, 777, 1500):
        y = x.copy()
        y[cut:] = rng.normal(0, 50, len(x) - cut)  # another future
        np.testing.assert_array_equal(D.score(ts, y, detector=det, backend="cpu")[:cut], whole[:cut])


def pipeline_scores(det, keys, ts, values, cuts, ckpt_at=None, tmp=None):
    pipe = cusense.Pipeline(detectors=[det], max_out_of_orderness=5 * 10**9, backend="cpu")
    frames = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        pipe.push(keys[a:b], ts[a:b], values[a:b])
        frames.append(pipe.poll_scores().to_pandas(datetimes=False))
        if ckpt_at == i:
            path = tmp / "ck.bin"
            pipe.checkpoint(path)
            pipe = cusense.Pipeline.restore(path, backend="cpu")
            assert pipe.detectors == [det]
    pipe.flush()
    frames.append(pipe.poll_scores().to_pandas(datetimes=False))
    df = pd.concat(frames)
    out = np.full(len(ts), np.nan)
    out[df["seq"].to_numpy()] = df[f"score_{det.column_name}"].to_numpy()
    return out, df


def interleaved(rng, n, keys):
    k = rng.integers(0, keys, n).astype(np.uint32)
    ts = (1_400_000_000 + np.cumsum(rng.integers(1, 120, n))).astype(np.int64) * 10**9
    x = 3.0 * k + np.sin(np.arange(n) / 50.0) + rng.normal(0, 0.3, n)
    x[rng.random(n) < 0.01] += 8.0
    x[rng.random(n) < 0.003] = np.nan
    return k, ts, x


@pytest.mark.parametrize("base", [D.KnnDiscord(H=200, min_candidates=20, tod_weight=0.05),
                                  D.MultiScaleZ(min_count=10)])
def test_batches_keys_and_checkpoints_change_nothing(rng, tmp_path, base):
    keys, ts, x = interleaved(rng, 6000, 5)
    det = D.AnomalyLikelihood(base=base, name="lik", **SMALL)
    whole, df = pipeline_scores(det, keys, ts, x, [0, len(ts)])
    np.testing.assert_array_equal(whole, D.score(ts, x, keys=keys, detector=det, backend="cpu"))
    assert (df["is_anomaly_lik"] == (df["score_lik"] >= det.threshold)).all()
    assert np.isnan(whole[np.isnan(x)]).all()
    for _ in range(2):
        cuts = random_cuts(rng, len(ts), int(rng.integers(2, 400)) + 1)
        part, _ = pipeline_scores(det, keys, ts, x, cuts, ckpt_at=len(cuts) // 2, tmp=tmp_path)
        np.testing.assert_array_equal(part, whole)
    # each key scores as if alone, and a NaN value changes nothing
    for k in range(5):
        sel = keys == k
        alone = D.score(ts[sel], x[sel], detector=det, backend="cpu")
        np.testing.assert_array_equal(alone, whole[sel])
        ok = ~np.isnan(x[sel])
        np.testing.assert_array_equal(D.score(ts[sel][ok], x[sel][ok], detector=det, backend="cpu"),
                                      alone[ok])


def test_one_alarm_per_event_and_rest(rng):
    """A burst of novelty alarms once; a second burst within `rest` records does not."""
    n = 3000
    ts = np.arange(n, dtype=np.int64) * 60 * 10**9
    x = np.sin(np.arange(n) * 2 * np.pi / 40) + rng.normal(0, 0.05, n)
    for s in (1500, 1560, 2400):
        x[s:s + 15] = rng.normal(0, 1.0, 15)  # within the range: novelty, not a new extreme
    det = D.AnomalyLikelihood(base=D.KnnDiscord(H=600, min_candidates=20), short_window=10,
                              rest=200, spatial=0.0)
    s = D.score(ts, x, detector=det, backend="cpu")
    alarms = np.flatnonzero(s >= 0.5)
    assert any(1500 <= a < 1530 for a in alarms)
    assert not any(1530 <= a < 1700 for a in alarms)  # the first burst's run and the rest period
    assert any(2400 <= a < 2430 for a in alarms)
    no_rest = D.score(ts, x, detector=D.AnomalyLikelihood(base=det.base, short_window=10, rest=0,
                                                          spatial=0.0), backend="cpu")
    assert any(1560 <= a < 1590 for a in np.flatnonzero(no_rest >= 0.5))


def test_new_extreme_scores_one():
    n = 1000
    ts = np.arange(n, dtype=np.int64) * 10**9
    x = np.tile([0.0, 1.0, 2.0, 1.0], n // 4)
    x[700] = 2.2  # beyond the range by 10 %
    x[800] = 2.05  # by 2.5 %: not with spatial 0.05
    s = D.score(ts, x, detector=D.AnomalyLikelihood(base=D.MultiScaleZ()), backend="cpu")
    assert s[700] == 1.0 and s[800] < 1.0
    x[100] = 5.0  # during the warm-up: no score
    s = D.score(ts, x, detector=D.AnomalyLikelihood(base=D.MultiScaleZ()), backend="cpu")
    assert s[100] == 0.0 and s[700] < 1.0


@pytest.mark.parametrize("kwargs, name", [
    ({"scale": 0}, "scale"), ({"scale": float("nan")}, "scale"), ({"short_window": 0}, "short_window"),
    ({"short_window": 2000}, "short_window"), ({"reestimate": 0}, "reestimate"),
    ({"long_window": 50, "reestimate": 100}, "long_window"),
    ({"long_window": 2**20, "reestimate": 8}, "blocks"), ({"long_window": 2**20 + 1}, "long_window"),
    ({"warmup": 0}, "warmup"),
    ({"learn": 300, "warmup": 300}, "learn"), ({"learn": -1}, "learn"), ({"rest": -1}, "rest"),
    ({"spatial": -0.1}, "spatial"), ({"spatial": float("inf")}, "spatial"),
    ({"threshold": 1.5}, "threshold"), ({"channel": -1}, "channel"),
])
def test_parameters_are_checked(kwargs, name):
    with pytest.raises(ValueError, match=name):
        D.AnomalyLikelihood(**kwargs)


def test_base_and_types_are_checked():
    with pytest.raises(TypeError, match="base"):
        D.AnomalyLikelihood(base=D.EWMA())
    with pytest.raises(TypeError, match="scale"):
        D.AnomalyLikelihood(scale="1")
    with pytest.raises(ValueError, match="tod_weight"):
        D.KnnDiscord(tod_weight=-1)
    with pytest.raises(ValueError, match="min_count"):
        D.KnnDiscord(min_count=0)


def test_parameters_are_checked_in_cpp():
    """The library checks the specification too (for C++ callers and restored checkpoints)."""
    good = D.AnomalyLikelihood()._spec()
    for field, value, name in [("scale", -1.0, "scale"), ("short_window", 0, "short_window"),
                               ("reestimate", 0, "reestimate"), ("long_window", 10, "long_window"),
                               ("warmup", 0, "warmup"), ("learn", 400, "learn"), ("rest", -5, "rest"),
                               ("spatial", float("nan"), "spatial"), ("tod_weight", -1.0, "tod_weight"),
                               ("base", "ewma", "base"), ("H", 2, "H")]:
        spec = D.AnomalyLikelihood()._spec()
        setattr(spec, field, value)
        with pytest.raises(ValueError, match=name):
            spec.validate()
    good.validate()


def test_spec_round_trip():
    for det in (D.AnomalyLikelihood(), D.AnomalyLikelihood(base=D.MultiScaleZ(alpha=0.2, min_count=7),
                                                           scale=3.0, short_window=4, long_window=900,
                                                           reestimate=30, learn=0, warmup=31, rest=0,
                                                           spatial=0.0, threshold=0.6, name="l2",
                                                           channel=1)):
        assert D.detector_of_spec(det._spec()) == det
    k = D.KnnDiscord(min_count=9, tod_weight=0.5)
    assert D.detector_of_spec(k._spec()) == k


@pytest.mark.skipif(not cusense._core.cuda_built(), reason="CUDA backend not built")
def test_cuda_refuses_likelihood_and_time_of_day():
    for det in (D.AnomalyLikelihood(), D.KnnDiscord(tod_weight=0.01)):
        with pytest.raises(cusense.BackendUnavailableError):
            cusense.Pipeline(detectors=[det], backend="cuda")


# --- KnnDiscord ---------------------------------------------------------------------------------

def healthy_fleet(rng, sensors, n):
    keys = np.repeat(np.arange(sensors, dtype=np.uint32), n)
    ts = np.tile(np.arange(n, dtype=np.int64) * 120 * 10**9, sensors)
    phase = rng.uniform(0, 2 * np.pi, sensors)
    t = np.arange(n) / 720.0
    x = (np.sin(2 * np.pi * t[None, :] + phase[:, None]) * rng.uniform(0, 4, sensors)[:, None]
         + rng.normal(0, 1, (sensors, n))).ravel()
    return keys, ts, x


def test_knn_discord_does_not_alarm_at_every_keys_first_score(rng):
    """Regression: the first calibrated score of a key was r / (r + 0) = 1, so every healthy
    sensor alarmed once at the end of the warm-up."""
    sensors, n = 60, 700
    keys, ts, x = healthy_fleet(rng, sensors, n)
    det = D.KnnDiscord(H=500)
    s = D.score(ts, x, keys=keys, detector=det, backend="cpu").reshape(sensors, n)
    first = np.array([row[np.flatnonzero(row > 0)[0]] for row in s])
    assert first.max() < 0.99
    early = [(row[np.flatnonzero(row > 0)[0]:][:20] >= det.threshold).any() for row in s]
    assert sum(early) <= sensors // 10  # about the steady-state rate, not every sensor
    assert (s[:, :det.min_count] == 0).all()


def test_knn_discord_min_count_is_the_calibration_warm_up(rng):
    ref = _reference()
    ts, x = series(rng, 1200)
    for m in (1, 100, 250):
        got = D.score(ts, x, detector=D.KnnDiscord(H=300, H2=50, K=10, min_count=m), backend="cpu")
        want = ref.knn_discord(ts, x, H=300, H2=50, K=10, min_count=m)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        assert (got[:m] == 0).all()


def test_knn_discord_time_of_day_matches_reference(rng):
    ref = _reference()
    ts, x = series(rng, 1500, start=-3600 * 30)  # before 1970 too
    got = D.score(ts, x, detector=D.KnnDiscord(H=400, H2=50, K=10, tod_weight=0.05, min_count=60),
                  backend="cpu")
    want = ref.knn_discord(ts, x, H=400, H2=50, K=10, tod_weight=0.05, min_count=60)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    plain = D.score(ts, x, detector=D.KnnDiscord(H=400, H2=50, K=10, min_count=60), backend="cpu")
    assert not np.array_equal(got, plain)
