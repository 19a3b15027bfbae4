#!/usr/bin/env bash
# Creates .venv with the pinned environment and builds/installs the cusense package into it.
# One CMake build tree, build/dev, holds the library, the Python extension module and (with
# CUSENSE_BUILD_TESTS=ON, as scripts/test.sh asks) the C++ tests: each source is compiled once,
# and a second run rebuilds only what changed. Progress: the build's [n/N] lines on stderr.
# CUDA: compiled when nvcc is found, for the local GPU when one is present (else sm_90 only,
# to check that it compiles). Override with CUSENSE_CUDA=OFF|ON and CUDA_ARCHS=...;
# CUSENSE_JOBS=N limits the parallel compile jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
echo "== Python environment (.venv, requirements-dev.txt) ==" >&2
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt

export PATH="$PATH:/usr/local/cuda/bin"
if [ -z "${CUDA_ARCHS:-}" ]; then
  if nvidia-smi -L >/dev/null 2>&1; then CUDA_ARCHS=native; else CUDA_ARCHS=90; fi
fi
if [ -n "${CUSENSE_JOBS:-}" ]; then export CMAKE_BUILD_PARALLEL_LEVEL="$CUSENSE_JOBS"; fi
# The C++ tests stay in the build once scripts/test.sh has added them (so scripts/demo.sh after
# scripts/test.sh does not drop them and the next test run does not rebuild them).
if [ -z "${CUSENSE_BUILD_TESTS:-}" ] && grep -q '^CUSENSE_BUILD_TESTS:[A-Z]*=ON' build/dev/CMakeCache.txt 2>/dev/null; then
  CUSENSE_BUILD_TESTS=ON
fi
TESTS=${CUSENSE_BUILD_TESTS:-OFF}
echo "== building cusense in build/dev (CUSENSE_CUDA=${CUSENSE_CUDA:-AUTO}, CUDA architectures" \
     "${CUDA_ARCHS}, C++ tests ${TESTS}); a first build takes minutes ==" >&2
# pip -v streams the CMake and Ninja output ([n/N] per compiled file); the grep keeps those
# lines, warnings and errors and drops pip's own chatter.
set +e
.venv/bin/python -m pip install -v --no-build-isolation . \
  -Cbuild-dir=build/dev \
  -Ccmake.define.CUSENSE_CUDA="${CUSENSE_CUDA:-AUTO}" \
  -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS}" \
  -Ccmake.define.CUSENSE_BUILD_TESTS="${TESTS}" 2>&1 \
  | grep --line-buffered -E '^\s*\[[0-9]+/[0-9]+\]|-- cusense|[Ww]arning|[Ee]rror|FAILED|Successfully installed' >&2
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "build failed (rerun: .venv/bin/python -m pip install -v --no-build-isolation . -Cbuild-dir=build/dev)" >&2
  exit "$status"
fi
