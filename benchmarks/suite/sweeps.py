"""The tumbling-window sweeps (``--quick``, ``--standard``, ``--full``, custom grids): cusense on
each backend against the peers, case by case."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import time
from pathlib import Path

import numpy as np

from .checks import check_equal
from .limits import copy_bandwidth
from .machine import git_commit, machine_info
from .measure import BYTES_PER_RECORD, free_gpu_pools, mem_available_mb, timed
from .peers import GPU_PEERS, PEERS, peer_available
from .report import write_outputs
from .results import add_ratios, figures, log_row
from .streaming import run_cusense
from .windows import run_windows
from .workloads import AGGS5, AGGS7, RECORD_BYTES, WINDOW_NS, Case, make_stream


def plan(mode: str, args) -> list[tuple[str, Case, bool]]:
    """(sweep name, case, run peers) for the mode."""
    cases = []
    if mode == "quick":
        for k in (10, 1_000, 10_000, 100_000):
            cases.append(("keys", Case(1_000_000, k, 100_000), True))
        for b in (1_000, 10_000, 1_000_000):
            cases.append(("batch", Case(1_000_000, 1_000, b), False))
    elif mode == "full":
        for r in (10**5, 10**6, 10**7, 10**8):
            cases.append(("records", Case(r, 10_000, 1_000_000), True))
        for k in (10, 100, 1_000, 100_000, 1_000_000):
            cases.append(("keys", Case(10**7, k, 1_000_000), True))
        for b in (1_000, 10_000, 100_000, 10**7):
            cases.append(("batch", Case(10**7, 10_000, b), False))
        cases.append(("standard", Case(10**7, 10_000, 1_000_000, AGGS7), True))
    elif mode == "standard":
        cases.append(("standard", Case(10**7, 10_000, 1_000_000), True))
    elif mode == "cardinality":
        # Short windows of a large fleet emit a row every few records: 2 records per (key,
        # window) emits about 5e6 rows from 1e7 records.
        for per_window in (2, 17, 100):
            cases.append(("per_window", Case(10**7, 10_000, 1_000_000, per_window=per_window), True))
    elif mode == "smoke":
        cases.append(("keys", Case(20_000, 100, 5_000), True))
        cases.append(("batch", Case(20_000, 100, 1_000), False))
    if args.records or args.keys or args.batches:
        base = Case(10**6, 1_000, 100_000)
        cases = [("custom", Case(r, k, b, AGGS7 if args.aggs == 7 else AGGS5), True)
                 for r in (args.records or [base.records])
                 for k in (args.keys or [base.keys])
                 for b in (args.batches or [base.batch])]
        return cases
    if args.aggs == 7:
        cases = [(n, dataclasses.replace(c, aggs=AGGS7), p) for n, c, p in cases]
    return cases


def run_suite(mode: str = "quick", *, backends=None, peers=None, repeats=None, out: Path | None = None,
              args=None, log=print) -> dict:
    """Runs the suite and returns the report dict (also written to `out` when given)."""
    import cusense

    if args is None:
        from .cli import build_parser  # here: cli imports this module

        args = build_parser().parse_args([])
    if mode == "windows":
        return run_windows((args.records or [10**6])[0], (args.keys or [1_000])[0],
                           (args.batches or [100_000])[0], backends=backends, peers=peers,
                           repeats=repeats or 3, out=out, log=log)
    repeats = repeats or (3 if mode in ("quick", "smoke") else 3)
    budget = {"smoke": 1.0, "quick": 2.0}.get(mode, 10.0)
    if backends is None:
        backends = ["cpu"] + (["cuda"] if cusense.cuda_available() else [])
    if peers is None:
        peers = ["numpy", "pandas", "polars", "cupy", "torch"]
    unavailable = {p: peer_available(p) for p in peers}
    for p, why in unavailable.items():
        if why:
            log(f"  peer {p} skipped: {why}")
    peers = [p for p in peers if not unavailable[p]]
    machine = machine_info()
    report = {"suite": "cusense-bench", "mode": mode, "schema": 1,
              "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "git_commit": git_commit(), "machine": machine, "backends": backends, "peers": peers,
              "peers_unavailable": {p: w for p, w in unavailable.items() if w},
              "workload": {"kind": "tumbling", "window_ns": WINDOW_NS, "record_bytes": RECORD_BYTES,
                           "keys": "uniform", "values": "float32 N(20, 5)",
                           "disorder": "timestamps jittered back by up to 5% of a window; "
                                       "max_out_of_orderness covers it (no late records)",
                           "timing": f"best of up to {repeats} runs; peers one-shot on the whole "
                                     "stream, cusense streamed in micro-batches (push + poll)"},
              "limits": None, "results": [], "failures": []}
    if "cuda" in backends or any(p in GPU_PEERS for p in peers):
        log("measuring copy bandwidth ...")
        report["limits"] = copy_bandwidth()
    cases = plan(mode, args)
    t_start = time.perf_counter()
    streams: dict = {}
    for i, (sweep, case, with_peers) in enumerate(cases, 1):
        key = (case.records, case.keys, case.per_window)
        if key not in streams:
            streams.clear()
            gc.collect()
            streams[key] = make_stream(case.records, case.keys, case.per_window)
        s = streams[key]
        log(f"[{i}/{len(cases)}] {sweep}: {case.label}  (elapsed {time.perf_counter() - t_start:.0f} s)")
        ref = None
        rows = []
        for be in backends:
            name = f"cusense-{be}"
            lat: list = []
            row = {"sweep": sweep, **dataclasses.asdict(case), "impl": name, "kind": "cusense"}
            row["aggs"] = list(case.aggs)
            try:
                def fn(be=be):
                    lat.clear()
                    return run_cusense(s, case, be, lat)
                res, times, host_mb, dev_mb = timed(fn, repeats, budget, be == "cuda")
            except Exception as e:  # noqa: BLE001 - report and go on
                row.update(check=f"ERROR: {type(e).__name__}: {e}")
                report["failures"].append(f"{case.label} {name}: {row['check']}")
                log(f"  !! {name} FAILED: {row['check']}")
                rows.append(row)
                continue
            if ref is None:
                ref, ref_name = res, name
                row["check"] = "reference"
            else:
                diff = check_equal(ref, res, case.aggs)
                row["check"] = "ok" if diff is None else f"MISMATCH vs {ref_name}: {diff}"
            lat_ms = np.array(lat) * 1e3
            row.update(figures(case.records, times), host_peak_mb=round(host_mb, 1),
                       device_peak_mb=None if dev_mb is None else round(dev_mb, 1),
                       windows=int(len(res["key"])), batches=len(lat),
                       latency_p50_ms=float(np.percentile(lat_ms, 50)),
                       latency_p99_ms=float(np.percentile(lat_ms, 99)))
            rows.append(row)
            log_row(log, row)
        if with_peers and ref is not None:
            avail = mem_available_mb()
            for p in peers:
                row = {"sweep": sweep, **dataclasses.asdict(case), "impl": p, "kind": "peer"}
                row["aggs"] = list(case.aggs)
                need = BYTES_PER_RECORD[p] * case.records / 2**20
                if avail is not None and need > 0.6 * avail:
                    row["check"] = f"skipped: needs ~{need:.0f} MB, {avail:.0f} MB available"
                    rows.append(row)
                    log(f"  {p:14s} {row['check']}")
                    continue
                try:
                    res, times, host_mb, dev_mb = timed(lambda p=p: PEERS[p](s, case.aggs), repeats,
                                                        budget, p in GPU_PEERS)
                except Exception as e:  # noqa: BLE001
                    row["check"] = f"ERROR: {type(e).__name__}: {e}"
                    report["failures"].append(f"{case.label} {p}: {row['check']}")
                    log(f"  !! {p} FAILED: {row['check']}")
                    rows.append(row)
                    continue
                finally:
                    free_gpu_pools()
                diff = check_equal(ref, res, case.aggs)
                row["check"] = "ok" if diff is None else f"MISMATCH vs {ref_name}: {diff}"
                if diff is None:
                    row.update(figures(case.records, times), host_peak_mb=round(host_mb, 1),
                               device_peak_mb=None if dev_mb is None else round(dev_mb, 1))
                else:
                    report["failures"].append(f"{case.label} {p}: {row['check']}")
                    log(f"  !! {p}: {row['check']} -- its time is not counted")
                rows.append(row)
                log_row(log, row)
            add_ratios(rows, backends)
        report["results"].extend(rows)
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    _add_bandwidth_fractions(report)
    if out is not None:
        write_outputs(report, out, log)
    return report


def _add_bandwidth_fractions(report: dict) -> None:
    lim = report.get("limits")
    if not lim:
        return
    for r in report["results"]:
        if r["impl"] == "cusense-cuda" and "bytes_per_s" in r:
            r["fraction_of_pinned_h2d"] = r["bytes_per_s"] / lim["h2d_pinned"]
