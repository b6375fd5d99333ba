#!/usr/bin/env bash
# make_boot_guest.sh: builds a small bootable Debian guest from Debian packages
# only, for the boot trace of boot_storm_trace.sh (issue 14).
#
#   bench/make_boot_guest.sh OUTDIR
#
# OUTDIR gets (an OUTDIR that already holds all three is left as it is):
#   vmlinuz      Debian's kernel (linux-image-amd64's current package, unpacked)
#   initrd.gz    busybox (busybox-static) + the virtio and ext4 modules; its /init
#                loads them, mounts /dev/vda read-only and switch_roots to systemd
#   disk.raw     2 GiB ext4 (no partition table) holding a debootstrap'ed
#                bookworm (minbase + systemd-sysv, udev, kmod) and the kernel's
#                modules; a oneshot unit powers the guest off once
#                multi-user.target is reached, so the boot is a real systemd
#                boot (udev coldplug loading modules included) that ends by itself
# Needs root, the Debian mirror (debootstrap, apt-get download) and mke2fs -d.
# Installs debootstrap with apt-get when it is missing (nothing else is
# installed on the host: the kernel and busybox packages are only unpacked).
# BOOT_GUEST_ROOT=DIR: copy that debootstrap'ed root instead of making one.
set -euo pipefail

out=${1:?usage: make_boot_guest.sh OUTDIR}
if [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.gz" ] && [ -f "$out/disk.raw" ]; then
  echo "make_boot_guest: $out already holds a guest" >&2
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "make_boot_guest: needs root (debootstrap)" >&2; exit 2; }
mkdir -p "$out"
work=$(mktemp -d "$out/build.XXXXXX")
cleanup() {
  local rc=$?
  # debootstrap may leave its chroot's proc/sys mounted when it fails.
  local m
  for m in $(findmnt -rn -o TARGET | grep -F "$work/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
log() { echo "make_boot_guest: $*" >&2; }

command -v debootstrap >/dev/null 2>&1 || {
  log "installing debootstrap (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")

log "downloading Debian's kernel and busybox-static (apt-get download, unpacked, not installed)"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || { log "cannot find the package linux-image-amd64 depends on (apt-get update first)"; exit 1; }
(cd "$work" && apt-get download -q "$kpkg" busybox-static >/dev/null 2>&1) ||
  { log "apt-get download $kpkg busybox-static failed"; exit 1; }
mkdir "$work/k" "$work/bb"
dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
dpkg-deb -x "$work"/busybox-static_*.deb "$work/bb"
kver=$(ls "$work/k/lib/modules")

if [ -n "${BOOT_GUEST_ROOT:-}" ]; then
  # A root debootstrap'ed earlier with the same command (saves minutes when iterating).
  log "copying the root from BOOT_GUEST_ROOT=$BOOT_GUEST_ROOT"
  cp -a "$BOOT_GUEST_ROOT" "$work/root"
else
  log "debootstrap $suite (minbase + systemd-sysv, udev, kmod)"
  debootstrap --variant=minbase --include=systemd-sysv,udev,kmod "$suite" "$work/root" http://deb.debian.org/debian \
    >"$work/debootstrap.log" 2>&1 || { tail -5 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
fi
root=$work/root
cp -a "$work/k/lib/modules" "$root/lib/"
cp "$work/k/boot/vmlinuz-$kver" "$root/boot/"
chroot "$root" depmod "$kver"
echo bootguest >"$root/etc/hostname"
printf '/dev/vda / ext4 ro 0 1\n' >"$root/etc/fstab"
cat >"$root/etc/systemd/system/icbd-poweroff.service" <<'EOF'
[Unit]
Description=Power off once the boot is done (boot trace for boot_storm_trace.sh)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/systemctl --no-block poweroff
EOF
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../icbd-poweroff.service "$root/etc/systemd/system/multi-user.target.wants/icbd-poweroff.service"
rm -rf "$root/var/cache/apt/archives/"*.deb

log "disk.raw: 2 GiB ext4 from the root (mke2fs -d)"
mkfs.ext4 -q -F -L bootguest -d "$root" "$work/disk.raw" 2G

log "initrd.gz: busybox + virtio/ext4 modules"
ird=$work/initrd
mkdir -p "$ird/bin" "$ird/proc" "$ird/sys" "$ird/dev" "$ird/newroot" "$ird/m"
cp "$work/bb/bin/busybox" "$ird/bin/busybox"
moddir=$root/lib/modules/$kver
# Modules to load, dependencies first (modules.dep lists a module's dependencies
# after it, the deepest last).
order=$(python3 - "$moddir/modules.dep" virtio_pci virtio_blk ext4 crc32c_generic <<'PY'
import sys
dep = {}
for line in open(sys.argv[1]):
    mod, _, deps = line.partition(":")
    dep[mod.strip()] = deps.split()
by_name = {m.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_"): m for m in dep}
seen, out = set(), []
def visit(path):
    if path in seen: return
    seen.add(path)
    for d in dep.get(path, []): visit(d)
    out.append(path)
for name in sys.argv[2:]:
    if name in by_name: visit(by_name[name])
print("\n".join(out))
PY
)
: >"$ird/modules"
for m in $order; do
  cp "$moddir/$m" "$ird/m/"
  echo "${m##*/}" >>"$ird/modules"
done
cat >"$ird/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do
  case "$m" in *.xz) xz -dc "/m/$m" >/tmp.ko && insmod /tmp.ko; rm -f /tmp.ko ;; *) insmod "/m/$m" ;; esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 -o ro /dev/vda /newroot || { echo "initrd: cannot mount /dev/vda"; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /lib/systemd/systemd
EOF
chmod +x "$ird/init"
(cd "$ird" && find . | "$work/bb/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) >"$work/initrd.gz"

cp "$work/k/boot/vmlinuz-$kver" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$work/initrd.gz" "$out/initrd.gz"
mv "$work/disk.raw" "$out/disk.raw"
echo "$kpkg; debootstrap $suite minbase+systemd-sysv,udev,kmod; $(du -sh --apparent-size "$root" | cut -f1) root" >"$out/README"
log "done: $out ($(cat "$out/README"))"
