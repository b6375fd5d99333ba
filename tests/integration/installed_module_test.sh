#!/usr/bin/env bash
# The installed module is loaded by Debian's stock tgtd, with no preloading:
# `cmake --install` (into a DESTDIR) puts bs_icbd.so under
# usr/lib/tgt/backing-store; in a private mount namespace an overlay shows that
# tree at /usr/lib, so the stock tgtd finds the module exactly where its
# compiled-in BSDIR points, and the host's /usr/lib is never touched.
# Usage: installed_module_test.sh   (needs ICBD_BUILD; root)
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib/tgtd.sh"
: "${ICBD_BUILD:?ICBD_BUILD not set}"
work=$(mktemp -d /tmp/icbd-installed.XXXXXX)
TGTD_PID=
cleanup() {
  if [ -n "$TGTD_PID" ]; then tgtd_stop; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "installed_module_test: FAIL: $*" >&2; [ -f "$work/tgtd.log" ] && tail -20 "$work/tgtd.log" >&2; exit 1; }

DESTDIR=$work/root cmake --install "$ICBD_BUILD" >"$work/install.log"
mod=$work/root/usr/lib/tgt/backing-store/bs_icbd.so
[ -f "$mod" ] || fail "cmake --install did not put bs_icbd.so under usr/lib/tgt/backing-store"
[ -f "$work/root/etc/systemd/system/tgt.service.d/icbd.conf" ] || fail "the systemd drop-in was not installed"

mkdir -p "$work/upper/tgt" "$work/ovl-work"
cp -a "$work/root/usr/lib/tgt/backing-store" "$work/upper/tgt/"
TGTD_PORT=$(free_tcp_port)
TGTD_CTL=$(( TGTD_PORT % 30000 + 1000 ))
while [ -e "/var/run/tgtd/socket.$TGTD_CTL" ]; do TGTD_CTL=$((TGTD_CTL + 1)); done
# unshare and the shell exec into tgtd: the PID we record is tgtd's own. No
# LD_PRELOAD, no ICBD_TGT_MODULES.
env -u LD_PRELOAD -u ICBD_TGT_MODULES unshare -m --propagation private sh -c '
  mount -t overlay icbd-usr-lib -o lowerdir=/usr/lib,upperdir="$1",workdir="$2" /usr/lib || exit 97
  exec /usr/sbin/tgtd -f -C "$3" --iscsi "portal=127.0.0.1:$4"' sh \
  "$work/upper" "$work/ovl-work" "$TGTD_CTL" "$TGTD_PORT" >"$work/tgtd.log" 2>&1 &
TGTD_PID=$!
for _ in $(seq 100); do
  tgtadm -C "$TGTD_CTL" --op show --mode sys >/dev/null 2>&1 && break
  kill -0 "$TGTD_PID" 2>/dev/null || fail "tgtd did not start"
  sleep 0.05
done
tr '\0' '\n' <"/proc/$TGTD_PID/environ" | grep -q '^LD_PRELOAD=' && fail "tgtd runs with LD_PRELOAD"
grep -q "/usr/lib/tgt/backing-store/bs_icbd.so" "/proc/$TGTD_PID/maps" || fail "tgtd did not load /usr/lib/tgt/backing-store/bs_icbd.so"

truncate -s 64M "$work/disk.img"
iqn=iqn.2026-11.org.icbd:installed
tgtd_adm --op new --mode target --tid 1 -T "$iqn"
tgtd_adm --op new --mode logicalunit --tid 1 --lun 1 --bstype icbd -b "$work/disk.img" --bsopts "queue_depth=32" \
  || fail "tgtadm --bstype icbd refused by the stock tgtd"
tgtd_adm --op bind --mode target --tid 1 -I 127.0.0.1
tgtadm -C "$TGTD_CTL" --lld iscsi --op show --mode target | grep -q "Backing store type: icbd" || fail "LUN not of bstype icbd"

cli=$ICBD_BUILD/blockd/icbd-iscsi
url=iscsi://127.0.0.1:$TGTD_PORT/$iqn/1
head -c 1M /dev/urandom >"$work/data.bin"
"$cli" write "$url" -i "$work/data.bin" --lba 1000 --fua
"$cli" read "$url" --lba 1000 --blocks 2048 -o "$work/back.bin"
cmp -s "$work/data.bin" "$work/back.bin" || fail "data read back through the installed module differs"
cmp -s "$work/data.bin" <(dd if="$work/disk.img" bs=512 skip=1000 count=2048 status=none) \
  || fail "the backing file does not hold what was written"
echo "installed_module_test: stock tgtd (pid $TGTD_PID) loaded the installed bs_icbd.so from its own module directory; 1 MiB written (FUA) and read back"
