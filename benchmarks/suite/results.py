"""Result rows, shared by the sweeps and the window runs: figures from the timings, speedups over
the peers, and the progress line."""
from __future__ import annotations

import numpy as np

from .workloads import RECORD_BYTES


def figures(records: int, times: list) -> dict:
    wall = [w for w, _ in times]
    best = min(wall)
    return {"seconds": best, "seconds_median": float(np.median(wall)), "runs": len(wall),
            "cpu_seconds": min(c for _, c in times),
            "records_per_s": records / best, "bytes_per_s": records * RECORD_BYTES / best}


def add_ratios(rows: list, backends) -> None:
    """speedup_vs[peer] on each cusense row: peer seconds / cusense seconds (same run)."""
    peer_rows = [r for r in rows if r["kind"] == "peer" and r.get("check") == "ok"]
    for r in rows:
        if r["kind"] == "cusense" and "seconds" in r:
            r["speedup_vs"] = {p["impl"]: p["seconds"] / r["seconds"] for p in peer_rows}


def log_row(log, r: dict) -> None:
    if "seconds" not in r:
        return
    extra = ""
    if r["kind"] == "cusense":
        extra = f"  p50 {r['latency_p50_ms']:.2f} ms p99 {r['latency_p99_ms']:.2f} ms"
    log(f"  {r['impl']:14s} {r['seconds']:8.3f} s (CPU {r['cpu_seconds']:.2f} s) "
        f"{r['records_per_s'] / 1e6:8.2f} M rec/s  "
        f"peak +{r['host_peak_mb']:.0f} MB  [{r['check']}]{extra}")
