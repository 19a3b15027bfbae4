"""Executes every notebook in notebooks/ top to bottom (CPU backend) and fails on any error."""
import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat (requirements-dev.txt)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbclient (requirements-dev.txt)")
pytest.importorskip("ipykernel", reason="notebook tests need ipykernel (requirements-dev.txt)")
pytest.importorskip("matplotlib", reason="the notebooks plot with matplotlib")
pytest.importorskip("pandas", reason="the notebooks use pandas")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "cusense-test-python"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec that starts this very interpreter (sys.executable), so the notebooks import
    the cusense under test, whatever kernels the user has installed."""
    share = tmp_path_factory.mktemp("jupyter")
    spec = share / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cusense tests", "language": "python"}))
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "MPLBACKEND")}
    os.environ["JUPYTER_PATH"] = str(share)
    os.environ["MPLBACKEND"] = "Agg"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    for expected in ("01-quickstart.ipynb", "02-anomalies.ipynb", "03-performance.ipynb"):
        assert expected in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_env):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{path.name}: commit notebooks with outputs stripped"
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=120,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()    # raises CellExecutionError (with the cell and traceback) on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
