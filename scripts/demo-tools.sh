#!/usr/bin/env bash
# The README's main job, on one machine: installs dependencies, builds, then
# plays a master and a cache server (replica), each with its own BTRFS
# repository on a loop device:
#   master:  commits a VM image as version 1 (a read-only snapshot), changes a
#            file inside it and commits version 2;
#   replica: receives version 1 (full) and version 2 (only the changed
#            extents) from the master with icbd-replicate over mutual TLS;
#   then serves version 2 from the replica with a private tgtd and bs_icbd.so:
#   LUN 1 the golden version (read-only), LUN 2 a client's copy-on-write overlay
#   behind a write-back cache, read and written through libiscsi.
# Cleans up on exit.
# Usage: scripts/demo-tools.sh [--keep]   (--keep: leave tgtd, the replica server
#        and the mounts running; scripts/demo-tools.sh stop removes them)   As root.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
state=/run/icbd-demo-tools.env
say() { printf '\n== %s\n' "$*"; }

stop_demo() {
  [ -f "$state" ] || return 0
  # shellcheck disable=SC1090
  . "$state"
  . "$src/scripts/lib/tgtd.sh"
  tgtd_stop
  if [ -n "${SERVE_PID:-}" ] && kill -0 "$SERVE_PID" 2>/dev/null; then
    kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true
  fi
  for m in "$MASTER" "$REPLICA"; do if mountpoint -q "$m"; then umount "$m"; fi; done
  for l in ${LOOPS:-}; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$WORK"
  rm -f "$state"
  echo "demo: stopped tgtd and the replica server, unmounted the repositories, detached ${LOOPS:-no loops}, removed $WORK"
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
ovl=$ICBD_BUILD/blockd/icbd-overlay
rep=$ICBD_BUILD/replicator/icbd-replicate
. scripts/lib/tgtd.sh

WORK=$(mktemp -d /var/tmp/icbd-demo.XXXXXX)
MASTER=$WORK/master
REPLICA=$WORK/replica
LOOPS=
SERVE_PID=
TGTD_PID= TGTD_CTL=
save_state() {
  printf 'WORK=%q\nMASTER=%q\nREPLICA=%q\nLOOPS=%q\nSERVE_PID=%q\nTGTD_PID=%q\nTGTD_CTL=%q\n' "$WORK" "$MASTER" \
    "$REPLICA" "$LOOPS" "${SERVE_PID:-}" "${TGTD_PID:-}" "${TGTD_CTL:-}" >"$state"
}
trap 'save_state; [ $keep = 1 ] || stop_demo' EXIT
trap 'exit 130' INT TERM
save_state

say "2. two BTRFS repositories on loop devices: the master and a cache server (replica)"
for r in master replica; do
  truncate -s 2G "$WORK/$r.img"
  l=$(losetup -f --show "$WORK/$r.img"); LOOPS="$LOOPS $l"; save_state
  mkfs.btrfs -q "$l" >/dev/null
  mkdir -p "$WORK/$r"; mount "$l" "$WORK/$r"
  echo "$r: $WORK/$r on $l (btrfs)"
done

say "3. master: a VM image (raw disk with an ext4 filesystem) committed as version 1"
mkdir -p "$WORK/rootfs/etc" "$WORK/rootfs/home/user"
echo "icbd demo desktop" >"$WORK/rootfs/etc/motd"
head -c 32M /dev/urandom >"$WORK/rootfs/home/user/data.bin"
btrfs -q subvolume create "$MASTER/work"
truncate -s 256M "$MASTER/work/disk.raw"
mkfs.ext4 -q -F -d "$WORK/rootfs" -L demo "$MASTER/work/disk.raw"
"$rep" commit --root "$MASTER" --image demo --version 1 --from "$MASTER/work"
echo "version 1: $MASTER/images/demo/1/disk.raw ($(btrfs property get -ts "$MASTER/images/demo/1" ro))"

say "4. master: an update inside the image (4 MiB of a file rewritten), committed as version 2"
mkdir -p "$WORK/mnt"
mount -o loop "$MASTER/work/disk.raw" "$WORK/mnt"
dd if=/dev/urandom of="$WORK/mnt/home/user/data.bin" bs=1M count=4 seek=8 conv=notrunc,fsync status=none
echo "updated $(date -u +%F)" >"$WORK/mnt/etc/motd"
umount "$WORK/mnt"
"$rep" commit --root "$MASTER" --image demo --version 2 --from "$MASTER/work"
"$rep" list --root "$MASTER"

say "5. replication over mutual TLS: version 1 in full, then version 2 as changed extents only"
scripts/make-certs.sh "$WORK/pki" master replica >/dev/null
tls() { echo --ca "$WORK/pki/ca.crt" --cert "$WORK/pki/$1.crt" --key "$WORK/pki/$1.key"; }
port=$(free_tcp_port)
# shellcheck disable=SC2046
"$rep" serve --root "$REPLICA" --listen "127.0.0.1:$port" $(tls replica) --allow-peer master --name replica \
  >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!; save_state
for _ in $(seq 50); do grep -q listening "$WORK/serve.log" && break; sleep 0.1; done
for v in 1 2; do
  # shellcheck disable=SC2046
  "$rep" push --root "$MASTER" --image demo --version $v --to "127.0.0.1:$port" $(tls master) --name master \
    --allow-peer replica --json >"$WORK/push-$v.json"
  python3 - "$WORK/push-$v.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["replicas"]:
    print(f"  {r['kind']}" + (f" from version {r['base']}" if r.get("base") else "") +
          f": {r['wire_bytes'] / 2**20:.1f} MiB on the wire, {r['source_bytes_read'] / 2**20:.1f} MiB read on the master")
PY
done
"$rep" list --root "$REPLICA"
m=$(sha256sum "$MASTER/images/demo/2/disk.raw" | cut -d' ' -f1)
r=$(sha256sum "$REPLICA/images/demo/2/disk.raw" | cut -d' ' -f1)
echo "master  version 2 sha256 $m"
echo "replica version 2 sha256 $r"
[ "$m" = "$r" ] || { echo "demo: the replica's version 2 differs from the master's" >&2; exit 1; }
golden=$REPLICA/images/demo/2/disk.raw
file_sum=$r

say "6. the replica serves version 2: tgtd with bs_icbd.so (private instance, loopback only)"
mkdir -p "$REPLICA/clients" "$WORK/ssd"
TGTD_LOG=$WORK/tgtd.log tgtd_start; save_state
iqn=iqn.2026-11.org.icbd:demo
tgtd_adm --op new --mode target --tid 1 -T "$iqn"
tgtd_adm --op new --mode logicalunit --tid 1 --lun 1 --bstype icbd -b "$golden" --bsopts "readonly=1"
# A client: its own copy-on-write overlay over the shared golden file, behind a
# write-back cache on "fast local storage".
tgtd_adm --op new --mode logicalunit --tid 1 --lun 2 --bstype icbd -b "$golden" \
  --bsopts "overlay=$REPLICA/clients/pc01.ovl;cache=$WORK/ssd/pc01.cache;cache_size=64M"
tgtd_adm --op bind --mode target --tid 1 -I 127.0.0.1
echo "tgtd pid $TGTD_PID, portal 127.0.0.1:$TGTD_PORT, control port $TGTD_CTL"
tgtadm -C "$TGTD_CTL" --lld iscsi --op show --mode target | grep -E 'LUN:|Backing store (type|path)|Readonly'
url=iscsi://127.0.0.1:$TGTD_PORT/$iqn

say "7. reading the golden LUN through libiscsi"
"$cli" capacity "$url/1"
t0=$(date +%s.%N)
lun_sum=$("$cli" read "$url/1" | sha256sum | cut -d' ' -f1)
t1=$(date +%s.%N)
echo "LUN 1 sha256 $lun_sum ($(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f MiB/s", 256/(b-a)}'))"
echo "file  sha256 $file_sum"
[ "$lun_sum" = "$file_sum" ] || { echo "demo: MISMATCH between the LUN and its file" >&2; exit 1; }

say "8. the golden LUN refuses writes"
head -c 4096 /dev/urandom >"$WORK/block.bin"
if "$cli" write "$url/1" -i "$WORK/block.bin" --lba 8 2>"$WORK/err.txt"; then
  echo "demo: a write to the read-only golden LUN succeeded" >&2; exit 1
fi
echo "refused as expected: $(cat "$WORK/err.txt")"

say "9. the client's LUN takes writes (FUA, then SYNCHRONIZE CACHE) and reads them back"
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
echo "golden version 2 unchanged: sha256 $now_sum"
# Removing the LUN writes back what its cache still holds; a LUN that was idle
# for cache_idle (1 s) has been written back already.
tgtd_adm --op delete --mode logicalunit --tid 1 --lun 2
grep -E "cache .*(writing back|written back)" "$WORK/tgtd.log" | sed 's/^/tgtd: /' ||
  echo "tgtd: nothing left to write back at removal (the cache was written back while the LUN was idle)"
"$ovl" info "$REPLICA/clients/pc01.ovl"

say "demo: done"
if [ $keep = 1 ]; then
  tgtd_adm --op new --mode logicalunit --tid 1 --lun 2 --bstype icbd -b "$golden" \
    --bsopts "overlay=$REPLICA/clients/pc01.ovl;cache=$WORK/ssd/pc01.cache;cache_size=64M"
  echo "left running: $url/1 (golden, read-only) and $url/2 (client overlay + cache), replica server on 127.0.0.1:$port;"
  echo "'scripts/demo-tools.sh stop' removes everything"
fi
