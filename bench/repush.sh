#!/usr/bin/env bash
# repush.sh: time one icbd-replicate push again on the filesystems that
# `replication_bench.sh --keep` left behind, e.g. to compare builds, levels or
# worker counts on the same update without rebuilding the image (minutes).
#
#   bench/repush.sh SCRATCH VERSION [--bin PATH] [--warm] [--replica NAME] [--json F] [--cut S] [--no-spare] [-- PUSH_ARGS...]
#   bench/repush.sh SCRATCH VERSION --btrfs [--warm] [--replica NAME]
#     SCRATCH   the scratch dir --keep printed (holds mnt/master, mnt/icbd, certs)
#     VERSION   pushed from the master to the 'icbd' replica, which first loses
#               every version >= VERSION (so VERSION-1 is the base)
#     --bin     the icbd-replicate to run (default build/release's)
#     --warm    keep the page cache (default: sync and drop it, as the bench does)
#     --replica NAME  the replica filesystem under SCRATCH/mnt (default icbd;
#               the bench's fan1..fan3 serve too)
#     --json F  keep the push's --json report in F (codecs chosen, checkpoints)
#     --cut S   first cut a push of the same version with kill -9 after S seconds
#               (stopped first, and its TCP bytes_sent read with ss), then time
#               the push that resumes it; prints "cut after S s: N bytes sent"
#     --no-spare  the replica's base has no spare tree (see below): its staging
#               tree is a snapshot made before NEED, as on the first push after
#               an upgrade or a prune
#     --btrfs   time `btrfs send -p | btrfs receive; sync -f` instead, into the
#               bench's 'send' replica (or --replica NAME), the same way (the
#               replica first loses every version >= VERSION, cold cache)
#   A replica publishes each version from a writable tree that it then keeps as
#   images/<image>/.spare-<version>, the next push's staging tree. The
#   scratch's replicas got their base by btrfs receive (no spare), so before
#   the timed push the base is made what a publish leaves (outside the time):
#   a writable snapshot of it becomes the spare and the base is re-made as a
#   read-only snapshot of that spare (same files). --no-spare deletes it instead.
#   Prints one line: wall time until the replica published (durable), wire
#   bytes (push --json) and the CPU time of push and serve (incl. their
#   io_uring workers). A figure, never a failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "repush: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: repush.sh SCRATCH VERSION [--bin PATH] [--warm] [-- PUSH_ARGS...]"
w=$1 v=$2
shift 2
bin=$here/../build/release/replicator/icbd-replicate warm=0 json_out="" cut="" replica="" spare=1 mode=icbd
while [ $# -gt 0 ]; do
  case "$1" in
    --no-spare) spare=0; shift ;;
    --btrfs) mode=btrfs; shift ;;
    --bin) bin=$2; shift 2 ;;
    --warm) warm=1; shift ;;
    --json) json_out=$2; shift 2 ;;
    --cut) cut=$2; shift 2 ;;
    --replica) replica=$2; shift 2 ;;
    --) shift; break ;;
    *) die "unknown option '$1'" ;;
  esac
done
[ -n "$replica" ] || { [ "$mode" = btrfs ] && replica=send || replica=icbd; }
M=$w/mnt/master R=$w/mnt/$replica C=$w/certs
[ -d "$M/images/vm/$v" ] || die "$M/images/vm/$v does not exist (a --keep scratch dir?)"
[ -d "$M/images/vm/$((v - 1))" ] || die "version $((v - 1)) is not on the master"
[ "$mode" = btrfs ] || [ -x "$bin" ] || die "$bin is not executable"
I=$R/images/vm
for d in $(ls "$I" | sort -n); do
  [ "$d" -ge "$v" ] && btrfs -q subvolume delete "$I/$d"
done
# What a push leaves besides the version: spares and staging of versions >= VERSION.
for d in "$I"/.spare-* "$I"/.tree-*; do
  [ -e "$d" ] || continue
  n=${d##*/.spare-}; n=${n##*/.tree-}; n=${n%%-*}; n=${n%.tmp}
  [ "$n" -ge "$v" ] && btrfs -q subvolume delete "$d"
done
rm -rf "$I"/.staging/*
[ -d "$I/$((v - 1))" ] || die "the replica lacks version $((v - 1)); repush it first"
if [ "$mode" = icbd ]; then
  b=$((v - 1))
  uuid_of() { btrfs subvolume show "$1" | awk -v k="$2" '$1 " " $2 == k || $1 == k { print $NF; exit }'; }
  if [ -e "$I/.spare-$b" ] && { [ "$spare" = 0 ] || [ "$(uuid_of "$I/$b" "Parent UUID:")" != "$(uuid_of "$I/.spare-$b" "UUID:")" ]; }; then
    btrfs -q subvolume delete "$I/.spare-$b"
  fi
  if [ "$spare" = 1 ] && [ ! -e "$I/.spare-$b" ]; then
    btrfs -q subvolume snapshot "$I/$b" "$I/.spare-$b" >/dev/null
    btrfs -q subvolume delete "$I/$b"
    btrfs -q subvolume snapshot -r "$I/.spare-$b" "$I/$b" >/dev/null
  fi
fi
btrfs -q subvolume sync "$R"
if [ "$warm" = 0 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
if [ "$mode" = btrfs ]; then
  t0=$(date +%s.%N)
  btrfs send -q -p "$M/images/vm/$((v - 1))" "$M/images/vm/$v" | btrfs receive -q "$I/"
  st="${PIPESTATUS[*]}"
  sync -f "$R"
  t1=$(date +%s.%N)
  printf 'version %s btrfs send -p | btrfs receive; sync: status %s, wall %.2f s\n' "$v" "$st" "$(echo "$t1 - $t0" | bc)"
  exit 0
fi
. "$here/../scripts/lib/tgtd.sh"  # free_tcp_port
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if [ -n "$cut" ]; then
  port=$(free_tcp_port)
  "$bin" serve --root "$R" --listen "127.0.0.1:$port" --ca "$C/ca.crt" --cert "$C/replica1.crt" \
    --key "$C/replica1.key" --once >"$out/cserve.out" 2>"$out/cserve.err" &
  cspid=$!
  for _ in $(seq 100); do grep -q listening "$out/cserve.out" && break; sleep 0.05; done
  "$bin" push --root "$M" --image vm --version "$v" --to "127.0.0.1:$port" --ca "$C/ca.crt" \
    --cert "$C/master.crt" --key "$C/master.key" --json "$@" >"$out/cpush.json" 2>"$out/cpush.err" &
  cppid=$!
  sleep "$cut"
  # Freeze the push, let its socket drain (the kernel still delivers what was
  # queued after a kill -9 too), count the TCP bytes it sent to the replica
  # (TLS records; send() does not show in /proc/PID/io), then kill it.
  kill -STOP "$cppid" 2>/dev/null || true
  sleep 0.3
  sent=$(ss -tinH "( dport = :$port )" 2>/dev/null | grep -o 'bytes_sent:[0-9]*' | cut -d: -f2 | head -1)
  kill -9 "$cppid" 2>/dev/null || true
  wait "$cppid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$cspid" 2>/dev/null || break; sleep 0.05; done
  kill "$cspid" 2>/dev/null || true
  wait "$cspid" 2>/dev/null || true
  echo "cut after $cut s: ${sent:-0} bytes sent"
fi
port=$(free_tcp_port)
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
# A push that failed before it connected leaves `serve --once` waiting: stop it.
for _ in $(seq 100); do kill -0 "$spid" 2>/dev/null || break; sleep 0.05; done
kill "$spid" 2>/dev/null || true
wait "$spid" || true
[ -n "$json_out" ] && cp "$out/push.json" "$json_out"
wire=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('%.2f' % (sum(r.get('wire_bytes',0) for r in d['replicas'])/1048576))" "$out/push.json" 2>/dev/null || echo "?")
read -r pu ps <"$out/push.time" || true
read -r su ss <"$out/serve.time" || true
printf 'version %s %s: exit %s, wall %.2f s, wire %s MiB, cpu push %s+%s s serve %s+%s s (user+sys)\n' \
  "$v" "$*" "$rc" "$(echo "$t1 - $t0" | bc)" "$wire" "$pu" "$ps" "$su" "$ss"
