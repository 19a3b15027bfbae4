"""Demo: a synthetic sensor fleet streamed through a windowing pipeline.

    python -m cusense.demo [--sensors 5000] [--records 20000000] [--batch 1000000] [--backend auto]

Generates readings of a fleet of sensors (daily cycle, noise, a few faults), delivers them
out of order within a bound plus some stragglers, pushes them in micro-batches with a progress
bar through tumbling windows and an EWMA anomaly detector, and prints the backend, the
throughput, a few emitted windows and the sensors flagged most often.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import cusense


class Progress:
    """A minimal progress bar on stderr (no dependency)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.start, self.done = total, label, time.perf_counter(), 0

    def update(self, n: int):
        self.done += n
        frac = self.done / self.total
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}%  {rate / 1e6:7.2f} M rec/s")
        sys.stderr.flush()

    def close(self):
        sys.stderr.write("\n")


def fleet_batches(sensors: int, records: int, batch: int, seed: int = 7):
    """Yields (keys, timestamps, values) micro-batches of a fleet reporting about once a second."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2026-01-01T00:00:00", "ns").astype(np.int64)
    period = 1_000_000_000 // max(1, sensors)  # fleet-wide arrival spacing (ns)
    phase = rng.uniform(0, 2 * np.pi, sensors)
    faulty = rng.random(sensors) < 0.01
    for first in range(0, records, batch):
        n = min(batch, records - first)
        idx = np.arange(first, first + n)
        keys = rng.integers(0, sensors, n).astype(np.uint32)
        t = start + idx * period
        day = 2 * np.pi * (t - start) / 86_400e9
        values = 20 + 5 * np.sin(day + phase[keys]) + rng.normal(0, 0.5, n)
        values[faulty[keys] & (rng.random(n) < 0.05)] += 40  # spikes from faulty sensors
        values[rng.random(n) < 0.001] = np.nan                # dropped readings
        arrival_jitter = rng.integers(0, 2_000_000_000, n)    # up to 2 s out of order
        stragglers = rng.random(n) < 1e-4                     # minutes late
        t_event = t - arrival_jitter - stragglers * 300_000_000_000
        yield keys, t_event.astype(np.int64), values.astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sensors", type=int, default=5000)
    ap.add_argument("--records", type=int, default=20_000_000)
    ap.add_argument("--batch", type=int, default=1_000_000)
    ap.add_argument("--window", default="10s")
    ap.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)

    pipe = cusense.Pipeline(cusense.Tumbling(args.window),
                            aggs=["count", "mean", "min", "max", "std"],
                            detectors=[cusense.detectors.EWMA(alpha=0.05, threshold=0.9)],
                            max_out_of_orderness="2s", backend=args.backend)
    devices = cusense.devices()
    print(f"cusense {cusense.__version__}: backend={pipe.backend}"
          + (f" ({devices[0].name})" if pipe.backend == "cuda" else ""))
    print(f"fleet: {args.sensors} sensors, {args.records:,} records, micro-batches of {args.batch:,}, "
          f"{args.window} tumbling windows, 2 s out-of-order bound")

    progress = Progress(args.records, "streaming")
    emitted, busy = 0, 0.0
    last = None
    flagged = np.zeros(args.sensors, np.int64)
    for keys, ts, values in fleet_batches(args.sensors, args.records, args.batch):
        t0 = time.perf_counter()
        pipe.push(keys, ts, values)
        res = pipe.poll()
        scores = pipe.poll_scores()
        busy += time.perf_counter() - t0
        np.add.at(flagged, scores["key"][scores["is_anomaly_ewma"]], 1)
        emitted += len(res)
        if len(res):
            last = res
        progress.update(len(keys))
    t0 = time.perf_counter()
    final = pipe.flush()
    scores = pipe.poll_scores()
    busy += time.perf_counter() - t0
    np.add.at(flagged, scores["key"][scores["is_anomaly_ewma"]], 1)
    progress.close()
    emitted += len(final)

    st = pipe.stats
    print(f"throughput: {args.records / busy / 1e6:.2f} M records/s through windows + EWMA scoring "
          f"({busy:.2f} s for {args.records:,} records, data generation excluded)")
    print(f"records: pushed {st['records_pushed']:,}, aggregated {st['records_aggregated']:,}, "
          f"late {st['records_late']:,}, NaN values {st['nan_values']:,}; windows emitted {emitted:,}")
    late = pipe.poll_late()
    if len(late):
        print(f"late records (first 3 of {len(late)}):")
        print(late.to_pandas().head(3).to_string(index=False))
    if last is not None:
        df = last.to_pandas()
        print("a few windows (hottest sensors of the last emitted window):")
        newest = df[df["window_start"] == df["window_start"].max()]
        print(newest.sort_values("max", ascending=False).head(5).to_string(index=False))
    top = np.argsort(flagged)[::-1][:5]
    print(f"EWMA detector: {int(flagged.sum()):,} records flagged (score >= 0.9); most flagged sensors: "
          + ", ".join(f"{k} ({flagged[k]})" for k in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
