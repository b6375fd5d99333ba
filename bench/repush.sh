#!/usr/bin/env bash
# repush.sh: time one icbd-replicate push again on the filesystems that
# `replication_bench.sh --keep` left behind, e.g. to compare builds, levels or
# worker counts on the same update without rebuilding the image (minutes).
#
#   bench/repush.sh SCRATCH VERSION [--bin PATH] [--warm] [-- PUSH_ARGS...]
#     SCRATCH   the scratch dir --keep printed (holds mnt/master, mnt/icbd, certs)
#     VERSION   pushed from the master to the 'icbd' replica, which first loses
#               every version >= VERSION (so VERSION-1 is the base)
#     --bin     the icbd-replicate to run (default build/release's)
#     --warm    keep the page cache (default: sync and drop it, as the bench does)
#   Prints one line: wall time until the replica published (durable), wire
#   bytes (push --json) and the CPU time of push and serve (incl. their
#   io_uring workers). A figure, never a failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "repush: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: repush.sh SCRATCH VERSION [--bin PATH] [--warm] [-- PUSH_ARGS...]"
w=$1 v=$2
shift 2
bin=$here/../build/release/replicator/icbd-replicate warm=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --warm) warm=1; shift ;;
    --) shift; break ;;
    *) die "unknown option '$1'" ;;
  esac
done
M=$w/mnt/master R=$w/mnt/icbd C=$w/certs
[ -d "$M/images/vm/$v" ] || die "$M/images/vm/$v does not exist (a --keep scratch dir?)"
[ -d "$M/images/vm/$((v - 1))" ] || die "version $((v - 1)) is not on the master"
[ -x "$bin" ] || die "$bin is not executable"
for d in $(ls "$R/images/vm" | sort -n); do
  [ "$d" -ge "$v" ] && btrfs -q subvolume delete "$R/images/vm/$d"
done
btrfs -q subvolume sync "$R"
[ -d "$R/images/vm/$((v - 1))" ] || die "the replica lacks version $((v - 1)); repush it first"
if [ "$warm" = 0 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
. "$here/../scripts/lib/tgtd.sh"  # free_tcp_port
port=$(free_tcp_port)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
/usr/bin/time -f "%U %S" -o "$out/serve.time" "$bin" serve --root "$R" --listen "127.0.0.1:$port" \
  --ca "$C/ca.crt" --cert "$C/replica1.crt" --key "$C/replica1.key" --once >"$out/serve.out" 2>"$out/serve.err" &
spid=$!
for _ in $(seq 100); do grep -q listening "$out/serve.out" && break; sleep 0.05; done
t0=$(date +%s.%N)
rc=0
/usr/bin/time -f "%U %S" -o "$out/push.time" "$bin" push --root "$M" --image vm --version "$v" \
  --to "127.0.0.1:$port" --ca "$C/ca.crt" --cert "$C/master.crt" --key "$C/master.key" --json "$@" \
  >"$out/push.json" 2>"$out/push.err" || rc=$?
t1=$(date +%s.%N)
wait "$spid" || true
wire=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('%.2f' % (sum(r.get('wire_bytes',0) for r in d['replicas'])/1048576))" "$out/push.json" 2>/dev/null || echo "?")
read -r pu ps <"$out/push.time" || true
read -r su ss <"$out/serve.time" || true
printf 'version %s %s: exit %s, wall %.2f s, wire %s MiB, cpu push %s+%s s serve %s+%s s (user+sys)\n' \
  "$v" "$*" "$rc" "$(echo "$t1 - $t0" | bc)" "$wire" "$pu" "$ps" "$su" "$ss"
