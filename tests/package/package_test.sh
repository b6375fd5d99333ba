#!/usr/bin/env bash
# The Debian package end to end on this (test) machine: build it with CPack,
# check its control data and contents, `apt-get install` it, start Debian's
# tgtd from the installed files (no preload: bs_icbd.so sits in tgtd's own
# module directory), create bstype icbd LUNs from the package's targets.conf
# example with tgt-admin, read them with the installed icbd-iscsi, check
# --version and man, then `dpkg -r` and `dpkg -P` leave nothing behind.
# Usage: package_test.sh   (needs ICBD_BUILD; root; installs and purges icbd-store)
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
. "$src/scripts/lib/tgtd.sh"
: "${ICBD_BUILD:?ICBD_BUILD not set}"
work=$(mktemp -d /tmp/icbd-package.XXXXXX)
TGTD_PID=
installed=0
cleanup() {
  if [ -n "$TGTD_PID" ]; then tgtd_stop; fi
  if [ "$installed" = 1 ]; then dpkg -P icbd-store >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "package_test: FAIL: $*" >&2; [ -f "$work/tgtd.log" ] && tail -20 "$work/tgtd.log" >&2; exit 1; }
step() { echo "package_test: $*"; }

[ "$(id -u)" -eq 0 ] || fail "needs root (apt-get install, dpkg -r)"
if dpkg-query -W -f='${Status}' icbd-store 2>/dev/null | grep -q 'ok installed\|config-files'; then
  fail "icbd-store is already installed here; this test installs and purges it, so it does not touch an existing installation (dpkg -P icbd-store first)"
fi

# --- build: only what the package holds (serialized with other builds of the tree)
step "building the package's inputs and the .deb"
# Build, package and take the version header under one hold of the lock:
# another build of the shared tree after a new commit rewrites the header, and
# the programs packaged would then print another commit than it names.
exec 9>/tmp/icbd-build.lock
flock -w 600 9 || fail "the build lock /tmp/icbd-build.lock stayed taken for 10 minutes"
if ! cmake --build "$ICBD_BUILD" --target icbd_package_inputs >"$work/build.log" 2>&1; then
  tail -30 "$work/build.log" >&2; fail "building the package's programs failed"
fi
if ! cpack -G DEB --config "$ICBD_BUILD/CPackConfig.cmake" -B "$work/pkg" >"$work/cpack.log" 2>&1; then
  cat "$work/cpack.log" >&2; fail "cpack -G DEB failed"
fi
cp "$ICBD_BUILD/generated/icbd/build_version.hpp" "$work/build_version.hpp"
exec 9>&-
debs=("$work"/pkg/icbd-store_*_amd64.deb)
[ "${#debs[@]}" -eq 1 ] && [ -f "${debs[0]}" ] || fail "expected one icbd-store_<version>_amd64.deb, found: ${debs[*]}"
deb=${debs[0]}
version=$(sed -n 's/^#define ICBD_PROJECT_VERSION "\(.*\)"$/\1/p' "$work/build_version.hpp")
commit=$(sed -n 's/^#define ICBD_GIT_COMMIT "\(.*\)"$/\1/p' "$work/build_version.hpp")
[ "$(basename "$deb")" = "icbd-store_${version}_amd64.deb" ] || fail "package file name $(basename "$deb"), expected icbd-store_${version}_amd64.deb"

# --- control data: tgt pinned exactly, shared libraries from dpkg-shlibdeps, conffiles
tgtver=$(dpkg-query -W -f='${Version}' tgt)
depends=$(dpkg-deb -f "$deb" Depends)
grep -qF "tgt (= $tgtver)" <<<"$depends" || fail "Depends does not pin tgt (= $tgtver): $depends"
for lib in libc6 liburing2 libiscsi7 libsystemd0; do
  grep -q "\b$lib\b" <<<"$depends" || fail "Depends lacks $lib (dpkg-shlibdeps): $depends"
done
conffiles=$(dpkg-deb -I "$deb" conffiles)
for f in /etc/icbd/blockd-master.toml.example /etc/icbd/blockd-replica.toml.example \
         /etc/icbd/icbd-replicate.conf.example /etc/tgt/conf.d/icbd-example.conf.example; do
  grep -qx "$f" <<<"$conffiles" || fail "$f is not a conffile"
done
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$work/contents"
for f in /usr/lib/tgt/backing-store/bs_icbd.so /usr/sbin/blockd /usr/sbin/blockctl /usr/bin/icbd-replicate \
         /usr/bin/icbd-iscsi /usr/bin/icbd-overlay /usr/bin/icbd-prefetch /lib/systemd/system/blockd.service \
         /lib/systemd/system/icbd-replicate.service /lib/systemd/system/tgt.service.d/icbd.conf \
         /usr/share/man/man8/blockd.8.gz /usr/share/man/man8/blockctl.8.gz /usr/share/man/man8/bs_icbd.8.gz \
         /usr/share/man/man1/icbd-replicate.1.gz /usr/share/man/man1/icbd-iscsi.1.gz /usr/share/man/man1/icbd-overlay.1.gz \
         /usr/share/man/man1/icbd-prefetch.1.gz \
         /usr/share/man/man5/blockd.toml.5.gz /usr/share/man/man5/icbd-replicate.conf.5.gz \
         /usr/share/doc/icbd-store/copyright /usr/share/doc/icbd-store/changelog.gz /usr/share/doc/icbd-store/README.md; do
  grep -qx "$f" "$work/contents" || fail "the package lacks $f"
done
grep -q '^/etc/systemd/' "$work/contents" && fail "the package installs into /etc/systemd (units belong in /lib/systemd/system)"
if command -v lintian >/dev/null; then
  lintian --fail-on error,warning "$deb" >"$work/lintian.log" 2>&1 || { cat "$work/lintian.log" >&2; fail "lintian reports errors or warnings"; }
  step "lintian: no errors, no warnings (docs/packaging.md explains the informational tags)"
fi

# --- install
step "apt-get install $deb"
installed=1
apt-get install -y --no-install-recommends "$deb" >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; fail "apt-get install failed"; }
dpkg-query -W -f='${Status}' icbd-store | grep -q 'install ok installed' || fail "icbd-store not installed after apt-get"
dpkg -L icbd-store >"$work/files"

for tool in /usr/sbin/blockd /usr/sbin/blockctl /usr/bin/icbd-replicate /usr/bin/icbd-iscsi /usr/bin/icbd-overlay \
            /usr/bin/icbd-prefetch; do
  out=$("$tool" --version) || fail "$tool --version exited non-zero"
  [ "$out" = "$(basename "$tool") $version (commit $commit)" ] \
    || fail "$tool --version printed '$out', expected '$(basename "$tool") $version (commit $commit)'"
done
[ "$commit" != unknown ] || fail "the build did not record a git commit"
[ "$(man -w blockctl)" = /usr/share/man/man8/blockctl.8.gz ] || fail "man -w blockctl: $(man -w blockctl 2>&1)"
[ "$(man -w 5 blockd.toml)" = /usr/share/man/man5/blockd.toml.5.gz ] || fail "man -w 5 blockd.toml: $(man -w 5 blockd.toml 2>&1)"
[ "$(man -w bs_icbd)" = /usr/share/man/man8/bs_icbd.8.gz ] || fail "man -w bs_icbd: $(man -w bs_icbd 2>&1)"
for page in blockd.8 blockctl.8 bs_icbd.8 icbd-replicate.1 icbd-iscsi.1 icbd-overlay.1 icbd-prefetch.1 \
            blockd.toml.5 icbd-replicate.conf.5; do
  f=/usr/share/man/man${page##*.}/$page.gz
  warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$f" 2>&1 >/dev/null)
  [ -z "$warnings" ] || fail "man -l $f warns: $warnings"
done
step "6 tools print '$version (commit $commit)'; man finds and renders every page without warnings"

# --- Debian's tgtd from the package's files, no preload
TGTD_PORT=$(free_tcp_port)
TGTD_CTL=$(( TGTD_PORT % 30000 + 1000 ))
while [ -e "/var/run/tgtd/socket.$TGTD_CTL" ]; do TGTD_CTL=$((TGTD_CTL + 1)); done
env -u LD_PRELOAD -u ICBD_TGT_MODULES setsid /usr/sbin/tgtd -f -C "$TGTD_CTL" --iscsi "portal=127.0.0.1:$TGTD_PORT" \
  >"$work/tgtd.log" 2>&1 &
TGTD_PID=$!
for _ in $(seq 100); do
  tgtadm -C "$TGTD_CTL" --op show --mode sys >/dev/null 2>&1 && break
  kill -0 "$TGTD_PID" 2>/dev/null || fail "tgtd did not start"
  sleep 0.05
done
grep -q /usr/lib/tgt/backing-store/bs_icbd.so "/proc/$TGTD_PID/maps" || fail "tgtd did not load the packaged bs_icbd.so"
tr '\0' '\n' <"/proc/$TGTD_PID/environ" | grep -q '^LD_PRELOAD=' && fail "tgtd runs with LD_PRELOAD"

# --- the package's targets.conf example, paths pointed at this test, applied by tgt-admin
head -c 16M /dev/urandom >"$work/golden.img"
mkdir -p "$work/tgt/conf.d"
echo "include $work/tgt/conf.d/*.conf" >"$work/tgt/targets.conf"
sed -e "s|/srv/icbd/images/win10/7/disk.raw|$work/golden.img|" -e "s|/var/lib/icbd/|$work/|g" \
    -e "s|/var/cache/icbd/|$work/|g" -e "s|cache_size=4G|cache_size=16M|" \
    -e "s|initiator-address 192.0.2.1[01]|initiator-address 127.0.0.1|" \
    /etc/tgt/conf.d/icbd-example.conf.example >"$work/tgt/conf.d/icbd.conf"
tgt-admin -C "$TGTD_CTL" -c "$work/tgt/targets.conf" -e >"$work/tgt-admin.log" 2>&1 \
  || { cat "$work/tgt-admin.log" >&2; fail "tgt-admin -e failed"; }
tgtadm -C "$TGTD_CTL" --lld iscsi --op show --mode target >"$work/show"
[ "$(grep -c 'Backing store type: icbd' "$work/show")" = 2 ] || { cat "$work/tgt-admin.log" "$work/show" >&2; fail "tgt-admin did not create the 2 icbd LUNs of the example"; }
# Both LUNs got all their bsopts (both single-quoted forms of the example): each
# has its overlay and its write-back cache file.
for f in desktop-01.ovl desktop-01.cache desktop-02.ovl desktop-02.cache; do
  [ -s "$work/$f" ] || fail "bsopts did not reach bs_icbd: $work/$f was not created"
done
for t in desktop-01 desktop-02; do
  /usr/bin/icbd-iscsi read "iscsi://127.0.0.1:$TGTD_PORT/iqn.2026-11.org.icbd:$t/1" -o "$work/$t.read"
  cmp -s "$work/golden.img" "$work/$t.read" || fail "LUN of $t (read with icbd-iscsi) differs from the golden file"
done
# A write lands in desktop-01's overlay/cache, never in the shared golden file.
head -c 1M /dev/urandom >"$work/data.bin"
cp "$work/golden.img" "$work/golden.before"
/usr/bin/icbd-iscsi write "iscsi://127.0.0.1:$TGTD_PORT/iqn.2026-11.org.icbd:desktop-01/1" -i "$work/data.bin" --lba 100 --fua
/usr/bin/icbd-iscsi read "iscsi://127.0.0.1:$TGTD_PORT/iqn.2026-11.org.icbd:desktop-01/1" --lba 100 --blocks 2048 -o "$work/back.bin"
cmp -s "$work/data.bin" "$work/back.bin" || fail "desktop-01 did not read back its write"
cmp -s "$work/golden.img" "$work/golden.before" || fail "a write to desktop-01 changed the golden file"

# --update ALL adds a target added to the configuration and keeps the others.
head -c 8M /dev/urandom >"$work/raw.img"
cat >"$work/tgt/conf.d/raw.conf" <<EOF
<target iqn.2026-11.org.icbd:raw>
    <backing-store $work/raw.img>
        bs-type icbd
        bsopts "'queue_depth=16;engine=auto'"
    </backing-store>
    initiator-address 127.0.0.1
</target>
EOF
tgt-admin -C "$TGTD_CTL" -c "$work/tgt/targets.conf" --update ALL >"$work/tgt-admin-update.log" 2>&1 \
  || { cat "$work/tgt-admin-update.log" >&2; fail "tgt-admin --update ALL failed"; }
[ "$(tgtadm -C "$TGTD_CTL" --lld iscsi --op show --mode target | grep -c 'Backing store type: icbd')" = 3 ] \
  || fail "after --update ALL there are not 3 icbd LUNs"
/usr/bin/icbd-iscsi read "iscsi://127.0.0.1:$TGTD_PORT/iqn.2026-11.org.icbd:raw/1" -o "$work/raw.read"
cmp -s "$work/raw.img" "$work/raw.read" || fail "the LUN added by --update ALL differs from its file"
step "tgtd (pid $TGTD_PID, no preload) served 3 bs-type icbd LUNs made by tgt-admin -e / --update ALL from the packaged example; icbd-iscsi read them back"
tgtd_stop

# --- removal: dpkg -r leaves only conffiles, dpkg -P leaves nothing of the package
dpkg -r icbd-store >"$work/remove.log" 2>&1 || { cat "$work/remove.log" >&2; fail "dpkg -r failed"; }
check_left() {  # $1: what may remain (conffiles or nothing)
  local p
  while IFS= read -r p; do
    [ -e "$p" ] || continue
    if [ -d "$p" ]; then
      # dpkg keeps a directory that still holds other packages' files (or, after
      # -r, our conffiles); an empty one is left only if another package owns it.
      [ -n "$(ls -A "$p")" ] && continue
      dpkg -S "$p" >/dev/null 2>&1 && continue
      fail "empty directory $p left behind after dpkg ${2}"
    fi
    [ "$1" = conffiles ] && grep -qx "$p" <<<"$conffiles" && continue
    fail "$p left behind after dpkg ${2}"
  done <"$work/files"
}
check_left conffiles -r
dpkg -P icbd-store >"$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail "dpkg -P failed"; }
installed=0
check_left nothing -P
dpkg-query -W -f='${Status}' icbd-store 2>/dev/null | grep -q 'ok installed\|config-files' && fail "icbd-store still known to dpkg after -P"
step "dpkg -r left only the conffiles, dpkg -P removed all $(wc -l <"$work/files") paths of the package"
