"""Output comparisons: every result is checked against the reference (the first cusense
backend) before its time counts."""
from __future__ import annotations

import numpy as np

from .workloads import Workload

EXACT = ("count", "min", "max")  # compared exactly; the rest with a relative tolerance
RTOL = 1e-6
# float64 arithmetic on float32 inputs: only the summation order differs between implementations
WIN_RTOL = 1e-9


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
