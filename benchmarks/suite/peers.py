"""The tools users would pick instead, on the tumbling-window workload: numpy, pandas, polars,
CuPy and PyTorch. Each takes the whole stream at once and returns a dict of numpy columns ordered
by (window_start, key): key, window_start, and one column per aggregation."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .workloads import WINDOW_NS, Stream


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
