"""Streaming per-key anomaly detectors.

Pass them to :class:`cusense.Pipeline` (``detectors=[...]``) and read the scores with
``pipe.poll_scores()``, or score a finite series with :func:`cusense.score`.

Semantics (both backends):

* Each key's records are scored in event-time order, ``(timestamp, arrival)``: a record's score
  depends only on that key's earlier records and itself. Records are buffered until the
  watermark (largest event time seen - ``max_out_of_orderness``) passes them; a push releases
  every buffered record with ``timestamp < watermark``, ``flush()`` releases all.
* A record with ``timestamp <`` the watermark before it (arrival order) is *late*: it appears in
  ``poll_scores()`` with ``late=True`` and NaN scores, touches no state, and is counted.
* Scores are in ``[0, 1)`` (``[0, 1]`` for :class:`AnomalyLikelihood`);
  ``is_anomaly = score >= threshold``. The z-score detectors map
  ``z`` to ``Lp / (1 + Lp)`` with ``Lp = -log10(erfc(|z| / sqrt 2))`` (0 at z = 0, 0.565 at
  1.96, 0.720 at 3, 0.801 at 3.9, 0.862 at 5). NaN values score NaN and are skipped.
* A detector reads one value channel (``channel``, default 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core
from ._time import to_nanoseconds
from ._typing import Column, Duration


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")


# Upper bounds on the integer parameters: state per key grows with them (a KnnDiscord key holds
# H values; a rolling key, ``window``), so an absurd value fails here, with its name, instead of
# allocating gigabytes per key or overflowing the native integer types.
# The library's own limits (cusense::max_detector_size, max_subsequence).
MAX_WINDOW = _core.MAX_DETECTOR_SIZE       # 2**20: rolling detectors: records per key (8 MiB of values)
MAX_HISTORY = _core.MAX_DETECTOR_SIZE      # KnnDiscord H, H2, K, min_candidates
MAX_SUBSEQUENCE = _core.MAX_SUBSEQUENCE    # 1024: KnnDiscord L
MAX_CHANNEL = 4095            # channels are capped at 4096 per pipeline


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")


class Detector:
    """Base class: a detector configuration that builds a ``_core.DetectorSpec``."""

    kind = ""

    def _fill(self, spec: _core.DetectorSpec) -> None:  # pragma: no cover - overridden
        pass

    def _spec(self) -> _core.DetectorSpec:
        spec = _core.DetectorSpec()
        spec.kind = self.kind
        name = getattr(self, "name", None)
        if name:
            spec.name = str(name)
        if hasattr(self, "threshold"):
            _check_threshold(self.threshold)
            spec.threshold = float(self.threshold)
        spec.channel = int(getattr(self, "channel", 0))
        self._fill(spec)
        spec.validate(max(spec.channel + 1, 1))
        return spec

    @property
    def column_name(self) -> str:
        return self._spec().column_name


@dataclass(frozen=True)
class EWMA(Detector):
    """EWMA z-score. State per key: mean ``m`` and variance ``v``; the first value sets
    ``m = x, v = 0``; for each later value ``d = x - m``, ``z = d / sqrt(v)`` (state before the
    update), then ``m = (1-alpha) m + alpha x``, ``v = (1-alpha) (v + alpha d^2)``. Scores are 0
    while the key has fewer than ``min_count`` earlier values. ``alpha`` in (0, 1]."""

    alpha: float = 0.05
    threshold: float = 0.8
    min_count: int = 1
    channel: int = 0
    name: str | None = None
    kind = "ewma"

    def __post_init__(self) -> None:
        if not 0.0 < float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must lie in (0, 1], got {self.alpha!r}")
        _check_threshold(self.threshold)
        _check_int("min_count", self.min_count, 0, MAX_WINDOW)
        _check_int("channel", self.channel, 0, MAX_CHANNEL)

    def _fill(self, spec: _core.DetectorSpec) -> None:
        spec.alpha = float(self.alpha)
        spec.min_count = int(self.min_count)


@dataclass(frozen=True)
class RollingZ(Detector):
    """Rolling z-score over the previous ``window`` records of the key: population mean and std
    (ddof 0); scores are 0 while fewer than ``min_count`` (default 2) earlier values exist.
    ``window >= 2``."""

    window: int = 100
    threshold: float = 0.8
    min_count: int = 2
    channel: int = 0
    name: str | None = None
    kind = "rolling_z"

    def __post_init__(self) -> None:
        _check_int("window", self.window, 2, MAX_WINDOW)
        _check_threshold(self.threshold)
        _check_int("min_count", self.min_count, 0, MAX_WINDOW)
        _check_int("channel", self.channel, 0, MAX_CHANNEL)

    def _fill(self, spec: _core.DetectorSpec) -> None:
        spec.window = int(self.window)
        spec.min_count = int(self.min_count)


@dataclass(frozen=True)
class RollingMAD(RollingZ):
    """Robust rolling score: median and MAD of the previous ``window`` records;
    ``z = (x - median) / (1.4826 MAD)``, with ``1.2533 * mean|B - median|`` as the spread when the
    MAD is 0."""

    kind = "rolling_mad"


@dataclass(frozen=True)
class KnnDiscord(Detector):
    """1-NN left discord of the last ``L`` values among the subsequences of the previous ``H``
    values (normalised by the history's std), calibrated as ``raw / (raw + M)`` with ``M`` the
    largest raw of the previous ``H2`` records, and gated: a record keeps its score only when it
    beats every calibrated score of the previous ``K`` records. Scores are 0 while the key has
    fewer than ``min_count`` earlier values (the calibration's warm-up: the first raw scores
    have too few earlier ones to be compared with, so without it every key would alarm at its
    first score). With ``tod_weight`` ``w > 0`` a candidate whose last value lies ``dh`` hours
    of the day (UTC, circular) away from the record adds ``w dh^2`` to its squared normalised
    distance (CPU backend only). The default ``threshold`` (0.5365) is the one the corpus-wide
    NAB sweep picks for the standard profile (``benchmarks/nab/evaluate.py``)."""

    threshold: float = 0.5365
    L: int = 4
    H: int = 3000
    min_candidates: int = 50
    H2: int = 500
    K: int = 50
    min_count: int = 250
    tod_weight: float = 0.0
    channel: int = 0
    name: str | None = None
    kind = "knn_discord"

    def __post_init__(self) -> None:
        _check_threshold(self.threshold)
        _check_int("L", self.L, 1, MAX_SUBSEQUENCE)
        for name in ("H", "H2", "K", "min_candidates", "min_count"):
            _check_int(name, getattr(self, name), 1, MAX_HISTORY)
        _check_number("tod_weight", self.tod_weight, 0.0, 1e6)
        _check_int("channel", self.channel, 0, MAX_CHANNEL)

    def _fill(self, spec: _core.DetectorSpec) -> None:
        spec.L, spec.H, spec.min_candidates = int(self.L), int(self.H), int(self.min_candidates)
        spec.H2, spec.K = int(self.H2), int(self.K)
        spec.min_count, spec.tod_weight = int(self.min_count), float(self.tod_weight)


def _check_number(name: str, value: object, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not ((low < v) if low_open else (low <= v)) or not v <= high:
        raise ValueError(f"{name} must lie in {'(' if low_open else '['}{low:g}, {high:g}], "
                         f"got {value!r}")


def _check_weight(name: str, value: float, zero_ok: bool = False) -> None:
    ok = (0.0 <= float(value) if zero_ok else 0.0 < float(value)) and float(value) <= 1.0
    if not ok:
        raise ValueError(f"{name} must lie in {'[0, 1]' if zero_ok else '(0, 1]'}, got {value!r}")


@dataclass(frozen=True)
class MultiScaleZ(Detector):
    """The default detector: residual z-scores at three time scales. State per key (7 doubles
    and a count): Holt's linear trend (level, slope) predicts each value; the residual ``e``,
    and its short-scale EWMAs with weights ``beta`` and ``beta / 3``, are each divided by the
    root of an EWMA (weight ``gamma``) of their own squares, and the largest of the three (a
    spike shows in ``e``, a level shift in the short means) is read as a Student t with
    ``max(1, (min(count, 2/gamma) - 1) / 2)`` degrees of freedom and converted to the normal
    ``z`` of the same tail (a young key needs more evidence). Updates clip residuals at
    ``clip`` spreads; every weight is ``max(w, 1/count)`` early on, so the estimates are plain
    averages at the end of the warm-up. Scores are 0 while the key has fewer than ``min_count``
    earlier values. With ``K > 0`` a score is kept only when it beats every score since the start
    of the previous block of ``K`` records (the key's positions are cut into blocks of ``K``:
    the last ``K`` to ``2K - 1`` records; two maxima of state), else 0: one alarm per burst, at
    any threshold. The default threshold 0.7691 is ``|z| = 3.5``."""

    threshold: float = 0.7691
    alpha: float = 0.05
    trend: float = 0.01
    beta: float = 0.3
    gamma: float = 0.01
    clip: float = 4.0
    min_count: int = 30
    K: int = 500
    channel: int = 0
    name: str | None = None
    kind = "multiscale_z"

    def __post_init__(self) -> None:
        _check_threshold(self.threshold)
        for n in ("alpha", "beta", "gamma"):
            _check_weight(n, getattr(self, n))
        _check_weight("trend", self.trend, zero_ok=True)
        if not 0.0 < float(self.clip) <= 1e6:
            raise ValueError(f"clip must lie in (0, 1e6], got {self.clip!r}")
        _check_int("min_count", self.min_count, 1, MAX_WINDOW)
        _check_int("K", self.K, 0, MAX_HISTORY)
        _check_int("channel", self.channel, 0, MAX_CHANNEL)

    def _fill(self, spec: _core.DetectorSpec) -> None:
        spec.alpha, spec.trend, spec.beta = float(self.alpha), float(self.trend), float(self.beta)
        spec.gamma, spec.clip = float(self.gamma), float(self.clip)
        spec.min_count, spec.K = int(self.min_count), int(self.K)


@dataclass(frozen=True)
class JointZ(Detector):
    """Multivariate: scores ``channels`` channels of each record jointly (from ``channel`` on;
    0 = all the pipeline's channels from ``channel`` on). State per key: mean ``m``, smoothed
    residual ``a`` and spread ``s`` per channel (3 doubles per channel) and a count. For each
    record ``a = (1-beta) a + beta (x - m)``, ``d2 = sum(a^2 / s)`` and ``z`` is its normal
    equivalent as a chi-square with one degree per channel (Wilson-Hilferty, >= 0). ``m``
    (weight ``alpha``) and ``s`` (EWMA of ``a^2``, weight ``gamma``) adapt only while
    ``z < freeze``, so a lasting fault does not become the new normal; weights are
    ``max(w, 1/count)`` early on. Scores are 0 while fewer than ``min_count`` earlier records;
    a record with a NaN in a read channel scores NaN. The default threshold 0.8076 is z = 4."""

    threshold: float = 0.8076
    alpha: float = 0.01
    beta: float = 0.2
    gamma: float = 0.002
    freeze: float = 4.0
    min_count: int = 50
    channel: int = 0
    channels: int = 0
    name: str | None = None
    kind = "joint_z"

    def __post_init__(self) -> None:
        _check_threshold(self.threshold)
        for n in ("alpha", "beta", "gamma"):
            _check_weight(n, getattr(self, n))
        if not 0.0 < float(self.freeze) <= 1e6:
            raise ValueError(f"freeze must lie in (0, 1e6], got {self.freeze!r}")
        _check_int("min_count", self.min_count, 1, MAX_WINDOW)
        _check_int("channel", self.channel, 0, MAX_CHANNEL)
        _check_int("channels", self.channels, 0, MAX_CHANNEL + 1)

    def _spec(self) -> _core.DetectorSpec:
        spec = _core.DetectorSpec()
        spec.kind = self.kind
        if self.name:
            spec.name = str(self.name)
        spec.threshold = float(self.threshold)
        spec.channel = int(self.channel)
        self._fill(spec)
        spec.validate(max(spec.channel + max(spec.channels, 1), 1))
        return spec

    def _fill(self, spec: _core.DetectorSpec) -> None:
        spec.alpha, spec.beta, spec.gamma = float(self.alpha), float(self.beta), float(self.gamma)
        spec.freeze, spec.min_count = float(self.freeze), int(self.min_count)
        spec.channels = int(self.channels)


@dataclass(frozen=True)
class AnomalyLikelihood(Detector):
    """Anomaly likelihood of a raw scorer's novelty, and new extremes (after Numenta's HTM
    detector for NAB). ``base`` gives each record a deviation: :class:`KnnDiscord`'s raw
    nearest-neighbour distance (its ``L``, ``H``, ``min_candidates`` and ``tod_weight``; the
    default ``KnnDiscord(tod_weight=0.02)``) or :class:`MultiScaleZ`'s ``z`` before its gate
    (its ``alpha``, ``trend``, ``beta``, ``gamma``, ``clip``, ``min_count``); the novelty is
    ``min(1, deviation / scale)`` (``scale=None``: 1 for KnnDiscord, whose distances are in
    standard deviations of the history, 6 for MultiScaleZ's ``z``). The mean ``a`` of the last
    ``short_window`` novelties is compared with the mean and spread of ``a`` over the last
    ``long_window`` records
    (re-estimated every ``reestimate`` records; the first ``learn`` records left out; floored
    at 0.03 and sqrt(0.0003)): its two-sided normal tail ``p`` gives the score
    ``log(p + 1e-10) / log(1e-10)`` (0.5 at ``p = 1e-5``). Only the first record of a run with
    ``p <= 1e-5`` keeps it, and only when no such alarm was kept in the previous ``rest``
    records (else ``p = 1e-3``: score 0.3). A value beyond every earlier value of the key by
    more than ``spatial`` times their range scores 1 (``spatial=0``: off). Scores lie in
    ``[0, 1]``; 0 while the key has fewer than ``warmup`` earlier values. The other parameters
    of ``base`` are not used (its threshold, name, channel, ``H2``, ``K`` and, for KnnDiscord,
    ``min_count``) and are reset to their defaults. CPU backend only. The default
    ``threshold`` (0.51, ``p`` <= about 6e-6) gives the detections of the corpus-wide NAB
    sweep for the standard profile (``benchmarks/nab/evaluate.py``); 0.5 keeps every alarm."""

    base: KnnDiscord | MultiScaleZ = KnnDiscord(tod_weight=0.02)
    threshold: float = 0.51
    scale: float | None = None
    short_window: int = 10
    long_window: int = 4000
    reestimate: int = 100
    learn: int = 150
    warmup: int = 300
    rest: int = 200
    spatial: float = 0.05
    channel: int = 0
    name: str | None = None
    kind = "likelihood"

    def __post_init__(self) -> None:
        if isinstance(self.base, KnnDiscord):
            b: KnnDiscord | MultiScaleZ = KnnDiscord(L=self.base.L, H=self.base.H,
                                                     min_candidates=self.base.min_candidates,
                                                     tod_weight=self.base.tod_weight)
        elif isinstance(self.base, MultiScaleZ):
            b = MultiScaleZ(alpha=self.base.alpha, trend=self.base.trend, beta=self.base.beta,
                            gamma=self.base.gamma, clip=self.base.clip,
                            min_count=self.base.min_count)
        else:
            raise TypeError("base must be a cusense.detectors.KnnDiscord or MultiScaleZ, got "
                            f"{type(self.base).__name__}")
        object.__setattr__(self, "base", b)
        if self.scale is None:
            object.__setattr__(self, "scale", 1.0 if isinstance(b, KnnDiscord) else 6.0)
        _check_threshold(self.threshold)
        _check_number("scale", self.scale, 0.0, 1e6, low_open=True)
        _check_int("short_window", self.short_window, 1, MAX_SUBSEQUENCE)
        _check_int("reestimate", self.reestimate, 1, MAX_HISTORY)
        _check_int("long_window", self.long_window, int(self.reestimate), MAX_HISTORY)
        if -(-int(self.long_window) // int(self.reestimate)) > 1 << 16:
            raise ValueError("long_window / reestimate must be <= 65536 blocks, got "
                             f"{self.long_window} / {self.reestimate}")
        _check_int("warmup", self.warmup, 1, MAX_HISTORY)
        _check_int("learn", self.learn, 0, int(self.warmup) - 1)
        _check_int("rest", self.rest, 0, MAX_HISTORY)
        _check_number("spatial", self.spatial, 0.0, 1e6)
        _check_int("channel", self.channel, 0, MAX_CHANNEL)

    def _fill(self, spec: _core.DetectorSpec) -> None:
        self.base._fill(spec)
        spec.base = self.base.kind
        spec.scale, spec.short_window = float(self.scale or 0.0), int(self.short_window)
        spec.long_window, spec.reestimate = int(self.long_window), int(self.reestimate)
        spec.learn, spec.warmup, spec.rest = int(self.learn), int(self.warmup), int(self.rest)
        spec.spatial = float(self.spatial)


@dataclass(frozen=True)
class Silence(Detector):
    """A key that sends nothing for longer than ``timeout`` (measured by the watermark) is
    reported by ``pipe.poll_silence()``, and reported again when it comes back."""

    timeout: Duration = "1min"
    kind = "silence"

    def __post_init__(self) -> None:
        t = to_nanoseconds(self.timeout, "timeout")
        if t <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout!r}")
        object.__setattr__(self, "timeout", t)

    def _fill(self, spec: _core.DetectorSpec) -> None:
        spec.timeout = to_nanoseconds(self.timeout)


def default() -> Detector:
    """The configuration recommended for unknown data (one setting for every stream):
    ``MultiScaleZ()`` with its defaults (threshold 0.7691, ``|z| = 3.5``): O(1) state, fast,
    quiet on healthy sensors and loud on spikes and level shifts. For several channels of one
    device scored jointly, use :class:`JointZ`; for single series judged like NAB (contextual
    anomalies, new extremes, one alarm per event), :class:`AnomalyLikelihood`."""
    return MultiScaleZ()


def detector_of_spec(spec: _core.DetectorSpec) -> Detector:
    """The detector object a ``_core.DetectorSpec`` (e.g. from a checkpoint) was built from."""
    common: dict[str, Any] = {"threshold": spec.threshold, "channel": spec.channel,
                              "name": spec.name or None}
    if spec.kind == "ewma":
        return EWMA(alpha=spec.alpha, min_count=spec.min_count, **common)
    if spec.kind in ("rolling_z", "rolling_mad"):
        cls = RollingZ if spec.kind == "rolling_z" else RollingMAD
        return cls(window=spec.window, min_count=spec.min_count, **common)
    if spec.kind == "knn_discord":
        return KnnDiscord(L=spec.L, H=spec.H, min_candidates=spec.min_candidates, H2=spec.H2,
                          K=spec.K, min_count=spec.min_count, tod_weight=spec.tod_weight, **common)
    if spec.kind == "multiscale_z":
        return MultiScaleZ(alpha=spec.alpha, trend=spec.trend, beta=spec.beta, gamma=spec.gamma,
                           clip=spec.clip, min_count=spec.min_count, K=spec.K, **common)
    if spec.kind == "joint_z":
        return JointZ(alpha=spec.alpha, beta=spec.beta, gamma=spec.gamma, freeze=spec.freeze,
                      min_count=spec.min_count, channels=spec.channels, **common)
    if spec.kind == "likelihood":
        base: KnnDiscord | MultiScaleZ
        if spec.base == "knn_discord":
            base = KnnDiscord(L=spec.L, H=spec.H, min_candidates=spec.min_candidates,
                              tod_weight=spec.tod_weight)
        else:
            base = MultiScaleZ(alpha=spec.alpha, trend=spec.trend, beta=spec.beta,
                               gamma=spec.gamma, clip=spec.clip, min_count=spec.min_count)
        return AnomalyLikelihood(base=base, scale=spec.scale, short_window=spec.short_window,
                                 long_window=spec.long_window, reestimate=spec.reestimate,
                                 learn=spec.learn, warmup=spec.warmup, rest=spec.rest,
                                 spatial=spec.spatial, **common)
    if spec.kind == "silence":
        return Silence(timeout=spec.timeout)
    raise ValueError(f"unknown detector kind {spec.kind!r}")


def score(timestamps: Column, values: Column, keys: Column = None, detector: Detector | None = None,
          backend: str = "auto", time_unit: str | None = None) -> np.ndarray:
    """Scores of a finite stream by one detector, aligned with the input order (float64 array).

    Every record is scored from its key's earlier records in ``(timestamp, input order)``
    order; nothing is late. ``keys=None`` means one series. ``values`` is 1-D (one channel), or
    ``(n, channels)`` (a univariate detector reads its ``channel``; :class:`JointZ` reads its
    channels).
    Timestamps are as for :meth:`cusense.Pipeline.push`: integers in ``time_unit`` (default
    ns; a :class:`cusense.TimeUnitWarning` when they look like seconds or milliseconds and no
    ``time_unit`` is given), datetime64, time-zone-aware pandas timestamps or datetimes.
    """
    import numpy as np

    from ._pipeline import _as_keys, _as_values
    from ._time import check_time_unit, timestamp_array, timestamps_to_ns, warn_if_seconds_or_ms

    det = default() if detector is None else detector
    if not hasattr(det, "_spec"):
        raise TypeError(f"detector must be a cusense.detectors.* object, got {type(det).__name__}")
    if isinstance(det, Silence):
        raise ValueError("score: the silence detector gives events, not scores (use a Pipeline)")
    raw_times = timestamp_array(timestamps)
    t = timestamps_to_ns(raw_times, check_time_unit(time_unit or "ns"))
    if time_unit is None and raw_times.dtype.kind in "iu":
        warn_if_seconds_or_ms(t, stacklevel=2)
    raw_values = np.asarray(values)
    channels = raw_values.shape[1] if raw_values.ndim == 2 else 1
    v = np.ascontiguousarray(_as_values(values, channels), dtype=np.float64)
    if keys is None:
        k = np.zeros(0, dtype=np.uint32)
    else:
        k = _as_keys(keys)
    if t.ndim != 1 or len(t) != len(v) or (keys is not None and len(k) != len(t)):
        raise ValueError(f"length mismatch: {len(t)} timestamps, {len(v)} values"
                         + ("" if keys is None else f", {len(k)} keys"))
    return _core.score(k, t, v, det._spec(), backend, keys is not None)


__all__ = ["Detector", "EWMA", "RollingZ", "RollingMAD", "KnnDiscord", "MultiScaleZ", "JointZ",
           "AnomalyLikelihood", "Silence", "default", "score", "detector_of_spec"]
