"""Property tests (hypothesis): results do not depend on how the stream is cut into batches,
every record is accounted for, and a capped run equals an uncapped run of the accepted
batches. Examples are random on every run; a failure prints the falsifying example."""
import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="property tests need hypothesis (requirements-dev.txt)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cusense

AGGS = ["count", "sum", "mean", "min", "max", "var", "std_pop", "nan_count"]
EXACT = ("key", "window_start", "window_end", "count", "nan_count", "min", "max")

SETTINGS = settings(max_examples=50, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def streams(draw, max_records=160):
    """A window configuration and a stream: keys from a few ids, timestamps drifting forward
    with disorder and occasional jumps back (late records), values with NaNs."""
    size = draw(st.integers(1, 400))
    offset = draw(st.integers(-1000, 1000))
    ooo = draw(st.sampled_from([0, 0, 1, 50, 300]))
    channels = draw(st.sampled_from([1, 1, 2]))
    n = draw(st.integers(0, max_records))
    steps = draw(st.lists(st.integers(-30, 60), min_size=n, max_size=n))
    jumps = draw(st.lists(st.sampled_from([0] * 12 + [-1500, -400, 5000]), min_size=n, max_size=n))
    ts = (draw(st.integers(-10**6, 10**6)) + np.cumsum(np.array(steps, dtype=np.int64))
          + np.array(jumps, dtype=np.int64)).astype(np.int64)
    keys = np.array(draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)), dtype=np.uint32)
    finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    vals = draw(st.lists(st.one_of(finite, finite, finite, st.just(float("nan"))),
                         min_size=n * channels, max_size=n * channels))
    values = np.array(vals, dtype=np.float64).reshape(n, channels) if channels > 1 else np.array(vals)
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=12))) | {0, n})
    f32 = draw(st.booleans())
    return dict(size=size, offset=offset, ooo=ooo, channels=channels, keys=keys, ts=ts,
                values=values.astype(np.float32) if f32 else values, cuts=cuts)


def _pipe(s, backend, **kw):
    return cusense.Pipeline(cusense.Tumbling(s["size"], s["offset"]), aggs=AGGS,
                            max_out_of_orderness=s["ooo"], backend=backend,
                            channels=s["channels"] if s["channels"] > 1 else None, **kw)


def _run(pipe, s, batches, poll_every=True):
    parts = []
    for a, b in batches:
        pipe.push(s["keys"][a:b], s["ts"][a:b], s["values"][a:b])
        if poll_every:
            parts.append(pipe.poll())
    parts.append(pipe.flush())
    return cusense.Result.concat(parts), pipe.poll_late()


def _assert_same(got, want, backend):
    assert got.columns == want.columns
    assert len(got) == len(want)
    for c in got.columns:
        exact = backend == "cpu" or c in EXACT or c.split("_")[0] in ("count", "min", "max") \
            or c.startswith("nan_count") or c in ("key", "timestamp")
        if exact:  # the CPU backend is bit-identical for any batching
            np.testing.assert_array_equal(got[c], want[c], err_msg=c)
        else:
            np.testing.assert_allclose(got[c], want[c], rtol=1e-9, atol=1e-6, err_msg=c)


def _channel0(name, channels):
    return name if channels == 1 else f"{name}_0"


@SETTINGS
@given(s=streams())
def test_chunking_invariance(backend, s):
    whole, late_whole = _run(_pipe(s, backend), s, [(0, len(s["keys"]))], poll_every=False)
    cuts = s["cuts"]
    chunked, late_chunked = _run(_pipe(s, backend), s, list(zip(cuts[:-1], cuts[1:])))
    _assert_same(chunked, whole, backend)
    _assert_same(late_chunked, late_whole, backend)


@SETTINGS
@given(s=streams())
def test_every_record_is_accounted_for(backend, s):
    pipe = _pipe(s, backend)
    cuts = s["cuts"]
    out, late = _run(pipe, s, list(zip(cuts[:-1], cuts[1:])))
    st_ = pipe.stats
    n = len(s["keys"])
    assert st_["records_pushed"] == n
    assert st_["records_pushed"] == st_["records_aggregated"] + st_["records_late"] + st_["records_rejected"]
    assert st_["records_rejected"] == 0 and st_["open_windows"] == 0
    count, nans = _channel0("count", s["channels"]), _channel0("nan_count", s["channels"])
    assert int(out[count].sum() + out[nans].sum()) == st_["records_aggregated"]
    assert len(late) == st_["records_late"]
    assert st_["windows_emitted"] == len(out)
    # Rows ordered by (window_start, key), each a window of the grid.
    order = np.lexsort((out["key"], out["window_start"]))
    np.testing.assert_array_equal(order, np.arange(len(out)))
    pairs = set(zip(out["window_start"].tolist(), out["key"].tolist()))
    assert len(pairs) == len(out)
    np.testing.assert_array_equal(out["window_end"] - out["window_start"], s["size"])
    assert np.all((out["window_start"] - s["offset"]) % s["size"] == 0)
    # Late records are exactly those whose window closed before they arrived.
    ts = s["ts"]
    prev_max = np.maximum.accumulate(np.concatenate([[np.iinfo(np.int64).min], ts]))[:-1]
    start = (ts - s["offset"]) // s["size"] * s["size"] + s["offset"]
    is_late = (np.arange(n) > 0) & (start + s["size"] <= prev_max - s["ooo"])
    np.testing.assert_array_equal(late["timestamp"], ts[is_late])


@SETTINGS
@given(s=streams(max_records=240), cap=st.integers(1, 30))
def test_capped_run_equals_uncapped_run_of_the_accepted_batches(backend, s, cap):
    cuts = s["cuts"]
    capped, accepted, rejected, parts = _pipe(s, backend, max_open_windows=cap), [], 0, []
    for a, b in zip(cuts[:-1], cuts[1:]):
        try:
            capped.push(s["keys"][a:b], s["ts"][a:b], s["values"][a:b])
            accepted.append((a, b))
        except cusense.CapacityError:
            rejected += b - a
        assert capped.stats["open_windows"] <= cap
        parts.append(capped.poll())
    parts.append(capped.flush())
    got, got_late = cusense.Result.concat(parts), capped.poll_late()
    want, want_late = _run(_pipe(s, backend), s, accepted)
    _assert_same(got, want, backend)
    _assert_same(got_late, want_late, backend)
    st_ = capped.stats
    assert st_["records_rejected"] == rejected
    assert st_["records_pushed"] == st_["records_aggregated"] + st_["records_late"] + rejected


@SETTINGS
@given(s=streams(), at=st.integers(0, 12), lateness=st.sampled_from([0, 0, 200]))
def test_checkpoint_restore_equivalence(backend, s, at, lateness, tmp_path):
    """Checkpointing after any batch and resuming from the file gives the uninterrupted run."""
    aggs = AGGS + (["first", "last", "p50"] if lateness else [])
    cuts = s["cuts"]
    batches = list(zip(cuts[:-1], cuts[1:]))
    at = min(at, len(batches))

    def pipe():
        if not lateness:
            return _pipe(s, backend)
        # allowed lateness, first/last and quantiles run on the CPU engines
        return cusense.Pipeline(cusense.Tumbling(s["size"], s["offset"]), aggs=aggs,
                                max_out_of_orderness=s["ooo"], backend="cpu",
                                allowed_lateness=lateness,
                                channels=s["channels"] if s["channels"] > 1 else None)

    want, want_late = _run(pipe(), s, batches)
    first = pipe()
    head = []
    for a, b in batches[:at]:
        first.push(s["keys"][a:b], s["ts"][a:b], s["values"][a:b])
        head.append(first.poll())
    path = tmp_path / "p.ckpt"
    first.checkpoint(path)
    resumed = cusense.Pipeline.restore(path, backend=first.backend)
    late_head = resumed.poll_late()
    tail, late_tail = _run(resumed, s, batches[at:])
    got = cusense.Result.concat(head + [tail])
    _assert_same(got, want, "cpu")
    _assert_same(cusense.Result.concat([late_head, late_tail]), want_late, "cpu")
    assert resumed.stats["records_pushed"] == len(s["keys"])
