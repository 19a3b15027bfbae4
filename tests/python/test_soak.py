"""The soak benchmark (benchmarks/soak.py) at its --quick scale: 6 simulated hours of a churning
fleet with silences, late bursts, checkpoints and restores, through every pipeline kind.

Every record is accounted for, the late bursts are exactly the late records, and after the
ramp-up the state, the checkpoint size and RSS are flat (count windows and detectors forget
keys with key_ttl). Kinds whose state would grow with every key ever seen (soak.KNOWN_GROWTH,
none today) are expected to fail the flatness check, a strict xfail. Two deliberately broken
runs (a driver
that leaks memory per new key, one that never polls its outputs) check that the flatness
check can fail.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def _load():
    spec = importlib.util.spec_from_file_location("cusense_soak_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


soak = _load()


@pytest.fixture(scope="module")
def quick():
    return soak.run(soak.Config(**soak.QUICK), progress=False)


@pytest.mark.parametrize("kind", soak.KINDS)
def test_every_record_accounted_and_bursts_late(quick, kind):
    r = quick[kind]
    assert r["checks"] == {"accounting": True, "late_bursts_late": True, "late_records_polled": True}, r["checks"]
    assert r["totals"]["late_expected"] > 0 and r["late"] == r["totals"]["late_expected"]
    assert r["totals"]["checkpoints"] >= 60 and r["totals"]["restores"] >= 5
    last = r["samples"][-1]
    # churn: many more keys came and went than are active at the end
    assert last["keys_seen"] > 4 * last["active_sensors"] > 0


def _flat_param(kind):
    if kind in soak.KNOWN_GROWTH:
        return pytest.param(kind, marks=pytest.mark.xfail(strict=True, reason=soak.KNOWN_GROWTH[kind]))
    return kind


@pytest.mark.parametrize("kind", [_flat_param(k) for k in soak.KINDS])
def test_state_and_rss_flat_after_ramp_up(quick, kind):
    r = quick[kind]
    bad = {m: f for m, f in r["flatness"].items() if not f["flat"]}
    assert not bad, f"{kind} grows after the ramp-up: {bad}"


@pytest.mark.parametrize("kind", ["rolling", "detectors"])
def test_per_key_state_follows_the_active_keys(quick, kind):
    # with key expiry count windows and detectors hold about the active keys plus those that
    # left within the last ttl (2 h of the 6 h run here), well below the keys ever seen
    last = quick[kind]["samples"][-1]
    assert 0 < last["open_keys"] < 0.7 * last["keys_seen"], last


@pytest.mark.parametrize("broken", [dict(leak_bytes_per_key=4096), dict(skip_polls=True)],
                         ids=["driver-leaks-per-key", "outputs-never-polled"])
def test_flatness_check_catches_growth(broken):
    r = soak.run(soak.Config(**soak.QUICK, **broken), kinds=["tumbling"], progress=False)["tumbling"]
    assert not r["flat"], r["flatness"]
    assert not soak.passed(r)
    if broken.get("skip_polls"):
        assert not r["flatness"]["checkpoint_bytes"]["flat"]  # the unpolled rows are saved
    else:
        assert not r["flatness"]["rss"]["flat"]


def test_command_writes_report(tmp_path):
    out = tmp_path / "soak"
    run = subprocess.run([sys.executable, str(BENCH), "--quick",
                          "--kinds", "session,rolling", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    import json

    report = json.loads((out / "soak.json").read_text())
    assert set(report["pipelines"]) == {"session", "rolling"}
    assert {"cpu", "cores"} <= set(report["machine"]) and report["commit"]
    assert report["passed"] == {"session": True, "rolling": True}
    assert (out / "soak.png").stat().st_size > 10_000
    assert "| session |" in (out / "README.md").read_text()
