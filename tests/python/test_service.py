"""cusense serve end to end, against a real mosquitto broker, a real PostgreSQL server and
librdkafka's mock Kafka cluster: stored tables against an independent pandas computation,
bad input, kill -9 at random moments and at each step of an epoch, broker and database
restarts."""
from __future__ import annotations

import json
import subprocess
import threading
import time

import numpy as np
import pandas as pd
import pytest

from cusense.service import ConfigError, Service, load_config
from cusense.simulator import FleetSimulator, produce_kafka, publish_mqtt
from fleet_oracle import compare_windows, tumbling_windows
from kafka_cluster import kafka_cluster  # noqa: F401  (fixture)
from mqtt_broker import mqtt_broker, restart_mosquitto, start_mosquitto, stop_mosquitto  # noqa: F401
from pg_server import postgres_dsn, restart_postgres, start_postgres, stop_postgres  # noqa: F401
from service_harness import ServiceProcess, query, service_config, wait_equal, wait_for

SIZE_NS = 10_000_000_000
OOO_NS = 5_000_000_000


def _schema(request) -> str:
    return "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]


def _expected(sim: FleetSimulator, ooo_ns: int = OOO_NS):
    readings = sim.readings()
    windows, late = tumbling_windows(readings, SIZE_NS, ooo_ns)
    return readings, windows, late


def _stored_windows(dsn, schema):
    return query(dsn, f"select device, channel, window_start, count, mean, min, max from {schema}.windows")


def _count(dsn, schema, table):
    try:
        return int(query(dsn, f"select count(*) as n from {schema}.{table}")["n"][0])
    except Exception:   # table not created yet
        return -1


# --- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("source"), "[source] section is missing"),
    (lambda c: c["source"].update(type="amqp"), "source.type"),
    (lambda c: c["source"].pop("topic_template"), "source.topic_template"),
    (lambda c: c["pipeline"].update(window="hopping"), "pipeline.window"),
    (lambda c: c["checkpoint"].update(interval="soon"), "checkpoint.interval"),
    (lambda c: c["batch"].update(max_messages=0), "batch.max_messages"),
    (lambda c: c.update(extra={}), "unknown section"),
    (lambda c: c["sinks"].append({"type": "mongodb"}), "sinks[2].type"),
])
def test_config_errors_name_the_option(tmp_path, change, message):
    cfg = service_config(tmp_path, dsn="host=127.0.0.1", schema="s", mqtt_port=1883)
    change(cfg)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(cfg)


def test_config_file_paths_are_relative_to_the_file(tmp_path):
    from service_harness import to_toml
    cfg = service_config(tmp_path, dsn="host=127.0.0.1", schema="s", mqtt_port=1883)
    cfg["checkpoint"]["directory"] = "state"
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "serve.toml"
    path.write_text(to_toml(cfg))
    loaded = load_config(path)
    assert loaded.checkpoint_dir == str(tmp_path / "conf" / "state")
    assert loaded.checkpoint_interval_ns == 300_000_000


# --- end to end -------------------------------------------------------------------------------------

def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict:
    """The Prometheus text endpoint as {sample name: value} (unlabelled samples)."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def _raise_first(errors):
    def check():
        if errors:
            raise errors[0]
    return check


def _run_in_thread(service: Service):
    errors = []

    def run():
        try:
            service.run()
        except BaseException as e:   # surfaced by the test
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_mqtt_fleet_to_postgres_and_archive_equals_pandas(tmp_path, mqtt_broker, postgres_dsn, request, rng):
    schema = _schema(request)
    sim = FleetSimulator(devices=24, duration="4min", format="mixed", per_message=3,
                         seed=int(rng.integers(1 << 30)), silent_fraction=0.25, spike_fraction=0.01)
    readings, expected, late = _expected(sim)
    cfg = service_config(tmp_path, dsn=postgres_dsn, schema=schema, mqtt_port=mqtt_broker.port,
                         client_id=schema)
    metrics_port = _free_port()
    cfg["metrics"] = {"port": metrics_port}
    service = Service(cfg)
    thread, errors = _run_in_thread(service)
    # Subscribe to the fleet status the service publishes back (retained messages).
    import paho.mqtt.client as mqtt
    statuses = {}
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=schema + "-status")
    sub.on_message = lambda c, u, m: statuses.__setitem__(m.topic.rsplit("/", 1)[1], json.loads(m.payload))
    sub.connect("127.0.0.1", mqtt_broker.port)
    sub.subscribe("plant/status/+", qos=1)
    sub.loop_start()
    try:
        wait_for(service.ready.is_set, 30, "service start", check=_raise_first(errors))
        publish_mqtt(sim.messages(), "127.0.0.1", mqtt_broker.port, client_id=schema + "-pub")
        wait_for(lambda: _count(postgres_dsn, schema, "windows") == len(expected), 60,
                 f"{len(expected)} windows in PostgreSQL",
                 check=_raise_first(errors))
        time.sleep(0.5)
        metrics = _scrape(metrics_port)
    finally:
        service.stop()
        thread.join(60)
        sub.loop_stop()
    assert not errors, errors
    compare_windows(_stored_windows(postgres_dsn, schema), expected)
    assert metrics["cusense_records_in_total"] == len(readings)
    assert metrics["cusense_messages_total"] == len(sim.messages())
    assert metrics["cusense_records_late_total"] == len(late)
    assert metrics["cusense_rows_out_total"] == len(expected)
    assert metrics["cusense_dead_letters_total"] == 0
    assert metrics["cusense_checkpoint_duration_seconds_count"] >= 1
    assert 0 <= metrics["cusense_checkpoint_age_seconds"] < 30
    with pytest.raises(OSError):    # the endpoint is gone with the service
        _scrape(metrics_port)

    # Late readings are stored, not lost; nothing was dead-lettered.
    stored_late = query(postgres_dsn, f"select device, channel, timestamp, value from {schema}.late_records")
    assert len(stored_late) == len(late)
    assert _count(postgres_dsn, schema, "dead_letters") == 0

    # Every reading is in the Parquet archive (raw, partitioned by date and hour).
    import pyarrow.dataset as ds
    raw = ds.dataset(tmp_path / "archive" / "raw", partitioning="hive").to_table().to_pandas()
    raw = raw.astype({"device": object, "channel": object})   # archived as dictionaries (categoricals)
    assert len(raw) == len(readings)
    key = ["device", "channel", "timestamp"]
    raw_ts = pd.to_datetime(raw["timestamp"], utc=True).dt.tz_localize(None).astype("datetime64[ns]").astype(np.int64)
    got = raw.assign(timestamp=raw_ts).sort_values(key)[key + ["value"]].reset_index(drop=True)
    want = readings.sort_values(key)[key + ["value"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(got.astype({"device": object, "channel": object}), want, check_dtype=False)

    # Fleet status: every device listed; the devices that fell silent for 90 s were seen silent
    # (silence table), and the retained MQTT status matches PostgreSQL.
    fleet = query(postgres_dsn, f"select device, status, since, last_seen from {schema}.fleet_status")
    assert sorted(fleet["device"]) == sorted(readings["device"].unique())
    last_seen = readings.groupby("device")["timestamp"].max()
    np.testing.assert_array_equal(
        pd.to_datetime(fleet.set_index("device")["last_seen"].sort_index(), utc=True)
        .dt.tz_localize(None).astype("datetime64[ns]").astype(np.int64).to_numpy() // 1000,
        last_seen.sort_index().to_numpy() // 1000)
    silence = query(postgres_dsn, f"select device, back from {schema}.silence")
    gone_silent = set(silence.loc[~silence["back"], "device"])
    assert gone_silent, "the simulator's silent devices were not reported"
    wait_for(lambda: set(statuses) >= set(fleet["device"]), 10, "a retained status per device")
    for device, status in fleet.set_index("device")["status"].items():
        assert statuses[device]["status"] == status, device

    # Alarms are real readings (the detector flags the simulator's spikes).
    alarms = query(postgres_dsn, f"select device, channel, timestamp, value from {schema}.alarms")
    assert len(alarms) > 0
    epochs = query(postgres_dsn, f"select epoch from {schema}.epochs order by epoch")
    assert epochs["epoch"].tolist() == list(range(len(epochs)))


def test_bad_input_is_dead_lettered_and_the_service_keeps_running(tmp_path, mqtt_broker, postgres_dsn, request, rng):
    schema = _schema(request)
    sim = FleetSimulator(devices=5, duration="2min", format="json", seed=int(rng.integers(1 << 30)),
                         straggler_fraction=0.0, silent_fraction=0.0)
    readings, expected, _ = _expected(sim)
    good = sim.messages()
    bad = [
        ("fleet/dev-bad/temp", b"{not json"),
        ("fleet/dev-bad/temp", b'{"ts": 1764547200000000000, "value": "hot"}'),
        ("fleet/dev-bad/temp", b'{"value": 1.5}'),
        ("fleet/dev-bad/temp", b'{"ts": 1764547200, "value": 1.5}'),          # seconds, not ns
        ("fleet/dev-bad/temp", b"\xff\xfe\x00garbage"),
        ("fleet/dev-bad/temp", b"[" + b"1" * (2 << 20) + b"]"),                  # oversized
        ("fleet/unknown", b'{"ts": 1764547200000000000, "value": 1.0}'),         # no {channel}
    ]
    messages = list(good)
    positions = sorted(rng.choice(len(good), len(bad), replace=False))
    for offset, (pos, msg) in enumerate(zip(positions, bad)):
        messages.insert(pos + offset, msg)
    cfg = service_config(tmp_path, dsn=postgres_dsn, schema=schema, mqtt_port=mqtt_broker.port,
                         client_id=schema, archive=False)
    cfg["source"]["subscribe"] = ["fleet/#"]
    service = Service(cfg)
    thread, errors = _run_in_thread(service)
    try:
        wait_for(service.ready.is_set, 30, "service start", check=_raise_first(errors))
        publish_mqtt(messages, "127.0.0.1", mqtt_broker.port, client_id=schema + "-pub")
        wait_equal(lambda: (_count(postgres_dsn, schema, "windows"), _count(postgres_dsn, schema, "dead_letters")),
                   (len(expected), len(bad)), 60, "windows and dead letters", check=_raise_first(errors))
    finally:
        service.stop()
        thread.join(60)
    assert not errors, errors
    compare_windows(_stored_windows(postgres_dsn, schema), expected)
    dead = query(postgres_dsn, f"select topic, payload, reason from {schema}.dead_letters")
    assert sorted(bytes(p) for p in dead["payload"]) == sorted(m[1] for m in bad)
    assert all(len(r) > 10 for r in dead["reason"])
    assert service.stats["dead_letters"] == len(bad)


# --- crashes ----------------------------------------------------------------------------------------

FAULTS = ["push:3", "checkpoint_files:1", "checkpoint:1", "sink:1", "ack:1", "checkpoint_files:2",
          "sink:2", "ack:2"]


def _crash_loop(service: ServiceProcess, publisher: threading.Thread, kills: int, rng):
    """Kills the running service ``kills`` times: half at random moments, half at a step of an
    epoch (CUSENSE_FAULT), restarting it each time; then starts it for good."""
    for i in range(kills):
        if i:
            fault = FAULTS[i // 2 % len(FAULTS)] if i % 2 else ""
            service.start(env={"CUSENSE_FAULT": fault})
        else:
            fault = ""          # the first life was started by the caller
        if fault:
            try:
                service.proc.wait(8)       # the fault kills it (or the step never came)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(float(rng.uniform(0.3, 2.5)))
        service.kill()
    lives = service.log_text().count("event=ready")
    service.start()
    publisher.join()
    # SIGTERM before the service installed its handler would kill it (nothing lost, but not the
    # clean stop this test checks): wait until the last life is up.
    wait_for(lambda: service.log_text().count("event=ready") > lives, 60, "the last start",
             check=lambda: service.alive() or pytest.fail(service.log_text()[-3000:]))


def _crash_test(tmp_path, dsn, schema, cfg, sim, deliver, rng, kills=22):
    from cusense import to_nanoseconds
    readings, expected, late = _expected(sim, to_nanoseconds(cfg["pipeline"]["max_out_of_orderness"]))
    service = ServiceProcess(cfg, tmp_path)
    publisher = threading.Thread(target=deliver, daemon=True)
    # Start once so the persistent session / topic exists before publishing.
    service.start()
    wait_for(lambda: "event=start" in service.log_text(), 60, "service start",
             check=lambda: service.alive() or pytest.fail(service.log_text()[-3000:]))
    publisher.start()
    _crash_loop(service, publisher, kills, rng)
    try:
        wait_for(lambda: _count(dsn, schema, "windows") == len(expected), 120,
                 f"{len(expected)} windows after the crashes",
                 check=lambda: service.alive() or pytest.fail(service.log_text()[-3000:]))
        time.sleep(1.0)   # one more epoch: nothing more may arrive
        assert service.terminate() == 0, service.log_text()[-3000:]
    finally:
        service.kill()
    compare_windows(_stored_windows(dsn, schema), expected)
    stored_late = query(dsn, f"select count(*) as n from {schema}.late_records")["n"][0]
    assert stored_late == len(late)
    raw_archived = __import__("pyarrow.dataset", fromlist=["dataset"]).dataset(
        tmp_path / "archive" / "raw", partitioning="hive").count_rows()
    assert raw_archived == len(readings)
    assert service.log_text().count("event=restore") >= kills // 2


def test_kill_9_at_random_moments_mqtt(tmp_path, mqtt_broker, postgres_dsn, request, rng):
    schema = _schema(request)
    sim = FleetSimulator(devices=20, duration="10min", format="json", seed=int(rng.integers(1 << 30)),
                         silent_fraction=0.1)
    cfg = service_config(tmp_path, dsn=postgres_dsn, schema=schema, mqtt_port=mqtt_broker.port,
                         client_id=schema, interval="200ms")
    messages = sim.messages()
    _crash_test(tmp_path, postgres_dsn, schema, cfg, sim,
                # spread over about 35 s, so that the kills fall while data flows
                lambda: publish_mqtt(messages, "127.0.0.1", mqtt_broker.port, rate=len(messages) / 35,
                                     client_id=schema + "-pub"), rng)


def test_kill_9_at_random_moments_kafka(tmp_path, kafka_cluster, postgres_dsn, request, rng):  # noqa: F811
    schema = _schema(request)
    topic = schema
    kafka_cluster.create_topic(topic, 4)
    # Four partitions are consumed in an order of their own, so records may reach the pipeline
    # minutes apart from the production order: a bound of 2 minutes keeps every record on time
    # whatever the interleaving (the stored tables then have one right answer).
    sim = FleetSimulator(devices=20, duration="12min", format="mixed", per_message=2,
                         seed=int(rng.integers(1 << 30)), silent_fraction=0.1,
                         straggler_fraction=0.0)
    cfg = service_config(tmp_path, dsn=postgres_dsn, schema=schema,
                         kafka_bootstrap=kafka_cluster.bootstrap_servers, kafka_topic=topic,
                         client_id=schema, interval="200ms", max_out_of_orderness="2min")
    messages = sim.messages()

    def deliver():
        chunk = len(messages) // 35 + 1      # about 35 s of production, while the kills happen
        for i in range(0, len(messages), chunk):
            produce_kafka(messages[i:i + chunk], kafka_cluster.bootstrap_servers, topic)
            time.sleep(1.0)

    _crash_test(tmp_path, postgres_dsn, schema, cfg, sim, deliver, rng)


def test_broker_and_database_restarts_lose_nothing(tmp_path, request, rng):
    for name in ("broker", "pg"):
        (tmp_path / name).mkdir()
    broker = start_mosquitto(tmp_path / "broker")
    dsn, pg = start_postgres(tmp_path / "pg")
    schema = _schema(request)
    try:
        sim = FleetSimulator(devices=10, duration="6min", format="json-array", per_message=2,
                             seed=int(rng.integers(1 << 30)), straggler_fraction=0.0)
        readings, expected, _ = _expected(sim)
        cfg = service_config(tmp_path, dsn=dsn, schema=schema, mqtt_port=broker.port,
                             client_id=schema, interval="200ms")
        service = Service(cfg)
        thread, errors = _run_in_thread(service)
        messages = sim.messages()
        third = len(messages) // 3
        wait_for(service.ready.is_set, 30, "service start", check=_raise_first(errors))
        publish_mqtt(messages[:third], "127.0.0.1", broker.port, client_id=schema + "-pub")
        time.sleep(0.5)
        broker = restart_mosquitto(broker)
        publish_mqtt(messages[third:2 * third], "127.0.0.1", broker.port, client_id=schema + "-pub")
        restart_postgres(pg, down_s=2.0)
        publish_mqtt(messages[2 * third:], "127.0.0.1", broker.port, client_id=schema + "-pub")
        try:
            wait_for(lambda: _count(dsn, schema, "windows") == len(expected), 120,
                     f"{len(expected)} windows after restarts", check=_raise_first(errors))
        finally:
            service.stop()
            thread.join(60)
        assert not errors, errors
        compare_windows(_stored_windows(dsn, schema), expected)
    finally:
        stop_mosquitto(broker)
        stop_postgres(pg)


def test_fleet_example_runs(tmp_path):
    """README's fleet example: throwaway servers, the service, the simulator, the queries."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "examples" / "fleet" / "fleet_demo.py"
    done = subprocess.run([sys.executable, str(script), "--devices", "8", "--duration", "2min"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== fleet status counts ==" in done.stdout and "0 dead letters" in done.stderr


def test_stop_while_the_database_is_unreachable_returns_cleanly(tmp_path, mqtt_broker, request, caplog):
    """SIGTERM while PostgreSQL is down: the service stops retrying and returns; nothing is
    acknowledged, so the next start delivers everything."""
    schema = _schema(request)
    cfg = service_config(tmp_path, dsn=f"host=127.0.0.1 port={_free_port()} user=postgres connect_timeout=1",
                         schema=schema, mqtt_port=mqtt_broker.port, client_id=schema, archive=False)
    service = Service(cfg)
    thread, errors = _run_in_thread(service)
    time.sleep(1.5)                      # retrying the sink's open() with back-off
    assert not service.ready.is_set()
    service.stop()
    thread.join(20)
    assert not thread.is_alive() and not errors, errors
    assert any("stopped_undelivered" in r.getMessage() for r in caplog.records)


def test_allowed_lateness_updates_get_update_sequences(tmp_path, mqtt_broker, postgres_dsn, request, rng):
    """With allowed lateness a window is emitted again for each late record within it: each
    emission is its own row, update_seq 0, 1, 2, ... (as the pipeline emitted them, in the same
    arrival order), and windows_latest holds the last one."""
    import cusense
    schema = _schema(request)
    sim = FleetSimulator(devices=6, duration="3min", format="json", seed=int(rng.integers(1 << 30)),
                         straggler_fraction=0.03, silent_fraction=0.0)
    readings = sim.readings()
    cfg = service_config(tmp_path, dsn=postgres_dsn, schema=schema, mqtt_port=mqtt_broker.port,
                         client_id=schema, archive=False, detectors=())
    cfg["pipeline"]["allowed_lateness"] = "5min"
    # The same stream through a Pipeline: the emissions the service must store.
    keys = pd.factorize(readings["device"] + "/" + readings["channel"])[0].astype(np.uint32)
    pipe = cusense.Pipeline(cusense.Tumbling("10s"), aggs=["count", "mean", "min", "max"],
                            max_out_of_orderness="5s", allowed_lateness="5min")
    pipe.push(keys, readings["timestamp"].to_numpy(np.int64), readings["value"].to_numpy())
    emitted = pipe.poll().to_pandas(datetimes=False)
    assert emitted["is_update"].any(), "the stream has no late records within the lateness"
    emitted["update_seq"] = emitted.groupby(["key", "window_start"]).cumcount()
    service = Service(cfg)
    thread, errors = _run_in_thread(service)
    try:
        wait_for(service.ready.is_set, 30, "service start", check=_raise_first(errors))
        publish_mqtt(sim.messages(), "127.0.0.1", mqtt_broker.port, client_id=schema + "-pub")
        wait_equal(lambda: _count(postgres_dsn, schema, "windows"), len(emitted), 60,
                   "every emission stored", check=_raise_first(errors))
    finally:
        service.stop()
        thread.join(60)
    stored = query(postgres_dsn, f"select device, channel, window_start, update_seq, count from {schema}.windows")
    pair = stored["device"] + "/" + stored["channel"]
    names = pd.factorize(readings["device"] + "/" + readings["channel"])[1]
    stored["key"] = pd.Index(names).get_indexer(pair)
    stored["window_start"] = (pd.to_datetime(stored["window_start"], utc=True).dt.tz_localize(None)
                              .astype("datetime64[ns]").astype(np.int64))
    got = stored.sort_values(["key", "window_start", "update_seq"]).reset_index(drop=True)
    want = emitted.sort_values(["key", "window_start", "update_seq"]).reset_index(drop=True)
    for col in ("key", "window_start", "update_seq", "count"):
        np.testing.assert_array_equal(got[col].to_numpy(np.int64), want[col].to_numpy(np.int64), err_msg=col)
    latest = query(postgres_dsn, f"select count(*) as n from {schema}.windows_latest")["n"][0]
    assert latest == emitted.groupby(["key", "window_start"]).ngroups
