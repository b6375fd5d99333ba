#!/usr/bin/env bash
# Crash soak, outside the test suite: the power-cut crash test (kill -9 of
# tgtd + ext4 shutdown without log flush, remount, verify every acknowledged
# durable write) for many iterations per mode. Prints each iteration's line.
# Usage (as root): scripts/crash-soak.sh [ITERATIONS=1000] [GTEST_FILTER=*power_cut*]
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-1000}
filter=${2:-*power_cut*}
scripts/install-deps.sh >/dev/null
cmake --preset release >/dev/null
cmake --build --preset release --target crash_test bs_icbd icbd_tgt_preload >/dev/null
export ICBD_BUILD=$PWD/build/release ICBD_CRASH_ITERATIONS=$iterations
exec build/release/tests/integration/crash_test --gtest_filter="$filter"
