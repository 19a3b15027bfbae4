"""Conversions of durations and timestamps to int64 nanoseconds."""
from __future__ import annotations

import datetime as _dt
import re

import numpy as np

_UNITS = {
    "ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "sec": 1_000_000_000,
    "m": 60_000_000_000, "min": 60_000_000_000,
    "h": 3_600_000_000_000, "d": 86_400_000_000_000, "w": 7 * 86_400_000_000_000,
}
_PART = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(ns|us|µs|ms|sec|s|min|m|h|d|w)")


def to_nanoseconds(value, what: str = "duration") -> int:
    """A duration as int nanoseconds: int (ns), "1s", "1h30min", timedelta, numpy timedelta64."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be a duration, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, _dt.timedelta):
        return (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000
    if isinstance(value, np.timedelta64):
        if np.isnat(value):
            raise ValueError(f"{what} is NaT")
        return int(value.astype("timedelta64[ns]").astype(np.int64))
    if isinstance(value, str):
        text, total, pos = value.strip(), 0.0, 0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"{what}: cannot parse {value!r} (examples: '500ms', '1s', '5min', '1h30min')")
        return int(round(total))
    raise TypeError(f"{what} must be an int (ns), a string like '1s', a timedelta or a "
                    f"numpy timedelta64, got {type(value).__name__}")


def timestamps_to_ns(timestamps) -> np.ndarray:
    """Event times as a contiguous int64 array of nanoseconds since the epoch."""
    ts = np.asarray(timestamps)
    if ts.dtype.kind == "M":
        if np.isnat(ts).any():
            raise ValueError(f"timestamps contain NaT at index {int(np.flatnonzero(np.isnat(ts))[0])}")
        return np.ascontiguousarray(ts.astype("datetime64[ns]").view(np.int64))
    if ts.dtype.kind in "iu":
        if ts.dtype == np.uint64 and ts.size and ts.max() > np.iinfo(np.int64).max:
            raise ValueError("timestamps exceed the int64 range")
        return np.ascontiguousarray(ts, dtype=np.int64)
    raise TypeError(f"timestamps must be int64 nanoseconds or datetime64, got dtype {ts.dtype}")
