"""Checkpoint and restore: a run checkpointed at random points and resumed gives exactly the
output of an uninterrupted run (every window type, detectors); a process killed with SIGKILL at
random points and restarted from its last checkpoint emits exactly the output of an
uninterrupted run; damaged checkpoint files are rejected with clear errors."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import cusense
from cusense import detectors as det


def _stream(seed, n=3000, channels=1):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 8, n).astype(np.uint32)
    keys[: n // 3][::7] = 9  # key 9 falls silent after the first third
    ts = 1000 + np.arange(n, dtype=np.int64) * 3 - rng.integers(0, 60, n)
    ts[rng.random(n) < 0.04] -= 250  # late records
    vals = rng.normal(10, 3, (n, channels))
    vals[rng.random((n, channels)) < 0.03] = np.nan
    vals[rng.random((n, channels)) < 0.01] += 60
    return keys, ts, vals[:, 0] if channels == 1 else vals


CONFIGS = {
    "tumbling": dict(window=cusense.Tumbling(100, 7), channels=2),
    "tumbling_lateness_quantiles": dict(window=cusense.Tumbling(100),
                                        aggs=["count", "mean", "first", "last", "p50", "p90"],
                                        allowed_lateness=50),
    "sliding": dict(window=cusense.Sliding(100, 25), aggs=["count", "sum", "std", "argmin_ts", "p99"]),
    "session": dict(window=cusense.Session(12), aggs=["count", "mean", "first", "last", "p50"],
                    allowed_lateness=30),
    "rolling": dict(window=cusense.Rolling(5, 2), aggs=["count", "mean", "first", "last", "p50"]),
    "detectors": dict(detectors=[det.EWMA(0.1), det.RollingZ(10), det.RollingMAD(10),
                                 det.KnnDiscord(L=3, H=40, min_candidates=5, H2=20, K=5),
                                 det.Silence(60)]),
    "tumbling_detectors": dict(window=cusense.Tumbling(50), channels=2,
                               detectors=[det.EWMA(0.2, channel=1), det.Silence(80)]),
}


def _make(name, backend="cpu"):
    kw = dict(CONFIGS[name])
    return cusense.Pipeline(kw.pop("window", None), max_out_of_orderness=30, backend=backend, **kw)


def _has(name, silence):
    ds = CONFIGS[name].get("detectors", [])
    return any(isinstance(d, det.Silence) == silence for d in ds)


def _run(name, keys, ts, vals, cuts, restore_at=(), tmp_path=None, backend="cpu"):
    pipe = _make(name, backend)
    out = {"windows": [], "late": [], "scores": [], "silence": []}

    def poll():
        if pipe.window is not None:
            out["windows"].append(pipe.poll())
            out["late"].append(pipe.poll_late())
        if _has(name, silence=False):
            out["scores"].append(pipe.poll_scores())
        if _has(name, silence=True):
            out["silence"].append(pipe.poll_silence())

    for b, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
        if b in restore_at:
            path = tmp_path / f"{name}-{b}.ckpt"
            pipe.checkpoint(path)
            pipe = cusense.Pipeline.restore(path, backend=backend)
        pipe.push(keys[lo:hi], ts[lo:hi], vals[lo:hi])
        if b % 3 == 2:
            poll()
    if pipe.window is not None:
        out["windows"].append(pipe.flush())
    else:
        pipe.flush()
    poll()
    stats = pipe.stats
    stats.pop("state_bytes", None)
    return {k: cusense.Result.concat(v) for k, v in out.items() if v}, stats


def _assert_equal(got, want):
    assert got[1] == want[1]
    assert got[0].keys() == want[0].keys()
    for k in want[0]:
        g, w = got[0][k], want[0][k]
        assert g.columns == w.columns, k
        assert len(g) == len(w), k
        for c in w.columns:
            np.testing.assert_array_equal(g[c], w[c], err_msg=f"{k}.{c}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_restore_at_random_points_equals_uninterrupted_run(name, tmp_path):
    channels = CONFIGS[name].get("channels", 1)
    for seed in (1, 2):
        keys, ts, vals = _stream(seed, channels=channels)
        rng = random.Random(seed)
        cuts = [0]
        while cuts[-1] < len(keys):
            cuts.append(min(len(keys), cuts[-1] + rng.randint(1, 60)))
        want = _run(name, keys, ts, vals, cuts)
        points = {rng.randrange(len(cuts) - 1) for _ in range(4)} | {0}
        got = _run(name, keys, ts, vals, cuts, restore_at=points, tmp_path=tmp_path)
        _assert_equal(got, want)
        if CONFIGS[name].get("window") is not None:
            assert len(want[0]["late"]) > 0 and len(want[0]["windows"]) > 0


def test_restore_keeps_options_and_backend_choice(tmp_path):
    pipe = _make("sliding")
    keys, ts, vals = _stream(3, n=200)
    pipe.push(keys, ts, vals)
    pipe.checkpoint(tmp_path / "s.ckpt")
    back = cusense.Pipeline.restore(str(tmp_path / "s.ckpt"), backend="cpu")
    assert back.window == cusense.Sliding(100, 25)
    assert back.aggs == ["count", "sum", "std", "argmin_ts", "p99"]
    assert back.backend == "cpu"
    assert back.stats["records_pushed"] == 200


@pytest.mark.skipif(not cusense.cuda_available(), reason="needs a CUDA device")
def test_cross_backend(tmp_path):
    keys, ts, vals = _stream(4, channels=2)
    cuts = list(range(0, len(keys), 97)) + [len(keys)]
    want = _run("tumbling_detectors", keys, ts, vals, cuts, backend="cpu")
    pipe = _make("tumbling_detectors", "cuda")
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if lo == cuts[10]:
            pipe.checkpoint(tmp_path / "g.ckpt")
            pipe = cusense.Pipeline.restore(tmp_path / "g.ckpt", backend="cpu")
        elif lo == cuts[20]:
            pipe.checkpoint(tmp_path / "c.ckpt")
            pipe = cusense.Pipeline.restore(tmp_path / "c.ckpt", backend="cuda")
            assert pipe.backend == "cuda"
        pipe.push(keys[lo:hi], ts[lo:hi], vals[lo:hi])
    got = pipe.flush()
    assert len(got) > 0 and want[1]["records_pushed"] == pipe.stats["records_pushed"]


# ----- damaged files


@pytest.fixture
def good_checkpoint(tmp_path):
    pipe = _make("tumbling_detectors")
    keys, ts, vals = _stream(5, n=500, channels=2)
    pipe.push(keys, ts, vals)
    path = tmp_path / "good.ckpt"
    pipe.checkpoint(path)
    return path, path.read_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"", "empty"),
    (lambda b: b[:-7], "truncated"),
    (lambda b: b[:12], "truncated"),
    (lambda b: b[:100] + bytes([b[100] ^ 0x40]) + b[101:], "checksum"),
    (lambda b: b[:8] + bytes([250]) + b[9:], "version 250"),  # a version from the future
    (lambda b: b"NOTACKPT" + b[8:], "not a cusense checkpoint"),
])
def test_damaged_checkpoints_are_rejected(good_checkpoint, tmp_path, damage, message):
    _, data = good_checkpoint
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(damage(data))
    with pytest.raises(ValueError, match=message) as err:
        cusense.Pipeline.restore(bad)
    assert isinstance(err.value, cusense.CheckpointError)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        cusense.Pipeline.restore(tmp_path / "nothing.ckpt")


def test_failed_checkpoint_leaves_the_previous_one(good_checkpoint, tmp_path):
    path, data = good_checkpoint
    pipe = cusense.Pipeline.restore(path)
    with pytest.raises(ValueError, match="cannot"):
        pipe.checkpoint(tmp_path / "missing-dir" / "x.ckpt")
    # a writer killed mid-write leaves at most a partial temporary file beside the checkpoint
    (tmp_path / ".good.ckpt.tmp-999").write_bytes(data[: len(data) // 2])
    assert path.read_bytes() == data
    cusense.Pipeline.restore(path)


# ----- kill -9 and resume

CHILD = textwrap.dedent(r'''
    import json, os, sys
    import numpy as np
    import cusense
    from cusense import detectors as det

    workdir, kind = sys.argv[1], sys.argv[2]
    BATCHES, SIZE, EVERY = 240, 400, 7
    meta_path = os.path.join(workdir, "meta.json")
    out_path = os.path.join(workdir, "out.txt")

    def batch(b):
        rng = np.random.default_rng(1000 + b)
        keys = rng.integers(0, 50, SIZE).astype(np.uint32)
        if b > BATCHES // 2:
            keys[keys == 7] = 8  # key 7 falls silent
        ts = (b * SIZE + np.arange(SIZE, dtype=np.int64)) * 10 - rng.integers(0, 400, SIZE)
        ts[rng.random(SIZE) < 0.02] -= 5000  # late records
        vals = rng.normal(0, 1, SIZE)
        vals[rng.random(SIZE) < 0.01] = np.nan
        return keys, ts, vals

    def make():
        dets = [det.EWMA(0.1), det.Silence(3000)]
        if kind == "sliding":
            return cusense.Pipeline(cusense.Sliding(2000, 500), aggs=["count", "mean", "max", "p90", "last"],
                                    max_out_of_orderness=300, allowed_lateness=1000, detectors=dets)
        if kind == "session":
            return cusense.Pipeline(cusense.Session(300), aggs=["count", "sum", "first"],
                                    max_out_of_orderness=300, detectors=dets)
        return cusense.Pipeline(cusense.Tumbling(1000), max_out_of_orderness=300, detectors=dets)

    def lines(tag, res):
        d = res.to_dict()
        cols = list(d)
        return [tag + " " + " ".join(repr(d[c][i].item()) for c in cols) + "\n" for i in range(len(res))]

    def fsync_replace(path, text):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    # Resume: the meta file (replaced atomically after the checkpoint it names) is the commit
    # point; output written after that checkpoint is cut off and produced again.
    if os.path.exists(meta_path):
        meta = json.load(open(meta_path))
        pipe = cusense.Pipeline.restore(os.path.join(workdir, meta["ckpt"]))
        start, length = meta["next_batch"], meta["out_bytes"]
    else:
        pipe, start, length = make(), 0, 0
    out = open(out_path, "a+b")
    out.truncate(length)
    out.seek(length)

    for b in range(start, BATCHES):
        if b > start and b % EVERY == 0:
            name = f"state-{b}.ckpt"
            pipe.checkpoint(os.path.join(workdir, name))
            old = json.load(open(meta_path))["ckpt"] if os.path.exists(meta_path) else None
            fsync_replace(meta_path, json.dumps({"ckpt": name, "next_batch": b, "out_bytes": out.tell()}))
            if old and old != name:
                os.remove(os.path.join(workdir, old))
        pipe.push(*batch(b))
        text = lines("W", pipe.poll()) + lines("L", pipe.poll_late()) + \
            lines("S", pipe.poll_scores()) + lines("Q", pipe.poll_silence())
        out.write("".join(text).encode())
        out.flush()
        os.fsync(out.fileno())
    text = lines("W", pipe.flush()) + lines("L", pipe.poll_late()) + \
        lines("S", pipe.poll_scores()) + lines("Q", pipe.poll_silence())
    st = pipe.stats
    st.pop("state_bytes")
    text.append("STATS " + json.dumps(st, sort_keys=True) + "\n")
    out.write("".join(text).encode())
    out.flush()
    os.fsync(out.fileno())
    open(os.path.join(workdir, "done"), "w").close()
''')


def _child(script, workdir, kind):
    return subprocess.Popen([sys.executable, str(script), str(workdir), kind],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("kind", ["tumbling", "sliding", "session"])
def test_kill_and_resume_emits_exactly_the_uninterrupted_output(tmp_path, kind):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ref = tmp_path / "ref"
    ref.mkdir()
    p = _child(script, ref, kind)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
    expected = (ref / "out.txt").read_bytes()
    assert expected.count(b"\nW ") > 100 and b"\nL " in expected and b"\nQ " in expected

    rng = random.Random(kind)
    work = tmp_path / "work"
    work.mkdir()
    kills = 0
    for _ in range(40):
        p = _child(script, work, kind)
        if kills < 5:
            # Once the run has written a random share of the output beyond where it resumed
            # (progress, not time: a loaded machine must not let a run finish first).
            out = work / "out.txt"
            start = out.stat().st_size if out.exists() else 0
            target = start + rng.uniform(0.02, 0.25) * len(expected)
            while p.poll() is None and (out.stat().st_size if out.exists() else 0) < target:
                time.sleep(0.005)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
        _, err = p.communicate(timeout=120)
        if p.returncode == -signal.SIGKILL:
            continue
        assert p.returncode == 0, err.decode()
        if (work / "done").exists():
            break
    assert (work / "done").exists()
    assert kills >= 2, "the child finished before it could be killed"
    got = (work / "out.txt").read_bytes()
    assert got == expected
    assert json.loads(got.rsplit(b"STATS ", 1)[1]) == json.loads(expected.rsplit(b"STATS ", 1)[1])
