"""Tumbling windows against a plain pandas oracle, on every backend."""
import numpy as np
import pandas as pd
import pytest

import cusense
from streams import random_cuts, run_windows

AGGS = ["count", "sum", "mean", "min", "max", "var", "std"]


def make_stream(rng, n, num_keys, size, ooo, late_fraction=0.01, nan_fraction=0.02):
    """Records in roughly increasing time, shuffled within `ooo`, some far too late, NaNs."""
    base = np.sort(rng.integers(0, n * 10, n)) * 1_000_000  # ns
    ts = base - rng.integers(0, ooo + 1, n)
    late = rng.random(n) < late_fraction
    ts[late] -= rng.integers(ooo + 2 * size, ooo + 20 * size, late.sum())
    keys = rng.integers(0, num_keys, n).astype(np.uint32)
    values = rng.normal(50, 20, n)
    values[rng.random(n) < nan_fraction] = np.nan
    return keys, ts.astype(np.int64), values


def oracle(keys, ts, values, size, offset, ooo):
    """Plain numpy/pandas: lateness from the running max in arrival order, then groupby."""
    prev_max = np.concatenate([[np.iinfo(np.int64).min], np.maximum.accumulate(ts)[:-1]])
    start = (ts - offset) // size * size + offset
    has_wm = np.arange(len(ts)) > 0
    late = has_wm & (start + size <= prev_max - ooo)
    df = pd.DataFrame({"key": keys[~late], "window_start": start[~late], "v": values[~late]})
    g = df.groupby(["window_start", "key"], sort=True)["v"]
    out = pd.DataFrame({
        "count": g.count(), "sum": g.sum(), "mean": g.mean(), "min": g.min(), "max": g.max(),
        "var": g.var(ddof=1), "std": g.std(ddof=1),
        "nan_count": g.size() - g.count(),
    }).reset_index()
    return out, np.flatnonzero(late)


def assert_matches(res, expect):
    assert len(res) == len(expect)
    np.testing.assert_array_equal(res["window_start"], expect["window_start"])
    np.testing.assert_array_equal(res["key"], expect["key"])
    for c in ("count", "nan_count"):
        np.testing.assert_array_equal(res[c], expect[c].to_numpy(), err_msg=c)
    for c in ("min", "max"):
        np.testing.assert_array_equal(res[c], expect[c].to_numpy(), err_msg=c)
    for c in ("sum", "mean", "var", "std"):
        np.testing.assert_allclose(res[c], expect[c].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=c)


@pytest.mark.parametrize("offset", [0, 123_456_789])
def test_matches_pandas_many_keys(backend, rng, offset):
    size, ooo = 1_000_000_000, 300_000_000
    keys, ts, values = make_stream(rng, 400_000, 150_000, size, ooo)
    pipe = cusense.Pipeline(cusense.Tumbling(size, offset=offset), aggs=AGGS,
                            max_out_of_orderness=ooo, backend=backend)
    res, late = run_windows(pipe, keys, ts, values, random_cuts(rng, len(ts), 60_000))
    expect, late_idx = oracle(keys, ts, values, size, offset, ooo)
    assert len(np.unique(expect["key"])) >= 100_000
    assert_matches(res, expect)
    np.testing.assert_array_equal(res["window_end"], res["window_start"] + size)
    np.testing.assert_array_equal(late["timestamp"], ts[late_idx])
    np.testing.assert_array_equal(late["key"], keys[late_idx])
    np.testing.assert_array_equal(late["value"], values[late_idx])
    st = pipe.stats
    assert st["records_pushed"] == len(ts)
    assert st["records_late"] == len(late_idx) > 0
    assert st["records_aggregated"] + st["records_late"] == st["records_pushed"]
    assert st["nan_values"] == int(expect["nan_count"].sum()) > 0
    assert st["open_windows"] == 0


def test_chunking_invariance(backend, rng):
    size, ooo = 10_000_000, 5_000_000
    keys, ts, values = make_stream(rng, 50_000, 500, size, ooo)
    values = values.astype(np.float32)

    def once(cuts):
        pipe = cusense.Pipeline(cusense.Tumbling(size), aggs=AGGS, max_out_of_orderness=ooo, backend=backend)
        return run_windows(pipe, keys, ts, values, cuts)

    whole, whole_late = once([0, len(ts)])
    for max_batch in (2, 37, 1000, 20_000):
        part, part_late = once(random_cuts(rng, len(ts), max_batch))
        assert part.columns == whole.columns
        for c in whole.columns:
            if backend == "cpu" or whole[c].dtype.kind != "f":
                np.testing.assert_array_equal(part[c], whole[c], err_msg=f"{c}, max batch {max_batch}")
            else:  # the GPU combines per-batch partials: equal to rounding
                np.testing.assert_allclose(part[c], whole[c], rtol=1e-12, err_msg=c)
        np.testing.assert_array_equal(part_late["timestamp"], whole_late["timestamp"])


@pytest.mark.parametrize("threads", [1, 2])
def test_batches_spanning_many_windows_with_deep_disorder(backend, rng, threads):
    """Each batch spans dozens of windows and records fall up to several windows behind their
    key's newest one: a key holds many open windows at once, not only the latest two."""
    size = 1_000_000
    ooo = 6 * size
    n, num_keys = 120_000, int(rng.choice([7, 300, 5_000]))
    keys, ts, values = make_stream(rng, n, num_keys, size, ooo, late_fraction=0.02)
    pipe = cusense.Pipeline(cusense.Tumbling(size), aggs=AGGS, max_out_of_orderness=ooo,
                            backend=backend, cpu_threads=threads)
    res, late = run_windows(pipe, keys, ts, values, random_cuts(rng, n, 50_000))
    expect, late_idx = oracle(keys, ts, values, size, 0, ooo)
    assert_matches(res, expect)
    np.testing.assert_array_equal(late["timestamp"], ts[late_idx])


def test_push_after_flush_and_rejected_batches_keep_results(backend, rng):
    """A flush emits every open window; later records (of those windows too) open new ones.
    A batch refused by max_open_windows changes nothing, also when its keys were mid-window."""
    size, ooo = 1_000_000, 3_000_000
    keys, ts, values = make_stream(rng, 30_000, 40, size, ooo, late_fraction=0.0)
    cap = 400
    pipe = cusense.Pipeline(cusense.Tumbling(size), aggs=AGGS, max_out_of_orderness=ooo,
                            backend=backend, max_open_windows=cap)
    kept = np.zeros(len(ts), bool)
    parts = []
    refused = 0
    for a, b in zip(*(lambda c: (c[:-1], c[1:]))(random_cuts(rng, len(ts), 3_000))):
        try:
            pipe.push(keys[a:b], ts[a:b], values[a:b], time_unit="ns")
            kept[a:b] = True
        except cusense.CapacityError:
            refused += 1
        parts.append(pipe.poll())
        if rng.random() < 0.1:
            parts.append(pipe.flush())
    parts.append(pipe.flush())
    res = cusense.Result.concat(parts)
    assert refused > 0
    # Rows after a flush may repeat a (window, key) emitted before it: the oracle then holds
    # the sum of the pieces. Compare counts and sums per (window, key).
    got = pd.DataFrame({"window_start": res["window_start"], "key": res["key"],
                        "count": res["count"], "sum": np.nan_to_num(res["sum"])})
    got = got.groupby(["window_start", "key"], sort=True).sum().reset_index()
    k, t, v = keys[kept], ts[kept], values[kept]
    expect, late_idx = oracle(k, t, v, size, 0, ooo)
    assert len(late_idx) == 0 or pipe.stats["records_late"] == len(late_idx)
    np.testing.assert_array_equal(got["key"], expect["key"])
    np.testing.assert_array_equal(got["count"], expect["count"])
    np.testing.assert_allclose(got["sum"], expect["sum"].fillna(0), rtol=1e-9, atol=1e-9)


def test_only_nan_window_and_float32(backend):
    pipe = cusense.Pipeline(cusense.Tumbling("1s"), aggs=AGGS, backend=backend)
    pipe.push(np.array([1, 1, 2], np.uint32), np.array([0, 10, 20], np.int64),
              np.array([np.nan, np.nan, 1.5], np.float32))
    res = pipe.flush()
    assert list(res["key"]) == [1, 2]
    assert list(res["count"]) == [0, 1] and list(res["nan_count"]) == [2, 0]
    assert res["sum"][0] == 0.0
    for c in ("mean", "min", "max", "var", "std"):
        assert np.isnan(res[c][0]), c
    assert res["mean"][1] == 1.5 and np.isnan(res["var"][1])


def test_datetime64_and_string_durations(backend):
    ts = np.array(["2026-01-01T00:00:00.5", "2026-01-01T00:00:01.2", "2026-01-01T00:01:00"], "datetime64[ms]")
    res = cusense.window_aggregate([3, 3, 3], ts, [1.0, 2.0, 4.0], window=cusense.Tumbling("1min"),
                                   aggs=["count", "sum"], backend=backend)
    df = res.to_pandas()
    assert list(df["count"]) == [2, 1]
    assert df["window_start"][0] == pd.Timestamp("2026-01-01T00:00:00")
    assert df["window_end"][1] == pd.Timestamp("2026-01-01T00:02:00")


def test_multichannel(backend, rng):
    n = 5000
    keys = rng.integers(0, 20, n).astype(np.uint32)
    ts = np.sort(rng.integers(0, 10**9, n))
    values = rng.normal(size=(n, 3))
    res = cusense.window_aggregate(keys, ts, values, window=cusense.Tumbling("100ms"), aggs=["mean", "max"],
                                   channels=["t", "h", "v"], backend=backend)
    df = pd.DataFrame({"key": keys, "ws": ts // 10**8 * 10**8, "t": values[:, 0], "h": values[:, 1],
                       "v": values[:, 2]})
    g = df.groupby(["ws", "key"]).agg(["mean", "max"])
    for ch in "thv":
        np.testing.assert_allclose(res[f"mean_{ch}"], g[(ch, "mean")].to_numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(res[f"max_{ch}"], g[(ch, "max")].to_numpy())


def test_bad_input_raises_and_pipeline_stays_usable(backend):
    pipe = cusense.Pipeline(cusense.Tumbling("1s"), aggs=["count"], backend=backend)
    k, t, v = np.array([1, 2], np.uint32), np.array([0, 1], np.int64), np.array([1.0, 2.0])
    with pytest.raises(ValueError, match="length mismatch"):
        pipe.push(k, t[:1], v)
    with pytest.raises(TypeError, match="values must be float32 or float64"):
        pipe.push(k, t, np.array(["a", "b"]))
    with pytest.raises(TypeError, match="timestamps must be"):
        pipe.push(k, t.astype(float), v)
    with pytest.raises(TypeError, match="keys must be an integer"):
        pipe.push(k.astype(float), t, v)
    with pytest.raises(ValueError, match="outside the uint32 range"):
        pipe.push(np.array([-1, 2]), t, v)
    with pytest.raises(ValueError, match="timestamp out of range"):
        pipe.push(k, np.array([0, 2**63 - 1], np.int64), v)
    with pytest.raises(ValueError, match="shape"):
        pipe.push(k, t, np.ones((2, 2)))
    pipe.push(k, t, v)
    assert list(pipe.flush()["count"]) == [1, 1]
    st = pipe.stats
    # Seven refused pushes of 2 records (six by the Python checks, one by the engine), 2 accepted.
    assert st["records_rejected"] == 14 and st["records_pushed"] == 16
    strict = cusense.Pipeline(cusense.Tumbling("1s"), nan_policy="raise", backend=backend)
    with pytest.raises(ValueError, match="NaN at index 1"):
        strict.push(k, t, np.array([1.0, np.nan]))


def test_bad_options():
    with pytest.raises(ValueError, match="window size must be positive"):
        cusense.Tumbling(0)
    with pytest.raises(ValueError, match="cannot parse"):
        cusense.Tumbling("1 fortnight")
    with pytest.raises(ValueError, match="unknown aggregation 'median_of_doom'"):
        cusense.Pipeline(cusense.Tumbling("1s"), aggs=["mean", "median_of_doom"])
    with pytest.raises(ValueError, match="unknown backend"):
        cusense.Pipeline(cusense.Tumbling("1s"), backend="tpu")
    with pytest.raises(ValueError, match="max_out_of_orderness"):
        cusense.Pipeline(cusense.Tumbling("1s"), max_out_of_orderness=-5)


def test_backend_selection():
    pipe = cusense.Pipeline(cusense.Tumbling("1s"), backend="auto")
    assert pipe.backend == ("cuda" if cusense.devices() else "cpu")
    if not cusense.devices():
        with pytest.raises(cusense.BackendUnavailableError, match="cuda"):
            cusense.Pipeline(cusense.Tumbling("1s"), backend="cuda")
