#!/usr/bin/env bash
# Creates .venv with the pinned environment and builds/installs the cusense package into it.
# CUDA: compiled when nvcc is found, for the local GPU when one is present (else sm_90 only,
# to check that it compiles). Override with CUSENSE_CUDA=OFF|ON and CUDA_ARCHS=...
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt

export PATH="$PATH:/usr/local/cuda/bin"
if [ -z "${CUDA_ARCHS:-}" ]; then
  if nvidia-smi -L >/dev/null 2>&1; then CUDA_ARCHS=native; else CUDA_ARCHS=90; fi
fi
echo "building cusense (CUSENSE_CUDA=${CUSENSE_CUDA:-AUTO}, CUDA architectures ${CUDA_ARCHS})" >&2
.venv/bin/python -m pip install -q --no-build-isolation . \
  -Ccmake.define.CUSENSE_CUDA="${CUSENSE_CUDA:-AUTO}" \
  -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS}"
