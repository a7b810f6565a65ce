#!/usr/bin/env bash
# The whole test suite: installs what is missing (apt), builds, fetches the
# guest kernel for the QEMU test, runs every test with ctest, then a short
# run of every fuzz target (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
start=$(date +%s)
scripts/build.sh
echo "build took $(( $(date +%s) - start )) s"
BUILD_DIR="${BUILD_DIR:-build}"
export MB_GUEST_KERNEL_DIR="${MB_GUEST_KERNEL_DIR:-$PWD/$BUILD_DIR/guest-kernel}"
scripts/fetch-guest-kernel.sh "$MB_GUEST_KERNEL_DIR"
status=0
(cd "$BUILD_DIR" && ctest --output-on-failure --timeout 900 -j "${CTEST_JOBS:-2}" "$@") || status=$?
# Each fuzz target for MB_FUZZ_SECONDS (default 20 s) on its corpus, built
# with clang in build-fuzz/ (scripts/fuzz.sh); MB_FUZZ_SECONDS=0 skips it.
if [[ "${MB_FUZZ_SECONDS:-20}" != 0 ]]; then
  scripts/fuzz.sh || status=$?
fi
exit "$status"
