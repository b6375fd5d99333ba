#!/usr/bin/env bash
# Fetches the Debian source package of the *installed* tgt into DEST, so bs_icbd
# is compiled against the exact struct layouts of the tgtd that will load it.
# Usage: fetch-tgt-source.sh DEST   (prints the source directory on stdout)
set -euo pipefail
dest=${1:?usage: fetch-tgt-source.sh DEST}

ver=$(dpkg-query -W -f='${Version}' tgt 2>/dev/null || true)
if [ -z "$ver" ]; then
  echo "fetch-tgt-source: package 'tgt' is not installed; run scripts/install-deps.sh" >&2
  exit 1
fi
upstream=${ver#*:}; upstream=${upstream%%-*}
srcdir="$dest/tgt-$upstream"
stamp="$dest/.fetched-$ver"
if [ -f "$stamp" ] && [ -f "$srcdir/usr/tgtd.h" ]; then
  echo "$srcdir"; exit 0
fi
rm -rf "$dest"; mkdir -p "$dest"
# apt-get source drops privileges to _apt where it can; a build dir owned by root
# makes that fail harmlessly with a warning, so silence only that line.
if ! (cd "$dest" && apt-get source -q "tgt=$ver" >"$dest/apt-source.log" 2>&1); then
  echo "fetch-tgt-source: 'apt-get source tgt=$ver' failed (is a deb-src entry enabled? scripts/install-deps.sh adds one):" >&2
  cat "$dest/apt-source.log" >&2
  exit 1
fi
if [ ! -f "$srcdir/usr/tgtd.h" ]; then
  echo "fetch-tgt-source: expected $srcdir/usr/tgtd.h after apt-get source" >&2
  exit 1
fi
touch "$stamp"
echo "$srcdir"
