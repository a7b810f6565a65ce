#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz/ and
# runs each for MB_FUZZ_SECONDS (default 20) on its corpus (ctest -L fuzz).
# A longer run of one target, e.g. 10 minutes:
#   build-fuzz/tests/fuzz/fuzz_host_step -max_total_time=600 \
#     -print_final_stats=1 /tmp/new tests/fuzz/corpus/host_step
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${FUZZ_BUILD_DIR:-build-fuzz}"
JOBS="${JOBS:-$(nproc)}"
SECONDS_EACH="${MB_FUZZ_SECONDS:-20}"
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMB_FUZZ=ON \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DMB_FUZZ_SECONDS="$SECONDS_EACH"
else
  cmake "$BUILD_DIR" -DMB_FUZZ_SECONDS="$SECONDS_EACH" >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$JOBS" --target fuzzers
cd "$BUILD_DIR"
ctest -L fuzz --output-on-failure "$@"
