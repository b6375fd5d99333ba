# lib_throttle.sh: a slow disk for the benches: the block layer's throttle
# (blk-throttle) on one device, as cgroup v1 blkio.throttle.* of the root
# cgroup (every process on the machine that uses the device) or cgroup v2
# io.max of a child cgroup that the throttled processes join. Sourced by
# slow_device_bench.sh, prefetch.sh and boot_storm_trace.sh.
#
# It works on the caller's variables: throttle (v1, v2 or empty), devno
# (MAJ:MIN of the device, set by the caller), cg2 (the v2 cgroup) and
# throttled (1 while a limit is set). Limits apply to reads and writes.

# throttle_detect: sets $throttle; fails when there is neither throttle.
throttle_detect() {
  throttle=""
  if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw io /sys/fs/cgroup/cgroup.controllers; then
    throttle=v2
  elif [ -f /sys/fs/cgroup/blkio/blkio.throttle.read_iops_device ]; then
    throttle=v1
  else
    return 1
  fi
}

# throttle_cgroup NAME: v2 only (nothing to do in v1): creates
# /sys/fs/cgroup/NAME.$$ with the io controller, in $cg2.
throttle_cgroup() {
  [ "$throttle" = v2 ] || return 0
  grep -qw io /sys/fs/cgroup/cgroup.subtree_control || echo +io >/sys/fs/cgroup/cgroup.subtree_control || return 1
  cg2=/sys/fs/cgroup/$1.$$
  mkdir "$cg2"
}

# throttle_join PID: moves a process, every thread and every io_uring/io-wq
# worker it starts later, into $cg2 (v2; in v1 everything is in the root's).
throttle_join() { [ "$throttle" != v2 ] || echo "$1" >"$cg2/cgroup.procs"; }

# throttle_run CMD...: runs CMD where the throttle applies to it.
throttle_run() {
  if [ "$throttle" = v2 ]; then sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg2" "$@"; else "$@"; fi
}

# throttle_set IOPS BPS: limits $devno's reads and writes; 0 0 lifts the limit.
throttle_set() {
  local i=$1 b=$2 f
  if [ "$throttle" = v1 ]; then
    for f in read_iops write_iops; do echo "$devno $i" >"/sys/fs/cgroup/blkio/blkio.throttle.${f}_device" || return 1; done
    for f in read_bps write_bps; do echo "$devno $b" >"/sys/fs/cgroup/blkio/blkio.throttle.${f}_device" || return 1; done
  elif [ "$i" = 0 ]; then
    echo "$devno riops=max wiops=max rbps=max wbps=max" >"$cg2/io.max" || return 1
  else
    echo "$devno riops=$i wiops=$i rbps=$b wbps=$b" >"$cg2/io.max" || return 1
  fi
  if [ "$i" = 0 ]; then throttled=0; else throttled=1; fi
}

# throttle_desc IOPS BPS: the limit in words, for the reports.
throttle_desc() {
  if [ "$throttle" = v1 ]; then
    echo "cgroup v1 root blkio.throttle.{read,write}_{iops,bps}_device = $devno $1 IOPS, $2 B/s"
  else
    echo "cgroup v2 io.max of $cg2: $devno riops=wiops=$1 rbps=wbps=$2"
  fi
}

# For cleanup traps: throttle_lift lifts a limit still set, throttle_remove
# removes $cg2 (after the processes in it ended). Each says what failed.
throttle_lift() {
  if [ "${throttled:-0}" = 1 ]; then throttle_set 0 0 || echo "could not reset the throttle of $devno" >&2; fi
}
throttle_remove() {
  if [ -n "${cg2:-}" ] && [ -d "$cg2" ]; then rmdir "$cg2" 2>/dev/null || echo "cannot remove $cg2" >&2; fi
}
