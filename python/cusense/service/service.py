"""The long-lived service: broker -> micro-batches -> pipeline -> epochs -> sinks.

Loop (one thread): poll the source for a micro-batch (``max_messages`` or ``max_wait``,
whichever comes first), decode it (bad messages become dead letters), push it, collect the
pipeline's outputs into the current epoch. Every ``checkpoint.interval`` the epoch is closed:

1. its checkpoint (pipeline state, key dictionary, fleet status, source positions and the
   epoch's outputs) is written and made durable by an atomic rename;
2. each sink that has not committed the epoch gets ``write`` + ``commit`` (retried with
   back-off while the sink is unreachable: the source is not polled meanwhile, so the broker
   holds the backlog);
3. the source acknowledges everything up to the checkpoint (MQTT acks, Kafka offsets);
4. older checkpoints are deleted.

On start the service restores the latest checkpoint, re-sends its epoch to sinks that are
behind, and resumes the source after the checkpoint's positions. See docs/service.md for the
guarantees this gives with Kafka and with MQTT.

With ``[pipeline] workers = N`` (N >= 2) the pipeline is a ``cusense.distributed.Pipeline`` of
N partitions (Ray actors) with the single pipeline's results; the source, the decoder, the
epochs and the sinks stay in this process (docs/service.md, "Workers").
"""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Union

import numpy as np
import pandas as pd

from .._core import BackendUnavailableError
from .._pipeline import Pipeline, Sliding, Tumbling, window_from_config
from .._result import Result
from .._time import to_nanoseconds
from ..distributed import Pipeline as DistributedPipeline
from ..sinks.base import EpochOutput, Sink, SinkUnavailableError
from .checkpoints import CheckpointStore
from .config import ConfigError, ServiceConfig, load_config
from .fleet import FleetStatus

log = logging.getLogger("cusense.service")

# Crash-test hook: CUSENSE_FAULT="phase:n" kills the process with SIGKILL the n-th time it
# reaches ``phase`` (push; checkpoint_files: written, not yet renamed into place; checkpoint:
# durable; sink: between a sink's write and commit; ack), so tests can crash at each step.
_FAULT = os.environ.get("CUSENSE_FAULT", "")

#: The service's pipeline: in-process (``workers = 1``) or partitioned over Ray actors.
AnyPipeline = Union[Pipeline, DistributedPipeline]

# The distributed pipeline keeps the batches routed since its last checkpoint for replay after
# a lost worker. The service checkpoints every epoch, which empties that log, and bounds an
# epoch itself (checkpoint.max_epoch_records), so the pipeline's own bound is lifted: a full
# log would otherwise refuse a batch the service could not checkpoint before (its messages are
# already taken from the source).
_REPLAY_BYTES = 1 << 62


def _watermark(pipe: AnyPipeline) -> int | None:
    """The pipeline's watermark in ns (None before the first record). Read from
    ``watermark_time``, which the distributed pipeline answers from its router without a round
    trip to the workers (its ``stats`` asks every worker)."""
    wm = pipe.watermark_time
    return None if np.isnat(wm) else int(wm.astype(np.int64))


def _utc(ns: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(ns, dtype=np.int64).view("datetime64[ns]"), utc=True))


def _str_series(values) -> pd.Series:
    return pd.Series(values, dtype=object)


def build_window(p: dict):
    if p.get("window") == "rolling":
        raise ConfigError("pipeline.window 'rolling' is not offered by the service: count-window "
                          "rows have no window identity to upsert on (tumbling, sliding, session "
                          "or none)")
    try:
        return window_from_config(p)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_pipeline(p: dict, workers: int = 1) -> AnyPipeline:
    """The pipeline of a ``[pipeline]`` table: a ``cusense.Pipeline``, or with ``workers >= 2``
    a ``cusense.distributed.Pipeline`` of that many partitions (Ray must be initialised)."""
    from ..cli import UsageError, make_detector

    try:
        detectors = [make_detector(spec) for spec in p.get("detectors", [])]
    except UsageError as e:
        raise ConfigError(f"pipeline.detectors: {e}") from None
    kwargs: dict[str, Any] = dict(
        aggs=p.get("aggs", ["count", "mean", "min", "max"]),
        max_out_of_orderness=p.get("max_out_of_orderness", 0),
        allowed_lateness=p.get("allowed_lateness", 0),
        backend=p.get("backend", "auto"), detectors=detectors)
    try:
        if workers < 2:
            return Pipeline(build_window(p), max_open_windows=p.get("max_open_windows", 0),
                            max_detector_keys=p.get("max_detector_keys", 0),
                            memory_budget_bytes=p.get("memory_budget_bytes", 0), **kwargs)
        return DistributedPipeline(build_window(p), partitions=workers,
                                   max_replay_bytes=_REPLAY_BYTES, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[pipeline]: {e}") from None
    except BackendUnavailableError as e:
        raise ConfigError(f"pipeline.backend with workers = {workers}: {e}") from None


def build_source(s: dict):
    from ..sources.payloads import TopicTemplate

    if s["type"] == "mqtt":
        from ..sources.mqtt import MqttSource
        # By default subscribe to exactly what the template matches; ``subscribe`` widens it
        # (e.g. "fleet/#"), and messages on topics the template does not match are dead-lettered.
        subscribe = s.get("subscribe") or [TopicTemplate(s["topic_template"]).subscription()]
        return MqttSource(s.get("host", "127.0.0.1"), int(s.get("port", 1883)),
                          topics=list(subscribe), client_id=s.get("client_id", "cusense"),
                          qos=int(s.get("qos", 1)), username=s.get("username"),
                          password=s.get("password"))
    from ..sources.kafka import KafkaSource
    topics = s.get("topics")
    if not topics:
        raise ConfigError("source.topics is required for Kafka")
    return KafkaSource(s["bootstrap_servers"], topics, group_id=s.get("group_id", "cusense"),
                       config=s.get("config"), topic_from_key=bool(s.get("topic_from_key", True)))


def build_decoder(s: dict):
    from ..sources.keydict import KeyDictionary
    from ..sources.payloads import Decoder

    return Decoder(s["topic_template"], payload_format=s.get("format", "auto"),
                   timestamp_unit=s.get("timestamp_unit", "ns"),
                   keys=KeyDictionary(max_keys=int(s.get("max_keys", 1_000_000))),
                   max_payload_bytes=int(s.get("max_payload_bytes", 1 << 20)),
                   device_tag=s.get("device_tag", "device"),
                   default_channel=s.get("default_channel", "value"))


def build_sinks(sinks: list[dict]) -> list[Sink]:
    built: list[Sink] = []
    for s in sinks:
        opts = {k: v for k, v in s.items() if k != "type"}
        if s["type"] == "postgres":
            from ..sinks.postgres import PostgresSink
            built.append(PostgresSink(**opts))
        elif s["type"] == "parquet":
            from ..sinks.parquet import ParquetArchive
            built.append(ParquetArchive(**opts))
        else:
            from ..sinks.lineprotocol import LineProtocolSink
            built.append(LineProtocolSink(**opts))
    return built


class _Metrics:
    """Prometheus metrics (served on ``metrics.port`` when set) and the counters behind the
    progress line and ``Service.stats``."""

    def __init__(self, port: int | None):
        self.counts = {"messages": 0, "records_in": 0, "rows_out": 0, "records_late": 0,
                       "records_rejected": 0, "dead_letters": 0, "epochs": 0}
        self.checkpoint_at = time.time()
        self._prom = None
        if port is None:
            return
        import prometheus_client as prom

        reg = prom.CollectorRegistry()
        self._prom = {
            "messages": prom.Counter("cusense_messages", "broker messages received", registry=reg),
            "records_in": prom.Counter("cusense_records_in", "readings pushed into the pipeline", registry=reg),
            "rows_out": prom.Counter("cusense_rows_out", "window rows emitted", registry=reg),
            "records_late": prom.Counter("cusense_records_late", "readings too late for their window", registry=reg),
            "records_rejected": prom.Counter("cusense_records_rejected",
                                             "readings in batches the pipeline rejected", registry=reg),
            "dead_letters": prom.Counter("cusense_dead_letters", "messages or readings dead-lettered", registry=reg),
            "epochs": prom.Counter("cusense_epochs", "epochs committed to every sink", registry=reg),
        }
        self.watermark_lag = prom.Gauge("cusense_watermark_lag_seconds", "wall clock minus the watermark",
                                        registry=reg)
        self.checkpoint_age = prom.Gauge("cusense_checkpoint_age_seconds", "time since the last checkpoint",
                                         registry=reg)
        self.checkpoint_age.set_function(lambda: time.time() - self.checkpoint_at)
        self.checkpoint_seconds = prom.Histogram("cusense_checkpoint_duration_seconds", "checkpoint write time",
                                                 registry=reg)
        self.sink_seconds = prom.Histogram("cusense_sink_latency_seconds", "write + commit of one epoch", ["sink"],
                                           registry=reg)
        self.server, _ = prom.start_http_server(port, addr="127.0.0.1", registry=reg)

    def add(self, name: str, n: int) -> None:
        self.counts[name] += n
        if self._prom and n:
            self._prom[name].inc(n)

    def observe_checkpoint(self, seconds: float) -> None:
        self.checkpoint_at = time.time()
        if self._prom:
            self.checkpoint_seconds.observe(seconds)

    def observe_sink(self, sink: str, seconds: float) -> None:
        if self._prom:
            self.sink_seconds.labels(sink).observe(seconds)

    def watermark(self, watermark_ns: int | None) -> None:
        if self._prom and watermark_ns is not None:
            self.watermark_lag.set(time.time() - watermark_ns / 1e9)

    def close(self) -> None:
        """Stops the HTTP endpoint, freeing its port (a service restarted in-process binds it
        again)."""
        if self._prom:
            self.server.shutdown()
            self.server.server_close()


class _Stopped(Exception):
    """Stop was requested while waiting for a sink or the source: the durable checkpoint is
    left as it is and is delivered at the next start."""


class Service:
    """``cusense serve`` as an object: ``Service(config).run()`` blocks until :meth:`stop`
    (or SIGTERM under :func:`serve`), then drains, checkpoints and returns.

    ``source``/``sinks`` replace the configured ones (a custom sink object following
    :class:`cusense.sinks.Sink`, for instance)."""

    def __init__(self, config, *, source=None, sinks=None):
        self.config: ServiceConfig = load_config(config)
        cfg = self.config
        self._source = source if source is not None else build_source(cfg.source)
        self._sinks = list(sinks) if sinks is not None else build_sinks(cfg.sinks)
        self._decoder = build_decoder(cfg.source)
        self._store = CheckpointStore(cfg.checkpoint_dir)
        self._check_workers()
        self._ray_connected = False
        self._stop = threading.Event()
        # Set once the checkpoint is restored and the source is open (MQTT: subscribed), so a
        # caller knows when publishing to a fresh broker session starts to be kept for it.
        self.ready = threading.Event()
        self._metrics_of_run: _Metrics | None = None
        self._pipe: AnyPipeline | None = None
        self._fleet = FleetStatus(cfg.alarm_hold_ns)
        self._updates: dict[tuple[int, int], list[int]] = {}   # (key, start) -> [end, last seq]
        self._faults: dict[str, int] = {}
        self._epoch = 0
        self._reset_epoch()

    # --- public ----------------------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        counts = dict(self._metrics.counts) if self._metrics else {}
        wm = _watermark(self._pipe) if self._pipe else None
        return {**counts, "epoch": self._epoch, "watermark": wm, "keys": len(self._decoder.keys)}

    def stop(self) -> None:
        """Asks :meth:`run` to finish: the current batch is pushed, a final checkpoint is taken
        and committed, then it returns."""
        self._stop.set()

    def run(self) -> None:
        cfg = self.config
        self._metrics_of_run = _Metrics(cfg.metrics_port)
        progress = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        last_progress = time.monotonic()
        try:
            self._start()
            last_checkpoint = time.monotonic()
            while not self._stop.is_set():
                messages = self._collect(last_checkpoint)
                if messages:
                    self._process(messages)
                now = time.monotonic()
                due = now - last_checkpoint >= cfg.checkpoint_interval_ns / 1e9
                if (due and self._epoch_has_data()) or self._epoch_records >= cfg.max_epoch_records:
                    self._close_epoch()
                    last_checkpoint = time.monotonic()
                elif due:
                    last_checkpoint = now
                if progress and now - last_progress >= 1.0:
                    self._print_progress(now - last_progress)
                    last_progress = now
            if self._epoch_has_data():
                self._close_epoch()
            log.info("event=stopped epoch=%d", self._epoch - 1)
        except _Stopped:
            # Nothing is lost: the newest checkpoint is durable and is re-sent at the next start;
            # what came after it was never acknowledged to the broker.
            log.warning("event=stopped_undelivered epoch=%s reason='a sink or the source was "
                        "unreachable when asked to stop'", self._store.latest())
        finally:
            if progress:
                sys.stderr.write("\n")
            self._source.close()
            for sink in self._sinks:
                sink.close()
            self._metrics.close()
            self._close_workers()

    # --- workers: Ray ---------------------------------------------------------------------------
    def _check_workers(self) -> None:
        """At construction: Ray is installed when workers >= 2, and the newest checkpoint can be
        resumed with the configured number of workers."""
        cfg = self.config
        if cfg.workers >= 2 and importlib.util.find_spec("ray") is None:
            raise ConfigError(f"pipeline.workers = {cfg.workers} needs Ray: pip install 'cusense[ray]'")
        latest = self._store.latest()
        if latest is None:
            return
        have = self._store.pipeline_of(latest)
        where = f"the checkpoint of epoch {latest} in {cfg.checkpoint_dir!r}"
        if have.workers == cfg.workers:
            return
        if have.workers == 1 or cfg.workers == 1:
            raise ConfigError(
                f"pipeline.workers = {cfg.workers}, but {where} was written with workers = "
                f"{have.workers}: the in-process pipeline and the distributed one cannot resume "
                "each other's checkpoints (the in-process pipeline takes its watermark from its "
                "records, the partitions take the stream's from the router). Set workers = "
                f"{have.workers}" + (" (or any number >= 2)" if have.workers >= 2 and not have.detectors else ""))
        if have.detectors:
            raise ConfigError(
                f"pipeline.workers = {cfg.workers}, but {where} was written with workers = "
                f"{have.workers} and holds detector state, which cannot be split onto another "
                f"number of workers yet (window state can): set workers = {have.workers}")

    def _connect_ray(self) -> None:
        """With workers >= 2: Ray, initialised here unless the caller already did (then used as
        it is). ``ray_address`` connects to that cluster; without it a local Ray instance is
        started inside this process with the CPUs this process may run on (its affinity mask)
        and the GPUs Ray detects (CUDA_VISIBLE_DEVICES). Both are undone by _close_workers."""
        if self.config.workers < 2:
            return
        import ray

        if ray.is_initialized():
            log.info("event=ray address=existing")
            return
        # ray.init replaces the SIGTERM handler of the main thread (it exits the process);
        # the service's handler (serve(): drain, final checkpoint) is put back.
        main = threading.current_thread() is threading.main_thread()
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
        address = self.config.ray_address
        try:
            if address is None:
                cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
                ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                         logging_level="ERROR", log_to_driver=False)
            else:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except ConnectionError as e:
            raise ConfigError(f"pipeline.ray_address = {address!r}: no Ray cluster there ({e})") from None
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
        self._ray_connected = True
        log.info("event=ray address=%s", address or "local")

    def _close_workers(self) -> None:
        """Stops the distributed pipeline's actors, then shuts down the Ray this service
        initialised (a local instance stops; a cluster joined with ray_address is left, running).
        A Ray the caller initialised is left as it is."""
        if isinstance(self._pipe, DistributedPipeline):
            self._pipe.close()
        if self._ray_connected:
            import ray

            ray.shutdown()
            self._ray_connected = False

    # --- start: restore the latest checkpoint ----------------------------------------------------
    def _start(self) -> None:
        for sink in self._sinks:
            self._retry(sink, sink.open)
        self._connect_ray()
        latest = self._store.latest()
        positions = None
        workers = self.config.workers
        backend = self.config.pipeline.get("backend", "auto")
        if latest is None:
            self._pipe = build_pipeline(self.config.pipeline, workers)
            log.info("event=start epoch=0 backend=%s workers=%d%s fresh=true", self._pipeline.backend,
                     workers, self._worker_pids())
        else:
            from ..sources.keydict import KeyDictionary

            pipeline_path, state, out = self._store.read(latest)
            if workers < 2:
                self._pipe = Pipeline.restore(pipeline_path, backend=backend)
            else:   # onto another number of workers: window state is split by the key hash
                self._pipe = DistributedPipeline.restore(pipeline_path, backend=backend, partitions=workers,
                                                         max_replay_bytes=_REPLAY_BYTES)
            self._decoder.keys = KeyDictionary.from_json(state["keys"])
            self._fleet = FleetStatus.from_json(state["fleet"], self.config.alarm_hold_ns)
            self._updates = {(k, s): [e, q] for k, s, e, q in state["updates"]}
            for name, value in state["counts"].items():
                self._metrics.counts[name] = value
            self._deliver(out)                                   # sinks that were behind
            self._publish_status(state["status_changed"])        # idempotent (retained)
            positions = out.source_positions
            self._epoch = latest + 1
            log.info("event=restore epoch=%d backend=%s workers=%d%s keys=%d", latest,
                     self._pipeline.backend, workers, self._worker_pids(), len(self._decoder.keys))
        self._retry(self._source, lambda: self._source.open(positions), (ConnectionError, OSError))
        self.ready.set()
        log.info("event=ready epoch=%d", self._epoch)

    def _worker_pids(self) -> str:
        """`` worker_pids=...`` for the log line of a distributed pipeline."""
        if not isinstance(self._pipe, DistributedPipeline):
            return ""
        return " worker_pids=" + ",".join(map(str, self._pipe.worker_pids()))

    # --- per micro-batch -------------------------------------------------------------------------
    def _collect(self, last_checkpoint: float) -> list:
        """Messages until ``max_messages`` or ``max_wait`` after the first; a poll never waits
        past the next checkpoint time, so an idle stream still checkpoints on time."""
        cfg = self.config
        until_checkpoint = max(0.0, last_checkpoint + cfg.checkpoint_interval_ns / 1e9 - time.monotonic())
        first = self._source.poll(cfg.max_messages, min(0.1, until_checkpoint + 1e-3))
        if not first:
            return first
        messages = list(first)
        deadline = time.monotonic() + cfg.max_wait_ns / 1e9
        while len(messages) < cfg.max_messages:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = self._source.poll(cfg.max_messages - len(messages), left)
            if not more:
                break
            messages.extend(more)
        return messages

    def _process(self, messages: list) -> None:
        from ..sources.base import DeadLetter

        readings = self._decoder.decode(messages)
        dead = list(readings.dead_letters)
        n = len(readings)
        if n:
            try:
                self._pipeline.push(readings.keys, readings.timestamps, readings.values)
            except (ValueError, TypeError, MemoryError) as e:
                # The pipeline rejected the batch whole and is unchanged: its messages are
                # dead-lettered with the reason, so nothing vanishes.
                self._metrics.add("records_rejected", n)
                dead.extend(DeadLetter(m.topic, m.partition, m.offset, m.payload,
                                       f"pipeline rejected the batch: {e}") for m in messages)
                n = 0
        self._fault("push")
        self._metrics.add("messages", len(messages))
        self._metrics.add("dead_letters", len(dead))
        self._dead.extend(dead)
        if n:
            self._metrics.add("records_in", n)
            self._raw.append((readings.keys, readings.timestamps, readings.values))
            self._epoch_records += n
            self._fleet.seen(readings.keys, readings.timestamps, self._decoder.keys.lookup)
        self._collect_outputs()

    def _collect_outputs(self) -> None:
        pipe = self._pipeline
        lookup = self._decoder.keys.lookup
        watermark = _watermark(pipe)
        if pipe.window is not None:
            windows = pipe.poll()
            late = pipe.poll_late()
            if len(windows):
                self._windows.append(windows)
                self._metrics.add("rows_out", len(windows))
            if len(late):
                self._late.append(late)
                self._metrics.add("records_late", len(late))
        if pipe.detectors:
            scores = pipe.poll_scores()
            for col in [c for c in scores.columns if c.startswith("is_anomaly_")]:
                hit = scores[col] & ~scores["late"]
                if hit.any():
                    name = col[len("is_anomaly_"):]
                    keys = scores["key"][hit]
                    alarm = {"key": keys, "timestamp": scores["timestamp"][hit],
                             "value": scores["value"][hit].reshape(len(keys), -1)[:, 0],
                             "score": scores[f"score_{name}"][hit],
                             "detector": np.full(len(keys), name, dtype=object)}
                    self._alarms.append(Result(alarm))
                    self._fleet.alarms(lookup(keys)[0], alarm["timestamp"], watermark)
            has_silence = any(d.kind == "silence" for d in pipe.detectors)
            silence = pipe.poll_silence() if has_silence else Result({})
            if len(silence):
                self._silence.append(silence)
                self._fleet.silence(silence["key"], silence["last_seen"], silence["silent_since"],
                                    silence["back_at"], silence["back"], lookup, watermark)
        self._fleet.advance(watermark)
        self._metrics.watermark(watermark)

    @property
    def _metrics(self) -> _Metrics:
        """The metrics of the current run()."""
        if self._metrics_of_run is None:
            raise RuntimeError("the service is not running: no metrics yet")
        return self._metrics_of_run

    @property
    def _pipeline(self) -> AnyPipeline:
        """The pipeline, once the service has started (built, or restored from a checkpoint)."""
        if self._pipe is None:
            raise RuntimeError("the service has not started: no pipeline yet")
        return self._pipe

    # --- per epoch -------------------------------------------------------------------------------
    def _reset_epoch(self) -> None:
        self._windows: list[Result] = []
        self._late: list[Result] = []
        self._alarms: list[Result] = []
        self._silence: list[Result] = []
        self._dead: list[Any] = []
        self._raw: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._epoch_records = 0

    def _epoch_has_data(self) -> bool:
        return bool(self._raw or self._dead or self._windows or self._silence or self._alarms)

    def _closed_before(self, watermark: int | None) -> int | None:
        """Event time before which every window containing a reading has been emitted for good.
        Read from the pipeline, whose options come from the checkpoint after a restore."""
        if watermark is None:
            return None
        window = self._pipeline.window
        if window is None:
            return watermark
        if isinstance(window, (Tumbling, Sliding)):
            return watermark - self._pipeline.allowed_lateness - to_nanoseconds(window.size)
        return None   # sessions have no bounded span: raw readings wait for retention alone

    def _epoch_output(self) -> EpochOutput:
        lookup = self._decoder.keys.lookup
        watermark = _watermark(self._pipeline)

        def keyed(result: Result, time_cols=("timestamp",)) -> pd.DataFrame:
            cols = result.to_dict()
            keys = cols.pop("key", np.zeros(0, np.uint32))
            devices, channels = lookup(keys)
            frame = {"device": _str_series(devices), "channel": _str_series(channels)}
            for name, col in cols.items():
                if name in time_cols or name.startswith(("argmin_ts", "argmax_ts")):
                    frame[name] = _utc(col)
                elif col.ndim == 2:
                    frame[name] = pd.Series(col[:, 0])
                else:
                    frame[name] = pd.Series(col)
            return pd.DataFrame(frame)

        windows = keyed(Result.concat(self._windows) if self._windows else Result(
            {"key": np.zeros(0, np.uint32), "window_start": np.zeros(0, np.int64),
             "window_end": np.zeros(0, np.int64)}), ("window_start", "window_end"))
        windows.insert(4, "update_seq", self._update_seqs(Result.concat(self._windows), watermark)
                       if self._windows else pd.Series([], dtype=np.int32))
        if "is_update" in windows:
            windows = windows.drop(columns="is_update")
        alarms = keyed(Result.concat(self._alarms) if self._alarms else Result(
            {"key": np.zeros(0, np.uint32), "timestamp": np.zeros(0, np.int64), "value": np.zeros(0),
             "score": np.zeros(0), "detector": np.zeros(0, object)}))
        alarms = alarms[["device", "channel", "timestamp", "value", "detector", "score"]]
        silence = keyed(Result.concat(self._silence) if self._silence else Result(
            {"key": np.zeros(0, np.uint32), "last_seen": np.zeros(0, np.int64),
             "silent_since": np.zeros(0, np.int64), "back_at": np.zeros(0, np.int64),
             "back": np.zeros(0, bool)}), ("last_seen", "silent_since", "back_at"))
        late = keyed(Result.concat(self._late) if self._late else Result(
            {"key": np.zeros(0, np.uint32), "timestamp": np.zeros(0, np.int64), "value": np.zeros(0)}))
        raw = self._raw_frame()
        dead = pd.DataFrame({
            "topic": _str_series([d.topic for d in self._dead]),
            "partition": pd.array([d.partition for d in self._dead], dtype="Int64"),
            "offset": pd.array([d.offset for d in self._dead], dtype="Int64"),
            "payload": _str_series([bytes(d.payload) for d in self._dead]),
            "reason": _str_series([d.reason for d in self._dead]),
        })
        status, changed = self._fleet.take_epoch()
        self._status_changed = changed
        return EpochOutput(epoch=self._epoch, windows=windows, alarms=alarms, silence=silence,
                           late=late, dead_letters=dead, raw=raw, status=status,
                           watermark=watermark, closed_before=self._closed_before(watermark),
                           source_positions=self._source.positions())

    def _raw_frame(self) -> pd.DataFrame:
        """Every reading of the epoch, for the archive. Device and channel are categoricals
        built from the key dictionary once per epoch: the readings carry codes, not strings
        (the raw table is the largest by far)."""
        parts = self._raw or [(np.zeros(0, np.uint32), np.zeros(0, np.int64), np.zeros(0))]
        keys = np.concatenate([p[0] for p in parts])
        devices, channels = self._decoder.keys.lookup(np.arange(len(self._decoder.keys), dtype=np.uint32))
        device_codes, device_names = pd.factorize(devices)
        channel_codes, channel_names = pd.factorize(channels)
        return pd.DataFrame({
            "device": pd.Categorical.from_codes(device_codes[keys], device_names),
            "channel": pd.Categorical.from_codes(channel_codes[keys], channel_names),
            "timestamp": _utc(np.concatenate([p[1] for p in parts])),
            "value": np.concatenate([p[2] for p in parts]).astype(np.float64),
        })

    def _update_seqs(self, windows: Result, watermark: int | None) -> pd.Series:
        """0 for a window's first emission, then 1, 2, ... for its updates (allowed lateness)."""
        if "is_update" not in windows:
            return pd.Series(np.zeros(len(windows), dtype=np.int32))
        seqs = np.empty(len(windows), dtype=np.int32)
        for i, (key, start, end) in enumerate(zip(windows["key"].tolist(), windows["window_start"].tolist(),
                                                  windows["window_end"].tolist())):
            entry = self._updates.setdefault((key, start), [end, -1])
            entry[1] += 1
            seqs[i] = entry[1]
        if watermark is not None:   # windows past their lateness get no more updates
            lateness = self._pipeline.allowed_lateness
            self._updates = {k: v for k, v in self._updates.items() if v[0] + lateness > watermark}
        return pd.Series(seqs)

    def _close_epoch(self) -> None:
        out = self._epoch_output()
        state = {"keys": self._decoder.keys.to_json(), "fleet": self._fleet.to_json(),
                 "updates": [[k, s, e, q] for (k, s), (e, q) in self._updates.items()],
                 "counts": self._metrics.counts | {"epochs": self._metrics.counts["epochs"] + 1},
                 "status_changed": self._status_changed}
        t0 = time.perf_counter()
        self._store.write(out, self._pipeline, state, before_rename=lambda: self._fault("checkpoint_files"))
        self._metrics.observe_checkpoint(time.perf_counter() - t0)
        self._fault("checkpoint")
        self._deliver(out)
        self._publish_status(self._status_changed)
        self._fault("ack")
        self._source.commit()
        self._store.prune(keep_from=out.epoch)
        self._metrics.add("epochs", 1)
        log.info("event=epoch epoch=%d records=%d windows=%d late=%d dead=%d checkpoint_ms=%.1f",
                 out.epoch, len(out.raw), len(out.windows), len(out.late), len(out.dead_letters),
                 1e3 * (time.perf_counter() - t0))
        self._epoch += 1
        self._reset_epoch()

    def _deliver(self, out: EpochOutput) -> None:
        for sink in self._sinks:
            t0 = time.perf_counter()

            def send(sink: Sink = sink) -> None:
                if sink.committed_epoch() >= out.epoch:
                    return
                sink.write(out)
                self._fault("sink")
                sink.commit(out.epoch)

            self._retry(sink, send)
            self._metrics.observe_sink(type(sink).__name__, time.perf_counter() - t0)

    def _retry(self, target, call, errors=(SinkUnavailableError,)) -> None:
        """Calls ``call`` until ``target`` (a sink or the source) is reachable, backing off from
        0.2 s to 30 s; gives up when a stop is requested (raises _Stopped)."""
        delay = 0.2
        while True:
            try:
                return call()
            except errors as e:
                if self._stop.is_set():
                    raise _Stopped() from e
                log.warning("event=unavailable target=%s retry_in=%.1fs error=%s",
                            type(target).__name__, delay, e)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _publish_status(self, devices: list[str]) -> None:
        topic = self.config.status_topic
        publish = getattr(self._source, "publish", None)
        if not topic or publish is None:
            return
        for device in devices:
            if device in self._fleet.devices:
                publish(topic.format(device=device), self._fleet.status_message(device), retain=True, qos=1)

    def _fault(self, phase: str) -> None:
        if not _FAULT:
            return
        want, _, count = _FAULT.partition(":")
        if want == phase:
            self._faults[phase] = self._faults.get(phase, 0) + 1
            if self._faults[phase] == int(count or 1):
                os.kill(os.getpid(), signal.SIGKILL)

    def _print_progress(self, seconds: float) -> None:
        c = self._metrics.counts
        prev = getattr(self, "_prev_counts", {})
        rate = (c["records_in"] - prev.get("records_in", 0)) / max(seconds, 1e-9)
        self._prev_counts = dict(c)
        wm = _watermark(self._pipeline)
        lag = f"{time.time() - wm / 1e9:8.1f}s" if wm is not None else "       -"
        sys.stderr.write(f"\repoch {self._epoch:6d} | {rate:10.0f} rec/s | in {c['records_in']:11d} | "
                         f"rows {c['rows_out']:9d} | late {c['records_late']:7d} | "
                         f"dead {c['dead_letters']:6d} | watermark lag {lag}")
        sys.stderr.flush()


def serve(config) -> int:
    """Runs the service until SIGTERM or SIGINT, then drains, checkpoints and returns 0."""
    logging.basicConfig(level=os.environ.get("CUSENSE_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    service = Service(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop())
    service.run()
    return 0
