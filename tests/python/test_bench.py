"""Smoke test of the benchmark suite (cusense.bench): a tiny run through the same code path as
`benchmarks/run.py --quick`, checking the report and that every peer matched cusense."""
import json

import numpy as np
import pytest

import cusense
from cusense import bench


def test_peers_agree_with_cusense_on_a_tiny_stream():
    s = bench.make_stream(5_000, 50)
    case = bench.Case(5_000, 50, 1_000, bench.AGGS7)
    ref = bench.run_cusense(s, case, "cpu")
    assert len(ref["key"]) > 0
    assert bench.check_equal(ref, bench.peer_numpy(s, case.aggs), case.aggs) is None
    # the check must catch a wrong answer
    bad = dict(ref, sum=ref["sum"] + 1.0)
    assert "column sum" in bench.check_equal(ref, bad, case.aggs)


def test_smoke_run_writes_report(tmp_path):
    pytest.importorskip("pandas")
    peers = ["numpy", "pandas"] + (["polars"] if bench.peer_available("polars") is None else [])
    report = bench.run_suite("smoke", backends=["cpu"], peers=peers, repeats=1, out=tmp_path,
                             log=lambda msg: None)
    assert report["failures"] == []
    for key in ("machine", "git_commit", "timestamp", "workload", "results", "backends", "peers"):
        assert key in report
    assert {"cpu", "cores", "memory_gib"} <= set(report["machine"])
    rows = report["results"]
    cus = [r for r in rows if r["impl"] == "cusense-cpu"]
    assert cus and all(r["records_per_s"] > 0 and r["bytes_per_s"] == r["records_per_s"] * 16 for r in cus)
    assert all(r["latency_p99_ms"] >= r["latency_p50_ms"] for r in cus)
    checked = [r for r in rows if r["kind"] == "peer"]
    assert {r["impl"] for r in checked} == set(peers)
    assert all(r["check"] == "ok" for r in checked)
    assert set(cus[0]["speedup_vs"]) == set(peers)
    on_disk = json.loads((tmp_path / "smoke.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(rows))
    assert (tmp_path / "smoke.md").read_text().startswith("# cusense benchmark")
    if pytest.importorskip("matplotlib"):
        assert report["plots"] and all((tmp_path / p).is_file() for p in report["plots"])


def test_cuda_peers_skip_cleanly_without_a_gpu():
    if cusense.cuda_available():
        pytest.skip("a GPU is present")
    assert bench.peer_available("cupy") is not None
    assert bench.peer_available("torch") is not None
    assert bench.copy_bandwidth(1 << 20, 1) is None
