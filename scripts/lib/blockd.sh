# shellcheck shell=bash
# Shell helpers to run blockd nodes on loopback from a build tree (benches,
# demos). Source it; needs ICBD_BUILD (the CMake build dir). Layout of a node
# NAME under DIR: DIR/repo (the repository, a mount point when on a loop
# BTRFS), DIR/state (blockd.db), DIR/run (control socket), DIR/blockd.toml,
# DIR/blockd.log.
#   blockd_repo_btrfs IMG SIZE MNT   fresh BTRFS in the sparse file IMG (SIZE as
#                                    truncate takes it) on a loop device, mounted
#                                    at MNT; prints the loop device
#   blockd_master_toml DIR NAME TLSDIR PEER_PORT            master config on stdout
#   blockd_replica_toml DIR NAME TLSDIR PEER_PORT REPL_PORT MASTER_PORT TGT_CTL \
#                       CACHE_SIZE [IQN_PREFIX]             replica config on stdout
#                       (overlays in DIR/repo/clients, caches in DIR/repo/cache)
#   blockd_start DIR                 starts blockd on DIR/blockd.toml in its own
#                                    session, waits until it answers; sets BLOCKD_PID
#   blockd_ctl DIR ARGS...           blockctl against that node
#   blockd_stop PID                  SIGTERM, up to 10 s, then SIGKILL; waits
#   blockd_wait_for SECONDS WHAT CMD...  retries CMD every 0.2 s
# TLS files: scripts/make-certs.sh TLSDIR NAME... (ca.crt, NAME.crt, NAME.key).

blockd_repo_btrfs() {  # IMG SIZE MNT
  local img=$1 size=$2 mnt=$3 dev
  truncate -s "$size" "$img" || return 1
  dev=$(losetup --find --show "$img") || return 1
  if ! mkfs.btrfs -q "$dev" >/dev/null 2>&1 || ! mkdir -p "$mnt" || ! mount "$dev" "$mnt"; then
    losetup -d "$dev"
    return 1
  fi
  echo "$dev"
}

_blockd_common_toml() {  # DIR NAME ROLE TLSDIR PEER_PORT
  cat <<TOML
role = "$3"
name = "$2"
state_dir = "$1/state"
runtime_dir = "$1/run"
[repository]
root = "$1/repo"
[tls]
ca = "$4/ca.crt"
cert = "$4/$2.crt"
key = "$4/$2.key"
[peer]
listen = "127.0.0.1:$5"
[membership]
keepalive_interval = "2s"
keepalive_tries = 3
TOML
}

blockd_master_toml() {  # DIR NAME TLSDIR PEER_PORT
  _blockd_common_toml "$1" "$2" master "$3" "$4"
}

blockd_replica_toml() {  # DIR NAME TLSDIR PEER_PORT REPL_PORT MASTER_PORT TGT_CTL CACHE_SIZE [IQN_PREFIX]
  _blockd_common_toml "$1" "$2" replica "$3" "$4"
  cat <<TOML
[replication]
listen = "127.0.0.1:$5"
[master]
address = "127.0.0.1:$6"
name = "master"
[tgt]
control_port = $7
TOML
  [ -z "${9:-}" ] || echo "iqn_prefix = \"$9\""
  cat <<TOML
[clients]
overlay_dir = "$1/repo/clients"
cache_dir = "$1/repo/cache"
cache_size = "$8"
TOML
}

blockd_ctl() {  # DIR ARGS...
  local d=$1; shift
  "${ICBD_BUILD:?ICBD_BUILD not set}/blockd/daemon/blockctl" --socket "$d/run/blockd.sock" "$@"
}

blockd_wait_for() {  # SECONDS WHAT CMD...
  local t=$1 what=$2 _; shift 2
  for _ in $(seq $((t * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "blockd_wait_for: timed out after $t s waiting for: $what" >&2
  return 1
}

blockd_start() {  # DIR
  local d=$1
  mkdir -p "$d/state" "$d/run" || return 1
  setsid "${ICBD_BUILD:?ICBD_BUILD not set}/blockd/daemon/blockd" --config "$d/blockd.toml" >>"$d/blockd.log" 2>&1 &
  # shellcheck disable=SC2034  # for the caller
  BLOCKD_PID=$!
  if ! blockd_wait_for 20 "blockd on $d/blockd.toml" blockd_ctl "$d" status; then
    echo "blockd_start: last lines of $d/blockd.log:" >&2
    tail -5 "$d/blockd.log" >&2
    return 1
  fi
}

blockd_stop() {  # PID
  local p=$1 _
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then
    echo "blockd_stop: blockd $p did not exit in 10 s; killing it" >&2
    kill -9 "$p" 2>/dev/null
  fi
  wait "$p" 2>/dev/null || true
}
