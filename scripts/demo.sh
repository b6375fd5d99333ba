#!/usr/bin/env bash
# The README's main job, on one machine: installs dependencies, builds, then
# makes a BTRFS filesystem on a loop device, commits a VM image as a read-only
# snapshot (version 1 of image 'demo'), starts a private tgtd with bs_icbd.so,
# exports the golden version read-only and a per-client writable copy with
# --bstype icbd, and reads and writes them through libiscsi. Cleans up on exit.
# Usage: scripts/demo.sh [--keep]   (--keep: leave tgtd and the mount running;
#        scripts/demo.sh stop removes them)          Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
state=/run/icbd-demo.env
say() { printf '\n== %s\n' "$*"; }

stop_demo() {
  [ -f "$state" ] || return 0
  # shellcheck disable=SC1090
  . "$state"
  . "$src/scripts/lib/tgtd.sh"
  tgtd_stop
  if mountpoint -q "$MNT"; then umount "$MNT"; fi
  [ -n "${LOOP:-}" ] && losetup -d "$LOOP" 2>/dev/null || true
  rm -rf "$WORK"
  rm -f "$state"
  echo "demo: stopped tgtd, unmounted $MNT, detached ${LOOP:-loop}, removed $WORK"
}

if [ "${1:-}" = stop ]; then stop_demo; exit 0; fi
keep=0; [ "${1:-}" = --keep ] && keep=1
if [ -f "$state" ]; then
  echo "demo: a previous demo is still running; stopping it first"
  stop_demo
fi

say "1. dependencies and build"
scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release
export ICBD_BUILD=$src/build/release
cli=$ICBD_BUILD/blockd/icbd-iscsi
. scripts/lib/tgtd.sh

WORK=$(mktemp -d /var/tmp/icbd-demo.XXXXXX)
MNT=$WORK/repo
LOOP=
TGTD_PID= TGTD_CTL=
save_state() {
  printf 'WORK=%q\nMNT=%q\nLOOP=%q\nTGTD_PID=%q\nTGTD_CTL=%q\n' "$WORK" "$MNT" "$LOOP" "${TGTD_PID:-}" "${TGTD_CTL:-}" >"$state"
}
trap 'save_state; [ $keep = 1 ] || stop_demo' EXIT
trap 'exit 130' INT TERM
save_state

say "2. BTRFS repository on a loop device"
truncate -s 2G "$WORK/btrfs.img"
LOOP=$(losetup -f --show "$WORK/btrfs.img"); save_state
mkfs.btrfs -q "$LOOP" >/dev/null
mkdir -p "$MNT"; mount "$LOOP" "$MNT"
echo "repository: $MNT on $LOOP (btrfs, $(du -h --apparent-size "$WORK/btrfs.img" | cut -f1))"

say "3. a VM image (raw disk with an ext4 filesystem) committed as version 1"
mkdir -p "$MNT/images/demo" "$WORK/rootfs/etc" "$WORK/rootfs/home/user"
echo "icbd demo desktop" >"$WORK/rootfs/etc/motd"
head -c 32M /dev/urandom >"$WORK/rootfs/home/user/data.bin"
btrfs -q subvolume create "$MNT/images/demo/.staging-1"
truncate -s 256M "$MNT/images/demo/.staging-1/disk.raw"
mkfs.ext4 -q -F -d "$WORK/rootfs" -L demo "$MNT/images/demo/.staging-1/disk.raw"
btrfs -q subvolume snapshot -r "$MNT/images/demo/.staging-1" "$MNT/images/demo/1"
btrfs -q subvolume delete "$MNT/images/demo/.staging-1"
golden=$MNT/images/demo/1/disk.raw
echo "version 1: $golden ($(btrfs property get -ts "$MNT/images/demo/1" ro))"
# Each client gets its own writable file; a reflink shares every extent with the
# golden version until the client writes (per-client overlays come next).
btrfs -q subvolume create "$MNT/clients"
cp --reflink=always "$golden" "$MNT/clients/pc01.raw"

say "4. tgtd with bs_icbd.so (private instance, loopback only)"
TGTD_LOG=$WORK/tgtd.log tgtd_start; save_state
iqn=iqn.2026-11.org.icbd:demo
tgtd_adm --op new --mode target --tid 1 -T "$iqn"
tgtd_adm --op new --mode logicalunit --tid 1 --lun 1 --bstype icbd -b "$golden" --bsopts "readonly=1"
tgtd_adm --op new --mode logicalunit --tid 1 --lun 2 --bstype icbd -b "$MNT/clients/pc01.raw"
tgtd_adm --op bind --mode target --tid 1 -I 127.0.0.1
echo "tgtd pid $TGTD_PID, portal 127.0.0.1:$TGTD_PORT, control port $TGTD_CTL"
tgtadm -C "$TGTD_CTL" --lld iscsi --op show --mode target | grep -E 'LUN:|Backing store (type|path)|Readonly'
url=iscsi://127.0.0.1:$TGTD_PORT/$iqn

say "5. reading the golden LUN through libiscsi"
"$cli" capacity "$url/1"
t0=$(date +%s.%N)
lun_sum=$("$cli" read "$url/1" | sha256sum | cut -d' ' -f1)
t1=$(date +%s.%N)
file_sum=$(sha256sum "$golden" | cut -d' ' -f1)
echo "LUN 1 sha256 $lun_sum ($(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f MiB/s", 256/(b-a)}'))"
echo "file  sha256 $file_sum"
[ "$lun_sum" = "$file_sum" ] || { echo "demo: MISMATCH between the LUN and its file" >&2; exit 1; }

say "6. the golden LUN refuses writes"
head -c 4096 /dev/urandom >"$WORK/block.bin"
if "$cli" write "$url/1" -i "$WORK/block.bin" --lba 8 2>"$WORK/err.txt"; then
  echo "demo: a write to the read-only golden LUN succeeded" >&2; exit 1
fi
echo "refused as expected: $(cat "$WORK/err.txt")"

say "7. the client's LUN takes writes (FUA, then SYNCHRONIZE CACHE) and reads them back"
"$cli" write "$url/2" -i "$WORK/block.bin" --lba 2048 --fua
head -c 1M /dev/urandom >"$WORK/mib.bin"
"$cli" write "$url/2" -i "$WORK/mib.bin" --lba 4096
"$cli" sync "$url/2"
"$cli" read "$url/2" --lba 2048 --blocks 8 -o "$WORK/back1.bin"
"$cli" read "$url/2" --lba 4096 --blocks 2048 -o "$WORK/back2.bin"
cmp "$WORK/block.bin" "$WORK/back1.bin" && cmp "$WORK/mib.bin" "$WORK/back2.bin"
echo "read back 4 KiB (FUA) and 1 MiB (after SYNCHRONIZE CACHE): identical"
now_sum=$(sha256sum "$golden" | cut -d' ' -f1)
[ "$now_sum" = "$file_sum" ] || { echo "demo: the golden version changed" >&2; exit 1; }
echo "golden version 1 unchanged: sha256 $now_sum"
echo "client file shares extents with the golden version: $(btrfs filesystem du -s "$MNT" | tail -1 | awk '{print "total", $1, "exclusive", $2, "shared", $3}')"

say "demo: done"
if [ $keep = 1 ]; then
  echo "left running: $url/1 (golden, read-only) and $url/2 (client); 'scripts/demo.sh stop' removes everything"
fi
