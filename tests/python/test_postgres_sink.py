"""PostgresSink against a real PostgreSQL server: tables equal the epoch's DataFrames, exactly
once across replays and crashes, window upserts, day partitions and retention, server loss."""
import time
import uuid

import numpy as np
import pandas as pd
import pytest

psycopg = pytest.importorskip("psycopg")

from cusense.sinks import EpochOutput, PostgresSink, SinkUnavailableError  # noqa: E402
from cusense.sinks.postgres import SchemaMismatchError  # noqa: E402
from pg_server import (PostgresUnavailable, postgres_dsn, restart_postgres,  # noqa: E402,F401
                       start_postgres, stop_postgres)

SECOND = 10**9
DAY = 86_400 * SECOND
BASE = pd.Timestamp("2026-03-01", tz="UTC").value
DEVICES = [f"device-{i}" for i in range(8)]
CHANNELS = ["temp", "rpm", "vib"]

WINDOW_COLUMNS = ["device", "channel", "window_start", "window_end", "update_seq",
                  "count", "mean", "max", "argmax_ts", "nan_count"]
TABLE_COLUMNS = {
    "alarms": ["device", "channel", "timestamp", "value", "detector", "score"],
    "silence": ["device", "channel", "last_seen", "silent_since", "back_at", "back"],
    "late_records": ["device", "channel", "timestamp", "value"],
    "dead_letters": ["topic", "partition", "offset", "payload", "reason"],
    "fleet_status": ["device", "status", "since", "last_seen", "epoch"],
}
FIELD = {"alarms": "alarms", "silence": "silence", "late_records": "late",
         "dead_letters": "dead_letters", "fleet_status": "status"}


@pytest.fixture
def schema():
    """Each test writes into a schema of its own on the shared server."""
    return f"t_{uuid.uuid4().hex[:12]}"


def times(ns):
    return pd.to_datetime(np.asarray(ns, dtype=np.int64), utc=True)


def random_windows(rng, start_ns, span_ns, per_key=5, update_seq=0):
    """Distinct 1 s windows per (device, channel) in [start, start + span), nanosecond
    offsets included (the sink truncates them to microseconds)."""
    rows = []
    for device in DEVICES:
        for channel in CHANNELS:
            slots = rng.choice(span_ns // SECOND, size=per_key, replace=False)
            for slot in slots:
                rows.append((device, channel, start_ns + int(slot) * SECOND + int(rng.integers(0, 1000))))
    n = len(rows)
    device, channel, start = zip(*rows)
    mean = rng.normal(size=n)
    mean[rng.random(n) < 0.2] = np.nan                       # windows of only NaN values
    argmax = np.array(start, dtype=np.int64) + rng.integers(0, SECOND, n)
    argmax_ts = times(argmax)
    argmax_ts = argmax_ts.where(~np.isnan(mean), pd.NaT)
    return pd.DataFrame({
        "device": device, "channel": channel, "window_start": times(start),
        "window_end": times(np.array(start) + SECOND),
        "update_seq": np.full(n, update_seq, dtype=np.int64),
        "count": rng.integers(0, 100, n), "mean": mean, "max": mean + rng.random(n),
        "argmax_ts": argmax_ts, "nan_count": rng.integers(0, 3, n)})


def random_epoch(rng, epoch, start_ns=BASE, span_ns=2 * DAY, n=40, windows=None):
    """An epoch whose rows spread over [start, start + span): about three day partitions."""
    def when(k):
        return times(start_ns + rng.integers(0, span_ns, k))

    def pick(values, k):
        return rng.choice(values, size=k)

    last_seen = start_ns + rng.integers(0, span_ns // 2, n)
    back = rng.random(n) < 0.5
    back_at = times(last_seen + 60 * SECOND).where(back, pd.NaT)
    late_values = rng.normal(size=n)
    late_values[::7] = np.nan
    return EpochOutput(
        epoch=epoch,
        windows=random_windows(rng, start_ns, span_ns) if windows is None else windows,
        alarms=pd.DataFrame({"device": pick(DEVICES, n), "channel": pick(CHANNELS, n),
                             "timestamp": when(n), "value": rng.normal(size=n).astype(np.float32),
                             "detector": pick(["zscore", "ewma"], n), "score": rng.random(n) * 10}),
        silence=pd.DataFrame({"device": pick(DEVICES, n), "channel": pick(CHANNELS, n),
                              "last_seen": times(last_seen),
                              "silent_since": times(last_seen + 30 * SECOND),
                              "back_at": back_at, "back": back}),
        late=pd.DataFrame({"device": pick(DEVICES, n), "channel": pick(CHANNELS, n),
                           "timestamp": when(n), "value": late_values}),
        dead_letters=pd.DataFrame({
            "topic": pick(["plant/a", "plant/b"], 5),
            "partition": pd.array([0, 1, None, 2, 0], dtype="Int64"),
            "offset": pd.array([10, None, 12, 13, 14], dtype="Int64"),
            "payload": [rng.bytes(int(k)) for k in rng.integers(0, 40, 5)],
            "reason": pick(["bad json", "no timestamp"], 5)}),
        raw=pd.DataFrame({"device": [], "channel": [], "timestamp": [], "value": []}),
        status=pd.DataFrame({"device": DEVICES, "status": pick(["ok", "silent", "anomalous"],
                                                               len(DEVICES)),
                             "since": when(len(DEVICES)), "last_seen": when(len(DEVICES))}),
        watermark=int(start_ns + span_ns), closed_before=int(start_ns),
        source_positions={"mqtt": {"plant/a": epoch, "plant/b": 2 * epoch}})


def read_table(dsn, schema, table, columns):
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f'SELECT {", ".join(f"{chr(34)}{c}{chr(34)}" for c in columns)} '
                            f'FROM "{schema}"."{table}"').fetchall()
    return pd.DataFrame(rows, columns=columns)


def count(dsn, schema, table):
    with psycopg.connect(dsn) as conn:
        return conn.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()[0]


def partitions(dsn, schema, table):
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(%s)", (f'"{schema}"."{table}"',)).fetchall()
    return sorted(name for (name,) in rows)


def normalized(frame):
    """Comparable form: times floored to microseconds (timestamptz's resolution), missing
    values as None, rows sorted."""
    frame = frame.copy()
    for column in frame.columns:
        values = frame[column]
        if isinstance(values.dtype, pd.DatetimeTZDtype) or values.map(
                lambda v: hasattr(v, "tzinfo")).any():
            frame[column] = pd.to_datetime(values, utc=True).dt.floor("us").astype(
                "datetime64[ns, UTC]")
        elif values.map(lambda v: isinstance(v, (bytes, memoryview))).any():
            frame[column] = values.map(lambda v: None if v is None else bytes(v))
    frame = frame.astype(object).where(frame.notna(), None)
    for column in frame.columns:
        frame[column] = frame[column].map(lambda v: float(v) if isinstance(v, np.floating) else
                                          int(v) if isinstance(v, np.integer) else v)
    return frame.sort_values(list(frame.columns), key=lambda s: s.map(repr)) \
        .reset_index(drop=True)


def expected_rows(outs, table):
    if table == "windows":
        return normalized(pd.concat([o.windows[WINDOW_COLUMNS] for o in outs]))
    if table == "fleet_status":
        last = pd.concat([o.status.assign(epoch=o.epoch) for o in outs])
        return normalized(last.drop_duplicates("device", keep="last"))
    return normalized(pd.concat([getattr(o, FIELD[table])[TABLE_COLUMNS[table]] for o in outs]))


def assert_tables_hold(dsn, schema, outs):
    """Every table holds exactly the rows of the epochs ``outs``, once."""
    got = normalized(read_table(dsn, schema, "windows", WINDOW_COLUMNS))
    pd.testing.assert_frame_equal(got, expected_rows(outs, "windows"))
    for table, columns in TABLE_COLUMNS.items():
        got = normalized(read_table(dsn, schema, table, columns))
        pd.testing.assert_frame_equal(got, expected_rows(outs, table), obj=table)


def test_tables_equal_the_epoch_frames(postgres_dsn, schema, rng):
    sink = PostgresSink(postgres_dsn, schema=schema)
    sink.open()
    assert sink.committed_epoch() == -1
    outs = [random_epoch(rng, 0), random_epoch(rng, 1, start_ns=BASE + 3 * DAY)]
    for out in outs:
        sink.write(out)
        sink.commit(out.epoch)
    assert sink.committed_epoch() == 1
    assert_tables_hold(postgres_dsn, schema, outs)

    epochs = read_table(postgres_dsn, schema, "epochs",
                        ["epoch", "watermark", "source_positions", "row_counts"])
    assert epochs["epoch"].tolist() == [0, 1]
    assert epochs["watermark"].tolist() == [o.watermark for o in outs]
    assert epochs["source_positions"].tolist() == [o.source_positions for o in outs]
    assert epochs["row_counts"][1]["windows"] == len(outs[1].windows)
    assert epochs["row_counts"][1]["late_records"] == len(outs[1].late)

    # NaN and NaT are stored as NULL; times lose their nanoseconds.
    with psycopg.connect(postgres_dsn) as conn:
        nulls = conn.execute(f'SELECT count(*) FROM "{schema}".windows '
                             "WHERE mean IS NULL AND argmax_ts IS NULL").fetchone()[0]
        kinds = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'windows'", (schema,)).fetchall())
    assert nulls == sum(o.windows["mean"].isna().sum() for o in outs) > 0
    assert kinds["count"] == "bigint" and kinds["mean"] == "double precision"
    assert kinds["argmax_ts"] == "timestamp with time zone" and kinds["update_seq"] == "integer"
    sink.close()


def test_epoch_written_twice_is_not_doubled(postgres_dsn, schema, rng):
    out = random_epoch(rng, 0)
    sink = PostgresSink(postgres_dsn, schema=schema)
    sink.open()
    for _ in range(2):
        sink.write(out)
        sink.commit(0)
    sink.close()
    # A replay after a crash comes from a new process: a new sink.
    again = PostgresSink(postgres_dsn, schema=schema)
    again.open()
    assert again.committed_epoch() == 0
    again.write(out)
    again.commit(0)
    again.close()
    assert_tables_hold(postgres_dsn, schema, [out])
    assert count(postgres_dsn, schema, "epochs") == 1


def test_crash_mid_epoch_leaves_nothing(postgres_dsn, schema, rng):
    first, second = random_epoch(rng, 0), random_epoch(rng, 1, start_ns=BASE + DAY)
    sink = PostgresSink(postgres_dsn, schema=schema)
    sink.open()
    sink.write(first)
    sink.commit(0)
    sink.write(second)
    sink._conn.close()            # the process dies between write and commit
    restarted = PostgresSink(postgres_dsn, schema=schema)
    restarted.open()
    assert restarted.committed_epoch() == 0
    assert_tables_hold(postgres_dsn, schema, [first])
    # The service re-sends the epoch; the dead sink object would reconnect just as well.
    restarted.write(second)
    restarted.commit(1)
    assert restarted.committed_epoch() == 1
    assert_tables_hold(postgres_dsn, schema, [first, second])
    sink.write(second)            # reconnects; epoch 1 is in: nothing happens
    sink.commit(1)
    assert_tables_hold(postgres_dsn, schema, [first, second])
    sink.close()
    restarted.close()


def test_window_updates_and_upserts(postgres_dsn, schema, rng):
    windows = random_windows(rng, BASE, DAY, per_key=2)
    first = random_epoch(rng, 0, windows=windows)
    # The next epoch re-emits a few windows under allowed lateness (update_seq 1) and, as a
    # pipeline restored from an older state would, re-sends one first emission with new values.
    updates = windows.iloc[:3].assign(update_seq=1, count=lambda w: w["count"] + 1)
    resent = windows.iloc[3:4].assign(count=1000, mean=0.5)
    second = random_epoch(rng, 1, windows=pd.concat([updates, resent]))
    sink = PostgresSink(postgres_dsn, schema=schema)
    sink.open()
    for out in (first, second):
        sink.write(out)
        sink.commit(out.epoch)
    sink.close()
    stored = read_table(postgres_dsn, schema, "windows", WINDOW_COLUMNS)
    assert len(stored) == len(windows) + 3           # updates are rows of their own
    expected = pd.concat([windows.drop(index=windows.index[3]), resent, updates])
    pd.testing.assert_frame_equal(normalized(stored), normalized(expected))
    latest = read_table(postgres_dsn, schema, "windows_latest", WINDOW_COLUMNS)
    assert len(latest) == len(windows)
    assert sorted(latest["update_seq"].tolist()) == [0] * (len(windows) - 3) + [1] * 3


def test_keys_equal_after_truncation_to_microseconds(postgres_dsn, schema, rng):
    out = random_epoch(rng, 0)
    at = BASE + 123_456_789
    out.alarms = pd.DataFrame({"device": ["d"] * 3, "channel": ["c"] * 3,
                               "timestamp": times([at, at + 200, at + 1000]),
                               "value": [1.0, 2.0, 3.0], "detector": ["zscore"] * 3,
                               "score": [5.0, 6.0, 7.0]})
    sink = PostgresSink(postgres_dsn, schema=schema)
    sink.write(out)
    sink.commit(0)
    sink.close()
    stored = read_table(postgres_dsn, schema, "alarms", ["timestamp", "value"])
    assert sorted(stored["value"]) == [2.0, 3.0]          # the later of the two same-µs alarms
    assert pd.Timestamp(stored["timestamp"].min()).value == at // 1000 * 1000


def test_day_partitions_and_retention_by_watermark(postgres_dsn, schema, rng):
    # Event time in 2001: a wall-clock rule would drop everything at once.
    start = pd.Timestamp("2001-05-01", tz="UTC").value
    sink = PostgresSink(postgres_dsn, schema=schema, retention_days=2)
    sink.open()
    outs = [random_epoch(rng, day, start_ns=start + day * DAY, span_ns=DAY)
            for day in range(4)]
    for out in outs[:2]:
        out.watermark = out.watermark - DAY // 2    # no partition old enough yet
        sink.write(out)
        sink.commit(out.epoch)
    assert partitions(postgres_dsn, schema, "windows") == ["windows_p20010501", "windows_p20010502"]
    assert partitions(postgres_dsn, schema, "alarms") == ["alarms_p20010501", "alarms_p20010502"]
    today = pd.Timestamp.now(tz="UTC").floor("D")
    assert f"dead_letters_p{today:%Y%m%d}" in partitions(postgres_dsn, schema, "dead_letters")

    # The last watermark is 2001-05-04 12:00: the horizon is 05-02 12:00, so the partitions
    # ending by then (05-01) go, 05-02 stays; late rows for 05-01 in this epoch are not stored.
    outs[3].watermark = start + 3 * DAY + DAY // 2
    outs[3].late = pd.concat([outs[3].late, outs[0].late.iloc[:3]])
    for out in outs[2:]:
        sink.write(out)
        sink.commit(out.epoch)
    sink.close()
    for table, column in [("windows", "window_start"), ("alarms", "timestamp"),
                          ("silence", "silent_since"), ("late_records", "timestamp")]:
        assert partitions(postgres_dsn, schema, table) == \
            [f"{table}_p200105{d:02d}" for d in (2, 3, 4)], table
        with psycopg.connect(postgres_dsn) as conn:
            oldest = conn.execute(f'SELECT min("{column}") FROM "{schema}".{table}').fetchone()[0]
        assert oldest >= pd.Timestamp("2001-05-02", tz="UTC")
    kept = [o.windows for o in outs[1:]]
    assert count(postgres_dsn, schema, "windows") == sum(map(len, kept))


def test_dead_letter_retention_by_wall_clock(postgres_dsn, schema, rng):
    sink = PostgresSink(postgres_dsn, schema=schema, retention_days=3)
    sink.open()
    with psycopg.connect(postgres_dsn) as conn:     # dead letters from long ago
        conn.execute(f'CREATE TABLE "{schema}".dead_letters_p20000101 PARTITION OF '
                     f'"{schema}".dead_letters FOR VALUES FROM (\'2000-01-01\') TO (\'2000-01-02\')')
        conn.execute(f'CREATE TABLE "{schema}".dead_letters_archive PARTITION OF '
                     f'"{schema}".dead_letters FOR VALUES FROM (\'1999-01-01\') TO (\'1999-01-02\')')
    sink.write(random_epoch(rng, 0))
    sink.commit(0)
    sink.close()
    names = partitions(postgres_dsn, schema, "dead_letters")
    assert "dead_letters_p20000101" not in names
    assert "dead_letters_archive" in names            # not named by the sink: left alone
    assert count(postgres_dsn, schema, "dead_letters") == 5


def test_schema_mismatch_is_a_clear_error(postgres_dsn, schema, rng):
    sink = PostgresSink(postgres_dsn, schema=schema)
    sink.open()
    first = random_epoch(rng, 0)
    sink.write(first)
    sink.commit(0)
    other = random_epoch(rng, 1)
    other.windows = other.windows.drop(columns=["max"]).assign(p99=1.0, count=1.5)
    with pytest.raises(SchemaMismatchError) as error:
        sink.write(other)
    message = str(error.value)
    assert f"{schema}.windows" in message
    assert "p99 (double precision)" in message and "max (double precision)" in message
    assert "count (table bigint, epoch double precision)" in message
    assert sink.committed_epoch() == 0
    sink.write(random_epoch(rng, 1))                  # the sink is still usable
    sink.commit(1)
    assert sink.committed_epoch() == 1
    sink.close()


@pytest.fixture
def own_server(tmp_path):
    """A server of this test's own, to restart without disturbing the others."""
    try:
        dsn, server = start_postgres(tmp_path)
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    yield dsn, server
    stop_postgres(server)


def test_server_restart_between_epochs(own_server, rng):
    dsn, server = own_server
    outs = [random_epoch(rng, e, start_ns=BASE + e * DAY) for e in range(3)]
    sink = PostgresSink(dsn)
    sink.open()
    sink.write(outs[0])
    sink.commit(0)
    restart_postgres(server)
    with pytest.raises(SinkUnavailableError):
        sink.write(outs[1])                           # the old connection is gone
    sink.write(outs[1])                               # the service retries: reconnects
    sink.commit(1)
    # Server lost between write and commit: the commit fails, the epoch is retried whole.
    sink.write(outs[2])
    restart_postgres(server, mode="immediate")
    with pytest.raises(SinkUnavailableError):
        sink.commit(2)
    assert sink.committed_epoch() == 1
    sink.write(outs[2])
    sink.commit(2)
    assert sink.committed_epoch() == 2
    sink.close()
    assert_tables_hold(dsn, "cusense", outs)


def test_unreachable_server_raises_sink_unavailable(own_server):
    dsn, server = own_server
    stop_postgres(server)
    sink = PostgresSink(dsn, connect_timeout_s=2)
    with pytest.raises(SinkUnavailableError):
        sink.open()
    with pytest.raises(SinkUnavailableError):
        sink.committed_epoch()


def test_windows_load_rate(postgres_dsn, schema, rng):
    """Prints rows/s of the windows table (write + commit) next to a bare COPY of the same
    rows into an unindexed, unpartitioned table (run with -s to see it)."""
    n_keys, per_key = 5000, 10
    def epoch_windows(epoch):
        start = BASE + epoch * per_key * SECOND
        k = np.arange(n_keys * per_key)
        w0 = start + (k // n_keys) * SECOND
        return pd.DataFrame({
            "device": np.array([f"device-{i:05d}" for i in range(n_keys)], dtype=object)[k % n_keys],
            "channel": "temp", "window_start": times(w0), "window_end": times(w0 + SECOND),
            "update_seq": 0, "count": rng.integers(1, 100, len(k)),
            **{agg: rng.normal(size=len(k)) for agg in ("mean", "min", "max", "std", "p99")},
            "nan_count": 0})
    sink = PostgresSink(postgres_dsn, schema=schema)
    sink.open()
    warm_up = random_epoch(rng, 0, windows=epoch_windows(0))     # creates table and partitions
    sink.write(warm_up)
    sink.commit(0)
    rates = []
    for epoch in (1, 2):
        out = random_epoch(rng, epoch, windows=epoch_windows(epoch))
        started = time.perf_counter()
        sink.write(out)
        sink.commit(epoch)
        rates.append(len(out.windows) / (time.perf_counter() - started))
    frame = epoch_windows(3)
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(f'CREATE TABLE "{schema}".plain (LIKE "{schema}".windows)')
        conn.commit()
        columns = [(c, t) for c, t in sink._table_columns(conn, "windows").items()]
        started = time.perf_counter()
        sink._copy(conn, psycopg.sql.Identifier(schema, "plain"), columns, frame)
        conn.commit()
        bare = len(frame) / (time.perf_counter() - started)
    sink.close()
    print(f"\nwindows: PostgresSink {max(rates):,.0f} rows/s, bare COPY {bare:,.0f} rows/s "
          f"({len(frame)} rows/epoch, {len(frame.columns)} columns)")
    assert count(postgres_dsn, schema, "windows") == 3 * len(frame)
