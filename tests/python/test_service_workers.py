"""cusense serve with ``[pipeline] workers = N``: the pipeline partitioned over Ray actors
(cusense.distributed) stores exactly the rows of the in-process pipeline, survives kill -9 and
restarts (onto the same Ray cluster, a fresh local one, or another number of workers) with no
record lost or doubled, and refuses with a ConfigError the checkpoints it cannot resume.

A local Ray cluster is started by a module fixture (2 CPUs, as tests/python/test_distributed.py);
services run in this process use it, services run as child processes connect to it with
``ray_address``, and the last life of the crash test starts its own (no ``ray_address``)."""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time

import pandas as pd
import pytest

from cusense.service import ConfigError, Service, load_config
from cusense.simulator import FleetSimulator, publish_mqtt
from fleet_oracle import compare_windows, tumbling_windows
from mqtt_broker import mqtt_broker  # noqa: F401  (fixture)
from pg_server import postgres_dsn  # noqa: F401  (fixture)
from service_harness import ServiceProcess, query, service_config, to_toml, wait_for

ray = pytest.importorskip("ray", reason="workers = N needs Ray (pip install 'cusense[ray]')")

SIZE_NS = 10_000_000_000
OOO_NS = 5_000_000_000


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray cluster for the module; yields its address for child processes."""
    if ray.is_initialized():
        ray.shutdown()
    temp = tempfile.mkdtemp(prefix="cs-ray-")  # short: Ray's socket paths must fit 107 bytes
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
                   log_to_driver=False, _temp_dir=temp)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _schema(request, suffix: str = "") -> str:
    return "w_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:36] + suffix


def _count(dsn, schema, table) -> int:
    try:
        return int(query(dsn, f"select count(*) as n from {schema}.{table}")["n"][0])
    except Exception:   # table not created yet
        return -1


def _run_in_thread(service: Service):
    errors: list[BaseException] = []

    def run():
        try:
            service.run()
        except BaseException as e:   # surfaced by the test
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _raise_first(errors):
    def check():
        if errors:
            raise errors[0]
    return check


def _table(dsn, schema, table, columns=None) -> pd.DataFrame:
    """A stored table, every column (or ``columns``), rows in a canonical order."""
    frame = query(dsn, f"select {', '.join(columns) if columns else '*'} from {schema}.{table}")
    frame = frame.drop(columns=[c for c in ("committed_at",) if c in frame])
    cols = list(frame.columns)
    # bytes and timestamps sort as strings; the order only has to be the same on both sides
    return frame.sort_values(cols, key=lambda s: s.astype(str)).reset_index(drop=True)


def _worker_pids(log_text: str) -> list[int]:
    found = re.findall(r"worker_pids=([\d,]+)", log_text)
    assert found, "no worker_pids in the service log"
    return [int(p) for p in found[-1].split(",")]


def _log(caplog, containing: str) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if containing in r.getMessage())


def _gone(pids) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


# --- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda p: p.update(workers=0), "pipeline.workers must be a positive integer"),
    (lambda p: p.update(workers="2"), "pipeline.workers must be a positive integer"),
    (lambda p: p.update(workers=True), "pipeline.workers must be a positive integer"),
    (lambda p: p.update(ray_address="auto"), "pipeline.ray_address needs pipeline.workers >= 2"),
    (lambda p: p.update(workers=2, ray_address=6379), "pipeline.ray_address must be a Ray address"),
    (lambda p: p.update(workers=2, max_open_windows=100), "pipeline.max_open_windows is not supported"),
    (lambda p: p.update(worker=2), "pipeline.worker is not an option"),
])
def test_workers_config_is_checked(tmp_path, change, message):
    cfg = service_config(tmp_path, dsn="host=127.0.0.1", schema="s", mqtt_port=1883)
    change(cfg["pipeline"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(cfg)


def test_workers_and_ray_address_are_read_from_the_file(tmp_path):
    cfg = service_config(tmp_path, dsn="host=127.0.0.1", schema="s", mqtt_port=1883)
    cfg["pipeline"].update(workers=4, ray_address="head:6379")
    path = tmp_path / "serve.toml"
    path.write_text(to_toml(cfg))
    loaded = load_config(path)
    assert (loaded.workers, loaded.ray_address) == (4, "head:6379")
    assert "workers" not in loaded.pipeline and "ray_address" not in loaded.pipeline
    assert load_config(cfg | {"pipeline": {"window": "none"}}).workers == 1


# --- equality with the in-process pipeline ---------------------------------------------------------

def test_workers_2_stores_exactly_the_rows_of_workers_1(tmp_path, mqtt_broker, postgres_dsn,  # noqa: F811
                                                        request, rng, ray_address, caplog):
    """Two services subscribed to the same broker, one in-process and one with two workers, get
    the same stream, and one of the two workers is killed halfway (SIGKILL of its process): every
    table they store is the same, row for row. Then the checkpoints each
    left behind are refused by a configuration that cannot resume them."""
    caplog.set_level(logging.INFO, logger="cusense.service")
    sim = FleetSimulator(devices=12, duration="3min", format="mixed", per_message=3,
                         seed=int(rng.integers(1 << 30)), silent_fraction=0.25,
                         spike_fraction=0.01, straggler_fraction=0.01)
    readings = sim.readings()
    expected, late = tumbling_windows(readings, SIZE_NS, OOO_NS)
    services, schemas, dirs = {}, {}, {}
    for workers in (1, 2):
        schemas[workers] = _schema(request, f"_{workers}")
        dirs[workers] = tmp_path / f"w{workers}"
        dirs[workers].mkdir()
        cfg = service_config(dirs[workers], dsn=postgres_dsn, schema=schemas[workers],
                             mqtt_port=mqtt_broker.port, client_id=schemas[workers])
        cfg["pipeline"]["workers"] = workers
        services[workers] = Service(cfg)
    runs = {w: _run_in_thread(s) for w, s in services.items()}
    try:
        for w, s in services.items():
            wait_for(s.ready.is_set, 60, f"service with workers = {w} started",
                     check=_raise_first(runs[w][1]))
        # Half the stream; then one worker process of the distributed pipeline is killed: the
        # pipeline restores it from the last epoch's checkpoint and replays what it routed since.
        messages = sim.messages()
        publish_mqtt(messages[:len(messages) // 2], "127.0.0.1", mqtt_broker.port, client_id=schemas[1] + "-pub")
        wait_for(lambda: _count(postgres_dsn, schemas[2], "windows") > 0, 60, "the first windows",
                 check=_raise_first(runs[2][1]))
        os.kill(_worker_pids(_log(caplog, "workers=2"))[int(rng.integers(2))], signal.SIGKILL)
        publish_mqtt(messages[len(messages) // 2:], "127.0.0.1", mqtt_broker.port, client_id=schemas[1] + "-pub")
        for w in services:
            wait_for(lambda w=w: _count(postgres_dsn, schemas[w], "windows") == len(expected), 60,
                     f"{len(expected)} windows (workers = {w})", check=_raise_first(runs[w][1]))
        time.sleep(0.5)
    finally:
        for s in services.values():
            s.stop()
        for thread, _ in runs.values():
            thread.join(60)
    for w, (_, errors) in runs.items():
        assert not errors, (w, errors)
    assert services[2]._pipe is not None and services[2]._pipe.partitions == 2
    # The partitions' actors are stopped with the service; Ray (the fixture's) is left running.
    assert services[2]._pipe.recoveries == 1
    pids = _worker_pids(_log(caplog, "workers=2"))
    wait_for(lambda: _gone(pids), 20, "the workers' processes to exit")
    assert ray.is_initialized()

    compare_windows(query(postgres_dsn, f"select device, channel, window_start, count, mean, min, max "
                                        f"from {schemas[2]}.windows"), expected)
    assert _count(postgres_dsn, schemas[2], "late_records") == len(late)
    assert _count(postgres_dsn, schemas[2], "alarms") > 0 and _count(postgres_dsn, schemas[2], "silence") > 0
    for table in ("windows", "late_records", "alarms", "silence", "dead_letters"):
        one, two = (_table(postgres_dsn, schemas[w], table) for w in (1, 2))
        assert len(one) == len(two), table
        pd.testing.assert_frame_equal(one, two, check_exact=True, obj=table)
    # Fleet status decisions depend on the watermark at each micro-batch, which differs between
    # any two runs; the devices and their last readings do not.
    one, two = (_table(postgres_dsn, schemas[w], "fleet_status", ["device", "last_seen"]) for w in (1, 2))
    pd.testing.assert_frame_equal(one, two)
    import pyarrow.dataset as ds
    for w in (1, 2):
        assert ds.dataset(dirs[w] / "archive" / "raw", partitioning="hive").count_rows() == len(readings)

    # Checkpoints that cannot be resumed as configured: a clear ConfigError, before anything starts.
    def config(workers, d):
        cfg = service_config(dirs[d], dsn=postgres_dsn, schema=schemas[d], mqtt_port=mqtt_broker.port,
                             client_id=schemas[d])
        cfg["pipeline"]["workers"] = workers
        return cfg

    with pytest.raises(ConfigError, match=r"written with workers = 1.*Set workers = 1"):
        Service(config(2, 1))
    with pytest.raises(ConfigError, match=r"written with workers = 2.*Set workers = 2$"):
        Service(config(1, 2))
    with pytest.raises(ConfigError, match=r"workers = 2 and holds detector state.*set workers = 2"):
        Service(config(3, 2))


# --- crashes and restarts --------------------------------------------------------------------------

LIVES = ["", "checkpoint_files:1", "", "sink:1", "push:3"]   # "": killed at a random moment


def test_workers_2_kill_9_and_restart_lose_and_double_nothing(tmp_path, mqtt_broker, postgres_dsn,  # noqa: F811
                                                              request, rng, ray_address):
    """``cusense serve`` with workers = 2 as a child process on the module's Ray cluster, killed
    with SIGKILL at random moments and at steps of an epoch (CUSENSE_FAULT) while the fleet
    publishes; the last life starts a local Ray instance of its own (no ray_address) from the
    same checkpoint, and is stopped with SIGTERM. Stored windows, late records and the raw
    archive equal an independent computation of the stream."""
    schema = _schema(request)
    sim = FleetSimulator(devices=10, duration="5min", format="json-array", per_message=2,
                         seed=int(rng.integers(1 << 30)), silent_fraction=0.1)
    readings = sim.readings()
    expected, late = tumbling_windows(readings, SIZE_NS, OOO_NS)
    cfg = service_config(tmp_path, dsn=postgres_dsn, schema=schema, mqtt_port=mqtt_broker.port,
                         client_id=schema, interval="200ms")
    cfg["pipeline"].update(workers=2, ray_address=ray_address)
    service = ServiceProcess(cfg, tmp_path)
    messages = sim.messages()
    publisher = threading.Thread(
        target=lambda: publish_mqtt(messages, "127.0.0.1", mqtt_broker.port, rate=len(messages) / 20,
                                    client_id=schema + "-pub"), daemon=True)
    service.start()
    wait_for(lambda: "event=start" in service.log_text(), 60, "service start",
             check=lambda: service.alive() or pytest.fail(service.log_text()[-3000:]))
    publisher.start()
    try:
        for i, fault in enumerate(LIVES):
            if i:
                service.start(env={"CUSENSE_FAULT": fault})
            if fault:
                try:
                    service.proc.wait(10)     # the fault kills it (or the step never came)
                except Exception:             # noqa: BLE001 - still alive: killed below
                    pass
            else:
                time.sleep(float(rng.uniform(1.0, 4.0)))
            service.kill()
        # The last life: a local Ray instance started by the service itself.
        del cfg["pipeline"]["ray_address"]
        service.path.write_text(to_toml(cfg))
        lives = service.log_text().count("event=ready")
        service.start()
        publisher.join()
        wait_for(lambda: service.log_text().count("event=ready") > lives, 90, "the last start",
                 check=lambda: service.alive() or pytest.fail(service.log_text()[-3000:]))
        wait_for(lambda: _count(postgres_dsn, schema, "windows") == len(expected), 90,
                 f"{len(expected)} windows after the crashes",
                 check=lambda: service.alive() or pytest.fail(service.log_text()[-3000:]))
        time.sleep(1.0)   # one more epoch: nothing more may arrive
        log_text = service.log_text()
        assert service.terminate() == 0, log_text[-3000:]
    finally:
        service.kill()
    log_text = service.log_text()
    assert log_text.count("event=restore") >= 3, log_text[-3000:]
    assert "event=ray address=local" in log_text
    wait_for(lambda: _gone(_worker_pids(log_text)), 20, "the last life's workers to exit")
    compare_windows(query(postgres_dsn, f"select device, channel, window_start, count, mean, min, max "
                                        f"from {schema}.windows"), expected)
    assert _count(postgres_dsn, schema, "late_records") == len(late)
    import pyarrow.dataset as ds
    assert ds.dataset(tmp_path / "archive" / "raw", partitioning="hive").count_rows() == len(readings)
    # Old epochs' pipeline checkpoints are pruned with their epochs; leftovers of crashes removed.
    names = os.listdir(tmp_path / "checkpoints")
    epochs = {n[len("epoch-"):] for n in names if n.startswith("epoch-")}
    cuts = {n[len("pipeline-epoch-"):] for n in names if n.startswith("pipeline-epoch-")}
    assert cuts == epochs and len(epochs) == 1, names


def test_restart_onto_another_number_of_workers(tmp_path, mqtt_broker, postgres_dsn, request,  # noqa: F811
                                                rng, ray_address):
    """Window state is split by the key hash onto another number of workers (2 -> 3) when the
    service restarts: the stored windows equal those of the whole stream."""
    schema = _schema(request)
    sim = FleetSimulator(devices=10, duration="3min", format="mixed", per_message=2,
                         seed=int(rng.integers(1 << 30)), silent_fraction=0.0)
    readings = sim.readings()
    expected, late = tumbling_windows(readings, SIZE_NS, OOO_NS)
    messages = sim.messages()
    half = len(messages) // 2
    cfg = service_config(tmp_path, dsn=postgres_dsn, schema=schema, mqtt_port=mqtt_broker.port,
                         client_id=schema, detectors=())
    for workers, part in ((2, messages[:half]), (3, messages[half:])):
        cfg["pipeline"]["workers"] = workers
        service = Service(cfg)
        thread, errors = _run_in_thread(service)
        try:
            wait_for(service.ready.is_set, 60, f"service with workers = {workers}", check=_raise_first(errors))
            assert service._pipe is not None and service._pipe.partitions == workers
            publish_mqtt(part, "127.0.0.1", mqtt_broker.port, client_id=schema + "-pub")
            if workers == 3:
                wait_for(lambda: _count(postgres_dsn, schema, "windows") == len(expected), 60,
                         f"{len(expected)} windows", check=_raise_first(errors))
            else:
                time.sleep(1.0)
        finally:
            service.stop()
            thread.join(60)
        assert not errors, errors
    compare_windows(query(postgres_dsn, f"select device, channel, window_start, count, mean, min, max "
                                        f"from {schema}.windows"), expected)
    assert _count(postgres_dsn, schema, "late_records") == len(late)
    # Back onto the in-process pipeline is refused (its watermark comes from its own records).
    cfg["pipeline"]["workers"] = 1
    with pytest.raises(ConfigError, match=r"written with workers = 3.*\(or any number >= 2\)"):
        Service(cfg)
