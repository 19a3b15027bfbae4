"""Conversions of durations and timestamps to int64 nanoseconds."""
from __future__ import annotations

import datetime as _dt
import re
import warnings

import numpy as np

from ._typing import Column, Duration

_UNITS = {
    "ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "sec": 1_000_000_000,
    "m": 60_000_000_000, "min": 60_000_000_000,
    "h": 3_600_000_000_000, "d": 86_400_000_000_000, "w": 7 * 86_400_000_000_000,
}
_PART = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(ns|us|µs|ms|sec|s|min|m|h|d|w)")

# numpy timedelta64 units of fixed length, in ns. Sub-nanosecond units are exact only for
# whole nanoseconds; years and months have no fixed length and are refused.
_NUMPY_UNIT_NS = {
    "W": 7 * 86_400_000_000_000, "D": 86_400_000_000_000, "h": 3_600_000_000_000,
    "m": 60_000_000_000, "s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1,
}
_NUMPY_SUBNS_PER_NS = {"ps": 1_000, "fs": 1_000_000, "as": 1_000_000_000}

# Integer timestamp units accepted by ``time_unit``.
TIME_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

# The engine's timestamp range: +-2^62 ns around the epoch (years 1824..2116).
MAX_TIMESTAMP_NS = 2**62
_RANGE_TEXT = "+-2^62 ns around the epoch, years 1824..2116"


class TimeUnitWarning(UserWarning):
    """Integer timestamps read as nanoseconds look like seconds or milliseconds."""


def _timedelta64_to_ns(value: np.timedelta64, what: str) -> int:
    if np.isnat(value):
        raise ValueError(f"{what} is NaT")
    unit, multiple = np.datetime_data(value.dtype)
    count = int(value.astype(np.int64)) * multiple
    if unit in _NUMPY_UNIT_NS:
        ns = count * _NUMPY_UNIT_NS[unit]
    elif unit in _NUMPY_SUBNS_PER_NS:
        ns, rest = divmod(count, _NUMPY_SUBNS_PER_NS[unit])
        if rest:
            raise ValueError(f"{what} {value!r} is not a whole number of nanoseconds")
    elif unit in ("Y", "M"):
        raise ValueError(f"{what} {value!r}: years and months have no fixed length; give a fixed "
                         f"unit (W, D, h, m, s, ms, us, ns), e.g. np.timedelta64(365, 'D')")
    else:  # the generic unit of np.timedelta64(5): no unit to read it in
        raise ValueError(f"{what} {value!r} has no unit; use e.g. np.timedelta64(5, 's')")
    if not -2**63 <= ns < 2**63:
        raise ValueError(f"{what} {value!r} does not fit in int64 nanoseconds")
    return ns


def to_nanoseconds(value: Duration, what: str = "duration") -> int:
    """A duration as int nanoseconds: int (ns), "1s", "1h30min", timedelta (also
    pandas.Timedelta), numpy timedelta64 of a fixed unit (W, D, h, m, s, ms, us, ns; years and
    months are refused)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be a duration, got {value!r}")
    # np.timedelta64 is a subclass of np.signedinteger: test it before plain integers.
    if isinstance(value, np.timedelta64):
        return _timedelta64_to_ns(value, what)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, _dt.timedelta):
        if hasattr(value, "asm8"):  # pandas.Timedelta keeps nanoseconds a timedelta cannot hold
            return _timedelta64_to_ns(value.asm8, what)
        return (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000
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


def check_no_nulls(column: Column, what: str) -> None:
    """pyarrow / polars columns with nulls would reach numpy as floats, NaT or objects, with a
    message about the dtype: name the null instead."""
    nulls = getattr(column, "null_count", 0)
    if callable(nulls):  # a method in polars, a property in pyarrow
        nulls = nulls()
    if nulls:
        first = int(np.flatnonzero(np.asarray(column.is_null()))[0])
        raise ValueError(f"{what} contain a null at index {first}")


def _tz_aware_pandas_to_utc(timestamps: Column) -> np.ndarray | None:
    """A time-zone-aware pandas Series / DatetimeIndex as naive UTC datetime64, else None.

    numpy turns such columns into object arrays of Timestamps, so they are converted here.
    """
    dtype = getattr(timestamps, "dtype", None)
    if getattr(dtype, "tz", None) is None or not type(timestamps).__module__.startswith("pandas"):
        return None
    import pandas as pd

    return pd.DatetimeIndex(timestamps).tz_convert("UTC").tz_localize(None).to_numpy()


def _datetime_objects_to_datetime64(ts: np.ndarray) -> np.ndarray:
    """An object array of datetime / pandas.Timestamp / numpy datetime64 as datetime64[ns].

    Aware datetimes are converted to UTC; naive ones are taken as UTC already.
    """
    out = np.empty(ts.shape, dtype="datetime64[ns]")
    for i, d in enumerate(ts):
        if isinstance(d, _dt.datetime):
            if d.tzinfo is not None and d.utcoffset() is not None:
                d = d.astimezone(_dt.timezone.utc).replace(tzinfo=None)
            out[i] = d.to_datetime64() if hasattr(d, "to_datetime64") else np.datetime64(d, "us")
        elif isinstance(d, np.datetime64):
            out[i] = d
        else:
            raise TypeError(f"timestamps must be int64 nanoseconds, datetime64 or datetime objects; "
                            f"element {i} is {type(d).__name__} {d!r}")
    return out


def _check_datetime64_range(ts: np.ndarray) -> None:
    """Refuse datetime64 values that cannot be converted to ns without wrapping around.

    numpy's cast of a coarse unit (s, ms, us, D, ...) to ns overflows silently, turning
    1500-01-01[s] into a date in 2084; the bounds are compared in the input's own unit instead.
    """
    unit, count = np.datetime_data(ts.dtype)
    if (unit, count) == ("ns", 1):
        return  # nothing to wrap; the engine checks the range of nanoseconds itself
    hi = np.datetime64(MAX_TIMESTAMP_NS, "ns").astype(ts.dtype)     # casts round down
    lo = np.datetime64(-MAX_TIMESTAMP_NS, "ns").astype(ts.dtype)
    if lo.astype("datetime64[ns]").astype(np.int64) < -MAX_TIMESTAMP_NS:
        lo = lo + np.timedelta64(count, unit)  # type: ignore[call-overload]  # unit: a str from np.datetime_data   # the first step of the unit inside the range
    outside = (ts < lo) | (ts > hi)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"timestamp {ts[i]} at index {i} is outside the supported range "
                         f"({_RANGE_TEXT}); the batch of {len(ts)} records was rejected")


def _integers_to_ns(ts: np.ndarray, time_unit: str) -> np.ndarray:
    if ts.dtype == np.uint64 and ts.size and ts.max() > np.iinfo(np.int64).max:
        raise ValueError("timestamps exceed the int64 range")
    ts = np.ascontiguousarray(ts, dtype=np.int64)
    factor = TIME_UNITS[time_unit]
    if factor == 1:
        return ts  # the engine checks the range of nanoseconds itself
    limit = MAX_TIMESTAMP_NS // factor
    outside = (ts < -limit) | (ts > limit)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"timestamp {ts[i]} ({time_unit}) at index {i} is outside the supported "
                         f"range ({_RANGE_TEXT}); the batch of {len(ts)} records was rejected")
    return ts * factor


def check_time_unit(time_unit: object) -> str:
    if time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit must be one of {', '.join(map(repr, TIME_UNITS))}, got {time_unit!r}")
    return time_unit


def timestamp_array(timestamps: Column) -> np.ndarray:
    """Event times as a 1-D numpy array of integers or datetime64 (of any unit), not yet
    converted: time-zone-aware pandas columns become naive UTC datetime64, ``datetime`` objects
    datetime64[ns] (aware ones converted to UTC, naive ones taken as UTC)."""
    check_no_nulls(timestamps, "timestamps")
    utc = _tz_aware_pandas_to_utc(timestamps)
    ts = np.asarray(timestamps) if utc is None else utc
    if ts.ndim != 1:
        raise ValueError(f"timestamps must be 1-D (one per record), got shape {ts.shape}")
    if ts.dtype == object:
        ts = _datetime_objects_to_datetime64(ts)
    return ts


def timestamps_to_ns(timestamps: Column, time_unit: str = "ns") -> np.ndarray:
    """Event times as a contiguous int64 array of nanoseconds since the epoch (UTC).

    Accepts integers (in ``time_unit``: ns, us, ms or s since the epoch), datetime64 of any
    unit, time-zone-aware pandas Series / DatetimeIndex (converted to UTC), sequences of
    ``datetime`` objects (aware ones converted to UTC, naive ones taken as UTC), and pyarrow /
    polars columns of these types.
    """
    check_time_unit(time_unit)
    ts = timestamp_array(timestamps)
    if ts.dtype.kind == "M":
        if np.isnat(ts).any():
            raise ValueError(f"timestamps contain NaT at index {int(np.flatnonzero(np.isnat(ts))[0])}")
        _check_datetime64_range(ts)
        return np.ascontiguousarray(ts.astype("datetime64[ns]").view(np.int64))
    if ts.dtype.kind in "iu":
        return _integers_to_ns(ts, time_unit)
    raise TypeError(f"timestamps must be int64 nanoseconds or datetime64, got dtype {ts.dtype}")


def _looks_like(ts_ns: np.ndarray) -> str | None:
    """"seconds" or "milliseconds" when every integer read as ns looks like seconds (in
    [1e9, 1e10): years 2001..2286) or milliseconds (in [1e12, 1e13)) of the present era."""
    if ts_ns.size == 0:
        return None
    low, high = int(ts_ns.min()), int(ts_ns.max())
    if 10**9 <= low and high < 10**10:
        return "seconds"
    if 10**12 <= low and high < 10**13:
        return "milliseconds"
    return None


def warn_if_seconds_or_ms(ts_ns: np.ndarray, stacklevel: int) -> bool:
    """Warn (:class:`TimeUnitWarning`) when integer timestamps read as nanoseconds look like
    seconds or milliseconds; True when it warned."""
    unit = _looks_like(ts_ns)
    if unit is None:
        return False
    short = {"seconds": "s", "milliseconds": "ms"}[unit]
    warnings.warn(f"integer timestamps are read as nanoseconds since the epoch, but these "
                  f"({ts_ns.min()}..{ts_ns.max()}) look like {unit}, which would put them in "
                  f"January 1970; pass time_unit={short!r} if they are {unit}, or "
                  f"time_unit='ns' to keep nanoseconds without this check",
                  TimeUnitWarning, stacklevel=stacklevel + 1)
    return True
