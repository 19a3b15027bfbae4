"""Where the time of the streaming pipeline goes: push (validation + staging) versus poll
(waiting for the engine + building the result), per backend, on the standard benchmark
workload. Run it under a sampling profiler (e.g. ``py-spy record --native``) for the split
inside each phase.

    python benchmarks/profile_stream.py --backend cuda --records 10000000 --batch 1000000
"""
import argparse
import time

import numpy as np

import cusense
from suite.workloads import WINDOW_NS, make_stream  # benchmarks/suite, next to this script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--records", type=int, default=10**7)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=10**6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--aggs", default="count,mean,min,max,std")
    args = ap.parse_args()
    s = make_stream(args.records, args.keys)
    aggs = args.aggs.split(",")
    clock = time.perf_counter
    for rep in range(args.repeats):
        pipe = cusense.Pipeline(cusense.Tumbling(WINDOW_NS), aggs=aggs,
                                max_out_of_orderness=s.disorder_ns, backend=args.backend)
        push_s = poll_s = 0.0
        rows = 0
        t0 = clock()
        for off in range(0, args.records, args.batch):
            t = clock()
            pipe.push(s.keys[off:off + args.batch], s.ts[off:off + args.batch],
                      s.values[off:off + args.batch])
            t1 = clock()
            rows += len(pipe.poll())
            push_s += t1 - t
            poll_s += clock() - t1
        t = clock()
        rows += len(pipe.flush())
        flush_s = clock() - t
        total = clock() - t0
        print(f"{pipe.backend} run {rep}: total {total * 1e3:7.1f} ms  push {push_s * 1e3:7.1f}  "
              f"poll {poll_s * 1e3:7.1f}  flush {flush_s * 1e3:6.1f}  rows {rows}  "
              f"{args.records / total / 1e6:6.1f} M rec/s", flush=True)
    # the raw inputs alone: one pass over them, as a floor for the host side
    t = clock()
    for off in range(0, args.records, args.batch):
        np.ascontiguousarray(s.keys[off:off + args.batch]).copy()
        np.ascontiguousarray(s.ts[off:off + args.batch]).copy()
        np.ascontiguousarray(s.values[off:off + args.batch]).copy()
    print(f"copying the inputs once on the host: {(clock() - t) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
