"""numpy, pandas and polars implementations of the window workloads (windows.py), each
``(stream, workload) -> dict of numpy columns``. Rows may come in any order: checks.check_rows
sorts both sides by the workload's natural key before comparing."""
from __future__ import annotations

import numpy as np

from .workloads import SESSION_GAP_NS, SLIDING_SIZE_NS, SLIDING_SLIDE_NS, Stream, Workload


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
