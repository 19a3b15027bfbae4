#!/usr/bin/env python3
"""The ``cusense serve`` benchmark: the service next to what a user would otherwise write.

    .venv/bin/python benchmarks/service_bench.py [--quick] [--scale F] [--out DIR]

It starts its own mosquitto, PostgreSQL server and librdkafka mock Kafka cluster (the test
modules in tests/python) and measures, in one run:

1. Ingest from a backlog queued in the broker: a bare client that only counts (paho-mqtt loop,
   QoS 1, MQTT 5, auto-acknowledge; confluent-kafka ``consume`` loop) against the Service
   (source, decoder, pipeline, checkpoints, PostgreSQL and Parquet sinks) draining the same
   messages. Three payloads: one JSON reading per message, JSON arrays of 100 readings, binary
   batches of 1000 readings. The backlog is published first by a separate process, because a
   Python publisher is slower than either consumer.
2. PostgresSink.write + commit of windows rows against a bare binary COPY of the same rows
   (into an unindexed table, and into one with the windows' primary key).
3. End-to-end latency at a steady 100 000 readings/s (binary batches of 1000, event time = the
   wall clock at publish) from ``cusense serve`` running as a child process: for each window
   row, the time it became visible in PostgreSQL minus the wall time the watermark could first
   pass the window's end (window_end + max_out_of_orderness).

Results go to benchmarks/results/service-<machine>-<date>/ (results.json, README.md, a plot).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))   # mqtt_broker, pg_server, kafka_cluster, ...

SECOND = 1_000_000_000
READINGS_PER_MESSAGE = {"json": 1, "json-array": 100, "binary": 1000}
# Backlog sizes in messages per payload kind (scaled by --scale). Large enough that every
# consumer needs several checkpoint intervals, so the service's per-epoch work is included.
FULL = {
    "mqtt": {"json": 150_000, "json-array": 15_000, "binary": 8_000},
    "kafka": {"json": 400_000, "json-array": 10_000, "binary": 3_000},
    "pg_rows": 300_000,
    "latency_s": 30.0,
}
QUICK = {
    "mqtt": {"json": 10_000, "json-array": 300, "binary": 100},
    "kafka": {"json": 30_000, "json-array": 500, "binary": 200},
    "pg_rows": 30_000,
    "latency_s": 6.0,
}
DEVICES = 100
START_NS = int(pd.Timestamp("2026-12-01", tz="UTC").value)
CHECKPOINT_INTERVAL = "1s"            # ingest runs
LATENCY_CHECKPOINT_INTERVAL = "500ms"
LATENCY_OOO = "200ms"                 # max_out_of_orderness of the latency run
LATENCY_DEVICES = 10                  # each sends 10 batches/s of 1000 readings: 100k readings/s
LATENCY_WARMUP_S = 3.0
KAFKA_PARTITIONS = 32


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- messages -----------------------------------------------------------------------------------

def backlog(kind: str, n_messages: int, prefix: str) -> list[tuple[str, bytes]]:
    """``n_messages`` (topic, payload) pairs on ``prefix/device-NNN/value``, round robin over the
    devices; each device's readings are 1 ms apart in event time, in order."""
    from cusense.sources import encode_binary_batch

    per = READINGS_PER_MESSAGE[kind]
    rng = np.random.default_rng(7)
    out = []
    for i in range(n_messages):
        device = i % DEVICES
        first = (i // DEVICES) * per
        ts = START_NS + (first + np.arange(per, dtype=np.int64)) * 1_000_000
        values = 20.0 + rng.normal(0, 1, per)
        topic = f"{prefix}/device-{device:03d}/value"
        if kind == "binary":
            payload = encode_binary_batch(ts, values)
        elif kind == "json":
            payload = f'{{"ts":{ts[0]},"value":{values[0]:.4f}}}'.encode()
        else:
            payload = ("[" + ",".join(f'{{"ts":{t},"value":{v:.4f}}}' for t, v in zip(ts.tolist(), values.tolist()))
                       + "]").encode()
        out.append((topic, payload))
    return out


def run_publisher(spec: dict) -> None:
    """Child process: publish a backlog (``mode=backlog``) or a steady stream (``mode=steady``)."""
    if spec["mode"] == "backlog":
        publish_backlog(backlog(spec["kind"], spec["messages"], spec["prefix"]), spec["port"])
    else:
        steady_publisher(spec)


def publish_backlog(messages, port: int) -> None:
    """QoS 1, waiting until the broker has acknowledged every message."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher-" + uuid.uuid4().hex[:6],
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = []
    for i, (topic, payload) in enumerate(messages):
        infos.append(client.publish(topic, payload, qos=1))
        if i >= 20_000:   # paho cannot hold more than 65535 unacknowledged packet ids
            infos[i - 20_000].wait_for_publish(60)
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def steady_publisher(spec: dict) -> None:
    """LATENCY_DEVICES devices, each publishing every 100 ms one binary batch of the readings it
    sampled since its last batch (1000 readings, the last one stamped with the wall clock at
    publish). Devices take turns every 10 ms. Writes (device, publish ns) per message to
    ``spec['log']``."""
    import paho.mqtt.client as mqtt
    from cusense.sources import encode_binary_batch

    per, devices = 1000, LATENCY_DEVICES
    tick_s = 0.1 / devices
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-steady-" + uuid.uuid4().hex[:6],
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", spec["port"])
    client.loop_start()
    rng = np.random.default_rng(3)
    last_ts = {d: time.time_ns() - SECOND // 10 for d in range(devices)}
    published = []
    start = time.perf_counter()
    ticks = int(spec["seconds"] / tick_s)
    for tick in range(ticks):
        ahead = tick * tick_s - (time.perf_counter() - start)
        if ahead > 0:
            time.sleep(ahead)
        device = tick % devices
        now = time.time_ns()
        ts = last_ts[device] + ((np.arange(1, per + 1) * (now - last_ts[device])) // per)
        last_ts[device] = now
        payload = encode_binary_batch(ts.astype(np.int64), 20.0 + rng.normal(0, 1, per))
        client.publish(f"{spec['prefix']}/sensor-{device:02d}/vib", payload, qos=1)
        published.append((device, now))
    elapsed = time.perf_counter() - start
    time.sleep(0.5)
    client.loop_stop()
    client.disconnect()
    Path(spec["log"]).write_text(json.dumps({"published": published, "elapsed_s": elapsed}))


def publish_in_child(spec: dict, wait: bool = True):
    proc = subprocess.Popen([sys.executable, __file__, "--publisher", json.dumps(spec)], cwd=ROOT)
    if wait:
        if proc.wait(timeout=600):
            raise RuntimeError(f"publisher failed: {spec}")
    return proc


# --- the service in this process, timed -----------------------------------------------------------

class TimedSource:
    """Wraps the service's source to note when the service began connecting to the broker: a
    persistent session's backlog starts flowing at once, into the source's buffer, so that is
    where draining starts (the bare clients are timed from their connect call too)."""

    def __init__(self, source):
        self._source = source
        self.opened_at = None

    def open(self, positions):
        self.opened_at = time.perf_counter()
        return self._source.open(positions)

    def __getattr__(self, name):
        return getattr(self._source, name)


def service_config(tmp: Path, source: dict, dsn: str, schema: str, interval: str, ooo: str,
                   size: str = "1s") -> dict:
    return {
        "source": source,
        "pipeline": {"window": "tumbling", "size": size, "aggs": ["count", "mean", "min", "max"],
                     "max_out_of_orderness": ooo},
        "checkpoint": {"directory": str(tmp / "checkpoints"), "interval": interval},
        "sinks": [{"type": "postgres", "dsn": dsn, "schema": schema},
                  {"type": "parquet", "root": str(tmp / "archive")}],
        "service": {"progress": False},
    }


def drain_with_service(cfg: dict, expected_records: int, timeout_s: float = 300) -> dict:
    """Runs the Service in a thread until it has pushed ``expected_records`` readings, then stops
    it (which checkpoints and commits the last epoch). Times are from the source's open()."""
    from cusense.service import Service
    from cusense.service.service import build_source
    from cusense.service.config import load_config

    source = TimedSource(build_source(load_config(cfg).source))
    service = Service(cfg, source=source)
    errors = []

    def run():
        try:
            service.run()
        except BaseException as e:   # reported below
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    # The counters, not service.stats: that asks the pipeline, which only the service thread
    # may touch while it runs.
    while service._metrics is None or service._metrics.counts["records_in"] < expected_records:
        if errors:
            raise errors[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"service pushed {service._metrics.counts['records_in']} of {expected_records}")
        time.sleep(0.005)
    ingested = time.perf_counter()
    service.stop()
    thread.join(120)
    committed = time.perf_counter()
    if errors:
        raise errors[0]
    stats = service.stats
    return {"seconds": ingested - source.opened_at,
            "seconds_to_last_commit": committed - source.opened_at,
            "records": stats["records_in"], "messages": stats["messages"],
            "dead_letters": stats["dead_letters"], "epochs": stats["epochs"],
            "rows_out": stats["rows_out"]}


# --- 1a. MQTT ingest --------------------------------------------------------------------------------

def mqtt_properties():
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0xFFFFFFFF
    properties.ReceiveMaximum = 65535     # what MqttSource announces too
    return properties


def bare_mqtt_session(port: int, client_id: str, topic: str) -> None:
    """Creates the bare client's persistent session and subscription, then leaves."""
    import paho.mqtt.client as mqtt

    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port, clean_start=False, properties=mqtt_properties())
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError("bare MQTT client could not subscribe")
    client.disconnect()
    client.loop_stop()


def bare_mqtt_drain(port: int, client_id: str, expected: int) -> float:
    """The plain paho loop: connect to the session, count messages; seconds from connecting to
    the last message."""
    import paho.mqtt.client as mqtt

    count = 0
    done = threading.Event()
    last = [None]

    def on_message(client, userdata, message):
        nonlocal count
        count += 1
        if count == expected:
            last[0] = time.perf_counter()
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    started = time.perf_counter()
    client.connect("127.0.0.1", port, clean_start=False, properties=mqtt_properties())
    client.loop_start()
    if not done.wait(300):
        raise TimeoutError(f"bare MQTT client got {count} of {expected}")
    client.disconnect()
    client.loop_stop()
    return last[0] - started


def bench_mqtt(kind: str, n_messages: int, port: int, dsn: str, tmp: Path) -> dict:
    from cusense.sources import MqttSource

    prefix = f"mq{kind.replace('-', '')}"
    bare_id, service_id = f"bench-bare-{prefix}", f"bench-service-{prefix}"
    topic_filter = f"{prefix}/+/+"
    # Both sessions exist before the backlog is published: the broker queues it for each.
    bare_mqtt_session(port, bare_id, topic_filter)
    probe = MqttSource("127.0.0.1", port, [topic_filter], service_id)
    probe.open(None)
    probe.close()
    log(f"mqtt {kind}: publishing a backlog of {n_messages} messages")
    t0 = time.perf_counter()
    publish_in_child({"mode": "backlog", "kind": kind, "messages": n_messages, "prefix": prefix, "port": port})
    publish_s = time.perf_counter() - t0
    records = n_messages * READINGS_PER_MESSAGE[kind]
    bare_s = bare_mqtt_drain(port, bare_id, n_messages)
    log(f"mqtt {kind}: bare paho {n_messages / bare_s:,.0f} msg/s")
    cfg = service_config(tmp / prefix, {"type": "mqtt", "host": "127.0.0.1", "port": port,
                                        "client_id": service_id, "topic_template": f"{prefix}/{{key}}/{{channel}}"},
                         dsn, prefix, CHECKPOINT_INTERVAL, "1s")
    service = drain_with_service(cfg, records)
    log(f"mqtt {kind}: service {service['messages'] / service['seconds']:,.0f} msg/s")
    return summarize(kind, n_messages, records, bare_s, service, publish_s=publish_s)


def summarize(kind, n_messages, records, bare_s, service, **extra) -> dict:
    if service["messages"] != n_messages or service["dead_letters"]:
        raise RuntimeError(f"{kind}: service got {service['messages']} messages "
                           f"({service['dead_letters']} dead letters), expected {n_messages}")
    bare_rate = n_messages / bare_s
    service_rate = n_messages / service["seconds"]
    return {"payload": kind, "messages": n_messages, "records": records,
            "readings_per_message": READINGS_PER_MESSAGE[kind],
            "bare": {"seconds": bare_s, "messages_per_s": bare_rate,
                     "records_per_s": bare_rate * READINGS_PER_MESSAGE[kind]},
            "service": {**service, "messages_per_s": service_rate,
                        "records_per_s": records / service["seconds"],
                        "records_per_s_to_last_commit": records / service["seconds_to_last_commit"]},
            "ratio": service_rate / bare_rate, **extra}


# --- 1b. Kafka ingest -------------------------------------------------------------------------------

def bare_kafka_drain(bootstrap: str, topic: str, partitions: int, expected: int) -> float:
    """A confluent-kafka loop that only counts, with the fetch settings KafkaSource uses;
    seconds from creating the consumer to the last message."""
    from confluent_kafka import Consumer, TopicPartition

    started = time.perf_counter()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-bare-" + uuid.uuid4().hex[:6],
                         "enable.auto.commit": False, "enable.auto.offset.store": False,
                         "queued.min.messages": 100_000, "fetch.queue.backoff.ms": 50})
    # Offset 0, where every partition's log starts (checked after producing): with
    # OFFSET_BEGINNING librdkafka first looks the offsets up, ~0.5 s more here, which
    # KafkaSource avoids by assigning resolved offsets.
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    count = 0
    deadline = time.monotonic() + 60
    while count < expected:
        # Ask for no more than what is left: consume() waits for the full count or the timeout.
        batch = consumer.consume(min(10_000, expected - count), 1.0)
        count += sum(1 for m in batch if m.error() is None)
        if time.monotonic() > deadline:
            raise TimeoutError(f"bare Kafka consumer got {count} of {expected}")
    seconds = time.perf_counter() - started
    consumer.close()
    return seconds


def check_nothing_deleted(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-check"})
    low = [consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[0] for p in range(partitions)]
    consumer.close()
    if any(low):
        raise RuntimeError(f"the mock cluster deleted the start of {topic} (low offsets {low}): "
                           "use fewer or smaller messages, or more partitions")


def bench_kafka(kind: str, n_messages: int, cluster, dsn: str, tmp: Path) -> dict:
    from cusense.simulator import produce_kafka

    # The mock cluster keeps only about 5 MB per partition (older segments are deleted):
    # enough partitions that each holds well under that.
    topic, partitions = f"kf{kind.replace('-', '')}", KAFKA_PARTITIONS
    cluster.create_topic(topic, partitions)
    log(f"kafka {kind}: producing {n_messages} messages")
    t0 = time.perf_counter()
    produce_kafka(backlog(kind, n_messages, "fleet"), cluster.bootstrap_servers, topic)
    publish_s = time.perf_counter() - t0
    check_nothing_deleted(cluster.bootstrap_servers, topic, partitions)
    records = n_messages * READINGS_PER_MESSAGE[kind]
    bare_s = bare_kafka_drain(cluster.bootstrap_servers, topic, partitions, n_messages)
    log(f"kafka {kind}: bare consumer {n_messages / bare_s:,.0f} msg/s")
    cfg = service_config(tmp / topic, {"type": "kafka", "bootstrap_servers": cluster.bootstrap_servers,
                                       "topics": [topic], "group_id": "bench-" + topic,
                                       "topic_template": "fleet/{key}/{channel}"},
                         dsn, topic, CHECKPOINT_INTERVAL, "1s")
    service = drain_with_service(cfg, records)
    log(f"kafka {kind}: service {service['messages'] / service['seconds']:,.0f} msg/s")
    return summarize(kind, n_messages, records, bare_s, service, publish_s=publish_s)


# --- 2. PostgreSQL sink vs bare COPY ------------------------------------------------------------------

def windows_rows(n: int, epoch: int) -> pd.DataFrame:
    """Rows shaped like the service's windows (1 s tumbling, count/mean/min/max) for 1000
    devices, ``n // 1000`` consecutive windows each, starting at ``epoch`` hours."""
    rng = np.random.default_rng(epoch)
    k = np.arange(n)
    start = START_NS + epoch * 3600 * SECOND + (k // 1000) * SECOND
    devices = np.array([f"device-{i:04d}" for i in range(1000)], dtype=object)
    return pd.DataFrame({
        "device": devices[k % 1000], "channel": "value",
        "window_start": pd.to_datetime(start, utc=True), "window_end": pd.to_datetime(start + SECOND, utc=True),
        "update_seq": np.zeros(n, np.int32), "count": rng.integers(1, 1000, n),
        "mean": rng.normal(size=n), "min": rng.normal(size=n), "max": rng.normal(size=n)})


def epoch_of(epoch: int, windows: pd.DataFrame):
    from cusense.sinks.base import EpochOutput

    empty = pd.DataFrame()
    status = pd.DataFrame({"device": pd.Series([], dtype=object), "status": pd.Series([], dtype=object),
                           "since": pd.to_datetime([], utc=True), "last_seen": pd.to_datetime([], utc=True)})
    return EpochOutput(epoch=epoch, windows=windows, alarms=empty, silence=empty, late=empty,
                       dead_letters=empty, raw=empty, status=status, watermark=None,
                       closed_before=None, source_positions={})


def bare_copy(dsn: str, table: str, frame: pd.DataFrame) -> float:
    """What a user would write: psycopg binary COPY, one write_row per row; seconds, commit included."""
    import psycopg

    names = list(frame.columns)
    types = ["text", "text", "timestamptz", "timestamptz", "int4", "int8", "float8", "float8", "float8"]
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        columns = [frame[c].dt.to_pydatetime().tolist() if c.startswith("window_") else frame[c].tolist()
                   for c in names]
        with conn.cursor().copy(f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for row in zip(*columns):
                copy.write_row(row)
        conn.commit()
        return time.perf_counter() - started


def bench_postgres(dsn: str, rows: int) -> dict:
    import psycopg
    from cusense.sinks import PostgresSink

    schema = "bench_sink"
    sink = PostgresSink(dsn, schema=schema)
    sink.open()
    sink.write(epoch_of(0, windows_rows(1000, 0)))   # creates the windows table and its partition
    sink.commit(0)
    frame = windows_rows(rows, 1)
    started = time.perf_counter()
    sink.write(epoch_of(1, frame))
    sink.commit(1)
    sink_s = time.perf_counter() - started
    sink.close()
    log(f"postgres: sink {rows / sink_s:,.0f} rows/s")
    columns = ("device text, channel text, window_start timestamptz, window_end timestamptz, "
               "update_seq integer, count bigint, mean double precision, min double precision, "
               "max double precision")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {schema}.bare_plain ({columns})")
        conn.execute(f"CREATE TABLE {schema}.bare_keyed ({columns}, "
                     "PRIMARY KEY (device, channel, window_start, update_seq))")
    plain_s = bare_copy(dsn, f"{schema}.bare_plain", frame)
    keyed_s = bare_copy(dsn, f"{schema}.bare_keyed", frame)
    log(f"postgres: bare COPY {rows / plain_s:,.0f} rows/s unindexed, {rows / keyed_s:,.0f} with the key")
    return {"rows": rows, "columns": len(frame.columns),
            "sink": {"seconds": sink_s, "rows_per_s": rows / sink_s},
            "bare_copy_unindexed": {"seconds": plain_s, "rows_per_s": rows / plain_s},
            "bare_copy_keyed": {"seconds": keyed_s, "rows_per_s": rows / keyed_s},
            "ratio_vs_unindexed": plain_s / sink_s, "ratio_vs_keyed": keyed_s / sink_s}


# --- 3. end-to-end latency ----------------------------------------------------------------------------

def bench_latency(port: int, dsn: str, tmp: Path, seconds: float) -> dict:
    import psycopg
    from cusense.sources import MqttSource
    from service_harness import ServiceProcess

    prefix, schema, client_id = "steady", "bench_latency", "bench-latency-service"
    ooo_ns = pd.Timedelta(LATENCY_OOO).value
    cfg = service_config(tmp / "latency", {"type": "mqtt", "host": "127.0.0.1", "port": port,
                                           "client_id": client_id, "topic_template": f"{prefix}/{{key}}/{{channel}}"},
                         dsn, schema, LATENCY_CHECKPOINT_INTERVAL, LATENCY_OOO)
    probe = MqttSource("127.0.0.1", port, [f"{prefix}/+/+"], client_id)   # session before data
    probe.open(None)
    probe.close()
    (tmp / "latency").mkdir(parents=True, exist_ok=True)
    service = ServiceProcess(cfg, tmp / "latency").start()
    seen: dict[tuple[str, int], float] = {}     # (device, window_start ns) -> wall time first seen
    stop = threading.Event()

    def poll_visible():
        # A fresh snapshot every 10 ms; a row's visibility time is known to within that.
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                try:
                    rows = conn.execute(f"SELECT device, window_start FROM {schema}.windows "
                                        "WHERE window_start > now() - interval '20 s'").fetchall()
                except psycopg.errors.UndefinedTable:
                    rows = []
                now = time.time()
                for device, start in rows:
                    seen.setdefault((device, pd.Timestamp(start).value), now)
                time.sleep(0.01)

    poller = threading.Thread(target=poll_visible, daemon=True)
    poller.start()
    time.sleep(2.0)   # the service is up and subscribed
    publish_log = tmp / "latency" / "published.json"
    log(f"latency: publishing 100k readings/s for {seconds:.0f} s")
    publisher = publish_in_child({"mode": "steady", "port": port, "prefix": prefix, "seconds": seconds,
                                  "log": str(publish_log)}, wait=False)
    if publisher.wait(timeout=seconds + 120):
        raise RuntimeError("steady publisher failed")
    time.sleep(3.0)   # the last windows close and reach PostgreSQL
    stop.set()
    poller.join(10)
    service.terminate()
    published = json.loads(publish_log.read_text())
    sent = np.array(published["published"], dtype=np.int64)
    first_ns, last_ns = int(sent[:, 1].min()), int(sent[:, 1].max())

    # Per window row: visible - (window_end + max_out_of_orderness), for windows after the
    # warm-up whose end the stream passed by at least the out-of-orderness.
    rows = [(d, s, t) for (d, s), t in seen.items()
            if s >= first_ns + LATENCY_WARMUP_S * SECOND and s + SECOND + ooo_ns <= last_ns]
    window_lat = np.array([t - (s + SECOND + ooo_ns) / 1e9 for _, s, t in rows])
    # Per message: publish -> first visibility of the window row holding its newest reading.
    per_message = []
    for device, published_ns in sent.tolist():
        start = published_ns // SECOND * SECOND
        t = seen.get((f"sensor-{device:02d}", start))
        if published_ns >= first_ns + LATENCY_WARMUP_S * SECOND and start + SECOND + ooo_ns <= last_ns and t:
            per_message.append(t - published_ns / 1e9)
    per_message = np.array(per_message)
    missing = sum(1 for d in range(LATENCY_DEVICES)
                  for s in range((first_ns // SECOND + 4) * SECOND, last_ns - SECOND - ooo_ns, SECOND)
                  if (f"sensor-{d:02d}", s) not in seen)

    def pct(a):
        return {"p50_ms": 1e3 * float(np.percentile(a, 50)), "p99_ms": 1e3 * float(np.percentile(a, 99)),
                "max_ms": 1e3 * float(a.max()), "min_ms": 1e3 * float(a.min()), "n": int(len(a))}

    result = {"seconds": seconds, "readings_per_s": len(sent) * 1000 / published["elapsed_s"],
              "messages": int(len(sent)), "readings_per_message": 1000, "devices": LATENCY_DEVICES,
              "checkpoint_interval": LATENCY_CHECKPOINT_INTERVAL, "window": "tumbling 1s",
              "max_out_of_orderness": LATENCY_OOO, "poll_interval_ms": 10, "warmup_s": LATENCY_WARMUP_S,
              "window_rows_missing": missing,
              "window_latency": pct(window_lat), "message_latency": pct(per_message),
              "window_latency_samples_ms": [round(1e3 * x, 2) for x in window_lat.tolist()],
              "message_latency_samples_ms": [round(1e3 * x, 2) for x in per_message.tolist()]}
    log(f"latency: window p50 {result['window_latency']['p50_ms']:.0f} ms, "
        f"p99 {result['window_latency']['p99_ms']:.0f} ms")
    return result


# --- report -----------------------------------------------------------------------------------------

def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    return {"cpu": model.group(1).strip() if model else platform.processor(),
            "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def versions(pg_bindir: str) -> dict:
    import confluent_kafka
    import paho.mqtt
    import psycopg

    from mqtt_broker import mosquitto_binary

    def version_of(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return re.search(r"\d+\.\d+(\.\d+)?", out.stdout or out.stderr).group(0)
        except (OSError, AttributeError, subprocess.TimeoutExpired):
            return None

    return {"paho-mqtt": paho.mqtt.__version__, "confluent-kafka": confluent_kafka.__version__,
            "librdkafka": confluent_kafka.libversion()[0], "psycopg": psycopg.__version__,
            "postgresql": version_of([os.path.join(pg_bindir, "postgres"), "--version"]),
            "mosquitto": version_of([mosquitto_binary(), "-h"])}


def write_report(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out_dir / "latency.png")
    (out_dir / "README.md").write_text(readme(results))


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = results["latency"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, label in (("window_latency_samples_ms", "window row: visible - (window_end + out-of-orderness)"),
                       ("message_latency_samples_ms", "message: visible - publish")):
        samples = np.sort(lat[key])
        left.plot(samples, np.arange(1, len(samples) + 1) / max(len(samples), 1), label=label)
    left.set_xlabel("latency (ms)")
    left.set_ylabel("fraction")
    left.set_title(f"End to end at {lat['readings_per_s'] / 1e3:.0f}k readings/s, "
                   f"checkpoint {lat['checkpoint_interval']}")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    labels, ratios = [], []
    for broker in ("mqtt", "kafka"):
        for row in results[broker]:
            labels.append(f"{broker}\n{row['payload']}")
            ratios.append(row["ratio"])
    labels.append("postgres\nvs keyed COPY")
    ratios.append(results["postgres"]["ratio_vs_keyed"])
    right.bar(labels, ratios)
    right.axhline(0.8, color="red", linestyle="--", label="goal 0.8")
    right.set_ylabel("cusense rate / bare rate")
    right.set_title("Throughput relative to a bare client")
    right.legend()
    right.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme(results: dict) -> str:
    m, s = results["machine"], results["sizes"]
    lat, pg = results["latency"], results["postgres"]
    lines = [
        f"# cusense serve benchmark — {m['cpu']}, {m['cores']} cores, {results['date']}",
        "",
        f"`benchmarks/service_bench.py{' --quick' if results['quick'] else ''}` at commit "
        f"`{results['commit']}`; {', '.join(f'{k} {v}' for k, v in results['versions'].items())}. "
        "Everything (mosquitto, PostgreSQL, the mock Kafka cluster, publishers, consumers, the "
        "service) runs on this one machine, so the figures include their competition for the cores.",
        "",
        "## Ingest: the service against a bare client on the same backlog",
        "",
        f"The backlog is queued in the broker first ({DEVICES} devices, topics "
        "`prefix/device-NNN/value`), then drained by each consumer in turn. Rates are from the "
        "consumer's connect call (paho `connect`, creating the confluent-kafka consumer, the "
        "service source's `open`) to the last message counted (bare client) or pushed into the "
        "pipeline (service). The service is `cusense.service.Service` with its MQTT/Kafka "
        f"source, decoder, a 1 s tumbling window (count, mean, min, max), checkpoints every "
        f"{CHECKPOINT_INTERVAL}, PostgreSQL and Parquet sinks; *to last commit* also includes the final "
        "epoch's checkpoint and sink writes. Bare MQTT: paho-mqtt loop, MQTT 5, QoS 1, "
        "Receive Maximum 65535, auto-acknowledge, callback counts. Bare Kafka: "
        "`Consumer.consume(10_000, 1.0)` loop that counts (asking for no more than what is left), same fetch settings as KafkaSource, "
        f"{KAFKA_PARTITIONS} partitions of librdkafka's mock cluster (in the benchmark's process).",
        "",
        "| broker | payload | messages | records | bare msg/s | bare records/s | service msg/s | "
        "service records/s | to last commit records/s | ratio | goal ≥ 0.8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for broker in ("mqtt", "kafka"):
        for row in results[broker]:
            b, sv = row["bare"], row["service"]
            lines.append(f"| {broker} | {row['payload']} | {row['messages']:,} | {row['records']:,} | "
                         f"{b['messages_per_s']:,.0f} | {b['records_per_s']:,.0f} | "
                         f"{sv['messages_per_s']:,.0f} | {sv['records_per_s']:,.0f} | "
                         f"{sv['records_per_s_to_last_commit']:,.0f} | {row['ratio']:.2f} | "
                         f"{'met' if row['ratio'] >= 0.8 else 'missed'} |")
    lines += [
        "",
        "## PostgreSQL: PostgresSink against a bare COPY of the same rows",
        "",
        f"{pg['rows']:,} windows rows ({pg['columns']} columns: device, channel, window_start, "
        "window_end, update_seq, count, mean, min, max) in one epoch. Sink: `write` + `commit` "
        "(staging COPY, INSERT into the day-partitioned, keyed `windows`, epoch row). Bare: psycopg "
        "binary `COPY ... FROM STDIN` with one `write_row` per row, conversion and commit included.",
        "",
        "| writer | rows/s | sink / this |",
        "|---|---|---|",
        f"| PostgresSink | {pg['sink']['rows_per_s']:,.0f} | |",
        f"| bare COPY into an unindexed table | {pg['bare_copy_unindexed']['rows_per_s']:,.0f} | "
        f"{pg['ratio_vs_unindexed']:.2f} |",
        f"| bare COPY into a table with the windows' primary key | {pg['bare_copy_keyed']['rows_per_s']:,.0f} | "
        f"{pg['ratio_vs_keyed']:.2f} |",
        "",
        f"## End-to-end latency at {lat['readings_per_s']:,.0f} readings/s",
        "",
        f"`cusense serve` as a child process (MQTT source, 1 s tumbling windows, "
        f"max_out_of_orderness {lat['max_out_of_orderness']}, checkpoint interval "
        f"**{lat['checkpoint_interval']}**, PostgreSQL then Parquet sink). A publisher process "
        f"sends {lat['devices']} devices × 10 binary batches/s × 1000 readings (a batch holds the "
        "readings a device sampled since its previous one; its newest reading is stamped with the "
        f"wall clock at publish) for {lat['seconds']:.0f} s. A poller reads the windows table every "
        f"{lat['poll_interval_ms']} ms; the first {lat['warmup_s']:.0f} s are left out.",
        "",
        "Definitions:",
        "",
        "- **window latency**: for each window row, the wall time it was first seen in PostgreSQL "
        "minus `window_end + max_out_of_orderness`, the wall time at which the watermark could first "
        "pass the window's end (event time is the wall clock), i.e. the earliest the row could be "
        "emitted. It holds the service's batching, the wait for the next checkpoint, the checkpoint "
        "and the PostgreSQL commit, plus up to one poll interval.",
        "- **message latency**: for each published message, the wall time the window row holding "
        "its newest reading was first seen minus the publish time. This adds the window's span "
        "and the out-of-orderness to the above: what a dashboard reading `windows` waits.",
        "",
        "| measure | samples | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("window_latency", "window latency"), ("message_latency", "message latency")):
        v = lat[key]
        lines.append(f"| {label} | {v['n']} | {v['p50_ms']:.0f} | {v['p99_ms']:.0f} | {v['max_ms']:.0f} |")
    lines += [
        "",
        f"Window rows expected but never seen: {lat['window_rows_missing']}.",
        "",
        "![latency and ratios](latency.png)",
        "",
        "## Sizes",
        "",
        "```",
        json.dumps(s, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    ap.add_argument("--out", type=Path, help="results directory (default benchmarks/results/service-<machine>-<date>)")
    ap.add_argument("--publisher", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.publisher:
        run_publisher(json.loads(args.publisher))
        return 0

    from kafka_cluster import MockKafkaCluster
    from mqtt_broker import start_mosquitto, stop_mosquitto
    from pg_server import _find_bindir, start_postgres, stop_postgres

    base = QUICK if args.quick else FULL
    sizes = {
        "mqtt": {k: max(1, int(v * args.scale)) for k, v in base["mqtt"].items()},
        "kafka": {k: max(1, int(v * args.scale)) for k, v in base["kafka"].items()},
        "pg_rows": max(1000, int(base["pg_rows"] * args.scale)),
        "latency_s": max(LATENCY_WARMUP_S + 3, base["latency_s"] * args.scale),
    }
    machine = machine_info()
    date = dt.date.today().isoformat()
    slug = re.sub(r"[^a-z0-9]+", "-", machine["cpu"].lower()).strip("-")
    slug = "-".join(slug.split("-")[:2]) + f"-{machine['cores']}c"
    out_dir = args.out or ROOT / "benchmarks" / "results" / f"service-{slug}-{date}"
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="cusense-service-bench-"))
    broker = server = cluster = None
    try:
        log("starting mosquitto, PostgreSQL and the mock Kafka cluster")
        broker = start_mosquitto(tmp / "mosquitto")
        dsn, server = start_postgres(str(tmp))
        cluster = MockKafkaCluster(brokers=1)
        results = {"machine": machine, "date": date, "quick": args.quick, "sizes": sizes,
                   "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                            capture_output=True, text=True).stdout.strip(),
                   "versions": versions(_find_bindir()), "mqtt": [], "kafka": []}
        for kind, n in sizes["mqtt"].items():
            results["mqtt"].append(bench_mqtt(kind, n, broker.port, dsn, tmp))
        for kind, n in sizes["kafka"].items():
            results["kafka"].append(bench_kafka(kind, n, cluster, dsn, tmp))
        results["postgres"] = bench_postgres(dsn, sizes["pg_rows"])
        results["latency"] = bench_latency(broker.port, dsn, tmp, sizes["latency_s"])
        results["wall_s"] = time.perf_counter() - started
        write_report(results, out_dir)
        log(f"done in {results['wall_s']:.0f} s; results in {out_dir}")
    finally:
        if cluster is not None:
            cluster.close()
        if server is not None:
            stop_postgres(server)
        if broker is not None:
            stop_mosquitto(broker)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
