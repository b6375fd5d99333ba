#!/usr/bin/env bash
# repush.sh: time one icbd-replicate push again on the filesystems that
# `replication_bench.sh --keep` left behind, e.g. to compare builds, levels or
# worker counts on the same update without rebuilding the image (minutes).
#
#   bench/repush.sh SCRATCH VERSION [--bin PATH] [--warm] [--replica NAME] [--json F] [--cut S] [-- PUSH_ARGS...]
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
#   Prints one line: wall time until the replica published (durable), wire
#   bytes (push --json) and the CPU time of push and serve (incl. their
#   io_uring workers). A figure, never a failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "repush: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: repush.sh SCRATCH VERSION [--bin PATH] [--warm] [-- PUSH_ARGS...]"
w=$1 v=$2
shift 2
bin=$here/../build/release/replicator/icbd-replicate warm=0 json_out="" cut="" replica=icbd
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --warm) warm=1; shift ;;
    --json) json_out=$2; shift 2 ;;
    --cut) cut=$2; shift 2 ;;
    --replica) replica=$2; shift 2 ;;
    --) shift; break ;;
    *) die "unknown option '$1'" ;;
  esac
done
M=$w/mnt/master R=$w/mnt/$replica C=$w/certs
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
