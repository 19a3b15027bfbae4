#!/usr/bin/env bash
# Sets up the environment, builds the library, the Python module and the C++ tests once (in
# build/dev, scripts/setup.sh), and runs every test suite.
# CUSENSE_CHECKS=1 also runs the sanitizer build of the C++ tests (scripts/sanitize.sh) and the
# fuzz targets for FUZZ_SECONDS each (scripts/fuzz.sh, default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
# One build (scripts/setup.sh, build/dev): the library, the Python module and the C++ tests.
CUSENSE_BUILD_TESTS=ON scripts/setup.sh
JOBS=${CUSENSE_JOBS:-$(nproc)}
echo "== types (mypy; stubtest in tests/python/test_typing.py) ==" >&2
.venv/bin/python -m mypy
echo "== documentation (mkdocs build --strict) ==" >&2
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir build/site
echo "== set-up done in ${SECONDS}s ==" >&2
echo "== C++ tests ==" >&2
ctest --test-dir build/dev --output-on-failure -j "$JOBS"
echo "== Python tests ==" >&2
.venv/bin/python -m pytest -q tests/python "$@"
if [ "${CUSENSE_CHECKS:-0}" = "1" ]; then
  echo "== sanitizers (ASan + UBSan) ==" >&2
  scripts/sanitize.sh
  echo "== fuzzing ==" >&2
  scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
fi
