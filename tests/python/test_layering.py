"""The layers of the C++ code: kernels/ (types, operators, engines and their support) depends on
nothing in host/ (pipeline, engine registry, checkpoint files, detector runner), which builds on
kernels/. Checked on the include directives: every cusense header a kernels/ file includes must
live under kernels/include."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)


def includes(path: Path):
    return INCLUDE.findall(path.read_text(encoding="utf-8"))


def kernels_files():
    exts = {".hpp", ".cpp", ".cu", ".cuh"}
    return [p for p in (ROOT / "kernels").rglob("*") if p.suffix in exts]


def test_kernels_include_nothing_from_host():
    files = kernels_files()
    assert len(files) > 20
    offending = []
    for f in files:
        for inc in includes(f):
            if inc.startswith("cusense/"):
                if not (ROOT / "kernels" / "include" / inc).is_file():
                    offending.append(f"{f.relative_to(ROOT)}: <{inc}>")
            elif "host/" in inc or inc.startswith(".."):
                if not (f.parent / inc).resolve().is_relative_to(ROOT / "kernels"):
                    offending.append(f"{f.relative_to(ROOT)}: \"{inc}\"")
    assert not offending, "kernels/ includes host/ headers:\n" + "\n".join(offending)


def test_every_cusense_header_has_one_home():
    host = {p.relative_to(ROOT / "host" / "include") for p in (ROOT / "host" / "include").rglob("*.hpp")}
    kern = {p.relative_to(ROOT / "kernels" / "include") for p in (ROOT / "kernels" / "include").rglob("*.hpp")}
    assert host and kern
    assert not host & kern, f"headers in both layers: {sorted(map(str, host & kern))}"
