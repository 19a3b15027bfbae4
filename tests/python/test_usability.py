"""What new users tripped over: one-shot out-of-order data, numpy/pandas/arrow/polars time types,
time units, empty and malformed batches, result conversions, aliases, restored detectors and
the rejected-records count."""
import datetime as dt
import json
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import polars as pl
import pytest

import cusense
from cusense import detectors as D

SECOND = 10**9


def _windows(res, *cols):
    return {c: res[c] for c in ("key", "window_start", "window_end", *cols)}


def _assert_same(a, b, cols):
    assert a.columns == b.columns
    for c in cols:
        np.testing.assert_array_equal(a[c], b[c], err_msg=c)


# --- 1. window_aggregate aggregates out-of-order input -----------------------------------------

def _shuffled_stream(rng, n=20_000, keys=17, span=10**6):
    """Keys and timestamps in random order, with many equal timestamps (ties)."""
    k = rng.integers(0, keys, n).astype(np.uint32)
    ts = rng.integers(0, span, n).astype(np.int64)
    v = rng.normal(size=n)
    return k, ts, v


def test_window_aggregate_default_aggregates_shuffled_input_like_pandas(rng):
    k, ts, v = _shuffled_stream(rng)
    size = 10_000
    res = cusense.window_aggregate(k, ts, v, window=cusense.Tumbling(size),
                                   aggs=["count", "sum", "mean", "min", "max", "first", "last"])
    assert res["count"].sum() == len(k)

    # Oracle: pandas on the records sorted by time, ties in input order.
    df = pd.DataFrame({"key": k, "ts": ts, "v": v})
    df["window_start"] = ts // size * size
    df = df.sort_values("ts", kind="stable")
    want = (df.groupby(["window_start", "key"], sort=True)["v"]
            .agg(["count", "sum", "mean", "min", "max", "first", "last"]).reset_index())
    np.testing.assert_array_equal(res["window_start"], want["window_start"])
    np.testing.assert_array_equal(res["key"], want["key"])
    for exact in ("count", "min", "max", "first", "last"):
        np.testing.assert_array_equal(res[exact], want[exact], err_msg=exact)
    np.testing.assert_allclose(res["sum"], want["sum"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res["mean"], want["mean"], rtol=1e-12, atol=1e-12)
    assert res.columns[:3] == ["key", "window_start", "window_end"]


def test_window_aggregate_default_sessions_like_pandas(rng):
    k, ts, v = _shuffled_stream(rng, n=5_000, keys=5, span=10**7)
    gap = 5_000
    res = cusense.window_aggregate(k, ts, v, window=cusense.Session(gap), aggs=["count", "min", "max"])
    df = pd.DataFrame({"key": k, "ts": ts, "v": v}).sort_values(["key", "ts"], kind="stable")
    df["session"] = (df.groupby("key")["ts"].diff().fillna(gap) >= gap).cumsum()
    want = (df.groupby("session").agg(key=("key", "first"), window_start=("ts", "min"),
                                      last=("ts", "max"), count=("v", "count"), min=("v", "min"),
                                      max=("v", "max"))
            .sort_values(["window_start", "key"]).reset_index(drop=True))
    # Sessions come out as the watermark passes them, so compare in (window_start, key) order.
    got = res.to_pandas(datetimes=False).sort_values(["window_start", "key"]).reset_index(drop=True)
    np.testing.assert_array_equal(got["key"], want["key"])
    np.testing.assert_array_equal(got["window_start"], want["window_start"])
    np.testing.assert_array_equal(got["window_end"], want["last"] + gap)
    for c in ("count", "min", "max"):
        np.testing.assert_array_equal(got[c], want[c], err_msg=c)


def test_window_aggregate_default_rolling_is_the_time_ordered_stream(rng):
    k, ts, v = _shuffled_stream(rng, n=3_000, keys=4, span=2_000)
    window, aggs = cusense.Rolling(5, min_periods=2), ["count", "mean", "first", "last", "argmax_ts"]
    res = cusense.window_aggregate(k, ts, v, window=window, aggs=aggs)
    order = np.argsort(ts, kind="stable")
    pipe = cusense.Pipeline(window, aggs=aggs)
    pipe.push(k[order], ts[order], v[order])
    _assert_same(res, pipe.flush(), res.columns)
    assert len(res) == len(k)


def test_window_aggregate_with_a_bound_returns_or_warns_about_late_records(rng):
    k, ts, v = _shuffled_stream(rng)
    window = cusense.Tumbling(10_000)
    windows, late = cusense.window_aggregate(k, ts, v, window=window, max_out_of_orderness=1_000,
                                             return_late=True)
    assert len(late) > 0 and windows["count"].sum() + len(late) == len(k)
    with pytest.warns(cusense.LateDataWarning, match=rf"{len(late)} of {len(k)} records.*return_late=True"):
        alone = cusense.window_aggregate(k, ts, v, window=window, max_out_of_orderness=1_000)
    _assert_same(alone, windows, windows.columns)
    # Sorted input with a bound has nothing late: no warning.
    order = np.argsort(ts, kind="stable")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cusense.window_aggregate(k[order], ts[order], v[order], window=window, max_out_of_orderness=0)
    # The default returns an empty late table when asked.
    windows, late = cusense.window_aggregate(k, ts, v, window=window, return_late=True)
    assert len(late) == 0 and windows["count"].sum() == len(k)


# --- 2. numpy timedelta64 durations -------------------------------------------------------------

@pytest.mark.parametrize("unit, ns", [("ns", 1), ("us", 10**3), ("ms", 10**6), ("s", SECOND),
                                      ("m", 60 * SECOND), ("h", 3600 * SECOND),
                                      ("D", 86400 * SECOND), ("W", 7 * 86400 * SECOND)])
def test_timedelta64_of_fixed_units_is_exact(unit, ns):
    d = np.timedelta64(3, unit)
    assert cusense.to_nanoseconds(d) == 3 * ns
    assert cusense.Tumbling(d).size == 3 * ns
    assert cusense.Sliding(d, np.timedelta64(1, unit)).slide == ns
    assert cusense.Session(d).gap == 3 * ns
    assert D.Silence(d).timeout == 3 * ns
    pipe = cusense.Pipeline(cusense.Tumbling(d), max_out_of_orderness=d, allowed_lateness=d)
    assert pipe._core.options.max_out_of_orderness == 3 * ns
    assert pipe._core.options.allowed_lateness == 3 * ns


def test_other_duration_types():
    assert cusense.to_nanoseconds(pd.Timedelta(1, "s") + pd.Timedelta(5, "ns")) == SECOND + 5
    assert cusense.to_nanoseconds(np.timedelta64(2000, "ps")) == 2
    with pytest.raises(ValueError, match="whole number of nanoseconds"):
        cusense.to_nanoseconds(np.timedelta64(2500, "ps"))


@pytest.mark.parametrize("unit", ["Y", "M"])
def test_timedelta64_calendar_units_are_refused(unit):
    with pytest.raises(ValueError, match="years and months have no fixed length"):
        cusense.Tumbling(np.timedelta64(1, unit))
    with pytest.raises(ValueError, match="max_out_of_orderness.*no fixed length"):
        cusense.Pipeline(cusense.Tumbling("1s"), max_out_of_orderness=np.timedelta64(1, unit))


# --- 3. coarse datetime64 outside the range -----------------------------------------------------

@pytest.mark.parametrize("date, unit", [("1500-01-01", "s"), ("2600-06-01", "ms"),
                                        ("1700-03-04", "us"), ("2500-01-01", "D"), ("2200", "Y")])
def test_coarse_datetime64_outside_the_range_is_refused(date, unit):
    ts = np.array(["2024-01-01", date, "2024-01-02"], dtype=f"datetime64[{unit}]")
    pipe = cusense.Pipeline(cusense.Tumbling("1d"), aggs=["count"])
    with pytest.raises(ValueError, match=rf"timestamp {ts[1]} at index 1 is outside the supported range"):
        pipe.push([1, 1, 1], ts, [1.0, 2.0, 3.0])
    assert pipe.stats["records_rejected"] == 3
    pipe.push([1], ts[:1], [1.0])   # still usable
    assert pipe.flush()["count"].tolist() == [1]


def test_coarse_datetime64_near_the_limits_is_converted_exactly():
    ts = np.array(["1824-01-01", "2116-01-01", "1970-01-01T00:00:01"], dtype="datetime64[s]")
    res = cusense.window_aggregate([1, 1, 1], ts, [1.0, 2.0, 3.0], window=cusense.Tumbling("1s"),
                                   aggs=["count"])
    np.testing.assert_array_equal(np.sort(res["window_start"]), np.sort(ts.astype("datetime64[ns]").view(np.int64)))


def test_integer_times_in_a_coarse_unit_outside_the_range_are_refused():
    pipe = cusense.Pipeline(cusense.Tumbling("1s"), aggs=["count"])
    with pytest.raises(ValueError, match=r"timestamp 9999999999999 \(ms\) at index 1 is outside"):
        pipe.push([1, 1], [0, 9_999_999_999_999], [1.0, 2.0], time_unit="ms")


# --- 4. time-zone-aware pandas timestamps and datetime objects ---------------------------------

def _ns_stream(rng, n=500):
    ts = np.sort(rng.integers(1_700_000_000 * SECOND, 1_700_100_000 * SECOND, n))
    return rng.integers(0, 5, n).astype(np.uint32), ts, rng.normal(size=n)


def _aggregate(k, ts, v):
    return cusense.window_aggregate(k, ts, v, window=cusense.Tumbling("1h"), aggs=["count", "mean"])


@pytest.mark.parametrize("form", ["series", "index", "arrow", "polars"])
def test_time_zone_aware_timestamps_are_converted_to_utc(rng, form):
    k, ts, v = _ns_stream(rng)
    berlin = pd.to_datetime(ts, utc=True).tz_convert("Europe/Berlin")
    column = {"series": lambda: pd.Series(berlin), "index": lambda: berlin,
              "arrow": lambda: pa.array(pd.Series(berlin)),
              "polars": lambda: pl.Series(pd.Series(berlin))}[form]()
    _assert_same(_aggregate(k, column, v), _aggregate(k, ts, v), ["key", "window_start", "count", "mean"])


def test_datetime_objects_aware_ones_to_utc_naive_ones_as_utc():
    berlin = dt.timezone(dt.timedelta(hours=1))
    times = [dt.datetime(2024, 1, 1, 1, 0, 0, 5, tzinfo=berlin),     # 00:00:00.000005 UTC
             dt.datetime(2024, 1, 1, 0, 30),                           # naive: UTC
             pd.Timestamp("2024-01-01T00:45:00.000000007", tz="UTC"),
             np.datetime64("2024-01-01T00:50", "m")]
    want = np.array(["2024-01-01T00:00:00.000005", "2024-01-01T00:30", "2024-01-01T00:45:00.000000007",
                     "2024-01-01T00:50"], dtype="datetime64[ns]").view(np.int64)
    pipe = cusense.Pipeline(cusense.Rolling(1), aggs=["count"])
    pipe.push([1, 1, 1, 1], times, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(pipe.flush()["timestamp"], want)
    with pytest.raises(TypeError, match="element 1 is str"):
        pipe.push([1, 1], [dt.datetime(2024, 1, 1), "2024-01-01"], [1.0, 2.0])


# --- 5. time units -------------------------------------------------------------------------------

@pytest.mark.parametrize("unit, factor", [("s", SECOND), ("ms", 10**6), ("us", 10**3), ("ns", 1)])
def test_time_unit_of_integer_timestamps(rng, unit, factor):
    k, ts, v = _ns_stream(rng)
    in_unit = ts // factor
    window, aggs = cusense.Tumbling("1h"), ["count", "mean", "first"]
    want = cusense.window_aggregate(k, in_unit * factor, v, window=window, aggs=aggs)
    pipe = cusense.Pipeline(window, aggs=aggs)
    pipe.push(k, in_unit, v, time_unit=unit)
    _assert_same(pipe.flush(), want, want.columns)
    _assert_same(cusense.window_aggregate(k, in_unit, v, window=window, aggs=aggs, time_unit=unit),
                 want, want.columns)
    np.testing.assert_array_equal(cusense.score(in_unit, v, keys=k, time_unit=unit, detector=D.EWMA()),
                                  cusense.score(in_unit * factor, v, keys=k, detector=D.EWMA()))


def test_bad_time_unit():
    with pytest.raises(ValueError, match="time_unit must be one of"):
        cusense.Pipeline(cusense.Tumbling("1s")).push([1], [1], [1.0], time_unit="h")


@pytest.mark.parametrize("now, looks", [(1_700_000_000, "seconds"), (1_700_000_000_000, "milliseconds")])
def test_integer_seconds_or_ms_given_as_ns_warn_once_per_pipeline(now, looks):
    pipe = cusense.Pipeline(cusense.Tumbling("1s"))
    with pytest.warns(cusense.TimeUnitWarning, match=f"look like {looks}") as record:
        pipe.push([1, 2], [now, now + 1], [1.0, 2.0])
        pipe.push([1, 2], [now + 2, now + 3], [1.0, 2.0])
    assert len(record) == 1 and record[0].filename == __file__
    assert issubclass(cusense.TimeUnitWarning, UserWarning)
    with pytest.warns(cusense.TimeUnitWarning):
        cusense.window_aggregate([1], [now], [1.0], window=cusense.Tumbling("1s"))
    with pytest.warns(cusense.TimeUnitWarning):
        cusense.score([now, now + 1], [1.0, 2.0])


def test_no_time_unit_warning_for_nanoseconds_or_explicit_units():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe = cusense.Pipeline(cusense.Tumbling("1s"))
        pipe.push([1], [1_700_000_000 * SECOND], [1.0])                 # present-era ns
        pipe.push([1], [1_700_000_001], [1.0], time_unit="s")
        pipe.push([1], [1_700_000_001_000], [1.0], time_unit="ns")     # explicit: no check
        pipe.push([1], np.array([1_700_000_002], dtype="datetime64[s]"), [1.0])


# --- 6. empty and malformed batches --------------------------------------------------------------

def test_empty_push_is_a_no_op():
    pipe = cusense.Pipeline(cusense.Tumbling("1s"), aggs=["count"])
    pipe.push([], [], [])
    pipe.push(np.array([], dtype=np.uint32), np.array([], dtype="datetime64[ns]"), np.array([]))
    assert pipe.stats["records_pushed"] == 0 and pipe.stats["records_rejected"] == 0
    res = cusense.window_aggregate([], [], [], window=cusense.Tumbling("1s"), aggs=["count"])
    assert len(res) == 0 and "count" in res.columns


def test_two_dimensional_keys_name_the_shape():
    pipe = cusense.Pipeline(cusense.Tumbling("1s"))
    with pytest.raises(ValueError, match=r"keys must be 1-D .*shape \(2, 3\)"):
        pipe.push(np.zeros((2, 3), dtype=np.uint32), np.zeros(6, dtype=np.int64), np.zeros(6))
    with pytest.raises(ValueError, match=r"timestamps must be 1-D .*shape \(6, 1\)"):
        pipe.push(np.zeros(6, dtype=np.uint32), np.zeros((6, 1), dtype=np.int64), np.zeros(6))


# --- 7. arrow and polars in and out --------------------------------------------------------------

def test_push_accepts_arrow_and_polars_columns(rng):
    k, ts, v = _ns_stream(rng)
    want = _aggregate(k, ts, v)
    as_arrow = _aggregate(pa.array(k), pa.chunked_array([ts[:100], ts[100:]]), pa.array(v))
    as_polars = _aggregate(pl.Series(k), pl.Series(ts.view("datetime64[ns]")), pl.Series(v))
    for got in (as_arrow, as_polars):
        _assert_same(got, want, want.columns)
    pipe = cusense.Pipeline(cusense.Tumbling("1s"))
    with pytest.raises(ValueError, match="values contain a null at index 1"):
        pipe.push(pa.array([1, 2], pa.uint32()), pa.array([1, 2]), pa.array([1.0, None]))
    with pytest.raises(ValueError, match="keys contain a null at index 0"):
        pipe.push(pl.Series([None, 2], dtype=pl.UInt32), [1, 2], [1.0, 2.0])


def test_to_arrow_and_to_polars(rng):
    k, ts, v = _ns_stream(rng)
    v[:3] = np.nan
    res = cusense.window_aggregate(k, ts, v, window=cusense.Tumbling("1h"),
                                   aggs=["count", "mean", "argmax_ts"])
    table = res.to_arrow()
    assert table.schema.field("window_start").type == pa.timestamp("ns", tz="UTC")
    assert table.schema.field("argmax_ts").type == pa.timestamp("ns", tz="UTC")
    assert table.schema.field("mean").type == pa.float64()
    # Numeric and time columns share the result's memory.
    for name in ("mean", "window_start", "count"):
        assert table.column(name).chunk(0).buffers()[1].address == res[name].ctypes.data, name
    want = res.to_pandas()
    back = table.to_pandas()
    for name in ("window_start", "window_end", "argmax_ts"):
        np.testing.assert_array_equal(back[name].dt.tz_localize(None).to_numpy(), want[name].to_numpy())
    np.testing.assert_array_equal(back["mean"], want["mean"])
    frame = res.to_polars()
    assert isinstance(frame, pl.DataFrame) and frame.columns == res.columns
    assert frame.schema["window_end"] == pl.Datetime("ns", "UTC")
    np.testing.assert_array_equal(frame["count"].to_numpy(), res["count"])
    assert res.to_arrow(datetimes=False).schema.field("window_start").type == pa.int64()


def test_silence_times_are_datetimes_with_nat():
    pipe = cusense.Pipeline(None, detectors=[D.Silence(10)])
    pipe.push([1, 2, 1, 2], [0, 0, 5, 50], [1.0, 1.0, 1.0, 1.0])
    silence = pipe.poll_silence()
    df = silence.to_pandas()
    for name in ("last_seen", "silent_since", "back_at"):
        assert df[name].dtype == "datetime64[ns]", name
    assert df["back_at"].isna().tolist() == (~silence["back"]).tolist()
    table = silence.to_arrow()
    assert table.column("back_at").null_count == int((~silence["back"]).sum())
    assert silence.to_polars()["back_at"].is_null().to_list() == (~silence["back"]).tolist()


# --- 8. median -----------------------------------------------------------------------------------

def test_median_is_an_alias_of_p50(rng):
    k, ts, v = _shuffled_stream(rng, n=2_000)
    window = cusense.Tumbling(100_000)
    with_median = cusense.window_aggregate(k, ts, v, window=window, aggs=["count", "median"])
    with_p50 = cusense.window_aggregate(k, ts, v, window=window, aggs=["count", "p50"])
    _assert_same(with_median, with_p50, with_p50.columns)
    assert "p50" in with_median.columns
    assert cusense.Pipeline(window, aggs=["median"]).aggs == ["p50"]
    with pytest.raises(ValueError, match="'median' is an alias of 'p50'"):
        cusense.Pipeline(window, aggs=["median", "p50"])


def test_cli_accepts_median_and_quantiles(tmp_path):
    from cusense import cli

    src = tmp_path / "in.csv"
    src.write_text("id,t,v\n1,0,1\n1,1,5\n1,2,3\n")
    out = tmp_path / "out.csv"
    rc = cli.main(["run", str(src), "--key", "id", "--time", "t", "--value", "v", "--window", "1s",
                   "--aggs", "median,p90", "--out", str(out), "--quiet", "--no-progress"])
    assert rc == 0
    df = pd.read_csv(out)
    assert df["p50"].tolist() == pytest.approx([3.0], rel=0.01) and "p90" in df.columns


# --- 9. restored detectors -----------------------------------------------------------------------

def test_restored_pipeline_has_detector_objects(tmp_path):
    dets = [D.EWMA(alpha=0.1, threshold=0.7, min_count=3), D.RollingZ(window=50, name="rz"),
            D.RollingMAD(window=20, threshold=0.9), D.KnnDiscord(L=3, H=400, H2=100, K=10, min_candidates=20),
            D.Silence("5min")]
    pipe = cusense.Pipeline(cusense.Tumbling("1s"), detectors=dets)
    pipe.checkpoint(tmp_path / "p.ckpt")
    restored = cusense.Pipeline.restore(tmp_path / "p.ckpt")
    assert restored.detectors == dets
    assert [type(d) for d in restored.detectors] == [type(d) for d in dets]


# --- 10. refused pushes are counted --------------------------------------------------------------

def test_pushes_refused_in_python_are_counted():
    pipe = cusense.Pipeline(cusense.Tumbling(10), aggs=["count"], nan_policy="raise")
    pipe.push([1, 2], [0, 1], [1.0, 2.0])
    refusals = [
        (TypeError, ([1.5, 2.5, 3.5], [0, 1, 2], [1.0, 2.0, 3.0]), 3),        # key dtype
        (ValueError, ([1, 2, 3], [0, 1], [1.0, 2.0, 3.0]), 3),                # length
        (ValueError, ([1, 2, 3, 4], [0, 1, 2, 3], [1.0, np.nan, 2.0, 3.0]), 4),  # NaN
        (TypeError, ([1], ["x"], [1.0]), 1),                                   # time dtype
    ]
    rejected = 0
    for error, batch, n in refusals:
        with pytest.raises(error):
            pipe.push(*batch)
        rejected += n
        st = pipe.stats
        assert st["records_rejected"] == rejected
        assert st["records_pushed"] == st["records_aggregated"] + st["records_late"] + st["records_rejected"]
    with pytest.raises(ValueError, match="out of range"):   # refused by the engine: counted once
        pipe.push([1], [2**62 + 1], [1.0])
    assert pipe.stats["records_rejected"] == rejected + 1
    assert pipe.flush()["count"].sum() == 2


# --- 11. infinite values, state after flush, records after flush ----------------------------------

WINDOWS = [cusense.Tumbling(100), cusense.Sliding(100, 50), cusense.Session(100),
           cusense.Rolling(3, min_periods=1)]


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: type(w).__name__)
@pytest.mark.parametrize("values", [[1, np.inf, 2], [np.inf, np.inf], [np.inf, -np.inf], [-np.inf, 1.0]])
def test_mean_with_infinite_values_matches_numpy(window, values):
    pipe = cusense.Pipeline(window, aggs=["mean", "sum", "min", "max"], backend="cpu")
    n = len(values)
    pipe.push(np.zeros(n, np.uint32), np.arange(n, dtype=np.int64), np.array(values, float))
    row = pipe.flush().to_pandas().iloc[-1]
    v = pd.Series(values)
    for agg in ("mean", "sum", "min", "max"):
        np.testing.assert_equal(row[agg], getattr(v, agg)(), err_msg=agg)


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: type(w).__name__)
def test_state_bytes_follow_open_state_and_are_zero_after_flush(window, rng):
    pipe = cusense.Pipeline(window, aggs=["count", "mean"], backend="cpu")
    n = 5_000
    pipe.push(rng.integers(0, 1_000, n).astype(np.uint32), np.sort(rng.integers(0, 10_000, n)),
              rng.normal(size=n))
    assert pipe.stats["state_bytes"] > 0
    pipe.flush()
    assert pipe.stats["open_windows"] == 0
    assert pipe.stats["state_bytes"] == 0


def test_detector_state_is_counted(rng):
    """Detector state per key shows in state_bytes (and open_keys for a detectors-only pipeline)."""
    sizes = []
    for keys in (100, 1_000):
        pipe = cusense.Pipeline(detectors=[D.default(), D.Silence("1min")])
        n = 20 * keys
        pipe.push(rng.permutation(np.arange(n) % keys).astype(np.uint32), np.arange(n) * 10**6,
                  rng.normal(size=n), time_unit="ns")
        assert pipe.stats["open_keys"] == keys
        sizes.append(pipe.stats["state_bytes"])
    assert 0 < sizes[0] and 8 * sizes[0] < sizes[1] < 12 * sizes[0]


def test_watermark_also_as_a_time():
    pipe = cusense.Pipeline(cusense.Tumbling("1s"), aggs=["count"])
    assert np.isnat(pipe.watermark_time)
    pipe.push([1, 2], np.array(["2026-01-01T00:00:05", "2026-01-01T00:00:07"], "datetime64[ns]"), [1.0, 2.0])
    assert pipe.watermark_time == np.datetime64("2026-01-01T00:00:07", "ns")
    assert pipe.watermark_time.astype("int64") == pipe.stats["watermark"]
    json.dumps(pipe.stats)  # stats stay plain numbers
