#!/usr/bin/env bash
# Builds the library and the C++ tests with AddressSanitizer + UndefinedBehaviorSanitizer (CPU
# backend, g++) in build/asan and runs them; any report fails the run.
# Usage: scripts/sanitize.sh [build dir]   (SANITIZERS=address,undefined by default)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build/asan}
SANITIZERS=${SANITIZERS:-address,undefined}
JOBS=$(nproc)
# Debug (-O0 -g): the quickest to compile; the tests are small.
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCUSENSE_CUDA=OFF \
  -DCUSENSE_SANITIZE="$SANITIZERS" -DCUSENSE_BUILD_TESTS=ON >/dev/null
cmake --build "$BUILD" -j "$JOBS"

# LeakSanitizer needs ptrace-like access; where it cannot run (some containers), leave it off.
LEAKS=1
if ! ASAN_OPTIONS=detect_leaks=1 "$BUILD/tests/cpp/cusense_tests" --gtest_list_tests >/dev/null 2>&1; then
  echo "sanitize: LeakSanitizer does not work here; running without leak detection" >&2
  LEAKS=0
fi
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=$LEAKS:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
echo "== C++ tests under $SANITIZERS (detect_leaks=$LEAKS) ==" >&2
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS"
