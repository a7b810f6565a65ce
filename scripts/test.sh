#!/usr/bin/env bash
# The whole test suite: installs what is missing (apt), builds, fetches the
# guest kernel for the QEMU test, runs every test with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
start=$(date +%s)
scripts/build.sh
echo "build took $(( $(date +%s) - start )) s"
BUILD_DIR="${BUILD_DIR:-build}"
export MB_GUEST_KERNEL_DIR="${MB_GUEST_KERNEL_DIR:-$PWD/$BUILD_DIR/guest-kernel}"
scripts/fetch-guest-kernel.sh "$MB_GUEST_KERNEL_DIR"
cd "$BUILD_DIR"
ctest --output-on-failure --timeout 900 -j "${CTEST_JOBS:-2}" "$@"
