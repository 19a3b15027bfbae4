"""Bounded detector memory from Python: the key cap (max_detector_keys), the memory budget
(memory_budget_bytes), key expiry (key_ttl), the caps on detector parameters, and a
detector push that runs out of memory (address space capped in a child process)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import cusense
from cusense import detectors as D

MS = 10**6
EPOCH = 1_790_000_000 * 10**9


def _fleet(rng, keys=200, span_ms=20_000, life_ms=3_000):
    """Keys come and go: key k reports every ~15 ms from k * span/keys for life_ms; some pauses."""
    rows = []
    for k in range(keys):
        start = k * span_ms // keys
        t = np.arange(start, start + life_ms, 15)
        t = t + rng.integers(0, 10, len(t))
        pause = rng.random(len(t)) < 0.02
        t = t + np.cumsum(pause) * 400
        rows.append(np.stack([np.full(len(t), 1000 + k), t]))
    kt = np.concatenate(rows, axis=1)
    arrival = kt[1] + rng.integers(0, 40, kt.shape[1])
    order = np.argsort(arrival, kind="stable")
    keys_, ts = kt[0][order].astype(np.uint32), (EPOCH + kt[1][order] * MS).astype(np.int64)
    values = rng.normal(20, 1, len(ts))
    values[rng.random(len(ts)) < 0.01] += 15
    return keys_, ts, values


def _run(pipe, keys, ts, values, cuts):
    frames, silences = [], []
    begin = 0
    for end in list(cuts) + [len(keys)]:
        if end > begin:
            pipe.push(keys[begin:end], ts[begin:end], values[begin:end])
        frames.append(pipe.poll_scores().to_pandas(datetimes=False))
        if pipe.detectors and any(isinstance(d, D.Silence) for d in pipe.detectors):
            silences.append(pipe.poll_silence().to_pandas(datetimes=False))
        begin = end
    scores = pd.concat(frames).sort_values("seq").reset_index(drop=True)
    silence = pd.concat(silences).sort_values(
        ["silent_since", "key", "back"]).reset_index(drop=True) if silences else None
    return scores, silence


def test_options_are_exposed_and_checkpointed(tmp_path):
    pipe = cusense.Pipeline(None, detectors=[D.EWMA(), D.Silence("1s")], max_detector_keys=100,
                            memory_budget_bytes=10**7, key_ttl="5s")
    assert (pipe.max_detector_keys, pipe.memory_budget_bytes, pipe.key_ttl) == (100, 10**7, 5 * 10**9)
    pipe.checkpoint(tmp_path / "p.ckpt")
    back = cusense.Pipeline.restore(tmp_path / "p.ckpt")
    assert (back.max_detector_keys, back.memory_budget_bytes, back.key_ttl) == (100, 10**7, 5 * 10**9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_detector_keys=-1), "max_detector_keys"),
    (dict(max_detector_keys=2**64), "max_detector_keys"),
    (dict(memory_budget_bytes=2**64), "memory_budget_bytes"),
    (dict(memory_budget_bytes=1.5), "memory_budget_bytes"),
    (dict(key_ttl=-1), "key_ttl"),
    (dict(key_ttl=2**63), "key_ttl"),
    (dict(key_ttl="1min"), "at least the silence timeout"),
])
def test_options_out_of_range_name_the_option(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match) as err:
        cusense.Pipeline(None, detectors=[D.EWMA(), D.Silence("10min")], **kwargs)
    assert "incompatible function arguments" not in str(err.value)


def test_detector_options_need_detectors():
    with pytest.raises(ValueError, match="max_detector_keys applies to detectors"):
        cusense.Pipeline(cusense.Tumbling("1s"), max_detector_keys=10)
    with pytest.raises(ValueError, match="key_ttl applies to detectors"):
        cusense.Pipeline(cusense.Tumbling("1s"), key_ttl="1h")
    # the budget applies to windows alone too
    cusense.Pipeline(cusense.Tumbling("1s"), memory_budget_bytes=10**6)


@pytest.mark.parametrize("make, match", [
    (lambda: D.KnnDiscord(H=2**24), r"H must lie in \[1, 1048576\]"),
    (lambda: D.KnnDiscord(L=2000), r"L must lie in \[1, 1024\]"),
    (lambda: D.KnnDiscord(K=2**21), "K must lie in"),
    (lambda: D.RollingZ(window=2**21), "window must lie in"),
    (lambda: D.MultiScaleZ(min_count=2**21), "min_count must lie in"),
])
def test_detector_sizes_are_capped(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_key_cap_rejects_the_batch_whole_and_stays_usable():
    pipe = cusense.Pipeline(None, detectors=[D.MultiScaleZ()], max_detector_keys=3,
                            max_out_of_orderness="10ms")
    pipe.push([1, 2, 3], [0, MS, 2 * MS], [1.0, 2.0, 3.0])
    before = pipe.stats
    with pytest.raises(cusense.CapacityError, match=r"max_detector_keys \(3\) would be exceeded.*1 new keys"):
        pipe.push([1, 4], [3 * MS, 4 * MS], [1.0, 1.0])
    after = pipe.stats
    assert after["records_rejected"] == before["records_rejected"] + 2
    assert {k: v for k, v in after.items() if k not in ("records_rejected", "records_pushed")} == \
        {k: v for k, v in before.items() if k not in ("records_rejected", "records_pushed")}
    pipe.push([1, 2], [3 * MS, 4 * MS], [1.0, 1.0])   # known keys go on
    assert pipe.stats["open_keys"] == 3


def test_memory_budget_bounds_the_state():
    rng = np.random.default_rng(5)
    keys, ts, values = _fleet(rng)
    budget = 300_000
    pipe = cusense.Pipeline(cusense.Session("50ms"), aggs=["count", "mean"], detectors=[D.KnnDiscord(H=200)],
                            max_out_of_orderness="100ms", memory_budget_bytes=budget, backend="cpu")
    refused = 0
    for begin in range(0, len(keys), 500):
        try:
            pipe.push(keys[begin:begin + 500], ts[begin:begin + 500], values[begin:begin + 500])
        except cusense.CapacityError as e:
            assert "memory_budget_bytes (300000) would be exceeded" in str(e)
            refused += 1
        assert pipe.stats["state_bytes"] <= budget
        pipe.poll()
        pipe.poll_scores()
    assert refused > 0
    s = pipe.stats
    assert s["records_pushed"] == s["records_aggregated"] + s["records_late"] + s["records_rejected"]


def test_key_ttl_scores_do_not_depend_on_batching_and_state_stays_bounded():
    rng = np.random.default_rng(3)
    keys, ts, values = _fleet(rng)
    make = lambda: cusense.Pipeline(None, detectors=[D.MultiScaleZ(min_count=5), D.Silence("200ms")],  # noqa: E731
                                    max_out_of_orderness="50ms", key_ttl="500ms", backend="cpu")
    whole, silence_whole = _run(make(), keys, ts, values, [])
    cuts = np.sort(rng.choice(len(keys), 300, replace=False))
    parts, silence_parts = _run(make(), keys, ts, values, cuts)
    assert whole.equals(parts)
    assert silence_whole.equals(silence_parts)
    # no comeback after a gap longer than the ttl; comebacks after shorter silences remain
    assert silence_whole["back"].any()
    # bounded: about a tenth of the 200 keys are active at a time
    pipe = make()
    most = 0
    for begin in range(0, len(keys), 1000):
        pipe.push(keys[begin:begin + 1000], ts[begin:begin + 1000], values[begin:begin + 1000])
        most = max(most, pipe.stats["open_keys"])
    assert 0 < most < 60
    forever = cusense.Pipeline(None, detectors=[D.MultiScaleZ(min_count=5)], max_out_of_orderness="50ms")
    forever.push(keys, ts, values)
    assert forever.stats["open_keys"] == 200


def test_a_key_back_after_the_ttl_starts_afresh():
    pipe = cusense.Pipeline(None, detectors=[D.EWMA(alpha=0.5), D.Silence("1s")], key_ttl="10s")
    pipe.push([7] * 4, [0, 10**9, 2 * 10**9, 3 * 10**9], [1.0, 1.0, 1.0, 1.0])
    pipe.push([8], [20 * 10**9], [0.0])  # the watermark passes 3s + 10s: key 7 expires
    assert pipe.stats["open_keys"] == 1
    pipe.push([7, 7], [21 * 10**9, 22 * 10**9], [50.0, 50.0])
    pipe.flush()
    s = pipe.poll_scores().to_pandas()
    # 50 after four 1.0s would score ~1; as a new key's first record it scores 0
    assert s.loc[(s["key"] == 7) & (s["value"] == 50.0), "score_ewma"].tolist() == [0.0, 0.0]
    events = pipe.poll_silence().to_pandas(datetimes=False)
    assert events.loc[events["key"] == 7, "back"].tolist() == [False]  # silent, no comeback


_OOM_CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np
    import cusense
    from cusense import detectors as D

    # 24 MiB of state per key: H, H2 and K at their caps.
    det = D.KnnDiscord(H=2**20, H2=2**20, K=2**20, min_candidates=50)
    pipe = cusense.Pipeline(None, detectors=[det, D.Silence("1s")], backend="cpu")
    pipe.push(np.arange(2, dtype=np.uint32), np.arange(2, dtype=np.int64), np.ones(2))
    before = pipe.stats
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, hard))
    keys = np.arange(100, 140, dtype=np.uint32)           # 40 new keys: about 1.6 GB
    try:
        pipe.push(keys, np.arange(10, 50, dtype=np.int64), np.ones(40))
    except MemoryError as e:
        print("MemoryError:", type(e).__name__, e)
    else:
        print("no error")
        sys.exit(2)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    after = pipe.stats
    assert after["records_rejected"] == 40, after
    same = lambda s: {k: v for k, v in s.items() if k not in ("records_pushed", "records_rejected")}
    assert same(after) == same(before), (before, after)
    pipe.push(keys[:2], np.arange(10, 12, dtype=np.int64), np.ones(2))
    pipe.flush()
    assert len(pipe.poll_scores()) == 4
    print("usable")
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses RLIMIT_AS and /proc")
def test_detector_push_out_of_memory_is_rejected_whole(tmp_path):
    """Detector state that cannot be allocated (address space capped in a child process) raises
    OutOfMemoryError before anything changed: stats as before, the batch rejected."""
    script = tmp_path / "oom_child.py"
    script.write_text(_OOM_CHILD)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MemoryError: OutOfMemoryError out of host memory while pushing a batch of 40 records; " \
           "the batch was rejected and the pipeline is unchanged" in r.stdout, r.stdout
    assert "usable" in r.stdout


def test_service_pipeline_takes_the_caps(tmp_path):
    from service_harness import service_config

    from cusense.service import ConfigError, load_config
    from cusense.service.service import build_pipeline

    cfg = service_config(tmp_path, dsn="host=127.0.0.1", schema="s", mqtt_port=1883)
    cfg["pipeline"].update(max_detector_keys=50, memory_budget_bytes=10**7)
    pipe = build_pipeline(load_config(cfg).pipeline)
    assert (pipe.max_detector_keys, pipe.memory_budget_bytes) == (50, 10**7)
    for cap in ("max_detector_keys", "memory_budget_bytes"):
        cfg = service_config(tmp_path, dsn="host=127.0.0.1", schema="s", mqtt_port=1883)
        cfg["pipeline"].update({"workers": 2, cap: 10})
        with pytest.raises(ConfigError, match=f"pipeline.{cap} is not supported with pipeline.workers >= 2"):
            load_config(cfg)
