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

# The names of failed tests, one "Suite.Test" per line, deduplicated (ALL runs
# some suites under several families).
failed_tests() { sed -n 's/^Suite \(.*\), Test \(.*\) had failures:$/\1.\2/p' "$1" | sort -u; }
summary() { grep -E '^ +tests ' "$1" | awk '{printf "total %s ran %s passed %s failed %s", $2, $3, $4, $5}'; }

status=0
for mode in default thin; do
  if [ "$mode" = thin ]; then
    tgtd_adm --op update --mode logicalunit --tid 1 --lun 1 --params thin_provisioning=1
    tgtd_adm --op update --mode logicalunit --tid 2 --lun 1 --params thin_provisioning=1
  fi
  # The two backends run side by side: separate targets, separate files.
  # A bound on each run: a lost completion must fail the suite, not hang it.
  timeout 400 iscsi-test-cu -d -n "iscsi://127.0.0.1:$TGTD_PORT/$iqn-rdwr/1" >"$out/rdwr-$mode.txt" 2>&1 &
  p1=$!
  timeout 400 iscsi-test-cu -d -n "iscsi://127.0.0.1:$TGTD_PORT/$iqn-icbd/1" >"$out/icbd-$mode.txt" 2>&1 &
  p2=$!
  wait $p1 || true
  wait $p2 || true
  for b in rdwr icbd; do
    if ! grep -q '^Run Summary' "$out/$b-$mode.txt"; then
      echo "conformance: iscsi-test-cu against $b ($mode) did not finish; see $out/$b-$mode.txt" >&2
      status=1
    fi
    failed_tests "$out/$b-$mode.txt" >"$out/$b-$mode.failed"
  done
  echo "== $mode: rdwr: $(summary "$out/rdwr-$mode.txt"); distinct failing tests: $(wc -l <"$out/rdwr-$mode.failed")"
  echo "== $mode: icbd: $(summary "$out/icbd-$mode.txt"); distinct failing tests: $(wc -l <"$out/icbd-$mode.failed")"
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
