"""Tumbling windows over a generated sensor fleet, streamed in micro-batches, results in pandas.

    python examples/python/fleet_windows.py
"""
import numpy as np
import pandas as pd

import cusense

SENSORS, RECORDS, BATCH = 200, 500_000, 50_000
rng = np.random.default_rng(7)

# One hour of readings (int64 ns since the epoch); network jitter delivers them up to 2 s out
# of order.
start = pd.Timestamp("2026-03-01 08:00").value
ts = start + np.sort(rng.integers(0, 3600 * 10**9, RECORDS)) - rng.integers(0, 2 * 10**9, RECORDS)
keys = rng.integers(0, SENSORS, RECORDS).astype(np.uint32)
temps = (20 + 5 * np.sin(keys) + rng.normal(0, 0.5, RECORDS)).astype(np.float32)

pipe = cusense.Pipeline(window=cusense.Tumbling("1min"), aggs=["count", "mean", "max", "p99"],
                        max_out_of_orderness="2s")   # backend "auto": a GPU when one is usable
parts = []
for start in range(0, RECORDS, BATCH):
    part = slice(start, start + BATCH)
    pipe.push(keys[part], ts[part], temps[part])
    parts.append(pipe.poll().to_pandas())           # the windows the watermark has closed
parts.append(pipe.flush().to_pandas())               # end of stream: the windows still open
windows = pd.concat(parts, ignore_index=True)

hottest = windows.sort_values("max", ascending=False).head(3)
print(hottest[["key", "window_start", "count", "mean", "max", "p99"]].to_string(index=False))
print(f"backend: {pipe.backend}; late records: {pipe.stats['records_late']}")
print(f"windows: {len(windows)} rows for {windows['count'].sum()} records")
