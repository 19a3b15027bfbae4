"""The documentation site (mkdocs.yml, docs/) builds without warnings, its Python examples run,
and it covers what the package offers: every window type, detector, example script, command
and `cusense run` option."""
import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCS = os.path.join(ROOT, "docs")


def _read(*parts: str) -> str:
    with open(os.path.join(DOCS, *parts), encoding="utf-8") as f:
        return f.read()


def _mkdocs() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "mkdocs")
    if not os.path.exists(exe):
        exe = shutil.which("mkdocs") or ""
    if not exe:
        pytest.skip("mkdocs not installed (requirements-dev.txt)")
    return [exe]


def test_site_builds_strict(tmp_path):
    # strict: a broken link or anchor, a page missing from the nav, a missing snippet file or
    # any other warning fails the build.
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(_mkdocs() + ["build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "windows" / "session" / "index.html").exists()
    # The examples are read from examples/ at build time, not copied into the pages.
    html = (tmp_path / "site" / "examples" / "index.html").read_text(encoding="utf-8")
    assert "Tumbling windows over a generated sensor fleet" in html and "--8&lt;--" not in html


RUNNABLE_PAGES = ["index.md", "concepts.md"] + [
    os.path.join(d, name) for d in ("windows", "detectors")
    for name in sorted(os.listdir(os.path.join(DOCS, d))) if name.endswith(".md")
    and "```python" in _read(d, name)]


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_python_blocks_run(page):
    """The ```python blocks of a page, run in order in one namespace (CPU backend)."""
    blocks = re.findall(r"```python\n(.*?)```", _read(page), flags=re.S)
    code = "import numpy as np, cusense\n" + "\n".join(blocks)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def _block_output(page: str) -> str:
    code = "import numpy as np, cusense\n" + "\n".join(
        re.findall(r"```python\n(.*?)```", _read(page), flags=re.S))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, check=True).stdout


@pytest.mark.parametrize("page, expected", [
    ("detectors/multiscale-z.md", "300 True"),
    ("detectors/rolling-z.md", "250"),
    ("detectors/rolling-mad.md", "250"),
    ("detectors/knn-discord.md", "True"),
    ("detectors/joint-z.md", "True"),
    ("detectors/anomaly-likelihood.md", "True"),
])
def test_detector_examples_print_what_they_say(page, expected):
    assert _block_output(page).split("\n")[-2].strip() == expected


def test_every_window_type_has_a_page():
    import cusense
    nav = open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8").read()
    for cls, page in [(cusense.Tumbling, "tumbling.md"), (cusense.Sliding, "sliding.md"),
                      (cusense.Session, "session.md"), (cusense.Rolling, "count.md")]:
        text = _read("windows", page)
        assert f"cusense.{cls.__name__}(" in text, page
        assert f"windows/{page}" in nav
        for field in dataclasses.fields(cls):
            assert f"`{field.name}" in text or f"{field.name}=" in text, (page, field.name)


def _detector_classes():
    from cusense import detectors as D
    return [c for c in vars(D).values() if isinstance(c, type) and issubclass(c, D.Detector)
            and c is not D.Detector]


def test_every_detector_has_a_page_with_its_parameters():
    nav = open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8").read()
    pages = {name: _read("detectors", name) for name in os.listdir(os.path.join(DOCS, "detectors"))}
    index = pages["index.md"]
    for cls in _detector_classes():
        signature = f"cusense.detectors.{cls.__name__}("
        found = [name for name, text in pages.items() if text.lstrip().startswith(f"# {cls.__name__}")]
        assert found, f"no page docs/detectors/*.md titled {cls.__name__}"
        text = pages[found[0]]
        assert signature in text, found[0]
        assert f"detectors/{found[0]}" in nav and f"]({found[0]})" in index, found[0]
        # The signature line lists every parameter with its default.
        line = next(line for line in text.splitlines() if signature in line)
        for field in dataclasses.fields(cls):
            assert f"{field.name}=" in line, (cls.__name__, field.name)
            if isinstance(field.default, (int, float)) and not isinstance(field.default, bool):
                assert f"{field.name}={field.default!r}" in line, (cls.__name__, field.name)


def test_every_example_script_is_on_the_examples_page():
    page = _read("examples.md")
    scripts = sorted(n for n in os.listdir(os.path.join(ROOT, "examples", "python")) if n.endswith(".py"))
    for name in scripts:
        assert f'--8<-- "examples/python/{name}"' in page, name


def test_every_command_and_run_option_is_documented():
    from cusense.cli import build_parser
    page = _read("cli.md")
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in sub.choices:
        assert f"`cusense {name}" in page, name
    run = sub.choices["run"]
    for action in run._actions:
        for opt in action.option_strings:
            if opt in ("-h", "--help"):
                continue
            assert f"`{opt}" in page or f", `{opt}`" in page, opt


def test_readme_points_at_the_docs():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "mkdocs build --strict" in readme and "## Documentation" in readme


def test_every_serve_pipeline_option_is_documented():
    """Every option of the service's [pipeline] table is in docs/service.md's configuration."""
    from cusense.service.config import PIPELINE_KEYS
    config = _read("service.md").split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for key in PIPELINE_KEYS:
        if key in ("n", "min_periods"):   # count windows: `cusense run --config` only
            continue
        assert re.search(rf"\b{key}\b", config), key
