"""Running ``cusense serve`` in tests: configurations, a TOML writer, the service as a child
process (so it can be killed with SIGKILL), and reading back what PostgreSQL holds."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd


def to_toml(cfg: dict) -> str:
    """Enough TOML for service configurations: tables, arrays of tables, scalars, lists."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"no TOML for {v!r}")

    lines = []
    for name, section in cfg.items():
        tables = section if isinstance(section, list) else [section]
        for table in tables:
            lines.append(f"[[{name}]]" if isinstance(section, list) else f"[{name}]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
            lines.append("")
    return "\n".join(lines)


def service_config(tmp_path, *, dsn: str, schema: str, mqtt_port: int | None = None,
                   kafka_bootstrap: str | None = None, kafka_topic: str = "readings",
                   client_id: str = "cusense-test", size: str = "10s",
                   max_out_of_orderness: str = "5s", interval: str = "300ms",
                   detectors=("ewma:alpha=0.1,threshold=0.97", "silence:timeout=30s"),
                   archive: bool = True) -> dict:
    if mqtt_port is not None:
        source = {"type": "mqtt", "host": "127.0.0.1", "port": mqtt_port, "client_id": client_id,
                  "topic_template": "fleet/{key}/{channel}"}
    else:
        source = {"type": "kafka", "bootstrap_servers": kafka_bootstrap, "topics": [kafka_topic],
                  "group_id": client_id, "topic_template": "fleet/{key}/{channel}"}
    sinks = [{"type": "postgres", "dsn": dsn, "schema": schema}]
    if archive:
        sinks.append({"type": "parquet", "root": str(tmp_path / "archive")})
    return {
        "source": source,
        "batch": {"max_messages": 2000, "max_wait": "20ms"},
        "pipeline": {"window": "tumbling", "size": size, "aggs": ["count", "mean", "min", "max"],
                     "max_out_of_orderness": max_out_of_orderness, "detectors": list(detectors)},
        "checkpoint": {"directory": str(tmp_path / "checkpoints"), "interval": interval},
        "sinks": sinks,
        "status": {"topic": "plant/status/{device}", "alarm_hold": "1min"},
        "service": {"progress": False},
    }


class ServiceProcess:
    """``cusense serve CONFIG`` as a child process."""

    def __init__(self, config: dict, tmp_path, env: dict | None = None):
        self.path = tmp_path / "service.toml"
        self.path.write_text(to_toml(config))
        self.log = open(tmp_path / "service.log", "ab")
        self.env = {**os.environ, **(env or {})}
        self.proc = None

    def start(self, env: dict | None = None) -> "ServiceProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "cusense.cli", "serve", str(self.path)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**self.env, **(env or {})})
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        self.log.flush()
        return self.path.with_name("service.log").read_text(errors="replace")


def query(dsn: str, sql: str) -> pd.DataFrame:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql)
        cols = [d.name for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=cols)


def wait_for(predicate, timeout: float, what: str, every: float = 0.2, check=None):
    """Polls ``predicate`` until true; ``check`` (e.g. 'service still alive') runs each round."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if check:
            check()
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def wait_equal(value, expected, timeout: float, what: str, check=None):
    """Polls ``value()`` until it equals ``expected``; the failure shows the last value."""
    seen = []

    def matches():
        seen[:] = [value()]
        return seen[0] == expected

    try:
        wait_for(matches, timeout, what, check=check)
    except AssertionError:
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: "
                             f"last {seen[0]!r}, expected {expected!r}") from None
