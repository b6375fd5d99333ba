#!/usr/bin/env bash
# The README's test command: installs dependencies, builds the release preset and
# runs the whole test suite (unit, integration against a real tgtd and libiscsi,
# libiscsi's conformance suite), then, in one clang ASan+UBSan build, the unit
# and parser tests again and the fuzz targets for a bounded time.
# Usage: scripts/test.sh [ctest arguments...]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release
# The sanitizer build (below) compiles meanwhile at the lowest CPU priority:
# the release tests wait on disks, sockets and timers much of the time and it
# takes only what they leave idle, so the suite does not pay for it twice.
sanitized_targets="sanitized_tests bsopts_fuzz scsi_command_fuzz frame_fuzz disk_format_fuzz peer_frame_fuzz"
cmake --preset fuzz >/dev/null
setsid nice -n 19 cmake --build --preset fuzz --target $sanitized_targets >build/fuzz-build.log 2>&1 &
fuzz_build=$!
trap 'kill -- -$fuzz_build 2>/dev/null || true' EXIT  # the build and its compilers
# Tests run two at a time: each integration test owns its own tgtd and ports.
# In CI nothing may skip: a missing prerequisite fails the test instead.
export ICBD_FORBID_SKIP=1
ctest --test-dir build/release --output-on-failure -j2 "$@"
if [ -f build/release/tests/conformance/out/summary.txt ]; then
  echo "--- iscsi-test-cu, rdwr vs icbd (tests/conformance/run_conformance.sh) ---"
  cat build/release/tests/conformance/out/summary.txt
fi

# Sanitizers, one clang build (preset 'fuzz', ASan+UBSan, UB fatal) for two
# jobs: the unit tests of common, the engine and the LUN, the tests of what
# parses a peer's or a local user's bytes (replication codecs and paths,
# blockd's config, peer and control protocols, its state store), and the
# fuzz targets below. tgtd itself is not instrumented, so the module-in-tgtd
# tests run in the release build only.
if ! wait $fuzz_build; then
  tail -60 build/fuzz-build.log
  echo "test: the sanitizer build failed (build/fuzz-build.log)" >&2
  exit 1
fi
trap - EXIT
ctest --test-dir build/fuzz --output-on-failure -j2 -L unit
ctest --test-dir build/fuzz --output-on-failure -j2 \
  -R '^(replicator\.(wire_format|compression|compression_pool|image_path)_test|daemon\.(config|peer_protocol|control_protocol|store)_test)$'

# Fuzzing, time-bounded: the bsopts parser, a LUN's SCSI command execution,
# the on-disk formats a LUN opens, the replication frame decoder and blockd's
# peer messages. A crash fails the run and leaves its input in
# build/fuzz/artifacts.
mkdir -p build/fuzz/artifacts
fuzz() {  # TARGET: fuzz it for the time bound; its log in build/fuzz/TARGET.log
  build/fuzz/tests/fuzz/$1 -max_total_time="${ICBD_FUZZ_SECONDS:-15}" -rss_limit_mb=4096 \
    -artifact_prefix=build/fuzz/artifacts/$1- -print_final_stats=1 2>build/fuzz/$1.log
}
# Two at a time, one per CPU: each still gets its whole time bound of CPU.
set -- bsopts_fuzz scsi_command_fuzz frame_fuzz disk_format_fuzz peer_frame_fuzz
while [ $# -gt 0 ]; do
  pair=("$1"); shift
  if [ $# -gt 0 ]; then pair+=("$1"); shift; fi
  declare -A fuzz_pid=()
  for f in "${pair[@]}"; do fuzz "$f" & fuzz_pid[$f]=$!; done
  for f in "${pair[@]}"; do
    wait "${fuzz_pid[$f]}" || { tail -40 build/fuzz/$f.log; echo "test: $f found a crash" >&2; exit 1; }
    echo "fuzz: $f: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' build/fuzz/$f.log | grep -o '[0-9]*$') inputs, no crash"
  done
done
echo "test: all tests passed"
