#!/usr/bin/env bash
# The README's main job: the system on one machine. Installs dependencies,
# builds, then runs a master and two cache servers as three blockd processes on
# loopback, each with its own BTRFS repository on a loop device (and, for the
# cache servers, its own tgtd with bs_icbd.so), and drives them only with
# blockctl:
#   import a VM image (version 1), commit two updates; every version reaches
#   both cache servers by itself; a desktop (pc01) is exported by cache1 and
#   boot-read through libiscsi; cache2 is killed -9, the master sees it
#   suspect then dead, a commit happens without it, and when it comes back it
#   catches up with one incremental push.
# Usage: scripts/demo.sh [--keep]   (--keep leaves everything running;
#        scripts/demo.sh stop removes it)   As root.
# The earlier per-tool walk-through (icbd-replicate, tgtadm by hand) is
# scripts/demo-tools.sh.
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
  . "$src/scripts/lib/blockd.sh"
  local p
  for p in ${BLOCKD_PIDS:-}; do blockd_stop "$p"; done
  for t in ${TGTDS:-}; do TGTD_PID=${t%:*} TGTD_CTL=${t#*:} tgtd_stop; done
  for m in ${MOUNTS:-}; do if mountpoint -q "$m"; then umount "$m"; fi; done
  for l in ${LOOPS:-}; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$WORK"
  rm -f "$state"
  echo "demo: stopped blockd and tgtd, unmounted the repositories, detached ${LOOPS:-no loops}, removed $WORK"
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
blockd=$ICBD_BUILD/blockd/daemon/blockd
blockctl=$ICBD_BUILD/blockd/daemon/blockctl
cli=$ICBD_BUILD/blockd/icbd-iscsi
. scripts/lib/tgtd.sh
. scripts/lib/blockd.sh

WORK=$(mktemp -d /var/tmp/icbd-demo.XXXXXX)
LOOPS= MOUNTS= TGTDS= BLOCKD_PIDS=
save_state() {
  printf 'WORK=%q\nLOOPS=%q\nMOUNTS=%q\nTGTDS=%q\nBLOCKD_PIDS=%q\n' "$WORK" "$LOOPS" "$MOUNTS" "$TGTDS" \
    "$BLOCKD_PIDS" >"$state"
}
trap 'save_state; [ $keep = 1 ] || stop_demo' EXIT
trap 'exit 130' INT TERM
save_state

ctl() { local node=$1; shift; blockd_ctl "$WORK/$node" "$@"; }
wait_for() { blockd_wait_for "$@"; }
newest_on() {  # newest_on REPLICA IMAGE -> the replica's newest version as the master sees it
  ctl master --json node list | python3 -c '
import json, sys
for n in json.load(sys.stdin):
    if n["name"] == sys.argv[1]:
        print(n["images"].get(sys.argv[2], {}).get("newest", 0))' "$1" "$2"
}
has_version() { [ "$(newest_on "$1" "$2")" = "$3" ]; }
state_is() { ctl master --json node show "$1" | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["state"] != sys.argv[1])' "$2"; }

say "2. three servers on loopback: master, cache1, cache2 (each a BTRFS repository on a loop device)"
scripts/make-certs.sh "$WORK/tls" master cache1 cache2 >/dev/null
for n in master cache1 cache2; do
  l=$(blockd_repo_btrfs "$WORK/$n.img" 1G "$WORK/$n/repo"); LOOPS="$LOOPS $l"; MOUNTS="$MOUNTS $WORK/$n/repo"; save_state
  echo "$n: repository $WORK/$n/repo on $l (btrfs)"
done
master_peer=$(free_tcp_port)
metrics_port=$(free_tcp_port)
{ blockd_master_toml "$WORK/master" master "$WORK/tls" "$master_peer"; printf '[metrics]\nlisten = "off"\n'; } \
  >"$WORK/master/blockd.toml"
for n in cache1 cache2; do
  TGTD_LOG=$WORK/$n/tgtd.log tgtd_start; TGTDS="$TGTDS $TGTD_PID:$TGTD_CTL"; save_state
  eval "${n}_PORTAL=$TGTD_PORT"
  # cache1 serves Prometheus metrics (its LUNs, with their clients) on loopback.
  metrics=off; [ $n = cache1 ] && metrics=127.0.0.1:$metrics_port
  { blockd_replica_toml "$WORK/$n" $n "$WORK/tls" "$(free_tcp_port)" "$(free_tcp_port)" "$master_peer" "$TGTD_CTL" 64M
    printf '[metrics]\nlisten = "%s"\n' "$metrics"; } >"$WORK/$n/blockd.toml"
done
start_blockd() {
  blockd_start "$WORK/$1"
  eval "${1}_PID=$BLOCKD_PID"; BLOCKD_PIDS="$BLOCKD_PIDS $BLOCKD_PID"; save_state
  echo "$1: blockd pid $BLOCKD_PID ($(ctl "$1" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'))"
}
for n in master cache1 cache2; do start_blockd $n; done
wait_for 20 "both cache servers registered" sh -c "[ \$(\"$blockctl\" --socket \"$WORK/master/run/blockd.sock\" --json node list | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') = 2 ]"
ctl master node list

say "3. master: import a VM image (a 256 MiB raw disk holding an ext4 filesystem) as version 1"
mkdir -p "$WORK/rootfs/etc" "$WORK/rootfs/home/user"
echo "icbd demo desktop" >"$WORK/rootfs/etc/motd"
head -c 32M /dev/urandom >"$WORK/rootfs/home/user/data.bin"
truncate -s 256M "$WORK/disk.raw"
mkfs.ext4 -q -F -d "$WORK/rootfs" -L demo "$WORK/disk.raw"
ctl master image import demo --from "$WORK/disk.raw" --message "first install"
wait_for 60 "version 1 on cache1" has_version cache1 demo 1
wait_for 60 "version 1 on cache2" has_version cache2 demo 1

say "4. master: two updates (checkout, change, commit), each pushed to both cache servers on commit"
update() {  # update MESSAGE
  local co; co=$(ctl master --json image checkout demo | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
  mkdir -p "$WORK/mnt"; mount -o loop "$co/disk.raw" "$WORK/mnt"
  dd if=/dev/urandom of="$WORK/mnt/home/user/data.bin" bs=1M count=4 seek=$((RANDOM % 24)) conv=notrunc,fsync status=none
  echo "$1" >"$WORK/mnt/etc/motd"
  umount "$WORK/mnt"
  ctl master image commit demo --message "$1"
}
update "update 1"
update "update 2"
wait_for 60 "version 3 on cache1" has_version cache1 demo 3
wait_for 60 "version 3 on cache2" has_version cache2 demo 3
ctl master image versions demo
ctl master image promote demo 3
ctl master image list
ctl master node list
ctl master push list --limit 6

say "5. cache1: a desktop, pc01, exported as its own iSCSI target (overlay + write-back cache over production)"
iqn_pc01=iqn.2026-12.org.example:pc01
wait_for 20 "cache1 learns that version 3 is production" sh -c \
  "\"$blockctl\" --socket \"$WORK/cache1/run/blockd.sock\" --json image list | grep -q '\"production\": *3'"
ctl cache1 client add pc01 --image demo --initiator "$iqn_pc01"
ctl cache1 client list
target=$(ctl cache1 --json client show pc01 | python3 -c 'import json,sys; print(json.load(sys.stdin)["target"])')
url="iscsi://127.0.0.1:$cache1_PORTAL/$target/1"

say "6. pc01 boots: the whole LUN read through libiscsi equals version 3"
t0=$(date +%s.%N)
lun_sum=$("$cli" read "$url" --initiator "$iqn_pc01" | sha256sum | cut -d' ' -f1)
t1=$(date +%s.%N)
file_sum=$(sha256sum "$WORK/cache1/repo/images/demo/3/disk.raw" | cut -d' ' -f1)
echo "LUN     sha256 $lun_sum ($(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f MiB/s", 256/(b-a)}'))"
echo "version sha256 $file_sum"
[ "$lun_sum" = "$file_sum" ] || { echo "demo: MISMATCH between pc01's LUN and version 3" >&2; exit 1; }
if "$cli" capacity "$url" --initiator iqn.2026-12.org.example:intruder 2>/dev/null; then
  echo "demo: an initiator not bound to pc01's target logged in" >&2; exit 1
fi
echo "another initiator name is refused (ACL)"
echo "cache1's /metrics (Prometheus) for pc01's LUN:"
python3 - "http://127.0.0.1:$metrics_port/metrics" <<'PY'
import sys, urllib.request
for line in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines():
    if line.startswith(("icbd_lun_commands_total", "icbd_lun_bytes_total")) and 'client="pc01"' in line:
        print("  " + line)
PY

say "7. cache2 dies (kill -9); the master notices; a commit happens without it"
kill -9 "$cache2_PID"; wait "$cache2_PID" 2>/dev/null || true
wait_for 30 "cache2 suspect" state_is cache2 suspect; ctl master node list
update "update 3"
wait_for 60 "version 4 on cache1" has_version cache1 demo 4
wait_for 30 "cache2 dead" state_is cache2 dead; ctl master node list

say "8. cache2 comes back and catches up by itself (one incremental from version 3)"
start_blockd cache2
wait_for 60 "version 4 on cache2" has_version cache2 demo 4
ctl master node list
ctl master push list --limit 1
m=$(sha256sum "$WORK/master/repo/images/demo/4/disk.raw" | cut -d' ' -f1)
r=$(sha256sum "$WORK/cache2/repo/images/demo/4/disk.raw" | cut -d' ' -f1)
echo "master version 4 sha256 $m"
echo "cache2 version 4 sha256 $r"
[ "$m" = "$r" ] || { echo "demo: cache2's version 4 differs from the master's" >&2; exit 1; }

say "demo: done"
if [ $keep = 1 ]; then
  echo "left running: blockctl --socket $WORK/{master,cache1,cache2}/run/blockd.sock ...; pc01 at $url"
  echo "'scripts/demo.sh stop' removes everything"
fi
