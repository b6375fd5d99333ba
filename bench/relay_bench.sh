#!/usr/bin/env bash
# relay_bench.sh: a relay tree 1 -> 3 -> 9 (issue 15, item 1) against a single
# push to one replica and against a direct fan-out from the master to 12.
# 25 `icbd-replicate serve` processes (3 relays with --relay-to and their 9
# leaves; 12 replicas for the direct fan-out; 1 lone replica), each on its own
# BTRFS loop device, mutual TLS on 127.0.0.1.
#
#   bench/relay_bench.sh [--size MIB] [--change MIB] [--runs N] [--kill-runs N] [--dir DIR] [--build DIR]
#     --size    MiB of random data in version 1 (default 256)
#     --change  MiB rewritten in each later version (default 32)
#     --runs    measured versions (default 3); each run pushes version k+1 to
#               the tree, then the same version directly to 12 replicas, then
#               to the lone replica (interleaved), all incremental from k, page
#               cache dropped before each (global: it hits the machine's other
#               users too)
#     --kill-runs  then N more versions pushed to the tree with `kill -9` of
#               relay r0 in the middle of each (the push is limited to 3x the
#               change per 4 s, r0 killed after 2 s): the master takes r0's
#               3 children over in the same push (docs/replication-protocol.md
#               section 11); measured: the push's outcome per replica, the
#               takeover's resume points, the master's wire bytes, the time until
#               the 11 others published, nothing of the version on r0; r0 is
#               then restarted and caught up directly (default 0)
#     --dir     where the loop image files go (default /var/tmp)
#
# Measured per run: bytes the master sent (push --json wire_bytes, all its
# targets) against the change (payload bytes of one replica); wall time from
# the start of the push until the last of the 12 replicas has
# images/vm/<k+1> (a replica renames its read-only snapshot there only after
# the digest check and a sync), against a push to the lone replica (push
# returns after its RESULT: published and synced). Every replica's disk.raw is
# checked against the master's afterwards (sha256). Compression: none (random
# data does not compress; keeps the CPU for the 13 receivers).
# Figures only: exits 0 unless the setup or a push failed or a copy is wrong.
set -uo pipefail
{
size=256 change=32 runs=3 kill_runs=0 dir=/var/tmp
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)
build=$src/build/release
orig_args="$*"
while [[ $# -gt 0 ]]; do
    case $1 in
    --size) size=$2; shift 2 ;;
    --change) change=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --kill-runs) kill_runs=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) echo "relay_bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
tool=$build/replicator/icbd-replicate
[[ -x $tool ]] || { echo "relay_bench.sh: $tool not built" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "relay_bench.sh: needs root (loop devices, mounts)" >&2; exit 1; }

scratch=$(mktemp -d "$dir/icbd-relay-bench.XXXXXX")
pids=() mounts=() loops=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null; done
    rm -rf "$scratch"
}
trap cleanup EXIT
die() { echo "relay_bench.sh: $*" >&2; exit 1; }

# A BTRFS filesystem of $2 MiB on a loop device, mounted at $scratch/$1.
mkfs_loop() {
    local name=$1 mib=$2
    truncate -s "${mib}M" "$scratch/$name.img"
    mkfs.btrfs -q -f "$scratch/$name.img" >/dev/null || die "mkfs $name"
    mkdir -p "$scratch/$name"
    mount -o loop "$scratch/$name.img" "$scratch/$name" || die "mount $name"
    mounts+=("$scratch/$name")
}

names=(r0 r1 r2 r3 r4 r5 r6 r7 r8 r9 r10 r11 d0 d1 d2 d3 d4 d5 d6 d7 d8 d9 d10 d11 lone)
"$src/scripts/make-certs.sh" "$scratch/certs" master "${names[@]}" >/dev/null || die "certificates"
tls() { echo "--ca $scratch/certs/ca.crt --cert $scratch/certs/$1.crt --key $scratch/certs/$1.key"; }

rep_mib=$(( (size + change * (runs + kill_runs + 1)) * 2 + 256 ))
mkfs_loop master $(( (size + change * (runs + kill_runs + 1)) * 2 + 256 ))
btrfs subvolume create "$scratch/master/work" >/dev/null || die "subvolume"
mkdir -p "$scratch/master/repo"
for n in "${names[@]}"; do mkfs_loop "$n" "$rep_mib"; done

# serve NAME [--relay-to LIST]: starts it, sets port[NAME].
declare -A port pid_of
serve() {
    local n=$1; shift
    mkdir -p "$scratch/$n/repo"
    # shellcheck disable=SC2046
    "$tool" serve --root "$scratch/$n/repo" --listen 127.0.0.1:0 $(tls "$n") --name "$n" "$@" \
        >"$scratch/$n.out" 2>"$scratch/$n.err" &
    pids+=($!)
    pid_of[$n]=$!
    for _ in $(seq 500); do
        grep -q '^listening on ' "$scratch/$n.out" 2>/dev/null && break
        sleep 0.01
    done
    port[$n]=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$scratch/$n.out")
    [[ -n ${port[$n]} ]] || die "serve $n did not start: $(cat "$scratch/$n.err")"
}
for n in r3 r4 r5 r6 r7 r8 r9 r10 r11 d0 d1 d2 d3 d4 d5 d6 d7 d8 d9 d10 d11 lone; do serve "$n"; done
r0_children="127.0.0.1:${port[r3]},127.0.0.1:${port[r4]},127.0.0.1:${port[r5]}"
serve r0 --relay-to "$r0_children"
serve r1 --relay-to "127.0.0.1:${port[r6]},127.0.0.1:${port[r7]},127.0.0.1:${port[r8]}"
serve r2 --relay-to "127.0.0.1:${port[r9]},127.0.0.1:${port[r10]},127.0.0.1:${port[r11]}"
tree_to=(--to "127.0.0.1:${port[r0]}" --to "127.0.0.1:${port[r1]}" --to "127.0.0.1:${port[r2]}")
lone_to=(--to "127.0.0.1:${port[lone]}")
direct=(d0 d1 d2 d3 d4 d5 d6 d7 d8 d9 d10 d11)
direct_to=()
for n in "${direct[@]}"; do direct_to+=(--to "127.0.0.1:${port[$n]}"); done

commit() {
    "$tool" commit --root "$scratch/master/repo" --image vm --version "$1" --from "$scratch/master/work" >/dev/null ||
        die "commit $1"
}
# push VERSION TARGETS... : prints the --json report.
push() {
    local v=$1; shift
    # shellcheck disable=SC2046
    "$tool" push --root "$scratch/master/repo" --image vm --version "$v" "$@" $(tls master) --name master \
        --compress none --json
}
now() { date +%s.%N; }
# Waits until every replica in "$@" has images/vm/$v; prints the time then.
wait_published() {
    local v=$1; shift
    for _ in $(seq 30000); do
        local all=1
        for n in "$@"; do [[ -d $scratch/$n/repo/images/vm/$v ]] || { all=0; break; }; done
        [[ $all = 1 ]] && { now; return 0; }
        sleep 0.005
    done
    die "version $v not published everywhere: $(for n in "$@"; do tail -2 "$scratch/$n.err"; done)"
}
tree=(r0 r1 r2 r3 r4 r5 r6 r7 r8 r9 r10 r11)

dd if=/dev/urandom of="$scratch/master/work/disk.raw" bs=1M count="$size" status=none
commit 1
push 1 "${tree_to[@]}" >"$scratch/push1.json" || die "push 1 to the tree: $(cat "$scratch/push1.json")"
push 1 "${lone_to[@]}" >/dev/null || die "push 1 to the lone replica"
push 1 "${direct_to[@]}" >/dev/null || die "push 1 to the direct fan-out"
wait_published 1 "${tree[@]}" >/dev/null

declare -a tree_s lone_s ratio_b direct_s direct_b
for k in $(seq 2 $((runs + 1))); do
    dd if=/dev/urandom of="$scratch/master/work/disk.raw" bs=1M count="$change" \
        seek=$(( (k * 37) % (size - change) )) conv=notrunc status=none
    commit "$k"
    sync; echo 3 >/proc/sys/vm/drop_caches
    t0=$(now)
    push "$k" "${tree_to[@]}" >"$scratch/push$k.json" || die "push $k to the tree: $(cat "$scratch/push$k.json")"
    t1=$(wait_published "$k" "${tree[@]}")
    sync; echo 3 >/proc/sys/vm/drop_caches
    t4=$(now)
    push "$k" "${direct_to[@]}" >"$scratch/direct$k.json" || die "push $k to the direct fan-out"
    t5=$(now)
    sync; echo 3 >/proc/sys/vm/drop_caches
    t2=$(now)
    push "$k" "${lone_to[@]}" >"$scratch/lone$k.json" || die "push $k to the lone replica"
    t3=$(now)
    read -r wire payload < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(sum(x["wire_bytes"] for x in r["replicas"]), r["replicas"][0]["payload_bytes"])' "$scratch/push$k.json")
    dwire=$(python3 -c '
import json, sys
print(sum(x["wire_bytes"] for x in json.load(open(sys.argv[1]))["replicas"]))' "$scratch/direct$k.json")
    ts=$(echo "$t1 - $t0" | bc -l) ls=$(echo "$t3 - $t2" | bc -l) ds=$(echo "$t5 - $t4" | bc -l)
    tree_s+=("$ts") lone_s+=("$ls") direct_s+=("$ds")
    direct_b+=("$(echo "$dwire / $payload" | bc -l)")
    printf 'run %d: change %d MiB (payload %d B); master sent %d B = %.2fx the change (direct: %.2fx); last of 12 published %.2f s, direct fan-out to 12 %.2f s, lone push %.2f s (tree/lone %.2fx, tree/direct %.2fx)\n' \
        $((k - 1)) "$change" "$payload" "$wire" "$(echo "$wire / $payload" | bc -l)" "$(echo "$dwire / $payload" | bc -l)" \
        "$ts" "$ds" "$ls" "$(echo "$ts / $ls" | bc -l)" "$(echo "$ts / $ds" | bc -l)"
    ratio_b+=("$(echo "$wire / $payload" | bc -l)")
done

# Kill runs: kill -9 of relay r0 in the middle of a push to the tree.
declare -a kill_s kill_b kill_lines
last=$((runs + 1))
for ((i = 1; i <= kill_runs; i++)); do
    k=$((last + 1))
    dd if=/dev/urandom of="$scratch/master/work/disk.raw" bs=1M count="$change" \
        seek=$(( (k * 37) % (size - change) )) conv=notrunc status=none
    commit "$k"
    sync; echo 3 >/proc/sys/vm/drop_caches
    t0=$(now)
    push "$k" "${tree_to[@]}" --bwlimit "$(( change * 3 / 4 ))M" >"$scratch/kill$k.json" &
    push_pid=$!
    sleep 2
    kill -9 "${pid_of[r0]}"
    wait "${pid_of[r0]}" 2>/dev/null
    wait "$push_pid"  # exits 1: r0 failed
    others=(r1 r2 r3 r4 r5 r6 r7 r8 r9 r10 r11)
    t1=$(wait_published "$k" "${others[@]}")
    [[ -e $scratch/r0/repo/images/vm/$k ]] && die "kill run $i: version $k visible on the killed relay r0"
    ks=$(echo "$t1 - $t0" | bc -l)
    kill_s+=("$ks")
    line=$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
rs = r["replicas"]
wire = sum(x["wire_bytes"] for x in rs)
change = max(x["payload_bytes"] for x in rs if x["result"] == "ok" and not x.get("taken_over_from"))
took = [x for x in rs if x.get("taken_over_from")]
print("%.2f" % (wire / change), rs[0]["result"], len(took), sum(1 for x in took if x["result"] == "ok"),
      " ".join("%s:resumed@%d/%d,%.1fMiB" % (x["peer"].split(" ")[0], x["resume_seq"], x["changes"], x["payload_bytes"] / 2**20) for x in took))
' "$scratch/kill$k.json")
    read -r kb r0res ntook nok detail <<<"$line"
    kill_b+=("$kb")
    kill_lines+=("$(printf 'kill run %d (version %d): r0 %s; %d children taken over, %d ok (%s); master sent %.2fx the change; 11 others published %.2f s after the start' \
        "$i" "$k" "$r0res" "$ntook" "$nok" "$detail" "$kb" "$ks")")
    echo "${kill_lines[-1]}"
    [[ $nok = 3 ]] || die "kill run $i: r0's children not all taken over: $(cat "$scratch/kill$k.json")"
    # r0 back (its staging kept), caught up directly; its children already have $k.
    serve r0 --relay-to "$r0_children"
    tree_to[1]="127.0.0.1:${port[r0]}"
    push "$k" --to "127.0.0.1:${port[r0]}" >/dev/null || die "kill run $i: catching r0 up"
    want=$(sha256sum <"$scratch/master/repo/images/vm/$k/disk.raw" | cut -d' ' -f1)
    for n in "${tree[@]}"; do
        got=$(sha256sum <"$scratch/$n/repo/images/vm/$k/disk.raw" | cut -d' ' -f1)
        [[ $got = "$want" ]] || die "kill run $i: replica $n: disk.raw of version $k differs"
    done
    last=$k
done

# Every copy equals the master's.
want=$(sha256sum <"$scratch/master/repo/images/vm/$((runs + 1))/disk.raw" | cut -d' ' -f1)
bad=0
for n in "${tree[@]}" "${direct[@]}" lone; do
    got=$(sha256sum <"$scratch/$n/repo/images/vm/$((runs + 1))/disk.raw" | cut -d' ' -f1)
    [[ $got = "$want" ]] || { echo "replica $n: disk.raw differs" >&2; bad=1; }
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mt=$(median "${tree_s[@]}") ml=$(median "${lone_s[@]}") mb=$(median "${ratio_b[@]}")
md=$(median "${direct_s[@]}") mdb=$(median "${direct_b[@]}")
echo
echo "## Relay trees (issue 15): 1 -> 3 -> 9, $(nproc) CPUs shared"
echo
echo "command: bench/relay_bench.sh $orig_args"
echo
echo "| | median of $runs | runs |"
echo "|---|---|---|"
printf '| master wire bytes / change | %.2fx (3 first-level replicas) | %s |\n' "$mb" "$(printf '%.2f ' "${ratio_b[@]}")"
printf '| master wire bytes / change, direct fan-out to 12 | %.2fx | %s |\n' "$mdb" "$(printf '%.2f ' "${direct_b[@]}")"
printf '| last of 12 publishes (tree), s | %.2f | %s |\n' "$mt" "$(printf '%.2f ' "${tree_s[@]}")"
printf '| direct fan-out to 12, s | %.2f | %s |\n' "$md" "$(printf '%.2f ' "${direct_s[@]}")"
printf '| single push to one replica, s | %.2f | %s |\n' "$ml" "$(printf '%.2f ' "${lone_s[@]}")"
printf '| tree / single | %.2fx | |\n' "$(echo "$mt / $ml" | bc -l)"
printf '| tree / direct fan-out | %.2fx | |\n' "$(echo "$mt / $md" | bc -l)"
echo
[[ $bad = 0 ]] && echo "all 25 replicas byte-identical to the master (sha256 of disk.raw)"
if ((kill_runs > 0)); then
    echo
    echo "kill -9 of relay r0 in the middle of the push ($kill_runs runs; all 12 tree replicas byte-identical to the master after each, sha256):"
    printf '%s\n' "${kill_lines[@]}"
    printf '| kill run: master wire bytes / change | %.2fx | %s |\n' "$(median "${kill_b[@]}")" "$(printf '%.2f ' "${kill_b[@]}")"
    printf '| kill run: the 11 others published, s | %.2f | %s |\n' "$(median "${kill_s[@]}")" "$(printf '%.2f ' "${kill_s[@]}")"
fi
exit $bad
}
