#!/usr/bin/env bash
# link_limited_push.sh: a push over a limited link (issue 15's target: on 100
# Mbit/s, icbd-replicate --compress auto <= 0.9x the wall of `btrfs send -p |
# zstd -3 | (the link) | zstd -d | btrfs receive; sync`, with no more bytes on
# the wire than that zstd -3 stream). Runs on the filesystems that
# `replication_bench.sh --keep` left behind; the link is icbd-replicate's own
# bandwidth limit for icbd and bench/rate_pipe.py for the btrfs pipeline, the
# same rate. Interleaved rounds, cold cache before each push (repush.sh).
#   bench/link_limited_push.sh SCRATCH VERSION [--rate BYTES_PER_S] [--runs N]
# Prints one line per push and a median per method. Figures, never a failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "link_limited_push: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: link_limited_push.sh SCRATCH VERSION [--rate BYTES_PER_S] [--runs N]"
w=$1 v=$2
shift 2
rate=12500000 runs=3
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    *) die "unknown option '$1'" ;;
  esac
done
M=$w/mnt/master R=$w/mnt/zstd
[ -d "$M/images/vm/$v" ] && [ -d "$M/images/vm/$((v - 1))" ] || die "$M/images/vm lacks version $v or $((v - 1)) (a --keep scratch dir?)"
[ -d "$R/images/vm/$((v - 1))" ] || die "$R lacks version $((v - 1))"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

btrfs_zstd() {  # one cold push of VERSION into the 'zstd' replica through the limited pipe
  local d
  for d in $(ls "$R/images/vm" | sort -n); do [ "$d" -ge "$v" ] && btrfs -q subvolume delete "$R/images/vm/$d"; done
  btrfs -q subvolume sync "$R"
  sync; echo 3 >/proc/sys/vm/drop_caches
  local t0 t1
  t0=$(date +%s.%N)
  btrfs send -q -p "$M/images/vm/$((v - 1))" "$M/images/vm/$v" | zstd -3 -q -c |
    "$here/rate_pipe.py" "$rate" 2>"$out/pipe.err" | zstd -d -q -c | btrfs receive -q "$R/images/vm/"
  sync -f "$R"
  t1=$(date +%s.%N)
  local bytes; bytes=$(grep -o '[0-9]*' "$out/pipe.err" | head -1)
  printf 'btrfs send -p | zstd -3 | link | zstd -d | btrfs receive; sync: wall %.2f s, wire %.2f MiB\n' \
    "$(echo "$t1 - $t0" | bc)" "$(echo "$bytes / 1048576" | bc -l)"
}

for r in $(seq "$runs"); do
  echo "round $r" >&2
  btrfs_zstd | tee -a "$out/btrfs"
  "$here/repush.sh" "$w" "$v" -- --compress auto --bwlimit "$rate" | tee -a "$out/auto"
  "$here/repush.sh" "$w" "$v" -- --compress zstd --bwlimit "$rate" | tee -a "$out/zstd"
done
median() { grep -o 'wall [0-9.]*' "$1" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mwire() { grep -o 'wire [0-9.?]*' "$1" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
b=$(median "$out/btrfs") a=$(median "$out/auto") z=$(median "$out/zstd")
echo "medians at $rate B/s, version $v: btrfs+zstd -3 $b s ($(mwire "$out/btrfs") MiB), icbd auto $a s ($(mwire "$out/auto") MiB), icbd zstd 3 $z s ($(mwire "$out/zstd") MiB); auto / btrfs+zstd = $(echo "scale=2; $a / $b" | bc)"
