"""The streaming pipeline and one-shot windowed aggregation."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence, Union, overload

import numpy as np

from . import _core
from ._result import Result
from ._typing import Column, Duration, PathLike

if TYPE_CHECKING:
    from .detectors import Detector
from ._time import (check_no_nulls, check_time_unit, timestamp_array, timestamps_to_ns,
                    to_nanoseconds, warn_if_seconds_or_ms)

_WATERMARKS = ("records", "external")
_NAN_POLICIES = ("skip", "raise")
_UINT64_MAX = 2**64 - 1


def _checked_int(value: object, name: str, low: int, high: int, note: str = "") -> int:
    """``value`` as an int within [low, high], or an error naming the parameter and the range
    (the native layer would only say its argument types did not match)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}]{note}, got {value}")
    return value


# Aggregation names accepted as spellings of another. The pipeline runs (and checkpoints) the
# canonical name, so the output column is the canonical one: a restored pipeline, which knows
# only the checkpointed names, emits the same columns.
AGG_ALIASES = {"median": "p50"}


def canonical_aggs(aggs: Sequence[str]) -> list[str]:
    """``aggs`` with aliases replaced by the aggregation they stand for."""
    names = [AGG_ALIASES.get(a, a) if isinstance(a, str) else a for a in aggs]
    for alias, target in AGG_ALIASES.items():
        if alias in aggs and target in aggs:
            raise ValueError(f"{alias!r} is an alias of {target!r}: give one of them")
    return names


def _int64(value: object, name: str) -> int:
    """``value`` as an int that fits the native layer's int64 (the window limits themselves are
    checked by the library, with messages naming the parameter)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if not -2**63 <= value < 2**63:
        raise ValueError(f"{name} {value} is out of range (it does not fit in int64)")
    return value


def _duration(value: Duration, name: str) -> int:
    """A duration (int ns, string, timedelta, ...) as int ns that fits in int64."""
    return _int64(to_nanoseconds(value, name), name)


# The window classes convert their durations to int ns and are checked by the library's
# window_spec (cusense::validate, the one place the limits live) as they are built;
# ``_core_spec()`` is the native WindowSpec a pipeline gets.


@dataclass(frozen=True)
class Tumbling:
    """Tumbling event-time windows ``[k*size + offset, (k+1)*size + offset)``.

    ``size`` and ``offset`` take int nanoseconds, strings like ``"1s"``/``"5min"``, timedeltas.
    """

    size: Duration
    offset: Duration = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _duration(self.size, "window size"))
        object.__setattr__(self, "offset", _duration(self.offset, "window offset"))
        self._core_spec()

    def _core_spec(self) -> _core.WindowSpec:
        return _core.WindowSpec.tumbling(to_nanoseconds(self.size), to_nanoseconds(self.offset))


@dataclass(frozen=True)
class Sliding:
    """Sliding (hopping) windows ``[k*slide + offset, k*slide + offset + size)``; each record
    lies in ``ceil(size / slide)`` windows. Computed from panes of ``gcd(size, slide)``.
    """

    size: Duration
    slide: Duration
    offset: Duration = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _duration(self.size, "window size"))
        object.__setattr__(self, "slide", _duration(self.slide, "window slide"))
        object.__setattr__(self, "offset", _duration(self.offset, "window offset"))
        self._core_spec()

    def _core_spec(self) -> _core.WindowSpec:
        return _core.WindowSpec.sliding(to_nanoseconds(self.size), to_nanoseconds(self.slide),
                                        to_nanoseconds(self.offset))


@dataclass(frozen=True)
class Session:
    """Session windows: per key, records less than ``gap`` apart (directly or through records
    between them) share a session ``[first, last + gap)``; emitted once the watermark reaches
    ``last + gap``.
    """

    gap: Duration

    def __post_init__(self) -> None:
        object.__setattr__(self, "gap", _duration(self.gap, "session gap"))
        self._core_spec()

    def _core_spec(self) -> _core.WindowSpec:
        return _core.WindowSpec.session(to_nanoseconds(self.gap))


@dataclass(frozen=True)
class Rolling:
    """Count windows: per key, the last ``n`` records in (timestamp, arrival) order, one output
    row per record (columns ``key, timestamp, ...``), like pandas ``groupby(key).rolling(n)``.
    A channel with fewer than ``min_periods`` (default ``n``) non-NaN values in the window gets
    NaN (NaT for argmin_ts/argmax_ts) for every aggregation but count and nan_count.
    """

    n: int
    min_periods: int | None = None

    def __post_init__(self) -> None:
        n = _int64(self.n, "rolling window n")
        mp = n if self.min_periods is None else _int64(self.min_periods, "rolling window min_periods")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "min_periods", mp)
        self._core_spec()

    def _core_spec(self) -> _core.WindowSpec:
        return _core.WindowSpec.rolling(self.n, self.n if self.min_periods is None else self.min_periods)


_WINDOWS = (Tumbling, Sliding, Session, Rolling)
#: Any window definition.
Window = Union[Tumbling, Sliding, Session, Rolling]


def _window_of(opts: _core.PipelineOptions) -> Window | None:
    """The window object of core options (None for a detectors-only pipeline)."""
    if not opts.windowed:
        return None
    w = opts.window
    if w.kind == "tumbling":
        return Tumbling(w.size, w.offset)
    if w.kind == "sliding":
        return Sliding(w.size, w.slide, w.offset)
    if w.kind == "session":
        return Session(w.gap)
    return Rolling(w.rows, None if w.min_periods < 0 else w.min_periods)


def _length(column: Column) -> int | None:
    try:
        return len(column)
    except TypeError:  # a scalar or 0-d array
        return None


def _is_empty_batch(keys: Column, timestamps: Column, values: Column) -> bool:
    """All three columns empty: such a push has nothing to check (an empty list is float64
    for numpy, which the key check would refuse)."""
    return all(_length(c) == 0 for c in (keys, timestamps, values))


def _batch_length(keys: Column, timestamps: Column, values: Column) -> int:
    """The records of a refused batch: the longest column (columns may disagree)."""
    return max((_length(c) or 0) for c in (keys, timestamps, values))


def _as_keys(keys: Column) -> np.ndarray:
    check_no_nulls(keys, "keys")
    k = np.asarray(keys)
    if k.ndim != 1:
        raise ValueError(f"keys must be 1-D (one id per record), got shape {k.shape}")
    if k.dtype == np.uint32:
        return np.ascontiguousarray(k)
    if k.dtype.kind not in "iu":
        raise TypeError(f"keys must be an integer array (uint32 sensor ids), got dtype {k.dtype}")
    if k.size and (k.min() < 0 or k.max() > np.iinfo(np.uint32).max):
        bad = int(np.flatnonzero((k < 0) | (k > np.iinfo(np.uint32).max))[0])
        raise ValueError(f"key {k[bad]} at index {bad} is outside the uint32 range")
    return np.ascontiguousarray(k, dtype=np.uint32)


def _as_values(values: Column, channels: int) -> np.ndarray:
    check_no_nulls(values, "values")
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
    window : Tumbling, Sliding, Session or Rolling
        The window definition.
    aggs : list of str
        Aggregations: count, sum, mean, min, max, var, std (sample, ddof=1, like pandas),
        var_pop, std_pop (ddof=0), nan_count, first, last (by event time, ties by arrival),
        argmin_ts, argmax_ts (event time of the min / max, int64 ns, NaT without values) and
        approximate quantiles ``pXX`` (p50, p90, p99, p99.9, ...) from a DDSketch: within
        ``quantile_accuracy * |x|`` of ``x = np.quantile(v, q, method="lower")``; ``median`` is
        an alias of ``p50`` (its column is named ``p50``, and ``aggs`` lists ``p50``). A
        ``nan_count`` column is always present.
    allowed_lateness : duration
        Tumbling, sliding and session windows are kept this long after they were emitted: a
        record arriving within it updates its window, which is emitted again with
        ``is_update=True`` (the ``is_update`` column is present when allowed_lateness > 0).
    quantile_accuracy : float
        Relative accuracy alpha of the quantile sketch, in [1e-4, 0.5] (default 1%).
    max_out_of_orderness : duration
        How far the watermark trails the largest event time seen. A record whose window ended
        at or before the watermark just before it is late: counted, returned by
        :meth:`poll_late`, not aggregated.
    backend : "auto" | "cpu" | "cuda"
        ``"auto"`` picks CUDA when a device is usable and the CUDA backend runs the
        configuration (every window type and aggregation except quantiles), the CPU otherwise;
        ``"cuda"`` raises :class:`cusense.BackendUnavailableError` in those cases.
    channels : int or list of str, optional
        Values per record; with several, ``values`` is ``(n, channels)`` and columns are named
        ``<agg>_<channel>``.
    nan_policy : "skip" | "raise"
        ``"skip"`` leaves NaN values out of the aggregations and counts them (``nan_count``);
        ``"raise"`` rejects a batch holding NaN with a ValueError.
    cpu_threads : int
        Worker threads of the CPU backend, 1 to 256; 0 (the default) = one per hardware thread
        (at most 256).
    max_open_windows : int
        Cap on the (key, window) states held at once (0 = unlimited), counted while a batch is
        applied. A push that would exceed it raises :class:`cusense.CapacityError` (a
        ``MemoryError``) and is rejected whole; the pipeline stays usable.
    watermark : "records" | "external"
        ``"records"`` (the default): the watermark is the largest event time pushed so far minus
        ``max_out_of_orderness``. ``"external"``: only the caller moves it, with the
        ``watermark_steps`` of each :meth:`push` (for a pipeline that holds some of the keys of a
        stream whose watermark is kept elsewhere, as the partitions of
        :mod:`cusense.distributed` do); output rows then carry their stream position
        (``poll(positions=True)``), and the ``seq`` column of score rows holds the record's
        position. CPU backend.
    max_detector_keys : int
        Cap on the keys holding detector state at once (0 = unlimited; needs detectors). The
        keys of a batch not yet known are counted before anything is allocated for it; a push
        that would exceed the cap raises :class:`cusense.CapacityError` and is rejected whole.
    memory_budget_bytes : int
        Bytes of state the pipeline may hold (0 = no budget): window state, detector state and
        the records buffered for the detectors (what ``stats["state_bytes"]`` counts). A push
        whose estimated growth would exceed it raises :class:`cusense.CapacityError` before
        anything is allocated and is rejected whole (see the README for the estimate).
    key_ttl : duration
        Event time after which a key's history is forgotten (0 = never; needs detectors or a
        Rolling window; with ``Silence``, at least its timeout). Detectors: a record arriving
        more than this after its key's previous scored record is scored as the key's first
        (warm-up again; a silence is reported, without a comeback). Rolling windows: such a
        record starts the key's window afresh. The key's state is dropped once the watermark
        passes its last record plus the ttl. Independent of how the stream is batched.

    A pipeline is not thread-safe: a call made while another thread is inside a call on the
    same pipeline raises :class:`cusense.ConcurrentUseError` and changes nothing. Use one
    pipeline per thread or serialise the calls. :attr:`stats` is the exception: it can be read
    at any time from any thread.
    """

    def __init__(self, window: Window | None = None,
                 aggs: Sequence[str] = ("count", "sum", "mean", "min", "max", "var", "std"),
                 max_out_of_orderness: Duration = 0, backend: str = "auto",
                 channels: int | Sequence[str] | None = None,
                 nan_policy: str = "skip", staging_records: int | None = None,
                 cpu_threads: int = 0, max_open_windows: int = 0,
                 detectors: Sequence[Detector] | None = None,
                 allowed_lateness: Duration = 0, quantile_accuracy: float = 0.01,
                 watermark: str = "records", max_detector_keys: int = 0,
                 memory_budget_bytes: int = 0, key_ttl: Duration = 0) -> None:
        if window is None and not detectors:
            raise TypeError("window is required unless detectors are given")
        if window is not None and not isinstance(window, _WINDOWS):
            raise TypeError("window must be cusense.Tumbling, Sliding, Session or Rolling, "
                            f"got {type(window).__name__}")
        if isinstance(aggs, str):
            aggs = [aggs]
        aggs = canonical_aggs(aggs)
        if nan_policy not in _NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {_NAN_POLICIES}, got {nan_policy!r}")
        if watermark not in _WATERMARKS:
            raise ValueError(f"watermark must be one of {_WATERMARKS}, got {watermark!r}")
        opts = _core.PipelineOptions()
        opts.external_watermark = watermark == "external"
        if window is None:
            opts.windowed = False  # detectors only
        else:
            opts.window = window._core_spec()
        opts.aggs = list(aggs)
        opts.nan_policy = nan_policy
        # Integers are checked here to fit the native layer's fixed-width types (which would
        # refuse larger ones with a message about argument types); the library checks the
        # ranges of durations, with messages naming the option.
        opts.allowed_lateness = _duration(allowed_lateness, "allowed_lateness")
        opts.quantile_accuracy = float(quantile_accuracy)
        opts.max_out_of_orderness = _duration(max_out_of_orderness, "max_out_of_orderness")
        opts.backend = backend
        if channels is None:
            opts.channels = 1
        elif isinstance(channels, (int, np.integer)):
            opts.channels = _checked_int(channels, "channels", 1, _core.MAX_CHANNELS)
        else:
            names = [str(c) for c in channels]
            _checked_int(len(names), "the number of channels", 1, _core.MAX_CHANNELS)
            opts.channel_names = names
            opts.channels = len(names)
        if staging_records is not None:
            opts.staging_records = _checked_int(staging_records, "staging_records", 1, _UINT64_MAX)
        opts.cpu_threads = _checked_int(cpu_threads, "cpu_threads", 0, _core.MAX_CPU_THREADS,
                                        " (0 = automatic)")
        opts.max_open_windows = _checked_int(max_open_windows, "max_open_windows", 0, _UINT64_MAX,
                                             " (0 = unlimited)")
        opts.max_detector_keys = _checked_int(max_detector_keys, "max_detector_keys", 0, _UINT64_MAX,
                                              " (0 = unlimited)")
        opts.memory_budget_bytes = _checked_int(memory_budget_bytes, "memory_budget_bytes", 0,
                                                _UINT64_MAX, " (0 = no budget)")
        opts.key_ttl = _duration(key_ttl, "key_ttl")
        self.detectors = list(detectors or [])
        for d in self.detectors:
            if not hasattr(d, "_spec"):
                raise TypeError(f"detectors must be cusense.detectors.* objects, got {type(d).__name__}")
        opts.detectors = [d._spec() for d in self.detectors]
        self._core = _core.Pipeline(opts)
        self._init_python_state(opts.channels)
        self.window = window
        self.aggs = list(aggs)

    def _init_python_state(self, channels: int) -> None:
        self._channels = channels
        # Read once: `_core.options` copies every option (detector specs included) per access.
        self._external = bool(self._core.options.external_watermark)
        # Records of pushes refused by the checks in Python, before the engine saw them; the
        # engine counts the pushes it refuses itself. Not part of checkpoints.
        self._records_rejected_in_python = 0
        self._time_unit_warned = False

    @property
    def allowed_lateness(self) -> int:
        """How long (ns) windows are kept for updates after they closed (0: none)."""
        return self._core.options.allowed_lateness

    @property
    def max_detector_keys(self) -> int:
        """Cap on the keys holding detector state (0: unlimited)."""
        return self._core.options.max_detector_keys

    @property
    def memory_budget_bytes(self) -> int:
        """Bytes of state the pipeline may hold (0: no budget)."""
        return self._core.options.memory_budget_bytes

    @property
    def key_ttl(self) -> int:
        """Event time (ns) after which a key's detector state is forgotten (0: never)."""
        return self._core.options.key_ttl

    @property
    def backend(self) -> str:
        """``"cuda"`` or ``"cpu"``."""
        return self._core.backend

    @property
    def stats(self) -> dict[str, Any]:
        """Records pushed / aggregated / late / rejected, NaN values, windows emitted and open
        (``open_windows``: (key, window) states; (key, pane) partials for sliding windows,
        sessions, held records for rolling windows), ``open_keys`` (keys holding state),
        ``state_bytes`` (bytes of the live state), the current ``watermark`` (int ns, None
        before the first record; as a time: :attr:`watermark_time`).

        Readable at any time, also while another thread is inside a call on the pipeline: it
        then gives the totals as of the end of an earlier call (on the CPU backend the last
        one; on the CUDA backend the last ``stats`` that found the pipeline idle), in which
        ``records_pushed == records_aggregated + records_late + records_rejected`` holds."""
        stats = self._core.stats()  # one consistent snapshot, also while another thread pushes
        # A refused push counts as pushed and rejected, wherever it was refused.
        stats["records_pushed"] += self._records_rejected_in_python
        stats["records_rejected"] += self._records_rejected_in_python
        return stats

    @property
    def watermark_time(self) -> np.datetime64:
        """The current watermark as a time (``numpy.datetime64`` in ns, UTC; NaT before the
        first record); ``stats["watermark"]`` holds it as int ns (JSON-friendly)."""
        wm = self.stats.get("watermark")
        return np.datetime64("NaT", "ns") if wm is None else np.datetime64(wm, "ns")

    @property
    def watermark(self) -> str:
        """``"records"`` or ``"external"`` (see the ``watermark`` parameter)."""
        return "external" if self._external else "records"

    def push(self, keys: Column, timestamps: Column, values: Column, time_unit: str | None = None,
             *, positions: Column | None = None,
             watermark_steps: tuple[Column, Column, Column] | None = None) -> None:
        """Push a micro-batch of records: keys (uint32 ids), timestamps, values.

        Columns may be numpy arrays, sequences, pandas Series, pyarrow arrays or polars Series.
        Timestamps: integers in ``time_unit`` since the epoch (``"ns"``, ``"us"``, ``"ms"`` or
        ``"s"``; default ns), datetime64 of any unit, time-zone-aware pandas timestamps
        (converted to UTC) or ``datetime`` objects (aware ones converted to UTC, naive ones
        taken as UTC). Without ``time_unit``, integer timestamps that look like seconds or
        milliseconds of the present era give a :class:`TimeUnitWarning` (once per pipeline).
        An empty batch is a no-op. A refused batch (ValueError / TypeError) changes nothing
        but ``stats["records_rejected"]``.

        With ``watermark="external"`` every push gives ``positions`` (int64, one per record: its
        stream position, increasing strictly within and across pushes) and
        ``watermark_steps = (at, watermark, position)``, three int64 arrays of one length: step
        ``s`` means that after the first ``at[s]`` records of this batch the watermark becomes
        ``watermark[s]`` (int ns; the watermark itself), at stream position ``position[s]``.
        ``at`` does not decrease, watermarks increase strictly (also across pushes), and step
        positions increase strictly and fall between the positions of the records around them.
        A push may hold steps and no records.
        """
        external = self._external
        if (positions is None or watermark_steps is None) == external:
            raise TypeError("a pipeline with watermark='external' needs positions and "
                            "watermark_steps with every push" if external else
                            "positions and watermark_steps are for pipelines with "
                            "watermark='external'")
        if watermark_steps is not None and positions is not None:
            self._push_external(keys, timestamps, values, time_unit, positions, watermark_steps)
            return
        if _is_empty_batch(keys, timestamps, values):
            return
        try:
            k, t, v = self._checked_batch(keys, timestamps, values, time_unit)
        except (TypeError, ValueError):
            self._records_rejected_in_python += _batch_length(keys, timestamps, values)
            raise
        self._push_checked(k, t, v)

    def _push_external(self, keys: Column, timestamps: Column, values: Column,
                       time_unit: str | None, positions: Column,
                       watermark_steps: tuple[Column, Column, Column]) -> None:
        try:
            k: np.ndarray
            t: np.ndarray
            v: np.ndarray
            if _is_empty_batch(keys, timestamps, values):
                k = np.empty(0, np.uint32)
                t = np.empty(0, np.int64)
                v = np.empty((0, self._channels) if self._channels > 1 else 0, np.float64)
            else:
                k, t, v = self._checked_batch(keys, timestamps, values, time_unit)
            pos = np.ascontiguousarray(positions, dtype=np.int64)
            if len(watermark_steps) != 3:
                raise ValueError("watermark_steps must be (at, watermark, position)")
            at, wm, step_pos = (np.ascontiguousarray(a, dtype=np.int64) for a in watermark_steps)
        except (TypeError, ValueError):
            self._records_rejected_in_python += _batch_length(keys, timestamps, values)
            raise
        if v.dtype == np.float32:
            self._core.push_external_f32(k, t, v, pos, at, wm, step_pos)
        else:
            self._core.push_external_f64(k, t, v, pos, at, wm, step_pos)

    def _checked_batch(self, keys: Column, timestamps: Column, values: Column,
                       time_unit: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch as the engine's arrays, or TypeError / ValueError naming the problem."""
        k = _as_keys(keys)
        raw_times = timestamp_array(timestamps)
        t = timestamps_to_ns(raw_times, check_time_unit(time_unit or "ns"))
        v = _as_values(values, self._channels)
        if not len(k) == len(t) == len(v):
            raise ValueError(f"length mismatch: {len(k)} keys, {len(t)} timestamps, {len(v)} values")
        if time_unit is None and not self._time_unit_warned and raw_times.dtype.kind in "iu":
            self._time_unit_warned = warn_if_seconds_or_ms(t, stacklevel=3)
        return k, t, v

    def _push_checked(self, k: np.ndarray, t: np.ndarray, v: np.ndarray) -> None:
        if v.dtype == np.float32:
            self._core.push_f32(k, t, v)
        else:
            self._core.push_f64(k, t, v)

    def poll(self, positions: bool = False) -> Result:
        """Windows emitted since the last poll, ordered by (window_start, key) within each
        watermark step. ``positions=True`` (``watermark="external"`` only) adds an int64
        ``position`` column: the stream position of the step that emitted the row (of its record
        for an ``is_update`` row; 2**63-1 for rows emitted by :meth:`flush`)."""
        return self._output(self._core.poll(), positions)

    def poll_late(self, positions: bool = False) -> Result:
        """Late records since the last call (key, timestamp, value), in arrival order;
        ``positions=True`` (``watermark="external"``) adds each record's ``position``."""
        return self._output(self._core.poll_late(), positions)

    def flush(self, positions: bool = False) -> Result:
        """End of stream: emit every open window and return what poll() would."""
        return self._output(self._core.flush(), positions)

    def _output(self, columns: dict[str, np.ndarray], positions: bool) -> Result:
        if positions and not self._external:
            raise ValueError("positions=True needs a pipeline with watermark='external'")
        if not positions:
            columns.pop("position", None)
        return Result(columns)

    def poll_scores(self) -> Result:
        """Records scored by the detectors since the last call, in release order ((timestamp,
        key, arrival) within each push): key, timestamp, seq (arrival index), value(s), late,
        then ``score_<name>`` and ``is_anomaly_<name>`` per detector. See cusense.detectors."""
        return Result(self._core.poll_scores())

    def checkpoint(self, path: PathLike) -> None:
        """Write the complete pipeline state (options, open windows, watermark, counters,
        detector state, and outputs not yet polled) to ``path`` atomically: a temporary file in
        the same directory is written, fsync'ed and renamed over ``path``, so a crash leaves the
        previous checkpoint intact. The pipeline is unchanged. See :meth:`restore`."""
        self._core.checkpoint(os.fspath(path))

    @classmethod
    def restore(cls, path: PathLike, backend: str = "auto", nan_policy: str | None = None) -> "Pipeline":
        """A pipeline in exactly the state saved by :meth:`checkpoint` at ``path``, with its
        options, on ``backend`` (either backend can restore a checkpoint from the other).
        Pushing the records that followed the checkpoint gives exactly the output of an
        uninterrupted run. Raises FileNotFoundError for a missing file and ValueError
        (:class:`cusense.CheckpointError`) naming the problem for an empty, truncated,
        corrupt (checksum) or wrong-version file, or one holding options the constructor would
        refuse. Every option is restored, ``nan_policy`` included (``nan_policy``, when given,
        must match the checkpoint's: a restored pipeline keeps its options)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint at {path!r}")
        if nan_policy is not None and nan_policy not in _NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {_NAN_POLICIES}, got {nan_policy!r}")
        core = _core.Pipeline.restore(path, backend)
        opts = core.options
        if nan_policy is not None and nan_policy != opts.nan_policy:
            raise ValueError(f"nan_policy={nan_policy!r} does not match the checkpoint's "
                             f"nan_policy={opts.nan_policy!r} (a restored pipeline keeps the "
                             f"options it was checkpointed with)")
        self = cls.__new__(cls)
        self._core = core
        self._init_python_state(opts.channels)
        self.window = _window_of(opts)
        self.aggs = list(opts.aggs)
        from .detectors import detector_of_spec
        self.detectors = [detector_of_spec(spec) for spec in opts.detectors]
        return self

    def poll_silence(self) -> Result:
        """Silence events since the last call: key, last_seen, silent_since, back_at (NaT =
        INT64_MIN while still silent), back. Needs a cusense.detectors.Silence detector."""
        return Result(self._core.poll_silence())


def partition_of(keys: Column, parts: int) -> np.ndarray:
    """The hash partition (uint32 in [0, parts)) of each key among ``parts`` partitions:
    MurmurHash3's 32-bit finalizer of the key, modulo ``parts``. Stable across builds and
    machines; :mod:`cusense.distributed` routes keys by it and :func:`rekey_checkpoints`
    re-splits checkpoints by it."""
    return _core.partition_of(_as_keys(keys), _checked_int(parts, "parts", 1, 2**32 - 1))


def rekey_checkpoints(inputs: Sequence[PathLike], outputs: Sequence[PathLike]) -> None:
    """Re-partition checkpoints: ``inputs`` are checkpoints of pipelines that each hold one
    hash partition of the keys of one stream, taken at one stream position (same options and
    watermark; e.g. the partitions of a ``watermark="external"`` deployment); writes
    ``len(outputs)`` checkpoints where ``outputs[p]`` holds the state of the keys with
    ``partition_of(key, len(outputs)) == p`` (open windows, histories, outputs not yet
    polled). The counters of all inputs add up in ``outputs[0]``, so totals over the
    partitions are kept. Windowed pipelines without detectors; raises
    :class:`cusense.CheckpointError` naming the problem (FileNotFoundError for a missing
    input)."""
    ins = [os.fspath(p) for p in inputs]
    for path in ins:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint at {path!r}")
    _core.Pipeline.rekey_checkpoints(ins, [os.fspath(p) for p in outputs])


def window_from_config(table: dict[str, Any]) -> Window | None:
    """The window of a ``[pipeline]`` table (``cusense serve`` and ``cusense run --config``):
    ``window`` = "tumbling" (size, offset), "sliding" (size, slide, offset), "session" (gap),
    "rolling" (n, min_periods) or "none" (None: detectors only)."""
    kind = table.get("window", "tumbling")
    try:
        if kind == "tumbling":
            return Tumbling(table["size"], table.get("offset", 0))
        if kind == "sliding":
            return Sliding(table["size"], table["slide"], table.get("offset", 0))
        if kind == "session":
            return Session(table["gap"])
        if kind == "rolling":
            n = table["n"]
            return Rolling(n, min_periods=table.get("min_periods", n))
        if kind == "none":
            return None
    except KeyError as e:
        raise ValueError(f"pipeline.{e.args[0]} is required for a {kind} window") from None
    raise ValueError(f"pipeline.window must be tumbling, sliding, session, rolling or none, got {kind!r}")


@overload
def window_aggregate(keys: Column, timestamps: Column, values: Column, window: Window,
                     aggs: Sequence[str] = ..., max_out_of_orderness: Duration | None = ...,
                     backend: str = ..., return_late: Literal[False] = ...,
                     time_unit: str | None = ..., **kwargs: Any) -> Result: ...
@overload
def window_aggregate(keys: Column, timestamps: Column, values: Column, window: Window,
                     aggs: Sequence[str] = ..., max_out_of_orderness: Duration | None = ...,
                     backend: str = ..., *, return_late: Literal[True],
                     time_unit: str | None = ..., **kwargs: Any) -> tuple[Result, Result]: ...
def window_aggregate(keys: Column, timestamps: Column, values: Column, window: Window,
                     aggs: Sequence[str] = ("count", "sum", "mean", "min", "max"),
                     max_out_of_orderness: Duration | None = None, backend: str = "auto",
                     return_late: bool = False, time_unit: str | None = None,
                     **kwargs: Any) -> Result | tuple[Result, Result]:
    """Windowed aggregation of a finite stream in one call (push everything, flush).

    With the default ``max_out_of_orderness=None`` the whole input is known, so every record is
    aggregated whatever its order: the records are stably sorted by timestamp first (records
    with equal timestamps keep their input order, which decides first/last/argmin_ts/argmax_ts
    ties and Rolling's (timestamp, arrival) order). An explicit bound replays the input as a
    stream in its order with that lateness: records late for it are not aggregated; with
    ``return_late=True`` the result is ``(windows, late)``, otherwise a :class:`LateDataWarning`
    says how many there were. ``time_unit`` and the other arguments are as for
    :class:`Pipeline` and :meth:`Pipeline.push`.
    """
    whole_input = max_out_of_orderness is None
    pipe = Pipeline(window, aggs=aggs,
                    max_out_of_orderness=0 if max_out_of_orderness is None else max_out_of_orderness,
                    backend=backend, **kwargs)
    if not _is_empty_batch(keys, timestamps, values):
        k, t, v = pipe._checked_batch(keys, timestamps, values, time_unit)
        if whole_input and len(t) > 1 and np.any(t[1:] < t[:-1]):
            order = np.argsort(t, kind="stable")
            k, t, v = k[order], t[order], v[order]
        pipe._push_checked(k, t, v)
    windows = pipe.flush()
    late = pipe.poll_late()
    if return_late:
        return windows, late
    if len(late):
        warnings.warn(f"{len(late)} of {pipe.stats['records_pushed']} records arrived after their "
                      f"window closed (max_out_of_orderness={max_out_of_orderness!r}) and are not "
                      f"in the windows; pass return_late=True to get them as (windows, late), or "
                      f"max_out_of_orderness=None to aggregate the whole input",
                      LateDataWarning, stacklevel=2)
    return windows


class LateDataWarning(UserWarning):
    """window_aggregate with an explicit max_out_of_orderness left late records out."""


def devices() -> list[_core.DeviceInfo]:
    """Usable CUDA devices (an empty list without CUDA support, driver or GPU)."""
    return list(_core.devices())


def cuda_available() -> bool:
    return bool(_core.devices())
