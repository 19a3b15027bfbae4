"""The partitioned pipeline: a router in the calling process and one Ray actor per hash
partition of the keys (see docs/distributed.md)."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from collections import deque
from typing import Any, Sequence, Union

import numpy as np

from .. import _core
from .. import _pipeline as _single
from .._result import Result
from .._time import to_nanoseconds
from .._typing import Column, Duration, PathLike
from ..detectors import Detector
from . import _manifest as mf
from ._plan import Part, partition_of, plan_batch
from ._worker import PartitionWorker

_KINDS = ("windows", "late", "scores", "silence")
_MAX_TIMESTAMP = 2**62
#: Default bound on the batches kept for replay since the last checkpoint (bytes of records).
DEFAULT_MAX_REPLAY_BYTES = 1 << 30


#: Ray actor options for every partition (a dict) or for each (a sequence of one per partition).
ActorOptions = Union[dict[str, Any], Sequence[dict[str, Any]]]


class ReplayLogFullError(MemoryError):
    """The records routed since the last checkpoint reached ``max_replay_bytes``: the batch was
    refused (nothing changed). Call :meth:`Pipeline.checkpoint` (or give ``checkpoint_dir``, and
    the pipeline checkpoints by itself when the log is full), then push it again."""


class PartitionLostError(RuntimeError):
    """A partition could not be brought back (its worker died again during recovery more often
    than ``max_recoveries`` allows, or the checkpoint it restores from is gone)."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("cusense.distributed needs Ray: pip install 'cusense[ray]'") from None
    return ray


def _rows(cols: dict[str, np.ndarray]) -> int:
    return 0 if not cols else len(next(iter(cols.values())))


def _take(cols: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
    return cols if start == 0 else {c: a[start:] for c, a in cols.items()}


class Pipeline:
    """A :class:`cusense.Pipeline` partitioned by key over ``partitions`` Ray actors, with the
    single pipeline's results (bit for bit on the CPU backend).

    Takes the arguments of :class:`cusense.Pipeline` (except ``max_open_windows``) and has its
    methods: :meth:`push`, :meth:`poll`, :meth:`poll_late`, :meth:`poll_scores`,
    :meth:`poll_silence`, :meth:`flush`, :meth:`checkpoint`, :meth:`restore`, :attr:`stats`.
    Keys belong to partition :func:`cusense.distributed.partition_of` ``(key, partitions)``.

    Parameters beyond :class:`cusense.Pipeline`'s
    -----------------------------------------------
    partitions : int
        Number of partitions (actors).
    actor_options : dict or sequence of dicts, optional
        Ray actor options for every partition (a dict) or for each partition (one dict per
        partition): ``num_cpus``, ``num_gpus``, ``resources``, ``scheduling_strategy``, ...,
        over the defaults: no CPU reserved, spread over the nodes, one GPU per actor where the
        backend is CUDA (see the GPU rules in the documentation).
    max_replay_bytes : int
        Bound on the records kept for replay since the last checkpoint (default 1 GiB). A push
        that would exceed it checkpoints to ``checkpoint_dir`` first when that is given, else
        raises :class:`ReplayLogFullError`.
    checkpoint_dir : path, optional
        Where the pipeline checkpoints by itself when the replay log is full.
    max_in_flight : int
        Pushes per partition that may be in flight (submitted, not finished) before ``push``
        waits for the oldest: back-pressure on the caller (default 8).
    address : str, optional
        Ray cluster to connect to when Ray is not initialised yet (``ray.init(address)``; None:
        ``RAY_ADDRESS`` or a local cluster).
    """

    def __init__(self, window: _single.Window | None = None,
                 aggs: Sequence[str] = ("count", "sum", "mean", "min", "max", "var", "std"),
                 max_out_of_orderness: Duration = 0, backend: str = "auto",
                 channels: int | Sequence[str] | None = None,
                 nan_policy: str = "skip", staging_records: int | None = None,
                 cpu_threads: int = 0, max_open_windows: int = 0,
                 detectors: Sequence[Detector] | None = None,
                 allowed_lateness: Duration = 0, quantile_accuracy: float = 0.01, *,
                 partitions: int = 2, actor_options: ActorOptions | None = None,
                 max_replay_bytes: int = DEFAULT_MAX_REPLAY_BYTES,
                 checkpoint_dir: PathLike | None = None, max_in_flight: int = 8,
                 address: str | None = None) -> None:
        if max_open_windows:
            raise ValueError("max_open_windows is not supported by the partitioned pipeline (a cap "
                             "per partition would reject a batch in some partitions only)")
        # A local pipeline with the same options, never pushed: checks the options and the
        # batches exactly as the single pipeline does, and gives the empty result tables.
        proto = _prototype(window, aggs=aggs, max_out_of_orderness=max_out_of_orderness,
                           channels=channels, nan_policy=nan_policy,
                           staging_records=staging_records, detectors=detectors,
                           allowed_lateness=allowed_lateness, quantile_accuracy=quantile_accuracy)
        kwargs: dict[str, Any] = {
            "window": proto.window, "aggs": list(proto.aggs),
            "max_out_of_orderness": proto._core.options.max_out_of_orderness, "backend": backend,
            "channels": channels if channels is None or isinstance(channels, (int, np.integer))
            else [str(c) for c in channels],
            "nan_policy": nan_policy, "staging_records": staging_records, "cpu_threads": cpu_threads,
            "detectors": list(proto.detectors),
            "allowed_lateness": proto._core.options.allowed_lateness,
            "quantile_accuracy": float(quantile_accuracy)}
        self._setup(proto, kwargs, partitions, actor_options, max_replay_bytes, checkpoint_dir,
                    max_in_flight, address)
        self._actors = [self._spawn(p) for p in range(self._n)]
        self._started()

    # -- set-up ------------------------------------------------------------------------------

    def _setup(self, proto: _single.Pipeline, kwargs: dict[str, Any], partitions: int,
               actor_options: ActorOptions | None, max_replay_bytes: int,
               checkpoint_dir: PathLike | None, max_in_flight: int, address: str | None) -> None:
        ray = _ray()
        if isinstance(partitions, bool) or not isinstance(partitions, (int, np.integer)) \
                or not 1 <= int(partitions) <= 65536:
            raise ValueError(f"partitions must be an int in [1, 65536], got {partitions!r}")
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be a positive int, got {max_in_flight!r}")
        if not isinstance(max_replay_bytes, int) or max_replay_bytes < 1:
            raise ValueError(f"max_replay_bytes must be a positive int, got {max_replay_bytes!r}")
        if kwargs["backend"] not in ("auto", "cpu", "cuda"):
            raise ValueError(f"backend must be 'auto', 'cpu' or 'cuda', got {kwargs['backend']!r}")
        if not ray.is_initialized():
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        self._ray = ray
        self._proto = proto
        self._kwargs = kwargs
        self._n = int(partitions)
        self._ooo = int(kwargs["max_out_of_orderness"])
        window = kwargs["window"]
        self._rolling = isinstance(window, _single.Rolling)
        self._windowed = window is not None
        # Watermark steps are thinned to those crossing a window boundary where nothing else
        # depends on the watermark (tumbling and sliding windows, no detectors: detectors judge
        # lateness and release records at every watermark).
        lateness = int(kwargs["allowed_lateness"])
        self._grids: list[tuple[int, int]] | None = None
        if not kwargs["detectors"]:
            if isinstance(window, _single.Tumbling):
                size, off = to_nanoseconds(window.size), to_nanoseconds(window.offset)
                self._grids = [(size, off % size), (size, (off + lateness) % size)]
            elif isinstance(window, _single.Sliding):
                slide = to_nanoseconds(window.slide)
                end = to_nanoseconds(window.offset) + to_nanoseconds(window.size)
                self._grids = [(slide, end % slide), (slide, (end + lateness) % slide)]
        self._actor_options = self._placement(actor_options)
        self._max_replay_bytes = int(max_replay_bytes)
        self._checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self._max_in_flight = int(max_in_flight)
        self.max_recoveries = 10
        # Stream state of the router: records numbered globally, the running maximum event time
        # (None before the first record), the last watermark step given, events numbered.
        self._next = 0
        self._max: int | None = None
        self._event = 0
        self._rejected = 0
        # Per partition: the last watermark it was given (to bring it up to date before a cut), the
        # events since the last cut (replay log) and the futures in flight.
        self._given: list[int | None] = [None] * self._n
        self._log: list[list[tuple[str, int, Any]]] = [[] for _ in range(self._n)]
        self._log_bytes = 0
        self._inflight: list[deque[Any]] = [deque() for _ in range(self._n)]
        # The base each partition restores from after a failure: (directory, manifest entry) of
        # its file of the last cut, or None (start empty).
        self._base: list[tuple[str, dict[str, Any]] | None] = [None] * self._n
        self._tmpdirs: list[str] = []
        # Rows received from each partition since the last cut (per kind), rows to drop after a
        # recovery (already received from the lost worker), rows merged but not yet polled.
        self._received = [dict.fromkeys(_KINDS, 0) for _ in range(self._n)]
        self._skip = [dict.fromkeys(_KINDS, 0) for _ in range(self._n)]
        self._out: dict[str, list[Result]] = {k: [] for k in _KINDS}
        self.recoveries = 0
        self._recoveries_of_p: dict[int, int] = {}
        self._closed = False
        self.window = window
        self.aggs = list(kwargs["aggs"])
        self.detectors = list(kwargs["detectors"])

    def _placement(self, actor_options: ActorOptions | None) -> list[dict[str, Any]]:
        """Actor options per partition: one GPU per actor (or a share when the cluster has fewer
        GPUs than partitions) where the backend rules pick CUDA for this configuration, none
        otherwise; then the user's options."""
        backend = self._kwargs["backend"]
        gpus = float(self._ray.cluster_resources().get("GPU", 0))
        opts: dict[str, Any] = {"num_cpus": 0, "scheduling_strategy": "SPREAD", "max_restarts": 0}
        if backend != "cpu":
            if gpus == 0:
                if backend == "cuda":
                    raise _core.BackendUnavailableError("backend='cuda': the Ray cluster has no GPU")
                why = None
            else:
                why = self._cuda_refuses(min(gpus, 1.0))
                if why is not None and backend == "cuda":
                    raise _core.BackendUnavailableError(f"backend='cuda' for the partitions: {why}")
            if gpus > 0 and why is None:
                opts["num_gpus"] = 1 if gpus >= self._n else int(100 * gpus / self._n) / 100
            else:
                self._kwargs["backend"] = "cpu"  # the CPU engines, on any node
        if actor_options is None or isinstance(actor_options, dict):
            return [{**opts, **(actor_options or {})} for _ in range(self._n)]
        per = list(actor_options)
        if len(per) != self._n:
            raise ValueError(f"actor_options has {len(per)} entries for {self._n} partitions")
        return [{**opts, **o} for o in per]

    def _cuda_refuses(self, gpu_share: float) -> str | None:
        """Why a partition on a GPU node could not run this configuration on the CUDA backend
        (None: it can), asked of a task on a GPU node."""
        kwargs = {**self._kwargs, "backend": "cuda"}
        probe = self._ray.remote(num_gpus=gpu_share, num_cpus=0)(_cuda_probe)
        try:
            return str(self._ray.get(probe.remote(kwargs), timeout=120)) or None
        except self._ray.exceptions.GetTimeoutError:
            return "no GPU became free within 120 s to check the configuration"

    def _spawn(self, p: int, checkpoint: bytes | None = None) -> Any:
        if not hasattr(self, "_remote_cls"):
            self._remote_cls = self._ray.remote(PartitionWorker)
        return self._remote_cls.options(**self._actor_options[p]).remote(self._kwargs, p, checkpoint)

    def _started(self) -> None:
        # Wait for every worker: a configuration the backend refuses fails here, once.
        backends = []
        for p, a in enumerate(self._actors):
            try:
                backends.append(self._ray.get(a.backend.remote()))
            except self._ray.exceptions.RayError as e:
                self.close()
                raise RuntimeError(f"partition {p} could not start: {e}") from None
        self._backends = backends

    # -- properties --------------------------------------------------------------------------

    @property
    def partitions(self) -> int:
        """The number of partitions."""
        return self._n

    @property
    def backend(self) -> str:
        """``"cuda"`` or ``"cpu"`` (the partitions' backend; ``"mixed"`` if they differ)."""
        return self._backends[0] if len(set(self._backends)) == 1 else "mixed"

    @property
    def allowed_lateness(self) -> int:
        return int(self._kwargs["allowed_lateness"])

    @property
    def watermark_time(self) -> np.datetime64:
        """The global watermark as ``numpy.datetime64[ns]`` (NaT before the first record)."""
        wm = self._watermark()
        return np.datetime64("NaT", "ns") if wm is None else np.datetime64(wm, "ns")

    def _watermark(self) -> int | None:
        return None if self._max is None else self._max - self._ooo

    # -- pushing -----------------------------------------------------------------------------

    def push(self, keys: Column, timestamps: Column, values: Column, time_unit: str | None = None) -> None:
        """Push a micro-batch, as :meth:`cusense.Pipeline.push`: the batch is checked here (a
        refused batch changes nothing but ``stats["records_rejected"]``), split by partition
        and shipped to the partitions through Ray's object store. Returns once the parts are
        submitted (at most ``max_in_flight`` pushes per partition wait in flight)."""
        self._check_open()
        if _single._is_empty_batch(keys, timestamps, values):
            return
        try:
            k, t, v = self._proto._checked_batch(keys, timestamps, values, time_unit)
            self._check_like_engine(t, v)
        except (TypeError, ValueError):
            self._rejected += _single._batch_length(keys, timestamps, values)
            raise
        self._route(k, t, v)

    def _check_like_engine(self, t: np.ndarray, v: np.ndarray) -> None:
        # The checks the library applies to a whole batch, here, so that a batch is refused
        # whole (never by some partitions only).
        n = len(t)
        if n and (t.min() < -_MAX_TIMESTAMP or t.max() > _MAX_TIMESTAMP):
            at = int(np.flatnonzero((t < -_MAX_TIMESTAMP) | (t > _MAX_TIMESTAMP))[0])
            bad = int(t[at])
            nat = "; NaT is not a valid time" if bad == np.iinfo(np.int64).min else ""
            raise ValueError(f"timestamp out of range at record {at}: {bad} ns (valid: +-2^62 ns "
                             f"around the epoch, years 1824..2116{nat}); the batch of {n} records "
                             "was rejected")
        if self._kwargs["nan_policy"] == "raise":
            nan = np.isnan(v.reshape(n, -1)).any(axis=1)
            if nan.any():
                raise ValueError(f"value is NaN at index {int(np.flatnonzero(nan)[0])} "
                                 f"(nan_policy='raise'); batch of {n} records rejected")

    def _route(self, k: np.ndarray, t: np.ndarray, v: np.ndarray) -> None:
        ray = self._ray
        nbytes = k.nbytes + t.nbytes + v.nbytes + 8 * len(k)
        if self._log_bytes + nbytes > self._max_replay_bytes and self._log_bytes > 0:
            if self._checkpoint_dir is None:
                raise ReplayLogFullError(
                    f"the records routed since the last checkpoint ({self._log_bytes} bytes) and "
                    f"this batch ({nbytes} bytes) exceed max_replay_bytes={self._max_replay_bytes}: "
                    "call checkpoint() (or give checkpoint_dir) and push the batch again")
            self.checkpoint(self._checkpoint_dir)
        parts = partition_of(k, self._n) if self._n > 1 else np.zeros(len(k), np.uint32)
        prev_wm = self._watermark()
        plan = plan_batch(parts, t, self._next, self._max, self._ooo, self._n, self._grids, prev_wm)
        event = self._event
        self._event += 1
        for p, part in enumerate(plan.parts):
            if part is None:
                continue
            ref = ray.put(self._part_arrays(part, k, t, v))
            self._log[p].append(("push", event, ref))
            if part.watermark.size:
                self._given[p] = int(part.watermark[-1])
            self._submit(p, "push_part", event, ref)
        self._log_bytes += nbytes
        self._next += len(k)
        if len(k):
            self._max = plan.new_max

    @staticmethod
    def _part_arrays(part: Part, k: np.ndarray, t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
        idx = part.index
        return (k[idx], t[idx], v[idx], part.positions, part.at, part.watermark, part.step_position)

    def _submit(self, p: int, method: str, *args: Any) -> None:
        self._inflight[p].append(getattr(self._actors[p], method).remote(*args))
        while len(self._inflight[p]) > self._max_in_flight:
            self._wait_oldest(p)

    def _wait_oldest(self, p: int) -> None:
        ref = self._inflight[p][0]
        try:
            self._ray.get(ref)
        except self._ray.exceptions.RayActorError:
            self._recover(p)
            return
        except self._ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None
        self._inflight[p].popleft()

    def _settle(self, p: int | None = None) -> None:
        """Waits for every event in flight (of partition ``p``, or all), recovering lost
        partitions."""
        for q in range(self._n) if p is None else (p,):
            while self._inflight[q]:
                self._wait_oldest(q)

    # -- faults ------------------------------------------------------------------------------

    def _recover(self, p: int) -> None:
        """Partition ``p``'s worker is gone: a new one restores the last cut and replays the
        events routed to it since; rows it emits again are dropped by :meth:`_collect`."""
        self.recoveries += 1
        self._recoveries_of_p[p] = self._recoveries_of_p.get(p, 0) + 1
        if self._recoveries_of_p[p] > self.max_recoveries:
            raise PartitionLostError(f"partition {p} was lost {self._recoveries_of_p[p]} times "
                                     f"(max_recoveries={self.max_recoveries})")
        try:
            self._ray.kill(self._actors[p], no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        base = self._base[p]
        checkpoint = None
        if base is not None:
            try:
                checkpoint = mf.read_checked(*base)
            except (OSError, _core.CheckpointError) as e:
                raise PartitionLostError(f"partition {p} cannot be recovered: its checkpoint "
                                         f"is unreadable ({e})") from None
        self._actors[p] = self._spawn(p, checkpoint)
        self._inflight[p].clear()
        self._skip[p] = dict(self._received[p])
        for method, event, ref in self._log[p]:
            if method == "push":
                self._inflight[p].append(self._actors[p].push_part.remote(event, ref))
            else:
                self._inflight[p].append(self._actors[p].flush.remote(event))

    def worker_pids(self) -> list[int]:
        """The process id of each partition's worker (for diagnostics and fault tests)."""
        return [self._call(p, "pid") for p in range(self._n)]

    def workers(self) -> list[Any]:
        """The Ray actor handle of each partition."""
        return list(self._actors)

    def _call(self, p: int, method: str, *args: Any) -> Any:
        for _ in range(self.max_recoveries + 1):
            self._settle(p)
            try:
                return self._ray.get(getattr(self._actors[p], method).remote(*args))
            except self._ray.exceptions.RayActorError:
                self._recover(p)
            except self._ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None
        raise PartitionLostError(f"partition {p} keeps failing")

    # -- outputs -----------------------------------------------------------------------------

    def _collect(self) -> None:
        """Drains every partition and merges its rows, per kind, into the single pipeline's
        order (kept until polled)."""
        self._settle()
        ray = self._ray
        refs = [a.drain.remote() for a in self._actors]
        drained: list[dict[str, dict[str, np.ndarray]]] = []
        for p, ref in enumerate(refs):
            try:
                drained.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                self._recover(p)
                drained.append(self._call(p, "drain"))
            except ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None
        for kind in _KINDS:
            tables = []
            for p in range(self._n):
                cols = drained[p][kind]
                n = _rows(cols)
                drop = min(self._skip[p][kind], n)
                self._skip[p][kind] -= drop
                self._received[p][kind] += n - drop
                if n - drop:
                    tables.append(_take(cols, drop))
            if tables:
                self._out[kind].append(self._merge(kind, tables))

    def _merge(self, kind: str, tables: list[dict[str, np.ndarray]]) -> Result:
        cols = {c: np.concatenate([t[c] for t in tables]) for c in tables[0]} if len(tables) > 1 \
            else dict(tables[0])
        if kind == "windows":
            first = cols.pop("position") if "position" in cols else cols.pop("_event")
            second = cols["timestamp"] if self._rolling else cols["window_start"]
            keys: tuple[np.ndarray, ...] = (cols["key"], second, first)
        elif kind == "late":
            keys = (cols.pop("position") if "position" in cols else cols.pop("_event"),)
        elif kind == "scores":
            keys = (cols["seq"], cols["key"], cols["timestamp"], cols.pop("_event"))
        else:
            at = np.where(cols["back"].astype(bool), cols["back_at"], cols["silent_since"])
            keys = (cols["back"], cols["key"], at, cols.pop("_event"))
        if len(tables) > 1:
            order = np.lexsort(keys)  # stable: rows of one partition keep their order on ties
            cols = {c: a[order] for c, a in cols.items()}
        return Result(cols)

    def _take_out(self, kind: str, empty: Result) -> Result:
        parts = self._out[kind]
        self._out[kind] = []
        if not parts:
            return empty
        return parts[0] if len(parts) == 1 else Result.concat(parts)

    def poll(self) -> Result:
        """Windows emitted since the last poll, in the single pipeline's order."""
        self._check_open()
        self._collect()
        return self._take_out("windows", self._proto.poll())

    def poll_late(self) -> Result:
        """Late records since the last call, in arrival order."""
        self._check_open()
        self._collect()
        return self._take_out("late", self._proto.poll_late())

    def poll_scores(self) -> Result:
        """Detector scores since the last call, in the single pipeline's release order (``seq``
        is the global arrival index)."""
        self._check_open()
        empty = self._proto.poll_scores()  # raises as the single pipeline does without scorers
        self._collect()
        return self._take_out("scores", empty)

    def poll_silence(self) -> Result:
        """Silence events since the last call (needs a ``Silence`` detector)."""
        self._check_open()
        empty = self._proto.poll_silence()
        self._collect()
        return self._take_out("silence", empty)

    def flush(self) -> Result:
        """End of stream: every partition emits its open windows; returns what poll() would."""
        self._check_open()
        event = self._event
        self._event += 1
        for p in range(self._n):
            self._log[p].append(("flush", event, None))
            self._submit(p, "flush", event)
        return self.poll()

    # -- stats -------------------------------------------------------------------------------

    def partition_stats(self) -> list[dict[str, Any]]:
        """Each partition's :attr:`cusense.Pipeline.stats` (its watermark is the last step it
        was given, which may trail the global one for tumbling and sliding windows)."""
        self._check_open()
        return [self._call(p, "stats") for p in range(self._n)]

    @property
    def stats(self) -> dict[str, Any]:
        """The partitions' counters summed (records pushed, aggregated, late, rejected, scored,
        windows emitted and open, open keys, state bytes) and the global ``watermark``."""
        per = self.partition_stats()
        total: dict[str, Any] = {}
        for s in per:
            for name, value in s.items():
                if name != "watermark":
                    total[name] = total.get(name, 0) + value
        total["records_pushed"] = total.get("records_pushed", 0) + self._rejected
        total["records_rejected"] = total.get("records_rejected", 0) + self._rejected
        total["watermark"] = self._watermark()
        return total

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self, path: PathLike) -> None:
        """Writes one consistent cut of every partition (all at the same stream position) to
        the directory ``path``: one checkpoint file per partition, the outputs not yet polled
        and, written last and atomically, ``manifest.json``. A crash leaves the previous
        checkpoint of ``path`` intact. The replay log is emptied."""
        self._check_open()
        directory = os.fspath(path)
        os.makedirs(directory, exist_ok=True)
        # Every partition at the global watermark (steps may have been thinned).
        wm = self._watermark()
        if wm is not None:
            # A step at the watermark in force, placed after the last record (thinned steps
            # crossed no window boundary, so it emits nothing).
            pos = 2 * (self._next - 1) + 1
            event = self._event
            self._event += 1
            empty_k = np.zeros(0, np.uint32)
            empty_t = np.zeros(0, np.int64)
            empty_v = np.zeros((0,) + self._value_shape(), np.float64)
            for p in range(self._n):
                if self._given[p] != wm:
                    arrays = (empty_k, empty_t, empty_v, empty_t, np.zeros(1, np.int64),
                              np.array([wm], np.int64), np.array([pos], np.int64))
                    ref = self._ray.put(arrays)
                    self._log[p].append(("push", event, ref))
                    self._given[p] = wm
                    self._submit(p, "push_part", event, ref)
        ray = self._ray
        for _ in range(self.max_recoveries + 1):
            self._collect()
            refs = [a.checkpoint.remote() for a in self._actors]
            states, lost = [], False
            for p, ref in enumerate(refs):
                try:
                    states.append(ray.get(ref))
                except ray.exceptions.RayActorError:
                    # The new worker replays into rows already received: collect (and drop)
                    # them, then checkpoint again.
                    self._recover(p)
                    lost = True
                except ray.exceptions.RayTaskError as e:
                    raise e.as_instanceof_cause() from None
            if not lost:
                break
        else:
            raise PartitionLostError("partitions keep failing during the checkpoint")
        cut = mf.new_cut_id()
        files = [{"checkpoint": mf.write_bytes(directory, mf.partition_file(cut, p, self._n), data)}
                 for p, data in enumerate(states)]
        outputs: dict[str, np.ndarray] = {}
        columns: dict[str, list[str]] = {}
        for kind in _KINDS:
            if self._out[kind]:
                merged = Result.concat(self._out[kind])
                self._out[kind] = [merged]
                columns[kind] = merged.columns
                for c in merged.columns:
                    outputs[f"{kind}.{c}"] = merged[c]
        out_entry = mf.write_arrays(directory, mf.outputs_file(cut), outputs)
        manifest = {
            "format": mf.FORMAT, "version": mf.VERSION, "cut": cut, "partitions": self._n,
            "partition_hash": "fmix32(key) % partitions",
            "options": self._options_json(),
            "router": {"next_index": self._next, "max_event_time": self._max,
                       "event": self._event, "records_rejected": self._rejected},
            "files": files, "outputs": {"file": out_entry, "columns": columns},
        }
        mf.write_manifest(directory, manifest)
        self._after_cut(directory, files)

    def _after_cut(self, directory: str, files: list[dict[str, Any]]) -> None:
        for p in range(self._n):
            self._log[p].clear()
            self._base[p] = (directory, files[p]["checkpoint"])
            self._received[p] = dict.fromkeys(_KINDS, 0)
            self._skip[p] = dict.fromkeys(_KINDS, 0)
        self._log_bytes = 0
        self._recoveries_of_p = {}
        for tmp in self._tmpdirs:
            shutil.rmtree(tmp, ignore_errors=True)
        self._tmpdirs = []

    def _value_shape(self) -> tuple[int, ...]:
        channels = self._proto._channels
        return () if channels == 1 else (channels,)

    def _options_json(self) -> dict[str, Any]:
        k = self._kwargs
        return {"window": mf.window_to_json(k["window"]), "aggs": k["aggs"],
                "max_out_of_orderness": k["max_out_of_orderness"], "channels": k["channels"],
                "nan_policy": k["nan_policy"], "staging_records": k["staging_records"],
                "cpu_threads": k["cpu_threads"],
                "detectors": [mf.detector_to_json(d) for d in k["detectors"]],
                "allowed_lateness": k["allowed_lateness"], "quantile_accuracy": k["quantile_accuracy"]}

    @classmethod
    def restore(cls, path: PathLike, backend: str = "auto", nan_policy: str | None = None, *,
                partitions: int | None = None, actor_options: ActorOptions | None = None,
                max_replay_bytes: int = DEFAULT_MAX_REPLAY_BYTES,
                checkpoint_dir: PathLike | None = None, max_in_flight: int = 8,
                address: str | None = None) -> "Pipeline":
        """The pipeline saved by :meth:`checkpoint` in the directory ``path``, on ``partitions``
        partitions (default: as many as it had). On another number of partitions the keyed
        state is split and merged by the partition hash (``cusense.rekey_checkpoints``): pushing
        the records that followed the checkpoint gives exactly the output of the run that never
        rescaled."""
        directory = os.fspath(path)
        manifest = mf.read_manifest(directory)
        opts = manifest["options"]
        if nan_policy is not None and nan_policy != opts["nan_policy"]:
            raise ValueError(f"nan_policy={nan_policy!r} does not match the checkpoint's "
                             f"nan_policy={opts['nan_policy']!r} (a restored pipeline keeps the "
                             "options it was checkpointed with)")
        old_n = int(manifest["partitions"])
        n = old_n if partitions is None else partitions
        window = mf.window_from_json(opts["window"])
        dets = [mf.detector_from_json(d) for d in opts["detectors"]]
        proto = _prototype(window, aggs=opts["aggs"], max_out_of_orderness=opts["max_out_of_orderness"],
                           channels=opts["channels"], nan_policy=opts["nan_policy"],
                           staging_records=opts["staging_records"], detectors=dets,
                           allowed_lateness=opts["allowed_lateness"],
                           quantile_accuracy=opts["quantile_accuracy"])
        kwargs = {**opts, "window": window, "detectors": dets, "backend": backend}
        self = cls.__new__(cls)
        self._setup(proto, kwargs, n, actor_options, max_replay_bytes, checkpoint_dir,
                    max_in_flight, address)
        files = manifest["files"]
        if n == old_n:
            blobs = [mf.read_checked(directory, f["checkpoint"]) for f in files]
            bases = [(directory, f["checkpoint"]) for f in files]
        else:
            blobs, bases = self._rescale(directory, manifest, n)
        self._actors = [self._spawn(p, blobs[p]) for p in range(self._n)]
        self._started()
        self._base = list(bases)
        router = manifest["router"]
        self._next = int(router["next_index"])
        self._max = router["max_event_time"]
        self._given = [self._watermark()] * self._n
        self._event = int(router["event"])
        self._rejected = int(router["records_rejected"])
        outputs = manifest["outputs"]
        arrays = mf.read_arrays(directory, outputs["file"])
        for kind, names in outputs["columns"].items():
            self._out[kind] = [Result({c: arrays[f"{kind}.{c}"] for c in names})]
        return self

    def _rescale(self, directory: str, manifest: dict[str, Any], n: int) -> tuple[
            list[bytes], list[tuple[str, dict[str, Any]]]]:
        if self.detectors:
            raise NotImplementedError(
                "restoring a pipeline with detectors onto another number of partitions: "
                "cusense.rekey_checkpoints does not split detector state yet (restore it onto "
                f"its {manifest['partitions']} partitions)")
        files = manifest["files"]
        for f in files:  # check every input before rekeying
            mf.read_checked(directory, f["checkpoint"])
        inputs = [os.path.join(directory, f["checkpoint"]["file"]) for f in files]
        tmp = tempfile.mkdtemp(prefix="cusense-rescale-")
        self._tmpdirs.append(tmp)
        # Removed at the next cut or close(), or when the pipeline is collected or Python exits.
        weakref.finalize(self, shutil.rmtree, tmp, True)
        outputs = [os.path.join(tmp, f"part-{p:05d}-of-{n:05d}.ckpt") for p in range(n)]
        _single.rekey_checkpoints(inputs, outputs)
        blobs: list[bytes] = []
        bases: list[tuple[str, dict[str, Any]]] = []
        for out in outputs:
            with open(out, "rb") as fh:
                data = fh.read()
            blobs.append(data)
            bases.append((tmp, {"file": os.path.basename(out), "bytes": len(data),
                                "sha256": hashlib.sha256(data).hexdigest()}))
        return blobs, bases

    # -- life cycle --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the distributed pipeline is closed")

    def close(self) -> None:
        """Stops the partitions' actors (the pipeline's state is lost unless checkpointed)."""
        if self._closed:
            return
        self._closed = True
        for a in getattr(self, "_actors", []):
            try:
                self._ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        for tmp in self._tmpdirs:
            shutil.rmtree(tmp, ignore_errors=True)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"cusense.distributed.Pipeline(partitions={self._n}, window={self.window!r}, "
                f"backend={self.backend!r})")


def _prototype(window: _single.Window | None, **kwargs: Any) -> _single.Pipeline:
    """The local pipeline that checks options and batches (CPU, one thread, never pushed)."""
    return _single.Pipeline(window, backend="cpu", cpu_threads=1, watermark="external", **kwargs)


def _cuda_probe(kwargs: dict[str, Any]) -> str:
    """On a GPU node: '' if a partition of this configuration runs on the CUDA backend, else
    why not."""
    try:
        _single.Pipeline(**kwargs, watermark="external")
    except _core.BackendUnavailableError as e:
        return str(e)
    return ""
