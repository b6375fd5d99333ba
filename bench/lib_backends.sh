# Shared by the bench scripts. Sourcing only defines functions.
#   run_child OUT ERR CMD...  runs CMD with stdout and stderr to the files OUT and
#                            ERR (- keeps ours), in the background so that a
#                            signal reaches the calling shell while it runs (and
#                            its trap's message is not redirected with it); the
#                            PID is in $child meanwhile.
# After scripts/lib/tgtd.sh and tgtd_start:
#   export_backends PREFIX   one target per bstype in $bstypes, LUN 1 of block
#                            size $lun_block_size (default 4096) over $backing
#                            (null: no file), --bsopts
#                            $icbd_bsopts for icbd; "overlay" is icbd with a client
#                            overlay ($overlay_file) over $backing as its golden
#                            file; "icbd-dw" is icbd with direct=writes;
#                            fills the associative array
#                            url[bstype] (declare -A url first). Returns 1 with a
#                            message naming the step that failed.
#   reset_page_cache FILE MODE  writes FILE's dirty pages back, drops its cached
#                            pages (dd iflag=nocache count=0 is posix_fadvise
#                            DONTNEED on the whole file; nothing else is
#                            touched) and, for MODE warm, reads it again (laid
#                            out as readahead lays it out); cold leaves it out.
#                            Returns 1 if the read-back fails.
reset_page_cache() {
  sync "$1" 2>/dev/null || true
  run_child - - dd if="$1" iflag=nocache count=0 status=none || true
  [ "$2" = cold ] && return 0
  run_child - - dd if="$1" of=/dev/null bs=1M status=none
}

export_backends() {
  local prefix=$1 tid=0 b iqn
  local -a args
  for b in $bstypes; do
    tid=$((tid + 1))
    iqn="iqn.2024-01.org.icbd:$prefix-$b"
    tgtd_adm --op new --mode target --tid "$tid" -T "$iqn" || { echo "cannot create target $iqn" >&2; return 1; }
    local bstype=$b
    case "$b" in overlay|icbd-dw) bstype=icbd ;; esac
    args=(--op new --mode logicalunit --tid "$tid" --lun 1 --bstype "$bstype" --blocksize "${lun_block_size:-4096}")
    if [ "$b" = null ]; then args+=(--backing-store None); else args+=(--backing-store "$backing"); fi
    if [ "$b" = icbd ] && [ -n "${icbd_bsopts:-}" ]; then args+=(--bsopts "$icbd_bsopts"); fi
    if [ "$b" = overlay ]; then args+=(--bsopts "overlay=$overlay_file${icbd_bsopts:+;$icbd_bsopts}"); fi
    if [ "$b" = icbd-dw ]; then args+=(--bsopts "direct=writes${icbd_bsopts:+;$icbd_bsopts}"); fi
    tgtd_adm "${args[@]}" || { echo "cannot add a LUN of bstype $b (see $TGTD_LOG)" >&2; return 1; }
    tgtd_adm --op bind --mode target --tid "$tid" -I ALL || { echo "cannot bind target $iqn" >&2; return 1; }
    url[$b]="iscsi://127.0.0.1:$TGTD_PORT/$iqn/1"
  done
}

run_child() {
  local o=$1 e=$2
  shift 2
  (
    if [ "$o" != - ]; then exec >"$o"; fi
    if [ "$e" != - ]; then exec 2>"$e"; fi
    exec "$@"
  ) &
  child=$!
  wait "$child"
  local rc=$?
  child=""
  return $rc
}
