#!/usr/bin/env bash
# profile_backends.sh: where does tgtd spend its time per SCSI command, per
# bstype? Runs one workload against each backend on one private tgtd and counts,
# with `perf stat` on the tgtd process (all its threads), instructions and
# cycles (user/kernel), CPU time, context switches and system calls, each
# divided by the commands completed. Optionally records call graphs.
# Needs perf (Debian: apt-get install linux-perf); not a project dependency.
#
#   bench/profile_backends.sh [options]
#     --build DIR        CMake build dir (default build/release)
#     --bstypes "LIST"   default "null rdwr aio icbd"
#     --workload W       rr4k-qdN | sr128k-qdN | rw4k-qdN | sw128k-qdN (default rr4k-qd32)
#     --seconds S        per backend (default 5)
#     --size SIZE        backing file, for dd (default 1G)
#     --dir DIR          where the backing file goes (default /var/tmp)
#     --icbd-bsopts STR  --bsopts for the icbd LUN
#     --page-cache MODE  warm (default: the file is read back into the page cache
#                        before each backend) or cold (its pages dropped, not read back)
#     --block-size N     logical block size of every LUN (default 4096)
#     --read-tool T      load (default: icbd-iscsi-load, offsets aligned to the
#                        transfer size) or iscsi-perf (random LBAs, not aligned:
#                        with --block-size 512 most 4 KiB reads straddle two pages)
#     --record DIR       also `perf record -g` each run into DIR/perf-BSTYPE.data
#                        and print its top symbols
#
# Instruction counts are the figure to compare on a busy machine: they barely
# move with background load, while IOPS and CPU time do. Counting system calls
# through tracepoints makes every call a little slower, so the IOPS here are not
# benchmark figures (compare_backends.sh has those). Load runs with
# icbd-iscsi-load (reads too), so every backend sees the same initiator.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)
build="$src/build/release"
bstypes="null rdwr aio icbd"
workload=rr4k-qd32
seconds=5
size=1G
dir=/var/tmp
icbd_bsopts=""
record=""
page_cache=warm
lun_block_size=4096
read_tool=load

die() { echo "profile_backends: $*" >&2; exit 2; }
log() { echo "profile_backends: $*" >&2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build) need_arg "$@"; build=$2; shift 2 ;;
    --bstypes) need_arg "$@"; bstypes=$2; shift 2 ;;
    --workload) need_arg "$@"; workload=$2; shift 2 ;;
    --seconds) need_arg "$@"; seconds=$2; shift 2 ;;
    --size) need_arg "$@"; size=$2; shift 2 ;;
    --dir) need_arg "$@"; dir=$2; shift 2 ;;
    --icbd-bsopts) need_arg "$@"; icbd_bsopts=$2; shift 2 ;;
    --block-size) need_arg "$@"; lun_block_size=$2; shift 2
      case "$lun_block_size" in 512|1024|2048|4096) ;; *) die "--block-size must be 512, 1024, 2048 or 4096" ;; esac ;;
    --read-tool) need_arg "$@"; read_tool=$2; shift 2
      case "$read_tool" in load|iscsi-perf) ;; *) die "--read-tool must be load or iscsi-perf" ;; esac ;;
    --record) need_arg "$@"; record=$2; shift 2 ;;
    --page-cache) need_arg "$@"; page_cache=$2; shift 2
      case "$page_cache" in warm|cold) ;; *) die "--page-cache must be 'warm' or 'cold', not '$page_cache'" ;; esac ;;
    -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
case "$workload" in
  rr4k-qd*) bsz=4096; rw=read; pattern=random; qd=${workload#rr4k-qd} ;;
  sr128k-qd*) bsz=131072; rw=read; pattern=seq; qd=${workload#sr128k-qd} ;;
  rw4k-qd*) bsz=4096; rw=write; pattern=random; qd=${workload#rw4k-qd} ;;
  sw128k-qd*) bsz=131072; rw=write; pattern=seq; qd=${workload#sw128k-qd} ;;
  *) die "unknown workload '$workload'" ;;
esac
[[ "$qd" =~ ^[1-9][0-9]*$ ]] || die "bad queue depth in '$workload'"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "--seconds must be a whole number >= 1"
[[ "$size" =~ ^[1-9][0-9]*[KMG]?$ ]] || die "--size must look like 1G or 512M"
for b in $bstypes; do case "$b" in null|rdwr|aio|icbd) ;; *) die "unknown bstype '$b'" ;; esac; done
[ "$(id -u)" -eq 0 ] || die "needs root (tgtd, perf on another process)"
command -v perf >/dev/null 2>&1 || die "needs perf (apt-get install linux-perf)"
build=$(cd "$build" 2>/dev/null && pwd) || die "build dir not found"
load="$build/bench/icbd-iscsi-load"
[ -x "$load" ] || die "$load not built"
[ -d "$dir" ] || die "--dir $dir does not exist"
if [ -n "$record" ]; then mkdir -p "$record" || die "cannot create $record"; fi

work=$(mktemp -d /tmp/icbd-profile.XXXXXX) || die "mktemp failed"
backing=""
TGTD_PID=""
child=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then kill "$child" 2>/dev/null; wait "$child" 2>/dev/null; fi
  if [ -n "$TGTD_PID" ]; then tgtd_stop >/dev/null 2>&1 || true; fi
  [ -n "$backing" ] && rm -f "$backing"
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "profile_backends: interrupted" >&2; exit 130' INT TERM
# shellcheck source=lib_backends.sh
source "$src/bench/lib_backends.sh"  # run_child, export_backends

case "$size" in
  *G) mib=$(( ${size%G} * 1024 )) ;;
  *M) mib=${size%M} ;;
  *K) mib=$(( (${size%K} + 1023) / 1024 )) ;;
  *) mib=$(( (size + 1048575) / 1048576 )) ;;
esac
backing=$(mktemp "$dir/icbd-profile.XXXXXX.img") || die "cannot create a file in $dir"
log "filling $backing ($size of random data)"
run_child - - dd if=/dev/urandom of="$backing" bs=1M count="$mib" iflag=fullblock conv=fsync status=none ||
  die "cannot fill $backing"

export ICBD_BUILD=$build
# shellcheck source=../scripts/lib/tgtd.sh
source "$src/scripts/lib/tgtd.sh"
TGTD_LOG="$work/tgtd.log"
tgtd_start || die "tgtd did not start"
declare -A url
export_backends profile || die "exporting the LUNs failed"

# System calls worth naming; raw_syscalls:sys_enter counts them all.
calls="io_uring_enter epoll_wait epoll_ctl read write writev setsockopt pread64 preadv2 pwrite64 futex io_submit io_getevents"
events="instructions:u,instructions:k,cycles:u,cycles:k,task-clock,context-switches,raw_syscalls:sys_enter"
for c in $calls; do events+=",syscalls:sys_enter_$c"; done

uptime_before=$(uptime)
for b in $bstypes; do
  if [ "$b" != null ]; then  # same page cache for every backend, as in compare_backends.sh
    reset_page_cache "$backing" "$page_cache" || die "cannot read $backing"
  fi
  log "$b: $workload for $seconds s"
  perf stat -x, -e "$events" -p "$TGTD_PID" -o "$work/stat-$b.csv" -- sleep $((seconds + 2)) &
  pstat=$!
  prec=""
  if [ -n "$record" ]; then
    perf record -q -g -p "$TGTD_PID" -o "$record/perf-$b.data" -- sleep $((seconds + 1)) 2>/dev/null &
    prec=$!
  fi
  sleep 0.5
  if [ "$rw" = read ] && [ "$read_tool" = iscsi-perf ]; then
    rflag=()
    [ "$pattern" = random ] && rflag=(-r)
    run_child "$work/perf-$b.out" "$work/load-$b.err" iscsi-perf -i "iqn.2024-01.org.icbd:perf" -m "$qd" \
      -b $((bsz / lun_block_size)) -t "$seconds" "${rflag[@]}" "${url[$b]}"
    # Same JSON as icbd-iscsi-load's, without latencies (iscsi-perf has none).
    iops=$(tr '\r' '\n' <"$work/perf-$b.out" | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}')
    if [ -n "$iops" ]; then
      echo "{\"ops\": $((iops * seconds)), \"iops\": $iops, \"lat_us\": {\"p50\": 0, \"p99\": 0}}" >"$work/load-$b.json"
    else
      log "iscsi-perf on $b failed: $(cat "$work/perf-$b.out" "$work/load-$b.err" | tr '\r' '\n' | tail -2)"
    fi
  elif ! run_child "$work/load-$b.json" "$work/load-$b.err" "$load" --url "${url[$b]}" --rw "$rw" --pattern "$pattern" \
    --bs "$bsz" --qd "$qd" --seconds "$seconds" --json; then
    log "load on $b failed: $(tail -2 "$work/load-$b.err")"
  fi
  wait "$pstat" 2>/dev/null
  [ -n "$prec" ] && wait "$prec" 2>/dev/null
  case "$rw" in write) sync "$backing" ;; esac
done
uptime_after=$(uptime)

echo "## Per-command cost in tgtd: $workload ($rw, $pattern, $bsz bytes, qd $qd), $seconds s per backend"
echo
echo "- $(nproc) CPUs, kernel $(uname -r); load before: \`${uptime_before# }\`; after: \`${uptime_after# }\`"
echo "- perf stat on tgtd (pid $TGTD_PID, all threads); every figure is per completed command"
echo "- $size backing file in $dir; LUN block size $lun_block_size; load: $( [ "$rw" = read ] && [ "$read_tool" = iscsi-perf ] && echo "iscsi-perf (no latencies)" || echo icbd-iscsi-load)"
echo
python3 - "$work" "$bstypes" "$calls" <<'PY'
import csv, json, os, sys
work, bstypes, calls = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
data = {}
for b in bstypes:
    try:
        d = json.load(open(f"{work}/load-{b}.json"))
    except (OSError, ValueError):
        continue
    vals = {}
    for row in csv.reader(open(f"{work}/stat-{b}.csv")):
        if len(row) > 2 and row[0] and row[0][0].isdigit():
            vals[row[2]] = float(row[0])
    data[b] = (d, vals)
def per(b, key, scale=1.0, nd=0):
    d, v = data[b]
    if key not in v or not d["ops"]:
        return "n/a"
    return f"{v[key] * scale / d['ops']:,.{nd}f}"
rows = [("IOPS", lambda b: f"{data[b][0]['iops']:,.0f}"),
        ("p50 / p99 latency µs", lambda b: f"{data[b][0]['lat_us']['p50']:.0f} / {data[b][0]['lat_us']['p99']:.0f}"),
        ("tgtd CPU µs/op", lambda b: per(b, "task-clock", 1000.0, 1)),
        ("instructions/op user", lambda b: per(b, "instructions:u")),
        ("instructions/op kernel", lambda b: per(b, "instructions:k")),
        ("cycles/op user", lambda b: per(b, "cycles:u")),
        ("cycles/op kernel", lambda b: per(b, "cycles:k")),
        ("context switches/op", lambda b: per(b, "context-switches", 1, 2)),
        ("system calls/op", lambda b: per(b, "raw_syscalls:sys_enter", 1, 2))]
for c in calls:
    if any(data[b][1].get(f"syscalls:sys_enter_{c}", 0) > 0 for b in data):
        rows.append((f"  {c}/op", lambda b, c=c: per(b, f"syscalls:sys_enter_{c}", 1, 2)))
shown = [b for b in bstypes if b in data]
print("| per command | " + " | ".join(shown) + " |")
print("|---|" + "---:|" * len(shown))
for name, f in rows:
    print(f"| {name} | " + " | ".join(f(b) for b in shown) + " |")
missing = [b for b in bstypes if b not in data]
if missing:
    print(f"\n(no result for: {', '.join(missing)})")
PY
if [ -n "$record" ]; then
  for b in $bstypes; do
    [ -f "$record/perf-$b.data" ] || continue
    echo
    echo "### $b: top symbols (self), perf report -i $record/perf-$b.data"
    echo '```'
    perf report -i "$record/perf-$b.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
      grep -v '^#' | grep '%' | head -20
    echo '```'
  done
fi
