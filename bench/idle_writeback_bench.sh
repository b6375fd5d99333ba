#!/usr/bin/env bash
# idle_writeback_bench.sh: how long removing a cached LUN blocks tgtd after a
# desktop wrote a burst and went quiet, with idle write-back (cache_idle=1000,
# the default) and without it (cache_idle=0).
#
#   bench/idle_writeback_bench.sh [--mib N] [--quiet SECONDS] [--dir DIR]
#     --mib     burst written into the LUN, no SYNCHRONIZE CACHE (default 256)
#     --quiet   seconds between the burst and the removal (default 3)
#     --dir     where the raw file and the cache go (default /var/tmp)
# One private tgtd on 127.0.0.1 with the uninstalled module; prints a Markdown
# table: the removal's wall time (tgtadm returns when tgtd has closed the LUN;
# tgtd serves nothing else meanwhile) and whether it had to write back.
# A figure, never a failure. Needs root, tgt, the release build.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export ICBD_BUILD=${ICBD_BUILD:-$here/../build/release}
. "$here/../scripts/lib/tgtd.sh"
mib=256 quiet=3 dir=/var/tmp
while [ $# -gt 0 ]; do
  case "$1" in
    --mib) mib=$2; shift 2 ;;
    --quiet) quiet=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) echo "idle_writeback_bench: unknown option '$1'" >&2; exit 2 ;;
  esac
done
cli=$ICBD_BUILD/blockd/icbd-iscsi
work=$(mktemp -d "$dir/icbd-idlebench.XXXXXX")
cleanup() { tgtd_stop || true; rm -rf "$work"; rm -f "${TGTD_LOG:-}"; }
trap cleanup EXIT
tgtd_start
iqn=iqn.2026-11.org.icbd.bench:idle
tgtd_adm --op new --mode target --tid 1 -T "$iqn"
tgtd_adm --op bind --mode target --tid 1 -I ALL
head -c "${mib}M" /dev/urandom >"$work/burst.bin"
echo "| cache_idle | burst | quiet | removal (tgtd blocked) | log at removal |"
echo "|---|---:|---:|---:|---|"
for idle in 0 1000; do
  rm -f "$work/disk.raw" "$work/lun.cache"
  truncate -s 1G "$work/disk.raw"
  tgtd_adm --op new --mode logicalunit --tid 1 --lun 1 --bstype icbd -b "$work/disk.raw" \
    --bsopts "cache=$work/lun.cache;cache_size=1G;cache_idle=$idle"
  "$cli" write "iscsi://127.0.0.1:$TGTD_PORT/$iqn/1" -i "$work/burst.bin" --lba 0
  sleep "$quiet"
  sync
  at=$(wc -c <"$TGTD_LOG")
  t0=$(date +%s.%N)
  tgtd_adm --op delete --mode logicalunit --tid 1 --lun 1
  t1=$(date +%s.%N)
  said=$(tail -c +"$((at + 1))" "$TGTD_LOG" | grep -oE "writing back [0-9]+ blocks \([0-9]+ MiB\)" | head -1 || true)
  printf '| %s | %s MiB | %s s | %.3f s | %s |\n' "$idle" "$mib" "$quiet" "$(echo "$t1 - $t0" | bc)" "${said:-nothing to write back}"
done
