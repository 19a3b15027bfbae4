"""Reliability under concurrency, exhaustion and crashes: checkpoints from several threads and
pipelines to one path, temporary files left by kill -9, failed writes (disk full, read-only),
edited checkpoint options, the NaN policy in checkpoints, integer ranges of the options, and
stats read while another thread pushes."""
import errno
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib

import numpy as np
import pytest

import cusense
from cusense import _core


def _pipeline(**kw):
    return cusense.Pipeline(cusense.Tumbling(1000), aggs=["count", "sum", "p90"],
                            max_out_of_orderness=500, backend="cpu", cpu_threads=2, **kw)


def _feed(pipe, start, stop, keys=2000):
    i = np.arange(start, stop, dtype=np.int64)
    pipe.push((i % keys).astype(np.uint32), i // 10, (i % 13).astype(np.float64))


def _temporaries(directory):
    return sorted(n for n in os.listdir(directory) if ".tmp-" in n)


@pytest.fixture
def no_injected_failure():
    yield
    _core._fail_checkpoint_writes_for_testing(0)


# ----- concurrent checkpoints

def test_two_threads_checkpointing_one_pipeline(tmp_path):
    """Of overlapping checkpoints of one pipeline all but one are refused with
    ConcurrentUseError (never a file error), and the file is always a whole checkpoint. A small
    state keeps each write short, so that the threads overlap inside the writes."""
    pipe = _pipeline()
    _feed(pipe, 0, 1000, keys=50)
    path = tmp_path / "one.ckpt"
    pipe.checkpoint(path)
    outcomes = {"ok": 0, "refused": 0}
    errors = []

    def writer():
        for _ in range(300):
            try:
                pipe.checkpoint(path)
                outcomes["ok"] += 1
            except cusense.ConcurrentUseError:
                outcomes["refused"] += 1
            except Exception as e:  # noqa: BLE001 - any other error is the failure under test
                errors.append(repr(e))
            if os.path.getsize(path) == 0:
                errors.append("an empty file at the path")

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, f"{len(errors)} errors, first: {errors[0]}"
    assert outcomes["ok"] > 0 and outcomes["ok"] + outcomes["refused"] == 1200
    back = cusense.Pipeline.restore(path)
    assert back.stats["records_aggregated"] == pipe.stats["records_aggregated"]
    assert _temporaries(tmp_path) == []


def test_two_pipelines_checkpointing_one_path(tmp_path):
    """Two pipelines writing one path, and a reader restoring it meanwhile: no error, and every
    read is a whole checkpoint of one of them."""
    a, b = _pipeline(), _pipeline()
    _feed(a, 0, 3000, keys=100)
    _feed(b, 0, 2000, keys=100)
    path = tmp_path / "shared.ckpt"
    a.checkpoint(path)
    errors = []
    done = threading.Event()

    def writer(pipe):
        for _ in range(200):
            try:
                pipe.checkpoint(path)
            except Exception as e:  # noqa: BLE001
                errors.append("checkpoint: " + repr(e))

    def reader():
        while not done.is_set():
            try:
                n = cusense.Pipeline.restore(path).stats["records_pushed"]
                if n not in (3000, 2000):
                    errors.append(f"restored {n} records")
            except Exception as e:  # noqa: BLE001
                errors.append("restore: " + repr(e))

    threads = [threading.Thread(target=writer, args=(p,)) for p in (a, b)]
    r = threading.Thread(target=reader)
    r.start()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    done.set()
    r.join()
    assert not errors, f"{len(errors)} errors, first: {errors[0]}"
    assert _temporaries(tmp_path) == []


# ----- kill -9 in the middle of a write

WRITER = textwrap.dedent(r'''
    import sys
    import numpy as np
    import cusense
    pipe = cusense.Pipeline(cusense.Tumbling(10**9), aggs=["count", "p50", "p99"], backend="cpu")
    i = np.arange(400_000, dtype=np.int64)
    pipe.push((i % 200_000).astype(np.uint32), i, np.sin(i).astype(np.float64))
    print("ready", flush=True)
    while True:
        pipe.checkpoint(sys.argv[1])
''')


def test_kill_9_during_checkpoint_leaves_no_lasting_temporary_file(tmp_path):
    """A writer killed inside a checkpoint write leaves its temporary file; the next checkpoint
    or restore of that path removes it (its process is gone), and the checkpoint is whole."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    work = tmp_path / "work"
    work.mkdir()
    path = work / "state.ckpt"
    left = []
    for _ in range(20):
        child = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE)
        assert child.stdout.readline().strip() == b"ready"
        # kill it inside a write, after at least one whole checkpoint
        deadline = time.monotonic() + 30
        while not (path.exists() and _temporaries(work)) and time.monotonic() < deadline:
            pass
        child.send_signal(signal.SIGKILL)
        child.wait()
        left = _temporaries(work)
        if left and path.exists():
            break
    assert left, "the writer was never killed inside a write"
    # the killed writer's file is named after its (dead) process
    assert all(name.startswith(".state.ckpt.tmp-") for name in left)
    pipe = cusense.Pipeline.restore(path)  # a whole checkpoint, and the leftovers are gone
    assert _temporaries(work) == []
    # and a checkpoint cleans up as well
    (work / left[0]).write_bytes(b"partial")
    pipe.checkpoint(path)
    assert _temporaries(work) == []


# ----- failed writes

@pytest.mark.parametrize("code, after", [(errno.ENOSPC, 1000), (errno.ENOSPC, 0), (errno.EROFS, 10)])
def test_failed_write_names_path_and_cause_and_keeps_the_previous_checkpoint(
        tmp_path, no_injected_failure, code, after):
    pipe = _pipeline()
    _feed(pipe, 0, 5000)
    path = tmp_path / "full.ckpt"
    pipe.checkpoint(path)
    before = path.read_bytes()
    _feed(pipe, 5000, 9000)
    _core._fail_checkpoint_writes_for_testing(code, after)
    with pytest.raises(cusense.CheckpointError) as err:
        pipe.checkpoint(path)
    assert str(path) in str(err.value) and os.strerror(code) in str(err.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["full.ckpt"]
    _core._fail_checkpoint_writes_for_testing(0)
    _feed(pipe, 9000, 12000)  # still usable
    pipe.checkpoint(path)
    back = cusense.Pipeline.restore(path)
    assert len(back.flush()) == len(pipe.flush())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(tmp_path):
    pipe = _pipeline()
    _feed(pipe, 0, 1000)
    path = tmp_path / "ro" / "x.ckpt"
    path.parent.mkdir()
    pipe.checkpoint(path)
    before = path.read_bytes()
    path.parent.chmod(0o555)
    try:
        with pytest.raises(cusense.CheckpointError, match="Permission denied") as err:
            pipe.checkpoint(path)
        assert str(path) in str(err.value)
    finally:
        path.parent.chmod(0o755)
    assert path.read_bytes() == before
    _feed(pipe, 1000, 2000)


# ----- options in checkpoints

def _reframe(data: bytes, payload: bytes) -> bytes:
    head = data[:16] + struct.pack("<Q", len(payload)) + payload
    return head + struct.pack("<I", zlib.crc32(head))


@pytest.mark.parametrize("field, at, value", [
    ("window size", 16, 0),
    ("window size", 16, -10**9),
    ("window offset", 24, 2**62),
])
def test_edited_options_are_refused(tmp_path, field, at, value):
    """A checkpoint whose options were edited (checksum recomputed) to values the constructor
    refuses is refused with CheckpointError naming the option."""
    pipe = _pipeline()
    _feed(pipe, 0, 3000)
    path = tmp_path / "good.ckpt"
    pipe.checkpoint(path)
    data = path.read_bytes()
    payload = bytearray(data[24:-4])
    assert payload[:15] == struct.pack("<Q", 7) + b"options"
    payload[at:at + 8] = struct.pack("<q", value)
    bad = tmp_path / "edited.ckpt"
    bad.write_bytes(_reframe(data, bytes(payload)))
    with pytest.raises(cusense.CheckpointError, match=field):
        cusense.Pipeline.restore(bad)


def test_nan_policy_is_checkpointed(tmp_path):
    pipe = _pipeline(nan_policy="raise")
    _feed(pipe, 0, 100)
    nan_batch = ([1, 2], [50, 51], [1.0, np.nan])
    with pytest.raises(ValueError, match="NaN at index 1"):
        pipe.push(*nan_batch)
    pipe.checkpoint(tmp_path / "raise.ckpt")
    back = cusense.Pipeline.restore(tmp_path / "raise.ckpt")
    with pytest.raises(ValueError, match="NaN at index 1"):
        back.push(*nan_batch)
    assert back.stats["records_rejected"] == 4
    with pytest.raises(ValueError, match="nan_policy"):
        cusense.Pipeline.restore(tmp_path / "raise.ckpt", nan_policy="skip")
    skip = _pipeline()
    skip.checkpoint(tmp_path / "skip.ckpt")
    cusense.Pipeline.restore(tmp_path / "skip.ckpt").push(*nan_batch)


# ----- integer ranges

@pytest.mark.parametrize("make, name", [
    (lambda: cusense.Tumbling(2**63), "window size"),
    (lambda: cusense.Tumbling(2**62), "window size"),
    (lambda: cusense.Tumbling(1000, offset=2**63), "window offset"),
    (lambda: cusense.Sliding(2**63, 1000), "window size"),
    (lambda: cusense.Session(2**64), "session gap"),
    (lambda: cusense.Rolling(2**40), "rolling window n"),
    (lambda: _pipeline(channels=2**31), "channels"),
    (lambda: _pipeline(channels=10**4), "channels"),
    (lambda: cusense.Pipeline(cusense.Tumbling(10), max_open_windows=2**64), "max_open_windows"),
    (lambda: cusense.Pipeline(cusense.Tumbling(10), max_out_of_orderness=2**63), "max_out_of_orderness"),
    (lambda: cusense.Pipeline(cusense.Tumbling(10), allowed_lateness=2**70), "allowed_lateness"),
    (lambda: cusense.Pipeline(cusense.Tumbling(10), staging_records=2**64), "staging_records"),
])
def test_integers_out_of_range_name_the_parameter(make, name):
    with pytest.raises(ValueError, match=name) as err:
        make()
    assert "incompatible function arguments" not in str(err.value)


@pytest.mark.parametrize("threads", [10**6, 4096, 257, -5, -1])
def test_cpu_threads_out_of_range(threads):
    with pytest.raises(ValueError, match=r"cpu_threads must lie in \[0, 256\] \(0 = automatic\)"):
        cusense.Pipeline(cusense.Tumbling(10), backend="cpu", cpu_threads=threads)


def test_cpu_threads_in_range():
    for threads in (0, 1, 256):
        pipe = cusense.Pipeline(cusense.Tumbling(10), backend="cpu", cpu_threads=threads)
        pipe.push([1], [5], [1.0])
        assert pipe.flush()["count"].tolist() == [1]
    with pytest.raises(TypeError, match="cpu_threads"):
        cusense.Pipeline(cusense.Tumbling(10), cpu_threads=2.5)


# ----- stats while another thread pushes

def test_stats_readable_while_another_thread_pushes(backend):
    pipe = cusense.Pipeline(cusense.Tumbling(1000), aggs=["count"], backend=backend)
    n = 200_000
    errors = []
    done = threading.Event()

    def pusher():
        for b in range(40):
            i = np.arange(b * n, (b + 1) * n, dtype=np.int64)
            try:
                pipe.push((i % 500).astype(np.uint32), i // 4, np.ones(n))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
        done.set()

    th = threading.Thread(target=pusher)
    th.start()
    reads, last = 0, 0
    try:
        while not done.is_set():
            s = pipe.stats  # never ConcurrentUseError
            assert s["records_pushed"] == s["records_aggregated"] + s["records_late"] + s["records_rejected"]
            assert s["records_pushed"] >= last
            last = s["records_pushed"]
            reads += 1
    finally:
        th.join()
    assert not errors, errors[0]
    assert reads > 0
    assert pipe.stats["records_pushed"] == 40 * n
