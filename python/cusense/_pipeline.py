"""The streaming pipeline and one-shot windowed aggregation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import _core
from ._result import Result
from ._time import timestamps_to_ns, to_nanoseconds

_NAN_POLICIES = ("skip", "raise")


@dataclass(frozen=True)
class Tumbling:
    """Tumbling event-time windows ``[k*size + offset, (k+1)*size + offset)``.

    ``size`` and ``offset`` take int nanoseconds, strings like ``"1s"``/``"5min"``, timedeltas.
    """

    size: object
    offset: object = 0

    def __post_init__(self):
        size = to_nanoseconds(self.size, "window size")
        if size <= 0:
            raise ValueError(f"window size must be positive, got {self.size!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "offset", to_nanoseconds(self.offset, "window offset"))


def _as_keys(keys) -> np.ndarray:
    k = np.asarray(keys)
    if k.dtype == np.uint32:
        return np.ascontiguousarray(k)
    if k.dtype.kind not in "iu":
        raise TypeError(f"keys must be an integer array (uint32 sensor ids), got dtype {k.dtype}")
    if k.size and (k.min() < 0 or k.max() > np.iinfo(np.uint32).max):
        bad = int(np.flatnonzero((k < 0) | (k > np.iinfo(np.uint32).max))[0])
        raise ValueError(f"key {k[bad]} at index {bad} is outside the uint32 range")
    return np.ascontiguousarray(k, dtype=np.uint32)


def _as_values(values, channels: int) -> np.ndarray:
    v = np.asarray(values)
    if v.dtype.kind in "iub":
        v = v.astype(np.float64)
    elif v.dtype not in (np.float32, np.float64):
        raise TypeError(f"values must be float32 or float64 (or integers), got dtype {v.dtype}")
    if channels == 1 and v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    expected = "(n,)" if channels == 1 else f"(n, {channels})"
    if (channels == 1 and v.ndim != 1) or (channels > 1 and (v.ndim != 2 or v.shape[1] != channels)):
        raise ValueError(f"values must have shape {expected} for {channels} channel(s), got {v.shape}")
    return np.ascontiguousarray(v)


class Pipeline:
    """A keyed event-time windowing pipeline fed with micro-batches.

    Parameters
    ----------
    window : Tumbling
        The window definition.
    aggs : list of str
        Aggregations: count, sum, mean, min, max, var, std (sample, ddof=1, like pandas),
        var_pop, std_pop (ddof=0), nan_count. A ``nan_count`` column is always present.
    max_out_of_orderness : duration
        How far the watermark trails the largest event time seen. A record whose window ended
        at or before the watermark just before it is late: counted, returned by
        :meth:`poll_late`, not aggregated.
    backend : "auto" | "cpu" | "cuda"
        ``"auto"`` picks CUDA when a device is usable.
    channels : int or list of str, optional
        Values per record; with several, ``values`` is ``(n, channels)`` and columns are named
        ``<agg>_<channel>``.
    nan_policy : "skip" | "raise"
        ``"skip"`` leaves NaN values out of the aggregations and counts them (``nan_count``);
        ``"raise"`` rejects a batch holding NaN with a ValueError.
    """

    def __init__(self, window, aggs: Sequence[str] = ("count", "sum", "mean", "min", "max", "var", "std"),
                 max_out_of_orderness=0, backend: str = "auto", channels=None,
                 nan_policy: str = "skip", staging_records: int | None = None,
                 cpu_threads: int = 0):
        if not isinstance(window, Tumbling):
            raise TypeError(f"window must be cusense.Tumbling(...), got {type(window).__name__}")
        if isinstance(aggs, str):
            aggs = [aggs]
        if nan_policy not in _NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {_NAN_POLICIES}, got {nan_policy!r}")
        opts = _core.PipelineOptions()
        opts.window_size = window.size
        opts.window_offset = window.offset
        opts.aggs = list(aggs)
        opts.max_out_of_orderness = to_nanoseconds(max_out_of_orderness, "max_out_of_orderness")
        opts.backend = backend
        if channels is None:
            opts.channels = 1
        elif isinstance(channels, (int, np.integer)):
            opts.channels = int(channels)
        else:
            opts.channel_names = [str(c) for c in channels]
            opts.channels = len(opts.channel_names)
        if staging_records is not None:
            opts.staging_records = int(staging_records)
        opts.cpu_threads = int(cpu_threads)
        self._core = _core.Pipeline(opts)
        self._channels = opts.channels
        self._nan_policy = nan_policy
        self.window = window
        self.aggs = list(aggs)

    @property
    def backend(self) -> str:
        """``"cuda"`` or ``"cpu"``."""
        return self._core.backend

    @property
    def stats(self) -> dict:
        """Records pushed / aggregated / late / rejected, NaN values, windows emitted and open,
        current watermark (ns, None before the first record)."""
        return self._core.stats()

    def push(self, keys, timestamps, values) -> None:
        """Push a micro-batch: keys (uint32 ids), timestamps (int64 ns or datetime64), values."""
        k = _as_keys(keys)
        t = timestamps_to_ns(timestamps)
        v = _as_values(values, self._channels)
        if not (k.ndim == 1 and t.ndim == 1 and len(k) == len(t) == len(v)):
            raise ValueError(f"length mismatch: {k.size} keys, {t.size} timestamps, {len(v)} values")
        if self._nan_policy == "raise" and v.dtype.kind == "f":
            nan_at = np.flatnonzero(np.isnan(v).reshape(len(v), -1).any(axis=1))
            if nan_at.size:
                raise ValueError(f"value is NaN at index {int(nan_at[0])} (nan_policy='raise'); "
                                 f"batch of {len(v)} records rejected")
        if v.dtype == np.float32:
            self._core.push_f32(k, t, v)
        else:
            self._core.push_f64(k, t, v)

    def poll(self) -> Result:
        """Windows emitted since the last poll, ordered by (window_start, key)."""
        return Result(self._core.poll())

    def poll_late(self) -> Result:
        """Late records since the last call (key, timestamp, value), in arrival order."""
        return Result(self._core.poll_late())

    def flush(self) -> Result:
        """End of stream: emit every open window and return what poll() would."""
        return Result(self._core.flush())


def window_aggregate(keys, timestamps, values, window, aggs=("count", "sum", "mean", "min", "max"),
                     max_out_of_orderness=0, backend: str = "auto", **kwargs) -> Result:
    """Windowed aggregation of a finite stream in one call (push everything, flush).

    With the default ``max_out_of_orderness=0`` a record is late when its window already ended
    before it arrived; pass a bound (or sort by time) to aggregate out-of-order data fully.
    """
    pipe = Pipeline(window, aggs=aggs, max_out_of_orderness=max_out_of_orderness,
                    backend=backend, **kwargs)
    pipe.push(keys, timestamps, values)
    return pipe.flush()


def devices() -> list:
    """Usable CUDA devices (an empty list without CUDA support, driver or GPU)."""
    return list(_core.devices())


def cuda_available() -> bool:
    return bool(_core.devices())
