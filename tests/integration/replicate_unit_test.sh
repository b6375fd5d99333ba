#!/bin/bash
# The replica's systemd unit (systemd/icbd-replicate.service.in) does what it
# says: systemd-analyze accepts it, and its ExecStart, expanded from an
# EnvironmentFile the way systemd expands it, starts a replica that receives a
# push over mutual TLS and stops cleanly (exit 0) on the unit's KillSignal.
# This machine has no systemd as PID 1, so the test plays systemd's part.
#   replicate_unit_test.sh UNIT_FOR_TESTS   (configured to name the build tree's binary)
set -euo pipefail
unit=$1
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$(dirname "$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")")
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$bin/icbd-replicate" ] || fail "the unit names $bin/icbd-replicate, which is not built"

work=$(mktemp -d /tmp/icbd-unit-test.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# 1. systemd's own checker (it needs the binary to exist; the EnvironmentFile
# is only read at start).
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$unit" 2>"$work/verify.log" || { cat "$work/verify.log" >&2; fail "systemd-analyze verify"; }
    if grep -v "^$" "$work/verify.log" | grep -qi "$(basename "$unit")"; then
        cat "$work/verify.log" >&2
        fail "systemd-analyze verify warns about the unit"
    fi
else
    echo "SKIP part 1: systemd-analyze is not installed"  # CI has it (systemd is in every Debian 12)
fi

# 2. A configuration the way an administrator writes it.
"$src/scripts/make-certs.sh" "$work/tls" master cache01 >/dev/null
mkdir -p "$work/replica" "$work/master" "$work/v1"
. "$src/scripts/lib/tgtd.sh"  # free_tcp_port
port=$(free_tcp_port)
# The shipped example with this test's values: the unit and the example must
# agree on the keys (a key the unit needs and the example lacks fails below).
sed -e "s|^ICBD_ROOT=.*|ICBD_ROOT=$work/replica|" \
    -e "s|^ICBD_LISTEN=.*|ICBD_LISTEN=127.0.0.1:$port|" \
    -e "s|^ICBD_CA=.*|ICBD_CA=$work/tls/ca.crt|" \
    -e "s|^ICBD_CERT=.*|ICBD_CERT=$work/tls/cache01.crt|" \
    -e "s|^ICBD_KEY=.*|ICBD_KEY=$work/tls/cache01.key|" \
    -e "s|^ICBD_SERVE_ARGS=.*|ICBD_SERVE_ARGS=--allow-peer master --name cache01|" \
    "$src/systemd/icbd-replicate.conf.example" >"$work/replicate.conf"
grep -q "^ICBD_ROOT=$work/replica$" "$work/replicate.conf" || fail "the example configuration has no ICBD_ROOT"
grep -q '^EnvironmentFile=/etc/icbd/replicate.conf$' "$unit" || fail "the unit does not read /etc/icbd/replicate.conf"
kill_signal=$(sed -n 's/^KillSignal=//p' "$unit")
[ -n "$kill_signal" ] || kill_signal=SIGTERM

# ExecStart as systemd runs it: ${VAR} is one word, $VAR splits at whitespace.
mapfile -t argv < <(python3 - "$unit" "$work/replicate.conf" <<'PY'
import re, shlex, sys
unit, conf = sys.argv[1], sys.argv[2]
env = {}
for line in open(conf):
    line = line.strip()
    if line and not line.startswith('#'):
        k, _, v = line.partition('=')
        env[k] = v
cmd = [l.split('=', 1)[1] for l in open(unit).read().replace('\\\n', ' ').splitlines() if l.startswith('ExecStart=')]
assert len(cmd) == 1, "exactly one ExecStart"
out = []
for word in shlex.split(cmd[0]):
    m = re.fullmatch(r'\$([A-Za-z_][A-Za-z0-9_]*)', word)
    if m:
        out.extend(env.get(m.group(1), '').split())
        continue
    def sub(m):
        if m.group(1) not in env:
            sys.exit("the unit uses ${%s}, which the example configuration does not set" % m.group(1))
        return env[m.group(1)]
    out.append(re.sub(r'\$\{([A-Za-z_][A-Za-z0-9_]*)\}', sub, word))
print('\n'.join(out))
PY
)
[ "${#argv[@]}" -gt 3 ] || fail "could not expand ExecStart"
echo "ExecStart: ${argv[*]}"

"${argv[@]}" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/serve.log" && break; sleep 0.1; done
grep -q "listening on" "$work/serve.log" || { cat "$work/serve.log" >&2; fail "the replica did not start"; }

# 3. A master pushes a version to it.
head -c 3M /dev/urandom >"$work/v1/disk.raw"
echo "vmx" >"$work/v1/disk.vmx"
"$bin/icbd-replicate" commit --root "$work/master" --image win11 --version 1 --from "$work/v1" >/dev/null
"$bin/icbd-replicate" push --root "$work/master" --image win11 --version 1 --to "127.0.0.1:$port" \
    --ca "$work/tls/ca.crt" --cert "$work/tls/master.crt" --key "$work/tls/master.key" --name master \
    >"$work/push.log" 2>&1 || { cat "$work/push.log" "$work/serve.log" >&2; fail "push to the unit's replica failed"; }
cmp "$work/v1/disk.raw" "$work/replica/images/win11/1/disk.raw" || fail "the replica's copy differs"

# 4. Stopped the way systemd stops it: KillSignal, then exit 0 well within TimeoutStopSec.
kill "-${kill_signal#SIG}" "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "the replica did not stop within 10 s of $kill_signal"
rc=0; wait "$pid" || rc=$?
pid=""
[ "$rc" = 0 ] || { cat "$work/serve.log" >&2; fail "the replica exited $rc on $kill_signal (systemd would mark the unit failed)"; }
echo "PASS: unit verified, replica started from the EnvironmentFile, received version 1, stopped cleanly"
