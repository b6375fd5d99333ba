#!/usr/bin/env bash
# Conformance: libiscsi's iscsi-test-cu (all tests, destructive ones included)
# against tgt's rdwr backend and our icbd backend on the same tgtd, first with
# the LU's default parameters, then with thin_provisioning=1. In each mode every
# test that passes for rdwr must pass for icbd. Prints both summaries.
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

TGTD_LOG="$out/tgtd.log" tgtd_start
iqn=iqn.2026-11.org.icbd:conformance
for b in rdwr icbd; do
  truncate -s 128M "$work/$b.img"
done
tgtd_adm --op new --mode target --tid 1 -T "$iqn-rdwr"
tgtd_adm --op new --mode logicalunit --tid 1 --lun 1 -b "$work/rdwr.img" --bstype rdwr
tgtd_adm --op new --mode target --tid 2 -T "$iqn-icbd"
tgtd_adm --op new --mode logicalunit --tid 2 --lun 1 -b "$work/icbd.img" --bstype icbd
tgtd_adm --op bind --mode target --tid 1 -I ALL
tgtd_adm --op bind --mode target --tid 2 -I ALL

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
    tgtd_adm --op update --mode logicalunit --tid 1 --lun 1 --params thin_provisioning=1
    tgtd_adm --op update --mode logicalunit --tid 2 --lun 1 --params thin_provisioning=1
  fi
  # The two backends run side by side: separate targets, separate files. A
  # bound on each run: a lost completion must fail the suite, not hang it.
  run_cu rdwr "$mode" "$tests" 400 "$out/rdwr-$mode.txt" &
  p1=$!
  run_cu icbd "$mode" "$tests" 400 "$out/icbd-$mode.txt" &
  p2=$!
  wait $p1 || true
  wait $p2 || true
  run_cu rdwr "$mode" "$quarantined" 20 "$out/rdwr-$mode-quarantined.txt" &
  p1=$!
  run_cu icbd "$mode" "$quarantined" 20 "$out/icbd-$mode-quarantined.txt" &
  p2=$!
  q1=0; q2=0
  wait $p1 || q1=$?
  wait $p2 || q2=$?
  for b in rdwr icbd; do
    q=$q1; [ $b = icbd ] && q=$q2
    if [ "$q" = 124 ]; then
      echo "${quarantined#ALL.} (hung, killed after 20 s)" >"$out/$b-$mode.quarantined"
    elif grep -q 'had failures' "$out/$b-$mode-quarantined.txt"; then
      echo "${quarantined#ALL.}" >"$out/$b-$mode.quarantined"
    else
      : >"$out/$b-$mode.quarantined"
    fi
  done
  for b in rdwr icbd; do
    if ! grep -q '^Run Summary' "$out/$b-$mode.txt"; then
      echo "conformance: iscsi-test-cu against $b ($mode) did not finish; see $out/$b-$mode.txt" >&2
      status=1
    fi
    { failed_tests "$out/$b-$mode.txt"; sed 's/ (.*//' "$out/$b-$mode.quarantined"; } | sort -u >"$out/$b-$mode.failed"
  done
  for b in rdwr icbd; do
    echo "== $mode: $b: $(summary "$out/$b-$mode.txt"); ${quarantined#ALL.}: $(qstat "$out/$b-$mode.quarantined")"
  done
  regress=$(comm -13 "$out/rdwr-$mode.failed" "$out/icbd-$mode.failed")
  better=$(comm -23 "$out/rdwr-$mode.failed" "$out/icbd-$mode.failed")
  both=$(comm -12 "$out/rdwr-$mode.failed" "$out/icbd-$mode.failed")
  [ -n "$both" ] && echo "   failing for both: $(echo $both)"
  [ -n "$better" ] && echo "   failing for rdwr only (icbd passes): $(echo $better)"
  if [ -n "$regress" ]; then
    echo "   REGRESSION: pass for rdwr, fail for icbd: $(echo $regress)"
    status=1
  fi
done
if ! kill -0 "$TGTD_PID" 2>/dev/null; then
  echo "conformance: tgtd died during the run; log: $out/tgtd.log" >&2
  status=1
fi
echo "conformance: outputs in $out"
exit $status
