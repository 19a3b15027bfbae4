#!/usr/bin/env bash
# Sets up the environment, builds the C++ library and tests, and runs every test suite.
# CUSENSE_CHECKS=1 also runs the sanitizer build of the C++ tests (scripts/sanitize.sh) and the
# fuzz targets for FUZZ_SECONDS each (scripts/fuzz.sh, default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PATH:/usr/local/cuda/bin"
if [ -z "${CUDA_ARCHS:-}" ]; then
  if nvidia-smi -L >/dev/null 2>&1; then CUDA_ARCHS=native; else CUDA_ARCHS=90; fi
fi
JOBS=$(nproc)
cmake -S . -B build/tests -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCUSENSE_CUDA="${CUSENSE_CUDA:-AUTO}" -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS}" \
  -DPython_EXECUTABLE="$PWD/.venv/bin/python"
cmake --build build/tests -j "$JOBS"
echo "== types (mypy; stubtest in tests/python/test_typing.py) ==" >&2
.venv/bin/python -m mypy
echo "== documentation (mkdocs build --strict) ==" >&2
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir build/site
echo "== C++ tests ==" >&2
ctest --test-dir build/tests --output-on-failure -j "$JOBS"
echo "== Python tests ==" >&2
.venv/bin/python -m pytest -q tests/python "$@"
if [ "${CUSENSE_CHECKS:-0}" = "1" ]; then
  echo "== sanitizers (ASan + UBSan) ==" >&2
  scripts/sanitize.sh
  echo "== fuzzing ==" >&2
  scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
fi
