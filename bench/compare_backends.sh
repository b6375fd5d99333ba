#!/usr/bin/env bash
# compare_backends.sh: tgt's bstypes null (protocol ceiling), rdwr, aio and our
# icbd over the same backing file, in one run on one private tgtd.
#
#   bench/compare_backends.sh [options]
#     --build DIR        CMake build dir with modules/ and bench/ (default build/release)
#     --seconds S        seconds per run, whole number (default 5)
#     --runs N           runs per workload and backend (default 3)
#     --size SIZE        backing file size for dd, e.g. 1G, 512M (default 1G)
#     --dir DIR          where the backing file goes (default /var/tmp)
#     --fs TYPE          put the backing file on a fresh TYPE filesystem (ext4,
#                        xfs or btrfs) on a loop device over a file in --dir;
#                        removed at exit (default: --dir itself)
#     --btrfs            the same as --fs btrfs (where golden images live)
#     --block-size N     logical block size of every LUN (default 4096; 512 is
#                        what a LUN created without --blocksize has)
#     --bstypes "LIST"   backends to compare (default "null rdwr aio icbd"); "overlay"
#                        is icbd serving a client overlay over the backing file
#                        (the backing file is the golden file; overlay under --dir);
#                        "icbd-dw" is icbd with --bsopts direct=writes
#     --workloads "LIST" subset of: rr4k-qd1 rr4k-qd8 rr4k-qd32 sr128k-qd8 rw4k-qd32 sw128k-qd8
#     --icbd-bsopts STR  --bsopts for the icbd LUN (default none: engine=auto)
#     --read-tool T      iscsi-perf (default) or load (our icbd-iscsi-load) for reads
#     --sessions N       reads with iscsi-perf: N initiator sessions at once on
#                        the LUN, each with the workload's queue depth (default
#                        1); IOPS are their sum (many clients, as in a boot storm)
#     --out FILE         also write the Markdown report to FILE
#     --raw FILE         also write one line per run (TSV) to FILE
#     --no-warmup        skip the 1 s warm-up read per LUN
#     --page-cache MODE  warm (default): the file is read back into the page
#                        cache before every run; cold: its pages are dropped
#                        and not read back (what 4 KiB buffered writes cost
#                        without readahead's 2 MiB folios; see below)
#
# Prints a Markdown report on stdout. Runs are interleaved (run 1 of every
# workload and backend, then run 2, ...) so that a burst of background load hits
# all backends alike. Ratios are figures, never a failure: the exit status is 0
# unless setup failed or a run itself failed (SCSI error, lost session), which
# is a bug to look at, not a slow result.
#
# Backing file: filled with random data (not sparse). Before every measured run
# of a file-backed LUN, its cached pages are dropped (after a sync) and the file
# is read again, so that every backend starts from the same page cache: all of
# the file resident, laid out as readahead lays it out (2 MiB folios on ext4 with
# kernel 6.18). Both halves matter: tgt's aio bstype always opens the file
# O_DIRECT (its own choice, so it reads and writes the disk), and its direct
# writes evict whole cached folios (0% resident after its write runs); and what
# created the cached folios (readahead or 4 KiB writes) changes the cost of a 4 KiB
# buffered write into them by 2x on ext4. Residency before each reset: --raw.
#
# tgtd CPU per operation: utime+stime of the whole tgtd process from
# /proc/PID/stat (every thread: rdwr's 16 worker threads, io_uring's io-wq
# workers) over the run, divided by the operations of that run. It excludes the
# initiator's CPU and softirq work charged to other tasks; the initiator runs on
# the same machine and competes for the same cores.
#
# Reads use libiscsi's iscsi-perf, as the issue asks. It picks random LBAs
# without aligning them to the transfer size, so with --block-size 512 seven
# of eight "4 KiB" reads start inside a page and straddle two (the set-up of
# the issue's held-out runs). It reports no latency, hence "–" in that
# column; --read-tool load measures reads with icbd-iscsi-load instead,
# latency included.
set -uo pipefail

orig_args="$*"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)
build="$src/build/release"
seconds=5
runs=3
size=1G
dir=/var/tmp
bstypes="null rdwr aio icbd"
all_workloads="rr4k-qd1 rr4k-qd8 rr4k-qd32 sr128k-qd8 rw4k-qd32 sw128k-qd8"
workloads=$all_workloads
icbd_bsopts=""
read_tool=iscsi-perf
sessions=1
out=""
raw_out=""
warmup=1
page_cache=warm
fs_type=""
lun_block_size=4096

die() { echo "compare_backends: $*" >&2; exit 2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build) need_arg "$@"; build=$2; shift 2 ;;
    --seconds) need_arg "$@"; seconds=$2; shift 2 ;;
    --runs) need_arg "$@"; runs=$2; shift 2 ;;
    --size) need_arg "$@"; size=$2; shift 2 ;;
    --dir) need_arg "$@"; dir=$2; shift 2 ;;
    --bstypes) need_arg "$@"; bstypes=$2; shift 2 ;;
    --workloads) need_arg "$@"; workloads=$2; shift 2 ;;
    --icbd-bsopts) need_arg "$@"; icbd_bsopts=$2; shift 2 ;;
    --read-tool) need_arg "$@"; read_tool=$2; shift 2 ;;
    --sessions) need_arg "$@"; sessions=$2; shift 2
      [[ "$sessions" =~ ^[1-9][0-9]?$ ]] || die "--sessions must be a number from 1 to 99, not '$sessions'" ;;
    --out) need_arg "$@"; out=$2; shift 2 ;;
    --raw) need_arg "$@"; raw_out=$2; shift 2 ;;
    --no-warmup) warmup=0; shift ;;
    --page-cache) need_arg "$@"; page_cache=$2; shift 2
      case "$page_cache" in warm|cold) ;; *) die "--page-cache must be 'warm' or 'cold', not '$page_cache'" ;; esac ;;
    --btrfs) fs_type=btrfs; shift ;;
    --fs) need_arg "$@"; fs_type=$2; shift 2
      case "$fs_type" in ext4|xfs|btrfs) ;; *) die "--fs must be ext4, xfs or btrfs, not '$fs_type'" ;; esac ;;
    --block-size) need_arg "$@"; lun_block_size=$2; shift 2
      case "$lun_block_size" in 512|1024|2048|4096) ;; *) die "--block-size must be 512, 1024, 2048 or 4096, not '$lun_block_size'" ;; esac ;;
    -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "--seconds must be a whole number >= 1 (iscsi-perf counts whole seconds), not '$seconds'"
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a number >= 1, not '$runs'"
[[ "$size" =~ ^[1-9][0-9]*[KMG]?$ ]] || die "--size must look like 1G, 512M or a byte count, not '$size'"
case "$read_tool" in iscsi-perf|load) ;; *) die "--read-tool must be iscsi-perf or load, not '$read_tool'" ;; esac
for w in $workloads; do
  [[ " $all_workloads " == *" $w "* ]] || die "unknown workload '$w' (known: $all_workloads)"
done
for b in $bstypes; do
  case "$b" in null|rdwr|aio|icbd|overlay|icbd-dw) ;; *) die "unknown bstype '$b' (known: null rdwr aio icbd overlay icbd-dw)" ;; esac
done
[ "$(id -u)" -eq 0 ] || die "needs root (tgtd)"
build=$(cd "$build" 2>/dev/null && pwd) || die "build dir not found (build first: cmake --preset release && cmake --build --preset release)"
load="$build/bench/icbd-iscsi-load"
[ -x "$load" ] || die "$load not built"
[ -f "$build/modules/bs_icbd.so" ] || die "$build/modules/bs_icbd.so not built"
for t in tgtd tgtadm iscsi-perf python3 dd; do
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || die "'$t' not found (scripts/install-deps.sh installs it)"
done
[ -d "$dir" ] || die "--dir $dir does not exist"
if [ -n "$fs_type" ]; then
  for t in "mkfs.$fs_type" losetup mount umount; do command -v "$t" >/dev/null 2>&1 || die "--fs $fs_type needs '$t'"; done
fi

# --- cleanup: everything this script starts or creates -------------------------
work=$(mktemp -d /tmp/icbd-compare.XXXXXX) || die "mktemp failed"
backing=""
TGTD_PID=""
child=""
children=()
fs_img=""
loopdev=""
mnt=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then kill "$child" 2>/dev/null; wait "$child" 2>/dev/null; fi
  for p in "${children[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [ -n "$TGTD_PID" ]; then tgtd_stop >/dev/null 2>&1 || true; fi
  [ -n "$backing" ] && rm -f "$backing"
  if [ -n "$mnt" ] && mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt"; fi
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
  [ -n "$fs_img" ] && rm -f "$fs_img"
  [ -n "${TGTD_LOG:-}" ] && rm -f "$TGTD_LOG"
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "compare_backends: interrupted" >&2; exit 130' INT TERM

# shellcheck source=lib_backends.sh
source "$src/bench/lib_backends.sh"  # run_child, export_backends

log() { echo "compare_backends: $*" >&2; }

# --- backing file ---------------------------------------------------------------
case "$size" in
  *G) mib=$(( ${size%G} * 1024 )) ;;
  *M) mib=${size%M} ;;
  *K) mib=$(( (${size%K} + 1023) / 1024 )) ;;
  *) mib=$(( (size + 1048575) / 1048576 )) ;;
esac
fsdir=$dir
if [ -n "$fs_type" ]; then
  fs_img=$(mktemp "$dir/icbd-compare-$fs_type.XXXXXX.img") || die "cannot create a file in $dir"
  truncate -s $(( mib + 1024 ))M "$fs_img" || die "cannot size $fs_img"
  loopdev=$(losetup --find --show "$fs_img") || die "cannot attach $fs_img to a loop device"
  case "$fs_type" in
    btrfs) mkfs.btrfs -q "$loopdev" >/dev/null 2>&1 ;;
    xfs) mkfs.xfs -q "$loopdev" >/dev/null 2>&1 ;;
    ext4) mkfs.ext4 -q -F "$loopdev" >/dev/null 2>&1 ;;
  esac || die "mkfs.$fs_type $loopdev failed"
  mnt="$work/mnt"
  mkdir -p "$mnt" && mount "$loopdev" "$mnt" || die "cannot mount $loopdev"
  fsdir=$mnt
fi
backing=$(mktemp "$fsdir/icbd-compare.XXXXXX.img") || die "cannot create a file in $fsdir"
log "filling $backing ($size of random data)"
run_child - - dd if=/dev/urandom of="$backing" bs=1M count="$mib" iflag=fullblock conv=fsync status=none ||
  die "cannot fill $backing"
# Puts the file's page cache in the same state before every run
# (reset_page_cache, bench/lib_backends.sh). Sets `cached` to the resident
# fraction found before.
cached="?"
reset_cache() {
  if command -v fincore >/dev/null 2>&1; then
    cached=$(fincore -nb -o RES,SIZE "$backing" 2>/dev/null | awk '{ if ($2 > 0) printf "%.0f%%", 100 * $1 / $2 }')
  fi
  reset_page_cache "$backing" "$page_cache" || die "cannot read $backing"
}
reset_cache

# --- tgtd -------------------------------------------------------------------------
export ICBD_BUILD=$build
# shellcheck source=../scripts/lib/tgtd.sh
source "$src/scripts/lib/tgtd.sh"
TGTD_LOG="$work/tgtd.log"
tgtd_start || die "tgtd did not start"
log "tgtd pid $TGTD_PID, portal 127.0.0.1:$TGTD_PORT, control port $TGTD_CTL"

declare -A url
overlay_file="$work/bench.ovl"
export_backends bench || die "exporting the LUNs failed"

clk_tck=$(getconf CLK_TCK)
cpu_ticks() {  # utime + stime of the whole tgtd process, in clock ticks
  local stat
  stat=$(cat "/proc/$TGTD_PID/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }  # fields after "(comm)": state is field 3
  set -- $stat
  echo $(( ${12} + ${13} ))
}

# One measured run: sets result="ops iops mbps p50_us p99_us" or fails. Runs in
# this shell (not in $(...)) so that cleanup can stop the tool on a signal.
# iscsi-perf reports the average IOPS over whole seconds; ops = IOPS x seconds.
measure() {
  local b=$1 w=$2 secs=$3 res rc
  result=""
  local bsz qd rw pattern
  case "$w" in
    rr4k-qd*) bsz=4096; qd=${w#rr4k-qd}; rw=read; pattern=random ;;
    sr128k-qd*) bsz=131072; qd=${w#sr128k-qd}; rw=read; pattern=seq ;;
    rw4k-qd*) bsz=4096; qd=${w#rw4k-qd}; rw=write; pattern=random ;;
    sw128k-qd*) bsz=131072; qd=${w#sw128k-qd}; rw=write; pattern=seq ;;
  esac
  if [ "$rw" = read ] && [ "$read_tool" = iscsi-perf ]; then
    local rflag=() s sum=0
    [ "$pattern" = random ] && rflag=(-r)
    # -b counts LUN blocks; with 4096-byte blocks random reads stay page-aligned.
    # Sessions 2..N run in the background; session 1 runs as the child.
    children=()
    for s in $(seq 2 "$sessions"); do
      timeout $((secs + 60)) iscsi-perf -i "iqn.2024-01.org.icbd:perf-$s" -m "$qd" -b $((bsz / lun_block_size)) \
        -t "$secs" "${rflag[@]}" "${url[$b]}" >"$work/out.$s" 2>"$work/err.$s" &
      children+=($!)
    done
    run_child "$work/out.1" "$work/err.1" timeout $((secs + 60)) iscsi-perf -i "iqn.2024-01.org.icbd:perf" -m "$qd" \
      -b $((bsz / lun_block_size)) -t "$secs" "${rflag[@]}" "${url[$b]}"
    rc=$?
    for s in "${children[@]}"; do wait "$s" || rc=$?; done
    children=()
    for s in $(seq 1 "$sessions"); do
      if [ $rc -ne 0 ] || grep -qiE "failed|error" "$work/out.$s" "$work/err.$s"; then
        log "iscsi-perf on $b ($w) failed (rc $rc): $(cat "$work/out.$s" "$work/err.$s" | tr '\r' '\n' | grep -v '^$' | tail -2 | tr '\n' ' ')"
        return 1
      fi
      res=$(tr '\r' '\n' <"$work/out.$s" | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}')
      [ -n "$res" ] || { log "iscsi-perf on $b ($w), session $s: no result in its output"; return 1; }
      sum=$((sum + res))
    done
    res=$sum
    result="$((res * secs)) $res $(awk -v i="$res" -v b="$bsz" 'BEGIN{printf "%.1f", i*b/1e6}') - -"
  else
    run_child "$work/out" "$work/err" timeout $((secs + 60)) "$load" --url "${url[$b]}" --rw "$rw" \
      --pattern "$pattern" --bs "$bsz" --qd "$qd" --seconds "$secs" --json
    rc=$?
    if [ $rc -ne 0 ]; then
      log "icbd-iscsi-load on $b ($w) failed (rc $rc): $(tail -2 "$work/err" | tr '\n' ' ')"
      return 1
    fi
    result=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ops"], round(d["iops"]), "%.1f" % d["mb_per_s"], d["lat_us"]["p50"], d["lat_us"]["p99"])' <"$work/out") ||
      { log "icbd-iscsi-load on $b ($w): unreadable output"; return 1; }
  fi
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
uptime_before=$(uptime)
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

if [ "$warmup" = 1 ]; then
  for b in $bstypes; do
    log "warm-up: $b"
    measure "$b" rr4k-qd8 1 || log "warm-up on $b failed"
  done
fi

raw="$work/raw.tsv"
printf 'run\tworkload\tbstype\tops\tiops\tmbps\tp50_us\tp99_us\tcpu_s\tcpu_us_per_op\tload1\tcached_before\n' >"$raw"
failures=0
for run in $(seq "$runs"); do
  for w in $workloads; do
    for b in $bstypes; do
      cached="-"
      [ "$b" != null ] && reset_cache
      la=$(loadavg)
      t0=$(cpu_ticks)
      if measure "$b" "$w" "$seconds"; then
        t1=$(cpu_ticks)
        read -r ops iops mbps p50 p99 <<<"$result"
        cpu=$(awk -v d=$((t1 - t0)) -v hz="$clk_tck" 'BEGIN{printf "%.2f", d/hz}')
        cpuop=$(awk -v c="$cpu" -v o="$ops" 'BEGIN{ if (o > 0) printf "%.2f", c*1e6/o; else print "nan" }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$w" "$b" "$ops" "$iops" "$mbps" "$p50" \
          "$p99" "$cpu" "$cpuop" "${la%% *}" "$cached" >>"$raw"
        log "run $run/$runs $w $b: $iops IOPS, $mbps MB/s, tgtd ${cpuop} us CPU/op (load $la)"
      else
        failures=$((failures + 1))
        printf '%s\t%s\t%s\tFAILED\t\t\t\t\t\t\t%s\t%s\n' "$run" "$w" "$b" "${la%% *}" "$cached" >>"$raw"
      fi
      # Settle written data outside the measured window, so one backend's
      # writeback does not land in the next one's run.
      case "$w" in rw*|sw*) sync "$backing" 2>/dev/null || true ;; esac
    done
  done
done
uptime_after=$(uptime)
[ -n "$raw_out" ] && cp "$raw" "$raw_out"

# --- report -----------------------------------------------------------------------
report="$work/report.md"
{
  echo "## tgt backends over one backing file: ${bstypes// /, }"
  echo
  echo "- started: $started; host $(hostname), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
  echo "- tgtd: Debian tgt $(dpkg-query -W -f='${Version}' tgt 2>/dev/null), one instance; icbd module from $build/modules; icbd bsopts: '${icbd_bsopts:-(default)}'"
  echo "- backing file: $size of random data on $(findmnt -n -o FSTYPE -T "$fsdir" 2>/dev/null || echo ?)$( [ -n "$fs_type" ] && echo " (fresh, on a loop device over a file in $dir)" || echo " ($dir)"), $( [ "$page_cache" = cold ] && echo "its cached pages dropped (and not read back) before every run" || echo "dropped from and read back into the page cache before every run"); LUN block size $lun_block_size; the null LUN has no file (1 TiB)"
  echo "- reads: $( [ "$read_tool" = iscsi-perf ] && echo "libiscsi iscsi-perf (IOPS averaged over whole seconds$( [ "$sessions" -gt 1 ] && echo "; $sessions sessions at once, IOPS summed"))" || echo "icbd-iscsi-load"); writes: icbd-iscsi-load (no FUA)"
  echo "- $runs runs x $seconds s per workload and backend, interleaved; tgtd CPU = utime+stime of the whole process / ops"
  echo "- load before: \`${uptime_before# }\`"
  echo "- load after: \`${uptime_after# }\`"
  echo "- command: \`bench/compare_backends.sh${orig_args:+ $orig_args}\`"
  echo
} >"$report"
python3 - "$here" "$raw" "$bstypes" >>"$report" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from runs_report import Runs, fmt, med, median_iops_table
runs, bstypes = Runs(sys.argv[2]), sys.argv[3].split()
names = {"rr4k-qd1": "4K rand read qd1", "rr4k-qd8": "4K rand read qd8", "rr4k-qd32": "4K rand read qd32",
         "sr128k-qd8": "128K seq read qd8", "rw4k-qd32": "4K rand write qd32", "sw128k-qd8": "128K seq write qd8"}

print("### Summary: median IOPS\n")
median_iops_table(runs, bstypes, names, ("icbd/null", "icbd/rdwr", "icbd/aio", "overlay/icbd",
                                         "icbd-dw/rdwr", "icbd-dw/aio", "icbd-dw/icbd"))

print("\n### Detail: min / median / max of the runs\n")
print("| workload | bstype | IOPS | MB/s | tgtd CPU µs/op | p50 / p99 latency µs (median run) |")
print("|---|---|---:|---:|---:|---:|")
for w in runs.workloads:
    for b in bstypes:
        i, mb, c = runs.vals(w, b, "iops"), runs.vals(w, b, "mbps"), runs.vals(w, b, "cpu_us_per_op")
        p50, p99 = runs.vals(w, b, "p50_us"), runs.vals(w, b, "p99_us")
        def mmm(v, nd=0):
            return "n/a" if not v else f"{fmt(min(v), nd)} / **{fmt(med(v), nd)}** / {fmt(max(v), nd)}"
        lat = f"{med(p50):.0f} / {med(p99):.0f}" if p50 and p99 else "–"
        print(f"| {names.get(w, w)} | {b}{runs.failed_note(w, b)} | {mmm(i)} | {mmm(mb, 1)} | {mmm(c, 2)} | {lat} |")
PY
cat "$report"
[ -n "$out" ] && cp "$report" "$out"
if [ "$failures" -gt 0 ]; then
  log "$failures run(s) failed; see the messages above"
  exit 1
fi
exit 0
