#!/usr/bin/env bash
# Fails unless the tgt source tree SRC is the Debian version of the installed tgt:
# bs_icbd.so is only ABI-compatible with the tgtd its headers came from.
set -euo pipefail
src=${1:?usage: check-tgt-version.sh TGT_SOURCE_DIR}
installed=$(dpkg-query -W -f='${Version}' tgt 2>/dev/null || echo "not installed")
headers=$(sed -n '1s/^tgt (\([^)]*\)).*/\1/p' "$src/debian/changelog" 2>/dev/null || true)
if [ "$installed" != "$headers" ]; then
  echo "bs_icbd: tgt headers in $src are version '${headers:-unknown}' but the installed tgtd is '$installed'." >&2
  echo "bs_icbd: the module must be built against the exact tgtd it is loaded into; remove the build directory and reconfigure." >&2
  exit 1
fi
echo "$headers"
