"""The scripts of examples/python run end to end (CPU only, no network) and print what they
promise."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("pandas")

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python")


@pytest.mark.parametrize("script, line", [
    ("fleet_windows.py", "windows: 12100 rows for 500000 records"),
    ("detect_anomaly.py", "injected spike at sensor 3, t=1500s: found"),
    ("checkpoint_restore.py", "restored run matches the uninterrupted run: True"),
    ("one_shot_unsorted.py", "matches pandas: True"),
])
def test_example_runs(script, line):
    # CUDA_VISIBLE_DEVICES="" keeps the run on the CPU backend, as on a machine without a GPU
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert line in proc.stdout, proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr


def test_every_example_is_tested():
    scripts = {name for name in os.listdir(EXAMPLES) if name.endswith(".py")}
    tested = {params[0] for params in test_example_runs.pytestmark[0].args[1]}
    assert scripts == tested
