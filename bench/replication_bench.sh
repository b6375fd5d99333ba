#!/usr/bin/env bash
# replication_bench.sh: ship a new version of a realistic VM image from a master
# to replicas with `btrfs send -p | btrfs receive`, the same with zstd -3 on the
# stream, `rsync --inplace` (delta algorithm) and `icbd-replicate push`, in one
# run on loop-device BTRFS filesystems (issue 4, "Benchmark").
#
#   bench/replication_bench.sh [options]
#     --size SIZE    size of the raw VM disk, e.g. 4G, 512M (default 4G); about
#                    57 % of it is filled with real files from /etc and /usr
#     --dir DIR      where the loop image files go (default /var/tmp)
#     --build DIR    CMake build dir holding replicator/icbd-replicate
#                    (default build/release)
#     --out FILE     also write the Markdown report to FILE
#     --icbd-compress "LIST"
#                    one icbd-replicate row per --compress value, each to its
#                    own replica (default "zstd"); the first is the one held
#                    against the targets and used for fan-out; e.g. "zstd lz4
#                    none" shows what compression costs in wall time, and
#                    "zstd zstd:5" a zstd level (push --compress-level),
#                    "auto zstd" the adaptive setting against zstd 3
#     --runs N       measure every method but rsync N times per update and
#                    report the median wall time, the runs in brackets
#                    (default 1); between runs the new version is deleted on
#                    the replica (and the BTRFS cleaner waited for), outside
#                    the measured time. rsync runs once: a second run would
#                    find the file already up to date.
#     --keep         leave the filesystems mounted and the scratch dir in place
#                    (their paths are printed) instead of removing them
#
# What it does:
#  1. A master BTRFS in the repository layout of docs/image-layout.md:
#     images/vm/1 is a read-only snapshot of the writable subvolume `work`,
#     which holds disk.raw: a sparse raw disk with an ext4 filesystem filled
#     with real files.
#  2. Two updates the way an administrator makes them: reflink the newest
#     version's disk.raw into `work`, loop-mount its ext4, upgrade files
#     dpkg-style (new file, rename over the old one), install new files, rewrite
#     blocks of large files in place, append to logs, delete a few files,
#     unmount, snapshot -r as the next version. Version 2 writes about 1 % of
#     the image size, version 3 (from 2) about 10 %. What changed is reported
#     three ways: the bytes written inside the guest, the 4 KiB blocks of
#     disk.raw that differ (read and compared outside the measured runs), and
#     the size of the `btrfs send -p` stream.
#  3. Replica BTRFS filesystems (one per method, three more for fan-out), each
#     seeded once with version 1 by a full send/receive. Every method then
#     ships 1 -> 2 and 2 -> 3 to its own replica, so each run starts from a
#     replica that holds exactly the parent. Before each measured run: sync and
#     drop the page cache (echo 3 > /proc/sys/vm/drop_caches; this is global
#     and hits whatever else runs on the machine). Measured per run: wall time
#     until the result is durable (the send/receive and rsync runs end with
#     syncfs of the replica, `sync -f`; icbd-replicate's receiver syncs before
#     it publishes, and push returns after that), bytes on the wire, and bytes
#     read from the master's loop device and written to the replica's
#     (/sys/block/loopN/stat fields 3 and 7, in 512-byte sectors).
#     Bytes on the wire: the send stream (counted in a separate, unmeasured
#     send into wc -c, so the measured pipeline has no extra copy), the zstd -3
#     stream (likewise), rsync's "Total bytes sent" + "received", and the
#     wire bytes from icbd-replicate push --json.
#     rsync runs with --ignore-times so that it always goes through its delta
#     algorithm (its quick check on size and mtime may otherwise skip a file).
#     Afterwards the replica's disk.raw is checked against the master's
#     (sha256), outside the measured time.
#  4. A Markdown table per update, and the issue's targets marked met / not
#     met. They are figures, never a failure: the exit status is 0 unless setup
#     failed or a transfer itself failed or produced a wrong copy.
#
# Loop devices over the image files use direct I/O where the kernel allows it,
# so that the host's page cache of the backing files does not double-cache the
# filesystems. icbd-replicate is optional: without it (not built yet) its rows
# say so and the rest runs. Needs root, btrfs-progs, rsync, zstd, openssl,
# python3, e2fsprogs (scripts/install-deps.sh installs them).
set -uo pipefail
# The whole script is one brace group, parsed before it runs: editing the file
# during a long run cannot change what that run executes.
{

orig_args=$(printf '%q ' "$@")  # quoted, so the report shows a command that can be pasted
orig_args=${orig_args% }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)
build="$src/build/release"
size=4G
dir=/var/tmp
out=""
keep=0
runs=1
icbd_compress=zstd

die() { echo "replication_bench: $*" >&2; exit 2; }
log() { echo "replication_bench: $*" >&2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --size) need_arg "$@"; size=$2; shift 2 ;;
    --dir) need_arg "$@"; dir=$2; shift 2 ;;
    --build) need_arg "$@"; build=$2; shift 2 ;;
    --out) need_arg "$@"; out=$2; shift 2 ;;
    --icbd-compress) need_arg "$@"; icbd_compress=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --runs) need_arg "$@"; runs=$2; shift 2
      [[ "$runs" =~ ^[1-9][0-9]?$ ]] || die "--runs must be a number from 1 to 99, not '$runs'" ;;
    -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ "$size" =~ ^[1-9][0-9]*[MG]$ ]] || die "--size must look like 4G or 512M, not '$size'"
case "$size" in
  *G) img_mib=$(( ${size%G} * 1024 )) ;;
  *M) img_mib=${size%M} ;;
esac
[ "$img_mib" -ge 256 ] || die "--size must be at least 256M (ext4 journal, room for the updates)"
read -r -a icbd_algs <<<"$icbd_compress"
[ "${#icbd_algs[@]}" -ge 1 ] || die "--icbd-compress needs at least one value"
for a in "${icbd_algs[@]}"; do
  # What push --compress-level takes: zstd 1..22 or negative (fast), lz4 acceleration 1..65537.
  [[ "$a" =~ ^(auto|none|zstd|lz4|zstd:(-?[1-9][0-9]*)|lz4:([1-9][0-9]*))$ ]] ||
    die "--icbd-compress: '$a' is not auto, zstd, lz4 or none (zstd:LEVEL, lz4:ACCEL for a level; 0 is not a level)"
done
icbd_main=${icbd_algs[0]}
icbd_keys=(icbd)           # row keys; icbd-ALG for the extra --compress values
for a in "${icbd_algs[@]:1}"; do icbd_keys+=("icbd-$a"); done
[ "$(id -u)" -eq 0 ] || die "needs root (loop devices, mount, drop_caches)"
for t in btrfs mkfs.btrfs mkfs.ext4 losetup mount umount mountpoint rsync zstd openssl python3 sha256sum ss truncate; do
  command -v "$t" >/dev/null 2>&1 || die "'$t' not found (scripts/install-deps.sh installs it)"
done
[ -d "$dir" ] || die "--dir $dir does not exist"
[ -w /proc/sys/vm/drop_caches ] || die "cannot write /proc/sys/vm/drop_caches"
if [ -n "$out" ]; then
  touch "$out" 2>/dev/null || die "cannot write --out $out"
fi
build=$(cd "$build" 2>/dev/null && pwd) || build=""
tool=""
if [ -n "$build" ] && [ -x "$build/replicator/icbd-replicate" ]; then
  tool="$build/replicator/icbd-replicate"
fi

# --- cleanup: everything this script starts or creates -------------------------
work=$(mktemp -d /tmp/icbd-replbench.XXXXXX) || die "mktemp failed"
declare -a fs_names=()     # filesystems in creation order
declare -A fs_img fs_loop fs_mnt
declare -a serve_pids=()
img_loop=""                # loop device of the VM disk while it is mounted
img_file=""
img_mnt="$work/guest"

# Detaches LOOP only while it still serves FILE: once we detached it, the same
# /dev/loopN may belong to somebody else.
detach_loop() {
  local loop=$1 file=$2 back
  [ -n "$loop" ] || return 0
  back=$(losetup -n -O BACK-FILE "$loop" 2>/dev/null | sed 's/[[:space:]]*$//')
  [ "$back" = "$file" ] && losetup -d "$loop"
  return 0
}
umount_guest() {
  if mountpoint -q "$img_mnt" 2>/dev/null; then umount "$img_mnt" || umount -l "$img_mnt"; fi
  detach_loop "$img_loop" "$img_file"
  img_loop=""
}
stop_serves() {
  local p
  for p in "${serve_pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; fi
  done
  serve_pids=()
}
cleanup() {
  local rc=$? i n
  trap - EXIT INT TERM
  stop_serves
  umount_guest
  if [ "$keep" = 1 ]; then
    log "--keep: left in place: scratch dir $work; filesystems:"
    for n in "${fs_names[@]}"; do log "  $n: ${fs_mnt[$n]} on ${fs_loop[$n]} (${fs_img[$n]})"; done
    log "remove with: umount MNT; losetup -d LOOP; rm IMG (each), rm -rf $work"
    exit "$rc"
  fi
  for (( i=${#fs_names[@]}-1; i>=0; i-- )); do
    n=${fs_names[$i]}
    if mountpoint -q "${fs_mnt[$n]}" 2>/dev/null; then umount "${fs_mnt[$n]}" || umount -l "${fs_mnt[$n]}"; fi
    detach_loop "${fs_loop[$n]:-}" "${fs_img[$n]}"
    rm -f "${fs_img[$n]}"
  done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# new_fs NAME MIB: a fresh BTRFS over a sparse file in --dir, on a loop device,
# mounted at $work/mnt/NAME.
new_fs() {
  local name=$1 mib=$2 img loop
  img=$(mktemp "$dir/icbd-replbench-$name.XXXXXX.img") || return 1
  fs_names+=("$name")
  fs_img[$name]=$img
  fs_mnt[$name]="$work/mnt/$name"
  truncate -s "${mib}M" "$img" || return 1
  loop=$(losetup --find --show --direct-io=on "$img" 2>/dev/null) || loop=$(losetup --find --show "$img") || return 1
  fs_loop[$name]=$loop
  mkfs.btrfs -q -f "$loop" >/dev/null || return 1
  mkdir -p "${fs_mnt[$name]}" && mount "$loop" "${fs_mnt[$name]}" || return 1
}
# Cumulative bytes read / written on a block device since it was attached.
# (bash arithmetic: mawk's printf %d stops at 2^31 - 1.)
dev_read() { local s; read -r -a s <"/sys/block/${1#/dev/}/stat"; echo $(( s[2] * 512 )); }
dev_written() { local s; read -r -a s <"/sys/block/${1#/dev/}/stat"; echo $(( s[6] * 512 )); }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
mib() { awk -v b="$1" 'BEGIN { if (b == "" || b == "-") print "–"; else printf "%.1f MiB", b / 1048576 }'; }

# --- helper programs (python3, written once) ----------------------------------------
# fill.py DST BUDGET DIR...: copies regular files and symlinks of DIR... (sorted
# walk, same relative paths) into DST until BUDGET bytes are used.
cat >"$work/fill.py" <<'PY'
import os, shutil, stat, sys
dst, budget, tops = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
used = files = 0
def walk():
    for top in tops:
        for root, dirs, names in os.walk(top):
            dirs.sort()
            for n in sorted(names):
                yield root, n
for root, n in walk():
    p = os.path.join(root, n)
    q = os.path.join(dst, os.path.relpath(p, "/"))
    try:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            os.makedirs(os.path.dirname(q), exist_ok=True)
            os.symlink(os.readlink(p), q)
        elif stat.S_ISREG(st.st_mode) and st.st_size <= 256 << 20:
            if used + st.st_size > budget:
                break
            os.makedirs(os.path.dirname(q), exist_ok=True)
            shutil.copy2(p, q)
            used += (st.st_size + 4095) // 4096 * 4096
            files += 1
    except OSError:
        pass
print(used, files)
PY
# mutate.py MNT TARGET SEED TAG DIR...: an administrator's update of the guest
# filesystem writing about TARGET bytes; prints what it did as key=value.
cat >"$work/mutate.py" <<'PY'
import glob, os, random, shutil, stat, sys
mnt, target, seed, tag, donors = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
rng = random.Random(seed)
done = {"upgraded_files": 0, "upgraded_bytes": 0, "new_files": 0, "new_bytes": 0,
        "inplace_bytes": 0, "log_bytes": 0, "deleted_files": 0, "deleted_bytes": 0, "touched": 0}
files = []
for root, dirs, names in os.walk(mnt):
    dirs.sort()
    if root == mnt and "lost+found" in dirs:
        dirs.remove("lost+found")
    for n in sorted(names):
        p = os.path.join(root, n)
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            files.append((p, st.st_size))
rng.shuffle(files)
used = set()
# 1. Package upgrades, dpkg-style: the new file is written beside the old one and
#    renamed over it; its content is the old one shifted by a few bytes with a
#    few bytes of every 4 KiB changed (a rebuilt binary: similar, compressible,
#    but no 4 KiB block in common with the old one).
budget = target * 50 // 100
for p, sz in files:
    if done["upgraded_bytes"] >= budget:
        break
    if not 8192 <= sz <= min(16 << 20, budget - done["upgraded_bytes"] + (64 << 10)):
        continue
    with open(p, "rb") as f:
        data = bytearray(rng.randbytes(rng.randrange(16, 512)) + f.read())
    for off in range(0, len(data), 4096):
        data[off:off + 8] = rng.randbytes(8)
    tmp = p + ".dpkg-new"
    with open(tmp, "wb") as f:
        f.write(data)
    shutil.copystat(p, tmp)
    os.rename(tmp, p)
    used.add(p)
    done["upgraded_files"] += 1
    done["upgraded_bytes"] += len(data)
# 2. A new package: real files of the host that are not in the guest yet.
budget = target * 35 // 100
dest = os.path.join(mnt, "opt", "pkg-" + tag)
def fresh():
    for top in donors:
        for root, dirs, names in os.walk(top):
            dirs.sort(reverse=True)  # the fill took the start of the sorted walk
            for n in sorted(names, reverse=True):
                p = os.path.join(root, n)
                rel = os.path.relpath(p, "/")
                if os.path.lexists(os.path.join(mnt, rel)) or glob.glob(os.path.join(mnt, "opt", "pkg-*", glob.escape(rel))):
                    continue
                yield p, rel
for p, rel in fresh():
    if done["new_bytes"] >= budget:
        break
    try:
        st = os.lstat(p)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 32 << 20 or st.st_size > budget - done["new_bytes"] + (1 << 20):
            continue
        q = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(q), exist_ok=True)
        shutil.copy2(p, q)
    except OSError:
        continue
    done["new_files"] += 1
    done["new_bytes"] += st.st_size
# 3. In place: random 4 KiB blocks of a few large files rewritten (a database),
#    and text appended to logs.
budget = target * 7 // 100
big = [p for p, sz in files if sz >= 1 << 20 and p not in used][:8]
while big and done["inplace_bytes"] < budget:
    p = rng.choice(big)
    sz = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.seek(rng.randrange(0, sz // 4096) * 4096)
        f.write(rng.randbytes(4096))
    done["inplace_bytes"] += 4096
budget = target * 8 // 100
logdir = os.path.join(mnt, "var", "log")
os.makedirs(logdir, exist_ok=True)
words = ["kernel:", "systemd[1]:", "sshd[812]:", "Started", "session", "for", "user", "root", "eth0:",
         "link", "up", "Accepted", "publickey", "from", "10.0.0.7", "port", "51234", "ssh2", "CRON[9921]:"]
n = 0
with open(os.path.join(logdir, "syslog"), "a") as f:
    while done["log_bytes"] < budget:
        line = "Jan %2d %02d:%02d:%02d vm %s\n" % (1 + n // 86400 % 28, n // 3600 % 24, n // 60 % 60, n % 60,
                                                  " ".join(rng.choice(words) for _ in range(rng.randrange(4, 14))))
        f.write(line)
        done["log_bytes"] += len(line)
        n += 1
# 4. Removed files and touched metadata.
for p, sz in files[-max(10, len(files) // 500):]:
    if p in used or not os.path.exists(p):
        continue
    os.unlink(p)
    done["deleted_files"] += 1
    done["deleted_bytes"] += sz
for p, sz in files[len(files) // 2:len(files) // 2 + 100]:
    if os.path.exists(p):
        os.utime(p)
        done["touched"] += 1
done["written_bytes"] = done["upgraded_bytes"] + done["new_bytes"] + done["inplace_bytes"] + done["log_bytes"]
print(" ".join("%s=%d" % kv for kv in done.items()))
PY
# blockdiff.py A B: bytes in 4 KiB blocks that differ between two files.
cat >"$work/blockdiff.py" <<'PY'
import sys
a, b = open(sys.argv[1], "rb"), open(sys.argv[2], "rb")
changed = 0
while True:
    x, y = a.read(8 << 20), b.read(8 << 20)
    if not x and not y:
        break
    if x != y:
        for i in range(0, max(len(x), len(y)), 4096):
            if x[i:i + 4096] != y[i:i + 4096]:
                changed += 4096
print(changed)
PY
# pushjson.py FILE: from icbd-replicate push --json: the wire bytes summed over
# the replicas, the tool's own count of source bytes read, and what each
# replica got (kind and base), as "WIRE SOURCE KIND@BASE,...".
cat >"$work/pushjson.py" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    reps = d.get("replicas", [])
    wire = sum(int(r.get("wire_bytes", 0)) for r in reps) if reps else "-"
    kinds = ",".join("%s@%s" % (r.get("kind", "?"), r.get("base", "?")) for r in reps) or "-"
    print(wire, d.get("source_bytes_read", "-"), kinds)
except (OSError, ValueError, AttributeError, TypeError):
    print("- - -")
PY

# --- the master and version 1 --------------------------------------------------------
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
uptime_before=$(uptime)
fs_mib=$(( img_mib * 3 / 2 + 1024 ))
fill_bytes=$(( img_mib * 1048576 * 57 / 100 ))
donors=(/etc /usr/bin /usr/sbin /usr/include /usr/share /usr/lib)
new_fs master "$fs_mib" || die "cannot create the master BTRFS in $dir"
M=${fs_mnt[master]}
mloop=${fs_loop[master]}
btrfs -q subvolume create "$M/work" >/dev/null || die "btrfs subvolume create $M/work failed"
mkdir -p "$M/images/vm" || die "mkdir $M/images/vm failed"
img_file="$M/work/disk.raw"
truncate -s "${img_mib}M" "$img_file" || die "cannot create $img_file"
mkfs.ext4 -q -F -L vmroot -E lazy_itable_init=0,lazy_journal_init=0 "$img_file" >/dev/null ||
  die "mkfs.ext4 $img_file failed"

mount_guest() {
  img_loop=$(losetup --find --show "$img_file") || return 1
  mkdir -p "$img_mnt" && mount -t ext4 "$img_loop" "$img_mnt"
}
# commit_version N: unmounts the guest and snapshots `work` read-only as images/vm/N.
commit_version() {
  umount_guest
  sync -f "$M" || return 1
  btrfs -q subvolume snapshot -r "$M/work" "$M/images/vm/$1" >/dev/null
}

log "version 1: filling a $size ext4 disk with about $(mib "$fill_bytes") of files from ${donors[*]}"
mount_guest || die "cannot mount $img_file"
read -r _ fill_files < <(python3 "$work/fill.py" "$img_mnt" "$fill_bytes" "${donors[@]}") ||
  die "filling the guest failed"
guest_used=$(df -B1 --output=used "$img_mnt" | tail -1 | tr -d ' ')
commit_version 1 || die "cannot snapshot version 1"
log "version 1: $fill_files files, $(mib "$guest_used") used in the guest, disk.raw allocates $(du -B1 "$M/images/vm/1/disk.raw" | cut -f1) bytes"

declare -A upd_pct=([1]=1 [2]=10) upd_parent=([1]=1 [2]=2) upd_child=([1]=2 [2]=3) upd_info upd_blocks upd_stream upd_zstd
for u in 1 2; do
  p=${upd_parent[$u]} c=${upd_child[$u]}
  log "version $c: an update of about ${upd_pct[$u]} % of the image, from version $p"
  cp --reflink=always "$M/images/vm/$p/disk.raw" "$img_file" || die "cp --reflink of version $p failed"
  mount_guest || die "cannot mount $img_file"
  upd_info[$u]=$(python3 "$work/mutate.py" "$img_mnt" $(( img_mib * 1048576 * upd_pct[$u] / 100 )) "$c" "v$c" "${donors[@]}") ||
    die "updating the guest for version $c failed"
  commit_version "$c" || die "cannot snapshot version $c"
  log "version $c: ${upd_info[$u]}"
done

# --- what changed, measured outside the runs ---------------------------------------
declare -A sha
for u in 1 2; do
  p=${upd_parent[$u]} c=${upd_child[$u]}
  upd_stream[$u]=$(btrfs send -q -p "$M/images/vm/$p" "$M/images/vm/$c" | wc -c)
  upd_zstd[$u]=$(btrfs send -q -p "$M/images/vm/$p" "$M/images/vm/$c" | zstd -3 -q -c | wc -c)
  upd_blocks[$u]=$(python3 "$work/blockdiff.py" "$M/images/vm/$p/disk.raw" "$M/images/vm/$c/disk.raw")
  log "update $p -> $c: send stream $(mib "${upd_stream[$u]}"), zstd -3 $(mib "${upd_zstd[$u]}"), differing 4 KiB blocks $(mib "${upd_blocks[$u]}")"
done
for v in 1 2 3; do sha[$v]=$(sha256sum <"$M/images/vm/$v/disk.raw" | cut -d' ' -f1); done

# --- replicas, seeded with version 1 -------------------------------------------------
replicas=(send zstd rsync)
if [ -n "$tool" ]; then
  replicas+=("${icbd_keys[@]}" fan1 fan2 fan3)
  certs="$work/certs"
  "$src/scripts/make-certs.sh" "$certs" master replica1 replica2 replica3 >/dev/null || die "scripts/make-certs.sh failed"
else
  log "icbd-replicate: not built ($build/replicator/icbd-replicate); its rows are skipped"
fi
for r in "${replicas[@]}"; do
  new_fs "$r" "$fs_mib" || die "cannot create the replica BTRFS '$r' in $dir"
  mkdir -p "${fs_mnt[$r]}/images/vm" || die "mkdir failed"
  btrfs send -q "$M/images/vm/1" | btrfs receive -q "${fs_mnt[$r]}/images/vm/" ||
    die "seeding replica '$r' with version 1 failed"
  log "replica '$r' (${fs_loop[$r]}) holds version 1"
done
btrfs -q subvolume snapshot "${fs_mnt[rsync]}/images/vm/1" "${fs_mnt[rsync]}/copy" >/dev/null ||
  die "cannot make the rsync replica's writable copy"
sync

# --- measured runs ---------------------------------------------------------------------
declare -A wall wire rd wr note srd kind
failures=0
# check_copy U METHOD FILE: the replica's copy against the master's version.
check_copy() {
  local u=$1 m=$2 f=$3 h
  h=$(sha256sum <"$f" 2>/dev/null | cut -d' ' -f1)
  if [ "$h" != "${sha[${upd_child[$u]}]}" ]; then
    note[$u,$m]="WRONG COPY (sha256 differs from the master's)"
    failures=$((failures + 1))
    log "update $u, $m: the replica's disk.raw differs from the master's"
  fi
}
run_send() {  # U send|zstd
  local u=$1 m=$2 p=${upd_parent[$1]} c=${upd_child[$1]} R=${fs_mnt[$2]} rl=${fs_loop[$2]} t0 t1 r0 w0 st
  drop_caches
  r0=$(dev_read "$mloop"); w0=$(dev_written "$rl"); t0=$(now)
  if [ "$m" = send ]; then
    btrfs send -q -p "$M/images/vm/$p" "$M/images/vm/$c" | btrfs receive -q "$R/images/vm/"
  else
    btrfs send -q -p "$M/images/vm/$p" "$M/images/vm/$c" | zstd -3 -q -c | zstd -d -q -c | btrfs receive -q "$R/images/vm/"
  fi
  st="${PIPESTATUS[*]}"
  sync -f "$R"
  t1=$(now)
  rd[$u,$m]=$(( $(dev_read "$mloop") - r0 )); wr[$u,$m]=$(( $(dev_written "$rl") - w0 ))
  wall[$u,$m]=$(elapsed "$t0" "$t1")
  if [ "$m" = send ]; then wire[$u,$m]=${upd_stream[$u]}; else wire[$u,$m]=${upd_zstd[$u]}; fi
  if [[ "$st" =~ [1-9] ]]; then
    note[$u,$m]="failed (pipeline status $st)"; failures=$((failures + 1)); return
  fi
  check_copy "$u" "$m" "$R/images/vm/$c/disk.raw"
}
run_rsync() {  # U
  local u=$1 c=${upd_child[$1]} R=${fs_mnt[rsync]} rl=${fs_loop[rsync]} t0 t1 r0 w0 rc s
  drop_caches
  r0=$(dev_read "$mloop"); w0=$(dev_written "$rl"); t0=$(now)
  rsync --inplace --no-whole-file --ignore-times --stats "$M/images/vm/$c/disk.raw" "$R/copy/disk.raw" >"$work/rsync.out" 2>"$work/rsync.err"
  rc=$?
  sync -f "$R"
  t1=$(now)
  rd[$u,rsync]=$(( $(dev_read "$mloop") - r0 )); wr[$u,rsync]=$(( $(dev_written "$rl") - w0 ))
  wall[$u,rsync]=$(elapsed "$t0" "$t1")
  s=$(awk -F: '/^Total bytes (sent|received):/ { gsub(/[ ,]/, "", $2); t += $2 } END { print t + 0 }' "$work/rsync.out")
  wire[$u,rsync]=$s
  if [ "$rc" -ne 0 ]; then
    note[$u,rsync]="failed (rc $rc: $(tail -1 "$work/rsync.err"))"; failures=$((failures + 1)); return
  fi
  check_copy "$u" rsync "$R/copy/disk.raw"
}
. "$src/scripts/lib/tgtd.sh"  # free_tcp_port
# start_serve REPLICA N: icbd-replicate serve --once on the replica with the
# certificate of replicaN; sets serve_port.
start_serve() {
  local r=$1 n=$2 pid i
  serve_port=$(free_tcp_port)
  "$tool" serve --root "${fs_mnt[$r]}" --listen "127.0.0.1:$serve_port" --ca "$certs/ca.crt" \
    --cert "$certs/replica$n.crt" --key "$certs/replica$n.key" --once >"$work/serve-$r.out" 2>"$work/serve-$r.err" &
  pid=$!
  serve_pids+=("$pid")
  for i in $(seq 100); do
    ss -ltnH "sport = :$serve_port" 2>/dev/null | grep -q . && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  log "serve on replica '$r' did not listen on 127.0.0.1:$serve_port: $(tail -2 "$work/serve-$r.err" | tr '\n' ' ')"
  return 1
}
# wait_serves: lets the --once servers finish (their result is already
# published when push returns), then stops any that hang.
wait_serves() {
  local p i
  for p in "${serve_pids[@]}"; do
    for i in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  stop_serves
}
run_icbd() {  # U icbd|icbd-ALG|fan
  local u=$1 m=$2 c=${upd_child[$1]} t0 t1 r0 rc r n=0 to=() ws=() wsum=0 v alg=$icbd_main
  local targets=("$m")
  [ "$m" = fan ] && targets=(fan1 fan2 fan3)
  [ "${m#icbd-}" != "$m" ] && alg=${m#icbd-}
  for r in "${targets[@]}"; do
    n=$((n + 1))
    start_serve "$r" "$n" || { note[$u,$m]="serve did not start"; failures=$((failures + 1)); stop_serves; return; }
    to+=(--to "127.0.0.1:$serve_port")
  done
  drop_caches
  r0=$(dev_read "$mloop")
  for r in "${targets[@]}"; do ws+=("$(dev_written "${fs_loop[$r]}")"); done
  t0=$(now)
  local level=()
  [ "${alg#*:}" != "$alg" ] && level=(--compress-level "${alg#*:}")
  "$tool" push --root "$M" --image vm --version "$c" "${to[@]}" --ca "$certs/ca.crt" --cert "$certs/master.crt" \
    --key "$certs/master.key" --compress "${alg%%:*}" "${level[@]}" --json >"$work/push.json" 2>"$work/push.err"
  rc=$?
  t1=$(now)
  rd[$u,$m]=$(( $(dev_read "$mloop") - r0 ))
  n=0
  for r in "${targets[@]}"; do wsum=$(( wsum + $(dev_written "${fs_loop[$r]}") - ws[n] )); n=$((n + 1)); done
  wr[$u,$m]=$wsum
  wall[$u,$m]=$(elapsed "$t0" "$t1")
  cp "$work/push.json" "$work/push-$u-$m.json"
  read -r v srd[$u,$m] kind[$u,$m] < <(python3 "$work/pushjson.py" "$work/push.json")
  wire[$u,$m]=$v
  wait_serves
  if [ "$rc" -ne 0 ]; then
    note[$u,$m]="failed (rc $rc: $(tail -1 "$work/push.err"))"; failures=$((failures + 1)); return
  fi
  for r in "${targets[@]}"; do check_copy "$u" "$m" "${fs_mnt[$r]}/images/vm/$c/disk.raw"; done
}

# label METHOD: the method as the report and the log name it.
label() {
  case "$1" in
    send) echo 'btrfs send -p \| btrfs receive; sync' ;;
    zstd) echo 'btrfs send -p \| zstd -3 \| zstd -d \| btrfs receive; sync' ;;
    rsync) echo 'rsync --inplace --no-whole-file --ignore-times; sync' ;;
    icbd) echo "icbd-replicate push --compress $icbd_main (TLS 1.3, durable)" ;;
    icbd-*) echo "icbd-replicate push --compress ${1#icbd-} (TLS 1.3, durable)" | sed 's/ --compress \([a-z0-9]*\):\([0-9]*\)/ --compress \1 --compress-level \2/' ;;
    fan) echo "icbd-replicate push --compress $icbd_main to 3 replicas at once (wire and written: sum of the 3)" ;;
  esac
}
# forget_child U METHOD: deletes the version update U published on the
# replica(s) of METHOD, and waits for BTRFS to clean it up, so that the next
# run starts from a replica that holds exactly the parent again.
forget_child() {
  local u=$1 m=$2 r c=${upd_child[$1]}
  local targets=("$m")
  [ "$m" = fan ] && targets=(fan1 fan2 fan3)
  for r in "${targets[@]}"; do
    btrfs -q subvolume delete -c "${fs_mnt[$r]}/images/vm/$c" >/dev/null 2>&1 ||
      die "cannot delete ${fs_mnt[$r]}/images/vm/$c for the next run"
    btrfs -q subvolume sync "${fs_mnt[$r]}" >/dev/null 2>&1 || true
  done
}
# measure U METHOD RUN: one run; the wall times of all runs collect in walls[].
declare -A walls
measure() {
  local u=$1 m=$2 run=$3
  [ "$run" -gt 1 ] && forget_child "$u" "$m"
  case "$m" in
    send|zstd) run_send "$u" "$m" ;;
    *) run_icbd "$u" "$m" ;;
  esac
  walls[$u,$m]="${walls[$u,$m]:-}${walls[$u,$m]:+ }${wall[$u,$m]}"
  log "  run $run: ${wall[$u,$m]} s ${note[$u,$m]:-}"
}
median() { tr ' ' '\n' <<<"$1" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : sprintf("%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

for u in 1 2; do
  methods=(send zstd)
  [ -n "$tool" ] && methods+=("${icbd_keys[@]}" fan)
  for run in $(seq "$runs"); do
    for m in "${methods[@]}"; do
      log "update ${upd_parent[$u]} -> ${upd_child[$u]}: $(label "$m" | sed 's/\\|/|/g')"
      measure "$u" "$m" "$run"
    done
    if [ "$run" = 1 ]; then
      log "update ${upd_parent[$u]} -> ${upd_child[$u]}: rsync --inplace --no-whole-file"
      run_rsync "$u"
      log "  ${wall[$u,rsync]} s"
    fi
  done
  if [ "$runs" -gt 1 ]; then
    for m in "${methods[@]}"; do wall[$u,$m]=$(median "${walls[$u,$m]}"); done
  fi
done
uptime_after=$(uptime)

# --- report ----------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "-" || b + 0 == 0) print "–"; else printf "%.2fx", a / b }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && a != "-" && b != "" && a + 0 <= b + 0) }'; }
metif() { if "$@"; then echo "**met**"; else echo "**not met**"; fi; }
tool_rev=$(git -C "$src" log -1 --format='%h %cs' 2>/dev/null)
report="$work/report.md"
{
  echo "## Replication: icbd-replicate vs btrfs send and rsync (issue 4)"
  echo
  echo "- started: $started; host $(hostname), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
  echo "- tools: $(btrfs --version | head -1), rsync $(rsync --version | head -1 | awk '{print $3}'), zstd $(zstd --version | grep -o 'v[0-9.]*'), $(openssl version | cut -d' ' -f1-2), icbd-replicate: $( [ -n "$tool" ] && echo "$tool (tree at $tool_rev)" || echo "not built")"
  echo "- filesystems: BTRFS on loop devices over sparse files in $dir ($(findmnt -n -o FSTYPE -T "$dir")), loop direct I/O $( [ "$(cat "/sys/block/${mloop#/dev/}/loop/dio" 2>/dev/null)" = 1 ] && echo on || echo off); master and each replica on its own filesystem"
  echo "- image: images/vm/N/disk.raw, a sparse $size raw disk with ext4 holding $fill_files real files from ${donors[*]} ($(mib "$guest_used") used in the guest)"
  echo "- page cache dropped (sync; echo 3 > drop_caches) before every run; $( [ "$runs" -gt 1 ] && echo "$runs runs per method (rsync: 1), interleaved; wall s is the median, the runs in brackets; bytes from the last run" || echo "one run per method"); wall time includes making the result durable"
  echo "- load before: \`${uptime_before# }\`"
  echo "- load after: \`${uptime_after# }\`"
  echo "- command: \`bench/replication_bench.sh${orig_args:+ $orig_args}\`"
  echo
  for u in 1 2; do
    p=${upd_parent[$u]} c=${upd_child[$u]}
    echo "### Update $p -> $c (about ${upd_pct[$u]} % of the image)"
    echo
    echo "Written in the guest: $(mib "$(sed -n 's/.*written_bytes=\([0-9]*\).*/\1/p' <<<"${upd_info[$u]}")") (\`${upd_info[$u]}\`); 4 KiB blocks of disk.raw that differ: $(mib "${upd_blocks[$u]}") ($(awk -v b="${upd_blocks[$u]}" -v m="$img_mib" 'BEGIN{printf "%.2f", 100*b/(m*1048576)}') % of the image); \`btrfs send -p\` stream: $(mib "${upd_stream[$u]}"), zstd -3: $(mib "${upd_zstd[$u]}")."
    echo
    echo "| method | wall s$( [ "$runs" -gt 1 ] && echo " (median)") | bytes on the wire | bytes read on source | bytes written on replica(s) | wall vs btrfs send+sync |"
    echo "|---|---:|---:|---:|---:|---:|"
    for m in send zstd rsync "${icbd_keys[@]}" fan; do
      if [ -z "$tool" ] && [ "$m" != send ] && [ "$m" != zstd ] && [ "$m" != rsync ]; then
        echo "| $(label "$m") | icbd-replicate: not built | | | | |"
        continue
      fi
      extra=""
      [ -n "${note[$u,$m]:-}" ] && extra=" (${note[$u,$m]})"
      if [ -n "${kind[$u,$m]:-}" ] && [ "${kind[$u,$m]}" != - ]; then
        extra="$extra (${kind[$u,$m]//,/, }; the tool counts $(mib "${srd[$u,$m]}") read)"
      fi
      w=${wall[$u,$m]}
      [ "$runs" -gt 1 ] && [ -n "${walls[$u,$m]:-}" ] && w="$w (${walls[$u,$m]// /, })"
      echo "| $(label "$m")$extra | $w | $(mib "${wire[$u,$m]}") | $(mib "${rd[$u,$m]}") | $(mib "${wr[$u,$m]}") | $(ratio "${wall[$u,$m]}" "${wall[$u,send]}") |"
    done
    echo
    if [ -n "$tool" ]; then
      echo "Targets (icbd-replicate push --compress $icbd_main):"
      echo "- wall time no worse than btrfs send -p | receive + sync: $(metif le "${wall[$u,icbd]}" "${wall[$u,send]}") (${wall[$u,icbd]} s vs ${wall[$u,send]} s)"
      echo "- bytes on the wire no more than the zstd-3 send stream: $(metif le "${wire[$u,icbd]}" "${upd_zstd[$u]}") ($(mib "${wire[$u,icbd]}") vs $(mib "${upd_zstd[$u]}"))"
      sp=$(ratio "${wall[$u,rsync]}" "${wall[$u,icbd]}")
      if [ "$u" = 1 ]; then
        echo "- at least 25x faster than rsync on the small update: $(metif awk -v a="${wall[$u,rsync]}" -v b="${wall[$u,icbd]}" 'BEGIN { exit !(b > 0 && a / b >= 25) }') ($sp)"
      else
        echo "- vs rsync (no target on the large update): $sp faster"
      fi
      echo "- fan-out to 3 replicas reads the source once (at most 1.2x the bytes one push reads): $(metif awk -v a="${rd[$u,fan]}" -v b="${rd[$u,icbd]}" 'BEGIN { exit !(a != "" && b != "" && a <= 1.2 * b + 1048576) }') ($(mib "${rd[$u,fan]}") vs $(mib "${rd[$u,icbd]}"))"
      echo
    fi
  done
} >"$report"
cat "$report"
[ -n "$out" ] && cp "$report" "$out"
if [ "$failures" -gt 0 ]; then
  log "$failures run(s) failed or produced a wrong copy; see the notes in the tables"
  exit 1
fi
exit 0
}
