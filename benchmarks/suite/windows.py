"""The ``--windows`` mode: sliding, session and count windows, cusense on each backend against
the numpy, pandas and polars peers (window_peers.py). Each is a Workload: a stream generator, the
cusense window and aggregations, the columns compared, and the peers."""
from __future__ import annotations

import datetime as _dt
import gc
import time
from pathlib import Path

import numpy as np

from .checks import WIN_RTOL, check_rows
from .machine import git_commit, machine_info
from .measure import BYTES_PER_RECORD, mem_available_mb, timed
from .peers import peer_available
from .report import write_outputs
from .results import add_ratios, figures, log_row
from .streaming import run_cusense_window
from .window_peers import (rolling_numpy, rolling_pandas, rolling_polars, session_numpy,
                           session_pandas, session_polars, sliding_numpy, sliding_pandas,
                           sliding_polars)
from .workloads import (AGGS_WIN, RECORD_BYTES, ROLLING_N, SESSION_ACTIVE, SESSION_CYCLE_NS,
                        SESSION_GAP_NS, SLIDING_SIZE_NS, SLIDING_SLIDE_NS, WINDOW_NS, Workload,
                        make_stream, si)


def window_workloads() -> list[Workload]:
    import cusense

    return [
        Workload("sliding", f"sliding windows, size {SLIDING_SIZE_NS // 10**9} s, slide "
                 f"{SLIDING_SLIDE_NS // 10**9} s ({SLIDING_SIZE_NS // SLIDING_SLIDE_NS} windows per "
                 "record), standard stream (~100 records per key per 10 s)",
                 cusense.Sliding(SLIDING_SIZE_NS, SLIDING_SLIDE_NS), AGGS_WIN,
                 ("key", "window_start"), ("key", "window_start"),
                 lambda r, k: make_stream(r, k),
                 {"numpy": sliding_numpy, "pandas": sliding_pandas, "polars": sliding_polars},
                 expansion=SLIDING_SIZE_NS / SLIDING_SLIDE_NS),
        Workload("session", f"session windows, gap {SESSION_GAP_NS / 1e9:g} s; bursty keys: each "
                 f"silent {(1 - SESSION_ACTIVE) * SESSION_CYCLE_NS / 1e9:g} s of every "
                 f"{SESSION_CYCLE_NS / 1e9:g} s (phases spread over the keys, so sessions end at "
                 f"real gaps), ~{100 / (WINDOW_NS / 1e9) / SESSION_ACTIVE:.0f} records per key "
                 "per s while active",
                 cusense.Session(SESSION_GAP_NS), AGGS_WIN,
                 ("key", "window_start", "window_end"), ("key", "window_start"),
                 lambda r, k: make_stream(r, k, active=SESSION_ACTIVE, cycle_ns=SESSION_CYCLE_NS),
                 {"numpy": session_numpy, "pandas": session_pandas, "polars": session_polars}),
        Workload("count", f"count windows Rolling({ROLLING_N}) (one row per record, NaN before "
                 f"{ROLLING_N} records of the key), standard stream",
                 cusense.Rolling(ROLLING_N), AGGS_WIN[1:],
                 ("key", "timestamp"), ("key", "timestamp"),
                 lambda r, k: make_stream(r, k),
                 {"numpy": rolling_numpy, "pandas": rolling_pandas, "polars": rolling_polars}),
    ]


def run_windows(records: int = 10**6, keys: int = 1_000, batch: int = 100_000, *, backends=None,
                peers=None, repeats: int = 3, budget_s: float = 10.0, out: Path | None = None,
                log=print) -> dict:
    """Runs every window workload on cusense (each backend) and its peers; returns the report
    (also written to `out` as windows.json, windows.md and windows-throughput.png)."""
    import cusense

    if backends is None:
        backends = ["cpu"] + (["cuda"] if cusense.cuda_available() else [])
    if peers is None:
        peers = ["numpy", "pandas", "polars", "cupy", "torch"]
    workloads = window_workloads()
    # CuPy/PyTorch: no natural array formulation of sessions or count windows (per-key scans),
    # and none is written for sliding windows either, so they are reported, not run
    not_run = {}
    for p in peers:
        missing = [w.name for w in workloads if p not in w.peers]
        if missing:
            not_run[p] = f"no {p} implementation of the {', '.join(missing)} workload(s) in this suite"
            log(f"  peer {p} not run: {not_run[p]}")
    peers = [p for p in peers if p not in not_run]
    unavailable = {p: peer_available(p) for p in peers}
    for p, why in unavailable.items():
        if why:
            log(f"  peer {p} skipped: {why}")
    peers = [p for p in peers if not unavailable[p]]
    report = {"suite": "cusense-bench", "mode": "windows", "schema": 1,
              "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "git_commit": git_commit(), "machine": machine_info(), "backends": backends,
              "peers": peers, "peers_unavailable": {p: w for p, w in unavailable.items() if w},
              "peers_not_run": not_run, "workload": {
                  "records": records, "keys": keys, "batch": batch, "record_bytes": RECORD_BYTES,
                  "keys_distribution": "uniform", "values": "float32 N(20, 5)",
                  "disorder": f"timestamps jittered back by up to {WINDOW_NS / 20e9:g} s; "
                              "max_out_of_orderness covers it (no late records)",
                  "timing": f"best of up to {repeats} runs; peers one-shot on the whole stream, "
                            f"cusense streamed in micro-batches of {si(batch)} (push + poll)",
                  "check": f"rows sorted by their natural key; keys, times, counts, min, max exact, "
                           f"mean to a relative {WIN_RTOL:g}",
                  "workloads": {w.name: w.description for w in workloads}},
              "results": [], "failures": []}
    t_start = time.perf_counter()
    for i, w in enumerate(workloads, 1):
        gc.collect()
        s = w.stream(records, keys)
        log(f"[{i}/{len(workloads)}] {w.name}: records={si(records)} keys={si(keys)} "
            f"batch={si(batch)}  (elapsed {time.perf_counter() - t_start:.0f} s)")
        rows, ref, ref_name = [], None, None
        base = {"workload": w.name, "records": records, "keys": keys, "aggs": list(w.aggs)}
        for be in backends:
            name = f"cusense-{be}"
            lat: list = []
            row = {**base, "batch": batch, "impl": name, "kind": "cusense"}
            try:
                def fn(be=be):
                    lat.clear()
                    return run_cusense_window(s, w, batch, be, lat)
                res, times, host_mb, dev_mb = timed(fn, repeats, budget_s, be == "cuda")
            except Exception as e:  # noqa: BLE001 - report and go on
                row["check"] = f"ERROR: {type(e).__name__}: {e}"
                report["failures"].append(f"{w.name} {name}: {row['check']}")
                log(f"  !! {name} FAILED: {row['check']}")
                rows.append(row)
                continue
            if ref is None:
                ref, ref_name = res, name
                row["check"] = "reference"
            else:
                diff = check_rows(ref, res, w)
                row["check"] = "ok" if diff is None else f"MISMATCH vs {ref_name}: {diff}"
                if diff is not None:
                    report["failures"].append(f"{w.name} {name}: {row['check']}")
            lat_ms = np.array(lat) * 1e3
            row.update(figures(records, times), host_peak_mb=round(host_mb, 1),
                       device_peak_mb=None if dev_mb is None else round(dev_mb, 1),
                       rows_out=int(len(res["key"])), batches=len(lat),
                       latency_p50_ms=float(np.percentile(lat_ms, 50)),
                       latency_p99_ms=float(np.percentile(lat_ms, 99)))
            rows.append(row)
            log_row(log, row)
        for p in peers:
            if ref is None:
                continue
            row = {**base, "impl": p, "kind": "peer"}
            avail = mem_available_mb()
            need = BYTES_PER_RECORD[p] * records * w.expansion / 2**20
            if avail is not None and need > 0.6 * avail:
                row["check"] = f"skipped: needs ~{need:.0f} MB, {avail:.0f} MB available"
                rows.append(row)
                log(f"  {p:14s} {row['check']}")
                continue
            try:
                res, times, host_mb, _ = timed(lambda p=p: w.peers[p](s, w), repeats, budget_s, False)
            except Exception as e:  # noqa: BLE001
                row["check"] = f"ERROR: {type(e).__name__}: {e}"
                report["failures"].append(f"{w.name} {p}: {row['check']}")
                log(f"  !! {p} FAILED: {row['check']}")
                rows.append(row)
                continue
            diff = check_rows(ref, res, w)
            row["check"] = "ok" if diff is None else f"MISMATCH vs {ref_name}: {diff}"
            if diff is None:
                row.update(figures(records, times), host_peak_mb=round(host_mb, 1),
                           rows_out=int(len(res["key"])))
            else:
                report["failures"].append(f"{w.name} {p}: {row['check']}")
                log(f"  !! {p}: {row['check']} -- its time is not counted")
            rows.append(row)
            log_row(log, row)
        add_ratios(rows, backends)
        report["results"].extend(rows)
        del s, ref
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    if out is not None:
        write_outputs(report, out, log)
    return report
