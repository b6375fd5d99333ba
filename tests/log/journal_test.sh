#!/usr/bin/env bash
# Daemons' logs: plain lines when stderr is not the journal (also when an
# inherited $JOURNAL_STREAM names another file), structured journal entries
# (IMAGE, VERSION, PEER, CLIENT, TARGET, LUN) when it is. The journal part runs
# a real systemd-journald of its own in a private mount namespace (tmpfs over
# /run and /var/log/journal: the machine's journal, if any, is not touched),
# and the probe under systemd-cat, which connects stdout and stderr to the
# journal, with JOURNAL_STREAM set as systemd sets it for a service.
# The module's part: a private tgtd with the build's bs_icbd.so creates a
# cached LUN; the lines libblockd logs for it name target and LUN in tgtd's
# log, and under the journal arrive as tgtd's entries with TARGET= and LUN=.
# Usage: journal_test.sh PROBE   (root: unshare -m, mounts; ICBD_BUILD for the module)
set -euo pipefail
probe=${1:?usage: journal_test.sh PROBE}
mods=${ICBD_BUILD:?ICBD_BUILD not set}/modules
work=$(mktemp -d /tmp/icbd-journal-test.XXXXXX)
tgtd_pid=
cleanup() {
  if [ -n "$tgtd_pid" ]; then kill "$tgtd_pid" 2>/dev/null || true; wait "$tgtd_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "journal_test: FAIL: $*" >&2; exit 1; }

# A private tgtd with the module (started by the caller, its stdout/stderr
# already where the caller wants them), one target with a cached LUN on
# $work/disk.img, then tgtd stopped. $1: the command prefix that runs tgtd.
tgtd_with_cached_lun() {
  local port ctl i
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  ctl=$(( port % 30000 + 1000 ))
  while [ -e "/var/run/tgtd/socket.$ctl" ]; do ctl=$((ctl + 1)); done
  rm -f "$work/disk.img" "$work/lun.cache"
  truncate -s 16M "$work/disk.img"
  "$@" env LD_PRELOAD="$mods/libicbd_tgt_preload.so" ICBD_TGT_MODULES="$mods/bs_icbd.so" \
    /usr/sbin/tgtd -f -C "$ctl" --iscsi "portal=127.0.0.1:$port" &
  tgtd_pid=$!
  for i in $(seq 100); do
    tgtadm -C "$ctl" --op show --mode sys >/dev/null 2>&1 && break
    kill -0 "$tgtd_pid" 2>/dev/null || return 1
    sleep 0.05
  done
  tgtadm -C "$ctl" --lld iscsi --op new --mode target --tid 1 -T iqn.2026-12.org.icbd:journal-test
  tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --bstype icbd \
    --backing-store "$work/disk.img" --bsopts "cache=$work/lun.cache;cache_size=1M;metrics_dir=off"
  tgtadm -C "$ctl" --lld iscsi --op delete --force --mode target --tid 1
  tgtadm -C "$ctl" --op delete --mode system >/dev/null 2>&1 || true
  for i in $(seq 100); do kill -0 "$tgtd_pid" 2>/dev/null || break; sleep 0.05; done
  wait "$tgtd_pid" 2>/dev/null || true
  rm -f "/var/run/tgtd/socket.$ctl" "/var/run/tgtd/socket.$ctl.lock"
  tgtd_pid=
}

# --- stderr is a file: plain lines, no journal
[ "$(env -u JOURNAL_STREAM "$probe" 2>"$work/err")" = plain ] || fail "probe did not log plainly with stderr on a file"
grep -qx "warning: probe: image 'win10' version 7 to replica 'cache01' for client 'pc01'" "$work/err" \
  || { cat "$work/err" >&2; fail "no plain warning line"; }
grep -qx "error: tgt 4 lun 3: probe: cache '/ssd/x.cache': writing back failed" "$work/err" \
  || { cat "$work/err" >&2; fail "the LUN's line does not name target and LUN"; }
grep -qx "probe: no fields" "$work/err" || { cat "$work/err" >&2; fail "no plain info line"; }
# --- an inherited JOURNAL_STREAM naming another file (a child of a service
# whose stderr was redirected) is not believed
touch "$work/other"
other=$(stat -c '%d:%i' "$work/other")
[ "$(JOURNAL_STREAM=$other "$probe" 2>"$work/err2")" = plain ] || fail "probe believed a JOURNAL_STREAM that names another file"
grep -q "^warning: probe: image" "$work/err2" || fail "no plain lines with a foreign JOURNAL_STREAM"
# the default sink (programs that install none, as icbd-replicate)
[ "$(env -u JOURNAL_STREAM "$probe" default 2>"$work/err3")" = plain ] || fail "default sink: not plain with stderr on a file"
grep -qx "icbd warning: probe: default sink" "$work/err3" || { cat "$work/err3" >&2; fail "default sink: no 'icbd warning:' line"; }
echo "journal_test: plain lines on a file, also with a foreign JOURNAL_STREAM"

# --- the module in tgtd, tgtd's log on a file: the LUN's lines name target and LUN
tgtd_with_cached_lun env -u JOURNAL_STREAM >"$work/tgtd.log" 2>&1 || { cat "$work/tgtd.log" >&2; fail "private tgtd with a cached LUN"; }
grep -q "bs_icbd: tgt 1 lun 1: cache '$work/lun.cache'" "$work/tgtd.log" \
  || { cat "$work/tgtd.log" >&2; fail "the module's cache line in tgtd's log does not name target and LUN"; }
echo "journal_test: the module's lines in tgtd's log name target and LUN"

# --- the real journal
journald=/lib/systemd/systemd-journald
if [ ! -x "$journald" ] || ! command -v systemd-cat >/dev/null || ! command -v journalctl >/dev/null; then
  echo "journal_test: SKIP: systemd-journald, systemd-cat or journalctl is not installed here" >&2
  [ "${ICBD_FORBID_SKIP:-0}" = 1 ] && fail "ICBD_FORBID_SKIP=1 and the journal part cannot run"
  exit 77
fi
# systemd-cat (252) connects stdout and stderr to journald's stream socket but
# does not set JOURNAL_STREAM; this sets it as systemd does for a service:
# the device and inode of that socket.
cat >"$work/as-service.sh" <<'SVC'
#!/bin/sh
JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$@"
SVC
chmod +x "$work/as-service.sh"
{ declare -p mods work; declare -f tgtd_with_cached_lun; } >"$work/tgtd_fn.sh"
cat >"$work/ns.sh" <<NS
set -euo pipefail
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal /run/log/journal
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
$journald &
jpid=\$!
trap '[ -n "\${tgtd_pid:-}" ] && kill \$tgtd_pid 2>/dev/null; kill \$jpid 2>/dev/null; wait \$jpid 2>/dev/null || true' EXIT
for _ in \$(seq 100); do [ -S /run/systemd/journal/stdout ] && [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
[ -S /run/systemd/journal/socket ] || { echo "journald did not start" >&2; exit 1; }
systemd-cat -t icbd-log-probe-stream "$work/as-service.sh" "$probe" || true
systemd-cat -t icbd-log-probe-stream "$work/as-service.sh" "$probe" default || true
. "$work/tgtd_fn.sh"
mkdir -p /run/tgtd
tgtd_with_cached_lun systemd-cat -t tgtd "$work/as-service.sh" || echo "tgtd under the journal failed" >&2
journalctl -D /run/log/journal --no-pager -o json SYSLOG_IDENTIFIER=tgtd >"$work/tgtd.json" 2>/dev/null || true
for _ in \$(seq 100); do
  journalctl -D /run/log/journal --no-pager -o json SYSLOG_IDENTIFIER=icbd-log-probe >"$work/entries.json" 2>/dev/null || true
  journalctl -D /run/log/journal --no-pager -o json SYSLOG_IDENTIFIER=$(basename "$probe") >"$work/default.json" 2>/dev/null || true
  [ "\$(wc -l <"$work/entries.json")" -ge 3 ] && [ "\$(wc -l <"$work/default.json")" -ge 1 ] && break
  sleep 0.05
done
journalctl -D /run/log/journal --no-pager -o json SYSLOG_IDENTIFIER=icbd-log-probe-stream >"$work/stream.json" 2>/dev/null || true
NS
unshare -m bash "$work/ns.sh" || fail "the private journald run failed"
python3 - "$work/tgtd.json" "$work/lun.cache" <<'PY' || exit 1
import json, sys
entries = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
want_start = "bs_icbd: tgt 1 lun 1: cache '" + sys.argv[2] + "'"
lines = [e for e in entries if str(e.get("MESSAGE", "")).startswith(want_start)]
if not lines:
    print("journal_test: FAIL: no entry of tgtd starting %r; tgtd's entries:" % want_start, file=sys.stderr)
    print("\n".join(str(e.get("MESSAGE")) for e in entries)[:3000], file=sys.stderr)
    sys.exit(1)
for e in lines:
    got = {k: e.get(k) for k in ("TARGET", "LUN", "_TRANSPORT")}
    if got != {"TARGET": "1", "LUN": "1", "_TRANSPORT": "journal"}:
        print("journal_test: FAIL: the module's entry %r has %r" % (e.get("MESSAGE"), got), file=sys.stderr)
        sys.exit(1)
print("journal_test: the module's lines reach the journal as tgtd's, with TARGET=1 LUN=1 (%d entries)" % len(lines))
PY
python3 - "$work/default.json" <<'PY' || exit 1
import json, sys
entries = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = [e for e in entries if e.get("MESSAGE") == "probe: default sink" and e.get("IMAGE") == "win10"
      and e.get("PRIORITY") == "4" and e.get("_TRANSPORT") == "journal"]
if not ok:
    print("journal_test: FAIL: the default sink's entry (identifier = program name, IMAGE, PRIORITY 4) is missing: %r" % entries, file=sys.stderr)
    sys.exit(1)
print("journal_test: the default sink (no sink installed) writes journal entries with fields too")
PY
python3 - "$work/entries.json" "$work/stream.json" <<'PY'
import json, sys
entries = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
stream = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
def fail(m):
    print("journal_test: FAIL: " + m, file=sys.stderr)
    print(json.dumps(entries + stream, indent=1)[:4000], file=sys.stderr)
    sys.exit(1)
by_msg = {e.get("MESSAGE"): e for e in entries}
w = by_msg.get("probe: image 'win10' version 7 to replica 'cache01' for client 'pc01'")
if not w: fail("the warning did not reach the journal as a native entry")
want = {"IMAGE": "win10", "VERSION": "7", "PEER": "cache01", "CLIENT": "pc01",
        "TARGET": "iqn.2026-12.org.icbd:pc01", "LUN": "1", "PRIORITY": "4", "_TRANSPORT": "journal"}
for k, v in want.items():
    if w.get(k) != v: fail(f"warning entry: {k}={w.get(k)!r}, expected {v!r}")
e = by_msg.get("tgt 4 lun 3: probe: cache '/ssd/x.cache': writing back failed")
if not e: fail("the LUN's error did not reach the journal naming target and LUN")
for k, v in {"TARGET": "tid 4", "LUN": "3", "PRIORITY": "3"}.items():
    if e.get(k) != v: fail(f"LUN entry: {k}={e.get(k)!r}, expected {v!r}")
i = by_msg.get("probe: no fields")
if not i or i.get("PRIORITY") != "6" or "IMAGE" in i: fail("the info entry is wrong or carries fields it was not given")
# Only "journal" went through the stdout stream: no log line was written to
# stderr (it would have come as a second copy without fields).
msgs = [s.get("MESSAGE") for s in stream]
if msgs != ["journal", "journal"]: fail(f"the stdout/stderr stream carried {msgs!r}, expected only the probes' 'journal' twice")
print("journal_test: 3 native journal entries with IMAGE, VERSION, PEER, CLIENT, TARGET, LUN and PRIORITY; nothing on the stream")
PY
