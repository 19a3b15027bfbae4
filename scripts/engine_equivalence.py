#!/usr/bin/env python3
"""Compares two builds of cusense on random streams of every window kind, bit for bit: the rows and
late records of every poll, the stats after every push (state_bytes aside), the errors of
refused batches, and the checkpoint bytes (format version and CRC aside).

Used before an engine rewrite replaces the old code: build the old and the new `_core`, put
each in its own copy of the package, then

    python scripts/engine_equivalence.py OLD_PYTHONPATH NEW_PYTHONPATH --seeds 0 1000

Streams vary the window (tumbling, sliding, session, rolling; allowed lateness), keys (1 to 20,000, dense or sparse), sizes, offsets, disorder up to several
windows, jumps, channels, float32/float64, NaNs, aggregations, threads, max_open_windows
(refusals and roll-backs), random batch cuts, a checkpoint and sometimes a flush mid-stream.
"""
import argparse
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np


def run(seed):
    import cusense
    rng = np.random.default_rng(seed)
    nkeys = int(rng.choice([1, 3, 50, 1000, 20000]))
    n = int(rng.choice([1, 10, 500, 5000, 40000, 120000]))
    dense = rng.random() < 0.6
    keyset = np.arange(nkeys, dtype=np.uint32) if dense else rng.integers(0, 2**32, nkeys, dtype=np.uint64).astype(np.uint32)
    keys = keyset[rng.integers(0, nkeys, n)]
    size = int(rng.choice([1, 7, 1000, 10**6, 10**9]))
    offset = int(rng.integers(-size, size + 1)) if rng.random() < 0.3 else 0
    step = max(1, int(size * rng.choice([0.001, 0.05, 0.5, 3]) / max(1, nkeys ** 0.5)))
    ts = np.cumsum(rng.integers(0, 2 * step + 1, n)).astype(np.int64) + 10**15
    dis = int(size * rng.choice([0, 0.1, 1, 5]))
    if dis:
        ts -= rng.integers(0, dis + 1, n)
    if rng.random() < 0.1:
        j = rng.integers(0, n); ts[j:] += size * 1000
    ooo = int(rng.choice([0, dis // 2, dis, 2 * dis]))
    ch = int(rng.choice([1, 1, 3]))
    dtype = np.float32 if rng.random() < 0.5 else np.float64
    vals = rng.standard_normal((n, ch)).astype(dtype)
    if rng.random() < 0.3:
        vals[rng.random((n, ch)) < 0.05] = np.nan
    allaggs = ['count', 'sum', 'mean', 'min', 'max', 'var', 'std', 'var_pop', 'std_pop', 'nan_count']
    kind = str(rng.choice(["tumbling", "tumbling", "sliding", "session", "rolling"]))
    if kind != "tumbling" and rng.random() < 0.3:
        allaggs += ["first", "last", "argmin_ts", "argmax_ts", "median"]
    aggs = list(rng.choice(allaggs, size=int(rng.integers(1, 6)), replace=False))
    lateness = int(rng.choice([0, size, 3 * size])) if kind != "rolling" and rng.random() < 0.3 else 0
    if kind == "tumbling":
        window = cusense.Tumbling(size, offset=offset)
    elif kind == "sliding":
        window = cusense.Sliding(size, max(1, size // int(rng.choice([1, 2, 5]))))
    elif kind == "session":
        window = cusense.Session(max(1, size // 3))
    else:
        rows = int(rng.choice([1, 2, 10, 50]))
        window = cusense.Rolling(rows, min_periods=int(rng.integers(0, rows + 1)) if rng.random() < 0.3 else None)
    threads = int(rng.choice([1, 2, 3]))
    cap = int(rng.choice([0, 0, 0, 5, 200, 3000]))
    out = {"rows": [], "late": [], "stats": [], "errors": [], "ckpt": None}
    p = cusense.Pipeline(window=window, aggs=aggs, max_out_of_orderness=ooo, allowed_lateness=lateness,
                         backend="cpu", channels=ch if ch > 1 else None, cpu_threads=threads,
                         max_open_windows=cap)
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(0, 12))), replace=False)) if n > 1 else []
    bounds = [0, *cuts.tolist(), n] if len(cuts) else [0, n]
    ck_at = int(rng.integers(0, len(bounds) - 1))
    flush_at = int(rng.integers(0, len(bounds) - 1)) if rng.random() < 0.2 else -1
    for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        v = vals[lo:hi] if ch > 1 else vals[lo:hi, 0]
        try:
            p.push(keys[lo:hi], ts[lo:hi], v)
        except Exception as e:
            out["errors"].append((b, type(e).__name__, str(e)))
        r = p.poll(); l = p.poll_late()
        out["rows"].append({k: np.asarray(r[k]).copy() for k in r.columns})
        out["late"].append({k: np.asarray(l[k]).copy() for k in l.columns})
        out["stats"].append({k: v for k, v in p.stats.items() if k != "state_bytes"})
        if b == ck_at:
            with tempfile.TemporaryDirectory() as d:
                f = os.path.join(d, "c")
                p.checkpoint(f)
                out["ckpt"] = open(f, "rb").read() if os.path.isfile(f) else sorted(os.listdir(f))
        if b == flush_at:
            r = p.flush()
            out["rows"].append({k: np.asarray(r[k]).copy() for k in r.columns})
    r = p.flush()
    out["rows"].append({k: np.asarray(r[k]).copy() for k in r.columns})
    return out



def comparable_checkpoint(file):
    """A checkpoint file without what differs between format versions of equal states: the
    version, payload length and CRC fields, and the option fields added since version 3."""
    version = int.from_bytes(file[8:12], "little")
    payload = file[24:-4]
    if version >= 4:
        # The options end with external_watermark (one byte) just before the "pipeline" tag.
        tag = (8).to_bytes(8, "little") + b"pipeline"
        at = payload.index(tag)
        payload = payload[:at - 1] + payload[at:]
    return file[:8] + payload


def equal(u, v):
    if isinstance(u, dict):
        return u.keys() == v.keys() and all(equal(u[k], v[k]) for k in u)
    if isinstance(u, list):
        return len(u) == len(v) and all(equal(p, q) for p, q in zip(u, v))
    if isinstance(u, np.ndarray):
        return (u.dtype == v.dtype and u.shape == v.shape
                and np.array_equal(u.view(np.uint8), v.view(np.uint8)))
    return u == v


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--seeds", nargs=2, type=int, default=[0, 200])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    lo, hi = args.seeds
    if args.worker:
        with open(args.worker, "wb") as f:
            pickle.dump({s: run(s) for s in range(lo, hi)}, f)
        return
    with tempfile.TemporaryDirectory() as d:
        results = []
        for name, path in (("old", args.old), ("new", args.new)):
            out = os.path.join(d, name)
            env = dict(os.environ, PYTHONPATH=path)
            subprocess.run([sys.executable, __file__, args.old, args.new, "--seeds", str(lo), str(hi),
                            "--worker", out], env=env, check=True)
            with open(out, "rb") as f:
                results.append(pickle.load(f))
    old, new = results
    bad = 0
    for s in old:
        for r in (old[s], new[s]):
            if isinstance(r["ckpt"], bytes):
                r["ckpt"] = comparable_checkpoint(r["ckpt"])
        differs = [k for k in old[s] if not equal(old[s][k], new[s][k])]
        if differs:
            bad += 1
            print(f"seed {s}: {', '.join(differs)} differ")
    print(f"{len(old)} streams, {bad} differ")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
