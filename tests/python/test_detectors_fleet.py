"""MultiScaleZ (the default) and JointZ (multivariate) against plain-Python oracles, and the
fleet and SKAB benchmark criteria on small inputs."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cusense
from cusense import detectors as D
from streams import random_cuts

REPO = Path(__file__).resolve().parents[2]
SKAB = REPO.parent / "shared" / "data" / "skab"
sys.path.insert(0, str(REPO / "benchmarks" / "fleet"))


# --- oracles: one key's records in event-time order -> scores, written from the documentation --

def z_to_score(z):
    u = abs(z) / math.sqrt(2.0)
    lp = -math.log10(math.erfc(u)) if u < 25.0 else (u * u + math.log(u * math.sqrt(math.pi))) / math.log(10.0)
    return lp / (1.0 + lp)


def abs_z(d, var):
    sd = math.sqrt(max(var, 0.0))
    if sd > 1e-12:
        return abs(d) / sd
    return 0.0 if abs(d) <= 1e-12 else 1e6


def clip(x, bound):
    return min(max(x, -bound), bound)


def gate_ref(s, K):
    """Keeps the score at (non-NaN) position c when it beats every score since position
    K * (c // K - 1) (the start of the previous block of K), else 0."""
    if K == 0:
        return s
    out, prev = s.copy(), []
    for t, v in enumerate(s):
        if math.isnan(v):
            continue
        c = len(prev)
        recent = prev[max(0, K * (c // K - 1)):]
        out[t] = v if not recent or v > max(recent) else 0.0
        prev.append(v)
    return out


def multiscale_ref(x, alpha=0.05, trend=0.01, beta=0.3, gamma=0.01, clip_at=4.0, min_count=30, K=500):
    return gate_ref(multiscale_ungated(x, alpha, trend, beta, gamma, clip_at, min_count), K)


def multiscale_ungated(x, alpha, trend, beta, gamma, clip_at, min_count):
    out = np.full(len(x), np.nan)
    state = None  # level, slope, v, a1, w1, a2, w2; count
    count = 0
    betas = (beta, beta / 3)
    for t, xv in enumerate(x):
        if math.isnan(xv):
            continue
        if count == 0:
            state = [xv, 0.0, 0.0, [0.0, 0.0], [0.0, 0.0]]
            count = 1
            out[t] = 0.0
            continue
        level, slope, v, a, w = state
        pred = level + slope
        e = xv - pred
        an = [(1 - b) * a[k] + b * e for k, b in enumerate(betas)]
        warm = count >= min_count
        if warm:
            tstat = max([abs_z(e, v)] + [abs_z(an[k], w[k]) for k in range(2)])
            nu = max(1.0, (min(count, 2 / gamma) - 1) / 2)
            out[t] = z_to_score(math.sqrt((nu - 2 / 3 + 0.1 / nu) * math.log1p(tstat * tstat / nu)))
        else:
            out[t] = 0.0
        ec = clip(e, clip_at * math.sqrt(v)) if warm else e
        anc = [clip(an[k], clip_at * math.sqrt(w[k])) if warm else an[k] for k in range(2)]
        ra, g = max(alpha, 1 / count), max(gamma, 1 / count)
        new_level = pred + ra * ec
        slope = slope + max(trend, 1 / count) * (new_level - level - slope) if trend > 0 else 0.0
        v = (1 - g) * v + g * ec * ec
        a = [(1 - b) * a[k] + b * ec for k, b in enumerate(betas)]
        w = [(1 - g) * w[k] + g * anc[k] ** 2 for k in range(2)]
        state = [new_level, slope, v, a, w]
        count += 1
    return out


def joint_ref(X, alpha=0.01, beta=0.2, gamma=0.002, freeze=4.0, min_count=50):
    n, C = X.shape
    out = np.full(n, np.nan)
    count = 0
    for t in range(n):
        x = X[t]
        if np.isnan(x).any():
            continue
        if count == 0:
            m, a, s = x.copy(), np.zeros(C), np.zeros(C)
            count = 1
            out[t] = 0.0
            continue
        an = (1 - beta) * a + beta * (x - m)
        d2 = 0.0
        for k in range(C):
            if s[k] > 1e-24:
                d2 += an[k] ** 2 / s[k]
            elif abs(an[k]) > 1e-12:
                d2 += 1e12
        c9 = 2 / (9 * C)
        z = max(0.0, ((d2 / C) ** (1 / 3) - (1 - c9)) / math.sqrt(c9))
        warm = count >= min_count
        out[t] = z_to_score(z) if warm else 0.0
        r = 1 / (count + 1)
        if not warm or z < freeze:
            m = m + max(alpha, r) * (x - m)
            s = (1 - max(gamma, r)) * s + max(gamma, r) * an * an
        a = an
        count += 1
    return out


def stream(rng, n, keys, channels=1):
    """Interleaved keys with trends, steps, spikes and NaN; strictly increasing per key."""
    k = rng.integers(0, keys, n).astype(np.uint32)
    ts = np.cumsum(rng.integers(1, 4, n)).astype(np.int64) * 10**9
    base = np.cumsum(rng.normal(0, 0.3, (n, channels)), axis=0) + rng.normal(0, 1, (n, channels))
    base[rng.random(n) < 0.01] += rng.normal(0, 20, channels)
    base[n // 2:] += rng.normal(0, 5, channels)
    base[rng.random(n) < 0.005] = np.nan
    return k, ts, (base[:, 0] if channels == 1 else base)


def per_key(fn, keys, values):
    out = np.full(len(keys), np.nan)
    for key in np.unique(keys):
        idx = np.flatnonzero(keys == key)
        out[idx] = fn(values[idx])
    return out


@pytest.mark.parametrize("params", [{}, {"alpha": 0.2, "trend": 0.0, "beta": 0.5, "gamma": 0.05,
                                         "clip": 2.5, "min_count": 5, "K": 0},
                                    {"K": 7, "min_count": 3}])
def test_multiscale_z_matches_oracle(rng, params):
    keys, ts, x = stream(rng, 6000, 5)
    det = D.MultiScaleZ(**params)
    got = D.score(ts, x, keys=keys, detector=det, backend="cpu")
    ref_params = {("clip_at" if k == "clip" else k): v for k, v in params.items()}
    want = per_key(lambda v: multiscale_ref(v, **ref_params), keys, x)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("params", [{}, {"alpha": 0.1, "beta": 0.5, "gamma": 0.02, "freeze": 2.0,
                                         "min_count": 10}])
def test_joint_z_matches_oracle(rng, params):
    keys, ts, X = stream(rng, 4000, 3, channels=4)
    X[rng.integers(0, len(X), 5), 2] = 7.0  # isolated values
    det = D.JointZ(**params)
    got = D.score(ts, X, keys=keys, detector=det, backend="cpu")
    want = per_key(lambda v: joint_ref(v, **params), keys, X)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # a channel subset: channels 1 and 2 only, the others never read
    sub = D.JointZ(channel=1, channels=2, **params)
    Y = X.copy()
    Y[:, 0] = rng.normal(size=len(Y))
    Y[:, 3] = np.nan
    got = D.score(ts, Y, keys=keys, detector=sub, backend="cpu")
    want = per_key(lambda v: joint_ref(v[:, 1:3], **params), keys, X)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def pipeline_scores(det, keys, ts, values, cuts, channels=None, ckpt_at=None, tmp=None):
    pipe = cusense.Pipeline(detectors=[det], max_out_of_orderness=5 * 10**9, backend="cpu",
                            channels=channels)
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


@pytest.mark.parametrize("which", ["multiscale", "joint"])
def test_streaming_batches_and_checkpoint_change_nothing(rng, tmp_path, which):
    channels = 3 if which == "joint" else None
    keys, ts, values = stream(rng, 5000, 7, channels=channels or 1)
    det = D.JointZ() if which == "joint" else D.MultiScaleZ()
    whole, df = pipeline_scores(det, keys, ts, values, [0, len(ts)], channels)
    one_shot = D.score(ts, values, keys=keys, detector=det, backend="cpu")
    np.testing.assert_array_equal(whole, one_shot)
    assert (df[f"is_anomaly_{det.column_name}"] == (df[f"score_{det.column_name}"] >= det.threshold)).all()
    cuts = random_cuts(rng, len(ts), int(rng.integers(2, 300)) + 1)
    part, _ = pipeline_scores(det, keys, ts, values, cuts, channels, ckpt_at=len(cuts) // 3, tmp=tmp_path)
    np.testing.assert_array_equal(part, whole)


def test_parameters_are_checked():
    for bad in ({"alpha": 0}, {"beta": 1.5}, {"gamma": -1}, {"trend": 2}, {"clip": 0}, {"min_count": 0},
                {"threshold": 1.1}, {"K": -1}):
        with pytest.raises(ValueError):
            D.MultiScaleZ(**bad)
    for bad in ({"freeze": 0}, {"channels": -1}, {"alpha": 2}):
        with pytest.raises(ValueError):
            D.JointZ(**bad)
    with pytest.raises(ValueError, match="channels"):
        cusense.Pipeline(detectors=[D.JointZ(channel=1, channels=3)], channels=3)
    spec = D.MultiScaleZ(alpha=0.1, name="m")._spec()
    assert D.detector_of_spec(spec) == D.MultiScaleZ(alpha=0.1, name="m")


@pytest.mark.skipif(not cusense._core.cuda_built(), reason="CUDA backend not built")
def test_cuda_refuses_the_cpu_only_detectors():
    with pytest.raises(cusense.BackendUnavailableError):
        cusense.Pipeline(detectors=[D.MultiScaleZ()], backend="cuda")


def test_fleet_default_quiet_and_loud():
    """The issue's fleet criteria on a small generated fleet (benchmarks/fleet)."""
    import importlib.util

    import fleet_data as fd

    spec = importlib.util.spec_from_file_location("fleet_evaluate", REPO / "benchmarks" / "fleet" / "evaluate.py")
    fleet_evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fleet_evaluate)
    evaluate_alarms = fleet_evaluate.evaluate_alarms

    fl = fd.generate(sensors=360, days=2.0, period_s=120, seed=11)
    det = D.default()
    s = D.score(fl.ts, fl.values, keys=fl.keys, detector=det, backend="cpu")
    r = evaluate_alarms(fl, s, det.threshold)
    assert r["healthy"]["sensors_alarmed_in_warmup"] == 0
    assert r["healthy"]["false_alarms_per_sensor_day"] < 1.0
    assert r["spike"]["recall"] >= 0.95 and r["level_shift"]["recall"] >= 0.95


@pytest.mark.skipif(not SKAB.is_dir(), reason="../shared/data/skab not present")
def test_skab_command(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "skab" / "evaluate.py"), "--data",
                          str(SKAB), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for src in SKAB.glob("*/*.csv"):
        out = pd.read_csv(tmp_path / src.relative_to(SKAB))
        assert list(out.columns) == ["datetime", "anomaly_score", "is_anomaly"]
        assert len(out) == len(pd.read_csv(src, sep=";"))
    import json

    m = json.loads((tmp_path / "skab_scores.json").read_text())["metrics"]
    assert m["F1"] >= 0.78 and m["FAR"] <= 15.0


def test_speed_benchmark_smoke(tmp_path):
    """benchmarks/fleet/speed.py (benchmarks/run.py --detectors) on a tiny stream; its numpy
    reference of MultiScaleZ must equal cusense."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("fleet_speed", REPO / "benchmarks" / "fleet" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    assert speed.main(["--keys", "50", "--ticks", "80", "--river-records", "300", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "speed.json").read_text())
    assert doc["numpy_vs_cusense_max_abs_diff"] < 1e-9
    assert doc["records_per_s"]["cusense MultiScaleZ() (default)"] > 0
