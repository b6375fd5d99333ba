#!/usr/bin/env bash
# prefetch.sh: how fast icbd-prefetch reads a boot set into the page cache
# (issue 14): a boot set of --set bytes scattered in runs of 64 KiB - 1 MiB
# over a --size golden file, cold, on ext4 on a loop device, then the same
# through the slow device's throttle (bench/slow_device_bench.sh), then warm.
#
#   bench/prefetch.sh [options]
#     --build DIR     CMake build dir with prefetch/icbd-prefetch (default build/release)
#     --size SIZE     golden file size in MiB (default 4096)
#     --set SIZE      boot set size in MiB, about (default 256)
#     --iops N        IOPS limit of the throttled runs (default 2000, as slow_device_bench.sh)
#     --bps N         bytes/s limit of the throttled runs (default 104857600, as slow_device_bench.sh)
#     --runs N        cold runs per device (default 3)
#     --dir DIR       where the loop device's image file goes (default /var/tmp)
#
# The device: a loop device with direct I/O on a sparse file in --dir (so the
# image file does not sit in the page cache: the loop device behaves as a disk),
# ext4 on it, the golden file written with O_DIRECT (real blocks, not in the
# page cache), laid out as in a repository: repo/images/bench/1/disk.raw with its
# sidecar repo/images/bench/.bootsets/1/disk.raw.bset (made here by Python from
# docs/boot-set.md's format: an independent writer of it). Each cold run drops
# only that file's pages (posix_fadvise DONTNEED, as bench/lib_backends.sh's
# reset_page_cache: the machine is shared), then runs
#   icbd-prefetch --json --repo MNT/repo bench 1
# Device requests and their average size: reads completed and sectors read of
# the loop device (/sys/block/loopN/stat fields 1 and 3), after minus before.
# The throttle is slow_device_bench.sh's: the block layer's limit on that one
# device, cgroup v2 io.max of a child cgroup the prefetch runs in, or cgroup v1
# blkio.throttle.read_{iops,bps}_device of the root cgroup.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)
build="$src/build/release"
size_mib=4096
set_mib=256
iops_limit=2000
bps_limit=104857600
runs=3
dir=/var/tmp

die() { echo "prefetch.sh: $*" >&2; exit 2; }
log() { echo "prefetch.sh: $*" >&2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build) need_arg "$@"; build=$2; shift 2 ;;
    --size) need_arg "$@"; size_mib=$2; shift 2 ;;
    --set) need_arg "$@"; set_mib=$2; shift 2 ;;
    --iops) need_arg "$@"; iops_limit=$2; shift 2 ;;
    --bps) need_arg "$@"; bps_limit=$2; shift 2 ;;
    --runs) need_arg "$@"; runs=$2; shift 2 ;;
    --dir) need_arg "$@"; dir=$2; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) die "unknown option $1 (--help)" ;;
  esac
done
for v in size_mib set_mib iops_limit bps_limit runs; do [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--${v%_*} must be a positive number"; done
[ "$(id -u)" -eq 0 ] || die "needs root (loop devices, mount, the block throttle)"
tool="$build/prefetch/icbd-prefetch"
[ -x "$tool" ] || die "$tool not built (cmake --build --preset release --target icbd-prefetch)"
for t in python3 dd losetup mkfs.ext4 mount umount; do command -v "$t" >/dev/null || die "'$t' not found"; done

throttle=""
if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw io /sys/fs/cgroup/cgroup.controllers; then
  throttle=v2
elif [ -f /sys/fs/cgroup/blkio/blkio.throttle.read_iops_device ]; then
  throttle=v1
fi

work=$(mktemp -d "$dir/icbd-prefetch-bench.XXXXXX") || die "mktemp in $dir failed"
loopdev="" devno="" mnt="" cg2="" throttled=0
throttle_set() {  # throttle_set IOPS BPS: 0 removes the limit (reads only: the prefetch writes nothing)
  if [ "$throttle" = v1 ]; then
    echo "$devno $1" >/sys/fs/cgroup/blkio/blkio.throttle.read_iops_device &&
      echo "$devno $2" >/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device
  elif [ "$1" = 0 ]; then echo "$devno riops=max rbps=max" >"$cg2/io.max"
  else echo "$devno riops=$1 rbps=$2" >"$cg2/io.max"; fi
}
cleanup() {
  if [ "$throttled" = 1 ]; then throttle_set 0 0 || log "could not reset the throttle of $devno"; fi
  [ -n "$cg2" ] && rmdir "$cg2" 2>/dev/null
  [ -n "$mnt" ] && umount "$mnt" 2>/dev/null
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

img="$work/dev.img"
truncate -s $((size_mib + 512))M "$img" || die "cannot create $img"
loopdev=$(losetup --find --show --direct-io=on "$img") || die "cannot attach $img to a loop device"
loopname=${loopdev#/dev/}
devno=$(cat "/sys/block/$loopname/dev")
mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$loopdev" >/dev/null 2>&1 || die "mkfs.ext4 $loopdev failed"
mnt="$work/mnt"
mkdir -p "$mnt" && mount "$loopdev" "$mnt" || die "cannot mount $loopdev"
golden="$mnt/repo/images/bench/1/disk.raw"
sidecar="$mnt/repo/images/bench/.bootsets/1/disk.raw.bset"
mkdir -p "$(dirname "$golden")" "$(dirname "$sidecar")"
log "writing $golden ($size_mib MiB, O_DIRECT) on $loopdev ($devno)"
dd if=/dev/zero of="$golden" bs=4M count=$((size_mib / 4)) oflag=direct conv=fsync status=none || die "cannot write $golden"

python3 - "$sidecar" $((size_mib * 1048576)) $((set_mib * 1048576)) <<'PY' || die "cannot write the sidecar"
# docs/boot-set.md, "File format (version 1)": header, bitmap, CRC32C.
import os, random, struct, sys, time
path, size, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shift, chunk = 16, 1 << 16
chunks = (size + chunk - 1) // chunk
bits = bytearray((chunks + 7) // 8)
rng, marked = random.Random(14), 0
while marked * chunk < want:
    first, n = rng.randrange(chunks), rng.randint(1, 16)   # runs of 64 KiB - 1 MiB
    for c in range(first, min(chunks, first + n)):
        if not bits[c // 8] >> (c % 8) & 1:
            bits[c // 8] |= 1 << (c % 8); marked += 1
table = []
for i in range(256):
    c = i
    for _ in range(8): c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
def crc32c(b):
    c = 0xFFFFFFFF
    for x in b: c = table[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
body = b"ICBDBSET" + struct.pack("<HHIQQQII", 1, shift, 1, size, 1, int(time.time() * 1000), len(bits), 0) + bytes(bits)
with open(path + ".tmp", "wb") as f: f.write(body + struct.pack("<I", crc32c(body)))
os.rename(path + ".tmp", path)
print(f"boot set: {marked} chunks of 64 KiB = {marked * chunk / 1048576:.1f} MiB", file=sys.stderr)
PY

# Global drop_caches by other people's benchmarks (this machine is shared) empty
# the page cache under a warm run: counted, and said in the table.
drops() { awk '$1 == "drop_pagecache" || $1 == "drop_slab" { n += $2 } END { print n + 0 }' /proc/vmstat; }
drops_seen=$(drops)
dev_reads() { awk '{print $1, $3}' "/sys/block/$loopname/stat"; }  # reads completed, sectors read
# run_one LABEL [PREFIX [warm]]: one cold prefetch (warm: nothing dropped); prints a table row.
run_one() {
  local label=$1 prefix=${2:-} before after out
  if [ "${3:-}" != warm ]; then sync "$golden"; dd if="$golden" iflag=nocache count=0 status=none; fi
  before=$(dev_reads)
  out=$(sh -c "${prefix}exec '$tool' --json --repo '$mnt/repo' bench 1") || die "icbd-prefetch failed: $out"
  after=$(dev_reads)
  python3 - "$label" "$before" "$after" "$out" "$drops_seen" "$(drops)" <<'PY'
import json, sys
label, b, a, out = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), json.loads(sys.argv[4])
if sys.argv[5] != sys.argv[6]: label += " (another process's drop_caches since the last run)"
f = out["files"][0]
reqs, sectors = int(a[0]) - int(b[0]), int(a[1]) - int(b[1])
print(f"| {label} | {f['read_bytes'] / 1048576:.1f} | {f['cached_bytes'] / 1048576:.1f} | {f['seconds']:.2f} | "
      f"{f['mib_per_s']:.1f} | {f['requests']} | {f['read_bytes'] / max(1, f['requests']) / 1024:.0f} | "
      f"{reqs} | {sectors * 512 / max(1, reqs) / 1024:.0f} | {f['end']} |")
PY
  drops_seen=$(drops)
}

echo "### icbd-prefetch: a ${set_mib} MiB boot set in 64 KiB-1 MiB runs over a ${size_mib} MiB file, ext4 on a loop device"
echo
echo "- command: \`bench/prefetch.sh --size $size_mib --set $set_mib --runs $runs --iops $iops_limit --bps $bps_limit\` ($(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) CPUs)"
echo "- device: $loopdev, direct I/O on a sparse file in $dir ($(findmnt -n -o FSTYPE -T "$dir") on $(findmnt -n -o SOURCE -T "$dir")); icbd-prefetch defaults: requests of at most 1 MiB, 4 in flight, idle I/O class"
echo
echo "| run | read MiB | cached MiB | s | MiB/s | requests | avg request KiB | device reads | avg device read KiB | end |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for i in $(seq 1 "$runs"); do run_one "cold $i"; done
run_one "warm (again, nothing dropped)" "" warm
if [ -z "$throttle" ]; then
  echo
  echo "(no block throttle here: neither cgroup v2 io.max nor cgroup v1 blkio.throttle; throttled runs left out)"
  exit 0
fi
prefix=""
if [ "$throttle" = v2 ]; then
  cg2=/sys/fs/cgroup/icbd-prefetch-bench.$$
  grep -qw io /sys/fs/cgroup/cgroup.subtree_control || echo +io >/sys/fs/cgroup/cgroup.subtree_control || die "cannot enable io"
  mkdir "$cg2" || die "cannot create $cg2"
  prefix="echo \$\$ > $cg2/cgroup.procs && "
fi
throttle_set "$iops_limit" "$bps_limit" || die "cannot set the throttle on $devno"
throttled=1
for i in $(seq 1 "$runs"); do run_one "throttled $i ($iops_limit IOPS, $((bps_limit / 1048576)) MiB/s, $throttle)" "$prefix"; done
