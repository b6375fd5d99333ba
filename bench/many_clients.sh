#!/usr/bin/env bash
# many_clients.sh: one cache server with N desktops on one tgtd (issue 11). What
# N client LUNs (overlay + write-back cache each) cost tgtd in time, memory,
# descriptors and threads, and what a read storm over all of them delivers.
#
#   bench/many_clients.sh [options]
#     --clients N        desktops = targets = LUNs (default 200)
#     --cache-size SIZE  cache_size of each LUN's write-back cache (default 64M)
#     --image-size SIZE  golden image size, whole MiB or GiB (default 1G)
#     --boot SIZE        the boot region every desktop reads in the storm, from
#                        LBA 0 (default 256M)
#     --seconds S        duration of each storm phase (default 10)
#     --nofile N         run tgtd with RLIMIT_NOFILE N (soft and hard, set with
#                        prlimit on its PID right after it starts): creation
#                        stops at the first LUN that fails; the script shows
#                        tgtadm's error, tgtd's log line and that the failed LUN
#                        does not exist, then measures the LUNs it has
#     --build DIR        CMake build dir (default build/release)
#     --dir DIR          where the BTRFS image file goes (default /var/tmp)
#     --out FILE         also write the Markdown report to FILE
#     --keep             keep the work directory (tgtd log, per-client load
#                        outputs, timings); the filesystem, loop device and
#                        tgtd are always removed
#     --via-blockd       the product path instead of tgtadm by hand (below)
#     --parallel-adds K  with --via-blockd: after the sequential rounds, add
#                        (and remove) all N again from K blockctl callers at
#                        once (default 2; 0 skips it)
#     --idle S           with --via-blockd: seconds over which blockd's and
#                        tgtd's idle CPU is measured (default 30)
#
# Layout as blockd makes it (docs/image-layout.md, ../shared/DESIGN.md "Node
# daemon"): a fresh BTRFS on a loop device, the golden file
# images/img/1/disk.raw in a read-only snapshot, and per desktop pcNNN:
# `icbd-overlay create` of clients/pcNNN.ovl, then target
# iqn.2024-01.org.icbd:pcNNN, LUN 1 with bstype icbd and bsopts
# "overlay=...pcNNN.ovl;cache=...pcNNN.cache;cache_size=SIZE", and an ACL for
# the initiator iqn.2024-01.org.icbd.client:pcNNN only. One private tgtd with
# the uninstalled module (scripts/lib/tgtd.sh), as the tests run it.
#
# Measured: creation time (overlays apart; targets + LUNs + ACLs, and each
# `--op new --mode logicalunit` alone; a new cache is formatted and fsynced),
# tgtd's VmRSS, open descriptors (by kind) and threads before and after, then
# two storms where every desktop at once runs bench's icbd-iscsi-load (one
# session each, its own initiator name) over the boot region: 4 KiB random
# reads, then 64 KiB sequential reads, one command in flight per desktop (a
# booting guest reads mostly one at a time). IOPS and MiB/s: the sum of the
# desktops' own rates, and all their commands over the storm's wall time
# (launch to last exit, logins included); latency: the median and the worst
# of the desktops' own p99; tgtd's peak descriptors (one socket per session)
# and its CPU time. Then the teardown time (each LUN and target), and
# the time to export all of them again over the existing overlays and caches
# (recovered, not formatted: what blockd does when tgtd restarts).
#
# With --via-blockd: a master blockd and one replica blockd (the replica with
# this private tgtd), each repository a BTRFS on its own loop device
# (scripts/lib/blockd.sh); the golden image (--image-size of random data) is
# `blockctl image import`ed on the master and pushed to the replica; then on
# the replica, one after the other as an operator script would,
# `blockctl client add pcNNN --image img --initiator
# iqn.2024-01.org.icbd.client:pcNNN` (tgt.iqn_prefix makes the targets the
# same names as above). Measured: each add's wall time (blockctl included),
# blockd's and tgtd's VmRSS, descriptors and threads before and after (from
# /proc), where the time of 10 more adds and removes goes (strace of blockd:
# each tgtadm it runs, each fsync/fdatasync), `blockctl client list --json`
# with N clients, blockd's and tgtd's CPU while idle over --idle seconds (the
# reconcile passes every 2 s), the same two storms, then version 2 committed
# on the master, pushed and promoted, and the time until every session-less
# client serves it (polling `client list --json`), then the removal of all N;
# then all N added and removed again from --parallel-adds callers at once.
#
# Figures are figures: the exit status is 0 unless setup failed or a reader
# failed (SCSI error, lost session), which is a bug to look at.
set -uo pipefail

orig_args="$*"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)
build="$src/build/release"
clients=200
cache_size=64M
image_size=1G
boot=256M
seconds=10
nofile=""
dir=/var/tmp
out=""
keep=0
via_blockd=0
parallel_adds=2
idle_s=30

die() { echo "many_clients: $*" >&2; exit 2; }
log() { echo "many_clients: $*" >&2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) need_arg "$@"; clients=$2; shift 2 ;;
    --cache-size) need_arg "$@"; cache_size=$2; shift 2 ;;
    --image-size) need_arg "$@"; image_size=$2; shift 2 ;;
    --boot) need_arg "$@"; boot=$2; shift 2 ;;
    --seconds) need_arg "$@"; seconds=$2; shift 2 ;;
    --nofile) need_arg "$@"; nofile=$2; shift 2 ;;
    --build) need_arg "$@"; build=$2; shift 2 ;;
    --dir) need_arg "$@"; dir=$2; shift 2 ;;
    --out) need_arg "$@"; out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --via-blockd) via_blockd=1; shift ;;
    --parallel-adds) need_arg "$@"; parallel_adds=$2; shift 2 ;;
    --idle) need_arg "$@"; idle_s=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ "$clients" =~ ^[1-9][0-9]*$ ]] && [ "$clients" -le 999 ] || die "--clients must be a number from 1 to 999, not '$clients'"
[[ "$cache_size" =~ ^[1-9][0-9]*[MG]$ ]] || die "--cache-size must be whole MiB or GiB like 64M or 1G, not '$cache_size'"
mib_of() { case "$1" in *G) echo $(( ${1%G} * 1024 )) ;; *M) echo "${1%M}" ;; esac; }
[[ "$image_size" =~ ^[1-9][0-9]*[MG]$ ]] || die "--image-size must be whole MiB or GiB like 1G or 256M, not '$image_size'"
[[ "$boot" =~ ^[1-9][0-9]*[MG]$ ]] || die "--boot must be whole MiB or GiB like 256M, not '$boot'"
image_mib=$(mib_of "$image_size")
boot_mib=$(mib_of "$boot")
[ "$boot_mib" -le "$image_mib" ] || die "--boot $boot is larger than the image ($image_size)"
[[ "$seconds" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--seconds must be a number, not '$seconds'"
[ -z "$nofile" ] || [[ "$nofile" =~ ^[1-9][0-9]*$ ]] || die "--nofile must be a positive number, not '$nofile'"
[[ "$parallel_adds" =~ ^[0-9]+$ ]] && [ "$parallel_adds" -le 16 ] || die "--parallel-adds must be 0 to 16, not '$parallel_adds'"
[[ "$idle_s" =~ ^[1-9][0-9]*$ ]] || die "--idle must be a whole number of seconds, not '$idle_s'"
[ "$via_blockd" = 0 ] || [ -z "$nofile" ] || die "--nofile is not available with --via-blockd"
[ "$(id -u)" -eq 0 ] || die "needs root (tgtd, loop devices)"
build=$(cd "$build" 2>/dev/null && pwd) || die "build dir not found (build first: cmake --preset release && cmake --build --preset release --target icbd-iscsi-load bs_icbd icbd_tgt_preload icbd-overlay)"
load="$build/bench/icbd-iscsi-load"
overlay_tool="$build/blockd/icbd-overlay"
for f in "$load" "$overlay_tool"; do [ -x "$f" ] || die "$f not built"; done
[ -f "$build/modules/bs_icbd.so" ] || die "$build/modules/bs_icbd.so not built"
for t in tgtd tgtadm python3 dd mkfs.btrfs btrfs losetup mount umount prlimit; do
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || die "'$t' not found (scripts/install-deps.sh installs it)"
done
[ -d "$dir" ] || die "--dir $dir does not exist"
# Caches and overlays are sparse: the filesystem holds the golden file, the
# caches' metadata and BTRFS's own; twice the image plus 1 GiB leaves room.
fs_mib=$(( 2 * image_mib + 1024 ))
avail_mib=$(( $(df -Pk "$dir" | awk 'NR==2 {print $4}') / 1024 ))
[ "$avail_mib" -gt $(( image_mib + 1024 )) ] || die "$dir has $avail_mib MiB free; needs about $(( image_mib + 1024 )) MiB"

# --- cleanup: everything this script starts or creates, even on failure ----------
work=$(mktemp -d /tmp/icbd-manyclients.XXXXXX) || die "mktemp failed"
TGTD_PID=""
fs_img=""
loopdev=""
mnt=""
pids=()
blockd_pids=()  # --via-blockd: the blockd processes, loop devices, mounts and work dir on --dir
b_loops=()
b_mounts=()
bwork=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  for p in "${blockd_pids[@]}"; do blockd_stop "$p"; done
  if [ -n "$TGTD_PID" ]; then tgtd_stop >/dev/null 2>&1 || true; fi
  for p in "${b_mounts[@]}"; do if mountpoint -q "$p"; then umount "$p" || umount -l "$p"; fi; done
  for p in "${b_loops[@]}"; do losetup -d "$p" 2>/dev/null; done
  [ -n "$bwork" ] && rm -rf "$bwork"
  if [ -n "$mnt" ] && mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt"; fi
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
  [ -n "$fs_img" ] && rm -f "$fs_img"
  if [ "$keep" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "many_clients: interrupted" >&2; exit 130' INT TERM

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b - a}'; }

# --- what is measured in tgtd (and blockd) -----------------------------------------
# tgtd's (or PID's) VmRSS in KiB, threads, open descriptors
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/${1:-$TGTD_PID}/status"; }
threads() { awk '/^Threads:/ {print $2}' "/proc/${1:-$TGTD_PID}/status"; }
nfds() { find "/proc/${1:-$TGTD_PID}/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
# Descriptors by kind: what each LUN holds (overlay, cache, io_uring, eventfd,
# timerfd), the shared golden file, and the rest (sockets, epoll, tgtd's own).
fd_kinds() {
  local f
  for f in "/proc/$TGTD_PID"/fd/*; do readlink "$f"; done 2>/dev/null | awk '
    /\.ovl$/ {k["overlay"]++; next} /\.cache$/ {k["cache"]++; next} /disk\.raw$/ {k["golden"]++; next}
    /io_uring/ {k["io_uring"]++; next} /aio/ {k["aio"]++; next} /eventfd/ {k["eventfd"]++; next}
    /timerfd/ {k["timerfd"]++; next} /^socket:/ {k["socket"]++; next} {k["other"]++}
    END {for (n in k) printf "%s %d, ", n, k[n]}' | sed 's/, $//'
}
name_of() { printf 'pc%03d' "$1"; }
clk_tck=$(getconf CLK_TCK)
tgtd_cpu_ticks() {  # utime + stime of tgtd (or PID; all its threads)
  local stat
  stat=$(cat "/proc/${1:-$TGTD_PID}/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }
  # shellcheck disable=SC2086  # split into fields on purpose
  set -- $stat
  echo $(( ${12} + ${13} ))
}
running() {  # how many background jobs other than tgtd and blockd still run (the readers)
  local p c=0
  for p in $(jobs -rp); do
    case " $TGTD_PID ${blockd_pids[*]} " in *" $p "*) ;; *) c=$((c + 1)) ;; esac
  done
  echo "$c"
}
# One storm: every desktop's reader starts at once. Sets storm_failed, the
# wall time from launch to the last exit, tgtd's CPU over it, and the sample
# with the most tgtd descriptors (most sessions logged in at once: each one
# is a socket), taken every half second.
storm() {  # name bs pattern
  local name=$1 bs=$2 pattern=$3 i n p rc f cpu0 a bcpu0=0
  storm_failed=0; storm_fds=0; storm_thr=0; storm_rss=0; storm_bcpu=0
  cpu0=$(tgtd_cpu_ticks)
  [ -z "${replica_pid:-}" ] || bcpu0=$(tgtd_cpu_ticks "$replica_pid")
  a=$(now)
  pids=()
  for i in $(seq "$created"); do
    n=$(name_of "$i")
    "$load" --url "iscsi://127.0.0.1:$TGTD_PORT/iqn.2024-01.org.icbd:$n/1" --initiator "iqn.2024-01.org.icbd.client:$n" \
      --rw read --pattern "$pattern" --bs "$bs" --qd 1 --span "${boot_mib}M" --seconds "$seconds" --seed "$i" --json \
      >"$work/$name-$n.json" 2>"$work/$name-$n.err" &
    pids+=($!)
  done
  while [ "$(running)" -gt 0 ]; do
    f=$(nfds)
    if [ "$f" -gt "$storm_fds" ]; then storm_fds=$f; storm_thr=$(threads); storm_rss=$(rss_kib); fi
    sleep 0.5
  done
  i=0
  for p in "${pids[@]}"; do
    i=$((i + 1))
    wait "$p"; rc=$?
    if [ $rc -ne 0 ]; then
      storm_failed=$((storm_failed + 1))
      log "storm $name: reader of $(name_of "$i") failed (rc $rc): $(tail -1 "$work/$name-$(name_of "$i").err")"
    fi
  done
  storm_wall=$(elapsed "$a" "$(now)")
  storm_cpu=$(awk -v d=$(( $(tgtd_cpu_ticks) - cpu0 )) -v hz="$clk_tck" 'BEGIN{printf "%.2f", d / hz}')
  [ -z "${replica_pid:-}" ] ||
    storm_bcpu=$(awk -v d=$(( $(tgtd_cpu_ticks "$replica_pid") - bcpu0 )) -v hz="$clk_tck" 'BEGIN{printf "%.2f", d / hz}')
  pids=()
}

# shellcheck source=bench/many_clients_blockd.sh
[ "$via_blockd" = 0 ] || source "$here/many_clients_blockd.sh"
if [ "$via_blockd" = 1 ]; then
  via_blockd_main
  exit $?
fi

# --- BTRFS with the golden image ---------------------------------------------------
fs_img=$(mktemp "$dir/icbd-manyclients-btrfs.XXXXXX.img") || die "cannot create a file in $dir"
truncate -s "${fs_mib}M" "$fs_img" || die "cannot size $fs_img"
loopdev=$(losetup --find --show "$fs_img") || die "cannot attach $fs_img to a loop device"
mkfs.btrfs -q "$loopdev" >/dev/null 2>&1 || die "mkfs.btrfs $loopdev failed"
mnt="$work/mnt"
mkdir -p "$mnt" && mount "$loopdev" "$mnt" || die "cannot mount $loopdev"
mkdir -p "$mnt/images/img" || die "cannot create $mnt/images/img"
btrfs -q subvolume create "$mnt/images/img/.tree-1-full" >/dev/null || die "cannot create a subvolume on $mnt"
log "filling the golden image ($image_size of random data)"
dd if=/dev/urandom of="$mnt/images/img/.tree-1-full/disk.raw" bs=1M count="$image_mib" iflag=fullblock conv=fsync status=none ||
  die "cannot fill the golden image"
btrfs -q subvolume snapshot -r "$mnt/images/img/.tree-1-full" "$mnt/images/img/1" >/dev/null ||
  die "cannot snapshot the golden image read-only"
btrfs -q subvolume delete "$mnt/images/img/.tree-1-full" >/dev/null || die "cannot delete the staging subvolume"
golden="$mnt/images/img/1/disk.raw"
btrfs -q subvolume create "$mnt/clients" >/dev/null || die "cannot create the clients subvolume"
cdir="$mnt/clients"

# --- tgtd ---------------------------------------------------------------------------
export ICBD_BUILD=$build
# shellcheck source=../scripts/lib/tgtd.sh
source "$src/scripts/lib/tgtd.sh"
TGTD_LOG="$work/tgtd.log"
tgtd_start || die "tgtd did not start"
if [ -n "$nofile" ]; then
  prlimit --pid "$TGTD_PID" --nofile="$nofile:$nofile" || die "prlimit --nofile=$nofile on tgtd $TGTD_PID failed"
fi
nofile_soft=$(awk '/^Max open files/ {print $4}' "/proc/$TGTD_PID/limits")
log "tgtd pid $TGTD_PID, portal 127.0.0.1:$TGTD_PORT, control port $TGTD_CTL, RLIMIT_NOFILE $nofile_soft"

rss0=$(rss_kib); fds0=$(nfds); thr0=$(threads); kinds0=$(fd_kinds)

# --- desktops -----------------------------------------------------------------------
t0=$(now)
for i in $(seq "$clients"); do
  n=$(name_of "$i")
  "$overlay_tool" create --golden "$golden" "$cdir/$n.ovl" >/dev/null || die "icbd-overlay create $cdir/$n.ovl failed"
done
t_ovl=$(now)
created=0
lun_times="$work/lun_create_s.txt"
: >"$lun_times"
fail_report=""
for i in $(seq "$clients"); do
  n=$(name_of "$i")
  iqn="iqn.2024-01.org.icbd:$n"
  tgtd_adm --op new --mode target --tid "$i" -T "$iqn" || die "cannot create target $iqn"
  log_off=$(stat -c %s "$TGTD_LOG")
  a=$(now)
  if ! err=$(tgtd_adm --op new --mode logicalunit --tid "$i" --lun 1 --blocksize 4096 --bstype icbd \
      --backing-store "$golden" --bsopts "overlay=$cdir/$n.ovl;cache=$cdir/$n.cache;cache_size=$cache_size" 2>&1); then
    b=$(now)
    [ -n "$nofile" ] || die "cannot add the LUN of $iqn: $err (tgtd log: $(tail -c +$((log_off + 1)) "$TGTD_LOG" | tr '\n' ' '))"
    lun_left=$(tgtd_adm --op show --mode target | awk -v t="Target $i: $iqn" '$0 == t {on=1; next} /^Target /{on=0} on && /LUN: 1$/ {print "yes"}')
    fail_report=$(printf '%s\n' \
      "- desktop $i ($n) failed after $((i - 1)) LUNs, in $(elapsed "$a" "$b") s, tgtd holding $(nfds) descriptors under RLIMIT_NOFILE $nofile_soft" \
      "- tgtadm: \`$err\`" \
      "- tgtd log: \`$(tail -c +$((log_off + 1)) "$TGTD_LOG" | grep -v '^$' | tr '\n' ' ' | sed 's/ *$//')\`" \
      "- LUN 1 of $iqn after the failure: $( [ -n "$lun_left" ] && echo "PRESENT (half-created)" || echo "absent (nothing half-created)")" \
      "- cache file $n.cache left: $( [ -e "$cdir/$n.cache" ] && echo "yes, $(stat -c %s "$cdir/$n.cache") bytes" || echo no)")
    log "LUN of $n failed: $err"
    tgtd_adm --op delete --mode target --tid "$i" >/dev/null 2>&1
    break
  fi
  b=$(now)
  elapsed "$a" "$b" >>"$lun_times"; echo >>"$lun_times"
  tgtd_adm --op bind --mode target --tid "$i" --initiator-name "iqn.2024-01.org.icbd.client:$n" || die "cannot bind target $iqn"
  created=$i
done
t_created=$(now)
[ "$created" -gt 0 ] || die "no LUN could be created"
rss1=$(rss_kib); fds1=$(nfds); thr1=$(threads); kinds1=$(fd_kinds)
log "$created desktops exported in $(elapsed "$t0" "$t_created") s; tgtd RSS $((rss1 / 1024)) MiB, $fds1 descriptors, $thr1 threads"

# --- read storms ----------------------------------------------------------------------
failures=0
storm_rows="$work/storms.tsv"
: >"$storm_rows"
for s in "rand4k 4k random" "seq64k 64k seq"; do
  read -r name bs pattern <<<"$s"
  cat "$golden" >/dev/null  # the golden file's boot region in the page cache, as after the first boots
  log "storm $name: $created desktops, $bs $pattern reads over the first $boot, $seconds s"
  storm "$name" "$bs" "$pattern"
  failures=$((failures + storm_failed))
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$storm_failed" "$storm_fds" "$storm_thr" "$storm_rss" "$storm_wall" "$storm_cpu" >>"$storm_rows"
done

# tgt's accept loop at EMFILE: the listening socket stays readable, so tgtd
# retries (and logs) without pause until a descriptor frees up.
accept_fails=$(grep -c "can't accept" "$TGTD_LOG")

# --- teardown ---------------------------------------------------------------------------
t_td0=$(now)
for i in $(seq "$created"); do
  tgtd_adm --op delete --mode logicalunit --tid "$i" --lun 1 || log "delete LUN of $(name_of "$i") failed"
  tgtd_adm --op delete --mode target --tid "$i" || log "delete target of $(name_of "$i") failed"
done
t_td1=$(now)
rss2=$(rss_kib); fds2=$(nfds); thr2=$(threads)
# Export again over the overlays and caches that now exist (recovered, not
# formatted), as blockd does when tgtd restarts under it; then remove again.
t_re0=$(now)
for i in $(seq "$created"); do
  n=$(name_of "$i")
  tgtd_adm --op new --mode target --tid "$i" -T "iqn.2024-01.org.icbd:$n" || die "re-export: cannot create target of $n"
  tgtd_adm --op new --mode logicalunit --tid "$i" --lun 1 --blocksize 4096 --bstype icbd --backing-store "$golden" \
    --bsopts "overlay=$cdir/$n.ovl;cache=$cdir/$n.cache;cache_size=$cache_size" || die "re-export: cannot add the LUN of $n"
  tgtd_adm --op bind --mode target --tid "$i" --initiator-name "iqn.2024-01.org.icbd.client:$n" || die "re-export: cannot bind $n"
done
t_re1=$(now)
for i in $(seq "$created"); do tgtd_adm --op delete --mode target --tid "$i" --force >/dev/null 2>&1; done
uptime_now=$(uptime)

# --- report -----------------------------------------------------------------------------
report="$work/report.md"
python3 - "$work" "$created" "$clients" "$seconds" "$boot" <<PY >"$report"
import json, statistics, sys, os
work, created, asked, seconds, boot = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
def s(a, b): return float(b) - float(a)
t0, t_ovl, t_created, td0, td1, re0, re1 = $t0, $t_ovl, $t_created, $t_td0, $t_td1, $t_re0, $t_re1
lun = sorted(float(x) for x in open(os.path.join(work, "lun_create_s.txt")).read().split())
def q(v, p): return v[min(len(v) - 1, int(p / 100 * (len(v) - 1) + 0.5))] if v else 0
mib = 1048576
print(f"## Cache server with {created} desktops on one tgtd")
print()
print("- host: $(hostname), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r); tgt $(dpkg-query -W -f='${Version}' tgt 2>/dev/null); load after: \`$(echo "$uptime_now" | sed 's/^ *//')\`")
print("- layout: fresh BTRFS on a loop device; golden = $image_size of random data in a read-only snapshot; per desktop an overlay (icbd-overlay create), a write-back cache (cache_size=$cache_size), one target, LUN 1, ACL for its initiator; tgtd RLIMIT_NOFILE $nofile_soft")
print("- command: \`bench/many_clients.sh${orig_args:+ $orig_args}\`")
print()
print("| measure | value |")
print("|---|---:|")
print(f"| desktops created | {created} of {asked} |")
print(f"| overlays created (icbd-overlay create, {created}x) | {s(t0, t_ovl):.2f} s |")
print(f"| targets + LUNs + ACLs (tgtadm, 3 calls per desktop) | {s(t_ovl, t_created):.2f} s = {s(t_ovl, t_created) / created * 1000:.1f} ms per desktop |")
print(f"| one \`--op new --mode logicalunit\`: median / p99 / max | {q(lun, 50) * 1000:.1f} / {q(lun, 99) * 1000:.1f} / {lun[-1] * 1000:.1f} ms |")
print(f"| tgtd VmRSS before / after / per LUN | {$rss0 / 1024:.1f} / {$rss1 / 1024:.1f} MiB / {($rss1 - $rss0) / created:.0f} KiB |")
print(f"| tgtd open descriptors before / after / per LUN | {$fds0} / {$fds1} / {($fds1 - $fds0) / created:.2f} |")
print(f"| tgtd threads before / after | {$thr0} / {$thr1} |")
print(f"| descriptors by kind, before | $kinds0 |")
print(f"| descriptors by kind, after | $kinds1 |")
rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(work, "storms.tsv"))]
failed_total = 0
for name, failed, sfds, sthr, srss, swall, scpu in rows:
    iops = mbps = 0.0
    ops = nbytes = 0
    p99s, p50s = [], []
    for f in os.listdir(work):
        if f.startswith(name + "-") and f.endswith(".json"):
            txt = open(os.path.join(work, f)).read().strip()
            if not txt: continue
            j = json.loads(txt)
            iops += j["iops"]; mbps += j["iops"] * j["bs"] / mib
            ops += j["ops"]; nbytes += j["ops"] * j["bs"]
            p99s.append(j["lat_us"]["p99"]); p50s.append(j["lat_us"]["p50"])
    p99s.sort(); p50s.sort()
    label = {"rand4k": "4 KiB random", "seq64k": "64 KiB sequential"}[name]
    print(f"| storm: {label} reads, {len(p99s)} desktops at once, qd 1, {seconds:g} s over the first {boot}"
          f"{', ' + failed + ' readers FAILED' if failed != '0' else ''} | {iops:,.0f} IOPS, {mbps:,.1f} MiB/s "
          f"(sum of the desktops' rates; over the whole storm, {float(swall):.1f} s from launch to the last exit: "
          f"{ops / float(swall):,.0f} IOPS, {nbytes / mib / float(swall):,.1f} MiB/s); "
          f"latency p50 (median desktop) {statistics.median(p50s) if p50s else 0:.0f} us, p99 median / worst desktop "
          f"{statistics.median(p99s) if p99s else 0:.0f} / {p99s[-1] if p99s else 0:.0f} us |")
    print(f"| tgtd during the {label} storm: peak descriptors (sessions: {int(sfds) - $fds1}) / threads / VmRSS; CPU | "
          f"{sfds} / {sthr} / {int(srss) / 1024:.1f} MiB; {float(scpu):.1f} s = {float(scpu) / float(swall) * 100:.0f}% of one CPU |")
print(f"| teardown (delete LUN + target, {created}x) | {s(td0, td1):.2f} s = {s(td0, td1) / created * 1000:.1f} ms per desktop |")
print(f"| tgtd after teardown: VmRSS / descriptors / threads | {$rss2 / 1024:.1f} MiB / {$fds2} / {$thr2} |")
print(f"| export again over the existing overlays and caches (as after a tgtd restart): targets + LUNs + ACLs | "
      f"{s(re0, re1):.2f} s = {s(re0, re1) / created * 1000:.1f} ms per desktop |")
PY
if [ -n "$fail_report" ]; then
  { echo; echo "LUN creation at the descriptor limit (--nofile $nofile):"; echo; echo "$fail_report"; } >>"$report"
fi
if [ "$accept_fails" -gt 0 ]; then
  { echo; echo "- during the storms tgtd logged \"can't accept, Too many open files\" $accept_fails times: out of descriptors, new iSCSI sessions wait while tgtd spins on its listening socket"; } >>"$report"
fi
cat "$report"
[ -n "$out" ] && cp "$report" "$out"
if [ "$failures" -gt 0 ]; then
  log "$failures reader(s) failed; see the messages above"
  exit 1
fi
exit 0
