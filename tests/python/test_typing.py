"""Typing: python/cusense/_core.pyi matches the compiled module (mypy stubtest), the package
type-checks with the configuration of pyproject.toml, and the public annotations catch misuse."""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("mypy")

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG = os.path.join(ROOT, "pyproject.toml")


def _run(args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def test_stub_matches_the_compiled_module(tmp_path):
    # Missing or extra names, wrong argument names, kinds or defaults, wrong constant values.
    # The stub is the repository's (MYPYPATH); the module is the one Python imports (installed
    # by scripts/setup.sh, or built into python/cusense), found from an empty directory.
    env = dict(os.environ, MYPYPATH=os.path.join(ROOT, "python"))
    proc = subprocess.run([sys.executable, "-m", "mypy.stubtest", "cusense._core",
                           "--mypy-config-file", CONFIG, "--allowlist",
                           os.path.join(ROOT, "tests", "python", "stubtest_allowlist.txt")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_package_type_checks():
    proc = _run(["mypy", "--config-file", CONFIG])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _check_user_code(tmp_path, code: str) -> subprocess.CompletedProcess:
    path = tmp_path / "user.py"
    path.write_text(textwrap.dedent(code))
    return _run(["mypy", "--config-file", CONFIG, "--cache-dir", str(tmp_path / "cache"), str(path)])


def test_public_api_annotations_accept_documented_use(tmp_path):
    proc = _check_user_code(tmp_path, """
        import datetime
        import numpy as np
        import cusense
        from cusense import detectors as D

        pipe = cusense.Pipeline(cusense.Sliding("10s", np.timedelta64(2, "s")), aggs=["mean", "p99"],
                                max_out_of_orderness=datetime.timedelta(seconds=5),
                                detectors=[D.EWMA(alpha=0.1), D.Silence(timeout="1min")])
        pipe.push(np.zeros(3, np.uint32), [1, 2, 3], [1.0, 2.0, 3.0], time_unit="s")
        rows: int = len(pipe.poll()) + len(pipe.flush())
        late: int = pipe.stats["records_late"]
        windows, late_records = cusense.window_aggregate([1], [2], [3.0], cusense.Tumbling(10),
                                                         max_out_of_orderness=0, return_late=True)
        only: cusense.Result = cusense.window_aggregate([1], [2], [3.0], cusense.Rolling(3))
        scores: np.ndarray = cusense.score([1, 2], [1.0, 2.0], detector=D.default())
        names: list[str] = [d.name for d in cusense.devices()]
    """)
    assert proc.returncode == 0, proc.stdout


def test_public_api_annotations_catch_misuse(tmp_path):
    proc = _check_user_code(tmp_path, """
        import cusense

        pipe = cusense.Pipeline(cusense.Tumbling("1s"), cpu_threads="4")
        pipe.checkpoint(42)
        windows = cusense.window_aggregate([1], [2], [3.0], "1min")
        table: cusense.Result = cusense.window_aggregate([1], [2], [3.0], cusense.Tumbling(1),
                                                         return_late=True)
        cusense.Pipeline.restore("state.ckpt").push_batch([1], [2], [3.0])
    """)
    out = proc.stdout
    assert proc.returncode == 1, out
    for line in (4, 5, 6, 7, 9):
        assert f"user.py:{line}: error" in out, out
