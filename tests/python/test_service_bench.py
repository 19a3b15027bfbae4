"""Smoke test of benchmarks/service_bench.py: a --quick run at tiny sizes writes every figure.
It checks the report's shape, never the speeds (those depend on the machine)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mqtt_broker import mosquitto_binary
from pg_server import PostgresUnavailable, _find_bindir

pytest.importorskip("paho.mqtt.client")
pytest.importorskip("confluent_kafka")
pytest.importorskip("psycopg")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "service_bench.py"


def test_quick_run_reports_every_figure(tmp_path):
    if mosquitto_binary() is None:
        pytest.skip("mosquitto not installed")
    try:
        _find_bindir()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, str(BENCH), "--quick", "--scale", "0.1", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for key in ("machine", "commit", "versions", "sizes", "mqtt", "kafka", "postgres", "latency"):
        assert key in results
    assert {"cpu", "cores"} <= set(results["machine"])
    assert {"paho-mqtt", "confluent-kafka", "psycopg", "postgresql", "mosquitto"} <= set(results["versions"])
    for broker in ("mqtt", "kafka"):
        assert [row["payload"] for row in results[broker]] == ["json", "json-array", "binary"]
        for row in results[broker]:
            for side in ("bare", "service"):
                assert row[side]["messages_per_s"] > 0 and row[side]["records_per_s"] > 0
            assert row["ratio"] > 0
    pg = results["postgres"]
    for key in ("sink", "bare_copy_unindexed", "bare_copy_keyed"):
        assert pg[key]["rows_per_s"] > 0
    assert pg["ratio_vs_unindexed"] > 0 and pg["ratio_vs_keyed"] > 0
    latency = results["latency"]
    assert latency["checkpoint_interval"]
    for key in ("window_latency", "message_latency"):
        assert latency[key]["n"] > 0
        assert latency[key]["p50_ms"] <= latency[key]["p99_ms"]
    readme = (out / "README.md").read_text()
    assert "p99" in readme and "ratio" in readme
    assert (out / "latency.png").stat().st_size > 0
