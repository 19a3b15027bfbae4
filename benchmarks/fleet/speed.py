#!/usr/bin/env python3
"""Detector speed on one CPU core: cusense beside a numpy reference and River, same stream.

    python benchmarks/fleet/speed.py --out benchmarks/results/fleet    # --keys 10000 --ticks 200

The stream: ``--keys`` sensors, one reading each per tick, all keys interleaved in time order
(a fleet at 1 Hz). Measured (records per second, wall clock, one process):

* cusense ``MultiScaleZ()`` (the default), ``EWMA`` and ``JointZ`` (3 channels)
  streamed through a detectors-only ``Pipeline`` in pushes of 10,000 records (below the engine's
  threading threshold, so one core scores), polling the scores after every push;
* ``numpy``: the same MultiScaleZ recurrence vectorised across keys, one tick at a time (the
  best case for numpy: the stream is regular, every key has one record per tick);
* River 0.26 ``anomaly.GaussianScorer`` (one model per key, ``score_one`` then ``learn_one``
  per record, on a prefix of the stream) and ``anomaly.HalfSpaceTrees`` (the same on one model
  and 5,000 records: building one model per key takes about 10 ms each).

``KnnDiscord`` needs thousands of records per key to reach its steady cost, and
``AnomalyLikelihood`` scores nothing in its first 300 records per key; the fleet benchmark
(``evaluate.py``) reports every detector's records/s on its longer stream (2,160 readings per
key). Writes
``speed.json`` / ``speed.md`` (machine and commit) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "nab"))


def make_stream(keys: int, ticks: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000 * 10**9
    k = np.tile(np.arange(keys, dtype=np.uint32), ticks)
    ts = t0 + np.repeat(np.arange(ticks, dtype=np.int64), keys) * 10**9
    phase = rng.uniform(0, 2 * np.pi, keys)
    x = (np.sin(np.arange(ticks)[:, None] * 2 * np.pi / 3600 + phase) * 3
         + rng.normal(size=(ticks, keys))).ravel()
    return k, ts, x


def time_pipeline(det, k, ts, x, channels=None, batch=10_000) -> float:
    import cusense

    pipe = cusense.Pipeline(detectors=[det], max_out_of_orderness=0, backend="cpu", channels=channels)
    t0 = time.perf_counter()
    for i in range(0, len(ts), batch):
        pipe.push(k[i:i + batch], ts[i:i + batch], x[i:i + batch], time_unit="ns")
        pipe.poll_scores()
    pipe.flush()
    pipe.poll_scores()
    return len(ts) / (time.perf_counter() - t0)


def numpy_multiscale(X: np.ndarray, alpha=0.05, trend=0.01, beta=0.3, gamma=0.01, clip=4.0,
                     min_count=30, K=500) -> np.ndarray:
    """MultiScaleZ across keys: X is (ticks, keys); returns the scores (ticks, keys)."""
    from reference_detectors import z_to_score  # noqa: F401  (same mapping, scalar)
    import math

    T, S = X.shape
    out = np.zeros((T, S))
    lvl = X[0].copy()
    slope = np.zeros(S); v = np.zeros(S)
    a = np.zeros((2, S)); w = np.zeros((2, S))
    betas = np.array([beta, beta / 3])[:, None]
    cur = np.full(S, -1.0); prev = np.full(S, -1.0)
    erfc = np.vectorize(math.erfc, otypes=[float])
    for c in range(1, T):
        pred = lvl + slope
        e = X[c] - pred
        an = (1 - betas) * a + betas * e
        if c >= min_count:
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.maximum(np.abs(e) / np.sqrt(v), (np.abs(an) / np.sqrt(w)).max(axis=0))
            z = np.nan_to_num(z, nan=0.0, posinf=1e6)
            nu = max(1.0, (min(c, 2 / gamma) - 1) / 2)
            z = np.sqrt((nu - 2 / 3 + 0.1 / nu) * np.log1p(z * z / nu))
            u = np.minimum(z / math.sqrt(2), 25)
            lp = -np.log10(erfc(u))
            s = lp / (1 + lp)
            sv, sw = clip * np.sqrt(v), clip * np.sqrt(w)
            ec, anc = np.clip(e, -sv, sv), np.clip(an, -sw, sw)
        else:
            s = np.zeros(S)
            ec, anc = e, an
        if c % K == 0:
            prev, cur = cur, np.full(S, -1.0)
        out[c] = np.where((s > cur) & (s > prev), s, 0.0)
        cur = np.maximum(cur, s)
        ra, g, rt = max(alpha, 1 / c), max(gamma, 1 / c), max(trend, 1 / c)
        new = pred + ra * ec
        slope = slope + rt * (new - lvl - slope)
        lvl = new
        v = (1 - g) * v + g * ec * ec
        a = (1 - betas) * a + betas * ec
        w = (1 - g) * w + g * anc * anc
    return out


def time_river(model_factory, k, x, n, target: bool = False) -> float:
    """River models keyed by sensor; ``target``: the model scores a target y (GaussianScorer)."""
    models = {}
    t0 = time.perf_counter()
    for key, val in zip(k[:n].tolist(), x[:n].tolist()):
        m = models.get(key)
        if m is None:
            m = models[key] = model_factory()
        if target:
            m.score_one(None, val)
            m.learn_one(None, val)
        else:
            rec = {"x": val}
            m.score_one(rec)
            m.learn_one(rec)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--river-records", type=int, default=50_000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import cusense
    from cusense import detectors as D

    k, ts, x = make_stream(args.keys, args.ticks)
    n = len(ts)
    res = {}
    print(f"stream: {args.keys} keys x {args.ticks} ticks = {n:,} records, interleaved", flush=True)
    for name, det in [("cusense MultiScaleZ() (default)", D.default()), ("cusense EWMA", D.EWMA())]:
        res[name] = time_pipeline(det, k, ts, x)
        print(f"{name:40s} {res[name] / 1e6:7.3f} M records/s", flush=True)
    X3 = np.stack([x, np.roll(x, 1), np.roll(x, 2)], axis=1)
    res["cusense JointZ() (3 channels)"] = time_pipeline(D.JointZ(), k, ts, X3, channels=3)
    print(f"{'cusense JointZ() (3 channels)':40s} {res['cusense JointZ() (3 channels)'] / 1e6:7.3f} M records/s")
    t0 = time.perf_counter()
    ref = numpy_multiscale(x.reshape(args.ticks, args.keys))
    res["numpy MultiScaleZ (vectorised over keys)"] = n / (time.perf_counter() - t0)
    got = cusense.detectors.score(ts, x, keys=k, detector=D.default(), backend="cpu").reshape(args.ticks, args.keys)
    diff = float(np.abs(got - ref).max())
    print(f"{'numpy MultiScaleZ (vectorised over keys)':40s} "
          f"{res['numpy MultiScaleZ (vectorised over keys)'] / 1e6:7.3f} M records/s (max |diff| vs cusense {diff:.1e})")
    try:
        from river import anomaly
    except ImportError:
        anomaly = None
    if anomaly is not None:
        m = min(n, args.river_records)
        res["River GaussianScorer (per key)"] = time_river(anomaly.GaussianScorer, k, x, m, target=True)
        # one HalfSpaceTrees model per key costs ~10 ms to build; time one model on one series
        hst = min(m, 5_000)
        res["River HalfSpaceTrees (one model)"] = time_river(lambda: anomaly.HalfSpaceTrees(seed=1),
                                                             np.zeros(hst, dtype=np.uint32), x, hst)
        for name in ("River GaussianScorer (per key)", "River HalfSpaceTrees (one model)"):
            print(f"{name:40s} {res[name] / 1e6:7.3f} M records/s", flush=True)
    if args.out:
        from evaluate import run_info  # benchmarks/nab/evaluate.py

        args.out.mkdir(parents=True, exist_ok=True)
        run = run_info("cpu")
        doc = {"stream": {"keys": args.keys, "ticks": args.ticks, "records": n},
               "records_per_s": res, "numpy_vs_cusense_max_abs_diff": diff, "run": run}
        (args.out / "speed.json").write_text(json.dumps(doc, indent=1))
        lines = ["| detector | M records/s |", "|---|---:|"]
        lines += [f"| {name} | {v / 1e6:.3f} |" for name, v in res.items()]
        lines.append(f"\n{args.keys} keys x {args.ticks} ticks, interleaved; one core; run {run['date_utc']}, "
                     f"commit {str(run['commit'])[:12]}, {run['machine']['cpu']} "
                     f"({run['machine']['logical_cpus']} logical CPUs).")
        (args.out / "speed.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
