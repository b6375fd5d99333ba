#!/usr/bin/env bash
# slow_device_bench.sh: 4 KiB random writes at 32 in flight over a deliberately
# slow backing device (issue 3): icbd with the write-back cache against tgt's
# aio and rdwr and icbd without cache, all on the same throttled device.
#
#   bench/slow_device_bench.sh [options]
#     --build DIR        CMake build dir with modules/ and bench/ (default build/release)
#     --seconds S        seconds per run (default 10)
#     --runs N           runs per workload and backend, interleaved (default 3)
#     --iops N           IOPS limit of the slow device, reads and writes (default 2000)
#     --bps N            bytes/s limit of the slow device, reads and writes (default 104857600)
#     --qd N             commands in flight (default 32)
#     --sync-every N     writes per SYNCHRONIZE CACHE in the "sync" workload (default 256)
#     --cache-size SIZE  cache_size of the icbd+cache LUN (default 2G)
#     --dirty-bytes N    dirty page limit of the "smalldirty" workload (default 16777216)
#     --workloads "LIST" subset of: nosync smalldirty sync (default all three)
#     --bstypes "LIST"   subset of: aio rdwr icbd icbd+cache (default all four)
#     --dir DIR          where the device image and the cache file go (default /var/tmp)
#     --out FILE         also write the Markdown report to FILE
#     --raw FILE         also write one line per run (TSV) to FILE
#
# The slow device: a loop device (direct I/O, so the image file does not sit in
# the page cache) over a sparse file in --dir, with ext4 on it and a 1 GiB backing
# file of random data (not sparse), written before the limit is set. The limit is
# the block layer's throttle on that one device (7:N), so it applies to every bio
# the device receives, whoever sends it: O_DIRECT writes of tgt's aio, and the
# page-cache writeback (kworkers) of buffered backends. cgroup v2: io.max of a
# child cgroup holding tgtd (page-cache writeback is charged to the cgroup that
# dirtied the page); cgroup v1: blkio.throttle.*_device of the root cgroup. The
# icbd cache file is on --dir itself: fast local storage, not throttled.
#
# Workloads (4 KiB random writes over the whole LUN, --qd in flight):
#   nosync      no flushes. Buffered backends (rdwr, icbd without cache) are then
#               bounded by the page cache, not the device: their writes reach the
#               device afterwards ("write-back" column).
#   smalldirty  as nosync, with the device's dirty page limit at --dirty-bytes
#               (strict per-device limit: /sys/class/bdi/7:N/max_bytes and
#               strict_limit, so other users of this machine are not throttled;
#               vm.dirty_bytes where the kernel lacks them), so buffered backends
#               feel the device as soon as --dirty-bytes are dirty.
#   sync        a SYNCHRONIZE CACHE(16) after every --sync-every writes, waited for
#               like a guest filesystem's flush: every backend gives the same
#               durability (acknowledged + flushed = durable), the fair comparison.
#
# Before every run: syncfs of the slow filesystem, its cached pages of the backing
# file dropped (posix_fadvise DONTNEED, not drop_caches: this machine is shared
# and others' measurements depend on their page cache), and the device idle (its
# inflight counters 0). icbd+cache: a new, empty cache file per run; after the
# run the LUN is deleted, which writes the whole burst back to the slow device,
# and that time is reported ("write-back"); for the other backends "write-back" is
# the syncfs after the run. Ratios are figures, never a failure: the exit status
# is 0 unless setup failed or a run failed (SCSI error, lost session).
set -uo pipefail

orig_args="$*"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)
build="$src/build/release"
seconds=10
runs=3
iops_limit=2000
bps_limit=104857600
qd=32
sync_every=256
cache_size=2G
dirty_bytes=16777216
all_workloads="nosync smalldirty sync"
workloads=$all_workloads
all_bstypes="aio rdwr icbd icbd+cache"
bstypes=$all_bstypes
dir=/var/tmp
out=""
raw_out=""

die() { echo "slow_device_bench: $*" >&2; exit 2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build) need_arg "$@"; build=$2; shift 2 ;;
    --seconds) need_arg "$@"; seconds=$2; shift 2 ;;
    --runs) need_arg "$@"; runs=$2; shift 2 ;;
    --iops) need_arg "$@"; iops_limit=$2; shift 2 ;;
    --bps) need_arg "$@"; bps_limit=$2; shift 2 ;;
    --qd) need_arg "$@"; qd=$2; shift 2 ;;
    --sync-every) need_arg "$@"; sync_every=$2; shift 2 ;;
    --cache-size) need_arg "$@"; cache_size=$2; shift 2 ;;
    --dirty-bytes) need_arg "$@"; dirty_bytes=$2; shift 2 ;;
    --workloads) need_arg "$@"; workloads=$2; shift 2 ;;
    --bstypes) need_arg "$@"; bstypes=$2; shift 2 ;;
    --dir) need_arg "$@"; dir=$2; shift 2 ;;
    --out) need_arg "$@"; out=$2; shift 2 ;;
    --raw) need_arg "$@"; raw_out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
for v in seconds runs iops_limit bps_limit qd sync_every dirty_bytes; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--${v%_limit} must be a whole number >= 1, not '${!v}'"
done
[[ "$cache_size" =~ ^[1-9][0-9]*[KMG]?$ ]] || die "--cache-size must look like 2G, 512M or a byte count, not '$cache_size'"
for w in $workloads; do [[ " $all_workloads " == *" $w "* ]] || die "unknown workload '$w' (known: $all_workloads)"; done
for b in $bstypes; do [[ " $all_bstypes " == *" $b "* ]] || die "unknown bstype '$b' (known: $all_bstypes)"; done
[ "$(id -u)" -eq 0 ] || die "needs root (tgtd, loop devices, the block throttle)"
build=$(cd "$build" 2>/dev/null && pwd) || die "build dir not found (build first: cmake --preset release && cmake --build --preset release --target bs_icbd icbd_tgt_preload icbd-iscsi-load)"
load="$build/bench/icbd-iscsi-load"
[ -x "$load" ] || die "$load not built"
[ -f "$build/modules/bs_icbd.so" ] || die "$build/modules/bs_icbd.so not built"
"$load" --help | grep -q -- --sync-every || die "$load has no --sync-every (rebuild icbd-iscsi-load)"
for t in tgtd tgtadm python3 dd losetup mkfs.ext4 mount umount; do
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || die "'$t' not found (scripts/install-deps.sh installs it)"
done
[ -d "$dir" ] || die "--dir $dir does not exist"

# Which throttle exists: cgroup v2 io.max (on a child cgroup holding tgtd) or the
# cgroup v1 blkio throttle of the root cgroup.
# shellcheck source=lib_throttle.sh
source "$here/lib_throttle.sh"
throttle_detect || die "no block throttle: neither cgroup v2 io.max nor cgroup v1 blkio.throttle is available"

# --- cleanup: everything this script starts, creates or changes ------------------
work=$(mktemp -d "$dir/icbd-slowdev.XXXXXX") || die "mktemp in $dir failed"
TGTD_PID=""
child=""
loopdev=""
devno=""
mnt=""
cg2=""
throttled=0
bdi_saved=""     # "max_ratio_fine strict_limit" to restore (max_bytes reads back a ratio of the current
                 # dirty threshold, so writing it back would not restore the setting)
sysctl_saved=""  # vm.dirty_bytes vm.dirty_background_bytes vm.dirty_ratio vm.dirty_background_ratio
dirty_small() {  # limits dirty pages of the slow device to $dirty_bytes
  local bdi=/sys/class/bdi/$devno
  if [ -w "$bdi/max_bytes" ] && [ -w "$bdi/strict_limit" ] && [ -w "$bdi/max_ratio_fine" ]; then
    [ -n "$bdi_saved" ] || bdi_saved="$(cat "$bdi/max_ratio_fine") $(cat "$bdi/strict_limit")"
    echo "$dirty_bytes" >"$bdi/max_bytes" && echo 1 >"$bdi/strict_limit"
  else
    [ -n "$sysctl_saved" ] || sysctl_saved="$(sysctl -n vm.dirty_bytes vm.dirty_background_bytes vm.dirty_ratio vm.dirty_background_ratio | tr '\n' ' ')"
    sysctl -q -w vm.dirty_background_bytes=$((dirty_bytes / 2)) vm.dirty_bytes="$dirty_bytes"
  fi
}
dirty_restore() {
  if [ -n "$bdi_saved" ]; then
    local bdi=/sys/class/bdi/$devno
    set -- $bdi_saved
    echo "$1" >"$bdi/max_ratio_fine" 2>/dev/null; echo "$2" >"$bdi/strict_limit" 2>/dev/null
    bdi_saved=""
  fi
  if [ -n "$sysctl_saved" ]; then
    set -- $sysctl_saved
    # The *_bytes and *_ratio pairs exclude each other: restore whichever was set.
    if [ "$1" != 0 ]; then sysctl -q -w vm.dirty_bytes="$1"; else sysctl -q -w vm.dirty_ratio="$3"; fi
    if [ "$2" != 0 ]; then sysctl -q -w vm.dirty_background_bytes="$2"; else sysctl -q -w vm.dirty_background_ratio="$4"; fi
    sysctl_saved=""
  fi
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then kill "$child" 2>/dev/null; wait "$child" 2>/dev/null; fi
  # Unthrottled first, so that removing a cached LUN writes back at full speed.
  throttle_lift
  dirty_restore
  if [ -n "$TGTD_PID" ]; then tgtd_stop >/dev/null 2>&1 || true; fi
  throttle_remove
  if [ -n "$mnt" ] && mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt"; fi
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
  [ -n "${TGTD_LOG:-}" ] && [ "$rc" -eq 0 ] && rm -f "$TGTD_LOG"
  [ -n "${TGTD_LOG:-}" ] && [ "$rc" -ne 0 ] && [ -f "$TGTD_LOG" ] && cp "$TGTD_LOG" /tmp/slow_device_bench.tgtd.log &&
    echo "slow_device_bench: tgtd log kept in /tmp/slow_device_bench.tgtd.log" >&2
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "slow_device_bench: interrupted" >&2; exit 130' INT TERM

# shellcheck source=lib_backends.sh
source "$src/bench/lib_backends.sh"  # run_child, export_backends
log() { echo "slow_device_bench: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b - a}'; }

# --- the slow device --------------------------------------------------------------
img="$work/slowdev.img"
truncate -s 2G "$img" || die "cannot create $img"
loopdev=$(losetup --find --show --direct-io=on "$img") || die "cannot attach $img to a loop device"
loopname=${loopdev#/dev/}
devno=$(cat "/sys/block/$loopname/dev") || die "no /sys/block/$loopname/dev"
# Initialise inode tables and journal now: ext4's lazy init would otherwise write
# in the background, through the throttle, during the runs.
mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$loopdev" >/dev/null 2>&1 || die "mkfs.ext4 $loopdev failed"
mnt="$work/mnt"
mkdir -p "$mnt" && mount "$loopdev" "$mnt" || die "cannot mount $loopdev"
backing="$mnt/backing.img"
log "filling $backing (1 GiB of random data) on $loopdev ($devno)"
run_child - - dd if=/dev/urandom of="$backing" bs=1M count=1024 iflag=fullblock conv=fsync status=none ||
  die "cannot fill $backing"
cache_file="$work/lun.cache"

# --- tgtd -------------------------------------------------------------------------
export ICBD_BUILD=$build
# shellcheck source=../scripts/lib/tgtd.sh
source "$src/scripts/lib/tgtd.sh"
TGTD_LOG="$work/tgtd.log"
tgtd_start || die "tgtd did not start"
log "tgtd pid $TGTD_PID, portal 127.0.0.1:$TGTD_PORT, control port $TGTD_CTL"

throttle_cgroup icbd-slowdev || die "cannot create a cgroup with the io controller for the throttle"
throttle_join "$TGTD_PID" || die "cannot move tgtd into $cg2"
throttle_set "$iops_limit" "$bps_limit" || die "cannot set the throttle on $devno"
throttle_desc=$(throttle_desc "$iops_limit" "$bps_limit")
log "throttle: $throttle_desc"

declare -A url
plain=""
for b in $bstypes; do [ "$b" != icbd+cache ] && plain+="$b "; done
icbd_bsopts=""
bstypes_all=$bstypes
bstypes=$plain
export_backends slow || die "exporting the LUNs failed"
bstypes=$bstypes_all
cache_tid=9
cache_bsopts="cache=$cache_file;cache_size=$cache_size"
if [[ " $bstypes " == *" icbd+cache "* ]]; then
  tgtd_adm --op new --mode target --tid $cache_tid -T iqn.2024-01.org.icbd:slow-icbd-cache || die "cannot create the cache target"
  tgtd_adm --op bind --mode target --tid $cache_tid -I ALL || die "cannot bind the cache target"
  url[icbd+cache]="iscsi://127.0.0.1:$TGTD_PORT/iqn.2024-01.org.icbd:slow-icbd-cache/1"
fi
cache_lun_add() {
  rm -f "$cache_file"
  tgtd_adm --op new --mode logicalunit --tid $cache_tid --lun 1 --bstype icbd --blocksize 4096 \
    --backing-store "$backing" --bsopts "$cache_bsopts"
}
cache_lun_del() { tgtd_adm --op delete --mode logicalunit --tid $cache_tid --lun 1; }

clk_tck=$(getconf CLK_TCK)
cpu_ticks() {  # utime + stime of the whole tgtd process, in clock ticks
  local stat
  stat=$(cat "/proc/$TGTD_PID/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }
  set -- $stat
  echo $(( ${12} + ${13} ))
}
dev_written() { awk '{print $7}' "/sys/block/$loopname/stat"; }  # sectors written

# settle: everything written so far reaches the slow device, this file's pages
# leave the page cache, and the device is idle. Sets settle_s (seconds it took).
settle() {
  local t0 i r w
  t0=$(now)
  sync -f "$mnt" 2>/dev/null || sync
  run_child - - dd if="$backing" iflag=nocache count=0 status=none || true
  for i in $(seq 1200); do
    read -r r w <"/sys/block/$loopname/inflight"
    [ "$r" = 0 ] && [ "$w" = 0 ] && break
    sleep 0.1
  done
  settle_s=$(elapsed "$t0")
}

# One measured run: sets result="ops iops p50 p99 p999 syncs sync_p50 sync_p99" or fails.
measure() {
  local b=$1 w=$2 rc
  local extra=()
  [ "$w" = sync ] && extra=(--sync-every "$sync_every")
  result=""
  run_child "$work/out" "$work/err" timeout $((seconds + 120)) "$load" --url "${url[$b]}" --rw write \
    --pattern random --bs 4096 --qd "$qd" --seconds "$seconds" --json "${extra[@]}"
  rc=$?
  if [ $rc -ne 0 ]; then
    log "icbd-iscsi-load on $b ($w) failed (rc $rc): $(tail -2 "$work/err" | tr '\n' ' ')"
    return 1
  fi
  result=$(python3 -c 'import json,sys; d=json.load(sys.stdin); l=d["lat_us"]; s=d["sync_lat_us"]
print(d["ops"], round(d["iops"]), l["p50"], l["p99"], l["p999"], d["syncs"], s["p50"], s["p99"])' <"$work/out") ||
    { log "icbd-iscsi-load on $b ($w): unreadable output"; return 1; }
}

uptime_before=$(uptime)
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
raw="$work/raw.tsv"
printf 'run\tworkload\tbstype\tops\tiops\tp50_us\tp99_us\tp999_us\tsyncs\tsync_p50_us\tsync_p99_us\tcpu_us_per_op\tdev_mb_during\twriteback_s\tload1\n' >"$raw"
failures=0
for run in $(seq "$runs"); do
  for w in $workloads; do
    [ "$w" = smalldirty ] && dirty_small
    for b in $bstypes; do
      settle
      if [ "$b" = icbd+cache ]; then
        if ! cache_lun_add; then
          log "cannot create the icbd+cache LUN (see $TGTD_LOG)"
          failures=$((failures + 1)); exit 1
        fi
      fi
      la=$(cut -d' ' -f1 /proc/loadavg)
      s0=$(dev_written)
      t0=$(cpu_ticks)
      if measure "$b" "$w"; then
        t1=$(cpu_ticks)
        s1=$(dev_written)
        read -r ops iops p50 p99 p999 syncs sp50 sp99 <<<"$result"
        wb0=$(now)
        if [ "$b" = icbd+cache ]; then cache_lun_del || { log "deleting the icbd+cache LUN failed"; failures=$((failures + 1)); }; fi
        settle
        wb=$(awk -v a="$wb0" -v b="$(now)" 'BEGIN{printf "%.1f", b - a}')
        cpuop=$(awk -v d=$((t1 - t0)) -v hz="$clk_tck" -v o="$ops" 'BEGIN{ if (o > 0) printf "%.1f", d/hz*1e6/o; else print "nan" }')
        devmb=$(awk -v s=$((s1 - s0)) 'BEGIN{printf "%.0f", s*512/1e6}')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$w" "$b" "$ops" "$iops" "$p50" "$p99" \
          "$p999" "$syncs" "$sp50" "$sp99" "$cpuop" "$devmb" "$wb" "$la" >>"$raw"
        log "run $run/$runs $w $b: $iops IOPS, p50/p99 $p50/$p99 us, $syncs syncs (p50 $sp50 us), tgtd $cpuop us CPU/op, device got ${devmb} MB during the run, write-back after ${wb} s"
      else
        failures=$((failures + 1))
        printf '%s\t%s\t%s\tFAILED\t\t\t\t\t\t\t\t\t\t\t%s\n' "$run" "$w" "$b" "$la" >>"$raw"
        [ "$b" = icbd+cache ] && cache_lun_del
      fi
    done
    [ "$w" = smalldirty ] && dirty_restore
  done
done
uptime_after=$(uptime)
[ -n "$raw_out" ] && cp "$raw" "$raw_out"

# --- report -----------------------------------------------------------------------
report="$work/report.md"
{
  echo "### 4 KiB random write, qd $qd, over a throttled device: ${bstypes// /, }"
  echo
  echo "- started: $started; host $(hostname), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
  echo "- tgtd: Debian tgt $(dpkg-query -W -f='${Version}' tgt 2>/dev/null), one instance; icbd module from $build/modules"
  echo "- slow device: $loopdev (direct I/O) over a sparse file in $dir, ext4, backing file 1 GiB of random data; limit: $throttle_desc"
  echo "- icbd+cache: bsopts '$cache_bsopts' (cache file on $(findmnt -n -o SOURCE,FSTYPE -T "$dir" | tr -s ' ' ' '), not throttled), new and empty for every run; its 'write-back' is the time of \`tgtadm --op delete --mode logicalunit\`, which writes the cache back to the slow device"
  echo "- workloads: nosync = no flushes; smalldirty = the same with at most $dirty_bytes dirty bytes on the slow device ($( [ -n "$(ls /sys/class/bdi/$devno/strict_limit 2>/dev/null)" ] && echo "bdi max_bytes + strict_limit" || echo "vm.dirty_bytes")); sync = SYNCHRONIZE CACHE(16) after every $sync_every writes, waited for (icbd-iscsi-load --sync-every $sync_every)"
  echo "- $runs runs x $seconds s per workload and backend, interleaved; before each: syncfs, the backing file's pages dropped, device idle"
  echo "- load before: \`${uptime_before# }\`"
  echo "- load after: \`${uptime_after# }\`"
  echo "- command: \`bench/slow_device_bench.sh${orig_args:+ $orig_args}\`"
  echo
} >"$report"
python3 - "$here" "$raw" "$bstypes" "$iops_limit" >>"$report" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from runs_report import Runs, fmt, med, median_iops_table
runs, bstypes, limit = Runs(sys.argv[2]), sys.argv[3].split(), int(sys.argv[4])
names = {"nosync": "4K rand write qd32, no flushes", "smalldirty": "same, small dirty limit",
         "sync": "same, SYNC CACHE every N writes"}

print(f"#### Median IOPS (device limit {limit:,} IOPS)\n")
median_iops_table(runs, bstypes, names, ("icbd+cache / aio", "icbd+cache / rdwr"), sep=" / ", nd=1)

print("\n#### Detail (median run unless noted)\n")
print("| workload | backend | IOPS min / med / max | write latency p50 / p99 / p99.9 µs | SYNC p50 / p99 µs | tgtd CPU µs/op | MB to device during run | write-back after s |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for w in runs.workloads:
    for b in bstypes:
        i = runs.vals(w, b, "iops")
        if not i:
            print(f"| {names.get(w, w)} | {b} | failed | | | | | |"); continue
        def m(k, nd=0): return fmt(med(runs.vals(w, b, k)), nd)
        sync = f"{m('sync_p50_us')} / {m('sync_p99_us')}" if med(runs.vals(w, b, "syncs")) else "–"
        print(f"| {names.get(w, w)} | {b}{runs.failed_note(w, b)} | {fmt(min(i))} / **{fmt(med(i))}** / {fmt(max(i))} | "
              f"{m('p50_us')} / {m('p99_us')} / {m('p999_us')} | {sync} | {m('cpu_us_per_op', 1)} | "
              f"{m('dev_mb_during')} | {m('writeback_s', 1)} |")
PY
cat "$report"
[ -n "$out" ] && cp "$report" "$out"
if [ "$failures" -gt 0 ]; then
  log "$failures run(s) failed; see the messages above"
  exit 1
fi
exit 0
