"""Parquet archive (layout, atomic and idempotent epochs, crash recovery, downsample-then-purge)
and the line-protocol sink (file and TCP targets)."""
import os
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from cusense.sinks import EpochOutput, LineProtocolSink, ParquetArchive, SinkUnavailableError

HOUR = 3600 * 10**9
DAY = 24 * HOUR
START = pd.Timestamp("2024-03-01T00:00:00Z").value
WINDOW = 10 * 60 * 10**9
DEVICES = np.array(["pump 1", "valve,2", "meter=3", "tank\\4", "plain"])
CHANNELS = np.array(["temp", "pressure", ""])


class SimulatedCrash(BaseException):
    """Stops a sink mid-commit the way a killed process would: no exception handler runs."""


def utc(ns):
    return pd.to_datetime(np.asarray(ns, dtype=np.int64), utc=True)


def empty(columns):
    return pd.DataFrame({c: [] for c in columns})


def make_epoch(rng, epoch, begin, end, closed_before=None, n_raw=None):
    """Random outputs of an epoch covering event times [begin, end): raw readings (a few late
    ones reach back into the previous epoch's hours), tumbling 10-minute windows with updates,
    alarms. Watermark = end; closed_before defaults to one hour before it."""
    n_raw = int(rng.integers(40, 120)) if n_raw is None else n_raw
    ts = rng.integers(begin, end, n_raw)
    ts[: n_raw // 10] -= rng.integers(0, 3 * HOUR, n_raw // 10)   # late readings
    values = rng.normal(size=n_raw)
    values[rng.random(n_raw) < 0.05] = np.nan
    raw = pd.DataFrame({"device": DEVICES[rng.integers(0, len(DEVICES), n_raw)],
                        "channel": CHANNELS[rng.integers(0, 2, n_raw)],
                        "timestamp": utc(ts), "value": values})
    n_win = int(rng.integers(10, 40))
    starts = (rng.integers(begin, end, n_win) // WINDOW) * WINDOW
    mean = rng.normal(size=n_win)
    mean[rng.random(n_win) < 0.1] = np.nan
    windows = pd.DataFrame({"device": DEVICES[rng.integers(0, len(DEVICES), n_win)],
                            "channel": CHANNELS[rng.integers(0, len(CHANNELS), n_win)],
                            "window_start": utc(starts), "window_end": utc(starts + WINDOW),
                            "update_seq": rng.integers(0, 2, n_win),
                            "count": rng.integers(0, 50, n_win), "mean": mean,
                            "nan_count": rng.integers(0, 3, n_win)})
    n_alarm = int(rng.integers(0, 5))
    alarms = pd.DataFrame({"device": DEVICES[rng.integers(0, len(DEVICES), n_alarm)],
                           "channel": CHANNELS[rng.integers(0, 2, n_alarm)],
                           "timestamp": utc(rng.integers(begin, end, n_alarm)),
                           "value": rng.normal(size=n_alarm),
                           "detector": np.array(["ewma", "knn discord"])[rng.integers(0, 2, n_alarm)],
                           "score": rng.random(n_alarm)})
    return EpochOutput(
        epoch=epoch, windows=windows, alarms=alarms,
        silence=empty(["device", "channel", "last_seen", "silent_since", "back_at", "back"]),
        late=empty(["device", "channel", "timestamp", "value"]),
        dead_letters=empty(["topic", "partition", "offset", "payload", "reason"]),
        raw=raw, status=empty(["device", "status", "since", "last_seen"]),
        watermark=end, closed_before=end - HOUR if closed_before is None else closed_before,
        source_positions={"topic": epoch})


def make_epochs(rng, n, span=9 * HOUR, start=START):
    """n consecutive epochs of ``span`` event time each (9 h: several hours and days)."""
    return [make_epoch(rng, k, start + k * span, start + (k + 1) * span) for k in range(n)]


def send(sink, out):
    sink.write(out)
    sink.commit(out.epoch)


def canonical(frame):
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def read_back(root, kind):
    """The archive as a hive-partitioned dataset, checking each row's partition."""
    frame = ds.dataset(Path(root) / kind, partitioning="hive").to_table().to_pandas()
    time = frame["timestamp" if kind == "raw" else "window_start"]
    assert (frame["date"] == time.dt.strftime("%Y-%m-%d")).all()
    assert (frame["hour"] == time.dt.hour).all()
    return canonical(frame.drop(columns=["date", "hour"]))


def expected(epochs, kind):
    return canonical(pd.concat([getattr(out, kind) for out in epochs], ignore_index=True))


def assert_archive_equals(root, epochs):
    for kind in ("raw", "windows"):
        pd.testing.assert_frame_equal(read_back(root, kind), expected(epochs, kind))


def files(root):
    """Every file under root: relative path -> (inode, mtime, size)."""
    result = {}
    for directory, _, names in os.walk(root):
        for name in names:
            stat = (Path(directory) / name).stat()
            result[str((Path(directory) / name).relative_to(root))] = (
                stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return result


def hours_present(root, kind):
    """Start (ns) of every hour directory holding data."""
    present = set()
    for path in (Path(root) / kind).glob("date=*/hour=*/epoch-*.parquet"):
        date, hour = path.parent.parent.name[5:], int(path.parent.name[5:])
        present.add(pd.Timestamp(date, tz="UTC").value + hour * HOUR)
    return present


def hours_of(epochs, kind):
    column = "timestamp" if kind == "raw" else "window_start"
    return {int(h) for out in epochs
            for h in getattr(out, kind)[column].astype("int64") // HOUR * HOUR}


# --- Parquet archive ---------------------------------------------------------------------------


def test_archive_reads_back_the_concatenated_epochs(tmp_path, rng):
    epochs = make_epochs(rng, 9)   # 81 h: four dates or more
    archive = ParquetArchive(tmp_path, raw_retention_days=None, aggregate_retention_days=None)
    archive.open()
    assert archive.committed_epoch() == -1
    for out in epochs:
        send(archive, out)
    assert archive.committed_epoch() == 8
    assert_archive_equals(tmp_path, epochs)

    layout = re.compile(r"(raw|windows)/date=\d{4}-\d\d-\d\d/hour=\d\d/epoch-\d{12}\.parquet")
    names = set(files(tmp_path)) - {"_committed.json"}
    assert names and all(layout.fullmatch(name) for name in names)
    assert len({n.split("/")[1] for n in names}) >= 4
    # Late readings put several epochs' files into one hour directory.
    assert any(len(list(d.iterdir())) > 1 for d in (tmp_path / "raw").glob("date=*/hour=*"))

    assert len(pd.read_parquet(tmp_path / "raw")) == sum(len(out.raw) for out in epochs)
    import polars as pl
    frame = pl.read_parquet(str(tmp_path / "windows" / "**" / "*.parquet"), hive_partitioning=True)
    assert frame.height == sum(len(out.windows) for out in epochs)


def test_an_epoch_adds_files_and_never_rewrites_older_ones(tmp_path, rng):
    archive = ParquetArchive(tmp_path)
    archive.open()
    epochs = make_epochs(rng, 5)
    for out in epochs:
        before = files(tmp_path)
        send(archive, out)
        after = files(tmp_path)
        for name, state in before.items():
            if name != "_committed.json":
                assert after[name] == state, name


def test_an_epoch_sent_again_changes_nothing(tmp_path, rng):
    epochs = make_epochs(rng, 5)
    archive = ParquetArchive(tmp_path)
    archive.open()
    for out in epochs:
        send(archive, out)
    snapshot = files(tmp_path)
    send(archive, epochs[4])
    send(archive, epochs[1])
    reopened = ParquetArchive(tmp_path)   # after a restart too
    reopened.open()
    assert reopened.committed_epoch() == 4
    send(reopened, epochs[4])
    assert files(tmp_path) == snapshot
    assert_archive_equals(tmp_path, epochs)


@pytest.mark.parametrize("crash", ["after_write", "mid_rename", "before_marker"])
def test_crash_then_resend_gives_the_uninterrupted_result(tmp_path, rng, monkeypatch, crash):
    epochs = make_epochs(rng, 6)
    reference = ParquetArchive(tmp_path / "reference")
    reference.open()
    for out in epochs:
        send(reference, out)

    root = tmp_path / "crashed"
    archive = ParquetArchive(root)
    archive.open()
    for out in epochs[:3]:
        send(archive, out)
    crashing = epochs[3]
    archive.write(crashing)
    if crash == "mid_rename":
        real_replace, renames = os.replace, []

        def replace_then_crash(src, dst):
            if renames:
                raise SimulatedCrash
            renames.append(dst)
            real_replace(src, dst)
        monkeypatch.setattr(os, "replace", replace_then_crash)
    elif crash == "before_marker":
        def crash_now(pending):
            raise SimulatedCrash
        monkeypatch.setattr(archive, "_write_marker", crash_now)
    if crash != "after_write":
        with pytest.raises(SimulatedCrash):
            archive.commit(crashing.epoch)
        monkeypatch.undo()
        # The epoch's files are (partly) in place under their final names, but not marked.
        assert any(n.endswith(f"epoch-{3:012d}.parquet") for n in files(root))
    del archive

    restarted = ParquetArchive(root)
    restarted.open()
    assert restarted.committed_epoch() == 2
    assert not [n for n in files(root) if n.endswith(".tmp") or f"epoch-{3:012d}" in n]
    for out in epochs[3:]:
        send(restarted, out)
    assert set(files(root)) == set(files(tmp_path / "reference"))
    assert_archive_equals(root, epochs)


def test_storage_failure_rolls_the_epoch_back_and_a_retry_succeeds(tmp_path, rng, monkeypatch):
    import cusense.sinks.parquet as parquet_module
    epochs = make_epochs(rng, 3)
    archive = ParquetArchive(tmp_path)
    archive.open()
    send(archive, epochs[0])
    real_write, calls = parquet_module.pq.write_table, []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(*args, **kwargs)
    monkeypatch.setattr(parquet_module.pq, "write_table", failing_write)
    with pytest.raises(SinkUnavailableError):
        archive.write(epochs[1])
    assert not [n for n in files(tmp_path) if n.endswith(".tmp")]
    for out in epochs[1:]:
        send(archive, out)
    assert_archive_equals(tmp_path, epochs)


def test_downsample_then_purge_keeps_aggregates_longer_than_raw(tmp_path, rng):
    epochs = make_epochs(rng, 20, span=12 * HOUR)   # 10 days of event time
    archive = ParquetArchive(tmp_path, raw_retention_days=2, aggregate_retention_days=5)
    archive.open()
    for k, out in enumerate(epochs):
        send(archive, out)
        # After every commit: exactly the hours whose end is past the cutoff are left.
        for kind, days in (("raw", 2), ("windows", 5)):
            cutoff = min(out.watermark - days * DAY, out.closed_before)
            assert hours_present(tmp_path, kind) == {
                h for h in hours_of(epochs[: k + 1], kind) if h + HOUR > cutoff}, (k, kind)
    watermark = epochs[-1].watermark
    raw_hours, window_hours = hours_present(tmp_path, "raw"), hours_present(tmp_path, "windows")
    assert min(raw_hours) + HOUR > watermark - 2 * DAY >= min(raw_hours)
    assert min(window_hours) < watermark - 4 * DAY   # downsampled history outlives raw readings
    kept = expected(epochs, "raw")
    kept = kept[kept["timestamp"].astype("int64") // HOUR * HOUR + HOUR
                > watermark - 2 * DAY].reset_index(drop=True)
    pd.testing.assert_frame_equal(read_back(tmp_path, "raw"), kept)


def test_closed_before_holds_raw_readings_back_until_their_windows_are_written(tmp_path, rng):
    # A session window opened at hour 2 of day 0 stays open for 6 days: closed_before stays there
    # while the watermark moves on, so raw readings after it must stay although retention
    # (1 day) alone would purge them.
    session_start = START + 2 * HOUR
    archive = ParquetArchive(tmp_path, raw_retention_days=1, aggregate_retention_days=1)
    archive.open()
    epochs = [make_epoch(rng, k, START + k * 12 * HOUR, START + (k + 1) * 12 * HOUR,
                         closed_before=session_start) for k in range(12)]
    for out in epochs:
        send(archive, out)
    watermark = epochs[-1].watermark
    raw = hours_present(tmp_path, "raw")
    assert raw == {h for h in hours_of(epochs, "raw") if h + HOUR > session_start}
    held_back = {h for h in raw if h + HOUR <= watermark - DAY}
    assert len(held_back) > 48   # retention alone would have purged these
    assert min(hours_present(tmp_path, "windows")) + HOUR > session_start

    # Purging waits for the commit: writing the next epoch deletes nothing.
    closing = make_epoch(rng, 12, START + 6 * DAY, START + 6 * DAY + HOUR)   # session emitted
    archive.write(closing)
    assert hours_present(tmp_path, "raw") == raw
    archive.commit(closing.epoch)
    cutoff = closing.watermark - DAY
    assert hours_present(tmp_path, "raw") == {
        h for h in hours_of(epochs + [closing], "raw") if h + HOUR > cutoff}


def test_nothing_is_purged_without_closed_before(tmp_path, rng):
    archive = ParquetArchive(tmp_path, raw_retention_days=1, aggregate_retention_days=1)
    archive.open()
    epochs = make_epochs(rng, 10, span=12 * HOUR)
    for out in epochs:
        out.closed_before = None
        send(archive, out)
    assert hours_present(tmp_path, "raw") == hours_of(epochs, "raw")
    assert archive.purge() == []


# --- line protocol ---------------------------------------------------------------------------


def unescape(text):
    return re.sub(r"\\(.)", r"\1", text)


def raw_split(text, separator):
    """Split on unescaped separators, keeping the escapes (for a second split)."""
    parts, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == separator:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    return parts + [text[start:]]


def parse_line(line):
    series, fields, timestamp = raw_split(line, " ")
    measurement, *tags = raw_split(series, ",")
    parsed_fields = {}
    for item in raw_split(fields, ","):
        key, value = raw_split(item, "=")
        value = (int(value[:-1]) if value.endswith("i") else
                 value == "true" if value in ("true", "false") else float(value))
        parsed_fields[unescape(key)] = value
    tag_set = {}
    for tag in tags:
        key, value = raw_split(tag, "=")
        tag_set[unescape(key)] = unescape(value)
    return unescape(measurement), tag_set, parsed_fields, int(timestamp)


def expected_points(frame, measurement, tags, time_column):
    points = []
    for row in frame.to_dict("records"):
        fields = {}
        for column, value in row.items():
            if column in tags or column == time_column:
                continue
            if isinstance(value, pd.Timestamp):
                value = value.value
            if not (isinstance(value, float) and np.isnan(value)):
                fields[column] = value
        points.append((measurement, {t: row[t] for t in tags if row[t] != ""}, fields,
                       row[time_column].value))
    return points


def expected_lines(epochs):
    points = []
    for out in epochs:
        points += expected_points(out.windows, "cusense_windows", ["device", "channel"],
                                  "window_start")
        points += expected_points(out.alarms, "cusense_alarms",
                                  ["device", "channel", "detector"], "timestamp")
    return points


def parse(text):
    assert text.endswith("\n")
    return [parse_line(line) for line in text.splitlines()]


def test_line_protocol_file_parses_back_to_the_windows_and_alarms(tmp_path, rng):
    epochs = make_epochs(rng, 4)
    target = tmp_path / "points.lp"
    sink = LineProtocolSink(target)
    sink.open()
    for out in epochs:
        send(sink, out)
    sink.close()
    text = target.read_text()
    assert parse(text) == expected_lines(epochs)
    assert "device=pump\\ 1" in text and "device=valve\\,2" in text and "device=meter\\=3" in text
    assert "mean=nan" not in text.lower()


def test_line_protocol_file_is_exactly_once_across_resends_and_crashes(tmp_path, rng, monkeypatch):
    epochs = make_epochs(rng, 4)
    uninterrupted = tmp_path / "uninterrupted.lp"
    sink = LineProtocolSink(uninterrupted)
    sink.open()
    for out in epochs:
        send(sink, out)

    target = tmp_path / "points.lp"
    sink = LineProtocolSink(target)
    sink.open()
    for out in epochs[:2]:
        send(sink, out)
    send(sink, epochs[1])   # sent again: skipped
    assert sink.committed_epoch() == 1

    def crash(src, dst):
        raise SimulatedCrash
    sink.write(epochs[2])
    monkeypatch.setattr(os, "replace", crash)   # lines appended, sidecar not updated
    with pytest.raises(SimulatedCrash):
        sink.commit(2)
    monkeypatch.undo()
    assert target.stat().st_size > LineProtocolSink(target)._read_sidecar()["size"]

    restarted = LineProtocolSink(target)
    restarted.open()
    assert restarted.committed_epoch() == 1
    for out in epochs[restarted.committed_epoch() + 1:]:
        send(restarted, out)
    assert target.read_bytes() == uninterrupted.read_bytes()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_line_protocol_tcp_target(rng):
    epochs = make_epochs(rng, 3)
    port = free_port()
    sink = LineProtocolSink(f"tcp://127.0.0.1:{port}")
    sink.open()
    sink.write(epochs[0])
    with pytest.raises(SinkUnavailableError):   # nobody listening yet
        sink.commit(0)
    assert sink.committed_epoch() == -1

    received = []
    with socket.create_server(("127.0.0.1", port)) as server:
        def serve():
            connection, _ = server.accept()
            with connection:
                while chunk := connection.recv(65536):
                    received.append(chunk)
        thread = threading.Thread(target=serve)
        thread.start()
        for out in epochs:   # the service retries epoch 0, then goes on
            send(sink, out)
        assert sink.committed_epoch() == 2
        sink.close()
        thread.join(timeout=10)
    assert parse(b"".join(received).decode()) == expected_lines(epochs)
