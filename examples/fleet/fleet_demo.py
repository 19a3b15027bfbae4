"""The fleet example end to end on one machine: a throwaway mosquitto broker and PostgreSQL
server, cusense serve (examples/fleet/serve.toml) in this process, a simulated fleet publishing
to the broker, then the operator's queries of what was stored (examples/fleet/query.py).

    .venv/bin/python examples/fleet/fleet_demo.py [--devices 100] [--duration 10min]

Needs Debian's mosquitto and postgresql packages (the servers run from a temporary directory
and are stopped at the end).
"""
from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests" / "python"))   # the test suite's server starters

from mqtt_broker import start_mosquitto, stop_mosquitto  # noqa: E402
from pg_server import start_postgres, stop_postgres  # noqa: E402
from query import report  # noqa: E402

from cusense.service import Service  # noqa: E402
from cusense.simulator import FleetSimulator, publish_mqtt  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--duration", default="10min", help="event time the fleet covers")
    ap.add_argument("--per-message", type=int, default=10, help="readings per message")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="cusense-fleet-"))
    (work / "broker").mkdir()
    (work / "pg").mkdir()
    broker = start_mosquitto(work / "broker")
    dsn, pg = start_postgres(work / "pg")
    try:
        config = tomllib.loads((HERE / "serve.toml").read_text())
        config["source"]["port"] = broker.port
        config["sinks"][0]["dsn"] = dsn
        config["sinks"][1]["root"] = str(work / "archive")
        config["checkpoint"]["directory"] = str(work / "state")
        config["metrics"]["port"] = free_port()
        config["service"] = {"progress": False}
        service = Service(config)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        if not service.ready.wait(60):
            raise RuntimeError("cusense serve did not start within 60 s")

        sim = FleetSimulator(devices=args.devices, duration=args.duration, format="mixed",
                             per_message=args.per_message, silent_fraction=0.1, spike_fraction=0.003)
        messages = sim.messages()
        print(f"publishing {len(messages)} messages ({len(sim.readings())} readings from "
              f"{args.devices} devices) to mqtt://127.0.0.1:{broker.port}", file=sys.stderr)
        publish_mqtt(messages, "127.0.0.1", broker.port, progress=sys.stderr.isatty())
        deadline = time.monotonic() + 120
        while service.stats.get("messages", 0) < len(messages) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2 * service.config.checkpoint_interval_ns / 1e9 + 0.5)   # the last epoch commits
        stats = service.stats
        print(f"cusense: {stats['messages']} messages, {stats['records_in']} readings, "
              f"{stats['rows_out']} windows, {stats['records_late']} late, "
              f"{stats['dead_letters']} dead letters, {stats['epoch']} epochs; "
              f"metrics on http://127.0.0.1:{config['metrics']['port']}/metrics", file=sys.stderr)
        service.stop()
        thread.join(60)
        for title, frame in report(dsn, config["sinks"][0]["schema"]).items():
            print(f"\n== {title} ==")
            print(frame.to_string(index=False) if len(frame) else "(none)")
        print(f"\nParquet archive: {work / 'archive'}")
        return 0 if stats["records_in"] == len(sim.readings()) else 1
    finally:
        stop_mosquitto(broker)
        stop_postgres(pg)


if __name__ == "__main__":
    sys.exit(main())
