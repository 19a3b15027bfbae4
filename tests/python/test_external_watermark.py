"""External watermarks: pipelines that each hold part of the keys of one stream, fed the
stream's watermark steps, give that stream's single-pipeline output once their rows are merged
by position. The router here is written plainly (a loop per record) as the oracle of the
vectorised one in cusense.distributed."""
import numpy as np
import pytest

import cusense

KINDS = {
    "tumbling": lambda: cusense.Tumbling(50),
    "sliding": lambda: cusense.Sliding(60, 20),
    "session": lambda: cusense.Session(15),
    "rolling": lambda: cusense.Rolling(4),
}


def _stream(rng, n, keys):
    k = rng.integers(0, keys, n).astype(np.uint32)
    # Mostly increasing times with jitter: late records, out-of-order ones, ties.
    t = (np.arange(n) * 3 + rng.integers(-60, 20, n)).astype(np.int64)
    v = rng.normal(size=n)
    v[rng.random(n) < 0.05] = np.nan
    return k, t, v


def _route(keys, times, parts, ooo, state):
    """Per part: (indices of its records, positions, steps (at, watermark, position)), the
    steps being the single pipeline's watermark moves, every part getting all of them."""
    owner = cusense.partition_of(keys, parts)
    idx = [[] for _ in range(parts)]
    steps = [([], [], []) for _ in range(parts)]
    for i in range(len(keys)):
        g = state["next"]
        state["next"] += 1
        idx[owner[i]].append(i)
        if state["max"] is None or times[i] > state["max"]:
            state["max"] = int(times[i])
            for p in range(parts):
                steps[p][0].append(len(idx[p]))
                steps[p][1].append(state["max"] - ooo)
                steps[p][2].append(2 * g + 1)
        state.setdefault("pos", []).append(2 * g)
    return idx, steps


def _push_routed(pipes, kb, tb, vb, ooo, state):
    """Routes one batch as the partitioned pipeline's router does and pushes each part."""
    first = state["next"]
    idx, steps = _route(kb, tb, len(pipes), ooo, state)
    for p, pipe in enumerate(pipes):
        i = np.asarray(idx[p], dtype=np.int64)
        pipe.push(kb[i], tb[i], vb[i], positions=2 * (first + i),
                  watermark_steps=tuple(np.asarray(a, np.int64) for a in steps[p]))


def _merge(tables, sort_cols):
    frames = [t for t in tables if len(t)]
    if not frames:
        return tables[0]
    import pandas as pd
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(sort_cols, kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("lateness", [0, 30])
def test_partitions_merge_into_the_single_pipeline(kind, lateness, rng):
    if kind == "rolling" and lateness:
        pytest.skip("allowed_lateness does not apply to rolling windows")
    ooo = int(rng.integers(0, 40))
    aggs = ["count", "sum", "mean", "min", "max", "var", "first", "last"]
    if lateness == 0 and kind == "tumbling":
        aggs = ["count", "sum", "mean", "min", "max", "var", "std"]  # the sharded tumbling engine
    opts = dict(aggs=aggs, max_out_of_orderness=ooo, allowed_lateness=lateness, backend="cpu")
    parts = int(rng.integers(2, 5))
    k, t, v = _stream(rng, 3000, 40)
    single = cusense.Pipeline(KINDS[kind](), **opts)
    split = [cusense.Pipeline(KINDS[kind](), watermark="external", **opts) for _ in range(parts)]
    state = {"next": 0, "max": None}
    want, want_late, got, got_late = [], [], [[] for _ in range(parts)], [[] for _ in range(parts)]
    cuts = np.sort(rng.choice(np.arange(1, len(k)), size=12, replace=False))
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(k)]):
        kb, tb, vb = k[lo:hi], t[lo:hi], v[lo:hi]
        single.push(kb, tb, vb)
        want.append(single.poll().to_pandas(datetimes=False))
        want_late.append(single.poll_late().to_pandas(datetimes=False))
        _push_routed(split, kb, tb, vb, ooo, state)
        for p in range(parts):
            got[p].append(split[p].poll(positions=True).to_pandas(datetimes=False))
            got_late[p].append(split[p].poll_late(positions=True).to_pandas(datetimes=False))
    want.append(single.flush().to_pandas(datetimes=False))
    for p in range(parts):
        got[p].append(split[p].flush(positions=True).to_pandas(datetimes=False))
    import pandas as pd
    start = "timestamp" if kind == "rolling" else "window_start"
    merged = _merge([pd.concat(g, ignore_index=True) for g in got], ["position", start, "key"])
    expect = pd.concat(want, ignore_index=True)
    pd.testing.assert_frame_equal(merged.drop(columns="position"), expect, check_exact=True)
    merged_late = _merge([pd.concat(g, ignore_index=True) for g in got_late], ["position"])
    pd.testing.assert_frame_equal(merged_late.drop(columns="position"),
                                  pd.concat(want_late, ignore_index=True), check_exact=True)
    s1 = single.stats
    totals = {name: sum(p.stats[name] for p in split)
              for name in ("records_pushed", "records_aggregated", "records_late", "nan_values",
                           "windows_emitted")}
    assert totals == {name: s1[name] for name in totals}
    assert all(p.stats["watermark"] == s1["watermark"] for p in split)


def test_external_pushes_are_checked():
    p = cusense.Pipeline(cusense.Tumbling(10), watermark="external", backend="cpu")
    k = np.array([1, 2], np.uint32)
    t = np.array([5, 6], np.int64)
    v = np.array([1.0, 2.0])
    with pytest.raises(TypeError, match="needs positions"):
        p.push(k, t, v)
    with pytest.raises(ValueError, match="positions must increase"):
        p.push(k, t, v, positions=np.array([4, 4]), watermark_steps=([], [], []))
    with pytest.raises(ValueError, match="at = 3"):
        p.push(k, t, v, positions=np.array([2, 4]), watermark_steps=([3], [0], [5]))
    with pytest.raises(ValueError, match="between the positions"):
        p.push(k, t, v, positions=np.array([2, 4]), watermark_steps=([1], [0], [5]))
    with pytest.raises(ValueError, match="increase strictly"):
        p.push(k, t, v, positions=np.array([2, 4]), watermark_steps=([1, 2], [3, 3], [3, 5]))
    assert p.stats["records_rejected"] == 8 and p.stats["records_aggregated"] == 0
    p.push(k, t, v, positions=np.array([2, 4]), watermark_steps=([1, 2], [5, 16], [3, 5]))
    assert p.stats["watermark"] == 16
    rows = p.poll(positions=True)
    assert list(rows["key"]) == [1, 2] and list(rows["position"]) == [5, 5]
    # Steps alone move the watermark; a later record below it is late, at its position.
    p.push([], [], [], positions=np.array([], np.int64), watermark_steps=([0], [30], [7]))
    p.push([3], [12], [1.0], positions=np.array([8]), watermark_steps=([], [], []))
    late = p.poll_late(positions=True)
    assert list(late["key"]) == [3] and list(late["position"]) == [8]
    with pytest.raises(ValueError, match="watermarks must increase strictly"):
        p.push([], [], [], positions=np.array([], np.int64), watermark_steps=([0], [30], [9]))
    with pytest.raises(TypeError, match="watermark='external'"):
        cusense.Pipeline(cusense.Tumbling(10), backend="cpu").push(
            k, t, v, positions=np.array([1, 2]), watermark_steps=([], [], []))


def test_external_watermark_survives_a_checkpoint(tmp_path):
    p = cusense.Pipeline(cusense.Session(5), watermark="external", backend="cpu")
    p.push([1, 1], [0, 3], [1.0, 2.0], positions=np.array([0, 2]), watermark_steps=([1], [0], [1]))
    p.checkpoint(tmp_path / "c")
    q = cusense.Pipeline.restore(tmp_path / "c")
    assert q.watermark == "external"
    for pipe in (p, q):
        pipe.push([], [], [], positions=np.array([], np.int64), watermark_steps=([0], [20], [3]))
    a, b = p.poll(positions=True), q.poll(positions=True)
    assert list(a["position"]) == list(b["position"]) == [3]
    assert list(a["count"]) == list(b["count"]) == [2]


def _fmix32(keys):
    h = keys.astype(np.uint64)
    m = np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & m
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & m
    h ^= h >> np.uint64(16)
    return h


def test_partition_of_is_murmur3_fmix32(rng):
    keys = rng.integers(0, 2**32, 10_000, dtype=np.uint64).astype(np.uint32)
    for parts in (1, 2, 3, 7, 64):
        assert np.array_equal(cusense.partition_of(keys, parts), _fmix32(keys) % parts)
    assert list(cusense.partition_of(np.array([0, 1, 2**32 - 1], np.uint32), 5)) == \
        [int(x) % 5 for x in _fmix32(np.array([0, 1, 2**32 - 1], np.uint32))]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("before, after", [(4, 3), (2, 5), (3, 1)])
def test_rekeyed_checkpoints_continue_like_the_single_pipeline(kind, before, after, rng, tmp_path):
    import pandas as pd
    ooo = int(rng.integers(0, 40))
    lateness = 0 if kind == "rolling" else int(rng.choice([0, 30]))
    aggs = ["count", "sum", "mean", "min", "max", "var", "first", "last"]
    opts = dict(aggs=aggs, max_out_of_orderness=ooo, allowed_lateness=lateness, backend="cpu")
    if kind == "tumbling" and rng.random() < 0.5:
        opts.update(aggs=["count", "sum", "mean", "var"], allowed_lateness=0)
    k, t, v = _stream(rng, 2000, 30)
    half = int(rng.integers(500, 1500))
    single = cusense.Pipeline(KINDS[kind](), **opts)
    state = {"next": 0, "max": None}
    want, got = [], []

    def run(pipes, lo, hi):
        for a, b in zip(range(lo, hi, 250), list(range(lo + 250, hi, 250)) + [hi]):
            kb, tb, vb = k[a:b], t[a:b], v[a:b]
            single.push(kb, tb, vb)
            want.append(single.poll().to_pandas(datetimes=False))
            _push_routed(pipes, kb, tb, vb, ooo, state)
            # Rows stay in the pipelines until a poll: some cross the rekeying as held outputs.
            if rng.random() < 0.5 or b == hi:
                got.append(_merge([q.poll(positions=True).to_pandas(datetimes=False) for q in pipes],
                                  ["position", "window_start" if kind != "rolling" else "timestamp",
                                   "key"]))

    pipes = [cusense.Pipeline(KINDS[kind](), watermark="external", **opts) for _ in range(before)]
    run(pipes, 0, half)
    # Some rows stay unpolled when the checkpoints are taken.
    for i, q in enumerate(pipes):
        q.checkpoint(tmp_path / f"in{i}")
    outs = [tmp_path / f"out{i}" for i in range(after)]
    cusense.rekey_checkpoints([tmp_path / f"in{i}" for i in range(before)], outs)
    pipes = [cusense.Pipeline.restore(o) for o in outs]
    keys_now = [set() for _ in range(after)]
    run(pipes, half, len(k))
    want.append(single.flush().to_pandas(datetimes=False))
    start = "window_start" if kind != "rolling" else "timestamp"
    got.append(_merge([q.flush(positions=True).to_pandas(datetimes=False) for q in pipes],
                      ["position", start, "key"]))
    merged = pd.concat([g for g in got if len(g)], ignore_index=True).drop(columns="position")
    pd.testing.assert_frame_equal(merged, pd.concat(want, ignore_index=True), check_exact=True)
    s1 = single.stats
    for name in ("records_pushed", "records_aggregated", "records_late", "windows_emitted"):
        assert sum(q.stats[name] for q in pipes) == s1[name], name
    del keys_now


def test_rekey_refuses_checkpoints_of_different_positions(tmp_path):
    a = cusense.Pipeline(cusense.Tumbling(10), watermark="external", backend="cpu")
    b = cusense.Pipeline(cusense.Tumbling(10), watermark="external", backend="cpu")
    a.push([1], [5], [1.0], positions=np.array([0]), watermark_steps=([1], [5], [1]))
    b.push([2], [6], [1.0], positions=np.array([0]), watermark_steps=([1], [6], [1]))
    a.checkpoint(tmp_path / "a")
    b.checkpoint(tmp_path / "b")
    with pytest.raises(cusense.CheckpointError, match="different watermarks"):
        cusense.rekey_checkpoints([tmp_path / "a", tmp_path / "b"], [tmp_path / "c"])
    c = cusense.Pipeline(cusense.Tumbling(20), watermark="external", backend="cpu")
    c.checkpoint(tmp_path / "d")
    with pytest.raises(cusense.CheckpointError, match="options differ"):
        cusense.rekey_checkpoints([tmp_path / "a", tmp_path / "d"], [tmp_path / "c"])


def test_detectors_under_external_watermarks_merge_into_the_single_pipeline(rng):
    """Scores and silence events of partitions fed the stream's watermark steps are the single
    pipeline's, merged per push by (timestamp, key) and (event time, key); a score row's seq is
    its record's position (2 * arrival index here)."""
    import pandas as pd
    ooo = int(rng.integers(0, 30))
    dets = lambda: [cusense.detectors.EWMA(alpha=0.2, threshold=0.9),  # noqa: E731
                    cusense.detectors.Silence(timeout=40)]
    window = cusense.Tumbling(50) if rng.random() < 0.5 else None
    single = cusense.Pipeline(window, max_out_of_orderness=ooo, detectors=dets(), backend="cpu")
    parts = int(rng.integers(2, 4))
    split = [cusense.Pipeline(window, max_out_of_orderness=ooo, detectors=dets(), backend="cpu",
                              watermark="external") for _ in range(parts)]
    k, t, v = _stream(rng, 2500, 25)
    state = {"next": 0, "max": None}
    cuts = np.sort(rng.choice(np.arange(1, len(k)), size=10, replace=False))
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(k)]):
        kb, tb, vb = k[lo:hi], t[lo:hi], v[lo:hi]
        single.push(kb, tb, vb)
        _push_routed(split, kb, tb, vb, ooo, state)
        want = single.poll_scores().to_pandas(datetimes=False)
        got = _merge([q.poll_scores().to_pandas(datetimes=False) for q in split],
                     ["timestamp", "key"])
        got["seq"] //= 2
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        want_s = single.poll_silence().to_pandas(datetimes=False)
        got_s = [q.poll_silence().to_pandas(datetimes=False) for q in split]
        got_s = pd.concat(got_s, ignore_index=True)
        got_s["at"] = np.where(got_s["back"], got_s["back_at"], got_s["silent_since"])
        got_s = got_s.sort_values(["at", "key"], kind="stable").drop(columns="at")
        pd.testing.assert_frame_equal(got_s.reset_index(drop=True), want_s, check_exact=True)
    assert sum(q.stats["records_scored"] for q in split) == single.stats["records_scored"]
    assert sum(q.stats["records_score_late"] for q in split) == single.stats["records_score_late"]
