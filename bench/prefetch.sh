#!/usr/bin/env bash
# prefetch.sh: how fast icbd-prefetch reads a boot set into the page cache
# (issue 14): a boot set of --set bytes scattered in runs of 64 KiB - 1 MiB
# over a --size golden file, cold, on ext4 on a loop device, then the same
# through the slow device's throttle (bench/lib_throttle.sh), then warm; each
# cold run twice, interleaved: the default (giving way to others) and
# --full-speed. Then what a prefetch costs a client already reading the same
# disk: 4 KiB random O_DIRECT reads of another file at --load-rate per second
# (one at a time, paced from a schedule so that a late read delays the ones
# after it), alone, during a --full-speed prefetch and during a default one,
# on the --interf-iops/--interf-bps disk (HDD-like); the client's p99 over the
# prefetch's time.
#
#   bench/prefetch.sh [options]
#     --build DIR     CMake build dir with prefetch/icbd-prefetch (default build/release)
#     --size SIZE     golden file size in MiB (default 4096)
#     --set SIZE      boot set size in MiB, about (default 256)
#     --iops N        IOPS limit of the throttled runs (default 2000, as slow_device_bench.sh)
#     --bps N         bytes/s limit of the throttled runs (default 104857600, as slow_device_bench.sh)
#     --runs N        cold runs per device (default 3)
#     --dir DIR       where the loop device's image file goes (default /var/tmp)
#     --interf-iops N --interf-bps N  the disk of the interference runs (default 200, 52428800)
#     --interf-set SIZE  boot set of the interference runs, MiB (default 64)
#     --interf-runs N    rounds of (alone, full speed, default) (default 2; 0: none)
#     --load-rate N      the client's reads per second (default 50)
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
# The throttle is bench/lib_throttle.sh's: the block layer's limit on that one
# device, cgroup v2 io.max of a child cgroup the prefetch and the client run
# in, or cgroup v1 blkio.throttle.* of the root cgroup.
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
interf_iops=200
interf_bps=52428800
interf_set=64
interf_runs=2
load_rate=50

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
    --interf-iops) need_arg "$@"; interf_iops=$2; shift 2 ;;
    --interf-bps) need_arg "$@"; interf_bps=$2; shift 2 ;;
    --interf-set) need_arg "$@"; interf_set=$2; shift 2 ;;
    --interf-runs) need_arg "$@"; interf_runs=$2; shift 2 ;;
    --load-rate) need_arg "$@"; load_rate=$2; shift 2 ;;
    -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
    *) die "unknown option $1 (--help)" ;;
  esac
done
[[ "$interf_runs" =~ ^[0-9]+$ ]] || die "--interf-runs must be a number"
for v in size_mib set_mib iops_limit bps_limit runs interf_iops interf_bps interf_set load_rate; do [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--${v%_*} must be a positive number"; done
[ "$(id -u)" -eq 0 ] || die "needs root (loop devices, mount, the block throttle)"
tool="$build/prefetch/icbd-prefetch"
[ -x "$tool" ] || die "$tool not built (cmake --build --preset release --target icbd-prefetch)"
for t in python3 dd losetup mkfs.ext4 mount umount; do command -v "$t" >/dev/null || die "'$t' not found"; done

# shellcheck source=lib_throttle.sh
source "$here/lib_throttle.sh"
throttle_detect || true

work=$(mktemp -d "$dir/icbd-prefetch-bench.XXXXXX") || die "mktemp in $dir failed"
loopdev="" devno="" mnt="" cg2="" throttled=0 load_pid=""
cleanup() {
  # The client stops by itself within 0.2 s of the stop file (its process is a
  # child of the subshell $load_pid, which a kill would not reach).
  if [ -n "$load_pid" ]; then touch "$work/stop"; wait "$load_pid" 2>/dev/null; fi
  throttle_lift
  throttle_remove
  [ -n "$mnt" ] && umount "$mnt" 2>/dev/null
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

img="$work/dev.img"
truncate -s $((size_mib + 1024))M "$img" || die "cannot create $img"
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
# The client's file of the interference runs: 512 MiB of real blocks.
load_file="$mnt/load.raw"
[ "$interf_runs" = 0 ] || dd if=/dev/urandom of="$load_file" bs=4M count=128 oflag=direct conv=fsync status=none ||
  die "cannot write $load_file"

write_sidecar() {  # write_sidecar PATH SET_MIB SEED
python3 - "$1" $((size_mib * 1048576)) $(($2 * 1048576)) "$3" <<'PY'
# docs/boot-set.md, "File format (version 1)": header, bitmap, CRC32C.
import os, random, struct, sys, time
path, size, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shift, chunk = 16, 1 << 16
chunks = (size + chunk - 1) // chunk
bits = bytearray((chunks + 7) // 8)
rng, marked = random.Random(int(sys.argv[4])), 0
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
}
write_sidecar "$sidecar" "$set_mib" 14 || die "cannot write the sidecar"

# Global drop_caches by other people's benchmarks (this machine is shared) empty
# the page cache under a warm run: counted, and said in the table.
drops() { awk '$1 == "drop_pagecache" || $1 == "drop_slab" { n += $2 } END { print n + 0 }' /proc/vmstat; }
drops_seen=$(drops)
dev_reads() { awk '{print $1, $3}' "/sys/block/$loopname/stat"; }  # reads completed, sectors read
drop_golden() { sync "$golden"; dd if="$golden" iflag=nocache count=0 status=none; }
# run_one LABEL [TOOL_FLAG [warm]]: one cold prefetch (warm: nothing dropped); prints a table row.
run_one() {
  local label=$1 flag=${2:-} before after out
  if [ "${3:-}" != warm ]; then drop_golden; fi
  before=$(dev_reads)
  out=$(throttle_run "$tool" --json $flag --repo "$mnt/repo" bench 1) || die "icbd-prefetch failed: $out"
  after=$(dev_reads)
  python3 - "$label" "$before" "$after" "$out" "$drops_seen" "$(drops)" <<'PY'
import json, sys
label, b, a, out = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), json.loads(sys.argv[4])
if sys.argv[5] != sys.argv[6]: label += " (another process's drop_caches since the last run)"
f = out["files"][0]
p = f["pacing"]
reqs, sectors = int(a[0]) - int(b[0]), int(a[1]) - int(b[1])
gave = f"{p['busy_windows']}+{p['slow_windows']} of {p['windows']}, lowest {p['min_level']:.2f}" if p["adaptive"] else "–"
print(f"| {label} | {f['read_bytes'] / 1048576:.1f} | {f['cached_bytes'] / 1048576:.1f} | {f['seconds']:.2f} | "
      f"{f['mib_per_s']:.1f} | {f['requests']} | {f['read_bytes'] / max(1, f['requests']) / 1024:.0f} | "
      f"{reqs} | {sectors * 512 / max(1, reqs) / 1024:.0f} | {gave} | {f['end']} |")
PY
  drops_seen=$(drops)
}

echo "### icbd-prefetch: a ${set_mib} MiB boot set in 64 KiB-1 MiB runs over a ${size_mib} MiB file, ext4 on a loop device"
echo
echo "- command: \`bench/prefetch.sh --size $size_mib --set $set_mib --runs $runs --iops $iops_limit --bps $bps_limit\` ($(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) CPUs)"
echo "- device: $loopdev, direct I/O on a sparse file in $dir ($(findmnt -n -o FSTYPE -T "$dir" | head -1) on $(findmnt -n -o SOURCE -T "$dir" | head -1)); icbd-prefetch defaults: requests of at most 1 MiB, 4 in flight, idle I/O class; 'gave way' = busy+slow windows of the controller, of all its windows, and its lowest level"
echo "- load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| run | read MiB | cached MiB | s | MiB/s | requests | avg request KiB | device reads | avg device read KiB | gave way | end |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for i in $(seq 1 "$runs"); do run_one "cold $i, default"; run_one "cold $i, --full-speed" --full-speed; done
run_one "warm (again, nothing dropped)" "" warm
if [ -z "$throttle" ]; then
  echo
  echo "(no block throttle here: neither cgroup v2 io.max nor cgroup v1 blkio.throttle; throttled runs left out)"
  exit 0
fi
throttle_cgroup icbd-prefetch-bench || die "cannot create a cgroup with the io controller"
throttle_set "$iops_limit" "$bps_limit" || die "cannot set the throttle on $devno"
for i in $(seq 1 "$runs"); do
  run_one "throttled $i, default ($iops_limit IOPS, $((bps_limit / 1048576)) MiB/s, $throttle)"
  run_one "throttled $i, --full-speed" --full-speed
done
echo
echo "- load average at the end of the table: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$interf_runs" = 0 ] && exit 0

# --- interference: a client reading the same disk during a prefetch ---------------------
write_sidecar "$sidecar" "$interf_set" 15 || die "cannot write the interference sidecar"
throttle_set "$interf_iops" "$interf_bps" || die "cannot set the throttle on $devno"
# load_start OUT: paced 4 KiB O_DIRECT random reads of load.raw until $work/stop
# exists (120 s at most); OUT gets one "due_s latency_us" line per read.
load_start() {
  rm -f "$work/stop"
  throttle_run python3 - "$load_file" "$load_rate" "$work/stop" "$1" <<'PY' &
import mmap, os, random, sys, time
path, rate, stop, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
blocks = os.fstat(fd).st_size // 4096
buf = mmap.mmap(-1, 4096)
rng = random.Random(7)
t0 = time.monotonic()
lines = []
i = 0
while time.monotonic() - t0 < 120 and not (i % 10 == 0 and os.path.exists(stop)):
    due = t0 + i / rate
    now = time.monotonic()
    if now < due:
        time.sleep(due - now)
    os.preadv(fd, [buf], rng.randrange(blocks) * 4096)
    # From when it was due: a read held up delays the ones after it too.
    lines.append(f"{due - t0:.4f} {(time.monotonic() - due) * 1e6:.0f}")
    i += 1
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
PY
  load_pid=$!
}
load_stop() { touch "$work/stop"; wait "$load_pid"; load_pid=""; }
interf_tsv="$work/interference.tsv"
: >"$interf_tsv"
# interf_one ROUND CASE: the client alone for 2 s, then CASE (a prefetch, or
# nothing), until 10 s after the start of CASE and at least 1 s after its end.
interf_one() {
  local round=$1 case=$2 t_start t_end out=""
  drop_golden
  dd if="$load_file" iflag=nocache count=0 status=none
  t_load=$(python3 -c 'import time; print(time.monotonic())')
  load_start "$work/load.$round.$case"
  sleep 2
  t_start=$(python3 -c 'import time; print(time.monotonic())')
  case $case in
    alone) ;;
    full) out=$(throttle_run "$tool" --json --full-speed --repo "$mnt/repo" bench 1) || die "icbd-prefetch failed: $out" ;;
    default) out=$(throttle_run "$tool" --json --repo "$mnt/repo" bench 1) || die "icbd-prefetch failed: $out" ;;
  esac
  t_end=$(python3 -c 'import time; print(time.monotonic())')
  sleep "$(python3 -c "print(max(1.0, $t_start + 10 - $t_end))")"
  load_stop
  [ -z "${PREFETCH_BENCH_KEEP:-}" ] || cp "$work/load.$round.$case" "$PREFETCH_BENCH_KEEP/"
  python3 - "$round" "$case" "$work/load.$round.$case" "$out" "$t_load" "$t_start" "$t_end" >>"$interf_tsv" <<'PY'
import json, sys
rnd, case, path, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
t_load, t_start, t_end = (float(x) for x in sys.argv[5:8])
# The client's clock starts about when load_start ran (python's start-up after it: a few ms).
a, b = t_start - t_load, t_end - t_load
if case == "alone":
    b = a + 10
rows = [(float(l.split()[0]), int(l.split()[1])) for l in open(path) if l.strip()]
lat = sorted(us for due, us in rows if a <= due <= b)
# All the harm done, whatever the prefetch's length: reads over 50 ms in the 10 s from its start.
over50 = sum(1 for due, us in rows if a <= due <= a + 10 and us > 50000)
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0
pf = json.loads(out)["files"][0] if out else None
p = pf["pacing"] if pf else None
print("\t".join(str(x) for x in (rnd, case, len(lat), pct(0.5), pct(0.99), lat[-1] if lat else 0, over50,
      f"{pf['seconds']:.2f}" if pf else "-", f"{pf['read_bytes'] / 1048576:.1f}" if pf else "-",
      f"{p['busy_windows']}+{p['slow_windows']}/{p['windows']}" if p and p["adaptive"] else "-",
      f"{p['min_level']:.3f}" if p and p["adaptive"] else "-")))
PY
  log "interference round $round, $case: $(tail -1 "$interf_tsv")"
}
for r in $(seq 1 "$interf_runs"); do
  for c in alone full default; do interf_one "$r" "$c"; done
done
echo
echo "#### A client on the same disk during a prefetch ($interf_iops IOPS, $((interf_bps / 1048576)) MiB/s, $throttle; ${interf_set} MiB boot set)"
echo
echo "- client: 4 KiB random O_DIRECT reads of a 512 MiB file on the same ext4, $load_rate/s, one at a time, latency from when each was due; p50/p99/max over the prefetch's time (alone: 10 s); '> 50 ms': the client's reads over 50 ms in the 10 s from the prefetch's start"
echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| round | case | client reads | p50 µs | p99 µs | max µs | > 50 ms | prefetch s | prefetch MiB | busy+slow / windows | lowest level |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|"
sed 's/^/| /; s/\t/ | /g; s/$/ |/' "$interf_tsv"
