# shellcheck shell=bash
# many_clients_blockd.sh: the --via-blockd mode of bench/many_clients.sh (sourced
# by it, not run alone): N desktops made by `blockctl client add` on a replica
# blockd, as the product makes them. Uses many_clients.sh's options, cleanup
# arrays and measuring functions (rss_kib, nfds, threads, tgtd_cpu_ticks, storm).

# shellcheck disable=SC2154  # variables set by many_clients.sh
jget() {  # jget PYTHON-EXPR < JSON: prints the expression over j (the parsed input)
  python3 -c 'import json, sys; j = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}
kv() { printf '%s=%s\n' "$1" "$2" >>"$work/vars"; }  # a figure for the report
cpu_s() { awk -v d="$1" -v hz="$clk_tck" 'BEGIN{printf "%.2f", d / hz}'; }

# Starts blockctl for the clients FIRST..LAST (step STEP) one after the other,
# each timed (seconds, one a line, into FILE). Dies on the first failure.
clients_op() {  # add|remove FIRST LAST STEP FILE
  local op=$1 i n a b err
  : >"$5"
  for ((i = $2; i <= $3; i += $4)); do
    n=$(name_of "$i")
    a=$EPOCHREALTIME
    if [ "$op" = add ]; then
      err=$(blockd_ctl "$R" client add "$n" --image img --initiator "iqn.2024-01.org.icbd.client:$n" 2>&1 >/dev/null)
    else
      err=$(blockd_ctl "$R" client remove "$n" 2>&1 >/dev/null)
    fi || die "blockctl client $op $n failed: $err"
    b=$EPOCHREALTIME
    elapsed "$a" "$b" >>"$5"; echo >>"$5"
    if [ $(((i - $2) / $4 % 100)) = 99 ]; then log "client $op: $n done"; fi
  done
}
# The same from K callers at once (client i goes to caller i mod K); sets
# par_wall to the wall time.
clients_op_parallel() {  # add|remove K FILE-PREFIX
  local a w ps=()
  a=$EPOCHREALTIME
  for ((w = 1; w <= $2; w++)); do
    (clients_op "$1" "$w" "$clients" "$2" "$3.$w") &
    ps+=($!)
  done
  local rc=0
  for w in "${ps[@]}"; do wait "$w" || rc=1; done
  [ $rc = 0 ] || die "a parallel client $1 failed (see above)"
  par_wall=$(elapsed "$a" "$EPOCHREALTIME")
}
# Clients (of N) whose LUN serves version V, from `client list --json`.
on_version() {  # V
  blockd_ctl "$R" --json client list | jget "sum(1 for c in j if c['version'] == $1 and c['exported'])"
}
newest_on_replica() {  # the replica's newest version of img, as the master sees it
  blockd_ctl "$M" --json node list | jget "next((n['images'].get('img', {}).get('newest', 0) for n in j if n['name'] == 'replica'), 0)"
}
has_version() { [ "$(newest_on_replica)" = "$1" ]; }
proc_row() {  # PID -> "RSS_KiB FDS THREADS"
  echo "$(rss_kib "$1") $(nfds "$1") $(threads "$1")"
}

via_blockd_main() {
  local i a b
  command -v strace >/dev/null || die "'strace' not found (apt-get install strace)"
  for f in blockd blockctl; do [ -x "$build/blockd/daemon/$f" ] || die "$build/blockd/daemon/$f not built"; done
  export ICBD_BUILD=$build
  # shellcheck source=../scripts/lib/tgtd.sh
  source "$src/scripts/lib/tgtd.sh"
  # shellcheck source=../scripts/lib/blockd.sh
  source "$src/scripts/lib/blockd.sh"
  local cache_mib; cache_mib=$(mib_of "$cache_size")
  # Repositories, state (SQLite) and the import's source on --dir: a real disk,
  # so SQLite's fsyncs cost what they cost on a server.
  bwork=$(mktemp -d "$dir/icbd-manyclients-blockd.XXXXXX") || die "cannot create a directory in $dir"
  M=$bwork/master R=$bwork/replica
  "$src/scripts/make-certs.sh" "$bwork/tls" master replica >/dev/null || die "make-certs.sh failed"
  local dev
  dev=$(blockd_repo_btrfs "$bwork/master.img" "$((2 * image_mib + 1024))M" "$M/repo") || die "cannot make the master's BTRFS"
  b_loops+=("$dev"); b_mounts+=("$M/repo")
  # Sparse: blockd refuses a client unless every cache could fill (N + the
  # 10 traced ones); the file only grows by what is written.
  dev=$(blockd_repo_btrfs "$bwork/replica.img" "$((3 * image_mib + (clients + 12) * cache_mib + 2048))M" "$R/repo") ||
    die "cannot make the replica's BTRFS"
  b_loops+=("$dev"); b_mounts+=("$R/repo")

  # shellcheck disable=SC2034  # read by tgtd_start
  TGTD_LOG="$work/tgtd.log"
  tgtd_start || die "tgtd did not start"
  local master_peer; master_peer=$(free_tcp_port)
  blockd_master_toml "$M" master "$bwork/tls" "$master_peer" >"$M/blockd.toml"
  blockd_replica_toml "$R" replica "$bwork/tls" "$(free_tcp_port)" "$(free_tcp_port)" "$master_peer" "$TGTD_CTL" \
    "$cache_size" iqn.2024-01.org.icbd >"$R/blockd.toml"
  blockd_start "$M" || die "the master blockd did not start"
  blockd_pids+=("$BLOCKD_PID")
  blockd_start "$R" || die "the replica blockd did not start"
  blockd_pids+=("$BLOCKD_PID"); replica_pid=$BLOCKD_PID
  blockd_wait_for 30 "the replica registered and alive" sh -c \
    "'$build/blockd/daemon/blockctl' --socket '$M/run/blockd.sock' --json node list | grep -q '\"alive\"'" ||
    die "the replica did not register with the master"
  log "master blockd ${blockd_pids[0]}, replica blockd $replica_pid, tgtd $TGTD_PID (portal 127.0.0.1:$TGTD_PORT)"

  # --- the image: imported on the master, pushed to the replica -----------------
  log "filling the image to import ($image_size of random data)"
  dd if=/dev/urandom of="$bwork/disk.raw" bs=1M count="$image_mib" iflag=fullblock conv=fsync status=none ||
    die "cannot write $bwork/disk.raw"
  a=$EPOCHREALTIME
  blockd_ctl "$M" image import img --from "$bwork/disk.raw" >/dev/null || die "image import failed"
  b=$EPOCHREALTIME
  kv import_s "$(elapsed "$a" "$b")"
  rm -f "$bwork/disk.raw"
  blockd_wait_for 300 "version 1 on the replica" has_version 1 || die "version 1 did not reach the replica"
  kv push1_s "$(elapsed "$b" "$EPOCHREALTIME")"
  blockd_wait_for 30 "the replica knows production = 1" sh -c \
    "'$build/blockd/daemon/blockctl' --socket '$R/run/blockd.sock' --json image list | grep -q '\"production\": *1'" ||
    die "the replica did not learn the catalog"
  golden="$R/repo/images/img/1/disk.raw"

  # --- before: idle with no client -----------------------------------------------
  kv blockd_before "$(proc_row "$replica_pid")"; kv tgtd_before "$(proc_row "$TGTD_PID")"
  local b0 t0c
  b0=$(tgtd_cpu_ticks "$replica_pid"); t0c=$(tgtd_cpu_ticks)
  sleep 10
  kv idle0 "$(cpu_s $(( $(tgtd_cpu_ticks "$replica_pid") - b0 ))) $(cpu_s $(( $(tgtd_cpu_ticks) - t0c )))"

  # --- N desktops, one blockctl after the other ----------------------------------------
  log "client add: $clients desktops, one after the other"
  b0=$(tgtd_cpu_ticks "$replica_pid"); t0c=$(tgtd_cpu_ticks)
  a=$EPOCHREALTIME
  clients_op add 1 "$clients" 1 "$work/add_s.txt"
  kv add_total_s "$(elapsed "$a" "$EPOCHREALTIME")"
  kv add_cpu "$(cpu_s $(( $(tgtd_cpu_ticks "$replica_pid") - b0 ))) $(cpu_s $(( $(tgtd_cpu_ticks) - t0c )))"
  kv blockd_after "$(proc_row "$replica_pid")"; kv tgtd_after "$(proc_row "$TGTD_PID")"
  kv db_kib "$(du -sk "$R/state" | cut -f1)"
  log "$clients clients added; blockd $(proc_row "$replica_pid"), tgtd $(proc_row "$TGTD_PID") (RSS KiB, fds, threads)"

  # --- where an add's time goes: 10 more adds and removes under strace ------------------
  log "10 more adds and removes under strace"
  strace -f -p "$replica_pid" -ttt -T -y -q -e trace=execve,fsync,fdatasync -o "$work/strace.txt" 2>"$work/strace.err" &
  local strace_pid=$!
  sleep 1
  local ta tb tc
  ta=$EPOCHREALTIME
  clients_op add $((clients + 1)) $((clients + 10)) 1 "$work/add_traced_s.txt"
  tb=$EPOCHREALTIME
  clients_op remove $((clients + 1)) $((clients + 10)) 1 "$work/remove_traced_s.txt"
  tc=$EPOCHREALTIME
  kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null
  kv traced "$ta $tb $tc"

  # --- client list, one tgtadm show, idle CPU with N clients -----------------------------
  : >"$work/list_s.txt"
  for i in 1 2 3 4 5; do
    a=$EPOCHREALTIME
    blockd_ctl "$R" --json client list >"$work/list.json" || die "client list failed"
    elapsed "$a" "$EPOCHREALTIME" >>"$work/list_s.txt"; echo >>"$work/list_s.txt"
  done
  kv list_bytes "$(stat -c %s "$work/list.json")"
  kv list_ok "$(jget "sum(1 for c in j if c['exported'] and c['version'] == 1)" <"$work/list.json")"
  : >"$work/show_s.txt"
  for i in 1 2 3 4 5; do
    a=$EPOCHREALTIME
    tgtd_adm --op show --mode target >"$work/show.txt"
    elapsed "$a" "$EPOCHREALTIME" >>"$work/show_s.txt"; echo >>"$work/show_s.txt"
  done
  kv show_bytes "$(stat -c %s "$work/show.txt")"
  log "idle for $idle_s s with $clients clients"
  b0=$(tgtd_cpu_ticks "$replica_pid"); t0c=$(tgtd_cpu_ticks)
  sleep "$idle_s"
  kv idleN "$(cpu_s $(( $(tgtd_cpu_ticks "$replica_pid") - b0 ))) $(cpu_s $(( $(tgtd_cpu_ticks) - t0c )))"
  # One reconcile pass runs `tgtadm --op show` at its start and again before
  # it looks for orphans: 10 s of blockd's execs, idle, time the pairs.
  strace -f -p "$replica_pid" -ttt -q -e trace=execve -o "$work/strace-idle.txt" 2>>"$work/strace.err" &
  strace_pid=$!
  sleep 10
  kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null
  # blockctl's own cost: starting it (--version), and a round trip (status,
  # which runs one `tgtadm --op show --mode sys` in blockd).
  : >"$work/status_s.txt"; : >"$work/version_s.txt"
  for i in 1 2 3 4 5; do
    a=$EPOCHREALTIME
    blockd_ctl "$R" status >/dev/null || die "blockctl status failed"
    elapsed "$a" "$EPOCHREALTIME" >>"$work/status_s.txt"; echo >>"$work/status_s.txt"
    a=$EPOCHREALTIME
    blockd_ctl "$R" --version >/dev/null || die "blockctl --version failed"
    elapsed "$a" "$EPOCHREALTIME" >>"$work/version_s.txt"; echo >>"$work/version_s.txt"
  done

  # --- the storms --------------------------------------------------------------------------
  created=$clients
  failures=0
  : >"$work/storms.tsv"
  local s name bs pattern
  for s in "rand4k 4k random" "seq64k 64k seq"; do
    read -r name bs pattern <<<"$s"
    cat "$golden" >/dev/null
    log "storm $name: $created desktops, $bs $pattern reads over the first $boot, $seconds s"
    storm "$name" "$bs" "$pattern"
    failures=$((failures + storm_failed))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$storm_failed" "$storm_fds" "$storm_thr" "$storm_rss" "$storm_wall" \
      "$storm_cpu" "$storm_bcpu" >>"$work/storms.tsv"
  done
  kv blockd_after_storm "$(proc_row "$replica_pid")"

  # --- version 2: commit, push, promote; every session-less desktop moves ----------------------
  log "version 2: checkout, 16 MiB changed, commit, push, promote"
  local co
  co=$(blockd_ctl "$M" --json image checkout img | jget "j['path']") || die "image checkout failed"
  dd if=/dev/urandom of="$co/disk.raw" bs=1M count=16 seek=$((boot_mib / 2)) conv=notrunc,fsync status=none ||
    die "cannot change the checkout"
  a=$EPOCHREALTIME
  blockd_ctl "$M" image commit img --message "v2" >/dev/null || die "image commit failed"
  b=$EPOCHREALTIME
  kv commit_s "$(elapsed "$a" "$b")"
  blockd_wait_for 300 "version 2 on the replica" has_version 2 || die "version 2 did not reach the replica"
  kv push2_s "$(elapsed "$b" "$EPOCHREALTIME")"
  kv before_promote_on2 "$(on_version 2)"
  b0=$(tgtd_cpu_ticks "$replica_pid"); t0c=$(tgtd_cpu_ticks)
  a=$EPOCHREALTIME
  blockd_ctl "$M" image promote img 2 >/dev/null || die "image promote failed"
  : >"$work/move.tsv"
  local moved=0 deadline=$((SECONDS + 900))
  while [ "$SECONDS" -lt "$deadline" ]; do
    moved=$(on_version 2) || moved=0
    printf '%s\t%s\n' "$(elapsed "$a" "$EPOCHREALTIME")" "$moved" >>"$work/move.tsv"
    [ "$moved" -lt "$clients" ] || break
    sleep 1
  done
  kv move "$(elapsed "$a" "$EPOCHREALTIME") $moved $(cpu_s $(( $(tgtd_cpu_ticks "$replica_pid") - b0 ))) $(cpu_s $(( $(tgtd_cpu_ticks) - t0c )))"
  [ "$moved" -eq "$clients" ] || log "only $moved of $clients clients on version 2 after 900 s"
  kv moved_logged "$(grep -c "now on image 'img' version 2" "$R/blockd.log")"

  # --- removal of all N, then all N again from K callers at once ------------------------------
  log "client remove: $clients desktops, one after the other"
  b0=$(tgtd_cpu_ticks "$replica_pid"); t0c=$(tgtd_cpu_ticks)
  a=$EPOCHREALTIME
  clients_op remove 1 "$clients" 1 "$work/remove_s.txt"
  kv remove_total_s "$(elapsed "$a" "$EPOCHREALTIME")"
  kv remove_cpu "$(cpu_s $(( $(tgtd_cpu_ticks "$replica_pid") - b0 ))) $(cpu_s $(( $(tgtd_cpu_ticks) - t0c )))"
  kv blockd_removed "$(proc_row "$replica_pid")"; kv tgtd_removed "$(proc_row "$TGTD_PID")"
  if [ "$parallel_adds" -gt 0 ]; then
    log "client add and remove: $clients desktops from $parallel_adds callers at once"
    clients_op_parallel add "$parallel_adds" "$work/padd_s.txt"; kv padd_s "$par_wall"
    clients_op_parallel remove "$parallel_adds" "$work/premove_s.txt"; kv premove_s "$par_wall"
  fi
  kv uptime "$(uptime | sed 's/^ *//')"
  kv blockd_warnings "$(grep -ci 'warning\|error' "$R/blockd.log")"
  cp "$R/blockd.log" "$work/replica-blockd.log"; cp "$M/blockd.log" "$work/master-blockd.log"

  via_blockd_report >"$work/report.md" || die "the report failed"
  cat "$work/report.md"
  [ -z "$out" ] || cp "$work/report.md" "$out"
  if [ "$failures" -gt 0 ]; then
    log "$failures reader(s) failed; see the messages above"
    return 1
  fi
  return 0
}

via_blockd_report() {
  HOSTLINE="$(hostname), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r); tgt $(dpkg-query -W -f='${Version}' tgt 2>/dev/null)" \
  CMDLINE="bench/many_clients.sh${orig_args:+ $orig_args}" \
  python3 - "$work" "$clients" "$seconds" "$boot" "$image_size" "$cache_size" "$idle_s" "$parallel_adds" "$clk_tck" <<'PY'
import json, os, re, statistics, sys
work, n, seconds, boot, image_size, cache_size, idle_s, par, hz = sys.argv[1:]
n, seconds, idle_s, par = int(n), float(seconds), int(idle_s), int(par)
v = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(work, "vars")))
def nums(f):
    p = os.path.join(work, f)
    return sorted(float(x) for x in open(p).read().split()) if os.path.exists(p) else []
def q(a, p): return a[min(len(a) - 1, int(p / 100 * (len(a) - 1) + 0.5))] if a else 0
def ms(x): return f"{x * 1000:.0f}"
def row(k): return [int(x) for x in v[k].split()]
mib = 1048576
add = nums("add_s.txt"); rem = nums("remove_s.txt")
# per-add time along the run: first 10 % vs last 10 % of adds, in order
add_in_order = [float(x) for x in open(os.path.join(work, "add_s.txt")).read().split()]
k = max(1, n // 10)
print(f"#### {n} desktops through blockd")
print()
print(f"- host: {os.environ['HOSTLINE']}; load after: `{v['uptime']}`")
print(f"- command: `{os.environ['CMDLINE']}`")
print(f"- image {image_size} (random data), cache_size {cache_size}, reconcile_interval 2 s (default), keepalive 2 s")
print()
print("| measure | value |")
print("|---|---:|")
print(f"| `image import` on the master ({image_size}) / push of version 1 to the replica | {float(v['import_s']):.1f} s / {float(v['push1_s']):.1f} s |")
print(f"| {n}x `blockctl client add`, one after the other | {float(v['add_total_s']):.1f} s = {float(v['add_total_s']) / n * 1000:.0f} ms per desktop |")
print(f"| one add: median / p99 / max | {ms(q(add, 50))} / {ms(q(add, 99))} / {ms(add[-1])} ms |")
if "add_cpu" in v:
    c = v["add_cpu"].split()
    print(f"| CPU during the {n} adds: blockd / tgtd | {c[0]} / {c[1]} s = {float(c[0]) / n * 1000:.0f} / {float(c[1]) / n * 1000:.0f} ms per add |")
print(f"| one add: median of the first {k} / of the last {k} | {ms(statistics.median(add_in_order[:k]))} / {ms(statistics.median(add_in_order[-k:]))} ms |")
for who in ("blockd", "tgtd"):
    b0, b1 = row(who + "_before"), row(who + "_after")
    print(f"| {who} VmRSS / descriptors / threads: before / after {n} clients | {b0[0] / 1024:.1f} / {b1[0] / 1024:.1f} MiB "
          f"({(b1[0] - b0[0]) / n:.0f} KiB per client); {b0[1]} / {b1[1]} fds ({(b1[1] - b0[1]) / n:.2f} per client); {b0[2]} / {b1[2]} threads |")
print(f"| blockd's state directory (SQLite, WAL) with {n} clients | {int(v['db_kib'])} KiB |")
lst = nums("list_s.txt"); show = nums("show_s.txt")
print(f"| `blockctl client list --json` with {n} clients: median of 5 (min / max) | {ms(statistics.median(lst))} ms ({ms(lst[0])} / {ms(lst[-1])}); {int(v['list_bytes']) / 1024:.0f} KiB of JSON; {v['list_ok']} exported on version 1 |")
print(f"| one `tgtadm --op show --mode target` with {n} targets: median of 5 | {ms(statistics.median(show))} ms, {int(v['show_bytes']) / 1024:.0f} KiB of text |")
st, ver = nums("status_s.txt"), nums("version_s.txt")
print(f"| `blockctl --version` (starting blockctl) / `blockctl status` (a round trip; blockd runs one tgtadm): median of 5 | {ms(statistics.median(ver))} / {ms(statistics.median(st))} ms |")
# reconcile passes while idle: the reconcile thread's two shows, paired
ex, ends = [], {}
for line in open(os.path.join(work, "strace-idle.txt")):
    m = re.match(r"(\d+)\s+(\d+\.\d+) (.*)", line)
    if not m: continue
    if m.group(3).startswith("execve(") and '"--op", "show", "--mode", "target"' in m.group(3): ex.append((float(m.group(2)), m.group(1)))
    elif m.group(3).startswith("+++ exited"): ends[m.group(1)] = float(m.group(2))
ex.sort()
passes_w = [ends[p2] - t1 for (t1, p1), (t2, p2) in zip(ex[0::2], ex[1::2]) if p2 in ends and t2 - t1 < 1.5]
print(f"| one reconcile pass, idle, {n} clients (first tgtadm show to the end of the second; strace -f on blockd, 10 s) | "
      + (f"{len(passes_w)} passes: median {ms(statistics.median(passes_w))} ms, max {ms(max(passes_w))} ms |" if passes_w else "not seen |"))
i0, iN = v["idle0"].split(), v["idleN"].split()
passes = idle_s / 2
print(f"| idle CPU, blockd / tgtd: no client (10 s) | {float(i0[0]):.2f} / {float(i0[1]):.2f} s = {float(i0[0]) / 10 * 100:.1f} / {float(i0[1]) / 10 * 100:.1f} % of a CPU |")
print(f"| idle CPU, blockd / tgtd: {n} clients ({idle_s} s, ~{passes:.0f} reconcile passes) | {float(iN[0]):.2f} / {float(iN[1]):.2f} s = "
      f"{float(iN[0]) / idle_s * 100:.1f} / {float(iN[1]) / idle_s * 100:.1f} % of a CPU; per pass {float(iN[0]) / passes * 1000:.0f} / {float(iN[1]) / passes * 1000:.0f} ms of CPU |")
for line in open(os.path.join(work, "storms.tsv")):
    name, failed, sfds, sthr, srss, swall, scpu, sbcpu = line.rstrip("\n").split("\t")
    iops = mbps = 0.0; ops = nbytes = 0; p99s, p50s = [], []
    for f in os.listdir(work):
        if f.startswith(name + "-") and f.endswith(".json"):
            t = open(os.path.join(work, f)).read().strip()
            if not t: continue
            j = json.loads(t)
            iops += j["iops"]; mbps += j["iops"] * j["bs"] / mib
            ops += j["ops"]; nbytes += j["ops"] * j["bs"]
            p99s.append(j["lat_us"]["p99"]); p50s.append(j["lat_us"]["p50"])
    p99s.sort()
    label = {"rand4k": "4 KiB random", "seq64k": "64 KiB sequential"}[name]
    print(f"| storm: {label} reads, {len(p99s)} desktops, qd 1, {seconds:g} s over the first {boot}"
          f"{', ' + failed + ' readers FAILED' if failed != '0' else ''} | {iops:,.0f} IOPS, {mbps:,.1f} MiB/s (sum of the desktops' rates; "
          f"over the {float(swall):.1f} s from launch to last exit {ops / float(swall):,.0f} IOPS, {nbytes / mib / float(swall):,.1f} MiB/s); "
          f"p50 (median desktop) {statistics.median(p50s) if p50s else 0:.0f} us, p99 median / worst {statistics.median(p99s) if p99s else 0:.0f} / {p99s[-1] if p99s else 0:.0f} us; "
          f"tgtd peak {sfds} fds, {int(srss) / 1024:.0f} MiB, CPU {float(scpu):.1f} s; blockd CPU {float(sbcpu):.1f} s |")
print(f"| `image commit` of version 2 (16 MiB changed) / its push to the replica | {float(v['commit_s']):.1f} s / {float(v['push2_s']):.1f} s |")
mv = v["move"].split()
samples = [l.split() for l in open(os.path.join(work, "move.tsv"))]
first = next((float(t) for t, c in samples if int(c) > 0), None)
print(f"| `image promote img 2` until all {n} session-less desktops serve version 2 (polling `client list` every 1 s) | "
      f"{float(mv[0]):.1f} s for {mv[1]} of {n} ({float(mv[0]) / max(1, int(mv[1])) * 1000:.0f} ms per desktop; first one after "
      f"{first if first is not None else float('nan'):.1f} s); blockd / tgtd CPU {mv[2]} / {mv[3]} s; {v['moved_logged']} moves logged; "
      f"{v['before_promote_on2']} had moved before the promotion |")
print(f"| {n}x `blockctl client remove`, one after the other | {float(v['remove_total_s']):.1f} s = {float(v['remove_total_s']) / n * 1000:.0f} ms per desktop; "
      f"median / p99 {ms(q(rem, 50))} / {ms(q(rem, 99))} ms" +
      (f"; CPU blockd / tgtd {v['remove_cpu'].split()[0]} / {v['remove_cpu'].split()[1]} s" if "remove_cpu" in v else "") + " |")
for who in ("blockd", "tgtd"):
    r = row(who + "_removed")
    print(f"| {who} after all removed: VmRSS / descriptors / threads | {r[0] / 1024:.1f} MiB / {r[1]} / {r[2]} |")
if par and "padd_s" in v:
    pa = sorted(x for w in range(1, par + 1) for x in nums(f"padd_s.txt.{w}"))
    print(f"| {n} adds from {par} blockctl callers at once | {float(v['padd_s']):.1f} s = {float(v['padd_s']) / n * 1000:.0f} ms per desktop "
          f"(each call: median {ms(q(pa, 50))} ms, p99 {ms(q(pa, 99))} ms) |")
    print(f"| {n} removes from {par} callers at once | {float(v['premove_s']):.1f} s = {float(v['premove_s']) / n * 1000:.0f} ms per desktop |")
print(f"| warnings/errors in the replica's blockd log | {v['blockd_warnings']} |")

# Where the time of an add (and a remove) goes: strace of blockd, 10 of each at N..N+10 clients.
ta, tb, tc = (float(x) for x in v["traced"].split())
execs, exits, fs = {}, {}, []
pending = {}
for line in open(os.path.join(work, "strace.txt")):
    m = re.match(r"(\d+)\s+(\d+\.\d+) (.*)", line)
    if not m: continue
    pid, ts, rest = m.group(1), float(m.group(2)), m.group(3)
    if rest.startswith("execve("):
        op = re.search(r'"--op", "(\w+)"', rest); mode = re.search(r'"--mode", "(\w+)"', rest)
        if op: execs[pid] = (ts, f"{op.group(1)} {mode.group(1) if mode else '?'}")
    elif rest.startswith("+++ exited"):
        exits[pid] = ts
    elif re.match(r"(fsync|fdatasync)\(", rest):
        f = re.search(r"<([^>]*)>", rest); d = re.search(r"<(\d+\.\d+)>$", rest)
        if d: fs.append((ts, f.group(1) if f else "?", float(d.group(1))))
        else: pending[pid] = (ts, f.group(1) if f else "?")
    elif re.match(r"<\.\.\. (fsync|fdatasync) resumed>", rest) and pid in pending:
        d = re.search(r"<(\d+\.\d+)>$", rest)
        if d: fs.append((pending[pid][0], pending[pid][1], float(d.group(1))))
        pending.pop(pid)
def window(a, b, what, count, times):
    per = {}
    for pid, (ts, op) in execs.items():
        if a <= ts < b and pid in exits:
            c = per.setdefault(op, [0, 0.0]); c[0] += 1; c[1] += exits[pid] - ts
    fsw = [(f, d) for ts, f, d in fs if a <= ts < b]
    byf = {}
    for f, d in fsw:
        key = os.path.basename(f)
        key = "blockd.db*" if key.startswith("blockd.db") else ("overlay/cache files" if key.endswith((".ovl", ".cache")) else key)
        c = byf.setdefault(key, [0, 0.0]); c[0] += 1; c[1] += d
    wall = b - a
    tg = sum(c[1] for c in per.values()); fsd = sum(d for f, d in fsw)
    print(f"| {count}x `client {what}` under strace (at {n}-{n + count} clients): wall per call | {wall / count * 1000:.0f} ms (median {ms(statistics.median(times))} ms) |")
    print(f"| ... tgtadm runs per {what} (exec to exit, mean ms) | " + "; ".join(
        f"{op}: {c[0] / count:.1f} x {c[1] / c[0] * 1000:.1f} ms" for op, c in sorted(per.items(), key=lambda x: -x[1][1])) +
        f" — {tg / count * 1000:.0f} ms per {what} in all |")
    print(f"| ... fsync/fdatasync by blockd per {what} | " + ("; ".join(
        f"{k}: {c[0] / count:.1f} x {c[1] / c[0] * 1000:.1f} ms" for k, c in sorted(byf.items())) or "none") +
        f" — {fsd / count * 1000:.0f} ms per {what} in all |")
    print(f"| ... the rest (blockd's own work, blockctl, fork, strace) | {(wall - tg - fsd) / count * 1000:.0f} ms per {what} |")
print()
print("Where the time goes (strace -f of the replica's blockd, execve and fsync/fdatasync only; the reconcile")
print("thread's runs fall into the windows too):")
print()
print("| measure | value |")
print("|---|---:|")
window(ta, tb, "add", 10, nums("add_traced_s.txt"))
window(tb, tc, "remove", 10, nums("remove_traced_s.txt"))
PY
}
