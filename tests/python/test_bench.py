"""Smoke test of the benchmark suite (benchmarks/suite): a tiny run through the same code path as
`benchmarks/run.py --quick`, checking the report and that every peer matched cusense."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import cusense

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from suite import checks, cli, limits, peers, streaming, sweeps, windows, workloads  # noqa: E402


def test_peers_agree_with_cusense_on_a_tiny_stream():
    s = workloads.make_stream(5_000, 50)
    case = workloads.Case(5_000, 50, 1_000, workloads.AGGS7)
    ref = streaming.run_cusense(s, case, "cpu")
    assert len(ref["key"]) > 0
    assert checks.check_equal(ref, peers.peer_numpy(s, case.aggs), case.aggs) is None
    # the check must catch a wrong answer
    bad = dict(ref, sum=ref["sum"] + 1.0)
    assert "column sum" in checks.check_equal(ref, bad, case.aggs)


def test_smoke_run_writes_report(tmp_path):
    pytest.importorskip("pandas")
    peer_names = ["numpy", "pandas"] + (["polars"] if peers.peer_available("polars") is None else [])
    report = sweeps.run_suite("smoke", backends=["cpu"], peers=peer_names, repeats=1, out=tmp_path,
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
    assert {r["impl"] for r in checked} == set(peer_names)
    assert all(r["check"] == "ok" for r in checked)
    assert set(cus[0]["speedup_vs"]) == set(peer_names)
    on_disk = json.loads((tmp_path / "smoke.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(rows))
    assert (tmp_path / "smoke.md").read_text().startswith("# cusense benchmark")
    if pytest.importorskip("matplotlib"):
        assert report["plots"] and all((tmp_path / p).is_file() for p in report["plots"])


def test_cuda_peers_skip_cleanly_without_a_gpu():
    if cusense.cuda_available():
        pytest.skip("a GPU is present")
    assert peers.peer_available("cupy") is not None
    assert peers.peer_available("torch") is not None
    assert limits.copy_bandwidth(1 << 20, 1) is None


def test_window_peers_agree_and_the_check_catches_differences():
    for w in windows.window_workloads():
        s = w.stream(5_000, 20)
        ref = streaming.run_cusense_window(s, w, 1_000, "cpu")
        got = w.peers["numpy"](s, w)
        assert checks.check_rows(ref, got, w) is None, w.name
        # row order does not matter, values do
        perm = np.random.default_rng(1).permutation(len(got["key"]))
        assert checks.check_rows(ref, {c: v[perm] for c, v in got.items()}, w) is None, w.name
        bad = dict(got, mean=got["mean"] * (1 + 1e-6))
        assert "column mean" in checks.check_rows(ref, bad, w), w.name
        short = {c: v[1:] for c, v in got.items()}
        assert "rows, expected" in checks.check_rows(ref, short, w), w.name


def test_windows_mode_writes_report(tmp_path, capsys):
    pytest.importorskip("pandas")
    peer_names = ["numpy", "pandas"] + (["polars"] if peers.peer_available("polars") is None else [])
    rc = cli.main(["--windows", "--records", "2e4", "--keys", "50", "--batches", "5e3",
                     "--backends", "cpu", "--repeats", "1", "--out", str(tmp_path), "--peers", *peer_names])
    assert rc == 0
    report = json.loads((tmp_path / "windows.json").read_text())
    assert report["mode"] == "windows" and report["failures"] == []
    rows = report["results"]
    assert [r["workload"] for r in rows if r["kind"] == "cusense"] == ["sliding", "session", "count"]
    for name in ("sliding", "session", "count"):
        own = [r for r in rows if r["workload"] == name]
        cus = next(r for r in own if r["impl"] == "cusense-cpu")
        assert cus["check"] == "reference" and cus["records_per_s"] > 0 and cus["batches"] == 4
        assert {r["impl"] for r in own if r["kind"] == "peer"} == set(peer_names)
        assert all(r["check"] == "ok" and r["rows_out"] == cus["rows_out"]
                   for r in own if r["kind"] == "peer")
        assert set(cus["speedup_vs"]) == set(peer_names)
    by_name = {r["workload"]: r for r in rows if r["impl"] == "cusense-cpu"}
    assert by_name["count"]["rows_out"] == 20_000
    assert by_name["session"]["rows_out"] > 2 * 50  # the stream has real gaps: several sessions per key
    assert (tmp_path / "windows.md").read_text().startswith("# cusense benchmark (windows)")
    assert "| session | pandas |" in capsys.readouterr().out
    if pytest.importorskip("matplotlib"):
        assert report["plots"] == ["windows-throughput.png"]
        assert (tmp_path / "windows-throughput.png").is_file()


def test_windows_mode_takes_one_size():
    with pytest.raises(SystemExit):
        cli.main(["--windows", "--records", "1e4", "2e4", "--no-write"])
