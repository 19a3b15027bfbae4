"""scripts/setup.sh builds once: the Python module the tests import and the C++ tests come from
the same CMake tree (build/dev), with CUDA compiled when nvcc exists. Checked on checkouts set up
by the scripts (skipped elsewhere, e.g. a package installed from a wheel)."""
import filecmp
import glob
import os
import re
import shutil

import pytest

import cusense

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, "build", "dev")


def _cache() -> dict[str, str]:
    path = os.path.join(BUILD, "CMakeCache.txt")
    if not os.path.isfile(path):
        pytest.skip("not set up by scripts/setup.sh (no build/dev)")
    entries = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):[A-Z]+=(.*)$", line.rstrip("\n"))
            if m:
                entries[m.group(1)] = m.group(2)
    return entries


def test_python_imports_the_module_of_the_one_build():
    _cache()
    built = glob.glob(os.path.join(BUILD, "_core*.so"))
    assert len(built) == 1, built
    imported = cusense._core.__file__
    if os.path.dirname(os.path.realpath(imported)) == os.path.join(ROOT, "python", "cusense"):
        pytest.skip("cusense imported from the source tree, not installed by scripts/setup.sh")
    assert filecmp.cmp(built[0], imported, shallow=False), (built[0], imported)


def test_cpp_tests_and_library_share_the_build():
    cache = _cache()
    if cache.get("CUSENSE_BUILD_TESTS") != "ON":
        pytest.skip("C++ tests not configured (scripts/demo.sh only)")
    assert os.path.isfile(os.path.join(BUILD, "tests", "cpp", "cusense_tests"))
    assert os.path.isfile(os.path.join(BUILD, "CTestTestfile.cmake"))


def test_cuda_compiled_where_nvcc_exists():
    cache = _cache()
    if cache.get("CUSENSE_CUDA") == "OFF" or not (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")):
        pytest.skip("no nvcc, or CUSENSE_CUDA=OFF")
    assert cache.get("CMAKE_CUDA_COMPILER"), "nvcc exists but the build has no CUDA compiler"
    assert cusense._core.cuda_built()
    archs = cache.get("CMAKE_CUDA_ARCHITECTURES", "")
    assert archs and ";" not in archs, f"one CUDA architecture in the test build, got {archs!r}"
