#!/usr/bin/env bash
# Conformance: libiscsi's iscsi-test-cu (all tests, destructive ones included)
# against tgt's rdwr backend and our icbd backend on the same tgtd, first with
# the LU's default parameters, then with thin_provisioning=1. icbd runs as a
# raw LUN ("icbd"), as a client overlay over a golden file ("overlay", the
# golden file full of non-zero data so that a block leaking through from it
# shows) and as a raw LUN behind a write-back cache smaller than the LUN
# ("cached": 64 MiB in front of 128 MiB, so the flusher works during the run)
# and as a raw LUN with direct=writes ("direct": O_DIRECT writes beside cached
# reads; only the tests that write, to keep the suite short) and with direct=1
# ("direct1": every read and write O_DIRECT, so unaligned or short buffers
# must be bounced both ways; the tests that read or write). In each mode
# every test that passes for rdwr must pass for each icbd LUN. Prints every
# summary.
# Usage: run_conformance.sh [OUTDIR]   (needs ICBD_BUILD; run as root)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../scripts/lib/tgtd.sh"
out=${1:-$(mktemp -d /tmp/icbd-conformance.XXXXXX)}
mkdir -p "$out"
# Everything this script prints is also kept in summary.txt (scripts/test.sh shows it).
exec > >(tee "$out/summary.txt") 2>&1
work=$(mktemp -d /tmp/icbd-conformance-img.XXXXXX)

cleanup() { tgtd_stop; rm -rf "$work"; }
trap cleanup EXIT
trap "exit 130" INT TERM

# The LUNs' metrics files stay with the outputs: a run that hangs shows where.
export ICBD_METRICS_DIR="$out/metrics"
rm -rf "$ICBD_METRICS_DIR"
TGTD_LOG="$out/tgtd.log" tgtd_start
iqn=iqn.2026-11.org.icbd:conformance
backends="rdwr icbd overlay cached direct direct1"
truncate -s 128M "$work/rdwr.img" "$work/icbd.img" "$work/cached.img" "$work/direct.img" "$work/direct1.img"
# Golden: a repeating non-zero pattern (quick to make, obviously not zeros).
head -c 1M /dev/urandom >"$work/chunk"
for _ in $(seq 128); do cat "$work/chunk"; done >"$work/golden.img"
add_lun() {  # TID NAME ARGS...
  tgtd_adm --op new --mode target --tid "$1" -T "$iqn-$2"
  tgtd_adm --op new --mode logicalunit --tid "$1" --lun 1 "${@:3}"
  tgtd_adm --op bind --mode target --tid "$1" -I ALL
}
add_lun 1 rdwr -b "$work/rdwr.img" --bstype rdwr
add_lun 2 icbd -b "$work/icbd.img" --bstype icbd
add_lun 3 overlay -b "$work/golden.img" --bstype icbd --bsopts "overlay=$work/client.ovl"
add_lun 4 cached -b "$work/cached.img" --bstype icbd --bsopts "cache=$work/lun.cache;cache_size=64M"
add_lun 5 direct -b "$work/direct.img" --bstype icbd --bsopts "direct=writes"
add_lun 6 direct1 -b "$work/direct1.img" --bstype icbd --bsopts "direct=1"
# The tests a backend runs (a pattern on their names; empty: all), and the
# subset of a failure list they cover.
subset_of() { case $1 in direct) echo 'Residual|Write' ;; direct1) echo 'Residual|Write|Read' ;; *) echo '' ;; esac; }
tests_of() {
  local re; re=$(subset_of "$1")
  if [ -n "$re" ]; then echo "$tests" | tr , '\n' | grep -E "$re" | paste -sd,; else echo "$tests"; fi
}
covered() {
  local re; re=$(subset_of "$1")
  if [ -n "$re" ]; then grep -E "$re" "$2" || true; else cat "$2"; fi
}

# What a run that did not finish left behind: is tgtd blocked in the kernel,
# and what does each icbd LUN hold (commands in flight, cache)?
dump_hang() {  # BACKEND MODE
  echo "--- $1 ($2) did not finish: tgtd $(grep -m1 '^State' /proc/$TGTD_PID/status 2>/dev/null), wchan $(cat /proc/$TGTD_PID/wchan 2>/dev/null)"
  cat /proc/$TGTD_PID/stack 2>/dev/null | head -12
  python3 - "$ICBD_METRICS_DIR" <<'PY' || true
import os, struct, sys
d = sys.argv[1]
for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    b = open(os.path.join(d, f), "rb").read()
    if len(b) < 5136:
        continue
    name = b[64:128].split(b"\0")[0].decode(errors="replace")
    # docs/metrics.md: queue_depth at 5088, then the cache figures.
    qd, total, used, dirty, flushed, commits = struct.unpack_from("<6Q", b, 5088)
    print(f"  {name}: in flight {qd}; cache blocks total {total} used {used} dirty {dirty}, written back {flushed} B, commits {commits}")
PY
}

# The names of failed tests, one "Suite.Test" per line.
failed_tests() { sed -n 's/^Suite \(.*\), Test \(.*\) had failures:$/\1.\2/p' "$1" | sort -u; }
qstat() { if [ -s "$1" ]; then sed 's/^[^ ]* *//; s/^$/failed/' "$1"; else echo passed; fi; }
summary() { grep -E '^ +tests ' "$1" | awk '{printf "total %s ran %s passed %s failed %s", $2, $3, $4, $5}'; }

# Every test once (the ALL family), except one that hangs tgtd's iSCSI layer for
# every backend: COMPARE AND WRITE with a Data-Out size that does not match the
# CDB (tgt waits for data that never comes). It runs on its own, time-bounded.
quarantined=ALL.CompareAndWrite.InvalidDataOutSize
tests=$(iscsi-test-cu -l | grep -E '^ALL\.[^.]+\.[^.]+$' | grep -vx "$quarantined" | paste -sd,)

run_cu() {  # BACKEND MODE TESTS SECONDS OUTFILE
  timeout "$4" iscsi-test-cu -d -n -t "$3" "iscsi://127.0.0.1:$TGTD_PORT/$iqn-$1/1" >"$5" 2>&1
}

status=0
for mode in default thin; do
  if [ "$mode" = thin ]; then
    for tid in 1 2 3 4 5 6; do
      tgtd_adm --op update --mode logicalunit --tid $tid --lun 1 --params thin_provisioning=1
    done
  fi
  # The backends run side by side: separate targets, separate files. A bound
  # on each run: a lost completion must fail the suite, not hang it.
  declare -A pid qrc
  for b in $backends; do
    run_cu $b "$mode" "$(tests_of $b)" 500 "$out/$b-$mode.txt" &
    pid[$b]=$!
  done
  for b in $backends; do wait ${pid[$b]} || true; done
  for b in $backends; do
    run_cu $b "$mode" "$quarantined" 20 "$out/$b-$mode-quarantined.txt" &
    pid[$b]=$!
  done
  for b in $backends; do qrc[$b]=0; wait ${pid[$b]} || qrc[$b]=$?; done
  for b in $backends; do
    q=${qrc[$b]}
    if [ "$q" = 124 ]; then
      echo "${quarantined#ALL.} (hung, killed after 20 s)" >"$out/$b-$mode.quarantined"
    elif grep -q 'had failures' "$out/$b-$mode-quarantined.txt"; then
      echo "${quarantined#ALL.}" >"$out/$b-$mode.quarantined"
    else
      : >"$out/$b-$mode.quarantined"
    fi
  done
  for b in $backends; do
    if ! grep -q '^Run Summary' "$out/$b-$mode.txt"; then
      echo "conformance: iscsi-test-cu against $b ($mode) did not finish; see $out/$b-$mode.txt" >&2
      dump_hang "$b" "$mode" >&2
      status=1
    fi
    { failed_tests "$out/$b-$mode.txt"; sed 's/ (.*//' "$out/$b-$mode.quarantined"; } | sort -u >"$out/$b-$mode.failed"
  done
  for b in $backends; do
    echo "== $mode: $b: $(summary "$out/$b-$mode.txt"); ${quarantined#ALL.}: $(qstat "$out/$b-$mode.quarantined")"
  done
  for b in ${backends#rdwr }; do
    covered $b "$out/rdwr-$mode.failed" >"$out/rdwr-$mode.failed-$b"
    regress=$(comm -13 "$out/rdwr-$mode.failed-$b" "$out/$b-$mode.failed")
    better=$(comm -23 "$out/rdwr-$mode.failed-$b" "$out/$b-$mode.failed")
    both=$(comm -12 "$out/rdwr-$mode.failed-$b" "$out/$b-$mode.failed")
    [ -n "$both" ] && echo "   $b: failing for rdwr too: $(echo $both)"
    [ -n "$better" ] && echo "   $b: failing for rdwr only ($b passes): $(echo $better)"
    if [ -n "$regress" ]; then
      echo "   REGRESSION: pass for rdwr, fail for $b: $(echo $regress)"
      status=1
    fi
  done
done
if ! kill -0 "$TGTD_PID" 2>/dev/null; then
  echo "conformance: tgtd died during the run; log: $out/tgtd.log" >&2
  status=1
fi
echo "conformance: outputs in $out"
exit $status
