"""Long count windows (Rolling(n) with n > 128) cost O(1) per row (two-stack): rows agree with
pandas to rounding, are bit-identical for any cut of the stream and across checkpoints, and a
window of a million records costs no more per row than a short one."""
import time

import numpy as np
import pandas as pd
import pytest

import cusense

AGGS = ["count", "sum", "mean", "min", "max", "var", "std", "first", "last", "argmax_ts"]


def _stream(rng, n, keys):
    k = rng.integers(0, keys, n).astype(np.uint32)
    t = np.sort(rng.integers(0, n * 10, n)).astype(np.int64)
    v = rng.normal(100, 10, n)
    v[rng.random(n) < 0.02] = np.nan
    return k, t, v


def _run(window, k, t, v, cuts, aggs=AGGS, checkpoint_at=None, tmp_path=None):
    p = cusense.Pipeline(window, aggs=aggs, backend="cpu")
    out = []
    for i, (lo, hi) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, len(k)])):
        p.push(k[lo:hi], t[lo:hi], v[lo:hi])
        out.append(p.poll().to_pandas(datetimes=False))
        if checkpoint_at == i:
            p.checkpoint(tmp_path / "c")
            p = cusense.Pipeline.restore(tmp_path / "c")
    out.append(p.flush().to_pandas(datetimes=False))
    return pd.concat(out, ignore_index=True)


@pytest.mark.parametrize("n", [129, 300])
def test_long_rolling_rows_match_pandas_and_do_not_depend_on_cuts(n, rng, tmp_path):
    k, t, v = _stream(rng, 6000, 7)
    a = _run(cusense.Rolling(n, min_periods=1), k, t, v, np.sort(rng.choice(np.arange(1, 6000), 5, replace=False)))
    b = _run(cusense.Rolling(n, min_periods=1), k, t, v, np.sort(rng.choice(np.arange(1, 6000), 40, replace=False)),
             checkpoint_at=int(rng.integers(0, 30)), tmp_path=tmp_path)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    # Oracle: per key, the last n records in (time, arrival) order, plainly.
    df = pd.DataFrame({"key": k, "timestamp": t, "v": v})
    df["arrival"] = np.arange(len(df))
    df = df.sort_values(["timestamp", "key", "arrival"], kind="stable")
    assert np.array_equal(a["key"].to_numpy(), df["key"].to_numpy())
    checked = 0
    for key, g in df.groupby("key", sort=False):
        rows = a[a["key"] == key]
        vals = g["v"].to_numpy()
        for j in rng.choice(len(vals), size=min(60, len(vals)), replace=False):
            w = vals[max(0, j - n + 1): j + 1]
            ok = w[~np.isnan(w)]
            r = rows.iloc[j]
            assert r["count"] == len(ok)
            if len(ok) == 0:
                assert np.isnan(r["mean"])
                continue
            checked += 1
            assert r["min"] == ok.min() and r["max"] == ok.max()
            assert r["first"] == ok[0] and r["last"] == ok[-1]
            np.testing.assert_allclose([r["sum"], r["mean"], r["var"]],
                                       [ok.sum(), ok.mean(), ok.var(ddof=1) if len(ok) > 1 else np.nan],
                                       rtol=1e-9)
    assert checked > 300


def test_a_million_record_window_costs_what_a_short_one_costs(rng):
    k = np.zeros(40_000, np.uint32)
    t = np.arange(40_000, dtype=np.int64)
    v = rng.normal(size=40_000)

    def seconds(n):
        best = np.inf
        for _ in range(3):
            p = cusense.Pipeline(cusense.Rolling(n, min_periods=1), aggs=["mean", "max"], backend="cpu")
            t0 = time.perf_counter()
            p.push(k, t, v)
            p.flush()
            best = min(best, time.perf_counter() - t0)
        return best

    short, long = seconds(200), seconds(10**6)
    # Recomputing each row took about 41 ns x n: 40,000 rows of Rolling(10**6) were minutes.
    assert long < 10 * short + 0.05, (short, long)


@pytest.mark.parametrize("n", [5, 200])
def test_key_ttl_restarts_a_key_after_a_gap_and_drops_idle_keys(n, rng, tmp_path):
    """key_ttl on count windows: a record more than key_ttl after its key's previous record
    (row order) starts the key's window afresh; keys idle for longer are dropped (open_keys
    falls) without changing any row; rows do not depend on cuts or checkpoints."""
    ttl = 500
    parts = []
    for key in range(12):
        # bursts of records separated by gaps, some longer than the ttl
        t0, times = 0, []
        for _ in range(int(rng.integers(3, 8))):
            t0 += int(rng.choice([100, 400, 900, 3000]))
            times += list(t0 + np.sort(rng.integers(0, 300, int(rng.integers(1, 3 * n)))))
        parts.append(pd.DataFrame({"key": key, "timestamp": times}))
    df = pd.concat(parts).sort_values("timestamp", kind="stable").reset_index(drop=True)
    df["v"] = rng.normal(size=len(df))
    k, t, v = df["key"].to_numpy(np.uint32), df["timestamp"].to_numpy(np.int64), df["v"].to_numpy()

    def run(cuts, checkpoint_at=None):
        p = cusense.Pipeline(cusense.Rolling(n, min_periods=1), aggs=["count", "mean", "max"],
                             key_ttl=ttl, backend="cpu")
        out, keys_open = [], []
        for i, (lo, hi) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, len(k)])):
            p.push(k[lo:hi], t[lo:hi], v[lo:hi])
            out.append(p.poll().to_pandas(datetimes=False))
            keys_open.append(p.stats["open_keys"])
            if checkpoint_at == i:
                p.checkpoint(tmp_path / "c")
                p = cusense.Pipeline.restore(tmp_path / "c")
        out.append(p.flush().to_pandas(datetimes=False))
        return pd.concat(out, ignore_index=True), keys_open

    a, keys_open = run(np.sort(rng.choice(np.arange(1, len(k)), 30, replace=False)))
    b, _ = run(np.sort(rng.choice(np.arange(1, len(k)), 7, replace=False)), checkpoint_at=3)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert min(keys_open[5:]) < 12  # idle keys were dropped along the way
    # Oracle: each key's records split at gaps > ttl, a rolling window within each segment.
    d = df.assign(arrival=np.arange(len(df))).sort_values(["timestamp", "key", "arrival"], kind="stable")
    d["segment"] = d.groupby("key")["timestamp"].transform(lambda s: (s.diff() > ttl).cumsum())
    roll = d.groupby(["key", "segment"])["v"].rolling(n, min_periods=1)
    d["count"] = roll.count().reset_index(level=[0, 1], drop=True)
    d["mean"] = roll.mean().reset_index(level=[0, 1], drop=True)
    d["max"] = roll.max().reset_index(level=[0, 1], drop=True)
    assert np.array_equal(a["key"], d["key"]) and np.array_equal(a["timestamp"], d["timestamp"])
    assert np.array_equal(a["count"], d["count"].astype(np.int64))
    np.testing.assert_array_equal(a["max"], d["max"])
    np.testing.assert_allclose(a["mean"], d["mean"], rtol=1e-9, atol=1e-12)  # pandas rounds its own way
