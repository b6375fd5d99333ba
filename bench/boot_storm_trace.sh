#!/usr/bin/env bash
# boot_storm_trace.sh: a boot storm replayed from a real guest's boot (issue 14).
# A Debian guest boots under QEMU (TCG, no KVM) from an icbd LUN through QEMU's
# libiscsi driver; its disk requests are traced; the LUN records the boot set.
# Then N clients replay that trace at once on their own overlay LUNs over the
# one golden file, on a throttled disk, cold, prefetched and warm.
#
#   bench/boot_storm_trace.sh [options]
#     --build DIR        CMake build dir (default build/release): modules/, bench/
#                        (icbd-boot-replay, icbd-iscsi-load), prefetch/icbd-prefetch
#     --clients "LIST"   client counts (default "16 64")
#     --runs N           runs per case, interleaved; tables show medians (default 1)
#     --iops N           IOPS limit of the slow disk, reads and writes (default 2000)
#     --bps N            bytes/s limit of the slow disk (default 104857600)
#     --think-scale F    replay the guest's think time x F (default 0: none)
#     --load-rate N      random reads/s of the running desktop in the interference
#                        runs (default 500: a quarter of the default --iops)
#     --prefetch-rate R  --max-rate of the third interference case (default 32M)
#     --guest DIR        the guest (make_boot_guest.sh OUTDIR; built there when
#                        missing; default /var/tmp/icbd-boot-guest, kept for reruns)
#     --trace FILE       also keep the converted boot trace in FILE
#     --dir DIR          where the slow disk's image goes (default /var/tmp)
#     --qemu-timeout S   the traced boot must power off within S seconds (default 900)
#     --out FILE         also write the Markdown report to FILE
#
# Needs root. QEMU comes from Debian: when qemu-system-x86_64 or its libiscsi
# block driver (qemu-block-extra) is missing, this script installs
# qemu-system-x86 and qemu-block-extra with apt-get (tests do not need them).
#
# The slow disk, as in slow_device_bench.sh: a loop device (direct I/O) over a
# sparse file in --dir, ext4 on it, limited by the block layer's throttle on that
# device (cgroup v1: blkio.throttle.* of the root cgroup; cgroup v2: io.max of a
# child cgroup holding tgtd and icbd-prefetch). On it: golden/disk.raw (the
# guest's 2 GiB disk, written in full, not sparse), overlays/ (one per LUN),
# .bootsets/ (the sidecar), load.raw (512 MiB of random data for the
# interference runs).
#
# The trace: QEMU's trace events virtio_blk_handle_read/_write and
# virtio_blk_rw_complete (-trace, -msg timestamp=on), i.e. each request the
# guest's virtio-blk driver makes, with its issue and completion time in µs;
# matched by request pointer (boot_trace.py). Taken in QEMU rather than at the
# target because it is the guest's own order, sizes and concurrency, before
# QEMU merges adjacent requests into one iSCSI command, and needs no change to
# tgtd or the module. The guest boots cold, throttled, on an icbd overlay LUN
# with bsopts bootset= (bootset_window=3600): the boot set is merged into the
# sidecar when the LUN is deleted after the guest powered off.
#
# The storm: one target per client (LUN 1, block size 512, bstype icbd,
# overlay=overlays/cN.ovl over the golden file, bootset_window=0), all logged
# in first; then icbd-boot-replay replays the trace's READs on every LUN at
# once (order, sizes, concurrency of the trace; see boot_replay.cpp). Cases:
#   cold        the golden file's pages dropped (posix_fadvise DONTNEED)
#   prefetched  cold, then icbd-prefetch --bootset SIDECAR golden/disk.raw
#               (its time and disk requests reported apart, not in the storm's)
#   warm        cold, then the whole golden file read (throttle lifted for that)
# Disk requests = reads completed by the loop device during the storm
# (/sys/block/loopN/stat fields 1 and 3).
#
# Prefetch interference: icbd-iscsi-load, 4 KiB random reads at --load-rate per
# second (at most 4 in flight) on another LUN (load.raw, cold) for a few
# seconds, alone, with an icbd-prefetch of the (cold) boot set started 0.5 s
# into it, and with one limited to --prefetch-rate: p99 of each.
#
# Figures are figures: exit status 0 unless setup, the traced boot or a run failed.
set -uo pipefail

orig_args="$*"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)
build="$src/build/release"
client_counts="16 64"
runs=1
iops_limit=2000
bps_limit=104857600
think_scale=0
load_rate=500
prefetch_rate=32M
guest=/var/tmp/icbd-boot-guest
keep_trace=""
dir=/var/tmp
qemu_timeout=900
out=""

die() { echo "boot_storm_trace: $*" >&2; exit 2; }
log() { echo "boot_storm_trace: $*" >&2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build) need_arg "$@"; build=$2; shift 2 ;;
    --clients) need_arg "$@"; client_counts=$2; shift 2 ;;
    --runs) need_arg "$@"; runs=$2; shift 2 ;;
    --iops) need_arg "$@"; iops_limit=$2; shift 2 ;;
    --bps) need_arg "$@"; bps_limit=$2; shift 2 ;;
    --think-scale) need_arg "$@"; think_scale=$2; shift 2 ;;
    --load-rate) need_arg "$@"; load_rate=$2; shift 2 ;;
    --prefetch-rate) need_arg "$@"; prefetch_rate=$2; shift 2 ;;
    --guest) need_arg "$@"; guest=$2; shift 2 ;;
    --trace) need_arg "$@"; keep_trace=$2; shift 2 ;;
    --dir) need_arg "$@"; dir=$2; shift 2 ;;
    --qemu-timeout) need_arg "$@"; qemu_timeout=$2; shift 2 ;;
    --out) need_arg "$@"; out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
for v in runs iops_limit bps_limit qemu_timeout load_rate; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--${v%_limit} must be a whole number >= 1, not '${!v}'"
done
max_clients=0
for n in $client_counts; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] && [ "$n" -le 256 ] || die "--clients takes numbers from 1 to 256, not '$n'"
  [ "$n" -gt "$max_clients" ] && max_clients=$n
done
[ "$max_clients" -gt 0 ] || die "--clients is empty"
[ "$(id -u)" -eq 0 ] || die "needs root (tgtd, loop devices, the block throttle, debootstrap)"
build=$(cd "$build" 2>/dev/null && pwd) || die "build dir not found"
replay="$build/bench/icbd-boot-replay"
load="$build/bench/icbd-iscsi-load"
prefetch="$build/prefetch/icbd-prefetch"
for f in "$replay" "$load" "$prefetch"; do
  [ -x "$f" ] || die "$f not built (cmake --build --preset release --target icbd-boot-replay icbd-iscsi-load icbd-prefetch bs_icbd icbd_tgt_preload)"
done
[ -f "$build/modules/bs_icbd.so" ] || die "$build/modules/bs_icbd.so not built"
for t in tgtd tgtadm python3 dd losetup mkfs.ext4 mount umount; do
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || die "'$t' not found (scripts/install-deps.sh installs it)"
done
qemu_iscsi=$(ls /usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so 2>/dev/null)
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || [ -z "$qemu_iscsi" ]; then
  log "installing qemu-system-x86 and qemu-block-extra (apt-get; the bench's own need, not the tests')"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 qemu-block-extra >/dev/null ||
    die "apt-get install qemu-system-x86 qemu-block-extra failed"
fi
[ -d "$dir" ] || die "--dir $dir does not exist"

# shellcheck source=lib_throttle.sh
source "$here/lib_throttle.sh"
throttle_detect || die "no block throttle: neither cgroup v2 io.max nor cgroup v1 blkio.throttle is available"

# --- the guest --------------------------------------------------------------------
"$here/make_boot_guest.sh" "$guest" || die "building the guest in $guest failed"

# --- cleanup: everything this script starts, creates or changes ------------------
work=$(mktemp -d "$dir/icbd-bstrace.XXXXXX") || die "mktemp in $dir failed"
TGTD_PID=""
child=""
bg_pids=()
loopdev=""
devno=""
mnt=""
cg2=""
throttled=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${bg_pids[@]}" $child; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  throttle_lift
  if [ -n "$TGTD_PID" ]; then tgtd_stop >/dev/null 2>&1 || true; fi
  throttle_remove
  if [ -n "$mnt" ] && mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt"; fi
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
  if [ "$rc" -ne 0 ] && [ -d "$work" ]; then
    for p in tgtd.log qemu.log console.log; do [ -f "$work/$p" ] && cp "$work/$p" "/tmp/boot_storm_trace.$p"; done
    log "logs kept in /tmp/boot_storm_trace.{tgtd,qemu,console}.log"
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "boot_storm_trace: interrupted" >&2; exit 130' INT TERM

# shellcheck source=lib_backends.sh
source "$src/bench/lib_backends.sh"  # run_child, reset_page_cache
now() { date +%s.%N; }

# --- the slow disk ------------------------------------------------------------------
guest_bytes=$(stat -c %s "$guest/disk.raw")
img="$work/slowdisk.img"
truncate -s $(( guest_bytes + (1536 << 20) )) "$img" || die "cannot create $img"
loopdev=$(losetup --find --show --direct-io=on "$img") || die "cannot attach $img to a loop device"
loopname=${loopdev#/dev/}
devno=$(cat "/sys/block/$loopname/dev")
mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$loopdev" >/dev/null 2>&1 || die "mkfs.ext4 $loopdev failed"
mnt="$work/mnt"
mkdir -p "$mnt" && mount "$loopdev" "$mnt" || die "cannot mount $loopdev"
mkdir -p "$mnt/golden" "$mnt/overlays" "$mnt/.bootsets" || die "cannot create directories on $mnt"
golden="$mnt/golden/disk.raw"
sidecar="$mnt/.bootsets/disk.raw.bset"
log "copying the guest's disk to $golden (in full) and 512 MiB of random data to load.raw"
run_child - - cp --sparse=never "$guest/disk.raw" "$golden" || die "cannot copy the guest's disk"
run_child - - dd if=/dev/urandom of="$mnt/load.raw" bs=1M count=512 iflag=fullblock status=none || die "cannot fill load.raw"
sync -f "$mnt"

# --- tgtd and the throttle -----------------------------------------------------------
export ICBD_BUILD=$build
# shellcheck source=../scripts/lib/tgtd.sh
source "$src/scripts/lib/tgtd.sh"
TGTD_LOG="$work/tgtd.log"
tgtd_start || die "tgtd did not start"
log "tgtd pid $TGTD_PID, portal 127.0.0.1:$TGTD_PORT"
throttle_cgroup icbd-bstrace || die "cannot create a cgroup with the io controller for the throttle"
throttle_join "$TGTD_PID" || die "cannot move tgtd into $cg2"
throttle_desc="$(throttle_desc "$iops_limit" "$bps_limit") (tgtd and icbd-prefetch)"
throttle_on() { throttle_set "$iops_limit" "$bps_limit"; }
throttle_on || die "cannot set the throttle on $devno"
log "throttle: $throttle_desc"
# Prefix of a command that must run in the throttled cgroup (v2; in v1 everything is in the root's).
in_cgroup=()
[ -n "$cg2" ] && in_cgroup=(sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg2")

# Writes back, drops the golden file's (and load.raw's) pages, waits for the disk to be idle.
settle() {
  local i r w
  sync -f "$mnt" 2>/dev/null || sync
  reset_page_cache "$golden" cold
  reset_page_cache "$mnt/load.raw" cold
  for i in $(seq 600); do
    read -r r w <"/sys/block/$loopname/inflight"
    [ "$r" = 0 ] && [ "$w" = 0 ] && break
    sleep 0.1
  done
}
loop_reads() { awk '{print $1, $3}' "/sys/block/$loopname/stat"; }  # requests, sectors
clk_tck=$(getconf CLK_TCK)
drops() { awk '$1 == "drop_pagecache" {print $2}' /proc/vmstat; }  # someone else's drop_caches
tgtd_cpu_ticks() {  # utime + stime of the whole tgtd process (all threads)
  local stat
  stat=$(cat "/proc/$TGTD_PID/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }
  # shellcheck disable=SC2086  # split into fields on purpose
  set -- $stat
  echo $(( ${12} + ${13} ))
}

# --- the traced boot -------------------------------------------------------------------
iqn_boot=iqn.2024-01.org.icbd:bstrace-boot
tgtd_adm --op new --mode target --tid 1 -T "$iqn_boot" || die "cannot create $iqn_boot"
tgtd_adm --op new --mode logicalunit --tid 1 --lun 1 --bstype icbd --blocksize 512 --backing-store "$golden" \
  --bsopts "overlay=$mnt/overlays/traced.ovl;bootset=$sidecar;bootset_window=3600" ||
  die "cannot add the traced boot's LUN (see $TGTD_LOG: $(tail -1 "$TGTD_LOG"))"
tgtd_adm --op bind --mode target --tid 1 -I ALL || die "cannot bind $iqn_boot"
settle
read -r breq0 bsec0 < <(loop_reads)
log "booting the guest under QEMU (TCG) from iscsi://127.0.0.1:$TGTD_PORT/$iqn_boot/1 (timeout $qemu_timeout s)"
tb0=$(now)
run_child "$work/console.log" "$work/qemu.err" timeout "$qemu_timeout" qemu-system-x86_64 -accel tcg -m 512 -smp 1 \
  -nographic -no-reboot -serial stdio -monitor none \
  -kernel "$guest/vmlinuz" -initrd "$guest/initrd.gz" -append "console=ttyS0 panic=-1 ro" \
  -iscsi initiator-name=iqn.2024-01.org.icbd:bstrace-guest \
  -drive "file=iscsi://127.0.0.1:$TGTD_PORT/$iqn_boot/1,format=raw,if=virtio" \
  -trace virtio_blk_handle_read -trace virtio_blk_handle_write -trace virtio_blk_rw_complete \
  -msg timestamp=on -D "$work/qemu.log" </dev/null
qrc=$?
boot_s=$(awk -v a="$tb0" -v b="$(now)" 'BEGIN{printf "%.1f", b - a}')
read -r breq1 bsec1 < <(loop_reads)
[ $qrc -eq 0 ] || die "the guest did not power off cleanly (qemu/timeout rc $qrc after $boot_s s; console: $(tail -3 "$work/console.log" | tr '\n' ' '); qemu: $(tail -2 "$work/qemu.err" | tr '\n' ' '))"
grep -q 'reboot: Power down' "$work/console.log" || log "warning: the console does not show 'reboot: Power down'"
failed_units=$(grep -c 'FAILED' "$work/console.log" || true)
log "the guest booted and powered off in $boot_s s ($failed_units unit line(s) with FAILED on its console)"
tgtd_adm --op delete --mode logicalunit --tid 1 --lun 1 || die "cannot delete the traced boot's LUN"
for i in $(seq 100); do [ -s "$sidecar" ] && break; sleep 0.1; done
[ -s "$sidecar" ] || die "no boot set sidecar at $sidecar after the LUN closed (see $TGTD_LOG)"
trace="$work/boot.trace"
python3 "$here/boot_trace.py" convert "$work/qemu.log" "$trace" || die "cannot convert QEMU's trace"
[ -n "$keep_trace" ] && cp "$trace" "$keep_trace"
trace_json=$(python3 "$here/boot_trace.py" summary "$trace") || die "cannot summarise the trace"
log "trace: $trace_json"
boot_disk_reqs=$((breq1 - breq0)); boot_disk_bytes=$(( (bsec1 - bsec0) * 512 ))

# --- the clients' LUNs ------------------------------------------------------------------
urls_of() {  # urls_of N: the first N clients' URLs, one a line
  local i
  for i in $(seq "$1"); do echo "iscsi://127.0.0.1:$TGTD_PORT/iqn.2024-01.org.icbd:bstrace-c$i/1"; done
}
for i in $(seq "$max_clients"); do
  tid=$((100 + i))
  tgtd_adm --op new --mode target --tid "$tid" -T "iqn.2024-01.org.icbd:bstrace-c$i" || die "cannot create client target $i"
  tgtd_adm --op new --mode logicalunit --tid "$tid" --lun 1 --bstype icbd --blocksize 512 --backing-store "$golden" \
    --bsopts "overlay=$mnt/overlays/c$i.ovl;bootset_window=0" || die "cannot add client LUN $i (see $TGTD_LOG)"
  tgtd_adm --op bind --mode target --tid "$tid" -I ALL || die "cannot bind client target $i"
done
tgtd_adm --op new --mode target --tid 99 -T iqn.2024-01.org.icbd:bstrace-load || die "cannot create the load target"
tgtd_adm --op new --mode logicalunit --tid 99 --lun 1 --bstype icbd --blocksize 4096 --backing-store "$mnt/load.raw" ||
  die "cannot add the load LUN"
tgtd_adm --op bind --mode target --tid 99 -I ALL || die "cannot bind the load target"
load_url="iscsi://127.0.0.1:$TGTD_PORT/iqn.2024-01.org.icbd:bstrace-load/1"
log "$max_clients client LUNs and the load LUN exported"

# --- the storms ------------------------------------------------------------------------
raw="$work/raw.tsv"
printf 'run\tclients\tcase\tresident_mib\tdrops\ttgtd_cpu_s\treplay_cpu_s\twall_s\tfirst_s\tp50_us\tp99_us\tmax_us\tdisk_reqs\tdisk_bytes\tpf_s\tpf_read_bytes\tpf_reqs\tpf_end\tpf_disk_reqs\n' >"$raw"
prefetch_json() {  # prefetch_json [ARGS]: icbd-prefetch of the golden file; sets pf="seconds read_bytes requests end"
  local rc
  run_child "$work/pf.json" "$work/pf.err" "${in_cgroup[@]}" "$prefetch" --json "$@" --bootset "$sidecar" "$golden"
  rc=$?
  [ $rc -eq 0 ] || { log "icbd-prefetch failed (rc $rc): $(tail -2 "$work/pf.err" | tr '\n' ' ')"; return 1; }
  pf=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
t, f = d["total"], d.get("files") or [{}]
print(t["seconds"], t["read_bytes"], t["requests"], str(f[0].get("end", "none")).replace(" ", "_"))' "$work/pf.json") ||
    { log "unreadable icbd-prefetch output: $(head -c 300 "$work/pf.json")"; return 1; }
}
failures=0
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
uptime_before=$(uptime)
for run in $(seq "$runs"); do
  for n in $client_counts; do
    urls_of "$n" >"$work/urls"
    for c in cold prefetched warm; do
      settle
      pf="- - - -"; pfd="-"
      if [ "$c" = prefetched ]; then
        read -r q0 _ < <(loop_reads)
        prefetch_json || { failures=$((failures + 1)); continue; }
        read -r q1 _ < <(loop_reads)
        pfd=$((q1 - q0))
      elif [ "$c" = warm ]; then
        throttle_set 0 0
        reset_page_cache "$golden" warm || log "warming $golden failed"
        throttle_on
      fi
      resident=$(fincore -nb -o RES "$golden" 2>/dev/null | awk '{printf "%.0f", $1 / 1048576}')
      drops0=$(drops)
      read -r r0 s0 < <(loop_reads)
      cpu0=$(tgtd_cpu_ticks)
      run_child "$work/replay.json" "$work/replay.err" timeout 900 "$replay" --trace "$trace" --urls-file "$work/urls" \
        --think-scale "$think_scale" --json
      rc=$?
      read -r r1 s1 < <(loop_reads)
      cpu=$(awk -v d=$(( $(tgtd_cpu_ticks) - cpu0 )) -v hz="$clk_tck" 'BEGIN{printf "%.2f", d/hz}')
      disturbed=$(( $(drops) - drops0 ))
      if [ $rc -ne 0 ]; then
        log "run $run, $n clients, $c: icbd-boot-replay failed (rc $rc): $(tail -3 "$work/replay.err" | tr '\n' ' ')"
        failures=$((failures + 1))
        continue
      fi
      read -r wall first p50 p99 mx rcpu < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); l=d["lat_us"]
print(d["wall_s"], d["first_done_s"], l["p50"], l["p99"], l["max"], d.get("cpu_s", "-"))' "$work/replay.json")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$n" "$c" "$resident" "$disturbed" "$cpu" "$rcpu" "$wall" "$first" "$p50" "$p99" "$mx" \
        "$((r1 - r0))" "$(( (s1 - s0) * 512 ))" $pf "$pfd" >>"$raw"
      log "run $run/$runs, $n clients, $c: $resident MiB of the golden file cached before,$( [ "$disturbed" -gt 0 ] && echo " DISTURBED (someone dropped the page cache $disturbed time(s))") last client done at $wall s, p99 $p99 us, disk $((r1 - r0)) requests / $(( (s1 - s0) * 512 / 1048576 )) MiB$( [ "$c" = prefetched ] && echo " (prefetch before: $pf, $pfd disk requests)")"
    done
  done
done

# --- prefetch interference -----------------------------------------------------------------
# The load lasts twice the prefetch's time (from the prefetched runs) plus 2 s,
# so that a rate-limited prefetch ends within it too.
pf_s=$(awk -F'\t' 'NR > 1 && $3 == "prefetched" && $15 != "-" {s = $15} END {print s + 0}' "$raw")
load_s=$(awk -v p="$pf_s" 'BEGIN{v = 2 * p + 2; if (v < 4) v = 4; printf "%.1f", v}')
interf="$work/interf.tsv"
printf 'run\tcase\tiops\tp50_us\tp99_us\tp999_us\tmax_us\tpf_s\n' >"$interf"
load_once() {  # load_once CASE: alone, with_prefetch, with_prefetch_limited
  local case=$1 lp rc pfs="-"
  settle
  "$load" --url "$load_url" --rw read --pattern random --bs 4096 --qd 4 --rate "$load_rate" --seconds "$load_s" --json \
    >"$work/load.json" 2>"$work/load.err" &
  lp=$!
  bg_pids=("$lp")
  if [ "$case" != alone ]; then
    sleep 0.5
    local extra=()
    [ "$case" = with_prefetch_limited ] && extra=(--max-rate "$prefetch_rate")
    if prefetch_json "${extra[@]}"; then pfs=${pf%% *}; else failures=$((failures + 1)); fi
  fi
  wait "$lp"
  rc=$?
  bg_pids=()
  [ $rc -eq 0 ] || { log "icbd-iscsi-load failed (rc $rc): $(tail -2 "$work/load.err" | tr '\n' ' ')"; failures=$((failures + 1)); return; }
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); l=d["lat_us"]
print("\t".join(str(x) for x in (sys.argv[2], sys.argv[3], round(d["iops"]), l["p50"], l["p99"], l["p999"], l["max"], sys.argv[4])))' \
    "$work/load.json" "$run" "$case" "$pfs" >>"$interf"
  log "interference run $run, $case: $(tail -1 "$interf")"
}
for run in $(seq "$runs"); do
  load_once alone
  load_once with_prefetch
  load_once with_prefetch_limited
done
uptime_after=$(uptime)

# --- report ----------------------------------------------------------------------------------
report="$work/report.md"
{
  echo "### Boot storm replayed from a real guest boot: ${client_counts// /, } clients, cold / prefetched / warm"
  echo
  echo "- started: $started; host $(hostname), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
  echo "- tgtd: Debian tgt $(dpkg-query -W -f='${Version}' tgt 2>/dev/null), one instance; icbd module from $build/modules; QEMU $(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null) (TCG)"
  echo "- guest: $(cat "$guest/README" 2>/dev/null); booted in $boot_s s (TCG, 1 vCPU, 512 MiB) from an icbd overlay LUN through QEMU's libiscsi driver, virtio-blk; the disk served $boot_disk_reqs requests / $((boot_disk_bytes / 1048576)) MiB for that cold boot"
  echo "- trace: \`$trace_json\`"
  echo "- boot set recorded by that LUN (bootset=): $(stat -c %s "$sidecar") bytes of sidecar"
  echo "- slow disk: $loopdev (direct I/O) over a sparse file in $dir, ext4; limit: $throttle_desc"
  echo "- replay: icbd-boot-replay --think-scale $think_scale (0: no guest think time, only the trace's dependencies and concurrency); one target per client, LUN block size 512, icbd overlay over the golden file"
  echo "- $runs run(s) per case, interleaved; load before: \`${uptime_before# }\`; after: \`${uptime_after# }\`"
  echo "- command: \`bench/boot_storm_trace.sh${orig_args:+ $orig_args}\`"
  echo
} >"$report"
python3 - "$raw" "$interf" "$load_rate" "$prefetch_rate" >>"$report" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = lambda v: statistics.median(v) if v else None
def used(n, c):
    rs = [r for r in rows if r["clients"] == n and r["case"] == c]
    calm = [r for r in rs if r["drops"] == "0"]
    return calm or rs
def m(n, c, k):
    return med([float(r[k]) for r in used(n, c) if r[k] not in ("-", "")])
print("Medians of the runs; a run during which someone else dropped the page cache (/proc/vmstat drop_pagecache) is left out when the case has others, and flagged.")
print()
print("| clients | case | last client done s | first client done s | read p50 / p99 µs | disk reads | avg KiB/read | golden cached before, MiB | CPU s tgtd / replayer | prefetch before: s, MiB, disk reads |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
for n in dict.fromkeys(r["clients"] for r in rows):
    for c in ("cold", "prefetched", "warm"):
        w = m(n, c, "wall_s")
        if w is None:
            print(f"| {n} | {c} | failed | | | | | | | |"); continue
        reqs, b = m(n, c, "disk_reqs"), m(n, c, "disk_bytes")
        avg = f"{b / reqs / 1024:.0f}" if reqs >= 1 else "–"
        pf = "–"
        if c == "prefetched" and m(n, c, "pf_s") is not None:
            pf = f"{m(n, c, 'pf_s'):.2f} s, {m(n, c, 'pf_read_bytes') / 1048576:.0f} MiB, {m(n, c, 'pf_disk_reqs'):.0f}"
        flag = " (disturbed)" if any(r["drops"] != "0" for r in used(n, c)) else ""
        print(f"| {n} | {c}{flag} | {w:.3f} | {m(n, c, 'first_s'):.3f} | {m(n, c, 'p50_us'):.0f} / {m(n, c, 'p99_us'):.0f} | {reqs:.0f} | {avg} | {m(n, c, 'resident_mib'):.0f} | {m(n, c, 'tgtd_cpu_s'):.1f} / {m(n, c, 'replay_cpu_s'):.1f} | {pf} |")
print()
print("| clients | prefetched / warm (target <= 1.1x) | cold / prefetched (target >= 3x) | p99 prefetched / warm |")
print("|---:|---:|---:|---:|")
for n in dict.fromkeys(r["clients"] for r in rows):
    c, p, w = (m(n, x, "wall_s") for x in ("cold", "prefetched", "warm"))
    if None in (c, p, w): continue
    print(f"| {n} | {p / w:.2f}x | {c / p:.1f}x | {m(n, 'prefetched', 'p99_us') / m(n, 'warm', 'p99_us'):.2f}x |")
irows = list(csv.DictReader(open(sys.argv[2]), delimiter="\t"))
if irows:
    print()
    print(f"Prefetch interference: 4 KiB random reads at {sys.argv[3]}/s (at most 4 in flight) on another LUN of the same slow disk (cold file); limited = icbd-prefetch --max-rate {sys.argv[4]}:")
    print()
    print("| case | IOPS | p50 / p99 / p99.9 / max µs | prefetch s |")
    print("|---|---:|---:|---:|")
    for c in ("alone", "with_prefetch", "with_prefetch_limited"):
        rs = [r for r in irows if r["case"] == c]
        if not rs: continue
        g = lambda k: med([float(r[k]) for r in rs])
        pfs = [float(r["pf_s"]) for r in rs if r["pf_s"] != "-"]
        print(f"| {c.replace('_', ' ')} | {g('iops'):,.0f} | {g('p50_us'):.0f} / {g('p99_us'):.0f} / {g('p999_us'):.0f} / {g('max_us'):.0f} | {f'{med(pfs):.2f}' if pfs else '–'} |")
PY
cat "$report"
[ -n "$out" ] && cp "$report" "$out"
if [ "$failures" -gt 0 ]; then
  log "$failures run(s) failed; see the messages above"
  exit 1
fi
exit 0
