#!/usr/bin/env bash
# Installs every build, test and benchmark dependency of icbd-store from Debian's
# own archive, and enables deb-src (for `apt-get source tgt`) if the machine has none.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (apt-get)" >&2
  exit 1
fi

# tgt's internal headers come from its Debian source package; that needs a deb-src
# entry. We add one mirroring the existing deb entries rather than guessing a mirror.
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && \
   ! grep -qs '^deb-src' /etc/apt/sources.list; then
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    echo "install-deps: enabling deb-src in /etc/apt/sources.list.d/debian.sources (needed for 'apt-get source tgt')"
    sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
  elif [ -f /etc/apt/sources.list ]; then
    echo "install-deps: adding deb-src lines to /etc/apt/sources.list (needed for 'apt-get source tgt')"
    grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >> /etc/apt/sources.list
  fi
fi

PKGS=(
  build-essential cmake ninja-build pkg-config dpkg-dev
  clang libclang-rt-14-dev
  liburing-dev libaio-dev libssl-dev liblz4-dev libzstd-dev libxxhash-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  btrfs-progs libbtrfsutil-dev
  tgt libiscsi-dev libiscsi-bin lintian
  libsqlite3-dev libtomlplusplus-dev nlohmann-json3-dev libcli11-dev libsystemd-dev libcpp-httplib-dev prometheus
  e2fsprogs util-linux procps rsync zstd openssl python3 iproute2
  pandoc  # the man pages: docs/man/*.md -> roff at build time
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

stamp=/var/lib/apt/periodic/icbd-update-stamp
if [ ${#missing[@]} -gt 0 ] || [ ! -d /var/lib/apt/lists ] || \
   ! ls /var/lib/apt/lists/*Sources* >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  mkdir -p "$(dirname "$stamp")"; touch "$stamp"
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  # tgt's postinst starts the system tgtd; our tests run their own instances on
  # their own ports, so the service is stopped and disabled below.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The packaged tgt.service would listen on 0.0.0.0:3260 and grab control port 0;
# our tooling runs private tgtd instances, so keep the system one out of the way.
if command -v systemctl >/dev/null 2>&1 && systemctl list-unit-files tgt.service >/dev/null 2>&1; then
  systemctl disable --now tgt.service >/dev/null 2>&1 || true
fi
echo "install-deps: ok"
