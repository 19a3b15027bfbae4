"""Bounded resources and failure behaviour: the open-window cap, memory exhaustion during a
push, and pushing from several Python threads at once."""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import cusense


def _stream(rng, n, num_keys, t0=0, step=3):
    keys = rng.integers(0, num_keys, n).astype(np.uint32)
    ts = (t0 + np.arange(n) * step - rng.integers(0, 40, n)).astype(np.int64)
    late = rng.random(n) < 0.03
    ts[late] -= 4000
    values = rng.normal(0, 1, n)
    values[rng.random(n) < 0.05] = np.nan
    return keys, ts, values


def _pipe(backend, cap=0, **kw):
    return cusense.Pipeline(cusense.Tumbling(100), aggs=["count", "sum", "min", "max", "var"],
                            max_out_of_orderness=30, backend=backend, max_open_windows=cap, **kw)


def _frame(result):
    return result.to_pandas().reset_index(drop=True)


def test_capacity_error_is_a_memory_error_and_a_runtime_error():
    assert issubclass(cusense.CapacityError, MemoryError)
    assert issubclass(cusense.CapacityError, RuntimeError)
    assert issubclass(cusense.ConcurrentUseError, RuntimeError)
    with pytest.raises(ValueError, match="max_open_windows"):
        _pipe("cpu", cap=-1)


def test_open_window_cap_rejects_the_batch_and_stays_usable(backend):
    pipe = _pipe(backend, cap=4)
    pipe.push([0, 1, 2], [10, 20, 30], [1.0, 2.0, 3.0])
    with pytest.raises(cusense.CapacityError, match=r"max_open_windows = 4 would be exceeded: "
                       r"3 \(key, window\) states are open and the batch of 3 records opens 2 more"):
        pipe.push([3, 4, 3], [40, 50, 60], [1.0, 1.0, 1.0])
    with pytest.raises(MemoryError):  # the same error, caught as MemoryError
        pipe.push([5, 6], [40, 50], [1.0, 1.0])
    s = pipe.stats
    assert s["records_rejected"] == 5 and s["records_aggregated"] == 3 and s["open_windows"] == 3
    pipe.push([3, 3], [40, 50], [4.0, 5.0])  # fits: 4 open
    out = _frame(pipe.flush())
    assert out["key"].tolist() == [0, 1, 2, 3]
    assert out["count"].tolist() == [1, 1, 1, 2]
    s = pipe.stats
    assert s["records_pushed"] == s["records_aggregated"] + s["records_late"] + s["records_rejected"]
    assert s["open_windows"] == 0


def test_capped_run_equals_uncapped_run_without_the_rejected_batches(backend, rng):
    batches, t = [], 0
    for _ in range(30):
        n = int(rng.integers(1, 300))
        batches.append(_stream(rng, n, int(rng.integers(1, 40)), t0=t, step=int(rng.integers(1, 5))))
        t += 2 * n
    for cap in (15, 40, 80):
        capped, accepted, rejected, parts = _pipe(backend, cap), [], 0, []
        for b in batches:
            try:
                capped.push(*b)
                accepted.append(b)
            except cusense.CapacityError:
                rejected += len(b[0])
                assert capped.stats["open_windows"] <= cap
            parts.append(capped.poll())
        parts.append(capped.flush())
        assert rejected > 0, f"cap {cap} never reached"
        plain, want = _pipe(backend), []
        for b in accepted:
            plain.push(*b)
            want.append(plain.poll())
        want.append(plain.flush())
        got, exp = cusense.Result.concat(parts).to_pandas(), cusense.Result.concat(want).to_pandas()
        exact = ["key", "window_start", "count", "nan_count", "min", "max"]
        assert len(got) == len(exp)
        for c in exact:
            np.testing.assert_array_equal(got[c].to_numpy(), exp[c].to_numpy(), err_msg=c)
        for c in ("sum", "var"):
            np.testing.assert_allclose(got[c].to_numpy(), exp[c].to_numpy(), rtol=1e-12, atol=1e-12,
                                       err_msg=c)
        np.testing.assert_array_equal(capped.poll_late()["timestamp"], plain.poll_late()["timestamp"])
        assert capped.stats["records_rejected"] == rejected
        assert capped.stats["records_aggregated"] == plain.stats["records_aggregated"]


def test_a_large_batch_works(backend):
    n = 4_000_000
    keys = (np.arange(n) % 5000).astype(np.uint32)
    ts = np.arange(n, dtype=np.int64) * 10
    pipe = cusense.Pipeline(cusense.Tumbling(10_000_000), aggs=["count", "mean"], backend=backend)
    pipe.push(keys, ts, np.ones(n, dtype=np.float32))
    out = pipe.flush()
    assert len(out) == 4 * 5000
    assert int(out["count"].sum()) == n and pipe.stats["records_aggregated"] == n


_OOM_CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np
    import cusense

    n = 12_000_000
    keys = (np.arange(n) % 1_000_000).astype(np.uint32)
    ts = np.arange(n, dtype=np.int64)
    values = np.ones(n)
    later = ts + 100
    pipe = cusense.Pipeline(cusense.Tumbling(1000), aggs=["count", "sum"], backend="cpu",
                            cpu_threads=1)
    pipe.push(keys[:10], ts[:10], values[:10])
    pipe.poll()
    # Leave far less address space than the push needs for its working memory.
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + 48 * 2**20, hard))
    try:
        pipe.push(keys, later, values)
    except MemoryError as e:
        print("MemoryError:", type(e).__name__, e)
    else:
        print("no error")
        sys.exit(2)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    s = pipe.stats
    assert s["records_rejected"] == n, s
    assert s["records_aggregated"] == 10 and s["open_windows"] == 10, s
    pipe.push(keys[:1000], ts[:1000] + 5000, values[:1000])
    out = pipe.flush()
    assert int(out["count"].sum()) == 1010, out
    s = pipe.stats
    assert s["records_pushed"] == s["records_aggregated"] + s["records_late"] + s["records_rejected"]
    print("usable")
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses RLIMIT_AS and /proc")
def test_memory_exhaustion_during_push_raises_memory_error_and_stays_usable(tmp_path):
    """A push that runs out of memory (address space capped in a child process) raises
    MemoryError (cusense.OutOfMemoryError), rejects the batch whole and leaves the pipeline
    usable with every earlier record intact."""
    script = tmp_path / "oom_child.py"
    script.write_text(_OOM_CHILD)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MemoryError: OutOfMemoryError out of host memory while pushing a batch of 12000000" \
        in r.stdout, r.stdout
    assert "usable" in r.stdout


def test_pushing_from_several_threads_is_refused_cleanly(backend):
    """A pipeline is not thread-safe: a call made while another thread is inside one raises
    ConcurrentUseError and changes nothing; the totals match the successful pushes exactly."""
    pipe = cusense.Pipeline(cusense.Tumbling(1000), aggs=["count", "sum"], backend=backend)
    n_big = 1_500_000
    big = (np.arange(n_big, dtype=np.uint32) % 101, np.arange(n_big, dtype=np.int64),
           np.ones(n_big))
    ok = [0] * 4
    refused = [0] * 4
    errors = []
    started = threading.Event()
    done = threading.Event()

    def big_pusher():
        started.set()
        for _ in range(3):
            try:
                pipe.push(*big)
                ok[0] += n_big
            except cusense.ConcurrentUseError:
                refused[0] += 1
        done.set()

    def small_pusher(i):
        started.wait()
        k = np.full(10, i, dtype=np.uint32)
        t = np.zeros(10, dtype=np.int64)
        v = np.full(10, 2.0)
        while not done.is_set():
            try:
                pipe.push(k, t, v)
                ok[i] += 10
            except cusense.ConcurrentUseError as e:
                refused[i] += 1
                if "another thread" not in str(e):
                    errors.append(str(e))

    threads = [threading.Thread(target=big_pusher)]
    threads += [threading.Thread(target=small_pusher, args=(i,)) for i in (1, 2, 3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert sum(refused) > 0, "no concurrent call was detected"
    out = pipe.flush()
    s = pipe.stats
    assert s["records_pushed"] == sum(ok)
    assert s["records_rejected"] == 0
    assert s["records_pushed"] == s["records_aggregated"] + s["records_late"]
    assert int(out["count"].sum()) == s["records_aggregated"]
    # Serialised use from several threads is fine.
    lock = threading.Lock()

    def serial(i):
        for _ in range(20):
            with lock:
                pipe.push(np.full(5, i, dtype=np.uint32), np.full(5, 10**7, dtype=np.int64), np.ones(5))

    threads = [threading.Thread(target=serial, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert int(pipe.flush()["count"].sum()) == 4 * 20 * 5


def test_sliding_fan_out_bounds_the_rows_a_record_emits():
    """Each record lies in at most 4096 sliding windows, so a push emits at most 4096 rows per
    record of its own: Sliding(65536, 1) (13 million rows for 200 records) is refused up front."""
    with pytest.raises(ValueError, match="ratio too large: each record would lie in 65536 windows"):
        cusense.Pipeline(cusense.Sliding(65536, 1), backend="cpu")
    p = cusense.Pipeline(cusense.Sliding(4096, 1), aggs=["count"], backend="cpu")
    p.push(np.zeros(200, np.uint32), np.arange(200, dtype=np.int64), np.ones(200))
    p.push([0], [10**6], [1.0])
    rows = len(p.poll())
    assert 0 < rows <= 4096 * 201
