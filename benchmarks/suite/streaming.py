"""cusense itself: a workload streamed through a Pipeline in micro-batches (push, poll after
each, flush at the end), the way an application feeds it."""
from __future__ import annotations

import time

from .workloads import WINDOW_NS, Case, Stream, Workload


def stream_through(pipe, s: Stream, batch: int, latencies: list | None = None):
    """Pushes the stream through `pipe` in micro-batches, polling after each (the latency of each
    push + poll goes to `latencies`), flushes, and returns every row emitted. The workloads have
    no late records: a pipeline that reports any is a failure."""
    import cusense

    parts = []
    n = len(s.keys)
    clock = time.perf_counter
    for off in range(0, n, batch):
        t = clock()
        pipe.push(s.keys[off:off + batch], s.ts[off:off + batch], s.values[off:off + batch])
        r = pipe.poll()
        if latencies is not None:
            latencies.append(clock() - t)
        if len(r):
            parts.append(r)
    parts.append(pipe.flush())
    stats = pipe.stats
    if stats["records_late"] or stats["records_aggregated"] != n:
        raise AssertionError(f"cusense aggregated {stats['records_aggregated']} of {n} records "
                             f"({stats['records_late']} late): the workload must have no late records")
    return cusense.Result.concat(parts)


def run_cusense(s: Stream, case: Case, backend: str, latencies: list | None = None) -> dict:
    """The streaming pipeline: push micro-batches, poll after each, flush at the end."""
    import cusense

    pipe = cusense.Pipeline(cusense.Tumbling(WINDOW_NS), aggs=list(case.aggs),
                            max_out_of_orderness=s.disorder_ns, backend=backend)
    res = stream_through(pipe, s, case.batch, latencies)
    return {c: res[c] for c in ("key", "window_start", *case.aggs)}


def run_cusense_window(s: Stream, w: Workload, batch: int, backend: str,
                       latencies: list | None = None) -> dict:
    """The streaming pipeline for a window workload: push micro-batches, poll, flush."""
    import cusense

    pipe = cusense.Pipeline(w.window, aggs=list(w.aggs), max_out_of_orderness=s.disorder_ns,
                            backend=backend)
    res = stream_through(pipe, s, batch, latencies)
    return {c: res[c] for c in (*w.columns, *w.aggs)}
