#!/usr/bin/env bash
# Sets up the environment, builds the C++ library and tests, and runs every test suite.
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
echo "== C++ tests ==" >&2
ctest --test-dir build/tests --output-on-failure -j "$JOBS"
echo "== Python tests ==" >&2
.venv/bin/python -m pytest -q tests/python "$@"
