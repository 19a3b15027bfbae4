#!/usr/bin/env python3
"""The partitioned pipeline (cusense.distributed) against the single in-process pipeline.

    .venv/bin/python benchmarks/distributed_bench.py [--records N] [--batch B] [--out DIR]

One stream (10,000 sensors, event times nearly in order with 50 ms of jitter, 1 s tumbling
windows with count/mean/max, batches of B records) is run, in one process and one run:

1. through the single ``cusense.Pipeline`` (CPU, one thread): the baseline;
2. through the router alone (checks, partition hash, watermark steps, split; no Ray): the
   router's cost per record, and the bytes it ships per record to 1, 2, 4, 16 and 128
   partitions (records plus the watermark steps every partition receives);
3. through ``cusense.distributed.Pipeline`` with 1 and 2 partitions (one CPU thread each) on a
   local Ray cluster: records/s end to end (push every batch, flush, poll).

The machine's cores bound what (3) can show: the router, Ray's own processes and the partitions
share them. Results go to benchmarks/results/distributed-<machine>-<date>/ (results.json,
README.md).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

import cusense
from cusense.distributed import _plan, partition_of

ROOT = Path(__file__).resolve().parents[1]
AGGS = ["count", "mean", "max"]
WINDOW = cusense.Tumbling("1s")
OOO = 100_000_000  # 100 ms


def stream(n: int, keys: int = 10_000, rate: float = 1e6, seed: int = 7):
    rng = np.random.default_rng(seed)
    k = rng.integers(0, keys, n).astype(np.uint32)
    t = (np.arange(n) * (1e9 / rate)).astype(np.int64) + rng.integers(0, 50_000_000, n)
    v = rng.normal(20, 2, n)
    return k, t, v


def batches(n: int, b: int):
    return [(a, min(n, a + b)) for a in range(0, n, b)]


def run_single(k, t, v, b):
    pipe = cusense.Pipeline(WINDOW, aggs=AGGS, max_out_of_orderness=OOO, backend="cpu", cpu_threads=1)
    start = time.perf_counter()
    rows = 0
    for lo, hi in batches(len(k), b):
        pipe.push(k[lo:hi], t[lo:hi], v[lo:hi], time_unit="ns")
        rows += len(pipe.poll())
    rows += len(pipe.flush())
    return time.perf_counter() - start, rows


def run_router(k, t, v, b, partitions):
    """The router's work for each batch, without Ray: checks as the pipeline does them, the
    hash, the steps and the split into per-partition arrays. Returns seconds and bytes."""
    proto = cusense.Pipeline(WINDOW, aggs=AGGS, max_out_of_orderness=OOO, backend="cpu",
                             cpu_threads=1, watermark="external")
    size = int(WINDOW.size)  # type: ignore[call-overload]
    grids = [(size, 0)]
    start = time.perf_counter()
    shipped = 0
    steps_total = steps_kept = 0
    nxt, mx = 0, None
    for lo, hi in batches(len(k), b):
        kk, tt, vv = proto._checked_batch(k[lo:hi], t[lo:hi], v[lo:hi], "ns")
        parts = partition_of(kk, partitions)
        plan = _plan.plan_batch(parts, tt, nxt, mx, OOO, partitions, grids,
                                None if mx is None else mx - OOO)
        for part in plan.parts:
            if part is None:
                continue
            arrays = (kk[part.index], tt[part.index], vv[part.index], part.positions, part.at,
                      part.watermark, part.step_position)
            shipped += sum(a.nbytes for a in arrays)
            steps_kept += part.at.size
        steps_total += plan.steps
        nxt += len(kk)
        mx = plan.new_max
    return time.perf_counter() - start, shipped, steps_total, steps_kept


def run_distributed(k, t, v, b, partitions):
    import cusense.distributed as cd
    pipe = cd.Pipeline(WINDOW, aggs=AGGS, max_out_of_orderness=OOO, backend="cpu", cpu_threads=1,
                       partitions=partitions, max_replay_bytes=1 << 40)
    pipe.poll()  # the workers are up
    start = time.perf_counter()
    rows = 0
    for i, (lo, hi) in enumerate(batches(len(k), b)):
        pipe.push(k[lo:hi], t[lo:hi], v[lo:hi], time_unit="ns")
        if i % 10 == 9:
            rows += len(pipe.poll())
    rows += len(pipe.flush())
    seconds = time.perf_counter() - start
    pipe.close()
    return seconds, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=4_000_000)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the best is reported")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    k, t, v = stream(args.records)
    n, b = args.records, args.batch
    res: dict = {"records": n, "batch": b, "keys": 10_000, "window": "tumbling 1s",
                 "aggs": AGGS, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}

    best = min(run_single(k, t, v, b) for _ in range(args.repeat))
    res["single"] = {"seconds": best[0], "records_per_s": n / best[0], "rows": best[1]}
    print(f"single pipeline: {n / best[0] / 1e6:.2f} M records/s", flush=True)

    res["router"] = {}
    for p in (1, 2, 4, 16, 128):
        r = min(run_router(k, t, v, b, p) for _ in range(args.repeat))
        res["router"][p] = {"seconds": r[0], "ns_per_record": r[0] / n * 1e9,
                            "bytes_per_record": r[1] / n, "steps": r[2], "steps_shipped": r[3]}
        print(f"router, {p} partitions: {r[0] / n * 1e9:.0f} ns/record, {r[1] / n:.1f} B/record shipped",
              flush=True)

    import ray
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    res["distributed"] = {}
    for p in (1, 2):
        r = min(run_distributed(k, t, v, b, p) for _ in range(args.repeat))
        assert r[1] == res["single"]["rows"], (r[1], res["single"]["rows"])
        res["distributed"][p] = {"seconds": r[0], "records_per_s": n / r[0],
                                 "ratio_to_single": (n / r[0]) / res["single"]["records_per_s"]}
        print(f"distributed, {p} partitions: {n / r[0] / 1e6:.2f} M records/s "
              f"({res['distributed'][p]['ratio_to_single']:.2f}x the single pipeline)", flush=True)
    ray.shutdown()

    out = args.out or ROOT / "benchmarks" / "results" / f"distributed-amd-epyc-{os.cpu_count()}c-{dt.date.today()}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [f"# cusense.distributed on {res['cpus']} cores ({dt.date.today()})", "",
             f"{n:,} records, 10,000 keys, batches of {b:,}, tumbling 1 s windows ({', '.join(AGGS)}), "
             "CPU backend, one thread per pipeline; best of "
             f"{args.repeat} runs (`benchmarks/distributed_bench.py`).", "",
             "| run | records/s | vs single |", "|---|---|---|",
             f"| single `cusense.Pipeline` | {res['single']['records_per_s'] / 1e6:.2f} M | 1.00 |"]
    for p, r in res["distributed"].items():
        lines.append(f"| distributed, {p} partition(s) | {r['records_per_s'] / 1e6:.2f} M | "
                     f"{r['ratio_to_single']:.2f} |")
    lines += ["", "Router alone (checks, hash, steps, split; no Ray):", "",
              "| partitions | router ns/record | bytes shipped/record | steps (kept of all) |",
              "|---|---|---|---|"]
    for p, r in res["router"].items():
        lines.append(f"| {p} | {r['ns_per_record']:.0f} | {r['bytes_per_record']:.1f} | "
                     f"{r['steps_shipped']:,} of {r['steps']:,} x {p} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
