"""`cmake --install` of the C++ library gives a CMake package another project can use: build a
CPU-only cusense, install it into a temporary prefix, then configure, build and run the consumer
in examples/cpp against it with find_package(cusense).

Slow-ish (a C++ build, about a minute on 2 cores; incremental afterwards): the build tree is kept
in build/install-test (or $CUSENSE_INSTALL_TEST_DIR). CUSENSE_INSTALL_TEST_CUDA=AUTO|ON builds
the installed library with the CUDA backend instead (default OFF)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                                reason="needs cmake and a C++ compiler")


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_install_and_build_example_consumer(tmp_path):
    work = Path(os.environ.get("CUSENSE_INSTALL_TEST_DIR", ROOT / "build" / "install-test"))
    cuda = os.environ.get("CUSENSE_INSTALL_TEST_CUDA", "OFF")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    jobs = str(os.cpu_count() or 2)
    lib_build = work / f"lib-cuda-{cuda.lower()}"
    prefix = tmp_path / "prefix"
    _run(["cmake", "-S", ROOT, "-B", lib_build, *gen, "-DCMAKE_BUILD_TYPE=Release",
          f"-DCUSENSE_CUDA={cuda}", "-DCUSENSE_BUILD_TESTS=OFF", "-DCUSENSE_BUILD_PYTHON=OFF",
          "-DCUSENSE_BUILD_BENCHMARKS=OFF"])
    _run(["cmake", "--build", lib_build, "-j", jobs])
    _run(["cmake", "--install", lib_build, "--prefix", prefix])

    installed = {p.relative_to(prefix).as_posix() for p in prefix.rglob("*") if p.is_file()}
    libdir = next(p.parent.parent.parent for p in prefix.rglob("cusenseConfig.cmake"))
    assert any(f.endswith("include/cusense/cusense.hpp") for f in installed)
    assert any(f.endswith("libcusense.a") for f in installed)
    assert (libdir / "cmake" / "cusense" / "cusenseConfigVersion.cmake").is_file()
    assert (libdir / "cmake" / "cusense" / "cusenseTargets.cmake").is_file()

    # the consumer sees only the installed prefix: no path into the source tree
    example = tmp_path / "example-src"
    shutil.copytree(ROOT / "examples" / "cpp", example)
    ex_build = tmp_path / "example-build"
    configure = _run(["cmake", "-S", example, "-B", ex_build, *gen, "-DCMAKE_BUILD_TYPE=Release",
                      f"-DCMAKE_PREFIX_PATH={prefix}"])
    assert "cusense 0.1.0 found" in configure
    _run(["cmake", "--build", ex_build, "-j", jobs])
    exe = ex_build / "stream_windows"
    out = _run([exe, "4", "100000", "10000", "cpu"])
    assert "backend cpu" in out
    assert "records pushed 100000" in out
    assert "first windows:" in out and "last windows:" in out
    emitted = int(out.strip().splitlines()[-1].split()[-1])
    assert emitted > 0
    # the installed library rejects an unusable backend with a clear error
    if cuda == "OFF":
        proc = subprocess.run([exe, "4", "1000", "100", "cuda"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3 and "backend unavailable" in proc.stderr
