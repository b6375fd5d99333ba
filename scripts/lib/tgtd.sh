# Shell helpers to run a private tgtd with the uninstalled bs_icbd module.
# Source it; needs ICBD_BUILD (the CMake build dir holding modules/).
#   tgtd_start            starts tgtd on a free control port and 127.0.0.1 portal;
#                         sets TGTD_PID TGTD_CTL TGTD_PORT TGTD_LOG
#   tgtd_adm ARGS...      tgtadm against that instance (--lld iscsi added)
#   tgtd_stop             deletes every target, stops tgtd, waits for its PID
# Several instances can run side by side; each picks its own ports.

free_tcp_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

tgtd_start() {
  local mods="${ICBD_BUILD:?ICBD_BUILD not set}/modules"
  [ -f "$mods/bs_icbd.so" ] || { echo "tgtd_start: $mods/bs_icbd.so not built" >&2; return 1; }
  TGTD_PORT=$(free_tcp_port)
  # Control ports are unix sockets /var/run/tgtd/socket.N with N a C short;
  # derive N from the (unique, free) TCP port and skip any N in use.
  TGTD_CTL=$(( TGTD_PORT % 30000 + 1000 ))
  while [ -e "/var/run/tgtd/socket.$TGTD_CTL" ]; do TGTD_CTL=$((TGTD_CTL + 1)); done
  TGTD_LOG=${TGTD_LOG:-$(mktemp /tmp/icbd-tgtd.XXXXXX.log)}
  setsid env LD_PRELOAD="$mods/libicbd_tgt_preload.so" ICBD_TGT_MODULES="$mods/bs_icbd.so" \
    /usr/sbin/tgtd -f -C "$TGTD_CTL" --iscsi "portal=127.0.0.1:$TGTD_PORT" >"$TGTD_LOG" 2>&1 &
  TGTD_PID=$!
  local i
  for i in $(seq 100); do
    if tgtadm -C "$TGTD_CTL" --op show --mode sys >/dev/null 2>&1; then return 0; fi
    kill -0 "$TGTD_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "tgtd_start: tgtd did not come up; log $TGTD_LOG:" >&2
  cat "$TGTD_LOG" >&2
  return 1
}

tgtd_adm() { tgtadm -C "$TGTD_CTL" --lld iscsi "$@"; }

tgtd_stop() {
  [ -n "${TGTD_PID:-}" ] || return 0
  local tid
  for tid in $(tgtadm -C "$TGTD_CTL" --op show --mode target 2>/dev/null | sed -n 's/^Target \([0-9]*\):.*/\1/p'); do
    tgtadm -C "$TGTD_CTL" --lld iscsi --op delete --force --mode target --tid "$tid" >/dev/null 2>&1 || true
  done
  tgtadm -C "$TGTD_CTL" --op delete --mode system >/dev/null 2>&1 || true
  local i
  for i in $(seq 100); do
    kill -0 "$TGTD_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$TGTD_PID" 2>/dev/null; then
    echo "tgtd_stop: tgtd $TGTD_PID did not exit; killing it" >&2
    kill -9 "$TGTD_PID" 2>/dev/null || true
  fi
  wait "$TGTD_PID" 2>/dev/null || true
  rm -f "/var/run/tgtd/socket.$TGTD_CTL" "/var/run/tgtd/socket.$TGTD_CTL.lock"
  TGTD_PID=
}
