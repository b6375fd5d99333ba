#!/usr/bin/env bash
# The README's test command: installs dependencies, builds the release preset and
# runs the whole test suite (unit, integration against a real tgtd and libiscsi,
# libiscsi's conformance suite), then the unit tests again under ASan+UBSan.
# Usage: scripts/test.sh [ctest arguments...]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release
# Tests run two at a time: each integration test owns its own tgtd and ports.
# In CI nothing may skip: a missing prerequisite fails the test instead.
export ICBD_FORBID_SKIP=1
ctest --test-dir build/release --output-on-failure -j2 "$@"
if [ -f build/release/tests/conformance/out/summary.txt ]; then
  echo "--- iscsi-test-cu, rdwr vs icbd (tests/conformance/run_conformance.sh) ---"
  cat build/release/tests/conformance/out/summary.txt
fi

# Sanitizers: the engine and LUN unit tests under ASan+UBSan (tgtd itself is
# not instrumented, so the module-in-tgtd tests run in the release build only).
cmake --preset debug-asan >/dev/null
cmake --build --preset debug-asan --target bsopts_test io_engine_test lun_test
ctest --test-dir build/debug-asan --output-on-failure -j2 -L unit
echo "test: all tests passed"
