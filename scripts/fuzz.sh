#!/usr/bin/env bash
# Builds the libFuzzer targets in tests/fuzz (clang, ASan + UBSan, CPU library) in build/fuzz
# and runs each for a bounded time over its corpus in tests/fuzz/corpus/<target>/.
# Usage: scripts/fuzz.sh [seconds per target, default 30] [target ...]
# The mutation sequence is fixed (FUZZ_SEED, default 1); with FUZZ_RUNS=N each target stops after
# N inputs, so a run repeats exactly (CI). Set another seed or no run limit to explore further.
# A crash leaves crash-*/leak-*/timeout-* files in build/fuzz/artifacts and fails the run; after
# fixing it, add the input to the target's corpus as a regression seed.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-30}
shift || true
BUILD=${FUZZ_BUILD:-build/fuzz}
CXX_FUZZ=${CXX_FUZZ:-$(command -v clang++-14 || command -v clang++ || true)}
if [ -z "$CXX_FUZZ" ]; then
  echo "fuzz: clang++ not found (Debian: apt-get install clang-14 libclang-rt-14-dev)" >&2
  exit 1
fi
cmake -S tests/fuzz -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER="$CXX_FUZZ" >/dev/null
cmake --build "$BUILD" -j "$(nproc)"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for src in tests/fuzz/fuzz_*.cpp; do targets+=("$(basename "$src" .cpp)"); done
fi
mkdir -p "$BUILD/artifacts"
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
for t in "${targets[@]}"; do
  seeds="tests/fuzz/corpus/$t"
  work="$BUILD/corpus/$t"  # new inputs go here, not into the repository
  mkdir -p "$work"
  echo "== fuzzing $t for ${SECONDS_PER_TARGET}s (seeds: $seeds) ==" >&2
  "$BUILD/$t" "$work" "$seeds" -max_total_time="$SECONDS_PER_TARGET" -seed="${FUZZ_SEED:-1}" ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} -timeout=10 \
    -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
    -artifact_prefix="$BUILD/artifacts/$t-" 2>"$BUILD/$t.log" || {
    tail -n 60 "$BUILD/$t.log" >&2
    echo "fuzz: $t failed; reproducer in $BUILD/artifacts/" >&2
    exit 1
  }
  grep -E "stat::number_of_executed_units|cov:" "$BUILD/$t.log" | tail -n 2 >&2 || true
done
