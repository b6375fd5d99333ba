#!/usr/bin/env bash
# boot_storm.sh: N diskless clients boot one golden image at once (issue 3). How
# many bytes come off the disk, and how fast, when the clients share one golden
# file through icbd overlays, against one reflink clone per client.
#
#   bench/boot_storm.sh [options]
#     --build DIR        CMake build dir with modules/ and blockd/ (default build/release)
#     --size SIZE        golden image size, e.g. 1G, 256M (default 1G; whole MiB)
#     --clients N        clients = LUNs = initiators per scenario (default 16)
#     --runs N           runs per scenario, interleaved; the table shows medians (default 1)
#     --scenarios "LIST" subset of: overlay clones clones-icbd (default all three)
#     --dir DIR          where the BTRFS image file goes (default /var/tmp)
#     --drop MODE        how each run starts cold: global (default: sync and
#                        echo 3 > /proc/sys/vm/drop_caches) or files (posix_fadvise
#                        DONTNEED on the scenario's files only: BTRFS metadata stays
#                        cached, but other people's benchmarks are not disturbed)
#     --out FILE         also write the Markdown report to FILE
#     --raw FILE         also write one line per run (TSV) to FILE
#
# One private tgtd (scripts/lib/tgtd.sh), one fresh BTRFS on a loop device over
# a sparse file in --dir, laid out as a node lays out its images
# (docs/image-layout.md): the golden file is images/boot/1/disk.raw inside a
# read-only snapshot. Scenarios, each with one target per client (LUN 1, block
# size 4096):
#   overlay     bstype icbd, --bsopts overlay=overlays/clientN.ovl over the one
#               golden file (overlays are created at attach, before measuring)
#   clones      N `cp --reflink=always` copies of the golden file in a writable
#               subvolume, each served by tgt's own rdwr bstype
#   clones-icbd the same clones served by icbd raw: shows that the difference
#               comes from sharing one file, not from the backend
# Each run of a scenario: sync, drop the cache (--drop), then all
# N initiators start at once, each reading its whole LUN sequentially with
# icbd-iscsi (1 MiB per command, one in flight), and the script waits for every
# one by PID. Disk bytes = sectors read by the loop device under the BTRFS
# (field 3 of /sys/block/loopN/stat, x 512) after minus before, metadata
# included. The loop device runs with direct I/O on its backing file, so it
# behaves as a disk: without it the backing file's own page cache would serve
# the clones' repeated reads of shared extents from memory, counted as disk
# reads but timed as memory.
#
# A run is marked "disturbed" when someone else dropped the page cache while it
# ran (the drop_pagecache counter of /proc/vmstat moved): the golden file's
# pages can then be read twice, which is not the storm's doing. Medians leave
# disturbed runs out when a scenario has undisturbed ones.
#
# Figures are figures: the exit status is 0 unless setup failed or a reader
# failed (SCSI error, lost session), which is a bug to look at.
set -uo pipefail

orig_args="$*"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)
build="$src/build/release"
size=1G
clients=16
runs=1
all_scenarios="overlay clones clones-icbd"
scenarios=$all_scenarios
dir=/var/tmp
out=""
raw_out=""
drop=global

die() { echo "boot_storm: $*" >&2; exit 2; }
log() { echo "boot_storm: $*" >&2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build) need_arg "$@"; build=$2; shift 2 ;;
    --size) need_arg "$@"; size=$2; shift 2 ;;
    --clients) need_arg "$@"; clients=$2; shift 2 ;;
    --runs) need_arg "$@"; runs=$2; shift 2 ;;
    --scenarios) need_arg "$@"; scenarios=$2; shift 2 ;;
    --dir) need_arg "$@"; dir=$2; shift 2 ;;
    --out) need_arg "$@"; out=$2; shift 2 ;;
    --raw) need_arg "$@"; raw_out=$2; shift 2 ;;
    --drop) need_arg "$@"; drop=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ "$size" =~ ^[1-9][0-9]*[MG]$ ]] || die "--size must be whole MiB or GiB like 1G or 256M, not '$size'"
[[ "$clients" =~ ^[1-9][0-9]*$ ]] && [ "$clients" -le 256 ] || die "--clients must be a number from 1 to 256, not '$clients'"
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a number >= 1, not '$runs'"
for s in $scenarios; do
  [[ " $all_scenarios " == *" $s "* ]] || die "unknown scenario '$s' (known: $all_scenarios)"
done
[ -n "${scenarios// /}" ] || die "--scenarios is empty"
case "$drop" in global|files) ;; *) die "--drop must be global or files, not '$drop'" ;; esac
[ "$(id -u)" -eq 0 ] || die "needs root (tgtd, loop devices, drop_caches)"
build=$(cd "$build" 2>/dev/null && pwd) || die "build dir not found (build first: cmake --preset release && cmake --build --preset release)"
reader="$build/blockd/icbd-iscsi"
[ -x "$reader" ] || die "$reader not built"
[ -f "$build/modules/bs_icbd.so" ] || die "$build/modules/bs_icbd.so not built"
for t in tgtd tgtadm python3 dd mkfs.btrfs btrfs losetup mount umount fincore; do
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || die "'$t' not found (scripts/install-deps.sh installs it)"
done
[ -d "$dir" ] || die "--dir $dir does not exist"
case "$size" in
  *G) mib=$(( ${size%G} * 1024 )) ;;
  *M) mib=${size%M} ;;
esac
image_bytes=$(( mib * 1048576 ))
# Golden + clones share their extents, so the filesystem needs the image about
# once; twice plus 1 GiB leaves room for metadata, overlays and a clone that
# might not share.
fs_mib=$(( 2 * mib + 1024 ))
avail_mib=$(( $(df -Pk "$dir" | awk 'NR==2 {print $4}') / 1024 ))
[ "$avail_mib" -gt $(( mib + 1024 )) ] || die "$dir has $avail_mib MiB free; the image needs about $(( mib + 1024 )) MiB"
mem_mib=$(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo)
if [ $(( clients * mib )) -gt "$mem_mib" ]; then
  log "warning: $clients clones x $size do not fit in the page cache ($mem_mib MiB available): the clone scenarios will also re-read evicted pages"
fi

# --- cleanup: everything this script starts or creates -------------------------
work=$(mktemp -d /tmp/icbd-bootstorm.XXXXXX) || die "mktemp failed"
TGTD_PID=""
fs_img=""
loopdev=""
mnt=""
pids=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  if [ -n "$TGTD_PID" ]; then tgtd_stop >/dev/null 2>&1 || true; fi
  if [ -n "$mnt" ] && mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt"; fi
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
  [ -n "$fs_img" ] && rm -f "$fs_img"
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "boot_storm: interrupted" >&2; exit 130' INT TERM

# --- BTRFS with the golden image and the clones ----------------------------------
fs_img=$(mktemp "$dir/icbd-bootstorm-btrfs.XXXXXX.img") || die "cannot create a file in $dir"
truncate -s "${fs_mib}M" "$fs_img" || die "cannot size $fs_img"
loopdev=$(losetup --find --show --direct-io=on "$fs_img") || die "cannot attach $fs_img to a loop device"
loopname=${loopdev#/dev/}
loop_dio=$(cat "/sys/block/$loopname/loop/dio" 2>/dev/null || echo "?")
[ "$loop_dio" = 1 ] || log "warning: $loopdev does not use direct I/O (dio=$loop_dio): clone reads of shared extents may come from the backing file's cache"
mkfs.btrfs -q "$loopdev" >/dev/null 2>&1 || die "mkfs.btrfs $loopdev failed"
mnt="$work/mnt"
mkdir -p "$mnt" && mount "$loopdev" "$mnt" || die "cannot mount $loopdev"
mkdir -p "$mnt/images/boot" || die "cannot create $mnt/images/boot"
btrfs -q subvolume create "$mnt/images/boot/.tree-1-full" >/dev/null || die "cannot create a subvolume on $mnt"
log "filling the golden image ($size of random data)"
dd if=/dev/urandom of="$mnt/images/boot/.tree-1-full/disk.raw" bs=1M count="$mib" iflag=fullblock conv=fsync status=none ||
  die "cannot fill the golden image"
btrfs -q subvolume snapshot -r "$mnt/images/boot/.tree-1-full" "$mnt/images/boot/1" >/dev/null ||
  die "cannot snapshot the golden image read-only"
btrfs -q subvolume delete "$mnt/images/boot/.tree-1-full" >/dev/null || die "cannot delete the staging subvolume"
golden="$mnt/images/boot/1/disk.raw"
btrfs -q subvolume create "$mnt/clients" >/dev/null || die "cannot create the clients subvolume"
mkdir -p "$mnt/clients/overlays" "$mnt/clients/clones" || die "cannot create client directories"
clone_needed=0
for s in $scenarios; do case "$s" in clones*) clone_needed=1 ;; esac; done
if [ "$clone_needed" = 1 ]; then
  for i in $(seq "$clients"); do
    cp --reflink=always "$golden" "$mnt/clients/clones/client$i.raw" || die "reflink copy $i failed"
  done
fi
sync -f "$mnt" || true
used_mib=$(btrfs filesystem du -s --raw "$mnt" 2>/dev/null | awk 'NR==2 {printf "%.0f", $3/1048576}')
log "BTRFS on $loopdev (dio=$loop_dio): golden $golden; $( [ "$clone_needed" = 1 ] && echo "$clients reflink clones; " )set shared ${used_mib:-?} MiB"

# --- tgtd and the LUNs ------------------------------------------------------------
export ICBD_BUILD=$build
# shellcheck source=../scripts/lib/tgtd.sh
source "$src/scripts/lib/tgtd.sh"
TGTD_LOG="$work/tgtd.log"
tgtd_start || die "tgtd did not start"
log "tgtd pid $TGTD_PID, portal 127.0.0.1:$TGTD_PORT, control port $TGTD_CTL"

declare -A urls   # scenario -> space-separated URLs, one per client
tid=0
for s in $scenarios; do
  urls[$s]=""
  for i in $(seq "$clients"); do
    tid=$((tid + 1))
    iqn="iqn.2024-01.org.icbd:boot-$s-$i"
    args=(--op new --mode logicalunit --tid "$tid" --lun 1 --blocksize 4096)
    case "$s" in
      overlay) args+=(--bstype icbd --backing-store "$golden" --bsopts "overlay=$mnt/clients/overlays/client$i.ovl") ;;
      clones) args+=(--bstype rdwr --backing-store "$mnt/clients/clones/client$i.raw") ;;
      clones-icbd) args+=(--bstype icbd --backing-store "$mnt/clients/clones/client$i.raw") ;;
    esac
    tgtd_adm --op new --mode target --tid "$tid" -T "$iqn" || die "cannot create target $iqn"
    tgtd_adm "${args[@]}" || die "cannot add the LUN of $iqn (see $TGTD_LOG: $(tail -1 "$TGTD_LOG"))"
    tgtd_adm --op bind --mode target --tid "$tid" -I ALL || die "cannot bind target $iqn"
    urls[$s]+=" iscsi://127.0.0.1:$TGTD_PORT/$iqn/1"
  done
done
log "$tid targets exported"

# --- measured runs ------------------------------------------------------------------
# /sys/block/loopN/stat: field 1 = read requests completed, field 3 = sectors read.
loop_reads() { awk '{print $1, $3}' "/sys/block/$loopname/stat"; }
now() { date +%s.%N; }
clk_tck=$(getconf CLK_TCK)
tgtd_cpu_ticks() {  # utime + stime of the whole tgtd process (all threads)
  local stat
  stat=$(cat "/proc/$TGTD_PID/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }  # fields after "(comm)": state is field 3
  # shellcheck disable=SC2086  # split into fields on purpose
  set -- $stat
  echo $(( ${12} + ${13} ))
}
# Bytes of the scenario's files resident in the page cache: how many copies of
# the image the storm left in memory.
resident() {
  # shellcheck disable=SC2046  # one word per file
  fincore -nb -o RES $(scenario_files "$1") 2>/dev/null | awk '{t += $1} END {printf "%.0f\n", t}'
}

scenario_files() {
  case "$1" in
    overlay) echo "$golden" ;;
    *) echo "$mnt"/clients/clones/client*.raw ;;
  esac
}
drop_cache() {
  sync
  if [ "$drop" = global ]; then
    echo 3 >/proc/sys/vm/drop_caches
  else
    local f
    # dd iflag=nocache count=0 is posix_fadvise(DONTNEED) on the whole file.
    for f in $(scenario_files "$1"); do dd if="$f" iflag=nocache count=0 status=none; done
  fi
}
drops() { awk '$1 == "drop_pagecache" {print $2}' /proc/vmstat; }

raw="$work/raw.tsv"
printf 'run\tscenario\tdisk_bytes\tdisk_reqs\twall_s\tfirst_done_s\tresident_bytes\ttgtd_cpu_s\tforeign_drops\tfailed\n' >"$raw"
failures=0
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
uptime_before=$(uptime)
for run in $(seq "$runs"); do
  for s in $scenarios; do
    drop_cache "$s"
    drops0=$(drops)
    read -r reqs0 sec0 < <(loop_reads)
    cpu0=$(tgtd_cpu_ticks)
    t0=$(now)
    pids=()
    i=0
    for u in ${urls[$s]}; do
      i=$((i + 1))
      "$reader" read "$u" -o /dev/null 2>"$work/reader-$i.err" &
      pids+=($!)
    done
    # Wait for each reader by PID, in the order they finish (wait -n on the ones
    # still running: bash refuses a PID it has already reaped).
    failed=0
    first=""
    running=("${pids[@]}")
    while [ ${#running[@]} -gt 0 ]; do
      done_pid=""
      wait -n -p done_pid "${running[@]}"
      rc=$?
      [ -n "$done_pid" ] || { log "wait returned without a reader (rc $rc)"; break; }
      [ -n "$first" ] || first=$(now)
      still=()
      for p in "${running[@]}"; do [ "$p" = "$done_pid" ] || still+=("$p"); done
      running=("${still[@]}")
      if [ $rc -ne 0 ]; then
        failed=$((failed + 1))
        for j in "${!pids[@]}"; do
          [ "${pids[$j]}" = "$done_pid" ] && log "run $run $s: reader of client $((j + 1)) failed (rc $rc): $(tail -1 "$work/reader-$((j + 1)).err")"
        done
      fi
    done
    t1=$(now)
    pids=()
    read -r reqs1 sec1 < <(loop_reads)
    cpu1=$(tgtd_cpu_ticks)
    disturbed=$(( $(drops) - drops0 ))
    cpu=$(awk -v d=$((cpu1 - cpu0)) -v hz="$clk_tck" 'BEGIN{printf "%.1f", d/hz}')
    disk=$(( (sec1 - sec0) * 512 ))
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}')
    firstd=$(awk -v a="$t0" -v b="$first" 'BEGIN{printf "%.3f", b - a}')
    res=$(resident "$s")
    failures=$((failures + failed))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$s" "$disk" "$((reqs1 - reqs0))" "$wall" "$firstd" "$res" "$cpu" "$disturbed" "$failed" >>"$raw"
    log "run $run/$runs $s: disk $(awk -v d="$disk" -v i="$image_bytes" 'BEGIN{printf "%.0f MiB = %.2fx image", d/1048576, d/i}'), wall $wall s (first client done at $firstd s)$( [ "$disturbed" -gt 0 ] && echo ", DISTURBED: the page cache was dropped $disturbed time(s) by someone else")$( [ "$failed" -gt 0 ] && echo ", $failed readers FAILED")"
  done
done
uptime_after=$(uptime)
[ -n "$raw_out" ] && cp "$raw" "$raw_out"

# --- report -----------------------------------------------------------------------
report="$work/report.md"
{
  echo "## Boot storm: $clients clients over one $size golden image"
  echo
  echo "- started: $started; host $(hostname), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
  echo "- tgtd: Debian tgt $(dpkg-query -W -f='${Version}' tgt 2>/dev/null), one instance, one target per client (LUN 1, block size 4096); icbd module from $build/modules"
  echo "- disk: fresh BTRFS ($(btrfs --version 2>/dev/null | awk '{print $2}')) on $loopdev (direct I/O: $loop_dio) over a sparse file on $(findmnt -n -o FSTYPE -T "$dir" 2>/dev/null || echo ?) ($dir); golden = $size of random data in a read-only snapshot; clones = \`cp --reflink=always\`"
  echo "- each run: sync, $( [ "$drop" = global ] && echo "drop_caches=3" || echo "posix_fadvise(DONTNEED) on the scenario's files (BTRFS metadata stays cached)" ), then $clients \`icbd-iscsi read URL -o /dev/null\` at once (1 MiB per READ, one in flight each); disk bytes = loop device sectors read x 512 (metadata included)"
  echo "- $runs run(s) per scenario, interleaved; $( [ "$runs" -gt 1 ] && echo "table shows medians" || echo "single run" )"
  echo "- load before: \`${uptime_before# }\`"
  echo "- load after: \`${uptime_after# }\`"
  echo "- command: \`bench/boot_storm.sh${orig_args:+ $orig_args}\`"
  echo
} >"$report"
python3 - "$raw" "$scenarios" "$image_bytes" "$clients" >>"$report" <<'PY'
import csv, statistics, sys
raw, scenarios, image, clients = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), int(sys.argv[4])
rows = [r for r in csv.DictReader(open(raw), delimiter="\t")]
names = {"overlay": "(A) icbd overlays over one golden file",
         "clones": "(B) reflink clones, tgt rdwr",
         "clones-icbd": "(C) reflink clones, icbd raw"}
def ok(r): return r["failed"] == "0"
def calm(r): return ok(r) and r["foreign_drops"] == "0"
def runs_of(s):
    """The runs the medians use: the undisturbed ones when there are any."""
    good = [r for r in rows if r["scenario"] == s and calm(r)]
    return good or [r for r in rows if r["scenario"] == s and ok(r)]
def med(v): return statistics.median(v) if v else None
mib = 1048576
print("| scenario | disk bytes read | x image size | wall s | aggregate MiB/s |")
print("|---|---:|---:|---:|---:|")
for s in scenarios:
    used = runs_of(s)
    d, w = [float(r["disk_bytes"]) for r in used], [float(r["wall_s"]) for r in used]
    notes = []
    failed = sum(1 for r in rows if r["scenario"] == s and not ok(r))
    if failed: notes.append(f"{failed} run(s) with failed readers left out")
    disturbed = sum(1 for r in rows if r["scenario"] == s and ok(r) and not calm(r))
    if disturbed and any(calm(r) for r in used): notes.append(f"{disturbed} disturbed run(s) left out")
    elif disturbed: notes.append("every run disturbed by a foreign cache drop")
    note = f" ({'; '.join(notes)})" if notes else ""
    if not d:
        print(f"| {names[s]}{note} | n/a | n/a | n/a | n/a |")
        continue
    tput = [clients * image / mib / x for x in w]
    print(f"| {names[s]}{note} | {med(d):,.0f} ({med(d) / mib:,.0f} MiB) | {med(d) / image:.2f}x | "
          f"{med(w):.1f} | {med(tput):,.0f} |")
print()
print("Detail per run: disk read requests (average size), first and last client done, tgtd CPU (utime+stime of all its threads), page cache holding the scenario's files after the run. "
      "Disturbed: someone else dropped the page cache during the run (/proc/vmstat drop_pagecache).")
print()
print("| run | scenario | disk reads | avg KiB/read | first client s | last client s | tgtd CPU s | page cache after |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    d, n = float(r["disk_bytes"]), int(r["disk_reqs"])
    avg = f"{d / n / 1024:.0f}" if n else "–"
    res = float(r["resident_bytes"])
    flag = " (FAILED)" if not ok(r) else f" (disturbed: {r['foreign_drops']} drop(s))" if not calm(r) else ""
    print(f"| {r['run']} | {r['scenario']}{flag} | {n:,} | {avg} | "
          f"{float(r['first_done_s']):.1f} | {float(r['wall_s']):.1f} | {r['tgtd_cpu_s']} | {res / mib:,.0f} MiB ({res / image:.2f}x image) |")
PY
cat "$report"
[ -n "$out" ] && cp "$report" "$out"
if [ "$failures" -gt 0 ]; then
  log "$failures reader(s) failed; see the messages above"
  exit 1
fi
exit 0
