"""Benchmark suite: cusense against the tools users would pick instead, and the hardware limits.

Run ``python -m cusense.bench --quick`` (or ``benchmarks/run.py --quick``); ``--help`` lists the
modes. Every peer result is checked equal to cusense's output before its time counts; ratios
come from the same run. Output: ``<mode>.json``, ``<mode>.md`` and PNG plots in ``--out``.

The suite is organised as *workloads* run by *implementations* (cusense per backend, and peers:
numpy, pandas, polars, CuPy, PyTorch). The sweeps (``--quick``, ``--standard``, ``--full``) run
keyed tumbling windows; ``--windows`` runs sliding, session and count windows (``Workload``
entries: a stream generator, the cusense window, the compared columns, and peers for numpy,
pandas and polars; none for CuPy/PyTorch). A new workload (a detector) adds such an entry and
peer functions with the same ``(data, spec) -> dict of numpy columns`` signature.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

RECORD_BYTES = 16  # key uint32 + timestamp int64 + value float32, as pushed
WINDOW_NS = 10 * 10**9  # 10 s tumbling windows
T0 = 1_700_000_000 * 10**9
AGGS5 = ("count", "sum", "mean", "min", "max")
AGGS7 = AGGS5 + ("var", "std")
EXACT = ("count", "min", "max")  # compared exactly; the rest with a relative tolerance
RTOL = 1e-6


# --------------------------------------------------------------------------------------------
# workload
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    records: int
    keys: int
    batch: int
    aggs: tuple = AGGS5
    per_window: float = 100.0  # records per (key, window) on average

    @property
    def label(self) -> str:
        return (f"records={_si(self.records)} keys={_si(self.keys)} batch={_si(self.batch)} "
                f"aggs={len(self.aggs)}")


@dataclasses.dataclass
class Stream:
    keys: np.ndarray  # uint32
    ts: np.ndarray  # int64 ns
    values: np.ndarray  # float32
    disorder_ns: int  # max_out_of_orderness that makes no record late


def make_stream(records: int, keys: int, per_window: float = 100.0, seed: int = 42,
                active: float = 1.0, cycle_ns: int = WINDOW_NS) -> Stream:
    """Synthetic sensor stream: keys uniform in [0, keys); record i at T0 + i*dt minus a jitter in
    [0, disorder) (mild disorder, up to 5% of a window), dt = window / (keys * per_window);
    float32 values ~ N(20, 5). With max_out_of_orderness = disorder no record is late.

    ``active < 1`` makes the keys bursty (for session windows): each key is silent for
    ``(1 - active) * cycle_ns`` of every cycle, the phases spread evenly over the keys, so every
    key still gets the same share of the records and there is always the same number of keys
    sending."""
    rng = np.random.default_rng(seed)
    dt = WINDOW_NS / (keys * per_window)
    disorder = WINDOW_NS // 20
    ts = (np.arange(records, dtype=np.float64) * dt).astype(np.int64)
    if active >= 1.0:
        k = rng.integers(0, keys, records, dtype=np.uint32)
    else:
        # the senders at time t are a block of n_active keys that rotates once per cycle
        n_active = max(1, math.ceil(active * keys))
        rot = (ts % cycle_ns) * keys // cycle_ns
        k = ((rng.integers(0, n_active, records, dtype=np.int64) + rot) % keys).astype(np.uint32)
    ts += T0
    ts -= rng.integers(0, disorder, records, dtype=np.int64)
    v = rng.standard_normal(records, dtype=np.float32)
    v *= 5.0
    v += 20.0
    return Stream(k, ts, v, disorder)


# --------------------------------------------------------------------------------------------
# implementations: each returns a dict of numpy columns ordered by (window_start, key):
# key, window_start, and one column per aggregation
# --------------------------------------------------------------------------------------------

def _window_ids(ts: np.ndarray) -> np.ndarray:
    return ts // WINDOW_NS  # floor division (offset 0)


def peer_numpy(s: Stream, aggs) -> dict:
    """Sort by (window, key), then segment reductions with ufunc.reduceat."""
    win = _window_ids(s.ts)
    w0 = int(win.min())
    comp = ((win - w0) << 32) | s.keys.astype(np.int64)
    order = np.argsort(comp)
    comp = comp[order]
    v = s.values.astype(np.float64)[order]
    starts = np.flatnonzero(np.concatenate(([True], comp[1:] != comp[:-1])))
    counts = np.diff(np.append(starts, len(comp)))
    out = {"key": (comp[starts] & 0xFFFFFFFF).astype(np.uint32),
           "window_start": ((comp[starts] >> 32) + w0) * WINDOW_NS}
    sums = np.add.reduceat(v, starts)
    mean = sums / counts
    for a in aggs:
        if a == "count":
            out[a] = counts
        elif a == "sum":
            out[a] = sums
        elif a == "mean":
            out[a] = mean
        elif a == "min":
            out[a] = np.minimum.reduceat(v, starts)
        elif a == "max":
            out[a] = np.maximum.reduceat(v, starts)
    if "var" in aggs or "std" in aggs:
        dev = v - np.repeat(mean, counts)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.add.reduceat(dev * dev, starts) / (counts - 1)
        var[counts < 2] = np.nan
        if "var" in aggs:
            out["var"] = var
        if "std" in aggs:
            out["std"] = np.sqrt(var)
    return out


def peer_pandas(s: Stream, aggs) -> dict:
    """DataFrame groupby on (floored window, key)."""
    import pandas as pd

    df = pd.DataFrame({"win": _window_ids(s.ts), "key": s.keys,
                       "value": s.values.astype(np.float64)})
    g = df.groupby(["win", "key"], sort=True)["value"].agg(list(aggs)).reset_index()
    out = {"key": g["key"].to_numpy(np.uint32), "window_start": g["win"].to_numpy() * WINDOW_NS}
    for a in aggs:
        out[a] = g[a].to_numpy()
    return out


def peer_polars(s: Stream, aggs) -> dict:
    """LazyFrame group_by on (floored window, key), sorted."""
    import polars as pl

    exprs = {"count": pl.len(), "sum": pl.col("value").sum(), "mean": pl.col("value").mean(),
             "min": pl.col("value").min(), "max": pl.col("value").max(),
             "var": pl.col("value").var(ddof=1), "std": pl.col("value").std(ddof=1)}
    df = pl.DataFrame({"key": s.keys, "ts": s.ts, "value": s.values})
    g = (df.lazy()
         .with_columns((pl.col("ts") // WINDOW_NS).alias("win"), pl.col("value").cast(pl.Float64))
         .group_by("win", "key")
         .agg(*[exprs[a].alias(a) for a in aggs])
         .sort("win", "key")
         .collect())
    out = {"key": g["key"].to_numpy().astype(np.uint32, copy=False),
           "window_start": g["win"].to_numpy() * WINDOW_NS}
    for a in aggs:
        col = g[a]
        out[a] = col.to_numpy() if a != "count" else col.to_numpy().astype(np.int64)
    return out


def peer_cupy(s: Stream, aggs) -> dict:
    """CuPy: sort-based group ids (unique), scatter reductions (bincount, scatter_min/max).
    Host arrays in, host arrays out (the copies are part of the time)."""
    import cupy as cp
    import cupyx

    k = cp.asarray(s.keys)
    t = cp.asarray(s.ts)
    v = cp.asarray(s.values).astype(cp.float64)
    win = t // WINDOW_NS
    w0 = int(win.min())
    comp = ((win - w0) << 32) | k.astype(cp.int64)
    uniq, inv = cp.unique(comp, return_inverse=True)
    inv = inv.ravel()
    g = uniq.size
    counts = cp.bincount(inv, minlength=g)
    sums = cp.bincount(inv, weights=v, minlength=g)
    mean = sums / counts
    res = {"key": (uniq & 0xFFFFFFFF).astype(cp.uint32), "window_start": ((uniq >> 32) + w0) * WINDOW_NS}
    for a in aggs:
        if a == "count":
            res[a] = counts.astype(cp.int64)
        elif a == "sum":
            res[a] = sums
        elif a == "mean":
            res[a] = mean
        elif a == "min":
            m = cp.full(g, cp.inf)
            cupyx.scatter_min(m, inv, v)
            res[a] = m
        elif a == "max":
            m = cp.full(g, -cp.inf)
            cupyx.scatter_max(m, inv, v)
            res[a] = m
    if "var" in aggs or "std" in aggs:
        dev = v - mean[inv]
        var = cp.bincount(inv, weights=dev * dev, minlength=g) / (counts - 1)
        var[counts < 2] = cp.nan
        if "var" in aggs:
            res["var"] = var
        if "std" in aggs:
            res["std"] = cp.sqrt(var)
    out = {name: cp.asnumpy(col) for name, col in res.items()}
    cp.cuda.get_current_stream().synchronize()
    return out


def peer_torch(s: Stream, aggs) -> dict:
    """PyTorch: sorted unique group ids, then bincount / index_add_ / scatter_reduce(amin, amax).
    Host arrays in, host arrays out."""
    import torch

    dev = torch.device("cuda")
    k = torch.from_numpy(s.keys.astype(np.int64)).to(dev)  # torch has no uint32 arithmetic
    t = torch.from_numpy(s.ts).to(dev)
    v = torch.from_numpy(s.values).to(dev).to(torch.float64)
    win = torch.div(t, WINDOW_NS, rounding_mode="floor")
    w0 = int(win.min())
    comp = ((win - w0) << 32) | k
    uniq, inv = torch.unique(comp, sorted=True, return_inverse=True)
    g = uniq.numel()
    counts = torch.bincount(inv, minlength=g)
    sums = torch.zeros(g, dtype=torch.float64, device=dev).index_add_(0, inv, v)
    mean = sums / counts
    res = {"key": uniq & 0xFFFFFFFF, "window_start": ((uniq >> 32) + w0) * WINDOW_NS}
    for a in aggs:
        if a == "count":
            res[a] = counts
        elif a == "sum":
            res[a] = sums
        elif a == "mean":
            res[a] = mean
        elif a in ("min", "max"):
            init = torch.empty(g, dtype=torch.float64, device=dev)
            res[a] = init.scatter_reduce_(0, inv, v, reduce="amin" if a == "min" else "amax",
                                          include_self=False)
    if "var" in aggs or "std" in aggs:
        d = v - mean[inv]
        m2 = torch.zeros(g, dtype=torch.float64, device=dev).index_add_(0, inv, d * d)
        var = m2 / (counts - 1)
        var[counts < 2] = float("nan")
        if "var" in aggs:
            res["var"] = var
        if "std" in aggs:
            res["std"] = torch.sqrt(var)
    out = {name: col.cpu().numpy() for name, col in res.items()}
    out["key"] = out["key"].astype(np.uint32)
    return out


PEERS: dict[str, Callable] = {"numpy": peer_numpy, "pandas": peer_pandas, "polars": peer_polars,
                              "cupy": peer_cupy, "torch": peer_torch}
GPU_PEERS = ("cupy", "torch")


def peer_available(name: str) -> str | None:
    """None when the peer can run here, else the reason it cannot."""
    mod = {"numpy": "numpy", "pandas": "pandas", "polars": "polars", "cupy": "cupy",
           "torch": "torch"}[name]
    try:
        m = __import__(mod)
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return f"{mod} not importable ({type(e).__name__})"
    if name == "cupy":
        try:
            if m.cuda.runtime.getDeviceCount() < 1:
                return "no CUDA device for CuPy"
        except Exception as e:  # noqa: BLE001
            return f"no CUDA device for CuPy ({type(e).__name__})"
    if name == "torch" and not m.cuda.is_available():
        return "no CUDA device for PyTorch"
    return None


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


# --------------------------------------------------------------------------------------------
# checks, timing, memory
# --------------------------------------------------------------------------------------------

def check_equal(ref: dict, got: dict, aggs) -> str | None:
    """None when `got` equals the reference output, else a description of the first difference."""
    if len(got["key"]) != len(ref["key"]):
        return f"{len(got['key'])} rows, expected {len(ref['key'])}"
    for col in ("window_start", "key", *aggs):
        a, b = np.asarray(ref[col]), np.asarray(got[col])
        if col in ("window_start", "key", *EXACT):
            bad = np.flatnonzero(a.astype(np.float64) != b.astype(np.float64))
        else:
            close = np.isclose(b, a, rtol=RTOL, atol=1e-9, equal_nan=True)
            bad = np.flatnonzero(~close)
        if bad.size:
            i = int(bad[0])
            return f"column {col}: {bad.size} rows differ, first at row {i}: {b[i]!r} vs {a[i]!r}"
    return None


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class HostPeak:
    """Peak resident memory added while a block runs: resets the kernel's high-water mark
    (/proc/self/clear_refs, Linux) and reads VmHWM; elsewhere falls back to the ru_maxrss
    growth, which only sees new process-wide peaks."""

    def __enter__(self):
        gc.collect()
        self.reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            pass
        self.base_kb = _proc_status_kb("VmRSS") or 0
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        hwm = _proc_status_kb("VmHWM") if self.reset else None
        if hwm is not None:
            self.peak_mb = max(0, hwm - self.base_kb) / 1024
        else:
            self.peak_mb = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.ru0) / 1024
        return False


def _device_used_bytes() -> int | None:
    """Bytes in use on the current CUDA device (cudaMemGetInfo through CuPy or PyTorch)."""
    try:
        import cupy as cp

        free, total = cp.cuda.runtime.memGetInfo()
        return int(total - free)
    except Exception:  # noqa: BLE001
        pass
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            return int(total - free)
    except Exception:  # noqa: BLE001
        pass
    return None


def _free_gpu_pools():
    for mod in ("cupy", "torch"):
        if mod in sys.modules:
            try:
                if mod == "cupy":
                    sys.modules["cupy"].get_default_memory_pool().free_all_blocks()
                else:
                    sys.modules["torch"].cuda.empty_cache()
            except Exception:  # noqa: BLE001
                pass


def timed(fn: Callable, repeats: int, budget_s: float, gpu: bool):
    """Runs fn up to `repeats` times (stopping once `budget_s` is spent after the first run);
    returns (last result, list of (wall, process CPU) seconds, host peak MB, device peak MB or
    None). CPU seconds cover every thread of the process (spinning worker threads included)."""
    times, result = [], None
    dev0 = _device_used_bytes() if gpu else None
    dev_peak = 0
    with HostPeak() as hp:
        for i in range(repeats):
            result = None
            gc.collect()
            t, c = time.perf_counter(), time.process_time()
            result = fn()
            times.append((time.perf_counter() - t, time.process_time() - c))
            if dev0 is not None:
                used = _device_used_bytes()
                if used is not None:
                    dev_peak = max(dev_peak, used - dev0)
            if sum(w for w, _ in times) > budget_s:
                break
    return result, times, hp.peak_mb, (dev_peak / 2**20 if dev0 is not None else None)


# --------------------------------------------------------------------------------------------
# hardware limits (GPU only)
# --------------------------------------------------------------------------------------------

def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> dict | None:
    """Pinned and pageable host->device and device->device copy bandwidth (bytes/s), measured
    with PyTorch (CuPy as fallback). None without a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return _copy_bandwidth_torch(torch, nbytes, repeats)
    except ImportError:
        pass
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() > 0:
            return _copy_bandwidth_cupy(cp, nbytes, repeats)
    except Exception:  # noqa: BLE001
        pass
    return None


def _best_rate(copy, sync, nbytes, repeats, traffic=1):
    copy()
    sync()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        copy()
        sync()
        best = min(best, time.perf_counter() - t)
    return traffic * nbytes / best


def _copy_bandwidth_torch(torch, nbytes, repeats):
    sync = torch.cuda.synchronize
    pinned = torch.ones(nbytes, dtype=torch.uint8).pin_memory()
    pageable = torch.ones(nbytes, dtype=torch.uint8)
    d1 = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    d2 = torch.empty_like(d1)
    out = {"tool": f"torch {torch.__version__}", "bytes": nbytes,
           "h2d_pinned": _best_rate(lambda: d1.copy_(pinned, non_blocking=True), sync, nbytes, repeats),
           "h2d_pageable": _best_rate(lambda: d1.copy_(pageable), sync, nbytes, repeats),
           # a device copy reads and writes every byte: count both
           "d2d": _best_rate(lambda: d2.copy_(d1), sync, nbytes, repeats, traffic=2)}
    del pinned, pageable, d1, d2
    torch.cuda.empty_cache()
    return out


def _copy_bandwidth_cupy(cp, nbytes, repeats):
    sync = cp.cuda.get_current_stream().synchronize
    mem = cp.cuda.alloc_pinned_memory(nbytes)
    pinned = np.frombuffer(mem, np.uint8, nbytes)
    pinned[:] = 1
    pageable = np.ones(nbytes, np.uint8)
    d1 = cp.empty(nbytes, cp.uint8)
    d2 = cp.empty_like(d1)
    out = {"tool": f"cupy {cp.__version__}", "bytes": nbytes,
           "h2d_pinned": _best_rate(lambda: d1.set(pinned), sync, nbytes, repeats),
           "h2d_pageable": _best_rate(lambda: d1.set(pageable), sync, nbytes, repeats),
           "d2d": _best_rate(lambda: d2.__setitem__(slice(None), d1), sync, nbytes, repeats, traffic=2)}
    del d1, d2
    cp.get_default_memory_pool().free_all_blocks()
    return out


# --------------------------------------------------------------------------------------------
# machine description
# --------------------------------------------------------------------------------------------

def _run(cmd, cwd=None) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=cwd)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1) if mem_kb else None,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "gpu": None}
    versions = {}
    for mod in ("numpy", "pandas", "polars", "cupy", "torch"):
        m = sys.modules.get(mod)
        if m is None and peer_available(mod) is None:
            m = sys.modules.get(mod)
        if m is not None:
            versions[mod] = getattr(m, "__version__", "?")
    try:
        import cusense

        versions["cusense"] = cusense.__version__
        devs = cusense.devices()
        info["cusense_cuda_built"] = bool(cusense._core.cuda_built())
    except ImportError:
        devs = []
    info["versions"] = versions
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if smi:
        name, driver, mem = [x.strip() for x in smi.splitlines()[0].split(",")]
        info["gpu"] = {"name": name, "driver": driver, "memory": mem, "count": len(smi.splitlines())}
    elif devs:
        d = devs[0]
        info["gpu"] = {"name": d.name, "driver": None, "memory": f"{d.total_memory >> 20} MiB",
                       "count": len(devs)}
    return info


def git_commit() -> str | None:
    if os.environ.get("CUSENSE_COMMIT"):  # a copy of the sources without its git history
        return os.environ["CUSENSE_COMMIT"]
    here = Path(__file__).resolve().parent
    for cwd in (Path.cwd(), here):
        sha = _run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd)
        if sha:
            dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd)
            return sha + ("-dirty" if dirty else "")
    return None


def machine_slug(info: dict) -> str:
    if info.get("gpu"):
        name = info["gpu"]["name"]
    else:
        name = f"{info['cpu']}-{info['cores']}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --------------------------------------------------------------------------------------------
# the suite
# --------------------------------------------------------------------------------------------

def _si(x: float) -> str:
    if x >= 1 and math.log10(x).is_integer():
        return f"1e{int(math.log10(x))}"
    return f"{x:g}"


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


def _mem_available_mb() -> float | None:
    v = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    v = int(line.split()[1]) / 1024
    except OSError:
        pass
    return v


# Rough peak bytes per record, used to skip runs that would not fit in host memory.
_BYTES_PER_RECORD = {"cusense": 40, "numpy": 120, "pandas": 200, "polars": 120, "cupy": 60, "torch": 80}


def run_suite(mode: str = "quick", *, backends=None, peers=None, repeats=None, out: Path | None = None,
              args=None, log=print) -> dict:
    """Runs the suite and returns the report dict (also written to `out` when given)."""
    import cusense

    if args is None:
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
            row.update(_figures(case.records, times), host_peak_mb=round(host_mb, 1),
                       device_peak_mb=None if dev_mb is None else round(dev_mb, 1),
                       windows=int(len(res["key"])), batches=len(lat),
                       latency_p50_ms=float(np.percentile(lat_ms, 50)),
                       latency_p99_ms=float(np.percentile(lat_ms, 99)))
            rows.append(row)
            _log_row(log, row)
        if with_peers and ref is not None:
            avail = _mem_available_mb()
            for p in peers:
                row = {"sweep": sweep, **dataclasses.asdict(case), "impl": p, "kind": "peer"}
                row["aggs"] = list(case.aggs)
                need = _BYTES_PER_RECORD[p] * case.records / 2**20
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
                    _free_gpu_pools()
                diff = check_equal(ref, res, case.aggs)
                row["check"] = "ok" if diff is None else f"MISMATCH vs {ref_name}: {diff}"
                if diff is None:
                    row.update(_figures(case.records, times), host_peak_mb=round(host_mb, 1),
                               device_peak_mb=None if dev_mb is None else round(dev_mb, 1))
                else:
                    report["failures"].append(f"{case.label} {p}: {row['check']}")
                    log(f"  !! {p}: {row['check']} -- its time is not counted")
                rows.append(row)
                _log_row(log, row)
            _add_ratios(rows, backends)
        report["results"].extend(rows)
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    _add_bandwidth_fractions(report)
    if out is not None:
        write_outputs(report, out, log)
    return report


def _figures(records: int, times: list) -> dict:
    wall = [w for w, _ in times]
    best = min(wall)
    return {"seconds": best, "seconds_median": float(np.median(wall)), "runs": len(wall),
            "cpu_seconds": min(c for _, c in times),
            "records_per_s": records / best, "bytes_per_s": records * RECORD_BYTES / best}


def _add_ratios(rows: list, backends) -> None:
    """speedup_vs[peer] on each cusense row: peer seconds / cusense seconds (same run)."""
    peer_rows = [r for r in rows if r["kind"] == "peer" and r.get("check") == "ok"]
    for r in rows:
        if r["kind"] == "cusense" and "seconds" in r:
            r["speedup_vs"] = {p["impl"]: p["seconds"] / r["seconds"] for p in peer_rows}


def _add_bandwidth_fractions(report: dict) -> None:
    lim = report.get("limits")
    if not lim:
        return
    for r in report["results"]:
        if r["impl"] == "cusense-cuda" and "bytes_per_s" in r:
            r["fraction_of_pinned_h2d"] = r["bytes_per_s"] / lim["h2d_pinned"]


def _log_row(log, r: dict) -> None:
    if "seconds" not in r:
        return
    extra = ""
    if r["kind"] == "cusense":
        extra = f"  p50 {r['latency_p50_ms']:.2f} ms p99 {r['latency_p99_ms']:.2f} ms"
    log(f"  {r['impl']:14s} {r['seconds']:8.3f} s (CPU {r['cpu_seconds']:.2f} s) "
        f"{r['records_per_s'] / 1e6:8.2f} M rec/s  "
        f"peak +{r['host_peak_mb']:.0f} MB  [{r['check']}]{extra}")


# --------------------------------------------------------------------------------------------
# window workloads (--windows): sliding, session and count windows. Each is a Workload: a
# stream generator, the cusense window and aggregations, the columns compared, and peers with
# the signature (stream, workload) -> dict of numpy columns. Rows are compared after sorting
# both sides by the workload's natural key, so peers may return them in any order.
# --------------------------------------------------------------------------------------------

SLIDING_SIZE_NS = 10 * 10**9
SLIDING_SLIDE_NS = 2 * 10**9
SESSION_GAP_NS = 10**9
SESSION_CYCLE_NS = 10 * 10**9  # session stream: each key sends for SESSION_ACTIVE of every cycle
SESSION_ACTIVE = 0.7
ROLLING_N = 10
AGGS_WIN = ("count", "mean", "min", "max")
# float64 arithmetic on float32 inputs: only the summation order differs between implementations
WIN_RTOL = 1e-9


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    description: str
    window: object  # cusense window
    aggs: tuple
    columns: tuple  # compared, besides the aggregations (the first ones form the sort key)
    sort_by: tuple
    stream: Callable  # (records, keys) -> Stream
    peers: dict  # peer name -> fn(stream, workload) -> dict of numpy columns
    expansion: float = 1.0  # peer rows per record (sliding: windows per record), for the memory guard


def _sorted_by_key_ts(s: Stream):
    """Records sorted by (key, timestamp), ties in arrival order (cusense's order within a key)."""
    order = np.lexsort((s.ts, s.keys))  # lexsort is stable
    return s.keys[order], s.ts[order], s.values[order].astype(np.float64)


def _segment_reduce(starts: np.ndarray, v: np.ndarray, aggs) -> dict:
    counts = np.diff(np.append(starts, len(v)))
    out = {}
    for a in aggs:
        if a == "count":
            out[a] = counts
        elif a == "mean":
            out[a] = np.add.reduceat(v, starts) / counts
        elif a == "min":
            out[a] = np.minimum.reduceat(v, starts)
        elif a == "max":
            out[a] = np.maximum.reduceat(v, starts)
    return out


def _sliding_starts(ts: np.ndarray, j: int) -> np.ndarray:
    """Start of the j-th most recent sliding window holding each timestamp (j = 0 .. size/slide - 1)."""
    return (ts // SLIDING_SLIDE_NS - j) * SLIDING_SLIDE_NS


def sliding_numpy(s: Stream, w: Workload) -> dict:
    """One row per (record, window) it lies in, then sort by (window, key) and reduceat."""
    m = SLIDING_SIZE_NS // SLIDING_SLIDE_NS
    first = (s.ts // SLIDING_SLIDE_NS)
    w0 = int(first.min()) - m
    win = np.concatenate([first - j for j in range(m)]) - w0
    comp = (win << 32) | np.tile(s.keys.astype(np.int64), m)
    order = np.argsort(comp)
    comp = comp[order]
    v = np.tile(s.values.astype(np.float64), m)[order]
    starts = np.flatnonzero(np.concatenate(([True], comp[1:] != comp[:-1])))
    out = {"key": (comp[starts] & 0xFFFFFFFF).astype(np.uint32),
           "window_start": ((comp[starts] >> 32) + w0) * SLIDING_SLIDE_NS}
    out.update(_segment_reduce(starts, v, w.aggs))
    return out


def sliding_pandas(s: Stream, w: Workload) -> dict:
    """One row per (record, window) it lies in (a shifted copy per window), then groupby."""
    import pandas as pd

    df = pd.DataFrame({"key": s.keys, "ts": s.ts, "value": s.values.astype(np.float64)})
    m = SLIDING_SIZE_NS // SLIDING_SLIDE_NS
    ex = pd.concat([df.assign(window_start=_sliding_starts(df["ts"], j)) for j in range(m)],
                   ignore_index=True)
    g = ex.groupby(["key", "window_start"], sort=True)["value"].agg(list(w.aggs)).reset_index()
    return {c: g[c].to_numpy() for c in ("key", "window_start", *w.aggs)}


def sliding_polars(s: Stream, w: Workload) -> dict:
    """group_by_dynamic(every=slide, period=size, group_by=key). Its first window per key starts
    at the key's first timestamp truncated to the slide; offset -(size - slide) starts it at the
    earliest window holding that record, which gives exactly cusense's windows."""
    import polars as pl

    df = pl.DataFrame({"key": s.keys, "ts": s.ts, "value": s.values})
    g = (df.lazy()
         .with_columns(pl.col("ts").cast(pl.Datetime("ns")), pl.col("value").cast(pl.Float64))
         .sort("ts")
         .group_by_dynamic("ts", every=f"{SLIDING_SLIDE_NS}ns", period=f"{SLIDING_SIZE_NS}ns",
                           offset=f"-{SLIDING_SIZE_NS - SLIDING_SLIDE_NS}ns", group_by="key",
                           closed="left", label="left", start_by="window")
         .agg(pl.len().alias("count"), pl.col("value").mean().alias("mean"),
              pl.col("value").min().alias("min"), pl.col("value").max().alias("max"))
         .collect())
    out = {"key": g["key"].to_numpy(), "window_start": g["ts"].cast(pl.Int64).to_numpy()}
    for a in w.aggs:
        out[a] = g[a].to_numpy()
    return out


def session_numpy(s: Stream, w: Workload) -> dict:
    """Sort by (key, time); a session starts where the key changes or the gap is >= gap."""
    k, t, v = _sorted_by_key_ts(s)
    new = np.ones(len(k), dtype=bool)
    new[1:] = (k[1:] != k[:-1]) | (np.diff(t) >= SESSION_GAP_NS)
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(k)) - 1
    out = {"key": k[starts], "window_start": t[starts], "window_end": t[ends] + SESSION_GAP_NS}
    out.update(_segment_reduce(starts, v, w.aggs))
    return out


def session_pandas(s: Stream, w: Workload) -> dict:
    """Sort, flag gaps per key (groupby diff), cumulative session ids per key, groupby."""
    import pandas as pd

    df = pd.DataFrame({"key": s.keys, "ts": s.ts, "value": s.values.astype(np.float64)})
    df = df.sort_values(["key", "ts"], kind="stable")
    d = df.groupby("key", sort=False)["ts"].diff()
    df["sid"] = (d.isna() | (d >= SESSION_GAP_NS)).groupby(df["key"], sort=False).cumsum()
    g = (df.groupby(["key", "sid"], sort=True)
         .agg(window_start=("ts", "min"), last=("ts", "max"),
              **{a: ("value", a) for a in w.aggs})
         .reset_index())
    out = {"key": g["key"].to_numpy(), "window_start": g["window_start"].to_numpy(),
           "window_end": g["last"].to_numpy() + SESSION_GAP_NS}
    for a in w.aggs:
        out[a] = g[a].to_numpy()
    return out


def session_polars(s: Stream, w: Workload) -> dict:
    """Sort, flag gaps per key (diff over key), cumulative session ids per key, group_by."""
    import polars as pl

    df = pl.DataFrame({"key": s.keys, "ts": s.ts, "value": s.values})
    d = pl.col("ts").diff().over("key")
    g = (df.lazy()
         .with_columns(pl.col("value").cast(pl.Float64))
         .sort("key", "ts")
         .with_columns((d.is_null() | (d >= SESSION_GAP_NS)).cum_sum().over("key").alias("sid"))
         .group_by("key", "sid")
         .agg(pl.col("ts").min().alias("window_start"),
              (pl.col("ts").max() + SESSION_GAP_NS).alias("window_end"),
              pl.len().alias("count"), pl.col("value").mean().alias("mean"),
              pl.col("value").min().alias("min"), pl.col("value").max().alias("max"))
         .collect())
    return {c: g[c].to_numpy() for c in ("key", "window_start", "window_end", *w.aggs)}


def rolling_numpy(s: Stream, w: Workload) -> dict:
    """Sort by (key, time), reduce a sliding_window_view of n rows, blank the rows whose
    window would reach into the previous key (fewer than n records of their own key so far)."""
    from numpy.lib.stride_tricks import sliding_window_view

    n = w.window.n
    k, t, v = _sorted_by_key_ts(s)
    new = np.ones(len(k), dtype=bool)
    new[1:] = k[1:] != k[:-1]
    starts = np.flatnonzero(new)
    pos = np.arange(len(k)) - np.repeat(starts, np.diff(np.append(starts, len(k))))
    view = sliding_window_view(v, n)
    out = {"key": k, "timestamp": t}
    for a in w.aggs:
        col = np.full(len(k), np.nan)
        col[n - 1:] = {"mean": np.mean, "min": np.min, "max": np.max}[a](view, axis=1)
        col[pos < n - 1] = np.nan
        out[a] = col
    return out


def rolling_pandas(s: Stream, w: Workload) -> dict:
    """Sort by time, then groupby(key).rolling(n)."""
    import pandas as pd

    df = pd.DataFrame({"key": s.keys, "ts": s.ts, "value": s.values.astype(np.float64)})
    df = df.sort_values("ts", kind="stable")
    r = df.groupby("key", sort=True)["value"].rolling(w.window.n).agg(list(w.aggs))
    rec = r.index.get_level_values(1).to_numpy()  # record numbers, grouped by key in time order
    out = {"key": r.index.get_level_values(0).to_numpy(), "timestamp": s.ts[rec]}
    for a in w.aggs:
        out[a] = r[a].to_numpy()
    return out


def rolling_polars(s: Stream, w: Workload) -> dict:
    """Sort by (key, time), then rolling_mean/min/max(n) over key."""
    import polars as pl

    n = w.window.n
    fns = {"mean": pl.Expr.rolling_mean, "min": pl.Expr.rolling_min, "max": pl.Expr.rolling_max}
    df = pl.DataFrame({"key": s.keys, "ts": s.ts, "value": s.values})
    g = (df.lazy()
         .with_columns(pl.col("value").cast(pl.Float64))
         .sort("key", "ts", maintain_order=True)
         .select("key", pl.col("ts").alias("timestamp"),
                 *[fns[a](pl.col("value"), n).over("key").alias(a) for a in w.aggs])
         .collect())
    return {c: g[c].to_numpy() for c in ("key", "timestamp", *w.aggs)}


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


def run_cusense_window(s: Stream, w: Workload, batch: int, backend: str,
                       latencies: list | None = None) -> dict:
    """The streaming pipeline for a window workload: push micro-batches, poll, flush."""
    import cusense

    pipe = cusense.Pipeline(w.window, aggs=list(w.aggs), max_out_of_orderness=s.disorder_ns,
                            backend=backend)
    res = stream_through(pipe, s, batch, latencies)
    return {c: res[c] for c in (*w.columns, *w.aggs)}


def check_rows(ref: dict, got: dict, w: Workload, rtol: float = WIN_RTOL) -> str | None:
    """None when `got` has the rows of `ref` (both sorted by the workload's natural key first),
    else the first difference. Keys, times and counts exactly, min/max to float32-exact values
    (the inputs), means to `rtol`; NaN equals NaN (count windows before n records)."""
    if len(got["key"]) != len(ref["key"]):
        return f"{len(got['key'])} rows, expected {len(ref['key'])}"

    def ordered(d):
        # lexsort is stable: rows equal on the key (count windows: same key and timestamp)
        # keep their order, which both sides give by arrival
        o = np.lexsort(tuple(np.asarray(d[c]) for c in reversed(w.sort_by)))
        return {c: np.asarray(d[c])[o] for c in (*w.columns, *w.aggs)}

    a_all, b_all = ordered(ref), ordered(got)
    for col in (*w.columns, *w.aggs):
        a, b = a_all[col], b_all[col]
        if col in w.columns or col == "count":
            bad = np.flatnonzero(a.astype(np.int64) != b.astype(np.int64))
        elif col in ("min", "max"):
            bad = np.flatnonzero(~((a == b) | (np.isnan(a) & np.isnan(b))))
        else:
            bad = np.flatnonzero(~np.isclose(b, a, rtol=rtol, atol=0.0, equal_nan=True))
        if bad.size:
            i = int(bad[0])
            at = ", ".join(f"{c}={a_all[c][i]}" for c in w.sort_by)
            return f"column {col}: {bad.size} rows differ, first at ({at}): {b[i]!r} vs {a[i]!r}"
    return None


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
                            f"cusense streamed in micro-batches of {_si(batch)} (push + poll)",
                  "check": f"rows sorted by their natural key; keys, times, counts, min, max exact, "
                           f"mean to a relative {WIN_RTOL:g}",
                  "workloads": {w.name: w.description for w in workloads}},
              "results": [], "failures": []}
    t_start = time.perf_counter()
    for i, w in enumerate(workloads, 1):
        gc.collect()
        s = w.stream(records, keys)
        log(f"[{i}/{len(workloads)}] {w.name}: records={_si(records)} keys={_si(keys)} "
            f"batch={_si(batch)}  (elapsed {time.perf_counter() - t_start:.0f} s)")
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
            row.update(_figures(records, times), host_peak_mb=round(host_mb, 1),
                       device_peak_mb=None if dev_mb is None else round(dev_mb, 1),
                       rows_out=int(len(res["key"])), batches=len(lat),
                       latency_p50_ms=float(np.percentile(lat_ms, 50)),
                       latency_p99_ms=float(np.percentile(lat_ms, 99)))
            rows.append(row)
            _log_row(log, row)
        for p in peers:
            if ref is None:
                continue
            row = {**base, "impl": p, "kind": "peer"}
            avail = _mem_available_mb()
            need = _BYTES_PER_RECORD[p] * records * w.expansion / 2**20
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
                row.update(_figures(records, times), host_peak_mb=round(host_mb, 1),
                           rows_out=int(len(res["key"])))
            else:
                report["failures"].append(f"{w.name} {p}: {row['check']}")
                log(f"  !! {p}: {row['check']} -- its time is not counted")
            rows.append(row)
            _log_row(log, row)
        _add_ratios(rows, backends)
        report["results"].extend(rows)
        del s, ref
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    if out is not None:
        write_outputs(report, out, log)
    return report


# --------------------------------------------------------------------------------------------
# outputs: JSON, markdown, plots
# --------------------------------------------------------------------------------------------

def _fmt_rate(x):
    return "" if x is None else f"{x / 1e6:.2f}"


def _result_row(r: dict, cells: list, volume: str, peer_names) -> str:
    """A markdown table row: the given leading cells, then timings (`volume` is the 4th timing
    column: MB/s or rows out), check and speedups over each peer."""
    if "seconds" in r:
        cells = cells + [f"{r['seconds']:.3f}", f"{r['cpu_seconds']:.2f}", _fmt_rate(r["records_per_s"]), volume,
                         f"{r['latency_p50_ms']:.2f}" if "latency_p50_ms" in r else "",
                         f"{r['latency_p99_ms']:.2f}" if "latency_p99_ms" in r else "",
                         f"{r['host_peak_mb']:.0f}"]
    else:
        cells = cells + [""] * 7
    cells.append(r.get("check", ""))
    sv = r.get("speedup_vs", {})
    cells += [f"{sv[p]:.1f}" if p in sv else "" for p in peer_names]
    return "| " + " | ".join(cells) + " |"


def markdown(report: dict) -> str:
    if report["mode"] == "windows":
        return windows_markdown(report)
    m = report["machine"]
    gpu = m.get("gpu")
    lines = [f"# cusense benchmark ({report['mode']})", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB"
             + (f"; GPU {gpu['name']} (driver {gpu['driver']})" if gpu else "; no GPU"),
             f"- commit {report['git_commit']}, {report['timestamp']}, backends {', '.join(report['backends'])}",
             f"- workload: tumbling {WINDOW_NS // 10**9} s windows, ~100 records per (key, window), "
             f"{RECORD_BYTES} B/record, mild disorder (no late records); "
             + report["workload"]["timing"],
             f"- load average at start: {m.get('load_average_at_start')}", ""]
    lim = report.get("limits")
    if lim:
        lines += [f"Copy bandwidth ({lim['tool']}, {lim['bytes'] >> 20} MiB): pinned H2D "
                  f"{lim['h2d_pinned'] / 1e9:.1f} GB/s, pageable H2D {lim['h2d_pageable'] / 1e9:.1f} GB/s, "
                  f"device-to-device {lim['d2d'] / 1e9:.1f} GB/s (read + write)", ""]
    peer_names = report["peers"]
    head = ["sweep", "records", "keys", "batch", "aggs", "impl", "s", "CPU s", "M rec/s", "MB/s",
            "p50 ms", "p99 ms", "peak host MB", "check"] + [f"× {p}" for p in peer_names]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        cells = [r["sweep"], _si(r["records"]), _si(r["keys"]), _si(r["batch"]) if r["kind"] == "cusense" else "all",
                 str(len(r["aggs"])), r["impl"]]
        volume = f"{r['bytes_per_s'] / 1e6:.0f}" if "seconds" in r else ""
        lines.append(_result_row(r, cells, volume, peer_names))
    if report["failures"]:
        lines += ["", "**FAILURES**", ""] + [f"- {f}" for f in report["failures"]]
    lines.append("")
    return "\n".join(lines)


def plots(report: dict, out: Path, prefix: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    if report["mode"] == "windows":
        return windows_plot(report, out, prefix, plt)
    written = []
    lim = report.get("limits")
    h2d_rec = lim["h2d_pinned"] / RECORD_BYTES if lim else None
    for sweep, xkey, xlabel in (("batch", "batch", "micro-batch size (records)"),
                                ("keys", "keys", "distinct keys"),
                                ("records", "records", "records in the stream")):
        own = [r for r in report["results"] if r["sweep"] == sweep and "records_per_s" in r]
        if not own:
            continue
        # every measured row with this sweep's fixed parameters (other sweeps may hold points)
        fixed_keys = [k for k in ("records", "keys", "batch") if k != xkey]
        f0 = own[0]
        rows, seen = [], set()
        for r in report["results"]:
            if ("records_per_s" in r and r["aggs"] == f0["aggs"]
                    and all(r[k] == f0[k] for k in fixed_keys if not (k == "batch" and r["kind"] == "peer"))
                    and (sweep != "batch" or r["kind"] == "cusense")
                    and (r["impl"], r[xkey]) not in seen):
                seen.add((r["impl"], r[xkey]))
                rows.append(r)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for impl in dict.fromkeys(r["impl"] for r in rows):
            pts = sorted((r[xkey], r["records_per_s"]) for r in rows if r["impl"] == impl)
            style = "-o" if impl.startswith("cusense") else "--s"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=impl)
        if sweep == "batch":  # peers run one-shot: draw them as levels from the matching key sweep
            fixed = rows[0]
            for r in report["results"]:
                if (r["kind"] == "peer" and "records_per_s" in r and r["records"] == fixed["records"]
                        and r["keys"] == fixed["keys"] and r["aggs"] == fixed["aggs"]):
                    ax.axhline(r["records_per_s"], ls=":", lw=1, color="gray")
                    ax.annotate(f"{r['impl']} (one-shot)", (rows[0]["batch"], r["records_per_s"]),
                                fontsize=7, color="gray")
        if h2d_rec:
            ax.axhline(h2d_rec, color="red", lw=1.2, label="pinned H2D limit (16 B/record)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("records / s")
        r0 = rows[0]
        fixed_desc = {"batch": f"{_si(r0['records'])} records, {_si(r0['keys'])} keys",
                      "keys": f"{_si(r0['records'])} records, batch {_si(r0['batch'])}",
                      "records": f"{_si(r0['keys'])} keys, batch {_si(r0['batch'])}"}[sweep]
        ax.set_title(f"tumbling windows, {len(r0['aggs'])} aggs: {fixed_desc}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{prefix}-throughput_vs_{sweep}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def windows_markdown(report: dict) -> str:
    m, wl = report["machine"], report["workload"]
    gpu = m.get("gpu")
    lines = ["# cusense benchmark (windows)", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB"
             + (f"; GPU {gpu['name']} (driver {gpu['driver']})" if gpu else "; no GPU"),
             f"- commit {report['git_commit']}, {report['timestamp']}, backends {', '.join(report['backends'])}",
             f"- stream: {_si(wl['records'])} records, {_si(wl['keys'])} keys ({wl['keys_distribution']}), "
             f"{wl['values']} values, {RECORD_BYTES} B/record; {wl['disorder']}",
             f"- {wl['timing']}", f"- check: {wl['check']}",
             f"- load average at start: {m.get('load_average_at_start')}", "", "Workloads:", ""]
    lines += [f"- **{name}**: {desc}" for name, desc in wl["workloads"].items()]
    notes = [f"- {p}: {why}" for p, why in {**report["peers_not_run"], **report["peers_unavailable"]}.items()]
    if notes:
        lines += ["", "Peers not run:", ""] + notes
    peer_names = report["peers"]
    head = ["workload", "impl", "s", "CPU s", "M rec/s", "rows out", "p50 ms", "p99 ms",
            "peak host MB", "check"] + [f"× {p}" for p in peer_names]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        cells = [r["workload"], r["impl"]]
        lines.append(_result_row(r, cells, f"{r.get('rows_out', '')}", peer_names))
    if report["failures"]:
        lines += ["", "**FAILURES**", ""] + [f"- {f}" for f in report["failures"]]
    lines.append("")
    return "\n".join(lines)


def windows_plot(report: dict, out: Path, prefix: str, plt) -> list[str]:
    """Grouped bars: records/s per workload (groups) and implementation (bars), log scale."""
    measured = [r for r in report["results"] if "records_per_s" in r]
    if not measured:
        return []
    workloads = list(dict.fromkeys(r["workload"] for r in report["results"]))
    impls = list(dict.fromkeys(r["impl"] for r in measured))
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for i, wname in enumerate(workloads):
            r = next((r for r in measured if r["workload"] == wname and r["impl"] == impl), None)
            if r is not None:
                xs.append(i - 0.4 + (j + 0.5) * width)
                ys.append(r["records_per_s"])
        ax.bar(xs, ys, width, label=impl, hatch="" if impl.startswith("cusense") else "//",
               edgecolor="black", linewidth=0.5)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_yscale("log")
    ax.set_ylabel("records / s")
    wl = report["workload"]
    ax.set_title(f"sliding / session / count windows: {_si(wl['records'])} records, "
                 f"{_si(wl['keys'])} keys (cusense batch {_si(wl['batch'])})", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = f"{prefix}-throughput.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]


def write_outputs(report: dict, out: Path, log=print) -> None:
    out.mkdir(parents=True, exist_ok=True)
    prefix = report["mode"]
    report["plots"] = plots(report, out, prefix)
    (out / f"{prefix}.json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    (out / f"{prefix}.md").write_text(markdown(report))
    log(f"wrote {out / (prefix + '.json')}, {prefix}.md, {len(report['plots'])} plot(s)")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def default_out_dir(report_machine: dict, base: Path | None = None) -> Path:
    if base is None:
        base = Path("bench-results")
        for root in (Path(__file__).resolve().parents[2], Path.cwd()):
            if (root / "benchmarks").is_dir():
                base = root / "benchmarks" / "results"
                break
    return base / f"{machine_slug(report_machine)}-{_dt.date.today().isoformat()}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cusense.bench", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", const="quick", dest="mode",
                   help="small sweep, under 2 minutes on a 2-core CPU")
    g.add_argument("--full", action="store_const", const="full", dest="mode",
                   help="records 1e5..1e8, keys 1e1..1e6, batches 1e3..1e7 (long)")
    g.add_argument("--standard", action="store_const", const="standard", dest="mode",
                   help="the target workload only: 1e7 records, 1e4 keys, 5 aggregations, vs peers")
    g.add_argument("--windows", action="store_const", const="windows", dest="mode",
                   help="sliding, session and count windows vs peers: 1e6 records, 1e3 keys, "
                        "batches of 1e5 (--records/--keys/--batches take one value each here)")
    g.add_argument("--smoke", action="store_const", const="smoke", dest="mode", help=argparse.SUPPRESS)
    p.add_argument("--records", type=lambda x: int(float(x)), nargs="+", help="custom grid: records")
    p.add_argument("--keys", type=lambda x: int(float(x)), nargs="+", help="custom grid: keys")
    p.add_argument("--batches", type=lambda x: int(float(x)), nargs="+", help="custom grid: batch sizes")
    p.add_argument("--aggs", type=int, choices=(5, 7), default=5,
                   help="5 = count/sum/mean/min/max, 7 adds var/std (ddof=1)")
    p.add_argument("--backends", nargs="+", choices=("cpu", "cuda"), help="default: every usable one")
    p.add_argument("--peers", nargs="*", choices=tuple(PEERS), help="default: every importable one")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (best counts)")
    p.add_argument("--out", type=Path, help="output directory (default benchmarks/results/<machine>-<date>)")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = args.mode or ("custom" if (args.records or args.keys or args.batches) else "quick")
    if mode != "windows" and (args.records or args.keys or args.batches):
        mode = "custom"
    if mode == "windows":
        for opt in ("records", "keys", "batches"):
            if len(getattr(args, opt) or ()) > 1:
                parser.error(f"--windows takes one value for --{opt}")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    out = None
    if not args.no_write:
        out = args.out or default_out_dir(machine_info())
    report = run_suite(mode, backends=args.backends, peers=args.peers, repeats=args.repeats,
                       out=out, args=args, log=log)
    print(markdown(report))
    if report["failures"]:
        log("\n!! BENCHMARK CHECKS FAILED:\n" + "\n".join(f"  - {f}" for f in report["failures"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
