"""cusense.distributed: the partitioned pipeline on a local Ray cluster (ray.init with 2 CPUs,
started by a module fixture and shut down after the module) gives exactly the single pipeline's
results: every window type, lateness and detectors, on random streams (fresh seeds) cut into
random batches; checkpoints restore onto the same or another number of partitions; workers
killed (ray.kill, SIGKILL of the worker process) at random moments lose and double nothing."""
import os
import shutil
import signal
import tempfile

import numpy as np
import pytest

import cusense
from cusense import detectors as det

ray = pytest.importorskip("ray", reason="cusense.distributed needs Ray (pip install 'cusense[ray]')")

import cusense.distributed as cd  # noqa: E402
from cusense.distributed import _plan  # noqa: E402
from streams import random_cuts  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    """One local Ray cluster for the module (2 CPUs; the workers reserve none), stopped after,
    its session files in a temporary directory removed with it."""
    if ray.is_initialized():
        ray.shutdown()
    temp = tempfile.mkdtemp(prefix="cs-ray-")  # short: Ray's socket paths must fit 107 bytes
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False, _temp_dir=temp)
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


# -- the partition hash and the routing plan (no Ray work) ------------------------------------

def _fmix32_reference(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def test_partition_of_is_fmix32_mod_n(rng):
    keys = np.concatenate([rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32),
                           np.array([0, 1, 2, 2**31, 2**32 - 1], np.uint32)])
    for n in (1, 2, 3, 7, 64, 1000):
        expected = [_fmix32_reference(int(k)) % n for k in keys]
        assert cd.partition_of(keys, n).tolist() == expected
    # The library's own (C++) partition_of, which rekey_checkpoints splits state by.
    if hasattr(cusense, "partition_of"):
        for n in (1, 2, 5, 1000, 2**31):
            assert np.array_equal(cd.partition_of(keys, n), cusense.partition_of(keys, n)), n
    # Known values of MurmurHash3's finalizer.
    assert cd.fmix32(np.array([0, 1], np.uint32)).tolist() == [0, 0x514E28B7]
    assert cd.partition_of([5, 6], 4).dtype == np.uint32
    with pytest.raises(ValueError):
        cd.partition_of([-1], 2)
    with pytest.raises(ValueError):
        cd.partition_of([1], 0)


def test_plan_matches_a_record_by_record_router(rng):
    n, parts, ooo = 500, 3, 7
    ts = rng.integers(0, 400, n).astype(np.int64)
    part_of = rng.integers(0, parts, n).astype(np.uint32)
    first, prev_max = 1000, 150
    plan = _plan.plan_batch(part_of, ts, first, prev_max, ooo, parts, None, None)
    # Reference: one record at a time.
    m, steps = prev_max, []
    for i in range(n):
        if ts[i] > m:
            m = int(ts[i])
            steps.append((i, m - ooo, 2 * (first + i) + 1))
    assert plan.new_max == m and plan.steps == len(steps)
    for p in range(parts):
        part = plan.parts[p]
        mine = [i for i in range(n) if part_of[i] == p]
        assert part.index.tolist() == mine
        assert part.positions.tolist() == [2 * (first + i) for i in mine]
        assert part.at.tolist() == [sum(1 for j in mine if j <= i) for i, _, _ in steps]
        assert part.watermark.tolist() == [w for _, w, _ in steps]
        assert part.step_position.tolist() == [q for _, _, q in steps]


def test_plan_thins_steps_to_window_boundaries():
    ts = np.array([5, 9, 10, 12, 19, 20, 35], np.int64)
    plan = _plan.plan_batch(np.zeros(7, np.uint32), ts, 0, None, 0, 1, [(10, 0)], None)
    # Steps at 5 (first), 10, 20, 35 cross a multiple of 10; 9, 12, 19 do not.
    assert plan.parts[0].watermark.tolist() == [5, 10, 20, 35]
    plan = _plan.plan_batch(np.zeros(2, np.uint32), np.array([36, 41]), 7, 35, 0, 1, [(10, 0)], 35)
    assert plan.parts[0].watermark.tolist() == [41]


# -- the single pipeline as oracle -------------------------------------------------------------

def _stream(rng, n, keys=200, channels=1, late_share=0.04):
    k = rng.integers(0, keys, n).astype(np.uint32)
    ts = 10_000 + np.arange(n, dtype=np.int64) * 3 - rng.integers(0, 90, n)
    ts[rng.random(n) < late_share] -= int(rng.integers(100, 600))
    vals = rng.normal(10, 3, (n, channels))
    vals[rng.random((n, channels)) < 0.02] = np.nan
    vals[rng.random((n, channels)) < 0.01] += 60
    return k, ts, (vals[:, 0] if channels == 1 else vals)


CONFIGS = {
    "tumbling": dict(window=cusense.Tumbling(100, 7), channels=2,
                     aggs=["count", "sum", "mean", "min", "max", "std", "first", "last"]),
    "tumbling_lateness": dict(window=cusense.Tumbling(100), allowed_lateness=80,
                              aggs=["count", "mean", "argmax_ts", "p50", "p90"]),
    "sliding": dict(window=cusense.Sliding(100, 25), aggs=["count", "sum", "std", "argmin_ts", "p99"]),
    "sliding_lateness": dict(window=cusense.Sliding(60, 40, 5), allowed_lateness=50,
                             aggs=["count", "mean", "last"]),
    "session": dict(window=cusense.Session(40), aggs=["count", "mean", "first", "last", "p50"],
                    allowed_lateness=30),
    "rolling": dict(window=cusense.Rolling(5, 2), aggs=["count", "mean", "first", "last", "p50"]),
    "detectors": dict(detectors=[det.EWMA(0.1), det.RollingZ(10), det.RollingMAD(10),
                                 det.KnnDiscord(L=3, H=40, min_candidates=5, H2=20, K=5),
                                 det.Silence(400)]),
    "tumbling_detectors": dict(window=cusense.Tumbling(50), channels=2,
                               detectors=[det.EWMA(0.2, channel=1), det.Silence(300)]),
}
WINDOWED = [c for c in CONFIGS if "window" in CONFIGS[c]]


def _single(name):
    kw = dict(CONFIGS[name])
    return cusense.Pipeline(kw.pop("window", None), max_out_of_orderness=40, backend="cpu", **kw)


def _distributed(name, partitions, **extra):
    kw = dict(CONFIGS[name])
    return cd.Pipeline(kw.pop("window", None), max_out_of_orderness=40, backend="cpu",
                       partitions=partitions, cpu_threads=1, **kw, **extra)


def _kinds(name):
    ds = CONFIGS[name].get("detectors", [])
    kinds = ["windows", "late"] if "window" in CONFIGS[name] else []
    if any(not isinstance(d, det.Silence) for d in ds):
        kinds.append("scores")
    if any(isinstance(d, det.Silence) for d in ds):
        kinds.append("silence")
    return kinds


def _poll(pipe, kind):
    return {"windows": pipe.poll, "late": pipe.poll_late, "scores": pipe.poll_scores,
            "silence": pipe.poll_silence}[kind]()


def assert_same(got, want, what=""):
    """Bit-identical tables: the same columns in the same order, the same rows in the same
    order, floats compared by their bits."""
    assert got.columns == want.columns, what
    assert len(got) == len(want), f"{what}: {len(got)} rows, expected {len(want)}"
    for c in want.columns:
        a, b = got[c], want[c]
        assert a.dtype == b.dtype, (what, c)
        if a.dtype.kind == "f":
            a, b = a.view(np.uint64 if a.itemsize == 8 else np.uint32), b.view(
                np.uint64 if b.itemsize == 8 else np.uint32)
        if not np.array_equal(a, b):
            bad = int(np.flatnonzero(a != b)[0])
            raise AssertionError(f"{what}: column {c!r} differs first at row {bad}: "
                                 f"{got[c][bad]!r} != {want[c][bad]!r}")


COUNTERS = ("records_pushed", "records_aggregated", "records_late", "records_rejected",
            "nan_values", "windows_emitted", "open_windows", "records_scored",
            "records_score_late", "records_score_buffered", "open_keys", "watermark")


def _compare_run(name, dist, single, k, ts, v, cuts, rng, events=None, tmp_path=None):
    """Pushes the stream cut at `cuts` into both, polling every kind at random moments and
    comparing each poll; `events(b, dist)` may act on the distributed pipeline before batch b
    (kill a worker, checkpoint and restore) and returns it."""
    kinds = _kinds(name)
    for b, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
        if events is not None:
            dist = events(b, dist)
        single.push(k[lo:hi], ts[lo:hi], v[lo:hi], time_unit="ns")
        dist.push(k[lo:hi], ts[lo:hi], v[lo:hi], time_unit="ns")
        if rng.random() < 0.3:
            for kind in kinds:
                assert_same(_poll(dist, kind), _poll(single, kind), f"{kind} after batch {b}")
    if "windows" in kinds:
        assert_same(dist.flush(), single.flush(), "flush")
    else:
        dist.flush()
        single.flush()
    for kind in kinds:
        assert_same(_poll(dist, kind), _poll(single, kind), f"{kind} at the end")
    got, want = dist.stats, single.stats
    for c in COUNTERS:
        assert got[c] == want[c], (c, got[c], want[c])
    return dist


@pytest.mark.parametrize("name", list(CONFIGS))
def test_equals_the_single_pipeline(name, rng):
    partitions = int(rng.integers(2, 4))
    k, ts, v = _stream(rng, 4000, keys=int(rng.choice([5, 300])),
                       channels=2 if CONFIGS[name].get("channels") == 2 else 1)
    cuts = random_cuts(rng, len(k), 700)
    with _distributed(name, partitions) as dist:
        _compare_run(name, dist, _single(name), k, ts, v, cuts, rng)


# -- faults ------------------------------------------------------------------------------------

def _kill(dist, p, how, settle=True):
    # Settling waits for the pushes in flight (an earlier kill is noticed); without it the
    # worker dies while it may be working on a push.
    pids = dist.worker_pids() if settle or how == "sigkill" else None
    if how == "ray.kill":
        ray.kill(dist.workers()[p], no_restart=True)
    else:
        os.kill(pids[p], signal.SIGKILL)


@pytest.mark.parametrize("how", ["ray.kill", "sigkill"])
@pytest.mark.parametrize("name", ["session", "tumbling_detectors"])
def test_killed_workers_lose_nothing(name, how, rng, tmp_path):
    k, ts, v = _stream(rng, 3000, keys=50, channels=2 if CONFIGS[name].get("channels") == 2 else 1)
    cuts = random_cuts(rng, len(k), 300)
    nb = len(cuts) - 1
    kills = set(rng.choice(np.arange(1, nb), size=min(3, nb - 1), replace=False).tolist())
    cut_at = int(rng.integers(1, nb))
    log = []

    def events(b, dist):
        if b == cut_at:
            dist.checkpoint(tmp_path / "ckpt")
            log.append(("checkpoint", b))
        if b in kills:
            p = int(rng.integers(0, dist.partitions))
            settle = bool(rng.random() < 0.5)
            _kill(dist, p, how, settle)
            log.append(("kill", b, p, settle))
        return dist

    with _distributed(name, 3) as dist:
        _compare_run(name, dist, _single(name), k, ts, v, cuts, rng, events)
        assert dist.recoveries >= 1, log


def test_replay_log_is_bounded(rng, tmp_path):
    k, ts, v = _stream(rng, 2000, keys=20)
    ts = np.sort(ts)
    with _distributed("tumbling_lateness", 2, max_replay_bytes=20_000) as dist:
        dist.push(k[:500], ts[:500], v[:500], time_unit="ns")  # 14 kB: fits
        with pytest.raises(cd.ReplayLogFullError, match="checkpoint"):
            dist.push(k[500:1000], ts[500:1000], v[500:1000], time_unit="ns")
        assert dist.stats["records_pushed"] == 500  # refused whole, nothing routed
        dist.checkpoint(tmp_path / "c")
        dist.push(k[500:1000], ts[500:1000], v[500:1000], time_unit="ns")
    # With checkpoint_dir the pipeline checkpoints by itself, and recovers from there.
    single = _single("tumbling_lateness")
    with _distributed("tumbling_lateness", 2, max_replay_bytes=20_000,
                      checkpoint_dir=tmp_path / "auto") as dist:
        for a in range(0, 2000, 400):
            dist.push(k[a:a + 400], ts[a:a + 400], v[a:a + 400], time_unit="ns")
            single.push(k[a:a + 400], ts[a:a + 400], v[a:a + 400], time_unit="ns")
        assert (tmp_path / "auto" / "manifest.json").exists()
        ray.kill(dist.workers()[1], no_restart=True)
        assert_same(dist.poll(), single.poll(), "poll")
        assert_same(dist.flush(), single.flush(), "flush")
        assert_same(dist.poll_late(), single.poll_late(), "late")
        assert dist.recoveries == 1


# -- checkpoints -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tumbling_lateness", "session", "rolling", "detectors",
                                  "tumbling_detectors"])
def test_checkpoint_and_restore_on_the_same_partitions(name, rng, tmp_path):
    k, ts, v = _stream(rng, 3000, keys=40, channels=2 if CONFIGS[name].get("channels") == 2 else 1)
    cuts = random_cuts(rng, len(k), 500)
    restore_at = int(rng.integers(1, len(cuts) - 1))

    def events(b, dist):
        if b == restore_at:
            dist.checkpoint(tmp_path / "ckpt")
            dist.close()
            return cd.Pipeline.restore(tmp_path / "ckpt", backend="cpu")
        return dist

    dist = _compare_run(name, _distributed(name, 2), _single(name), k, ts, v, cuts, rng, events)
    dist.close()


@pytest.mark.parametrize("name", ["tumbling_lateness", "sliding", "session", "rolling"])
@pytest.mark.parametrize("before, after", [(4, 3), (2, 5)])
def test_restore_onto_another_number_of_partitions(name, before, after, rng, tmp_path):
    k, ts, v = _stream(rng, 3000, keys=60)
    cuts = random_cuts(rng, len(k), 500)
    restore_at = int(rng.integers(1, len(cuts) - 2))
    kill_at = int(rng.integers(restore_at + 1, len(cuts) - 1))  # recovers from the rekeyed state

    def events(b, dist):
        if b == restore_at:
            dist.checkpoint(tmp_path / "ckpt")
            dist.close()
            restored = cd.Pipeline.restore(tmp_path / "ckpt", backend="cpu", partitions=after)
            assert restored.partitions == after
            return restored
        if b == kill_at:
            _kill(dist, int(rng.integers(0, after)), "ray.kill", settle=bool(rng.random() < 0.5))
        return dist

    dist = _compare_run(name, _distributed(name, before), _single(name), k, ts, v, cuts, rng, events)
    dist.close()


def test_docs_example_runs(tmp_path):
    """The first example of docs/distributed.md, connected to this module's cluster."""
    import re
    import subprocess
    import sys
    root = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
    with open(os.path.join(root, "docs", "distributed.md"), encoding="utf-8") as f:
        code = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)[0]
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address,
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(cusense.__file__)), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "window_start" in proc.stdout and (tmp_path / "state.d" / "manifest.json").exists()


def test_checkpoint_directory_is_replaced_atomically(rng, tmp_path):
    k, ts, v = _stream(rng, 600, keys=10, channels=2)
    ts = np.sort(ts)
    path = tmp_path / "ckpt"
    with _distributed("tumbling", 2) as dist:
        dist.push(k[:300], ts[:300], v[:300], time_unit="ns")
        dist.checkpoint(path)
        first = sorted(os.listdir(path))
        dist.push(k[300:], ts[300:], v[300:], time_unit="ns")
        dist.checkpoint(path)
        second = sorted(os.listdir(path))
    # One manifest, the files of the last cut only (the earlier cut's were removed after the
    # manifest was replaced).
    assert len(first) == len(second) == 4 and "manifest.json" in second
    assert not set(first) & set(second) - {"manifest.json"}
    # A corrupted partition file is refused by name.
    part = next(n for n in second if n.endswith(".ckpt"))
    with open(path / part, "r+b") as f:
        f.seek(40)
        f.write(b"\xff")
    with pytest.raises(cusense.CheckpointError, match="corrupted"):
        cd.Pipeline.restore(path)
    with pytest.raises(FileNotFoundError):
        cd.Pipeline.restore(tmp_path / "nothing")


# -- the API -----------------------------------------------------------------------------------

def test_refused_batches_change_nothing(rng):
    with _distributed("tumbling", 2, nan_policy="raise") as dist:
        k, ts, v = _stream(rng, 100, channels=2)
        v = np.nan_to_num(v)
        dist.push(k, ts, v, time_unit="ns")
        bad = v.copy()
        bad[7, 1] = np.nan
        with pytest.raises(ValueError, match="NaN at index 7"):
            dist.push(k, ts, bad, time_unit="ns")
        with pytest.raises(ValueError, match="out of range"):
            dist.push(k[:2], np.array([0, 2**62 + 1]), v[:2], time_unit="ns")
        with pytest.raises(ValueError, match="length mismatch"):
            dist.push(k[:3], ts[:2], v[:2], time_unit="ns")
        s = dist.stats
        assert s["records_pushed"] == 100 + 100 + 2 + 3 and s["records_rejected"] == 105
        assert s["records_aggregated"] + s["records_late"] == 100
    with pytest.raises(ValueError, match="max_open_windows"):
        cd.Pipeline(cusense.Tumbling(10), max_open_windows=5)
    with pytest.raises(ValueError, match="window size"):
        cd.Pipeline(cusense.Tumbling(0))


def test_detector_state_is_not_rescaled_yet(tmp_path):
    with _distributed("tumbling_detectors", 2) as dist:
        dist.push([1, 2, 3], [10, 20, 30], np.ones((3, 2)), time_unit="ns")
        dist.checkpoint(tmp_path / "c")
    with pytest.raises(NotImplementedError, match="detector state"):
        cd.Pipeline.restore(tmp_path / "c", partitions=3)


def test_cuda_backend_needs_gpus_in_the_cluster():
    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray cluster has GPUs")
    with pytest.raises(cusense.BackendUnavailableError, match="no GPU"):
        cd.Pipeline(cusense.Tumbling(10), backend="cuda")
