"""Sliding, session and rolling windows, the order-based aggregations, quantiles and allowed
lateness, against plain pandas/numpy oracles written here, on random out-of-order streams."""
import numpy as np
import pandas as pd
import pytest

import cusense
from streams import random_cuts, run_windows

MOMENTS = ["count", "sum", "mean", "min", "max", "var", "std"]
ORDERED = ["first", "last", "argmin_ts", "argmax_ts"]
# q exactly as the library derives it from the name (percent / 100)
QUANTS = {name: float(name[1:]) / 100 for name in ("p0", "p50", "p90", "p99", "p99.9", "p100")}
ALL_AGGS = MOMENTS + ORDERED + list(QUANTS)
ALPHA = 0.01  # default quantile_accuracy
NAT = np.iinfo(np.int64).min


def make_stream(rng, n, num_keys, step, ooo, late_fraction=0.01, nan_fraction=0.02, far=50):
    """Roughly increasing event times shuffled within `ooo`, a few far too late, NaN values,
    duplicate timestamps and repeated values (ties for first/last/argmin/argmax)."""
    base = np.sort(rng.integers(0, n * step, n))
    ts = base - rng.integers(0, ooo + 1, n)
    late = rng.random(n) < late_fraction
    ts[late] -= rng.integers(ooo + 1, ooo + far * step + 2, late.sum())
    keys = rng.integers(0, num_keys, n).astype(np.uint32)
    values = np.round(rng.normal(20, 15, n), 1)  # rounded: equal values occur
    values[rng.random(n) < nan_fraction] = np.nan
    return keys, ts.astype(np.int64), values


def prev_watermark(ts, ooo):
    """Watermark just before each record (arrival order); None-like -inf for the first."""
    prev = np.concatenate([[np.iinfo(np.int64).min + ooo + 1], np.maximum.accumulate(ts)[:-1]])
    return prev - ooo


def exact_lower(v, q):
    v = np.sort(v[~np.isnan(v)])
    return np.nan if len(v) == 0 else v[int(np.floor(q * (len(v) - 1)))]


def oracle_aggs(df, group):
    """Every aggregation over the rows of `df` (columns key, ts, arrival, v, + group columns),
    grouped by `group`, in plain pandas. Rows come sorted by `group`."""
    df = df.sort_values("arrival")
    g = df.groupby(group, sort=True)["v"]
    out = pd.DataFrame({
        "count": g.count(), "sum": g.sum(), "mean": g.mean(), "min": g.min(), "max": g.max(),
        "var": g.var(ddof=1), "std": g.std(ddof=1), "nan_count": g.size() - g.count(),
    })
    valid = df[~df["v"].isna()]
    by_time = valid.sort_values(["ts", "arrival"]).groupby(group, sort=True)["v"]
    out["first"] = by_time.first()
    out["last"] = by_time.last()
    gv = valid.groupby(group, sort=True)
    for name, idx in (("argmin_ts", gv["v"].idxmin()), ("argmax_ts", gv["v"].idxmax())):
        out[name] = pd.Series(valid.loc[idx.to_numpy(), "ts"].to_numpy(), index=idx.index)
        out[name] = out[name].fillna(NAT).astype(np.int64) if out[name].isna().any() else out[name]
    for name, q in QUANTS.items():
        out[name] = df.groupby(group, sort=True)["v"].apply(lambda s: exact_lower(s.to_numpy(), q))
    out[["argmin_ts", "argmax_ts"]] = out[["argmin_ts", "argmax_ts"]].fillna(NAT).astype(np.int64)
    return out.reset_index()


def assert_aggs_match(res, expect, aggs=ALL_AGGS, alpha=ALPHA):
    assert len(res) == len(expect)
    for c in ("count", "nan_count", "argmin_ts", "argmax_ts"):
        if c in aggs or c == "nan_count":
            np.testing.assert_array_equal(res[c], expect[c].to_numpy(), err_msg=c)
    for c in ("min", "max", "first", "last"):
        if c in aggs:
            np.testing.assert_array_equal(res[c], expect[c].to_numpy(), err_msg=c)
    for c in ("sum", "mean", "var", "std"):
        if c in aggs:
            np.testing.assert_allclose(res[c], expect[c].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=c)
    for c in QUANTS:
        if c in aggs:
            exact = expect[c].to_numpy(dtype=float)
            assert_within_bound(res[c], exact, alpha, c)


def assert_within_bound(est, exact, alpha, what=""):
    est = np.asarray(est, dtype=float)
    np.testing.assert_array_equal(np.isnan(est), np.isnan(exact), err_msg=what)
    ok = ~np.isnan(exact)
    err = np.abs(est[ok] - exact[ok])
    bound = alpha * np.abs(exact[ok]) * (1 + 1e-9) + 1e-300
    assert (err <= bound).all(), f"{what}: worst relative error {np.max(err / np.maximum(np.abs(exact[ok]), 1e-300))}"


# --- sliding (and tumbling through panes) ----------------------------------------------------

def sliding_oracle(keys, ts, values, size, slide, offset, ooo, lateness=0):
    """Explodes each record into its windows k (start k*slide + offset) and keeps it in those
    whose end + lateness is after the watermark just before it."""
    n = len(ts)
    wm = prev_watermark(ts, ooo)
    k_last = (ts - offset) // slide
    k_first = (ts - offset - size) // slide + 1
    per = (k_last - k_first + 1).astype(np.int64)
    rec = np.repeat(np.arange(n), per)
    k = np.repeat(k_first, per) + (np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per))
    start = k * slide + offset
    end = start + size
    contributes = (rec == 0) | (end + lateness > wm[rec])
    late = np.setdiff1d(np.arange(n), rec[contributes])
    df = pd.DataFrame({"key": keys[rec], "ts": ts[rec], "arrival": rec, "v": values[rec],
                       "window_start": start, "closed_before": end <= wm[rec]})
    df.loc[rec == 0, "closed_before"] = False
    return df[contributes], late


@pytest.mark.parametrize("size,slide,offset", [(100, 30, 0), (90, 30, 7), (60, 60, -13), (50, 7, 3)])
def test_sliding_matches_pandas(backend, rng, size, slide, offset):
    aggs = ALL_AGGS if backend == "cpu" else MOMENTS + ORDERED  # quantiles are CPU-only
    ooo = 40
    keys, ts, values = make_stream(rng, 6000, 37, 3, ooo)
    window = cusense.Sliding(size, slide, offset=offset) if slide != size else cusense.Tumbling(size, offset)
    # small staging slots cut pushes into several device chunks on the CUDA backend
    pipe = cusense.Pipeline(window, aggs=aggs, max_out_of_orderness=ooo, backend=backend,
                            staging_records=int(rng.integers(50, 2000)))
    res, late = run_windows(pipe, keys, ts, values, random_cuts(rng, len(ts), 700))
    contrib, late_idx = sliding_oracle(keys, ts, values, size, slide, offset, ooo)
    expect = oracle_aggs(contrib, ["window_start", "key"])
    np.testing.assert_array_equal(res["window_start"], expect["window_start"])
    np.testing.assert_array_equal(res["key"], expect["key"])
    np.testing.assert_array_equal(res["window_end"], res["window_start"] + size)
    assert_aggs_match(res, expect, aggs=aggs)
    np.testing.assert_array_equal(late["timestamp"], ts[late_idx])
    np.testing.assert_array_equal(late["key"], keys[late_idx])
    assert len(late_idx) > 0
    st = pipe.stats
    assert st["records_aggregated"] + st["records_late"] == st["records_pushed"] == len(ts)
    assert st["open_windows"] == 0 and st["open_keys"] == 0
    assert "is_update" not in res


def test_sliding_record_lies_in_ceil_size_over_slide_windows():
    res = cusense.window_aggregate([5], [1000], [2.0], window=cusense.Sliding("10s", "3s"),
                                   aggs=["count"], backend="cpu")
    assert len(res) == 4  # ceil(10 / 3)
    assert list(res["window_start"]) == [-9 * 10**9, -6 * 10**9, -3 * 10**9, 0]
    assert (res["window_end"] - res["window_start"] == 10**10).all()


# --- sessions --------------------------------------------------------------------------------

def session_pandas_oracle(keys, ts, values, gap):
    """No late records: sessions are runs per key of time-sorted records less than gap apart."""
    df = pd.DataFrame({"key": keys, "ts": ts, "arrival": np.arange(len(ts)), "v": values})
    df = df.sort_values(["key", "ts", "arrival"])
    new = (df["key"].diff() != 0) | (df["ts"].diff() >= gap)
    df["sid"] = new.cumsum()
    bounds = df.groupby("sid").agg(key=("key", "first"), window_start=("ts", "min"), last=("ts", "max"))
    df["window_start"] = bounds.loc[df["sid"], "window_start"].to_numpy()
    out = oracle_aggs(df, ["window_start", "key"])
    ends = bounds.set_index(["window_start", "key"])["last"] + gap
    out["window_end"] = ends.loc[list(zip(out["window_start"], out["key"]))].to_numpy()
    return out


def session_simulation(keys, ts, gap, ooo):
    """Lateness of each record for sessions, by direct simulation of the documented rules:
    late when t + gap <= watermark, or when t lies within gap of an already emitted session of
    its key. Returns (late mask, session id of each aggregated record)."""
    n = len(ts)
    late = np.zeros(n, bool)
    sid = np.full(n, -1)
    open_sessions = {}   # key -> list of [first, last, id]
    freed_until = {}
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    max_ts = None
    for i in range(n):
        k, t = int(keys[i]), int(ts[i])
        if max_ts is not None:
            wm = max_ts - ooo
            if t + gap <= wm or t < freed_until.get(k, -np.inf):
                late[i] = True
                continue
        sess = open_sessions.setdefault(k, [])
        touching = [s for s in sess if s[0] - gap < t < s[1] + gap]
        first, last = t, t
        for s in touching:
            first, last = min(first, s[0]), max(last, s[1])
            parent[find(s[2])] = i
            sess.remove(s)
        sess.append([first, last, i])
        if max_ts is None or t > max_ts:
            max_ts = t
            wm = max_ts - ooo
            for kk, ss in open_sessions.items():
                for s in [s for s in ss if s[1] + gap <= wm]:
                    freed_until[kk] = max(freed_until.get(kk, -np.inf), s[1] + gap)
                    ss.remove(s)
    for i in range(n):
        if not late[i]:
            sid[i] = find(i)
    return late, sid


def test_session_matches_pandas_without_lateness(backend, rng):
    aggs = ALL_AGGS if backend == "cpu" else MOMENTS + ORDERED  # quantiles are CPU-only
    gap = 25
    keys, ts, values = make_stream(rng, 5000, 23, 4, ooo=200, late_fraction=0)
    ooo = int(ts.max() - ts.min()) + 1  # nothing late: every record merges where it belongs
    # small staging slots cut pushes into several device chunks on the CUDA backend
    pipe = cusense.Pipeline(cusense.Session(gap), aggs=aggs, max_out_of_orderness=ooo, backend=backend,
                            staging_records=int(rng.integers(50, 500)))
    res, late = run_windows(pipe, keys, ts, values, random_cuts(rng, len(ts), 300))
    assert len(late) == 0
    expect = session_pandas_oracle(keys, ts, values, gap)
    got = res.to_pandas(datetimes=False).sort_values(["window_start", "key"]).reset_index(drop=True)
    np.testing.assert_array_equal(got["window_start"], expect["window_start"])
    np.testing.assert_array_equal(got["key"], expect["key"])
    np.testing.assert_array_equal(got["window_end"], expect["window_end"])
    assert_aggs_match(cusense.Result({c: got[c].to_numpy() for c in got.columns}), expect, aggs=aggs)


def test_session_with_late_records_matches_simulation(backend, rng):
    aggs = ALL_AGGS if backend == "cpu" else MOMENTS + ORDERED  # quantiles are CPU-only
    gap, ooo = 12, 30
    keys, ts, values = make_stream(rng, 4000, 11, 3, ooo, late_fraction=0.03, far=20)
    pipe = cusense.Pipeline(cusense.Session(gap), aggs=aggs, max_out_of_orderness=ooo, backend=backend,
                            staging_records=int(rng.integers(50, 500)))
    res, late = run_windows(pipe, keys, ts, values, random_cuts(rng, len(ts), 250))
    late_mask, sid = session_simulation(keys, ts, gap, ooo)
    assert late_mask.sum() > 0
    np.testing.assert_array_equal(late["timestamp"], ts[late_mask])
    df = pd.DataFrame({"key": keys, "ts": ts, "arrival": np.arange(len(ts)), "v": values, "sid": sid})
    df = df[~late_mask]
    df["window_start"] = df.groupby("sid")["ts"].transform("min")
    expect = oracle_aggs(df, ["window_start", "key"])
    ends = df.groupby(["window_start", "key"])["ts"].max() + gap
    got = res.to_pandas(datetimes=False).sort_values(["window_start", "key"]).reset_index(drop=True)
    np.testing.assert_array_equal(got["window_start"], expect["window_start"])
    np.testing.assert_array_equal(got["key"], expect["key"])
    np.testing.assert_array_equal(got["window_end"], ends.to_numpy())
    assert_aggs_match(cusense.Result({c: got[c].to_numpy() for c in got.columns}), expect, aggs=aggs)
    # Within one watermark step rows come by (window_start, key); sessions never overlap.
    for _, g in got.groupby("key"):
        assert (g["window_start"].to_numpy()[1:] >= g["window_end"].to_numpy()[:-1]).all()


def test_sessions_merge_across_batches(backend):
    pipe = cusense.Pipeline(cusense.Session(15), aggs=["count", "sum", "first", "last"],
                            max_out_of_orderness=100, backend=backend)
    pipe.push([1, 1, 2], [0, 20, 5], [1.0, 2.0, 7.0])   # key 1: two sessions so far
    assert pipe.stats["open_windows"] == 3 and pipe.stats["open_keys"] == 2
    pipe.push([1], [10], [4.0])                         # bridges them
    assert pipe.stats["open_windows"] == 2
    pipe.push([1], [200], [9.0])                        # watermark 100 closes both
    res = pipe.poll()
    assert list(res["key"]) == [1, 2]
    assert list(res["window_start"]) == [0, 5] and list(res["window_end"]) == [35, 20]
    assert list(res["count"]) == [3, 1] and list(res["sum"]) == [7.0, 7.0]
    assert list(res["first"]) == [1.0, 7.0] and list(res["last"]) == [2.0, 7.0]
    tail = pipe.flush()
    assert list(tail["window_start"]) == [200] and list(tail["window_end"]) == [215]


# --- rolling ---------------------------------------------------------------------------------

def rolling_oracle(keys, ts, values, n, min_periods, ooo):
    wm = prev_watermark(ts, ooo)
    late = (np.arange(len(ts)) > 0) & (ts < wm)
    df = pd.DataFrame({"key": keys, "ts": ts, "arrival": np.arange(len(ts)), "v": values})[~late]
    df = df.sort_values(["key", "ts", "arrival"]).reset_index(drop=True)
    r = df.groupby("key")["v"].rolling(n, min_periods=min_periods)
    out = pd.DataFrame({"key": df["key"], "timestamp": df["ts"], "arrival": df["arrival"]})
    for name in ("sum", "mean", "min", "max", "var", "std"):
        out[name] = getattr(r, name)().to_numpy()
    out["count"] = df.groupby("key")["v"].rolling(n, min_periods=0).count().to_numpy().astype(np.int64)
    isnan = df["v"].isna().astype(float)
    out["nan_count"] = isnan.groupby(df["key"]).rolling(n, min_periods=0).sum().to_numpy().astype(np.int64)
    # Order-based aggregations and quantiles: a direct loop over each row's window.
    cols = {c: [] for c in ORDERED + list(QUANTS)}
    for _, g in df.groupby("key", sort=True):
        v, t, a = g["v"].to_numpy(), g["ts"].to_numpy(), g["arrival"].to_numpy()
        for i in range(len(g)):
            lo = max(0, i - n + 1)
            wv, wt, wa = v[lo:i + 1], t[lo:i + 1], a[lo:i + 1]
            ok = ~np.isnan(wv)
            valid = ok.sum() >= min_periods and ok.any()
            if valid:
                byt = np.lexsort((wa[ok], wt[ok]))
                cols["first"].append(wv[ok][byt[0]])
                cols["last"].append(wv[ok][byt[-1]])
                bya = np.argsort(wa[ok], kind="stable")
                vv, tt = wv[ok][bya], wt[ok][bya]
                cols["argmin_ts"].append(tt[np.argmin(vv)])
                cols["argmax_ts"].append(tt[np.argmax(vv)])
            else:
                cols["first"].append(np.nan), cols["last"].append(np.nan)
                cols["argmin_ts"].append(NAT), cols["argmax_ts"].append(NAT)
            for name, q in QUANTS.items():
                cols[name].append(exact_lower(wv, q) if valid else np.nan)
    for c, vals in cols.items():
        out[c] = np.array(vals, dtype=np.int64 if c.startswith("arg") else float)
    out = out.sort_values(["timestamp", "key", "arrival"]).reset_index(drop=True)
    return out, np.flatnonzero(late)


@pytest.mark.parametrize("n,min_periods", [(1, None), (5, None), (7, 3), (20, 0)])
def test_rolling_matches_pandas(backend, rng, n, min_periods):
    aggs = ALL_AGGS if backend == "cpu" else MOMENTS + ORDERED  # quantiles are CPU-only
    ooo = 25
    keys, ts, values = make_stream(rng, 3000, 13, 3, ooo, late_fraction=0.02)
    # small staging slots cut pushes into several device chunks on the CUDA backend
    pipe = cusense.Pipeline(cusense.Rolling(n, min_periods=min_periods), aggs=aggs,
                            max_out_of_orderness=ooo, backend=backend,
                            staging_records=int(rng.integers(50, 500)))
    res, late = run_windows(pipe, keys, ts, values, random_cuts(rng, len(ts), 200))
    expect, late_idx = rolling_oracle(keys, ts, values, n, n if min_periods is None else min_periods, ooo)
    assert res.columns[:2] == ["key", "timestamp"]
    np.testing.assert_array_equal(res["timestamp"], expect["timestamp"])
    np.testing.assert_array_equal(res["key"], expect["key"])
    assert_aggs_match(res, expect, aggs=aggs)
    np.testing.assert_array_equal(late["timestamp"], ts[late_idx])
    st = pipe.stats
    assert st["records_aggregated"] + st["records_late"] == st["records_pushed"]
    assert st["windows_emitted"] == len(expect)


# --- every window type: batching does not change anything -----------------------------------

WINDOWS = [cusense.Tumbling(50), cusense.Sliding(50, 20), cusense.Sliding(45, 45, offset=5),
           cusense.Session(9), cusense.Rolling(6, min_periods=2)]


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: repr(w))
@pytest.mark.parametrize("lateness", [0, 60])
def test_chunking_invariance(backend, rng, window, lateness):
    if lateness and isinstance(window, cusense.Rolling):
        pytest.skip("allowed_lateness does not apply to rolling windows")
    ooo = 20
    keys, ts, values = make_stream(rng, 6000, 17, 2, ooo, late_fraction=0.03)
    values = values.astype(np.float32)
    aggs = ALL_AGGS if backend == "cpu" else MOMENTS + ORDERED  # quantiles are CPU-only

    def once(cuts):
        pipe = cusense.Pipeline(window, aggs=aggs, max_out_of_orderness=ooo, backend=backend,
                                allowed_lateness=lateness, staging_records=97)
        return run_windows(pipe, keys, ts, values, cuts) + (pipe.stats,)

    whole, whole_late, whole_stats = once([0, len(ts)])
    assert len(whole) > 0 and len(whole_late) > 0
    for max_batch in (2, 33, 1000):
        part, part_late, part_stats = once(random_cuts(rng, len(ts), max_batch))
        assert part.columns == whole.columns
        for c in whole.columns:
            if backend == "cuda" and whole[c].dtype.kind == "f":
                # the device merges partial sums in an order that depends on the chunks
                np.testing.assert_allclose(part[c], whole[c], rtol=1e-12, atol=1e-12,
                                           err_msg=f"{c}, max batch {max_batch}")
            else:
                np.testing.assert_array_equal(part[c], whole[c], err_msg=f"{c}, max batch {max_batch}")
        np.testing.assert_array_equal(part_late["timestamp"], whole_late["timestamp"])
        assert part_stats["windows_emitted"] == whole_stats["windows_emitted"]


# --- allowed lateness ------------------------------------------------------------------------

@pytest.mark.parametrize("size,slide", [(40, 40), (60, 20)])
def test_allowed_lateness_updates(backend, rng, size, slide):
    ooo, lateness = 10, 50
    keys, ts, values = make_stream(rng, 4000, 7, 2, ooo, late_fraction=0.05, far=60)
    window = cusense.Tumbling(size) if size == slide else cusense.Sliding(size, slide)
    aggs = ["count", "sum", "max", "last"] + (["p50"] if backend == "cpu" else [])
    pipe = cusense.Pipeline(window, aggs=aggs, max_out_of_orderness=ooo,
                            allowed_lateness=lateness, backend=backend, staging_records=300)
    res, late = run_windows(pipe, keys, ts, values, random_cuts(rng, len(ts), 300))
    df = res.to_pandas(datetimes=False)
    assert df["is_update"].dtype == bool and df["is_update"].any()
    contrib, late_idx = sliding_oracle(keys, ts, values, size, slide, 0, ooo, lateness)
    np.testing.assert_array_equal(late["timestamp"], ts[late_idx])
    # The last row of each window holds every record that counted for it.
    final = df.groupby(["window_start", "key"], sort=True).last().reset_index()
    expect = oracle_aggs(contrib, ["window_start", "key"])
    np.testing.assert_array_equal(final["window_start"], expect["window_start"])
    np.testing.assert_array_equal(final["key"], expect["key"])
    assert_aggs_match(cusense.Result({c: final[c].to_numpy() for c in final.columns}), expect, aggs=aggs)
    # One update row per record that arrived after its window closed; one first emission per
    # window that held records when it closed.
    updates = df[df["is_update"]].groupby(["window_start", "key"]).size()
    after = contrib[contrib["closed_before"]].groupby(["window_start", "key"]).size()
    pd.testing.assert_series_equal(updates.sort_index(), after.sort_index(), check_names=False)
    firsts = df[~df["is_update"]].groupby(["window_start", "key"]).size()
    assert (firsts == 1).all()
    before = contrib[~contrib["closed_before"]].groupby(["window_start", "key"]).size()
    assert set(firsts.index) == set(before.index)
    assert pipe.stats["open_windows"] == 0


def test_allowed_lateness_frees_state_and_then_is_late():
    pipe = cusense.Pipeline(cusense.Tumbling(10), aggs=["count"], allowed_lateness=20, backend="cpu")
    pipe.push([1, 1], [1, 15], [1.0, 1.0])       # watermark 15: [0, 10) emitted, kept until 30
    assert list(pipe.poll()["count"]) == [1]
    pipe.push([1], [3], [1.0])                   # updates it
    res = pipe.poll()
    assert list(res["count"]) == [2] and list(res["is_update"]) == [True]
    pipe.push([1, 1], [30, 4], [1.0, 1.0])       # watermark 30 frees [0, 10): t=4 is late
    assert list(pipe.poll_late()["timestamp"]) == [4]
    assert pipe.stats["records_late"] == 1


def test_session_allowed_lateness_update():
    pipe = cusense.Pipeline(cusense.Session(10), aggs=["count", "sum"], allowed_lateness=100, backend="cpu")
    pipe.push([1, 1], [0, 50], [1.0, 2.0])       # [0, 10) emitted at watermark 50
    first = pipe.poll()
    assert list(first["window_end"]) == [10] and list(first["is_update"]) == [False]
    pipe.push([1], [5], [3.0])                   # joins the emitted session: update [0, 15)
    upd = pipe.poll()
    assert list(upd["window_start"]) == [0] and list(upd["window_end"]) == [15]
    assert list(upd["count"]) == [2] and list(upd["is_update"]) == [True]
    tail = pipe.flush()
    assert list(tail["window_start"]) == [50] and list(tail["is_update"]) == [False]


# --- quantiles -------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.01, 0.002])
def test_quantile_error_within_documented_bound(rng, alpha):
    n = 200_000
    keys = rng.integers(0, 4, n).astype(np.uint32)
    ts = np.sort(rng.integers(0, 10**6, n))
    values = np.concatenate([rng.lognormal(0, 3, n // 2), -rng.exponential(5, n - n // 2)])
    rng.shuffle(values)
    values[rng.random(n) < 0.001] = 0.0
    names = ["p0", "p0.1", "p1", "p10", "p25", "p50", "p75", "p90", "p99", "p99.9", "p100"]
    qs = [float(name[1:]) / 100 for name in names]
    res = cusense.window_aggregate(keys, ts, values, window=cusense.Tumbling(10**6), aggs=names,
                                   quantile_accuracy=alpha, backend="cpu")
    assert len(res) == 4
    for row, key in enumerate(res["key"]):
        v = values[keys == key]
        for name, q in zip(names, qs):
            exact = np.quantile(v, q, method="lower")
            assert exact == exact_lower(v, q)
            assert_within_bound([res[name][row]], np.array([exact]), alpha, f"{name} key {key}")


def test_quantile_names_and_bad_names():
    res = cusense.window_aggregate([1] * 5, [0, 1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0, np.nan],
                                   window=cusense.Tumbling(10), aggs=["p50", "p99.9", "p0", "p100"],
                                   backend="cpu")
    assert res.columns == ["key", "window_start", "window_end", "p50", "p99.9", "p0", "p100", "nan_count"]
    assert res["p0"][0] == 1.0 and res["p100"][0] == 4.0   # clamped to the exact min / max
    for bad in ("p101", "p", "p5x", "p-1"):
        with pytest.raises(ValueError, match="aggregation"):
            cusense.Pipeline(cusense.Tumbling(10), aggs=[bad], backend="cpu")


# --- multi-channel, NaN-only windows, stats, cap, backend selection --------------------------

@pytest.mark.parametrize("window", [cusense.Sliding(30, 10), cusense.Session(7), cusense.Rolling(4, 1)],
                         ids=repr)
def test_multichannel_matches_single_channel(rng, window):
    n, ooo = 3000, 15
    keys, ts, v0 = make_stream(rng, n, 9, 2, ooo)
    values = np.stack([v0, np.round(rng.normal(size=n), 2), rng.integers(0, 5, n).astype(float)], axis=1)
    values[rng.random((n, 3)) < 0.05] = np.nan
    multi = cusense.window_aggregate(keys, ts, values, window=window, aggs=ALL_AGGS, channels=["a", "b", "c"],
                                     max_out_of_orderness=ooo, backend="cpu")
    for ch, name in enumerate("abc"):
        single = cusense.window_aggregate(keys, ts, values[:, ch], window=window, aggs=ALL_AGGS,
                                          max_out_of_orderness=ooo, backend="cpu")
        for agg in ALL_AGGS + ["nan_count"]:
            np.testing.assert_array_equal(multi[f"{agg}_{name}"], single[agg], err_msg=f"{agg}_{name}")


def test_nan_only_window_new_aggs():
    res = cusense.window_aggregate([1, 1, 2], [0, 1, 2], [np.nan, np.nan, 5.0], window=cusense.Sliding(10, 5),
                                   aggs=ORDERED + ["p50"], backend="cpu")
    df = res.to_pandas()
    first_key1 = df[df["key"] == 1].iloc[0]
    assert np.isnan(first_key1["first"]) and np.isnan(first_key1["p50"])
    assert pd.isna(first_key1["argmin_ts"])           # NaT
    assert df[df["key"] == 2]["argmax_ts"].iloc[0] == pd.Timestamp(2)


def test_stats_state_and_cap():
    pipe = cusense.Pipeline(cusense.Sliding(100, 10), aggs=["count", "p50"], max_out_of_orderness=1000,
                            max_open_windows=50, backend="cpu")
    pipe.push(np.arange(20), np.arange(20), np.ones(20))   # 20 (key, pane) states
    st = pipe.stats
    assert st["open_windows"] == 20 and st["open_keys"] == 20 and st["state_bytes"] > 0
    with pytest.raises(cusense.CapacityError, match="max_open_windows"):
        pipe.push(np.arange(100, 140), np.arange(40), np.ones(40))
    st = pipe.stats
    assert st["records_rejected"] == 40 and st["open_windows"] == 20   # unchanged
    pipe.push(np.arange(20), np.arange(20), np.ones(20))   # same states: fits
    assert len(pipe.flush()) > 0 and pipe.stats["open_windows"] == 0
    for window in (cusense.Session(5), cusense.Rolling(3)):
        p = cusense.Pipeline(window, aggs=["count"], max_out_of_orderness=10**6, max_open_windows=10,
                             backend="cpu")
        p.push(np.arange(5), np.arange(5), np.ones(5))
        with pytest.raises(cusense.CapacityError):
            p.push(np.arange(5, 20), np.arange(15) * 100, np.ones(15))
        assert p.stats["records_rejected"] == 15
        assert p.stats["records_aggregated"] == 5


def test_cuda_backend_refuses_new_windows_and_auto_uses_cpu():
    for window, aggs, kw in [(cusense.Session(5), ["count", "p50"], {}), (cusense.Rolling(3), ["mean", "p90"], {}),
                             (cusense.Tumbling(10), ["p50"], {}), (cusense.Sliding(10, 5), ["first", "p99"], {}),
                             (cusense.Tumbling(10), ["p50"], {"allowed_lateness": 5})]:
        assert cusense.Pipeline(window, aggs=aggs, backend="auto", **kw).backend == "cpu"
        with pytest.raises(cusense.BackendUnavailableError,
                           match="not yet supported on the CUDA backend|without CUDA|no usable CUDA"):
            cusense.Pipeline(window, aggs=aggs, backend="cuda", **kw)


def test_auto_runs_sliding_and_order_aggregations_on_cuda_when_usable():
    usable = cusense._core.cuda_built() and bool(cusense.devices())
    for window in (cusense.Sliding(10, 5), cusense.Tumbling(10)):
        pipe = cusense.Pipeline(window, aggs=["count", "first", "last", "argmin_ts", "argmax_ts"], backend="auto")
        assert pipe.backend == ("cuda" if usable else "cpu")


def test_bad_window_options():
    with pytest.raises(ValueError, match="slide"):
        cusense.Sliding(10, 20)
    with pytest.raises(ValueError, match="gap"):
        cusense.Session(0)
    with pytest.raises(ValueError, match="rolling window n"):
        cusense.Rolling(0)
    with pytest.raises(ValueError, match="min_periods"):
        cusense.Rolling(3, min_periods=4)
    with pytest.raises(ValueError, match="allowed_lateness"):
        cusense.Pipeline(cusense.Rolling(3), allowed_lateness=5, backend="cpu")
    with pytest.raises(ValueError, match="allowed_lateness"):
        cusense.Pipeline(cusense.Tumbling(3), allowed_lateness=-5, backend="cpu")
    with pytest.raises(ValueError, match="quantile_accuracy"):
        cusense.Pipeline(cusense.Tumbling(3), aggs=["p50"], quantile_accuracy=0.9, backend="cpu")


def test_session_negative_times_after_a_freed_session(backend):
    """A freed session at negative times must not mark later records of its key late."""
    pipe = cusense.Pipeline(cusense.Session(12), aggs=["count"], max_out_of_orderness=30, backend=backend)
    keys = np.array([4, 7, 2, 4], np.uint32)
    ts = np.array([-53, -3, 5, -1], np.int64)  # key 4's session [-53, -41) is freed before -1 arrives
    for i in range(len(ts)):
        pipe.push(keys[i:i + 1], ts[i:i + 1], np.ones(1))
    res = pipe.flush()
    assert len(pipe.poll_late()) == 0
    assert sorted(zip(res["key"].tolist(), res["window_start"].tolist())) == [(2, 5), (4, -53), (4, -1), (7, -3)]
