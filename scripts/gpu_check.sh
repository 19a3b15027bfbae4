#!/usr/bin/env bash
# Verifies and measures the CUDA backend on a machine with a GPU, in steps that each fit a
# short time slot:  scripts/gpu_check.sh build|test|sanitize|bench|all  [results dir]
#   build     configure + build the library, C++ tests and benchmarks for the local GPU
#   test      C++ tests (CUDA cases included) and the Python suite on the CUDA backend
#   sanitize  compute-sanitizer memcheck and racecheck over the CUDA test cases
#   bench     benchmark suite (quick unless BENCH_MODE=full) + C++ copy-bandwidth benchmarks
# Logs and results go to the results dir (default build/gpu-check). Python packages missing
# on the machine may be provided as wheels in .whl/ (installed into a private site dir).
set -uo pipefail
cd "$(dirname "$0")/.."
step=${1:-all}
out=${2:-${OUT:-build/gpu-check}}
mkdir -p "$out"
export PATH="$PATH:/usr/local/cuda/bin" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BUILD=build/gpu
JOBS=$(nproc)
PKG=/tmp/cusense-pkg

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cusense-site .whl/*.whl \
    && export PYTHONPATH=/tmp/cusense-site${PYTHONPATH:+:$PYTHONPATH}
fi

do_build() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCUSENSE_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=native -DCUSENSE_BUILD_BENCHMARKS=ON -DCUSENSE_BUILD_PYTHON=ON \
    -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" \
    -DPython_EXECUTABLE="$(command -v $PY)" >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; return 1; }
  cmake --build "$BUILD" -j "$JOBS" >"$out/build.log" 2>&1
  local rc=$?
  grep -E "error|warning|FAILED" "$out/build.log" | head -40
  [ $rc -eq 0 ] || return $rc
  # The package is the Python sources plus the extension module of this one build.
  rm -rf "$PKG" && mkdir -p "$PKG" && cp -r python/cusense "$PKG/" && cp "$BUILD"/_core*.so "$PKG/cusense/"
}

py_env() { export PYTHONPATH=$PKG${PYTHONPATH:+:$PYTHONPATH}; }

do_test() {
  ctest --test-dir "$BUILD" --output-on-failure -j 4 2>&1 | tee "$out/ctest.log" | tail -25
  py_env
  $PY -c "import cusense; print('devices:', cusense.devices())"
  $PY -m pytest -q -ra tests/python -k "cuda" 2>&1 | tee "$out/pytest-cuda.log" | tail -40
}

# One compute-sanitizer run per test suite, each under SANITIZE_SECONDS, so that one slow suite
# does not hide the others; one summary line per (tool, suite).
do_sanitize() {
  local exe="$BUILD/tests/cpp/cusense_tests" limit=${SANITIZE_SECONDS:-120}
  local suites
  # suites of the test binary, without those of the CPU backend (no device code)
  suites=$("$exe" --gtest_list_tests | grep -v -e '^ ' -e '^Running' | sed 's/ .*//; s/\.$//' | grep -v '/cpu$')
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
    for suite in $suites; do
      local log="$out/sanitizer-$tool-${suite//\//_}.log"
      timeout "$limit" compute-sanitizer --tool "$tool" --error-exitcode 9 "$exe" --gtest_filter="$suite.*" >"$log" 2>&1
      local rc=$?
      case $rc in
        0) echo "compute-sanitizer $tool $suite: clean" ;;
        124) echo "compute-sanitizer $tool $suite: stopped after ${limit}s" ;;
        *) echo "compute-sanitizer $tool $suite: exit $rc"; grep -E "ERROR SUMMARY|Invalid|Race|FAILED" "$log" | head -5 ;;
      esac
    done
  done
}

do_bench() {
  py_env
  "$BUILD/benchmarks/cpp/cusense_bench" --benchmark_filter='h2d|d2d' \
    --benchmark_out="$out/bench_copy.json" --benchmark_out_format=json 2>&1 | tail -15
  $PY benchmarks/run.py --"${BENCH_MODE:-quick}" --out "$out/bench" 2>&1 | tee "$out/bench.log" | tail -40
}

case "$step" in
  build) do_build ;;
  test) do_test ;;
  sanitize) do_sanitize ;;
  bench) do_bench ;;
  all) do_build && do_test && do_sanitize && do_bench ;;
  *) echo "usage: $0 build|test|sanitize|bench|all [results dir]" >&2; exit 2 ;;
esac
